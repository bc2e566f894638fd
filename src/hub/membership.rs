//! The membership registry: for each registered member, one kube client and one reflector of the
//! InPlaceSets the hub owns there (label-selected, all namespaces), plus the member's health from
//! the last probe. Started, restarted (new kubeconfig) and stopped by the MemberCluster controller.
//!
//! The hub also watches each member's `cafe-system/cafe-member` Lease, the member agent's
//! leader election: a member whose agent has not renewed it within its `leaseDurationSeconds`
//! (judged by when the hub last saw it change, on the hub's clock; a missing Lease counts from
//! when the member connected) is not usable, reason `AgentNotRunning`, like an unreachable one.
//!
//! Member InPlaceSet events are mapped back to the owning CafeDeployment by its labels and sent to
//! the CafeDeployment controller's queue; a member becoming usable or unusable (or its unit
//! labels changing) requeues every CafeDeployment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use super::probe::{Problem, ProblemReason};
use crate::api::labels::{CAFEDEPLOYMENT, CAFEDEPLOYMENT_NAMESPACE, SYSTEM_NAMESPACE};
use crate::api::{CafeDeployment, InPlaceSet, MemberCluster};
use crate::runtime::Telemetry;
use crate::runtime::readiness::Readiness;

/// Sends reconcile requests to the CafeDeployment controller.
#[derive(Clone)]
pub struct Triggers {
    one: mpsc::UnboundedSender<ObjectRef<CafeDeployment>>,
    all: mpsc::UnboundedSender<()>,
}

/// The receiving ends, for `Controller::reconcile_on` and `Controller::reconcile_all_on`.
pub struct TriggerStreams {
    pub one: mpsc::UnboundedReceiver<ObjectRef<CafeDeployment>>,
    pub all: mpsc::UnboundedReceiver<()>,
}

pub fn triggers() -> (Triggers, TriggerStreams) {
    let (one, one_rx) = mpsc::unbounded();
    let (all, all_rx) = mpsc::unbounded();
    (
        Triggers { one, all },
        TriggerStreams {
            one: one_rx,
            all: all_rx,
        },
    )
}

impl Triggers {
    /// Requeues the CafeDeployment that owns `set` (by its ownership labels), if any.
    pub fn owner_of(&self, set: &InPlaceSet) {
        if let Some(owner) = owner_of(set) {
            // The controller stopping is the only way this fails; nothing to do then.
            let _ = self.one.unbounded_send(owner);
        }
    }

    pub fn all(&self) {
        let _ = self.all.unbounded_send(());
    }
}

/// The CafeDeployment an InPlaceSet belongs to, from `apps.cafe.io/cafedeployment` and
/// `apps.cafe.io/cafedeployment-namespace` (defaulting to the InPlaceSet's own namespace).
pub fn owner_of(set: &InPlaceSet) -> Option<ObjectRef<CafeDeployment>> {
    let labels = set.metadata.labels.as_ref()?;
    let name = labels.get(CAFEDEPLOYMENT)?;
    let namespace = labels
        .get(CAFEDEPLOYMENT_NAMESPACE)
        .or(set.metadata.namespace.as_ref())?;
    Some(ObjectRef::new(name).within(namespace))
}

/// Whether the hub can act on a member now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Reachable, and its InPlaceSet cache has been filled at least once.
    Ready,
    /// Not usable; nothing is written there and its units show `reachable: false`.
    NotReady(Problem),
}

/// A member's client and InPlaceSet cache, as handed to the CafeDeployment controller.
#[derive(Clone)]
pub struct MemberHandle {
    pub name: String,
    pub client: kube::Client,
    pub sets: Store<InPlaceSet>,
}

struct Connection {
    handle: MemberHandle,
    synced: Arc<AtomicBool>,
    /// Why the InPlaceSet watch cannot work (no CRD, forbidden), until a list succeeds again.
    watch_problem: Arc<Mutex<Option<Problem>>>,
    /// Identifies the kubeconfig the client was built from; a new one restarts the connection.
    fingerprint: u64,
    /// The member agent's Lease, as last seen.
    agent: Arc<Mutex<AgentLease>>,
    stop: CancellationToken,
}

