//! Pure rendering of `status.rollout` for `cafe status NAME`: the phase, the group plan (made
//! again from the status: [`plan_of`]) with each group's progress per unit, the whole rollout's
//! progress, and what it waits for.

use super::render_table;
use crate::api::RolloutStatus;
use crate::plan::rollout::{plan_of, released};

/// `1 (Beta)` or `2`: a group as the tables name it.
pub fn group_name(index: i32, beta: bool) -> String {
    if beta {
        format!("{index} (Beta)")
    } else {
        index.to_string()
    }
}

/// The rollout section of `cafe status NAME`. A rollout without a group plan (none made yet, or
/// nothing to do) is one line: phase, batch, message.
pub fn render_rollout(rollout: &RolloutStatus) -> String {
    let plan = plan_of(rollout);
    if plan.is_empty() || rollout.units.is_empty() {
        return summary_line(rollout);
    }
    let total = rollout
        .total_batches
        .max(i32::try_from(plan.len()).unwrap_or(i32::MAX));
    let mut head = format!("Rollout:     {}", rollout.phase.as_deref().unwrap_or("-"));
    if let Some(revision) = &rollout.revision {
        head.push_str(&format!(", revision {revision}"));
    }
    head.push_str(&format!(", group {}/{total}", rollout.current_batch));
    if rollout.deadline_exceeded {
        head.push_str(", progress deadline exceeded");
    }
    let mut out = format!("{head}\n");

    let mut header = vec!["GROUP".to_string(), "STATE".to_string()];
    header.extend(rollout.units.iter().map(|u| u.name.clone()));
    header.push("TOTAL".into());
    let mut rows = vec![header];
    for g in &plan {
        let mut row = vec![
            group_name(g.index, g.beta),
            g.state.clone().unwrap_or_else(|| "-".into()),
        ];
        let (mut done_sum, mut quota_sum) = (0, 0);
        for u in &rollout.units {
            let quota = g.units.get(&u.name).copied().unwrap_or(0);
            let before = released(&plan, &u.name, g.index - 1);
            let done = (u.done - before).clamp(0, quota);
            row.push(format!("{done}/{quota}"));
            done_sum += done;
            quota_sum += quota;
        }
        row.push(format!("{done_sum}/{quota_sum}"));
        rows.push(row);
    }
    let mut all = vec!["all".to_string(), "-".to_string()];
    let (mut done_sum, mut need_sum) = (0, 0);
    for u in &rollout.units {
        let need = u.create + u.update;
        all.push(format!("{}/{need}", u.done));
        done_sum += u.done;
        need_sum += need;
    }
    all.push(format!("{done_sum}/{need_sum}"));
    rows.push(all);
    out.push_str(&render_table(&rows));
    if let Some(message) = rollout.message.as_deref().filter(|m| !m.is_empty()) {
        out.push_str(&format!("Message:     {message}\n"));
    }
    out
}

