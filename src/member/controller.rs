//! The InPlaceSet controller: the watches, the reconcile driver (observe -> decide -> perform
//! -> status), Events, and its error policy.

use crate::runtime::metrics::controllers;
use crate::runtime::readiness::Readiness;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller, Error as ControllerError};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::apply::{self, ApplyError, PodWrite, Target};
use super::cached::CachedPod;
use super::claim::{self, ClaimError};
use super::expectations::{self, Expectations, Seen};
use super::inplace::{self, UpdatePath};
use super::pod::{self, PodView};
use super::revisions::{self, RevisionError};
use super::status::{self, BlockedPod, Inputs, LIFECYCLE_BLOCKED, ReplicaFailure};
use super::work::{self, Observed, UpdateStep, Work};
use crate::api::labels::{MEMBER_MANAGER, REVISION};
use crate::api::{InPlaceSet, InPlaceSetStatus};
use crate::plan::revision::revision_hash;
use crate::runtime::api_cause;
use crate::runtime::events::{EventType, EventWriter, Fact};
use crate::runtime::leader::{Leadership, TermGuard};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Look again at every InPlaceSet this often even when nothing changed.
const RESYNC: Duration = Duration::from_secs(300);
/// Retry delay after a failed reconcile.
const RETRY: Duration = Duration::from_secs(5);
/// Pod writes in flight at once for one InPlaceSet.
const PARALLEL_POD_WRITES: usize = 16;
/// InPlaceSets reconciled at once, at most: each may have PARALLEL_POD_WRITES requests in
/// flight, and the client keeps every connection it opened idle for a while (unbounded, 1,000
/// InPlaceSets created at once left ~600 TLS connections open in one agent).
const RECONCILE_CONCURRENCY: u16 = 8;
/// Old templates kept (besides those pods still run) as ControllerRevisions.
const REVISIONS_KEPT: usize = 10;
/// How long a reconcile waits for the pod and ControllerRevision caches to list. A list that
/// keeps failing (forbidden, most often) would otherwise hang every reconcile with no status
/// saying why; past this the reconcile fails with ReplicaFailure `CacheNotSynced`.
pub const CACHE_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest retry delay after consecutive failed reconciles of one InPlaceSet.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// The ReplicaFailure reason while a cache has not listed.
pub const CACHE_NOT_SYNCED: &str = "CacheNotSynced";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the pod cache closed; the controller is shutting down")]
    CacheClosed,
    #[error("InPlaceSet {0} has no namespace or uid; it was not read from the API")]
    NotFromApi(String),
    #[error(
        "the {resource} cache has not synced after {waited:?}: cannot list {resource} in all \
         namespaces{}; check the member agent's permissions (it needs list and watch on \
         {resource} cluster-wide)",
        .cause.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
    )]
    CacheNotSynced {
        resource: &'static str,
        waited: Duration,
        /// The watch's last error, if it reported one.
        cause: Option<String>,
    },
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Revision(#[from] RevisionError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("writing the status of InPlaceSet {inplaceset}: {}", api_cause(.source))]
    Status {
        inplaceset: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// A fixed label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::CacheClosed => "shutdown",
            Self::NotFromApi(_) => "invalid_object",
            Self::CacheNotSynced { .. } => "cache_not_synced",
            Self::Apply(e) => e.category(),
            Self::Revision(e) => e.category(),
            Self::Claim(e) => e.category(),
            Self::Status { .. } => "write_status",
        }
    }
}

/// The last error of a watch, until its next successful list: what a reconcile waiting on
/// that cache reports.
#[derive(Clone, Debug, Default)]
pub struct WatchFailure(Arc<std::sync::Mutex<Option<String>>>);

