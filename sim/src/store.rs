//! In-memory object storage with one global resourceVersion and a bounded change history.
//!
//! Plays the role etcd and the watch cache play for a real API server: every write gets the next
//! revision, and watches replay the history after a given revision. The history is trimmed the way
//! the API server's watch cache is (see [`HistoryLimits`]), so the simulator's memory follows the
//! live objects and the recent write rate, not everything ever written. A revision older than the
//! kept history can no longer be watched from (the API turns that into 410 Expired). List
//! `continue` tokens are judged against a separate floor that only an explicit compaction moves, as
//! a real API server serves them from etcd until etcd compacts, whatever its watch cache keeps.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

pub type Obj = Arc<Value>;
/// (namespace, name); namespace is "" for cluster-scoped objects.
pub type ObjKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One write, as watches see it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub storage: String,
    pub kind: ChangeKind,
    pub object: Obj,
    pub previous: Option<Obj>,
    /// The watch event line for this change as most watchers send it (full object, same event
    /// type), encoded once and shared: with many watchers, encoding dominates the cost.
    pub encoded: std::sync::OnceLock<bytes::Bytes>,
    /// When the change was recorded (for trimming by age).
    pub at: Instant,
}

/// How much change history watches can resume from. Mirrors the API server's watch cache, which
/// keeps every event of the last `eventFreshDuration` (75 s) and otherwise a capacity between a
/// lower bound (100) and an upper bound, rather than etcd's full 5 minutes of revisions: each kept
/// change holds a whole object (and its predecessor, and the encoded watch line), so keeping a
/// fixed large count made the simulator's memory follow its write history (1.6 GB after an upgrade
/// test with 620 live pods) instead of its live objects.
///
/// A change is dropped when the history is longer than [`HistoryLimits::keep`] and the change is
/// older than `fresh`, or whenever the history is longer than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Changes younger than this are kept (below `max`): a watcher that lost its connection, or
    /// a controller that fell behind, resumes from where it was without a relist, as within the
    /// watch cache's 75 s window of a real API server.
    pub fresh: Duration,
    /// Kept however old they are: the watch cache's lower bound capacity (100).
    pub floor: usize,
    /// Kept however old they are, per live object: a quiet cluster still lets a watcher resume
    /// after a longer absence as long as each object changed only a few times, and the history
    /// stays a small multiple of what a relist would cost anyway.
    pub per_object: usize,
    /// Never more than this, however fresh (a burst of writes must not grow memory without bound).
    pub max: usize,
}

/// The watch cache's `eventFreshDuration`.
pub const FRESH_HISTORY: Duration = Duration::from_secs(75);
/// The watch cache's lower bound capacity.
pub const HISTORY_FLOOR: usize = 100;
/// Changes kept per live object beyond the fresh window.
pub const HISTORY_PER_OBJECT: usize = 3;
/// The hard cap on kept changes (about 75 s of writes at 2,600 writes/s).
pub const MAX_HISTORY: usize = 200_000;
/// How often the cluster trims its history when no write does it (see [`run_trimmer`]).
pub const TRIM_EVERY: Duration = Duration::from_secs(5);
/// At most this many stale changes are dropped inline by one write (the hard cap excepted), so a
/// write after a quiet spell does not pay for freeing a large history under the store's lock;
/// [`run_trimmer`] frees the bulk outside it.
const TRIM_ON_WRITE: usize = 16;

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            fresh: FRESH_HISTORY,
            floor: HISTORY_FLOOR,
            per_object: HISTORY_PER_OBJECT,
            max: MAX_HISTORY,
        }
    }
}

impl HistoryLimits {
    /// How many changes are kept however old they are, with `live` objects stored.
    pub fn keep(&self, live: usize) -> usize {
        self.floor
            .max(live.saturating_mul(self.per_object))
            .min(self.max)
    }
}

pub struct Inner {
    rv: u64,
    pub registry: Registry,
    objects: HashMap<String, BTreeMap<ObjKey, Obj>>,
    /// Objects stored, over all storages.
    live: usize,
    history: VecDeque<Arc<Change>>,
    /// Changes with rv <= compacted are gone: watches from before it get 410 Expired.
    compacted: u64,
    /// List continue tokens issued at a revision below this get 410 Expired. Only an explicit
    /// [`Inner::compact`] moves it (etcd compaction), not trimming the watch history.
    continue_floor: u64,
    limits: HistoryLimits,
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn key_of(obj: &Value) -> ObjKey {
    (
        meta_str(obj, "namespace").to_string(),
        meta_str(obj, "name").to_string(),
    )
}

impl Inner {
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Continue tokens from a list at a revision below this are too old (410 Expired).
    pub fn continue_floor(&self) -> u64 {
        self.continue_floor
    }

