//! The CafeDeployment controller: observe (hub and member caches) -> plan ([`super::projection`])
//! -> apply (server-side apply or delete of member InPlaceSets, only what differs) -> status
//! (written only when it changed). Deletion goes through the `apps.cafe.io/cleanup` finalizer.
//!
//! Only the leading hub replica reconciles; followers keep their caches and do nothing. Gaining
//! leadership reconciles every CafeDeployment, after forgetting the expectations of any earlier
//! term (another replica may have written since).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::HubOptions;
use super::expectations::Expectations;
use super::history::{self, HistoryError};
use super::member_writes::{MemberWriter, WriteError};
use super::membership::{Membership, TriggerStreams};
use super::projection::{self, MemberView, Observed, ObservedSet, Write};
use crate::api::labels::{
    CAFEDEPLOYMENT, CAFEDEPLOYMENT_NAMESPACE, CLEANUP_FINALIZER, HUB_MANAGER, UPGRADE_CONFIRMED,
};
use crate::api::{CafeDeployment, CafeDeploymentStatus, Loan, MemberCluster};
use crate::plan::revision::revision_hash;
use crate::plan::unit_status::{CLEANED_UP, REPLICA_FAILURE, UNITS_RESOLVED};
use crate::runtime::events::{EventType, EventWriter, Fact, event_type};
use crate::runtime::leader::TermGuard;
use crate::runtime::metrics::controllers;
use crate::runtime::status_patch::replace_status;

#[derive(Debug, thiserror::Error)]
pub enum CafeDeploymentError {
    #[error("CafeDeployment has no namespace")]
    Unnamespaced,
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("writing status of CafeDeployment {namespace}/{name}: {source}")]
    WriteStatus {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("resetting the confirmation annotation of CafeDeployment {namespace}/{name}: {source}")]
    Confirmation {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("deletion waits for members: {0}")]
    CleanupBlocked(String),
    #[error(transparent)]
    Finalizer(Box<finalizer::Error<CafeDeploymentError>>),
}

impl CafeDeploymentError {
    /// A fixed word for logs, metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            CafeDeploymentError::Unnamespaced => "unnamespaced",
            CafeDeploymentError::Write(e) => e.category(),
            CafeDeploymentError::WriteStatus { .. } => "write_status",
            CafeDeploymentError::Confirmation { .. } => "confirmation",
            CafeDeploymentError::History(e) => e.category(),
            CafeDeploymentError::CleanupBlocked(_) => "cleanup_blocked",
            CafeDeploymentError::Finalizer(e) => match &**e {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.category()
                }
                _ => "finalizer",
            },
        }
    }
}

/// The readiness name of the CafeDeployment cache.
pub const CAFEDEPLOYMENTS_WATCH: &str = "cafedeployments";

struct Context {
    client: kube::Client,
    members: Store<MemberCluster>,
    membership: Arc<Membership>,
    expectations: Expectations,
    events: EventWriter,
    options: HubOptions,
    /// Consecutive failures per CafeDeployment, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<CafeDeployment>, u32>>,
    term: TermGuard,
    /// Every CafeDeployment, for the room their loans hold.
    deployments: Store<CafeDeployment>,
    /// The loans the hub last decided for each CafeDeployment, ahead of the status that records
    /// them: loan decisions are made one at a time under this lock, so two cannot promise the
    /// same room.
    ledger: Mutex<BTreeMap<DeploymentKey, Vec<Loan>>>,
    /// Per (CafeDeployment, member), the loan pods placed there and since when this hub has
    /// seen that many: they hold their room until the member's measure of it can show them.
    placed: Mutex<HashMap<(DeploymentKey, String), (i64, std::time::Instant)>>,
    /// Per CafeDeployment, the hub's last status write: the resourceVersion it replaced (a
    /// cache still showing that one is stale: deciding from it would only meet a 409) and when.
    status_writes: Mutex<HashMap<DeploymentKey, StatusWrite>>,
}

