//! Scale planning for one InPlaceSet in a member: how many pods to create and which to remove.
//!
//! Pure functions over plain data: the member controller reads pods into [`PodFacts`], asks
//! [`plan`] what to do, and performs it. The removal order mirrors the ReplicaSet controller's
//! ("unassigned < assigned, not ready < ready, newer < older"):
//! <https://github.com/kubernetes/kubernetes/blob/master/pkg/controller/controller_utils.go>
//! (`ActivePods.Less`).

use std::cmp::Ordering;

use k8s_openapi::jiff::Timestamp;

/// At most this many pods are created or deleted by one reconcile, as the ReplicaSet
/// controller's `burstReplicas`; the next reconcile continues.
pub const MAX_BURST: usize = 500;

/// What scale planning needs to know about one pod the InPlaceSet owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub name: String,
    pub uid: String,
    /// Bound to a node (`spec.nodeName` set).
    pub scheduled: bool,
    /// The pod's Ready condition is True.
    pub ready: bool,
    /// `metadata.creationTimestamp`.
    pub created: Timestamp,
    /// `metadata.deletionTimestamp` is set: the pod is on its way out and no longer counts.
    pub deleting: bool,
}

/// A pod picked for removal; the uid guards against deleting a namesake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodId {
    pub name: String,
    pub uid: String,
}

/// What one reconcile should do to reach `replicas` pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScalePlan {
    /// New pods to create from the template.
    pub create: usize,
    /// Pods to delete, most expendable first.
    pub delete: Vec<PodId>,
}

impl ScalePlan {
    pub fn is_empty(&self) -> bool {
        self.create == 0 && self.delete.is_empty()
    }
}

/// Pods that count toward the replicas: those not being deleted.
pub fn active(pods: &[PodFacts]) -> impl Iterator<Item = &PodFacts> {
    pods.iter().filter(|p| !p.deleting)
}

/// The creations and deletions that bring the active pods to `replicas`, at most [`MAX_BURST`]
/// of either. Pods being deleted are neither counted nor deleted again, so a pod someone else
/// deletes is replaced right away.
pub fn plan(replicas: usize, pods: &[PodFacts]) -> ScalePlan {
    let active: Vec<&PodFacts> = active(pods).collect();
    match active.len().cmp(&replicas) {
        Ordering::Equal => ScalePlan::default(),
        Ordering::Less => ScalePlan {
            create: (replicas - active.len()).min(MAX_BURST),
            delete: vec![],
        },
        Ordering::Greater => {
            let excess = (active.len() - replicas).min(MAX_BURST);
            let delete = removal_order(active)
                .into_iter()
                .take(excess)
                .map(|p| PodId {
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                })
                .collect();
            ScalePlan { create: 0, delete }
        }
    }
}

/// The pods sorted most expendable first (see [`removal_preference`]).
pub fn removal_order(mut pods: Vec<&PodFacts>) -> Vec<&PodFacts> {
    pods.sort_by(|a, b| removal_preference(a, b));
    pods
}

/// `Less` when `a` should be removed before `b`: unscheduled before scheduled, then not ready
/// before ready, then newer before older; the name breaks ties so the order is total and stable
/// across reconciles.
pub fn removal_preference(a: &PodFacts, b: &PodFacts) -> Ordering {
    a.scheduled
        .cmp(&b.scheduled)
        .then(a.ready.cmp(&b.ready))
        .then(b.created.cmp(&a.created))
        .then(a.name.cmp(&b.name))
}