    /// How many changes the history holds.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// How many objects are stored, over all storages.
    pub fn live(&self) -> usize {
        self.live
    }

    pub fn get(&self, storage: &str, namespace: &str, name: &str) -> Option<Obj> {
        self.objects
            .get(storage)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Objects of a storage key, in (namespace, name) order; all namespaces when `namespace` is None.
    pub fn list(&self, storage: &str, namespace: Option<&str>) -> Vec<Obj> {
        let Some(map) = self.objects.get(storage) else {
            return vec![];
        };
        match namespace {
            None => map.values().cloned().collect(),
            Some(ns) => map
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, o)| o.clone())
                .collect(),
        }
    }

    pub fn count(&self, storage: &str) -> usize {
        self.objects.get(storage).map_or(0, BTreeMap::len)
    }

    /// Stores `obj` (its resourceVersion is set here) and records the change.
    pub fn put(&mut self, storage: &str, mut obj: Value) -> Obj {
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let key = key_of(&obj);
        let obj = Arc::new(obj);
        let previous = self
            .objects
            .entry(storage.to_string())
            .or_default()
            .insert(key, obj.clone());
        let kind = if previous.is_some() {
            ChangeKind::Modified
        } else {
            self.live += 1;
            ChangeKind::Added
        };
        self.record(Change {
            rv,
            storage: storage.to_string(),
            kind,
            object: obj.clone(),
            previous,
            encoded: Default::default(),
            at: Instant::now(),
        });
        obj
    }

    /// Removes an object; the DELETED event carries a fresh resourceVersion, as etcd's does.
    pub fn remove(&mut self, storage: &str, namespace: &str, name: &str) -> Option<Obj> {
        let previous = self
            .objects
            .get_mut(storage)?
            .remove(&(namespace.to_string(), name.to_string()))?;
        self.live -= 1;
        self.rv += 1;
        let rv = self.rv;
        let mut gone = (*previous).clone();
        if let Some(meta) = gone.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let gone = Arc::new(gone);
        self.record(Change {
            rv,
            storage: storage.to_string(),
            kind: ChangeKind::Deleted,
            object: gone.clone(),
            previous: Some(previous),
            encoded: Default::default(),
            at: Instant::now(),
        });
        Some(gone)
    }

    fn record(&mut self, change: Change) {
        let now = change.at;
        self.history.push_back(Arc::new(change));
        self.trim(now, TRIM_ON_WRITE);
    }

    /// Drops what [`HistoryLimits`] no longer keeps at `now`: everything beyond `max`, and at most
    /// `budget` changes older than `fresh` beyond `keep`. Returns the dropped changes (so a caller
    /// can free them outside the lock).
    fn trim(&mut self, now: Instant, budget: usize) -> Vec<Arc<Change>> {
        let mut dropped = vec![];
        while self.history.len() > self.limits.max {
            dropped.extend(self.history.pop_front());
        }
        let keep = self.limits.keep(self.live);
        while self.history.len() > keep
            && dropped.len() < budget
            && self
                .history
                .front()
                .is_some_and(|c| now.saturating_duration_since(c.at) >= self.limits.fresh)
        {
            dropped.extend(self.history.pop_front());
        }
        if let Some(last) = dropped.last() {
            self.compacted = self.compacted.max(last.rv);
        }
        dropped
    }

    /// Trims the history as of `now` (see [`HistoryLimits`]); returns the dropped changes.
    pub fn trim_history(&mut self, now: Instant) -> Vec<Arc<Change>> {
        self.trim(now, usize::MAX)
    }

    /// Changes after `rv` (exclusive), or None when that part of history was compacted away.
    pub fn changes_since(&self, rv: u64, max: usize) -> Option<Vec<Arc<Change>>> {
        if rv < self.compacted {
            return None;
        }
        let start = self.history.partition_point(|c| c.rv <= rv);
        Some(self.history.range(start..).take(max).cloned().collect())
    }

    /// Forgets all history, as `etcdctl compact` would: older revisions become 410 Expired, for
    /// watches and for list continue tokens alike.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
        self.continue_floor = self.rv;
    }

    pub fn storages(&self) -> impl Iterator<Item = &String> {
        self.objects.keys()
    }
}

