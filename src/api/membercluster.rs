//! MemberCluster: a registered member cluster (hub, cluster-scoped).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A member cluster registered with the hub (`cafe cluster register`).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "apps.cafe.io",
    version = "v1alpha1",
    kind = "MemberCluster",
    shortname = "mc",
    status = "MemberClusterStatus",
    derive = "PartialEq",
    printcolumn(name = "Units", type_ = "string", json_path = ".status.units"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.kubernetesVersion"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterSpec {
    /// The hub Secret holding the member's kubeconfig (one context, credentials inline).
    pub kubeconfig_secret_ref: SecretKeyRef,
    /// Cordon: no new replicas go to this member.
    #[serde(default)]
    pub unschedulable: bool,
}

/// A key of a Secret on the hub.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's namespace on the hub.
    #[schemars(length(min = 1))]
    pub namespace: String,
    /// The Secret's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The Secret key holding the kubeconfig (default `kubeconfig`).
    #[serde(default = "default_key")]
    pub key: String,
}

fn default_key() -> String {
    "kubeconfig".into()
}

/// What the hub last observed of the member.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterStatus {
    /// Ready: whether the hub reaches the member and can use it (reason and message say why not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The member's Kubernetes version, from its /version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// When the hub last probed the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// "DataCenter=DCA": the unit labels, for `kubectl get mc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<String>,
    /// The member's schedulable capacity and what its pods request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// Ready, schedulable nodes.
    pub nodes: i32,
    /// Ready, schedulable nodes only.
    pub allocatable: Resources,
    /// Sum of requests of the pods on those nodes.
    pub requested: Resources,
    /// What is free on the untainted nodes, node by node: one entry per distinct shape, largest
    /// first (at most 64; the smallest beyond go, so room is never overstated). The member
    /// agent measures it; the hub places replicas of a template with no InPlaceSet there yet
    /// by it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub free: Vec<FreeNodes>,
    /// How many more pods of each template the member's InPlaceSets run fit, node by node as
    /// the scheduler would judge (requests, nodeSelector, required node affinity, taints and
    /// tolerations), by the template's demand key (a hash of what it asks of a node: many
    /// InPlaceSets share one). At most 256 keys, the first in key order; the hub falls back on
    /// `free` for a template not listed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, i32>,
}

/// Nodes that have the same resources free.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FreeNodes {
    /// Free CPU on each, in millicores.
    pub cpu_millis: i64,
    /// Free memory on each, in bytes.
    pub memory_bytes: i64,
    /// Free pod slots on each.
    pub pods: i64,
    /// How many nodes have this much free.
    pub nodes: i32,
}

/// CPU in millicores and memory in bytes, so free capacity is a subtraction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU, in millicores.
    pub cpu_millis: i64,
    /// Memory, in bytes.
    pub memory_bytes: i64,
    /// Pods.
    #[serde(default)]
    pub pods: i64,
}
