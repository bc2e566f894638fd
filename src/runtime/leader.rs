//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! package does it, and the write gate that makes only the holder write.
//!
//! The algorithm (client-go `tryAcquireOrRenew`,
//! <https://github.com/kubernetes/client-go/blob/master/tools/leaderelection/leaderelection.go>):
//! every `retry_period` a candidate reads the Lease; it takes it when it is missing, free (no
//! `holderIdentity`), already ours, or expired. Expiry is judged on the local clock only: the
//! Lease is expired when it has not changed (holder, `renewTime`, ...) for
//! `leaseDurationSeconds` since this process last saw it change, so clock skew between replicas
//! never matters. The write is an update with the Lease's `resourceVersion`, so two candidates
//! can never both win.
//!
//! The holder renews every `retry_period`. If it cannot renew within `renew_deadline`
//! (< lease duration) it steps down at once: [`Leadership::is_leader`] turns false by itself when
//! the deadline passes, even if the election task is stuck, so writes stop before any other
//! replica can consider the Lease expired. On shutdown the holder releases the Lease (holder
//! cleared, duration 1 s, as client-go's `ReleaseOnCancel`) so that a successor takes over
//! without waiting out the lease.
//!
//! The election runs in a supervised task: an API error or a panic inside it makes this process
//! a follower, then it tries again.
//!
//! [`WriteGate`] is the tower layer every controller client goes through: while this process
//! is not the leader, a request that is not a read fails at once, locally.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use http::{Method, Request, Response};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::client::Body;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a campaign step failed, or why the gate refused a request.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("reading or writing Lease {lease}: {}", crate::runtime::api_cause(.source))]
    Api {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("Lease {lease}: no answer within {waited:?}")]
    Timeout { lease: String, waited: Duration },
    #[error(
        "namespace {namespace} does not exist: create it (kubectl create namespace {namespace}); \
         the Lease {lease} lives there"
    )]
    NamespaceMissing { namespace: String, lease: String },
    #[error("not the leader of Lease {lease}: {method} refused (only the holder writes)")]
    NotLeader { lease: String, method: Method },
}

impl LeaderError {
    /// A fixed word for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            LeaderError::Api { .. } => "lease_api",
            LeaderError::Timeout { .. } => "lease_timeout",
            LeaderError::NamespaceMissing { .. } => "namespace_missing",
            LeaderError::NotLeader { .. } => "not_leader",
        }
    }
}

/// The election's timing, as client-go's `LeaderElectionConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long others wait, after they last saw the Lease change, before taking it.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it steps down; less than
    /// `lease_duration`, so that it stops writing before the Lease can pass to another.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the holder renews.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    /// client-go's (and kube-controller-manager's) defaults.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTimings {
    /// Short timings for tests and `cafe dev`.
    pub fn fast() -> Self {
        Self {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(250),
        }
    }
}

/// Which Lease, and who we are.
#[derive(Clone, Debug)]
pub struct LeaseLock {
    pub namespace: String,
    pub name: String,
    pub identity: String,
}

impl LeaseLock {
    fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// `<hostname>-<pid>`: unique per process, and stable across a restart of the same pod name.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cafe".to_string());
    format!("{host}-{}", std::process::id())
}

struct Shared {
    /// No election: always the leader.
    always: bool,
    leading: watch::Sender<bool>,
    /// While leading: until when writes are allowed (last successful renewal + renew deadline).
    valid_until: std::sync::Mutex<Option<Instant>>,
    /// Counts the times leadership was gained.
    term: AtomicU64,
    /// The Lease, for messages.
    lease: std::sync::Mutex<String>,
    /// Writes the gates of this handle let through.
    writes: AtomicU64,
}

/// Whether this process leads. Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct Leadership(Arc<Shared>);

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("always", &self.0.always)
            .field("leader", &self.is_leader())
            .finish()
    }
}

impl Default for Leadership {
    fn default() -> Self {
        Self::elected()
    }
}

