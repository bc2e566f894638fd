use super::*;
use crate::api::{IntOrPercent, PositiveIntOrPercent};
use crate::plan::scale::PodFacts;
use crate::plan::update::{self, PodUpdateFacts, Stage, UpdateSpec};
use proptest::prelude::*;

fn work(units: &[(&str, i32, i32)]) -> Vec<UnitWork> {
    units
        .iter()
        .map(|(u, create, update)| UnitWork {
            unit: u.to_string(),
            replicas: create + update,
            create: *create,
            update: *update,
        })
        .collect()
}

fn quotas(plan: &[Group], units: &[&str]) -> Vec<Vec<i32>> {
    plan.iter()
        .map(|g| units.iter().map(|u| g.quota[*u]).collect())
        .collect()
}

#[test]
fn the_seed_example_is_one_plus_one_then_two_plus_two_twice() {
    let w = work(&[("DCA", 0, 5), ("DCB", 0, 5)]);
    let plan = groups(&UpgradeType::Beta, 4, &w);
    assert_eq!(quotas(&plan, &["DCA", "DCB"]), [[1, 1], [2, 2], [2, 2]]);
    assert!(plan[0].beta && !plan[1].beta);
    // The same grouping when the pods are first created.
    let created = groups(
        &UpgradeType::Beta,
        4,
        &work(&[("DCA", 5, 0), ("DCB", 5, 0)]),
    );
    assert_eq!(created, plan);
}

#[test]
fn uneven_units_split_each_group_in_proportion() {
    let w = work(&[("DCA", 0, 7), ("DCB", 0, 3)]);
    assert_eq!(
        quotas(&groups(&UpgradeType::Beta, 4, &w), &["DCA", "DCB"]),
        [[1, 1], [3, 1], [3, 1]]
    );
    assert_eq!(
        quotas(&groups(&UpgradeType::Batch, 4, &w), &["DCA", "DCB"]),
        [[3, 1], [3, 1], [1, 1]]
    );
}

#[test]
fn a_unit_without_work_gets_no_beta_pod() {
    let w = work(&[("DCA", 0, 2), ("DCB", 0, 0)]);
    assert_eq!(
        quotas(&groups(&UpgradeType::Beta, 10, &w), &["DCA", "DCB"]),
        [[1, 0], [1, 0]]
    );
    assert!(groups(&UpgradeType::Beta, 3, &work(&[("DCA", 0, 0)])).is_empty());
}

#[test]
fn targets_create_first_then_update() {
    let w = UnitWork::new("DCA", 5, 3, 1);
    assert_eq!((w.create, w.update, w.already()), (2, 2, 1));
    assert_eq!(
        w.targets(0),
        UnitTarget {
            replicas: 3,
            partition: 2
        }
    );
    assert_eq!(
        w.targets(1),
        UnitTarget {
            replicas: 4,
            partition: 2
        }
    );
    assert_eq!(
        w.targets(3),
        UnitTarget {
            replicas: 5,
            partition: 1
        }
    );
    assert_eq!(
        w.targets(4),
        UnitTarget {
            replicas: 5,
            partition: 0
        }
    );
    // A scale-in is not work: the extra pods go at once.
    let w = UnitWork::new("DCA", 2, 5, 0);
    assert_eq!((w.create, w.update), (0, 2));
    assert_eq!(w.targets(0).replicas, 2);
}

#[test]
fn batch_size_percent_rounds_up() {
    let mut s = RolloutStrategy {
        batch_size: PositiveIntOrPercent(IntOrPercent::Percent("25%".into())),
        ..RolloutStrategy::default()
    };
    assert_eq!(batch_size(&s, 10), 3);
    s.batch_size = PositiveIntOrPercent(IntOrPercent::Int(4));
    assert_eq!(batch_size(&s, 10), 4);
}

fn arb_work() -> impl Strategy<Value = Vec<UnitWork>> {
    prop::collection::vec((0..12i32, 0..12i32, 0..4i32), 1..5).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (create, update, already))| UnitWork {
                unit: format!("U{i}"),
                replicas: create + update + already,
                create,
                update,
            })
            .collect()
    })
}

fn arb_upgrade() -> impl Strategy<Value = UpgradeType> {
    prop_oneof![Just(UpgradeType::Beta), Just(UpgradeType::Batch)]
}

proptest! {
    /// Every pod of work is in exactly one group; groups are never empty and never larger
    /// than the batch size (the Beta group: at most one per unit).
    #[test]
    fn every_pod_is_in_exactly_one_group(w in arb_work(), up in arb_upgrade(), batch in 1..8i32) {
        let plan = groups(&up, batch, &w);
        for unit in &w {
            let total: i32 = plan.iter().map(|g| g.quota[&unit.unit]).sum();
            prop_assert_eq!(total, unit.need());
        }
        for g in &plan {
            prop_assert!(g.total() >= 1);
            if g.beta {
                prop_assert!(g.quota.values().all(|n| *n <= 1));
            } else {
                prop_assert!(g.total() <= batch);
            }
            prop_assert!(g.quota.values().all(|n| *n >= 0));
        }
    }

    /// After the Beta group the plan is memoryless: what follows any prefix of groups is the
    /// plan of the work left, so a plan resumed after a restart is the plan made fresh.
    #[test]
    fn the_plan_after_any_prefix_is_the_plan_of_what_is_left(
        w in arb_work(), up in arb_upgrade(), batch in 1..8i32, cut in 0..20usize,
    ) {
        let plan = groups(&up, batch, &w);
        let first = usize::from(plan.first().is_some_and(|g| g.beta));
        let cut = first + cut.min(plan.len().saturating_sub(first));
        let left: Vec<UnitWork> = w.iter().map(|u| {
            let done: i32 = plan[..cut].iter().map(|g| g.quota[&u.unit]).sum();
            let create = (u.create - done).max(0);
            UnitWork { unit: u.unit.clone(), replicas: u.replicas, create, update: u.need() - done - create }
        }).collect();
        prop_assert_eq!(&plan[cut..], &groups(&UpgradeType::Batch, batch, &left)[..]);
    }
}