impl WatchFailure {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, err: &watcher::Error) {
        *self.lock() = Some(err.to_string());
    }

    pub fn clear(&self) {
        *self.lock() = None;
    }

    pub fn get(&self) -> Option<String> {
        self.lock().clone()
    }
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    pods: Store<CachedPod>,
    revisions: Store<ControllerRevision>,
    expectations: Arc<Expectations>,
    events: EventWriter,
    /// The cluster serves pods/resize (Kubernetes 1.33+): resource changes apply in place.
    resize_supported: bool,
    pod_watch_failure: WatchFailure,
    revision_watch_failure: WatchFailure,
    /// Consecutive failed reconciles per InPlaceSet uid, for the retry backoff.
    failures: Arc<std::sync::Mutex<HashMap<String, u32>>>,
    cache_sync_timeout: Duration,
    metrics: Arc<crate::runtime::metrics::Metrics>,
    leadership: Leadership,
    term: TermGuard,
    /// The cached pods by controller uid.
    owners: super::owners::OwnerIndex,
    /// The rollout step last announced per InPlaceSet uid.
    announced: std::sync::Mutex<HashMap<String, String>>,
}

/// Runs the controller until `shutdown` is cancelled; reconciles in flight finish first.
pub async fn run(
    client: Client,
    resize_supported: bool,
    options: super::MemberOptions,
    shutdown: CancellationToken,
) {
    let (pods, writer) = reflector::store::<CachedPod>();
    let revision_watch_failure = WatchFailure::default();
    let (revisions, revision_watch) = revisions::watch(
        &client,
        revision_watch_failure.clone(),
        options.telemetry.readiness.clone(),
    );
    let revision_task = tokio::spawn(revision_watch);
    let expectations = Arc::new(Expectations::new(expectations::DEFAULT_TIMEOUT));
    let pod_watch_failure = WatchFailure::default();
    let owners = super::owners::OwnerIndex::default();
    let pod_events = pod_watch(
        &client,
        writer,
        owners.clone(),
        pods.clone(),
        expectations.clone(),
        pod_watch_failure.clone(),
        options.telemetry.readiness.clone(),
    );
    let failures = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let events = EventWriter::new(client.clone(), MEMBER_MANAGER);
    let room = super::room::Room::default();
    let room_task = tokio::spawn(super::room::watch(
        client.clone(),
        room.clone(),
        options.telemetry.readiness.clone(),
    ));
    let context = Arc::new(Context {
        client: client.clone(),
        pods,
        revisions,
        expectations: expectations.clone(),
        events,
        resize_supported,
        pod_watch_failure,
        revision_watch_failure,
        failures: failures.clone(),
        cache_sync_timeout: options.cache_sync_timeout,
        metrics: options.telemetry.metrics.clone(),
        leadership: options.leadership.clone(),
        term: TermGuard::default(),
        owners,
        announced: std::sync::Mutex::default(),
    });
    let gained = options.leadership.gained();
    let (sets, set_writer) = reflector::store();
    let set_events = inplaceset_watch(
        &client,
        set_writer,
        sets.clone(),
        expectations,
        failures,
        options.telemetry.readiness.clone(),
    );
    let publish_task = tokio::spawn(super::room::publish(
        client.clone(),
        room,
        sets.clone(),
        options.leadership.clone(),
        shutdown.clone(),
    ));
    let metrics = options.telemetry.metrics.clone();
    let stopping = shutdown.clone();
    let controller = Controller::for_stream(set_events, sets)
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        )
        .trigger_backoff(crate::runtime::backoff::watch_backoff())
        .owns_stream(pod_events)
        .reconcile_all_on(gained)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                // Already logged by the error policy.
                Err(ControllerError::ReconcilerFailed(..)) => {}
                Err(ControllerError::ObjectNotFound(obj)) => {
                    tracing::debug!(%obj, "InPlaceSet gone before its reconcile")
                }
                Err(err) => tracing::warn!(error = %err, "InPlaceSet controller"),
            }
        });
    crate::runtime::shutdown::naming_stragglers(controller, &metrics, &stopping).await;
    revision_task.abort();
    room_task.abort();
    publish_task.abort();
}