impl Leadership {
    fn with(always: bool) -> Self {
        let (leading, _) = watch::channel(always);
        Self(Arc::new(Shared {
            always,
            leading,
            valid_until: std::sync::Mutex::new(None),
            term: AtomicU64::new(u64::from(always)),
            lease: std::sync::Mutex::new(String::new()),
            writes: AtomicU64::new(0),
        }))
    }

    /// Leads from the start, with no election (one replica, or callers that elect elsewhere).
    pub fn always() -> Self {
        Self::with(true)
    }

    /// A follower until [`run_election`] makes it the leader.
    pub fn elected() -> Self {
        Self::with(false)
    }

    /// False for [`Leadership::always`]: an election must drive this handle.
    pub fn is_elected(&self) -> bool {
        !self.0.always
    }

    /// Whether this process may write now. Turns false by itself once the last renewal is older
    /// than the renew deadline, whatever the election task is doing.
    pub fn is_leader(&self) -> bool {
        if self.0.always {
            return true;
        }
        lock(&self.0.valid_until).is_some_and(|until| Instant::now() < until)
    }

    /// Follows the leader flag (true while leading).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.0.leading.subscribe()
    }

    /// One item each time leadership is gained (for `Controller::reconcile_all_on`).
    pub fn gained(&self) -> impl Stream<Item = ()> + Send + 'static {
        let mut rx = self.watch();
        rx.mark_unchanged();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                rx.changed().await.ok()?;
                if *rx.borrow_and_update() {
                    return Some(((), rx));
                }
            }
        })
    }

    /// How many times leadership was gained: in-memory state from another term must not be
    /// trusted.
    pub fn term(&self) -> u64 {
        self.0.term.load(Ordering::Acquire)
    }

    /// How many writes (non-read requests) the [`WriteGate`]s of this handle let through.
    pub fn writes(&self) -> u64 {
        self.0.writes.load(Ordering::Relaxed)
    }

    fn lease(&self) -> String {
        lock(&self.0.lease).clone()
    }

    /// Leads (or keeps leading) until `until`.
    fn lead_until(&self, until: Instant, lock_: &LeaseLock) {
        // A lead that lapsed (its deadline passed before this renewal) is a new term: reconciles
        // skipped meanwhile must run again.
        let previous = lock(&self.0.valid_until).replace(until);
        let was = previous.is_some_and(|t| Instant::now() < t);
        if !was {
            self.0.term.fetch_add(1, Ordering::AcqRel);
            tracing::info!(lease = %lock_.describe(), identity = %lock_.identity, "leadership gained");
            self.0.leading.send_replace(true);
        }
    }

    /// Follows; logs when that ends a leadership.
    fn follow(&self, lock_: &LeaseLock, why: &str) {
        let was = lock(&self.0.valid_until).take().is_some();
        if was {
            tracing::info!(lease = %lock_.describe(), identity = %lock_.identity, why, "leadership lost");
            self.0.leading.send_replace(false);
        }
    }
}

/// Makes in-memory state of an earlier leadership term go before it can mislead this one.
#[derive(Debug, Default)]
pub struct TermGuard {
    seen: std::sync::Mutex<u64>,
}

