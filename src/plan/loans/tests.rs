use super::*;
use proptest::prelude::*;

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

fn unit(name: &str, base: i32, room: i32) -> UnitFacts {
    UnitFacts {
        unit: name.into(),
        base,
        not_ready_since: None,
        cordoned: false,
        room,
        unschedulable: 0,
        unschedulable_since: None,
        available: base,
        settled: true,
    }
}

fn policy() -> Policy {
    Policy {
        reschedule: Some(Reschedule {
            initial_delay: Duration::from_secs(2),
            move_back: true,
            stabilization: Duration::from_secs(10),
        }),
        failover: Some(Duration::from_secs(3)),
    }
}

fn short_of_room() -> Vec<UnitFacts> {
    let mut dcb = unit("DCB", 5, 0);
    dcb.unschedulable = 3;
    dcb.unschedulable_since = Some(at(100));
    dcb.available = 2;
    vec![unit("DCA", 5, 10), dcb]
}

#[test]
fn unschedulable_replicas_are_lent_after_the_initial_delay() {
    let units = short_of_room();
    assert!(plan(&policy(), &units, &[], at(101)).loans.is_empty());
    let p = plan(&policy(), &units, &[], at(102));
    assert_eq!(p.loans.len(), 1);
    let loan = &p.loans[0];
    assert_eq!(
        (loan.from.as_str(), loan.to.as_str(), loan.replicas),
        ("DCB", "DCA", 3)
    );
    assert_eq!(loan.reason, UNSCHEDULABLE);
    assert_eq!(
        deltas(&p.loans),
        BTreeMap::from([("DCA".into(), 3), ("DCB".into(), -3)])
    );
    assert!(p.events.iter().any(|(r, _)| *r == "Rescheduled"));
    // Looked at again (a restart reads the loans back): nothing new.
    let mut units = units;
    units[1].unschedulable = 0;
    let again = plan(&policy(), &units, &p.loans, at(103));
    assert_eq!(again.loans, p.loans);
    // Nor while the lender's status is about the replicas before the loan.
    units[1].unschedulable = 3;
    units[1].settled = false;
    assert_eq!(plan(&policy(), &units, &p.loans, at(104)).loans, p.loans);
}

#[test]
fn nothing_is_lent_to_a_unit_without_room_cordoned_or_lost() {
    let mut units = short_of_room();
    units[0].room = 0;
    assert!(plan(&policy(), &units, &[], at(200)).loans.is_empty());
    units[0].room = 10;
    units[0].cordoned = true;
    assert!(plan(&policy(), &units, &[], at(200)).loans.is_empty());
    units[0].cordoned = false;
    units[0].not_ready_since = Some(at(199));
    let p = plan(&policy(), &units, &[], at(200));
    assert!(p.loans.iter().all(|l| l.to != "DCA"));
    // Partial room: only what fits moves.
    let mut units = short_of_room();
    units[0].room = 2;
    let p = plan(&policy(), &units, &[], at(200));
    assert_eq!(p.loans[0].replicas, 2);
}

#[test]
fn replicas_move_back_after_the_lender_has_had_room_for_the_stabilisation_period() {
    let units = short_of_room();
    let lent = plan(&policy(), &units, &[], at(102)).loans;
    // DCB now has room (a node was added) and runs its 2.
    let mut units = units;
    units[1].unschedulable = 0;
    units[1].unschedulable_since = None;
    units[1].room = 5;
    let p = plan(&policy(), &units, &lent, at(110));
    assert_eq!(p.loans[0].room_since, Some(Time(at(110))));
    assert!(!p.loans[0].returning);
    let p = plan(&policy(), &units, &p.loans, at(120));
    assert!(p.loans[0].returning, "10s of room: on the way back");
    // Lender raised, borrower not yet lowered.
    assert_eq!(deltas(&p.loans), BTreeMap::from([("DCA".into(), 3)]));
    // Until the lender's pods are available, the borrower keeps them.
    units[1].available = 3;
    let p = plan(&policy(), &units, &p.loans, at(121));
    assert_eq!(p.loans.len(), 1);
    units[1].available = 5;
    let p = plan(&policy(), &units, &p.loans, at(122));
    assert!(p.loans.is_empty());
    assert!(p.events.iter().any(|(r, _)| *r == "MovedBack"));
}

#[test]
fn a_failed_return_waits_twice_as_long_next_time() {
    let units = short_of_room();
    let mut loans = plan(&policy(), &units, &[], at(102)).loans;
    loans[0].returning = true;
    let mut units = units;
    units[1].unschedulable = 2;
    units[1].unschedulable_since = Some(at(150));
    let p = plan(&policy(), &units, &loans, at(152));
    assert!(!p.loans[0].returning);
    assert_eq!(p.loans[0].failed_returns, 1);
    units[1].unschedulable = 0;
    units[1].room = 5;
    let p = plan(&policy(), &units, &p.loans, at(160));
    let p = plan(&policy(), &units, &p.loans, at(175));
    assert!(!p.loans[0].returning, "15s < 2 x 10s");
    let p = plan(&policy(), &units, &p.loans, at(180));
    assert!(p.loans[0].returning);
}

