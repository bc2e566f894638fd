//! Defaulting and pruning, in the order the apiserver applies them when it
//! decodes a custom resource: `default`s for absent fields, then pruning of
//! fields the schema does not specify, then removal of `null`s that the
//! schema does not allow (and that no default replaced).
//!
//! See "Defaulting" and "Field pruning" in
//! <https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/>
//! and apiextensions-apiserver/pkg/apiserver/schema/{defaulting,pruning}.

use super::node::{Additional, Node};
use serde_json::Value;

/// `structuraldefaulting.Default`: a property with a `default` that is
/// absent, or `null` while not nullable, gets a copy of the default; then
/// defaulting recurses, so defaults nested in a default apply too.
pub(crate) fn apply_defaults(x: &mut Value, node: &Node) {
    match x {
        Value::Object(map) => {
            for (k, prop) in &node.properties {
                if let Some(default) = &prop.default
                    && map.get(k).is_none_or(|v| v.is_null() && !prop.nullable)
                {
                    map.insert(k.clone(), default.clone());
                }
            }
            for (k, v) in map.iter_mut() {
                if let Some(prop) = node.prop(k) {
                    apply_defaults(v, prop);
                } else if let Some(additional) = node.additional_schema() {
                    replace_null(v, additional);
                    apply_defaults(v, additional);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = &node.items {
                for v in items.iter_mut() {
                    replace_null(v, item_schema);
                    apply_defaults(v, item_schema);
                }
            }
        }
        _ => {}
    }
}

fn replace_null(v: &mut Value, node: &Node) {
    if let (Value::Null, false, Some(default)) = (&v, node.nullable, &node.default) {
        *v = default.clone();
    }
}

/// The fields of `ObjectMeta` kept in an embedded resource's metadata.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// `structuralpruning.Prune` on the whole object: the root is a resource, so
/// apiVersion, kind and metadata are always kept (metadata untouched).
/// Dropped fields are recorded as `.spec.foo`, `.spec.items[0].bar`.
pub(crate) fn prune_root(x: &mut Value, root: &Node, unknown: &mut Vec<String>) {
    prune(x, Some(root), "", true, unknown);
}

fn prune(x: &mut Value, node: Option<&Node>, path: &str, root: bool, unknown: &mut Vec<String>) {
    if let Some(n) = node.filter(|n| n.preserve_unknown) {
        skip_prune(x, n, path, root, unknown);
        return;
    }
    match x {
        Value::Object(map) => {
            let Some(n) = node else {
                unknown.extend(map.keys().map(|k| format!("{path}.{k}")));
                map.clear();
                return;
            };
            let resource = root || n.embedded;
            map.retain(|k, v| {
                let p = format!("{path}.{k}");
                if resource && (k == "apiVersion" || k == "kind") {
                    return true;
                }
                if resource && k == "metadata" {
                    if !root {
                        prune_meta(v, &p, unknown);
                    }
                    return true;
                }
                match (n.prop(k), &n.additional) {
                    (Some(prop), _) => prune(v, Some(prop), &p, false, unknown),
                    (None, Additional::Schema(a)) => prune(v, Some(a), &p, false, unknown),
                    (None, Additional::Allows(true)) => prune(v, None, &p, false, unknown),
                    (None, _) => {
                        unknown.push(p);
                        return false;
                    }
                }
                true
            });
        }
        Value::Array(items) => {
            let item_schema = node.and_then(|n| n.items.as_deref());
            for (i, v) in items.iter_mut().enumerate() {
                prune(v, item_schema, &format!("{path}[{i}]"), false, unknown);
            }
        }
        _ => {}
    }
}

/// Under `x-kubernetes-preserve-unknown-fields` unknown fields stay, but
/// fields the schema does specify are still pruned inside.
fn skip_prune(x: &mut Value, n: &Node, path: &str, root: bool, unknown: &mut Vec<String>) {
    match x {
        Value::Object(map) => {
            let resource = root || n.embedded;
            for (k, v) in map.iter_mut() {
                let p = format!("{path}.{k}");
                if resource && ["apiVersion", "kind", "metadata"].contains(&k.as_str()) {
                    if k == "metadata" && !root {
                        prune_meta(v, &p, unknown);
                    }
                    continue;
                }
                if let Some(prop) = n.prop(k) {
                    prune(v, Some(prop), &p, false, unknown);
                } else if let Some(additional) = n.additional_schema() {
                    prune(v, Some(additional), &p, false, unknown);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = &n.items {
                for (i, v) in items.iter_mut().enumerate() {
                    skip_prune(v, item_schema, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

fn prune_meta(meta: &mut Value, path: &str, unknown: &mut Vec<String>) {
    if let Value::Object(map) = meta {
        map.retain(|k, _| {
            let keep = OBJECT_META_FIELDS.contains(&k.as_str());
            if !keep {
                unknown.push(format!("{path}.{k}"));
            }
            keep
        });
    }
}

/// `PruneNonNullableNullsWithoutDefaults`: a `null` where the schema is not
/// nullable (and has no default) is dropped instead of failing validation.
pub(crate) fn drop_disallowed_nulls(x: &mut Value, node: &Node) {
    match x {
        Value::Object(map) => {
            let schema_of = |k: &str| node.prop(k).or_else(|| node.additional_schema());
            let drop = |k: &String, v: &Value| {
                v.is_null() && schema_of(k).is_some_and(|s| !s.nullable && s.default.is_none())
            };
            map.retain(|k, v| !drop(k, v));
            for (k, v) in map.iter_mut() {
                if let Some(s) = node.prop(k).or_else(|| node.additional_schema()) {
                    drop_disallowed_nulls(v, s);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = &node.items {
                items
                    .iter_mut()
                    .for_each(|v| drop_disallowed_nulls(v, item_schema));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn schema() -> Node {
        Node::parse(
            &json!({"type": "object", "properties": {
                "spec": {"type": "object", "properties": {
                    "replicas": {"type": "integer", "default": 1},
                    "strategy": {"type": "object", "default": {},
                                 "properties": {"type": {"type": "string", "default": "Rolling"}}},
                    "opt": {"type": "string"},
                    "values": {"type": "array", "items": {"type": "object",
                               "properties": {"n": {"type": "integer", "default": 0}}}},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                             "properties": {"known": {"type": "object", "properties": {"a": {"type": "string"}}}}},
                    "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                                 "properties": {"spec": {"type": "object"}}}}}}}),
            "openAPIV3Schema",
            true,
        )
        .unwrap()
    }

    fn run(obj: Value) -> (Value, Vec<String>) {
        let root = schema();
        let mut x = obj;
        apply_defaults(&mut x, &root);
        let mut unknown = Vec::new();
        prune_root(&mut x, &root, &mut unknown);
        drop_disallowed_nulls(&mut x, &root);
        (x, unknown)
    }

    #[test]
    fn defaults_apply_recursively_and_replace_disallowed_nulls() {
        let (x, _) = run(json!({"spec": {"replicas": null, "values": [{}, {"n": 5}]}}));
        assert_eq!(x["spec"]["replicas"], json!(1));
        assert_eq!(x["spec"]["strategy"], json!({"type": "Rolling"}));
        assert_eq!(x["spec"]["values"], json!([{"n": 0}, {"n": 5}]));
    }

    #[test]
    fn prunes_unknown_fields_and_reports_them() {
        let obj = json!({"apiVersion": "v", "kind": "K", "metadata": {"name": "a", "x": 1},
            "spec": {"replicas": 2, "foo": 1, "values": [{"n": 1, "bar": 2}], "labels": {"a": "b"},
                     "free": {"anything": 1, "known": {"a": "x", "b": 2}},
                     "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "junk": 1},
                                  "spec": {"c": 1}, "extra": true}},
            "status": {}});
        let (x, unknown) = run(obj);
        assert_eq!(
            unknown,
            vec![
                ".spec.foo",
                ".spec.values[0].bar",
                ".spec.free.known.b",
                ".spec.template.metadata.junk",
                ".spec.template.spec.c",
                ".spec.template.extra",
                ".status"
            ]
        );
        assert_eq!(
            x["metadata"],
            json!({"name": "a", "x": 1}),
            "root metadata is left alone"
        );
        assert_eq!(
            x["spec"]["free"],
            json!({"anything": 1, "known": {"a": "x"}})
        );
        assert_eq!(
            x["spec"]["template"],
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p"}, "spec": {}})
        );
    }

    #[test]
    fn drops_nulls_the_schema_does_not_allow() {
        let (x, _) = run(json!({"spec": {"opt": null, "labels": {"a": null}}}));
        assert_eq!(x["spec"].get("opt"), None);
        assert_eq!(x["spec"]["labels"], json!({}));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|i| json!(i)),
            "[a-z]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("spec".to_string()),
                        Just("values".to_string()),
                        Just("n".to_string()),
                        "[a-z]{1,3}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Defaulting and pruning a second time changes nothing.
        #[test]
        fn idempotent(obj in arb_json()) {
            let (once, _) = run(obj);
            let (twice, unknown) = run(once.clone());
            prop_assert_eq!(&once, &twice);
            prop_assert!(unknown.is_empty());
        }
    }
}