impl TermGuard {
    /// Runs `reset` once per term, at the first call in it; no call of the new term returns
    /// before `reset` has run.
    pub fn enter(&self, leadership: &Leadership, reset: impl FnOnce()) {
        let mut seen = lock(&self.seen);
        let term = leadership.term();
        if *seen != term {
            reset();
            *seen = term;
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fields of a Lease that make up a leader election record (client-go's
/// `LeaderElectionRecord`): any change of them is a sign of life.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: String,
    duration: Duration,
    acquire: Option<Timestamp>,
    renew: Option<Timestamp>,
    transitions: i32,
}

impl Record {
    fn of(lease: &Lease, default_duration: Duration) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.unwrap_or_default(),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_duration, Duration::from_secs),
            acquire: spec.acquire_time.map(|t| t.0),
            renew: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    fn spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: (!self.holder.is_empty()).then(|| self.holder.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: self.acquire.map(MicroTime),
            renew_time: self.renew.map(MicroTime),
            lease_transitions: Some(self.transitions),
            ..LeaseSpec::default()
        }
    }
}

/// What the campaign last saw of the Lease, and when (local clock).
struct Observed {
    record: Record,
    at: Instant,
}

/// What a failed Lease request means: most often an API error to retry; a missing namespace
/// is said as such, with the fix (the controllers never create namespaces).
fn lease_error(lock: &LeaseLock, source: kube::Error) -> LeaderError {
    // The API server's words for a create in a namespace that does not exist:
    // `namespaces "cafe-system" not found`.
    let missing = format!("namespaces \"{}\" not found", lock.namespace);
    let missing_namespace = matches!(&source, kube::Error::Api(s)
        if s.code == 404 && s.message.contains(&missing));
    if missing_namespace {
        return LeaderError::NamespaceMissing {
            namespace: lock.namespace.clone(),
            lease: lock.describe(),
        };
    }
    LeaderError::Api {
        lease: lock.describe(),
        source,
    }
}

/// One candidate's view of the election.
struct Candidate {
    api: Api<Lease>,
    lock: LeaseLock,
    timings: LeaseTimings,
    observed: Option<Observed>,
}

impl Candidate {
    fn observe(&mut self, record: Record) {
        if self.observed.as_ref().is_none_or(|o| o.record != record) {
            self.observed = Some(Observed {
                record,
                at: Instant::now(),
            });
        }
    }

    fn api_error(&self, source: kube::Error) -> LeaderError {
        lease_error(&self.lock, source)
    }

    /// client-go's `tryAcquireOrRenew`: true when we hold the Lease now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = Timestamp::now();
        let me = self.lock.identity.clone();
        let existing = self
            .api
            .get_opt(&self.lock.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let Some(lease) = existing else {
            let record = Record {
                holder: me,
                duration: self.timings.lease_duration,
                acquire: Some(now),
                renew: Some(now),
                transitions: 0,
            };
            let mut lease = Lease::default();
            lease.metadata.name = Some(self.lock.name.clone());
            lease.metadata.namespace = Some(self.lock.namespace.clone());
            lease.spec = Some(record.spec());
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.observe(record);
                    Ok(true)
                }
                // Another candidate created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.api_error(e)),
            };
        };
        let record = Record::of(&lease, self.timings.lease_duration);
        self.observe(record.clone());
        let seen_at = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
        let ours = record.holder == me;
        let valid = seen_at.elapsed() < record.duration;
        if !record.holder.is_empty() && !ours && valid {
            return Ok(false);
        }
        let next = Record {
            holder: me,
            duration: self.timings.lease_duration,
            acquire: if ours { record.acquire } else { Some(now) },
            renew: Some(now),
            transitions: if ours {
                record.transitions
            } else {
                record.transitions.saturating_add(1)
            },
        };
        let mut lease = lease;
        lease.spec = Some(next.spec());
        match self
            .api
            .replace(&self.lock.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.observe(next);
                Ok(true)
            }
            // Someone else wrote it since we read it: not ours this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// One attempt, bounded by `limit`.
    async fn attempt(&mut self, limit: Duration) -> Result<bool, LeaderError> {
        let lease = self.lock.describe();
        match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
            Ok(r) => r,
            Err(_) => Err(LeaderError::Timeout {
                lease,
                waited: limit,
            }),
        }
    }

    /// client-go's `release`: clears the holder so that a successor need not wait.
    async fn release(&mut self) -> Result<(), LeaderError> {
        let lease = self
            .api
            .get_opt(&self.lock.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let Some(mut lease) = lease else {
            return Ok(());
        };
        let record = Record::of(&lease, self.timings.lease_duration);
        if record.holder != self.lock.identity {
            return Ok(());
        }
        let now = Timestamp::now();
        let released = Record {
            holder: String::new(),
            duration: Duration::from_secs(1),
            acquire: Some(now),
            renew: Some(now),
            transitions: record.transitions,
        };
        lease.spec = Some(released.spec());
        self.api
            .replace(&self.lock.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.api_error(e))?;
        Ok(())
    }
}

