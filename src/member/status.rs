//! InPlaceSet status: summarising the pods (pure) and writing it only when it changed.
//!
//! The hub never watches member pods; this summary is all it sees.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::core::Selector;
use serde_json::{Value, json};

use super::pod::PodView;
use crate::api::labels::MEMBER_MANAGER;
use crate::api::{InPlaceSet, InPlaceSetStatus, NOT_READY_SHOWN, NotReadyPod, RevisionReplicas};
use crate::plan::revision::current_revision;
use crate::runtime::status_patch::replace_status;

/// Condition type set while pods cannot be created or deleted, as on ReplicaSets.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
/// Condition type set while a lifecycle hook has held a pod past `lifecycle.timeoutSeconds`.
pub const LIFECYCLE_BLOCKED: &str = "LifecycleBlocked";

/// A pod a hook has held past its timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedPod {
    pub pod: String,
    /// `preUpdate` or `preDelete`.
    pub hook: &'static str,
    /// What still holds it (`finalizer x`, `label k=v`).
    pub holders: Vec<String>,
    pub waited_seconds: u64,
}

impl BlockedPod {
    /// The condition/Event reason.
    pub fn reason(&self) -> &'static str {
        match self.hook {
            "preDelete" => "PreDeleteHookTimeout",
            _ => "PreUpdateHookTimeout",
        }
    }

    pub fn message(&self) -> String {
        format!(
            "pod {} has waited {}s for its {} hook ({}); it stays blocked until the hook is released",
            self.pod,
            self.waited_seconds,
            self.hook,
            self.holders.join(", ")
        )
    }
}

/// What the last scale attempt says about the ReplicaFailure condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaFailure {
    /// Creating or deleting pods failed: set the condition (reason like `FailedCreate`).
    Failed { reason: String, message: String },
    /// Scaling succeeded or had nothing to do: clear the condition.
    None,
    /// Scaling waited for the cache: leave the condition as it is.
    Unknown,
}

/// Everything the status is computed from.
pub struct Inputs<'a> {
    pub generation: Option<i64>,
    pub min_ready_seconds: i32,
    pub update_revision: &'a str,
    pub selector: &'a LabelSelector,
    pub previous: Option<&'a InPlaceSetStatus>,
    pub pods: &'a [PodView],
    pub failure: ReplicaFailure,
    /// Pods held by a hook past the timeout, sorted by pod name.
    pub blocked: &'a [BlockedPod],
    pub now: Timestamp,
}

/// The status the pods call for, and when it will change by itself (a ready pod becoming
/// available after `minReadySeconds`), so the controller can look again then.
pub fn compute(input: &Inputs<'_>) -> (InPlaceSetStatus, Option<Duration>) {
    let active: Vec<&PodView> = input.pods.iter().filter(|p| !p.facts.deleting).collect();
    let min_ready = Duration::from_secs(u64::try_from(input.min_ready_seconds).unwrap_or(0));
    let mut recheck: Option<Duration> = None;
    let mut available = 0;
    let mut updated_available = 0;
    for p in &active {
        let Some(since) = p.ready_since else { continue };
        let ready_for = input
            .now
            .duration_since(since)
            .try_into()
            .unwrap_or(Duration::ZERO);
        if ready_for >= min_ready {
            available += 1;
            if p.revision.as_deref() == Some(input.update_revision) {
                updated_available += 1;
            }
        } else {
            let left = min_ready - ready_for;
            recheck = Some(recheck.map_or(left, |r| r.min(left)));
        }
    }
    let updated = |p: &&&PodView| p.revision.as_deref() == Some(input.update_revision);
    let current = current_revision(
        input.previous.and_then(|s| s.current_revision.as_deref()),
        input.update_revision,
        active
            .iter()
            .filter_map(|p| p.revision.as_deref())
            .map(|r| (r, 1)),
    );
    let unschedulable: Vec<Timestamp> = active
        .iter()
        .filter_map(|p| p.unschedulable_since)
        .collect();
    let status = InPlaceSetStatus {
        observed_generation: input.generation,
        replicas: count(active.len()),
        ready_replicas: count(active.iter().filter(|p| p.facts.ready).count()),
        available_replicas: available,
        updated_replicas: count(active.iter().filter(updated).count()),
        updated_ready_replicas: count(
            active
                .iter()
                .filter(updated)
                .filter(|p| p.facts.ready)
                .count(),
        ),
        updated_available_replicas: updated_available,
        current_replicas: count(
            active
                .iter()
                .filter(|p| p.revision.as_deref() == Some(current.as_str()))
                .count(),
        ),
        revisions: revisions(input.update_revision, &active),
        unschedulable_replicas: count(unschedulable.len()),
        unschedulable_since: unschedulable.into_iter().min().map(Time),
        scheduled_replicas: count(active.iter().filter(|p| p.facts.scheduled).count()),
        current_revision: Some(current),
        not_ready_pods: not_ready_pods(&active),
        update_revision: Some(input.update_revision.to_string()),
        selector: selector_string(input.selector),
        conditions: conditions(input),
    };
    (status, recheck)
}

