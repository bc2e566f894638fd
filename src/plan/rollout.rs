//! Cross-cluster rollouts, pure.
//!
//! When a CafeDeployment gets a new revision, or more replicas, each unit has work: pods to
//! create at the new revision and pods to update to it. [`groups`] cuts that work into groups: the
//! Beta group (one pod in each unit), then groups of `batchSize` pods over all units, each
//! group's quota split in proportion to what each unit still has to do. The hub releases one
//! group at a time by setting each member InPlaceSet's replicas and partition
//! ([`UnitWork::targets`]); the members do the pods, never more than `maxUnavailablePerUnit` of a
//! unit down at once (the member's `maxUnavailable`). [`step`] is the rollout's state machine:
//! from the previous rollout status and what the members report, the next status, the targets,
//! and whether the confirmation annotation must be reset. Everything it needs to resume after a
//! restart is in the status it returns. That status does not hold the plan: it holds what the
//! plan is made from (the upgrade type, the resolved batch size, each unit's work) and the groups
//! around the current one; [`plan_of`] makes the whole plan again, so the status grows with the
//! units, not with the groups.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{BatchStatus, Loan, RolloutStatus, RolloutStrategy, RolloutUnit, UpgradeType};

pub const PHASE_PROGRESSING: &str = "Progressing";
pub const PHASE_WAITING_FOR_CONFIRM: &str = "WaitingForConfirm";
pub const PHASE_PAUSED: &str = "Paused";
pub const PHASE_COMPLETED: &str = "Completed";
pub const PHASE_STALLED: &str = "Stalled";

pub const GROUP_PENDING: &str = "Pending";
pub const GROUP_PROGRESSING: &str = "Progressing";
pub const GROUP_WAITING: &str = "WaitingForConfirm";
pub const GROUP_COMPLETED: &str = "Completed";
/// The group missed its progress deadline; nothing proceeds until the user acts.
pub const GROUP_STALLED: &str = "Stalled";

/// One unit's work, fixed when the plan is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitWork {
    pub unit: String,
    /// The unit's replicas (its share of `spec.replicas`).
    pub replicas: i32,
    /// Pods to create at the new revision (a scale-out).
    pub create: i32,
    /// Old pods to update to the new revision.
    pub update: i32,
}

/// What the unit's InPlaceSet should say once part of its work is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitTarget {
    pub replicas: i32,
    /// Pods kept on an old revision.
    pub partition: i32,
}

impl UnitWork {
    /// The work of a unit that should have `replicas` pods and has `observed` pods, `updated` of
    /// them on the new revision. Extra pods (a scale-in) are removed at once, old ones first; they
    /// are not work.
    pub fn new(unit: &str, replicas: i32, observed: i32, updated: i32) -> UnitWork {
        let replicas = replicas.max(0);
        let kept = observed.clamp(0, replicas);
        let updated = updated.clamp(0, kept);
        UnitWork {
            unit: unit.to_string(),
            replicas,
            create: replicas - kept,
            update: kept - updated,
        }
    }

    pub fn need(&self) -> i32 {
        self.create.saturating_add(self.update)
    }

    /// Pods already on the new revision when the plan was made.
    pub fn already(&self) -> i32 {
        self.replicas - self.need()
    }

    /// Replicas and partition once `released` pods of this unit's work may proceed. New pods
    /// come first (they cost no availability), then updates.
    pub fn targets(&self, released: i32) -> UnitTarget {
        let released = released.clamp(0, self.need());
        let created = released.min(self.create);
        let updated = released - created;
        UnitTarget {
            replicas: self.replicas - self.create + created,
            partition: self.update - updated,
        }
    }
}

/// One group: pods each unit creates or updates in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub beta: bool,
    pub quota: BTreeMap<String, i32>,
}

impl Group {
    pub fn total(&self) -> i32 {
        self.quota.values().sum()
    }
}

