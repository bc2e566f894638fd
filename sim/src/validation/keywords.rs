//! The per-type keywords of kube-openapi's string, format, number and slice
//! validators, with their messages (kube-openapi pkg/validation/errors).

use super::Cause;
use super::formats;
use super::gofmt::{Bad, ErrType, cause, go_float, go_quote};
use super::node::Node;
use super::openapi::validate;
use serde_json::{Number, Value};

/// kube-openapi names end up as field paths with the leading dot trimmed.
pub(super) fn field(name: &str) -> &str {
    if name == "." {
        ""
    } else {
        name.strip_prefix('.').unwrap_or(name)
    }
}

pub(super) fn invalid(name: &str, bad: Bad<'_>, detail: &str) -> Cause {
    cause(ErrType::Invalid, field(name), bad, detail)
}

/// `swag.IsFloat64AJSONInteger`.
pub(super) fn is_json_integer(f: f64) -> bool {
    if !f.is_finite() {
        return false;
    }
    let t = f.trunc();
    f == t || ((f - t).abs() / (f.abs() + t.abs())) < 1e-9
}

/// maxLength, minLength, pattern: kube-openapi stops at the first failure.
pub(super) fn check_string(node: &Node, path: &str, s: &str, out: &mut Vec<Cause>) {
    let len = s.chars().count() as i64;
    if let Some(max) = node.max_length.filter(|m| len > *m) {
        let detail = format!("may not be longer than {max}");
        out.push(cause(ErrType::TooLong, field(path), Bad::Str(s), &detail));
    } else if let Some(min) = node.min_length.filter(|m| len < *m) {
        let detail = format!("{path} in body should be at least {min} chars long");
        out.push(invalid(path, Bad::Str(s), &detail));
    } else if let Some((pattern, _)) = node.pattern.as_ref().filter(|(_, re)| !re.is_match(s)) {
        let detail = format!("{path} in body should match '{pattern}'");
        out.push(invalid(path, Bad::Str(s), &detail));
    }
}

/// multipleOf, minimum, maximum, in that order. Integers are compared with
/// the bound truncated to an integer, as kube-openapi's `MinimumNativeType`.
pub(super) fn check_number(
    node: &Node,
    path: &str,
    data: &Value,
    n: &Number,
    out: &mut Vec<Cause>,
) {
    let bad = Bad::Json(data);
    let bound = |b: f64| match n.as_i64() {
        Some(_) => (b as i64).to_string(),
        None => go_float(b),
    };
    if let Some(factor) = node.multiple_of {
        let ok = match n.as_i64() {
            Some(i) if factor as i64 != 0 => i.wrapping_rem(factor as i64) == 0,
            _ => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                is_json_integer(if factor < 1.0 {
                    1.0 / factor * x
                } else {
                    x / factor
                })
            }
        };
        if !ok {
            let detail = format!("{path} in body should be a multiple of {}", bound(factor));
            out.push(invalid(path, bad, &detail));
        }
    }
    let x = n.as_f64().unwrap_or(f64::NAN);
    let below = |b: f64, excl: bool| match n.as_i64() {
        Some(i) => i < b as i64 || (excl && i == b as i64),
        None => x < b || (excl && x == b),
    };
    let above = |b: f64, excl: bool| match n.as_i64() {
        Some(i) => i > b as i64 || (excl && i == b as i64),
        None => x > b || (excl && x == b),
    };
    if let Some(min) = node.minimum.filter(|m| below(*m, node.exclusive_minimum)) {
        let or_equal = if node.exclusive_minimum {
            ""
        } else {
            " or equal to"
        };
        let detail = format!(
            "{path} in body should be greater than{or_equal} {}",
            bound(min)
        );
        out.push(invalid(path, bad, &detail));
    }
    if let Some(max) = node.maximum.filter(|m| above(*m, node.exclusive_maximum)) {
        let or_equal = if node.exclusive_maximum {
            ""
        } else {
            " or equal to"
        };
        let detail = format!(
            "{path} in body should be less than{or_equal} {}",
            bound(max)
        );
        out.push(invalid(path, bad, &detail));
    }
}

