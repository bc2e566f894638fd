//! Room measured where the pods are. The agent keeps a lean copy of its cluster's nodes and of
//! every pod bound to one (name, labels, taints, allocatable; node and requests: nothing else
//! is kept, so memory follows the pod count at ~150 bytes a pod), and from it publishes
//!
//! - for each InPlaceSet, `status.room`: how many more pods of its template fit, node by node
//!   (the InPlaceSet reconcile writes it with the rest of the status; this task asks for a
//!   reconcile of the sets whose room changed, at most every [`REFRESH`]);
//! - for the cluster, ConfigMap `cafe-system/cafe-member-room` (key `capacity`): usable nodes,
//!   allocatable and requested resources, and the free shapes of the untainted nodes, for the
//!   hub to place a template that has no InPlaceSet here yet.
//!
//! The hub reads both and never lists or watches a member's pods or nodes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, PodSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
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

    /// How many more pods of `spec` fit; `None` until both watches have listed.
    pub fn for_template(&self, spec: Option<&PodSpec>) -> Option<i32> {
        let m = self.read();
        if !m.listed() {
            return None;
        }
        let demand = spec.map(Demand::of).unwrap_or_default();
        Some(room::room(&m.free(), &demand))
    }

    /// The cluster summary; `None` until both watches have listed.
    pub fn summary(&self) -> Option<Capacity> {
        let m = self.read();
        m.listed().then(|| room::summary(&m.free()))
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

/// Every [`REFRESH`], when anything changed: the InPlaceSets whose `status.room` is no longer
/// true (for their reconcile to write it), and, on the leader, the cluster summary.
pub fn publish(
    client: Client,
    room: Room,
    sets: Store<InPlaceSet>,
    leadership: Leadership,
    shutdown: CancellationToken,
) -> impl Stream<Item = ObjectRef<InPlaceSet>> + Send + 'static {
    let state = (
        client,
        room,
        sets,
        leadership,
        shutdown,
        None::<u64>,
        None::<Capacity>,
    );
    futures::stream::unfold(state, |mut s| async move {
        let (client, room, sets, leadership, shutdown, seen, written) = &mut s;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            let version = room.version();
            if *seen == Some(version) || room.summary().is_none() {
                continue;
            }
            *seen = Some(version);
            if leadership.is_leader()
                && let Some(summary) = room.summary()
                && written.as_ref() != Some(&summary)
            {
                match write_summary(client, &summary).await {
                    Ok(()) => *written = Some(summary),
                    Err(e) => tracing::warn!(
                        error = %crate::runtime::api_cause(&e),
                        "writing ConfigMap {SYSTEM_NAMESPACE}/{ROOM_CONFIGMAP}; retried in {REFRESH:?}"
                    ),
                }
            }
            let stale: Vec<ObjectRef<InPlaceSet>> = sets
                .state()
                .iter()
                .filter(|ips| {
                    let now = room.for_template(ips.spec.template.spec.as_ref());
                    ips.status.as_ref().and_then(|st| st.room) != now
                })
                .map(|ips| ObjectRef::from_obj(ips.as_ref()))
                .collect();
            if !stale.is_empty() {
                return Some((futures::stream::iter(stale), s));
            }
        }
    })
    .flatten()
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
