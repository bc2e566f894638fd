//! A pod watcher that records, in the API server's order, every state of every pod an
//! InPlaceSet owns, so that tests can check what held at each observed instant (how many pods
//! were unavailable, whether a pod's gate went False before its image changed, ...).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cafe::api::labels::{LIFECYCLE_STATE, READINESS_GATE, REVISION};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinHandle;

/// One observed state of one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Snap {
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    pub ip: Option<String>,
    /// Container images in the spec.
    pub images: Vec<String>,
    /// Container images the kubelet reports running.
    pub running: Vec<String>,
    pub restarts: Vec<i32>,
    pub container_ids: Vec<String>,
    pub cpu_requests: Vec<String>,
    pub ready: bool,
    pub containers_ready: bool,
    pub gate: Option<bool>,
    pub state: String,
    pub revision: String,
    pub deleting: bool,
    pub gone: bool,
    pub finalizers: Vec<String>,
    /// When the watcher saw this state (the test's clock).
    pub at: Instant,
}

impl Snap {
    pub fn of(pod: &Pod, gone: bool) -> Snap {
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let cond = |t: &str| {
            status
                .conditions
                .as_ref()
                .and_then(|cs| cs.iter().find(|c| c.type_ == t))
                .map(|c| c.status == "True")
        };
        let statuses = status.container_statuses.clone().unwrap_or_default();
        Snap {
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            node: spec.node_name.clone(),
            ip: status.pod_ip.clone(),
            images: spec
                .containers
                .iter()
                .map(|c| c.image.clone().unwrap_or_default())
                .collect(),
            running: statuses.iter().map(|c| c.image.clone()).collect(),
            restarts: statuses.iter().map(|c| c.restart_count).collect(),
            container_ids: statuses
                .iter()
                .map(|c| c.container_id.clone().unwrap_or_default())
                .collect(),
            cpu_requests: spec
                .containers
                .iter()
                .map(|c| {
                    c.resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get("cpu"))
                        .map(|q| q.0.clone())
                        .unwrap_or_default()
                })
                .collect(),
            ready: cond("Ready") == Some(true),
            containers_ready: cond("ContainersReady") == Some(true),
            gate: cond(READINESS_GATE),
            state: pod
                .labels()
                .get(LIFECYCLE_STATE)
                .cloned()
                .unwrap_or_default(),
            revision: pod.labels().get(REVISION).cloned().unwrap_or_default(),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            gone,
            finalizers: pod.finalizers().to_vec(),
            at: Instant::now(),
        }
    }

    /// Serving traffic: Ready (which includes the gate), the gate True, not terminating.
    pub fn serving(&self) -> bool {
        self.ready && self.gate == Some(true) && !self.deleting && !self.gone
    }
}

/// A pod that serves traffic: Ready (the gate included), the gate True, back in Normal, not
/// terminating.
pub fn serving(pod: &Pod) -> bool {
    let s = Snap::of(pod, false);
    s.serving() && s.state == "Normal"
}

/// Records pods carrying the revision label in one namespace of one cluster.
pub struct Timeline {
    log: Arc<Mutex<Vec<Snap>>>,
    task: JoinHandle<()>,
}

impl Timeline {
    /// Starts watching; returns once the initial list is recorded.
    pub async fn start(client: kube::Client, namespace: &str) -> Timeline {
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let log = Arc::new(Mutex::new(vec![]));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut events = watcher(api, watcher::Config::default().labels(REVISION))
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                let mut log = sink.lock().unwrap();
                match event {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                        log.push(Snap::of(&p, false))
                    }
                    watcher::Event::Delete(p) => log.push(Snap::of(&p, true)),
                    watcher::Event::InitDone => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    watcher::Event::Init => {}
                }
            }
        });
        ready_rx.await.expect("the pod watch lists");
        Timeline { log, task }
    }

    pub fn snaps(&self) -> Vec<Snap> {
        self.log.lock().unwrap().clone()
    }

    /// The most pods not serving at any observed instant, counted against `replicas`, from the
    /// first instant at which `replicas` pods served (before that the pods were starting up).
    pub fn max_unavailable(&self, replicas: usize) -> usize {
        let mut now: BTreeMap<String, Snap> = BTreeMap::new();
        let mut started = false;
        let mut worst = 0;
        for s in self.snaps() {
            if s.gone {
                now.remove(&s.uid);
            } else {
                now.insert(s.uid.clone(), s);
            }
            let serving = now.values().filter(|s| s.serving()).count();
            started |= serving >= replicas;
            if started {
                worst = worst.max(replicas.saturating_sub(serving));
            }
        }
        worst
    }

    /// The pods at the first instant with the most pods not serving (for failure messages).
    pub fn worst_instant(&self, replicas: usize) -> Vec<Snap> {
        let mut now: BTreeMap<String, Snap> = BTreeMap::new();
        let mut started = false;
        let mut worst = (0, vec![]);
        for s in self.snaps() {
            if s.gone {
                now.remove(&s.uid);
            } else {
                now.insert(s.uid.clone(), s);
            }
            let serving = now.values().filter(|s| s.serving()).count();
            started |= serving >= replicas;
            let down = replicas.saturating_sub(serving);
            if started && down > worst.0 {
                worst = (down, now.values().cloned().collect());
            }
        }
        worst.1
    }

    /// Every recorded state of one pod, in order.
    pub fn history(&self, uid: &str) -> Vec<Snap> {
        self.snaps().into_iter().filter(|s| s.uid == uid).collect()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// Checks the in-place upgrade of one pod from `old` to `new` image: the pod left service
/// (gate False, Ready False) before its image changed; it never served between the image
/// change and the kubelet running the new image; it restarted exactly once; it serves again at
/// the end. Returns a description of the first violation.
pub fn check_in_place(history: &[Snap], old: &str, new: &str) -> Result<(), String> {
    let first = history.first().ok_or("no history")?;
    let name = &first.name;
    let changed = history
        .iter()
        .position(|s| s.images.iter().any(|i| i == new))
        .ok_or(format!("{name}: image never changed to {new}"))?;
    if changed == 0 {
        return Err(format!("{name}: first seen already on {new}"));
    }
    let before = &history[changed - 1];
    if before.ready || before.gate != Some(false) {
        return Err(format!(
            "{name}: image changed while Ready={} gate={:?}",
            before.ready, before.gate
        ));
    }
    if !before.images.iter().all(|i| i == old) {
        return Err(format!("{name}: unexpected images {:?}", before.images));
    }
    let restarts_before = before.restarts.clone();
    for s in &history[changed..] {
        if s.serving() && !(s.running.iter().all(|i| i == new)) {
            return Err(format!(
                "{name}: served while still running {:?}",
                s.running
            ));
        }
    }
    let last = history.last().ok_or("no history")?;
    if !last.serving() {
        return Err(format!("{name}: not serving at the end: {last:?}"));
    }
    let expected: Vec<i32> = restarts_before.iter().map(|r| r + 1).collect();
    if last.restarts != expected {
        return Err(format!(
            "{name}: restart counts {:?} -> {:?}, expected {expected:?}",
            restarts_before, last.restarts
        ));
    }
    for s in history {
        if (s.node.is_some() && s.node != last.node) || (s.ip.is_some() && s.ip != last.ip) {
            return Err(format!("{name}: node or IP changed: {s:?}"));
        }
    }
    Ok(())
}
