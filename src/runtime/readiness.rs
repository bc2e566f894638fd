//! What `/readyz` answers: the process is ready once every watch it registered has synced (its
//! cache listed once), as a Kubernetes controller is ready once its informers have synced.
//!
//! Controllers register their watches before they start them, so a process whose CRDs do not
//! exist yet reads "not ready, waiting for ...", never "ready with nothing to wait for". A watch
//! stays synced once it has been: a later outage is a matter for the logs and the metrics, and a
//! readiness probe that flapped with it would take every replica out of its Service at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The registry of named watches. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<String, bool>>>);

impl Readiness {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, bool>> {
        // Each method replaces one entry whole: a poisoned lock holds nothing half-written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `name` as not yet synced (a no-op if it is already registered).
    pub fn register(&self, name: &str) {
        self.lock().entry(name.to_string()).or_insert(false);
    }

    /// Marks `name` synced (registering it if needed).
    pub fn mark_synced(&self, name: &str) {
        self.lock().insert(name.to_string(), true);
    }

    /// Forgets `name` (a member no longer registered).
    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    /// The registered watches not synced yet, in name order.
    pub fn pending(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, synced)| !**synced)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Ready: at least one watch registered, and every one synced.
    pub fn is_ready(&self) -> bool {
        let watches = self.lock();
        !watches.is_empty() && watches.values().all(|synced| *synced)
    }

    /// Marks `name` synced when `event` ends a watch's (re-)list. Fed from the watch stream
    /// itself: awaiting `Store::wait_until_ready` from a second task would steal the wake-up of
    /// the controller waiting on the same store (kube's ready signal wakes one waiter).
    pub fn observe<K>(&self, name: &str, event: &kube::runtime::watcher::Event<K>) {
        if matches!(event, kube::runtime::watcher::Event::InitDone) {
            self.mark_synced(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_something_is_registered_and_everything_has_synced() {
        let readiness = Readiness::default();
        assert!(!readiness.is_ready(), "nothing registered yet");
        readiness.register("memberclusters");
        readiness.register("cafedeployments");
        assert_eq!(
            readiness.pending(),
            vec!["cafedeployments", "memberclusters"]
        );
        readiness.mark_synced("memberclusters");
        readiness.register("memberclusters");
        assert_eq!(readiness.pending(), vec!["cafedeployments"], "stays synced");
        assert!(!readiness.is_ready());
        readiness.mark_synced("cafedeployments");
        assert!(readiness.is_ready());
        readiness.register("member dca");
        assert!(!readiness.is_ready());
        readiness.remove("member dca");
        assert!(readiness.is_ready());
    }
}
