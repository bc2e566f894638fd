//! `Table` responses (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`) for `kubectl get`.
//!
//! https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables
//! Built-in columns follow kubernetes/pkg/printers/internalversion/printers.go.

use serde_json::{Value, json};

use crate::jsonpath;
use crate::registry::{PrinterColumn, ResourceType};
use crate::store::meta_str;

/// What each row carries besides its cells (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

fn col(name: &str, type_: &str, format: &str, priority: i64, description: &str) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        format: format.into(),
        description: description.into(),
        priority,
        json_path: String::new(),
    }
}

const NAME_DESC: &str = "Name must be unique within a namespace. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str =
    "CreationTimestamp is a timestamp representing the server time when this object was created.";

/// The column set for a resource, without the leading Name column.
fn columns(rt: &ResourceType) -> Vec<PrinterColumn> {
    if !rt.builtin {
        if rt.columns.is_empty() {
            return vec![col("Age", "date", "", 0, AGE_DESC)];
        }
        return rt.columns.clone();
    }
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => vec![
            col(
                "Ready",
                "string",
                "",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                "",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                "",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            col("Age", "string", "", 0, AGE_DESC),
            col(
                "IP",
                "string",
                "",
                1,
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            col(
                "Node",
                "string",
                "",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            col(
                "Nominated Node",
                "string",
                "",
                1,
                "nominatedNodeName is set when this pod preempts other pods on the node.",
            ),
            col(
                "Readiness Gates",
                "string",
                "",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        ("", "nodes") => vec![
            col("Status", "string", "", 0, "The status of the node"),
            col("Roles", "string", "", 0, "The roles of the node"),
            col("Age", "string", "", 0, AGE_DESC),
            col(
                "Version",
                "string",
                "",
                0,
                "Kubelet Version reported by the node.",
            ),
            col(
                "Internal-IP",
                "string",
                "",
                1,
                "List of internal IPs for the node.",
            ),
            col(
                "External-IP",
                "string",
                "",
                1,
                "List of external IPs for the node.",
            ),
            col(
                "OS-Image",
                "string",
                "",
                1,
                "OS image reported by the node.",
            ),
            col(
                "Kernel-Version",
                "string",
                "",
                1,
                "Kernel version reported by the node.",
            ),
            col(
                "Container-Runtime",
                "string",
                "",
                1,
                "Container runtime and version reported by the node.",
            ),
        ],
        ("", "namespaces") => vec![
            col("Status", "string", "", 0, "The status of the namespace"),
            col("Age", "string", "", 0, AGE_DESC),
        ],
        ("", "events") => vec![
            col(
                "Last Seen",
                "string",
                "",
                0,
                "Time since the event was last seen",
            ),
            col(
                "Type",
                "string",
                "",
                0,
                "Type of this event (Normal, Warning)",
            ),
            col(
                "Reason",
                "string",
                "",
                0,
                "Short, machine understandable string that gives the reason for this event",
            ),
            col(
                "Object",
                "string",
                "",
                0,
                "The object that this event is about",
            ),
            col(
                "Message",
                "string",
                "",
                0,
                "A human-readable description of the status of this operation",
            ),
        ],
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![col("Created At", "date", "", 0, AGE_DESC)]
        }
        _ => vec![col("Age", "string", "", 0, AGE_DESC)],
    }
}

/// Kubernetes' duration.HumanDuration ("5s", "3m20s", "2d4h").
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rest = s % 60;
        return if rest == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rest}s")
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        let rest = m % 60;
        return if rest == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rest}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        let rest = h % 24;
        return if rest == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{rest}h", h / 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    let y = h / (24 * 365);
    if y < 8 {
        format!("{y}y{}d", (h / 24) % 365)
    } else {
        format!("{y}y")
    }
}

fn age_of(ts: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(ts) {
        Ok(t) => human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds()),
        Err(_) => "<unknown>".into(),
    }
}

fn age(obj: &Value) -> String {
    age_of(meta_str(obj, "creationTimestamp"))
}

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The STATUS column of `kubectl get pods`.
pub fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(pod, "/status/phase").to_string();
    }
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut has_running = false;
    for cs in statuses.iter().rev() {
        if let Some(r) = cs.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.to_string();
        } else if let Some(r) = cs
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            reason = r.to_string();
        } else if cs.pointer("/state/running").is_some()
            && cs.get("ready").and_then(Value::as_bool) == Some(true)
        {
            has_running = true;
        }
    }
    if reason == "Completed" && has_running {
        reason = "Running".into();
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = "Terminating".into();
    }
    if reason.is_empty() {
        reason = "Pending".into();
    }
    reason
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
        .sum();
    let last_restart = statuses
        .iter()
        .filter_map(|c| {
            c.pointer("/lastState/terminated/finishedAt")
                .and_then(Value::as_str)
        })
        .max()
        .map(age_of);
    let restarts = match (restarts, last_restart) {
        (n, Some(ago)) if n > 0 => format!("{n} ({ago} ago)"),
        (n, _) => n.to_string(),
    };
    let gates = pod
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let gates_cell = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let passed = gates
            .iter()
            .filter(|g| {
                conds
                    .iter()
                    .any(|c| c.get("type") == g.get("conditionType") && c["status"] == "True")
            })
            .count();
        format!("{passed}/{}", gates.len())
    };
    let or_none = |v: &str| {
        if v.is_empty() {
            "<none>".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        json!(format!("{ready}/{total}")),
        json!(pod_status(pod)),
        json!(restarts),
        json!(age(pod)),
        json!(or_none(s(pod, "/status/podIP"))),
        json!(or_none(s(pod, "/spec/nodeName"))),
        json!(or_none(s(pod, "/status/nominatedNodeName"))),
        json!(gates_cell),
    ]
}

