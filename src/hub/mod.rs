//! The hub: MemberCluster health and capacity, the membership registry, and the CafeDeployment
//! controller.
//!
//! - [`membercluster`] probes each registered member and writes MemberCluster status; it also keeps
//!   the [`membership`] registry (one client and one InPlaceSet reflector per member) in step with
//!   the MemberClusters and their kubeconfig Secrets.
//! - [`cafedeployment`] projects each CafeDeployment into one InPlaceSet per unit, in the member
//!   that unit resolves to, and aggregates their status. Member InPlaceSet events requeue the owning
//!   CafeDeployment through the registry.
//! - [`projection`] and `crate::plan` are the pure parts; the rest is I/O.

pub mod access;
pub mod cafedeployment;
pub mod crds;
pub mod expectations;
pub mod history;
pub mod member_writes;
pub mod membercluster;
pub mod membership;
pub mod probe;
pub mod projection;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector;
use tokio_util::sync::CancellationToken;

use crate::api::MemberCluster;
use crate::api::labels::SYSTEM_NAMESPACE;
use crate::runtime::leader::{self, Leadership, LeaseLock, LeaseTimings};

/// The Lease the hub replicas elect their leader with, in `cafe-system`.
pub const HUB_LEASE: &str = "cafe-hub";

/// Readiness names: the hub CRDs Established, and the MemberCluster cache listed.
pub const CRDS_WATCH: &str = "hub CRDs";
pub const MEMBERCLUSTERS_WATCH: &str = "memberclusters";

/// Why the hub could not run. Controllers retry their own failures; only start-up fails the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Crds(#[from] crds::CrdError),
    #[error("{0}")]
    Startup(String),
}

impl HubError {
    /// A fixed word for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            HubError::Crds(_) => "crds",
            HubError::Startup(_) => "startup",
        }
    }
}

/// Timing of the hub's controllers. Production uses [`HubOptions::default`]; tests shorten it.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// How often each member is probed (`/version`, nodes, pods).
    pub probe_interval: Duration,
    /// How long one probe may take before the member counts as Unreachable.
    pub probe_timeout: Duration,
    /// How long one write to a member may take before it counts as failed (and is retried).
    pub request_timeout: Duration,
    /// MemberCluster status is written when something in it changes, and at least this often so
    /// that `lastProbeTime` shows the probe is alive (like a Node's heartbeat).
    pub status_heartbeat: Duration,
    /// A CafeDeployment's status is written at once when it calls for member writes (the
    /// rollout state goes first); any other change (pods created, ready, available; a condition,
    /// a phase reached) waits until this long after the last write.
    pub progress_interval: Duration,
    /// First delay after a failed reconcile; doubles on each further failure up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// While a member is not usable (connecting, unreachable), its CafeDeployments are looked at
    /// again after this long even without an event.
    pub member_wait: Duration,
    /// Every CafeDeployment is reconciled at least this often, events or not.
    pub resync_interval: Duration,
    /// At start-up the CafeDeployment controller waits up to this long for every registered member
    /// to be connected (or known to be unreachable), so that a restart acts on complete caches.
    pub startup_settle: Duration,
    /// Where the controllers report metrics and the readiness of their watches.
    pub telemetry: crate::runtime::Telemetry,
    /// This replica's name in the `cafe-system/cafe-hub` Lease.
    pub identity: String,
    /// The leader election's timing.
    pub lease: LeaseTimings,
    /// Whether this replica leads: only the leader writes. [`run_with`] drives the election
    /// into it (nothing to elect with [`Leadership::always`]).
    pub leadership: Leadership,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            status_heartbeat: Duration::from_secs(60),
            progress_interval: Duration::from_secs(1),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            member_wait: Duration::from_secs(5),
            resync_interval: Duration::from_secs(300),
            startup_settle: Duration::from_secs(30),
            telemetry: Default::default(),
            identity: leader::default_identity(),
            lease: LeaseTimings::default(),
            leadership: Leadership::elected(),
        }
    }
}

