//! The per-pod state machine of an in-place upgrade, as a pure function:
//! given one pod as the cache shows it, the next single write to make, or why to wait.
//!
//! Normal -> PreparingUpdate with the gate False (one write; then the grace period, and the
//! pre-update hooks released) -> Updating (patched in place; the kubelet restarts the new image,
//! resizes apply) -> Normal with the gate True (one write). That is the three writes an in-place
//! update needs: gate off, patch, gate on. Only when `minReadySeconds` asks for a wait does the pod
//! show it as Updated (containers ready on the new revision) in a fourth write. A pod that cannot
//! be updated in place goes Normal -> PreparingDelete with the gate False (grace; pre-delete hooks)
//! -> deleted, and the scale logic creates its replacement.
//!
//! A state change and its gate go in one write because the pods/status subresource takes labels
//! and annotations with the status (the API server resets only spec, deletionTimestamp and
//! ownerReferences there), so a hook handler watching the label sees the pod leave service in the
//! same instant the gate turns False. A pod created with the gate in its spec and no condition is
//! not Ready (a missing gate condition counts as False), so creation writes no gate either.
//!
//! Every state lives on the pod (the lifecycle label, the `lifecycle-since` and
//! `inplace-update-state` annotations, the gate condition), and each step is one write whose
//! result the next reconcile reads back, so a controller killed at any point resumes where the
//! pod is: never two steps ahead of its gate, never updating a pod twice.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::cached::CachedPod;
use super::inplace::{self, InPlaceChange, UpdatePath, Verification};
use super::pod::PodView;
use crate::api::LifecycleHook;
use crate::plan::update::Stage;

/// Which hook holds a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    PreUpdate,
    PreDelete,
}

impl HookKind {
    /// As the field is spelled in `spec.lifecycle`.
    pub fn field(self) -> &'static str {
        match self {
            Self::PreUpdate => "preUpdate",
            Self::PreDelete => "preDelete",
        }
    }
}

/// The next thing to do for one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Nothing to do.
    Idle,
    /// Look again after `after` (or on the next pod event), because of `why`.
    Wait { after: Duration, why: String },
    /// A hook has held the pod past `lifecycle.timeoutSeconds`: report it, keep waiting.
    Blocked {
        hook: HookKind,
        holders: Vec<String>,
        waited: Duration,
    },
    /// Write the readiness gate condition.
    Gate(bool),
    /// Patch the pod in place to the update revision (state Updating).
    StartInPlace(InPlaceChange),
    /// Send this body to the pods/resize subresource.
    Resize(serde_json::Value),
    /// Set the lifecycle state label, and the readiness gate with it when `gate` says so.
    Mark { to: Stage, gate: Option<bool> },
    /// Delete the pod.
    Delete,
}

/// Everything one pod's step depends on besides the pod.
pub struct StepInputs<'a> {
    /// How this pod reaches the update revision; `None` when it is already there.
    pub path: Option<&'a UpdatePath>,
    pub min_ready: Duration,
    pub grace: Duration,
    pub pre_update: Option<&'a LifecycleHook>,
    pub pre_delete: Option<&'a LifecycleHook>,
    pub hook_timeout: Duration,
    pub now: Timestamp,
}

/// While nothing else wakes the controller (pod events do), look again this often.
const POLL: Duration = Duration::from_secs(5);

/// The stage a lifecycle label names; a missing or unknown label reads as Normal.
pub fn stage_of(label: Option<&str>) -> Stage {
    use crate::api::labels::*;
    match label {
        Some(STATE_PREPARING_UPDATE) => Stage::PreparingUpdate,
        Some(STATE_UPDATING) => Stage::Updating,
        Some(STATE_UPDATED) => Stage::Updated,
        Some(STATE_PREPARING_DELETE) => Stage::PreparingDelete,
        _ => Stage::Normal,
    }
}

