//! A CafeDeployment's status from its units' InPlaceSets: totals, one row per
//! unit, and the `Available` and `Progressing` conditions. Pure: the hub observes, this decides.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};

use crate::api::{CafeDeploymentStatus, InPlaceSet, UnitStatus};
use crate::plan::revision::current_revision;

/// Condition types the hub sets on CafeDeployments.
pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const UNITS_RESOLVED: &str = "UnitsResolved";
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
/// False while deletion waits for a member to delete its InPlaceSet.
pub const CLEANED_UP: &str = "CleanedUp";

/// What the hub knows about one unit.
#[derive(Clone, Debug)]
pub struct UnitObservation<'a> {
    pub unit: String,
    /// The member cluster the unit resolved to.
    pub cluster: Option<String>,
    /// This unit's share of `spec.replicas`.
    pub desired_replicas: i32,
    /// `maxUnavailablePerUnit` resolved against `target_replicas`: the availability floor is
    /// `target_replicas - max_unavailable`.
    pub max_unavailable: i32,
    /// Replicas the unit should run now, loans included (own share, less lent, plus
    /// borrowed): availability is judged against it.
    pub target_replicas: i32,
    /// False when the member is unreachable: its InPlaceSet is as last seen.
    pub reachable: bool,
    /// Since when the member has not been reachable (when known).
    pub unreachable_since: Option<Time>,
    /// The unit's InPlaceSet in its member, if the hub has seen one.
    pub inplaceset: Option<&'a InPlaceSet>,
}

/// Everything [`aggregate`] needs.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    pub generation: Option<i64>,
    pub previous: &'a CafeDeploymentStatus,
    /// Revision of the CafeDeployment's template (`plan::revision::revision_hash`).
    pub update_revision: String,
    /// The CafeDeployment's selector as a string (see [`selector_string`]).
    pub selector: Option<String>,
    pub units: Vec<UnitObservation<'a>>,
    /// Used only for conditions whose status changes.
    pub now: Time,
}

/// The status the CafeDeployment should have. Fields this function does not own (`rollout`,
/// `collisionCount`, conditions other than Available and Progressing) are carried over from
/// `previous`, and a condition keeps its `lastTransitionTime` while its status is unchanged, so an
/// unchanged world gives a status equal to `previous` and no write.
pub fn aggregate(input: &StatusInput) -> CafeDeploymentStatus {
    let units: Vec<UnitStatus> = input.units.iter().map(unit_row).collect();
    // A member the hub cannot see counts in no total: its numbers are the last seen, not now.
    let sum = |f: fn(&crate::api::InPlaceSetStatus) -> i32| -> i32 {
        input
            .units
            .iter()
            .filter(|u| u.reachable)
            .filter_map(|u| u.inplaceset.and_then(|s| s.status.as_ref()))
            .map(f)
            .sum()
    };
    let converged: Vec<bool> = input
        .units
        .iter()
        .map(|u| is_converged(u, &input.update_revision))
        .collect();

    let mut status = input.previous.clone();
    status.observed_generation = input.generation;
    status.replicas = sum(|s| s.replicas);
    status.ready_replicas = sum(|s| s.ready_replicas);
    status.available_replicas = sum(|s| s.available_replicas);
    status.updated_replicas = sum(|s| s.updated_replicas);
    status.updated_ready_replicas = sum(|s| s.updated_ready_replicas);
    status.update_revision = Some(input.update_revision.clone());
    status.current_revision = Some(current_revision(
        input.previous.current_revision.as_deref(),
        &input.update_revision,
        pods_per_revision(&input.units).into_iter(),
    ));
    status.selector = input.selector.clone();

    let (available, reason, message) = availability(&input.units);
    set_condition(
        &mut status.conditions,
        Condition {
            type_: AVAILABLE.into(),
            status: available.into(),
            reason: reason.into(),
            message,
            observed_generation: input.generation,
            last_transition_time: input.now.clone(),
        },
    );
    let (progressing, reason, message) = progress(&input.units, &converged, &status);
    set_condition(
        &mut status.conditions,
        Condition {
            type_: PROGRESSING.into(),
            status: progressing.into(),
            reason: reason.into(),
            message,
            observed_generation: input.generation,
            last_transition_time: input.now.clone(),
        },
    );
    status.unit_count = i32::try_from(units.len()).unwrap_or(i32::MAX);
    status.units = units;
    status
}

