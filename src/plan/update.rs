//! Update planning for one InPlaceSet in a member: which pods to create, which to take out for a
//! scale-down, and which to start updating now, within the partition and `maxUnavailable`.
//!
//! Pure: the controller reads its pods into [`PodUpdateFacts`], asks [`plan`], and moves the
//! chosen pods into `PreparingUpdate` / `PreparingDelete`. Each pod's own
//! steps after that are the controller's per-pod state machine; this planner only decides when a
//! pod may *start* being taken down, which is where the availability budget is spent.

use crate::plan::scale::{MAX_BURST, PodFacts, PodId, removal_preference};

/// Where a pod is in its lifecycle (the `apps.cafe.io/lifecycle-state` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Serving; nothing in progress (also a pod without the label).
    Normal,
    /// Gate turned False; waiting for the grace period and the pre-update hooks.
    PreparingUpdate,
    /// Patched in place; the kubelet restarts the new containers.
    Updating,
    /// Running the new revision; waiting for `minReadySeconds` before the gate turns True.
    Updated,
    /// Gate turned False; waiting for the pre-delete hooks, then deleted.
    PreparingDelete,
}

/// What the planner needs to know about one pod the InPlaceSet owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodUpdateFacts {
    pub pod: PodFacts,
    /// The pod's revision label equals the update revision.
    pub updated: bool,
    pub stage: Stage,
    /// Ready for `minReadySeconds` and in the Normal stage: it serves and counts as available.
    pub available: bool,
    /// A pre-update hook (finalizer or label) currently protects it; such pods go last so the
    /// others proceed while the third party drains it.
    pub hooked: bool,
    /// Reaching the update revision needs a new pod (`ReCreate`, or a change Kubernetes cannot
    /// make in place): it starts in `PreparingDelete` instead of `PreparingUpdate`.
    pub recreate: bool,
}

/// The InPlaceSet's wishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateSpec {
    pub replicas: usize,
    /// Pods kept on an old revision.
    pub partition: usize,
    /// Pods that may be unavailable at once, already resolved against `replicas` (at least 1).
    pub max_unavailable: usize,
}

/// What one reconcile should start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdatePlan {
    /// New pods to create, at the update revision.
    pub create: usize,
    /// New pods to create at the old revision: the partition keeps more old pods than there
    /// are (a scale-out, or a unit running another unit's old pods for it).
    pub create_old: usize,
    /// Pods to take out for a scale-down: they go to `PreparingDelete`, then are deleted.
    pub scale_down: Vec<PodId>,
    /// Old pods to start updating in place (to `PreparingUpdate`).
    pub update_in_place: Vec<PodId>,
    /// Old pods to replace (to `PreparingDelete`; the replacement is created after deletion).
    pub recreate: Vec<PodId>,
    /// Old pods still owed an update once the budget allows; 0 when the partition is reached.
    pub waiting: usize,
}

impl UpdatePlan {
    pub fn is_empty(&self) -> bool {
        self.create == 0
            && self.create_old == 0
            && self.scale_down.is_empty()
            && self.update_in_place.is_empty()
            && self.recreate.is_empty()
    }
}

