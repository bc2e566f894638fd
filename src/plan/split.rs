//! The unit split: how a CafeDeployment's `replicas` are shared between its
//! topology units.
//!
//! Fixed counts come first, then percents of `replicas` (rounded down), then the remainder is
//! shared evenly among the units without an entry, earlier units in `values` taking the extra
//! one. Every replica is assigned exactly once, or the split is an error that names what to fix.
//!
//! When every unit has an entry there is nobody to take a remainder. If the entries account for
//! `replicas` exactly (`{DCA: "50%", DCB: "50%"}` of 3 replicas is 1.5 + 1.5), the replicas lost to
//! rounding go one each to the percent units in `values` order (2 + 1); otherwise the split is
//! rejected rather than leaving replicas unassigned or inventing a share nobody asked for.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::IntOrPercent;

/// One unit's share of the replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitShare {
    pub unit: String,
    pub replicas: i32,
}

/// Why the replicas cannot be split. Each variant names the field or unit to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("spec.replicas is {0}; it must be 0 or more")]
    NegativeReplicas(i32),
    #[error("spec.topology.values is empty; list at least one unit")]
    NoUnits,
    #[error("spec.topology.values lists unit {0} more than once")]
    DuplicateUnit(String),
    #[error("spec.topology.unitReplicas names unit {0}, which is not in spec.topology.values")]
    UnknownUnit(String),
    #[error(
        "spec.topology.unitReplicas[{unit}] is {value:?}; use a count >= 0 or a percent from 0% to 100%"
    )]
    BadValue { unit: String, value: String },
    #[error(
        "spec.topology.unitReplicas assign {assigned} replicas ({entries}) but spec.replicas is {replicas}"
    )]
    Oversubscribed {
        assigned: i64,
        replicas: i32,
        entries: String,
    },
    #[error(
        "spec.topology.unitReplicas assign {assigned} of {replicas} replicas ({entries}) and every unit has an entry, so {missing} would be left unassigned; remove the entry of a unit to let it take the rest, or make the entries add up to spec.replicas"
    )]
    Unassigned {
        assigned: i64,
        replicas: i32,
        missing: i64,
        entries: String,
    },
}

impl SplitError {
    /// A fixed CamelCase word for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            SplitError::NegativeReplicas(_) => "InvalidReplicas",
            SplitError::NoUnits => "NoUnits",
            SplitError::DuplicateUnit(_) => "DuplicateUnit",
            SplitError::UnknownUnit(_) => "UnknownUnit",
            SplitError::BadValue { .. } => "InvalidUnitReplicas",
            SplitError::Oversubscribed { .. } => "UnitReplicasExceedReplicas",
            SplitError::Unassigned { .. } => "UnitReplicasLeaveReplicasUnassigned",
        }
    }
}

/// What one entry of `unitReplicas` asks for.
enum Entry {
    Fixed(i32),
    /// Percent (0-100) and its rounded-down share.
    Percent(i32, i32),
}

