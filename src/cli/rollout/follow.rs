//! `cafe rollout status`, the decisions: what to print for each state of a CafeDeployment seen
//! while following its rollout, and whether that state ends the command. Pure; the watch that
//! feeds it is in the parent module.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::api::{BatchStatus, CafeDeployment, RolloutStatus};
use crate::plan::revision::revision_hash;
use crate::plan::rollout::{
    GROUP_COMPLETED, GROUP_WAITING, PHASE_COMPLETED, PHASE_PAUSED, PHASE_WAITING_FOR_CONFIRM,
    plan_of,
};
use crate::plan::unit_status::PROGRESSING;

/// The Progressing condition's reason when a group missed `progressDeadlineSeconds`.
pub const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// Whether a state of the CafeDeployment ends `cafe rollout status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not done: keep watching.
    Waiting,
    /// The template in the spec runs everywhere: exit 0.
    Complete,
    /// It will not complete without someone acting (the progress deadline passed): this cause.
    Failed(String),
}

/// What has been said so far while following one CafeDeployment's rollout, so that each
/// completed group is reported once and a waiting line is not repeated.
#[derive(Debug, Clone, Default)]
pub struct Follow {
    name: String,
    /// Groups reported complete, by the revision they rolled out and their index.
    reported: BTreeSet<(String, i32)>,
    /// The last waiting line printed.
    last: Option<String>,
}

impl Follow {
    /// Following CafeDeployment `name` (as the commands the lines suggest name it).
    pub fn new(name: &str) -> Self {
        Follow {
            name: name.to_string(),
            ..Follow::default()
        }
    }

    /// What it was last waiting for, for a timeout's message.
    pub fn last_state(&self) -> Option<&str> {
        self.last.as_deref()
    }

    /// The lines to print for `cd` as it is now, and whether that ends the command.
    ///
    /// The rollout is complete only when the hub has seen the current spec (observedGeneration
    /// is the object's generation), reports the current template's revision as the update
    /// revision, and says phase Completed: a Completed phase left from the previous template
    /// is not this one's.
    pub fn observe(&mut self, cd: &CafeDeployment) -> (Vec<String>, Verdict) {
        let mut lines = vec![];
        let name = self.name.clone();
        let status = cd.status.clone().unwrap_or_default();
        if let Some(generation) = cd.metadata.generation
            && status.observed_generation.unwrap_or(0) < generation
        {
            self.waiting(
                &mut lines,
                format!("Waiting for the hub to observe the change to {name} (generation {generation})..."),
            );
            return (lines, Verdict::Waiting);
        }
        let revision = revision_hash(&cd.spec.template);
        let rollout = match &status.rollout {
            Some(r)
                if status.update_revision.as_deref() == Some(revision.as_str())
                    && r.revision.as_deref().is_none_or(|r| r == revision) =>
            {
                r
            }
            _ => {
                self.waiting(
                    &mut lines,
                    format!("Waiting for the hub to plan the rollout of revision {revision}..."),
                );
                return (lines, Verdict::Waiting);
            }
        };

        let plan = plan_of(rollout);
        let total = group_total(rollout, &plan);
        for group in &plan {
            let done = matches!(
                group.state.as_deref(),
                Some(GROUP_COMPLETED) | Some(GROUP_WAITING)
            );
            if done && self.reported.insert((revision.clone(), group.index)) {
                lines.push(format!(
                    "{} complete: {}",
                    group_label(group, total),
                    quota(group)
                ));
            }
        }

        let phase = rollout.phase.as_deref().unwrap_or("");
        let message = rollout.message.clone().unwrap_or_default();
        if let Some(cause) = deadline_exceeded(cd, rollout) {
            return (lines, Verdict::Failed(cause));
        }
        match phase {
            PHASE_COMPLETED => {
                lines.push(format!(
                    "cafedeployment \"{name}\" successfully rolled out (revision {revision})"
                ));
                (lines, Verdict::Complete)
            }
            PHASE_WAITING_FOR_CONFIRM => {
                let k = rollout.current_batch;
                self.waiting(
                    &mut lines,
                    format!(
                        "Waiting for confirmation: group {k}/{total} is complete; `cafe rollout confirm {name}` starts group {}/{total}",
                        k + 1
                    ),
                );
                (lines, Verdict::Waiting)
            }
            PHASE_PAUSED => {
                self.waiting(
                    &mut lines,
                    format!(
                        "Waiting: the rollout is paused at group {}/{total}; `cafe rollout resume {name}` goes on",
                        rollout.current_batch
                    ),
                );
                (lines, Verdict::Waiting)
            }
            _ => {
                let what = if message.is_empty() {
                    format!("{phase}, group {}/{total}", rollout.current_batch)
                } else {
                    message
                };
                self.waiting(
                    &mut lines,
                    format!("Waiting for the rollout to finish: {what}"),
                );
                (lines, Verdict::Waiting)
            }
        }
    }

    fn waiting(&mut self, lines: &mut Vec<String>, line: String) {
        if self.last.as_deref() != Some(line.as_str()) {
            lines.push(line.clone());
            self.last = Some(line);
        }
    }
}

