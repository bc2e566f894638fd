//! One pod of an InPlaceSet: building a new one from the template, and reading what the
//! controller needs from an existing one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodReadinessGate, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use super::cached::{CachedCondition, CachedPod};
use crate::api::InPlaceSet;
use crate::api::labels::{
    LIFECYCLE_SINCE, LIFECYCLE_STATE, READINESS_GATE, REVISION, STATE_NORMAL,
};
use crate::plan::scale::PodFacts;

/// A new pod for `ips` at `revision`, named by the API server (`<inplaceset>-<5 random chars>`,
/// as `generateName` does), controlled by `ips`, with the template's labels plus the revision
/// and lifecycle labels, and the readiness gate. `None` when `ips` lacks a uid or namespace
/// (it was not read from the API).
pub fn new_pod(ips: &InPlaceSet, revision: &str) -> Option<Pod> {
    new_pod_from(ips, revision, &ips.spec.template)
}

/// A new pod for `ips` as [`new_pod`], made from `template`, the template of `revision` (an
/// older one when the partition keeps pods on it).
pub fn new_pod_from(ips: &InPlaceSet, revision: &str, template: &PodTemplateSpec) -> Option<Pod> {
    // blockOwnerDeletion: foreground deletion of the InPlaceSet waits for its pods, as for
    // ReplicaSets (https://kubernetes.io/docs/concepts/architecture/garbage-collection/).
    let owner = OwnerReference {
        block_owner_deletion: Some(true),
        ..ips.controller_owner_ref(&())?
    };
    let namespace = ips.namespace()?;
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = template_meta.labels.unwrap_or_default();
    labels.insert(REVISION.to_string(), revision.to_string());
    labels.insert(LIFECYCLE_STATE.to_string(), STATE_NORMAL.to_string());
    let mut spec: PodSpec = template.spec.clone().unwrap_or_default();
    let gates = spec.readiness_gates.get_or_insert_with(Vec::new);
    if !gates.iter().any(|g| g.condition_type == READINESS_GATE) {
        gates.push(PodReadinessGate {
            condition_type: READINESS_GATE.to_string(),
        });
    }
    Some(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ips.name_any())),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// What the controller reads from one owned pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub facts: PodFacts,
    /// The `apps.cafe.io/revision` label.
    pub revision: Option<String>,
    /// ContainersReady=True.
    pub containers_ready: bool,
    /// The readiness gate condition, if written.
    pub gate: Option<bool>,
    /// When the gate condition last changed.
    pub gate_since: Option<Timestamp>,
    /// When ContainersReady last turned True (None unless it is True).
    pub containers_ready_since: Option<Timestamp>,
    /// When the pod entered its lifecycle state (the `lifecycle-since` annotation).
    pub lifecycle_since: Option<Timestamp>,
    /// The `apps.cafe.io/lifecycle-state` label.
    pub lifecycle: Option<String>,
    /// When Ready last turned True (None unless Ready).
    pub ready_since: Option<Timestamp>,
    /// When the scheduler last reported it Unschedulable (None unless it is).
    pub unschedulable_since: Option<Timestamp>,
    /// Why it is not ready (None when it is): reason and message.
    pub not_ready: Option<(String, String)>,
    /// Container restarts, summed over its containers.
    pub restarts: i32,
}

fn condition<'a>(pod: &'a CachedPod, type_: &str) -> Option<&'a CachedCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn is_true(pod: &CachedPod, type_: &str) -> bool {
    condition(pod, type_).is_some_and(|c| c.status == "True")
}

impl PodView {
    pub fn of(pod: &CachedPod) -> Self {
        let created = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
        let ready = condition(pod, "Ready").filter(|c| c.status == "True");
        let unschedulable = condition(pod, "PodScheduled")
            .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
        let labels = pod.labels();
        let since = |c: &CachedCondition| c.last_transition_time.as_ref().map_or(created, |t| t.0);
        let gate = condition(pod, READINESS_GATE);
        Self {
            facts: PodFacts {
                name: pod.name_any(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                scheduled: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| !n.is_empty()),
                ready: ready.is_some(),
                created,
                deleting: pod.metadata.deletion_timestamp.is_some(),
            },
            revision: labels.get(REVISION).cloned(),
            containers_ready: is_true(pod, "ContainersReady"),
            gate: gate.map(|c| c.status == "True"),
            gate_since: gate.map(since),
            containers_ready_since: condition(pod, "ContainersReady")
                .filter(|c| c.status == "True")
                .map(since),
            lifecycle_since: pod
                .annotations()
                .get(LIFECYCLE_SINCE)
                .and_then(|s| s.parse::<Timestamp>().ok()),
            lifecycle: labels.get(LIFECYCLE_STATE).cloned(),
            ready_since: ready.map(since),
            unschedulable_since: unschedulable.map(since),
            not_ready: ready.is_none().then(|| not_ready_reason(pod)),
            restarts: pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum()),
        }
    }
}