/// The InPlaceSets, cached in `writer` for the controller; an InPlaceSet deleted (seen as an
/// event or missing from a relist) has its expectations dropped, since no reconcile runs for an
/// object that is gone.
fn inplaceset_watch(
    client: &Client,
    writer: reflector::store::Writer<InPlaceSet>,
    cache: Store<InPlaceSet>,
    expectations: Arc<Expectations>,
    failures: Arc<std::sync::Mutex<HashMap<String, u32>>>,
    readiness: Readiness,
) -> impl Stream<Item = Result<InPlaceSet, watcher::Error>> + Send + 'static {
    let cache_for_triggers = cache.clone();
    let events = watcher(
        Api::<InPlaceSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .backoff(crate::runtime::backoff::watch_backoff())
    .modify(crate::runtime::strip_bookkeeping)
    .reflect(writer)
    .inspect_ok(move |event| {
        readiness.observe(super::INPLACESETS_WATCH, event);
        let listed: BTreeSet<String> = match event {
            watcher::Event::InitDone => cache.state().iter().filter_map(|s| s.uid()).collect(),
            _ => BTreeSet::new(),
        };
        expectations.observe_owner_event(event, |uid| listed.contains(uid));
        // The retry backoff of a deleted InPlaceSet goes with it.
        let mut failures = failures.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Delete(ips) => {
                if let Some(uid) = ips.uid() {
                    failures.remove(&uid);
                }
            }
            watcher::Event::InitDone => failures.retain(|uid, _| listed.contains(uid)),
            _ => {}
        }
    });
    crate::runtime::reconcile_triggers(events, cache_for_triggers)
}

/// Pods carrying the revision label (those the controller creates), cached in `writer`; each
/// event marks expectations observed once the cache holds it.
fn pod_watch(
    client: &Client,
    writer: reflector::store::Writer<CachedPod>,
    owners: super::owners::OwnerIndex,
    cache: Store<CachedPod>,
    expectations: Arc<Expectations>,
    failure: WatchFailure,
    readiness: Readiness,
) -> impl Stream<Item = Result<CachedPod, watcher::Error>> + Send + 'static {
    let config = watcher::Config::default().labels(REVISION);
    let pod_failure = failure.clone();
    watcher(Api::<CachedPod>::all(client.clone()), config)
        .backoff(crate::runtime::backoff::watch_backoff())
        .modify(crate::runtime::strip_bookkeeping)
        .reflect(writer)
        .inspect_ok(move |event| {
            owners.observe(event);
            readiness.observe(super::PODS_WATCH, event);
            expectations.observe_event(event);
            if matches!(event, watcher::Event::InitDone) {
                failure.clear();
                let state = cache.state();
                let find = |uid: &str| {
                    state
                        .iter()
                        .find(|p| p.metadata.uid.as_deref() == Some(uid))
                        .cloned()
                };
                expectations.resync(
                    |uid| match find(uid) {
                        None => Seen::Absent,
                        Some(p) if p.metadata.deletion_timestamp.is_some() => Seen::Deleting,
                        Some(_) => Seen::Present,
                    },
                    |uid| find(uid).and_then(|p| p.metadata.resource_version.clone()),
                );
            }
        })
        .inspect_err(move |err| pod_failure.set(err))
        .touched_objects()
}

async fn reconcile(ips: Arc<InPlaceSet>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let metrics = ctx.metrics.clone();
    let object = kube::runtime::reflector::ObjectRef::from_obj(&*ips).to_string();
    metrics
        .measure(
            controllers::INPLACESET,
            object,
            reconcile_one(ips, ctx),
            |e| e.category(),
        )
        .await
}

