//! Well-known labels, annotations, condition types and finalizers (DESIGN.md section 2).

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
/// Field manager the hub and members write with.
pub const HUB_MANAGER: &str = "cafe-hub";
pub const MEMBER_MANAGER: &str = "cafe-member";

/// `unit.apps.cafe.io/DataCenter`
pub fn unit_label(unit_type: &str) -> String {
    format!("{UNIT_LABEL_PREFIX}{unit_type}")
}
