//! Checks the apiserver runs beside OpenAPI validation: uniqueness in
//! `x-kubernetes-list-type: set`/`map` lists
//! (apiextensions-apiserver/pkg/apiserver/schema/listtype) and the
//! apiVersion/kind/metadata of `x-kubernetes-embedded-resource` objects
//! (apiextensions-apiserver/pkg/apiserver/schema/objectmeta). Both report
//! Go `field.Path`s: `spec.values[2]`, `spec.unitReplicas[DCC]`.

use super::Cause;
use super::formats::{is_dns1123_label, label_shape};
use super::gofmt::{Bad, ErrType, cause, child, go_number, index, key};
use super::node::Node;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// `ValidateListSetsAndMaps`: duplicates in set and map lists.
pub(crate) fn list_sets_and_maps(node: &Node, path: &str, data: &Value, out: &mut Vec<Cause>) {
    match data {
        Value::Object(map) => {
            if let Some(additional) = node.additional_schema() {
                for (k, v) in map {
                    list_sets_and_maps(additional, &key(path, k), v, out);
                }
            }
            for (k, v) in map {
                if let Some(prop) = node.prop(k) {
                    list_sets_and_maps(prop, &child(path, k), v, out);
                }
            }
        }
        Value::Array(items) => {
            match node.list_type.as_deref() {
                Some("set") => {
                    for i in non_unique(items.iter().map(Some)) {
                        out.push(cause(
                            ErrType::Duplicate,
                            &index(path, i),
                            Bad::Json(&items[i]),
                            "",
                        ));
                    }
                }
                Some("map") => list_map(node, path, items, out),
                _ => {}
            }
            if let Some(item_schema) = &node.items {
                for (i, v) in items.iter().enumerate() {
                    list_sets_and_maps(item_schema, &index(path, i), v, out);
                }
            }
        }
        _ => {}
    }
}

/// Index of each value's second occurrence (`validateListSet`); `None` is a
/// key the item does not set, distinct from every value, `null` included.
fn non_unique<'a>(values: impl Iterator<Item = Option<&'a Value>>) -> Vec<usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut dups = Vec::new();
    for (i, v) in values.enumerate() {
        let times = seen
            .entry(v.map_or_else(|| "unset".to_string(), identity))
            .or_insert(0);
        *times += 1;
        if *times == 2 {
            dups.push(i);
        }
    }
    dups
}

/// Go compares scalars by value and type (`int64(1)` is not `float64(1)`)
/// and compound values by their JSON encoding (sorted keys).
fn identity(v: &Value) -> String {
    match v {
        Value::Number(n) if n.as_i64().is_none() => format!("f:{}", go_number(n)),
        Value::Array(_) | Value::Object(_) => format!("j:{}", canonical_json(v)),
        other => format!("s:{other}"),
    }
}

fn canonical_json(v: &Value) -> String {
    match v {
        Value::Number(n) => go_number(n),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical_json).collect::<Vec<_>>().join(",")
        ),
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let body: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String(k.clone()),
                        canonical_json(&m[k.as_str()])
                    )
                })
                .collect();
            format!("{{{}}}", body.join(","))
        }
        other => other.to_string(),
    }
}

/// `validateListMap`: items must be objects, and their keys unique.
fn list_map(node: &Node, path: &str, items: &[Value], out: &mut Vec<Cause>) {
    for (i, x) in items.iter().enumerate() {
        if !x.is_null() && !x.is_object() {
            let detail = "must be an object for an array of list-type map";
            out.push(cause(
                ErrType::Invalid,
                &index(path, i),
                Bad::Json(x),
                detail,
            ));
            return;
        }
    }
    let keys: Vec<Map<String, Value>> = items
        .iter()
        .map(|x| {
            node.list_map_keys
                .iter()
                .filter_map(|k| Some((k.clone(), x.as_object()?.get(k)?.clone())))
                .collect()
        })
        .collect();
    let ids: Vec<Option<Value>> = keys
        .iter()
        .map(|k| match node.list_map_keys.len() {
            // One key: an item without it is "unspecified", unlike any value.
            1 => k.values().next().cloned(),
            _ => Some(Value::Object(k.clone())),
        })
        .collect();
    for i in non_unique(ids.iter().map(Option::as_ref)) {
        let dup = Value::Object(keys[i].clone());
        out.push(cause(
            ErrType::Duplicate,
            &index(path, i),
            Bad::Json(&dup),
            "",
        ));
    }
}

