//! Room measured where the pods are. The agent keeps a lean copy of its cluster's nodes and of
//! every pod bound to one (name, labels, taints, allocatable; node and requests: nothing else
//! is kept, so memory follows the pod count at ~150 bytes a pod), and from it publishes
//!
//! in ConfigMap `cafe-system/cafe-member-room` (key `capacity`), at most every [`REFRESH`] and
//! only when it changed:
//!
//! - for each template the InPlaceSets run, by its demand key, how many more pods of it fit,
//!   node by node (`templates`);
//! - for the cluster: usable nodes, allocatable and requested resources, and the free shapes of
//!   the untainted nodes, for the hub to place a template that has no InPlaceSet here yet.
//!
//! One object, whatever the number of InPlaceSets: thousands of sets share a handful of
//! templates' demands, and a pod landing changes the room of every one of them. (Room kept in
//! each InPlaceSet's status had the agent rewrite every status every 2 s while pods landed, and
//! the hub reconcile every CafeDeployment for it: with 10,000 sets, nothing else got done.)
//!
//! The hub reads it at each probe and never lists or watches a member's pods or nodes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::labels::{MEMBER_MANAGER, ROOM_CONFIGMAP, ROOM_KEY, SYSTEM_NAMESPACE};
use crate::api::{Capacity, InPlaceSet, Resources};
use crate::plan::room::{self, Demand, NodeFacts, PodFacts};
use crate::runtime::leader::Leadership;
use crate::runtime::readiness::Readiness;

/// Readiness names of the two watches.
pub const NODES_WATCH: &str = "nodes";
pub const BOUND_PODS_WATCH: &str = "bound pods";
/// How often changed room is published at most: pods land many times a second during a
/// scale-out, and the hub decides on room in seconds, not milliseconds.
pub const REFRESH: Duration = Duration::from_secs(2);

/// The lean view, shared by the watches (writers) and the InPlaceSet reconcile (reader).
#[derive(Clone, Default)]
pub struct Room(Arc<RwLock<Measured>>);

#[derive(Default)]
struct Measured {
    nodes: BTreeMap<String, NodeFacts>,
    /// Bound, unfinished pods by uid.
    pods: HashMap<String, PodFacts>,
    nodes_listed: bool,
    pods_listed: bool,
    /// Bumped on every change, so the publisher can tell whether to look.
    version: u64,
}

impl Measured {
    fn free(&self) -> Vec<(&NodeFacts, Resources)> {
        room::free_by_node(self.nodes.values(), self.pods.values())
    }

    fn listed(&self) -> bool {
        self.nodes_listed && self.pods_listed
    }
}

impl Room {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Measured> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Measured> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The cluster summary with the room of each of `demands`; `None` until both watches have
    /// listed.
    fn measure(&self, demands: &BTreeMap<String, Demand>) -> Option<Capacity> {
        let m = self.read();
        m.listed()
            .then(|| room::summary_with_templates(&m.free(), demands))
    }

    fn version(&self) -> u64 {
        self.read().version
    }

    fn node(&self, event: watcher::Event<Node>, buffer: &mut BTreeMap<String, NodeFacts>) {
        match event {
            watcher::Event::Init => buffer.clear(),
            watcher::Event::InitApply(n) => {
                let facts = NodeFacts::of(&n);
                buffer.insert(facts.name.clone(), facts);
            }
            watcher::Event::InitDone => {
                let mut m = self.write();
                m.nodes = std::mem::take(buffer);
                m.nodes_listed = true;
                m.version += 1;
            }
            watcher::Event::Apply(n) => {
                let facts = NodeFacts::of(&n);
                let mut m = self.write();
                if m.nodes.get(&facts.name) != Some(&facts) {
                    m.nodes.insert(facts.name.clone(), facts);
                    m.version += 1;
                }
            }
            watcher::Event::Delete(n) => {
                let mut m = self.write();
                if m.nodes.remove(&n.name_any()).is_some() {
                    m.version += 1;
                }
            }
        }
    }

