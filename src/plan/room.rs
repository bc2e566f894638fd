//! Room: how many more pods of a template a member's nodes can take, judged node by node as
//! the scheduler's filters would (resource requests and the node's pod slots, nodeSelector,
//! required node affinity, taints and tolerations), so that two nodes with 1 free CPU each do
//! not take a 2-CPU pod. Cluster totals cannot see that fragmentation.
//!
//! Pure. The member agent keeps lean copies of its nodes and pods ([`NodeFacts`], [`PodFacts`])
//! and publishes the room of each InPlaceSet's template and a summary of its cluster
//! ([`summary`]); the hub reads those and never lists a member's pods or nodes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelector, NodeSelectorRequirement, Pod, PodSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use sha2::{Digest, Sha256};

use crate::api::{Capacity, FreeNodes, Resources};

/// At most this many distinct free shapes in a cluster summary: the largest are kept, so the
/// summary can only understate the room.
pub const SUMMARY_SHAPES: usize = 64;

/// What room needs of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// NoSchedule and NoExecute taints (PreferNoSchedule never keeps a pod off).
    pub taints: Vec<NodeTaint>,
    pub allocatable: Resources,
    /// Ready and not cordoned.
    pub usable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTaint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl NodeFacts {
    pub fn of(node: &Node) -> NodeFacts {
        let status = node.status.as_ref();
        let pick = |key: &str| {
            status
                .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
                .and_then(|m| m.get(key))
        };
        NodeFacts {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .map(|t| NodeTaint {
                    key: t.key.clone(),
                    value: t.value.clone().unwrap_or_default(),
                    effect: t.effect.clone(),
                })
                .collect(),
            allocatable: Resources {
                cpu_millis: pick("cpu").map_or(0, cpu_millis),
                memory_bytes: pick("memory").map_or(0, bytes),
                pods: pick("pods").map_or(0, bytes),
            },
            usable: is_usable(node),
        }
    }
}

/// A pod as room sees it: the node it holds room on and what it requests there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub node: String,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl PodFacts {
    /// `None` for a pod that holds no room: not bound yet, or Succeeded/Failed.
    pub fn of(pod: &Pod) -> Option<PodFacts> {
        let node = pod.spec.as_ref()?.node_name.clone()?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            return None;
        }
        let (cpu_millis, memory_bytes) = pod_requests(pod);
        Some(PodFacts {
            node,
            cpu_millis,
            memory_bytes,
        })
    }
}

/// At most this many templates' room in a cluster summary ([`Capacity::templates`]).
pub const SUMMARY_TEMPLATES: usize = 256;

/// What one more pod of a template asks of a node.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Demand {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub node_selector: BTreeMap<String, String>,
    pub affinity: Option<NodeSelector>,
    pub tolerations: Vec<Toleration>,
}

impl Demand {
    pub fn of(spec: &PodSpec) -> Demand {
        let (cpu_millis, memory_bytes) = spec_requests(spec);
        Demand {
            cpu_millis,
            memory_bytes,
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            affinity: spec
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .clone()
                }),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
        }
    }

    /// A short name for what the demand asks, the same wherever it is computed (the hub from a
    /// CafeDeployment's template, an agent from an InPlaceSet's): templates that ask the same of
    /// a node share it. The first 8 bytes of the SHA-256 of its JSON, in hex.
    pub fn key(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        Sha256::digest(json.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether the scheduler's filters other than resources let the pod onto `node`.
    fn admits(&self, node: &NodeFacts) -> bool {
        node.usable
            && self
                .node_selector
                .iter()
                .all(|(k, v)| node.labels.get(k) == Some(v))
            && self
                .affinity
                .as_ref()
                .is_none_or(|a| matches_node_selector(a, node))
            && node
                .taints
                .iter()
                .all(|t| self.tolerations.iter().any(|tol| tolerates(tol, t)))
    }
}

/// Each usable node and what is free on it once the bound pods' requests are taken away.
pub fn free_by_node<'a>(
    nodes: impl IntoIterator<Item = &'a NodeFacts>,
    pods: impl IntoIterator<Item = &'a PodFacts>,
) -> Vec<(&'a NodeFacts, Resources)> {
    let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
    for pod in pods {
        let u = used.entry(pod.node.as_str()).or_default();
        u.cpu_millis = u.cpu_millis.saturating_add(pod.cpu_millis);
        u.memory_bytes = u.memory_bytes.saturating_add(pod.memory_bytes);
        u.pods = u.pods.saturating_add(1);
    }
    nodes
        .into_iter()
        .filter(|n| n.usable)
        .map(|n| {
            let u = used.get(n.name.as_str()).cloned().unwrap_or_default();
            let free = Resources {
                cpu_millis: (n.allocatable.cpu_millis - u.cpu_millis).max(0),
                memory_bytes: (n.allocatable.memory_bytes - u.memory_bytes).max(0),
                pods: (n.allocatable.pods - u.pods).max(0),
            };
            (n, free)
        })
        .collect()
}