/// `batchSize` resolved against `replicas` (percents round up), at least 1.
pub fn batch_size(strategy: &RolloutStrategy, replicas: i32) -> i32 {
    strategy
        .batch_size
        .0
        .resolve_up(replicas)
        .unwrap_or(1)
        .max(1)
}

/// The group plan for `work`: with Beta, first one pod in each unit that has work; then groups of
/// `batch` pods, each split in proportion to what each unit still has to do (largest remainder,
/// ties to the earlier unit). Every pod of work is in exactly one group. After the Beta group the
/// plan is memoryless: the groups after any prefix are the plan of what is left.
///
/// A rollout's status stores what its plan is made from, not the plan ([`plan_of`]): a change to
/// how groups are cut changes the plan of every rollout in flight when the hub is upgraded.
pub fn groups(upgrade: &UpgradeType, batch: i32, work: &[UnitWork]) -> Vec<Group> {
    let mut left: Vec<i32> = work.iter().map(|w| w.need().max(0)).collect();
    let mut out = vec![];
    let quota_of = |counts: &[i32]| -> BTreeMap<String, i32> {
        work.iter()
            .zip(counts)
            .map(|(w, n)| (w.unit.clone(), *n))
            .collect()
    };
    if *upgrade == UpgradeType::Beta {
        let beta: Vec<i32> = left.iter().map(|n| (*n).min(1)).collect();
        if beta.iter().sum::<i32>() > 0 {
            for (l, b) in left.iter_mut().zip(&beta) {
                *l -= b;
            }
            out.push(Group {
                beta: true,
                quota: quota_of(&beta),
            });
        }
    }
    loop {
        let total: i64 = left.iter().map(|n| i64::from(*n)).sum();
        if total == 0 {
            break;
        }
        let size = i64::from(batch.max(1)).min(total);
        let mut share: Vec<i64> = left.iter().map(|n| size * i64::from(*n) / total).collect();
        let mut spare = size - share.iter().sum::<i64>();
        // Largest remainders first; the order of units breaks ties.
        let mut order: Vec<usize> = (0..left.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse((size * i64::from(left[i])) % total));
        for i in order {
            if spare == 0 {
                break;
            }
            if share[i] < i64::from(left[i]) {
                share[i] += 1;
                spare -= 1;
            }
        }
        let counts: Vec<i32> = share
            .iter()
            .map(|n| i32::try_from(*n).unwrap_or(i32::MAX))
            .collect();
        for (l, c) in left.iter_mut().zip(&counts) {
            *l -= c;
        }
        out.push(Group {
            beta: false,
            quota: quota_of(&counts),
        });
    }
    out
}

/// Groups [`plan_of`] makes again from a status at most. The hub never plans more than about
/// 1000 (the CafeDeployment's validation); a status that would make more (written by hand) is
/// read as it is stored.
pub const MAX_REPLANNED_GROUPS: i64 = 10_000;

/// The whole group plan of a rollout, each group with its state, from its status alone.
///
/// The plan is [`groups`] of the upgrade type, the batch size and the work of each unit the
/// status recorded when the plan was made: the same plan the hub made, whatever the spec says
/// now. A group's state is the one the status stores for it (the current group and the next:
/// [`WINDOW`]); before the current group it is Completed, after it Pending. A status without
/// `upgradeType` and `batchSize` (written by an older hub) stores every group: that list is
/// the plan.
pub fn plan_of(status: &RolloutStatus) -> Vec<BatchStatus> {
    let Some(plan) = replan(status) else {
        return status.batches.clone();
    };
    let k = status.current_batch;
    plan.into_iter()
        .zip(1..)
        .map(|(g, index)| {
            let stored = status
                .batches
                .iter()
                .find(|b| b.index == index)
                .and_then(|b| b.state.clone());
            let state = match index.cmp(&k) {
                std::cmp::Ordering::Less => stored.or_else(|| Some(GROUP_COMPLETED.to_string())),
                std::cmp::Ordering::Greater => stored.or_else(|| Some(GROUP_PENDING.to_string())),
                std::cmp::Ordering::Equal => stored,
            };
            BatchStatus {
                index,
                beta: g.beta,
                units: g.quota,
                state,
            }
        })
        .collect()
}

