//! The scheduler of a simulated cluster: binds pending pods to nodes, as kube-scheduler does.
//!
//! It keeps an in-memory picture of nodes (allocatable, labels, taints, readiness) and of what the
//! pods bound to them request, fed incrementally from the store's change history (the way
//! kube-scheduler's informers feed its cache), so that a wake-up costs what changed, not what
//! exists. Pending pods wait in an active queue (priority, then arrival); pods that fit nowhere move
//! to an "unschedulable" set and return to the active queue when a node changes or capacity is freed,
//! as kube-scheduler's scheduling queue moves them on cluster events.
//!
//! Filtering and messages mirror the default plugins (NodeUnschedulable, TaintToleration,
//! NodeAffinity, NodeResourcesFit) and `FitError.Error()`; scoring mirrors NodeResourcesFit's
//! LeastAllocated strategy, which spreads pods over the least loaded nodes.
//! https://kubernetes.io/docs/concepts/scheduling-eviction/kube-scheduler/
//! https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/
//! https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::meta;
use crate::pods;
use crate::quantity;
use crate::store::{ChangeKind, Inner, Obj, Store, meta_str};
use crate::write::{self, WriteOptions};

/// The name pods select this scheduler by (spec.schedulerName), and its field manager.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// kube-scheduler's scoring defaults for containers without requests (schedutil.DefaultMilliCPURequest
/// and DefaultMemoryRequest): they only influence spreading, never fit.
const DEFAULT_MILLI_CPU_REQUEST: i128 = 100;
const DEFAULT_MEMORY_REQUEST: i128 = 200 * 1024 * 1024;

/// Pods decided per store lock: long enough to amortise, short enough to keep the API responsive.
const CHUNK: usize = 256;

/// How many history entries one read takes.
const CHANGES_PER_READ: usize = 4096;

/// Unschedulable pods are retried at least this often even without a cluster event, as
/// kube-scheduler flushes its unschedulable pods periodically (podMaxInUnschedulablePodsDuration).
const RESYNC: Duration = Duration::from_secs(30);

/// Well-known taints the node lifecycle controller puts on nodes.
/// https://kubernetes.io/docs/reference/labels-annotations-taints/
const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Filter reasons, worded exactly as kube-scheduler's plugins word them.
const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
const REASON_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
const REASON_TOO_MANY_PODS: &str = "Too many pods";
const REASON_CPU: &str = "Insufficient cpu";
const REASON_MEMORY: &str = "Insufficient memory";

type Key = (String, String);

/// What a pod asks of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// CPU in millicores.
    pub cpu_milli: i128,
    /// Memory in bytes.
    pub memory: i128,
    /// The same with kube-scheduler's defaults for unset requests; used for scoring only.
    pub nz_cpu_milli: i128,
    pub nz_memory: i128,
}

/// One container's request for a resource: requests, else limits (the API server defaults
/// requests to limits), in milli-units.
fn container_request(container: &Value, resource: &str) -> Option<i128> {
    container
        .pointer(&format!("/resources/requests/{resource}"))
        .or_else(|| container.pointer(&format!("/resources/limits/{resource}")))
        .and_then(quantity::json_milli)
}

fn memory_bytes(milli: i128) -> i128 {
    (milli + 999).div_euclid(1000)
}

fn container_requests(container: &Value) -> Requests {
    let cpu = container_request(container, "cpu");
    let memory = container_request(container, "memory").map(memory_bytes);
    Requests {
        cpu_milli: cpu.unwrap_or(0),
        memory: memory.unwrap_or(0),
        nz_cpu_milli: cpu.unwrap_or(DEFAULT_MILLI_CPU_REQUEST),
        nz_memory: memory.unwrap_or(DEFAULT_MEMORY_REQUEST),
    }
}

/// The pod's effective requests: the sum over containers, at least the largest init container
/// (init containers run one at a time, before the others), plus the pod overhead.
/// https://kubernetes.io/docs/concepts/workloads/pods/init-containers/#resource-sharing-within-containers
pub fn pod_requests(pod: &Value) -> Requests {
    let list = |field: &str| {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut total = Requests::default();
    for c in list("containers") {
        let r = container_requests(&c);
        total.cpu_milli += r.cpu_milli;
        total.memory += r.memory;
        total.nz_cpu_milli += r.nz_cpu_milli;
        total.nz_memory += r.nz_memory;
    }
    for c in list("initContainers") {
        let r = container_requests(&c);
        total.cpu_milli = total.cpu_milli.max(r.cpu_milli);
        total.memory = total.memory.max(r.memory);
        total.nz_cpu_milli = total.nz_cpu_milli.max(r.nz_cpu_milli);
        total.nz_memory = total.nz_memory.max(r.nz_memory);
    }
    if let Some(cpu) = pod
        .pointer("/spec/overhead/cpu")
        .and_then(quantity::json_milli)
    {
        total.cpu_milli += cpu;
        total.nz_cpu_milli += cpu;
    }
    if let Some(mem) = pod
        .pointer("/spec/overhead/memory")
        .and_then(quantity::json_milli)
    {
        total.memory += memory_bytes(mem);
        total.nz_memory += memory_bytes(mem);
    }
    total
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

/// A pod toleration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toleration {
    pub key: String,
    pub operator: String,
    pub value: String,
    pub effect: String,
}

impl Toleration {
    /// Mirrors `Toleration.ToleratesTaint` in k8s.io/api/core/v1: an empty effect or key matches
    /// any, Exists ignores the value, Equal (the default) compares it.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != taint.effect {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator.as_str() {
            "" | "Equal" => self.value == taint.value,
            "Exists" => true,
            _ => false,
        }
    }
}