/// Runs the election for `lock` until `shutdown`, driving `leadership`; the Lease is written
/// through `client`, which must not go through the [`WriteGate`]. A panic inside the campaign
/// makes this process a follower and the campaign starts again; on shutdown the Lease is
/// released if held.
pub async fn run_election(
    client: kube::Client,
    lock: LeaseLock,
    timings: LeaseTimings,
    leadership: Leadership,
    shutdown: CancellationToken,
) {
    if !leadership.is_elected() {
        return;
    }
    *self::lock(&leadership.0.lease) = lock.describe();
    loop {
        let mut campaign = AbortOnDrop(tokio::spawn(campaign(
            client.clone(),
            lock.clone(),
            timings,
            leadership.clone(),
            shutdown.clone(),
        )));
        let outcome = (&mut campaign.0).await;
        leadership.follow(&lock, "campaign ended");
        match outcome {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(lease = %lock.describe(), error = %e, "leader election task failed; following and retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(timings.retry_period) => {}
        }
    }
}

/// A spawned task that ends with its owner: a process killed (its future dropped) must not
/// leave an election renewing the Lease on its behalf.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

/// Runs `controllers` with a gated copy of `client` while this replica takes part in the
/// election of `lock` (through the ungated `client`: the Lease is the one write a follower
/// makes), keeping the `cafe_leader{lease}` gauge in step. The election outlives the controllers
/// only to release the Lease once they have returned.
pub async fn while_elected<F, Fut, T>(
    client: kube::Client,
    lock: LeaseLock,
    timings: LeaseTimings,
    leadership: Leadership,
    metrics: std::sync::Arc<crate::runtime::metrics::Metrics>,
    shutdown: CancellationToken,
    controllers: F,
) -> T
where
    F: FnOnce(kube::Client) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let lease = lock.name.clone();
    let election_stop = shutdown.child_token();
    let mut election = AbortOnDrop(tokio::spawn(run_election(
        client.clone(),
        lock,
        timings,
        leadership.clone(),
        election_stop.clone(),
    )));
    let _gauge = AbortOnDrop(tokio::spawn(report(
        leadership.clone(),
        metrics,
        lease.clone(),
    )));
    let result = controllers(gated(client, &leadership)).await;
    election_stop.cancel();
    if let Err(error) = (&mut election.0).await {
        tracing::error!(%error, lease, "leader election task failed");
    }
    result
}