/// The Lease the member agent elects its leader with, in the member's `cafe-system`.
pub const AGENT_LEASE: &str = "cafe-member";

/// What the hub last saw of a member agent's Lease.
#[derive(Clone, Debug)]
pub struct AgentLease {
    /// Holder, renewTime and duration as last seen; None while no Lease has been seen.
    record: Option<AgentRecord>,
    /// When (hub clock) the record last changed, or the member connected.
    changed_at: std::time::Instant,
    /// The same moment, to tell people.
    changed_wall: Timestamp,
    /// How long a missing Lease is given from the connection.
    grace: Duration,
    /// The last holder seen, to name it once the Lease is released or gone.
    last_holder: Option<String>,
    /// The hub's watch of the Lease is failing (the member is unreachable, or was): what the
    /// agent did meanwhile is unknown, so its silence proves nothing until the watch lists
    /// again, and the clock then starts afresh.
    blind: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct AgentRecord {
    holder: String,
    renew: Option<Timestamp>,
    duration: Duration,
}

impl AgentLease {
    fn new(grace: Duration) -> Self {
        Self {
            record: None,
            changed_at: std::time::Instant::now(),
            changed_wall: Timestamp::now(),
            grace,
            last_holder: None,
            blind: false,
        }
    }

    /// The watch failed: the hub cannot see the Lease.
    fn lose_sight(&mut self) {
        self.blind = true;
    }

    /// The watch listed again: the Lease as it is now was just seen; a renewal the hub missed
    /// while blind is not held against the agent.
    fn regain_sight(&mut self) {
        if std::mem::take(&mut self.blind) {
            self.changed_at = std::time::Instant::now();
            self.changed_wall = Timestamp::now();
        }
    }

    /// Records what the Lease says now; true when that is a change (a sign of life).
    fn see(&mut self, record: Option<AgentRecord>) -> bool {
        if self.record == record {
            return false;
        }
        if let Some(r) = record.as_ref().filter(|r| !r.holder.is_empty()) {
            self.last_holder = Some(r.holder.clone());
        }
        self.record = record;
        self.changed_at = std::time::Instant::now();
        self.changed_wall = Timestamp::now();
        true
    }

    /// When the agent counts as not running unless the Lease changes again.
    fn expiry(&self) -> std::time::Instant {
        let duration = match &self.record {
            // A released Lease (no holder) says so itself with its short duration.
            Some(r) => r.duration,
            None => self.grace,
        };
        self.changed_at + duration
    }

    /// Why the agent counts as not running at `now`, if it does.
    pub fn problem(&self, now: std::time::Instant) -> Option<Problem> {
        if self.blind || now < self.expiry() {
            return None;
        }
        let since = self.changed_wall.strftime("%Y-%m-%dT%H:%M:%SZ");
        let last = match &self.last_holder {
            Some(h) => format!(" (last holder {h})"),
            None => String::new(),
        };
        let message = match &self.record {
            None => format!(
                "no Lease {SYSTEM_NAMESPACE}/{AGENT_LEASE} in the member since {since}{last}: the member agent (cafe member) is not running there"
            ),
            Some(r) if r.holder.is_empty() => format!(
                "Lease {SYSTEM_NAMESPACE}/{AGENT_LEASE} released and not taken since {since}{last}: no member agent (cafe member) runs there"
            ),
            Some(r) => format!(
                "Lease {SYSTEM_NAMESPACE}/{AGENT_LEASE} not renewed since {since} (holder {}, leaseDurationSeconds {}): the member agent is not running",
                r.holder,
                r.duration.as_secs()
            ),
        };
        Some(Problem::new(ProblemReason::AgentNotRunning, message))
    }
}

fn agent_record(lease: &Lease) -> AgentRecord {
    let spec = lease.spec.clone().unwrap_or_default();
    AgentRecord {
        holder: spec.holder_identity.unwrap_or_default(),
        renew: spec.renew_time.map(|t| t.0),
        duration: Duration::from_secs(
            spec.lease_duration_seconds
                .and_then(|d| u64::try_from(d).ok())
                .unwrap_or(0),
        ),
    }
}

/// What of a MemberCluster the CafeDeployment controller plans with: a change requeues everything.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Placement {
    labels: BTreeMap<String, String>,
    unschedulable: bool,
    deleting: bool,
}

