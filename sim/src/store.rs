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
    object: Version,
    previous: Option<Version>,
    /// The watch event line for this change as most watchers send it (full object, same event
    /// type), encoded once and shared: with many watchers, encoding dominates the cost.
    pub encoded: std::sync::OnceLock<bytes::Bytes>,
    /// When the change was recorded (for trimming by age).
    pub at: Instant,
}

/// An object version a change carries: the decoded object while it is recent (watchers and the
/// simulated kubelet and scheduler read it within milliseconds) or the current one anyway, its
/// JSON once [`FREEZE_AFTER`] has passed and a newer version replaced it. A decoded object is
/// several times its JSON in memory, and the history holds up to 75 s of writes: kept decoded,
/// the versions dominated the simulator's memory (1 GB at 1,000 CafeDeployments).
#[derive(Debug, Clone)]
enum Version {
    Decoded(Obj),
    Json(bytes::Bytes),
}

impl Version {
    fn object(&self) -> Obj {
        match self {
            Version::Decoded(o) => o.clone(),
            // Written by `serde_json::to_vec` of a Value: it decodes.
            Version::Json(b) => Arc::new(serde_json::from_slice(b).unwrap_or(Value::Null)),
        }
    }

    fn is_json(&self) -> bool {
        matches!(self, Version::Json(_))
    }
}

impl Change {
    /// The object as of this change.
    pub fn object(&self) -> Obj {
        self.object.object()
    }

    /// The object before this change (none for an addition).
    pub fn previous(&self) -> Option<Obj> {
        self.previous.as_ref().map(Version::object)
    }

    /// The object's JSON when the change keeps only that: a watch line is built from it without
    /// decoding and encoding again.
    pub fn object_json(&self) -> Option<&bytes::Bytes> {
        match &self.object {
            Version::Json(b) => Some(b),
            Version::Decoded(_) => None,
        }
    }

    fn frozen(&self) -> bool {
        self.object.is_json() && self.previous.as_ref().is_none_or(Version::is_json)
    }

    /// The changed object's (namespace, name).
    fn key(&self) -> ObjKey {
        match (&self.object, &self.previous) {
            (Version::Decoded(o), _) | (_, Some(Version::Decoded(o))) => key_of(o),
            _ => key_of(&self.object()),
        }
    }
}

/// An object version's JSON.
fn encode(object: &Value) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(object).unwrap_or_default())
}

/// The resourceVersion an object version was written at.
fn written_at(object: &Value) -> Option<u64> {
    meta_str(object, "resourceVersion").parse().ok()
}