/// The strategy of a simulated rollout: no progress deadline gets in the way.
fn simulated_strategy(up: UpgradeType, batch: i32, confirm: bool) -> RolloutStrategy {
    RolloutStrategy {
        upgrade_type: up,
        batch_size: PositiveIntOrPercent(IntOrPercent::Int(batch)),
        need_waiting_for_confirm: confirm,
        progress_deadline_seconds: 100_000,
        ..RolloutStrategy::default()
    }
}

/// One hub step of a simulated rollout toward revision "new".
fn simulated_step(
    strategy: &RolloutStrategy,
    replicas: i32,
    confirmed: Option<&str>,
    previous: Option<&RolloutStatus>,
    units: &[UnitObserved],
    loans: &[Loan],
) -> RolloutDecision {
    step(&RolloutInput {
        name: "demo",
        strategy,
        replicas,
        revision: "new",
        confirmed,
        previous,
        units,
        loans,
        now: Timestamp::UNIX_EPOCH,
    })
}

// ---- the whole rollout, simulated: the hub's step and each member's update planner ----

#[derive(Clone, Debug)]
struct SimPod {
    id: usize,
    new: bool,
    available: bool,
    /// Ticks left until an update in progress finishes.
    updating: Option<u8>,
    updates: u32,
}

#[derive(Clone, Debug)]
struct SimUnit {
    name: String,
    target: i32,
    max_unavailable: usize,
    /// Pods down for other reasons at the start.
    down_at_start: usize,
    spec: Option<UnitTarget>,
    pods: Vec<SimPod>,
    next_id: usize,
}

impl SimUnit {
    fn unavailable(&self, replicas: usize) -> usize {
        replicas.saturating_sub(self.pods.iter().filter(|p| p.available).count())
    }

    /// One pass of the member: the update planner, then the pods move on.
    fn tick(&mut self, slow: bool) {
        let Some(spec) = self.spec else { return };
        let facts: Vec<PodUpdateFacts> = self
            .pods
            .iter()
            .map(|p| PodUpdateFacts {
                pod: PodFacts {
                    name: format!("p{:03}", p.id),
                    uid: p.id.to_string(),
                    scheduled: true,
                    ready: p.available,
                    created: Timestamp::UNIX_EPOCH,
                    deleting: false,
                },
                updated: p.new,
                stage: if p.updating.is_some() {
                    Stage::Updating
                } else {
                    Stage::Normal
                },
                available: p.available && p.updating.is_none(),
                hooked: false,
                recreate: false,
            })
            .collect();
        let plan = update::plan(
            UpdateSpec {
                replicas: usize::try_from(spec.replicas).unwrap(),
                partition: usize::try_from(spec.partition).unwrap(),
                max_unavailable: self.max_unavailable,
            },
            &facts,
        );
        for id in &plan.update_in_place {
            let p = self
                .pods
                .iter_mut()
                .find(|p| p.id.to_string() == id.uid)
                .unwrap();
            p.available = false;
            p.updating = Some(if slow { 2 } else { 1 });
            p.updates += 1;
            p.new = true;
        }
        self.pods
            .retain(|p| !plan.scale_down.iter().any(|d| d.uid == p.id.to_string()));
        for new in std::iter::repeat_n(true, plan.create)
            .chain(std::iter::repeat_n(false, plan.create_old))
        {
            self.next_id += 1;
            self.pods.push(SimPod {
                id: self.next_id,
                new,
                available: false,
                updating: Some(1),
                updates: 0,
            });
        }
        for p in &mut self.pods {
            match p.updating {
                Some(0) | Some(1) => {
                    p.updating = None;
                    p.available = true;
                }
                Some(n) => p.updating = Some(n - 1),
                None => {}
            }
        }
    }

    fn observed(&self, revision: &str) -> SetObserved {
        let spec = self.spec.unwrap_or(UnitTarget {
            replicas: 0,
            partition: 0,
        });
        let count = |f: &dyn Fn(&SimPod) -> bool| {
            i32::try_from(self.pods.iter().filter(|p| f(p)).count()).unwrap()
        };
        SetObserved {
            replicas: spec.replicas,
            partition: spec.partition,
            synced: true,
            update_revision: Some(revision.to_string()),
            status_replicas: count(&|_| true),
            updated: count(&|p| p.new),
            updated_available: count(&|p| p.new && p.available),
        }
    }
}

