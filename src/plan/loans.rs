//! Reschedule, move back and failover, pure.
//!
//! Capacity follows demand through loans: replicas of one unit that another unit runs for it.
//! A unit whose pods stay unschedulable past `initialDelaySeconds` lends them to units with room;
//! once it has had room for the stabilisation period they come back, lender first, borrower only
//! after the lender's pods are available. A member lost for longer than `tolerationSeconds` has
//! its replicas carried by the others; it is never scaled down for it, and the extra replicas go
//! once it is back with its pods available. Loans live in the CafeDeployment's status, so a hub
//! restart neither forgets nor repeats one.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::Loan;

pub const UNSCHEDULABLE: &str = "Unschedulable";
pub const FAILOVER: &str = "Failover";

/// The rules, from `topology.autoReschedule` and `topology.failover`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `Some` when autoReschedule is enabled.
    pub reschedule: Option<Reschedule>,
    /// `Some(tolerationSeconds)` when failover is enabled.
    pub failover: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reschedule {
    pub initial_delay: Duration,
    pub move_back: bool,
    pub stabilization: Duration,
}

/// What the planner knows of one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitFacts {
    pub unit: String,
    /// The unit's share of `spec.replicas`.
    pub base: i32,
    /// Since when the unit's member has not been Ready; `None` while it is.
    pub not_ready_since: Option<Timestamp>,
    /// The member is cordoned (`spec.unschedulable`): nothing new goes there.
    pub cordoned: bool,
    /// How many more pods of the template its cluster could place now (an estimate from the
    /// MemberCluster's capacity and the template's requests).
    pub room: i32,
    /// Pods of its InPlaceSet the scheduler cannot place, and since when.
    pub unschedulable: i32,
    pub unschedulable_since: Option<Timestamp>,
    /// Available pods of its InPlaceSet.
    pub available: i32,
    /// The member has acted on the replicas the hub last asked of it (its InPlaceSet reports on
    /// its current generation): its unschedulable count is about those, not older ones.
    pub settled: bool,
}

impl UnitFacts {
    fn ready(&self) -> bool {
        self.not_ready_since.is_none()
    }
}

/// The loans to keep, and the Events their changes call for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoanPlan {
    pub loans: Vec<Loan>,
    pub events: Vec<(&'static str, String)>,
}

