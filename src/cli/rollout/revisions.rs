//! `cafe rollout history`, the table: one row per revision the hub keeps as a ControllerRevision
//! ([`crate::hub::history`]), with the numbers `cafe rollout undo --to-revision` takes.

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::ControllerRevision;

use crate::cli::status::{format_age, render_table};
use crate::hub::history::{CHANGE_CAUSE, hash_of};
use crate::runtime::controller_revision::template;

/// The history table of the CafeDeployment `key` (`namespace/name`), oldest revision first:
/// REVISION, HASH, IMAGES (`container=image`, or just the image of a single container), AGE
/// (since the revision was first recorded) and CHANGE-CAUSE (the `kubernetes.io/change-cause`
/// annotation the CafeDeployment had then).
pub fn render_history(key: &str, history: &[ControllerRevision], now: DateTime<Utc>) -> String {
    if history.is_empty() {
        return format!(
            "No revisions of {key} recorded yet: the hub records each template it rolls out\n"
        );
    }
    let mut sorted: Vec<&ControllerRevision> = history.iter().collect();
    sorted.sort_by_key(|cr| cr.revision);
    let mut rows = vec![
        ["REVISION", "HASH", "IMAGES", "AGE", "CHANGE-CAUSE"]
            .map(String::from)
            .to_vec(),
    ];
    for cr in sorted {
        let age = cr
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0))
            .map_or_else(|| "-".to_string(), |t| format_age(now - t));
        let cause = cr
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CHANGE_CAUSE))
            .filter(|c| !c.is_empty())
            .cloned()
            .unwrap_or_else(|| "<none>".to_string());
        rows.push(vec![
            cr.revision.to_string(),
            hash_of(cr).unwrap_or("-").to_string(),
            images(cr),
            age,
            cause,
        ]);
    }
    render_table(&rows)
}

/// `nginx:1.28`, or `web=nginx:1.28,proxy=envoy:1.30` for several containers; `?` for a
/// revision holding no readable template.
pub(crate) fn images(cr: &ControllerRevision) -> String {
    match template(cr).and_then(|t| t.spec) {
        Some(spec) => images_text(&spec.containers),
        None => "?".to_string(),
    }
}

/// `nginx:1.28`, or `web=nginx:1.28,proxy=envoy:1.30` for several containers.
pub(crate) fn images_text(containers: &[k8s_openapi::api::core::v1::Container]) -> String {
    let image = |c: &k8s_openapi::api::core::v1::Container| c.image.clone().unwrap_or_default();
    match containers {
        [one] => image(one),
        many => many
            .iter()
            .map(|c| format!("{}={}", c.name, image(c)))
            .collect::<Vec<_>>()
            .join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn revision(
        number: i64,
        hash: &str,
        containers: Value,
        cause: Option<&str>,
    ) -> ControllerRevision {
        let mut annotations = serde_json::Map::new();
        if let Some(c) = cause {
            annotations.insert(CHANGE_CAUSE.into(), json!(c));
        }
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": format!("demo-{hash}"), "namespace": "default",
                         "labels": {"apps.cafe.io/revision": hash},
                         "annotations": annotations,
                         "creationTimestamp": "2026-11-30T12:00:00Z"},
            "data": {"template": {"spec": {"containers": containers}}},
            "revision": number,
        }))
        .unwrap()
    }

    #[test]
    fn rollout_history_lists_number_hash_images_age_and_change_cause() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:05:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let history = [
            revision(
                3,
                "ccc",
                json!([{"name": "web", "image": "nginx:1.29"}, {"name": "proxy", "image": "envoy:1"}]),
                None,
            ),
            revision(
                1,
                "aaa",
                json!([{"name": "web", "image": "nginx:1.27"}]),
                Some("kubectl apply --filename=demo.yaml"),
            ),
        ];
        let out = render_history("default/demo", &history, now);
        let lines: Vec<&str> = out.lines().collect();
        let cells = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            cells(lines[0]),
            ["REVISION", "HASH", "IMAGES", "AGE", "CHANGE-CAUSE"]
        );
        assert_eq!(
            cells(lines[1]),
            [
                "1",
                "aaa",
                "nginx:1.27",
                "5m",
                "kubectl",
                "apply",
                "--filename=demo.yaml"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            ["3", "ccc", "web=nginx:1.29,proxy=envoy:1", "5m", "<none>"]
        );
        assert!(
            render_history("default/demo", &[], now).starts_with("No revisions of default/demo")
        );
    }
}
