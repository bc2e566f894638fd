//! The Node objects of a simulated cluster, as kubelets would register them.
//!
//! A real kubelet registers its Node and keeps its status (capacity, allocatable, conditions,
//! addresses, nodeInfo) up to date; the node IPAM controller gives it a podCIDR. The simulator plays
//! all of those roles: [`node_objects`] builds the nodes of a cluster's configuration, and
//! [`ensure_node_ready`] completes a Node someone created through the API without a status, so that
//! it becomes Ready as a freshly registered kubelet would make it.
//!
//! https://kubernetes.io/docs/reference/node/node-status/
//! https://kubernetes.io/docs/concepts/architecture/nodes/

use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::config::NodeGroup;
use crate::meta::{self, ensure_object};
use crate::quantity;

/// The kubelet version a Node created through the API reports when it has none.
pub const DEFAULT_KUBELET_VERSION: &str = "v1.33.0";

/// What the simulated container runtime calls itself (nodeInfo.containerRuntimeVersion).
pub const CONTAINER_RUNTIME_VERSION: &str = "cafe-sim://1.0";

/// Capacity of a Node created through the API without one: the configuration file's defaults.
const DEFAULT_CAPACITY: [(&str, &str); 3] = [("cpu", "8"), ("memory", "16Gi"), ("pods", "110")];

/// The first address of the range node podCIDRs are carved from (flannel's and kind's 10.244/16).
const POD_CIDR_START: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);

/// Hex SHA-256 of a string: stable identifiers (machineID, IP octets) derived from names.
pub(crate) fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sha256_bytes(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// "1.33" or "v1.33" or "v1.33.0" -> "v1.33.0": nodeInfo.kubeletVersion is a full semantic version.
fn full_version(version: &str) -> String {
    let v = version.trim().trim_start_matches('v');
    if v.is_empty() {
        return DEFAULT_KUBELET_VERSION.to_string();
    }
    if v.split('.').count() == 2 {
        format!("v{v}.0")
    } else {
        format!("v{v}")
    }
}

/// The smallest CIDR prefix (at most /24, the IPAM controller's default node mask) that holds
/// `pods` pod IPs besides the network, gateway and broadcast addresses.
fn pod_cidr_prefix(pods: u32) -> u32 {
    let needed = u64::from(pods) + 3;
    let mut prefix = 24u32;
    while prefix > 8 && (1u64 << (32 - prefix)) < needed {
        prefix -= 1;
    }
    prefix
}

/// A node's InternalIP: 172.18.<octet derived from the cluster>.<n>, spilling into 172.19, ...
/// when a cluster has more than 254 nodes, so addresses stay unique within the cluster.
fn node_ip(cluster_octet: u8, n: u32) -> Ipv4Addr {
    let idx = n.saturating_sub(1);
    let second = u8::try_from(18 + idx / 254).unwrap_or(u8::MAX);
    let fourth = u8::try_from(idx % 254 + 1).unwrap_or(1);
    Ipv4Addr::new(172, second, cluster_octet, fourth)
}

/// Canonical CPU text ("8", "1500m"), or the configured text if it does not parse.
fn canonical_cpu(text: &str) -> String {
    quantity::cpu_millis(text).map_or_else(|_| text.to_string(), quantity::format_cpu)
}

/// Canonical memory text ("16Gi"), or the configured text if it does not parse.
fn canonical_memory(text: &str) -> String {
    quantity::units(text).map_or_else(|_| text.to_string(), quantity::format_bytes)
}

/// The four node conditions a healthy kubelet reports, with its reasons and messages.
/// https://kubernetes.io/docs/reference/node/node-status/#condition
fn healthy_conditions(now: &str) -> Value {
    let cond = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_,
            "status": status,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
            "reason": reason,
            "message": message,
        })
    };
    json!([
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

/// nodeInfo as a kubelet reports it; the IDs are stable hashes of the node name.
fn node_info(name: &str, kubelet_version: &str) -> Value {
    let id = sha256_hex(name);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    );
    json!({
        "machineID": &id[0..32],
        "systemUUID": uuid,
        "bootID": &id[32..64],
        "kernelVersion": "6.8.0-cafe-sim",
        "osImage": "cafe-sim",
        "containerRuntimeVersion": CONTAINER_RUNTIME_VERSION,
        "kubeletVersion": full_version(kubelet_version),
        "operatingSystem": "linux",
        "architecture": "amd64",
    })
}

/// The Node objects for a cluster's configuration.
///
/// Nodes are named `<cluster>-node-<n>`, counting from 1 across all groups. Each carries the
/// well-known labels a kubelet sets (kubernetes.io/hostname, kubernetes.io/os, kubernetes.io/arch)
/// plus the configured ones, the configured taints, a podCIDR of its own (at least a /24, larger
/// when `pods` needs it), and a Ready status with capacity = allocatable = {cpu, memory, pods}.
/// https://kubernetes.io/docs/reference/labels-annotations-taints/
pub fn node_objects(cluster: &str, groups: &[NodeGroup], kubelet_version: &str) -> Vec<Value> {
    let cluster_octet = sha256_bytes(cluster)[0];
    let now = meta::now();
    let mut cidr_cursor = u64::from(u32::from(POD_CIDR_START));
    let mut out = vec![];
    let mut n = 0u32;
    for group in groups {
        for _ in 0..group.count {
            n += 1;
            let name = format!("{cluster}-node-{n}");
            let mut labels = Map::new();
            labels.insert("kubernetes.io/hostname".into(), json!(name));
            labels.insert("kubernetes.io/os".into(), json!("linux"));
            labels.insert("kubernetes.io/arch".into(), json!("amd64"));
            for (k, v) in &group.labels {
                labels.insert(k.clone(), json!(v));
            }
            let mut spec = Map::new();
            // Each node gets the next aligned block of the pod range, like the node IPAM
            // controller's range allocator (--node-cidr-mask-size, default /24).
            let prefix = pod_cidr_prefix(group.pods);
            let size = 1u64 << (32 - prefix);
            let base = cidr_cursor.div_ceil(size) * size;
            // Past 255.255.255.255 (absurdly many nodes) a node simply gets no podCIDR; the
            // kubelet then takes its pods' IPs from the cluster-wide fallback pool.
            if let (Ok(first), Ok(_)) = (u32::try_from(base), u32::try_from(base + size - 1)) {
                let cidr = format!("{}/{prefix}", Ipv4Addr::from(first));
                spec.insert("podCIDR".into(), json!(cidr));
                spec.insert("podCIDRs".into(), json!([cidr]));
                cidr_cursor = base + size;
            }
            spec.insert(
                "providerID".into(),
                json!(format!("cafe-sim://{cluster}/{name}")),
            );
            if !group.taints.is_empty() {
                spec.insert("taints".into(), json!(group.taints));
            }
            let resources = json!({
                "cpu": canonical_cpu(&group.cpu),
                "memory": canonical_memory(&group.memory),
                "pods": group.pods.to_string(),
            });
            let ip = node_ip(cluster_octet, n).to_string();
            out.push(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": spec,
                "status": {
                    "capacity": resources,
                    "allocatable": resources,
                    "conditions": healthy_conditions(&now),
                    "addresses": [
                        {"type": "InternalIP", "address": ip},
                        {"type": "Hostname", "address": name},
                    ],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                    "nodeInfo": node_info(&name, kubelet_version),
                },
            }));
        }
    }
    out
}

