//! API discovery documents (/api, /apis, per group-version resource lists), as kubectl and
//! kube-rs' discovery read them.
//! https://kubernetes.io/docs/concepts/overview/kubernetes-api/#discovery-api

use serde_json::{Value, json};

use crate::registry::{Registry, ResourceType};

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn subresource_verbs(sub: &str) -> Vec<&'static str> {
    match sub {
        "binding" | "eviction" | "token" => vec!["create"],
        "finalize" => vec!["update"],
        _ => vec!["get", "patch", "update"],
    }
}

fn resource_entries(t: &ResourceType) -> Vec<Value> {
    let mut out = vec![];
    let mut main = json!({
        "name": t.plural,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": if crate::registry::is_review(&t.group, &t.plural) { vec!["create"] } else { VERBS.to_vec() },
    });
    if !t.short_names.is_empty() {
        main["shortNames"] = json!(t.short_names);
    }
    let mut categories = t.categories.clone();
    if t.builtin
        && [
            "pods",
            "services",
            "replicasets",
            "statefulsets",
            "deployments",
        ]
        .contains(&t.plural.as_str())
    {
        categories.push("all".into());
    }
    if !categories.is_empty() {
        main["categories"] = json!(categories);
    }
    out.push(main);
    for sub in &t.subresources {
        let (kind, group, version) = match sub.as_str() {
            "scale" => ("Scale", Some("autoscaling"), Some("v1")),
            "binding" => ("Binding", None, None),
            "eviction" => ("Eviction", Some("policy"), Some("v1")),
            "token" => ("TokenRequest", Some("authentication.k8s.io"), Some("v1")),
            _ => (t.kind.as_str(), None, None),
        };
        let mut entry = json!({
            "name": format!("{}/{}", t.plural, sub),
            "singularName": "",
            "namespaced": t.namespaced,
            "kind": kind,
            "verbs": subresource_verbs(sub),
        });
        if let (Some(g), Some(v)) = (group, version) {
            entry["group"] = json!(g);
            entry["version"] = json!(v);
        }
        out.push(entry);
    }
    out
}

/// GET /api
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(json!({})),
    })
}

/// GET /apis
pub fn group_list(registry: &Registry) -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": registry
            .groups()
            .iter()
            .map(|(g, vs)| group_entry(g, vs))
            .collect::<Vec<_>>(),
    })
}

/// GET /apis/{group}
pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    registry
        .groups()
        .iter()
        .find(|(g, _)| g == name)
        .map(|(g, vs)| {
            let mut entry = group_entry(g, vs);
            entry["kind"] = json!("APIGroup");
            entry["apiVersion"] = json!("v1");
            entry
        })
}

/// GET /api/v1 or /apis/{group}/{version}
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = registry.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": types.iter().flat_map(|t| resource_entries(t)).collect::<Vec<_>>(),
    }))
}