fn str_field(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// What the scheduler needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub cpu_milli: i128,
    pub memory: i128,
    pub pods: i128,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub ready: bool,
    pub unschedulable: bool,
}

impl NodeInfo {
    /// Reads a Node object; allocatable falls back to capacity per resource.
    pub fn from_node(node: &Value) -> Self {
        let resource = |name: &str| {
            node.pointer(&format!("/status/allocatable/{name}"))
                .or_else(|| node.pointer(&format!("/status/capacity/{name}")))
                .and_then(quantity::json_milli)
                .unwrap_or(0)
        };
        let taints = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter()
                    .map(|t| Taint {
                        key: str_field(t, "key"),
                        value: str_field(t, "value"),
                        effect: str_field(t, "effect"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        NodeInfo {
            name: meta_str(node, "name").to_string(),
            cpu_milli: resource("cpu"),
            memory: memory_bytes(resource("memory")),
            pods: resource("pods") / 1000,
            labels: string_map(node.pointer("/metadata/labels")),
            taints,
            ready: crate::nodes::is_ready(node),
            unschedulable: node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)),
        }
    }
}

/// What the pods bound to a node take from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_milli: i128,
    pub memory: i128,
    pub nz_cpu_milli: i128,
    pub nz_memory: i128,
    pub pods: i128,
}

impl Usage {
    fn add(&mut self, r: &Requests) {
        self.cpu_milli += r.cpu_milli;
        self.memory += r.memory;
        self.nz_cpu_milli += r.nz_cpu_milli;
        self.nz_memory += r.nz_memory;
        self.pods += 1;
    }

    fn sub(&mut self, r: &Requests) {
        self.cpu_milli -= r.cpu_milli;
        self.memory -= r.memory;
        self.nz_cpu_milli -= r.nz_cpu_milli;
        self.nz_memory -= r.nz_memory;
        self.pods -= 1;
    }
}

/// The scheduling constraints of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodConstraints {
    pub requests: Requests,
    pub node_selector: BTreeMap<String, String>,
    /// requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms, if any.
    pub affinity_terms: Option<Vec<Value>>,
    pub tolerations: Vec<Toleration>,
}