/// `objectmeta.Validate`: embedded resources anywhere below the root.
pub(crate) fn embedded_resources(node: &Node, path: &str, data: &Value, out: &mut Vec<Cause>) {
    match data {
        Value::Object(map) => {
            if node.embedded {
                embedded_resource(path, map, out);
            }
            for (k, v) in map {
                if let Some(prop) = node.prop(k) {
                    embedded_resources(prop, &child(path, k), v, out);
                } else if let Some(additional) = node.additional_schema() {
                    embedded_resources(additional, &key(path, k), v, out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = &node.items {
                for (i, v) in items.iter().enumerate() {
                    embedded_resources(item_schema, &index(path, i), v, out);
                }
            }
        }
        _ => {}
    }
}

const DNS1035: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', \
start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or \
'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

const DNS1123: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters \
or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', \
regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// `validateEmbeddedResource`: apiVersion and kind are required strings;
/// metadata gets the name/namespace checks of `ValidateObjectMeta`.
fn embedded_resource(path: &str, map: &Map<String, Value>, out: &mut Vec<Cause>) {
    for required in ["apiVersion", "kind"] {
        if !map.contains_key(required) {
            out.push(cause(
                ErrType::Required,
                &child(path, required),
                Bad::Omit,
                "",
            ));
        }
    }
    for (k, v) in map {
        let p = child(path, k);
        let invalid = |bad: Bad<'_>, detail: &str| cause(ErrType::Invalid, &p, bad, detail);
        match (k.as_str(), v) {
            ("apiVersion" | "kind", Value::String(s)) if s.is_empty() => {
                out.push(cause(ErrType::Required, &p, Bad::Omit, ""));
            }
            ("apiVersion" | "kind", v) if !v.is_string() => {
                out.push(invalid(Bad::Json(v), "must be a string"))
            }
            ("apiVersion", Value::String(s)) if s.matches('/').count() > 1 => {
                out.push(invalid(
                    Bad::Str(s),
                    &format!("unexpected GroupVersion string: {s}"),
                ));
            }
            ("kind", Value::String(s)) => {
                let lower = s.to_lowercase();
                let mut errs = Vec::new();
                if lower.len() > 63 {
                    errs.push("must be no more than 63 characters");
                }
                if !(label_shape(&lower) && lower.starts_with(|c: char| c.is_ascii_lowercase())) {
                    errs.push(DNS1035);
                }
                if !errs.is_empty() {
                    let detail = format!(
                        "may have mixed case, but should otherwise match: {}",
                        errs.join(",")
                    );
                    out.push(invalid(Bad::Str(s), &detail));
                }
            }
            ("metadata", Value::Object(meta)) => object_meta(&p, meta, out),
            ("metadata", v) => {
                let go_type = match v {
                    Value::Null => "<nil>",
                    Value::Bool(_) => "bool",
                    Value::Number(n) if n.as_i64().is_some() => "int64",
                    Value::Number(_) => "float64",
                    Value::String(_) => "string",
                    _ => "[]interface {}",
                };
                let detail = format!("invalid metadata: expected object, got {go_type}");
                out.push(invalid(Bad::Json(v), &detail));
            }
            _ => {}
        }
    }
}

fn object_meta(path: &str, meta: &Map<String, Value>, out: &mut Vec<Cause>) {
    for (field, prefix) in [("generateName", true), ("name", false)] {
        let Some(name) = meta
            .get(field)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let p = child(path, field);
        // path.ValidatePathSegmentName
        let mut msgs = Vec::new();
        if !prefix && (name == "." || name == "..") {
            msgs.push(format!("may not be '{name}'"));
        }
        for bad in ["/", "%"] {
            if name.contains(bad) {
                msgs.push(format!("may not contain '{bad}'"));
            }
        }
        for m in msgs {
            out.push(cause(ErrType::Invalid, &p, Bad::Str(name), &m));
        }
    }
    if let Some(ns) = meta.get("namespace").and_then(Value::as_str)
        && !ns.is_empty()
        && !is_dns1123_label(ns)
    {
        let p = child(path, "namespace");
        out.push(cause(ErrType::Invalid, &p, Bad::Str(ns), DNS1123));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(
        schema: Value,
        data: Value,
        f: fn(&Node, &str, &Value, &mut Vec<Cause>),
    ) -> Vec<(String, String, String)> {
        let node = Node::parse(&schema, "s", false).unwrap();
        let mut out = Vec::new();
        f(&node, "spec", &data, &mut out);
        out.into_iter()
            .map(|c| (c.reason, c.field, c.message))
            .collect()
    }

    #[test]
    fn set_duplicates_report_the_second_occurrence() {
        let s =
            json!({"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}});
        let got = run(s, json!(["DCA", "DCB", "DCA", "DCA"]), list_sets_and_maps);
        assert_eq!(
            got,
            vec![(
                "FieldValueDuplicate".into(),
                "spec[2]".into(),
                "Duplicate value: \"DCA\"".into()
            )]
        );
        let n = json!({"type": "array", "x-kubernetes-list-type": "set"});
        assert_eq!(
            run(
                n.clone(),
                json!([1, 1.5, 1.0, {"a": [1]}, {"a": [1]}]),
                list_sets_and_maps
            )
            .len(),
            1
        );
        assert!(
            run(n, json!([1, 1.0]), list_sets_and_maps).is_empty(),
            "int64 and float64 differ in Go"
        );
    }

    #[test]
    fn map_lists_need_unique_keys() {
        let s = json!({"type": "object", "properties": {"ports": {"type": "array",
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
            "items": {"type": "object"}}}});
        let got = run(
            s.clone(),
            json!({"ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}),
            list_sets_and_maps,
        );
        assert_eq!(
            got,
            vec![(
                "FieldValueDuplicate".into(),
                "spec.ports[1]".into(),
                "Duplicate value: map[string]interface {}{\"name\":\"a\"}".into()
            )]
        );
        let got = run(s, json!({"ports": ["x"]}), list_sets_and_maps);
        assert_eq!(
            got[0].2,
            "Invalid value: \"x\": must be an object for an array of list-type map"
        );
    }

    #[test]
    fn embedded_resources_need_type_meta() {
        let s = json!({"type": "object", "properties": {"template": {"type": "object",
            "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true}}});
        let got = run(
            s.clone(),
            json!({"template": {"kind": "my_Kind", "metadata": {"name": "a/b"}}}),
            embedded_resources,
        );
        assert_eq!(
            got[0],
            (
                "FieldValueRequired".into(),
                "spec.template.apiVersion".into(),
                "Required value".into()
            )
        );
        assert!(got[1].2.starts_with("Invalid value: \"my_Kind\": may have mixed case, but should otherwise match: a DNS-1035 label"));
        assert_eq!(got[2].2, "Invalid value: \"a/b\": may not contain '/'");
        let ok = json!({"template": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}});
        assert!(run(s, ok, embedded_resources).is_empty());
    }
}