/// Keeps the `cafe_leader{lease}` gauge equal to whether this replica leads, until the
/// leadership handle is dropped.
async fn report(
    leadership: Leadership,
    metrics: std::sync::Arc<crate::runtime::metrics::Metrics>,
    lease: String,
) {
    let mut leading = leadership.watch();
    loop {
        let now = *leading.borrow_and_update();
        metrics.set_leader(&lease, now);
        if leading.changed().await.is_err() {
            return;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Acquire, renew until the renewal fails past the deadline, and again; release on shutdown.
async fn campaign(
    client: kube::Client,
    lock: LeaseLock,
    timings: LeaseTimings,
    leadership: Leadership,
    shutdown: CancellationToken,
) {
    let mut candidate = Candidate {
        api: Api::namespaced(client, &lock.namespace),
        lock: lock.clone(),
        timings,
        observed: None,
    };
    let mut reporter = ErrorReporter::default();
    // The last successful acquire or renewal started here; None while following.
    let mut renewed: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let limit = match renewed {
            Some(at) => (at + timings.renew_deadline).saturating_duration_since(started),
            None => timings.renew_deadline,
        };
        let outcome = tokio::select! {
            () = shutdown.cancelled() => break,
            r = candidate.attempt(limit.max(Duration::from_millis(1))) => r,
        };
        match outcome {
            Ok(true) => {
                reporter.ok(&lock);
                renewed = Some(started);
                leadership.lead_until(started + timings.renew_deadline, &lock);
            }
            Ok(false) => {
                reporter.ok(&lock);
                renewed = None;
                leadership.follow(&lock, "the Lease is held by another replica");
            }
            Err(e) => {
                reporter.failed(&lock, &e);
                if renewed.is_some_and(|at| at + timings.renew_deadline <= Instant::now()) {
                    renewed = None;
                    leadership.follow(&lock, "could not renew within the renew deadline");
                }
            }
        }
        if renewed.is_some_and(|at| at + timings.renew_deadline <= Instant::now()) {
            renewed = None;
            leadership.follow(&lock, "could not renew within the renew deadline");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(timings.retry_period) => {}
        }
    }
    let held = renewed.is_some();
    // Writes stop before the Lease is given up.
    leadership.follow(&lock, "shutting down");
    if held {
        match tokio::time::timeout(timings.renew_deadline, candidate.release()).await {
            Ok(Ok(())) => tracing::info!(lease = %lock.describe(), "Lease released"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Lease not released; others wait for it to expire")
            }
            Err(_) => {
                tracing::warn!(lease = %lock.describe(), "Lease not released in time; others wait for it to expire")
            }
        }
    }
}

/// Logs a failing election once per kind of failure, not every retry period.
#[derive(Default)]
struct ErrorReporter {
    last: Option<&'static str>,
}

impl ErrorReporter {
    fn failed(&mut self, lock: &LeaseLock, error: &LeaderError) {
        let category = error.category();
        if self.last == Some(category) {
            tracing::debug!(lease = %lock.describe(), %error, "leader election: still failing");
            return;
        }
        self.last = Some(category);
        match error {
            LeaderError::NamespaceMissing { .. } => {
                tracing::error!(lease = %lock.describe(), %error, "leader election cannot start; retrying");
            }
            _ => {
                tracing::warn!(lease = %lock.describe(), %error, "leader election failing; retrying")
            }
        }
    }

    fn ok(&mut self, lock: &LeaseLock) {
        if self.last.take().is_some() {
            tracing::info!(lease = %lock.describe(), "leader election works again");
        }
    }
}

/// The tower layer that refuses writes while not leading (see [`WriteGate`]).
#[derive(Clone, Debug)]
pub struct WriteGateLayer {
    leadership: Leadership,
}

impl WriteGateLayer {
    pub fn new(leadership: Leadership) -> Self {
        Self { leadership }
    }
}

impl<S> tower_layer::Layer<S> for WriteGateLayer {
    type Service = WriteGate<S>;

    fn layer(&self, inner: S) -> WriteGate<S> {
        WriteGate {
            inner,
            leadership: self.leadership.clone(),
        }
    }
}

/// Fails every request but GET/HEAD/OPTIONS at once, with [`LeaderError::NotLeader`], while
/// this process is not the leader: losing the Lease stops writes at once, even mid-reconcile.
#[derive(Clone, Debug)]
pub struct WriteGate<S> {
    inner: S,
    leadership: Leadership,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower_service::Service<Request<B>> for WriteGate<S>
where
    S: tower_service::Service<Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let read = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        if !read && !self.leadership.is_leader() {
            let refused = LeaderError::NotLeader {
                lease: self.leadership.lease(),
                method: request.method().clone(),
            };
            return Box::pin(std::future::ready(Err(Box::new(refused) as BoxError)));
        }
        if !read {
            self.leadership.0.writes.fetch_add(1, Ordering::Relaxed);
        }
        let call = self.inner.call(request);
        Box::pin(async move { call.await.map_err(Into::into) })
    }
}

/// An existing client as a tower service, so that a layer can be put in front of it.
#[derive(Clone)]
struct ClientService(kube::Client);

impl tower_service::Service<Request<Body>> for ClientService {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), kube::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move { client.send(request).await })
    }
}