/// Sizes of the creation batches for `count` pods: 1, 2, 4, ... as the ReplicaSet controller's
/// `slowStartBatch`, so that a template the API rejects costs one failed call, not `count`.
/// The sizes sum to `count`.
pub fn slow_start_batches(count: usize) -> Vec<usize> {
    let mut batches = vec![];
    let mut remaining = count;
    let mut size = 1;
    while remaining > 0 {
        let batch = size.min(remaining);
        batches.push(batch);
        remaining -= batch;
        size = size.saturating_mul(2);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod(name: &str, scheduled: bool, ready: bool, created: i64) -> PodFacts {
        PodFacts {
            name: name.into(),
            uid: format!("uid-{name}"),
            scheduled,
            ready,
            created: Timestamp::from_second(created).unwrap(),
            deleting: false,
        }
    }

    fn names(plan: &ScalePlan) -> Vec<&str> {
        plan.delete.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn creates_the_missing_pods() {
        let pods = vec![pod("a", true, true, 1)];
        assert_eq!(plan(3, &pods).create, 2);
        assert!(plan(3, &pods).delete.is_empty());
        assert!(plan(1, &pods).is_empty());
        assert_eq!(plan(0, &[]), ScalePlan::default());
    }

    #[test]
    fn creation_is_bounded_by_the_burst() {
        assert_eq!(plan(MAX_BURST + 10, &[]).create, MAX_BURST);
    }

    #[test]
    fn pods_being_deleted_do_not_count_and_are_replaced() {
        let mut gone = pod("gone", true, true, 1);
        gone.deleting = true;
        let pods = vec![gone, pod("b", true, true, 2)];
        let p = plan(2, &pods);
        assert_eq!(p.create, 1);
        assert!(p.delete.is_empty());
        // Nor are they deleted twice.
        assert_eq!(names(&plan(0, &pods)), vec!["b"]);
    }

    #[test]
    fn removes_unscheduled_then_not_ready_then_newest() {
        let pods = vec![
            pod("old-ready", true, true, 1),
            pod("new-ready", true, true, 5),
            pod("not-ready", true, false, 2),
            pod("unscheduled", false, false, 0),
        ];
        assert_eq!(names(&plan(3, &pods)), vec!["unscheduled"]);
        assert_eq!(names(&plan(2, &pods)), vec!["unscheduled", "not-ready"]);
        assert_eq!(
            names(&plan(1, &pods)),
            vec!["unscheduled", "not-ready", "new-ready"]
        );
        assert_eq!(plan(0, &pods).delete.len(), 4);
    }

    #[test]
    fn ties_are_broken_by_name() {
        let pods = vec![pod("b", true, true, 1), pod("a", true, true, 1)];
        assert_eq!(names(&plan(1, &pods)), vec!["a"]);
    }

    #[test]
    fn deletions_carry_the_uid() {
        let pods = vec![pod("a", true, true, 1)];
        assert_eq!(
            plan(0, &pods).delete,
            vec![PodId {
                name: "a".into(),
                uid: "uid-a".into()
            }]
        );
    }

    #[test]
    fn slow_start_doubles() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), vec![1]);
        assert_eq!(slow_start_batches(5), vec![1, 2, 2]);
        assert_eq!(slow_start_batches(8), vec![1, 2, 4, 1]);
    }

    fn arb_pods() -> impl Strategy<Value = Vec<PodFacts>> {
        prop::collection::vec(
            (any::<bool>(), any::<bool>(), 0i64..20, any::<bool>()),
            0..40,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (scheduled, ready, created, deleting))| PodFacts {
                    deleting: deleting && i % 3 == 0,
                    ..pod(&format!("p{i:02}"), scheduled, ready, created)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn plan_reaches_the_desired_count(pods in arb_pods(), replicas in 0usize..50) {
            let p = plan(replicas, &pods);
            let active = active(&pods).count();
            prop_assert!(p.create == 0 || p.delete.is_empty());
            prop_assert_eq!(active + p.create - p.delete.len(), replicas);
        }

        #[test]
        fn deletes_distinct_active_pods_only(pods in arb_pods(), replicas in 0usize..50) {
            let p = plan(replicas, &pods);
            let mut seen = std::collections::BTreeSet::new();
            for d in &p.delete {
                prop_assert!(seen.insert(d.name.clone()), "deleted twice: {}", d.name);
                let facts = pods.iter().find(|f| f.name == d.name);
                prop_assert!(facts.is_some_and(|f| !f.deleting && f.uid == d.uid));
            }
        }

        #[test]
        fn no_kept_pod_is_more_expendable_than_a_removed_one(pods in arb_pods(), replicas in 0usize..50) {
            let p = plan(replicas, &pods);
            let removed: Vec<&PodFacts> = p.delete.iter()
                .filter_map(|d| pods.iter().find(|f| f.name == d.name))
                .collect();
            for kept in active(&pods).filter(|f| !p.delete.iter().any(|d| d.name == f.name)) {
                for r in &removed {
                    prop_assert_eq!(removal_preference(r, kept), Ordering::Less,
                        "{:?} removed before {:?}", r, kept);
                    // In particular an unscheduled pod is never kept while a scheduled one goes.
                    prop_assert!(!r.scheduled || kept.scheduled);
                    prop_assert!(r.scheduled != kept.scheduled || !r.ready || kept.ready);
                }
            }
        }

        #[test]
        fn slow_start_batches_cover_the_count(count in 0usize..2000) {
            let b = slow_start_batches(count);
            prop_assert_eq!(b.iter().sum::<usize>(), count);
            for (i, size) in b.iter().enumerate() {
                prop_assert!(*size >= 1 && *size <= 1 << i);
            }
        }
    }
}
