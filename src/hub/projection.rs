//! Pure planning of one CafeDeployment's projection into its members: which member each unit
//! resolves to, the InPlaceSet each unit should have, the writes that get there from what the
//! member caches show, and the status to report. No client in reach: the driver in
//! [`super::cafedeployment`] observes and applies.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::ResourceExt;

use super::membership::MemberState;
use crate::api::labels::{
    CAFEDEPLOYMENT, CAFEDEPLOYMENT_NAMESPACE, UNIT, UPGRADE_CONFIRMED, unit_label,
};
use crate::api::{
    CafeDeployment, CafeDeploymentStatus, InPlaceSet, InPlaceSetSpec, InPlaceSetStrategy,
    IntOrPercent, PodSetType,
};
use crate::plan::loans::{self, UnitFacts};
use crate::plan::revision::revision_hash;
use crate::plan::rollout::{self, RolloutInput, SetObserved, UnitObserved, UnitTarget};
use crate::plan::split;
use crate::plan::unit_status::{
    self, CLEANED_UP, PROGRESSING, REPLICA_FAILURE, StatusInput, UNITS_RESOLVED, UnitObservation,
    remove_condition, set_condition,
};

/// A registered member as the planner sees it.
#[derive(Clone, Debug)]
pub struct MemberView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The MemberCluster is being deleted: no unit resolves to it.
    pub deleting: bool,
    pub state: MemberState,
    /// Since when the MemberCluster's Ready condition has not been True.
    pub not_ready_since: Option<Time>,
    /// `spec.unschedulable`: nothing new goes there.
    pub cordoned: bool,
    /// The member's capacity from its last probe.
    pub capacity: Option<crate::api::Capacity>,
}

/// An InPlaceSet owned by the CafeDeployment, as a member's cache shows it.
#[derive(Clone, Debug)]
pub struct ObservedSet {
    pub member: String,
    pub set: Arc<InPlaceSet>,
}

impl ObservedSet {
    fn unit(&self) -> Option<&str> {
        self.set.labels().get(UNIT).map(String::as_str)
    }

    fn deleting(&self) -> bool {
        self.set.metadata.deletion_timestamp.is_some()
    }
}

/// What the planner is given.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub deployment: &'a CafeDeployment,
    pub members: &'a [MemberView],
    /// Every InPlaceSet labelled as this CafeDeployment's, in any member.
    pub sets: &'a [ObservedSet],
    /// Per member, the room other CafeDeployments' loans hold there until their pods are
    /// placed ([`held_by`]): promised once, never twice.
    pub held: &'a BTreeMap<String, Held>,
    pub now: Time,
}

/// Room a CafeDeployment's loans hold in one member: pods lent there and not placed yet, and
/// what they request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub pods: i64,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl Held {
    pub fn add(&mut self, other: &Held) {
        self.pods = self.pods.saturating_add(other.pods);
        self.cpu_millis = self.cpu_millis.saturating_add(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
    }

    /// Pods of `(cpu, memory)` this holding keeps out: at least one per held pod, more when
    /// the held pods are bigger.
    fn displaces(&self, (cpu, memory): (i64, i64)) -> i64 {
        let by = |held: i64, each: i64| {
            if each > 0 {
                held.saturating_add(each - 1) / each
            } else {
                0
            }
        };
        self.pods
            .max(by(self.cpu_millis, cpu))
            .max(by(self.memory_bytes, memory))
    }
}

/// Pods of a CafeDeployment's loans into one member: `unplaced` still wait for a node,
/// `placed` are bound there; `each` is what one requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoanPods {
    pub unplaced: i64,
    pub placed: i64,
    pub each: (i64, i64),
}

impl LoanPods {
    /// The room `pods` of them hold.
    pub fn held(&self, pods: i64) -> Held {
        Held {
            pods,
            cpu_millis: pods.saturating_mul(self.each.0),
            memory_bytes: pods.saturating_mul(self.each.1),
        }
    }
}

/// The pods of `cd`'s `loans`, per borrowing member: lent replicas its InPlaceSet there has not
/// bound to a node yet, and those it has (pods bound beyond the unit's own share are the
/// loans'). A loan holds its room from the moment it is decided (the hub keeps its decisions
/// until the status records them) until its pods are placed, and a while after, until the
/// member's own measure of its room shows them (the driver's part); after a hub restart the
/// statuses say the same.
pub fn loan_pods(
    cd: &CafeDeployment,
    loans: &[crate::api::Loan],
    sets: &[ObservedSet],
) -> BTreeMap<String, LoanPods> {
    let each = cd
        .spec
        .template
        .spec
        .as_ref()
        .map_or((0, 0), crate::plan::room::spec_requests);
    let units = cd
        .status
        .as_ref()
        .map(|s| s.units.as_slice())
        .unwrap_or_default();
    let mut out: BTreeMap<String, LoanPods> = BTreeMap::new();
    for unit in units {
        let Some(member) = unit.cluster.as_deref() else {
            continue;
        };
        let borrowed = loans
            .iter()
            .filter(|l| l.to == unit.name)
            .fold(0i32, |n, l| n.saturating_add(l.replicas.max(0)));
        if borrowed == 0 {
            continue;
        }
        let lent = loans
            .iter()
            .filter(|l| l.from == unit.name && loans::scales_down_lender(l))
            .fold(0i32, |n, l| n.saturating_add(l.replicas.max(0)));
        let own = unit.desired_replicas.saturating_sub(lent).max(0);
        let scheduled = find_set(sets, member, &unit.name)
            .filter(|c| !c.deleting())
            .and_then(|c| c.set.status.as_ref())
            .map_or(0, |s| s.scheduled_replicas);
        let placed = scheduled.saturating_sub(own).clamp(0, borrowed);
        let pods = out.entry(member.to_string()).or_insert(LoanPods {
            each,
            ..LoanPods::default()
        });
        pods.unplaced += i64::from(borrowed - placed);
        pods.placed += i64::from(placed);
    }
    out
}

