//! Pure rendering of CafeDeployments for `cafe status`: text and JSON from plain values.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{Output, Target};
use crate::api::CafeDeployment;

/// The text `cafe status` prints for `items` (already fetched for `target`).
pub fn render(
    target: &Target,
    items: &[CafeDeployment],
    output: Output,
    now: DateTime<Utc>,
    images: &RevisionImages,
) -> String {
    match (target, output) {
        (Target::One { .. }, Output::Table) => items
            .first()
            .map(|cd| render_one_at(cd, now, images))
            .unwrap_or_default(),
        (Target::One { .. }, Output::Json) => {
            items.first().map(render_json_one).unwrap_or_default()
        }
        (Target::AllNamespaces, Output::Table) => render_list(items, true, now),
        (Target::Namespace(ns), Output::Table) if items.is_empty() => {
            format!("No CafeDeployments in namespace {ns}.\n")
        }
        (Target::Namespace(_), Output::Table) => render_list(items, false, now),
        (_, Output::Json) => render_json_list(items),
    }
}

/// The images of each revision the CLI could find (from the hub's history), by revision hash:
/// `nginx:1.28`, or `web=nginx:1.28,proxy=envoy:1.30`.
pub type RevisionImages = BTreeMap<String, String>;

/// The images of `cd`'s own template: those of its update revision.
pub fn template_images(cd: &CafeDeployment) -> String {
    cd.spec
        .template
        .spec
        .as_ref()
        .map(|s| crate::cli::rollout::images_text(&s.containers))
        .unwrap_or_default()
}

/// `abc123 (nginx:1.28)`: a revision with its images when known.
fn revision_with_images(revision: &str, images: &RevisionImages) -> String {
    match images.get(revision).filter(|i| !i.is_empty()) {
        Some(i) => format!("{revision} ({i})"),
        None => revision.to_string(),
    }
}

/// One CafeDeployment in full, now, without revision images.
pub fn render_one(cd: &CafeDeployment) -> String {
    render_one_at(cd, Utc::now(), &RevisionImages::new())
}