/// The store: a lock around [`Inner`] plus a signal that fires after every write.
pub struct Store {
    inner: Mutex<Inner>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Store {
    pub fn new(registry: Registry) -> Self {
        Self::with_limits(registry, HistoryLimits::default())
    }

    pub fn with_limits(registry: Registry, limits: HistoryLimits) -> Self {
        let (changed, _) = tokio::sync::watch::channel(1);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                registry,
                objects: HashMap::new(),
                live: 0,
                history: VecDeque::new(),
                compacted: 0,
                continue_floor: 0,
                limits,
            }),
            changed,
        }
    }

    /// Trims the history as of `now` and frees what it dropped after releasing the lock.
    /// Returns how many changes were dropped.
    pub fn trim_history(&self, now: Instant) -> usize {
        let dropped = self.inner.lock().trim_history(now);
        dropped.len()
    }

    pub fn read<R>(&self, f: impl FnOnce(&Inner) -> R) -> R {
        f(&self.inner.lock())
    }

    /// Runs `f` under the lock; wakes watchers if it wrote anything.
    pub fn write<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let (result, before, after) = {
            let mut inner = self.inner.lock();
            let before = inner.rv;
            let r = f(&mut inner);
            (r, before, inner.rv)
        };
        if after != before {
            self.changed.send_replace(after);
        }
        result
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn registry(&self) -> Registry {
        self.inner.lock().registry.clone()
    }
}

