//! The revision of a pod template: ONE function, used by the hub and every member, so that a
//! revision means the same thing everywhere.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The revision pods ran before the update now under way: the update revision once no pod runs
/// another; otherwise the previous current revision while pods still run it, else the
/// revision most pods run (ties to the smallest, so it is stable). `pods` gives pods per
/// revision, in any order, a revision possibly several times. Never a revision no pod runs.
pub fn current_revision<'a>(
    previous: Option<&str>,
    update: &str,
    pods: impl Iterator<Item = (&'a str, usize)>,
) -> String {
    let mut others: std::collections::BTreeMap<&str, usize> = Default::default();
    for (rev, n) in pods.filter(|(r, n)| *r != update && *n > 0) {
        *others.entry(rev).or_default() += n;
    }
    if let Some(prev) = previous.filter(|p| others.contains_key(p)) {
        return prev.to_string();
    }
    let mut best: Option<(&str, usize)> = None;
    for (rev, n) in others {
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((rev, n));
        }
    }
    best.map_or_else(|| update.to_string(), |(r, _)| r.to_string())
}

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

    #[test]
    fn current_revision_follows_the_pods() {
        fn run<'a>(
            pods: &'a [(&'static str, usize)],
        ) -> impl Iterator<Item = (&'static str, usize)> + 'a {
            pods.iter().copied()
        }
        assert_eq!(current_revision(None, "b", run(&[])), "b");
        assert_eq!(current_revision(Some("a"), "b", run(&[("b", 2)])), "b");
        assert_eq!(
            current_revision(Some("a"), "c", run(&[("a", 1), ("b", 2)])),
            "a"
        );
        assert_eq!(
            current_revision(Some("z"), "c", run(&[("a", 1), ("b", 2)])),
            "b"
        );
        // Counts add up over units; a revision with no pods is none.
        assert_eq!(
            current_revision(None, "c", run(&[("a", 2), ("b", 1), ("b", 2), ("d", 0)])),
            "b"
        );
        assert_eq!(current_revision(Some("d"), "c", run(&[("d", 0)])), "c");
    }
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