fn elapsed(now: Timestamp, since: Timestamp) -> Duration {
    now.duration_since(since)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// Replicas each unit runs beyond (+) or below (-) its share because of `loans`. A lender gives
/// up its replicas only for an unschedulable loan that is not on its way back: a lost member is
/// never scaled down for a failover, and a returning loan runs in both units until the lender's
/// pods are available.
pub fn deltas(loans: &[Loan]) -> BTreeMap<String, i32> {
    // Saturating: a hostile count (an old or hand-edited status) must not wrap or panic.
    let mut out: BTreeMap<String, i32> = BTreeMap::new();
    for loan in loans {
        let to = out.entry(loan.to.clone()).or_default();
        *to = to.saturating_add(loan.replicas);
        if scales_down_lender(loan) {
            let from = out.entry(loan.from.clone()).or_default();
            *from = from.saturating_sub(loan.replicas);
        }
    }
    out
}

/// The replicas unit `unit` should serve with its own share `share` and `loans`: less every
/// replica it lends (a lost lender's included: another unit carries them), plus every replica
/// it borrows. What availability is judged against.
pub fn carried(unit: &str, share: i32, loans: &[Loan]) -> i32 {
    let sum = |of: &dyn Fn(&Loan) -> bool| -> i32 {
        loans
            .iter()
            .filter(|l| of(l))
            .fold(0i32, |n, l| n.saturating_add(l.replicas))
    };
    let lent = sum(&|l| l.from == unit);
    let borrowed = sum(&|l| l.to == unit);
    share.saturating_sub(lent).max(0).saturating_add(borrowed)
}

/// Whether the lender runs fewer pods for this loan: only for an unschedulable loan that is not
/// on its way back.
pub fn scales_down_lender(loan: &Loan) -> bool {
    loan.reason == UNSCHEDULABLE && !loan.returning
}

/// Spreads `n` replicas over the units that can take them, most room first, never more than a
/// unit's room; returns (unit, replicas) pairs and what could not be placed.
fn place(n: i32, room: &mut BTreeMap<String, i32>, order: &[String]) -> (Vec<(String, i32)>, i32) {
    let mut left = n;
    let mut takers: Vec<&String> = order
        .iter()
        .filter(|u| room.get(*u).copied().unwrap_or(0) > 0)
        .collect();
    takers.sort_by_key(|u| std::cmp::Reverse(room.get(*u).copied().unwrap_or(0)));
    let mut out = vec![];
    for unit in takers {
        if left == 0 {
            break;
        }
        let r = room.get_mut(unit).expect("listed above");
        let take = left.min(*r);
        *r -= take;
        left -= take;
        out.push((unit.clone(), take));
    }
    (out, left)
}

/// The next loans from the current ones and what the units show.
pub fn plan(policy: &Policy, units: &[UnitFacts], current: &[Loan], now: Timestamp) -> LoanPlan {
    // Counts are never negative; what says otherwise (an old or hand-edited status, a report
    // from a confused member) is read as nothing rather than planned with.
    let units: Vec<UnitFacts> = units
        .iter()
        .map(|u| UnitFacts {
            base: u.base.max(0),
            room: u.room.max(0),
            unschedulable: u.unschedulable.clamp(0, u.base.max(0)),
            available: u.available.max(0),
            ..u.clone()
        })
        .collect();
    let units = units.as_slice();
    let valid: Vec<Loan> = current
        .iter()
        .filter(|l| l.replicas > 0 && l.from != l.to)
        .cloned()
        .collect();
    let current = valid.as_slice();
    let by_unit: BTreeMap<&str, &UnitFacts> = units.iter().map(|u| (u.unit.as_str(), u)).collect();
    let order: Vec<String> = units.iter().map(|u| u.unit.clone()).collect();
    let mut events = vec![];
    let mut loans: Vec<Loan> = vec![];
    let stamp = Time(now);
    let delta = deltas(current);
    // What a unit runs with the current loans, a returning one counted back in.
    let effective = |u: &UnitFacts| {
        u.base
            .saturating_add(delta.get(&u.unit).copied().unwrap_or(0))
    };

    // Existing loans: keep, move back, or end.
    for loan in current {
        let (Some(lender), Some(_)) = (
            by_unit.get(loan.from.as_str()),
            by_unit.get(loan.to.as_str()),
        ) else {
            // A unit left the topology: its loans end with it.
            events.push((
                "LoanEnded",
                format!(
                    "{} replicas of {} no longer run in {}: a unit left the topology",
                    loan.replicas, loan.from, loan.to
                ),
            ));
            continue;
        };
        let mut loan = loan.clone();
        if loan.reason == FAILOVER {
            // Back and serving again: the extra replicas elsewhere go.
            if lender.ready() && lender.available >= effective(lender) {
                events.push((
                    "FailoverEnded",
                    format!(
                        "{} is back with {} pods available; {} returns the {} replicas it carried",
                        loan.from, lender.available, loan.to, loan.replicas
                    ),
                ));
                continue;
            }
            loans.push(loan);
            continue;
        }
        // Unschedulable loans.
        let Some(rules) = policy.reschedule.as_ref().filter(|r| r.move_back) else {
            loans.push(loan);
            continue;
        };
        if loan.returning {
            let stuck = lender.unschedulable > 0
                && lender
                    .unschedulable_since
                    .is_some_and(|s| elapsed(now, s) >= rules.initial_delay);
            if stuck {
                loan.returning = false;
                loan.room_since = None;
                loan.failed_returns += 1;
                events.push(("MoveBackFailed", format!("{} ran out of room again taking back {} replicas; they stay in {} (attempt {})", loan.from, loan.replicas, loan.to, loan.failed_returns)));
                loans.push(loan);
            } else if lender.settled
                && lender.available >= effective(lender)
                && lender.unschedulable == 0
            {
                events.push((
                    "MovedBack",
                    format!(
                        "{} replicas are back in {}; {} lets them go",
                        loan.replicas, loan.from, loan.to
                    ),
                ));
            } else {
                loans.push(loan);
            }
            continue;
        }
        if lender.ready() && !lender.cordoned && lender.room >= loan.replicas {
            let since = loan.room_since.get_or_insert_with(|| stamp.clone()).0;
            let wait = rules.stabilization
                * 2u32.saturating_pow(u32::try_from(loan.failed_returns).unwrap_or(0).min(10));
            if elapsed(now, since) >= wait {
                loan.returning = true;
                events.push((
                    "MovingBack",
                    format!(
                        "{} has had room for {}s: {} replicas go back from {}",
                        loan.from,
                        wait.as_secs(),
                        loan.replicas,
                        loan.to
                    ),
                ));
            }
        } else {
            loan.room_since = None;
        }
        loans.push(loan);
    }

    // Room left in each unit that may take replicas: Ready, not cordoned.
    let mut room: BTreeMap<String, i32> = units
        .iter()
        .filter(|u| u.ready() && !u.cordoned)
        .map(|u| (u.unit.clone(), u.room.max(0)))
        .collect();

    // Failover: a member lost past the toleration has its replicas carried by the others.
    if let Some(toleration) = policy.failover {
        for u in units {
            let Some(since) = u.not_ready_since else {
                continue;
            };
            let already = loans
                .iter()
                .any(|l| l.from == u.unit && l.reason == FAILOVER);
            if already || elapsed(now, since) < toleration {
                continue;
            }
            let carried = loans
                .iter()
                .filter(|l| l.from == u.unit)
                .fold(0i32, |n, l| n.saturating_add(l.replicas));
            let n = u.base.saturating_sub(carried).max(0);
            let (placed, short) = place(n, &mut room, &order);
            for (to, replicas) in placed {
                events.push((
                    "FailoverStarted",
                    format!(
                        "{} has not been Ready for {}s: {to} carries {replicas} of its replicas",
                        u.unit,
                        elapsed(now, since).as_secs()
                    ),
                ));
                loans.push(Loan {
                    from: u.unit.clone(),
                    to,
                    replicas,
                    reason: FAILOVER.into(),
                    since: stamp.clone(),
                    message: Some(format!(
                        "member of unit {} not Ready since {}",
                        u.unit,
                        Time(since).0
                    )),
                    room_since: None,
                    returning: false,
                    failed_returns: 0,
                });
            }
            if short > 0 {
                events.push((
                    "FailoverShort",
                    format!("{short} replicas of {} have no room anywhere", u.unit),
                ));
            }
        }
    }

    // Reschedule: pods unschedulable past the initial delay go where there is room.
    if let Some(rules) = &policy.reschedule {
        for u in units {
            let stuck = u.ready()
                && u.settled
                && u.unschedulable > 0
                && u.unschedulable_since
                    .is_some_and(|s| elapsed(now, s) >= rules.initial_delay);
            // A loan on its way back owns the lender's new pods; do not lend them again.
            let returning = loans.iter().any(|l| l.from == u.unit && l.returning);
            if !stuck || returning {
                continue;
            }
            room.remove(&u.unit);
            // Never more than the unit still runs for itself: its own pods are what it can
            // lend. Replicas it carries for another unit are not its to lend on: when that
            // loan ends they leave, and the unit would have lent more than it has.
            let lent = loans
                .iter()
                .filter(|l| l.from == u.unit && scales_down_lender(l))
                .fold(0i32, |n, l| n.saturating_add(l.replicas));
            let runs = u.base.saturating_sub(lent);
            let (placed, _) = place(u.unschedulable.min(runs).max(0), &mut room, &order);
            for (to, replicas) in placed {
                events.push((
                    "Rescheduled",
                    format!(
                        "{replicas} replicas of {} could not be scheduled for {}s; {to} runs them",
                        u.unit,
                        rules.initial_delay.as_secs()
                    ),
                ));
                match loans
                    .iter_mut()
                    .find(|l| l.from == u.unit && l.to == to && l.reason == UNSCHEDULABLE)
                {
                    Some(l) => {
                        l.replicas += replicas;
                        l.room_since = None;
                    }
                    None => loans.push(Loan {
                        from: u.unit.clone(),
                        to,
                        replicas,
                        reason: UNSCHEDULABLE.into(),
                        since: stamp.clone(),
                        message: Some(format!("{} had no room for them", u.unit)),
                        room_since: None,
                        returning: false,
                        failed_returns: 0,
                    }),
                }
            }
        }
    }
    LoanPlan { loans, events }
}

#[cfg(test)]
mod tests;