impl PodConstraints {
    pub fn from_pod(pod: &Value) -> Self {
        let tolerations = pod
            .pointer("/spec/tolerations")
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter()
                    .map(|t| Toleration {
                        key: str_field(t, "key"),
                        operator: str_field(t, "operator"),
                        value: str_field(t, "value"),
                        effect: str_field(t, "effect"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        PodConstraints {
            requests: pod_requests(pod),
            node_selector: string_map(pod.pointer("/spec/nodeSelector")),
            affinity_terms: pod
                .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
                .and_then(Value::as_array)
                .cloned(),
            tolerations,
        }
    }

    fn tolerates(&self, taint: &Taint) -> bool {
        self.tolerations.iter().any(|t| t.tolerates(taint))
    }
}

/// One nodeSelectorRequirement against a node's labels (or, for matchFields, its name).
/// https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#operators
fn requirement_matches(req: &Value, value_of: &dyn Fn(&str) -> Option<String>) -> bool {
    let key = req.get("key").and_then(Value::as_str).unwrap_or("");
    let values: Vec<&str> = req
        .get("values")
        .and_then(Value::as_array)
        .map(|vs| vs.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let actual = value_of(key);
    let as_int = |s: &str| s.parse::<i64>().ok();
    match req.get("operator").and_then(Value::as_str).unwrap_or("") {
        "In" => actual.is_some_and(|a| values.contains(&a.as_str())),
        "NotIn" => actual.is_none_or(|a| !values.contains(&a.as_str())),
        "Exists" => actual.is_some(),
        "DoesNotExist" => actual.is_none(),
        "Gt" => match (
            actual.as_deref().and_then(as_int),
            values.first().and_then(|v| as_int(v)),
        ) {
            (Some(a), Some(b)) => a > b,
            _ => false,
        },
        "Lt" => match (
            actual.as_deref().and_then(as_int),
            values.first().and_then(|v| as_int(v)),
        ) {
            (Some(a), Some(b)) => a < b,
            _ => false,
        },
        _ => false,
    }
}

/// nodeSelector AND required node affinity (terms ORed; an empty term matches nothing).
fn matches_node_affinity(pod: &PodConstraints, node: &NodeInfo) -> bool {
    if pod
        .node_selector
        .iter()
        .any(|(k, v)| node.labels.get(k) != Some(v))
    {
        return false;
    }
    let Some(terms) = &pod.affinity_terms else {
        return true;
    };
    let label = |k: &str| node.labels.get(k).cloned();
    let field = |k: &str| (k == "metadata.name").then(|| node.name.clone());
    terms.iter().any(|term| {
        let exprs = term
            .get("matchExpressions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let fields = term
            .get("matchFields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        (!exprs.is_empty() || !fields.is_empty())
            && exprs.iter().all(|r| requirement_matches(r, &label))
            && fields.iter().all(|r| requirement_matches(r, &field))
    })
}

/// Why `node` cannot take the pod; empty when it can. Like kube-scheduler, the first failing
/// plugin decides (NodeUnschedulable, TaintToleration, NodeAffinity, NodeResourcesFit), and
/// NodeResourcesFit may give several reasons at once.
pub fn filter(pod: &PodConstraints, node: &NodeInfo, usage: &Usage) -> Vec<String> {
    // NodeUnschedulable: a cordoned node, unless the pod tolerates the unschedulable taint.
    let cordon = Taint {
        key: TAINT_UNSCHEDULABLE.into(),
        value: String::new(),
        effect: "NoSchedule".into(),
    };
    if node.unschedulable && !pod.tolerates(&cordon) {
        return vec![REASON_UNSCHEDULABLE.into()];
    }
    // TaintToleration: the first NoSchedule/NoExecute taint the pod does not tolerate. A node that
    // is not Ready carries node.kubernetes.io/not-ready:NoSchedule (TaintNodesByCondition).
    let not_ready = Taint {
        key: TAINT_NOT_READY.into(),
        value: String::new(),
        effect: "NoSchedule".into(),
    };
    let implicit = (!node.ready).then_some(&not_ready);
    if let Some(t) = node
        .taints
        .iter()
        .chain(implicit)
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !pod.tolerates(t))
    {
        return vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key, t.value
        )];
    }
    if !matches_node_affinity(pod, node) {
        return vec![REASON_AFFINITY.into()];
    }
    // NodeResourcesFit (fitsRequest): pod count first, then each requested resource.
    let mut reasons = vec![];
    if usage.pods + 1 > node.pods {
        reasons.push(REASON_TOO_MANY_PODS.into());
    }
    let r = &pod.requests;
    if r.cpu_milli > 0 && r.cpu_milli > node.cpu_milli - usage.cpu_milli {
        reasons.push(REASON_CPU.into());
    }
    if r.memory > 0 && r.memory > node.memory - usage.memory {
        reasons.push(REASON_MEMORY.into());
    }
    reasons
}

/// NodeResourcesFit's LeastAllocated score (0-100, CPU and memory weighted equally), in floating
/// point so that near-ties still spread. Higher is better.
pub fn score(pod: &PodConstraints, node: &NodeInfo, usage: &Usage) -> f64 {
    let part = |alloc: i128, used: i128| {
        if alloc <= 0 || used > alloc {
            0.0
        } else {
            (alloc - used) as f64 * 100.0 / alloc as f64
        }
    };
    let cpu = part(
        node.cpu_milli,
        usage.nz_cpu_milli + pod.requests.nz_cpu_milli,
    );
    let mem = part(node.memory, usage.nz_memory + pod.requests.nz_memory);
    (cpu + mem) / 2.0
}

/// The PodScheduled=False message for a pod that fits nowhere, as `FitError.Error()` builds it:
/// "0/N nodes are available: " + the histogram of reasons ("<count> <reason>", sorted as strings)
/// + ".". With no nodes at all, kube-scheduler's ErrNoNodesAvailable.
pub fn fit_error_message(total_nodes: usize, per_node: &[Vec<String>]) -> String {
    if total_nodes == 0 {
        return "no nodes available to schedule pods".to_string();
    }
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for reasons in per_node {
        for r in reasons {
            *histogram.entry(r.as_str()).or_default() += 1;
        }
    }
    let mut parts: Vec<String> = histogram
        .into_iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    parts.sort();
    let mut msg = format!("0/{total_nodes} nodes are available:");
    if !parts.is_empty() {
        msg.push_str(&format!(" {}.", parts.join(", ")));
    }
    msg
}

/// A core/v1 Event about a pod, as the scheduler and the kubelet record them.
/// https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/
#[derive(Debug, Clone)]
pub struct PodEvent<'a> {
    /// "Normal" or "Warning".
    pub type_: &'a str,
    pub reason: &'a str,
    pub message: String,
    /// What was done ("Binding", "Scheduling", ...), as events.k8s.io's action.
    pub action: &'a str,
    /// source.component and reportingComponent ("default-scheduler", "kubelet").
    pub component: &'a str,
    /// source.host (the node, for the kubelet).
    pub host: Option<&'a str>,
    /// involvedObject.fieldPath, e.g. "spec.containers{app}".
    pub field_path: Option<String>,
}

/// Creates an Event about `pod` through the regular write path (so watches and `kubectl describe`
/// see it). Failures (e.g. a namespace being deleted) are logged and otherwise ignored, as
/// client-go's event broadcaster drops events it cannot write.
pub fn record_event(inner: &mut Inner, pod: &Value, event: &PodEvent<'_>) {
    let rt = inner.registry.core("events");
    let ns = meta_str(pod, "namespace").to_string();
    let pod_name = meta_str(pod, "name");
    let now = meta::now();
    let mut involved = json!({
        "kind": "Pod",
        "namespace": ns,
        "name": pod_name,
        "uid": meta_str(pod, "uid"),
        "apiVersion": "v1",
        "resourceVersion": meta_str(pod, "resourceVersion"),
    });
    if let Some(fp) = &event.field_path {
        involved["fieldPath"] = json!(fp);
    }
    let mut source = json!({"component": event.component});
    if let Some(host) = event.host {
        source["host"] = json!(host);
    }
    let opts = WriteOptions {
        manager: event.component.to_string(),
        ..Default::default()
    };
    // client-go names events "<object>.<hex nanoseconds>"; random bits avoid collisions when
    // many events are written within one clock tick.
    for _ in 0..3 {
        let body = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{pod_name}.{:016x}", rand::random::<u64>()),
                "namespace": ns,
            },
            "involvedObject": involved,
            "reason": event.reason,
            "message": event.message,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": event.type_,
            "eventTime": null,
            "action": event.action,
            "reportingComponent": event.component,
            "reportingInstance": event.host.unwrap_or(event.component),
        });
        match write::create(inner, &rt, &ns, body, &opts) {
            Ok(_) => return,
            Err(e) if e.reason == "AlreadyExists" => continue,
            Err(e) => {
                tracing::debug!(namespace = %ns, pod = pod_name, reason = event.reason, error = %e, "event dropped");
                return;
            }
        }
    }
}

