//! Well-known labels, annotations, condition types and finalizers.

/// Prefix of the unit labels on MemberClusters: `unit.apps.cafe.io/<unitType>=<value>`.
pub const UNIT_LABEL_PREFIX: &str = "unit.apps.cafe.io/";
/// Owning CafeDeployment of a member InPlaceSet.
pub const CAFEDEPLOYMENT: &str = "apps.cafe.io/cafedeployment";
pub const CAFEDEPLOYMENT_NAMESPACE: &str = "apps.cafe.io/cafedeployment-namespace";
/// The unit an InPlaceSet (and its pods) belongs to.
pub const UNIT: &str = "apps.cafe.io/unit";
/// Revision hash of a pod's template.
pub const REVISION: &str = "apps.cafe.io/revision";
/// Readiness gate condition type on every pod an InPlaceSet owns.
pub const READINESS_GATE: &str = "apps.cafe.io/InPlaceUpdateReady";
/// Per-pod lifecycle state.
pub const LIFECYCLE_STATE: &str = "apps.cafe.io/lifecycle-state";
/// Confirmation annotation on CafeDeployments.
pub const UPGRADE_CONFIRMED: &str = "apps.cafe.io/upgrade-confirmed";
/// Hub finalizer on CafeDeployments.
pub const CLEANUP_FINALIZER: &str = "apps.cafe.io/cleanup";
/// Namespace holding member kubeconfig Secrets on the hub.
pub const SYSTEM_NAMESPACE: &str = "cafe-system";
/// The ConfigMap in each member's `cafe-system` where the member agent publishes the room of
/// its cluster (key [`ROOM_KEY`], a `Capacity` as JSON) for the hub.
pub const ROOM_CONFIGMAP: &str = "cafe-member-room";
pub const ROOM_KEY: &str = "capacity";
/// Field manager the hub and members write with.
pub const HUB_MANAGER: &str = "cafe-hub";
pub const MEMBER_MANAGER: &str = "cafe-member";

/// `unit.apps.cafe.io/DataCenter`
pub fn unit_label(unit_type: &str) -> String {
    format!("{UNIT_LABEL_PREFIX}{unit_type}")
}

/// Lifecycle states of a pod (the values of [`LIFECYCLE_STATE`]).
pub const STATE_NORMAL: &str = "Normal";
pub const STATE_PREPARING_UPDATE: &str = "PreparingUpdate";
pub const STATE_UPDATING: &str = "Updating";
pub const STATE_UPDATED: &str = "Updated";
pub const STATE_PREPARING_DELETE: &str = "PreparingDelete";
/// When the pod entered its current lifecycle state (RFC 3339); hook timeouts count from it.
pub const LIFECYCLE_SINCE: &str = "apps.cafe.io/lifecycle-since";
/// What an in-place update changed on a pod (JSON), so the controller can verify the kubelet
/// really restarted the new image and applied the resize.
pub const INPLACE_UPDATE_STATE: &str = "apps.cafe.io/inplace-update-state";
/// The InPlaceSet a member ControllerRevision belongs to.
pub const INPLACESET: &str = "apps.cafe.io/inplaceset";
/// Template annotation `cafe rollout restart` sets: a change of it replaces the pods.
pub const RESTARTED_AT: &str = "apps.cafe.io/restartedAt";
