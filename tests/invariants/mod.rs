//! The invariant checker: an auditor that watches the hub and every member for a whole test,
//! through the API as any client would, and records each moment at which a promise of cafe is
//! broken, with the time and the objects involved:
//!
//! - [`Kind::BelowFloor`]: a unit's ready pods below its floor (`target - maxUnavailablePerUnit`)
//!   during a rollout, once the unit had reached it, outside a failover of that unit (a Failover
//!   loan from it, or its member not Ready);
//! - [`Kind::OverTarget`]: more live pods in a unit than its target after loans (pods being
//!   deleted do not count);
//! - [`Kind::PastRelease`]: pods at the update revision beyond the quota of the groups released
//!   so far, per unit and in total (a borrower may run the revision of the lender's released
//!   replicas it stands in for);
//! - [`Kind::UpdatedTwice`]: a pod whose containers restarted more than once for one revision;
//! - [`Kind::Replaced`]: a pod deleted during a rollout when the change could have been made in
//!   place (only images differ, podUpdatePolicy InPlaceIfPossible), the unit not being scaled in;
//! - [`Kind::GroupEarly`]: a group started before the previous one had its pods on the revision
//!   and ready;
//! - [`Kind::GroupUnconfirmed`]: a group started without a confirmation after the previous one,
//!   when the strategy waits for one;
//! - [`Kind::LostMemberWritten`]: a write of the hub to a member (from the simulator's call
//!   record: the hub names itself `cafe-hub/...` in its User-Agent) while the hub reported that
//!   member not Ready.
//!
//! A pod may outlive what allowed it (a loan, a group, a target) by the time its member takes to
//! act, so checks against the hub's status allow the most generous value seen in the last
//! [`GRACE`]. The checker reads the hub's status for targets and quotas but judges by the pods
//! themselves. Its watch of the hub may also lag its watch of a member (a watch cut or a 410
//! re-lists with a backoff, and the hub writes its status before the member writes it calls
//! for), so a pod may be seen before the status that allowed it: a breach of a pod rule against
//! the status (over target, past the release, below the floor) is confirmed against a fresh
//! read of the CafeDeployment before it is flagged.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cafe::api::labels::{REVISION, UNIT, UPGRADE_CONFIRMED};
use cafe::api::{CafeDeployment, CafeDeploymentStatus, MemberCluster, PodUpdatePolicy};
use cafe::plan::loans::scales_down_lender;
use cafe::plan::rollout::{plan_of, released};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a pod may outlive what allowed it, and how far the checker's view of the pods may
/// lag the hub's: a member agent acts within a second on a quiet machine; a loaded 2-core CI
/// machine has been seen to take three.
pub const GRACE: Duration = Duration::from_secs(5);
/// A write the hub sent just before it saw the member go may land just after it said so.
pub const IN_FLIGHT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    BelowFloor,
    OverTarget,
    PastRelease,
    UpdatedTwice,
    Replaced,
    GroupEarly,
    GroupUnconfirmed,
    LostMemberWritten,
}

/// One broken promise.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Since the checker started.
    pub at: Duration,
    pub kind: Kind,
    /// The objects involved (`kind namespace/name`, `unit U`, `member M`).
    pub objects: Vec<String>,
    pub detail: String,
}

/// A member the checker watches.
#[derive(Clone)]
pub struct Watched {
    pub unit: String,
    pub member: String,
    pub client: kube::Client,
    /// The simulated cluster, for its call record.
    pub cluster: Arc<cafe_sim::cluster::Cluster>,
}

/// What the checker keeps of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub cafedeployment: String,
    pub revision: String,
    pub ready: bool,
    pub terminating: bool,
    /// Container name and image, in the spec.
    pub images: Vec<(String, String)>,
    /// Restarts of each container, summed.
    pub restarts: i32,
}

impl PodView {
    pub fn of(pod: &Pod) -> PodView {
        let labels = pod.labels();
        let status = pod.status.clone().unwrap_or_default();
        let condition = |type_: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == type_ && c.status == "True")
        };
        PodView {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            // The InPlaceSet that controls the pod is named after its CafeDeployment.
            cafedeployment: pod
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true) && o.kind == "InPlaceSet")
                .map(|o| o.name.clone())
                .unwrap_or_default(),
            revision: labels.get(REVISION).cloned().unwrap_or_default(),
            ready: condition("Ready"),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            images: pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect(),
            restarts: status
                .container_statuses
                .iter()
                .flatten()
                .map(|c| c.restart_count)
                .sum(),
        }
    }

    fn crash_looping(&self) -> bool {
        self.images.iter().any(|(_, i)| i.ends_with("-crash"))
    }
}