fn id(p: &PodFacts) -> PodId {
    PodId {
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

/// On the update revision, or on the way to it (an old pod being updated in place).
fn headed_new(p: &PodUpdateFacts) -> bool {
    p.updated || matches!(p.stage, Stage::PreparingUpdate | Stage::Updating)
}

/// The order in which a scale-down removes pods: those already leaving, then updated pods
/// beyond the `allowed_new` the partition leaves room for (so a scale-in never leaves more
/// pods on the update revision than released), then the most expendable.
fn scale_down_order<'a>(
    active: &[&'a PodUpdateFacts],
    allowed_new: usize,
) -> Vec<&'a PodUpdateFacts> {
    let expendable = |a: &&PodUpdateFacts, b: &&PodUpdateFacts| {
        let prep = |p: &PodUpdateFacts| p.stage != Stage::PreparingDelete;
        prep(a)
            .cmp(&prep(b))
            .then(a.pod.scheduled.cmp(&b.pod.scheduled))
            .then(a.pod.ready.cmp(&b.pod.ready))
            .then(a.updated.cmp(&b.updated))
            .then(removal_preference(&a.pod, &b.pod))
    };
    let mut order: Vec<&PodUpdateFacts> = active.to_vec();
    order.sort_by(expendable);
    let (preparing, rest): (Vec<_>, Vec<_>) = order
        .into_iter()
        .partition(|p| p.stage == Stage::PreparingDelete);
    let new_after = active
        .iter()
        .filter(|p| headed_new(p) && p.stage != Stage::PreparingDelete)
        .count();
    let mut over = new_after.saturating_sub(allowed_new);
    let (mut first, mut then) = (preparing, vec![]);
    for p in rest {
        if over > 0 && headed_new(p) {
            over -= 1;
            first.push(p);
        } else {
            then.push(p);
        }
    }
    first.extend(then);
    first
}

/// The plan for the pods as they are now.
///
/// - Scale: pods being deleted do not count; pods in `PreparingDelete` still do (a recreate
///   creates its replacement only after the old pod is gone), but are the first to go when
///   there are too many. The partition holds in both directions, so a scale never puts more
///   pods on the update revision than `replicas - partition`: a scale-out creates new pods at
///   the update revision only up to that, the rest at the old revision; a scale-down first
///   takes updated pods beyond it, then the most expendable pods (unscheduled, not ready, old
///   revision, newest).
/// - Update: the old-revision pods beyond `partition` must be updated. Those already on their
///   way (`PreparingUpdate`, `PreparingDelete`) count as started. New starts take old pods that
///   are unavailable anyway first (that costs no availability), then available ones while the
///   number of unavailable pods (missing ones included) stays within `max_unavailable`.
pub fn plan(spec: UpdateSpec, pods: &[PodUpdateFacts]) -> UpdatePlan {
    let active: Vec<&PodUpdateFacts> = pods.iter().filter(|p| !p.pod.deleting).collect();
    let mut out = UpdatePlan::default();

    // scale
    let partition = spec.partition.min(spec.replicas);
    let allowed_new = spec.replicas - partition;
    let excess = active.len().saturating_sub(spec.replicas);
    let mut leaving: Vec<&PodUpdateFacts> = vec![];
    if excess > 0 {
        leaving = scale_down_order(&active, allowed_new)
            .into_iter()
            .take(excess.min(MAX_BURST))
            .collect();
        out.scale_down = leaving
            .iter()
            .filter(|p| p.stage != Stage::PreparingDelete)
            .map(|p| id(&p.pod))
            .collect();
    } else {
        let missing = spec.replicas.saturating_sub(active.len()).min(MAX_BURST);
        let headed_new = active.iter().filter(|p| headed_new(p)).count();
        out.create = missing.min(allowed_new.saturating_sub(headed_new));
        out.create_old = missing - out.create;
    }
    let staying: Vec<&PodUpdateFacts> = active
        .iter()
        .copied()
        .filter(|p| !leaving.iter().any(|l| l.pod.uid == p.pod.uid))
        .collect();

    // update
    let old: Vec<&PodUpdateFacts> = staying.iter().copied().filter(|p| !p.updated).collect();
    let started = old.iter().filter(|p| p.stage != Stage::Normal).count();
    let owed = old.len().saturating_sub(started + spec.partition);
    let available = staying.iter().filter(|p| p.available).count();
    let unavailable = spec.replicas.saturating_sub(available);
    let mut budget = spec.max_unavailable.saturating_sub(unavailable);
    let mut candidates: Vec<&PodUpdateFacts> = old
        .iter()
        .copied()
        .filter(|p| p.stage == Stage::Normal)
        .collect();
    candidates.sort_by(|a, b| {
        a.available
            .cmp(&b.available)
            .then(a.hooked.cmp(&b.hooked))
            .then(removal_preference(&a.pod, &b.pod))
    });
    let mut taken = 0;
    for p in candidates.into_iter().take(owed) {
        if p.available {
            if budget == 0 {
                break;
            }
            budget -= 1;
        }
        taken += 1;
        if p.recreate {
            out.recreate.push(id(&p.pod));
        } else {
            out.update_in_place.push(id(&p.pod));
        }
    }
    out.waiting = owed - taken;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use proptest::prelude::*;

    fn pod(name: &str, updated: bool, available: bool) -> PodUpdateFacts {
        PodUpdateFacts {
            pod: PodFacts {
                name: name.into(),
                uid: format!("uid-{name}"),
                scheduled: true,
                ready: available,
                created: Timestamp::UNIX_EPOCH,
                deleting: false,
            },
            updated,
            stage: Stage::Normal,
            available,
            hooked: false,
            recreate: false,
        }
    }

    fn spec(replicas: usize, partition: usize, max_unavailable: usize) -> UpdateSpec {
        UpdateSpec {
            replicas,
            partition,
            max_unavailable,
        }
    }

    fn names(ids: &[PodId]) -> Vec<&str> {
        ids.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn updates_at_most_max_unavailable_at_once() {
        let pods: Vec<_> = (0..5).map(|i| pod(&format!("p{i}"), false, true)).collect();
        let plan = plan(spec(5, 0, 2), &pods);
        assert_eq!(plan.update_in_place.len(), 2);
        assert_eq!(plan.waiting, 3);
        assert_eq!(plan.create, 0);
    }

    #[test]
    fn pods_already_down_shrink_the_budget() {
        let mut pods: Vec<_> = (0..5).map(|i| pod(&format!("p{i}"), false, true)).collect();
        pods[4].available = false;
        pods[4].pod.ready = false;
        // p4 is down anyway: updating it is free; nothing else fits in a budget of 1.
        let plan = plan(spec(5, 0, 1), &pods);
        assert_eq!(names(&plan.update_in_place), ["p4"]);
        assert_eq!(plan.waiting, 4);
    }

    #[test]
    fn the_partition_keeps_old_pods() {
        let pods: Vec<_> = (0..5).map(|i| pod(&format!("p{i}"), false, true)).collect();
        let plan = plan(spec(5, 3, 5), &pods);
        assert_eq!(plan.update_in_place.len(), 2);
        assert_eq!(plan.waiting, 0);
        let done: Vec<_> = (0..5).map(|i| pod(&format!("p{i}"), i < 2, true)).collect();
        assert!(super::plan(spec(5, 3, 5), &done).is_empty());
    }

    #[test]
    fn pods_in_flight_count_as_started_and_unavailable() {
        let mut pods: Vec<_> = (0..4).map(|i| pod(&format!("p{i}"), false, true)).collect();
        pods[0].stage = Stage::PreparingUpdate;
        pods[0].available = false;
        let plan = plan(spec(4, 0, 1), &pods);
        assert!(plan.update_in_place.is_empty());
        assert_eq!(plan.waiting, 3);
    }

    #[test]
    fn recreates_go_through_preparing_delete_without_a_surge() {
        let mut pods: Vec<_> = (0..3).map(|i| pod(&format!("p{i}"), false, true)).collect();
        for p in &mut pods {
            p.recreate = true;
        }
        let first = plan(spec(3, 0, 1), &pods);
        assert_eq!(first.recreate.len(), 1);
        assert_eq!(first.create, 0);
        // While it prepares, it still counts toward replicas: no replacement yet.
        pods[2].stage = Stage::PreparingDelete;
        pods[2].available = false;
        let waiting = plan(spec(3, 0, 1), &pods);
        assert!(waiting.is_empty());
        // Once deleted, the replacement is created (at the update revision).
        pods[2].pod.deleting = true;
        assert_eq!(plan(spec(3, 0, 1), &pods).create, 1);
    }

    #[test]
    fn scale_down_takes_preparing_delete_then_old_pods_first() {
        let mut pods = vec![
            pod("new-a", true, true),
            pod("old-a", false, true),
            pod("new-b", true, true),
            pod("old-b", false, true),
        ];
        pods[0].stage = Stage::PreparingDelete;
        let plan = plan(spec(2, 0, 1), &pods);
        // new-a is already leaving; one more goes: an old one.
        assert_eq!(plan.scale_down.len(), 1);
        assert!(plan.scale_down[0].name.starts_with("old-"));
    }

    #[test]
    fn hooked_pods_go_last() {
        let mut pods: Vec<_> = (0..3).map(|i| pod(&format!("p{i}"), false, true)).collect();
        pods[0].hooked = true;
        let plan = plan(spec(3, 0, 1), &pods);
        assert_ne!(names(&plan.update_in_place), ["p0"]);
    }

    fn arb_pod(i: usize) -> impl Strategy<Value = PodUpdateFacts> {
        (
            any::<bool>(),
            any::<bool>(),
            0..5u8,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                move |(updated, available, stage, hooked, recreate, deleting)| {
                    let stage = match stage {
                        0 | 1 => Stage::Normal,
                        2 => Stage::PreparingUpdate,
                        3 => Stage::Updated,
                        _ => Stage::PreparingDelete,
                    };
                    let mut p = pod(&format!("p{i}"), updated, available);
                    p.stage = stage;
                    p.available = available && stage == Stage::Normal;
                    p.hooked = hooked;
                    p.recreate = recreate;
                    p.pod.deleting = deleting && i.is_multiple_of(3);
                    p
                },
            )
    }

    fn arb_pods() -> impl Strategy<Value = Vec<PodUpdateFacts>> {
        (0..12usize).prop_flat_map(|n| (0..n).map(arb_pod).collect::<Vec<_>>())
    }

    #[test]
    fn a_scale_out_creates_the_old_pods_the_partition_keeps() {
        // 3 pods (2 updated), asked for 6 with 2 kept old: 2 more updated, 1 more old.
        let pods = [
            pod("a", true, true),
            pod("b", true, true),
            pod("c", false, true),
        ];
        let p = plan(spec(6, 2, 1), &pods);
        assert_eq!((p.create, p.create_old), (2, 1));
        // Without a partition every new pod is updated.
        let p = plan(spec(6, 0, 1), &pods);
        assert_eq!((p.create, p.create_old), (3, 0));
    }

    #[test]
    fn a_scale_in_never_leaves_more_updated_pods_than_released() {
        // 4 updated and 2 old, asked for 3 with 1 kept old: 2 updated and 1 old go.
        let pods = [
            pod("n1", true, true),
            pod("n2", true, true),
            pod("n3", true, true),
            pod("n4", true, true),
            pod("o1", false, true),
            pod("o2", false, true),
        ];
        let p = plan(spec(3, 1, 1), &pods);
        let gone = names(&p.scale_down);
        assert_eq!(gone.len(), 3);
        assert_eq!(
            gone.iter().filter(|n| n.starts_with('n')).count(),
            2,
            "{gone:?}"
        );
        assert!(
            p.update_in_place.is_empty(),
            "the old pod kept is the partition's"
        );
    }

    proptest! {
        /// Starting the planned updates never takes the InPlaceSet beyond maxUnavailable unless
        /// it already was (then it starts only pods that are down anyway), and never updates
        /// below the partition.
        #[test]
        fn never_exceeds_the_budget_or_the_partition(
            pods in arb_pods(), replicas in 0..12usize, partition in 0..12usize,
            max_unavailable in 1..4usize,
        ) {
            let s = spec(replicas, partition, max_unavailable);
            let p = plan(s, &pods);
            let started: Vec<&PodId> = p.update_in_place.iter().chain(&p.recreate).collect();
            let active: Vec<&PodUpdateFacts> = pods.iter().filter(|f| !f.pod.deleting).collect();
            let leaving = |f: &PodUpdateFacts| p.scale_down.iter().any(|d| d.uid == f.pod.uid)
                || (active.len() > replicas && f.stage == Stage::PreparingDelete);
            let available_before = active.iter().filter(|f| f.available && !leaving(f)).count();
            let available_after = active.iter()
                .filter(|f| f.available && !leaving(f))
                .filter(|f| !started.iter().any(|s| s.uid == f.pod.uid))
                .count();
            let before = replicas.saturating_sub(available_before);
            let after = replicas.saturating_sub(available_after);
            prop_assert!(after <= max_unavailable.max(before));
            if before >= max_unavailable {
                prop_assert_eq!(available_after, available_before);
            }
            // Old pods left after everything started finishes stay at or above the partition.
            let old_left = active.iter()
                .filter(|f| !f.updated && f.stage == Stage::Normal && !leaving(f))
                .filter(|f| !started.iter().any(|s| s.uid == f.pod.uid))
                .count();
            prop_assert!(started.is_empty() || old_left >= partition);
            // Only Normal, old pods start; nobody starts twice.
            for s in &started {
                let f = pods.iter().find(|f| f.pod.uid == s.uid).unwrap();
                prop_assert!(!f.updated && f.stage == Stage::Normal && !f.pod.deleting);
            }
            let mut uids: Vec<&str> = started.iter().map(|s| s.uid.as_str())
                .chain(p.scale_down.iter().map(|s| s.uid.as_str())).collect();
            let n = uids.len();
            uids.sort();
            uids.dedup();
            prop_assert_eq!(uids.len(), n);
        }

        /// A scale keeps the partition: afterwards no more pods are on (or headed to) the
        /// update revision than `replicas - partition`, unless more already were among the
        /// pods kept; and creation plus the pods kept make exactly `replicas`.
        #[test]
        fn a_scale_never_puts_more_pods_on_the_update_revision_than_the_partition_allows(
            pods in arb_pods(), replicas in 0..12usize, partition in 0..12usize,
        ) {
            let p = plan(spec(replicas, partition, 1), &pods);
            let active: Vec<&PodUpdateFacts> = pods.iter().filter(|f| !f.pod.deleting).collect();
            let leaving = |f: &PodUpdateFacts| p.scale_down.iter().any(|d| d.uid == f.pod.uid)
                || (active.len() > replicas && f.stage == Stage::PreparingDelete);
            let kept: Vec<&&PodUpdateFacts> = active.iter().filter(|f| !leaving(f)).collect();
            let allowed = replicas - partition.min(replicas);
            let new_kept = kept.iter().filter(|f| headed_new(f)).count();
            let new_before = active.iter().filter(|f| headed_new(f) && f.stage != Stage::PreparingDelete).count();
            if active.len() > replicas {
                prop_assert!(new_kept <= allowed.max(new_before.saturating_sub(p.scale_down.len())));
            } else {
                prop_assert!(new_kept + p.create <= allowed.max(new_kept));
                prop_assert_eq!(active.len() + p.create + p.create_old, replicas.max(active.len()).min(active.len() + MAX_BURST));
            }
        }

        /// Scale-down never keeps a pod that is more expendable than one it takes out: pods on
        /// their way out first, then unscheduled, not ready, old revision, newest.
        #[test]
        fn scale_down_takes_the_most_expendable(pods in arb_pods(), replicas in 0..12usize) {
            let p = plan(spec(replicas, 0, 1), &pods);
            let key = |f: &PodUpdateFacts| (
                f.stage != Stage::PreparingDelete, f.pod.scheduled, f.pod.ready, f.updated,
            );
            let removed: Vec<&PodUpdateFacts> = pods.iter()
                .filter(|f| p.scale_down.iter().any(|d| d.uid == f.pod.uid)).collect();
            for kept in pods.iter().filter(|f| !f.pod.deleting && !removed.contains(f)) {
                if kept.stage == Stage::PreparingDelete {
                    continue;
                }
                for r in &removed {
                    prop_assert!(key(r) <= key(kept), "{:?} removed before {:?}", r, kept);
                }
            }
        }

        /// Scale planning brings the pods that stay to exactly `replicas`.
        #[test]
        fn scale_reaches_replicas(pods in arb_pods(), replicas in 0..12usize) {
            let p = plan(spec(replicas, 0, 1), &pods);
            let active = pods.iter().filter(|f| !f.pod.deleting).count();
            let preparing = pods.iter()
                .filter(|f| !f.pod.deleting && f.stage == Stage::PreparingDelete).count();
            if active > replicas {
                prop_assert_eq!(p.create, 0);
                let leaving = p.scale_down.len() + preparing.min(active - replicas);
                prop_assert_eq!(active - leaving, replicas);
            } else {
                prop_assert_eq!(active + p.create, replicas);
                prop_assert!(p.scale_down.is_empty());
            }
        }
    }
}