/// The label value of a stage.
pub fn label_of(stage: Stage) -> &'static str {
    use crate::api::labels::*;
    match stage {
        Stage::Normal => STATE_NORMAL,
        Stage::PreparingUpdate => STATE_PREPARING_UPDATE,
        Stage::Updating => STATE_UPDATING,
        Stage::Updated => STATE_UPDATED,
        Stage::PreparingDelete => STATE_PREPARING_DELETE,
    }
}

/// The finalizers and labels of `hook` still on `pod` (as `finalizer x` / `label k=v`).
pub fn holders(pod: &CachedPod, hook: Option<&LifecycleHook>) -> Vec<String> {
    let Some(hook) = hook else {
        return vec![];
    };
    let finalizers = pod.finalizers();
    let labels = pod.labels();
    let mut out: Vec<String> = hook
        .finalizers_handler
        .iter()
        .filter(|f| finalizers.contains(f))
        .map(|f| format!("finalizer {f}"))
        .collect();
    out.extend(
        hook.labels_handler
            .iter()
            .filter(|(k, v)| labels.get(*k) == Some(*v))
            .map(|(k, v)| format!("label {k}={v}")),
    );
    out
}

fn elapsed(now: Timestamp, since: Option<Timestamp>) -> Duration {
    since
        .and_then(|s| now.duration_since(s).try_into().ok())
        .unwrap_or(Duration::ZERO)
}

/// Condition times are written with second precision: a time without a fraction may stand for
/// any instant in that second, so take its end, and a wait measured from it is never short.
fn end_of_second(t: Timestamp) -> Timestamp {
    if t.subsec_nanosecond() == 0 {
        t.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(1))
            .unwrap_or(t)
    } else {
        t
    }
}

/// The next step for `pod` (seen as `view`).
pub fn step(pod: &CachedPod, view: &PodView, input: &StepInputs<'_>) -> Step {
    if view.facts.deleting {
        return Step::Idle;
    }
    match stage_of(view.lifecycle.as_deref()) {
        Stage::Normal => normal(view),
        stage @ (Stage::PreparingUpdate | Stage::PreparingDelete) => {
            preparing(pod, view, stage, input)
        }
        // A pod caught mid-update by a newer template (an undo of a revision that never got
        // ready, say) is out of service already: it starts over toward the newest revision
        // instead of waiting for one nobody wants any more.
        Stage::Updating if input.path.is_some() => leave_service(Stage::PreparingUpdate),
        Stage::Updating => updating(pod, view, input),
        Stage::Updated => updated(view, input),
    }
}

/// Moving to `stage` takes the pod out of service in the same write.
pub fn leave_service(stage: Stage) -> Step {
    Step::Mark {
        to: stage,
        gate: Some(false),
    }
}

/// Back in service: Normal, with the gate True in the same write.
fn back_in_service() -> Step {
    Step::Mark {
        to: Stage::Normal,
        gate: Some(true),
    }
}

/// A serving pod: its gate is missing (False) until it first runs, then True while its containers
/// are ready.
fn normal(view: &PodView) -> Step {
    if view.containers_ready && view.gate != Some(true) {
        Step::Gate(true)
    } else {
        Step::Idle
    }
}