/// Observe the pods, decide, perform, write status.
async fn reconcile_one(ips: Arc<InPlaceSet>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    if !ctx.leadership.is_leader() {
        // A follower only keeps its caches; gaining leadership reconciles everything.
        return Ok(Action::await_change());
    }
    // Writes recorded in an earlier term may have been undone by another leader since.
    ctx.term.enter(&ctx.leadership, || {
        ctx.expectations.clear();
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    });
    let key = format!("{}/{}", ips.namespace().unwrap_or_default(), ips.name_any());
    let (Some(namespace), Some(uid)) = (ips.namespace(), ips.uid()) else {
        return Err(ReconcileError::NotFromApi(key));
    };
    if ips.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the pods through their owner references.
        ctx.expectations.forget(&uid);
        ctx.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
        return Ok(Action::await_change());
    }
    // A cache that has not listed yet would read as "no pods" and create them all again.
    let synced = async {
        wait_synced(
            &ctx.pods,
            "pods",
            &ctx.pod_watch_failure,
            ctx.cache_sync_timeout,
        )
        .await?;
        wait_synced(
            &ctx.revisions,
            "controllerrevisions",
            &ctx.revision_watch_failure,
            ctx.cache_sync_timeout,
        )
        .await
    };
    if let Err(err) = synced.await {
        if matches!(err, ReconcileError::CacheNotSynced { .. }) {
            report_cache_not_synced(&ctx, &ips, &namespace, &err).await;
        }
        return Err(err);
    }

    // observe: the pods it controls and selects; those it controls but no longer selects are
    // released, and are no longer counted, so replacements are made
    let claimed = claim::claim(
        ctx.owners.pods_of(&uid, &ctx.pods),
        &uid,
        &ips.spec.selector,
    );
    let released = release_pods(&ctx, &ips, &namespace, &uid, &claimed.release).await;
    let pods = views_of(claimed.owned);
    let views: Vec<PodView> = pods.iter().map(|(_, v)| v.clone()).collect();
    let revision = revision_hash(&ips.spec.template);
    let pending = ctx.expectations.pending(&uid, Instant::now());
    let revision_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &namespace);
    // The template is recorded before any pod moves to it, so a pod's revision can always be
    // compared with a later template.
    revisions::ensure(&revision_api, &ctx.revisions, &ips, &revision).await?;

    // decide: nothing while writes of ours are not in the cache yet
    let work = match pending {
        Some(_) => Work::default(),
        None => decide(&ctx, &ips, &revision, &pods, &views),
    };

    // perform
    let target = Target {
        inplaceset: key.clone(),
        owner_uid: &uid,
        api: Api::namespaced(ctx.client.clone(), &namespace),
        namespace: namespace.clone(),
        cache: &ctx.pods,
        expectations: &ctx.expectations,
    };
    let template = pod::new_pod(&ips, &revision).ok_or(ReconcileError::NotFromApi(key.clone()))?;
    let old_template = (work.create_old > 0)
        .then(|| old_pod(&ctx, &ips, &revision))
        .flatten();
    let (created, written) =
        perform(&ctx, &ips, &target, &work, &template, old_template.as_ref()).await;
    if let Some(step) = &work.update {
        announce(&ctx, &ips, &uid, &revision, step).await;
    }

    // status
    let failure = replica_failure(&created, &written, pending.is_some());
    let recheck = write_status(
        &ctx,
        &ips,
        &namespace,
        &revision,
        &views,
        failure,
        &work.blocked,
    )
    .await?;
    let in_use: BTreeSet<String> = views.iter().filter_map(|v| v.revision.clone()).collect();
    if let Err(err) = revisions::prune(
        &revision_api,
        &ctx.revisions,
        &ips,
        &in_use,
        &revision,
        REVISIONS_KEPT,
    )
    .await
    {
        tracing::debug!(inplaceset = %key, error = %err, "old revisions not pruned");
    }
    created?;
    written?;
    released?;
    // Pod events trigger the next reconcile; these bound the wait when no event will come.
    let next = [recheck, pending, work.wake]
        .into_iter()
        .flatten()
        .fold(RESYNC, Duration::min);
    ctx.failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&uid);
    Ok(Action::requeue(next))
}