/// Whether the node reports a Ready condition at all (True or not).
fn has_ready_condition(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready"))
}

/// An InternalIP for a Node created through the API: 172.30.x.y derived from its name (the
/// configured nodes use 172.18-29, so the two never meet).
fn api_node_ip(name: &str) -> Ipv4Addr {
    let h = sha256_bytes(name);
    Ipv4Addr::new(172, 30, h[0], h[1] % 254 + 1)
}

/// The status a kubelet would post for a Node created through the API without conditions.
///
/// Returns None when the node already reports a Ready condition (the simulated kubelet never
/// overrides a status someone set on purpose, e.g. a test marking a node NotReady). Otherwise the
/// node with: capacity (defaults 8 CPU, 16Gi, 110 pods for missing entries), allocatable (each
/// missing entry = capacity), the healthy conditions (Ready=True, reason KubeletReady),
/// addresses, daemonEndpoints and nodeInfo when missing.
pub fn ensure_node_ready(node: &Value) -> Option<Value> {
    if has_ready_condition(node) {
        return None;
    }
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut out = node.clone();
    let status = ensure_object(&mut out["status"]);
    let capacity = ensure_object(status.entry("capacity").or_insert(json!({})));
    for (k, v) in DEFAULT_CAPACITY {
        capacity.entry(k).or_insert(json!(v));
    }
    let capacity = capacity.clone();
    let allocatable = ensure_object(status.entry("allocatable").or_insert(json!({})));
    for (k, v) in capacity {
        allocatable.entry(k).or_insert(v);
    }
    status.insert("conditions".into(), healthy_conditions(&meta::now()));
    let no_addresses = status
        .get("addresses")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if no_addresses {
        status.insert(
            "addresses".into(),
            json!([
                {"type": "InternalIP", "address": api_node_ip(&name).to_string()},
                {"type": "Hostname", "address": name},
            ]),
        );
    }
    status
        .entry("daemonEndpoints")
        .or_insert(json!({"kubeletEndpoint": {"Port": 10250}}));
    status
        .entry("nodeInfo")
        .or_insert_with(|| node_info(&name, DEFAULT_KUBELET_VERSION));
    Some(out)
}

/// The node's InternalIP (what pods on it report as hostIP), if it has one.
pub fn internal_ip(node: &Value) -> Option<&str> {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)?
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a.get("address"))
        .and_then(Value::as_str)
}