/// The groups of the plan recorded in `status`; `None` when it records no plan to make again
/// (no `upgradeType` or `batchSize`), or one of more than [`MAX_REPLANNED_GROUPS`].
fn replan(status: &RolloutStatus) -> Option<Vec<Group>> {
    let upgrade = status.upgrade_type.as_ref()?;
    let batch = status.batch_size?.max(1);
    let work: Vec<UnitWork> = status.units.iter().map(work_of).collect();
    let pods: i64 = work
        .iter()
        .map(|w| i64::from(w.create.max(0)) + i64::from(w.update.max(0)))
        .sum();
    let units = i64::try_from(work.len()).unwrap_or(i64::MAX);
    if pods / i64::from(batch) + units > MAX_REPLANNED_GROUPS {
        return None;
    }
    Some(groups(upgrade, batch, &work))
}

/// Groups `status.rollout.batches` keeps: the current one and the next.
pub const WINDOW: i32 = 2;

/// The groups of `plan` a status keeps once `current` is the group released last: the
/// [`WINDOW`] groups from the current one (from the first while none is released).
pub fn window(plan: &[BatchStatus], current: i32) -> Vec<BatchStatus> {
    let first = current.max(1);
    plan.iter()
        .filter(|b| b.index >= first && b.index < first + WINDOW)
        .cloned()
        .collect()
}

/// Pods of `unit` released by the first `k` groups of `plan` (a whole plan: [`plan_of`]).
pub fn released(plan: &[BatchStatus], unit: &str, k: i32) -> i32 {
    plan.iter()
        .take(usize::try_from(k).unwrap_or(0))
        .map(|g| g.units.get(unit).copied().unwrap_or(0))
        .sum()
}

/// A unit's InPlaceSet as the hub last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetObserved {
    pub replicas: i32,
    pub partition: i32,
    /// The member has reported on the InPlaceSet's current generation.
    pub synced: bool,
    /// The revision the member reports as its update revision.
    pub update_revision: Option<String>,
    pub status_replicas: i32,
    pub updated: i32,
    /// Pods on the update revision, available.
    pub updated_available: i32,
}

/// What the rollout knows of one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitObserved {
    pub unit: String,
    /// The member cluster the unit maps to.
    pub cluster: String,
    /// The unit's share of `spec.replicas`.
    pub target: i32,
    /// Why the member is not usable; `None` when it is Ready.
    pub unreachable: Option<String>,
    pub set: Option<SetObserved>,
    /// Replicas the unit runs beyond (+) or below (-) its share for loans (see
    /// [`super::loans::deltas`]); its InPlaceSet is asked for the rollout's target [`lend`]s.
    pub loan: i32,
}

