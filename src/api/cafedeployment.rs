//! CafeDeployment: the workload a user applies to the hub.

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
    // The name is the value of label apps.cafe.io/cafedeployment on every InPlaceSet made from
    // it, and a label value has at most 63 characters: a longer name could be stored here but
    // never projected into a member.
    // (No field path: the API server accepts only paths the schema declares, and the schema of
    // metadata declares none; the message names the field.)
    validation = Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name must be no more than 63 characters: it is the value of label apps.cafe.io/cafedeployment on the InPlaceSets made from it"),
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
    ),
    // Priority 1: shown by `kubectl get -o wide` only, like Deployment's wide columns. The
    // rollout phase is already a default column (Phase).
    printcolumn(
        name = "Units",
        type_ = "integer",
        description = "Topology units the replicas are split between",
        json_path = ".status.unitCount",
        priority = "1"
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        description = "The update revision, which the rollout drives every unit to",
        json_path = ".status.updateRevision",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(SELECTOR_NOT_EMPTY)
        .message("empty selector is invalid for a CafeDeployment")
        .field_path(".selector"),
    validation = Rule::new(MATCH_LABELS_MATCH_TEMPLATE)
        .message(SELECTOR_DOES_NOT_MATCH)
        .field_path(".selector"),
    validation = Rule::new(MATCH_EXPRESSIONS_MATCH_TEMPLATE)
        .message(SELECTOR_DOES_NOT_MATCH)
        .field_path(".selector"),
    validation = Rule::new(HAS_CONTAINERS)
        .message(NO_CONTAINERS)
        .field_path(".template.spec.containers"),
    validation = Rule::new(AT_MOST_MAX_GROUPS)
        .message(TOO_MANY_GROUPS)
        .field_path(".strategy.batchSize")
)]
pub struct CafeDeploymentSpec {
    /// The workload each unit runs: InPlaceSet (the default and the only one implemented);
    /// ReplicaSet and StatefulSet are accepted and reported by a condition.
    #[serde(default)]
    pub pod_set_type: PodSetType,
    /// Replicas over all units, split between them by `topology` (at most 1,000,000: a
    /// Kubernetes cluster runs at most 150,000 pods).
    #[schemars(range(min = 0, max = 1000000))]
    pub replicas: i32,
    /// Selects the pods of this CafeDeployment in every unit; must match the template's labels
    /// and may not be empty (as for a Deployment).
    pub selector: LabelSelector,
    /// The pod template every unit's InPlaceSet runs; a change to it rolls out a new revision.
    pub template: PodTemplateSpec,
    /// Revisions kept for `cafe rollout undo`.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 0))]
    pub history_limit: i32,
    /// Seconds a new pod must be ready, without any container crashing, to count as available.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: i32,
    /// How replicas map onto topology units (member clusters).
    pub topology: Topology,
    /// How a new revision rolls out across units.
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// Third-party hooks every member InPlaceSet honours before taking a pod down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<super::Lifecycle>,
}

// The selector must select the pods the template makes, and something at all, as Deployment's
// validation requires (ValidateDeploymentSpec in k8s.io/kubernetes pkg/apis/apps/validation:
// "empty selector is invalid for deployment", "selector does not match template labels").
// Kubernetes reports the mismatch at spec.template.metadata.labels; cafe names spec.selector,
// the field a user most often gets wrong. The label-selector semantics (matchLabels entries must
// be equal; In/NotIn/Exists/DoesNotExist, where NotIn and DoesNotExist match an absent key) are
// those of https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors.
pub(crate) const SELECTOR_DOES_NOT_MATCH: &str = "selector does not match template labels";

pub(crate) const SELECTOR_NOT_EMPTY: &str = concat!(
    "(has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0)",
    " || (has(self.selector.matchExpressions) && size(self.selector.matchExpressions) > 0)"
);

pub(crate) const MATCH_LABELS_MATCH_TEMPLATE: &str = concat!(
    "!has(self.selector.matchLabels) || self.selector.matchLabels.all(k,",
    " has(self.template.metadata) && has(self.template.metadata.labels)",
    " && k in self.template.metadata.labels",
    " && self.template.metadata.labels[k] == self.selector.matchLabels[k])"
);

