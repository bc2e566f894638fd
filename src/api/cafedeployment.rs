//! CafeDeployment: the workload a user applies to the hub (DESIGN.md section 5).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{IntOrPercent, PositiveIntOrPercent};

/// Which workload each unit runs. Only InPlaceSet is implemented; the others are accepted for
/// forward compatibility of manifests and reported by a condition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PodSetType {
    #[default]
    InPlaceSet,
    ReplicaSet,
    StatefulSet,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UpgradeType {
    /// One pod in each unit first, then batches.
    #[default]
    Beta,
    /// Batches only.
    Batch,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PodUpdatePolicy {
    #[default]
    InPlaceIfPossible,
    ReCreate,
}

/// The desired state of a CafeDeployment.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "apps.cafe.io",
    version = "v1alpha1",
    kind = "CafeDeployment",
    namespaced,
    shortname = "cafed",
    status = "CafeDeploymentStatus",
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
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.rollout.phase"),
    printcolumn(name = "Batch", type_ = "string", json_path = ".status.rollout.batch"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CafeDeploymentSpec {
    #[serde(default)]
    pub pod_set_type: PodSetType,
    #[schemars(range(min = 0))]
    pub replicas: i32,
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    /// Revisions kept for `cafe rollout undo`.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 0))]
    pub history_limit: i32,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: i32,
    pub topology: Topology,
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// Third-party hooks every member InPlaceSet honours before taking a pod down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<super::Lifecycle>,
}

fn default_history_limit() -> i32 {
    10
}

/// How replicas map onto topology units (member clusters).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.unitReplicas) || self.unitReplicas.all(k, k in self.values)").message("unitReplicas may only name units listed in values").field_path(".unitReplicas"))]
pub struct Topology {
    /// The MemberCluster label key that maps units to clusters: `unit.apps.cafe.io/<unitType>`.
    #[schemars(length(min = 1))]
    pub unit_type: String,
    /// The units, in order.
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "set"))]
    pub values: Vec<String>,
    /// Fixed counts or percents of replicas per unit; units without an entry share the rest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unit_replicas: BTreeMap<String, IntOrPercent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_reschedule: Option<AutoReschedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
}

#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoReschedule {
    #[serde(default)]
    pub enable: bool,
    #[serde(default = "default_initial_delay")]
    #[schemars(range(min = 0))]
    pub initial_delay_seconds: i32,
    #[serde(default = "default_true")]
    pub move_back: bool,
    /// How long the lending unit must have had room before replicas move back.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0))]
    pub stabilization_seconds: i32,
}

fn default_initial_delay() -> i32 {
    30
}
fn default_true() -> bool {
    true
}
fn default_stabilization() -> i32 {
    60
}

#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    #[serde(default)]
    pub enable: bool,
    #[serde(default = "default_toleration")]
    #[schemars(range(min = 0))]
    pub toleration_seconds: i32,
}

fn default_toleration() -> i32 {
    60
}

/// How a new revision rolls out across units.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    #[serde(default)]
    pub upgrade_type: UpgradeType,
    #[serde(default = "default_batch_size")]
    pub batch_size: PositiveIntOrPercent,
    #[serde(default)]
    pub need_waiting_for_confirm: bool,
    #[serde(default)]
    pub pause: bool,
    /// Bounds the pods down at once in any one unit.
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable_per_unit: IntOrPercent,
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: i32,
    #[serde(default)]
    pub pod_update_policy: PodUpdatePolicy,
    /// Wait after a pod's readiness gate turns False before touching it (traffic drains).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub grace_period_seconds: i32,
}

fn default_batch_size() -> PositiveIntOrPercent {
    PositiveIntOrPercent(IntOrPercent::Int(1))
}
fn default_max_unavailable() -> IntOrPercent {
    IntOrPercent::Percent("25%".into())
}
fn default_progress_deadline() -> i32 {
    600
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self {
            upgrade_type: UpgradeType::default(),
            batch_size: default_batch_size(),
            need_waiting_for_confirm: false,
            pause: false,
            max_unavailable_per_unit: default_max_unavailable(),
            progress_deadline_seconds: default_progress_deadline(),
            pod_update_policy: PodUpdatePolicy::default(),
            grace_period_seconds: 0,
        }
    }
}

/// The observed state of a CafeDeployment, aggregated from its units.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CafeDeploymentStatus {
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// The label selector as a string, for the scale subresource (`kubectl scale`, HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<UnitStatus>,
    /// Replicas one unit runs for another: kept here so they survive a hub restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loans: Vec<Loan>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Replicas of unit `from` that unit `to` runs while `from` cannot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Loan {
    pub from: String,
    pub to: String,
    pub replicas: i32,
    /// Unschedulable (the lender had no room) or Failover (the lender's member was lost).
    pub reason: String,
    pub since: Time,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The lender has had room since then (move back waits for the stabilisation period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_since: Option<Time>,
    /// The replicas are on their way back: the lender runs them again, the borrower still
    /// does until the lender's are available.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub returning: bool,
    /// Returns that failed (the lender ran out of room again); each doubles the wait.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_returns: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// The rollout toward `revision`: its group plan, how far it got, and what it waits for. It is
/// all the hub needs to resume after a restart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Progressing, WaitingForConfirm, Paused, Completed, Stalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The update revision this rollout drives every unit to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The group released last (1-based); 0 while none is.
    #[serde(default)]
    pub current_batch: i32,
    #[serde(default)]
    pub total_batches: i32,
    /// "current/total", for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// The group plan: pods each group creates or updates in each unit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<BatchStatus>,
    /// The work each unit had when the plan was made, and how much of it is done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<RolloutUnit>,
    /// When the current group was released (or resumed after a pause or a member outage): the
    /// progress deadline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_started_at: Option<Time>,
    /// The current group missed `progressDeadlineSeconds`; nothing proceeds until the user acts
    /// (a new template, `cafe rollout undo`, or a pause).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deadline_exceeded: bool,
    /// What the rollout waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchStatus {
    pub index: i32,
    /// The Beta group: one pod in each unit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub beta: bool,
    /// Pods this group creates or updates, per unit.
    #[serde(default)]
    pub units: BTreeMap<String, i32>,
    /// Pending, Progressing, WaitingForConfirm, Completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// One unit's part of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutUnit {
    pub name: String,
    /// The unit's replicas when the plan was made.
    #[serde(default)]
    pub replicas: i32,
    /// Pods to create at the new revision.
    #[serde(default)]
    pub create: i32,
    /// Pods to update to the new revision.
    #[serde(default)]
    pub update: i32,
    /// Of `create + update`, how many are on the new revision and available.
    #[serde(default)]
    pub done: i32,
}

/// One unit's share and state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnitStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default)]
    pub desired_replicas: i32,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub available_replicas: i32,
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub unschedulable_replicas: i32,
    #[serde(default)]
    pub borrowed_replicas: i32,
    #[serde(default)]
    pub lent_replicas: i32,
    /// Replicas the unit should run now: its own share, less what it lends, plus what it
    /// borrows. Availability is judged against this.
    #[serde(default)]
    pub target_replicas: i32,
    #[serde(default)]
    pub reachable: bool,
    /// Since when the unit's member has not been reachable: its counts are the last seen, not
    /// current, and count in no total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<Time>,
}