/// How many more pods of `demand` the nodes take, each node counted on its own.
pub fn room(free: &[(&NodeFacts, Resources)], demand: &Demand) -> i32 {
    let n: i64 = free
        .iter()
        .filter(|(node, _)| demand.admits(node))
        .map(|(_, f)| fits(f, demand.cpu_millis, demand.memory_bytes))
        .fold(0i64, i64::saturating_add);
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Pods of (cpu, memory) one node's free resources take.
fn fits(free: &Resources, cpu: i64, memory: i64) -> i64 {
    let by = |free: i64, each: i64| if each > 0 { free / each } else { i64::MAX };
    by(free.cpu_millis, cpu)
        .min(by(free.memory_bytes, memory))
        .min(free.pods)
}

/// The cluster as the hub sees it: usable nodes, their allocatable and requested resources, and
/// the free shapes of the untainted ones (for a template with no InPlaceSet there yet, whose
/// selectors and tolerations the agent does not know: tainted nodes are left out, so the
/// summary errs low).
pub fn summary(free: &[(&NodeFacts, Resources)]) -> Capacity {
    let mut allocatable = Resources::default();
    let mut requested = Resources::default();
    let mut shapes: BTreeMap<(i64, i64, i64), i32> = BTreeMap::new();
    for (node, f) in free {
        let a = &node.allocatable;
        allocatable.cpu_millis += a.cpu_millis;
        allocatable.memory_bytes += a.memory_bytes;
        allocatable.pods += a.pods;
        requested.cpu_millis += a.cpu_millis - f.cpu_millis;
        requested.memory_bytes += a.memory_bytes - f.memory_bytes;
        requested.pods += a.pods - f.pods;
        if node.taints.is_empty() && f.pods > 0 {
            *shapes
                .entry((f.cpu_millis, f.memory_bytes, f.pods))
                .or_default() += 1;
        }
    }
    // Largest first; beyond the cap, the smallest go.
    let mut free_nodes: Vec<FreeNodes> = shapes
        .into_iter()
        .rev()
        .map(|((cpu_millis, memory_bytes, pods), nodes)| FreeNodes {
            cpu_millis,
            memory_bytes,
            pods,
            nodes,
        })
        .collect();
    free_nodes.truncate(SUMMARY_SHAPES);
    Capacity {
        nodes: i32::try_from(free.len()).unwrap_or(i32::MAX),
        allocatable,
        requested,
        free: free_nodes,
        templates: BTreeMap::new(),
    }
}

/// The summary with the room of each of `demands` (by key; the first [`SUMMARY_TEMPLATES`]).
pub fn summary_with_templates(
    free: &[(&NodeFacts, Resources)],
    demands: &BTreeMap<String, Demand>,
) -> Capacity {
    let mut capacity = summary(free);
    capacity.templates = demands
        .iter()
        .take(SUMMARY_TEMPLATES)
        .map(|(key, demand)| (key.clone(), room(free, demand)))
        .collect();
    capacity
}

/// How many more pods requesting `(cpu_millis, memory_bytes)` fit on the untainted nodes of a
/// cluster summary, node by node.
pub fn room_in(capacity: &Capacity, (cpu, memory): (i64, i64)) -> i32 {
    let n = capacity
        .free
        .iter()
        .map(|shape| {
            let free = Resources {
                cpu_millis: shape.cpu_millis,
                memory_bytes: shape.memory_bytes,
                pods: shape.pods,
            };
            fits(&free, cpu, memory).saturating_mul(i64::from(shape.nodes))
        })
        .fold(0i64, i64::saturating_add);
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Ready=True and `spec.unschedulable` unset: the scheduler's view of a node it may use.
/// https://kubernetes.io/docs/concepts/architecture/nodes/#condition
fn is_usable(node: &Node) -> bool {
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready && !cordoned
}

/// Required node affinity: the terms are ORed, a term's requirements ANDed; an empty term
/// matches nothing.
/// https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#node-affinity
fn matches_node_selector(selector: &NodeSelector, node: &NodeFacts) -> bool {
    selector.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        (!expressions.is_empty() || !fields.is_empty())
            && expressions
                .iter()
                .all(|r| requirement_holds(r, node.labels.get(&r.key).map(String::as_str)))
            && fields.iter().all(|r| {
                let value = (r.key == "metadata.name").then_some(node.name.as_str());
                requirement_holds(r, value)
            })
    })
}

fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |v: &str| v.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

/// https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/
fn tolerates(toleration: &Toleration, taint: &NodeTaint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => key == taint.key && toleration.value.as_deref().unwrap_or_default() == taint.value,
    }
}

/// The pod's effective request: the larger of the sum of its containers and its largest init
/// container, plus overhead.
/// https://kubernetes.io/docs/concepts/workloads/pods/init-containers/#resource-sharing-within-containers
fn pod_requests(pod: &Pod) -> (i64, i64) {
    pod.spec.as_ref().map_or((0, 0), spec_requests)
}

/// What one pod of `spec` requests: (CPU millis, memory bytes), as [`pod_requests`] counts it.
pub fn spec_requests(spec: &k8s_openapi::api::core::v1::PodSpec) -> (i64, i64) {
    let of = |c: &Container, key: &str| -> Option<Quantity> {
        let r = c.resources.as_ref()?;
        r.requests
            .as_ref()
            .and_then(|m| m.get(key))
            .or_else(|| r.limits.as_ref().and_then(|m| m.get(key)))
            .cloned()
    };
    let sum = |key: &str, f: fn(&Quantity) -> i64| -> i64 {
        spec.containers
            .iter()
            .filter_map(|c| of(c, key))
            .map(|q| f(&q))
            .sum()
    };
    let init_max = |key: &str, f: fn(&Quantity) -> i64| -> i64 {
        spec.init_containers
            .iter()
            .flatten()
            .filter_map(|c| of(c, key))
            .map(|q| f(&q))
            .max()
            .unwrap_or(0)
    };
    let overhead = |key: &str, f: fn(&Quantity) -> i64| -> i64 {
        spec.overhead.as_ref().and_then(|m| m.get(key)).map_or(0, f)
    };
    (
        sum("cpu", cpu_millis).max(init_max("cpu", cpu_millis)) + overhead("cpu", cpu_millis),
        sum("memory", bytes).max(init_max("memory", bytes)) + overhead("memory", bytes),
    )
}

// Quantities parse with cafe-base's parser, which follows
// https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/ ; an unparsable
// quantity counts as zero rather than failing the whole estimate.
fn cpu_millis(q: &Quantity) -> i64 {
    cafe_base::quantity::cpu_millis(&q.0)
        .ok()
        .and_then(|v| i64::try_from(v).ok())
        .unwrap_or(0)
}

