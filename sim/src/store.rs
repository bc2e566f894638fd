//! In-memory object storage with one global resourceVersion and a bounded change history.
//!
//! Plays the role etcd plays for a real API server: every write gets the next revision, and watches
//! replay the history after a given revision. Like etcd after compaction, a revision older than the
//! kept history can no longer be watched from (the API turns that into 410 Expired).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

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
}

/// How many changes watches can resume from (etcd keeps ~5 minutes; we keep a count).
pub const DEFAULT_HISTORY: usize = 200_000;

pub struct Inner {
    rv: u64,
    pub registry: Registry,
    objects: HashMap<String, BTreeMap<ObjKey, Obj>>,
    history: VecDeque<Arc<Change>>,
    /// Changes with rv <= compacted are gone.
    compacted: u64,
    max_history: usize,
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
            ChangeKind::Added
        };
        self.record(Change {
            rv,
            storage: storage.to_string(),
            kind,
            object: obj.clone(),
            previous,
            encoded: Default::default(),
        });
        obj
    }

    /// Removes an object; the DELETED event carries a fresh resourceVersion, as etcd's does.
    pub fn remove(&mut self, storage: &str, namespace: &str, name: &str) -> Option<Obj> {
        let previous = self
            .objects
            .get_mut(storage)?
            .remove(&(namespace.to_string(), name.to_string()))?;
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
        });
        Some(gone)
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(Arc::new(change));
        while self.history.len() > self.max_history {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Changes after `rv` (exclusive), or None when that part of history was compacted away.
    pub fn changes_since(&self, rv: u64, max: usize) -> Option<Vec<Arc<Change>>> {
        if rv < self.compacted {
            return None;
        }
        let start = self.history.partition_point(|c| c.rv <= rv);
        Some(self.history.range(start..).take(max).cloned().collect())
    }

    /// Forgets all history, as `etcdctl compact` would: older revisions become 410 Expired.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
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
        Self::with_history(registry, DEFAULT_HISTORY)
    }

    pub fn with_history(registry: Registry, max_history: usize) -> Self {
        let (changed, _) = tokio::sync::watch::channel(1);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                registry,
                objects: HashMap::new(),
                history: VecDeque::new(),
                compacted: 0,
                max_history,
            }),
            changed,
        }
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

    #[test]
    fn history_compacts_to_expired() {
        let store = Store::with_history(Registry::with_builtins(), 2);
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