/// `Rollout:     Progressing, batch 1/2: message`.
fn summary_line(rollout: &RolloutStatus) -> String {
    let mut line = format!("Rollout:     {}", rollout.phase.as_deref().unwrap_or("-"));
    if rollout.total_batches > 0 {
        line.push_str(&format!(
            ", batch {}/{}",
            rollout.current_batch, rollout.total_batches
        ));
    }
    if let Some(message) = rollout.message.as_deref().filter(|m| !m.is_empty()) {
        line.push_str(&format!(": {message}"));
    }
    format!("{line}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cells(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    /// 10 replicas over DCA and DCB, Beta, batchSize 4: groups 1+1, 2+2, 2+2; group 2 in flight.
    fn in_flight() -> RolloutStatus {
        serde_json::from_value(json!({
            "phase": "Progressing", "revision": "def", "currentBatch": 2, "totalBatches": 3,
            "batch": "2/3",
            "batches": [
                {"index": 1, "beta": true, "units": {"DCA": 1, "DCB": 1}, "state": "Completed"},
                {"index": 2, "units": {"DCA": 2, "DCB": 2}, "state": "Progressing"},
                {"index": 3, "units": {"DCA": 2, "DCB": 2}, "state": "Pending"},
            ],
            "units": [
                {"name": "DCA", "replicas": 5, "create": 0, "update": 5, "done": 2},
                {"name": "DCB", "replicas": 5, "create": 1, "update": 4, "done": 1},
            ],
            "message": "group 2/3: waiting for readiness: DCA 1/2, DCB 0/2",
        }))
        .unwrap()
    }

    #[test]
    fn groups_show_done_of_quota_per_unit() {
        let out = render_rollout(&in_flight());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "Rollout:     Progressing, revision def, group 2/3"
        );
        assert_eq!(cells(lines[1]), ["GROUP", "STATE", "DCA", "DCB", "TOTAL"]);
        assert_eq!(
            cells(lines[2]),
            ["1", "(Beta)", "Completed", "1/1", "1/1", "2/2"]
        );
        assert_eq!(cells(lines[3]), ["2", "Progressing", "1/2", "0/2", "1/4"]);
        assert_eq!(cells(lines[4]), ["3", "Pending", "0/2", "0/2", "0/4"]);
        assert_eq!(cells(lines[5]), ["all", "-", "2/5", "1/5", "3/10"]);
        assert_eq!(
            lines[6],
            "Message:     group 2/3: waiting for readiness: DCA 1/2, DCB 0/2"
        );
    }

    /// The same rollout as a hub writes it now: what the plan is made from, and only the
    /// current group and the next.
    fn in_flight_windowed() -> RolloutStatus {
        serde_json::from_value(json!({
            "phase": "Progressing", "revision": "def", "currentBatch": 2, "totalBatches": 3,
            "batch": "2/3", "upgradeType": "Beta", "batchSize": 4,
            "batches": [
                {"index": 2, "units": {"DCA": 2, "DCB": 2}, "state": "Progressing"},
                {"index": 3, "units": {"DCA": 2, "DCB": 2}, "state": "Pending"},
            ],
            "units": [
                {"name": "DCA", "replicas": 5, "create": 0, "update": 5, "done": 2},
                {"name": "DCB", "replicas": 5, "create": 1, "update": 4, "done": 1},
            ],
            "message": "group 2/3: waiting for readiness: DCA 1/2, DCB 0/2",
        }))
        .unwrap()
    }

    #[test]
    fn a_status_keeping_two_groups_shows_the_whole_plan() {
        assert_eq!(
            render_rollout(&in_flight_windowed()),
            render_rollout(&in_flight())
        );
        let mut stalled = in_flight_windowed();
        stalled.phase = Some("Stalled".into());
        stalled.deadline_exceeded = true;
        stalled.batches[0].state = Some("Stalled".into());
        let out = render_rollout(&stalled);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            cells(lines[2]),
            ["1", "(Beta)", "Completed", "1/1", "1/1", "2/2"]
        );
        assert_eq!(cells(lines[3]), ["2", "Stalled", "1/2", "0/2", "1/4"]);
        assert_eq!(cells(lines[4]), ["3", "Pending", "0/2", "0/2", "0/4"]);
    }

    #[test]
    fn a_missed_deadline_is_in_the_header() {
        let mut r = in_flight();
        r.phase = Some("Stalled".into());
        r.deadline_exceeded = true;
        let out = render_rollout(&r);
        assert!(
            out.starts_with(
                "Rollout:     Stalled, revision def, group 2/3, progress deadline exceeded\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn without_a_group_plan_it_is_one_line() {
        let r = RolloutStatus {
            phase: Some("Progressing".into()),
            current_batch: 1,
            total_batches: 2,
            message: Some("waiting for DCB".into()),
            ..RolloutStatus::default()
        };
        assert_eq!(
            render_rollout(&r),
            "Rollout:     Progressing, batch 1/2: waiting for DCB\n"
        );
        assert_eq!(
            render_rollout(&RolloutStatus::default()),
            "Rollout:     -\n"
        );
    }
}
