//! Status written as a JSON merge patch that replaces the whole status: fields the hub no longer
//! sets are sent as `null` (RFC 7386 removes them), lists are replaced wholesale.
//! https://datatracker.ietf.org/doc/html/rfc7386

use serde_json::{Map, Value, json};

/// `{"status": new}` plus `null` for every top-level status field `old` has and `new` lacks.
pub fn replace_status(old: &Value, new: &Value) -> Value {
    let mut status: Map<String, Value> = new.as_object().cloned().unwrap_or_default();
    if let Some(old) = old.as_object() {
        for key in old.keys() {
            status.entry(key.clone()).or_insert(Value::Null);
        }
    }
    json!({ "status": status })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_fields_become_null_and_others_are_replaced() {
        let old = json!({"a": 1, "b": [1, 2], "c": "x"});
        let new = json!({"a": 2, "b": [3]});
        assert_eq!(
            replace_status(&old, &new),
            json!({"status": {"a": 2, "b": [3], "c": null}})
        );
        assert_eq!(
            replace_status(&Value::Null, &new),
            json!({"status": {"a": 2, "b": [3]}})
        );
    }
}