    fn pod(&self, event: watcher::Event<Pod>, buffer: &mut HashMap<String, PodFacts>) {
        let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
        match event {
            watcher::Event::Init => buffer.clear(),
            watcher::Event::InitApply(p) => {
                if let Some(facts) = PodFacts::of(&p) {
                    buffer.insert(uid(&p), facts);
                }
            }
            watcher::Event::InitDone => {
                let mut m = self.write();
                m.pods = std::mem::take(buffer);
                m.pods.shrink_to_fit();
                m.pods_listed = true;
                m.version += 1;
            }
            watcher::Event::Apply(p) => {
                let key = uid(&p);
                let mut m = self.write();
                let changed = match PodFacts::of(&p) {
                    Some(f) if m.pods.get(&key) == Some(&f) => false,
                    Some(f) => {
                        m.pods.insert(key, f);
                        true
                    }
                    None => m.pods.remove(&key).is_some(),
                };
                if changed {
                    m.version += 1;
                }
            }
            watcher::Event::Delete(p) => {
                let mut m = self.write();
                if m.pods.remove(&uid(&p)).is_some() {
                    m.version += 1;
                }
            }
        }
    }
}

/// Watches nodes and pods into `room` until the streams end (they retry on their own).
pub async fn watch(client: Client, room: Room, readiness: Readiness) {
    readiness.register(NODES_WATCH);
    readiness.register(BOUND_PODS_WATCH);
    let nodes = {
        let (room, readiness) = (room.clone(), readiness.clone());
        let mut buffer = BTreeMap::new();
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .backoff(crate::runtime::backoff::watch_backoff())
            .for_each(move |event| {
                if let Ok(event) = event {
                    readiness.observe(NODES_WATCH, &event);
                    room.node(event, &mut buffer);
                }
                async {}
            })
    };
    let pods = {
        let mut buffer = HashMap::new();
        // Pods that hold no room yet (not bound) or any more (finished) are not needed; the
        // field selector keeps finished ones from being sent at all.
        let config =
            watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
        watcher(Api::<Pod>::all(client), config)
            .backoff(crate::runtime::backoff::watch_backoff())
            .for_each(move |event| {
                if let Ok(event) = event {
                    readiness.observe(BOUND_PODS_WATCH, &event);
                    room.pod(event, &mut buffer);
                }
                async {}
            })
    };
    futures::join!(nodes, pods);
}

/// The distinct demands of the InPlaceSets' templates, by key. Each set's key is kept per
/// generation, so a look costs one map lookup per set, not a hash of its template.
#[derive(Default)]
struct Templates {
    /// uid -> (generation, key).
    keys: HashMap<String, (Option<i64>, String)>,
    demands: BTreeMap<String, Demand>,
}

impl Templates {
    /// Brings the demands up to `sets`; whether their keys changed.
    fn update(&mut self, sets: &[Arc<InPlaceSet>]) -> bool {
        let mut keys = HashMap::with_capacity(sets.len());
        let mut demands = BTreeMap::new();
        for ips in sets {
            let uid = ips.uid().unwrap_or_default();
            let generation = ips.metadata.generation;
            let known = self
                .keys
                .get(&uid)
                .filter(|(g, _)| *g == generation)
                .map(|(_, k)| k.clone());
            let (key, fresh) = match known {
                Some(key) => (key, None),
                None => {
                    let demand = template_demand(ips);
                    (demand.key(), Some(demand))
                }
            };
            if !demands.contains_key(&key) {
                let demand = fresh
                    .or_else(|| self.demands.get(&key).cloned())
                    .unwrap_or_else(|| template_demand(ips));
                demands.insert(key.clone(), demand);
            }
            keys.insert(uid, (generation, key));
        }
        let changed = !demands.keys().eq(self.demands.keys());
        self.keys = keys;
        self.demands = demands;
        changed
    }
}