/// Each unit's InPlaceSet target once `loans` are applied to the rollout's `targets`.
///
/// A borrowed replica stands in for one of the lender's and runs the revision that replica
/// runs, so loans never add a pod at the update revision: lent replicas are taken from the
/// lender's old-revision pods first (its partition), then from its updated ones, and never
/// beyond what the lender itself is asked to run (a replica not yet created by the rollout is
/// not created elsewhere either). A lender whose target is unknown (its member was never seen)
/// counts as lending old pods only. The lender runs fewer pods only for a loan that scales it
/// down ([`super::loans::scales_down_lender`]): a lost member is never scaled down, and a
/// returning loan runs in both units until the lender's pods serve. Units absent from
/// `targets` stay absent.
pub fn lend(
    targets: &BTreeMap<String, UnitTarget>,
    loans: &[Loan],
) -> BTreeMap<String, UnitTarget> {
    let mut out = targets.clone();
    // Per lender: (old-revision pods, updated pods) it has not lent yet.
    let mut left: BTreeMap<&str, (i32, i32)> = targets
        .iter()
        .map(|(unit, t)| {
            let replicas = t.replicas.max(0);
            let old = t.partition.clamp(0, replicas);
            (unit.as_str(), (old, replicas - old))
        })
        .collect();
    for loan in loans {
        let lent = loan.replicas.max(0);
        let (old, new) = match left.get_mut(loan.from.as_str()) {
            Some((old_left, new_left)) => {
                let old = lent.min(*old_left);
                let new = (lent - old).min(*new_left);
                *old_left -= old;
                *new_left -= new;
                (old, new)
            }
            None => (lent, 0),
        };
        if super::loans::scales_down_lender(loan)
            && let Some(t) = out.get_mut(&loan.from)
        {
            t.replicas = (t.replicas - lent).max(0);
            t.partition = (t.partition - old).max(0);
        }
        if let Some(t) = out.get_mut(&loan.to) {
            t.replicas += old + new;
            t.partition += old;
        }
    }
    for t in out.values_mut() {
        t.partition = t.partition.clamp(0, t.replicas);
    }
    out
}

impl UnitObserved {
    /// The member reports on `revision` for the spec the hub last applied.
    fn reports(&self, revision: &str) -> bool {
        self.set
            .as_ref()
            .is_none_or(|s| s.synced && s.update_revision.as_deref() == Some(revision))
    }

    /// Pods on `revision`, available, as the member reports them (0 when it reports another).
    fn updated_available(&self, revision: &str) -> i32 {
        self.set
            .as_ref()
            .filter(|s| s.update_revision.as_deref() == Some(revision))
            .map_or(0, |s| s.updated_available)
    }
}

/// Everything [`step`] decides from.
#[derive(Clone, Debug)]
pub struct RolloutInput<'a> {
    /// `namespace/name` is not needed; the name appears in the messages' commands.
    pub name: &'a str,
    pub strategy: &'a RolloutStrategy,
    pub replicas: i32,
    /// The CafeDeployment's update revision.
    pub revision: &'a str,
    /// The `apps.cafe.io/upgrade-confirmed` annotation.
    pub confirmed: Option<&'a str>,
    pub previous: Option<&'a RolloutStatus>,
    /// In `topology.values` order.
    pub units: &'a [UnitObserved],
    /// The loans the units run now (the InPlaceSets were asked for the targets [`lend`]s).
    pub loans: &'a [Loan],
    pub now: Timestamp,
}

/// The `Progressing` condition the rollout calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// What [`step`] decides.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutDecision {
    pub status: RolloutStatus,
    /// Per unit: what its InPlaceSet should say, before loans ([`lend`]). Only reachable members
    /// are written; an unreachable unit's target says what a borrower runs for it. A unit
    /// absent here is left as it is.
    pub targets: BTreeMap<String, UnitTarget>,
    /// Set `apps.cafe.io/upgrade-confirmed: "false"` BEFORE writing the status: a "true" left
    /// from the previous confirmation must never release the next group.
    pub reset_confirmation: bool,
    pub progressing: Progress,
    /// Events for the transitions this step makes: (reason, note).
    pub events: Vec<(&'static str, String)>,
    /// When to look again (the progress deadline) if nothing else happens first.
    pub recheck: Option<Duration>,
}

fn group_label(k: i32, total: i32, plan: &[BatchStatus]) -> String {
    let beta = plan
        .get(usize::try_from(k - 1).unwrap_or(usize::MAX))
        .is_some_and(|g| g.beta);
    format!("group {k}/{total}{}", if beta { " (Beta)" } else { "" })
}