/// The node's Ready condition is True.
pub fn is_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Taint;
    use std::collections::{BTreeMap, HashSet};

    fn group(count: u32, pods: u32) -> NodeGroup {
        NodeGroup {
            count,
            cpu: "8".into(),
            memory: "16Gi".into(),
            pods,
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            taints: vec![],
        }
    }

    #[test]
    fn names_count_across_groups() {
        let mut tainted = group(1, 110);
        tainted.taints = vec![Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
        }];
        let nodes = node_objects("dca", &[group(2, 110), tainted], "v1.33.0");
        let names: Vec<&str> = nodes
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["dca-node-1", "dca-node-2", "dca-node-3"]);
        let n3 = &nodes[2];
        assert_eq!(n3["spec"]["taints"][0]["key"], "dedicated");
        assert_eq!(n3["spec"]["taints"][0]["effect"], "NoSchedule");
        assert!(nodes[0]["spec"].get("taints").is_none());
        let labels = &nodes[0]["metadata"]["labels"];
        assert_eq!(labels["kubernetes.io/hostname"], "dca-node-1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        assert_eq!(labels["zone"], "a");
    }

    #[test]
    fn status_is_ready_with_resources_and_info() {
        let nodes = node_objects("dca", &[group(1, 110)], "1.33");
        let s = &nodes[0]["status"];
        assert_eq!(
            s["capacity"],
            json!({"cpu": "8", "memory": "16Gi", "pods": "110"})
        );
        assert_eq!(s["allocatable"], s["capacity"]);
        assert!(is_ready(&nodes[0]));
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["reason"], "KubeletReady");
        for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert!(
                s["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["type"] == t && c["status"] == "False")
            );
        }
        assert_eq!(s["nodeInfo"]["kubeletVersion"], "v1.33.0");
        assert_eq!(s["nodeInfo"]["osImage"], "cafe-sim");
        assert_eq!(s["nodeInfo"]["containerRuntimeVersion"], "cafe-sim://1.0");
        assert_eq!(s["nodeInfo"]["architecture"], "amd64");
        assert_eq!(s["nodeInfo"]["operatingSystem"], "linux");
        assert_eq!(s["addresses"][1]["address"], "dca-node-1");
        assert!(internal_ip(&nodes[0]).unwrap().starts_with("172.18."));
    }

    #[test]
    fn addresses_and_pod_cidrs_are_unique() {
        let nodes = node_objects("dca", &[group(300, 110), group(2, 5000)], "v1.33.0");
        let ips: HashSet<&str> = nodes.iter().map(|n| internal_ip(n).unwrap()).collect();
        assert_eq!(ips.len(), 302);
        let cidrs: Vec<&str> = nodes
            .iter()
            .map(|n| n["spec"]["podCIDR"].as_str().unwrap())
            .collect();
        assert_eq!(cidrs[0], "10.244.0.0/24");
        assert_eq!(cidrs[1], "10.244.1.0/24");
        // 5000 pods need a /19, aligned after the 300 /24s.
        assert!(cidrs[300].ends_with("/19"), "{}", cidrs[300]);
        assert_eq!(cidrs.iter().collect::<HashSet<_>>().len(), 302);
        assert_eq!(pod_cidr_prefix(110), 24);
        assert_eq!(pod_cidr_prefix(253), 24);
        assert_eq!(pod_cidr_prefix(254), 23);
    }

    #[test]
    fn api_nodes_become_ready_once() {
        let bare = json!({"metadata": {"name": "extra"}, "status": {"capacity": {"cpu": "200"}}});
        let ready = ensure_node_ready(&bare).unwrap();
        assert!(is_ready(&ready));
        assert_eq!(ready["status"]["capacity"]["cpu"], "200");
        assert_eq!(ready["status"]["capacity"]["memory"], "16Gi");
        assert_eq!(ready["status"]["allocatable"]["cpu"], "200");
        assert_eq!(ready["status"]["allocatable"]["pods"], "110");
        assert!(internal_ip(&ready).unwrap().starts_with("172.30."));
        assert_eq!(
            ready["status"]["nodeInfo"]["kubeletVersion"],
            DEFAULT_KUBELET_VERSION
        );
        assert!(ensure_node_ready(&ready).is_none());
        // Someone's explicit NotReady is left alone.
        let mut not_ready = ready.clone();
        not_ready["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        assert!(ensure_node_ready(&not_ready).is_none());
        // Allocatable that was given is kept.
        let partial = json!({"metadata": {"name": "x"}, "status": {"capacity": {"cpu": "4"}, "allocatable": {"cpu": "3"}}});
        let r = ensure_node_ready(&partial).unwrap();
        assert_eq!(r["status"]["allocatable"]["cpu"], "3");
    }

    #[test]
    fn versions_are_normalised() {
        assert_eq!(full_version("1.33"), "v1.33.0");
        assert_eq!(full_version("v1.33.2"), "v1.33.2");
        assert_eq!(full_version(""), DEFAULT_KUBELET_VERSION);
    }
}