/// Splits `replicas` over `values` (in that order) honouring `unit_replicas`.
///
/// On success the shares are in `values` order and sum to `replicas`; fixed counts are exact and
/// percents are `floor(p * replicas / 100)`, plus at most one when every unit has an entry (see the
/// module documentation).
pub fn split(
    replicas: i32,
    values: &[String],
    unit_replicas: &BTreeMap<String, IntOrPercent>,
) -> Result<Vec<UnitShare>, SplitError> {
    if replicas < 0 {
        return Err(SplitError::NegativeReplicas(replicas));
    }
    if values.is_empty() {
        return Err(SplitError::NoUnits);
    }
    let mut seen = BTreeSet::new();
    for unit in values {
        if !seen.insert(unit.as_str()) {
            return Err(SplitError::DuplicateUnit(unit.clone()));
        }
    }
    if let Some(unknown) = unit_replicas.keys().find(|k| !seen.contains(k.as_str())) {
        return Err(SplitError::UnknownUnit(unknown.clone()));
    }

    let entries: Vec<Option<Entry>> = values
        .iter()
        .map(|unit| {
            unit_replicas
                .get(unit)
                .map(|v| entry(unit, v, replicas))
                .transpose()
        })
        .collect::<Result<_, _>>()?;

    let assigned: i64 = entries
        .iter()
        .flatten()
        .map(|e| match e {
            Entry::Fixed(n) => i64::from(*n),
            Entry::Percent(_, n) => i64::from(*n),
        })
        .sum();
    let describe = || describe_entries(values, unit_replicas);
    if assigned > i64::from(replicas) {
        return Err(SplitError::Oversubscribed {
            assigned,
            replicas,
            entries: describe(),
        });
    }
    // Fits in i32: 0 <= remainder <= replicas.
    let mut remainder = (i64::from(replicas) - assigned) as i32;

    let free = entries.iter().filter(|e| e.is_none()).count() as i32;
    let mut shares: Vec<i32> = entries
        .iter()
        .map(|e| match e {
            Some(Entry::Fixed(n)) | Some(Entry::Percent(_, n)) => *n,
            None => 0,
        })
        .collect();

    if free > 0 {
        let (each, extra) = (remainder / free, remainder % free);
        let mut extra_left = extra;
        for (share, e) in shares.iter_mut().zip(&entries) {
            if e.is_none() {
                *share = each + i32::from(extra_left > 0);
                extra_left -= 1;
            }
        }
    } else if remainder > 0 {
        // Nobody takes a remainder: only rounding losses of percents that add up exactly may be
        // handed out, one each to percent units in order.
        let exact_hundredths: i64 = entries
            .iter()
            .flatten()
            .map(|e| match e {
                Entry::Fixed(n) => i64::from(*n) * 100,
                Entry::Percent(p, _) => i64::from(*p) * i64::from(replicas),
            })
            .sum();
        if exact_hundredths != i64::from(replicas) * 100 {
            return Err(SplitError::Unassigned {
                assigned,
                replicas,
                missing: i64::from(remainder),
                entries: describe(),
            });
        }
        for (share, e) in shares.iter_mut().zip(&entries) {
            if remainder > 0 && matches!(e, Some(Entry::Percent(..))) {
                *share += 1;
                remainder -= 1;
            }
        }
    }

    Ok(values
        .iter()
        .zip(shares)
        .map(|(unit, replicas)| UnitShare {
            unit: unit.clone(),
            replicas,
        })
        .collect())
}

fn entry(unit: &str, value: &IntOrPercent, replicas: i32) -> Result<Entry, SplitError> {
    let bad = || SplitError::BadValue {
        unit: unit.to_string(),
        value: value.to_string(),
    };
    match value {
        IntOrPercent::Int(n) if *n >= 0 => Ok(Entry::Fixed(*n)),
        IntOrPercent::Int(_) => Err(bad()),
        IntOrPercent::Percent(text) => {
            let percent = text
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<i32>().ok())
                .filter(|p| (0..=100).contains(p))
                .ok_or_else(bad)?;
            let share = value.resolve(replicas).map_err(|_| bad())?;
            Ok(Entry::Percent(percent, share))
        }
    }
}