#[derive(Default)]
struct Inner {
    connections: HashMap<String, Connection>,
    /// Last probe outcome per member: None = healthy.
    health: HashMap<String, Option<Problem>>,
    placements: HashMap<String, Placement>,
    /// Names seen during a MemberCluster re-list (between Init and InitDone).
    relist: Option<BTreeSet<String>>,
}

/// The registry. Cheap to share (`Arc`); every method is short and never awaits under its lock.
pub struct Membership {
    inner: Mutex<Inner>,
    triggers: Triggers,
    /// How long a member without an agent Lease is given from its connection.
    agent_grace: Duration,
    shutdown: CancellationToken,
    /// Cloned into each member reflector task and dropped when it ends: counts the running ones.
    reflectors: Arc<()>,
    /// Each registered member's cache is a watch of `/readyz`, synced once the member is
    /// connected and listed, or known to be unusable; and its reachability is a metric.
    telemetry: Telemetry,
}

/// The readiness name of a member's InPlaceSet cache.
pub fn readiness_name(member: &str) -> String {
    format!("member {member}")
}

impl Membership {
    pub fn new(
        triggers: Triggers,
        agent_grace: Duration,
        shutdown: CancellationToken,
        telemetry: Telemetry,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            triggers,
            agent_grace,
            shutdown,
            reflectors: Arc::new(()),
            telemetry,
        }
    }

    /// The telemetry the registry reports to (for the MemberCluster controller's clients).
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it half-updated in a way that matters
        // (each method replaces whole entries), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fingerprint of the kubeconfig the member's current client was built from.
    pub fn fingerprint(&self, member: &str) -> Option<u64> {
        self.lock().connections.get(member).map(|c| c.fingerprint)
    }

    /// The member's client, if connected.
    pub fn client(&self, member: &str) -> Option<kube::Client> {
        self.lock()
            .connections
            .get(member)
            .map(|c| c.handle.client.clone())
    }

    /// Starts (or restarts, dropping the old one) the member's connection: `client` and a
    /// reflector of the InPlaceSets labelled `apps.cafe.io/cafedeployment`, in all namespaces.
    /// A member no longer registered (a reconcile that raced its deletion) is not connected.
    pub fn connect(&self, member: &str, fingerprint: u64, client: kube::Client) {
        let (sets, writer) = reflector::store::<InPlaceSet>();
        let synced = Arc::new(AtomicBool::new(false));
        let watch_problem = Arc::new(Mutex::new(None));
        let stop = self.shutdown.child_token();
        let handle = MemberHandle {
            name: member.to_string(),
            client: client.clone(),
            sets,
        };
        let agent = Arc::new(Mutex::new(AgentLease::new(self.agent_grace)));
        let agent_watch = watch_agent(
            member.to_string(),
            client.clone(),
            agent.clone(),
            self.triggers.clone(),
            stop.clone(),
        );
        let reflector = reflect_member(
            member.to_string(),
            client,
            writer,
            MemberWatch {
                synced: synced.clone(),
                problem: watch_problem.clone(),
                readiness: self.telemetry.readiness.clone(),
            },
            self.triggers.clone(),
            stop.clone(),
        );
        // The registration check, the insert and the start of the reflector happen under one
        // lock: a `remove` either runs first (nothing starts) or after (it stops what started).
        // Checked and inserted in two steps, a removal in between left a reflector running for
        // a member no longer registered.
        let old = {
            let mut inner = self.lock();
            if !inner.placements.contains_key(member) {
                return;
            }
            let running = self.reflectors.clone();
            let agent_running = self.reflectors.clone();
            tokio::spawn(async move {
                reflector.await;
                drop(running);
            });
            tokio::spawn(async move {
                agent_watch.await;
                drop(agent_running);
            });
            inner.connections.insert(
                member.to_string(),
                Connection {
                    handle,
                    synced,
                    watch_problem,
                    fingerprint,
                    agent,
                    stop,
                },
            )
        };
        if let Some(old) = old {
            tracing::info!(member, "member kubeconfig changed; reconnected");
            old.stop.cancel();
        } else {
            tracing::info!(member, "member connected");
        }
        self.triggers.all();
    }

    /// Why the member agent counts as not running, if it does.
    pub fn agent_problem(&self, member: &str) -> Option<Problem> {
        let inner = self.lock();
        let c = inner.connections.get(member)?;
        let agent = c.agent.lock().unwrap_or_else(|e| e.into_inner());
        agent.problem(std::time::Instant::now())
    }

    /// Member watch tasks still running (each holds a clone of `reflectors`).
    pub fn running_reflectors(&self) -> usize {
        Arc::strong_count(&self.reflectors) - 1
    }

    /// Drops the member's connection (its Secret is gone or unusable); keeps its health.
    pub fn disconnect(&self, member: &str) {
        if let Some(old) = self.lock().connections.remove(member) {
            old.stop.cancel();
            tracing::info!(member, "member disconnected");
            self.triggers.all();
        }
    }

    /// Records the last probe's outcome; a change of usability requeues every CafeDeployment
    /// and is logged once (WARN when the member is lost or failing, INFO when it is back).
    pub fn set_health(&self, member: &str, problem: Option<Problem>) {
        let (changed, first) = {
            let mut inner = self.lock();
            if !inner.placements.contains_key(member) {
                return;
            }
            if problem
                .as_ref()
                .is_some_and(|p| p.reason != ProblemReason::Connecting)
            {
                // Known unusable: nothing more to wait for before acting on the others.
                self.telemetry
                    .readiness
                    .mark_synced(&readiness_name(member));
            }
            let old = inner.health.insert(member.to_string(), problem.clone());
            let first = old.is_none();
            let old = old.map(|o| o.map(|p| p.reason));
            (old != Some(problem.as_ref().map(|p| p.reason)), first)
        };
        if changed {
            match &problem {
                // The hub's own start-up, not a member failing.
                Some(problem) if problem.reason == ProblemReason::Connecting => {
                    tracing::info!(member, %problem, "member not usable yet");
                }
                Some(problem) => tracing::warn!(member, %problem, "member not usable"),
                None if !first => tracing::info!(member, "member usable again"),
                None => {}
            }
            self.triggers.all();
        }
    }

    /// Why the member's InPlaceSet watch cannot work (404: no CRD; 401/403: forbidden), if it
    /// cannot; cleared by the next successful list.
    pub fn watch_problem(&self, member: &str) -> Option<Problem> {
        let inner = self.lock();
        let c = inner.connections.get(member)?;
        let problem = c.watch_problem.lock().unwrap_or_else(|e| e.into_inner());
        problem.clone()
    }

    /// Forgets a member entirely: the MemberCluster was deleted.
    pub fn remove(&self, member: &str) {
        self.telemetry.readiness.remove(&readiness_name(member));
        self.telemetry.metrics.forget_member(member);
        let old = {
            let mut inner = self.lock();
            inner.health.remove(member);
            inner.placements.remove(member);
            inner.connections.remove(member)
        };
        if let Some(old) = old {
            old.stop.cancel();
        }
        tracing::info!(member, "member removed");
        self.triggers.all();
    }

    /// Stops every member connection (hub shutdown).
    pub fn stop_all(&self) {
        let mut inner = self.lock();
        for (_, c) in inner.connections.drain() {
            c.stop.cancel();
        }
    }

    /// Whether the hub can act on `member` now.
    pub fn state(&self, member: &str) -> MemberState {
        let inner = self.lock();
        if let Some(Some(problem)) = inner.health.get(member) {
            return MemberState::NotReady(problem.clone());
        }
        // A watch that fails after its first sync leaves the cache frozen at what it last saw:
        // never plan from it.
        let watch_problem = inner.connections.get(member).and_then(|c| {
            let problem = c.watch_problem.lock().unwrap_or_else(|e| e.into_inner());
            problem.clone()
        });
        if let Some(problem) = watch_problem {
            return MemberState::NotReady(problem);
        }
        match inner.connections.get(member) {
            Some(c) if c.synced.load(Ordering::Acquire) => {
                let agent = c.agent.lock().unwrap_or_else(|e| e.into_inner());
                match agent.problem(std::time::Instant::now()) {
                    Some(problem) => MemberState::NotReady(problem),
                    None => MemberState::Ready,
                }
            }
            Some(_) => MemberState::NotReady(Problem::new(
                ProblemReason::Connecting,
                "connected; listing its InPlaceSets",
            )),
            None => {
                MemberState::NotReady(Problem::new(ProblemReason::Connecting, "not connected yet"))
            }
        }
    }

    /// The member's client and InPlaceSet cache, whatever its state.
    pub fn handle(&self, member: &str) -> Option<MemberHandle> {
        self.lock()
            .connections
            .get(member)
            .map(|c| c.handle.clone())
    }

    /// Waits until every named member is Ready or known to be unusable for a reason other than
    /// still connecting; false if `timeout` passed first.
    pub async fn wait_settled(&self, members: &[String], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let settled = members.iter().all(|m| {
                !matches!(self.state(m), MemberState::NotReady(p) if p.reason == ProblemReason::Connecting)
            });
            if settled {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Feeds the MemberCluster watch: deletions remove members, a re-list removes those no longer
    /// listed, and a change of unit labels, cordon or deletion requeues every CafeDeployment.
    pub fn observe(&self, event: &watcher::Event<MemberCluster>) {
        match event {
            watcher::Event::Apply(mc) => self.place(mc),
            watcher::Event::Delete(mc) => {
                if let Some(name) = mc.metadata.name.as_deref() {
                    self.remove(name);
                }
            }
            watcher::Event::Init => self.lock().relist = Some(BTreeSet::new()),
            watcher::Event::InitApply(mc) => {
                if let Some(name) = mc.metadata.name.clone()
                    && let Some(seen) = self.lock().relist.as_mut()
                {
                    seen.insert(name);
                }
                self.place(mc);
            }
            watcher::Event::InitDone => {
                let gone: Vec<String> = {
                    let mut inner = self.lock();
                    let seen = inner.relist.take().unwrap_or_default();
                    let known: BTreeSet<String> = inner
                        .connections
                        .keys()
                        .chain(inner.health.keys())
                        .chain(inner.placements.keys())
                        .cloned()
                        .collect();
                    known.difference(&seen).cloned().collect()
                };
                for name in gone {
                    self.remove(&name);
                }
            }
        }
    }

    fn place(&self, mc: &MemberCluster) {
        let Some(name) = mc.metadata.name.clone() else {
            return;
        };
        let placement = Placement {
            labels: mc.metadata.labels.clone().unwrap_or_default(),
            unschedulable: mc.spec.unschedulable,
            deleting: mc.metadata.deletion_timestamp.is_some(),
        };
        self.telemetry.readiness.register(&readiness_name(&name));
        let changed = self.lock().placements.insert(name, placement.clone()) != Some(placement);
        if changed {
            self.triggers.all();
        }
    }
}

/// What the hub knows of one member's InPlaceSet watch.
struct MemberWatch {
    /// The cache has been filled at least once.
    synced: Arc<AtomicBool>,
    /// Why the watch cannot work, until a list succeeds again.
    problem: Arc<Mutex<Option<Problem>>>,
    readiness: Readiness,
}

impl MemberWatch {
    /// Records `problem` (None: a list succeeded); true when that changed the member's usability.
    fn set(&self, member: &str, problem: Option<Problem>) -> bool {
        let mut current = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().map(|p| p.reason) == problem.as_ref().map(|p| p.reason) {
            return false;
        }
        // Listed, or known not to be listable: either way the member has settled.
        self.readiness.mark_synced(&readiness_name(member));
        match &problem {
            Some(p) => tracing::warn!(member, problem = %p, "member InPlaceSet watch failed"),
            None => tracing::info!(member, "member InPlaceSet watch works again"),
        }
        *current = problem;
        true
    }
}

/// Keeps one member's InPlaceSet cache and turns its events into reconcile requests. Watch errors
/// are retried with kube's default backoff; the cache keeps its last content meanwhile, and an
/// error that will not go away by itself (no CRD, forbidden) makes the member not Ready.
async fn reflect_member(
    member: String,
    client: kube::Client,
    writer: reflector::store::Writer<InPlaceSet>,
    watch: MemberWatch,
    triggers: Triggers,
    stop: CancellationToken,
) {
    let api: Api<InPlaceSet> = Api::all(client);
    let config = watcher::Config::default().labels(CAFEDEPLOYMENT);
    let stream = watcher(api, config)
        .backoff(crate::runtime::backoff::watch_backoff())
        .modify(crate::runtime::strip_bookkeeping)
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = stream.next() => event,
        };
        match event {
            None => break,
            Some(Ok(watcher::Event::Apply(set) | watcher::Event::Delete(set))) => {
                triggers.owner_of(&set);
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if !watch.synced.swap(true, Ordering::AcqRel) {
                    tracing::debug!(member, "member InPlaceSet cache filled");
                    watch.readiness.mark_synced(&readiness_name(&member));
                }
                watch.set(&member, None);
                // A re-list may have replaced anything: look at every CafeDeployment again.
                triggers.all();
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
            Some(Err(error)) => {
                tracing::debug!(member, %error, "member InPlaceSet watch failed; retrying");
                if let Some(problem) = super::probe::classify_watch(&member, &error)
                    && watch.set(&member, Some(problem))
                {
                    triggers.all();
                }
            }
        }
    }
}