/// One write to a member.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Server-side apply of the unit's InPlaceSet; `create` when the cache holds none (the
    /// namespace may need creating first).
    Apply {
        member: String,
        unit: String,
        set: Box<InPlaceSet>,
        fingerprint: String,
        create: bool,
    },
    Delete {
        member: String,
        unit: String,
        namespace: String,
        name: String,
        uid: Option<String>,
    },
}

impl Write {
    pub fn member(&self) -> &str {
        match self {
            Write::Apply { member, .. } | Write::Delete { member, .. } => member,
        }
    }
}

/// The plan for a live CafeDeployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    pub writes: Vec<Write>,
    pub status: CafeDeploymentStatus,
    /// Work left undone until a member becomes usable or a move completes: look again soon.
    pub waiting: Vec<String>,
    /// Set `apps.cafe.io/upgrade-confirmed: "false"` before anything else is written.
    pub reset_confirmation: bool,
    /// Rollout transitions to publish as Events: (reason, note).
    pub events: Vec<(&'static str, String)>,
    /// When the rollout wants to look again (its progress deadline).
    pub recheck: Option<std::time::Duration>,
}

/// Why units cannot be mapped to members, one entry per offending unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unresolved {
    NoMember { unit: String, label: String },
    SeveralMembers { unit: String, members: Vec<String> },
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::NoMember { unit, label } => {
                write!(f, "unit {unit}: no MemberCluster is labelled {label}")
            }
            Unresolved::SeveralMembers { unit, members } => write!(
                f,
                "unit {unit}: several MemberClusters carry its label ({}); a unit must map to exactly one",
                members.join(", ")
            ),
        }
    }
}

/// Maps each unit in `values` to the one MemberCluster labelled `unit.apps.cafe.io/<unitType>=<unit>`
/// (MemberClusters being deleted do not count). All offending units are reported.
pub fn resolve_units(
    unit_type: &str,
    values: &[String],
    members: &[MemberView],
) -> Result<Vec<(String, String)>, Vec<Unresolved>> {
    let key = unit_label(unit_type);
    let mut resolved = vec![];
    let mut problems = vec![];
    for unit in values {
        let matching: Vec<String> = members
            .iter()
            .filter(|m| !m.deleting && m.labels.get(&key) == Some(unit))
            .map(|m| m.name.clone())
            .collect();
        match matching.as_slice() {
            [one] => resolved.push((unit.clone(), one.clone())),
            [] => problems.push(Unresolved::NoMember {
                unit: unit.clone(),
                label: format!("{key}={unit}"),
            }),
            _ => problems.push(Unresolved::SeveralMembers {
                unit: unit.clone(),
                members: matching,
            }),
        }
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(problems)
    }
}

/// `maxUnavailablePerUnit` resolved against the unit's replicas (percents round down), at least 1
/// so that a small unit can still be updated.
pub fn unit_max_unavailable(cd: &CafeDeployment, unit_replicas: i32) -> i32 {
    cd.spec
        .strategy
        .max_unavailable_per_unit
        .budget(unit_replicas)
}

/// The InPlaceSet a unit should have: named and namespaced like the CafeDeployment, with the
/// ownership labels, the CafeDeployment's selector and template narrowed to the unit, and the
/// replicas and partition the rollout has released.
pub fn desired_set(cd: &CafeDeployment, unit: &str, target: UnitTarget) -> InPlaceSet {
    let replicas = target.replicas;
    let name = cd.name_any();
    let namespace = cd.namespace().unwrap_or_default();
    let labels = BTreeMap::from([
        (CAFEDEPLOYMENT.to_string(), name.clone()),
        (CAFEDEPLOYMENT_NAMESPACE.to_string(), namespace.clone()),
        (UNIT.to_string(), unit.to_string()),
    ]);
    let mut selector = cd.spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(UNIT.to_string(), unit.to_string());
    let mut template = cd.spec.template.clone();
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(UNIT.to_string(), unit.to_string());
    InPlaceSet {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: InPlaceSetSpec {
            replicas,
            selector,
            template,
            min_ready_seconds: cd.spec.min_ready_seconds,
            strategy: InPlaceSetStrategy {
                partition: target.partition,
                max_unavailable: IntOrPercent::Int(unit_max_unavailable(cd, replicas)),
                pod_update_policy: cd.spec.strategy.pod_update_policy.clone(),
                grace_period_seconds: cd.spec.strategy.grace_period_seconds,
            },
            lifecycle: cd.spec.lifecycle.clone(),
        },
        status: None,
    }
}

/// Identifies the fields the hub applies (labels and spec).
pub fn fingerprint(set: &InPlaceSet) -> String {
    serde_json::to_string(&(&set.metadata.labels, &set.spec)).unwrap_or_default()
}

/// Whether the observed InPlaceSet lacks something the hub applies. Labels others added are
/// left alone; the spec must match as a whole (the hub owns it).
pub fn differs(desired: &InPlaceSet, observed: &InPlaceSet) -> bool {
    let labels_missing = desired
        .labels()
        .iter()
        .any(|(k, v)| observed.labels().get(k) != Some(v));
    labels_missing || desired.spec != observed.spec
}

