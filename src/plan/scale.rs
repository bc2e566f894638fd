//! The facts scale decisions rest on, and the ReplicaSet controller's habits [`super::update`]
//! follows: which pod is the most expendable, the burst limit, slow-start creation batches. The
//! removal order mirrors the ReplicaSet controller's ("unassigned < assigned, not ready < ready,
//! newer < older"):
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

    #[test]
    fn removes_unscheduled_then_not_ready_then_newest_then_by_name() {
        let mut pods = [
            pod("old-ready", true, true, 1),
            pod("new-ready", true, true, 5),
            pod("not-ready", true, false, 2),
            pod("unscheduled", false, false, 0),
            pod("new-ready-b", true, true, 5),
        ];
        pods.sort_by(removal_preference);
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "not-ready",
                "new-ready",
                "new-ready-b",
                "old-ready"
            ]
        );
    }

    #[test]
    fn slow_start_doubles() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), vec![1]);
        assert_eq!(slow_start_batches(5), vec![1, 2, 2]);
        assert_eq!(slow_start_batches(8), vec![1, 2, 4, 1]);
    }

    proptest! {
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
