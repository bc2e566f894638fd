//! The compiled form of an `openAPIV3Schema`: one [`Node`] per schema
//! object, with regexes and CEL programs prepared once per CRD version.
//!
//! Only the keywords CRDs allow are read
//! (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#validation>);
//! unsupported `format`s are ignored, as the apiserver strips them.

use super::SchemaError;
use crate::cel_rules::{CompiledRule, FieldPathSchema, Shape, escape_property};
use cel::Env;
use regex::Regex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// `additionalProperties`: absent, a boolean, or a schema for map values.
#[derive(Debug)]
pub(crate) enum Additional {
    Unset,
    Allows(bool),
    Schema(Box<Node>),
}

/// One schema object.
#[derive(Debug)]
pub(crate) struct Node {
    /// `type` as kube-openapi sees it; int-or-string is `integer,string`.
    pub types: Vec<String>,
    /// The structural type (`sts.Type`), printed as the bad value of CEL errors.
    pub type_name: String,
    pub nullable: bool,
    pub format: String,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub exclusive_minimum: bool,
    pub exclusive_maximum: bool,
    pub multiple_of: Option<f64>,
    pub min_length: Option<i64>,
    pub max_length: Option<i64>,
    pub pattern: Option<(String, Regex)>,
    pub min_items: Option<i64>,
    pub max_items: Option<i64>,
    pub unique_items: bool,
    pub min_properties: Option<i64>,
    pub max_properties: Option<i64>,
    pub required: Vec<String>,
    pub enumeration: Option<Vec<Value>>,
    /// Declared properties, in schema order (messages come out in that order).
    pub properties: Vec<(String, Node)>,
    pub additional: Additional,
    pub items: Option<Box<Node>>,
    pub all_of: Vec<Node>,
    pub any_of: Vec<Node>,
    pub one_of: Vec<Node>,
    pub not: Option<Box<Node>>,
    pub default: Option<Value>,
    pub preserve_unknown: bool,
    pub embedded: bool,
    pub list_type: Option<String>,
    pub list_map_keys: Vec<String>,
    pub map_type: Option<String>,
    /// Raw `x-kubernetes-validations`, compiled by [`compile_rules`].
    raw_rules: Vec<Value>,
    pub rules: Vec<CompiledRule>,
    /// Set by [`compile_rules`]: this node or one below it has rules.
    cel_subtree: bool,
    /// How values at this node look to CEL.
    pub shape: Arc<Shape>,
}