/// Why a pod that is not ready is not, most specific first: the scheduler cannot place it, a
/// container waits (crash loop, image pull), a container is not ready, or the readiness gate is
/// False (the controller holds it out of service). The Ready condition's own reason otherwise.
pub fn not_ready_reason(pod: &CachedPod) -> (String, String) {
    let text = |s: Option<&String>| s.cloned().unwrap_or_default();
    if let Some(c) = condition(pod, "PodScheduled").filter(|c| c.status == "False") {
        return (
            c.reason.clone().unwrap_or_else(|| "NotScheduled".into()),
            text(c.message.as_ref()),
        );
    }
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    for c in statuses {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
            && let Some(reason) = &w.reason
            && reason != "ContainerCreating"
        {
            let message = w
                .message
                .clone()
                .unwrap_or_else(|| format!("container {}", c.name));
            return (reason.clone(), message);
        }
    }
    if let Some(c) = condition(pod, "ContainersReady").filter(|c| c.status != "True") {
        return (
            c.reason
                .clone()
                .unwrap_or_else(|| "ContainersNotReady".into()),
            text(c.message.as_ref()),
        );
    }
    if condition(pod, READINESS_GATE).is_some_and(|c| c.status != "True") {
        let state = pod
            .labels()
            .get(LIFECYCLE_STATE)
            .cloned()
            .unwrap_or_else(|| STATE_NORMAL.into());
        return (
            "ReadinessGateFalse".into(),
            format!("{READINESS_GATE} is False (lifecycle state {state})"),
        );
    }
    match condition(pod, "Ready") {
        Some(c) => (
            c.reason.clone().unwrap_or_else(|| "NotReady".into()),
            text(c.message.as_ref()),
        ),
        None => ("Pending".into(), "no Ready condition yet".into()),
    }
}

/// Whether `pod` is controlled by the InPlaceSet with uid `owner_uid`.
pub fn is_controlled_by(pod: &CachedPod, owner_uid: &str) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == owner_uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ips() -> InPlaceSet {
        serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1",
            "kind": "InPlaceSet",
            "metadata": {"name": "demo", "namespace": "prod", "uid": "u-1"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "demo"}},
                "template": {
                    "metadata": {"labels": {"app": "demo"}, "annotations": {"a": "b"}},
                    "spec": {"containers": [{"name": "app", "image": "demo:1"}]},
                },
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_not_ready_pod_says_why() {
        let pod = |status: serde_json::Value| -> CachedPod {
            serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
        };
        let unschedulable = pod(json!({"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient cpu."}]}));
        assert_eq!(
            not_ready_reason(&unschedulable),
            (
                "Unschedulable".to_string(),
                "0/3 nodes are available: 3 Insufficient cpu.".to_string()
            )
        );
        let crashing = pod(json!({
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"}],
            "containerStatuses": [{"name": "app", "image": "x", "imageID": "", "ready": false,
                "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff",
                "message": "back-off 40s restarting failed container"}}}]}));
        assert_eq!(not_ready_reason(&crashing).0, "CrashLoopBackOff");
        assert_eq!(PodView::of(&crashing).restarts, 3);
        let gated = pod(json!({"conditions": [
            {"type": "ContainersReady", "status": "True"},
            {"type": READINESS_GATE, "status": "False"}]}));
        assert_eq!(not_ready_reason(&gated).0, "ReadinessGateFalse");
    }

    #[test]
    fn new_pods_carry_owner_labels_and_gate() {
        let pod = new_pod(&ips(), "abc").unwrap();
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("demo-"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("prod"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels["app"], "demo");
        assert_eq!(labels[REVISION], "abc");
        assert_eq!(labels[LIFECYCLE_STATE], "Normal");
        assert_eq!(pod.metadata.annotations.unwrap()["a"], "b");
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.kind.as_str()),
            ("u-1", "InPlaceSet")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        let gates = pod.spec.unwrap().readiness_gates.unwrap();
        assert_eq!(gates.len(), 1);
        assert_eq!(gates[0].condition_type, READINESS_GATE);
    }

    #[test]
    fn an_existing_gate_is_not_duplicated() {
        let mut set = ips();
        set.spec.template.spec.as_mut().unwrap().readiness_gates = Some(vec![PodReadinessGate {
            condition_type: READINESS_GATE.into(),
        }]);
        let pod = new_pod(&set, "abc").unwrap();
        assert_eq!(pod.spec.unwrap().readiness_gates.unwrap().len(), 1);
    }

    #[test]
    fn an_inplaceset_not_from_the_api_builds_no_pod() {
        let mut set = ips();
        set.metadata.uid = None;
        assert!(new_pod(&set, "abc").is_none());
    }

    fn pod(status: serde_json::Value, labels: serde_json::Value) -> CachedPod {
        serde_json::from_value(json!({
            "metadata": {"name": "demo-x", "uid": "p", "labels": labels,
                         "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "demo:1"}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn reads_conditions() {
        let p = pod(
            json!({"conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:05Z"},
                {"type": "ContainersReady", "status": "True"},
                {"type": READINESS_GATE, "status": "True"},
            ]}),
            json!({REVISION: "r1"}),
        );
        let v = PodView::of(&p);
        assert!(v.facts.ready && v.facts.scheduled && v.containers_ready);
        assert_eq!(v.gate, Some(true));
        assert_eq!(v.revision.as_deref(), Some("r1"));
        assert_eq!(
            v.ready_since,
            Some("2025-01-01T00:00:05Z".parse::<Timestamp>().unwrap())
        );
        assert_eq!(v.unschedulable_since, None);
    }

    #[test]
    fn reads_unschedulable() {
        let p = pod(
            json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "lastTransitionTime": "2025-01-01T00:00:02Z"}]}),
            json!({}),
        );
        let v = PodView::of(&p);
        assert_eq!(
            v.unschedulable_since,
            Some("2025-01-01T00:00:02Z".parse::<Timestamp>().unwrap())
        );
        assert!(!v.facts.ready);
    }
}
