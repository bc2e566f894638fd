//! Expectations: read-your-own-writes for pod creations and deletions.
//!
//! After the controller creates or deletes pods for an InPlaceSet, its pod cache lags behind
//! until the watch delivers those writes. Acting on that stale cache would create (or delete)
//! the same pods again. As the ReplicaSet controller does
//! (<https://github.com/kubernetes/kubernetes/blob/master/pkg/controller/controller_utils.go>,
//! `ControllerExpectations`), the controller records every write it made, the watch marks them
//! observed, and scale decisions for an InPlaceSet wait until none are pending. A write never
//! observed (a watch event lost for good) stops blocking after a timeout.
//!
//! Writes are tracked by pod uid, per owning InPlaceSet uid. Recording checks the cache under the
//! same lock the watch takes to mark observations, so an event that overtakes the API response
//! is never missed.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::watcher;

use super::cached::CachedPod;
use crate::api::InPlaceSet;

/// Kubernetes waits 5 minutes (`ExpectationsTimeout`); a relist marks what a lost event hid well
/// before that, so one minute only bounds the damage of a write the API never reports.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Pending {
    /// pod uid -> when the creation was recorded
    creations: HashMap<String, Instant>,
    /// pod uid -> when the deletion was recorded
    deletions: HashMap<String, Instant>,
    /// pod uid -> (resourceVersion the controller's update produced, when recorded)
    updates: HashMap<String, (String, Instant)>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.creations.is_empty() && self.deletions.is_empty() && self.updates.is_empty()
    }
}

/// Whether a cached resourceVersion `seen` is at least `wanted`. Resource versions are opaque
/// to clients in principle, but every API server (etcd's revision) issues increasing integers;
/// as OpenKruise does, compare them as such, and fall back to equality for anything else.
fn reached(seen: &str, wanted: &str) -> bool {
    match (seen.parse::<u64>(), wanted.parse::<u64>()) {
        (Ok(s), Ok(w)) => s >= w,
        _ => seen == wanted,
    }
}

/// Writes the controller made and the pod watch has not shown yet, per InPlaceSet.
#[derive(Debug)]
pub struct Expectations {
    timeout: Duration,
    by_owner: Mutex<HashMap<String, Pending>>,
}

/// What the pod cache says about one pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Absent,
    Present,
    /// Present with a deletionTimestamp: its deletion has been observed.
    Deleting,
}

impl Expectations {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            by_owner: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters: at worst an expectation lingers until its timeout.
        self.by_owner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every record: they belong to an earlier leadership term, and another replica
    /// may have written since.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Records that the controller created pod `pod_uid` for `owner_uid`, unless `seen` (which
    /// reads the pod cache) shows the watch got there first.
    pub fn expect_creation(
        &self,
        owner_uid: &str,
        pod_uid: &str,
        now: Instant,
        seen: impl FnOnce() -> Seen,
    ) {
        // The cache is read under the lock the watch takes, so an event cannot slip between.
        self.record(owner_uid, now, |pending| {
            if seen() == Seen::Absent {
                pending.creations.insert(pod_uid.to_string(), now);
            }
        });
    }

    /// Records that the controller deleted pod `pod_uid` of `owner_uid`, unless `seen` shows the
    /// cache already has it gone or terminating.
    pub fn expect_deletion(
        &self,
        owner_uid: &str,
        pod_uid: &str,
        now: Instant,
        seen: impl FnOnce() -> Seen,
    ) {
        self.record(owner_uid, now, |pending| {
            if seen() == Seen::Present {
                pending.deletions.insert(pod_uid.to_string(), now);
            }
        });
    }

    /// Records that the controller updated pod `pod_uid` of `owner_uid` (labels, spec or
    /// status), producing `resource_version`, unless `cached` (the pod cache's resourceVersion
    /// of it) shows the watch got there first. Until the cache shows that version, the pod's
    /// cached state is stale and the InPlaceSet is not acted on again.
    pub fn expect_update(
        &self,
        owner_uid: &str,
        pod_uid: &str,
        resource_version: &str,
        now: Instant,
        cached: impl FnOnce() -> Option<String>,
    ) {
        self.record(owner_uid, now, |pending| {
            if cached().is_none_or(|rv| !reached(&rv, resource_version)) {
                pending
                    .updates
                    .insert(pod_uid.to_string(), (resource_version.to_string(), now));
            }
        });
    }

    /// The watch showed pod `pod_uid` of `owner_uid` at `resource_version`.
    pub fn observe_version(&self, owner_uid: &str, pod_uid: &str, resource_version: &str) {
        let mut map = self.lock();
        let Some(pending) = map.get_mut(owner_uid) else {
            return;
        };
        if pending
            .updates
            .get(pod_uid)
            .is_some_and(|(wanted, _)| reached(resource_version, wanted))
        {
            pending.updates.remove(pod_uid);
        }
        if pending.is_empty() {
            map.remove(owner_uid);
        }
    }