impl Node {
    /// The schema of property `name`.
    pub fn prop(&self, name: &str) -> Option<&Node> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, n)| n)
    }

    /// The `additionalProperties` schema, when it is one.
    pub fn additional_schema(&self) -> Option<&Node> {
        match &self.additional {
            Additional::Schema(n) => Some(n),
            _ => None,
        }
    }

    /// The old value of property or map entry `k`: what `oldSelf` is bound
    /// to below this node, and what ratcheting compares with. Atomic maps are
    /// not correlated (the apiserver's `MapIsCorrelatable`).
    pub fn old_field<'a>(&self, old: Option<&'a Value>, k: &str) -> Option<&'a Value> {
        if self.map_type.as_deref() == Some("atomic") {
            return None;
        }
        old?.as_object()?.get(k)
    }

    /// The old item of a `x-kubernetes-list-type: map` list with the same
    /// key values. Items of other lists have no old counterpart.
    pub fn old_item<'a>(&self, old: Option<&'a Value>, item: &Value) -> Option<&'a Value> {
        if self.list_type.as_deref() != Some("map") || self.list_map_keys.is_empty() {
            return None;
        }
        let keys = |v: &Value| -> Option<Vec<Option<Value>>> {
            let obj = v.as_object()?;
            Some(
                self.list_map_keys
                    .iter()
                    .map(|k| obj.get(k).cloned())
                    .collect(),
            )
        };
        let want = keys(item)?;
        old?.as_array()?
            .iter()
            .find(|o| keys(o).as_ref() == Some(&want))
    }

    /// Whether this node or any below it carries CEL rules.
    pub fn has_rules(&self) -> bool {
        self.cel_subtree
    }

    /// Parses the schema object at `path` (used in error messages).
    /// `resource_root` is true for the root and for embedded resources.
    pub fn parse(v: &Value, path: &str, resource_root: bool) -> Result<Node, SchemaError> {
        let invalid = |message: String| SchemaError::Invalid {
            path: path.to_string(),
            message,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("must be a schema object".into()))?;
        let flag = |k: &str| obj.get(k).and_then(Value::as_bool).unwrap_or(false);
        let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        let float = |k: &str| obj.get(k).and_then(Value::as_f64);
        let int = |k: &str| obj.get(k).and_then(Value::as_i64);
        let embedded = flag("x-kubernetes-embedded-resource");
        let int_or_string = flag("x-kubernetes-int-or-string");
        let type_name = text("type").unwrap_or_default();
        let known = [
            "", "object", "array", "string", "integer", "number", "boolean",
        ];
        if !known.contains(&type_name.as_str()) {
            return Err(invalid(format!("unsupported type {type_name:?}")));
        }
        let types = if int_or_string {
            vec!["integer".to_string(), "string".to_string()]
        } else if type_name.is_empty() {
            Vec::new()
        } else {
            vec![type_name.clone()]
        };
        let pattern = match text("pattern") {
            None => None,
            Some(p) => {
                let re = Regex::new(&p).map_err(|source| SchemaError::Pattern {
                    path: format!("{path}.pattern"),
                    pattern: p.clone(),
                    source,
                })?;
                Some((p, re))
            }
        };
        let mut properties = Vec::new();
        if let Some(props) = obj.get("properties") {
            let props = props
                .as_object()
                .ok_or_else(|| invalid("properties must be an object".into()))?;
            for (k, s) in props {
                let child = Node::parse(s, &format!("{path}.properties[{k}]"), false)?;
                properties.push((k.clone(), child));
            }
        }
        let additional = match obj.get("additionalProperties") {
            None => Additional::Unset,
            Some(Value::Bool(b)) => Additional::Allows(*b),
            Some(s) => Additional::Schema(Box::new(Node::parse(
                s,
                &format!("{path}.additionalProperties"),
                false,
            )?)),
        };
        let items = match obj.get("items") {
            None => None,
            Some(s) => Some(Box::new(Node::parse(s, &format!("{path}.items"), false)?)),
        };
        let nested = |k: &str| -> Result<Vec<Node>, SchemaError> {
            let Some(list) = obj.get(k) else {
                return Ok(Vec::new());
            };
            let list = list
                .as_array()
                .ok_or_else(|| invalid(format!("{k} must be an array")))?;
            list.iter()
                .enumerate()
                .map(|(i, s)| Node::parse(s, &format!("{path}.{k}[{i}]"), false))
                .collect()
        };
        let (all_of, any_of, one_of) = (nested("allOf")?, nested("anyOf")?, nested("oneOf")?);
        let not = match obj.get("not") {
            None => None,
            Some(s) => Some(Box::new(Node::parse(s, &format!("{path}.not"), false)?)),
        };
        let raw_rules = match obj.get("x-kubernetes-validations") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(invalid("x-kubernetes-validations must be an array".into())),
        };
        let mut node = Node {
            types,
            type_name: if int_or_string {
                String::new()
            } else {
                type_name
            },
            nullable: flag("nullable"),
            format: text("format").unwrap_or_default(),
            minimum: float("minimum"),
            maximum: float("maximum"),
            exclusive_minimum: flag("exclusiveMinimum"),
            exclusive_maximum: flag("exclusiveMaximum"),
            multiple_of: float("multipleOf"),
            min_length: int("minLength"),
            max_length: int("maxLength"),
            pattern,
            min_items: int("minItems"),
            max_items: int("maxItems"),
            unique_items: flag("uniqueItems"),
            min_properties: int("minProperties"),
            max_properties: int("maxProperties"),
            required: strings(obj.get("required")),
            enumeration: obj.get("enum").and_then(Value::as_array).cloned(),
            properties,
            additional,
            items,
            all_of,
            any_of,
            one_of,
            not,
            default: obj.get("default").cloned(),
            preserve_unknown: flag("x-kubernetes-preserve-unknown-fields"),
            embedded,
            list_type: text("x-kubernetes-list-type"),
            list_map_keys: strings(obj.get("x-kubernetes-list-map-keys")),
            map_type: text("x-kubernetes-map-type"),
            raw_rules,
            rules: Vec::new(),
            cel_subtree: false,
            shape: Arc::new(Shape::Dyn),
        };
        node.shape = Arc::new(node.build_shape(resource_root || embedded));
        Ok(node)
    }

    /// Kubernetes' `SchemaDeclType`, as far as value conversion needs it.
    fn build_shape(&self, resource_root: bool) -> Shape {
        match self.type_name.as_str() {
            "integer" => Shape::Integer,
            "number" => Shape::Number,
            "string" => match self.format.as_str() {
                "date" | "date-time" | "datetime" => Shape::Timestamp,
                "duration" => Shape::Duration,
                _ => Shape::Dyn,
            },
            "array" => match &self.items {
                Some(items) => Shape::List(Arc::clone(&items.shape)),
                None => Shape::Dyn,
            },
            "object" => {
                if let Some(a) = self.additional_schema() {
                    return Shape::Map(Arc::clone(&a.shape));
                }
                if self.properties.is_empty() && !resource_root {
                    // Unknown-fields objects have no declared fields: show them whole.
                    return Shape::Dyn;
                }
                let fields: HashMap<String, (String, Arc<Shape>)> = self
                    .properties
                    .iter()
                    .filter_map(|(k, n)| {
                        Some((k.clone(), (escape_property(k)?, Arc::clone(&n.shape))))
                    })
                    .collect();
                Shape::Object {
                    fields,
                    resource_root,
                }
            }
            _ => Shape::Dyn,
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl FieldPathSchema for Node {
    fn has_properties(&self) -> bool {
        !self.properties.is_empty()
    }
    fn property(&self, name: &str) -> Option<&Self> {
        self.prop(name)
    }
    fn additional(&self) -> Option<&Self> {
        self.additional_schema()
    }
}

/// Compiles every `x-kubernetes-validations` rule of the tree. Rules inside
/// `allOf` (at any depth, e.g. `allOf[0].properties.x`) are attached to the
/// structural node they line up with, because the apiserver evaluates them
/// against that node's value. `companions` are the `allOf` entries of the
/// ancestors that line up with `node`. `uncorrelatable` names the nearest
/// enclosing list whose items have no old counterpart: transition rules are
/// forbidden below it, as the apiserver forbids them when a CRD is written.
pub(crate) fn compile_rules(
    node: &mut Node,
    path: &str,
    env: &Env,
    companions: &[&Node],
    uncorrelatable: Option<&str>,
) -> Result<(), SchemaError> {
    let compiled = {
        let target: &Node = node;
        let mut here = companions.to_vec();
        flatten_all_of(&target.all_of, &mut here);
        let mut out = Vec::new();
        adopt(
            target,
            &target.raw_rules,
            path,
            env,
            uncorrelatable,
            &mut out,
        )?;
        for c in here {
            adopt(
                target,
                &c.raw_rules,
                &format!("{path}.allOf"),
                env,
                uncorrelatable,
                &mut out,
            )?;
        }
        out
    };
    let Node {
        all_of,
        properties,
        additional,
        items,
        rules,
        cel_subtree,
        list_type,
        list_map_keys,
        ..
    } = node;
    *rules = compiled;
    let mut here = companions.to_vec();
    flatten_all_of(all_of, &mut here);
    for (k, child) in properties.iter_mut() {
        let cs: Vec<&Node> = here.iter().filter_map(|c| c.prop(k)).collect();
        compile_rules(
            child,
            &format!("{path}.properties[{k}]"),
            env,
            &cs,
            uncorrelatable,
        )?;
    }
    if let Additional::Schema(child) = additional {
        let cs: Vec<&Node> = here.iter().filter_map(|c| c.additional_schema()).collect();
        let at = format!("{path}.additionalProperties");
        compile_rules(child, &at, env, &cs, uncorrelatable)?;
    }
    if let Some(child) = items {
        let cs: Vec<&Node> = here.iter().filter_map(|c| c.items.as_deref()).collect();
        // Only items of `x-kubernetes-list-type: map` lists correlate.
        let keyed = list_type.as_deref() == Some("map") && !list_map_keys.is_empty();
        let within = uncorrelatable.or((!keyed).then_some(path));
        compile_rules(child, &format!("{path}.items"), env, &cs, within)?;
    }
    *cel_subtree = !rules.is_empty()
        || properties.iter().any(|(_, n)| n.cel_subtree)
        || matches!(additional, Additional::Schema(n) if n.cel_subtree)
        || items.as_ref().is_some_and(|n| n.cel_subtree);
    Ok(())
}

fn flatten_all_of<'a>(all_of: &'a [Node], out: &mut Vec<&'a Node>) {
    for entry in all_of {
        out.push(entry);
        flatten_all_of(&entry.all_of, out);
    }
}

fn adopt(
    target: &Node,
    raw: &[Value],
    path: &str,
    env: &Env,
    uncorrelatable: Option<&str>,
    out: &mut Vec<CompiledRule>,
) -> Result<(), SchemaError> {
    for (i, r) in raw.iter().enumerate() {
        let at = format!("{path}.x-kubernetes-validations[{i}]");
        let rule = CompiledRule::compile(r, env, target).map_err(|source| SchemaError::Rule {
            path: at.clone(),
            source,
        })?;
        if let Some(list) = uncorrelatable.filter(|_| rule.uses_old_self()) {
            return Err(SchemaError::Invalid {
                path: format!("{at}.rule"),
                message: format!(
                    "Forbidden: oldSelf cannot be used on the uncorrelatable portion of the schema within {list}"
                ),
            });
        }
        out.push(rule);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_keywords_and_int_or_string() {
        let n = Node::parse(
            &json!({"type": "object", "properties": {
                "a": {"x-kubernetes-int-or-string": true},
                "b": {"type": "string", "pattern": "^x", "maxLength": 3}}}),
            "openAPIV3Schema",
            true,
        )
        .unwrap();
        let a = n.prop("a").unwrap();
        assert_eq!(a.types, vec!["integer", "string"]);
        assert_eq!(a.type_name, "");
        assert_eq!(n.prop("b").unwrap().max_length, Some(3));
        assert!(matches!(
            &*n.shape,
            Shape::Object {
                resource_root: true,
                ..
            }
        ));
    }

    #[test]
    fn rejects_bad_patterns_and_types() {
        let err = Node::parse(&json!({"type": "string", "pattern": "("}), "s", false).unwrap_err();
        assert!(matches!(err, SchemaError::Pattern { .. }), "{err}");
        let err = Node::parse(&json!({"type": "strin"}), "s", false).unwrap_err();
        assert!(err.to_string().contains("unsupported type"), "{err}");
    }

    #[test]
    fn transition_rules_need_correlatable_items() {
        let env = crate::cel_rules::new_env().unwrap();
        let items = json!({"type": "object", "properties": {"n": {"type": "integer"}},
                           "x-kubernetes-validations": [{"rule": "self.n >= oldSelf.n"}]});
        let list = |extra: Value| {
            let mut l = json!({"type": "array", "items": items.clone()});
            l.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let mut n = Node::parse(&l, "s", false).unwrap();
            compile_rules(&mut n, "s", &env, &[], None)
        };
        let err = list(json!({})).unwrap_err().to_string();
        assert_eq!(
            err,
            "s.items.x-kubernetes-validations[0].rule: Forbidden: oldSelf cannot be used \
                         on the uncorrelatable portion of the schema within s"
        );
        let keyed = json!({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["n"]});
        assert!(list(keyed).is_ok());
    }

    #[test]
    fn all_of_rules_attach_to_the_structural_node() {
        let mut n = Node::parse(
            &json!({"type": "object", "properties": {"x": {"type": "integer"}},
                    "x-kubernetes-validations": [{"rule": "self.x > 0"}],
                    "allOf": [{"x-kubernetes-validations": [{"rule": "self.x < 9"}],
                               "properties": {"x": {"x-kubernetes-validations": [{"rule": "self != 5"}]}}}]}),
            "openAPIV3Schema",
            true,
        )
        .unwrap();
        let env = crate::cel_rules::new_env().unwrap();
        compile_rules(&mut n, "openAPIV3Schema", &env, &[], None).unwrap();
        assert_eq!(n.rules.len(), 2);
        assert_eq!(n.prop("x").unwrap().rules.len(), 1);
        assert!(n.has_rules());
    }
}