/// Waits until `cache` has listed, at most `timeout`; then fails naming `resource` and the
/// watch's last error (the ReplicaSet controller likewise refuses to sync before its informers
/// have, `WaitForNamedCacheSync`, but it has an operator watching its start-up; a member agent
/// needs the answer in the InPlaceSet's status).
async fn wait_synced<K>(
    cache: &Store<K>,
    resource: &'static str,
    failure: &WatchFailure,
    timeout: Duration,
) -> Result<(), ReconcileError>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash,
{
    match tokio::time::timeout(timeout, cache.wait_until_ready()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ReconcileError::CacheClosed),
        Err(_) => Err(ReconcileError::CacheNotSynced {
            resource,
            waited: timeout,
            cause: failure.get(),
        }),
    }
}

/// Sets ReplicaFailure `CacheNotSynced` on the InPlaceSet (best effort: the error is logged by
/// the error policy either way). The counts stay as last written; the next reconcile after the
/// cache syncs clears the condition.
async fn report_cache_not_synced(
    ctx: &Context,
    ips: &InPlaceSet,
    namespace: &str,
    err: &ReconcileError,
) {
    let status = cache_not_synced_status(ips, &err.to_string(), Timestamp::now());
    let api: Api<InPlaceSet> = Api::namespaced(ctx.client.clone(), namespace);
    if let Err(e) = status::write_if_changed(&api, ips, &status).await {
        tracing::debug!(inplaceset = %ips.name_any(), error = %e, "CacheNotSynced not written");
    }
}

/// The InPlaceSet's status with ReplicaFailure `CacheNotSynced` saying `message`; the rest as
/// it was (an unchanged condition keeps its time, so a repeat writes nothing).
fn cache_not_synced_status(ips: &InPlaceSet, message: &str, now: Timestamp) -> InPlaceSetStatus {
    let mut status = ips.status.clone().unwrap_or_default();
    let old = status
        .conditions
        .iter()
        .find(|c| c.type_ == status::REPLICA_FAILURE)
        .cloned();
    if old
        .as_ref()
        .is_some_and(|c| c.status == "True" && c.reason == CACHE_NOT_SYNCED && c.message == message)
    {
        return status;
    }
    status
        .conditions
        .retain(|c| c.type_ != status::REPLICA_FAILURE);
    status.conditions.push(Condition {
        type_: status::REPLICA_FAILURE.to_string(),
        status: "True".to_string(),
        reason: CACHE_NOT_SYNCED.to_string(),
        message: message.to_string(),
        last_transition_time: old
            .filter(|c| c.status == "True")
            .map_or(Time(now), |c| c.last_transition_time),
        observed_generation: ips.metadata.generation,
    });
    status
}

/// Each pod with its view.
fn views_of(pods: Vec<Arc<CachedPod>>) -> Vec<(Arc<CachedPod>, PodView)> {
    pods.into_iter()
        .map(|p| {
            let view = PodView::of(&p);
            (p, view)
        })
        .collect()
}