fn preparing(pod: &CachedPod, view: &PodView, stage: Stage, input: &StepInputs<'_>) -> Step {
    if stage == Stage::PreparingUpdate {
        match input.path {
            // The template went back to this pod's revision (an undo): nothing to do after all.
            None => {
                return Step::Mark {
                    to: Stage::Normal,
                    gate: view.containers_ready.then_some(true),
                };
            }
            // The newest template cannot be reached in place: replace the pod instead.
            Some(UpdatePath::Recreate { .. }) => return leave_service(Stage::PreparingDelete),
            Some(UpdatePath::InPlace(_)) => {}
        }
    }
    // Traffic leaves first: the gate turns False, the kubelet turns Ready False. (The write that
    // moved the pod here did it; a pod found here otherwise gets it now, and with it the time
    // the grace period counts from.)
    if view.gate != Some(false) {
        return Step::Gate(false);
    }
    let (kind, hook) = match stage {
        Stage::PreparingUpdate => (HookKind::PreUpdate, input.pre_update),
        _ => (HookKind::PreDelete, input.pre_delete),
    };
    let held = holders(pod, hook);
    if !held.is_empty() {
        let waited = elapsed(input.now, view.lifecycle_since);
        if waited >= input.hook_timeout {
            return Step::Blocked {
                hook: kind,
                holders: held,
                waited,
            };
        }
        return Step::Wait {
            after: input.hook_timeout - waited,
            why: format!("{} hook: {}", kind.field(), held.join(", ")),
        };
    }
    // The kubelet's Ready False is not waited for: it only marks the start of endpoint removal,
    // which a restart (like a deletion) starts anyway, SIGTERM and Ready False together. The time
    // traffic needs to leave is `gracePeriodSeconds`, counted from the gate turning False, as
    // OpenKruise counts its grace period (none by default).
    let drained_for = elapsed(input.now, view.gate_since.map(end_of_second));
    if drained_for < input.grace {
        return Step::Wait {
            after: input.grace - drained_for,
            why: "gracePeriodSeconds".into(),
        };
    }
    match (stage, input.path) {
        (Stage::PreparingUpdate, Some(UpdatePath::InPlace(change))) => {
            Step::StartInPlace(change.clone())
        }
        _ => Step::Delete,
    }
}

fn updating(pod: &CachedPod, view: &PodView, input: &StepInputs<'_>) -> Step {
    if view.gate == Some(true) {
        return Step::Gate(false);
    }
    let Some(record) = inplace::read_record(pod) else {
        // Without the record nothing can be verified; the containers' readiness is all there
        // is to go by.
        return if view.containers_ready {
            running_new(input)
        } else {
            Step::Wait {
                after: POLL,
                why: "containers not ready".into(),
            }
        };
    };
    if let Some(body) = inplace::resize_patch(pod, &record) {
        return Step::Resize(body);
    }
    match inplace::verify(pod, &record) {
        Verification::Done if view.containers_ready => running_new(input),
        Verification::Done => Step::Wait {
            after: POLL,
            why: "containers not ready".into(),
        },
        Verification::Waiting(why) => Step::Wait { after: POLL, why },
    }
}

/// The pod runs the new revision, ready: back in service at once, or, when `minReadySeconds` asks
/// for a wait, Updated until it has passed (the one write beyond the three, so the wait shows).
fn running_new(input: &StepInputs<'_>) -> Step {
    if input.min_ready.is_zero() {
        back_in_service()
    } else {
        Step::Mark {
            to: Stage::Updated,
            gate: None,
        }
    }
}