    /// The watch showed pod `pod_uid` of `owner_uid` in state `seen`.
    pub fn observe(&self, owner_uid: &str, pod_uid: &str, seen: Seen) {
        let mut map = self.lock();
        let Some(pending) = map.get_mut(owner_uid) else {
            return;
        };
        match seen {
            // A pod that is gone was created too: a pod created and deleted between two
            // watch events still satisfies its creation.
            Seen::Absent | Seen::Deleting => {
                pending.creations.remove(pod_uid);
                pending.deletions.remove(pod_uid);
                // Nothing more will be shown of a pod that is gone; a deleting pod's updates
                // no longer matter to any decision.
                pending.updates.remove(pod_uid);
            }
            Seen::Present => {
                pending.creations.remove(pod_uid);
            }
        }
        if pending.is_empty() {
            map.remove(owner_uid);
        }
    }

    /// After a relist (the watch restarted and listed everything again), what was pending is
    /// settled by the fresh cache: deletions the relist no longer shows were missed as events.
    /// `version` reads a pod's cached resourceVersion.
    pub fn resync(&self, seen: impl Fn(&str) -> Seen, version: impl Fn(&str) -> Option<String>) {
        let mut map = self.lock();
        for pending in map.values_mut() {
            pending.creations.retain(|uid, _| seen(uid) == Seen::Absent);
            pending
                .deletions
                .retain(|uid, _| seen(uid) == Seen::Present);
            pending.updates.retain(|uid, (wanted, _)| {
                seen(uid) == Seen::Present && version(uid).is_none_or(|rv| !reached(&rv, wanted))
            });
        }
        map.retain(|_, p| !p.is_empty());
    }