/// Pods per revision as the members report them (last seen for an unreachable one). A member
/// that has not yet seen the newest template reports its pods under the revisions they run.
fn pods_per_revision<'a>(units: &'a [UnitObservation]) -> Vec<(&'a str, usize)> {
    units
        .iter()
        .filter_map(|u| u.inplaceset.and_then(|s| s.status.as_ref()))
        .flat_map(|s| {
            s.revisions.iter().map(|r| {
                (
                    r.revision.as_str(),
                    usize::try_from(r.replicas).unwrap_or(0),
                )
            })
        })
        .collect()
}

fn unit_row(u: &UnitObservation) -> UnitStatus {
    let s = u
        .inplaceset
        .and_then(|s| s.status.clone())
        .unwrap_or_default();
    UnitStatus {
        name: u.unit.clone(),
        cluster: u.cluster.clone(),
        desired_replicas: u.desired_replicas,
        replicas: s.replicas,
        ready_replicas: s.ready_replicas,
        available_replicas: s.available_replicas,
        updated_replicas: s.updated_replicas,
        unschedulable_replicas: s.unschedulable_replicas,
        borrowed_replicas: 0,
        lent_replicas: 0,
        target_replicas: u.target_replicas,
        reachable: u.reachable,
        unreachable_since: u.unreachable_since.clone().filter(|_| !u.reachable),
        not_ready_pods: s.not_ready_pods,
    }
}

/// The member has acted on the newest spec and every replica it should run (loans included)
/// is updated and available.
fn is_converged(u: &UnitObservation, update_revision: &str) -> bool {
    let Some(set) = u.inplaceset else {
        return u.target_replicas == 0 && u.reachable;
    };
    let Some(s) = set.status.as_ref() else {
        return false;
    };
    let observed = match (set.metadata.generation, s.observed_generation) {
        (Some(g), Some(o)) => o >= g,
        (None, _) => true,
        (Some(_), None) => false,
    };
    // A member that has not seen the newest template yet reports on an older one.
    u.reachable
        && observed
        && s.update_revision.as_deref() == Some(update_revision)
        && set.spec.replicas == u.target_replicas
        && s.replicas == u.target_replicas
        && s.updated_replicas == u.target_replicas
        && s.available_replicas == u.target_replicas
}

fn available_of(u: &UnitObservation) -> i32 {
    u.inplaceset
        .and_then(|s| s.status.as_ref())
        .map_or(0, |s| s.available_replicas)
}

/// Available when every unit keeps its floor: the replicas it should run now (its target after
/// loans) less `maxUnavailablePerUnit`. The active-active promise is per unit, not a total; a
/// unit that lent its replicas is judged on what it still runs, the one that borrowed on what it
/// carries. A member the hub cannot see is never counted as available: Unknown, unless it
/// should run nothing (its replicas all carried elsewhere) or another unit is known to be below
/// its floor (then False).
fn availability(units: &[UnitObservation]) -> (&'static str, &'static str, String) {
    let mut below = vec![];
    let mut unknown = vec![];
    for u in units {
        let max_unavailable = u.max_unavailable.max(0);
        let floor = (u.target_replicas - max_unavailable).max(0);
        if !u.reachable {
            if floor > 0 {
                unknown.push(format!(
                    "{} (member {}) unreachable; its {} replicas cannot be seen",
                    u.unit,
                    u.cluster.as_deref().unwrap_or("-"),
                    u.target_replicas
                ));
            }
            continue;
        }
        let available = available_of(u);
        if available < floor {
            below.push(format!(
                "{} {available}/{} available (floor {floor})",
                u.unit, u.target_replicas
            ));
        }
    }
    if !below.is_empty() {
        let mut message = format!("below the availability floor: {}", below.join(", "));
        if !unknown.is_empty() {
            message.push_str(&format!("; {}", unknown.join("; ")));
        }
        ("False", "MinimumReplicasUnavailable", message)
    } else if !unknown.is_empty() {
        ("Unknown", "MemberUnreachable", unknown.join("; "))
    } else {
        (
            "True",
            "MinimumReplicasAvailable",
            "every unit has at least its floor of available replicas".into(),
        )
    }
}

