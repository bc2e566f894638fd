//! OpenAPI v3 value validation, as kube-openapi's `SchemaValidator` runs it
//! for custom resources
//! (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#validation>).
//!
//! Messages and reasons follow kube-openapi (pkg/validation/errors) and the
//! apiserver's `kubeOpenAPIResultToFieldErrors`, which turns each error into a
//! `field.Error`. Paths are kube-openapi's: `spec.values[1]`, and map entries
//! `spec.unitReplicas.DCC` (kube-openapi joins map keys with a dot).
//!
//! Per node the checks run in kube-openapi's order: type, anyOf/oneOf/allOf/
//! not, string, format, number, array, enum, object. On update, a value equal
//! to its correlated old value is not checked at all: CRD validation
//! ratcheting (on by default since Kubernetes 1.30) turns such errors into
//! warnings.

use super::Cause;
use super::gofmt::{Bad, ErrType, cause, go_quote};
use super::keywords::{
    check_array, check_format, check_number, check_string, field, invalid, is_json_integer,
};
use super::node::{Additional, Node};
use serde_json::{Map, Value};

/// Validates `data` against `node`. `path` is the kube-openapi path (`""` at
/// the root); `old` the correlated old value on update.
pub(crate) fn validate(
    node: &Node,
    path: &str,
    data: &Value,
    old: Option<&Value>,
    out: &mut Vec<Cause>,
) {
    if old == Some(data) {
        return;
    }
    if data.is_null() {
        // kube-openapi only runs the type and enum validators on null.
        check_type(node, path, data, out);
        check_enum(node, path, data, out);
        return;
    }
    check_type(node, path, data, out);
    check_composition(node, path, data, out);
    match data {
        Value::String(s) => {
            check_string(node, path, s, out);
            check_format(node, path, s, out);
        }
        Value::Number(n) => check_number(node, path, data, n, out),
        Value::Array(items) => check_array(node, path, items, old, out),
        _ => {}
    }
    check_enum(node, path, data, out);
    if let Value::Object(map) = data {
        check_object(node, path, map, old, out);
    }
}

/// Errors kube-openapi raises with `errors.New` (anyOf/oneOf/allOf/not) are
/// not `*Validation`s, so the apiserver reports them at the root, with `""`.
fn composite(detail: String) -> Cause {
    cause(ErrType::Invalid, "", Bad::Str(""), &detail)
}

fn check_type(node: &Node, path: &str, data: &Value, out: &mut Vec<Cause>) {
    if node.types.is_empty() && node.format.is_empty() {
        return;
    }
    let joined = node.types.join(",");
    let type_error = |type_name: &str, value: &str| {
        let detail = format!(
            "{path} in body must be of type {type_name}: {}",
            go_quote(value)
        );
        cause(ErrType::TypeInvalid, field(path), Bad::Str(value), &detail)
    };
    let has = |t: &str| node.types.iter().any(|x| x == t);
    let (sch_type, data_format) = match data {
        Value::Null => {
            if !node.types.is_empty() && !node.nullable {
                out.push(type_error(&joined, "null"));
            }
            return;
        }
        Value::Bool(_) => ("boolean", ""),
        Value::String(_) => ("string", ""),
        Value::Number(n) if n.as_i64().is_some() => ("integer", "int64"),
        Value::Number(_) => ("number", "float64"),
        Value::Array(_) => ("array", ""),
        Value::Object(_) => ("object", ""),
    };
    let float_int =
        sch_type == "number" && data.as_f64().is_some_and(is_json_integer) && has("integer");
    let int_float = sch_type == "integer" && has("number");
    let text_like = matches!(data, Value::String(_) | Value::Array(_));
    let format = node.format.as_str();
    let compatible = has(sch_type) || float_int || int_float;
    // Non-text values must also agree with the format (e.g. int32).
    let format_ok = text_like || format.is_empty() || data_format == format || compatible;
    if !format_ok {
        out.push(type_error(format, data_format));
        return;
    }
    // Text with a format is not type-checked unless the type is numeric.
    let numeric = has("number") || has("integer");
    if text_like && !format.is_empty() && !numeric {
        return;
    }
    if !(has(sch_type) || float_int || int_float) {
        out.push(type_error(&joined, sch_type));
    }
}