struct StatusWrite {
    replaced: Option<String>,
    at: std::time::Instant,
}

/// Runs the CafeDeployment controller until `shutdown`; member events arrive through `triggers`.
/// Reconciles at once, at most: each holds API connections (a rollout step writes to several
/// members), and the client keeps every connection it opened idle for a while, so unbounded
/// concurrency after 1,000 CafeDeployments were created held ~900 TLS connections and ~100 MiB.
const RECONCILE_CONCURRENCY: u16 = 16;

fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

pub async fn run(
    client: kube::Client,
    members: Store<MemberCluster>,
    membership: Arc<Membership>,
    triggers: TriggerStreams,
    options: HubOptions,
    shutdown: CancellationToken,
) {
    let api: Api<CafeDeployment> = Api::all(client.clone());
    let events = EventWriter::new(client.clone(), HUB_MANAGER);
    let gained = options.leadership.gained();
    // The watch Controller::new would run, with its first list reported to /readyz.
    let (store, writer) = reflector::store();
    let context = Arc::new(Context {
        client,
        members,
        membership,
        expectations: Expectations::default(),
        events,
        options,
        failures: Mutex::new(HashMap::new()),
        term: TermGuard::default(),
        deployments: store.clone(),
        ledger: Mutex::new(BTreeMap::new()),
        placed: Mutex::new(HashMap::new()),
        status_writes: Mutex::new(HashMap::new()),
    });
    let readiness = context.options.telemetry.readiness.clone();
    let stream = watcher(api, watcher::Config::default())
        .backoff(crate::runtime::backoff::watch_backoff())
        .modify(crate::runtime::strip_bookkeeping)
        .reflect(writer)
        .inspect_ok(move |event| readiness.observe(CAFEDEPLOYMENTS_WATCH, event));
    let stream = crate::runtime::reconcile_triggers(stream, store.clone());
    Controller::for_stream(stream, store)
        .with_config(controller_config())
        .reconcile_on(triggers.one)
        .reconcile_all_on(triggers.all)
        .reconcile_all_on(gained)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "CafeDeployment reconcile failed");
            }
        })
        .await;
}

async fn reconcile(
    cd: Arc<CafeDeployment>,
    ctx: Arc<Context>,
) -> Result<Action, CafeDeploymentError> {
    let metrics = ctx.options.telemetry.metrics.clone();
    let object = kube::runtime::reflector::ObjectRef::from_obj(&*cd).to_string();
    metrics
        .measure(
            controllers::CAFEDEPLOYMENT,
            object,
            reconcile_one(cd, ctx),
            |e| e.category(),
        )
        .await
}

async fn reconcile_one(
    cd: Arc<CafeDeployment>,
    ctx: Arc<Context>,
) -> Result<Action, CafeDeploymentError> {
    if !ctx.options.leadership.is_leader() {
        // Gaining leadership reconciles everything again.
        return Ok(Action::await_change());
    }
    ctx.term.enter(&ctx.options.leadership, || {
        ctx.expectations.clear();
        lock(&ctx.failures).clear();
        // Another leader may have decided since: the statuses say what holds.
        lock(&ctx.ledger).clear();
        lock(&ctx.placed).clear();
        lock(&ctx.status_writes).clear();
    });
    let namespace = cd.namespace().ok_or(CafeDeploymentError::Unnamespaced)?;
    let key = ObjectRef::from_obj(&*cd);
    let api: Api<CafeDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, CLEANUP_FINALIZER, cd, |event| async {
        match event {
            finalizer::Event::Apply(cd) => apply(&cd, &ctx).await,
            finalizer::Event::Cleanup(cd) => cleanup(&cd, &ctx).await,
        }
    })
    .await;
    let result = match result {
        // The finalizer's removal raced the object's own end (the last finalizer went, or a
        // JSON patch met an object already gone): what the cleanup was for is done.
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(s))) if s.code == 404 => {
            Ok(Action::await_change())
        }
        other => other.map_err(|e| CafeDeploymentError::Finalizer(Box::new(e))),
    };
    if result.is_ok() {
        lock(&ctx.failures).remove(&key);
    }
    result
}