fn template_demand(ips: &InPlaceSet) -> Demand {
    ips.spec
        .template
        .spec
        .as_ref()
        .map(Demand::of)
        .unwrap_or_default()
}

/// Every [`REFRESH`], while leader, when the room or the set of templates changed: writes the
/// ConfigMap the hub reads. Runs until `shutdown`.
pub async fn publish(
    client: Client,
    room: Room,
    sets: Store<InPlaceSet>,
    leadership: Leadership,
    shutdown: CancellationToken,
) {
    let mut templates = Templates::default();
    let mut templates_version = 0u64;
    let mut seen: Option<(u64, u64)> = None;
    let mut written: Option<Capacity> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REFRESH) => {}
        }
        if !leadership.is_leader() {
            // The leader publishes; a new one starts afresh.
            seen = None;
            written = None;
            continue;
        }
        if templates.update(&sets.state()) {
            templates_version += 1;
        }
        let now = (room.version(), templates_version);
        if seen == Some(now) {
            continue;
        }
        let Some(measured) = room.measure(&templates.demands) else {
            continue;
        };
        seen = Some(now);
        if written.as_ref() == Some(&measured) {
            continue;
        }
        match write_summary(&client, &measured).await {
            Ok(()) => written = Some(measured),
            Err(e) => {
                seen = None;
                tracing::warn!(
                    error = %crate::runtime::api_cause(&e),
                    "writing ConfigMap {SYSTEM_NAMESPACE}/{ROOM_CONFIGMAP}; retried in {REFRESH:?}"
                );
            }
        }
    }
}

/// Creates or replaces the summary ConfigMap.
async fn write_summary(client: &Client, summary: &Capacity) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let data = serde_json::to_string(summary).unwrap_or_default();
    let params = PostParams {
        field_manager: Some(MEMBER_MANAGER.to_string()),
        ..PostParams::default()
    };
    match api.get_opt(ROOM_CONFIGMAP).await? {
        // Another leader may have written the same already.
        Some(cm) if cm.data.as_ref().and_then(|d| d.get(ROOM_KEY)) == Some(&data) => {}
        Some(mut cm) => {
            cm.data = Some([(ROOM_KEY.to_string(), data)].into());
            cm.metadata.managed_fields = None;
            api.replace(ROOM_CONFIGMAP, &params, &cm).await?;
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOM_CONFIGMAP.to_string()),
                    namespace: Some(SYSTEM_NAMESPACE.to_string()),
                    ..ObjectMeta::default()
                },
                data: Some([(ROOM_KEY.to_string(), data)].into()),
                ..ConfigMap::default()
            };
            api.create(&params, &cm).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(uid: &str, generation: i64, cpu: &str) -> Arc<InPlaceSet> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "apps.cafe.io/v1alpha1",
                "kind": "InPlaceSet",
                "metadata": {"name": uid, "namespace": "default", "uid": uid, "generation": generation},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": uid}},
                    "template": {
                        "metadata": {"labels": {"app": uid}},
                        "spec": {"containers": [{"name": "app", "image": format!("{uid}:1"), "resources": {"requests": {"cpu": cpu}}}]},
                    },
                },
            }))
            .unwrap(),
        )
    }

    #[test]
    fn thousands_of_sets_with_one_template_are_one_entry() {
        let mut t = Templates::default();
        let sets: Vec<Arc<InPlaceSet>> = (0..2_000)
            .map(|i| set(&format!("s{i}"), 1, "100m"))
            .collect();
        assert!(t.update(&sets), "the first look finds a template");
        assert_eq!(t.demands.len(), 1);
        assert!(!t.update(&sets), "nothing changed");
        // A set moved to another request: a second entry; gone again: back to one.
        let mut changed = sets.clone();
        changed[7] = set("s7", 2, "2");
        assert!(t.update(&changed));
        assert_eq!(t.demands.len(), 2);
        assert!(t.update(&sets[1..]));
        assert_eq!(t.demands.len(), 1);
    }
}