fn run(node: &Node, path: &str, data: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    validate(node, path, data, None, &mut out);
    out
}

/// anyOf/oneOf/allOf/not. Of the failing alternatives, kube-openapi reports
/// the one that matched most checks; the one with fewest errors stands in.
fn check_composition(node: &Node, path: &str, data: &Value, out: &mut Vec<Cause>) {
    let quoted = go_quote(path);
    if !node.any_of.is_empty() {
        let mut best: Option<Vec<Cause>> = None;
        let mut succeeded = false;
        for alt in &node.any_of {
            let errs = run(alt, path, data);
            if errs.is_empty() {
                succeeded = true;
                best = None;
                break;
            }
            if best.as_ref().is_none_or(|b| errs.len() < b.len()) {
                best = Some(errs);
            }
        }
        if !succeeded {
            out.push(composite(format!(
                "{quoted} must validate at least one schema (anyOf)"
            )));
        }
        out.extend(best.unwrap_or_default());
    }
    if !node.one_of.is_empty() {
        let mut best: Option<Vec<Cause>> = None;
        let mut validated = 0;
        for alt in &node.one_of {
            let errs = run(alt, path, data);
            if errs.is_empty() {
                validated += 1;
                best = None;
            } else if validated == 0 && best.as_ref().is_none_or(|b| errs.len() < b.len()) {
                best = Some(errs);
            }
        }
        if validated != 1 {
            let why = match validated {
                0 => "Found none valid".to_string(),
                n => format!("Found {n} valid alternatives"),
            };
            out.push(composite(format!(
                "{quoted} must validate one and only one schema (oneOf). {why}"
            )));
            out.extend(best.unwrap_or_default());
        }
    }
    if !node.all_of.is_empty() {
        let mut validated = 0;
        for alt in &node.all_of {
            let errs = run(alt, path, data);
            validated += usize::from(errs.is_empty());
            out.extend(errs);
        }
        if validated != node.all_of.len() {
            let none = if validated == 0 {
                ". None validated"
            } else {
                ""
            };
            out.push(composite(format!(
                "{quoted} must validate all the schemas (allOf){none}"
            )));
        }
    }
    if let Some(not) = &node.not
        && run(not, path, data).is_empty()
    {
        out.push(composite(format!(
            "{quoted} must not validate the schema (not)"
        )));
    }
}

/// Go's enum check converts the value to the enum entry's type first, so
/// `1` matches `1.0`; `null` never matches.
fn enum_matches(data: &Value, candidate: &Value) -> bool {
    match (data, candidate) {
        (Value::Null, _) => false,
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => a.as_f64() == b.as_f64(),
        },
        _ => data == candidate,
    }
}

fn check_enum(node: &Node, path: &str, data: &Value, out: &mut Vec<Cause>) {
    let Some(values) = node.enumeration.as_ref().filter(|v| !v.is_empty()) else {
        return;
    };
    if values.iter().any(|e| enum_matches(data, e)) {
        return;
    }
    // Non-string entries are listed as their JSON, and every entry quoted.
    let supported: Vec<String> = values
        .iter()
        .map(|v| match v {
            Value::String(s) => go_quote(s),
            other => go_quote(&other.to_string()),
        })
        .collect();
    let detail = format!("supported values: {}", supported.join(", "));
    out.push(cause(
        ErrType::NotSupported,
        field(path),
        Bad::Json(data),
        &detail,
    ));
}