/// A pod waiting to be scheduled.
struct Pending {
    pod: Obj,
    constraints: PodConstraints,
    gated: bool,
    /// Queue order: higher priority first, then first seen (kube-scheduler's PrioritySort).
    order: (i64, u64),
}

/// The outcome of trying to schedule one pod.
enum Decision {
    Bind(String),
    Unschedulable(String),
    Gated,
}

/// The scheduler's cache and queues.
struct Scheduler {
    pods_storage: String,
    nodes_storage: String,
    cursor: u64,
    seq: u64,
    nodes: BTreeMap<String, NodeInfo>,
    /// Per node name (the node may not exist yet: pods can name one directly).
    usage: HashMap<String, Usage>,
    /// Non-terminal pods bound to a node, and what they take from it.
    bound: HashMap<Key, (String, Requests)>,
    pending: HashMap<Key, Pending>,
    active: BTreeSet<((i64, u64), Key)>,
    unschedulable: BTreeSet<((i64, u64), Key)>,
    /// A node changed or capacity was freed: unschedulable pods deserve another try.
    retry: bool,
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        meta::get_str(pod, "/status/phase"),
        Some("Succeeded" | "Failed")
    )
}

/// Whether this scheduler is responsible for `pod` (spec.schedulerName).
fn ours(pod: &Value) -> bool {
    matches!(
        meta::get_str(pod, "/spec/schedulerName"),
        None | Some("") | Some(SCHEDULER_NAME)
    )
}

/// spec.schedulingGates holds the pod back until emptied.
/// https://kubernetes.io/docs/concepts/scheduling-eviction/pod-scheduling-readiness/
fn is_gated(pod: &Value) -> bool {
    pod.pointer("/spec/schedulingGates")
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty())
}

impl Scheduler {
    fn new(store: &Store) -> Self {
        let registry = store.registry();
        Scheduler {
            pods_storage: registry.core("pods").storage.clone(),
            nodes_storage: registry.core("nodes").storage.clone(),
            cursor: 0,
            seq: 0,
            nodes: BTreeMap::new(),
            usage: HashMap::new(),
            bound: HashMap::new(),
            pending: HashMap::new(),
            active: BTreeSet::new(),
            unschedulable: BTreeSet::new(),
            retry: false,
        }
    }

    /// Rebuilds everything from a full listing (at start, and when history was compacted).
    fn relist(&mut self, store: &Store) {
        let (rv, nodes, pods) = store.read(|inner| {
            (
                inner.rv(),
                inner.list(&self.nodes_storage, None),
                inner.list(&self.pods_storage, None),
            )
        });
        self.cursor = rv;
        self.nodes.clear();
        self.usage.clear();
        self.bound.clear();
        self.pending.clear();
        self.active.clear();
        self.unschedulable.clear();
        for node in &nodes {
            self.apply_node(ChangeKind::Added, node);
        }
        for pod in &pods {
            self.apply_pod(ChangeKind::Added, pod);
        }
        self.retry = false;
    }

    /// Applies every change since the cursor to the cache and queues.
    fn drain(&mut self, store: &Store) {
        loop {
            let batch = store.read(|inner| inner.changes_since(self.cursor, CHANGES_PER_READ));
            let Some(batch) = batch else {
                tracing::debug!("scheduler: change history compacted; relisting");
                self.relist(store);
                continue;
            };
            let Some(last) = batch.last() else { return };
            self.cursor = last.rv;
            for change in &batch {
                if change.storage == self.pods_storage {
                    self.apply_pod(change.kind, &change.object());
                } else if change.storage == self.nodes_storage {
                    self.apply_node(change.kind, &change.object());
                }
            }
        }
    }

    fn apply_node(&mut self, kind: ChangeKind, node: &Value) {
        let name = meta_str(node, "name").to_string();
        if kind == ChangeKind::Deleted {
            self.nodes.remove(&name);
            return;
        }
        let info = NodeInfo::from_node(node);
        if self.nodes.get(&name) != Some(&info) {
            self.nodes.insert(name, info);
            self.retry = true;
        }
    }

    /// Records what a bound pod takes from its node (None: nothing).
    fn set_bound(&mut self, key: &Key, new: Option<(String, Requests)>) {
        let old = self.bound.remove(key);
        if old == new {
            if let Some(v) = old {
                self.bound.insert(key.clone(), v);
            }
            return;
        }
        if let Some((node, req)) = &old {
            if let Some(u) = self.usage.get_mut(node) {
                u.sub(req);
            }
            self.retry = true;
        }
        if let Some((node, req)) = new {
            self.usage.entry(node.clone()).or_default().add(&req);
            self.bound.insert(key.clone(), (node, req));
        }
    }