fn arb_units() -> impl Strategy<Value = Vec<SimUnit>> {
    prop::collection::vec((0..9i32, 0..9i32, 1..3usize, 0..3usize), 1..4).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (target, existing, max_unavailable, down))| {
                let pods: Vec<SimPod> = (0..usize::try_from(existing).unwrap())
                    .map(|id| SimPod {
                        id,
                        new: false,
                        available: id >= down,
                        updating: None,
                        updates: 0,
                    })
                    .collect();
                SimUnit {
                    name: format!("U{i}"),
                    target,
                    max_unavailable,
                    down_at_start: down.min(pods.len()),
                    spec: (existing > 0).then_some(UnitTarget {
                        replicas: existing,
                        partition: existing,
                    }),
                    next_id: pods.len(),
                    pods,
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Drives whole rollouts: every pod is updated at most once and every unit ends on the new
    /// revision with its replicas; no unit ever has more pods down than its floor allows (or than
    /// were down before); one confirmation releases exactly one group; a hub restart (the status
    /// read back from JSON) at any tick changes nothing.
    #[test]
    fn rollouts_complete_within_the_floors_one_group_per_confirmation(
        mut units in arb_units(),
        up in arb_upgrade(),
        batch in 1..6i32,
        confirm in any::<bool>(),
        noise in prop::collection::vec(any::<u8>(), 64),
    ) {
        let strategy = simulated_strategy(up, batch, confirm);
        let replicas: i32 = units.iter().map(|u| u.target).sum();
        let revision = "new";
        let mut status: Option<RolloutStatus> = None;
        let mut confirmed: Option<String> = None;
        let mut releases_since_confirm = 0;
        let mut completed = false;
        let mut first_plan: Option<Vec<BatchStatus>> = None;
        for tick in 0..400usize {
            let bits = noise[tick % noise.len()].rotate_left(u32::try_from(tick % 8).unwrap());
            let observed: Vec<UnitObserved> = units.iter().map(|u| UnitObserved {
                unit: u.name.clone(),
                cluster: u.name.to_lowercase(),
                target: u.target,
                unreachable: None,
                loan: 0,
                set: u.spec.map(|_| u.observed(revision)),
            }).collect();
            let before = status.as_ref().map(|s| s.current_batch);
            let d = simulated_step(&strategy, replicas, confirmed.as_deref(), status.as_ref(), &observed, &[]);
            if d.reset_confirmation {
                confirmed = Some("false".into());
            }
            if before.is_some_and(|b| d.status.current_batch == b + 1) && b_needs_confirm(&d, confirm) {
                releases_since_confirm += 1;
                prop_assert!(releases_since_confirm <= 1, "one confirmation released two groups");
            }
            // The status keeps the groups around the current one; the plan made again from it
            // is the plan made at the start, whole.
            prop_assert!(d.status.batches.len() <= 2, "{:?}", d.status.batches);
            if !d.status.units.is_empty() {
                let plan = without_states(&plan_of(&d.status));
                let first = first_plan.get_or_insert_with(|| plan.clone());
                prop_assert_eq!(&plan, first);
                prop_assert_eq!(i32::try_from(plan.len()).unwrap(), d.status.total_batches);
            }
            // A restart: the status is all the hub keeps.
            let round_trip: RolloutStatus =
                serde_json::from_value(serde_json::to_value(&d.status).unwrap()).unwrap();
            prop_assert_eq!(&round_trip, &d.status);
            status = Some(round_trip);
            if d.status.phase.as_deref() == Some(PHASE_COMPLETED) {
                completed = true;
                break;
            }
            if d.status.phase.as_deref() == Some(PHASE_WAITING_FOR_CONFIRM) && bits % 3 == 0 {
                confirmed = Some("true".into());
                releases_since_confirm = 0;
            }
            for u in &mut units {
                if let Some(t) = d.targets.get(&u.name) {
                    u.spec = Some(*t);
                }
                u.tick(bits % 2 == 0);
                let spec = u.spec.unwrap();
                let floor = u.max_unavailable.max(u.down_at_start);
                prop_assert!(
                    u.unavailable(usize::try_from(spec.replicas.min(i32::try_from(u.pods.len()).unwrap())).unwrap()) <= floor,
                    "unit {} below its floor", u.name
                );
            }
        }
        prop_assert!(completed, "the rollout completes");
        for u in &units {
            prop_assert_eq!(u.pods.len(), usize::try_from(u.target).unwrap());
            prop_assert!(u.pods.iter().all(|p| p.new && p.available && p.updates <= 1));
        }
    }
}

/// Whether the release just made needed a confirmation (any group after the first).
fn b_needs_confirm(d: &RolloutDecision, confirm: bool) -> bool {
    confirm && d.status.current_batch > 1
}

#[test]
fn a_stale_confirmation_never_skips_a_group() {
    let strategy = RolloutStrategy {
        need_waiting_for_confirm: true,
        batch_size: PositiveIntOrPercent(IntOrPercent::Int(2)),
        ..RolloutStrategy::default()
    };
    let unit = |updated_available: i32, spec: UnitTarget| UnitObserved {
        unit: "DCA".into(),
        cluster: "dca".into(),
        target: 4,
        unreachable: None,
        loan: 0,
        set: Some(SetObserved {
            replicas: spec.replicas,
            partition: spec.partition,
            synced: true,
            update_revision: Some("new".into()),
            status_replicas: 4,
            updated: updated_available,
            updated_available,
        }),
    };
    let input = |units: &[UnitObserved], prev: Option<&RolloutStatus>, confirmed: Option<&str>| {
        step(&RolloutInput {
            name: "demo",
            strategy: &strategy,
            replicas: 4,
            revision: "new",
            confirmed,
            previous: prev,
            units,
            loans: &[],
            now: Timestamp::UNIX_EPOCH,
        })
    };
    let start = [unit(
        0,
        UnitTarget {
            replicas: 4,
            partition: 4,
        },
    )];
    // Beta (1), then 2, then 1.
    let d = input(&start, None, Some("true"));
    assert_eq!(d.status.current_batch, 1);
    assert_eq!(
        d.targets["DCA"],
        UnitTarget {
            replicas: 4,
            partition: 3
        }
    );
    // Beta done while a stale "true" is still set: it waits, and resets the annotation.
    let beta_done = [unit(1, d.targets["DCA"])];
    let d = input(&beta_done, Some(&d.status), Some("true"));
    assert_eq!(d.status.phase.as_deref(), Some(PHASE_WAITING_FOR_CONFIRM));
    assert!(d.reset_confirmation);
    assert_eq!(d.status.current_batch, 1);
    // "false": still waiting; "true": exactly the next group.
    let d2 = input(&beta_done, Some(&d.status), Some("false"));
    assert_eq!(d2.status.current_batch, 1);
    assert!(!d2.reset_confirmation);
    let d3 = input(&beta_done, Some(&d2.status), Some("true"));
    assert_eq!(d3.status.current_batch, 2);
    assert_eq!(d3.status.phase.as_deref(), Some(PHASE_PROGRESSING));
    assert_eq!(
        d3.targets["DCA"],
        UnitTarget {
            replicas: 4,
            partition: 1
        }
    );
    // Looking again with the same "true" before the group completes releases nothing more.
    let d4 = input(
        &[unit(1, d3.targets["DCA"])],
        Some(&d3.status),
        Some("true"),
    );
    assert_eq!(d4.status.current_batch, 2);
}

#[test]
fn a_missed_deadline_stalls_until_the_user_acts() {
    let strategy = RolloutStrategy {
        progress_deadline_seconds: 10,
        ..RolloutStrategy::default()
    };
    let units = [UnitObserved {
        unit: "DCA".into(),
        cluster: "dca".into(),
        target: 2,
        unreachable: None,
        loan: 0,
        set: Some(SetObserved {
            replicas: 2,
            partition: 1,
            synced: true,
            update_revision: Some("new".into()),
            status_replicas: 2,
            updated: 1,
            updated_available: 0,
        }),
    }];
    let at = |s: i64| Timestamp::from_second(s).unwrap();
    let run = |prev: Option<&RolloutStatus>, now: Timestamp, pause: bool| {
        let strategy = RolloutStrategy {
            pause,
            ..strategy.clone()
        };
        step(&RolloutInput {
            name: "demo",
            strategy: &strategy,
            replicas: 2,
            revision: "new",
            confirmed: None,
            previous: prev,
            units: &units,
            loans: &[],
            now,
        })
    };
    let mut first = run(None, at(100), false).status;
    // The plan was made from a unit with one updated pod (not yet available).
    first.current_batch = 1;
    let d = run(Some(&first), at(105), false);
    assert_eq!(d.status.phase.as_deref(), Some(PHASE_PROGRESSING));
    let d = run(Some(&d.status), at(120), false);
    assert_eq!(d.status.phase.as_deref(), Some(PHASE_STALLED));
    assert_eq!(d.progressing.reason, "ProgressDeadlineExceeded");
    assert!(d.progressing.message.contains("cafe rollout undo demo"));
    assert!(
        d.events
            .iter()
            .any(|(r, _)| *r == "ProgressDeadlineExceeded")
    );
    // The group's own row says so too.
    assert_eq!(plan_of(&d.status)[0].state.as_deref(), Some(GROUP_STALLED));
    // Sticky.
    let d = run(Some(&d.status), at(121), false);
    assert!(d.status.deadline_exceeded);
    // Pausing clears it; resuming restarts the clock.
    let d = run(Some(&d.status), at(122), true);
    assert_eq!(d.status.phase.as_deref(), Some(PHASE_PAUSED));
    let d = run(Some(&d.status), at(130), false);
    assert_eq!(d.status.phase.as_deref(), Some(PHASE_PROGRESSING));
}

#[test]
fn an_unreachable_member_freezes_the_rollout() {
    let strategy = RolloutStrategy::default();
    let mut units = vec![
        UnitObserved {
            unit: "DCA".into(),
            cluster: "dca".into(),
            target: 2,
            unreachable: None,
            loan: 0,
            set: None,
        },
        UnitObserved {
            unit: "DCB".into(),
            cluster: "dcb".into(),
            target: 2,
            unreachable: None,
            loan: 0,
            set: None,
        },
    ];
    let d = step(&RolloutInput {
        name: "demo",
        strategy: &strategy,
        replicas: 4,
        revision: "r1",
        confirmed: None,
        previous: None,
        units: &units,
        loans: &[],
        now: Timestamp::UNIX_EPOCH,
    });
    assert_eq!(d.status.current_batch, 1);
    let before = d.targets.clone();
    units[1].unreachable = Some("connection refused".into());
    let d = step(&RolloutInput {
        name: "demo",
        strategy: &strategy,
        replicas: 4,
        revision: "r1",
        confirmed: None,
        previous: Some(&d.status),
        units: &units,
        loans: &[],
        now: Timestamp::UNIX_EPOCH,
    });
    assert_eq!(d.status.phase.as_deref(), Some(PHASE_STALLED));
    assert_eq!(d.progressing.reason, "MemberUnavailable");
    assert!(d.progressing.message.contains("dcb"));
    assert_eq!(d.status.current_batch, 1);
    // The unreachable unit keeps the target it had (the hub writes only to reachable
    // members; the target says what a borrower runs for it).
    assert_eq!(d.targets["DCB"], before["DCB"]);
}

fn loan(from: &str, to: &str, replicas: i32, reason: &str, returning: bool) -> Loan {
    Loan {
        from: from.into(),
        to: to.into(),
        replicas,
        reason: reason.into(),
        since: Time(Timestamp::UNIX_EPOCH),
        message: None,
        room_since: None,
        returning,
        failed_returns: 0,
    }
}

fn target(replicas: i32, partition: i32) -> UnitTarget {
    UnitTarget {
        replicas,
        partition,
    }
}

#[test]
fn a_borrowed_replica_runs_the_revision_of_the_lenders_replica() {
    use crate::plan::loans::{FAILOVER, UNSCHEDULABLE};
    // DCA 3 (2 released: 1 old), DCB 3 (2 released: 1 old).
    let targets = BTreeMap::from([("DCA".into(), target(3, 1)), ("DCB".into(), target(3, 1))]);
    // DCB is lost: DCA runs DCB's 3 as DCB runs them, 1 old and 2 new; DCB is never scaled down.
    let lent = lend(&targets, &[loan("DCB", "DCA", 3, FAILOVER, false)]);
    assert_eq!(lent["DCA"], target(6, 2));
    assert_eq!(lent["DCB"], target(3, 1));
    // An unschedulable loan takes the lender's old pods first.
    let lent = lend(&targets, &[loan("DCB", "DCA", 1, UNSCHEDULABLE, false)]);
    assert_eq!(lent["DCB"], target(2, 0));
    assert_eq!(lent["DCA"], target(4, 2));
    // On its way back the lender runs its replicas again; the borrower still does.
    let lent = lend(&targets, &[loan("DCB", "DCA", 1, UNSCHEDULABLE, true)]);
    assert_eq!(lent["DCB"], target(3, 1));
    assert_eq!(lent["DCA"], target(4, 2));
    // A replica the rollout has not created in the lender yet is not created elsewhere.
    let creating = BTreeMap::from([("DCA".into(), target(3, 0)), ("DCB".into(), target(1, 0))]);
    let lent = lend(&creating, &[loan("DCB", "DCA", 3, FAILOVER, false)]);
    assert_eq!(lent["DCA"], target(4, 0));
    // A lender never seen lends old pods only.
    let only_dca = BTreeMap::from([("DCA".into(), target(3, 0))]);
    let lent = lend(&only_dca, &[loan("DCB", "DCA", 2, FAILOVER, false)]);
    assert_eq!(lent["DCA"], target(5, 2));
    assert!(!lent.contains_key("DCB"));
}

#[test]
fn loans_adjust_the_targets_but_not_the_groups_owed() {
    // The plan is made on the units' shares: a loan does not re-plan the rollout, and a group
    // completes in a lending unit once what it still runs is done.
    let strategy = RolloutStrategy {
        upgrade_type: UpgradeType::Batch,
        batch_size: PositiveIntOrPercent(IntOrPercent::Percent("100%".into())),
        ..RolloutStrategy::default()
    };
    let unit = |loan: i32, replicas: i32, partition: i32, ready: i32| UnitObserved {
        unit: "DCB".into(),
        cluster: "dcb".into(),
        target: 5,
        unreachable: None,
        loan,
        set: Some(SetObserved {
            replicas,
            partition,
            synced: true,
            update_revision: Some("new".into()),
            status_replicas: replicas,
            updated: ready,
            updated_available: ready,
        }),
    };
    let lent = [loan(
        "DCB",
        "DCA",
        2,
        crate::plan::loans::UNSCHEDULABLE,
        false,
    )];
    let step_with = |units: &[UnitObserved], prev: Option<&RolloutStatus>| {
        step(&RolloutInput {
            name: "demo",
            strategy: &strategy,
            replicas: 5,
            revision: "new",
            confirmed: None,
            previous: prev,
            units,
            loans: &lent,
            now: Timestamp::UNIX_EPOCH,
        })
    };
    // Planned while lending 2: the work is the unit's 5, as if it ran them.
    let d = step_with(&[unit(-2, 3, 3, 0)], None);
    assert_eq!(d.status.units[0].update, 5);
    assert_eq!(
        d.targets["DCB"],
        UnitTarget {
            replicas: 5,
            partition: 0
        }
    );
    // It runs 3 (5 less the 2 lent) all updated: the group is done.
    let d = step_with(&[unit(-2, 3, 0, 3)], Some(&d.status));
    assert_eq!(d.status.phase.as_deref(), Some(PHASE_COMPLETED));
}

#[test]
fn a_completed_rollout_stays_completed_when_a_member_is_lost_later() {
    let strategy = RolloutStrategy::default();
    let mut units = vec![UnitObserved {
        unit: "DCA".into(),
        cluster: "dca".into(),
        target: 1,
        unreachable: None,
        loan: 0,
        set: Some(SetObserved {
            replicas: 1,
            partition: 0,
            synced: true,
            update_revision: Some("r1".into()),
            status_replicas: 1,
            updated: 1,
            updated_available: 1,
        }),
    }];
    let run = |units: &[UnitObserved], prev: Option<&RolloutStatus>| {
        step(&RolloutInput {
            name: "demo",
            strategy: &strategy,
            replicas: 1,
            revision: "r1",
            confirmed: None,
            previous: prev,
            units,
            loans: &[],
            now: Timestamp::UNIX_EPOCH,
        })
    };
    let d = run(&units, None);
    let d = run(&units, Some(&d.status));
    assert_eq!(d.status.phase.as_deref(), Some(PHASE_COMPLETED));
    units[0].unreachable = Some("connection refused".into());
    let d = run(&units, Some(&d.status));
    assert_eq!(d.status.phase.as_deref(), Some(PHASE_COMPLETED));
    assert!(d.events.is_empty(), "no second RolloutCompleted");
}

// ---- the release invariant under loans, failovers and outages ----

/// Pods of unit `unit` on the update revision the groups released so far allow (0 before a
/// plan exists).
fn quota(status: Option<&RolloutStatus>, unit: &str) -> i32 {
    let Some(status) = status else { return 0 };
    status
        .units
        .iter()
        .find(|r| r.name == unit)
        .map_or(0, |row| {
            let work = work_of(row);
            work.already() + released(&plan_of(status), unit, status.current_batch)
        })
}

/// A scripted loan: (from, to, replicas, failover, returning).
type ScriptedLoan = (usize, usize, i32, bool, bool);

fn arb_loan_script() -> impl Strategy<Value = Vec<Option<ScriptedLoan>>> {
    prop::collection::vec(
        prop::option::weighted(
            0.3,
            (0..3usize, 0..3usize, 1..4i32, any::<bool>(), any::<bool>()),
        ),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The release invariant: at every tick, per unit and in total, pods on the update revision
    /// never exceed the quota of the groups released so far. Loans (unschedulable, failover,
    /// on their way back), a lost member and confirmations at random never add to it: a
    /// borrowed replica runs the revision of the lender's replica it stands in for, and a
    /// scale-in removes the pods that keep the partition. The only pods counted twice are a
    /// lost or returning lender's own, which run on in its member while a borrower carries
    /// them. Once the loans end, the rollout completes.
    #[test]
    fn loans_outages_and_confirmations_never_release_a_pod_past_its_group(
        mut units in arb_units(),
        up in arb_upgrade(),
        batch in 1..6i32,
        script in arb_loan_script(),
        noise in prop::collection::vec(any::<u8>(), 64),
    ) {
        let strategy = simulated_strategy(up, batch, true);
        let replicas: i32 = units.iter().map(|u| u.target).sum();
        let revision = "new";
        let mut status: Option<RolloutStatus> = None;
        let mut confirmed: Option<String> = None;
        let mut loans: Vec<Loan> = vec![];
        let mut completed = false;
        let names: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
        for tick in 0..600usize {
            let bits = noise[tick % noise.len()].rotate_left(u32::try_from(tick % 8).unwrap());
            // Every few ticks the script may start a loan or end the one running (a loan ends
            // while both units are reachable, as `plan::loans` ends them); past its end they all
            // end.
            if tick % 5 == 0 {
                loans = match script.get(tick / 5) {
                    Some(Some(_)) if !loans.is_empty() => vec![],
                    Some(Some((from, to, n, failover, returning))) if names.len() > 1 => {
                        let (from, to) = (from % names.len(), to % names.len());
                        if from == to {
                            vec![]
                        } else {
                            let reason = if *failover { crate::plan::loans::FAILOVER } else { crate::plan::loans::UNSCHEDULABLE };
                            vec![loan(&names[from], &names[to], *n, reason, *returning)]
                        }
                    }
                    Some(_) => loans.clone(),
                    None => vec![],
                };
            }
            // A failover's lender is lost until the loan turns to returning.
            let lost: Vec<&str> = loans
                .iter()
                .filter(|l| l.reason == crate::plan::loans::FAILOVER && !l.returning)
                .map(|l| l.from.as_str())
                .collect();
            let net = crate::plan::loans::deltas(&loans);
            let observed: Vec<UnitObserved> = units.iter().map(|u| UnitObserved {
                unit: u.name.clone(),
                cluster: u.name.to_lowercase(),
                target: u.target,
                unreachable: lost.contains(&u.name.as_str()).then(|| "lost".to_string()),
                loan: net.get(&u.name).copied().unwrap_or(0),
                set: u.spec.map(|_| u.observed(revision)),
            }).collect();
            let d = simulated_step(&strategy, replicas, confirmed.as_deref(), status.as_ref(), &observed, &loans);
            if d.reset_confirmation {
                confirmed = Some("false".into());
            }
            let round_trip: RolloutStatus =
                serde_json::from_value(serde_json::to_value(&d.status).unwrap()).unwrap();
            status = Some(round_trip);
            let settled = units.iter().all(|u| {
                u.pods.len() == usize::try_from(u.target).unwrap()
                    && u.pods.iter().all(|p| p.new && p.available)
            });
            if d.status.phase.as_deref() == Some(PHASE_COMPLETED) && loans.is_empty() && settled {
                completed = true;
                break;
            }
            if d.status.phase.as_deref() == Some(PHASE_WAITING_FOR_CONFIRM) && bits % 3 == 0 {
                confirmed = Some("true".into());
            }
            // The hub writes only reachable members; every member's pods move on.
            let asked = lend(&d.targets, &loans);
            for u in &mut units {
                if !lost.contains(&u.name.as_str())
                    && let Some(t) = asked.get(&u.name)
                {
                    u.spec = Some(*t);
                }
                u.tick(bits % 2 == 0);
            }
            // The invariant, on the pods as they are now and the groups released so far.
            let status = status.as_ref();
            let new_in = |u: &SimUnit| i32::try_from(u.pods.iter().filter(|p| p.new).count()).unwrap();
            let carried = |to: Option<&str>, double_only: bool| -> i32 {
                loans
                    .iter()
                    .filter(|l| to.is_none_or(|t| l.to == t))
                    .filter(|l| !double_only || !crate::plan::loans::scales_down_lender(l))
                    .map(|l| l.replicas.min(quota(status, &l.from)))
                    .sum()
            };
            let mut total_new = 0;
            let mut total_quota = 0;
            for u in &units {
                let own = quota(status, &u.name);
                prop_assert!(
                    new_in(u) <= own + carried(Some(&u.name), false),
                    "tick {tick}: unit {} runs {} new pods, its released quota is {own} (loans {:?})",
                    u.name, new_in(u), loans
                );
                total_new += new_in(u);
                total_quota += own;
            }
            prop_assert!(
                total_new <= total_quota + carried(None, true),
                "tick {tick}: {total_new} new pods in all, {total_quota} released (loans {:?})", loans
            );
        }
        prop_assert!(completed, "the rollout completes once the loans end");
        for u in &units {
            prop_assert_eq!(u.pods.len(), usize::try_from(u.target).unwrap());
            prop_assert!(u.pods.iter().all(|p| p.new));
        }
    }
}

#[test]
fn each_rollouts_events_name_its_revision() {
    let strategy = RolloutStrategy::default();
    let unit = |revision: &str| UnitObserved {
        unit: "DCA".into(),
        cluster: "dca".into(),
        target: 1,
        unreachable: None,
        loan: 0,
        set: Some(SetObserved {
            replicas: 1,
            partition: 1,
            synced: true,
            update_revision: Some(revision.into()),
            status_replicas: 1,
            updated: 0,
            updated_available: 0,
        }),
    };
    let started = |revision: &str| {
        let units = [unit(revision)];
        let d = step(&RolloutInput {
            name: "demo",
            strategy: &strategy,
            replicas: 1,
            revision,
            confirmed: None,
            previous: None,
            units: &units,
            loans: &[],
            now: Timestamp::UNIX_EPOCH,
        });
        d.events
            .into_iter()
            .find(|(reason, _)| *reason == "GroupStarted")
            .map(|(_, note)| note)
            .unwrap()
    };
    // The same group of two rollouts: two facts, not one counted twice.
    let (first, second) = (started("r1"), started("r2"));
    assert_ne!(first, second);
    assert!(first.ends_with("(revision r1)"), "{first}");
}

// ---- status.rollout: what the plan is made from, not the plan ----

/// The groups of `plan` without their states.
fn without_states(plan: &[BatchStatus]) -> Vec<BatchStatus> {
    plan.iter()
        .map(|b| BatchStatus {
            state: None,
            ..b.clone()
        })
        .collect()
}

/// The groups the planner makes, as a status lists them (without states).
fn planned(up: &UpgradeType, batch: i32, work: &[UnitWork]) -> Vec<BatchStatus> {
    groups(up, batch, work)
        .into_iter()
        .zip(1..)
        .map(|(g, index)| BatchStatus {
            index,
            beta: g.beta,
            units: g.quota,
            state: None,
        })
        .collect()
}

/// Units reporting revision "new" whose InPlaceSets make exactly `work`: each runs
/// `replicas - create` pods, `already` of them updated.
fn observed_for(work: &[UnitWork]) -> Vec<UnitObserved> {
    work.iter()
        .map(|w| UnitObserved {
            unit: w.unit.clone(),
            cluster: w.unit.to_lowercase(),
            target: w.replicas,
            unreachable: None,
            loan: 0,
            set: Some(SetObserved {
                replicas: w.replicas - w.create,
                partition: w.replicas - w.create,
                synced: true,
                update_revision: Some("new".into()),
                status_replicas: w.replicas - w.create,
                updated: w.already(),
                updated_available: w.already(),
            }),
        })
        .collect()
}

/// Units DCA and DCB, `per_unit` old pods each, all reported on revision "new".
fn old_units(per_unit: i32) -> Vec<UnitObserved> {
    observed_for(&work(&[("DCA", 0, per_unit), ("DCB", 0, per_unit)]))
}

/// Moves each unit of `units` to the targets of `d`, its released pods updated and available.
fn members_follow(units: &mut [UnitObserved], d: &RolloutDecision) {
    for u in units {
        let t = d.targets[&u.unit];
        let set = u.set.as_mut().unwrap();
        set.replicas = t.replicas;
        set.partition = t.partition;
        set.status_replicas = t.replicas;
        set.updated = t.replicas - t.partition;
        set.updated_available = t.replicas - t.partition;
    }
}

fn serialized_len(status: &RolloutStatus) -> usize {
    serde_json::to_vec(status).unwrap().len()
}

/// 200 groups: `status.rollout` holds two of them, whatever group is current, and stays under
/// 2 KB (the whole plan took 11,808 bytes).
#[test]
fn a_rollout_of_200_groups_keeps_its_status_under_2_kb() {
    let strategy = simulated_strategy(UpgradeType::Batch, 1, false);
    let mut units = old_units(100);
    let mut previous: Option<RolloutStatus> = None;
    let mut largest = 0;
    for _ in 0..=201 {
        let d = simulated_step(&strategy, 200, None, previous.as_ref(), &units, &[]);
        assert_eq!(d.status.total_batches, 200);
        let k = d.status.current_batch;
        let kept: Vec<i32> = d.status.batches.iter().map(|b| b.index).collect();
        assert_eq!(
            kept,
            (k.max(1)..=(k.max(1) + 1).min(200)).collect::<Vec<_>>()
        );
        largest = largest.max(serialized_len(&d.status));
        let plan = plan_of(&d.status);
        assert_eq!(plan.len(), 200);
        assert_eq!(released(&plan, "DCA", 200), 100);
        members_follow(&mut units, &d);
        let done = d.status.phase.as_deref() == Some(PHASE_COMPLETED);
        previous = Some(d.status);
        if done {
            break;
        }
    }
    let status = previous.unwrap();
    assert_eq!(status.phase.as_deref(), Some(PHASE_COMPLETED));
    assert!(
        plan_of(&status)
            .iter()
            .all(|b| b.state.as_deref() == Some(GROUP_COMPLETED))
    );
    assert!(
        largest < 2048,
        "status.rollout of 200 groups: {largest} bytes"
    );
    // The same plan stored whole, as an older hub wrote it, is the size this avoids.
    let whole = RolloutStatus {
        upgrade_type: None,
        batch_size: None,
        batches: plan_of(&status),
        ..status.clone()
    };
    assert!(serialized_len(&whole) > 10 * 1024);
}

/// The plan made again from the status is the plan the planner made from the strategy and the
/// units' work, with each group's state: Completed before the current one, Pending after it.
#[test]
fn the_plan_made_from_the_status_is_the_plan_the_planner_made() {
    let count = |n: i32| PositiveIntOrPercent(IntOrPercent::Int(n));
    let percent = |p: &str| PositiveIntOrPercent(IntOrPercent::Percent(p.into()));
    let cases = [
        (
            UpgradeType::Beta,
            count(4),
            vec![("DCA", 0, 5), ("DCB", 0, 5)],
        ),
        (
            UpgradeType::Batch,
            count(4),
            vec![("DCA", 0, 7), ("DCB", 0, 3)],
        ),
        (
            UpgradeType::Beta,
            count(1),
            vec![("DCA", 3, 4), ("DCB", 0, 0), ("DCC", 9, 1)],
        ),
        (
            UpgradeType::Batch,
            percent("30%"),
            vec![("DCA", 2, 8), ("DCB", 5, 5)],
        ),
        (
            UpgradeType::Beta,
            percent("1%"),
            vec![("A", 40, 10), ("B", 1, 0), ("C", 0, 49)],
        ),
        (
            UpgradeType::Beta,
            percent("100%"),
            vec![("DCA", 0, 6), ("DCB", 1, 1)],
        ),
        (UpgradeType::Batch, count(1000), vec![("DCA", 0, 1)]),
    ];
    for (up, batch, units) in cases {
        let strategy = RolloutStrategy {
            upgrade_type: up.clone(),
            batch_size: batch.clone(),
            ..simulated_strategy(UpgradeType::Beta, 1, true)
        };
        let w = work(&units);
        let replicas: i32 = w.iter().map(|u| u.replicas).sum();
        let expected = planned(&up, batch_size(&strategy, replicas), &w);
        let mut observed = observed_for(&w);
        let mut previous: Option<RolloutStatus> = None;
        let mut confirmed = None;
        for _ in 0..(2 * expected.len() + 3) {
            let d = simulated_step(
                &strategy,
                replicas,
                confirmed,
                previous.as_ref(),
                &observed,
                &[],
            );
            let plan = plan_of(&d.status);
            assert_eq!(
                without_states(&plan),
                expected,
                "{up:?} {batch:?} {units:?}"
            );
            let k = d.status.current_batch;
            for g in &plan {
                let state = g.state.as_deref();
                match g.index.cmp(&k) {
                    std::cmp::Ordering::Less => assert_eq!(state, Some(GROUP_COMPLETED)),
                    std::cmp::Ordering::Greater => assert_eq!(state, Some(GROUP_PENDING)),
                    std::cmp::Ordering::Equal => assert!(state.is_some()),
                }
            }
            // A restart reads the same plan back.
            let json = serde_json::to_value(&d.status).unwrap();
            let back: RolloutStatus = serde_json::from_value(json).unwrap();
            assert_eq!(plan_of(&back), plan);
            members_follow(&mut observed, &d);
            confirmed =
                (d.status.phase.as_deref() == Some(PHASE_WAITING_FOR_CONFIRM)).then_some("true");
            let done = d.status.phase.as_deref() == Some(PHASE_COMPLETED);
            previous = Some(d.status);
            if done {
                break;
            }
        }
        assert_eq!(
            previous.unwrap().phase.as_deref(),
            Some(PHASE_COMPLETED),
            "{up:?} {batch:?} {units:?}"
        );
    }
}

fn arb_batch() -> impl Strategy<Value = PositiveIntOrPercent> {
    prop_oneof![
        (1..9i32).prop_map(|n| PositiveIntOrPercent(IntOrPercent::Int(n))),
        (1..=100i32).prop_map(|p| PositiveIntOrPercent(IntOrPercent::Percent(format!("{p}%")))),
    ]
}

proptest! {
    /// For any units' work, upgrade type and batch size (a count or a percent), the plan made
    /// again from the first status is the planner's.
    #[test]
    fn the_plan_of_a_fresh_status_is_the_planners(
        w in arb_work(),
        up in arb_upgrade(),
        batch in arb_batch(),
    ) {
        let strategy = RolloutStrategy {
            upgrade_type: up.clone(),
            batch_size: batch,
            ..RolloutStrategy::default()
        };
        let replicas: i32 = w.iter().map(|u| u.replicas).sum();
        let d = simulated_step(&strategy, replicas, None, None, &observed_for(&w), &[]);
        let expected = planned(&up, batch_size(&strategy, replicas), &w);
        prop_assert_eq!(without_states(&plan_of(&d.status)), expected.clone());
        prop_assert_eq!(d.status.total_batches, i32::try_from(expected.len()).unwrap());
        prop_assert!(d.status.batches.len() <= 2);
        for kept in &d.status.batches {
            prop_assert_eq!(
                &plan_of(&d.status)[usize::try_from(kept.index - 1).unwrap()],
                kept
            );
        }
    }
}

/// The plan is the one made when the rollout started: a batch size or upgrade type changed
/// since changes nothing until the next rollout.
#[test]
fn a_strategy_changed_mid_rollout_keeps_the_plan_made() {
    let strategy = simulated_strategy(UpgradeType::Beta, 4, true);
    let mut units = old_units(5);
    let d = simulated_step(&strategy, 10, None, None, &units, &[]);
    let plan = without_states(&plan_of(&d.status));
    assert_eq!(plan.len(), 3);
    members_follow(&mut units, &d);
    let changed = simulated_strategy(UpgradeType::Batch, 1, true);
    let d = simulated_step(&changed, 10, None, Some(&d.status), &units, &[]);
    assert_eq!(without_states(&plan_of(&d.status)), plan);
    assert_eq!(d.status.total_batches, 3);
    assert_eq!(d.status.batch_size, Some(4));
    assert_eq!(d.status.upgrade_type, Some(UpgradeType::Beta));
}

/// A status an older hub wrote, every group in `batches` and no `upgradeType` or `batchSize`:
/// its plan is that list, and the rollout goes on with it, kept whole.
#[test]
fn a_status_with_the_whole_plan_stored_is_read_as_before() {
    let strategy = simulated_strategy(UpgradeType::Beta, 4, false);
    let mut units = old_units(5);
    let old: RolloutStatus = serde_json::from_value(serde_json::json!({
        "phase": "Progressing", "revision": "new", "currentBatch": 0, "totalBatches": 3,
        "batch": "0/3",
        "batches": [
            {"index": 1, "beta": true, "units": {"DCA": 1, "DCB": 1}, "state": "Pending"},
            {"index": 2, "units": {"DCA": 2, "DCB": 2}, "state": "Pending"},
            {"index": 3, "units": {"DCA": 2, "DCB": 2}, "state": "Pending"},
        ],
        "units": [
            {"name": "DCA", "replicas": 5, "create": 0, "update": 5},
            {"name": "DCB", "replicas": 5, "create": 0, "update": 5},
        ],
    }))
    .unwrap();
    assert_eq!(plan_of(&old), old.batches);
    let mut previous = old;
    for _ in 0..10 {
        let d = simulated_step(&strategy, 10, None, Some(&previous), &units, &[]);
        assert_eq!(d.status.batches.len(), 3, "kept whole");
        assert_eq!(d.status.upgrade_type, None);
        members_follow(&mut units, &d);
        previous = d.status;
        if previous.phase.as_deref() == Some(PHASE_COMPLETED) {
            break;
        }
    }
    assert_eq!(previous.phase.as_deref(), Some(PHASE_COMPLETED));
    assert!(
        previous
            .batches
            .iter()
            .all(|b| b.state.as_deref() == Some(GROUP_COMPLETED))
    );
}

/// A status that would make an absurd plan (written by hand) is read as it is stored, not
/// made again.
#[test]
fn a_hand_written_status_of_too_many_groups_is_not_made_again() {
    let status = RolloutStatus {
        upgrade_type: Some(UpgradeType::Batch),
        batch_size: Some(1),
        units: vec![RolloutUnit {
            name: "DCA".into(),
            replicas: i32::MAX,
            create: i32::MAX,
            update: i32::MAX,
            done: 0,
        }],
        ..RolloutStatus::default()
    };
    assert!(plan_of(&status).is_empty());
}