/// Releases the pods the InPlaceSet controls but no longer selects, each announced by an Event;
/// returns the first failure (the next reconcile tries again).
async fn release_pods(
    ctx: &Context,
    ips: &InPlaceSet,
    namespace: &str,
    owner_uid: &str,
    pods: &[Arc<CachedPod>],
) -> Result<(), ClaimError> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut first = None;
    for p in pods {
        match claim::release(&api, p, owner_uid).await {
            Ok(()) => {
                // Its later events no longer name this InPlaceSet, so a write of ours still
                // pending on it would never be seen: it is gone as far as this owner goes.
                if let Some(pod_uid) = p.uid() {
                    ctx.expectations.observe(owner_uid, &pod_uid, Seen::Absent);
                }
                let note = format!(
                    "pod {}: its labels no longer match the selector; released",
                    p.name_any()
                );
                publish(ctx, ips, EventType::Normal, "PodReleased", note, Some(p)).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "pod not released");
                first.get_or_insert(err);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// This reconcile's work: the update paths of the pods' revisions, then the pure decision.
fn decide(
    ctx: &Context,
    ips: &InPlaceSet,
    revision: &str,
    pods: &[(Arc<CachedPod>, PodView)],
    views: &[PodView],
) -> Work {
    let paths = update_paths(ctx, ips, revision, views);
    let work = work::decide(&Observed {
        ips,
        update_revision: revision,
        pods,
        paths: &paths,
        now: Timestamp::now(),
    });
    if work.held_back > 0 {
        tracing::debug!(inplaceset = %ips.name_any(), pods = work.held_back, "updates held back by maxUnavailable");
    }
    work
}

/// A new pod at the revision the partition keeps; `None` when the InPlaceSet never had another
/// template (then the pods are made at the update revision: there is nothing older).
fn old_pod(ctx: &Context, ips: &InPlaceSet, update: &str) -> Option<Pod> {
    let (revision, template) = revisions::old_revision(&ctx.revisions, ips, update)?;
    pod::new_pod_from(ips, &revision, &template)
}

/// Creates the new pods (those the partition keeps old from the old template) and performs the
/// pod writes, publishing a Warning Event for a failure and one for each pod newly blocked by a
/// hook; returns both outcomes.
async fn perform(
    ctx: &Context,
    ips: &InPlaceSet,
    target: &Target<'_>,
    work: &Work,
    template: &Pod,
    old_template: Option<&Pod>,
) -> (Result<(), ApplyError>, Result<(), ApplyError>) {
    let mut created = apply::create_pods(target, work.create, template).await;
    if created.is_ok() && work.create_old > 0 {
        created =
            apply::create_pods(target, work.create_old, old_template.unwrap_or(template)).await;
    }
    if let Err(err) = &created {
        publish_warning(ctx, ips, err).await;
    }
    let written = perform_writes(ctx, ips, target, &work.writes).await;
    if let Err(err) = &written {
        publish_warning(ctx, ips, err).await;
    }
    announce_blocked(ctx, ips, &work.blocked).await;
    (created, written)
}

/// What the ReplicaFailure condition should say: pods that could not be created or deleted set
/// it; waiting on the cache leaves it; success clears it.
fn replica_failure(
    created: &Result<(), ApplyError>,
    written: &Result<(), ApplyError>,
    pending: bool,
) -> ReplicaFailure {
    match (created, written) {
        (Err(err), _) | (_, Err(err @ ApplyError::Delete { .. })) => ReplicaFailure::Failed {
            reason: err.reason().to_string(),
            message: err.to_string(),
        },
        _ if pending => ReplicaFailure::Unknown,
        _ => ReplicaFailure::None,
    }
}

/// For each revision the pods run besides `update`: how its pods reach the current template.
/// A revision whose template is no longer recorded can only be replaced.
fn update_paths(
    ctx: &Context,
    ips: &InPlaceSet,
    update: &str,
    views: &[PodView],
) -> BTreeMap<String, UpdatePath> {
    let mut paths = BTreeMap::new();
    for rev in views.iter().filter_map(|v| v.revision.as_deref()) {
        if rev == update || paths.contains_key(rev) {
            continue;
        }
        let path = match revisions::template_of(&ctx.revisions, ips, rev) {
            Some(from) => inplace::update_path(
                &from,
                &ips.spec.template,
                &ips.spec.strategy.pod_update_policy,
                ctx.resize_supported,
            ),
            None => UpdatePath::Recreate {
                why: format!("the template of revision {rev} is no longer recorded"),
            },
        };
        paths.insert(rev.to_string(), path);
    }
    paths
}

/// Performs the pod writes concurrently, with an Event for each deletion; returns
/// the first failure (the others are logged and retried by the next reconcile).
async fn perform_writes(
    ctx: &Context,
    ips: &InPlaceSet,
    target: &Target<'_>,
    writes: &[(Arc<CachedPod>, PodWrite)],
) -> Result<(), ApplyError> {
    let results: Vec<Result<(), ApplyError>> = stream::iter(writes.to_vec())
        .map(|(pod, write)| async move {
            apply::perform(target, &pod, &write).await?;
            if let Some((reason, note)) = pod_event(&pod, &write) {
                publish(ctx, ips, EventType::Normal, reason, note, Some(&pod)).await;
            }
            Ok(())
        })
        .buffer_unordered(PARALLEL_POD_WRITES)
        .collect()
        .await;
    let mut first = None;
    for err in results.into_iter().filter_map(Result::err) {
        tracing::warn!(error = %err, "pod write failed");
        first.get_or_insert(err);
    }
    first.map_or(Ok(()), Err)
}

/// The Event for a pod write: only a deletion, one per pod as the ReplicaSet controller does.
/// The lifecycle steps of an update are announced once per rollout step (see [`announce`]);
/// each pod's own progress is on its lifecycle label and in the InPlaceSet's status.
fn pod_event(pod: &CachedPod, write: &PodWrite) -> Option<(&'static str, String)> {
    matches!(write, PodWrite::Delete).then(|| {
        (
            "SuccessfulDelete",
            format!("Deleted pod: {}", pod.name_any()),
        )
    })
}

/// One Event when pods start toward the update revision for a new rollout step (a new template
/// or partition): what moves and how. Kept in memory, so a restarted agent may announce the
/// step once more.
async fn announce(ctx: &Context, ips: &InPlaceSet, uid: &str, revision: &str, step: &UpdateStep) {
    // A step is the revision and partition; the pods still to move shrink as it proceeds.
    let key = format!("{revision}/{}", step.partition);
    {
        let mut announced = ctx.announced.lock().unwrap_or_else(|e| e.into_inner());
        if announced.get(uid) == Some(&key) {
            return;
        }
        announced.insert(uid.to_string(), key);
    }
    publish(
        ctx,
        ips,
        EventType::Normal,
        "Updating",
        step.note(revision),
        None,
    )
    .await;
}

/// A Warning Event for each pod newly held past its hook timeout (the condition carries the
/// standing state; the Event marks the moment).
async fn announce_blocked(ctx: &Context, ips: &InPlaceSet, blocked: &[BlockedPod]) {
    let previous = ips
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == LIFECYCLE_BLOCKED))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    for b in blocked {
        if previous.contains(&format!("pod {} ", b.pod)) {
            continue;
        }
        let pod = ctx
            .pods
            .get(&ObjectRef::new(&b.pod).within(&ips.namespace().unwrap_or_default()));
        publish(
            ctx,
            ips,
            EventType::Warning,
            b.reason(),
            b.message(),
            pod.as_deref(),
        )
        .await;
    }
}