    fn remove_pending(&mut self, key: &Key) {
        if let Some(p) = self.pending.remove(key) {
            let entry = (p.order, key.clone());
            self.active.remove(&entry);
            self.unschedulable.remove(&entry);
        }
    }

    fn apply_pod(&mut self, kind: ChangeKind, pod: &Obj) {
        let key = crate::store::key_of(pod);
        if kind == ChangeKind::Deleted {
            self.set_bound(&key, None);
            self.remove_pending(&key);
            return;
        }
        let node = meta::get_str(pod, "/spec/nodeName").unwrap_or("");
        let terminal = is_terminal(pod);
        // Terminal pods no longer hold resources (NodeResourcesFit counts non-terminal pods only).
        let contribution =
            (!node.is_empty() && !terminal).then(|| (node.to_string(), pod_requests(pod)));
        self.set_bound(&key, contribution);
        if !node.is_empty() || terminal || meta::is_deleting(pod) || !ours(pod) {
            self.remove_pending(&key);
            return;
        }
        if let Some(p) = self.pending.get_mut(&key)
            && meta_str(&p.pod, "uid") == meta_str(pod, "uid")
            && p.pod.get("spec") == pod.get("spec")
        {
            // Only status or metadata changed (e.g. our own PodScheduled=False): the pod keeps
            // its place, so a status write never loops back into another attempt.
            p.pod = pod.clone();
            return;
        }
        self.remove_pending(&key);
        self.seq += 1;
        let priority = meta::get_i64(pod, "/spec/priority").unwrap_or(0);
        let order = (-priority, self.seq);
        self.active.insert((order, key.clone()));
        self.pending.insert(
            key,
            Pending {
                pod: pod.clone(),
                constraints: PodConstraints::from_pod(pod),
                gated: is_gated(pod),
                order,
            },
        );
    }

    /// Filters and scores every node for one pod.
    fn decide(&self, p: &Pending) -> Decision {
        if p.gated {
            return Decision::Gated;
        }
        let empty = Usage::default();
        let mut best: Option<(f64, i128, &str)> = None;
        let mut reasons = Vec::with_capacity(self.nodes.len());
        for node in self.nodes.values() {
            let usage = self.usage.get(&node.name).unwrap_or(&empty);
            let why = filter(&p.constraints, node, usage);
            if !why.is_empty() {
                reasons.push(why);
                continue;
            }
            let s = score(&p.constraints, node, usage);
            // Highest score wins; ties go to the node running fewer pods, then by name.
            let better = match best {
                None => true,
                Some((bs, bp, _)) => s > bs || (s == bs && usage.pods < bp),
            };
            if better {
                best = Some((s, usage.pods, &node.name));
            }
        }
        match best {
            Some((_, _, node)) => Decision::Bind(node.to_string()),
            None => Decision::Unschedulable(fit_error_message(self.nodes.len(), &reasons)),
        }
    }