/// One CafeDeployment in full: totals, one row per unit (an unreachable unit's counts are shown
/// unknown, with how long it has been away), the pods not ready and why, the rollout with when
/// its group started and the deadline left, and the conditions that are not True.
pub fn render_one_at(cd: &CafeDeployment, now: DateTime<Utc>, images: &RevisionImages) -> String {
    let name = cd.metadata.name.as_deref().unwrap_or("");
    let namespace = cd.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = format!("Name:        {name}\nNamespace:   {namespace}\n");
    let Some(status) = &cd.status else {
        out.push_str(&format!(
            "Replicas:    {} desired\nStatus:      none yet: the hub has not reported on this CafeDeployment (is `cafe hub` or `cafe dev` running?)\n",
            cd.spec.replicas
        ));
        return out;
    };
    out.push_str(&format!(
        "Replicas:    {} desired, {} ready, {} updated, {} available\n",
        cd.spec.replicas, status.ready_replicas, status.updated_replicas, status.available_replicas
    ));
    if let (Some(current), Some(update)) = (&status.current_revision, &status.update_revision) {
        let mut images = images.clone();
        images
            .entry(update.clone())
            .or_insert_with(|| template_images(cd));
        if current == update {
            out.push_str(&format!(
                "Revision:    {}\n",
                revision_with_images(current, &images)
            ));
        } else {
            out.push_str(&format!(
                "Revision:    {} -> {}\n",
                revision_with_images(current, &images),
                revision_with_images(update, &images)
            ));
        }
    }
    if let (Some(observed), Some(generation)) = (status.observed_generation, cd.metadata.generation)
        && observed < generation
    {
        out.push_str(&format!(
            "Note:        this status is for generation {observed}; the spec is at generation {generation} (the hub has not caught up yet)\n"
        ));
    }

    out.push('\n');
    if status.units.is_empty() {
        out.push_str(&format!(
            "Units:       none reported yet ({})\n",
            cd.spec.topology.values.join(", ")
        ));
    } else {
        let mut rows = vec![
            [
                "UNIT",
                "CLUSTER",
                "DESIRED",
                "READY",
                "UPDATED",
                "AVAILABLE",
                "UNSCHEDULABLE",
                "REACHABLE",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for u in &status.units {
            // What the hub cannot see is unknown, not the last numbers it saw.
            let count = |n: i32| {
                if u.reachable {
                    n.to_string()
                } else {
                    "?".to_string()
                }
            };
            rows.push(vec![
                u.name.clone(),
                u.cluster.clone().unwrap_or_else(|| "-".into()),
                desired_with_loans(u),
                count(u.ready_replicas),
                count(u.updated_replicas),
                count(u.available_replicas),
                count(u.unschedulable_replicas),
                match (&u.reachable, &u.unreachable_since) {
                    (true, _) => "yes".to_string(),
                    (false, Some(since)) => format!(
                        "no, for {}",
                        format_age(now.signed_duration_since(
                            DateTime::<Utc>::from_timestamp(since.0.as_second(), 0).unwrap_or(now)
                        ))
                    ),
                    (false, None) => "no".to_string(),
                },
            ]);
        }
        out.push_str(&render_table(&rows));
        for u in status.units.iter().filter(|u| !u.reachable) {
            out.push_str(&format!(
                "{}: member {} unreachable; last seen {} ready, {} available (not counted)\n",
                u.name,
                u.cluster.as_deref().unwrap_or("-"),
                u.ready_replicas,
                u.available_replicas
            ));
        }
        let not_ready: Vec<String> = status
            .units
            .iter()
            .flat_map(|u| {
                u.not_ready_pods.iter().map(move |p| {
                    let mut line = format!("  {} {}", u.name, p.name);
                    if let Some(rev) = &p.revision {
                        line.push_str(&format!(" (revision {rev})"));
                    }
                    line.push_str(&format!(": {}", p.reason));
                    if !p.message.is_empty() {
                        line.push_str(&format!(": {}", p.message));
                    }
                    match p.restart_count {
                        0 => {}
                        1 => line.push_str("; 1 restart"),
                        n => line.push_str(&format!("; {n} restarts")),
                    }
                    line
                })
            })
            .collect();
        if !not_ready.is_empty() {
            out.push_str("Not ready:\n");
            for line in not_ready {
                out.push_str(&line);
                out.push('\n');
            }
        }
        // Each loan, and why: what a reader needs to tell a reschedule from a failover.
        for loan in &status.loans {
            out.push_str(&format!(
                "{} lent {} to {}: {}{} since {}{}\n",
                loan.from,
                loan.replicas,
                loan.to,
                loan.reason,
                if loan.returning {
                    ", on its way back"
                } else {
                    ""
                },
                loan.since.0,
                loan.message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default(),
            ));
        }
        if status.loans.is_empty() {
            for u in &status.units {
                if u.lent_replicas > 0 {
                    out.push_str(&format!(
                        "{} lends {} replica(s) to other units\n",
                        u.name, u.lent_replicas
                    ));
                }
                if u.borrowed_replicas > 0 {
                    out.push_str(&format!(
                        "{} runs {} replica(s) borrowed from other units\n",
                        u.name, u.borrowed_replicas
                    ));
                }
            }
        }
    }

    out.push('\n');
    let rollout = status.rollout.clone().unwrap_or_default();
    out.push_str(&super::rollout::render_rollout(&rollout));
    if let Some(started) = &rollout.batch_started_at
        && rollout.phase.as_deref() == Some("Progressing")
        && rollout.current_batch > 0
    {
        let started = DateTime::<Utc>::from_timestamp(started.0.as_second(), 0).unwrap_or(now);
        let elapsed = now.signed_duration_since(started);
        let deadline =
            chrono::Duration::seconds(i64::from(cd.spec.strategy.progress_deadline_seconds));
        out.push_str(&format!(
            "Group:       {} started {} ago; {}\n",
            rollout.current_batch,
            format_age(elapsed),
            if elapsed < deadline {
                format!(
                    "{} left of progressDeadlineSeconds={}",
                    format_age(deadline - elapsed),
                    cd.spec.strategy.progress_deadline_seconds
                )
            } else {
                format!(
                    "past progressDeadlineSeconds={}",
                    cd.spec.strategy.progress_deadline_seconds
                )
            }
        ));
    }

    let not_true: Vec<_> = status
        .conditions
        .iter()
        .filter(|c| c.status != "True")
        .collect();
    if not_true.is_empty() {
        if !status.conditions.is_empty() {
            let names: Vec<_> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
            out.push_str(&format!("Conditions:  all True ({})\n", names.join(", ")));
        }
    } else {
        out.push_str("Conditions not True:\n");
        for c in not_true {
            let mut line = format!("  {}={}", c.type_, c.status);
            if !c.reason.is_empty() {
                line.push_str(&format!(" {}", c.reason));
            }
            if !c.message.is_empty() {
                line.push_str(&format!(": {}", c.message));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// A unit's desired replicas, with what loans change: `7 (5+2 borrowed)`, `3 (5-2 lent)`.
fn desired_with_loans(u: &crate::api::UnitStatus) -> String {
    let target = u.target_replicas;
    if target == u.desired_replicas
        || (target == 0 && u.borrowed_replicas == 0 && u.lent_replicas == 0)
    {
        return u.desired_replicas.to_string();
    }
    let diff = target - u.desired_replicas;
    if diff > 0 {
        format!("{target} ({}+{diff} borrowed)", u.desired_replicas)
    } else {
        format!("{target} ({}{diff} lent)", u.desired_replicas)
    }
}

/// One line per CafeDeployment: totals, each unit's ready/desired, the rollout phase and age.
pub fn render_list(items: &[CafeDeployment], with_namespace: bool, now: DateTime<Utc>) -> String {
    let mut header = vec![];
    if with_namespace {
        header.push("NAMESPACE");
    }
    header.extend([
        "NAME",
        "DESIRED",
        "READY",
        "UPDATED",
        "AVAILABLE",
        "UNITS",
        "PHASE",
        "AGE",
    ]);
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for cd in items {
        let status = cd.status.clone().unwrap_or_default();
        let units = status
            .units
            .iter()
            .map(|u| {
                let ready = if u.reachable {
                    u.ready_replicas.to_string()
                } else {
                    "?".to_string()
                };
                let target = if u.target_replicas > 0 || u.lent_replicas > 0 {
                    u.target_replicas
                } else {
                    u.desired_replicas
                };
                format!("{}:{ready}/{target}", u.name)
            })
            .collect::<Vec<_>>();
        let mut row = vec![];
        if with_namespace {
            row.push(cd.metadata.namespace.clone().unwrap_or_default());
        }
        row.extend([
            cd.metadata.name.clone().unwrap_or_default(),
            cd.spec.replicas.to_string(),
            status.ready_replicas.to_string(),
            status.updated_replicas.to_string(),
            status.available_replicas.to_string(),
            if units.is_empty() {
                "-".into()
            } else {
                units.join(",")
            },
            status
                .rollout
                .and_then(|r| r.phase)
                .unwrap_or_else(|| "-".into()),
            cd.metadata.creation_timestamp.as_ref().map_or_else(
                || "-".into(),
                |t| {
                    format_age(chrono::TimeDelta::seconds(
                        now.timestamp() - t.0.as_second(),
                    ))
                },
            ),
        ]);
        rows.push(row);
    }
    render_table(&rows)
}

/// `-o json` for one CafeDeployment: its status (`{}` until the hub reports one).
pub fn render_json_one(cd: &CafeDeployment) -> String {
    let status = cd
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_else(|| json!({}));
    format!(
        "{}\n",
        serde_json::to_string_pretty(&status).unwrap_or_default()
    )
}

/// `-o json` for a list: `[{namespace, name, status}]`.
pub fn render_json_list(items: &[CafeDeployment]) -> String {
    let list: Vec<_> = items
        .iter()
        .map(|cd| {
            json!({
                "namespace": cd.metadata.namespace,
                "name": cd.metadata.name,
                "status": cd.status.as_ref().and_then(|s| serde_json::to_value(s).ok()).unwrap_or_else(|| json!({})),
            })
        })
        .collect();
    format!(
        "{}\n",
        serde_json::to_string_pretty(&list).unwrap_or_default()
    )
}

/// Ages the way kubectl prints them: `45s`, `12m`, `5h`, `3d`.
pub fn format_age(age: chrono::TimeDelta) -> String {
    let s = age.num_seconds().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Left-aligned columns separated by three spaces, like kubectl; the last column is not padded.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(status: serde_json::Value) -> CafeDeployment {
        let mut obj = json!({
            "apiVersion": "apps.cafe.io/v1alpha1",
            "kind": "CafeDeployment",
            "metadata": {"name": "demo", "namespace": "default", "generation": 2,
                         "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {
                "replicas": 6,
                "selector": {"matchLabels": {"app": "demo"}},
                "template": {"metadata": {"labels": {"app": "demo"}},
                             "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}},
                "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"]},
            },
        });
        if !status.is_null() {
            obj["status"] = status;
        }
        serde_json::from_value(obj).unwrap()
    }

    fn progressing() -> serde_json::Value {
        json!({
            "observedGeneration": 2,
            "replicas": 6, "readyReplicas": 4, "availableReplicas": 4, "updatedReplicas": 5,
            "currentRevision": "abc", "updateRevision": "def",
            "rollout": {"phase": "Progressing", "currentBatch": 2, "totalBatches": 3, "message": "waiting for DCB"},
            "units": [
                {"name": "DCA", "cluster": "dca", "desiredReplicas": 3, "targetReplicas": 3, "replicas": 3, "readyReplicas": 3,
                 "availableReplicas": 3, "updatedReplicas": 3, "reachable": true},
                {"name": "DCB", "cluster": "dcb", "desiredReplicas": 3, "targetReplicas": 2, "replicas": 3, "readyReplicas": 1,
                 "availableReplicas": 1, "updatedReplicas": 2, "unschedulableReplicas": 2, "reachable": false,
                 "borrowedReplicas": 0, "lentReplicas": 1},
            ],
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "",
                 "lastTransitionTime": "2025-01-01T00:00:00Z"},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "batch 2 did not complete within 600s", "lastTransitionTime": "2025-01-01T00:00:00Z"},
            ],
        })
    }

    fn cells(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    /// `cafe status` while DCB is lost and DCA carries its replicas, group 2 stuck on a pod
    /// that crash-loops.
    fn outage_loan_and_stuck_group() -> serde_json::Value {
        json!({
            "observedGeneration": 3, "replicas": 6, "readyReplicas": 5, "availableReplicas": 5,
            "updatedReplicas": 3, "currentRevision": "old1", "updateRevision": "new2",
            "units": [
                {"name": "DCA", "cluster": "dca", "desiredReplicas": 3, "targetReplicas": 6,
                 "replicas": 6, "readyReplicas": 5, "availableReplicas": 5, "updatedReplicas": 3,
                 "borrowedReplicas": 3, "reachable": true,
                 "notReadyPods": [{"name": "demo-x1", "revision": "new2", "reason": "CrashLoopBackOff",
                                   "message": "back-off 40s restarting failed container", "restartCount": 4}]},
                {"name": "DCB", "cluster": "dcb", "desiredReplicas": 3, "targetReplicas": 0,
                 "replicas": 3, "readyReplicas": 3, "availableReplicas": 3, "updatedReplicas": 1,
                 "lentReplicas": 3, "reachable": false, "unreachableSince": "2026-01-01T00:00:00Z"},
            ],
            "loans": [{"from": "DCB", "to": "DCA", "replicas": 3, "reason": "Failover",
                       "since": "2026-01-01T00:00:05Z"}],
            "rollout": {"phase": "Progressing", "revision": "new2", "currentBatch": 2, "totalBatches": 3,
                        "batchStartedAt": "2026-01-01T00:00:10Z",
                        "batches": [{"index": 1, "beta": true, "units": {"DCA": 1, "DCB": 1}},
                                    {"index": 2, "units": {"DCA": 1, "DCB": 1}},
                                    {"index": 3, "units": {"DCA": 1, "DCB": 1}}],
                        "units": [{"name": "DCA", "replicas": 3, "update": 3, "done": 1},
                                  {"name": "DCB", "replicas": 3, "update": 3, "done": 1}]},
        })
    }

    #[test]
    fn status_during_an_outage_a_loan_and_a_stuck_group_says_what_is_known() {
        let cd = demo(outage_loan_and_stuck_group());
        let now = DateTime::<Utc>::from_timestamp(1_767_225_700, 0).unwrap(); // 2026-01-01T00:01:40Z
        let images = RevisionImages::from([("old1".to_string(), "demo:1".to_string())]);
        let out = render_one_at(&cd, now, &images);
        // The revisions with their images.
        assert!(
            out.contains("Revision:    old1 (demo:1) -> new2 ("),
            "{out}"
        );
        // DCA carries DCB's 3: its target shows it.
        let dca = out.lines().find(|l| l.starts_with("DCA ")).unwrap();
        assert_eq!(cells(dca)[2..5], ["6", "(3+3", "borrowed)"], "{out}");
        // DCB cannot be seen: its numbers are unknown, with how long it has been away.
        let dcb = out.lines().find(|l| l.starts_with("DCB ")).unwrap();
        assert_eq!(cells(dcb)[5..9], ["?", "?", "?", "?"], "{dcb}");
        assert!(dcb.ends_with("no, for 100s"), "{dcb}");
        assert!(
            out.contains(
                "DCB: member dcb unreachable; last seen 3 ready, 3 available (not counted)"
            ),
            "{out}"
        );
        // The stuck group: which pod, why, how often it restarted; when it started and the
        // deadline left.
        assert!(out.contains("Not ready:\n  DCA demo-x1 (revision new2): CrashLoopBackOff: back-off 40s restarting failed container; 4 restarts\n"), "{out}");
        assert!(
            out.contains("Group:       2 started 90s ago; 8m left of progressDeadlineSeconds=600"),
            "{out}"
        );
        // The list view does not count what it cannot see either.
        let list = render_list(&[cd], false, now);
        assert!(list.contains("DCA:5/6,DCB:?/0"), "{list}");
    }

    #[test]
    fn one_shows_totals_units_rollout_and_failing_conditions() {
        let out = render_one(&demo(progressing()));
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            out.contains("Replicas:    6 desired, 4 ready, 5 updated, 4 available"),
            "{out}"
        );
        assert!(out.contains("Revision:    abc -> def"), "{out}");
        let header = lines
            .iter()
            .position(|l| l.starts_with("UNIT"))
            .expect(&out);
        assert_eq!(
            cells(lines[header]),
            [
                "UNIT",
                "CLUSTER",
                "DESIRED",
                "READY",
                "UPDATED",
                "AVAILABLE",
                "UNSCHEDULABLE",
                "REACHABLE"
            ]
        );
        assert_eq!(
            cells(lines[header + 1]),
            ["DCA", "dca", "3", "3", "3", "3", "0", "yes"]
        );
        assert_eq!(
            cells(lines[header + 2]),
            ["DCB", "dcb", "2", "(3-1", "lent)", "?", "?", "?", "?", "no"]
        );
        assert!(out.contains("DCB lends 1 replica(s)"), "{out}");
        assert!(
            out.contains("Rollout:     Progressing, batch 2/3: waiting for DCB"),
            "{out}"
        );
        assert!(
            out.contains(
                "  Progressing=False ProgressDeadlineExceeded: batch 2 did not complete within 600s"
            ),
            "{out}"
        );
        assert!(
            !out.contains("Available=True"),
            "True conditions are not listed: {out}"
        );
        assert!(!out.contains("Note:"), "status is current: {out}");
    }

    #[test]
    fn one_with_a_group_plan_shows_each_group_per_unit() {
        let mut status = progressing();
        status["rollout"] = json!({
            "phase": "WaitingForConfirm", "revision": "def", "currentBatch": 1, "totalBatches": 2,
            "batches": [
                {"index": 1, "beta": true, "units": {"DCA": 1, "DCB": 1}, "state": "WaitingForConfirm"},
                {"index": 2, "units": {"DCA": 2, "DCB": 2}, "state": "Pending"},
            ],
            "units": [
                {"name": "DCA", "replicas": 3, "update": 3, "done": 1},
                {"name": "DCB", "replicas": 3, "update": 3, "done": 1},
            ],
            "message": "group 1/2 (Beta) complete; waiting for confirmation: `cafe rollout confirm demo`",
        });
        let out = render_one(&demo(status));
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            out.contains("Rollout:     WaitingForConfirm, revision def, group 1/2\n"),
            "{out}"
        );
        let header = lines
            .iter()
            .position(|l| l.starts_with("GROUP"))
            .expect(&out);
        assert_eq!(
            cells(lines[header + 1]),
            ["1", "(Beta)", "WaitingForConfirm", "1/1", "1/1", "2/2"]
        );
        assert_eq!(
            cells(lines[header + 2]),
            ["2", "Pending", "0/2", "0/2", "0/4"]
        );
        assert_eq!(cells(lines[header + 3]), ["all", "-", "1/3", "1/3", "2/6"]);
        assert!(
            out.contains("Message:     group 1/2 (Beta) complete; waiting for confirmation"),
            "{out}"
        );
        assert!(
            out.contains("Progressing=False"),
            "conditions still follow: {out}"
        );
    }

    #[test]
    fn one_without_status_says_the_hub_has_not_reported() {
        let out = render_one(&demo(serde_json::Value::Null));
        assert!(out.contains("6 desired"), "{out}");
        assert!(out.contains("none yet"), "{out}");
    }

    #[test]
    fn one_with_stale_status_says_so() {
        let mut status = progressing();
        status["observedGeneration"] = json!(1);
        status["conditions"] = json!([]);
        let out = render_one(&demo(status));
        assert!(
            out.contains("generation 1; the spec is at generation 2"),
            "{out}"
        );
        assert!(!out.contains("Conditions"), "{out}");
    }

    #[test]
    fn list_has_one_line_per_cafedeployment() {
        let now = "2025-01-01T00:05:00Z".parse::<DateTime<Utc>>().unwrap();
        let mut other = demo(serde_json::Value::Null);
        other.metadata.name = Some("api".into());
        other.metadata.namespace = Some("payments".into());
        let items = [demo(progressing()), other];
        let out = render_list(&items, true, now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(
            cells(lines[0]),
            [
                "NAMESPACE",
                "NAME",
                "DESIRED",
                "READY",
                "UPDATED",
                "AVAILABLE",
                "UNITS",
                "PHASE",
                "AGE"
            ]
        );
        assert_eq!(
            cells(lines[1]),
            [
                "default",
                "demo",
                "6",
                "4",
                "5",
                "4",
                "DCA:3/3,DCB:?/2",
                "Progressing",
                "5m"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            ["payments", "api", "6", "0", "0", "0", "-", "-", "5m"]
        );
        let out = render_list(&items[..1], false, now);
        assert!(out.starts_with("NAME "), "{out}");
    }

    #[test]
    fn json_is_the_status() {
        let one: serde_json::Value =
            serde_json::from_str(&render_json_one(&demo(progressing()))).unwrap();
        assert_eq!(one["readyReplicas"], 4);
        assert_eq!(one["units"][1]["name"], "DCB");
        let none: serde_json::Value =
            serde_json::from_str(&render_json_one(&demo(serde_json::Value::Null))).unwrap();
        assert_eq!(none, json!({}));
        let list: serde_json::Value =
            serde_json::from_str(&render_json_list(&[demo(progressing())])).unwrap();
        assert_eq!(list[0]["name"], "demo");
        assert_eq!(list[0]["status"]["updatedReplicas"], 5);
    }

    #[test]
    fn render_picks_the_view_for_the_target() {
        let now = Utc::now();
        let ns = Target::Namespace("apps".into());
        assert_eq!(
            render(&ns, &[], Output::Table, now, &RevisionImages::new()),
            "No CafeDeployments in namespace apps.\n"
        );
        assert_eq!(
            render(&ns, &[], Output::Json, now, &RevisionImages::new()),
            "[]\n"
        );
        let one = Target::One {
            namespace: "default".into(),
            name: "demo".into(),
        };
        assert!(
            render(
                &one,
                &[demo(progressing())],
                Output::Table,
                now,
                &RevisionImages::new()
            )
            .starts_with("Name:        demo")
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let s = chrono::TimeDelta::seconds;
        assert_eq!(format_age(s(45)), "45s");
        assert_eq!(format_age(s(600)), "10m");
        assert_eq!(format_age(s(5 * 3600)), "5h");
        assert_eq!(format_age(s(3 * 86400)), "3d");
        assert_eq!(format_age(s(-5)), "0s");
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["A".to_string(), "LONG".into(), "Z".into()],
            vec!["long".to_string(), "b".into(), "".into()],
        ];
        assert_eq!(render_table(&rows), "A      LONG   Z\nlong   b\n");
    }
}
