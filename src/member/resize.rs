//! The resource rules of an in-place update: which changes to a
//! container's cpu and memory the `pods/resize` subresource accepts, the pod's QoS class it
//! must keep, and the comparison of Kubernetes quantities both need, since the API server
//! stores `0.5` and `500m` alike.
//!
//! The rules follow the API server's validation of `pods/resize` in Kubernetes 1.33 (KEP-1287,
//! <https://kubernetes.io/docs/tasks/configure-pod-container/resize-container-resources/>).
//! Everything here is pure.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The only resources a resize may change.
const RESIZABLE: [&str; 2] = ["cpu", "memory"];

/// Whether the resources of container `name` change at all (`false` when only the spelling
/// differs, e.g. `0.5` and `500m`), or why a resize cannot make the change. The rules are the
/// API server's validation of `pods/resize` in Kubernetes 1.33 (KEP-1287): only cpu and memory,
/// no request or limit removed, and no memory limit decrease unless the container restarts
/// for memory resizes.
pub(super) fn resize_allowed(
    name: &str,
    from: &ResourceRequirements,
    to: &ResourceRequirements,
    memory_restarts: bool,
) -> Result<bool, String> {
    if from.claims.as_deref().unwrap_or_default() != to.claims.as_deref().unwrap_or_default() {
        return Err(format!("container {name}: resources.claims changed"));
    }
    let (from_requests, from_limits) = effective(from);
    let (to_requests, to_limits) = effective(to);
    let mut changed: BTreeSet<&str> = changed_names(&from_requests, &to_requests);
    changed.extend(changed_names(&from_limits, &to_limits));
    if changed.is_empty() {
        return Ok(false);
    }
    let others: Vec<&str> = changed
        .into_iter()
        .filter(|r| !RESIZABLE.contains(r))
        .collect();
    if !others.is_empty() {
        return Err(format!(
            "container {name}: resources changed for {} (only cpu and memory can be resized \
             in place)",
            others.join(", ")
        ));
    }
    for (kind, before, after) in [
        ("request", &from_requests, &to_requests),
        ("limit", &from_limits, &to_limits),
    ] {
        if let Some(r) = RESIZABLE
            .iter()
            .find(|r| before.contains_key(**r) && !after.contains_key(**r))
        {
            return Err(format!(
                "container {name}: the {r} {kind} is removed, which a resize cannot do"
            ));
        }
    }
    let memory = |limits: &BTreeMap<String, Quantity>| limits.get("memory").and_then(quantity);
    if let (Some(before), Some(after)) = (memory(&from_limits), memory(&to_limits))
        && after < before
        && !close(after, before)
        && !memory_restarts
    {
        return Err(format!(
            "container {name}: the memory limit decreases, which a resize allows only with \
             resizePolicy RestartContainer for memory"
        ));
    }
    Ok(true)
}

/// Requests and limits as the API server stores them: a limit without a request is also the
/// request (<https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/>).
fn effective(
    resources: &ResourceRequirements,
) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let limits = resources.limits.clone().unwrap_or_default();
    let mut requests = resources.requests.clone().unwrap_or_default();
    for (name, limit) in &limits {
        requests
            .entry(name.clone())
            .or_insert_with(|| limit.clone());
    }
    (requests, limits)
}

/// The resource names whose quantity differs (or is present on one side only).
fn changed_names<'a>(
    a: &'a BTreeMap<String, Quantity>,
    b: &'a BTreeMap<String, Quantity>,
) -> BTreeSet<&'a str> {
    a.keys()
        .chain(b.keys())
        .filter(|k| match (a.get(*k), b.get(*k)) {
            (Some(x), Some(y)) => !same_quantity(x, y),
            _ => true,
        })
        .map(String::as_str)
        .collect()
}

/// Whether two resource requirements mean the same (after defaulting, whatever the spelling).
pub(super) fn same_resources(a: &ResourceRequirements, b: &ResourceRequirements) -> bool {
    let (ar, al) = effective(a);
    let (br, bl) = effective(b);
    changed_names(&ar, &br).is_empty()
        && changed_names(&al, &bl).is_empty()
        && a.claims.as_deref().unwrap_or_default() == b.claims.as_deref().unwrap_or_default()
}

/// `resources` with the defaulted requests written out: a resize patch merges into what the
/// pod has, and a request the API server once defaulted from an older limit must move too.
pub(super) fn explicit(resources: &ResourceRequirements) -> ResourceRequirements {
    let (requests, limits) = effective(resources);
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        claims: resources.claims.clone(),
    }
}

fn same_quantity(a: &Quantity, b: &Quantity) -> bool {
    match (quantity(a), quantity(b)) {
        (Some(x), Some(y)) => close(x, y),
        _ => a.0.trim() == b.0.trim(),
    }
}

fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
}

/// The value of a Kubernetes quantity (`500m`, `1.5Gi`, `1e3`), precise enough to compare.
/// `None` when it is not one.
fn quantity(q: &Quantity) -> Option<f64> {
    let s = q.0.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * scale)
}

/// The pod's QoS class as the API server computes it from cpu and memory
/// (<https://kubernetes.io/docs/concepts/workloads/pods/pod-qos/>).
pub(super) fn qos_class(spec: Option<&PodSpec>) -> &'static str {
    let Some(spec) = spec else {
        return "BestEffort";
    };
    let mut requests: BTreeMap<&str, f64> = BTreeMap::new();
    let mut limits: BTreeMap<&str, f64> = BTreeMap::new();
    let mut guaranteed = true;
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for c in containers {
        let (req, lim) = c.resources.as_ref().map(effective).unwrap_or_default();
        for r in RESIZABLE {
            let positive =
                |m: &BTreeMap<String, Quantity>| m.get(r).and_then(quantity).filter(|v| *v > 0.0);
            if let Some(v) = positive(&req) {
                *requests.entry(r).or_default() += v;
            }
            match positive(&lim) {
                Some(v) => *limits.entry(r).or_default() += v,
                None => guaranteed = false,
            }
        }
    }
    if requests.is_empty() && limits.is_empty() {
        "BestEffort"
    } else if guaranteed
        && requests.len() == limits.len()
        && requests
            .iter()
            .all(|(r, v)| limits.get(r).is_some_and(|l| close(*l, *v)))
    {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn quantities_compare_by_value() {
        let q = |s: &str| Quantity(s.to_string());
        assert!(same_quantity(&q("0.5"), &q("500m")));
        assert!(same_quantity(&q("1Gi"), &q("1024Mi")));
        assert!(same_quantity(&q("1e3"), &q("1k")));
        assert!(!same_quantity(&q("1G"), &q("1Gi")));
        assert_eq!(quantity(&q("bogus")), None);
    }

    #[test]
    fn qos_classes() {
        let spec = |resources: Value| {
            serde_json::from_value::<PodSpec>(
                json!({"containers": [{"name": "a", "resources": resources}]}),
            )
            .unwrap()
        };
        assert_eq!(qos_class(Some(&spec(json!({})))), "BestEffort");
        assert_eq!(
            qos_class(Some(&spec(
                json!({"limits": {"cpu": "1", "memory": "1Gi"}})
            ))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(Some(&spec(json!({"requests": {"cpu": "1"}})))),
            "Burstable"
        );
    }
}