/// What the released groups and loans allow on the update revision, from one status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allowance {
    pub revision: String,
    /// Per unit: own quota plus what the loans it carries may add.
    pub per_unit: BTreeMap<String, i32>,
    pub total: i32,
}

/// The allowance of a status after `through` groups; `None` while no rollout plan exists (a
/// plan being made has a revision but no units yet: nothing is released, and the pods already
/// on that revision, which the plan will count as done, are no breach).
pub fn allowance_through(status: &CafeDeploymentStatus, through: i32) -> Option<Allowance> {
    let rollout = status.rollout.as_ref()?;
    let revision = rollout.revision.clone()?;
    if rollout.units.is_empty() {
        return None;
    }
    let plan = plan_of(rollout);
    let quota = |unit: &str| -> i32 {
        rollout
            .units
            .iter()
            .find(|r| r.name == unit)
            .map_or(0, |r| {
                let already = r.replicas - r.create - r.update;
                already + released(&plan, unit, through)
            })
    };
    let mut per_unit = BTreeMap::new();
    let mut total = 0;
    for row in &rollout.units {
        let carried: i32 = status
            .loans
            .iter()
            .filter(|l| l.to == row.name)
            .map(|l| l.replicas.min(quota(&l.from)))
            .sum();
        per_unit.insert(row.name.clone(), quota(&row.name) + carried);
        total += quota(&row.name);
    }
    total += status
        .loans
        .iter()
        .filter(|l| !scales_down_lender(l))
        .map(|l| l.replicas.min(quota(&l.from)))
        .sum::<i32>();
    Some(Allowance {
        revision,
        per_unit,
        total,
    })
}

/// The allowance of the groups released so far.
pub fn allowance(status: &CafeDeploymentStatus) -> Option<Allowance> {
    let through = status.rollout.as_ref()?.current_batch;
    allowance_through(status, through)
}

/// Whether a rollout is under way: a plan toward a revision, not completed.
fn rolling(cd: &CafeDeployment) -> Option<&str> {
    let rollout = cd.status.as_ref()?.rollout.as_ref()?;
    let revision = rollout.revision.as_deref()?;
    (rollout.phase.as_deref() != Some("Completed")).then_some(revision)
}

/// Per unit, the target after loans the hub reports.
fn targets(cd: &CafeDeployment) -> BTreeMap<String, i32> {
    cd.status
        .iter()
        .flat_map(|s| &s.units)
        .map(|u| (u.name.clone(), u.target_replicas))
        .collect()
}

/// The units in failover: a Failover loan from them, or their member unreachable.
fn in_failover(cd: &CafeDeployment, unit: &str, not_ready: &BTreeSet<String>) -> bool {
    let Some(status) = cd.status.as_ref() else {
        return false;
    };
    status
        .loans
        .iter()
        .any(|l| l.from == unit && l.reason == "Failover")
        || status.units.iter().any(|u| {
            u.name == unit
                && (!u.reachable || u.cluster.as_ref().is_some_and(|c| not_ready.contains(c)))
        })
}

/// Whether the pod could take the template in place: the same containers, only images differ.
fn in_place_possible(pod: &PodView, cd: &CafeDeployment) -> bool {
    if cd.spec.strategy.pod_update_policy != PodUpdatePolicy::InPlaceIfPossible {
        return false;
    }
    let Some(spec) = cd.spec.template.spec.as_ref() else {
        return false;
    };
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let had: Vec<&str> = pod.images.iter().map(|(n, _)| n.as_str()).collect();
    names == had
}

/// A CafeDeployment: (namespace, name).
type CdKey = (String, String);
/// A broken rule: its kind, the objects involved, what was seen.
type Breach = (Kind, Vec<String>, String);
/// Per CafeDeployment, the breaches against its status awaiting a fresh read.
type Suspects = BTreeMap<CdKey, Vec<Breach>>;