    /// Feeds one pod watch event (after the cache applied it).
    pub fn observe_event(&self, event: &watcher::Event<CachedPod>) {
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                if let Some((owner, uid)) = owner_and_uid(pod) {
                    let seen = if pod.metadata.deletion_timestamp.is_some() {
                        Seen::Deleting
                    } else {
                        Seen::Present
                    };
                    self.observe(owner, uid, seen);
                    if let Some(rv) = pod.metadata.resource_version.as_deref() {
                        self.observe_version(owner, uid, rv);
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some((owner, uid)) = owner_and_uid(pod) {
                    self.observe(owner, uid, Seen::Absent);
                }
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    /// `None` when `owner_uid` has no pending writes, so its pods in the cache can be acted on;
    /// otherwise how long until the oldest pending write times out. Writes past the timeout are
    /// dropped (with a warning), for every InPlaceSet, so nothing lingers for one that is gone.
    pub fn pending(&self, owner_uid: &str, now: Instant) -> Option<Duration> {
        let timeout = self.timeout;
        let mut map = self.lock();
        sweep(&mut map, timeout, now);
        let pending = map.get(owner_uid)?;
        let oldest = pending
            .creations
            .values()
            .chain(pending.deletions.values())
            .chain(pending.updates.values().map(|(_, at)| at))
            .min()?;
        Some(timeout.saturating_sub(now.saturating_duration_since(*oldest)))
    }

    /// Drops whatever is pending for an InPlaceSet that is gone.
    pub fn forget(&self, owner_uid: &str) {
        self.lock().remove(owner_uid);
    }

    /// Feeds one InPlaceSet watch event: an InPlaceSet deleted (or missing from a relist) is
    /// never reconciled again, so its records go now, as the ReplicaSet controller deletes a
    /// ReplicaSet's expectations when it sees the ReplicaSet deleted (`DeleteExpectations`).
    /// `listed` reads the InPlaceSet cache after a relist: whether that uid is still there.
    pub fn observe_owner_event(
        &self,
        event: &watcher::Event<InPlaceSet>,
        listed: impl Fn(&str) -> bool,
    ) {
        match event {
            watcher::Event::Delete(ips) => {
                if let Some(uid) = ips.metadata.uid.as_deref() {
                    self.forget(uid);
                }
            }
            watcher::Event::InitDone => self.lock().retain(|owner, _| listed(owner)),
            watcher::Event::Apply(_) | watcher::Event::InitApply(_) | watcher::Event::Init => {}
        }
    }

    /// InPlaceSets with records, for the bound tests.
    #[cfg(test)]
    fn owners(&self) -> usize {
        self.lock().len()
    }

    /// Inserts one record under the lock, first sweeping those past the timeout: records no
    /// reconcile will look at again must not wait for one that may never come.
    fn record(&self, owner_uid: &str, now: Instant, insert: impl FnOnce(&mut Pending)) {
        let mut map = self.lock();
        sweep(&mut map, self.timeout, now);
        let pending = map.entry(owner_uid.to_string()).or_default();
        insert(pending);
        if pending.is_empty() {
            map.remove(owner_uid);
        }
    }
}

/// Drops the writes older than `timeout` (with a warning per InPlaceSet), and the InPlaceSets
/// left with none.
fn sweep(map: &mut HashMap<String, Pending>, timeout: Duration, now: Instant) {
    for (owner, pending) in map.iter_mut() {
        let mut expired = 0;
        let live = |at: &Instant| now.saturating_duration_since(*at) < timeout;
        for writes in [&mut pending.creations, &mut pending.deletions] {
            writes.retain(|_, at| {
                expired += usize::from(!live(at));
                live(at)
            });
        }
        pending.updates.retain(|_, (_, at)| {
            expired += usize::from(!live(at));
            live(at)
        });
        if expired > 0 {
            tracing::warn!(
                owner_uid = owner.as_str(),
                expired,
                ?timeout,
                "pod writes never seen by the watch; trusting the cache again"
            );
        }
    }
    map.retain(|_, p| !p.is_empty());
}

/// The uid of the InPlaceSet controlling `pod`, and the pod's uid.
pub fn owner_and_uid(pod: &CachedPod) -> Option<(&str, &str)> {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == InPlaceSet::kind(&()))?;
    Some((owner.uid.as_str(), pod.metadata.uid.as_deref()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "ips-uid";

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn nothing_pending_by_default() {
        let e = Expectations::new(DEFAULT_TIMEOUT);
        assert_eq!(e.pending(OWNER, t0()), None);
    }

    #[test]
    fn a_creation_blocks_until_observed() {
        let e = Expectations::new(DEFAULT_TIMEOUT);
        let now = t0();
        e.expect_creation(OWNER, "p1", now, || Seen::Absent);
        e.expect_creation(OWNER, "p2", now, || Seen::Absent);
        assert!(e.pending(OWNER, now).is_some());
        e.observe(OWNER, "p1", Seen::Present);
        assert!(e.pending(OWNER, now).is_some(), "p2 still unseen");
        e.observe(OWNER, "p2", Seen::Present);
        assert_eq!(e.pending(OWNER, now), None);
    }

    #[test]
    fn a_creation_the_cache_already_has_is_not_recorded() {
        let e = Expectations::new(DEFAULT_TIMEOUT);
        e.expect_creation(OWNER, "p1", t0(), || Seen::Present);
        assert_eq!(e.pending(OWNER, t0()), None);
    }

    #[test]
    fn a_deletion_is_observed_by_the_deletion_timestamp_or_the_delete_event() {
        let e = Expectations::new(DEFAULT_TIMEOUT);
        let now = t0();
        e.expect_deletion(OWNER, "p1", now, || Seen::Present);
        e.expect_deletion(OWNER, "p2", now, || Seen::Present);
        e.observe(OWNER, "p1", Seen::Present);
        assert!(
            e.pending(OWNER, now).is_some(),
            "an update is not a deletion"
        );
        e.observe(OWNER, "p1", Seen::Deleting);
        e.observe(OWNER, "p2", Seen::Absent);
        assert_eq!(e.pending(OWNER, now), None);
        // Already gone from the cache: nothing to wait for.
        e.expect_deletion(OWNER, "p3", now, || Seen::Absent);
        e.expect_deletion(OWNER, "p4", now, || Seen::Deleting);
        assert_eq!(e.pending(OWNER, now), None);
    }

    #[test]
    fn owners_are_independent() {
        let e = Expectations::new(DEFAULT_TIMEOUT);
        e.expect_creation("a", "p1", t0(), || Seen::Absent);
        assert_eq!(e.pending("b", t0()), None);
        e.observe("b", "p1", Seen::Present);
        assert!(e.pending("a", t0()).is_some());
        e.forget("a");
        assert_eq!(e.pending("a", t0()), None);
    }

    #[test]
    fn pending_writes_time_out() {
        let e = Expectations::new(Duration::from_secs(10));
        let start = t0();
        e.expect_creation(OWNER, "p1", start, || Seen::Absent);
        assert_eq!(
            e.pending(OWNER, start + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(e.pending(OWNER, start + Duration::from_secs(10)), None);
        // Dropped for good.
        assert_eq!(e.pending(OWNER, start), None);
        // Expired writes of other InPlaceSets (perhaps gone) are swept too.
        e.expect_creation("gone", "p2", start, || Seen::Absent);
        e.expect_creation(OWNER, "p3", start + Duration::from_secs(8), || Seen::Absent);
        assert!(e.pending(OWNER, start + Duration::from_secs(12)).is_some());
        assert_eq!(e.lock().len(), 1);
    }

    fn owner_event(uid: &str) -> InPlaceSet {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps.cafe.io/v1alpha1", "kind": "InPlaceSet",
            "metadata": {"name": "x", "namespace": "default", "uid": uid},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
        }))
        .unwrap()
    }

    #[test]
    fn records_of_deleted_inplacesets_do_not_accumulate() {
        let e = Expectations::new(DEFAULT_TIMEOUT);
        let now = t0();
        for i in 0..1000 {
            let owner = format!("ips-{i}");
            e.expect_creation(&owner, "p1", now, || Seen::Absent);
            e.expect_deletion(&owner, "p2", now, || Seen::Present);
            e.observe_owner_event(&watcher::Event::Delete(owner_event(&owner)), |_| true);
        }
        assert_eq!(e.owners(), 0);
        // Deleted while the watch was down: the relist no longer lists them.
        for i in 0..1000 {
            e.expect_creation(&format!("ips-{i}"), "p1", now, || Seen::Absent);
        }
        e.expect_creation(OWNER, "p1", now, || Seen::Absent);
        e.observe_owner_event(&watcher::Event::InitDone, |uid| uid == OWNER);
        assert_eq!(e.owners(), 1);
    }

    #[test]
    fn records_never_checked_again_expire_on_the_next_insert() {
        let e = Expectations::new(Duration::from_secs(10));
        let start = t0();
        for i in 0..1000 {
            e.expect_creation(&format!("gone-{i}"), "p1", start, || Seen::Absent);
        }
        assert_eq!(e.owners(), 1000);
        e.expect_creation(OWNER, "p2", start + Duration::from_secs(10), || {
            Seen::Absent
        });
        assert_eq!(e.owners(), 1, "only the fresh record is left");
        // A write the cache already shows leaves no empty record behind.
        e.expect_creation("other", "p3", start + Duration::from_secs(10), || {
            Seen::Present
        });
        assert_eq!(e.owners(), 1);
    }

    #[test]
    fn a_relist_settles_missed_deletions() {
        let e = Expectations::new(DEFAULT_TIMEOUT);
        let now = t0();
        e.expect_deletion(OWNER, "gone", now, || Seen::Present);
        e.expect_deletion(OWNER, "still-there", now, || Seen::Present);
        e.expect_creation(OWNER, "listed", now, || Seen::Absent);
        e.resync(
            |uid| match uid {
                "still-there" | "listed" => Seen::Present,
                _ => Seen::Absent,
            },
            |_| None,
        );
        assert!(e.pending(OWNER, now).is_some());
        e.observe(OWNER, "still-there", Seen::Absent);
        assert_eq!(e.pending(OWNER, now), None);
    }

    #[test]
    fn an_update_blocks_until_the_cache_shows_its_version() {
        let e = Expectations::new(DEFAULT_TIMEOUT);
        let now = t0();
        e.expect_update(OWNER, "p1", "12", now, || Some("10".into()));
        assert!(e.pending(OWNER, now).is_some());
        e.observe_version(OWNER, "p1", "11");
        assert!(e.pending(OWNER, now).is_some(), "an older version is stale");
        e.observe_version(OWNER, "p1", "13");
        assert_eq!(e.pending(OWNER, now), None, "a later version includes ours");
        // The watch got there first.
        e.expect_update(OWNER, "p1", "14", now, || Some("14".into()));
        assert_eq!(e.pending(OWNER, now), None);
        // A pod gone settles its updates.
        e.expect_update(OWNER, "p2", "20", now, || None);
        e.observe(OWNER, "p2", Seen::Absent);
        assert_eq!(e.pending(OWNER, now), None);
        // A relist settles what it shows.
        e.expect_update(OWNER, "p3", "30", now, || None);
        e.resync(|_| Seen::Present, |_| Some("31".into()));
        assert_eq!(e.pending(OWNER, now), None);
    }

    #[test]
    fn watch_events_mark_observations() {
        let e = Expectations::new(DEFAULT_TIMEOUT);
        let pod: CachedPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x-abcde", "uid": "p1", "ownerReferences": [
                {"apiVersion": "apps.cafe.io/v1alpha1", "kind": "InPlaceSet", "name": "x",
                 "uid": OWNER, "controller": true}
            ]},
        }))
        .unwrap();
        e.expect_creation(OWNER, "p1", t0(), || Seen::Absent);
        e.observe_event(&watcher::Event::Apply(pod.clone()));
        assert_eq!(e.pending(OWNER, t0()), None);
        e.expect_deletion(OWNER, "p1", t0(), || Seen::Present);
        e.observe_event(&watcher::Event::Delete(pod));
        assert_eq!(e.pending(OWNER, t0()), None);
    }
}
