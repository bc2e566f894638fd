//! Go-compatible rendering of field errors and of the values they carry.
//!
//! kube-apiserver turns every validation failure into a `field.Error`
//! (k8s.io/apimachinery/pkg/util/validation/field/errors.go) and every
//! `field.Error` into a `metav1.StatusCause` whose message is
//! `ErrorBody()`. That method prints the bad value with Go's `fmt` verbs:
//! `%q` for strings, `%v` for numbers and booleans, `%#v` for maps and
//! slices. Clients (and tests written against a real cluster) compare those
//! strings, so they are reproduced here byte for byte.

use super::Cause;
use serde_json::Value;

/// The `field.ErrorType`s that CRD validation produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrType {
    Required,
    Invalid,
    TypeInvalid,
    NotSupported,
    Duplicate,
    TooLong,
    TooMany,
    Forbidden,
}

impl ErrType {
    /// The `metav1.CauseType` (the cause's `reason`).
    fn reason(self) -> &'static str {
        match self {
            ErrType::Required => "FieldValueRequired",
            ErrType::Invalid => "FieldValueInvalid",
            ErrType::TypeInvalid => "FieldValueTypeInvalid",
            ErrType::NotSupported => "FieldValueNotSupported",
            ErrType::Duplicate => "FieldValueDuplicate",
            ErrType::TooLong => "FieldValueTooLong",
            ErrType::TooMany => "FieldValueTooMany",
            ErrType::Forbidden => "FieldValueForbidden",
        }
    }

    /// `ErrorType.String()`: the words that open the message.
    fn label(self) -> &'static str {
        match self {
            ErrType::Required => "Required value",
            ErrType::Invalid | ErrType::TypeInvalid => "Invalid value",
            ErrType::NotSupported => "Unsupported value",
            ErrType::Duplicate => "Duplicate value",
            ErrType::TooLong => "Too long",
            ErrType::TooMany => "Too many",
            ErrType::Forbidden => "Forbidden",
        }
    }
}

/// A bad value as Go would hold it in `field.Error.BadValue`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bad<'a> {
    /// A decoded JSON value (`interface{}` in Go).
    Json(&'a Value),
    /// A Go `string`.
    Str(&'a str),
    /// A Go integer.
    Int(i64),
    /// `omitValue`: nothing is printed.
    Omit,
}

/// Builds a cause the way `field.Error` + `ErrorBody()` + `NewInvalid` do.
pub(crate) fn cause(t: ErrType, field: &str, bad: Bad<'_>, detail: &str) -> Cause {
    // Required, Forbidden and TooLong never print their value.
    let quiet = matches!(t, ErrType::Required | ErrType::Forbidden | ErrType::TooLong);
    let mut message = if quiet || matches!(bad, Bad::Omit) {
        t.label().to_string()
    } else {
        format!("{}: {}", t.label(), render_bad(bad))
    };
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(detail);
    }
    Cause {
        reason: t.reason().to_string(),
        message,
        field: render_path(field),
    }
}

/// `(*field.Path)(nil).String()` is `<nil>`, which is what the apiserver
/// reports for errors at the root of the object.
pub(crate) fn render_path(path: &str) -> String {
    if path.is_empty() {
        "<nil>".to_string()
    } else {
        path.to_string()
    }
}

/// `field.Path.Child`: `a` + `b` is `a.b`.
pub(crate) fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// `field.Path.Key`: `a` + `k` is `a[k]` (the key is not quoted).
pub(crate) fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

/// `field.Path.Index`: `a` + 1 is `a[1]`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn render_bad(bad: Bad<'_>) -> String {
    match bad {
        Bad::Json(Value::Null) => "\"null\"".to_string(),
        Bad::Json(Value::String(s)) => go_quote(s),
        Bad::Str(s) => go_quote(s),
        Bad::Json(Value::Number(n)) => go_number(n),
        Bad::Json(Value::Bool(b)) => b.to_string(),
        Bad::Json(v) => go_sharp_v(v),
        Bad::Int(i) => i.to_string(),
        Bad::Omit => String::new(),
    }
}