pub(crate) const MATCH_EXPRESSIONS_MATCH_TEMPLATE: &str = concat!(
    "!has(self.selector.matchExpressions) || self.selector.matchExpressions.all(e,",
    " (has(self.template.metadata) && has(self.template.metadata.labels)",
    " && e.key in self.template.metadata.labels)",
    " ? (e.operator == 'Exists'",
    " || (e.operator == 'In' && has(e.values) && self.template.metadata.labels[e.key] in e.values)",
    " || (e.operator == 'NotIn'",
    " && !(has(e.values) && self.template.metadata.labels[e.key] in e.values)))",
    " : (e.operator == 'NotIn' || e.operator == 'DoesNotExist'))"
);

// A pod with no container is refused by every member's API server (spec.containers: Required
// value); a template without one is refused here, where the user wrote it. The schema alone
// allows an empty list.
pub(crate) const HAS_CONTAINERS: &str =
    "has(self.template.spec) && size(self.template.spec.containers) > 0";
pub(crate) const NO_CONTAINERS: &str = "a pod template needs at least one container";

// Every group is a step someone may have to confirm, and a row `cafe status` draws: a count
// batch size that cuts the replicas into more than 1000 groups is refused (a percent is at least
// 1%: at most 100 groups).
const AT_MOST_MAX_GROUPS: &str = concat!(
    "!has(self.strategy) || !has(self.strategy.batchSize)",
    " || type(self.strategy.batchSize) == string",
    " || self.replicas <= self.strategy.batchSize * 1000"
);
const TOO_MANY_GROUPS: &str = "too small for spec.replicas: a rollout has at most 1000 groups; use at least replicas/1000 or a percent";

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
    /// Run replicas a unit cannot schedule in units whose clusters have room, and move them
    /// back once the unit has room again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_reschedule: Option<AutoReschedule>,
    /// Carry the replicas of a unit whose member cluster is lost in the other units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
}

/// Lending replicas a unit cannot schedule to units with room.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoReschedule {
    /// Reschedule replicas a unit cannot schedule (default false).
    #[serde(default)]
    pub enable: bool,
    /// How long replicas must be unschedulable before they are lent to another unit.
    #[serde(default = "default_initial_delay")]
    #[schemars(range(min = 0))]
    pub initial_delay_seconds: i32,
    /// Move lent replicas back once the lending unit has room (default true).
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

/// Carrying a lost member's replicas in the other units.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// Carry a lost member's replicas in the other units (default false).
    #[serde(default)]
    pub enable: bool,
    /// How long a member may be not Ready before its replicas fail over.
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
    /// Beta: one pod in each unit first, then batches; Batch: batches only.
    #[serde(default)]
    pub upgrade_type: UpgradeType,
    /// Pods per group after the Beta group, over all units: a count >= 1 or a percent of
    /// `replicas`.
    #[serde(default = "default_batch_size")]
    pub batch_size: PositiveIntOrPercent,
    /// Wait for `cafe rollout confirm` after each group before the next one starts.
    #[serde(default)]
    pub need_waiting_for_confirm: bool,
    /// No new group starts while true; work in flight finishes.
    #[serde(default)]
    pub pause: bool,
    /// The most pods of one unit that may be unavailable at once during an update: a count or a
    /// percent of the unit's replicas (default 25%). A literal 0 (or "0%") is refused: with no
    /// surge, no pod could ever be taken down to update it. A percent that rounds down to 0 pods
    /// allows 1, as Deployment's maxUnavailable does.
    // Kubernetes refuses maxUnavailable 0 when maxSurge is 0 ("may not be 0 when `maxSurge` is
    // 0", https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#max-unavailable);
    // cafe never surges, so 0 is always refused. IntOrPercent::budget rounds percents to at least 1.
    #[serde(default = "default_max_unavailable")]
    #[x_kube(validation = Rule::new(NOT_ZERO).message(MAX_UNAVAILABLE_ZERO))]
    pub max_unavailable_per_unit: IntOrPercent,
    /// Seconds a group may take to become available before the rollout reports
    /// ProgressDeadlineExceeded and stops.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: i32,
    /// InPlaceIfPossible: change the image (and labels, annotations, resources) of a running
    /// pod; ReCreate: always replace the pod.
    #[serde(default)]
    pub pod_update_policy: PodUpdatePolicy,
    /// Wait after a pod's readiness gate turns False before touching it (traffic drains).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub grace_period_seconds: i32,
}