/// How long a change keeps its objects decoded before [`Store::freeze_history`] keeps only
/// their JSON (unless the object is still the current one).
pub const FREEZE_AFTER: Duration = Duration::from_secs(2);

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
    /// Per (storage, key), the JSON of the newest version [`Store::freeze_history`] encoded and
    /// its resourceVersion: the next change of that object carries the same version as its
    /// `previous`, which then shares these bytes instead of encoding them again.
    frozen_last: HashMap<(String, ObjKey), (u64, bytes::Bytes)>,
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
            object: Version::Decoded(obj.clone()),
            previous: previous.map(Version::Decoded),
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
            object: Version::Decoded(gone.clone()),
            previous: Some(Version::Decoded(previous)),
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
        self.frozen_last.clear();
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
                frozen_last: HashMap::new(),
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

    /// Keeps only the JSON of the object versions that changes older than [`FREEZE_AFTER`]
    /// carry, except an object's current version (the store holds it anyway). The next change
    /// of an object shares the bytes of the version before it. Encoding happens outside the
    /// lock; returns how many changes it froze.
    pub fn freeze_history(&self, now: Instant) -> usize {
        type Key = (String, ObjKey);
        // The changes to freeze, whether each one's object is current, and the JSON already
        // kept of their objects' last frozen versions.
        let (candidates, mut last) = {
            let inner = self.inner.lock();
            let mut candidates = vec![];
            let mut last: HashMap<Key, (u64, bytes::Bytes)> = HashMap::new();
            for c in &inner.history {
                if now.saturating_duration_since(c.at) < FREEZE_AFTER {
                    break;
                }
                if c.frozen() {
                    continue;
                }
                let key = (c.storage.clone(), c.key());
                let current = match &c.object {
                    Version::Decoded(o) => inner
                        .objects
                        .get(&c.storage)
                        .and_then(|m| m.get(&key.1))
                        .is_some_and(|live| Arc::ptr_eq(live, o)),
                    Version::Json(_) => false,
                };
                if current && c.previous.as_ref().is_none_or(Version::is_json) {
                    // Nothing to freeze until a newer version replaces this one.
                    continue;
                }
                if let Some(kept) = inner.frozen_last.get(&key) {
                    last.entry(key.clone()).or_insert_with(|| kept.clone());
                }
                candidates.push((c.clone(), key, current));
            }
            (candidates, last)
        };
        if candidates.is_empty() {
            return 0;
        }
        let mut frozen = Vec::with_capacity(candidates.len());
        for (old, key, current) in candidates {
            let previous = old.previous.as_ref().map(|p| match p {
                Version::Json(b) => Version::Json(b.clone()),
                Version::Decoded(o) => match last.get(&key) {
                    Some((rv, b)) if Some(*rv) == written_at(o) => Version::Json(b.clone()),
                    _ => Version::Json(encode(o)),
                },
            });
            let object = match &old.object {
                Version::Decoded(_) if current => old.object.clone(),
                Version::Decoded(o) => {
                    let b = encode(o);
                    last.insert(key, (old.rv, b.clone()));
                    Version::Json(b)
                }
                Version::Json(b) => Version::Json(b.clone()),
            };
            let new = Arc::new(Change {
                rv: old.rv,
                storage: old.storage.clone(),
                kind: old.kind,
                object,
                previous,
                // Rebuilt from the JSON when a watcher replays this change.
                encoded: Default::default(),
                at: old.at,
            });
            frozen.push((old, new));
        }
        let mut replaced = Vec::with_capacity(frozen.len());
        {
            let mut inner = self.inner.lock();
            for (old, new) in frozen {
                let i = inner.history.partition_point(|c| c.rv < old.rv);
                if let Some(slot) = inner.history.get_mut(i)
                    && Arc::ptr_eq(slot, &old)
                {
                    replaced.push(std::mem::replace(slot, new));
                }
            }
            for (key, (rv, b)) in last {
                let newer = inner
                    .frozen_last
                    .get(&key)
                    .is_none_or(|(kept, _)| *kept < rv);
                if newer {
                    inner.frozen_last.insert(key, (rv, b));
                }
            }
            let compacted = inner.compacted;
            inner.frozen_last.retain(|_, (rv, _)| *rv > compacted);
        }
        // The decoded versions are freed here, outside the lock.
        replaced.len()
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
                let freezing = store.clone();
                let frozen = tokio::task::spawn_blocking(move || freezing.freeze_history(Instant::now()))
                    .await
                    .unwrap_or(0);
                if frozen > 0 {
                    tracing::debug!(frozen, "store: kept only the JSON of older versions");
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

    fn json_of(v: Option<&Version>) -> Option<bytes::Bytes> {
        match v {
            Some(Version::Json(b)) => Some(b.clone()),
            _ => None,
        }
    }

    /// Older versions keep only their JSON, read back as they were; the current version stays
    /// decoded; a change's previous version shares the bytes of the change that wrote it.
    #[test]
    fn older_versions_keep_only_their_json_and_read_back_the_same() {
        let store = Store::new(Registry::with_builtins());
        for i in 0..3 {
            store.write(|s| s.put("/pods", pod("a", i)));
        }
        store.write(|s| s.put("/pods", pod("b", 0)));
        let versions = |store: &Store| -> Vec<(Value, Option<Value>)> {
            store.read(|s| {
                s.changes_since(0, 100)
                    .unwrap()
                    .iter()
                    .map(|c| ((*c.object()).clone(), c.previous().map(|p| (*p).clone())))
                    .collect()
            })
        };
        let before = versions(&store);
        assert_eq!(store.freeze_history(Instant::now()), 0, "too recent");
        let later = Instant::now() + FREEZE_AFTER;
        // a0 and a1 whole, a2's previous; b0 is current with nothing before it.
        assert_eq!(store.freeze_history(later), 3);
        assert_eq!(versions(&store), before);
        assert_eq!(store.freeze_history(later), 0, "nothing left to freeze");
        let changes = store.read(|s| s.changes_since(0, 100).unwrap());
        let (a0, a1, a2, b0) = (&changes[0], &changes[1], &changes[2], &changes[3]);
        assert!(a0.frozen() && a1.frozen());
        let shared = |of: &Change, previous_of: &Change| {
            let (x, y) = (
                json_of(Some(&of.object)).unwrap(),
                json_of(previous_of.previous.as_ref()).unwrap(),
            );
            x.as_ptr() == y.as_ptr()
        };
        assert!(
            shared(a0, a1) && shared(a1, a2),
            "previous versions share their bytes"
        );
        assert!(
            matches!(a2.object, Version::Decoded(_)),
            "a's current version"
        );
        assert!(
            matches!(b0.object, Version::Decoded(_)),
            "b's current version"
        );
        assert_eq!(
            a0.object_json()
                .map(|j| serde_json::from_slice::<Value>(j).unwrap()),
            Some(before[0].0.clone())
        );

        // A newer version of a: a2 freezes, and a3's previous shares its bytes.
        store.write(|s| s.put("/pods", pod("a", 3)));
        let before = versions(&store);
        assert_eq!(store.freeze_history(Instant::now() + FREEZE_AFTER), 2);
        assert_eq!(versions(&store), before);
        let changes = store.read(|s| s.changes_since(0, 100).unwrap());
        assert!(shared(&changes[2], &changes[4]));
        // A deletion freezes too, its previous shared with the version it removed.
        store.write(|s| s.remove("/pods", "x", "a"));
        let before = versions(&store);
        assert_eq!(store.freeze_history(Instant::now() + FREEZE_AFTER), 2);
        assert_eq!(versions(&store), before);
        let changes = store.read(|s| s.changes_since(0, 100).unwrap());
        assert!(changes[5].frozen() && shared(&changes[4], &changes[5]));
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