    /// Schedules every pod in the active queue, a chunk per store lock.
    async fn schedule(&mut self, store: &Store, shutdown: &CancellationToken) {
        if self.retry {
            self.retry = false;
            let back = std::mem::take(&mut self.unschedulable);
            self.active.extend(back);
        }
        while !self.active.is_empty() && !shutdown.is_cancelled() {
            let mut binds: Vec<(Key, String, String)> = vec![];
            let mut failures: Vec<(Key, String, Decision)> = vec![];
            while binds.len() + failures.len() < CHUNK {
                let Some(entry) = self.active.pop_first() else {
                    break;
                };
                let key = entry.1.clone();
                let Some(p) = self.pending.get(&key) else {
                    continue;
                };
                let uid = meta_str(&p.pod, "uid").to_string();
                match self.decide(p) {
                    Decision::Bind(node) => {
                        // Assume the binding at once so the next pods see the capacity taken
                        // (kube-scheduler's "assume" step).
                        let req = p.constraints.requests;
                        self.remove_pending(&key);
                        self.set_bound(&key, Some((node.clone(), req)));
                        binds.push((key, uid, node));
                    }
                    other => {
                        self.unschedulable.insert(entry);
                        failures.push((key, uid, other));
                    }
                }
            }
            let failed_binds = store.write(|inner| {
                let failed: Vec<Key> = binds
                    .iter()
                    .filter(|(key, uid, node)| !bind_one(inner, &self.pods_storage, key, uid, node))
                    .map(|(key, _, _)| key.clone())
                    .collect();
                for (key, uid, decision) in &failures {
                    mark_unschedulable(inner, &self.pods_storage, key, uid, decision);
                }
                failed
            });
            for key in failed_binds {
                // The pod went away, changed identity or was bound by someone else; the change
                // history will say which. Until then it takes nothing.
                self.set_bound(&key, None);
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Binds one pod (if it is still the pod we decided for) and records the Scheduled event.
fn bind_one(inner: &mut Inner, storage: &str, key: &Key, uid: &str, node: &str) -> bool {
    let Some(pod) = inner.get(storage, &key.0, &key.1) else {
        return false;
    };
    if meta_str(&pod, "uid") != uid {
        return false;
    }
    match pods::bind(inner, &key.0, &key.1, node) {
        Ok(bound) => {
            record_event(
                inner,
                &bound,
                &PodEvent {
                    type_: "Normal",
                    reason: "Scheduled",
                    message: format!("Successfully assigned {}/{} to {node}", key.0, key.1),
                    action: "Binding",
                    component: SCHEDULER_NAME,
                    host: None,
                    field_path: None,
                },
            );
            true
        }
        Err(e) => {
            tracing::debug!(namespace = %key.0, pod = %key.1, error = %e, "bind failed");
            false
        }
    }
}

/// The PodScheduled condition a pod carries now.
fn pod_scheduled(pod: &Value) -> Option<&Value> {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "PodScheduled")
}

/// Writes PodScheduled=False (Unschedulable or SchedulingGated) and, for Unschedulable, a
/// FailedScheduling event; only when the condition differs, so status writes never feed a loop.
fn mark_unschedulable(inner: &mut Inner, storage: &str, key: &Key, uid: &str, decision: &Decision) {
    let (reason, message) = match decision {
        Decision::Unschedulable(m) => ("Unschedulable", m.as_str()),
        Decision::Gated => (
            "SchedulingGated",
            "Scheduling is blocked due to non-empty scheduling gates",
        ),
        Decision::Bind(_) => return,
    };
    let Some(pod) = inner.get(storage, &key.0, &key.1) else {
        return;
    };
    if meta_str(&pod, "uid") != uid
        || meta::get_str(&pod, "/spec/nodeName").is_some_and(|n| !n.is_empty())
        || meta::is_deleting(&pod)
    {
        return;
    }
    if let Some(c) = pod_scheduled(&pod)
        && c["status"] == "False"
        && c["reason"] == reason
        && c["message"] == message
    {
        return;
    }
    let mut new = (*pod).clone();
    pods::set_condition(
        &mut new,
        "PodScheduled",
        "False",
        Some(reason),
        Some(message),
    );
    let rt = inner.registry.core("pods");
    let opts = WriteOptions {
        manager: SCHEDULER_NAME.into(),
        subresource: Some("status".into()),
        ..Default::default()
    };
    match write::commit_update(inner, &rt, &pod, new, &opts, false) {
        Ok(updated) => {
            if matches!(decision, Decision::Unschedulable(_)) {
                record_event(
                    inner,
                    &updated,
                    &PodEvent {
                        type_: "Warning",
                        reason: "FailedScheduling",
                        message: message.to_string(),
                        action: "Scheduling",
                        component: SCHEDULER_NAME,
                        host: None,
                        field_path: None,
                    },
                );
            }
        }
        Err(e) => {
            tracing::debug!(namespace = %key.0, pod = %key.1, error = %e, "status update failed");
        }
    }
}

/// Runs the scheduler of one cluster until `shutdown` is cancelled.
///
/// Binds pending pods (no spec.nodeName, not being deleted, spec.schedulerName default-scheduler
/// or unset) to Ready, schedulable nodes whose free allocatable resources, pod count, nodeSelector,
/// node affinity and taints admit them, preferring the least allocated node. A pod that fits
/// nowhere gets PodScheduled=False, reason Unschedulable, with kube-scheduler's message, and a
/// FailedScheduling event; it is retried whenever a node changes or capacity is freed.
pub async fn run(store: Arc<Store>, shutdown: CancellationToken) {
    let mut changed = store.subscribe();
    let mut sched = Scheduler::new(&store);
    // Mark the current revision seen before listing, so no write between the two is missed.
    changed.borrow_and_update();
    sched.relist(&store);
    loop {
        sched.drain(&store);
        sched.schedule(&store, &shutdown).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
                changed.borrow_and_update();
            }
            () = tokio::time::sleep(RESYNC) => sched.retry = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeGroup;
    use std::time::Instant;

    fn node(cpu: &str, mem: &str, pods: i128) -> NodeInfo {
        NodeInfo {
            name: "n".into(),
            cpu_milli: quantity::cpu_millis(cpu).unwrap(),
            memory: quantity::units(mem).unwrap(),
            pods,
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            taints: vec![],
            ready: true,
            unschedulable: false,
        }
    }

    fn pod(spec: Value) -> PodConstraints {
        PodConstraints::from_pod(&json!({"spec": spec}))
    }

    #[test]
    fn requests_sum_containers_and_respect_init_and_defaults() {
        let p = json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                {"name": "c"},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            "overhead": {"cpu": "10m"},
        }});
        let r = pod_requests(&p);
        assert_eq!(r.cpu_milli, 2010);
        assert_eq!(r.memory, (64 << 20) + (1 << 30));
        // Container c counts the scheduler's defaults for scoring only.
        assert_eq!(r.nz_memory, (64 << 20) + (1 << 30) + DEFAULT_MEMORY_REQUEST);
        assert_eq!(
            pod_requests(&json!({"spec": {"containers": [{}]}})).cpu_milli,
            0
        );
    }

