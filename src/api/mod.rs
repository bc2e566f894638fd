//! The cafe API (`apps.cafe.io/v1alpha1`): CafeDeployment and MemberCluster on the hub,
//! InPlaceSet in each member, and the well-known names they share.

// kube-derive emits one `#[serde]`/`#[schemars]` attribute per `#[kube(...)]` option, which
// clippy reads as duplicates; the attributes are generated, not written twice by hand.
#![allow(clippy::duplicated_attributes)]

pub mod cafedeployment;
pub mod inplaceset;
pub mod int_or_percent;
pub mod labels;
pub mod membercluster;

pub use cafedeployment::*;
pub use inplaceset::*;
pub use int_or_percent::*;
pub use membercluster::*;

pub const GROUP: &str = "apps.cafe.io";
pub const VERSION: &str = "v1alpha1";
