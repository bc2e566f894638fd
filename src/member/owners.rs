//! The pods of each InPlaceSet, by the uid of their controller, so a reconcile reads the pods
//! it owns without scanning every pod the agent caches. Kept in step with the pod cache by the
//! same watch events.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::cached::CachedPod;

#[derive(Clone, Default)]
pub struct OwnerIndex(Arc<RwLock<Index>>);

#[derive(Default)]
struct Index {
    by_owner: HashMap<String, HashSet<ObjectRef<CachedPod>>>,
    owner_of: HashMap<ObjectRef<CachedPod>, String>,
    /// Built during a relist, swapped in at its end.
    next: Option<Box<Index>>,
}

impl Index {
    fn put(&mut self, pod: &CachedPod) {
        let key = ObjectRef::from_obj(pod);
        self.remove(&key);
        if let Some(owner) = controller_uid(pod) {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
            self.owner_of.insert(key, owner);
        }
    }

    fn remove(&mut self, key: &ObjectRef<CachedPod>) {
        if let Some(owner) = self.owner_of.remove(key)
            && let Some(set) = self.by_owner.get_mut(&owner)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }
}

fn controller_uid(pod: &CachedPod) -> Option<String> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

impl OwnerIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one pod watch event.
    pub fn observe(&self, event: &watcher::Event<CachedPod>) {
        let mut index = self.write();
        match event {
            watcher::Event::Init => index.next = Some(Box::default()),
            watcher::Event::InitApply(pod) => index.next.get_or_insert_with(Box::default).put(pod),
            watcher::Event::InitDone => {
                let next = index.next.take().unwrap_or_default();
                *index = *next;
            }
            watcher::Event::Apply(pod) => index.put(pod),
            watcher::Event::Delete(pod) => index.remove(&ObjectRef::from_obj(pod)),
        }
    }

    /// The cached pods whose controller has uid `owner`.
    pub fn pods_of(&self, owner: &str, cache: &Store<CachedPod>) -> Vec<Arc<CachedPod>> {
        let index = self.0.read().unwrap_or_else(|e| e.into_inner());
        index
            .by_owner
            .get(owner)
            .into_iter()
            .flatten()
            .filter_map(|key| cache.get(key))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, owner: Option<&str>) -> CachedPod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": name,
                "ownerReferences": owner.map(|o| vec![json!({"apiVersion": "apps.cafe.io/v1alpha1",
                    "kind": "InPlaceSet", "name": "s", "uid": o, "controller": true})])},
        }))
        .unwrap()
    }

    fn names(index: &OwnerIndex, owner: &str) -> Vec<String> {
        let r = index.0.read().unwrap();
        let mut v: Vec<String> = r
            .by_owner
            .get(owner)
            .into_iter()
            .flatten()
            .map(|k| k.name.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn pods_follow_their_controller_through_events_and_relists() {
        let index = OwnerIndex::default();
        index.observe(&watcher::Event::Apply(pod("a", Some("s1"))));
        index.observe(&watcher::Event::Apply(pod("b", Some("s1"))));
        index.observe(&watcher::Event::Apply(pod("c", Some("s2"))));
        assert_eq!(names(&index, "s1"), ["a", "b"]);
        // Released: no controller any more.
        index.observe(&watcher::Event::Apply(pod("b", None)));
        assert_eq!(names(&index, "s1"), ["a"]);
        index.observe(&watcher::Event::Delete(pod("a", Some("s1"))));
        assert!(names(&index, "s1").is_empty());
        // A relist replaces everything at its end.
        index.observe(&watcher::Event::Init);
        index.observe(&watcher::Event::InitApply(pod("d", Some("s1"))));
        assert_eq!(
            names(&index, "s2"),
            ["c"],
            "the old view holds until the relist is done"
        );
        index.observe(&watcher::Event::InitDone);
        assert_eq!(names(&index, "s1"), ["d"]);
        assert!(names(&index, "s2").is_empty());
    }
}
