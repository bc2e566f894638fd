//! InPlaceSet: the per-unit workload the hub projects into each member.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cafedeployment::{
    HAS_CONTAINERS, MATCH_EXPRESSIONS_MATCH_TEMPLATE, MATCH_LABELS_MATCH_TEMPLATE, NO_CONTAINERS,
    SELECTOR_DOES_NOT_MATCH, SELECTOR_NOT_EMPTY,
};
use super::{IntOrPercent, PodUpdatePolicy};

/// The desired state of an InPlaceSet: pods of one template, updated in place where possible.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "apps.cafe.io",
    version = "v1alpha1",
    kind = "InPlaceSet",
    namespaced,
    shortname = "ips",
    status = "InPlaceSetStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Updated",
        type_ = "integer",
        json_path = ".status.updatedReplicas"
    ),
    printcolumn(
        name = "Partition",
        type_ = "integer",
        json_path = ".spec.strategy.partition"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(SELECTOR_NOT_EMPTY)
        .message("empty selector is invalid for an InPlaceSet")
        .field_path(".selector"),
    validation = Rule::new(MATCH_LABELS_MATCH_TEMPLATE)
        .message(SELECTOR_DOES_NOT_MATCH)
        .field_path(".selector"),
    validation = Rule::new(MATCH_EXPRESSIONS_MATCH_TEMPLATE)
        .message(SELECTOR_DOES_NOT_MATCH)
        .field_path(".selector"),
    validation = Rule::new(HAS_CONTAINERS)
        .message(NO_CONTAINERS)
        .field_path(".template.spec.containers")
)]
pub struct InPlaceSetSpec {
    /// Pods this InPlaceSet keeps.
    #[schemars(range(min = 0, max = 2147483647))]
    pub replicas: i32,
    /// Selects this InPlaceSet's pods (the hub writes its CafeDeployment's selector).
    pub selector: LabelSelector,
    /// The pod template; a change to it updates the pods in place where possible.
    pub template: PodTemplateSpec,
    /// Seconds a new pod must be ready, without any container crashing, to count as available.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: i32,
    /// How pods move to a new revision.
    #[serde(default)]
    pub strategy: InPlaceSetStrategy,
    /// Third-party hooks honoured before a pod is taken down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

/// How pods move to a new revision.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceSetStrategy {
    /// Pods kept on the old revision; 0 updates all.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub partition: i32,
    /// The most pods that may be unavailable at once during an update: a count or a percent
    /// of `replicas`; at least 1 is always allowed.
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrPercent,
    /// InPlaceIfPossible: change the image (and labels, annotations, resources) of a running
    /// pod; ReCreate: always replace the pod.
    #[serde(default)]
    pub pod_update_policy: PodUpdatePolicy,
    /// Wait after the gate turns False before touching the pod.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub grace_period_seconds: i32,
}

fn default_max_unavailable() -> IntOrPercent {
    IntOrPercent::Int(1)
}

impl Default for InPlaceSetStrategy {
    fn default() -> Self {
        Self {
            partition: 0,
            max_unavailable: default_max_unavailable(),
            pod_update_policy: PodUpdatePolicy::default(),
            grace_period_seconds: 0,
        }
    }
}

/// Third-party hooks: a pod is not taken down until these labels and finalizers are gone.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// Labels and finalizers that hold a pod before it is updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_update: Option<LifecycleHook>,
    /// Labels and finalizers that hold a pod before it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_delete: Option<LifecycleHook>,
    /// Seconds a pod may be held by a hook before the InPlaceSet reports condition
    /// LifecycleBlocked and a Warning Event.
    #[serde(default = "default_hook_timeout")]
    #[schemars(range(min = 0))]
    pub timeout_seconds: i32,
}

fn default_hook_timeout() -> i32 {
    300
}

/// Labels and finalizers third-party components hold a pod with.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleHook {
    /// A pod carrying any of these labels (with these values) is not touched until the label
    /// is removed or changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels_handler: BTreeMap<String, String>,
    /// A pod holding any of these finalizers is not touched until it is removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers_handler: Vec<String>,
}

/// How many not-ready pods an InPlaceSet reports in its status (and the hub per unit).
pub const NOT_READY_SHOWN: usize = 3;

/// A pod that is not ready, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotReadyPod {
    /// The pod's name.
    pub name: String,
    /// The revision the pod runs (its `apps.cafe.io/revision` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Why, in one word: the scheduler's reason (`Unschedulable`), a waiting container's
    /// (`CrashLoopBackOff`, `ImagePullBackOff`), the Ready condition's (`ContainersNotReady`), or
    /// `ReadinessGateFalse` while cafe holds the pod out of service.
    pub reason: String,
    /// The message that goes with the reason, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Container restarts, summed over the pod's containers.
    #[serde(default)]
    pub restart_count: i32,
}

/// The observed state of an InPlaceSet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceSetStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of this InPlaceSet.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods ready for at least `minReadySeconds`.
    #[serde(default)]
    pub available_replicas: i32,
    /// Pods at the update revision.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Ready pods at the update revision.
    #[serde(default)]
    pub updated_ready_replicas: i32,
    /// Pods on the update revision that have been ready for `minReadySeconds`.
    #[serde(default)]
    pub updated_available_replicas: i32,
    /// Pods on the current revision.
    #[serde(default)]
    pub current_replicas: i32,
    /// Pods per revision, newest (the update revision) first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RevisionReplicas>,
    /// A few pods that are not ready, and why (at most [`NOT_READY_SHOWN`], by name): what a
    /// rollout group waits for, told without the hub watching pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready_pods: Vec<NotReadyPod>,
    /// Pods the scheduler cannot place.
    #[serde(default)]
    pub unschedulable_replicas: i32,
    /// Since when some pods have been unschedulable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unschedulable_since: Option<Time>,
    /// Pods bound to a node (not being deleted).
    #[serde(default)]
    pub scheduled_replicas: i32,
    /// The revision all pods ran when the last update completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision of the current template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// The label selector as a string, for the scale subresource (`kubectl scale`, HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Conditions of the InPlaceSet, such as LifecycleBlocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// How many pods run one revision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionReplicas {
    /// The revision name.
    pub revision: String,
    /// Pods at this revision.
    pub replicas: i32,
    /// Ready pods at this revision.
    #[serde(default)]
    pub ready_replicas: i32,
}
