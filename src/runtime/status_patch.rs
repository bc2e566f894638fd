//! Status written as a JSON merge patch that replaces the whole status: fields a controller no longer
//! sets are sent as `null` (RFC 7386 removes them), at every depth, since a merge patch merges
//! nested objects; lists are replaced wholesale.
//! https://datatracker.ietf.org/doc/html/rfc7386

use serde_json::{Map, Value, json};

/// `{"status": new}` plus `null` for every field, at any depth, that `old` has and `new` lacks.
pub fn replace_status(old: &Value, new: &Value) -> Value {
    json!({ "status": replacing(old, new) })
}

/// The merge patch that turns `old` into `new` where both are objects.
fn replacing(old: &Value, new: &Value) -> Value {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return new.clone();
    };
    let mut out: Map<String, Value> = Map::new();
    for (key, value) in new {
        let patched = match old.get(key) {
            Some(before) => replacing(before, value),
            None => value.clone(),
        };
        out.insert(key.clone(), patched);
    }
    for key in old.keys() {
        out.entry(key.clone()).or_insert(Value::Null);
    }
    Value::Object(out)
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
        // Nested objects are merged by the API server, so what they lost is removed too.
        let old = json!({"rollout": {"phase": "Completed", "units": [1], "batches": [2]}});
        let new = json!({"rollout": {"phase": "Progressing"}});
        assert_eq!(
            replace_status(&old, &new),
            json!({"status": {"rollout": {"phase": "Progressing", "units": null, "batches": null}}})
        );
    }
}