/// `client` behind the [`WriteGate`] of `leadership` (unchanged for [`Leadership::always`]).
pub fn gated(client: kube::Client, leadership: &Leadership) -> kube::Client {
    if !leadership.is_elected() {
        return client;
    }
    let namespace = client.default_namespace().to_string();
    let service = tower_layer::Layer::layer(
        &WriteGateLayer::new(leadership.clone()),
        ClientService(client),
    );
    kube::Client::new(service, namespace)
}

/// Whether `error` is the gate refusing a write (this process lost the lease).
pub fn is_not_leader(error: &kube::Error) -> bool {
    match error {
        kube::Error::Service(e) => e.downcast_ref::<LeaderError>().is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_elected_handle_leads_only_until_its_deadline() {
        let l = Leadership::elected();
        let lock = LeaseLock {
            namespace: "ns".into(),
            name: "x".into(),
            identity: "me".into(),
        };
        assert!(!l.is_leader());
        l.lead_until(Instant::now() + Duration::from_secs(3600), &lock);
        assert!(l.is_leader());
        assert_eq!(l.term(), 1);
        // A renewal whose deadline has passed, the election task stuck: no longer leading.
        l.lead_until(Instant::now(), &lock);
        assert!(!l.is_leader(), "a renewal past its deadline does not lead");
        assert_eq!(l.term(), 1, "still the same term");
        assert!(Leadership::always().is_leader());
    }

    /// The gate refuses writes locally while following, and lets reads through.
    #[tokio::test]
    async fn a_follower_gate_refuses_writes_at_once_and_lets_reads_through() {
        use k8s_openapi::api::core::v1::ConfigMap;
        // Nothing listens there: a request that gets through fails to connect.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let raw = kube::Client::try_from(config).unwrap();
        let leadership = Leadership::elected();
        let api: Api<ConfigMap> = Api::namespaced(gated(raw, &leadership), "default");
        let err = api
            .create(&PostParams::default(), &ConfigMap::default())
            .await
            .unwrap_err();
        assert!(is_not_leader(&err), "{err}");
        assert!(err.to_string().contains("not the leader"), "{err}");
        let err = api.delete("x", &Default::default()).await.unwrap_err();
        assert!(is_not_leader(&err), "{err}");
        let read = api.get_opt("x").await.unwrap_err();
        assert!(!is_not_leader(&read), "reads are not gated: {read}");
        assert_eq!(leadership.writes(), 0);
    }

    #[test]
    fn a_missing_namespace_is_named_with_its_fix() {
        use kube::core::Status;
        let lock = LeaseLock {
            namespace: "cafe-system".into(),
            name: "cafe-hub".into(),
            identity: "me".into(),
        };
        let missing = kube::Error::Api(
            Status::failure("namespaces \"cafe-system\" not found", "NotFound")
                .with_code(404)
                .boxed(),
        );
        let err = lease_error(&lock, missing);
        assert_eq!(err.category(), "namespace_missing");
        assert!(
            err.to_string()
                .contains("namespace cafe-system does not exist: create it"),
            "{err}"
        );
        let other = kube::Error::Api(
            Status::failure(
                "leases.coordination.k8s.io \"cafe-hub\" not found",
                "NotFound",
            )
            .with_code(404)
            .boxed(),
        );
        assert_eq!(lease_error(&lock, other).category(), "lease_api");
    }

    #[test]
    fn a_record_round_trips_through_a_lease_spec() {
        let record = Record {
            holder: "a".into(),
            duration: Duration::from_secs(15),
            acquire: Some(Timestamp::from_second(100).unwrap()),
            renew: Some(Timestamp::from_second(110).unwrap()),
            transitions: 3,
        };
        let lease = Lease {
            spec: Some(record.spec()),
            ..Lease::default()
        };
        assert_eq!(Record::of(&lease, Duration::from_secs(1)), record);
        assert!(LeaseTimings::default().renew_deadline < LeaseTimings::default().lease_duration);
        assert!(LeaseTimings::fast().renew_deadline < LeaseTimings::fast().lease_duration);
    }
}