/// A JSON number as Go's `%v` prints the `int64` or `float64` that the
/// apiserver's JSON decoder produced for it.
pub(crate) fn go_number(n: &serde_json::Number) -> String {
    match n.as_i64() {
        Some(i) => i.to_string(),
        None => go_float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// Go's `%v` for a `float64`: shortest digits, `%e` form when the exponent
/// is below -4 or at least 6 (so 1e6 prints as `1e+06`).
pub(crate) fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if !(-4..6).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{esign}{:02}", exp.abs());
    }
    let dp = exp + 1;
    let body = if dp <= 0 {
        format!("0.{}{digits}", "0".repeat(dp.unsigned_abs() as usize))
    } else if dp as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(dp as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(dp as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

/// Go's `strconv.Quote`.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%#v` for a decoded JSON value (`map[string]interface{}`,
/// `[]interface{}` and scalars); map keys are sorted, as `fmt` sorts them.
pub(crate) fn go_sharp_v(v: &Value) -> String {
    match v {
        Value::Null => "interface {}(nil)".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_number(n),
        Value::String(s) => go_quote(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(go_sharp_v).collect();
            format!("[]interface {{}}{{{}}}", inner.join(", "))
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", go_quote(k), go_sharp_v(&map[k.as_str()])))
                .collect();
            format!("map[string]interface {{}}{{{}}}", inner.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn floats_print_like_go() {
        for (f, want) in [
            (0.5, "0.5"),
            (1.0, "1"),
            (-2.25, "-2.25"),
            (100000.0, "100000"),
            (1000000.0, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e21, "1e+21"),
            (0.0, "0"),
        ] {
            assert_eq!(go_float(f), want, "{f}");
        }
    }

    #[test]
    fn quoting_matches_strconv_quote() {
        assert_eq!(go_quote("DCA"), "\"DCA\"");
        assert_eq!(go_quote("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\x01é\"");
    }

    #[test]
    fn composite_values_print_like_sharp_v() {
        let v = json!({"b": [1, "x", null], "a": 1.5});
        assert_eq!(
            go_sharp_v(&v),
            "map[string]interface {}{\"a\":1.5, \"b\":[]interface {}{1, \"x\", interface {}(nil)}}"
        );
    }

    #[test]
    fn error_bodies() {
        let c = cause(
            ErrType::Invalid,
            "spec.replicas",
            Bad::Json(&json!(-1)),
            "d",
        );
        assert_eq!(c.message, "Invalid value: -1: d");
        assert_eq!(c.reason, "FieldValueInvalid");
        let c = cause(ErrType::Required, "spec.x", Bad::Str(""), "");
        assert_eq!(c.message, "Required value");
        let c = cause(ErrType::Invalid, "", Bad::Json(&Value::Null), "x");
        assert_eq!(
            (c.field.as_str(), c.message.as_str()),
            ("<nil>", "Invalid value: \"null\": x")
        );
        let c = cause(
            ErrType::TooLong,
            "a",
            Bad::Str("abc"),
            "may not be longer than 2",
        );
        assert_eq!(c.message, "Too long: may not be longer than 2");
        let c = cause(ErrType::TooMany, "a", Bad::Omit, "has too many items");
        assert_eq!(c.message, "Too many: has too many items");
    }

    #[test]
    fn paths() {
        assert_eq!(child("", "spec"), "spec");
        assert_eq!(index(&child("spec", "values"), 1), "spec.values[1]");
        assert_eq!(key("spec.unitReplicas", "DCC"), "spec.unitReplicas[DCC]");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever the notation, the printed float reads back as the same value.
        #[test]
        fn go_float_round_trips(f in proptest::num::f64::NORMAL) {
            let printed = go_float(f);
            let parsed: f64 = printed.parse().map_err(|e| TestCaseError::fail(format!("{printed}: {e}")))?;
            prop_assert_eq!(parsed, f);
        }
    }
}