/// The first few not-ready pods by name, and why: bounded, so the status stays small at any
/// scale and changes only when what a reader needs to know does.
fn not_ready_pods(pods: &[&PodView]) -> Vec<NotReadyPod> {
    let mut out: Vec<NotReadyPod> = pods
        .iter()
        .filter_map(|p| {
            let (reason, message) = p.not_ready.clone()?;
            Some(NotReadyPod {
                name: p.facts.name.clone(),
                revision: p.revision.clone(),
                reason,
                message,
                restart_count: p.restarts,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.truncate(NOT_READY_SHOWN);
    out
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Pods per revision: the update revision first, then the others by name.
fn revisions(update: &str, pods: &[&PodView]) -> Vec<RevisionReplicas> {
    let mut by: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for p in pods {
        let e = by.entry(p.revision.as_deref().unwrap_or("")).or_default();
        e.0 += 1;
        e.1 += usize::from(p.facts.ready);
    }
    let mut out: Vec<RevisionReplicas> = by
        .into_iter()
        .map(|(revision, (n, ready))| RevisionReplicas {
            revision: revision.to_string(),
            replicas: count(n),
            ready_replicas: count(ready),
        })
        .collect();
    out.sort_by_key(|r| r.revision != update);
    out
}

/// The selector in the API's string form, for the scale subresource (`kubectl scale`, HPA).
pub fn selector_string(selector: &LabelSelector) -> Option<String> {
    Selector::try_from(selector.clone())
        .ok()
        .map(|s| s.to_string())
}

/// The previous conditions with ReplicaFailure and LifecycleBlocked set, cleared or kept; an
/// unchanged condition keeps its lastTransitionTime, so an unchanged status compares equal.
fn conditions(input: &Inputs<'_>) -> Vec<Condition> {
    let previous = input
        .previous
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let replica_failure = match &input.failure {
        ReplicaFailure::Unknown => Wanted::Keep,
        ReplicaFailure::None => Wanted::Clear,
        ReplicaFailure::Failed { reason, message } => Wanted::Set {
            reason: reason.clone(),
            message: message.clone(),
        },
    };
    let blocked = match input.blocked {
        [] => Wanted::Clear,
        [first, ..] => Wanted::Set {
            reason: first.reason().to_string(),
            message: input
                .blocked
                .iter()
                .map(BlockedPod::message)
                .collect::<Vec<_>>()
                .join("; "),
        },
    };
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| c.type_ != REPLICA_FAILURE && c.type_ != LIFECYCLE_BLOCKED)
        .cloned()
        .collect();
    for (type_, wanted) in [
        (REPLICA_FAILURE, replica_failure),
        (LIFECYCLE_BLOCKED, blocked),
    ] {
        let old = previous.iter().find(|c| c.type_ == type_);
        out.extend(wanted.resolve(type_, old, input));
    }
    out
}

/// What one True-or-absent condition should become.
enum Wanted {
    Set { reason: String, message: String },
    Clear,
    Keep,
}

impl Wanted {
    fn resolve(
        self,
        type_: &str,
        old: Option<&Condition>,
        input: &Inputs<'_>,
    ) -> Option<Condition> {
        match self {
            Wanted::Keep => old.cloned(),
            Wanted::Clear => None,
            Wanted::Set { reason, message } => {
                let same = old.filter(|c| c.status == "True");
                if let Some(c) = same.filter(|c| c.reason == reason && c.message == message) {
                    return Some(c.clone());
                }
                Some(Condition {
                    type_: type_.to_string(),
                    status: "True".to_string(),
                    reason,
                    message,
                    last_transition_time: same
                        .map_or(Time(input.now), |c| c.last_transition_time.clone()),
                    observed_generation: input.generation,
                })
            }
        }
    }
}

/// Writes `status` through the status subresource when it differs from what `ips` shows.
/// Returns whether it wrote.
pub async fn write_if_changed(
    api: &Api<InPlaceSet>,
    ips: &InPlaceSet,
    status: &InPlaceSetStatus,
) -> Result<bool, kube::Error> {
    if ips.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let params = PatchParams {
        field_manager: Some(MEMBER_MANAGER.to_string()),
        ..PatchParams::default()
    };
    // Replaces the whole status: what became empty is removed, not kept from before.
    let old = serde_json::to_value(&ips.status).unwrap_or(Value::Null);
    let new = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    let patch = Patch::Merge(replace_status(&old, &new));
    api.patch_status(&ips.name_any(), &params, &patch).await?;
    tracing::debug!(
        namespace = ips.namespace().unwrap_or_default(),
        inplaceset = ips.name_any(),
        replicas = status.replicas,
        ready = status.ready_replicas,
        "status written"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::scale::PodFacts;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn view(name: &str, rev: &str, ready_since: Option<i64>) -> PodView {
        PodView {
            facts: PodFacts {
                name: name.into(),
                uid: name.into(),
                scheduled: true,
                ready: ready_since.is_some(),
                created: ts(0),
                deleting: false,
            },
            revision: Some(rev.into()),
            containers_ready: ready_since.is_some(),
            gate: Some(ready_since.is_some()),
            gate_since: None,
            containers_ready_since: None,
            lifecycle_since: None,
            lifecycle: Some("Normal".into()),
            ready_since: ready_since.map(ts),
            unschedulable_since: None,
            not_ready: ready_since.is_none().then(|| {
                (
                    "ContainersNotReady".into(),
                    "containers with unready status: [app]".into(),
                )
            }),
            restarts: 0,
        }
    }

    #[test]
    fn a_few_not_ready_pods_are_reported_with_why() {
        let mut pods: Vec<PodView> = (0..6)
            .map(|i| view(&format!("p{i}"), "r1", (i % 2 == 0).then_some(1)))
            .collect();
        pods[5].restarts = 4;
        let sel = selector();
        let (status, _) = compute(&inputs(&pods, &sel, None));
        let names: Vec<&str> = status
            .not_ready_pods
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["p1", "p3", "p5"]);
        assert_eq!(status.not_ready_pods[2].restart_count, 4);
        assert_eq!(status.not_ready_pods[0].reason, "ContainersNotReady");
        assert_eq!(status.not_ready_pods[0].revision.as_deref(), Some("r1"));
        // Bounded, whatever the number of pods.
        let many: Vec<PodView> = (0..50)
            .map(|i| view(&format!("q{i:02}"), "r1", None))
            .collect();
        let (status, _) = compute(&inputs(&many, &sel, None));
        assert_eq!(status.not_ready_pods.len(), NOT_READY_SHOWN);
    }

    fn selector() -> LabelSelector {
        serde_json::from_value(json!({"matchLabels": {"app": "demo"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}))
        .unwrap()
    }

    fn inputs<'a>(
        pods: &'a [PodView],
        sel: &'a LabelSelector,
        prev: Option<&'a InPlaceSetStatus>,
    ) -> Inputs<'a> {
        Inputs {
            generation: Some(3),
            min_ready_seconds: 10,
            update_revision: "new",
            selector: sel,
            previous: prev,
            pods,
            failure: ReplicaFailure::None,
            blocked: &[],
            now: ts(100),
        }
    }

    #[test]
    fn counts_ready_available_updated_unschedulable() {
        let mut pending = view("pending", "new", None);
        pending.facts.scheduled = false;
        pending.unschedulable_since = Some(ts(50));
        let mut pending2 = view("pending2", "new", None);
        pending2.unschedulable_since = Some(ts(40));
        let mut leaving = view("leaving", "new", Some(0));
        leaving.facts.deleting = true;
        let pods = vec![
            view("old-ready", "old", Some(0)),
            view("new-ready", "new", Some(85)),
            view("new-fresh", "new", Some(95)),
            pending,
            pending2,
            leaving,
        ];
        let sel = selector();
        let (s, recheck) = compute(&inputs(&pods, &sel, None));
        assert_eq!(s.replicas, 5);
        assert_eq!(s.ready_replicas, 3);
        assert_eq!(s.available_replicas, 2);
        assert_eq!(s.updated_replicas, 4);
        assert_eq!(s.updated_ready_replicas, 2);
        assert_eq!(s.unschedulable_replicas, 2);
        assert_eq!(s.unschedulable_since, Some(Time(ts(40))));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.update_revision.as_deref(), Some("new"));
        assert_eq!(s.current_revision.as_deref(), Some("old"));
        assert_eq!(s.selector.as_deref(), Some("app=demo,tier in (a,b)"));
        assert_eq!(recheck, Some(Duration::from_secs(5)));
        assert!(s.conditions.is_empty());
    }

    #[test]
    fn replica_failure_is_set_kept_and_cleared() {
        let pods = vec![];
        let sel = selector();
        let mut input = inputs(&pods, &sel, None);
        input.failure = ReplicaFailure::Failed {
            reason: "FailedCreate".into(),
            message: "boom".into(),
        };
        let (failed, _) = compute(&input);
        assert_eq!(failed.conditions.len(), 1);
        assert_eq!(failed.conditions[0].type_, REPLICA_FAILURE);
        assert_eq!(failed.conditions[0].reason, "FailedCreate");

        // Same failure later: identical status, so no write.
        let mut again = inputs(&pods, &sel, Some(&failed));
        again.failure = input.failure.clone();
        again.now = ts(500);
        assert_eq!(compute(&again).0, failed);

        // Waiting on the cache keeps it; success clears it.
        let mut unknown = inputs(&pods, &sel, Some(&failed));
        unknown.failure = ReplicaFailure::Unknown;
        assert_eq!(compute(&unknown).0.conditions, failed.conditions);
        let cleared = inputs(&pods, &sel, Some(&failed));
        assert!(compute(&cleared).0.conditions.is_empty());
    }

    #[test]
    fn hook_timeouts_set_lifecycle_blocked_and_revisions_are_counted() {
        let pods = vec![
            view("a", "old", Some(0)),
            view("b", "new", Some(0)),
            view("c", "new", None),
        ];
        let sel = selector();
        let blocked = [BlockedPod {
            pod: "a".into(),
            hook: "preUpdate",
            holders: vec!["finalizer example.com/drain".into()],
            waited_seconds: 301,
        }];
        let mut input = inputs(&pods, &sel, None);
        input.blocked = &blocked;
        let (s, _) = compute(&input);
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == LIFECYCLE_BLOCKED)
            .unwrap();
        assert_eq!(c.reason, "PreUpdateHookTimeout");
        assert!(c.message.contains("pod a") && c.message.contains("example.com/drain"));
        assert_eq!(s.updated_available_replicas, 1);
        assert_eq!(s.current_replicas, 1);
        assert_eq!(
            s.revisions,
            vec![
                RevisionReplicas {
                    revision: "new".into(),
                    replicas: 2,
                    ready_replicas: 1
                },
                RevisionReplicas {
                    revision: "old".into(),
                    replicas: 1,
                    ready_replicas: 1
                },
            ]
        );
        let cleared = inputs(&pods, &sel, Some(&s));
        assert!(compute(&cleared).0.conditions.is_empty());
    }

    #[test]
    fn fields_that_became_empty_are_removed_by_the_patch() {
        let old = InPlaceSetStatus {
            not_ready_pods: vec![NotReadyPod {
                name: "p".into(),
                reason: "ReadinessGateFalse".into(),
                ..NotReadyPod::default()
            }],
            unschedulable_since: Some(Time(ts(5))),
            ..InPlaceSetStatus::default()
        };
        let body = replace_status(
            &serde_json::to_value(&old).unwrap(),
            &serde_json::to_value(InPlaceSetStatus::default()).unwrap(),
        );
        assert_eq!(body["status"]["notReadyPods"], Value::Null);
        assert_eq!(body["status"]["unschedulableSince"], Value::Null);
        assert_eq!(body["status"]["replicas"], json!(0));
    }
}