/// items first, then minItems, maxItems, uniqueItems.
pub(super) fn check_array(
    node: &Node,
    path: &str,
    items: &[Value],
    old: Option<&Value>,
    out: &mut Vec<Cause>,
) {
    if let Some(item_schema) = &node.items {
        for (i, v) in items.iter().enumerate() {
            let old_item = node.old_item(old, v);
            validate(item_schema, &format!("{path}[{i}]"), v, old_item, out);
        }
    }
    let len = items.len() as i64;
    if let Some(min) = node.min_items.filter(|m| len < *m) {
        let detail = format!("{path} in body should have at least {min} items");
        out.push(invalid(path, Bad::Int(len), &detail));
    }
    if let Some(max) = node.max_items.filter(|m| len > *m) {
        let detail = format!("must have at most {max} items");
        out.push(cause(ErrType::TooMany, field(path), Bad::Int(len), &detail));
    }
    if node.unique_items
        && items
            .iter()
            .enumerate()
            .any(|(i, a)| items[..i].contains(a))
    {
        let detail = format!("{path} in body shouldn't contain duplicates");
        out.push(invalid(path, Bad::Str(""), &detail));
    }
}

/// A failed `format` is reported as a type error (`errors.InvalidType`).
pub(super) fn check_format(node: &Node, path: &str, s: &str, out: &mut Vec<Cause>) {
    if formats::check(&node.format, s) == Some(false) {
        let detail = format!(
            "{path} in body must be of type {}: {}",
            node.format,
            go_quote(s)
        );
        out.push(cause(
            ErrType::TypeInvalid,
            field(path),
            Bad::Str(s),
            &detail,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::openapi::tests::{check, one, t};
    use serde_json::json;

    #[test]
    fn numbers() {
        let s = json!({"type": "integer", "minimum": 0, "maximum": 10, "multipleOf": 2});
        assert_eq!(
            one(s.clone(), json!(-2)),
            t(
                "FieldValueInvalid",
                "spec",
                "Invalid value: -2: spec in body should be greater than or equal to 0"
            )
        );
        assert_eq!(
            check(s.clone(), json!(13))
                .iter()
                .map(|c| c.2.clone())
                .collect::<Vec<_>>(),
            vec![
                "Invalid value: 13: spec in body should be a multiple of 2".to_string(),
                "Invalid value: 13: spec in body should be less than or equal to 10".to_string()
            ]
        );
        let e = json!({"type": "number", "minimum": 0.5, "exclusiveMinimum": true,
                       "maximum": 1000000, "exclusiveMaximum": true});
        assert_eq!(
            one(e.clone(), json!(0.5)).2,
            "Invalid value: 0.5: spec in body should be greater than 0.5"
        );
        assert_eq!(
            one(e, json!(2e6)).2,
            "Invalid value: 2e+06: spec in body should be less than 1e+06"
        );
    }

    #[test]
    fn strings_stop_at_first_failure() {
        let s = json!({"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-z]+$"});
        assert_eq!(
            one(s.clone(), json!("ABCDE")),
            t(
                "FieldValueTooLong",
                "spec",
                "Too long: may not be longer than 3"
            )
        );
        assert_eq!(
            one(s.clone(), json!("a")).2,
            "Invalid value: \"a\": spec in body should be at least 2 chars long"
        );
        assert_eq!(
            one(s.clone(), json!("A1")).2,
            "Invalid value: \"A1\": spec in body should match '^[a-z]+$'"
        );
        assert!(
            check(json!({"maxLength": 3}), json!("héé")).is_empty(),
            "lengths count characters"
        );
    }

    #[test]
    fn arrays() {
        let s = json!({"type": "array", "minItems": 1, "maxItems": 2, "uniqueItems": true,
                       "items": {"type": "string", "maxLength": 1}});
        assert_eq!(
            one(s.clone(), json!([])).2,
            "Invalid value: 0: spec in body should have at least 1 items"
        );
        assert_eq!(
            check(s.clone(), json!(["a", "bb", "a"])),
            vec![
                t(
                    "FieldValueTooLong",
                    "spec[1]",
                    "Too long: may not be longer than 1"
                ),
                t(
                    "FieldValueTooMany",
                    "spec",
                    "Too many: 3: must have at most 2 items"
                ),
                t(
                    "FieldValueInvalid",
                    "spec",
                    "Invalid value: \"\": spec in body shouldn't contain duplicates"
                )
            ]
        );
    }

    #[test]
    fn formats_are_type_errors() {
        let s = json!({"type": "string", "format": "date-time"});
        assert!(check(s.clone(), json!("2024-05-01T10:00:00Z")).is_empty());
        assert_eq!(
            one(s, json!("yesterday")),
            t(
                "FieldValueTypeInvalid",
                "spec",
                "Invalid value: \"yesterday\": spec in body must be of type date-time: \"yesterday\""
            )
        );
    }
}
