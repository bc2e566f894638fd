//! JSON to CEL values, typed the way Kubernetes types them from the schema.

use cel::objects::{Key, Map};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::Arc;

/// How a JSON value at a schema node is typed in CEL (Kubernetes'
/// `SchemaDeclType`): objects with `properties` only expose their declared
/// (escaped) fields, `format: date-time`/`date` strings are timestamps,
/// `format: duration` strings are durations, `type: number` is always double.
#[derive(Debug)]
pub(crate) enum Shape {
    /// No schema type (int-or-string, preserve-unknown-fields): plain JSON.
    Dyn,
    Integer,
    Number,
    Timestamp,
    Duration,
    List(Arc<Shape>),
    Map(Arc<Shape>),
    /// Declared properties keyed by JSON name: (CEL name, shape).
    /// `resource_root` adds apiVersion, kind and metadata.name/generateName.
    Object {
        fields: HashMap<String, (String, Arc<Shape>)>,
        resource_root: bool,
    },
}

/// Kubernetes' `cel.Escape` for property names: `__` becomes
/// `__underscores__`, `.` `__dot__`, `-` `__dash__`, `/` `__slash__`, and CEL
/// reserved words `__word__`. Names that cannot be escaped are not visible.
pub(crate) fn escape_property(name: &str) -> Option<String> {
    const RESERVED: &[&str] = &[
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    let first = name.chars().next()?;
    if first.is_ascii_digit() {
        return None;
    }
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '_' if chars.peek() == Some(&'_') => {
                chars.next();
                out.push_str("__underscores__");
            }
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

/// Converts a JSON value into the CEL value a rule sees for it.
pub(crate) fn to_cel(v: &Json, shape: &Shape) -> cel::Value {
    use cel::Value as V;
    match (shape, v) {
        (_, Json::Null) => V::Null,
        (Shape::Integer, Json::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => V::Int(i),
            // `3.0` passes `type: integer`; CEL sees it as the int it is.
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => V::Int(f as i64),
            _ => dyn_number(n),
        },
        (Shape::Number, Json::Number(n)) => V::Float(n.as_f64().unwrap_or(f64::NAN)),
        (Shape::Timestamp, Json::String(s)) => parse_timestamp(s)
            .map(V::Timestamp)
            .unwrap_or_else(|| V::String(Arc::new(s.clone()))),
        (Shape::Duration, Json::String(s)) => parse_go_duration(s)
            .map(V::Duration)
            .unwrap_or_else(|| V::String(Arc::new(s.clone()))),
        (Shape::List(item), Json::Array(a)) => {
            V::List(Arc::new(a.iter().map(|x| to_cel(x, item)).collect()))
        }
        (Shape::Map(value), Json::Object(o)) => {
            cel_map(o.iter().map(|(k, x)| (k.clone(), to_cel(x, value))))
        }
        (
            Shape::Object {
                fields,
                resource_root,
            },
            Json::Object(o),
        ) => cel_map(o.iter().filter_map(|(k, x)| match fields.get(k) {
            Some((name, s)) => Some((name.clone(), to_cel(x, s))),
            None if *resource_root && (k == "apiVersion" || k == "kind") => {
                Some((k.clone(), to_cel(x, &Shape::Dyn)))
            }
            None if *resource_root && k == "metadata" => {
                let meta = x.as_object()?;
                Some((
                    k.clone(),
                    cel_map(
                        meta.iter()
                            .filter(|(mk, _)| {
                                mk.as_str() == "name" || mk.as_str() == "generateName"
                            })
                            .map(|(mk, mv)| (mk.clone(), to_cel(mv, &Shape::Dyn))),
                    ),
                ))
            }
            None => None,
        })),
        (_, Json::Bool(b)) => V::Bool(*b),
        (_, Json::String(s)) => V::String(Arc::new(s.clone())),
        (_, Json::Number(n)) => dyn_number(n),
        (_, Json::Array(a)) => {
            V::List(Arc::new(a.iter().map(|x| to_cel(x, &Shape::Dyn)).collect()))
        }
        (_, Json::Object(o)) => cel_map(o.iter().map(|(k, x)| (k.clone(), to_cel(x, &Shape::Dyn)))),
    }
}

fn dyn_number(n: &serde_json::Number) -> cel::Value {
    match n.as_i64() {
        Some(i) => cel::Value::Int(i),
        None => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

fn cel_map(entries: impl Iterator<Item = (String, cel::Value)>) -> cel::Value {
    let map: HashMap<Key, cel::Value> = entries
        .map(|(k, v)| (Key::String(Arc::new(k)), v))
        .collect();
    cel::Value::Map(Map { map: Arc::new(map) })
}

fn parse_timestamp(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(s).ok().or_else(|| {
        let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
        Some(date.and_hms_opt(0, 0, 0)?.and_utc().fixed_offset())
    })
}

/// Go's `time.ParseDuration` (e.g. `1h30m`, `-1.5s`, `300ms`).
pub(crate) fn parse_go_duration(s: &str) -> Option<chrono::Duration> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(chrono::Duration::zero());
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        nanos += num * scale;
        rest = &rest[unit_len..];
    }
    let nanos = if neg { -nanos } else { nanos };
    Some(chrono::Duration::nanoseconds(nanos as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cel::{Context, Env};
    use serde_json::json;

    #[test]
    fn shapes_type_values_like_kubernetes() {
        let mut fields = HashMap::new();
        fields.insert(
            "ratio".to_string(),
            ("ratio".to_string(), Arc::new(Shape::Number)),
        );
        fields.insert(
            "x-y".to_string(),
            ("x__dash__y".to_string(), Arc::new(Shape::Integer)),
        );
        fields.insert(
            "at".to_string(),
            ("at".to_string(), Arc::new(Shape::Timestamp)),
        );
        let shape = Shape::Object {
            fields,
            resource_root: true,
        };
        let v = json!({"ratio": 1, "x-y": 2, "at": "2024-01-02T03:04:05Z", "hidden": 1,
                       "kind": "K", "metadata": {"name": "n", "uid": "u"}});
        let env = std::sync::Arc::new(Env::stdlib());
        let mut ctx = Context::with_env(env.clone());
        ctx.add_variable_from_value("self", to_cel(&v, &shape));
        for (src, want) in [
            (
                "self.ratio == 1.0 && self.x__dash__y == 2 && self.kind == 'K'",
                true,
            ),
            ("has(self.hidden) || has(self.metadata.uid)", false),
            (
                "self.metadata.name == 'n' && self.at < timestamp('2025-01-01T00:00:00Z')",
                true,
            ),
        ] {
            let p = env.compile(src).unwrap();
            assert_eq!(p.execute(&ctx), Ok(cel::Value::Bool(want)), "{src}");
        }
    }

    #[test]
    fn escaping_and_durations() {
        assert_eq!(
            escape_property("a__b.c/d").as_deref(),
            Some("a__underscores__b__dot__c__slash__d")
        );
        assert_eq!(
            escape_property("namespace").as_deref(),
            Some("__namespace__")
        );
        assert_eq!(escape_property("1abc"), None);
        assert_eq!(escape_property("a b"), None);
        assert_eq!(
            parse_go_duration("1h30m"),
            Some(chrono::Duration::minutes(90))
        );
        assert_eq!(
            parse_go_duration("-1.5s"),
            Some(chrono::Duration::milliseconds(-1500))
        );
        assert_eq!(parse_go_duration("5x"), None);
    }
}
