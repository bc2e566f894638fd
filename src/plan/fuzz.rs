//! Hostile inputs for the pure planners: values the API refuses (negative counts, bad percents,
//! duplicate or empty unit names, hostile loans) still reach them through a stale cache, an old
//! object or a bug elsewhere, so none of them may panic, and what they answer must keep the
//! invariants (every replica placed once, nothing negative, nothing released twice).
//!
//! The case count fits CI; for a release check run many more, e.g.
//! `CAFE_FUZZ_CASES=200000 cargo test --lib plan::fuzz` (see docs/reliability.md).

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

use super::loans::{self, Policy, Reschedule, UnitFacts};
use super::rollout::{Group, UnitWork, batch_size, groups, released};
use super::split::split;
use crate::api::{
    BatchStatus, IntOrPercent, Loan, PositiveIntOrPercent, RolloutStrategy, UpgradeType,
};

/// Cases per property: `CAFE_FUZZ_CASES`, else a count that fits the CI budget.
fn config() -> ProptestConfig {
    let cases = std::env::var("CAFE_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(cases)
}

/// Any i32, with the edges more likely than chance would make them.
fn hostile_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(0),
        Just(-1),
        Just(i32::MAX),
        Just(i32::MIN),
        -5..50i32,
        any::<i32>(),
    ]
}

/// Counts or percents, well- or ill-formed.
fn hostile_int_or_percent() -> impl Strategy<Value = IntOrPercent> {
    prop_oneof![
        hostile_i32().prop_map(IntOrPercent::Int),
        (0..=100u32).prop_map(|p| IntOrPercent::Percent(format!("{p}%"))),
        "-?[0-9]{0,12}%?".prop_map(IntOrPercent::Percent),
        "\\PC{0,6}".prop_map(IntOrPercent::Percent),
    ]
}

/// Unit names: short, often repeated, sometimes empty.
fn unit_name() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[A-C]", "DC[A-Z]{0,2}"]
}

proptest! {
    #![proptest_config(config())]

    /// A split either refuses with a reason or places every replica exactly once, in `values`
    /// order, never a negative share.
    #[test]
    fn a_split_of_anything_refuses_or_places_every_replica_once(
        replicas in hostile_i32(),
        values in prop::collection::vec(unit_name(), 0..6),
        entries in prop::collection::vec((unit_name(), hostile_int_or_percent()), 0..6),
    ) {
        let unit_replicas: BTreeMap<String, IntOrPercent> = entries.into_iter().collect();
        if let Ok(shares) = split(replicas, &values, &unit_replicas) {
            prop_assert_eq!(shares.len(), values.len());
            prop_assert!(shares.iter().all(|s| s.replicas >= 0));
            let total: i64 = shares.iter().map(|s| i64::from(s.replicas)).sum();
            prop_assert_eq!(total, i64::from(replicas));
        }
    }

    /// Any batch size resolves to at least one pod and no more than the replicas (or one).
    #[test]
    fn a_batch_size_of_anything_is_at_least_one(
        batch in hostile_int_or_percent(), replicas in hostile_i32(),
    ) {
        let strategy = RolloutStrategy {
            batch_size: PositiveIntOrPercent(batch),
            ..RolloutStrategy::default()
        };
        let size = batch_size(&strategy, replicas);
        prop_assert!(size >= 1);
    }

    /// Groups of hostile work (negative or large counts, any batch size) never panic; every
    /// group is non-empty and within the batch size (Beta: one per unit), nothing is negative,
    /// and all groups together release exactly each unit's work. (Unit names are unique here:
    /// `topology.values` are, by the API's validation.)
    #[test]
    fn groups_of_hostile_work_stay_within_the_batch_and_release_nothing_twice(
        work in prop::collection::vec((-3..2000i32, -3..2000i32, -3..50i32), 0..5),
        batch in prop_oneof![hostile_i32(), 1..64i32],
        beta in any::<bool>(),
    ) {
        let work: Vec<UnitWork> = work
            .into_iter()
            .enumerate()
            .map(|(i, (create, update, already))| UnitWork {
                unit: format!("U{i}"),
                replicas: create.saturating_add(update).saturating_add(already),
                create,
                update,
            })
            .collect();
        let upgrade = if beta { UpgradeType::Beta } else { UpgradeType::Batch };
        // Hostile batch sizes are clamped as the hub clamps them; the size of the plan is
        // bounded by the work (at most 10,000 pods here) so the property runs in time.
        let plan: Vec<Group> = groups(&upgrade, batch.max(1), &work);
        for g in &plan {
            prop_assert!(g.total() >= 1, "an empty group: {:?}", g);
            prop_assert!(g.quota.values().all(|n| *n >= 0));
            if g.beta {
                prop_assert!(g.quota.values().all(|n| *n <= 1));
            } else {
                prop_assert!(g.total() <= batch.max(1));
            }
        }
        let statuses: Vec<BatchStatus> = plan
            .iter()
            .enumerate()
            .map(|(i, g)| BatchStatus {
                index: i32::try_from(i + 1).unwrap_or(i32::MAX),
                beta: g.beta,
                units: g.quota.clone(),
                state: None,
            })
            .collect();
        for w in &work {
            let all = released(&statuses, &w.unit, i32::try_from(plan.len()).unwrap_or(i32::MAX));
            let first = released(&statuses, &w.unit, 1);
            prop_assert!(all >= first && first >= 0);
            prop_assert_eq!(all, w.need().max(0));
        }
    }

    /// The loan planner, fed hostile facts and hostile current loans (negative or huge counts,
    /// units it does not know, lenders lending to themselves), never panics and never keeps or
    /// plans a loan of a negative or zero count, or from a unit to itself.
    #[test]
    fn the_loan_planner_survives_hostile_facts_and_loans(
        units in prop::collection::vec(
            (hostile_i32(), hostile_i32(), hostile_i32(), hostile_i32(),
             any::<bool>(), any::<bool>(), any::<bool>()),
            0..5),
        current in prop::collection::vec(
            ("U[0-6]|", "U[0-6]|", hostile_i32(), any::<bool>(), any::<bool>()), 0..4),
        now in 0..100_000i64,
    ) {
        let at = |s: i64| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH);
        let units: Vec<UnitFacts> = units
            .into_iter()
            .enumerate()
            .map(|(i, (base, room, unschedulable, available, lost, cordoned, settled))| UnitFacts {
                // Unique, as `topology.values` are; the loans may name others.
                unit: format!("U{i}"),
                base,
                not_ready_since: lost.then(|| at(0)),
                cordoned,
                room,
                unschedulable,
                unschedulable_since: Some(at(0)),
                available,
                settled,
            })
            .collect();
        let current: Vec<Loan> = current
            .into_iter()
            .map(|(from, to, replicas, failover, returning)| Loan {
                from,
                to,
                replicas,
                reason: if failover { "Failover" } else { "Unschedulable" }.into(),
                since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(0)),
                message: None,
                room_since: None,
                returning,
                failed_returns: 0,
            })
            .collect();
        let policy = Policy {
            reschedule: Some(Reschedule {
                initial_delay: std::time::Duration::from_secs(1),
                move_back: true,
                stabilization: std::time::Duration::from_secs(1),
            }),
            failover: Some(std::time::Duration::from_secs(1)),
        };
        let plan = loans::plan(&policy, &units, &current, at(now));
        for loan in &plan.loans {
            prop_assert!(loan.replicas > 0, "a loan of {}", loan.replicas);
            prop_assert!(loan.from != loan.to, "a unit lends to itself: {:?}", loan);
        }
        let _ = loans::deltas(&plan.loans);
    }
}
