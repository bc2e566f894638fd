//! The controllers' Prometheus metrics, served at `/metrics` by the admin server.
//!
//! Every name starts with `cafe_`. Label values come from fixed sets (controller names, error
//! categories, rollout phases, verbs) or are object and member names; never error text, which
//! would make one series per message.
//!
//! Writes are counted by a tower layer on the kube client ([`Metrics::client`]): every request
//! that is not a read counts once, by member and verb, whether the server accepts it or not.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::plan::rollout::{
    PHASE_COMPLETED, PHASE_PAUSED, PHASE_PROGRESSING, PHASE_STALLED, PHASE_WAITING_FOR_CONFIRM,
};

/// Every phase `cafe_rollout_phase` reports: one series each, 1 for the current phase.
pub const ROLLOUT_PHASES: [&str; 5] = [
    PHASE_PROGRESSING,
    PHASE_WAITING_FOR_CONFIRM,
    PHASE_PAUSED,
    PHASE_COMPLETED,
    PHASE_STALLED,
];

/// Controller names, the `controller` label.
pub mod controllers {
    pub const CAFEDEPLOYMENT: &str = "cafedeployment";
    pub const MEMBERCLUSTER: &str = "membercluster";
    pub const INPLACESET: &str = "inplaceset";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    name: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    member: String,
    verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    lease: String,
}

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

/// One registry with every metric of the process.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: HistogramFamily,
    member_reachable: Family<MemberLabels, Gauge>,
    rollout_phase: Family<PhaseLabels, Gauge>,
    api_writes: Family<WriteLabels, Counter>,
    leader: Family<LeaseLabels, Gauge>,
    /// The reconciles running now, by a sequence number: what a graceful shutdown waits for,
    /// named in its log when it waits long.
    in_flight: Mutex<BTreeMap<u64, Running>>,
    next_reconcile: AtomicU64,
}

/// One reconcile in flight.
struct Running {
    controller: &'static str,
    object: String,
    since: Instant,
}