/// What the checker has seen of one CafeDeployment.
#[derive(Default)]
struct Track {
    cd: Option<CafeDeployment>,
    allowances: VecDeque<(Instant, Allowance)>,
    targets: VecDeque<(Instant, BTreeMap<String, i32>)>,
    /// (revision, unit) whose ready pods reached the floor during the rollout.
    floor_reached: BTreeSet<(String, String)>,
    /// The last (revision, group) seen, its phase, and whether a confirmation has been seen
    /// since it last waited.
    group: Option<(String, i32)>,
    waited: bool,
    confirmed: bool,
    /// Groups started before the pods showed the previous one done: (deadline, revision,
    /// group before, objects).
    pending: Vec<(Instant, String, i32)>,
    /// The resourceVersion of `cd`: a fresh read may be ahead of the watch, whose older events
    /// must not step the view back.
    version: u64,
    /// The resourceVersion the group rules last ran on. They run on the watch's events only: a
    /// fresh read ahead of the watch would skip the WaitingForConfirm between two groups that
    /// the watch delivers afterwards.
    group_version: u64,
    /// The watch relisted since the group rules last ran (its history was compacted): states
    /// in between are lost, so a confirmation is judged on the annotation alone.
    gap: bool,
}

/// The checker's whole view, and the rules.
pub struct State {
    started: Instant,
    units: BTreeMap<String, String>,
    /// Per member, its pods by uid.
    pods: BTreeMap<String, BTreeMap<String, PodView>>,
    /// (uid, revision) -> restarts seen when first at that revision, and how many restarts since.
    restarts: BTreeMap<(String, String), (i32, i32)>,
    tracks: BTreeMap<(String, String), Track>,
    /// Members the hub reports not Ready, since when.
    not_ready: BTreeMap<String, Instant>,
    /// Closed windows of not Ready: (member, from, to).
    lost: Vec<(String, Instant, Instant)>,
    /// The states broken at the last evaluation, flagged once each.
    broken: BTreeSet<(Kind, Vec<String>)>,
    /// CafeDeployments whose pods seem to breach their status, to read afresh before flagging:
    /// the last breach seen of each.
    suspects: Suspects,
    /// The CafeDeployment just read afresh, while the rules run on that view.
    fresh: Option<(String, String)>,
    /// Per member, since when the checker's pod watch there has been failing (its view of the
    /// pods frozen), and when it last recovered.
    pods_stale_since: BTreeMap<String, Instant>,
    pods_fresh_since: BTreeMap<String, Instant>,
    pub violations: Vec<Violation>,
    pub checks: u64,
    /// The kinds flagged so far, readable while the checker runs.
    kinds: Arc<Mutex<BTreeSet<Kind>>>,
}

impl State {
    /// A view of `units`: (unit, member).
    pub fn new(units: &[(&str, &str)]) -> State {
        State {
            started: Instant::now(),
            units: units
                .iter()
                .map(|(unit, member)| (member.to_string(), unit.to_string()))
                .collect(),
            pods: BTreeMap::new(),
            restarts: BTreeMap::new(),
            tracks: BTreeMap::new(),
            not_ready: BTreeMap::new(),
            lost: vec![],
            broken: BTreeSet::new(),
            suspects: BTreeMap::new(),
            fresh: None,
            pods_stale_since: BTreeMap::new(),
            pods_fresh_since: BTreeMap::new(),
            violations: vec![],
            checks: 0,
            kinds: Arc::default(),
        }
    }