fn node_cells(node: &Value) -> Vec<Value> {
    let conds = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut status = match conds.iter().find(|c| c["type"] == "Ready") {
        Some(c) if c["status"] == "True" => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let address = |t: &str| {
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x["type"] == t))
            .and_then(|x| x.get("address").and_then(Value::as_str))
            .unwrap_or("<none>")
            .to_string()
    };
    vec![
        json!(status),
        json!(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.join(",")
        }),
        json!(age(node)),
        json!(s(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(s(node, "/status/nodeInfo/osImage")),
        json!(s(node, "/status/nodeInfo/kernelVersion")),
        json!(s(node, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

fn event_cells(ev: &Value) -> Vec<Value> {
    let last = [
        s(ev, "/lastTimestamp"),
        s(ev, "/eventTime"),
        s(ev, "/metadata/creationTimestamp"),
    ]
    .into_iter()
    .find(|t| !t.is_empty())
    .unwrap_or("");
    vec![
        json!(age_of(last)),
        json!(s(ev, "/type")),
        json!(s(ev, "/reason")),
        json!(format!(
            "{}/{}",
            s(ev, "/involvedObject/kind").to_lowercase(),
            s(ev, "/involvedObject/name")
        )),
        json!(s(ev, "/message")),
    ]
}

fn custom_cell(obj: &Value, c: &PrinterColumn) -> Value {
    let found = jsonpath::select(obj, &c.json_path);
    let Some(first) = found.first() else {
        return Value::Null;
    };
    if c.type_ == "date" {
        return match first.as_str() {
            Some(ts) => json!(age_of(ts)),
            None => Value::Null,
        };
    }
    if found.len() > 1 {
        let joined: Vec<String> = found
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        return json!(joined.join(","));
    }
    match (c.type_.as_str(), first) {
        ("integer" | "number" | "boolean", v) => (*v).clone(),
        (_, Value::String(s)) => json!(s),
        (_, other) => json!(other.to_string()),
    }
}

fn cells(rt: &ResourceType, obj: &Value) -> Vec<Value> {
    let mut out = vec![json!(meta_str(obj, "name"))];
    if rt.builtin {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "pods") => out.extend(pod_cells(obj)),
            ("", "nodes") => out.extend(node_cells(obj)),
            ("", "namespaces") => {
                out.push(json!(s(obj, "/status/phase")));
                out.push(json!(age(obj)));
            }
            ("", "events") => {
                // Events lead with Last Seen; the name is not a column.
                return event_cells(obj);
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                out.push(json!(meta_str(obj, "creationTimestamp")));
            }
            _ => out.push(json!(age(obj))),
        }
        return out;
    }
    if rt.columns.is_empty() {
        out.push(json!(age(obj)));
    } else {
        for c in &rt.columns {
            out.push(custom_cell(obj, c));
        }
    }
    out
}

fn column_definitions(rt: &ResourceType) -> Vec<Value> {
    let mut defs = vec![];
    let is_event = rt.builtin && rt.plural == "events" && rt.group.is_empty();
    if !is_event {
        defs.push(json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DESC, "priority": 0}));
    }
    for c in columns(rt) {
        defs.push(json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority}));
    }
    defs
}

fn row(rt: &ResourceType, obj: &Value, include: IncludeObject) -> Value {
    let mut r = json!({"cells": cells(rt, obj)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            });
        }
        IncludeObject::Object => r["object"] = obj.clone(),
    }
    r
}

/// A Table of `objects`; `list_meta` is the list's metadata (resourceVersion, continue).
pub fn table(
    rt: &ResourceType,
    objects: &[&Value],
    list_meta: Value,
    include: IncludeObject,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": column_definitions(rt),
        "rows": objects.iter().map(|o| row(rt, o, include)).collect::<Vec<_>>(),
    })
}

pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(60 * 30), "30m");
        assert_eq!(human_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(human_duration(3600 * 24 * 3), "3d");
    }

    #[test]
    fn pod_row() {
        let reg = Registry::with_builtins();
        let rt = reg.find("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c"}], "nodeName": "n1", "readinessGates": [{"conditionType": "g"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "g", "status": "True"}],
                "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
        let t = table(&rt, &[&pod], json!({}), IncludeObject::Metadata);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[5], "10.0.0.1");
        assert_eq!(cells[8], "1/1");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
    }
}
