//! InPlaceSet: the per-unit workload the hub projects into each member (DESIGN.md section 5).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{IntOrPercent, PodUpdatePolicy};

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
pub struct InPlaceSetSpec {
    #[schemars(range(min = 0))]
    pub replicas: i32,
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: i32,
    #[serde(default)]
    pub strategy: InPlaceSetStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceSetStrategy {
    /// Pods kept on the old revision; 0 updates all.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub partition: i32,
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrPercent,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_update: Option<LifecycleHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_delete: Option<LifecycleHook>,
    #[serde(default = "default_hook_timeout")]
    #[schemars(range(min = 0))]
    pub timeout_seconds: i32,
}

fn default_hook_timeout() -> i32 {
    300
}

#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleHook {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels_handler: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers_handler: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceSetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub available_replicas: i32,
    #[serde(default)]
    pub updated_replicas: i32,
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
    #[serde(default)]
    pub unschedulable_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unschedulable_since: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// How many pods run one revision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionReplicas {
    pub revision: String,
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
}
