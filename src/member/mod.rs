//! The member agent: the InPlaceSet controller of one member cluster.
//!
//! It keeps `spec.replicas` pods from each InPlaceSet's template, each behind the
//! `apps.cafe.io/InPlaceUpdateReady` readiness gate, and summarises them into the InPlaceSet's
//! status for the hub. Scale decisions are pure ([`crate::plan::scale`]); writes are tracked
//! as expectations so a stale cache never causes a second round of creations.
//!
//! Replicas of the agent elect a leader through Lease `cafe-system/cafe-member` in the member
//! (the hub also reads it: an agent that stops renewing it makes the member not Ready). Only the
//! leader writes; followers keep their caches warm.

mod apply;
mod cached;
mod claim;
mod controller;
mod crd;
mod expectations;
mod inplace;
mod lifecycle;
mod owners;
mod pod;
mod resize;
mod revisions;
mod room;
mod status;
mod work;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::labels::SYSTEM_NAMESPACE;
use crate::runtime::leader::{self, Leadership, LeaseLock, LeaseTimings};

/// The Lease the member agent replicas elect their leader with, in the member's `cafe-system`.
pub const MEMBER_LEASE: &str = "cafe-member";

pub use apply::ApplyError;
pub use controller::{CACHE_NOT_SYNCED, ReconcileError};
pub use room::REFRESH as ROOM_REFRESH;
pub use status::REPLICA_FAILURE;

/// Readiness names: the InPlaceSet CRD Established, and the controller's caches listed.
pub const CRD_WATCH: &str = "InPlaceSet CRD";
pub const INPLACESETS_WATCH: &str = "inplacesets";
pub const PODS_WATCH: &str = "pods";
pub const REVISIONS_WATCH: &str = "controllerrevisions";

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error(
        "checking that CRD {crd} is installed: {}; the member agent needs `get` on \
         customresourcedefinitions and a reachable API server",
        crate::runtime::api_cause(.source)
    )]
    CrdCheck {
        crd: String,
        #[source]
        source: kube::Error,
    },
}

impl MemberError {
    /// A fixed label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::CrdCheck { .. } => "crd_check",
        }
    }
}

/// The member agent's timing.
#[derive(Clone, Debug)]
pub struct MemberOptions {
    /// How long a reconcile waits for the pod and ControllerRevision caches to list before it
    /// reports ReplicaFailure `CacheNotSynced` and retries.
    pub cache_sync_timeout: Duration,
    /// Where the controller reports metrics and the readiness of its watches.
    pub telemetry: crate::runtime::Telemetry,
    /// This replica's name in the `cafe-system/cafe-member` Lease.
    pub identity: String,
    /// The leader election's timing.
    pub lease: LeaseTimings,
    /// Whether this replica leads: only the leader writes. [`run_with`] drives the election
    /// into it (nothing to elect with [`Leadership::always`]).
    pub leadership: Leadership,
}

impl Default for MemberOptions {
    fn default() -> Self {
        Self {
            cache_sync_timeout: controller::CACHE_SYNC_TIMEOUT,
            telemetry: Default::default(),
            identity: leader::default_identity(),
            lease: LeaseTimings::default(),
            leadership: Leadership::elected(),
        }
    }
}

impl MemberOptions {
    /// Short lease timings, for tests and `cafe dev`.
    pub fn fast() -> Self {
        Self {
            lease: LeaseTimings::fast(),
            ..Self::default()
        }
    }
}

/// Runs the InPlaceSet controller against one member cluster until `shutdown` is cancelled.
///
/// It first waits (logging why) until the InPlaceSet CRD is Established; it never installs
/// CRDs itself. On cancellation, reconciles in flight finish and the function returns `Ok`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) -> Result<(), MemberError> {
    run_with(client, MemberOptions::default(), shutdown).await
}

/// [`run`] with other timing. Takes part in the election of Lease `cafe-system/cafe-member`
/// (released on shutdown, SIGTERM included, so that a successor need not wait).
pub async fn run_with(
    client: kube::Client,
    options: MemberOptions,
    shutdown: CancellationToken,
) -> Result<(), MemberError> {
    let lock = LeaseLock {
        namespace: SYSTEM_NAMESPACE.to_string(),
        name: MEMBER_LEASE.to_string(),
        identity: options.identity.clone(),
    };
    leader::while_elected(
        client,
        lock,
        options.lease,
        options.leadership.clone(),
        options.telemetry.metrics.clone(),
        shutdown.clone(),
        |client| run_controller(client, options, shutdown),
    )
    .await
}

async fn run_controller(
    client: kube::Client,
    options: MemberOptions,
    shutdown: CancellationToken,
) -> Result<(), MemberError> {
    // Every watch is known to /readyz from the start: until the CRD exists, it names them all.
    let readiness = &options.telemetry.readiness;
    for watch in [CRD_WATCH, INPLACESETS_WATCH, PODS_WATCH, REVISIONS_WATCH] {
        readiness.register(watch);
    }
    if !crd::wait_established(&client, &shutdown).await? {
        return Ok(());
    }
    let Some(resize_supported) = crd::resize_supported(&client, &shutdown).await else {
        return Ok(());
    };
    readiness.mark_synced(CRD_WATCH);
    tracing::info!("InPlaceSet controller starting");
    controller::run(client, resize_supported, options, shutdown).await;
    tracing::info!("InPlaceSet controller stopped");
    Ok(())
}