/// Plans a live CafeDeployment: InPlaceSets to apply or delete, and its status. A spec error or a
/// unit that maps to no member (or several) writes nothing to any member and says why in a
/// condition.
pub fn project(o: &Observed) -> Projection {
    let cd = o.deployment;
    let previous = cd.status.clone().unwrap_or_default();
    let (shares, placement) = match place(o) {
        Ok(placed) => placed,
        Err(refusal) => return refuse(o, &previous, refusal),
    };
    let member_of: BTreeMap<&str, &str> = placement
        .iter()
        .map(|(u, m)| (u.as_str(), m.as_str()))
        .collect();
    let revision = revision_hash(&cd.spec.template);

    // The rollout decides what each unit runs; loans (capacity first, whatever the rollout is
    // doing) decide where; the writes follow from both.
    let observed_units = observe_units(o, &shares, &member_of, &previous.loans);
    let decision = rollout::step(&RolloutInput {
        name: &cd.name_any(),
        strategy: &cd.spec.strategy,
        replicas: cd.spec.replicas,
        revision: &revision,
        confirmed: cd.annotations().get(UPGRADE_CONFIRMED).map(String::as_str),
        previous: previous.rollout.as_ref(),
        units: &observed_units,
        loans: &previous.loans,
        now: o.now.0,
    });
    let facts = loan_facts(
        o,
        &observed_units,
        &rollout::lend(&decision.targets, &previous.loans),
    );
    let loan_plan = loans::plan(&loan_policy(cd), &facts, &previous.loans, o.now.0);
    let asked = rollout::lend(&decision.targets, &loan_plan.loans);
    let mut plan = unit_writes(o, &shares, &member_of, &asked);
    leftover_writes(o, &shares, &member_of, &mut plan);

    let status = status_of(
        o, &previous, &revision, &placement, &plan.rows, &decision, &loan_plan,
    );
    let mut events = decision.events;
    events.extend(loan_plan.events);
    // Loans wait on time (initial delay, stabilisation, toleration) and on capacity the probes
    // refresh: while one may be due, look again soon.
    let policy = loan_policy(cd);
    let pending = facts
        .iter()
        .any(|f| f.unschedulable > 0 || f.not_ready_since.is_some())
        || !status.loans.is_empty();
    let recheck = (pending && (policy.reschedule.is_some() || policy.failover.is_some()))
        .then_some(std::time::Duration::from_secs(1));
    Projection {
        writes: plan.writes,
        status,
        waiting: plan.waiting,
        reset_confirmation: decision.reset_confirmation,
        events,
        recheck: [decision.recheck, recheck].into_iter().flatten().min(),
    }
}

/// Why the hub projects nothing: a condition to set (type, status, reason, message).
struct Refusal {
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
    message: String,
}

/// The previous status with the refusal's condition; nothing written to any member.
fn refuse(o: &Observed, previous: &CafeDeploymentStatus, r: Refusal) -> Projection {
    Projection {
        writes: vec![],
        status: with_condition(
            previous,
            o.deployment.metadata.generation,
            r.type_,
            r.status,
            r.reason,
            r.message,
            &o.now,
        ),
        waiting: vec![],
        reset_confirmation: false,
        events: vec![],
        recheck: None,
    }
}

/// Units mapped to members: (unit, member), in `topology.values` order.
type Placement = Vec<(String, String)>;

/// Each unit's share of the replicas and the member it maps to, or why there are none.
fn place(o: &Observed) -> Result<(Vec<split::UnitShare>, Placement), Refusal> {
    let cd = o.deployment;
    if cd.spec.pod_set_type != PodSetType::InPlaceSet {
        return Err(Refusal {
            type_: REPLICA_FAILURE,
            status: "True",
            reason: "UnsupportedPodSetType",
            message: format!(
                "spec.podSetType {:?} is not supported yet; use InPlaceSet",
                cd.spec.pod_set_type
            ),
        });
    }
    let topology = &cd.spec.topology;
    let shares = split::split(cd.spec.replicas, &topology.values, &topology.unit_replicas)
        .map_err(|e| Refusal {
            type_: UNITS_RESOLVED,
            status: "False",
            reason: e.reason(),
            message: e.to_string(),
        })?;
    let placement =
        resolve_units(&topology.unit_type, &topology.values, o.members).map_err(|problems| {
            Refusal {
                type_: UNITS_RESOLVED,
                status: "False",
                reason: match problems.first() {
                    Some(Unresolved::SeveralMembers { .. }) => "SeveralMembersForUnit",
                    _ => "NoMemberForUnit",
                },
                message: problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })?;
    Ok((shares, placement))
}

/// What the rollout knows of each unit: its member's state and InPlaceSet, and its loans.
fn observe_units(
    o: &Observed,
    shares: &[split::UnitShare],
    member_of: &BTreeMap<&str, &str>,
    current: &[crate::api::Loan],
) -> Vec<UnitObserved> {
    let net = loans::deltas(current);
    shares
        .iter()
        .map(|share| {
            let member = member_of
                .get(share.unit.as_str())
                .copied()
                .unwrap_or_default();
            UnitObserved {
                unit: share.unit.clone(),
                cluster: member.to_string(),
                target: share.replicas,
                unreachable: match member_state(o.members, member) {
                    MemberState::Ready => None,
                    MemberState::NotReady(problem) => Some(problem.to_string()),
                },
                set: find_set(o.sets, member, &share.unit)
                    .filter(|c| !c.deleting())
                    .map(|c| set_observed(&c.set)),
                loan: net.get(&share.unit).copied().unwrap_or(0),
            }
        })
        .collect()
}

/// What the loan planner needs of each unit; `asked_now` is what each InPlaceSet was asked for
/// with the loans as they are.
fn loan_facts(
    o: &Observed,
    units: &[UnitObserved],
    asked_now: &BTreeMap<String, UnitTarget>,
) -> Vec<UnitFacts> {
    let spec = o.deployment.spec.template.spec.as_ref();
    let requests = spec.map_or((0, 0), crate::plan::room::spec_requests);
    let demand_key = spec
        .map(crate::plan::room::Demand::of)
        .unwrap_or_default()
        .key();
    units
        .iter()
        .map(|u| {
            let view = o.members.iter().find(|m| m.name == u.cluster);
            let set = find_set(o.sets, &u.cluster, &u.unit).filter(|c| !c.deleting());
            let status = set.and_then(|c| c.set.status.clone()).unwrap_or_default();
            // Room as the member agent measured it, node by node: for this template when an
            // InPlaceSet there runs one that asks the same of a node, else from the cluster
            // summary; less this template's pods still waiting for a node there, and the room
            // other loans hold.
            let measured = view
                .and_then(|v| v.capacity.as_ref())
                .map_or(0, |capacity| match capacity.templates.get(&demand_key) {
                    Some(room) => i64::from(*room),
                    None => i64::from(crate::plan::room::room_in(capacity, requests)),
                });
            let waiting = set.map_or(0, |c| {
                i64::from(
                    c.set
                        .spec
                        .replicas
                        .saturating_sub(status.scheduled_replicas)
                        .max(0),
                )
            });
            let held = o.held.get(&u.cluster).map_or(0, |h| h.displaces(requests));
            let room = measured.saturating_sub(waiting).saturating_sub(held).max(0);
            // The member has acted on what the hub asks of it now, loans included.
            let asked = asked_now.get(&u.unit).map(|t| t.replicas);
            // Pods on their way out (a scale-in) still show until they are deleted: only once
            // the unit runs what it is asked do its unschedulable pods mean a shortage.
            let settled = u.set.as_ref().is_some_and(|s| {
                s.synced && Some(s.replicas) == asked && Some(s.status_replicas) == asked
            });
            UnitFacts {
                unit: u.unit.clone(),
                base: u.target,
                not_ready_since: match (
                    &u.unreachable,
                    view.and_then(|v| v.not_ready_since.clone()),
                ) {
                    (Some(_), Some(since)) => Some(since.0),
                    (Some(_), None) => Some(o.now.0),
                    (None, _) => None,
                },
                cordoned: view.is_some_and(|v| v.cordoned),
                room: i32::try_from(room).unwrap_or(i32::MAX),
                unschedulable: status.unschedulable_replicas,
                unschedulable_since: status.unschedulable_since.map(|t| t.0),
                available: status.available_replicas,
                settled,
            }
        })
        .collect()
}

/// One unit as the status sees it: its share, member, whether that member is usable, and its
/// InPlaceSet.
struct Row<'a> {
    share: &'a split::UnitShare,
    member: &'a str,
    reachable: bool,
    current: Option<&'a ObservedSet>,
}