const NOT_ZERO: &str = "type(self) == string ? self != '0%' : self != 0";
const MAX_UNAVAILABLE_ZERO: &str =
    "may not be 0: cafe never surges, so no pod could be updated; use at least 1 or a percent";

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
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods over all units.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods over all units.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods ready for at least `minReadySeconds`, over all units.
    #[serde(default)]
    pub available_replicas: i32,
    /// Pods at the update revision, over all units.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Ready pods at the update revision, over all units.
    #[serde(default)]
    pub updated_ready_replicas: i32,
    /// The revision every unit ran when the last rollout completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision of the current template, which rollouts drive every unit to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// Bumped when two templates hash to the same revision name, to tell them apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// The label selector as a string, for the scale subresource (`kubectl scale`, HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Topology units the replicas are split between, for `kubectl get -o wide`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unit_count: i32,
    /// The rollout toward the update revision: what its groups are made from, the current ones,
    /// progress and what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// One row per topology unit: its share, its pods and its member's reachability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<UnitStatus>,
    /// Replicas one unit runs for another: kept here so they survive a hub restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loans: Vec<Loan>,
    /// Available, Progressing, UnitsResolved, ReplicaFailure, Rescheduled, CleanedUp.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Replicas of unit `from` that unit `to` runs while `from` cannot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Loan {
    /// The lending unit, whose replicas run elsewhere.
    pub from: String,
    /// The borrowing unit, which runs them.
    pub to: String,
    /// How many replicas are lent.
    pub replicas: i32,
    /// Unschedulable (the lender had no room) or Failover (the lender's member was lost).
    pub reason: String,
    /// When the loan was made.
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

/// The rollout toward `revision`: what its group plan is made from, how far it got, and what it
/// waits for. It is all the hub needs to resume after a restart. Its size grows with the number
/// of units, not of groups: the plan is made again from it
/// ([`crate::plan::rollout::plan_of`]).
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
    /// Groups in the plan, the Beta group included.
    #[serde(default)]
    pub total_batches: i32,
    /// "current/total", for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// `spec.strategy.upgradeType` when the plan was made. With `batchSize` and `units` it is
    /// all the group plan is made from: the plan is made again from them, not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_type: Option<UpgradeType>,
    /// Pods per group after the Beta group when the plan was made: `spec.strategy.batchSize`
    /// resolved against `spec.replicas` (percents round up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<i32>,
    /// The groups around the current one: the current group and the next (groups 1 and 2
    /// before the first is released), each with its index, pods per unit and state. Groups before
    /// them are Completed, groups after them Pending; the whole plan is made again from
    /// `upgradeType`, `batchSize` and `units`. A status written without `upgradeType` and
    /// `batchSize` (by an older hub) holds every group of the plan here.
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

/// One group of the rollout plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchStatus {
    /// The group's position in the plan (1-based).
    pub index: i32,
    /// The Beta group: one pod in each unit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub beta: bool,
    /// Pods this group creates or updates, per unit.
    #[serde(default)]
    pub units: BTreeMap<String, i32>,
    /// Pending, Progressing, WaitingForConfirm, Completed, or Stalled (past the progress
    /// deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// One unit's part of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutUnit {
    /// The unit (a value of `spec.topology.values`).
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
    /// The unit (a value of `spec.topology.values`).
    pub name: String,
    /// The MemberCluster the unit resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The unit's share of `spec.replicas`, before loans.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Pods of the unit's InPlaceSet.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods of the unit's InPlaceSet.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods of the unit ready for at least `minReadySeconds`.
    #[serde(default)]
    pub available_replicas: i32,
    /// Pods of the unit at the update revision.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Pods of the unit the member's scheduler cannot place.
    #[serde(default)]
    pub unschedulable_replicas: i32,
    /// Replicas this unit runs for other units.
    #[serde(default)]
    pub borrowed_replicas: i32,
    /// Replicas of this unit that other units run.
    #[serde(default)]
    pub lent_replicas: i32,
    /// Replicas the unit should run now: its own share, less what it lends, plus what it
    /// borrows. Availability is judged against this.
    #[serde(default)]
    pub target_replicas: i32,
    /// Whether the hub can reach the unit's member; when false, the counts are as last seen.
    #[serde(default)]
    pub reachable: bool,
    /// Since when the unit's member has not been reachable: its counts are the last seen, not
    /// current, and count in no total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<Time>,
    /// A few of the unit's pods that are not ready, and why, as its member agent reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready_pods: Vec<crate::api::NotReadyPod>,
}