fn updated(view: &PodView, input: &StepInputs<'_>) -> Step {
    if !view.containers_ready {
        if view.gate == Some(true) {
            return Step::Gate(false);
        }
        return Step::Wait {
            after: POLL,
            why: "containers not ready".into(),
        };
    }
    let ready_for = elapsed(input.now, view.containers_ready_since.map(end_of_second));
    if ready_for < input.min_ready {
        return Step::Wait {
            after: input.min_ready - ready_for,
            why: "minReadySeconds".into(),
        };
    }
    back_in_service()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::labels::*;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn pod(state: &str, conditions: Value, extra_meta: Value) -> CachedPod {
        let mut meta = json!({
            "name": "demo-x", "uid": "p", "resourceVersion": "7",
            "creationTimestamp": "1970-01-01T00:00:00Z",
            "labels": {LIFECYCLE_STATE: state, REVISION: "old"},
            "annotations": {LIFECYCLE_SINCE: "1970-01-01T00:01:40Z"},
        });
        if let (Value::Object(m), Value::Object(extra)) = (&mut meta, extra_meta) {
            for (k, v) in extra {
                m.insert(k, v);
            }
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "demo:1"}]},
            "status": {"conditions": conditions,
                       "containerStatuses": [{"name": "app", "image": "demo:1", "imageID": "i1",
                           "containerID": "c1", "ready": true, "restartCount": 0}]},
        }))
        .unwrap()
    }

    fn cond(t: &str, s: &str, at: i64) -> Value {
        json!({"type": t, "status": s, "lastTransitionTime": ts(at).to_string()})
    }

    fn in_place() -> UpdatePath {
        UpdatePath::InPlace(InPlaceChange {
            images: BTreeMap::from([("app".to_string(), "demo:2".to_string())]),
            ..InPlaceChange::default()
        })
    }

    fn inputs(path: Option<&UpdatePath>) -> StepInputs<'_> {
        StepInputs {
            path,
            min_ready: Duration::from_secs(5),
            grace: Duration::from_secs(3),
            pre_update: None,
            pre_delete: None,
            hook_timeout: Duration::from_secs(60),
            now: ts(110),
        }
    }

    fn run(p: &CachedPod, input: &StepInputs<'_>) -> Step {
        step(p, &PodView::of(p), input)
    }

    #[test]
    fn normal_pods_get_their_gate_from_their_containers() {
        // A missing gate condition counts as False: nothing to write until the containers run.
        let fresh = pod(STATE_NORMAL, json!([]), json!({}));
        assert_eq!(run(&fresh, &inputs(None)), Step::Idle);
        let ready = pod(
            STATE_NORMAL,
            json!([
                cond("ContainersReady", "True", 0),
                cond(READINESS_GATE, "False", 0)
            ]),
            json!({}),
        );
        assert_eq!(run(&ready, &inputs(None)), Step::Gate(true));
    }

    #[test]
    fn preparing_update_turns_the_gate_false_first() {
        let path = in_place();
        let p = pod(
            STATE_PREPARING_UPDATE,
            json!([cond("Ready", "True", 0), cond(READINESS_GATE, "True", 0)]),
            json!({}),
        );
        assert_eq!(run(&p, &inputs(Some(&path))), Step::Gate(false));
    }

    #[test]
    fn preparing_update_waits_the_grace_period_from_the_gate_turning_false() {
        let path = in_place();
        // Ready still True (the kubelet has not caught up): the grace period alone decides.
        let in_grace = pod(
            STATE_PREPARING_UPDATE,
            json!([cond("Ready", "True", 0), cond(READINESS_GATE, "False", 108)]),
            json!({}),
        );
        assert_eq!(
            run(&in_grace, &inputs(Some(&path))),
            Step::Wait {
                after: Duration::from_secs(2),
                why: "gracePeriodSeconds".into()
            }
        );
        let drained = pod(
            STATE_PREPARING_UPDATE,
            json!([
                cond("Ready", "False", 100),
                cond(READINESS_GATE, "False", 100)
            ]),
            json!({}),
        );
        assert!(matches!(
            run(&drained, &inputs(Some(&path))),
            Step::StartInPlace(c) if c.images["app"] == "demo:2"
        ));
        // Without a grace period the patch follows the gate at once, Ready or not.
        let mut no_grace = inputs(Some(&path));
        no_grace.grace = Duration::ZERO;
        let just_gated = pod(
            STATE_PREPARING_UPDATE,
            json!([cond("Ready", "True", 0), cond(READINESS_GATE, "False", 110)]),
            json!({}),
        );
        assert!(matches!(
            run(&just_gated, &no_grace),
            Step::StartInPlace(c) if c.images["app"] == "demo:2"
        ));
    }

    #[test]
    fn hooks_hold_the_pod_then_block_past_the_timeout() {
        let path = in_place();
        let hook = LifecycleHook {
            finalizers_handler: vec!["example.com/drain".into()],
            labels_handler: BTreeMap::from([("traffic".into(), "on".into())]),
        };
        let p = pod(
            STATE_PREPARING_UPDATE,
            json!([
                cond("Ready", "False", 100),
                cond(READINESS_GATE, "False", 100)
            ]),
            json!({"finalizers": ["example.com/drain"]}),
        );
        let mut input = inputs(Some(&path));
        input.pre_update = Some(&hook);
        assert_eq!(
            run(&p, &input),
            Step::Wait {
                after: Duration::from_secs(50),
                why: "preUpdate hook: finalizer example.com/drain".into()
            }
        );
        input.now = ts(200);
        assert_eq!(
            run(&p, &input),
            Step::Blocked {
                hook: HookKind::PreUpdate,
                holders: vec!["finalizer example.com/drain".into()],
                waited: Duration::from_secs(100),
            }
        );
        // The pre-delete hook does not hold an update.
        input.pre_update = None;
        input.pre_delete = Some(&hook);
        assert!(matches!(run(&p, &input), Step::StartInPlace(_)));
    }

    #[test]
    fn recreate_and_undo_while_preparing() {
        let recreate = UpdatePath::Recreate { why: "env".into() };
        let p = pod(
            STATE_PREPARING_UPDATE,
            json!([cond(READINESS_GATE, "False", 100)]),
            json!({}),
        );
        assert_eq!(
            run(&p, &inputs(Some(&recreate))),
            leave_service(Stage::PreparingDelete)
        );
        assert_eq!(
            run(&p, &inputs(None)),
            Step::Mark {
                to: Stage::Normal,
                gate: None
            }
        );
        let d = pod(
            STATE_PREPARING_DELETE,
            json!([cond(READINESS_GATE, "False", 100)]),
            json!({}),
        );
        assert_eq!(run(&d, &inputs(Some(&recreate))), Step::Delete);
    }

    #[test]
    fn updated_waits_min_ready_then_goes_back_in_service_in_one_write() {
        let young = pod(
            STATE_UPDATED,
            json!([
                cond("ContainersReady", "True", 107),
                cond(READINESS_GATE, "False", 100)
            ]),
            json!({}),
        );
        assert_eq!(
            run(&young, &inputs(None)),
            Step::Wait {
                after: Duration::from_secs(3),
                why: "minReadySeconds".into()
            }
        );
        let ripe = pod(
            STATE_UPDATED,
            json!([
                cond("ContainersReady", "True", 100),
                cond(READINESS_GATE, "False", 100)
            ]),
            json!({}),
        );
        assert_eq!(run(&ripe, &inputs(None)), back_in_service());
    }

    #[test]
    fn a_verified_update_goes_back_in_service_at_once_without_min_ready() {
        let p = pod(
            STATE_UPDATING,
            json!([
                cond("ContainersReady", "True", 100),
                cond(READINESS_GATE, "False", 90)
            ]),
            json!({}),
        );
        let mut input = inputs(None);
        assert_eq!(
            run(&p, &input),
            Step::Mark {
                to: Stage::Updated,
                gate: None
            },
            "minReadySeconds shows as Updated"
        );
        input.min_ready = Duration::ZERO;
        assert_eq!(run(&p, &input), back_in_service());
    }

    #[test]
    fn updating_keeps_the_gate_false_until_verified() {
        let p = pod(
            STATE_UPDATING,
            json!([
                cond("ContainersReady", "True", 0),
                cond(READINESS_GATE, "True", 0)
            ]),
            json!({}),
        );
        assert_eq!(run(&p, &inputs(None)), Step::Gate(false));
    }

    #[test]
    fn a_pod_updating_toward_an_abandoned_revision_starts_over() {
        let p = pod(
            STATE_UPDATING,
            json!([
                cond("ContainersReady", "False", 0),
                cond(READINESS_GATE, "False", 0)
            ]),
            json!({}),
        );
        let path = in_place();
        assert_eq!(
            run(&p, &inputs(Some(&path))),
            leave_service(Stage::PreparingUpdate)
        );
    }

    #[test]
    fn deleting_pods_are_left_alone() {
        let p = pod(
            STATE_PREPARING_DELETE,
            json!([]),
            json!({"deletionTimestamp": "1970-01-01T00:01:50Z"}),
        );
        assert_eq!(run(&p, &inputs(None)), Step::Idle);
    }
}