fn quota_text(plan: &[BatchStatus], k: i32) -> String {
    plan.get(usize::try_from(k - 1).unwrap_or(usize::MAX))
        .map(|g| {
            g.units
                .iter()
                .map(|(u, n)| format!("{u} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The next rollout status, member targets and condition.
pub fn step(input: &RolloutInput<'_>) -> RolloutDecision {
    let previous = input.previous.cloned().unwrap_or_default();
    let same_plan = previous.revision.as_deref() == Some(input.revision)
        && previous.units.len() == input.units.len()
        && !previous.units.is_empty()
        && previous
            .units
            .iter()
            .zip(input.units)
            .all(|(p, u)| p.name == u.unit && p.replicas == u.target);
    let unreachable: Vec<String> = input
        .units
        .iter()
        .filter_map(|u| {
            u.unreachable
                .as_ref()
                .map(|why| format!("member {} (unit {}): {why}", u.cluster, u.unit))
        })
        .collect();

    let mut status = if same_plan {
        previous.clone()
    } else {
        let silent: Vec<String> = input
            .units
            .iter()
            .filter(|u| u.unreachable.is_none() && !u.reports(input.revision))
            .map(|u| format!("{} (member {})", u.unit, u.cluster))
            .collect();
        if !unreachable.is_empty() || !silent.is_empty() {
            return planning(input, &previous, &unreachable, &silent);
        }
        fresh_plan(input)
    };
    // Within this step `status.batches` is the whole plan; the status returned keeps the
    // window around the current group of it.
    status.batches = plan_of(&status);

    // Progress of each unit's work. Pods a unit carries for another on the new revision are
    // not its own progress: what it shows is capped at what its released groups ask of it.
    let released_now = status.current_batch;
    for (row, u) in status.units.iter_mut().zip(input.units) {
        if u.unreachable.is_none() && u.reports(input.revision) {
            let work = work_of(row);
            let cap = released(&status.batches, &row.name, released_now).min(work.need());
            row.done = (u.updated_available(input.revision) - work.already()).clamp(0, cap);
        }
    }
    let total = i32::try_from(status.batches.len()).unwrap_or(i32::MAX);
    let k = status.current_batch.clamp(0, total);
    // Group 0 is "nothing released": group 1 may start at once; a plan without groups is done
    // once the members show it (a scale-in, say).
    // A rollout that completed stays completed: a member lost later, or a pod dying, is the
    // Available condition's business, not a rollout's (nothing is released any more).
    let finished = same_plan && k == total && previous.phase.as_deref() == Some(PHASE_COMPLETED);
    let complete = finished || (k == 0 && total > 0) || group_complete(&status, input, k);
    let pause = input.strategy.pause;
    let mut events = vec![];
    let mut recheck = None;
    let mut reset_confirmation = false;
    let was = previous.phase.clone();
    let label = group_label(k, total, &status.batches);

    let (phase, progress) = if k == total && complete {
        if was.as_deref() != Some(PHASE_COMPLETED) && same_plan {
            events.push((
                "RolloutCompleted",
                format!("revision {} is in every unit", input.revision),
            ));
        }
        (
            PHASE_COMPLETED,
            Progress {
                status: "True",
                reason: "RolloutCompleted",
                message: match total {
                    1 => format!(
                        "the group is done; every unit runs revision {}",
                        input.revision
                    ),
                    _ => format!(
                        "all {total} groups done; every unit runs revision {}",
                        input.revision
                    ),
                },
            },
        )
    } else if status.deadline_exceeded && !pause {
        stalled_by_deadline(input, &status, k, total)
    } else if pause {
        status.deadline_exceeded = false;
        if was.as_deref() != Some(PHASE_PAUSED) {
            events.push(("RolloutPaused", format!("paused at {label}")));
        }
        (
            PHASE_PAUSED,
            Progress {
                status: "Unknown",
                reason: "RolloutPaused",
                message: format!(
                    "paused at {label}; work in flight finishes, nothing new starts until `cafe rollout resume {}`",
                    input.name
                ),
            },
        )
    } else if !unreachable.is_empty() {
        if was.as_deref() != Some(PHASE_STALLED) {
            events.push((
                "RolloutFrozen",
                format!("{label}: waiting for {}", unreachable.join("; ")),
            ));
        }
        (
            PHASE_STALLED,
            Progress {
                status: "Unknown",
                reason: "MemberUnavailable",
                message: format!(
                    "{label}: frozen until every member is back: {}",
                    unreachable.join("; ")
                ),
            },
        )
    } else if complete {
        let may_release = k == 0
            || !input.strategy.need_waiting_for_confirm
            || (was.as_deref() == Some(PHASE_WAITING_FOR_CONFIRM)
                && input.confirmed == Some("true"));
        if may_release {
            status.current_batch = k + 1;
            status.batch_started_at = Some(Time(input.now));
            let next = group_label(k + 1, total, &status.batches);
            events.push((
                "GroupStarted",
                format!("{next} started: {}", quota_text(&status.batches, k + 1)),
            ));
            recheck = Some(deadline(input));
            (
                PHASE_PROGRESSING,
                Progress {
                    status: "True",
                    reason: "GroupProgressing",
                    message: format!("{next} started"),
                },
            )
        } else {
            reset_confirmation = input.confirmed != Some("false");
            if was.as_deref() != Some(PHASE_WAITING_FOR_CONFIRM) {
                events.push((
                    "WaitingForConfirm",
                    format!(
                        "{label} complete; confirm the next group with `cafe rollout confirm {}`",
                        input.name
                    ),
                ));
            }
            (
                PHASE_WAITING_FOR_CONFIRM,
                Progress {
                    status: "True",
                    reason: "WaitingForConfirm",
                    message: format!(
                        "{label} complete; waiting for confirmation: `cafe rollout confirm {}`",
                        input.name
                    ),
                },
            )
        }
    } else {
        // A group in flight: the deadline clock restarts after a pause or an outage.
        if matches!(was.as_deref(), Some(PHASE_PAUSED) | Some(PHASE_STALLED)) {
            status.batch_started_at = Some(Time(input.now));
        }
        let started = status.batch_started_at.as_ref().map_or(input.now, |t| t.0);
        let elapsed: Duration = input
            .now
            .duration_since(started)
            .try_into()
            .unwrap_or(Duration::ZERO);
        if elapsed > deadline(input) {
            status.deadline_exceeded = true;
            let (phase, progress) = stalled_by_deadline(input, &status, k, total);
            events.push(("ProgressDeadlineExceeded", progress.message.clone()));
            (phase, progress)
        } else {
            recheck = Some(deadline(input) - elapsed + Duration::from_secs(1));
            (
                PHASE_PROGRESSING,
                Progress {
                    status: "True",
                    reason: "GroupProgressing",
                    message: format!(
                        "{label}: waiting for readiness: {}",
                        unit_progress(&status, status.current_batch)
                    ),
                },
            )
        }
    };

    let k = status.current_batch;
    let complete_now = finished || (k == 0 && total > 0) || group_complete(&status, input, k);
    for b in &mut status.batches {
        b.state = Some(
            match b.index.cmp(&k) {
                std::cmp::Ordering::Less => GROUP_COMPLETED,
                std::cmp::Ordering::Greater => GROUP_PENDING,
                std::cmp::Ordering::Equal if !complete_now && status.deadline_exceeded => {
                    GROUP_STALLED
                }
                std::cmp::Ordering::Equal if !complete_now => GROUP_PROGRESSING,
                std::cmp::Ordering::Equal if phase == PHASE_WAITING_FOR_CONFIRM => GROUP_WAITING,
                std::cmp::Ordering::Equal => GROUP_COMPLETED,
            }
            .to_string(),
        );
    }
    // Each rollout's Events are its own: the same words in the next rollout are another fact.
    let events = events
        .into_iter()
        .map(|(reason, note)| {
            if note.contains(input.revision) {
                (reason, note)
            } else {
                (reason, format!("{note} (revision {})", input.revision))
            }
        })
        .collect();
    status.phase = Some(phase.to_string());
    status.total_batches = total;
    status.batch = Some(format!("{k}/{total}"));
    status.message = Some(progress.message.clone());
    let targets = targets(&status);
    // A plan [`plan_of`] can make again is not stored: only the groups around the current one.
    // One it cannot (an older hub's status) is kept whole.
    if replan(&status).is_some() {
        status.batches = window(&status.batches, k);
    }
    RolloutDecision {
        targets,
        status,
        reset_confirmation,
        progressing: progress,
        events,
        recheck,
    }
}

fn deadline(input: &RolloutInput<'_>) -> Duration {
    Duration::from_secs(u64::try_from(input.strategy.progress_deadline_seconds).unwrap_or(600))
}

fn stalled_by_deadline(
    input: &RolloutInput<'_>,
    status: &RolloutStatus,
    k: i32,
    total: i32,
) -> (&'static str, Progress) {
    (
        PHASE_STALLED,
        Progress {
            status: "False",
            reason: "ProgressDeadlineExceeded",
            message: format!(
                "{} not complete within progressDeadlineSeconds={}: {}; nothing proceeds until you act: `cafe rollout undo {}` or a new template",
                group_label(k, total, &status.batches),
                input.strategy.progress_deadline_seconds,
                unit_progress(status, k),
                input.name
            ),
        },
    )
}

fn work_of(row: &RolloutUnit) -> UnitWork {
    UnitWork {
        unit: row.name.clone(),
        replicas: row.replicas,
        create: row.create,
        update: row.update,
    }
}

/// "DCA 1/2, DCB 0/2": pods of group `k` done per unit.
fn unit_progress(status: &RolloutStatus, k: i32) -> String {
    status
        .units
        .iter()
        .map(|row| {
            let before = released(&status.batches, &row.name, k - 1);
            let quota = released(&status.batches, &row.name, k) - before;
            let done = (row.done - before).clamp(0, quota);
            format!("{} {done}/{quota}", row.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every unit has its share of groups 1..=k on the new revision and available, as reported for
/// the spec the hub applied for group k (loans included).
fn group_complete(status: &RolloutStatus, input: &RolloutInput<'_>, k: i32) -> bool {
    let wanted = lend(&released_targets(status, k), input.loans);
    status.units.iter().zip(input.units).all(|(row, u)| {
        let work = work_of(row);
        let want = wanted
            .get(&row.name)
            .copied()
            .unwrap_or_else(|| work.targets(released(&status.batches, &row.name, k)));
        let applied = u.set.as_ref().is_some_and(|s| {
            s.replicas == want.replicas
                && s.partition == want.partition
                && s.status_replicas == want.replicas
        });
        // Lent pods run elsewhere: a unit cannot show more than it runs.
        let needed = (work.already() + released(&status.batches, &row.name, k)).min(want.replicas);
        let nothing_to_do = want.replicas == 0 && u.set.is_none();
        nothing_to_do
            || (applied
                && u.unreachable.is_none()
                && u.reports(input.revision)
                && u.updated_available(input.revision) >= needed)
    })
}

/// Every unit's InPlaceSet replicas and partition once groups 1..=k are released, before loans.
fn released_targets(status: &RolloutStatus, k: i32) -> BTreeMap<String, UnitTarget> {
    status
        .units
        .iter()
        .map(|row| {
            let released = released(&status.batches, &row.name, k);
            (row.name.clone(), work_of(row).targets(released))
        })
        .collect()
}

/// A new plan from what every member reports on the new revision.
fn fresh_plan(input: &RolloutInput<'_>) -> RolloutStatus {
    let work: Vec<UnitWork> = input
        .units
        .iter()
        .map(|u| {
            // What the unit already has is what its InPlaceSet asks for, less what it runs for
            // loans: a pod being replaced right now is not new work.
            let (observed, updated) = u
                .set
                .as_ref()
                .map_or((0, 0), |s| ((s.replicas - u.loan).max(0), s.updated));
            UnitWork::new(&u.unit, u.target, observed, updated)
        })
        .collect();
    let batch = batch_size(input.strategy, input.replicas);
    let plan = groups(&input.strategy.upgrade_type, batch, &work);
    RolloutStatus {
        phase: Some(PHASE_PROGRESSING.into()),
        revision: Some(input.revision.to_string()),
        current_batch: 0,
        total_batches: i32::try_from(plan.len()).unwrap_or(i32::MAX),
        batch: None,
        upgrade_type: Some(input.strategy.upgrade_type.clone()),
        batch_size: Some(batch),
        batches: plan
            .into_iter()
            .enumerate()
            .map(|(i, g)| BatchStatus {
                index: i32::try_from(i + 1).unwrap_or(i32::MAX),
                beta: g.beta,
                units: g.quota,
                state: None,
            })
            .collect(),
        units: work
            .iter()
            .map(|w| RolloutUnit {
                name: w.unit.clone(),
                replicas: w.replicas,
                create: w.create,
                update: w.update,
                done: 0,
            })
            .collect(),
        batch_started_at: None,
        deadline_exceeded: false,
        message: None,
    }
}

/// Before a plan can be made: every member must be reachable and report on the new revision.
/// Until then each reachable member gets the new template with nothing released (its pods
/// keep their revision), and unreachable ones are left alone: a scale-out waits too.
fn planning(
    input: &RolloutInput<'_>,
    previous: &RolloutStatus,
    unreachable: &[String],
    silent: &[String],
) -> RolloutDecision {
    let mut waiting: Vec<String> = unreachable.to_vec();
    if !silent.is_empty() {
        waiting.push(format!(
            "members to report revision {}: {}",
            input.revision,
            silent.join(", ")
        ));
    }
    let message = format!("planning the rollout; waiting for {}", waiting.join("; "));
    let targets = input
        .units
        .iter()
        .filter(|u| u.unreachable.is_none())
        .map(|u| {
            // Targets before loans ([`lend`] applies them again): what the unit asks for less
            // what it runs for loans.
            let target = match &u.set {
                // Already on this revision: nothing more to hold back (a lender's partition
                // gets back what lending took, at most what it lent).
                Some(s) if u.reports(input.revision) => UnitTarget {
                    replicas: (s.replicas - u.loan).max(0),
                    partition: s.partition + (-u.loan).max(0),
                },
                // The new template arrives with every pod held on its revision.
                Some(s) => UnitTarget {
                    replicas: (s.replicas - u.loan).max(0),
                    partition: (s.replicas - u.loan).max(s.replicas),
                },
                None => UnitTarget {
                    replicas: 0,
                    partition: 0,
                },
            };
            (u.unit.clone(), target)
        })
        .collect();
    let frozen = !unreachable.is_empty();
    RolloutDecision {
        status: RolloutStatus {
            phase: Some(
                if frozen {
                    PHASE_STALLED
                } else {
                    PHASE_PROGRESSING
                }
                .to_string(),
            ),
            revision: Some(input.revision.to_string()),
            message: Some(message.clone()),
            ..RolloutStatus::default()
        },
        targets,
        reset_confirmation: false,
        progressing: Progress {
            status: if frozen { "Unknown" } else { "True" },
            reason: if frozen {
                "MemberUnavailable"
            } else {
                "NewRevision"
            },
            message,
        },
        events: if previous.revision.as_deref() != Some(input.revision) {
            vec![(
                "NewRevision",
                format!("rolling out revision {}", input.revision),
            )]
        } else {
            vec![]
        },
        recheck: None,
    }
}

/// Every unit's InPlaceSet replicas and partition for the groups released so far, before
/// loans; the unreachable ones too, since what they run decides what a borrower runs for them.
fn targets(status: &RolloutStatus) -> BTreeMap<String, UnitTarget> {
    released_targets(status, status.current_batch)
}

#[cfg(test)]
mod tests;