    fn flag(&mut self, kind: Kind, objects: Vec<String>, detail: String) {
        self.kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind);
        self.violations.push(Violation {
            at: self.started.elapsed(),
            kind,
            objects,
            detail,
        });
    }

    fn not_ready_set(&self) -> BTreeSet<String> {
        self.not_ready.keys().cloned().collect()
    }

    /// A pod's new state in `member` (`None`: gone).
    pub fn pod(&mut self, member: &str, uid: &str, now: Option<PodView>) {
        let before = self.pods.entry(member.to_string()).or_default().remove(uid);
        if let Some(view) = &now {
            self.count_restarts(member, before.as_ref(), view);
            self.pods
                .entry(member.to_string())
                .or_default()
                .insert(uid.to_string(), view.clone());
        }
        let went = match (&before, &now) {
            (Some(b), None) if !b.terminating => Some(b.clone()),
            (Some(b), Some(n)) if !b.terminating && n.terminating => Some(b.clone()),
            _ => None,
        };
        if let Some(gone) = went {
            self.check_replaced(member, &gone);
        }
        self.evaluate();
    }

    fn count_restarts(&mut self, member: &str, before: Option<&PodView>, now: &PodView) {
        if now.crash_looping() || now.revision.is_empty() {
            return;
        }
        let key = (now.uid.clone(), now.revision.clone());
        let entry = self.restarts.entry(key).or_insert((now.restarts, 0));
        if let Some(b) = before
            && b.revision == now.revision
            && now.restarts > b.restarts
        {
            entry.1 += now.restarts - b.restarts;
        }
        if entry.1 > 1 {
            let times = entry.1;
            entry.1 = i32::MIN; // flagged once
            self.flag(
                Kind::UpdatedTwice,
                vec![
                    format!("pod {}/{}", now.namespace, now.name),
                    format!("member {member}"),
                ],
                format!(
                    "containers restarted {times} times at revision {}",
                    now.revision
                ),
            );
        }
    }

    fn check_replaced(&mut self, member: &str, gone: &PodView) {
        let Some(unit) = self.units.get(member).cloned() else {
            return;
        };
        let key = (gone.namespace.clone(), gone.cafedeployment.clone());
        let Some(track) = self.tracks.get(&key) else {
            return;
        };
        let Some(cd) = track.cd.clone() else {
            return;
        };
        let Some(revision) = rolling(&cd).map(String::from) else {
            return;
        };
        if gone.revision == revision || !in_place_possible(gone, &cd) {
            return;
        }
        let floor_target = track
            .targets
            .iter()
            .filter_map(|(_, t)| t.get(&unit).copied())
            .min()
            .unwrap_or(0);
        let live = self
            .live(member, &gone.namespace, &gone.cafedeployment)
            .len();
        if i32::try_from(live).unwrap_or(i32::MAX) < floor_target {
            self.flag(
                Kind::Replaced,
                vec![
                    format!("pod {}/{}", gone.namespace, gone.name),
                    format!("unit {unit}"),
                ],
                format!(
                    "deleted at revision {} while rolling out {revision} in place ({live} live, target {floor_target})",
                    gone.revision
                ),
            );
        }
    }

    /// The live (not terminating) pods of a CafeDeployment in a member.
    fn live(&self, member: &str, namespace: &str, cd: &str) -> Vec<&PodView> {
        self.pods
            .get(member)
            .into_iter()
            .flat_map(|p| p.values())
            .filter(|p| p.namespace == namespace && p.cafedeployment == cd && !p.terminating)
            .collect()
    }

    /// The pod watch of `member` failed: its view of the pods stays as it was until it recovers.
    pub fn pods_stale(&mut self, member: &str) {
        self.pods_stale_since
            .entry(member.to_string())
            .or_insert_with(Instant::now);
    }

    /// The pod watch of `member` delivers again.
    pub fn pods_fresh(&mut self, member: &str) {
        if self.pods_stale_since.remove(member).is_some() {
            self.pods_fresh_since
                .insert(member.to_string(), Instant::now());
        }
    }

    /// A CafeDeployment's new state, as its watch delivers it (`None`: deleted).
    pub fn deployment(&mut self, namespace: &str, name: &str, cd: Option<CafeDeployment>) {
        self.take_deployment(namespace, name, cd, View::Watched);
        self.evaluate();
    }

    /// The CafeDeployment watch lists again: what changed meanwhile comes as one state.
    pub fn deployments_relisted(&mut self) {
        for track in self.tracks.values_mut() {
            track.gap = true;
        }
    }

    /// A CafeDeployment as read afresh from the hub (`None`: not found): the suspected breaches
    /// of its pods are judged on this view, and flagged if they hold.
    pub fn refreshed(&mut self, namespace: &str, name: &str, cd: Option<CafeDeployment>) {
        self.take_deployment(namespace, name, cd, View::Fresh);
        self.fresh = Some((namespace.to_string(), name.to_string()));
        self.evaluate();
        self.fresh = None;
    }

    /// The suspects to read afresh, each with the breaches seen.
    pub fn take_suspects(&mut self) -> Suspects {
        std::mem::take(&mut self.suspects)
    }

    /// Flags what could not be confirmed nor cleared (the hub unreadable until the end).
    pub fn flag_unresolved(&mut self, suspects: Suspects) {
        for (kind, objects, detail) in suspects.into_values().flatten() {
            self.flag(
                kind,
                objects,
                format!("{detail} (not confirmed: the hub could not be read)"),
            );
        }
    }

    fn take_deployment(
        &mut self,
        namespace: &str,
        name: &str,
        cd: Option<CafeDeployment>,
        view: View,
    ) {
        let key = (namespace.to_string(), name.to_string());
        let Some(cd) = cd else {
            self.tracks.remove(&key);
            return;
        };
        let version = cd
            .resource_version()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let now = Instant::now();
        let track = self.tracks.entry(key).or_default();
        let flags = if view == View::Watched && version > track.group_version {
            track.group_version = version;
            groups(track, &cd, now)
        } else {
            vec![]
        };
        if track.cd.is_none() || version > track.version {
            if let Some(a) = cd.status.as_ref().and_then(allowance) {
                track.allowances.push_back((now, a));
            }
            track.targets.push_back((now, targets(&cd)));
            track.cd = Some(cd);
            track.version = version;
        }
        for (kind, detail) in flags {
            self.flag(
                kind,
                vec![format!("cafedeployment {namespace}/{name}")],
                detail,
            );
        }
    }

    /// A MemberCluster's Ready condition as the hub reports it.
    pub fn member_ready(&mut self, member: &str, ready: bool) {
        let now = Instant::now();
        match (ready, self.not_ready.get(member).copied()) {
            (false, None) => {
                self.not_ready.insert(member.to_string(), now);
            }
            (true, Some(since)) => {
                self.not_ready.remove(member);
                self.lost.push((member.to_string(), since, now));
            }
            _ => {}
        }
    }

    /// The hub's writes to `member` (from its call record) while it was reported lost.
    pub fn check_calls(&mut self, member: &str, calls: &[cafe_sim::metrics::CallRecord]) {
        let now = Instant::now();
        let mut windows: Vec<(Instant, Instant)> = self
            .lost
            .iter()
            .filter(|(m, _, _)| m == member)
            .map(|(_, from, to)| (*from, *to))
            .collect();
        if let Some(since) = self.not_ready.get(member) {
            windows.push((*since, now));
        }
        let mut found = vec![];
        for c in calls {
            let write = !matches!(c.verb.as_str(), "get" | "list" | "watch");
            if !write || !c.user_agent.starts_with("cafe-hub/") || !(200..300).contains(&c.code) {
                continue;
            }
            if windows
                .iter()
                .any(|(from, to)| c.at > *from + IN_FLIGHT && c.at < *to)
            {
                found.push(format!(
                    "{} {}/{} {}/{} by {}",
                    c.verb, c.resource, c.subresource, c.namespace, c.name, c.user_agent
                ));
            }
        }
        if !found.is_empty() {
            self.flag(
                Kind::LostMemberWritten,
                vec![format!("member {member}")],
                format!("the hub wrote while it reported the member not Ready: {found:?}"),
            );
        }
    }

    /// Every rule over the current view.
    fn evaluate(&mut self) {
        self.checks += 1;
        let now = Instant::now();
        let not_ready = self.not_ready_set();
        // Whether the pod view was live since a group started GRACE before its deadline: a
        // view frozen by a failing watch cannot tell whether the pods were done in time.
        let stale_now = !self.pods_stale_since.is_empty();
        let last_fresh = self.pods_fresh_since.values().max().copied();
        let live = |deadline: Instant| {
            !stale_now
                && deadline
                    .checked_sub(GRACE)
                    .is_some_and(|start| last_fresh.is_none_or(|fresh| fresh <= start))
        };
        let lagging = |deadline: Instant| last_fresh.map_or(deadline, |f| deadline.max(f + GRACE));
        let keys: Vec<(String, String)> = self.tracks.keys().cloned().collect();
        // Breaches of the rules over the hub's status carry the CafeDeployment to read afresh.
        let mut flags: Vec<(Kind, Vec<String>, String)> = vec![];
        let mut against_status: Vec<(Breach, CdKey)> = vec![];
        for key in keys {
            let (namespace, name) = key.clone();
            let fresh = self.fresh.as_ref() == Some(&key);
            let Some(track) = self.tracks.get_mut(&key) else {
                continue;
            };
            while track
                .allowances
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > GRACE)
                && track.allowances.len() > 1
            {
                track.allowances.pop_front();
            }
            while track
                .targets
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > GRACE)
                && track.targets.len() > 1
            {
                track.targets.pop_front();
            }
            let Some(cd) = track.cd.clone() else {
                continue;
            };
            let object = format!("cafedeployment {namespace}/{name}");
            // Per unit: the pods the checker sees there.
            let mut per_unit: BTreeMap<String, Vec<PodView>> = BTreeMap::new();
            for (member, unit) in &self.units {
                let pods: Vec<PodView> = self
                    .pods
                    .get(member)
                    .into_iter()
                    .flat_map(|p| p.values())
                    .filter(|p| p.namespace == namespace && p.cafedeployment == name)
                    .filter(|p| !p.terminating)
                    .cloned()
                    .collect();
                per_unit.insert(unit.clone(), pods);
            }
            // Over target; a lost member's pods stay where the hub cannot reach them.
            for (unit, pods) in &per_unit {
                if in_failover(&cd, unit, &not_ready) {
                    continue;
                }
                let allowed = track
                    .targets
                    .iter()
                    .filter_map(|(_, t)| t.get(unit).copied())
                    .max();
                if let Some(allowed) = allowed
                    && i32::try_from(pods.len()).unwrap_or(i32::MAX) > allowed
                {
                    against_status.push((
                        (
                            Kind::OverTarget,
                            vec![object.clone(), format!("unit {unit}")],
                            format!("{} live pods, target {allowed}", pods.len()),
                        ),
                        key.clone(),
                    ));
                }
            }
            // Past the release.
            if let Some((_, current)) = track.allowances.back() {
                let revision = current.revision.clone();
                let window: Vec<&Allowance> = track
                    .allowances
                    .iter()
                    .map(|(_, a)| a)
                    .filter(|a| a.revision == revision)
                    .collect();
                let mut total = 0;
                for (unit, pods) in &per_unit {
                    let new = pods.iter().filter(|p| p.revision == revision).count();
                    total += new;
                    let allowed = window
                        .iter()
                        .map(|a| a.per_unit.get(unit).copied().unwrap_or(0))
                        .max()
                        .unwrap_or(0);
                    if i32::try_from(new).unwrap_or(i32::MAX) > allowed {
                        against_status.push((
                            (
                                Kind::PastRelease,
                                vec![object.clone(), format!("unit {unit}")],
                                format!(
                                    "{new} pods on {revision}, {allowed} released; rollout {:?}",
                                    cd.status.as_ref().and_then(|s| s.rollout.as_ref())
                                ),
                            ),
                            key.clone(),
                        ));
                    }
                }
                let allowed = window.iter().map(|a| a.total).max().unwrap_or(0);
                if i32::try_from(total).unwrap_or(i32::MAX) > allowed {
                    against_status.push((
                        (
                            Kind::PastRelease,
                            vec![object.clone()],
                            format!("{total} pods on {revision} in all, {allowed} released"),
                        ),
                        key.clone(),
                    ));
                }
            }
            // The floor, during a rollout.
            if let Some(revision) = rolling(&cd).map(String::from) {
                for (unit, pods) in &per_unit {
                    let Some(target) = track
                        .targets
                        .iter()
                        .filter_map(|(_, t)| t.get(unit).copied())
                        .min()
                    else {
                        continue;
                    };
                    let floor = target - cafe::hub::projection::unit_max_unavailable(&cd, target);
                    let ready = pods.iter().filter(|p| p.ready).count();
                    let ready = i32::try_from(ready).unwrap_or(i32::MAX);
                    let reached = (revision.clone(), unit.clone());
                    if ready >= floor {
                        track.floor_reached.insert(reached);
                    } else if track.floor_reached.contains(&reached)
                        && !in_failover(&cd, unit, &not_ready)
                    {
                        against_status.push((
                            (
                                Kind::BelowFloor,
                                vec![object.clone(), format!("unit {unit}")],
                                format!("{ready} ready, floor {floor} (target {target})"),
                            ),
                            key.clone(),
                        ));
                        // Once flagged, the unit must reach its floor again to be judged again.
                        if fresh {
                            track.floor_reached.remove(&reached);
                        }
                    }
                }
            }
            // Groups started early: the previous group's pods on the revision and ready.
            let status = cd.status.clone().unwrap_or_default();
            let mut still = vec![];
            for (deadline, revision, before) in std::mem::take(&mut track.pending) {
                let Some(quota) = allowance_through(&status, before) else {
                    continue;
                };
                if quota.revision != revision {
                    continue;
                }
                let done = per_unit.iter().all(|(unit, pods)| {
                    let ready_new = pods
                        .iter()
                        .filter(|p| p.revision == revision && p.ready)
                        .count();
                    i32::try_from(ready_new).unwrap_or(i32::MAX)
                        >= quota.per_unit.get(unit).copied().unwrap_or(0)
                        || in_failover(&cd, unit, &not_ready)
                });
                if done {
                    continue;
                }
                if now >= deadline && !live(deadline) {
                    // The pods were not seen for part of the grace: give them a grace from the
                    // moment they were seen again.
                    let deadline = if stale_now {
                        deadline
                    } else {
                        lagging(deadline)
                    };
                    still.push((deadline, revision, before));
                } else if now >= deadline {
                    flags.push((
                        Kind::GroupEarly,
                        vec![object.clone()],
                        format!(
                            "group {} of {revision} started before group {before} was done: quota {:?}",
                            before + 1,
                            quota.per_unit
                        ),
                    ));
                } else {
                    still.push((deadline, revision, before));
                }
            }
            track.pending = still;
        }
        // A state that stays broken is one violation, flagged when it starts; a breach against
        // the status only once a fresh read of it confirms.
        let mut now_broken = BTreeSet::new();
        for ((kind, objects, detail), cd) in against_status {
            let key = (kind, objects.clone());
            if self.broken.contains(&key) || self.fresh.as_ref() == Some(&cd) {
                flags.push((kind, objects, detail));
            } else {
                self.suspects
                    .entry(cd)
                    .or_default()
                    .push((kind, objects, detail));
            }
        }
        for (kind, objects, detail) in flags {
            let key = (kind, objects.clone());
            if !self.broken.contains(&key) {
                self.flag(kind, objects, detail);
            }
            now_broken.insert(key);
        }
        self.broken = now_broken;
    }
}