fn progress(
    units: &[UnitObservation],
    converged: &[bool],
    status: &CafeDeploymentStatus,
) -> (&'static str, &'static str, String) {
    let unreachable: Vec<String> = units
        .iter()
        .filter(|u| !u.reachable)
        .map(|u| match &u.cluster {
            Some(c) => format!("{} (member {c})", u.unit),
            None => u.unit.clone(),
        })
        .collect();
    if !unreachable.is_empty() {
        return (
            "Unknown",
            "MemberUnreachable",
            format!(
                "unreachable: {}; their replicas are shown as last seen",
                unreachable.join(", ")
            ),
        );
    }
    let desired: i32 = units.iter().map(|u| u.desired_replicas).sum();
    if converged.iter().all(|c| *c) {
        return (
            "True",
            "UnitsAvailable",
            format!(
                "all {desired} replicas are updated and available in {} units",
                units.len()
            ),
        );
    }
    let waiting: Vec<String> = units
        .iter()
        .zip(converged)
        .filter(|(_, c)| !**c)
        .map(|(u, _)| {
            format!(
                "{} ({}/{})",
                u.unit,
                available_of(u).min(u.target_replicas),
                u.target_replicas
            )
        })
        .collect();
    (
        "True",
        "UnitsProgressing",
        format!(
            "{} of {desired} replicas updated and available; waiting for {}",
            status.updated_replicas.min(status.available_replicas),
            waiting.join(", ")
        ),
    )
}