/// Computes the status from the observed pods and writes it if it changed; returns when the
/// status will change by itself (a pod becoming available).
async fn write_status(
    ctx: &Context,
    ips: &InPlaceSet,
    namespace: &str,
    revision: &str,
    pods: &[PodView],
    failure: ReplicaFailure,
    blocked: &[BlockedPod],
) -> Result<Option<Duration>, ReconcileError> {
    let (status, recheck) = status::compute(&Inputs {
        generation: ips.metadata.generation,
        min_ready_seconds: ips.spec.min_ready_seconds,
        update_revision: revision,
        selector: &ips.spec.selector,
        previous: ips.status.as_ref(),
        pods,
        failure,
        blocked,
        now: Timestamp::now(),
    });
    let api: Api<InPlaceSet> = Api::namespaced(ctx.client.clone(), namespace);
    status::write_if_changed(&api, ips, &status)
        .await
        .map_err(|source| ReconcileError::Status {
            inplaceset: format!("{namespace}/{}", ips.name_any()),
            source,
        })?;
    Ok(recheck)
}

/// A Warning Event on the InPlaceSet, as the ReplicaSet controller emits for failed pod
/// creations and deletions.
async fn publish_warning(ctx: &Context, ips: &InPlaceSet, err: &ApplyError) {
    publish(
        ctx,
        ips,
        EventType::Warning,
        err.reason(),
        err.to_string(),
        None,
    )
    .await;
}