/// Removes its reconcile from the in-flight set however the reconcile ends (done, or dropped by
/// a forced stop).
struct InFlightGuard<'a> {
    metrics: &'a Metrics,
    id: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.metrics.running().remove(&self.id);
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn reconcile_buckets() -> Histogram {
    // 1 ms to about 16 s: a reconcile is a few API calls, and one past 16 s is stuck anyway.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cafe");
        let reconciles = Family::default();
        registry.register(
            "reconciles",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        let reconcile_errors = Family::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller and error category",
            reconcile_errors.clone(),
        );
        let reconcile_duration: HistogramFamily =
            Family::new_with_constructor(reconcile_buckets as fn() -> Histogram);
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles took, by controller",
            reconcile_duration.clone(),
        );
        let member_reachable = Family::default();
        registry.register(
            "member_reachable",
            "1 if the member's last probe succeeded, else 0",
            member_reachable.clone(),
        );
        let rollout_phase = Family::default();
        registry.register(
            "rollout_phase",
            "1 for the CafeDeployment's current rollout phase, 0 for the others",
            rollout_phase.clone(),
        );
        let api_writes = Family::default();
        registry.register(
            "api_writes",
            "Write requests sent to a cluster's API server, by member and verb",
            api_writes.clone(),
        );
        let leader = Family::default();
        registry.register(
            "leader",
            "1 while this process holds the lease, else 0",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            member_reachable,
            rollout_phase,
            api_writes,
            leader,
            in_flight: Mutex::default(),
            next_reconcile: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// One reconcile of `controller` that took `took`; `error` is the failure's category.
    pub fn reconciled(
        &self,
        controller: &'static str,
        took: Duration,
        error: Option<&'static str>,
    ) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(category) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    controller,
                    category,
                })
                .inc();
        }
    }

    /// Runs one reconcile of `controller` for `object` (`namespace/name`), records it (and its
    /// error's category) and keeps it in the in-flight set while it runs.
    pub async fn measure<T, E>(
        &self,
        controller: &'static str,
        object: String,
        reconcile: impl std::future::Future<Output = Result<T, E>>,
        category: impl Fn(&E) -> &'static str,
    ) -> Result<T, E> {
        let started = Instant::now();
        let id = self.next_reconcile.fetch_add(1, Ordering::Relaxed);
        self.running().insert(
            id,
            Running {
                controller,
                object,
                since: started,
            },
        );
        let _guard = InFlightGuard { metrics: self, id };
        let result = reconcile.await;
        self.reconciled(
            controller,
            started.elapsed(),
            result.as_ref().err().map(category),
        );
        result
    }

    /// The reconciles running now, longest first: `controller object (for 1.2s)`.
    pub fn in_flight(&self) -> Vec<String> {
        let now = Instant::now();
        let mut running: Vec<(Duration, String)> = self
            .running()
            .values()
            .map(|r| {
                let took = now.duration_since(r.since);
                (
                    took,
                    format!("{} {} (for {took:.1?})", r.controller, r.object),
                )
            })
            .collect();
        running.sort_by_key(|r| std::cmp::Reverse(r.0));
        running.into_iter().map(|(_, line)| line).collect()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Running>> {
        // A panic elsewhere while holding it leaves the set as it was: still the best account.
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_member_reachable(&self, member: &str, reachable: bool) {
        self.member_reachable
            .get_or_create(&MemberLabels {
                member: member.to_string(),
            })
            .set(i64::from(reachable));
    }

    /// The member is no longer registered: its series goes.
    pub fn forget_member(&self, member: &str) {
        self.member_reachable.remove(&MemberLabels {
            member: member.to_string(),
        });
    }

    /// Sets the CafeDeployment's phase series: 1 for `phase`, 0 for the other known phases (all
    /// 0 for no phase or one not in [`ROLLOUT_PHASES`]).
    pub fn set_rollout_phase(&self, namespace: &str, name: &str, phase: Option<&str>) {
        for known in ROLLOUT_PHASES {
            self.rollout_phase
                .get_or_create(&phase_labels(namespace, name, known))
                .set(i64::from(phase == Some(known)));
        }
    }

    /// The CafeDeployment is gone: its phase series go.
    pub fn forget_rollout(&self, namespace: &str, name: &str) {
        for known in ROLLOUT_PHASES {
            self.rollout_phase
                .remove(&phase_labels(namespace, name, known));
        }
    }

    /// For the leader election: whether this process holds `lease`.
    pub fn set_leader(&self, lease: &str, leader: bool) {
        self.leader
            .get_or_create(&LeaseLabels {
                lease: lease.to_string(),
            })
            .set(i64::from(leader));
    }

    fn count_write(&self, member: &str, verb: &'static str) {
        self.api_writes
            .get_or_create(&WriteLabels {
                member: member.to_string(),
                verb,
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// A kube client for `config` whose writes count in `cafe_api_writes_total{member}`.
    pub fn client(
        self: &Arc<Self>,
        config: kube::Config,
        member: &str,
    ) -> Result<kube::Client, kube::Error> {
        let layer = CountWritesLayer {
            metrics: self.clone(),
            member: member.into(),
        };
        Ok(kube::client::ClientBuilder::try_from(config)?
            .with_layer(&layer)
            .build())
    }
}

fn phase_labels(namespace: &str, name: &str, phase: &'static str) -> PhaseLabels {
    PhaseLabels {
        namespace: namespace.to_string(),
        name: name.to_string(),
        phase,
    }
}

/// The verb of a request as the API server's audit log names it, for writes only (`None` for
/// reads and watches). A PATCH with the apply content type is server-side apply.
pub fn write_verb(method: &http::Method, content_type: Option<&str>) -> Option<&'static str> {
    match *method {
        http::Method::POST => Some("create"),
        http::Method::PUT => Some("update"),
        http::Method::PATCH if content_type == Some("application/apply-patch+yaml") => {
            Some("apply")
        }
        http::Method::PATCH => Some("patch"),
        http::Method::DELETE => Some("delete"),
        _ => None,
    }
}

/// The tower layer [`Metrics::client`] puts under the kube client.
#[derive(Clone)]
struct CountWritesLayer {
    metrics: Arc<Metrics>,
    member: Arc<str>,
}

impl<S> tower_layer::Layer<S> for CountWritesLayer {
    type Service = CountWrites<S>;
    fn layer(&self, inner: S) -> CountWrites<S> {
        CountWrites {
            inner,
            metrics: self.metrics.clone(),
            member: self.member.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CountWrites<S> {
    inner: S,
    metrics: Arc<Metrics>,
    member: Arc<str>,
}

impl<S, B> tower_service::Service<http::Request<B>> for CountWrites<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> S::Future {
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if let Some(verb) = write_verb(request.method(), content_type) {
            self.metrics.count_write(&self.member, verb);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reconcile is named in the in-flight set while it runs, and leaves it when it ends or
    /// is dropped (a forced stop).
    #[tokio::test]
    async fn a_running_reconcile_is_in_flight_until_it_ends_or_is_dropped() {
        let metrics = Metrics::default();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let running = metrics.measure(
            controllers::CAFEDEPLOYMENT,
            "demo/web".to_string(),
            async move { finished.await.map_err(|_| "dropped") },
            |e: &&str| e,
        );
        let mut running = Box::pin(running);
        assert!(futures::poll!(running.as_mut()).is_pending());
        let named = metrics.in_flight();
        assert_eq!(named.len(), 1, "{named:?}");
        assert!(
            named[0].starts_with("cafedeployment demo/web (for "),
            "{named:?}"
        );
        finish.send(()).unwrap();
        running.await.unwrap();
        assert!(metrics.in_flight().is_empty());

        let stuck = metrics.measure(
            controllers::INPLACESET,
            "dca/web".to_string(),
            std::future::pending::<Result<(), &str>>(),
            |e: &&str| e,
        );
        let mut stuck = Box::pin(stuck);
        assert!(futures::poll!(stuck.as_mut()).is_pending());
        assert_eq!(metrics.in_flight().len(), 1);
        drop(stuck);
        assert!(
            metrics.in_flight().is_empty(),
            "a dropped reconcile is no longer in flight"
        );
    }

    #[test]
    fn writes_are_named_like_the_api_servers_verbs_and_reads_are_not_counted() {
        use http::Method;
        assert_eq!(write_verb(&Method::GET, None), None);
        assert_eq!(write_verb(&Method::POST, None), Some("create"));
        assert_eq!(write_verb(&Method::PUT, None), Some("update"));
        assert_eq!(
            write_verb(&Method::PATCH, Some("application/merge-patch+json")),
            Some("patch")
        );
        assert_eq!(
            write_verb(&Method::PATCH, Some("application/apply-patch+yaml")),
            Some("apply")
        );
        assert_eq!(write_verb(&Method::DELETE, None), Some("delete"));
    }

    #[test]
    fn the_rollout_phase_is_one_series_per_phase_and_goes_with_the_deployment() {
        let metrics = Metrics::default();
        metrics.set_rollout_phase("default", "demo", Some(PHASE_PAUSED));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                r#"cafe_rollout_phase{namespace="default",name="demo",phase="Paused"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"cafe_rollout_phase{namespace="default",name="demo",phase="Completed"} 0"#
            ),
            "{text}"
        );
        metrics.forget_rollout("default", "demo");
        assert!(!metrics.encode().unwrap().contains("name=\"demo\""));
    }

    #[test]
    fn a_failed_reconcile_counts_as_a_reconcile_and_as_an_error_of_its_category() {
        let metrics = Metrics::default();
        metrics.reconciled(controllers::INPLACESET, Duration::from_millis(3), None);
        metrics.reconciled(
            controllers::INPLACESET,
            Duration::from_millis(3),
            Some("cache_not_synced"),
        );
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(r#"cafe_reconciles_total{controller="inplaceset"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"cafe_reconcile_errors_total{controller="inplaceset",category="cache_not_synced"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"cafe_reconcile_duration_seconds_count{controller="inplaceset"} 2"#),
            "{text}"
        );
    }
}