/// Follows the member agent's Lease (that one object: field selector on its name) and requeues
/// every CafeDeployment when the agent starts or stops counting as running; a timer catches the
/// moment it expires, since an agent that stopped sends no event.
async fn watch_agent(
    member: String,
    client: kube::Client,
    agent: Arc<Mutex<AgentLease>>,
    triggers: Triggers,
    stop: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, SYSTEM_NAMESPACE);
    let config = watcher::Config::default().fields(&format!("metadata.name={AGENT_LEASE}"));
    let stream = watcher(api, config).backoff(crate::runtime::backoff::watch_backoff());
    let mut stream = std::pin::pin!(stream);
    let lock = |a: &Mutex<AgentLease>| a.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut running = true;
    let mut listed = false;
    loop {
        let expiry = lock(&agent).expiry();
        // Past its expiry, only an event can change anything.
        let expired = std::time::Instant::now() >= expiry;
        let event = tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(expiry.into()), if !expired => None,
            event = stream.next() => match event {
                None => break,
                Some(e) => Some(e),
            },
        };
        match event {
            Some(Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease))) => {
                listed = true;
                agent_lock(&agent).see(Some(agent_record(&lease)));
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                agent_lock(&agent).see(None);
            }
            Some(Ok(watcher::Event::Init)) => listed = false,
            Some(Ok(watcher::Event::InitDone)) => {
                let mut agent = agent_lock(&agent);
                if !listed {
                    agent.see(None);
                }
                agent.regain_sight();
            }
            Some(Err(error)) => {
                tracing::debug!(member, %error, "member agent Lease watch failed; retrying");
                agent_lock(&agent).lose_sight();
            }
            None => {}
        }
        let now_running = lock(&agent).problem(std::time::Instant::now());
        if now_running.is_none() != running {
            running = now_running.is_none();
            match now_running {
                Some(problem) => tracing::warn!(member, %problem, "member agent not running"),
                None => tracing::info!(member, "member agent running again"),
            }
            triggers.all();
        }
    }
}