/// An Event on the InPlaceSet, about `pod` if given (best effort: an Event that cannot be
/// written is only logged).
async fn publish(
    ctx: &Context,
    ips: &InPlaceSet,
    type_: EventType,
    reason: &str,
    note: String,
    pod: Option<&CachedPod>,
) {
    let fact = Fact {
        type_,
        reason,
        message: &note,
        action: "Update",
        related: pod.map(|p| p.object_ref(&())),
    };
    if let Err(e) = ctx.events.publish(&ips.object_ref(&()), &fact).await {
        tracing::debug!(error = %e, "event not written");
    }
}

/// Retries after `RETRY`, doubling with each consecutive failure of the same InPlaceSet up to
/// `RETRY_MAX` (a cache that cannot list, or a member refusing writes, does not go away in
/// seconds).
fn error_policy(ips: Arc<InPlaceSet>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    if !ctx.leadership.is_leader() {
        // Leadership lost mid-reconcile: the write gate refused; the next leader goes on.
        tracing::debug!(inplaceset = ips.name_any(), error = %err, "reconcile stopped: not the leader");
        return Action::await_change();
    }
    let failures = {
        let mut map = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ips.uid().unwrap_or_default()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = retry_delay(failures);
    tracing::warn!(
        namespace = ips.namespace().unwrap_or_default(),
        inplaceset = ips.name_any(),
        category = err.category(),
        error = %err,
        "reconcile failed; retrying in {delay:?}"
    );
    Action::requeue(delay)
}

/// The delay before retry after `failures` consecutive failures.
fn retry_delay(failures: u32) -> Duration {
    RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips() -> InPlaceSet {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps.cafe.io/v1alpha1", "kind": "InPlaceSet",
            "metadata": {"name": "demo", "namespace": "prod", "uid": "u-1", "generation": 3},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
        }))
        .unwrap()
    }

    /// A pod list that is forbidden never fills the cache: the reconcile must give up with an
    /// error naming the resource and the cause, not wait for ever.
    #[tokio::test]
    async fn a_cache_that_never_lists_fails_the_reconcile_instead_of_hanging() {
        let (pods, _writer) = reflector::store::<CachedPod>();
        let failure = WatchFailure::default();
        *failure.lock() = Some("pods is forbidden: cannot list resource \"pods\"".into());
        let waited = tokio::time::timeout(
            Duration::from_secs(5),
            wait_synced(&pods, "pods", &failure, Duration::from_millis(50)),
        )
        .await
        .expect("the wait has a deadline");
        let err = waited.expect_err("an unsynced cache is an error");
        assert_eq!(err.category(), "cache_not_synced");
        let message = err.to_string();
        for part in [
            "cannot list pods in all namespaces",
            "pods is forbidden",
            "check the member agent's permissions",
        ] {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
    }

    #[tokio::test]
    async fn a_listed_cache_is_not_waited_on() {
        let (pods, mut writer) = reflector::store::<CachedPod>();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        wait_synced(&pods, "pods", &WatchFailure::default(), Duration::ZERO)
            .await
            .expect("synced");
    }

    #[test]
    fn a_cache_not_synced_sets_replica_failure_once() {
        let mut ips = ips();
        let now = Timestamp::now();
        let status = cache_not_synced_status(&ips, "cannot list pods", now);
        let c = &status.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            (status::REPLICA_FAILURE, "True", CACHE_NOT_SYNCED)
        );
        assert_eq!(c.observed_generation, Some(3));
        ips.status = Some(status.clone());
        let later = now + Duration::from_secs(60);
        assert_eq!(
            cache_not_synced_status(&ips, "cannot list pods", later),
            status,
            "the same condition again writes nothing"
        );
    }

    #[test]
    fn failed_reconciles_back_off() {
        assert_eq!(retry_delay(1), RETRY);
        assert_eq!(retry_delay(2), RETRY * 2);
        assert_eq!(retry_delay(3), RETRY * 4);
        assert_eq!(retry_delay(100), RETRY_MAX);
    }
}