impl CafeDeploymentError {
    /// The status was decided from a cache older than the object: routine with optimistic
    /// concurrency; the watch is about to deliver the newer object.
    fn is_stale_read(&self) -> bool {
        let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
        match self {
            CafeDeploymentError::WriteStatus { source, .. }
            | CafeDeploymentError::Confirmation { source, .. } => conflict(source),
            CafeDeploymentError::Finalizer(e) => match &**e {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.is_stale_read()
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// Exponential backoff per CafeDeployment: `retry_min`, doubling, capped at `retry_max`. A
/// write refused because the cache was behind is retried at once, quietly.
fn error_policy(cd: Arc<CafeDeployment>, error: &CafeDeploymentError, ctx: Arc<Context>) -> Action {
    if !ctx.options.leadership.is_leader() {
        // Leadership lost mid-reconcile: the write gate refused; the next leader goes on.
        tracing::debug!(cafedeployment = %cd.name_any(), %error, "reconcile stopped: not the leader");
        return Action::await_change();
    }
    if error.is_stale_read() {
        tracing::debug!(cafedeployment = %cd.name_any(), %error, "stale read; retrying");
        return Action::requeue(
            ctx.options
                .retry_min
                .min(std::time::Duration::from_millis(200)),
        );
    }
    let failures = {
        let mut map = lock(&ctx.failures);
        let n = map.entry(ObjectRef::from_obj(&*cd)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = ctx
        .options
        .retry_min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(ctx.options.retry_max);
    tracing::warn!(
        cafedeployment = %cd.name_any(),
        namespace = %cd.namespace().unwrap_or_default(),
        category = error.category(),
        %error,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// How soon to look again when the cache has not caught up with our own status write (its
/// watch event usually comes first).
const STALE_RECHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// A live CafeDeployment: project it into its members and report.
async fn apply(cd: &CafeDeployment, ctx: &Context) -> Result<Action, CafeDeploymentError> {
    // Our own last status write is not in the cache yet: its watch event is on the way and
    // reconciles again. Deciding now would decide from the state before it (and meet a 409).
    let key = ledger_key(cd);
    let last_write = lock(&ctx.status_writes)
        .get(&key)
        .map(|w| (w.replaced.clone(), w.at));
    if let Some((replaced, _)) = &last_write
        && replaced.is_some()
        && *replaced == cd.resource_version()
    {
        return Ok(Action::requeue(STALE_RECHECK));
    }
    let (members, sets) = observe(cd, ctx);
    let plan = {
        let mut ledger = lock(&ctx.ledger);
        let held = held_by_others(cd, ctx, &ledger);
        let plan = projection::project(&Observed {
            deployment: cd,
            members: &members,
            sets: &sets,
            held: &held,
            now: now(),
        });
        let loans = plan.status.loans.clone();
        ledger.insert(ledger_key(cd), loans);
        plan
    };
    // A new revision is kept in the history before the rollout toward it starts, so that
    // `cafe rollout undo` can always come back.
    let recorded = cd
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .and_then(|r| r.revision.as_deref());
    if recorded != Some(revision_hash(&cd.spec.template).as_str()) {
        history::record(&ctx.client, cd).await?;
    }
    // A "true" left from the last confirmation goes before the status says a group waits, so it
    // can never release the next one.
    let mut version = cd.resource_version();
    if plan.reset_confirmation {
        version = reset_confirmation(cd, ctx).await?;
    }
    // The rollout state is written before the member writes it calls for: after a restart the
    // hub resumes from what the status says, never from writes it cannot see. A change that
    // calls for no member write (pods created, ready, available; a condition, a phase reached)
    // is re-derived from the members by any later reconcile, so it waits until
    // `progress_interval` has passed since the last write: a CafeDeployment coming up costs a
    // write or two, not one per pod event.
    let held_back = match last_write {
        Some((_, at)) if plan.writes.is_empty() => {
            ctx.options.progress_interval.checked_sub(at.elapsed())
        }
        _ => None,
    };
    if held_back.is_none() && write_status(cd, &plan.status, version, ctx).await? {
        lock(&ctx.status_writes).insert(
            key,
            StatusWrite {
                replaced: cd.resource_version(),
                at: std::time::Instant::now(),
            },
        );
    }
    ctx.options.telemetry.metrics.set_rollout_phase(
        &cd.namespace().unwrap_or_default(),
        &cd.name_any(),
        plan.status
            .rollout
            .as_ref()
            .and_then(|r| r.phase.as_deref()),
    );
    for (reason, note) in &plan.events {
        publish(cd, ctx, event_type(reason), (reason, note.clone())).await;
    }
    execute(cd, plan.writes, &sets, ctx).await?;
    let next = if plan.waiting.is_empty() {
        ctx.options.resync_interval
    } else {
        tracing::debug!(cafedeployment = %cd.name_any(), waiting = ?plan.waiting, "waiting for members");
        ctx.options.member_wait
    };
    let next = held_back.map_or(next, |h| h.min(next));
    Ok(Action::requeue(plan.recheck.map_or(next, |r| r.min(next))))
}

/// Sets `apps.cafe.io/upgrade-confirmed: "false"`; returns the resourceVersion it produced.
async fn reset_confirmation(
    cd: &CafeDeployment,
    ctx: &Context,
) -> Result<Option<String>, CafeDeploymentError> {
    let (name, namespace) = (cd.name_any(), cd.namespace().unwrap_or_default());
    let api: Api<CafeDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": cd.resource_version(),
        "annotations": {UPGRADE_CONFIRMED: "false"},
    }});
    let written = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|source| CafeDeploymentError::Confirmation {
            namespace,
            name,
            source,
        })?;
    Ok(written.resource_version())
}

/// A CafeDeployment being deleted: delete its InPlaceSets everywhere, or keep the finalizer and
/// say which member holds it up.
async fn cleanup(cd: &CafeDeployment, ctx: &Context) -> Result<Action, CafeDeploymentError> {
    lock(&ctx.ledger).remove(&ledger_key(cd));
    lock(&ctx.status_writes).remove(&ledger_key(cd));
    lock(&ctx.placed).retain(|(key, _), _| *key != ledger_key(cd));
    let (members, sets) = observe(cd, ctx);
    let plan = projection::plan_cleanup(&Observed {
        deployment: cd,
        members: &members,
        sets: &sets,
        held: &BTreeMap::new(),
        now: now(),
    });
    execute(cd, plan.writes, &sets, ctx).await?;
    if plan.blocked.is_empty() {
        // The finalizer goes next and nothing will reconcile this CafeDeployment again: its
        // records would only wait for the TTL sweep.
        ctx.expectations
            .forget_owner(&cd.namespace().unwrap_or_default(), &cd.name_any());
        ctx.options
            .telemetry
            .metrics
            .forget_rollout(&cd.namespace().unwrap_or_default(), &cd.name_any());
        return Ok(Action::await_change());
    }
    let message = format!(
        "keeping the finalizer until its InPlaceSets can be deleted; {}",
        plan.blocked.join("; ")
    );
    let status = projection::with_condition(
        &cd.status.clone().unwrap_or_default(),
        cd.metadata.generation,
        CLEANED_UP,
        "False",
        "MemberUnreachable",
        message,
        &now(),
    );
    write_status(cd, &status, cd.resource_version(), ctx).await?;
    Err(CafeDeploymentError::CleanupBlocked(plan.blocked.join("; ")))
}

/// A CafeDeployment: (namespace, name).
type DeploymentKey = (String, String);

fn ledger_key(cd: &CafeDeployment) -> DeploymentKey {
    (cd.namespace().unwrap_or_default(), cd.name_any())
}

/// The room the loans of every other CafeDeployment hold, per member: their loans as last
/// decided here, else as their status records them. Pods not placed yet hold theirs; placed
/// ones too, for as long as the member's measure of its room may not show them yet (the agent
/// publishes within its refresh period, the hub reads the summary at each probe). A hub that
/// starts counts from its start, so a restart never frees room early.
fn held_by_others(
    cd: &CafeDeployment,
    ctx: &Context,
    ledger: &BTreeMap<DeploymentKey, Vec<Loan>>,
) -> BTreeMap<String, projection::Held> {
    let settle = ctx.options.probe_interval + 2 * crate::member::ROOM_REFRESH;
    let now = std::time::Instant::now();
    let me = ledger_key(cd);
    let mut held: BTreeMap<String, projection::Held> = BTreeMap::new();
    let mut placed = lock(&ctx.placed);
    // Only CafeDeployments with loans hold room: those decided here, and those whose status
    // records loans and that this hub has not decided yet (after a restart). Found without
    // building a key for each of the fleet's CafeDeployments.
    let mut lending: Vec<(DeploymentKey, Arc<CafeDeployment>, Vec<Loan>)> = vec![];
    for (key, loans) in ledger.iter() {
        if loans.is_empty() || *key == me {
            continue;
        }
        let at = ObjectRef::new(&key.1).within(&key.0);
        if let Some(other) = ctx.deployments.get(&at) {
            lending.push((key.clone(), other, loans.clone()));
        }
    }
    for other in ctx.deployments.state() {
        let Some(loans) = other.status.as_ref().map(|s| &s.loans) else {
            continue;
        };
        if loans.is_empty() {
            continue;
        }
        let key = ledger_key(&other);
        if key == me || ledger.contains_key(&key) {
            continue;
        }
        let loans = loans.clone();
        lending.push((key, other, loans));
    }
    for (key, other, loans) in lending {
        let loans = loans.as_slice();
        let (_, sets) = observe(&other, ctx);
        for (member, pods) in projection::loan_pods(&other, loans, &sets) {
            let entry = placed
                .entry((key.clone(), member.clone()))
                .or_insert((pods.placed, now));
            if pods.placed > entry.0 {
                *entry = (pods.placed, now);
            }
            entry.0 = pods.placed;
            let settling = if now.duration_since(entry.1) < settle {
                pods.placed
            } else {
                0
            };
            held.entry(member)
                .or_default()
                .add(&pods.held(pods.unplaced.saturating_add(settling)));
        }
    }
    held
}

/// The registered members and the InPlaceSets of this CafeDeployment their caches hold.
fn observe(cd: &CafeDeployment, ctx: &Context) -> (Vec<MemberView>, Vec<ObservedSet>) {
    let (name, namespace) = (cd.name_any(), cd.namespace().unwrap_or_default());
    let mut members = vec![];
    let mut sets = vec![];
    for mc in ctx.members.state() {
        let Some(member) = mc.metadata.name.clone() else {
            continue;
        };
        // The hub names a CafeDeployment's InPlaceSet after it, in its namespace, in every
        // member: one lookup, not a pass over every InPlaceSet of the member (which, at 10,000
        // CafeDeployments, made each reconcile's cost grow with the fleet).
        if let Some(handle) = ctx.membership.handle(&member)
            && let Some(set) = handle
                .sets
                .get(&ObjectRef::new(&name).within(&namespace))
                .filter(|s| {
                    let labels = s.labels();
                    labels.get(CAFEDEPLOYMENT) == Some(&name)
                        && labels.get(CAFEDEPLOYMENT_NAMESPACE) == Some(&namespace)
                })
        {
            sets.push(ObservedSet {
                member: member.clone(),
                set,
            });
        }
        let status = mc.status.as_ref();
        members.push(MemberView {
            state: ctx.membership.state(&member),
            labels: mc.metadata.labels.clone().unwrap_or_default(),
            deleting: mc.metadata.deletion_timestamp.is_some(),
            not_ready_since: status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .filter(|c| c.status != "True")
                .map(|c| c.last_transition_time.clone()),
            cordoned: mc.spec.unschedulable,
            capacity: status.and_then(|s| s.capacity.clone()),
            name: member,
        });
    }
    (members, sets)
}

/// Performs the writes not already pending; a successful one is published as an Event, the
/// first failure is returned.
async fn execute(
    cd: &CafeDeployment,
    writes: Vec<Write>,
    sets: &[ObservedSet],
    ctx: &Context,
) -> Result<(), CafeDeploymentError> {
    let writer = MemberWriter {
        membership: &ctx.membership,
        expectations: &ctx.expectations,
        timeout: ctx.options.request_timeout,
    };
    let writes = writer.without_pending(writes, sets);
    let mut first_error = None;
    for (write, result) in writer.execute(&writes).await {
        match result {
            Ok(()) => publish(cd, ctx, EventType::Normal, event_of(write)).await,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), |e| Err(e.into()))
}

/// The Event a successful write is published as.
fn event_of(w: &Write) -> (&'static str, String) {
    match w {
        Write::Apply {
            member, unit, set, ..
        } => (
            "InPlaceSetApplied",
            format!(
                "unit {unit}: InPlaceSet {} with {} replicas (partition {}) in member {member}",
                set.name_any(),
                set.spec.replicas,
                set.spec.strategy.partition
            ),
        ),
        Write::Delete {
            member, unit, name, ..
        } => (
            "InPlaceSetDeleted",
            format!("unit {unit}: InPlaceSet {name} deleted in member {member}"),
        ),
    }
}

/// Writes `status` when it differs from what the CafeDeployment shows (true when it wrote); a
/// condition newly going bad is also published as a Warning Event.
///
/// `version` is a precondition: a status decided from a stale cache is refused (409) rather than
/// written over a newer one, so a rollout never steps back.
async fn write_status(
    cd: &CafeDeployment,
    status: &CafeDeploymentStatus,
    version: Option<String>,
    ctx: &Context,
) -> Result<bool, CafeDeploymentError> {
    let previous = cd.status.clone().unwrap_or_default();
    if *status == previous {
        return Ok(false);
    }
    let (name, namespace) = (cd.name_any(), cd.namespace().unwrap_or_default());
    let api: Api<CafeDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let old = serde_json::to_value(&cd.status).unwrap_or_default();
    let new = serde_json::to_value(status).unwrap_or_default();
    let mut body = replace_status(&old, &new);
    body["metadata"] = serde_json::json!({"resourceVersion": version});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(body))
        .await
        .map_err(|source| CafeDeploymentError::WriteStatus {
            namespace,
            name,
            source,
        })?;
    for (type_, bad) in [
        (UNITS_RESOLVED, "False"),
        (REPLICA_FAILURE, "True"),
        (CLEANED_UP, "False"),
    ] {
        let now = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == bad);
        let before = previous.conditions.iter().find(|c| c.type_ == type_);
        if let Some(c) = now
            && before.is_none_or(|b| b.status != c.status || b.reason != c.reason)
        {
            publish(cd, ctx, EventType::Warning, (&c.reason, c.message.clone())).await;
        }
    }
    Ok(true)
}

/// Best effort: an Event that cannot be written is logged, never fails the reconcile.
async fn publish(
    cd: &CafeDeployment,
    ctx: &Context,
    type_: EventType,
    (reason, note): (&str, String),
) {
    let fact = Fact {
        type_,
        reason,
        message: &note,
        action: "Reconcile",
        related: None,
    };
    if let Err(error) = ctx.events.publish(&cd.object_ref(&()), &fact).await {
        tracing::debug!(%error, "publishing an Event failed");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Now, to the second: conditions serialize to seconds, so a finer time would never compare equal
/// to what the API gives back.
fn now() -> Time {
    let secs = Timestamp::now().as_second();
    Time(Timestamp::from_second(secs).unwrap_or_else(|_| Timestamp::now()))
}
