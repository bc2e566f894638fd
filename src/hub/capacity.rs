//! A member's schedulable capacity from its Nodes and Pods: what the scheduler could still place
//! there. Pure.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::{Capacity, Resources};

/// Nodes that are Ready and not cordoned count; their allocatable is summed, and so are the
/// requests of the non-terminated pods bound to them.
pub fn capacity(nodes: &[Node], pods: &[Pod]) -> Capacity {
    let usable: Vec<&Node> = nodes.iter().filter(|n| is_usable(n)).collect();
    let names: BTreeSet<&str> = usable
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let mut allocatable = Resources::default();
    for node in &usable {
        let status = node.status.as_ref();
        let pick = |key: &str| {
            status
                .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
                .and_then(|m| m.get(key))
        };
        allocatable.cpu_millis += pick("cpu").map_or(0, cpu_millis);
        allocatable.memory_bytes += pick("memory").map_or(0, bytes);
        allocatable.pods += pick("pods").map_or(0, bytes);
    }
    let mut requested = Resources::default();
    for pod in pods.iter().filter(|p| is_active_on(p, &names)) {
        let (cpu, memory) = pod_requests(pod);
        requested.cpu_millis += cpu;
        requested.memory_bytes += memory;
        requested.pods += 1;
    }
    Capacity {
        nodes: i32::try_from(usable.len()).unwrap_or(i32::MAX),
        allocatable,
        requested,
    }
}

/// How many more pods requesting `(cpu_millis, memory_bytes)` fit in `capacity`: its free
/// CPU, memory and pod slots, summed over nodes (fragmentation across nodes is not seen, so
/// this is an upper bound the scheduler has the last word on).
pub fn room_for(capacity: &Capacity, (cpu, memory): (i64, i64)) -> i32 {
    let free = |alloc: i64, used: i64| (alloc - used).max(0);
    let fits = |free: i64, each: i64| if each > 0 { free / each } else { i64::MAX };
    let n = fits(
        free(
            capacity.allocatable.cpu_millis,
            capacity.requested.cpu_millis,
        ),
        cpu,
    )
    .min(fits(
        free(
            capacity.allocatable.memory_bytes,
            capacity.requested.memory_bytes,
        ),
        memory,
    ))
    .min(free(capacity.allocatable.pods, capacity.requested.pods));
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

/// Bound to one of `nodes` and not Succeeded/Failed: its requests still hold the node's room.
fn is_active_on(pod: &Pod, nodes: &BTreeSet<&str>) -> bool {
    let on_node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| nodes.contains(n));
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    on_node && !matches!(phase, Some("Succeeded") | Some("Failed"))
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

// Quantities parse with the simulator's parser, which follows
// https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/ ; an unparsable
// quantity counts as zero rather than failing the whole probe.
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
            "metadata": {"name": name},
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

    #[test]
    fn counts_ready_schedulable_nodes_and_their_active_pods() {
        let nodes = vec![
            node("n1", true, false, "8", "16Gi"),
            node("n2", true, false, "4", "8Gi"),
            node("n3", false, false, "8", "16Gi"),
            node("n4", true, true, "8", "16Gi"),
        ];
        let pods = vec![
            pod(Some("n1"), "Running", "500m", "1Gi"),
            pod(Some("n2"), "Pending", "250m", "512Mi"),
            pod(Some("n1"), "Succeeded", "1", "1Gi"),
            pod(Some("n3"), "Running", "1", "1Gi"),
            pod(None, "Pending", "1", "1Gi"),
        ];
        let c = capacity(&nodes, &pods);
        assert_eq!(c.nodes, 2);
        assert_eq!(c.allocatable.cpu_millis, 12_000);
        assert_eq!(c.allocatable.memory_bytes, 24 << 30);
        assert_eq!(c.allocatable.pods, 220);
        // Init container (2 CPU) outweighs 500m + 100m; 250m + 100m stays below it too.
        assert_eq!(c.requested.cpu_millis, 4_000);
        assert_eq!(c.requested.memory_bytes, (1 << 30) + (512 << 20));
        assert_eq!(c.requested.pods, 2);
    }
}