    #[test]
    fn resources_fit_and_reasons() {
        let n = node("2", "4Gi", 3);
        let small = pod(json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]}));
        assert!(filter(&small, &n, &Usage::default()).is_empty());
        let busy = Usage {
            cpu_milli: 1500,
            memory: 4 << 30,
            pods: 3,
            ..Default::default()
        };
        let big = pod(
            json!({"containers": [{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}),
        );
        assert_eq!(
            filter(&big, &n, &busy),
            ["Too many pods", "Insufficient cpu", "Insufficient memory"]
        );
        // No requests: only the pod count matters.
        let none = pod(json!({"containers": [{}]}));
        assert_eq!(filter(&none, &n, &busy), ["Too many pods"]);
        let roomy = Usage {
            pods: 1,
            cpu_milli: 2000,
            ..Default::default()
        };
        assert!(filter(&none, &n, &roomy).is_empty());
    }

    #[test]
    fn taints_tolerations_and_readiness() {
        let mut n = node("2", "4Gi", 10);
        n.taints = vec![
            Taint {
                key: "soft".into(),
                value: String::new(),
                effect: "PreferNoSchedule".into(),
            },
            Taint {
                key: "dedicated".into(),
                value: "db".into(),
                effect: "NoSchedule".into(),
            },
        ];
        let plain = pod(json!({"containers": [{}]}));
        assert_eq!(
            filter(&plain, &n, &Usage::default()),
            ["node(s) had untolerated taint {dedicated: db}"]
        );
        let tolerant = pod(
            json!({"containers": [{}], "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
        );
        assert!(filter(&tolerant, &n, &Usage::default()).is_empty());
        let wrong_value =
            pod(json!({"containers": [{}], "tolerations": [{"key": "dedicated", "value": "web"}]}));
        assert!(!filter(&wrong_value, &n, &Usage::default()).is_empty());
        let everything = pod(json!({"containers": [{}], "tolerations": [{"operator": "Exists"}]}));
        assert!(filter(&everything, &n, &Usage::default()).is_empty());
        n.taints.clear();
        n.ready = false;
        assert_eq!(
            filter(&plain, &n, &Usage::default()),
            ["node(s) had untolerated taint {node.kubernetes.io/not-ready: }"]
        );
        n.ready = true;
        n.unschedulable = true;
        assert_eq!(
            filter(&plain, &n, &Usage::default()),
            ["node(s) were unschedulable"]
        );
    }

    #[test]
    fn node_selector_and_affinity() {
        let n = node("2", "4Gi", 10);
        let sel = pod(json!({"containers": [{}], "nodeSelector": {"zone": "b"}}));
        assert_eq!(
            filter(&sel, &n, &Usage::default()),
            ["node(s) didn't match Pod's node affinity/selector"]
        );
        let ok = pod(json!({"containers": [{}], "nodeSelector": {"zone": "a"}}));
        assert!(filter(&ok, &n, &Usage::default()).is_empty());
        let affinity = |expr: Value| {
            pod(
                json!({"containers": [{}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [expr]}]}}}}),
            )
        };
        let fits = |p: &PodConstraints| filter(p, &n, &Usage::default()).is_empty();
        assert!(fits(&affinity(
            json!({"key": "zone", "operator": "In", "values": ["a", "b"]})
        )));
        assert!(!fits(&affinity(
            json!({"key": "zone", "operator": "NotIn", "values": ["a"]})
        )));
        assert!(fits(&affinity(
            json!({"key": "gpu", "operator": "DoesNotExist"})
        )));
        assert!(!fits(&affinity(
            json!({"key": "gpu", "operator": "Exists"})
        )));
    }

    #[test]
    fn messages_match_kube_scheduler() {
        let cpu = || vec!["Insufficient cpu".to_string()];
        assert_eq!(
            fit_error_message(3, &[cpu(), cpu(), cpu()]),
            "0/3 nodes are available: 3 Insufficient cpu."
        );
        let taint = vec!["node(s) had untolerated taint {key: value}".to_string()];
        let mem = vec!["Insufficient memory".to_string()];
        assert_eq!(
            fit_error_message(3, &[mem.clone(), taint, mem]),
            "0/3 nodes are available: 1 node(s) had untolerated taint {key: value}, 2 Insufficient memory."
        );
        let both = vec![
            "Insufficient cpu".to_string(),
            "Insufficient memory".to_string(),
        ];
        assert_eq!(
            fit_error_message(2, &[both.clone(), both]),
            "0/2 nodes are available: 2 Insufficient cpu, 2 Insufficient memory."
        );
        assert_eq!(
            fit_error_message(0, &[]),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn least_allocated_prefers_free_nodes() {
        let n = node("4", "8Gi", 110);
        let p = pod(
            json!({"containers": [{"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}),
        );
        let idle = score(&p, &n, &Usage::default());
        let busy = score(
            &p,
            &n,
            &Usage {
                nz_cpu_milli: 2000,
                nz_memory: 2 << 30,
                pods: 2,
                ..Default::default()
            },
        );
        assert!(idle > busy);
    }

    use crate::test_store::{create, new_store};

    fn get(store: &Store, plural: &str, ns: &str, name: &str) -> Option<Obj> {
        store.read(|inner| inner.get(&inner.registry.core(plural).storage, ns, name))
    }

    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn pod_with_cpu(name: &str, cpu: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "app", "image": "nginx:1", "resources": {"requests": {"cpu": cpu}}}]}})
    }

    fn condition(pod: &Value, type_: &str) -> Value {
        pod["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or(Value::Null)
    }

    #[tokio::test]
    async fn binds_spreads_and_reports_unschedulable() {
        let store = new_store();
        let groups = [NodeGroup {
            count: 3,
            cpu: "8".into(),
            memory: "16Gi".into(),
            pods: 110,
            labels: BTreeMap::new(),
            taints: vec![],
        }];
        for n in crate::nodes::node_objects("t", &groups, "v1.33.0") {
            create(&store, "nodes", "", n);
        }
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(store.clone(), shutdown.clone()));
        for i in 0..6 {
            create(
                &store,
                "pods",
                "default",
                pod_with_cpu(&format!("p{i}"), "1"),
            );
        }
        create(&store, "pods", "default", pod_with_cpu("huge", "100"));
        wait_for("six pods bound", || {
            (0..6).all(|i| {
                get(&store, "pods", "default", &format!("p{i}"))
                    .is_some_and(|p| p["spec"]["nodeName"].is_string())
            })
        })
        .await;
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..6 {
            let p = get(&store, "pods", "default", &format!("p{i}")).unwrap();
            *per_node
                .entry(p["spec"]["nodeName"].as_str().unwrap().to_string())
                .or_default() += 1;
            assert_eq!(condition(&p, "PodScheduled")["status"], "True");
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
        wait_for("huge marked unschedulable", || {
            get(&store, "pods", "default", "huge")
                .is_some_and(|p| condition(&p, "PodScheduled")["reason"] == "Unschedulable")
        })
        .await;
        let huge = get(&store, "pods", "default", "huge").unwrap();
        let cond = condition(&huge, "PodScheduled");
        assert_eq!(cond["status"], "False");
        assert_eq!(
            cond["message"],
            "0/3 nodes are available: 3 Insufficient cpu."
        );
        let rv = meta_str(&huge, "resourceVersion").to_string();
        // Unrelated writes must not rewrite the same condition.
        create(
            &store,
            "configmaps",
            "default",
            json!({"metadata": {"name": "poke"}}),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = get(&store, "pods", "default", "huge").unwrap();
        assert_eq!(meta_str(&again, "resourceVersion"), rv);
        // A big node added through the API (without status) becomes Ready via the kubelet's
        // ensure_node_ready; here we write that status ourselves.
        let extra = crate::nodes::ensure_node_ready(
            &json!({"metadata": {"name": "big"}, "status": {"capacity": {"cpu": "200"}}}),
        )
        .unwrap();
        create(&store, "nodes", "", extra);
        wait_for("huge bound to big", || {
            get(&store, "pods", "default", "huge").is_some_and(|p| p["spec"]["nodeName"] == "big")
        })
        .await;
        let events =
            store.read(|inner| inner.list(&inner.registry.core("events").storage, Some("default")));
        let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
        assert_eq!(
            reasons.iter().filter(|r| **r == "FailedScheduling").count(),
            1
        );
        assert_eq!(reasons.iter().filter(|r| **r == "Scheduled").count(), 7);
        let scheduled = events
            .iter()
            .find(|e| e["involvedObject"]["name"] == "huge" && e["reason"] == "Scheduled")
            .unwrap();
        assert_eq!(
            scheduled["message"],
            "Successfully assigned default/huge to big"
        );
        assert_eq!(scheduled["source"]["component"], "default-scheduler");
        assert_eq!(scheduled["involvedObject"]["uid"], huge["metadata"]["uid"]);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn pods_limit_and_taints_in_messages() {
        let store = new_store();
        let mut tainted = NodeGroup {
            count: 1,
            cpu: "8".into(),
            memory: "16Gi".into(),
            pods: 2,
            labels: BTreeMap::new(),
            taints: vec![crate::config::Taint {
                key: "key".into(),
                value: Some("value".into()),
                effect: "NoSchedule".into(),
            }],
        };
        let plain = NodeGroup {
            taints: vec![],
            ..tainted.clone()
        };
        tainted.pods = 110;
        for n in crate::nodes::node_objects("t", &[tainted, plain], "v1.33.0") {
            create(&store, "nodes", "", n);
        }
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(store.clone(), shutdown.clone()));
        for i in 0..3 {
            create(
                &store,
                "pods",
                "default",
                json!({"metadata": {"name": format!("b{i}")}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
            );
        }
        wait_for("third pod unschedulable", || {
            store.read(|inner| {
                inner
                    .list("/pods", Some("default"))
                    .iter()
                    .any(|p| condition(p, "PodScheduled")["reason"] == "Unschedulable")
            })
        })
        .await;
        let pods = store.read(|inner| inner.list("/pods", Some("default")));
        let stuck = pods
            .iter()
            .find(|p| condition(p, "PodScheduled")["reason"] == "Unschedulable")
            .unwrap();
        assert_eq!(
            condition(stuck, "PodScheduled")["message"],
            "0/2 nodes are available: 1 Too many pods, 1 node(s) had untolerated taint {key: value}."
        );
        // Deleting a bound pod frees a slot; the stuck pod is retried and bound.
        let victim = pods
            .iter()
            .find(|p| p["spec"]["nodeName"].is_string())
            .unwrap();
        store.write(|inner| {
            let rt = inner.registry.core("pods");
            // Not running under a kubelet here: force the removal.
            crate::delete::delete(
                inner,
                &rt,
                "default",
                meta_str(victim, "name"),
                &crate::delete::DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .unwrap();
        });
        let stuck_name = meta_str(stuck, "name").to_string();
        wait_for("stuck pod bound", || {
            get(&store, "pods", "default", &stuck_name)
                .is_some_and(|p| p["spec"]["nodeName"].is_string())
        })
        .await;
        shutdown.cancel();
        task.await.unwrap();
    }
}