/// Trims the store's history every `period` ([`TRIM_EVERY`] in a cluster) until `shutdown`:
/// writes trim a little as they go, this frees what a quiet spell after a burst of writes leaves.
pub async fn run_trimmer(store: Arc<Store>, period: Duration, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                let dropped = store.trim_history(Instant::now());
                if dropped > 0 {
                    tracing::debug!(dropped, "store: trimmed change history");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn revisions_are_global_and_monotonic() {
        let store = Store::new(Registry::with_builtins());
        let a = store.write(|s| {
            s.put(
                "/pods",
                json!({"metadata": {"name": "a", "namespace": "x"}}),
            )
        });
        let b = store.write(|s| s.put("/nodes", json!({"metadata": {"name": "n"}})));
        let ra: u64 = meta_str(&a, "resourceVersion").parse().unwrap();
        let rb: u64 = meta_str(&b, "resourceVersion").parse().unwrap();
        assert!(rb > ra);
        let gone = store.write(|s| s.remove("/pods", "x", "a")).unwrap();
        let rg: u64 = meta_str(&gone, "resourceVersion").parse().unwrap();
        assert!(rg > rb);
    }

    fn limits(floor: usize, per_object: usize, max: usize) -> HistoryLimits {
        HistoryLimits {
            fresh: FRESH_HISTORY,
            floor,
            per_object,
            max,
        }
    }

    fn pod(name: &str, generation: u64) -> Value {
        json!({"metadata": {"name": name, "namespace": "x"}, "spec": {"n": generation}})
    }

    #[test]
    fn history_compacts_to_expired() {
        let store = Store::with_limits(Registry::with_builtins(), limits(0, 0, 2));
        for i in 0..5 {
            store.write(|s| {
                s.put(
                    "/pods",
                    json!({"metadata": {"name": format!("p{i}"), "namespace": "x"}}),
                )
            });
        }
        store.read(|s| {
            assert!(s.changes_since(2, 100).is_none());
            let recent = s.changes_since(s.rv() - 1, 100).unwrap();
            assert_eq!(recent.len(), 1);
        });
    }

    #[test]
    fn history_is_trimmed_by_age_down_to_what_live_objects_keep() {
        let store = Store::with_limits(Registry::with_builtins(), limits(10, 3, 1_000));
        let start = Instant::now();
        // 2 live pods, 100 changes: fresh ones are all kept.
        for i in 0..50 {
            store.write(|s| s.put("/pods", pod("a", i)));
            store.write(|s| s.put("/pods", pod("b", i)));
        }
        assert_eq!(store.trim_history(start), 0);
        store.read(|s| assert_eq!((s.history_len(), s.live()), (100, 2)));
        // 75 s later they are stale: the floor (10 > 3 x 2 live) is what is left.
        assert_eq!(
            store.trim_history(start + FRESH_HISTORY + Duration::from_secs(1)),
            90
        );
        store.read(|s| {
            assert_eq!(s.history_len(), 10);
            assert_eq!(s.compacted(), s.rv() - 10);
            assert_eq!(s.changes_since(s.compacted(), 100).unwrap().len(), 10);
        });
        // With more live objects, 3 changes per object are kept however old.
        for i in 0..20 {
            store.write(|s| s.put("/pods", pod(&format!("p{i}"), 0)));
            store.write(|s| s.put("/pods", pod(&format!("p{i}"), 1)));
            store.write(|s| s.put("/pods", pod(&format!("p{i}"), 2)));
        }
        store.write(|s| s.remove("/pods", "x", "p0"));
        let live = store.read(Inner::live);
        assert_eq!(live, 21);
        store.trim_history(start + 2 * FRESH_HISTORY);
        store.read(|s| assert_eq!(s.history_len(), 3 * live));
    }

    #[test]
    fn the_hard_cap_drops_even_fresh_changes() {
        let store = Store::with_limits(Registry::with_builtins(), limits(10, 3, 20));
        for i in 0..50 {
            store.write(|s| s.put("/pods", pod("a", i)));
        }
        store.read(|s| {
            assert_eq!(s.history_len(), 20);
            assert_eq!(s.compacted(), s.rv() - 20);
        });
    }

    #[test]
    fn writes_trim_stale_history_a_little_at_a_time() {
        let mut limits = limits(10, 3, 1_000);
        limits.fresh = Duration::ZERO;
        let store = Store::with_limits(Registry::with_builtins(), limits);
        for i in 0..100 {
            store.write(|s| s.put("/pods", pod("a", i)));
        }
        // Every write dropped what was stale beyond the floor: no periodic trim needed.
        store.read(|s| assert_eq!(s.history_len(), 10));
    }

    #[test]
    fn a_watch_from_a_trimmed_revision_is_expired() {
        let store = Store::with_limits(Registry::with_builtins(), limits(10, 3, 1_000));
        let first = store.write(|s| s.put("/pods", pod("a", 0)));
        let first: u64 = meta_str(&first, "resourceVersion").parse().unwrap();
        for i in 1..100 {
            store.write(|s| s.put("/pods", pod("a", i)));
        }
        store.read(|s| assert!(s.changes_since(first, 1_000).is_some()));
        store.trim_history(Instant::now() + FRESH_HISTORY);
        store.read(|s| {
            // The watch handler's 410 test (watch.rs) and the resume path both see it gone.
            assert!(first < s.compacted());
            assert!(s.changes_since(first, 1_000).is_none());
            assert!(s.changes_since(s.compacted(), 1_000).is_some());
        });
    }

    #[test]
    fn continue_tokens_survive_trimming_but_not_compaction() {
        let store = Store::with_limits(Registry::with_builtins(), limits(10, 0, 1_000));
        for i in 0..100 {
            store.write(|s| s.put("/pods", pod(&format!("p{i}"), 0)));
        }
        let listed_at = store.read(Inner::rv);
        for i in 0..100 {
            store.write(|s| s.put("/pods", pod(&format!("p{i}"), 1)));
        }
        store.trim_history(Instant::now() + FRESH_HISTORY);
        store.read(|s| {
            assert!(listed_at < s.compacted(), "the watch history moved on");
            assert!(
                listed_at >= s.continue_floor(),
                "the continue token is still good"
            );
        });
        store.write(|s| s.put("/pods", pod("p0", 2)));
        store.write(Inner::compact);
        store.read(|s| assert!(listed_at < s.continue_floor()));
    }

    #[tokio::test]
    async fn the_trimmer_trims_after_a_quiet_spell_until_shutdown() {
        let mut limits = limits(10, 3, 1_000);
        limits.fresh = Duration::from_millis(50);
        let store = Arc::new(Store::with_limits(Registry::with_builtins(), limits));
        // A burst of fresh writes, then nothing: no write is left to trim them.
        for i in 0..100 {
            store.write(|s| s.put("/pods", pod(&format!("p{i}"), 0)));
        }
        for i in 0..100 {
            store.write(|s| s.remove("/pods", "x", &format!("p{i}")));
        }
        assert_eq!(store.read(Inner::history_len), 200);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_trimmer(
            store.clone(),
            Duration::from_millis(10),
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.read(Inner::history_len) > 10 {
            assert!(Instant::now() < deadline, "the trimmer never trimmed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.read(Inner::history_len), 10);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn list_by_namespace() {
        let store = Store::new(Registry::with_builtins());
        for (ns, n) in [("a", "1"), ("b", "2"), ("a", "3"), ("ab", "4")] {
            store.write(|s| s.put("/pods", json!({"metadata": {"name": n, "namespace": ns}})));
        }
        store.read(|s| {
            assert_eq!(s.list("/pods", Some("a")).len(), 2);
            assert_eq!(s.list("/pods", None).len(), 4);
        });
    }
}
