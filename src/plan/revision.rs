//! The revision of a pod template: ONE function, used by the hub and every member, so that a
//! revision means the same thing everywhere (DESIGN.md section 2).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Canonical JSON: object keys sorted at every level, no insignificant whitespace.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// A stable 10-character hash of the template (hex of SHA-256 of its canonical JSON).
/// Labels the controllers add themselves (the revision label on pods, the unit label the hub
/// puts on each member's template) are not part of the template the user wrote, so they never
/// change the hash: the hub's CafeDeployment and every member's InPlaceSet agree on a revision.
pub fn revision_hash(template: &PodTemplateSpec) -> String {
    let mut value = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(crate::api::labels::REVISION);
        labels.remove(crate::api::labels::UNIT);
    }
    let digest = Sha256::digest(canonical(&value).as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(v: Value) -> PodTemplateSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn stable_and_key_order_independent() {
        let a = template(
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}),
        );
        let b = template(
            json!({"spec": {"containers": [{"image": "x:1", "name": "c"}]}, "metadata": {"labels": {"b": "2", "a": "1"}}}),
        );
        assert_eq!(revision_hash(&a), revision_hash(&b));
        assert_eq!(revision_hash(&a).len(), 10);
    }

    #[test]
    fn changes_with_the_image_but_not_the_revision_label() {
        let a = template(json!({"spec": {"containers": [{"name": "c", "image": "x:1"}]}}));
        let b = template(json!({"spec": {"containers": [{"name": "c", "image": "x:2"}]}}));
        assert_ne!(revision_hash(&a), revision_hash(&b));
        let labelled = template(
            json!({"metadata": {"labels": {"apps.cafe.io/revision": "zzz"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}),
        );
        let plain = template(
            json!({"metadata": {"labels": {}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}),
        );
        assert_eq!(revision_hash(&labelled), revision_hash(&plain));
        let in_unit = template(
            json!({"metadata": {"labels": {"apps.cafe.io/unit": "DCA"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}),
        );
        assert_eq!(
            revision_hash(&in_unit),
            revision_hash(&plain),
            "hub and members agree"
        );
    }
}