impl HubOptions {
    /// Short intervals for tests and `cafe dev`.
    pub fn fast() -> Self {
        Self {
            probe_interval: Duration::from_millis(300),
            probe_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            status_heartbeat: Duration::from_secs(5),
            progress_interval: Duration::from_secs(1),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            member_wait: Duration::from_millis(500),
            resync_interval: Duration::from_secs(30),
            startup_settle: Duration::from_secs(5),
            telemetry: Default::default(),
            identity: leader::default_identity(),
            lease: LeaseTimings::fast(),
            leadership: Leadership::elected(),
        }
    }
}

/// Runs the hub controllers against the hub cluster until `shutdown` is cancelled.
pub async fn run(client: kube::Client, shutdown: CancellationToken) -> Result<(), HubError> {
    run_with(client, HubOptions::default(), shutdown).await
}

/// [`run`] with explicit timing. Takes part in the election of Lease `cafe-system/cafe-hub`
/// (only the leader writes; every replica keeps its caches warm), waits for the hub CRDs to be
/// Established, then runs the MemberCluster controller and, once the registered members have
/// settled, the CafeDeployment controller. Returns when `shutdown` is cancelled, in-flight
/// reconciles have finished and the Lease is released.
pub async fn run_with(
    client: kube::Client,
    options: HubOptions,
    shutdown: CancellationToken,
) -> Result<(), HubError> {
    let lock = LeaseLock {
        namespace: SYSTEM_NAMESPACE.to_string(),
        name: HUB_LEASE.to_string(),
        identity: options.identity.clone(),
    };
    leader::while_elected(
        client,
        lock,
        options.lease,
        options.leadership.clone(),
        options.telemetry.metrics.clone(),
        shutdown.clone(),
        |client| run_controllers(client, options, shutdown),
    )
    .await
}

async fn run_controllers(
    client: kube::Client,
    options: HubOptions,
    shutdown: CancellationToken,
) -> Result<(), HubError> {
    // Every watch is known to /readyz from the start: until the CRDs exist, it names them all.
    let readiness = &options.telemetry.readiness;
    for watch in [
        CRDS_WATCH,
        MEMBERCLUSTERS_WATCH,
        cafedeployment::CAFEDEPLOYMENTS_WATCH,
    ] {
        readiness.register(watch);
    }
    let hub_crds = crds::hub_crds();
    tokio::select! {
        r = crds::wait_established(&client, &hub_crds) => r?,
        () = shutdown.cancelled() => return Ok(()),
    }
    readiness.mark_synced(CRDS_WATCH);
    tracing::info!("hub CRDs established; starting controllers");

    let (triggers, trigger_streams) = membership::triggers();
    let membership = Arc::new(membership::Membership::new(
        triggers,
        options.lease.lease_duration,
        shutdown.child_token(),
        options.telemetry.clone(),
    ));
    let (members, writer) = reflector::store::<MemberCluster>();

    let member_controller = membercluster::run(
        client.clone(),
        writer,
        members.clone(),
        membership.clone(),
        options.clone(),
        shutdown.clone(),
    );
    let deployment_controller = async {
        // The CafeDeployment controller plans against the MemberCluster cache and the member
        // caches: starting it before they are filled would make a restart look like a world with
        // no members (and write accordingly).
        tokio::select! {
            r = members.wait_until_ready() => {
                if r.is_err() {
                    return;
                }
            }
            () = shutdown.cancelled() => return,
        }
        let names: Vec<String> = members
            .state()
            .iter()
            .filter_map(|m| m.metadata.name.clone())
            .collect();
        tokio::select! {
            settled = membership.wait_settled(&names, options.startup_settle) => {
                if !settled {
                    tracing::warn!(
                        timeout = ?options.startup_settle,
                        "not every member connected in time; starting anyway (their units wait)"
                    );
                }
            }
            () = shutdown.cancelled() => return,
        }
        cafedeployment::run(
            client.clone(),
            members.clone(),
            membership.clone(),
            trigger_streams,
            options.clone(),
            shutdown.clone(),
        )
        .await;
    };
    crate::runtime::shutdown::naming_stragglers(
        async { tokio::join!(member_controller, deployment_controller) },
        &options.telemetry.metrics,
        &shutdown,
    )
    .await;
    membership.stop_all();
    tracing::info!("hub stopped");
    Ok(())
}