fn agent_lock(agent: &Mutex<AgentLease>) -> MutexGuard<'_, AgentLease> {
    agent.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the agent did while the hub could not watch its Lease (the member unreachable) is
    /// not held against it: the clock starts afresh once the hub sees the Lease again.
    #[test]
    fn a_lease_the_hub_could_not_watch_is_judged_afresh_once_it_can() {
        let mut agent = AgentLease::new(Duration::from_secs(5));
        agent.see(Some(AgentRecord {
            holder: "agent-1".into(),
            renew: Some(Timestamp::from_second(100).unwrap()),
            duration: Duration::from_secs(2),
        }));
        let seen = agent.changed_at;
        agent.lose_sight();
        assert_eq!(
            agent.problem(seen + Duration::from_secs(30)),
            None,
            "no verdict while blind"
        );
        agent.regain_sight();
        let again = agent.changed_at;
        assert!(again > seen);
        assert_eq!(agent.problem(again + Duration::from_millis(1900)), None);
        assert!(agent.problem(again + Duration::from_secs(2)).is_some());
        agent.regain_sight();
        assert_eq!(
            agent.changed_at, again,
            "a relist when not blind is no sign of life"
        );
    }

    #[test]
    fn an_agent_lease_not_renewed_within_its_duration_is_agent_not_running() {
        let mut agent = AgentLease::new(Duration::from_secs(5));
        let start = agent.changed_at;
        assert_eq!(agent.problem(start + Duration::from_secs(4)), None);
        let missing = agent.problem(start + Duration::from_secs(5)).unwrap();
        assert_eq!(missing.reason, ProblemReason::AgentNotRunning);
        assert!(
            missing.message.contains("no Lease cafe-system/cafe-member"),
            "{}",
            missing.message
        );

        let renewed = |renew: i64| AgentRecord {
            holder: "agent-1".into(),
            renew: Some(Timestamp::from_second(renew).unwrap()),
            duration: Duration::from_secs(15),
        };
        assert!(agent.see(Some(renewed(100))));
        assert!(
            !agent.see(Some(renewed(100))),
            "the same Lease is no sign of life"
        );
        let seen = agent.changed_at;
        assert_eq!(agent.problem(seen + Duration::from_secs(14)), None);
        let stale = agent.problem(seen + Duration::from_secs(15)).unwrap();
        assert!(
            stale.message.contains("holder agent-1"),
            "{}",
            stale.message
        );
        assert!(
            stale.message.contains("not renewed since"),
            "{}",
            stale.message
        );

        let released = AgentRecord {
            holder: String::new(),
            renew: Some(Timestamp::from_second(120).unwrap()),
            duration: Duration::from_secs(1),
        };
        assert!(agent.see(Some(released)));
        let gone = agent
            .problem(agent.changed_at + Duration::from_secs(1))
            .unwrap();
        assert!(gone.message.contains("released"), "{}", gone.message);
        assert!(
            gone.message.contains("last holder agent-1"),
            "{}",
            gone.message
        );
    }

    fn member_cluster(name: &str) -> MemberCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps.cafe.io/v1alpha1",
            "kind": "MemberCluster",
            "metadata": {"name": name},
            "spec": {"kubeconfigSecretRef": {"namespace": "cafe-system", "name": name}},
        }))
        .unwrap()
    }

    /// `connect` (a MemberCluster reconcile) and `remove` (the MemberCluster deleted) race on
    /// two threads; whichever wins, nothing of the member is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_removed_while_connecting_keeps_no_connection_or_reflector() {
        let (triggers, _streams) = triggers();
        let membership = Membership::new(
            triggers,
            Duration::from_secs(2),
            CancellationToken::new(),
            Telemetry::default(),
        );
        // Nothing listens there: the reflectors only retry until stopped.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let runtime = tokio::runtime::Handle::current();
        for i in 0..500 {
            let name = format!("m{i}");
            membership.observe(&watcher::Event::Apply(member_cluster(&name)));
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    let _runtime = runtime.enter();
                    barrier.wait();
                    membership.connect(&name, 1, client.clone());
                });
                scope.spawn(|| {
                    barrier.wait();
                    membership.remove(&name);
                });
            });
            assert!(
                membership.handle(&name).is_none(),
                "member {name} removed, yet still connected"
            );
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while membership.running_reflectors() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} reflectors still running for removed members",
                membership.running_reflectors()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