/// minProperties, maxProperties, additionalProperties, properties (in schema
/// order), then required.
fn check_object(
    node: &Node,
    path: &str,
    map: &Map<String, Value>,
    old: Option<&Value>,
    out: &mut Vec<Cause>,
) {
    let n = map.len() as i64;
    if let Some(min) = node.min_properties.filter(|m| n < *m) {
        let detail = format!("{path} in body should have at least {min} properties");
        out.push(invalid(path, Bad::Int(n), &detail));
    }
    if let Some(max) = node.max_properties.filter(|m| n > *m) {
        let detail = format!("must have at most {max} items");
        out.push(cause(ErrType::TooMany, field(path), Bad::Int(n), &detail));
    }
    match &node.additional {
        Additional::Allows(false) => {
            for k in map.keys().filter(|k| node.prop(k).is_none()) {
                let detail = format!("{path}.{k} in body is a forbidden property");
                out.push(invalid(path, Bad::Str(k), &detail));
            }
        }
        Additional::Schema(schema) => {
            for (k, v) in map.iter().filter(|(k, _)| node.prop(k).is_none()) {
                validate(
                    schema,
                    &format!("{path}.{k}"),
                    v,
                    node.old_field(old, k),
                    out,
                );
            }
        }
        _ => {}
    }
    for (k, schema) in &node.properties {
        if let Some(v) = map.get(k) {
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            validate(schema, &child, v, node.old_field(old, k), out);
        }
    }
    for k in node.required.iter().filter(|k| !map.contains_key(*k)) {
        out.push(cause(
            ErrType::Required,
            field(&format!("{path}.{k}")),
            Bad::Omit,
            "",
        ));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    pub(in crate::validation) fn check(
        schema: Value,
        data: Value,
    ) -> Vec<(String, String, String)> {
        let node = Node::parse(&schema, "s", false).unwrap();
        let mut out = Vec::new();
        validate(&node, "spec", &data, None, &mut out);
        out.into_iter()
            .map(|c| (c.reason, c.field, c.message))
            .collect()
    }

    pub(in crate::validation) fn one(schema: Value, data: Value) -> (String, String, String) {
        let mut all = check(schema, data);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    pub(in crate::validation) fn t(r: &str, f: &str, m: &str) -> (String, String, String) {
        (r.to_string(), f.to_string(), m.to_string())
    }

    #[test]
    fn types_and_nullable() {
        let s = json!({"type": "object", "properties": {"replicas": {"type": "integer"}}});
        assert_eq!(
            one(s.clone(), json!({"replicas": "string"})),
            t(
                "FieldValueTypeInvalid",
                "spec.replicas",
                "Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
            )
        );
        assert!(
            check(s.clone(), json!({"replicas": 3.0})).is_empty(),
            "integral floats are integers"
        );
        assert_eq!(
            one(s.clone(), json!({"replicas": null})).2,
            "Invalid value: \"null\": spec.replicas in body must be of type integer: \"null\""
        );
        let nullable =
            json!({"type": "object", "properties": {"r": {"type": "integer", "nullable": true}}});
        assert!(check(nullable, json!({"r": null})).is_empty());
        for (ty, ok, bad) in [
            ("number", json!(1), json!("1")),
            ("boolean", json!(true), json!(1)),
            ("array", json!([]), json!({})),
            ("string", json!("x"), json!(1.5)),
        ] {
            assert!(check(json!({"type": ty}), ok).is_empty(), "{ty}");
            assert_eq!(check(json!({"type": ty}), bad).len(), 1, "{ty}");
        }
    }

    #[test]
    fn int_or_string() {
        let s = json!({"x-kubernetes-int-or-string": true, "minimum": 1});
        assert!(check(s.clone(), json!(3)).is_empty());
        assert!(check(s.clone(), json!("50%")).is_empty());
        assert_eq!(
            one(s.clone(), json!(true)).2,
            "Invalid value: \"boolean\": spec in body must be of type integer,string: \"boolean\""
        );
        assert_eq!(
            one(s, json!(0)).2,
            "Invalid value: 0: spec in body should be greater than or equal to 1"
        );
    }

    #[test]
    fn enums() {
        let s = json!({"type": "string", "enum": ["Beta", "Batch"]});
        assert_eq!(
            one(s, json!("Foo")),
            t(
                "FieldValueNotSupported",
                "spec",
                "Unsupported value: \"Foo\": supported values: \"Beta\", \"Batch\""
            )
        );
        let n = json!({"type": "integer", "enum": [1, 2]});
        assert!(check(n.clone(), json!(1.0)).is_empty());
        assert_eq!(
            one(n, json!(3)).2,
            "Unsupported value: 3: supported values: \"1\", \"2\""
        );
    }

    #[test]
    fn objects_and_maps() {
        let s = json!({"type": "object", "required": ["a", "b"], "minProperties": 2, "maxProperties": 3,
                       "properties": {"a": {"type": "string"}, "b": {"type": "string"}}});
        assert_eq!(
            check(s.clone(), json!({"a": "x"})),
            vec![
                t(
                    "FieldValueInvalid",
                    "spec",
                    "Invalid value: 1: spec in body should have at least 2 properties"
                ),
                t("FieldValueRequired", "spec.b", "Required value")
            ]
        );
        let m = json!({"type": "object", "maxProperties": 1, "additionalProperties": {"x-kubernetes-int-or-string": true, "pattern": "^[0-9]+%$"}});
        assert_eq!(
            check(m, json!({"DCC": "x", "DCA": 1})),
            vec![
                t(
                    "FieldValueTooMany",
                    "spec",
                    "Too many: 2: must have at most 1 items"
                ),
                t(
                    "FieldValueInvalid",
                    "spec.DCC",
                    "Invalid value: \"x\": spec.DCC in body should match '^[0-9]+%$'"
                )
            ]
        );
        let closed =
            json!({"type": "object", "additionalProperties": false, "properties": {"a": {}}});
        assert_eq!(
            one(closed, json!({"a": 1, "b": 2})).2,
            "Invalid value: \"b\": spec.b in body is a forbidden property"
        );
    }

    #[test]
    fn composition() {
        let any = json!({"anyOf": [{"type": "integer"}, {"type": "string"}]});
        assert!(check(any.clone(), json!("x")).is_empty());
        assert_eq!(
            check(any, json!(true)),
            vec![
                t(
                    "FieldValueInvalid",
                    "<nil>",
                    "Invalid value: \"\": \"spec\" must validate at least one schema (anyOf)"
                ),
                t(
                    "FieldValueTypeInvalid",
                    "spec",
                    "Invalid value: \"boolean\": spec in body must be of type integer: \"boolean\""
                )
            ]
        );
        let one_of = json!({"oneOf": [{"required": ["a"]}, {"required": ["b"]}]});
        assert!(check(one_of.clone(), json!({"a": 1})).is_empty());
        assert_eq!(
            check(one_of, json!({"a": 1, "b": 2}))[0].2,
            "Invalid value: \"\": \"spec\" must validate one and only one schema (oneOf). Found 2 valid alternatives"
        );
        let all = json!({"allOf": [{"minLength": 2}, {"maxLength": 5}]});
        assert_eq!(check(all, json!("a")).len(), 2);
        let not = json!({"not": {"enum": ["forbidden"]}});
        assert_eq!(
            one(not, json!("forbidden")).2,
            "Invalid value: \"\": \"spec\" must not validate the schema (not)"
        );
    }

    #[test]
    fn unchanged_values_are_ratcheted() {
        let node = Node::parse(&json!({"type": "string", "maxLength": 1}), "s", false).unwrap();
        let mut out = Vec::new();
        validate(
            &node,
            "spec",
            &json!("long"),
            Some(&json!("long")),
            &mut out,
        );
        assert!(out.is_empty());
        validate(
            &node,
            "spec",
            &json!("longer"),
            Some(&json!("long")),
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }
}