/// Watches until stopped; [`Checker::stop`] returns what it saw.
pub struct Checker {
    stop: CancellationToken,
    task: JoinHandle<State>,
    kinds: Arc<Mutex<BTreeSet<Kind>>>,
}

enum Seen {
    Deployment(Box<watcher::Event<CafeDeployment>>),
    Member(Box<watcher::Event<MemberCluster>>),
    Pod(String, Box<watcher::Event<Pod>>),
    PodWatchFailed(String),
    Tick,
}

impl Checker {
    /// Watches every CafeDeployment and MemberCluster on `hub` and cafe's pods in `members`.
    pub fn start(hub: kube::Client, members: Vec<Watched>) -> Checker {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let units: Vec<(&str, &str)> = members
            .iter()
            .map(|w| (w.unit.as_str(), w.member.as_str()))
            .collect();
        let mut state = State::new(&units);
        let kinds = state.kinds.clone();
        let task = tokio::spawn(async move {
            let mut streams = vec![
                watcher(
                    Api::<CafeDeployment>::all(hub.clone()),
                    watcher::Config::default(),
                )
                .default_backoff()
                .filter_map(|e| async move { e.ok().map(|e| Seen::Deployment(Box::new(e))) })
                .boxed(),
                watcher(
                    Api::<MemberCluster>::all(hub.clone()),
                    watcher::Config::default(),
                )
                .default_backoff()
                .filter_map(|e| async move { e.ok().map(|e| Seen::Member(Box::new(e))) })
                .boxed(),
                futures::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    Some((Seen::Tick, ()))
                })
                .boxed(),
            ];
            for w in &members {
                let member = w.member.clone();
                streams.push(
                    watcher(
                        Api::<Pod>::all(w.client.clone()),
                        watcher::Config::default().labels(UNIT),
                    )
                    .default_backoff()
                    .filter_map(move |e| {
                        let member = member.clone();
                        async move {
                            Some(match e {
                                Ok(e) => Seen::Pod(member, Box::new(e)),
                                Err(_) => Seen::PodWatchFailed(member),
                            })
                        }
                    })
                    .boxed(),
                );
            }
            let mut all = futures::stream::select_all(streams);
            loop {
                let seen = tokio::select! {
                    _ = token.cancelled() => break,
                    seen = all.next() => seen,
                };
                match seen {
                    None => break,
                    Some(Seen::Deployment(e)) if matches!(*e, watcher::Event::Init) => {
                        state.deployments_relisted()
                    }
                    Some(Seen::Deployment(e)) => on_event(*e, |cd, gone| {
                        let (ns, name) = (cd.namespace().unwrap_or_default(), cd.name_any());
                        state.deployment(&ns, &name, (!gone).then_some(cd));
                    }),
                    Some(Seen::Member(e)) => on_event(*e, |mc, gone| {
                        let ready = !gone
                            && mc
                                .status
                                .as_ref()
                                .into_iter()
                                .flat_map(|s| &s.conditions)
                                .any(|c| c.type_ == "Ready" && c.status == "True");
                        state.member_ready(&mc.name_any(), ready);
                    }),
                    Some(Seen::PodWatchFailed(member)) => state.pods_stale(&member),
                    Some(Seen::Pod(member, e)) => {
                        state.pods_fresh(&member);
                        on_event(*e, |pod, gone| {
                            let uid = pod.uid().unwrap_or_default();
                            state.pod(&member, &uid, (!gone).then(|| PodView::of(&pod)));
                        })
                    }
                    Some(Seen::Tick) => state.evaluate(),
                }
                confirm(&hub, &mut state).await;
            }
            confirm(&hub, &mut state).await;
            let unresolved = state.take_suspects();
            state.flag_unresolved(unresolved);
            for w in &members {
                state.check_calls(&w.member, &w.cluster.calls());
            }
            state
        });
        Checker { stop, task, kinds }
    }

    /// Whether a violation of `kind` has been flagged so far (calls to lost members are
    /// checked when the checker stops).
    pub fn has(&self, kind: Kind) -> bool {
        self.kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&kind)
    }

    /// Stops watching; everything seen.
    pub async fn stop(self) -> State {
        self.stop.cancel();
        self.task.await.expect("the checker does not panic")
    }

    /// Stops watching and fails the test on any violation, listing them.
    pub async fn assert_clean(self) {
        let state = self.stop().await;
        assert!(state.checks > 0, "the checker checked nothing");
        assert!(
            state.violations.is_empty(),
            "{} invariant violations:\n{}",
            state.violations.len(),
            state
                .violations
                .iter()
                .map(|v| format!("  {:?} {:?} {:?}: {}", v.at, v.kind, v.objects, v.detail))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Reads each suspect CafeDeployment afresh and judges its pods on that view; one that cannot
/// be read stays a suspect for the next round.
async fn confirm(hub: &kube::Client, state: &mut State) {
    for ((namespace, name), breaches) in state.take_suspects() {
        let api = Api::<CafeDeployment>::namespaced(hub.clone(), &namespace);
        match tokio::time::timeout(Duration::from_secs(5), api.get_opt(&name)).await {
            Ok(Ok(cd)) => {
                let before = state.violations.len();
                state.refreshed(&namespace, &name, cd);
                if state.violations.len() == before {
                    // Printed so that a lagging view is visible in a test's output.
                    eprintln!(
                        "invariant checker: cleared by a fresh read of {namespace}/{name}: {:?}",
                        breaches.iter().map(|(k, o, _)| (k, o)).collect::<Vec<_>>()
                    );
                }
            }
            _ => {
                state
                    .suspects
                    .entry((namespace, name))
                    .or_default()
                    .extend(breaches);
            }
        }
    }
}

/// How the checker came to see a CafeDeployment state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    /// Delivered by the watch, in order.
    Watched,
    /// Read afresh, possibly ahead of the watch.
    Fresh,
}

/// The group rules over the next watched state of a CafeDeployment: a start needs the previous
/// group done and, when asked, confirmed. Returns what is broken.
fn groups(track: &mut Track, cd: &CafeDeployment, now: Instant) -> Vec<(Kind, String)> {
    let mut flags = vec![];
    let gap = std::mem::take(&mut track.gap);
    let Some(r) = cd.status.as_ref().and_then(|s| s.rollout.clone()) else {
        return flags;
    };
    let Some(revision) = r.revision.clone() else {
        return flags;
    };
    let confirmed = cd.annotations().get(UPGRADE_CONFIRMED).map(String::as_str) == Some("true");
    match track.group.clone() {
        Some((rev, k)) if rev == revision && r.current_batch > k => {
            for g in k + 1..=r.current_batch {
                // Across a relist the WaitingForConfirm may not have been seen; the hub sets the
                // annotation to "false" as it starts waiting, so a "true" next to the new group
                // is a confirmation given since.
                let vouched =
                    (track.waited && (track.confirmed || confirmed)) || (gap && confirmed);
                if g > 1 && cd.spec.strategy.need_waiting_for_confirm && !vouched {
                    flags.push((
                        Kind::GroupUnconfirmed,
                        format!(
                            "group {g} of {revision} started without a confirmation after group {}",
                            g - 1
                        ),
                    ));
                }
                if g > 1 {
                    track.pending.push((now + GRACE, revision.clone(), g - 1));
                }
                track.waited = false;
                track.confirmed = false;
            }
        }
        Some((rev, _)) if rev == revision => {}
        _ => {
            track.waited = false;
            track.confirmed = false;
            track.pending.clear();
        }
    }
    if r.phase.as_deref() == Some("WaitingForConfirm") {
        track.waited = true;
    }
    if track.waited && confirmed {
        track.confirmed = true;
    }
    track.group = Some((revision, r.current_batch));
    flags
}

/// Applies one watch event: `f(object, deleted)`.
fn on_event<K: Clone>(event: watcher::Event<K>, mut f: impl FnMut(K, bool)) {
    match event {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => f(o, false),
        watcher::Event::Delete(o) => f(o, true),
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}