#[test]
fn a_lost_member_is_carried_after_the_toleration_and_released_when_back() {
    let mut units = vec![unit("DCA", 3, 10), unit("DCB", 3, 10)];
    units[1].not_ready_since = Some(at(100));
    assert!(
        plan(&policy(), &units, &[], at(102)).loans.is_empty(),
        "a short outage moves nothing"
    );
    let p = plan(&policy(), &units, &[], at(103));
    assert_eq!(p.loans.len(), 1);
    assert_eq!(p.loans[0].reason, FAILOVER);
    // The lost member is never scaled down.
    assert_eq!(deltas(&p.loans), BTreeMap::from([("DCA".into(), 3)]));
    // Back, but its pods not yet available: the loan stays.
    units[1].not_ready_since = None;
    units[1].available = 1;
    let again = plan(&policy(), &units, &p.loans, at(110));
    assert_eq!(again.loans, p.loans);
    units[1].available = 3;
    let done = plan(&policy(), &units, &p.loans, at(111));
    assert!(done.loans.is_empty());
}

/// Found by plan::fuzz: a status with hostile loans (huge, negative, to itself) made `deltas`
/// overflow (a panic in debug builds, a wrapped count in release) and the planner keep loans
/// that mean nothing.
#[test]
fn hostile_loans_neither_wrap_nor_survive_planning() {
    let loan = |from: &str, to: &str, replicas: i32| Loan {
        from: from.into(),
        to: to.into(),
        replicas,
        reason: UNSCHEDULABLE.into(),
        since: Time(at(0)),
        message: None,
        room_since: None,
        returning: false,
        failed_returns: 0,
    };
    let huge = loan("A", "B", i32::MAX);
    let d = deltas(&[huge.clone(), huge.clone()]);
    assert_eq!((d["A"], d["B"]), (i32::MIN, i32::MAX));
    assert_eq!(carried("B", i32::MAX, &[huge.clone(), huge]), i32::MAX);

    let units = [unit("A", 3, 5), unit("B", 3, 5)];
    let current = [loan("A", "B", -4), loan("B", "B", 2), loan("A", "B", 0)];
    let p = plan(&policy(), &units, &current, at(100));
    assert!(p.loans.is_empty(), "{:?}", p.loans);
}

fn arb_units() -> impl Strategy<Value = Vec<UnitFacts>> {
    prop::collection::vec(
        (
            0..8i32,
            0..8i32,
            0..8i32,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        1..4,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(
                |(i, (base, room, unschedulable, lost, cordoned, settled))| UnitFacts {
                    unit: format!("U{i}"),
                    base,
                    not_ready_since: lost.then(|| at(0)),
                    cordoned,
                    room,
                    unschedulable: unschedulable.min(base),
                    unschedulable_since: Some(at(0)),
                    available: base - unschedulable.min(base),
                    settled,
                },
            )
            .collect()
    })
}

proptest! {
    /// Loans never lose or create replicas: the units run every replica of the spec, plus those
    /// carried for a lost member and those in flight on their way back; and every loan made went
    /// to a Ready, uncordoned unit with room for it.
    #[test]
    fn loans_neither_lose_nor_create_replicas_and_go_only_where_there_is_room(
        units in arb_units(), steps in prop::collection::vec((0..3u8, 0..4i32), 1..8),
    ) {
        let mut units = units;
        let mut loans: Vec<Loan> = vec![];
        for (i, (what, n)) in steps.into_iter().enumerate() {
            let now = at(1000 * (i64::try_from(i).unwrap() + 1));
            let p = plan(&policy(), &units, &loans, now);
            for l in &p.loans {
                let before: i32 = loans
                    .iter()
                    .filter(|o| o.from == l.from && o.to == l.to && o.reason == l.reason)
                    .map(|o| o.replicas)
                    .sum();
                if l.replicas > before {
                    let to = units.iter().find(|u| u.unit == l.to).unwrap();
                    prop_assert!(to.not_ready_since.is_none() && !to.cordoned);
                    prop_assert!(
                        l.replicas - before <= to.room,
                        "{} got {} more with room {}", l.to, l.replicas - before, to.room
                    );
                }
            }
            let d = deltas(&p.loans);
            let total: i32 = units.iter().map(|u| u.base + d.get(&u.unit).copied().unwrap_or(0)).sum();
            let base: i32 = units.iter().map(|u| u.base).sum();
            let in_flight: i32 = p.loans.iter().filter(|l| l.returning || l.reason == FAILOVER).map(|l| l.replicas).sum();
            prop_assert_eq!(total, base + in_flight);
            for u in &units {
                prop_assert!(u.base + d.get(&u.unit).copied().unwrap_or(0) >= 0);
            }
            loans = p.loans;
            // The world moves: a unit gets room, loses it, or comes back.
            let k = usize::try_from(n).unwrap() % units.len();
            match what {
                0 => { units[k].room += n; units[k].unschedulable = 0; }
                1 => units[k].not_ready_since = None,
                _ => { units[k].available = units[k].base; }
            }
        }
    }
}