/// The cause, when the current group missed its progress deadline: the rollout status flag or
/// the Progressing condition's reason, with the hub's message.
fn deadline_exceeded(cd: &CafeDeployment, rollout: &RolloutStatus) -> Option<String> {
    let condition = cd
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == PROGRESSING && c.reason == DEADLINE_EXCEEDED);
    if !rollout.deadline_exceeded && condition.is_none() {
        return None;
    }
    let message = condition
        .map(|c| c.message.clone())
        .filter(|m| !m.is_empty())
        .or_else(|| rollout.message.clone())
        .unwrap_or_default();
    Some(format!("{DEADLINE_EXCEEDED}: {message}"))
}

fn group_total(rollout: &RolloutStatus, plan: &[BatchStatus]) -> i32 {
    rollout
        .total_batches
        .max(i32::try_from(plan.len()).unwrap_or(i32::MAX))
}

/// `group 1/3 (Beta)`.
fn group_label(group: &BatchStatus, total: i32) -> String {
    let beta = if group.beta { " (Beta)" } else { "" };
    format!("group {}/{total}{beta}", group.index)
}

/// `DCA 1, DCB 1`: the pods the group created or updated in each unit.
fn quota(group: &BatchStatus) -> String {
    group
        .units
        .iter()
        .map(|(unit, n)| format!("{unit} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A duration as kubectl's `--timeout` takes it: `90s`, `5m`, `1h30m`, `500ms`; a bare number
/// is seconds. `0` means no timeout.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration; use e.g. 90s, 5m or 1h30m (0: no timeout)");
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(number * seconds).map_err(|_| bad())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The demo at generation 2 with `status` (its rollout for the current template unless the
    /// status says otherwise).
    fn demo(status: Value) -> CafeDeployment {
        let mut cd: CafeDeployment = serde_json::from_value(json!({
            "apiVersion": "apps.cafe.io/v1alpha1",
            "kind": "CafeDeployment",
            "metadata": {"name": "demo", "namespace": "default", "generation": 2},
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": {"app": "demo"}},
                "template": {"metadata": {"labels": {"app": "demo"}},
                             "spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}},
                "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"]},
            },
        }))
        .unwrap();
        let revision = revision_hash(&cd.spec.template);
        let mut status = status;
        if status.get("updateRevision").is_none() {
            status["updateRevision"] = json!(revision);
        }
        if status.get("observedGeneration").is_none() {
            status["observedGeneration"] = json!(2);
        }
        cd.status = Some(serde_json::from_value(status).unwrap());
        cd
    }

    fn rollout(phase: &str, current: i32, states: [&str; 3]) -> Value {
        json!({"rollout": {
            "phase": phase, "currentBatch": current, "totalBatches": 3,
            "message": format!("group {current}/3: waiting for readiness: DCA 0/1, DCB 0/1"),
            "batches": [
                {"index": 1, "beta": true, "units": {"DCA": 1, "DCB": 1}, "state": states[0]},
                {"index": 2, "units": {"DCA": 1, "DCB": 1}, "state": states[1]},
                {"index": 3, "units": {"DCA": 0, "DCB": 0}, "state": states[2]},
            ],
        }})
    }

    #[test]
    fn rollout_status_reports_each_group_once_as_it_completes() {
        let mut follow = Follow::new("demo");
        let (lines, verdict) = follow.observe(&demo(rollout(
            "Progressing",
            1,
            ["Progressing", "Pending", "Pending"],
        )));
        assert_eq!(verdict, Verdict::Waiting);
        assert_eq!(
            lines,
            [
                "Waiting for the rollout to finish: group 1/3: waiting for readiness: DCA 0/1, DCB 0/1"
            ]
        );
        // The same state again says nothing new.
        let (lines, _) = follow.observe(&demo(rollout(
            "Progressing",
            1,
            ["Progressing", "Pending", "Pending"],
        )));
        assert!(lines.is_empty(), "{lines:?}");

        let (lines, verdict) = follow.observe(&demo(rollout(
            "Progressing",
            2,
            ["Completed", "Progressing", "Pending"],
        )));
        assert_eq!(verdict, Verdict::Waiting);
        assert_eq!(lines[0], "group 1/3 (Beta) complete: DCA 1, DCB 1");
        assert!(lines[1].starts_with("Waiting for the rollout to finish: group 2/3"));

        let (lines, verdict) = follow.observe(&demo(rollout(
            "Completed",
            3,
            ["Completed", "Completed", "Completed"],
        )));
        assert_eq!(verdict, Verdict::Complete);
        let revision = revision_hash(&demo(json!({})).spec.template);
        assert_eq!(
            lines,
            [
                "group 2/3 complete: DCA 1, DCB 1".to_string(),
                "group 3/3 complete: DCA 0, DCB 0".to_string(),
                format!("cafedeployment \"demo\" successfully rolled out (revision {revision})"),
            ]
        );
    }

    /// The demo's rollout as a hub writes it now: 2 + 2 pods, Beta then batches of 2 (groups
    /// 1 + 1, 1 + 1), only the current group and the next kept.
    fn windowed(phase: &str, current: i32, kept: Value) -> Value {
        json!({"rollout": {
            "phase": phase, "currentBatch": current, "totalBatches": 2,
            "upgradeType": "Beta", "batchSize": 2,
            "message": format!("group {current}/2: waiting for readiness: DCA 0/1, DCB 0/1"),
            "batches": kept,
            "units": [
                {"name": "DCA", "replicas": 2, "update": 2},
                {"name": "DCB", "replicas": 2, "update": 2},
            ],
        }})
    }

    #[test]
    fn rollout_status_reports_groups_the_status_no_longer_keeps() {
        let mut follow = Follow::new("demo");
        let (lines, _) = follow.observe(&demo(windowed(
            "Progressing",
            1,
            json!([
                {"index": 1, "beta": true, "units": {"DCA": 1, "DCB": 1}, "state": "Progressing"},
                {"index": 2, "units": {"DCA": 1, "DCB": 1}, "state": "Pending"},
            ]),
        )));
        assert_eq!(
            lines,
            [
                "Waiting for the rollout to finish: group 1/2: waiting for readiness: DCA 0/1, DCB 0/1"
            ]
        );
        // Group 1 was never seen complete: the status that completes the rollout keeps group 2
        // only, yet both are reported.
        let (lines, verdict) = follow.observe(&demo(windowed(
            "Completed",
            2,
            json!([{"index": 2, "units": {"DCA": 1, "DCB": 1}, "state": "Completed"}]),
        )));
        assert_eq!(verdict, Verdict::Complete);
        assert_eq!(
            lines[..2],
            [
                "group 1/2 (Beta) complete: DCA 1, DCB 1",
                "group 2/2 complete: DCA 1, DCB 1"
            ]
        );
    }

    #[test]
    fn rollout_status_exits_zero_only_when_the_hub_reports_the_current_template_complete() {
        let done = rollout("Completed", 3, ["Completed", "Completed", "Completed"]);
        // The hub has not seen generation 2 yet: the Completed phase is the previous template's.
        let mut stale = done.clone();
        stale["observedGeneration"] = json!(1);
        let (lines, verdict) = Follow::new("demo").observe(&demo(stale));
        assert_eq!(verdict, Verdict::Waiting);
        assert_eq!(
            lines,
            ["Waiting for the hub to observe the change to demo (generation 2)..."]
        );
        // Seen, but still reporting another revision.
        let mut other = done.clone();
        other["updateRevision"] = json!("old");
        let (lines, verdict) = Follow::new("demo").observe(&demo(other));
        assert_eq!(verdict, Verdict::Waiting);
        assert!(lines[0].starts_with("Waiting for the hub to plan the rollout of revision"));
        let (_, verdict) = Follow::new("demo").observe(&demo(done));
        assert_eq!(verdict, Verdict::Complete);
    }

    #[test]
    fn rollout_status_says_it_waits_for_cafe_rollout_confirm() {
        let mut follow = Follow::new("demo");
        let waiting = demo(rollout(
            "WaitingForConfirm",
            1,
            ["WaitingForConfirm", "Pending", "Pending"],
        ));
        let (lines, verdict) = follow.observe(&waiting);
        assert_eq!(verdict, Verdict::Waiting, "it keeps waiting");
        assert_eq!(
            lines,
            [
                "group 1/3 (Beta) complete: DCA 1, DCB 1",
                "Waiting for confirmation: group 1/3 is complete; `cafe rollout confirm demo` starts group 2/3",
            ]
        );
        assert!(follow.observe(&waiting).0.is_empty(), "said once");
    }

    #[test]
    fn rollout_status_fails_on_progress_deadline_exceeded() {
        let mut stalled = rollout("Stalled", 1, ["Progressing", "Pending", "Pending"]);
        stalled["conditions"] = json!([{
            "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "group 1/3 (Beta) not complete within progressDeadlineSeconds=2",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]);
        let (_, verdict) = Follow::new("demo").observe(&demo(stalled));
        assert_eq!(
            verdict,
            Verdict::Failed(
                "ProgressDeadlineExceeded: group 1/3 (Beta) not complete within progressDeadlineSeconds=2"
                    .into()
            )
        );
        // The rollout's own flag, without the condition, says the same.
        let mut flagged = rollout("Stalled", 1, ["Progressing", "Pending", "Pending"]);
        flagged["rollout"]["deadlineExceeded"] = json!(true);
        let (_, verdict) = Follow::new("demo").observe(&demo(flagged));
        assert!(
            matches!(&verdict, Verdict::Failed(m) if m.starts_with("ProgressDeadlineExceeded: group 1/3")),
            "{verdict:?}"
        );
        // A paused rollout is waited for, with what resumes it.
        let (lines, verdict) = Follow::new("demo").observe(&demo(rollout(
            "Paused",
            1,
            ["Progressing", "Pending", "Pending"],
        )));
        assert_eq!(verdict, Verdict::Waiting);
        assert!(lines[0].contains("`cafe rollout resume demo`"), "{lines:?}");
    }

    #[test]
    fn timeouts_read_like_kubectls() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "5x", "m5", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
