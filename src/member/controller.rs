//! The InPlaceSet controller: the watches, the reconcile driver (observe -> plan -> apply ->
//! status) and its error policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller, Error as ControllerError};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::apply::{self, ApplyError, Target, cause};
use super::expectations::{self, Expectations, Seen};
use super::pod::{self, PodView};
use super::status::{self, Inputs, ReplicaFailure};
use crate::api::InPlaceSet;
use crate::api::labels::{MEMBER_MANAGER, REVISION};
use crate::plan::revision::revision_hash;
use crate::plan::scale::{self, PodFacts, ScalePlan};

/// Look again at every InPlaceSet this often even when nothing changed.
const RESYNC: Duration = Duration::from_secs(300);
/// Retry delay after a failed reconcile.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the pod cache closed; the controller is shutting down")]
    CacheClosed,
    #[error("InPlaceSet {0} has no namespace or uid; it was not read from the API")]
    NotFromApi(String),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("writing the status of InPlaceSet {inplaceset}: {}", cause(.source))]
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
            Self::Apply(e) => e.category(),
            Self::Status { .. } => "write_status",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

/// Runs the controller until `shutdown` is cancelled; reconciles in flight finish first.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let (pods, writer) = reflector::store();
    let expectations = Arc::new(Expectations::new(expectations::DEFAULT_TIMEOUT));
    let pod_events = pod_watch(&client, writer, pods.clone(), expectations.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MEMBER_MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let context = Arc::new(Context {
        client: client.clone(),
        pods,
        expectations,
        recorder,
    });
    Controller::new(Api::<InPlaceSet>::all(client), watcher::Config::default())
        .owns_stream(pod_events)
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
        })
        .await;
}

/// Pods carrying the revision label (those the controller creates), cached in `writer`; each
/// event marks expectations observed once the cache holds it.
fn pod_watch(
    client: &Client,
    writer: reflector::store::Writer<Pod>,
    cache: Store<Pod>,
    expectations: Arc<Expectations>,
) -> impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static {
    let config = watcher::Config::default().labels(REVISION);
    watcher(Api::<Pod>::all(client.clone()), config)
        .default_backoff()
        .reflect(writer)
        .inspect_ok(move |event| {
            expectations.observe_event(event);
            if matches!(event, watcher::Event::InitDone) {
                let state = cache.state();
                expectations.resync(|uid| {
                    match state
                        .iter()
                        .find(|p| p.metadata.uid.as_deref() == Some(uid))
                    {
                        None => Seen::Absent,
                        Some(p) if p.metadata.deletion_timestamp.is_some() => Seen::Deleting,
                        Some(_) => Seen::Present,
                    }
                });
            }
        })
        .touched_objects()
}

/// Observe the pods, plan, apply, write status.
async fn reconcile(ips: Arc<InPlaceSet>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let key = format!("{}/{}", ips.namespace().unwrap_or_default(), ips.name_any());
    let (Some(namespace), Some(uid)) = (ips.namespace(), ips.uid()) else {
        return Err(ReconcileError::NotFromApi(key));
    };
    if ips.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the pods through their owner references.
        ctx.expectations.forget(&uid);
        return Ok(Action::await_change());
    }
    // A cache that has not listed yet would read as "no pods" and create them all again.
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|_| ReconcileError::CacheClosed)?;

    // observe
    let pods = pod::owned_by(ctx.pods.state().iter().map(AsRef::as_ref), &uid);
    let revision = revision_hash(&ips.spec.template);
    let pending = ctx.expectations.pending(&uid, Instant::now());

    // plan
    let plan = match pending {
        Some(_) => ScalePlan::default(),
        None => {
            let facts: Vec<PodFacts> = pods.iter().map(|p| p.facts.clone()).collect();
            scale::plan(usize::try_from(ips.spec.replicas).unwrap_or(0), &facts)
        }
    };
    let gate_changes: Vec<(String, bool)> = pods
        .iter()
        .filter_map(|p| p.gate_change().map(|v| (p.facts.name.clone(), v)))
        .collect();

    // apply
    let target = Target {
        inplaceset: key.clone(),
        owner_uid: &uid,
        api: Api::namespaced(ctx.client.clone(), &namespace),
        namespace: namespace.clone(),
        cache: &ctx.pods,
        expectations: &ctx.expectations,
    };
    let template = pod::new_pod(&ips, &revision).ok_or(ReconcileError::NotFromApi(key.clone()))?;
    let scaled = apply::scale(&target, &plan, &template).await;
    if let Err(err) = &scaled {
        publish_warning(&ctx, &ips, err).await;
    }
    let gated = apply::gates(&target, &gate_changes).await;

    // status
    let failure = match (&scaled, pending) {
        (Err(err), _) => ReplicaFailure::Failed {
            reason: err.reason().to_string(),
            message: err.to_string(),
        },
        (Ok(()), Some(_)) => ReplicaFailure::Unknown,
        (Ok(()), None) => ReplicaFailure::None,
    };
    let recheck = write_status(&ctx, &ips, &namespace, &revision, &pods, failure).await?;
    scaled?;
    gated?;
    // Pod events trigger the next reconcile; these bound the wait when no event will come.
    let next = [recheck, pending]
        .into_iter()
        .flatten()
        .fold(RESYNC, Duration::min);
    Ok(Action::requeue(next))
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
) -> Result<Option<Duration>, ReconcileError> {
    let (status, recheck) = status::compute(&Inputs {
        generation: ips.metadata.generation,
        min_ready_seconds: ips.spec.min_ready_seconds,
        update_revision: revision,
        selector: &ips.spec.selector,
        previous: ips.status.as_ref(),
        pods,
        failure,
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
/// creations and deletions (best effort: an Event that cannot be written is only logged).
async fn publish_warning(ctx: &Context, ips: &InPlaceSet, err: &ApplyError) {
    let event = Event {
        type_: EventType::Warning,
        reason: err.reason().to_string(),
        note: Some(err.to_string()),
        action: "Scale".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ips.object_ref(&())).await {
        tracing::debug!(error = %e, "event not written");
    }
}

fn error_policy(ips: Arc<InPlaceSet>, err: &ReconcileError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = ips.namespace().unwrap_or_default(),
        inplaceset = ips.name_any(),
        category = err.category(),
        error = %err,
        "reconcile failed; retrying in {RETRY:?}"
    );
    Action::requeue(RETRY)
}