/// Inserts or replaces the condition of `new.type_`. While the status stays the same the old
/// `lastTransitionTime` is kept, as the Kubernetes API conventions ask:
/// https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md#typical-status-properties
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// Removes the condition of that type, if any.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The selector in the string form of `?labelSelector=` (for the scale subresource):
/// https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{InPlaceSetSpec, InPlaceSetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use k8s_openapi::jiff::Timestamp;
    use std::collections::BTreeMap;

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn set(desired: i32, generation: i64, status: Option<InPlaceSetStatus>) -> InPlaceSet {
        let mut s = InPlaceSet::new(
            "demo",
            InPlaceSetSpec {
                replicas: desired,
                selector: LabelSelector::default(),
                template: Default::default(),
                min_ready_seconds: 0,
                strategy: Default::default(),
                lifecycle: None,
            },
        );
        s.metadata.generation = Some(generation);
        s.status = status;
        s
    }

    fn running(n: i32, available: i32, generation: i64) -> InPlaceSetStatus {
        InPlaceSetStatus {
            observed_generation: Some(generation),
            replicas: n,
            ready_replicas: available,
            available_replicas: available,
            updated_replicas: n,
            updated_ready_replicas: available,
            update_revision: Some("abc".into()),
            revisions: vec![crate::api::RevisionReplicas {
                revision: "abc".into(),
                replicas: n,
                ready_replicas: available,
            }],
            ..Default::default()
        }
    }

    fn unit<'a>(name: &str, desired: i32, set: Option<&'a InPlaceSet>) -> UnitObservation<'a> {
        UnitObservation {
            unit: name.into(),
            cluster: Some(name.to_lowercase()),
            desired_replicas: desired,
            target_replicas: desired,
            max_unavailable: 1,
            reachable: true,
            unreachable_since: None,
            inplaceset: set,
        }
    }

    fn input<'a>(
        previous: &'a CafeDeploymentStatus,
        units: Vec<UnitObservation<'a>>,
        now: i64,
    ) -> StatusInput<'a> {
        StatusInput {
            generation: Some(2),
            previous,
            update_revision: "abc".into(),
            selector: Some("app=demo".into()),
            units,
            now: time(now),
        }
    }

    fn condition<'a>(s: &'a CafeDeploymentStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn totals_rows_and_conditions_when_everything_runs() {
        let (a, b, c) = (
            set(4, 1, Some(running(4, 4, 1))),
            set(3, 1, Some(running(3, 3, 1))),
            set(3, 1, Some(running(3, 3, 1))),
        );
        let previous = CafeDeploymentStatus::default();
        let status = aggregate(&input(
            &previous,
            vec![
                unit("DCA", 4, Some(&a)),
                unit("DCB", 3, Some(&b)),
                unit("DCC", 3, Some(&c)),
            ],
            100,
        ));
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!((status.replicas, status.ready_replicas), (10, 10));
        assert_eq!(status.available_replicas, 10);
        assert_eq!(status.updated_replicas, 10);
        assert_eq!(status.current_revision.as_deref(), Some("abc"));
        assert_eq!(status.selector.as_deref(), Some("app=demo"));
        assert_eq!(status.units.len(), 3);
        assert_eq!(status.units[1].name, "DCB");
        assert_eq!(status.units[1].cluster.as_deref(), Some("dcb"));
        assert_eq!(status.units[1].desired_replicas, 3);
        assert!(status.units.iter().all(|u| u.reachable));
        assert_eq!(condition(&status, AVAILABLE).status, "True");
        let p = condition(&status, PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("True", "UnitsAvailable")
        );
        assert_eq!(p.observed_generation, Some(2));
    }

    #[test]
    fn unchanged_world_gives_the_same_status_later() {
        let a = set(2, 1, Some(running(2, 2, 1)));
        let previous = CafeDeploymentStatus::default();
        let first = aggregate(&input(&previous, vec![unit("DCA", 2, Some(&a))], 100));
        let second = aggregate(&input(&first, vec![unit("DCA", 2, Some(&a))], 200));
        assert_eq!(first, second, "lastTransitionTime kept, nothing else moves");
    }

    #[test]
    fn a_unit_below_its_floor_makes_it_unavailable_and_progressing() {
        let a = set(4, 1, Some(running(4, 2, 1)));
        let previous = CafeDeploymentStatus::default();
        let status = aggregate(&input(&previous, vec![unit("DCA", 4, Some(&a))], 100));
        let av = condition(&status, AVAILABLE);
        assert_eq!(av.status, "False");
        assert_eq!(av.reason, "MinimumReplicasUnavailable");
        assert!(
            av.message.contains("DCA 2/4 available (floor 3)"),
            "{}",
            av.message
        );
        let p = condition(&status, PROGRESSING);
        assert_eq!(p.reason, "UnitsProgressing");
        assert!(p.message.contains("waiting for DCA (2/4)"), "{}", p.message);
        // Later everything is available: the transition time moves.
        let b = set(4, 1, Some(running(4, 4, 1)));
        let later = aggregate(&input(&status, vec![unit("DCA", 4, Some(&b))], 300));
        assert_eq!(condition(&later, AVAILABLE).last_transition_time, time(300));
        assert_eq!(
            condition(&later, PROGRESSING).last_transition_time,
            time(100)
        );
    }

    #[test]
    fn a_stale_generation_or_missing_set_is_not_converged() {
        // The member has not acted on generation 3 yet: its pods still run "old".
        let mut report = running(4, 4, 2);
        report.revisions[0].revision = "old".into();
        let stale = set(4, 3, Some(report));
        let previous = CafeDeploymentStatus {
            current_revision: Some("old".into()),
            ..Default::default()
        };
        let status = aggregate(&input(
            &previous,
            vec![unit("DCA", 4, Some(&stale)), unit("DCB", 3, None)],
            100,
        ));
        assert_eq!(condition(&status, PROGRESSING).reason, "UnitsProgressing");
        assert_eq!(status.current_revision.as_deref(), Some("old"));
        assert_eq!(status.update_revision.as_deref(), Some("abc"));
        assert_eq!(status.units[1].replicas, 0);
    }

    #[test]
    fn availability_is_judged_against_the_target_after_loans() {
        // DCA lent 2 of its 5 and serves the 3 it still runs; DCB carries them: 7 of 7.
        let (a, b) = (
            set(3, 1, Some(running(3, 3, 1))),
            set(7, 1, Some(running(7, 7, 1))),
        );
        let mut dca = unit("DCA", 5, Some(&a));
        dca.target_replicas = 3;
        let mut dcb = unit("DCB", 5, Some(&b));
        dcb.target_replicas = 7;
        let previous = CafeDeploymentStatus::default();
        let status = aggregate(&input(&previous, vec![dca, dcb], 100));
        let av = condition(&status, AVAILABLE);
        assert_eq!(av.status, "True", "{}", av.message);
        assert_eq!(status.units[0].target_replicas, 3);
        assert_eq!(status.units[1].target_replicas, 7);
        assert_eq!(condition(&status, PROGRESSING).reason, "UnitsAvailable");
    }

    #[test]
    fn a_lost_member_counts_in_no_total_and_is_never_available() {
        let (a, b) = (
            set(3, 1, Some(running(3, 3, 1))),
            set(3, 1, Some(running(3, 3, 1))),
        );
        let mut dcb = unit("DCB", 3, Some(&b));
        dcb.reachable = false;
        dcb.unreachable_since = Some(time(90));
        let previous = CafeDeploymentStatus::default();
        let status = aggregate(&input(
            &previous,
            vec![unit("DCA", 3, Some(&a)), dcb.clone()],
            100,
        ));
        assert_eq!(
            (
                status.replicas,
                status.ready_replicas,
                status.available_replicas
            ),
            (3, 3, 3),
            "DCB's last-seen pods are not counted"
        );
        assert_eq!(status.units[1].unreachable_since, Some(time(90)));
        assert_eq!(
            status.units[1].ready_replicas, 3,
            "the row keeps the last seen"
        );
        let av = condition(&status, AVAILABLE);
        assert_eq!(
            (av.status.as_str(), av.reason.as_str()),
            ("Unknown", "MemberUnreachable")
        );
        assert!(
            av.message.contains("DCB (member dcb) unreachable"),
            "{}",
            av.message
        );
        // Its replicas carried elsewhere (a failover), the lost unit should serve nothing.
        dcb.target_replicas = 0;
        let c = set(6, 1, Some(running(6, 6, 1)));
        let mut dca = unit("DCA", 3, Some(&c));
        dca.target_replicas = 6;
        let status = aggregate(&input(&previous, vec![dca, dcb], 100));
        assert_eq!(condition(&status, AVAILABLE).status, "True");
    }

    #[test]
    fn the_current_revision_is_one_the_pods_run() {
        // A new template the member has not seen yet: its pods still run "old".
        let mut report = running(4, 4, 1);
        report.update_revision = Some("old".into());
        report.revisions[0].revision = "old".into();
        let a = set(4, 1, Some(report));
        let previous = CafeDeploymentStatus {
            current_revision: Some("old".into()),
            ..Default::default()
        };
        let status = aggregate(&input(&previous, vec![unit("DCA", 4, Some(&a))], 100));
        assert_eq!(status.current_revision.as_deref(), Some("old"));
        assert_ne!(condition(&status, PROGRESSING).reason, "UnitsAvailable");
        // An undo of an undo: the previous current revision no pod runs any more is not shown.
        let mut report = running(4, 4, 1);
        report.revisions = vec![
            crate::api::RevisionReplicas {
                revision: "abc".into(),
                replicas: 1,
                ready_replicas: 1,
            },
            crate::api::RevisionReplicas {
                revision: "mid".into(),
                replicas: 3,
                ready_replicas: 3,
            },
        ];
        let a = set(4, 1, Some(report));
        let previous = CafeDeploymentStatus {
            current_revision: Some("gone".into()),
            ..Default::default()
        };
        let status = aggregate(&input(&previous, vec![unit("DCA", 4, Some(&a))], 100));
        assert_eq!(status.current_revision.as_deref(), Some("mid"));
    }

    #[test]
    fn unreachable_units_make_progress_unknown() {
        let a = set(2, 1, Some(running(2, 2, 1)));
        let mut u = unit("DCA", 2, Some(&a));
        u.reachable = false;
        let previous = CafeDeploymentStatus::default();
        let status = aggregate(&input(&previous, vec![u], 100));
        let p = condition(&status, PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("Unknown", "MemberUnreachable")
        );
        assert!(p.message.contains("DCA (member dca)"), "{}", p.message);
        assert!(!status.units[0].reachable);
        assert_eq!(status.units[0].replicas, 2, "as last seen");
    }

    #[test]
    fn other_conditions_and_fields_are_carried_over() {
        let previous = CafeDeploymentStatus {
            collision_count: Some(1),
            conditions: vec![Condition {
                type_: UNITS_RESOLVED.into(),
                status: "True".into(),
                reason: "Resolved".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: time(5),
            }],
            ..Default::default()
        };
        let status = aggregate(&input(&previous, vec![unit("DCA", 0, None)], 100));
        assert_eq!(status.collision_count, Some(1));
        assert_eq!(
            condition(&status, UNITS_RESOLVED).last_transition_time,
            time(5)
        );
        assert_eq!(condition(&status, PROGRESSING).status, "True");
    }

    #[test]
    fn selectors_render_like_label_selector_strings() {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([
                ("app".to_string(), "demo".to_string()),
                ("tier".to_string(), "web".to_string()),
            ])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "env".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(
            selector_string(&selector),
            "app=demo,tier=web,env in (a,b),!canary"
        );
    }
}