/// "DCA: 4, DCB: 30%", in `values` order.
fn describe_entries(values: &[String], unit_replicas: &BTreeMap<String, IntOrPercent>) -> String {
    values
        .iter()
        .filter_map(|u| unit_replicas.get(u).map(|v| format!("{u}: {v}")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn units(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn entries(pairs: &[(&str, IntOrPercent)]) -> BTreeMap<String, IntOrPercent> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn pct(s: &str) -> IntOrPercent {
        IntOrPercent::Percent(s.to_string())
    }

    fn counts(shares: &[UnitShare]) -> Vec<i32> {
        shares.iter().map(|s| s.replicas).collect()
    }

    #[test]
    fn the_issue_example_fixed_then_percent_then_remainder() {
        let shares = split(
            10,
            &units(&["DCA", "DCB", "DCC"]),
            &entries(&[("DCA", IntOrPercent::Int(4)), ("DCB", pct("30%"))]),
        )
        .unwrap();
        assert_eq!(
            shares,
            vec![
                UnitShare {
                    unit: "DCA".into(),
                    replicas: 4
                },
                UnitShare {
                    unit: "DCB".into(),
                    replicas: 3
                },
                UnitShare {
                    unit: "DCC".into(),
                    replicas: 3
                },
            ]
        );
    }

    #[test]
    fn even_split_gives_the_extra_to_earlier_units() {
        let shares = split(10, &units(&["DCA", "DCB"]), &BTreeMap::new()).unwrap();
        assert_eq!(counts(&shares), vec![5, 5]);
        let shares = split(11, &units(&["DCA", "DCB", "DCC"]), &BTreeMap::new()).unwrap();
        assert_eq!(counts(&shares), vec![4, 4, 3]);
        let shares = split(0, &units(&["DCA", "DCB"]), &BTreeMap::new()).unwrap();
        assert_eq!(counts(&shares), vec![0, 0]);
    }

    #[test]
    fn percents_round_down_and_the_rest_goes_to_free_units() {
        // 25% of 10 is 2.5 -> 2; the other 8 go to DCB and DCC.
        let shares = split(
            10,
            &units(&["DCA", "DCB", "DCC"]),
            &entries(&[("DCA", pct("25%"))]),
        )
        .unwrap();
        assert_eq!(counts(&shares), vec![2, 4, 4]);
    }

    #[test]
    fn entries_that_cover_every_unit_must_add_up() {
        let values = units(&["DCA", "DCB"]);
        // Exact: 4 + 6.
        let ok = split(
            10,
            &values,
            &entries(&[("DCA", IntOrPercent::Int(4)), ("DCB", pct("60%"))]),
        )
        .unwrap();
        assert_eq!(counts(&ok), vec![4, 6]);
        // 50% + 50% of 3 is 1.5 + 1.5: the rounding loss goes to the first percent unit.
        let ok = split(
            3,
            &values,
            &entries(&[("DCA", pct("50%")), ("DCB", pct("50%"))]),
        )
        .unwrap();
        assert_eq!(counts(&ok), vec![2, 1]);
        // 4 + 3 of 10 leaves 3 nobody may take.
        let err = split(
            10,
            &values,
            &entries(&[("DCA", IntOrPercent::Int(4)), ("DCB", pct("30%"))]),
        )
        .unwrap_err();
        assert!(
            matches!(err, SplitError::Unassigned { missing: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("DCA: 4, DCB: 30%"), "{err}");
        assert_eq!(err.reason(), "UnitReplicasLeaveReplicasUnassigned");
    }

    #[test]
    fn oversubscription_is_an_error_naming_the_entries() {
        let err = split(
            5,
            &units(&["DCA", "DCB", "DCC"]),
            &entries(&[("DCA", IntOrPercent::Int(4)), ("DCB", pct("40%"))]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            SplitError::Oversubscribed {
                assigned: 6,
                replicas: 5,
                entries: "DCA: 4, DCB: 40%".into()
            }
        );
        assert!(err.to_string().contains("spec.replicas is 5"), "{err}");
    }

    #[test]
    fn malformed_specs_name_the_unit() {
        let values = units(&["DCA", "DCB"]);
        assert_eq!(
            split(3, &values, &entries(&[("DCC", IntOrPercent::Int(1))])),
            Err(SplitError::UnknownUnit("DCC".into()))
        );
        assert_eq!(
            split(3, &values, &entries(&[("DCB", pct("120%"))])),
            Err(SplitError::BadValue {
                unit: "DCB".into(),
                value: "120%".into()
            })
        );
        assert_eq!(
            split(3, &values, &entries(&[("DCA", IntOrPercent::Int(-1))])),
            Err(SplitError::BadValue {
                unit: "DCA".into(),
                value: "-1".into()
            })
        );
        assert_eq!(
            split(3, &units(&["DCA", "DCA"]), &BTreeMap::new()),
            Err(SplitError::DuplicateUnit("DCA".into()))
        );
        assert_eq!(split(3, &[], &BTreeMap::new()), Err(SplitError::NoUnits));
        assert_eq!(
            split(-1, &values, &BTreeMap::new()),
            Err(SplitError::NegativeReplicas(-1))
        );
    }

    /// Units, replicas, and for each unit an optional entry (fixed count or percent).
    fn spec() -> impl Strategy<Value = (i32, Vec<String>, BTreeMap<String, IntOrPercent>)> {
        (0i32..200, 1usize..6).prop_flat_map(|(replicas, n)| {
            let entry = prop_oneof![
                Just(None),
                (0i32..=60).prop_map(|c| Some(IntOrPercent::Int(c))),
                (0i32..=100).prop_map(|p| Some(IntOrPercent::Percent(format!("{p}%")))),
            ];
            proptest::collection::vec(entry, n).prop_map(move |es| {
                let values: Vec<String> = (0..es.len()).map(|i| format!("U{i}")).collect();
                let map = values
                    .iter()
                    .zip(es)
                    .filter_map(|(u, e)| e.map(|e| (u.clone(), e)))
                    .collect();
                (replicas, values, map)
            })
        })
    }

    proptest! {
        #[test]
        fn a_split_assigns_every_replica_exactly_once((replicas, values, map) in spec()) {
            match split(replicas, &values, &map) {
                Ok(shares) => {
                    prop_assert_eq!(shares.len(), values.len());
                    prop_assert_eq!(shares.iter().map(|s| s.replicas).sum::<i32>(), replicas);
                    prop_assert!(shares.iter().all(|s| s.replicas >= 0));
                    prop_assert!(shares.iter().zip(&values).all(|(s, u)| &s.unit == u));
                }
                Err(e) => {
                    // Only the two "does not add up" errors are possible for generated specs.
                    let free = values.iter().any(|u| !map.contains_key(u));
                    match e {
                        SplitError::Oversubscribed { assigned, .. } => {
                            prop_assert!(assigned > i64::from(replicas))
                        }
                        SplitError::Unassigned { assigned, .. } => {
                            prop_assert!(!free);
                            prop_assert!(assigned < i64::from(replicas));
                        }
                        other => prop_assert!(false, "unexpected {other}"),
                    }
                }
            }
        }

        #[test]
        fn fixed_counts_and_percents_are_honoured((replicas, values, map) in spec()) {
            let Ok(shares) = split(replicas, &values, &map) else { return Ok(()) };
            let all_have_entries = values.iter().all(|u| map.contains_key(u));
            for share in &shares {
                match map.get(&share.unit) {
                    Some(IntOrPercent::Int(n)) => prop_assert_eq!(share.replicas, *n),
                    Some(p @ IntOrPercent::Percent(_)) => {
                        let floor = p.resolve(replicas).unwrap();
                        if all_have_entries {
                            prop_assert!(share.replicas == floor || share.replicas == floor + 1);
                        } else {
                            prop_assert_eq!(share.replicas, floor);
                        }
                    }
                    None => {}
                }
            }
        }

        #[test]
        fn free_units_share_evenly_earlier_first((replicas, values, map) in spec()) {
            let Ok(shares) = split(replicas, &values, &map) else { return Ok(()) };
            let free: Vec<i32> = shares
                .iter()
                .filter(|s| !map.contains_key(&s.unit))
                .map(|s| s.replicas)
                .collect();
            if let (Some(max), Some(min)) = (free.iter().max(), free.iter().min()) {
                prop_assert!(max - min <= 1);
                prop_assert!(free.windows(2).all(|w| w[0] >= w[1]));
            }
        }
    }
}