/// The writes the units call for, what waits, and each unit's row.
struct UnitWrites<'a> {
    writes: Vec<Write>,
    waiting: Vec<String>,
    rows: Vec<Row<'a>>,
}

/// Applies each unit's InPlaceSet where its member is usable and it differs from what is asked.
fn unit_writes<'a>(
    o: &'a Observed,
    shares: &'a [split::UnitShare],
    member_of: &BTreeMap<&'a str, &'a str>,
    asked: &BTreeMap<String, UnitTarget>,
) -> UnitWrites<'a> {
    let cd = o.deployment;
    let mut out = UnitWrites {
        writes: vec![],
        waiting: vec![],
        rows: vec![],
    };
    for share in shares {
        let member = member_of
            .get(share.unit.as_str())
            .copied()
            .unwrap_or_default();
        let state = member_state(o.members, member);
        let current = find_set(o.sets, member, &share.unit);
        let desired = asked
            .get(&share.unit)
            .map(|t| desired_set(cd, &share.unit, *t));
        match (&state, current, desired) {
            (MemberState::Ready, Some(c), _) if c.deleting() => {
                out.waiting.push(format!(
                    "unit {}: InPlaceSet still being deleted",
                    share.unit
                ));
            }
            (MemberState::Ready, current, Some(desired)) => {
                if current.is_none_or(|c| differs(&desired, &c.set)) {
                    out.writes.push(Write::Apply {
                        member: member.to_string(),
                        unit: share.unit.clone(),
                        fingerprint: fingerprint(&desired),
                        create: current.is_none(),
                        set: Box::new(desired),
                    });
                }
            }
            (MemberState::NotReady(problem), _, _) => {
                out.waiting
                    .push(format!("unit {} (member {member}): {problem}", share.unit));
            }
            (MemberState::Ready, _, None) => {}
        }
        out.rows.push(Row {
            share,
            member,
            reachable: state == MemberState::Ready,
            current,
        });
    }
    out
}

/// InPlaceSets of units no longer listed go; those of a unit that moved to another member go
/// once the new member has the unit's replicas available, so the unit never runs empty.
fn leftover_writes(
    o: &Observed,
    shares: &[split::UnitShare],
    member_of: &BTreeMap<&str, &str>,
    plan: &mut UnitWrites<'_>,
) {
    for observed in o.sets.iter().filter(|s| !s.deleting()) {
        let unit = observed.unit().unwrap_or_default();
        let target = member_of.get(unit).copied();
        if target == Some(observed.member.as_str()) {
            continue;
        }
        if let Some(target) = target {
            let share = shares
                .iter()
                .find(|s| s.unit == unit)
                .map_or(0, |s| s.replicas);
            let moved = find_set(o.sets, target, unit)
                .and_then(|s| s.set.status.as_ref())
                .is_some_and(|s| s.available_replicas >= share);
            if !moved {
                plan.waiting.push(format!(
                    "unit {unit}: moving from member {} to {target}",
                    observed.member
                ));
                continue;
            }
        }
        match member_state(o.members, &observed.member) {
            MemberState::Ready => plan.writes.push(delete_of(observed, unit)),
            MemberState::NotReady(problem) => plan.waiting.push(format!(
                "unit {unit}: cannot delete its InPlaceSet in member {}: {problem}",
                observed.member
            )),
        }
    }
}