fn bytes(q: &Quantity) -> i64 {
    cafe_base::quantity::units(&q.0)
        .ok()
        .and_then(|v| i64::try_from(v).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ready: bool, cordoned: bool, cpu: &str, memory: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"disk": "ssd", "rack": "3"}},
            "spec": {"unschedulable": cordoned},
            "status": {
                "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
            },
        }))
        .unwrap()
    }

    fn pod(node: Option<&str>, phase: &str, cpu: &str, memory: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "nodeName": node,
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": cpu, "memory": memory}}},
                    {"name": "b", "resources": {"requests": {"cpu": "100m"}}},
                ],
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            },
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn demand(spec: serde_json::Value) -> Demand {
        Demand::of(&serde_json::from_value(spec).unwrap())
    }

    fn two_cpu() -> serde_json::Value {
        json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}]})
    }

    #[test]
    fn the_summary_counts_usable_nodes_and_the_pods_bound_there() {
        let nodes: Vec<NodeFacts> = [
            node("n1", true, false, "8", "16Gi"),
            node("n2", true, false, "4", "8Gi"),
            node("n3", false, false, "8", "16Gi"),
            node("n4", true, true, "8", "16Gi"),
        ]
        .iter()
        .map(NodeFacts::of)
        .collect();
        let pods: Vec<PodFacts> = [
            pod(Some("n1"), "Running", "500m", "1Gi"),
            pod(Some("n2"), "Pending", "250m", "512Mi"),
            pod(Some("n1"), "Succeeded", "1", "1Gi"),
            pod(Some("n3"), "Running", "1", "1Gi"),
            pod(None, "Pending", "1", "1Gi"),
        ]
        .iter()
        .filter_map(PodFacts::of)
        .collect();
        let c = summary(&free_by_node(&nodes, &pods));
        assert_eq!(c.nodes, 2);
        assert_eq!(c.allocatable.cpu_millis, 12_000);
        assert_eq!(c.allocatable.memory_bytes, 24 << 30);
        assert_eq!(c.allocatable.pods, 220);
        // Init container (2 CPU) outweighs 500m + 100m; 250m + 100m stays below it too.
        assert_eq!(c.requested.cpu_millis, 4_000);
        assert_eq!(c.requested.memory_bytes, (1 << 30) + (512 << 20));
        assert_eq!(c.requested.pods, 2);
        // n1: 6 CPU, 15Gi free; n2: 2 CPU, 7.5Gi free.
        assert_eq!(c.free.len(), 2);
        assert_eq!(room_in(&c, (2_000, 1 << 30)), 3 + 1);
    }

    fn two_nodes_of_two_cpus() -> Vec<NodeFacts> {
        [
            node("n1", true, false, "2", "8Gi"),
            node("n2", true, false, "2", "8Gi"),
        ]
        .iter()
        .map(NodeFacts::of)
        .collect()
    }

    fn one_cpu_used_on_each() -> Vec<PodFacts> {
        ["n1", "n2"]
            .map(|n| PodFacts {
                node: n.into(),
                cpu_millis: 1000,
                memory_bytes: 0,
            })
            .into()
    }

    #[test]
    fn two_nodes_with_one_free_cpu_each_take_no_two_cpu_pod() {
        let nodes = two_nodes_of_two_cpus();
        let one_cpu =
            json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]});
        let used = one_cpu_used_on_each();
        let free = free_by_node(&nodes, &used);
        let c = summary(&free);
        // Two CPUs free in the cluster, one on each node.
        assert_eq!(c.allocatable.cpu_millis - c.requested.cpu_millis, 2_000);
        assert_eq!(room(&free, &demand(two_cpu())), 0);
        assert_eq!(room_in(&c, (2_000, 1 << 30)), 0);
        assert_eq!(room(&free, &demand(one_cpu)), 2);
    }

    #[test]
    fn templates_that_ask_the_same_share_a_key_and_each_gets_its_room() {
        let nodes = two_nodes_of_two_cpus();
        let used = one_cpu_used_on_each();
        let free = free_by_node(&nodes, &used);
        // Same requests under another image and name: what a node is asked is the same.
        let same = json!({"containers": [{"name": "b", "image": "x:2", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}]});
        assert_eq!(demand(two_cpu()).key(), demand(same).key());
        let one_cpu =
            demand(json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}));
        let on_ssd = demand(json!({
            "nodeSelector": {"disk": "hdd"},
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}],
        }));
        assert_ne!(one_cpu.key(), demand(two_cpu()).key());
        assert_ne!(one_cpu.key(), on_ssd.key());
        let demands = BTreeMap::from([
            (demand(two_cpu()).key(), demand(two_cpu())),
            (one_cpu.key(), one_cpu.clone()),
            (on_ssd.key(), on_ssd.clone()),
        ]);
        let c = summary_with_templates(&free, &demands);
        assert_eq!(
            c.templates[&demand(two_cpu()).key()],
            0,
            "1 CPU free on each node"
        );
        assert_eq!(c.templates[&one_cpu.key()], 2);
        assert_eq!(c.templates[&on_ssd.key()], 0, "no node has disk=hdd");
    }

    #[test]
    fn selectors_affinity_and_taints_keep_pods_off_nodes() {
        let mut tainted = node("n2", true, false, "8", "16Gi");
        tainted.spec.as_mut().unwrap().taints = Some(vec![
            serde_json::from_value(
                json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"}),
            )
            .unwrap(),
            serde_json::from_value(json!({"key": "soft", "effect": "PreferNoSchedule"})).unwrap(),
        ]);
        let mut other = node("n3", true, false, "8", "16Gi");
        other.metadata.labels = Some([("disk".to_string(), "hdd".to_string())].into());
        let nodes: Vec<NodeFacts> = [node("n1", true, false, "8", "16Gi"), tainted, other]
            .iter()
            .map(NodeFacts::of)
            .collect();
        let free = free_by_node(&nodes, &[]);
        let with = |extra: serde_json::Value| {
            let mut spec = two_cpu();
            for (k, v) in extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            room(&free, &demand(spec))
        };
        // n1 and n3 (4 each); n2's NoSchedule taint keeps it off.
        assert_eq!(with(json!({})), 8);
        assert_eq!(
            with(
                json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]})
            ),
            12
        );
        assert_eq!(with(json!({"tolerations": [{"operator": "Exists"}]})), 12);
        assert_eq!(
            with(json!({"tolerations": [{"key": "dedicated", "value": "web"}]})),
            8
        );
        assert_eq!(with(json!({"nodeSelector": {"disk": "ssd"}})), 4);
        let affinity = |op: &str, values: serde_json::Value| {
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": op, "values": values}]}]
            }}}})
        };
        assert_eq!(with(affinity("In", json!(["hdd"]))), 4);
        assert_eq!(with(affinity("NotIn", json!(["hdd"]))), 4);
        assert_eq!(with(affinity("Exists", json!(null))), 8);
        assert_eq!(with(affinity("DoesNotExist", json!(null))), 0);
        let rack = |op: &str, v: &str| {
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "rack", "operator": op, "values": [v]}]}]
            }}}})
        };
        assert_eq!(with(rack("Gt", "2")), 4);
        assert_eq!(with(rack("Lt", "2")), 0);
        let by_name = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n3"]}]}]
        }}}});
        assert_eq!(with(by_name), 4);
    }

    #[test]
    fn a_summary_keeps_the_largest_shapes_and_never_overstates() {
        let nodes: Vec<NodeFacts> = (0..100)
            .map(|i| {
                NodeFacts::of(&node(
                    &format!("n{i}"),
                    true,
                    false,
                    &format!("{}m", 1000 + i * 10),
                    "16Gi",
                ))
            })
            .collect();
        let free = free_by_node(&nodes, &[]);
        let c = summary(&free);
        assert_eq!(c.free.len(), SUMMARY_SHAPES);
        assert_eq!(c.free[0].cpu_millis, 1990);
        let exact = room(
            &free,
            &Demand {
                cpu_millis: 1000,
                ..Demand::default()
            },
        );
        assert!(room_in(&c, (1000, 0)) <= exact);
    }
}