/// The status: the units' rows and totals (targets after loans), the placement, the
/// rollout's progress, and the loans.
fn status_of(
    o: &Observed,
    previous: &CafeDeploymentStatus,
    revision: &str,
    placement: &[(String, String)],
    rows: &[Row<'_>],
    decision: &rollout::RolloutDecision,
    loan_plan: &loans::LoanPlan,
) -> CafeDeploymentStatus {
    let cd = o.deployment;
    let generation = cd.metadata.generation;
    let units = rows
        .iter()
        .map(|row| {
            let target = loans::carried(&row.share.unit, row.share.replicas, &loan_plan.loans);
            UnitObservation {
                unit: row.share.unit.clone(),
                cluster: Some(row.member.to_string()),
                desired_replicas: row.share.replicas,
                target_replicas: target,
                max_unavailable: unit_max_unavailable(cd, target),
                reachable: row.reachable,
                unreachable_since: o
                    .members
                    .iter()
                    .find(|m| m.name == row.member)
                    .and_then(|m| m.not_ready_since.clone()),
                inplaceset: row.current.map(|c| &*c.set),
            }
        })
        .collect();
    let mut status = unit_status::aggregate(&StatusInput {
        generation,
        previous,
        update_revision: revision.to_string(),
        selector: Some(unit_status::selector_string(&cd.spec.selector)),
        units,
        now: o.now.clone(),
    });
    set_condition(
        &mut status.conditions,
        Condition {
            type_: UNITS_RESOLVED.into(),
            status: "True".into(),
            reason: "Resolved".into(),
            message: placement
                .iter()
                .map(|(u, m)| format!("{u} -> {m}"))
                .collect::<Vec<_>>()
                .join(", "),
            observed_generation: generation,
            last_transition_time: o.now.clone(),
        },
    );
    remove_condition(&mut status.conditions, REPLICA_FAILURE);
    remove_condition(&mut status.conditions, CLEANED_UP);
    // The rollout, not the unit totals, says whether the CafeDeployment is progressing.
    let progress = &decision.progressing;
    set_condition(
        &mut status.conditions,
        Condition {
            type_: PROGRESSING.into(),
            status: progress.status.into(),
            reason: progress.reason.into(),
            message: progress.message.clone(),
            observed_generation: generation,
            last_transition_time: o.now.clone(),
        },
    );
    status.rollout = Some(decision.status.clone());
    for row in &mut status.units {
        row.lent_replicas = loan_plan
            .loans
            .iter()
            .filter(|l| l.from == row.name)
            .map(|l| l.replicas)
            .sum();
        row.borrowed_replicas = loan_plan
            .loans
            .iter()
            .filter(|l| l.to == row.name)
            .map(|l| l.replicas)
            .sum();
    }
    set_rescheduled(&mut status.conditions, &loan_plan.loans, generation, &o.now);
    status.loans = loan_plan.loans.clone();
    status
}

/// The reschedule and failover rules of a CafeDeployment.
fn loan_policy(cd: &CafeDeployment) -> loans::Policy {
    let secs = |s: i32| std::time::Duration::from_secs(u64::try_from(s).unwrap_or(0));
    let topology = &cd.spec.topology;
    loans::Policy {
        reschedule: topology
            .auto_reschedule
            .as_ref()
            .filter(|r| r.enable)
            .map(|r| loans::Reschedule {
                initial_delay: secs(r.initial_delay_seconds),
                move_back: r.move_back,
                stabilization: secs(r.stabilization_seconds),
            }),
        failover: topology
            .failover
            .as_ref()
            .filter(|f| f.enable)
            .map(|f| secs(f.toleration_seconds)),
    }
}

/// `Rescheduled`: True while some unit runs replicas for another, saying which and why.
fn set_rescheduled(
    conditions: &mut Vec<Condition>,
    loans: &[crate::api::Loan],
    generation: Option<i64>,
    now: &Time,
) {
    if loans.is_empty() {
        remove_condition(conditions, RESCHEDULED);
        return;
    }
    let reason = if loans.iter().any(|l| l.reason == loans::FAILOVER) {
        "Failover"
    } else {
        "Unschedulable"
    };
    let message = loans
        .iter()
        .map(|l| {
            format!(
                "{} runs {} of {}'s replicas ({}{})",
                l.to,
                l.replicas,
                l.from,
                l.reason,
                if l.returning { ", returning" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    set_condition(
        conditions,
        Condition {
            type_: RESCHEDULED.into(),
            status: "True".into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        },
    );
}

/// Condition type set while replicas run in another unit than their own.
pub const RESCHEDULED: &str = "Rescheduled";

/// The rollout's view of a unit's InPlaceSet.
fn set_observed(set: &InPlaceSet) -> SetObserved {
    let status = set.status.clone().unwrap_or_default();
    SetObserved {
        replicas: set.spec.replicas,
        partition: set.spec.strategy.partition,
        synced: set.metadata.generation.is_some()
            && status.observed_generation == set.metadata.generation,
        update_revision: status.update_revision,
        status_replicas: status.replicas,
        updated: status.updated_replicas,
        updated_available: status.updated_available_replicas,
    }
}

/// The plan for a CafeDeployment being deleted.
#[derive(Clone, Debug, PartialEq)]
pub struct Cleanup {
    pub writes: Vec<Write>,
    /// Members that may hold this CafeDeployment's InPlaceSets but cannot be reached: the
    /// finalizer stays until they can.
    pub blocked: Vec<String>,
}

/// Deletes the CafeDeployment's InPlaceSets in every usable member. A member that is not usable
/// blocks the deletion when its cache shows an InPlaceSet of ours or one of our units maps to it
/// (it may hold one the cache has not seen).
pub fn plan_cleanup(o: &Observed) -> Cleanup {
    let topology = &o.deployment.spec.topology;
    let key = unit_label(&topology.unit_type);
    let mut writes = vec![];
    let mut blocked = vec![];
    for member in o.members {
        let ours: Vec<&ObservedSet> = o.sets.iter().filter(|s| s.member == member.name).collect();
        match &member.state {
            MemberState::Ready => {
                for s in ours.into_iter().filter(|s| !s.deleting()) {
                    writes.push(delete_of(s, s.unit().unwrap_or_default()));
                }
            }
            MemberState::NotReady(problem) => {
                let mapped = member
                    .labels
                    .get(&key)
                    .is_some_and(|u| topology.values.contains(u));
                if !ours.is_empty() || mapped {
                    blocked.push(format!("member {}: {problem}", member.name));
                }
            }
        }
    }
    Cleanup { writes, blocked }
}

/// The previous status with the observed generation and one condition set: for a deployment the
/// hub refuses to project, or whose deletion waits.
pub fn with_condition(
    previous: &CafeDeploymentStatus,
    generation: Option<i64>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
) -> CafeDeploymentStatus {
    let mut s = previous.clone();
    s.observed_generation = generation;
    set_condition(
        &mut s.conditions,
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        },
    );
    s
}

fn member_state(members: &[MemberView], name: &str) -> MemberState {
    members
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.state.clone())
        .unwrap_or_else(|| {
            MemberState::NotReady(super::probe::Problem::new(
                super::probe::ProblemReason::Connecting,
                "not registered",
            ))
        })
}

fn find_set<'a>(sets: &'a [ObservedSet], member: &str, unit: &str) -> Option<&'a ObservedSet> {
    sets.iter()
        .find(|s| s.member == member && s.unit() == Some(unit))
}

fn delete_of(s: &ObservedSet, unit: &str) -> Write {
    Write::Delete {
        member: s.member.clone(),
        unit: unit.to_string(),
        namespace: s.set.namespace().unwrap_or_default(),
        name: s.set.name_any(),
        uid: s.set.metadata.uid.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InPlaceSetStatus;
    use crate::hub::probe::{Problem, ProblemReason};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn deployment(
        replicas: i32,
        values: &[&str],
        unit_replicas: serde_json::Value,
    ) -> CafeDeployment {
        let mut cd: CafeDeployment = serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1",
            "kind": "CafeDeployment",
            "metadata": {"name": "demo", "namespace": "shop", "generation": 3, "uid": "cd-uid"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "demo"}},
                "template": {"metadata": {"labels": {"app": "demo"}}, "spec": {"containers": [{"name": "app", "image": "demo:1"}]}},
                "minReadySeconds": 5,
                "topology": {"unitType": "DataCenter", "values": values, "unitReplicas": unit_replicas},
                // One group with everything: these tests are about the projection; the
                // rollout's groups have their own tests.
                "strategy": {"maxUnavailablePerUnit": "25%", "upgradeType": "Batch", "batchSize": "100%"},
            },
        }))
        .unwrap();
        cd.metadata.finalizers = Some(vec!["apps.cafe.io/cleanup".into()]);
        cd
    }

    fn member(name: &str, unit: &str) -> MemberView {
        MemberView {
            not_ready_since: None,
            cordoned: false,
            capacity: None,
            name: name.into(),
            labels: BTreeMap::from([(unit_label("DataCenter"), unit.to_string())]),
            deleting: false,
            state: MemberState::Ready,
        }
    }

    fn three() -> Vec<MemberView> {
        vec![
            member("dca", "DCA"),
            member("dcb", "DCB"),
            member("dcc", "DCC"),
        ]
    }

    /// `project` of `cd` over `members` and `sets`, now.
    fn project_now(
        cd: &CafeDeployment,
        members: &[MemberView],
        sets: &[ObservedSet],
    ) -> Projection {
        project(&Observed {
            deployment: cd,
            members,
            sets,
            held: &BTreeMap::new(),
            now: now(),
        })
    }

    fn now() -> Time {
        Time(Timestamp::from_second(1_000).unwrap())
    }

    fn observed_from(cd: &CafeDeployment, member: &str, unit: &str, replicas: i32) -> ObservedSet {
        let mut set = desired_set(
            cd,
            unit,
            UnitTarget {
                replicas,
                partition: 0,
            },
        );
        set.metadata.uid = Some(format!("{member}-uid"));
        set.metadata.generation = Some(1);
        set.status = Some(InPlaceSetStatus {
            observed_generation: Some(1),
            replicas,
            ready_replicas: replicas,
            available_replicas: replicas,
            updated_replicas: replicas,
            updated_ready_replicas: replicas,
            updated_available_replicas: replicas,
            update_revision: Some(revision_hash(&cd.spec.template)),
            ..Default::default()
        });
        ObservedSet {
            member: member.into(),
            set: Arc::new(set),
        }
    }

    fn applied(p: &Projection) -> Vec<(String, String, i32)> {
        p.writes
            .iter()
            .filter_map(|w| match w {
                Write::Apply {
                    member, unit, set, ..
                } => Some((member.clone(), unit.clone(), set.spec.replicas)),
                _ => None,
            })
            .collect()
    }

    fn condition<'a>(s: &'a CafeDeploymentStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_templates_room_comes_from_its_demand_key_before_the_cluster_summary() {
        let cd = deployment(4, &["DCA", "DCB"], json!({}));
        let key = crate::plan::room::Demand::of(cd.spec.template.spec.as_ref().unwrap()).key();
        // Neither summary has a free untainted node; DCB's agent measured this template (it
        // tolerates DCB's taints, say) at 3, DCA's only another template.
        let nothing_free = crate::api::Capacity {
            nodes: 1,
            ..Default::default()
        };
        let mut members = vec![member("dca", "DCA"), member("dcb", "DCB")];
        members[0].capacity = Some(crate::api::Capacity {
            templates: BTreeMap::from([("0123456789abcdef".to_string(), 5)]),
            ..nothing_free.clone()
        });
        members[1].capacity = Some(crate::api::Capacity {
            templates: BTreeMap::from([(key, 3)]),
            ..nothing_free
        });
        let unit = |unit: &str, cluster: &str| UnitObserved {
            unit: unit.into(),
            cluster: cluster.into(),
            target: 2,
            unreachable: None,
            set: None,
            loan: 0,
        };
        let o = Observed {
            deployment: &cd,
            members: &members,
            sets: &[],
            held: &BTreeMap::new(),
            now: now(),
        };
        let facts = loan_facts(
            &o,
            &[unit("DCA", "dca"), unit("DCB", "dcb")],
            &BTreeMap::new(),
        );
        let room: Vec<(&str, i32)> = facts.iter().map(|f| (f.unit.as_str(), f.room)).collect();
        assert_eq!(room, [("DCA", 0), ("DCB", 3)]);
    }

    #[test]
    fn each_unit_gets_its_share_in_its_member() {
        let cd = deployment(10, &["DCA", "DCB", "DCC"], json!({"DCA": 4, "DCB": "30%"}));
        let members = three();
        let p = project_now(&cd, &members, &[]);
        assert_eq!(
            applied(&p),
            vec![
                ("dca".into(), "DCA".into(), 4),
                ("dcb".into(), "DCB".into(), 3),
                ("dcc".into(), "DCC".into(), 3),
            ]
        );
        assert!(
            p.writes
                .iter()
                .all(|w| matches!(w, Write::Apply { create: true, .. }))
        );
        assert_eq!(
            condition(&p.status, UNITS_RESOLVED).message,
            "DCA -> dca, DCB -> dcb, DCC -> dcc"
        );
        assert_eq!(p.status.units.len(), 3);
        assert_eq!(p.status.observed_generation, Some(3));
    }

    #[test]
    fn the_desired_set_carries_labels_selector_template_and_strategy() {
        let cd = deployment(10, &["DCA", "DCB"], json!({}));
        let set = desired_set(
            &cd,
            "DCA",
            UnitTarget {
                replicas: 8,
                partition: 0,
            },
        );
        assert_eq!(set.metadata.name.as_deref(), Some("demo"));
        assert_eq!(set.metadata.namespace.as_deref(), Some("shop"));
        let labels = set.metadata.labels.clone().unwrap();
        assert_eq!(labels[CAFEDEPLOYMENT], "demo");
        assert_eq!(labels[CAFEDEPLOYMENT_NAMESPACE], "shop");
        assert_eq!(labels[UNIT], "DCA");
        let selector = set.spec.selector.match_labels.clone().unwrap();
        assert_eq!(
            (selector["app"].as_str(), selector[UNIT].as_str()),
            ("demo", "DCA")
        );
        let template_labels = set.spec.template.metadata.clone().unwrap().labels.unwrap();
        assert_eq!(template_labels[UNIT], "DCA");
        assert_eq!(set.spec.min_ready_seconds, 5);
        assert_eq!(set.spec.strategy.partition, 0);
        // 25% of 8 = 2; of 2 it would be 0, raised to 1.
        assert_eq!(set.spec.strategy.max_unavailable, IntOrPercent::Int(2));
        assert_eq!(
            desired_set(
                &cd,
                "DCA",
                UnitTarget {
                    replicas: 2,
                    partition: 0
                }
            )
            .spec
            .strategy
            .max_unavailable,
            IntOrPercent::Int(1)
        );
    }

    #[test]
    fn the_desired_set_carries_the_hooks_grace_period_and_update_policy() {
        let mut cd = deployment(10, &["DCA", "DCB"], json!({}));
        cd.spec.strategy.grace_period_seconds = 7;
        cd.spec.strategy.pod_update_policy = crate::api::PodUpdatePolicy::ReCreate;
        cd.spec.lifecycle = Some(
            serde_json::from_value(json!({
                "preUpdate": {"finalizersHandler": ["example.com/traffic"]},
                "preDelete": {"labelsHandler": {"traffic": "on"}},
                "timeoutSeconds": 60,
            }))
            .unwrap(),
        );
        let set = desired_set(
            &cd,
            "DCA",
            UnitTarget {
                replicas: 5,
                partition: 0,
            },
        );
        assert_eq!(set.spec.strategy.grace_period_seconds, 7);
        assert_eq!(
            set.spec.strategy.pod_update_policy,
            crate::api::PodUpdatePolicy::ReCreate
        );
        assert_eq!(set.spec.lifecycle, cd.spec.lifecycle);
    }

    fn with_beta_groups(mut cd: CafeDeployment, confirm: bool) -> CafeDeployment {
        cd.spec.strategy = serde_json::from_value(json!({
            "upgradeType": "Beta", "batchSize": 4, "needWaitingForConfirm": confirm,
            "maxUnavailablePerUnit": 1,
        }))
        .unwrap();
        cd
    }

    fn replicas_and_partitions(p: &Projection) -> Vec<(String, i32, i32)> {
        p.writes
            .iter()
            .filter_map(|w| match w {
                Write::Apply { unit, set, .. } => {
                    Some((unit.clone(), set.spec.replicas, set.spec.strategy.partition))
                }
                Write::Delete { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_new_deployment_creates_its_pods_group_by_group() {
        let cd = with_beta_groups(deployment(10, &["DCA", "DCB"], json!({})), true);
        let members = three();
        let p = project_now(&cd, &members, &[]);
        // The Beta group: one pod in each unit.
        assert_eq!(
            replicas_and_partitions(&p),
            vec![("DCA".into(), 1, 0), ("DCB".into(), 1, 0)]
        );
        let rollout = p.status.rollout.clone().unwrap();
        assert_eq!(rollout.current_batch, 1);
        assert_eq!(rollout.total_batches, 3);
        assert!(!p.reset_confirmation);
        assert!(p.events.iter().any(|(r, _)| *r == "GroupStarted"));

        // The members report the Beta pods available: the group waits for confirmation, the
        // annotation is reset first, nothing else is written.
        let mut cd = cd;
        cd.status = Some(p.status.clone());
        let sets = vec![
            observed_from(&cd, "dca", "DCA", 1),
            observed_from(&cd, "dcb", "DCB", 1),
        ];
        let p = project_now(&cd, &members, &sets);
        assert!(p.writes.is_empty(), "{:?}", p.writes);
        assert!(p.reset_confirmation);
        let rollout = p.status.rollout.clone().unwrap();
        assert_eq!(rollout.phase.as_deref(), Some("WaitingForConfirm"));
        let progressing = p
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == PROGRESSING)
            .unwrap();
        assert_eq!(progressing.reason, "WaitingForConfirm");
        assert!(progressing.message.contains("cafe rollout confirm demo"));

        // Confirmed: the next group (2 + 2) goes out.
        cd.status = Some(p.status.clone());
        cd.metadata.annotations = Some(BTreeMap::from([(
            UPGRADE_CONFIRMED.to_string(),
            "true".to_string(),
        )]));
        let p = project_now(&cd, &members, &sets);
        assert_eq!(
            replicas_and_partitions(&p),
            vec![("DCA".into(), 3, 0), ("DCB".into(), 3, 0)]
        );
    }

    #[test]
    fn nothing_is_written_when_the_members_already_match() {
        let cd = deployment(10, &["DCA", "DCB", "DCC"], json!({"DCA": 4, "DCB": "30%"}));
        let members = three();
        let sets = vec![
            observed_from(&cd, "dca", "DCA", 4),
            observed_from(&cd, "dcb", "DCB", 3),
            observed_from(&cd, "dcc", "DCC", 3),
        ];
        let p = project_now(&cd, &members, &sets);
        assert!(p.writes.is_empty(), "{:?}", p.writes);
        assert_eq!(p.status.ready_replicas, 10);
        assert_eq!(condition(&p.status, "Available").status, "True");
    }

    #[test]
    fn scaling_updates_only_the_units_whose_share_changed() {
        let cd = deployment(11, &["DCA", "DCB"], json!({}));
        let members = three();
        let sets = vec![
            observed_from(&cd, "dca", "DCA", 6),
            observed_from(&cd, "dcb", "DCB", 5),
        ];
        let p = project_now(&cd, &members, &sets);
        assert!(p.writes.is_empty());
        let cd = deployment(13, &["DCA", "DCB"], json!({}));
        let p = project_now(&cd, &members, &sets);
        assert_eq!(
            applied(&p),
            vec![
                ("dca".into(), "DCA".into(), 7),
                ("dcb".into(), "DCB".into(), 6)
            ]
        );
        assert!(
            p.writes
                .iter()
                .all(|w| matches!(w, Write::Apply { create: false, .. }))
        );
    }

    #[test]
    fn a_unit_without_a_member_writes_nothing_and_names_it() {
        let cd = deployment(10, &["DCA", "DCX"], json!({}));
        let members = three();
        let p = project_now(&cd, &members, &[]);
        assert!(p.writes.is_empty());
        let c = condition(&p.status, UNITS_RESOLVED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoMemberForUnit")
        );
        assert!(c.message.contains("unit DCX"), "{}", c.message);
        assert!(
            c.message.contains("unit.apps.cafe.io/DataCenter=DCX"),
            "{}",
            c.message
        );
    }

    #[test]
    fn a_unit_with_two_members_writes_nothing_and_names_them() {
        let cd = deployment(10, &["DCA", "DCB"], json!({}));
        let mut members = three();
        members.push(member("dca2", "DCA"));
        let p = project_now(&cd, &members, &[]);
        assert!(p.writes.is_empty());
        let c = condition(&p.status, UNITS_RESOLVED);
        assert_eq!(c.reason, "SeveralMembersForUnit");
        assert!(c.message.contains("dca, dca2"), "{}", c.message);
    }

    #[test]
    fn a_split_error_writes_nothing() {
        let cd = deployment(5, &["DCA", "DCB"], json!({"DCA": 6}));
        let members = three();
        let p = project_now(&cd, &members, &[]);
        assert!(p.writes.is_empty());
        let c = condition(&p.status, UNITS_RESOLVED);
        assert_eq!(c.reason, "UnitReplicasExceedReplicas");
        assert!(c.message.contains("DCA: 6"), "{}", c.message);
    }

    #[test]
    fn a_removed_unit_is_deleted_and_unreachable_members_are_left_alone() {
        let cd = deployment(10, &["DCA", "DCB"], json!({}));
        let mut members = three();
        let sets = vec![
            observed_from(&cd, "dca", "DCA", 5),
            observed_from(&cd, "dcb", "DCB", 5),
            observed_from(&cd, "dcc", "DCC", 3),
        ];
        let p = project_now(&cd, &members, &sets);
        assert_eq!(
            p.writes,
            vec![Write::Delete {
                member: "dcc".into(),
                unit: "DCC".into(),
                namespace: "shop".into(),
                name: "demo".into(),
                uid: Some("dcc-uid".into()),
            }]
        );
        members[2].state =
            MemberState::NotReady(Problem::new(ProblemReason::Unreachable, "refused"));
        members[1].state =
            MemberState::NotReady(Problem::new(ProblemReason::Unreachable, "refused"));
        let cd = deployment(12, &["DCA", "DCB"], json!({}));
        let p = project_now(&cd, &members, &sets);
        // A member down freezes the rollout, a scale-out included: DCA keeps its 5.
        assert_eq!(applied(&p), vec![]);
        assert_eq!(p.waiting.len(), 2, "{:?}", p.waiting);
        let rollout = p.status.rollout.clone().unwrap();
        assert_eq!(rollout.phase.as_deref(), Some("Stalled"));
        assert!(rollout.message.unwrap().contains("dcb"));
        assert!(!p.status.units[1].reachable);
    }

    #[test]
    fn a_moved_unit_is_deleted_from_the_old_member_only_once_available_in_the_new() {
        let cd = deployment(4, &["DCA"], json!({}));
        let members = vec![member("old", "X"), member("new", "DCA")];
        let old = observed_from(&cd, "old", "DCA", 4);
        let p = project_now(&cd, &members, std::slice::from_ref(&old));
        assert_eq!(applied(&p), vec![("new".into(), "DCA".into(), 4)]);
        assert!(!p.writes.iter().any(|w| matches!(w, Write::Delete { .. })));
        let new = observed_from(&cd, "new", "DCA", 4);
        let p = project_now(&cd, &members, &[old, new]);
        assert!(matches!(p.writes.as_slice(), [Write::Delete { member, .. }] if member == "old"));
    }

    #[test]
    fn cleanup_deletes_everywhere_reachable_and_blocks_on_unreachable_members_in_use() {
        let cd = deployment(10, &["DCA", "DCB"], json!({}));
        let mut members = three();
        members[1].state =
            MemberState::NotReady(Problem::new(ProblemReason::Unreachable, "refused"));
        members[2].state =
            MemberState::NotReady(Problem::new(ProblemReason::Unreachable, "refused"));
        let sets = vec![
            observed_from(&cd, "dca", "DCA", 5),
            observed_from(&cd, "dcb", "DCB", 5),
        ];
        let c = plan_cleanup(&Observed {
            deployment: &cd,
            members: &members,
            sets: &sets,
            held: &BTreeMap::new(),
            now: now(),
        });
        assert!(matches!(c.writes.as_slice(), [Write::Delete { member, .. }] if member == "dca"));
        // dcc is unreachable but holds nothing of ours and none of our units maps to it.
        assert_eq!(
            c.blocked,
            vec!["member dcb: Unreachable: refused".to_string()]
        );
    }
}
