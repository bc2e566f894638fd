//! Read your own writes: after the hub applies or deletes a member InPlaceSet,
//! the member's cache shows the old state until the watch event arrives. A reconcile in that
//! window must not write again. Like Kubernetes' controller expectations, each record expires so
//! that a lost event cannot freeze a unit forever.
//!
//! The map stays bounded: a CafeDeployment's records go when its cleanup has deleted its
//! InPlaceSets ([`Expectations::forget_owner`]), and every insert sweeps the records past their
//! TTL, so those of an object never reconciled again do not pile up (Kubernetes drops a
//! controller's expectations when the owner is deleted, `DeleteExpectations`).
//! https://github.com/kubernetes/kubernetes/blob/master/pkg/controller/controller_utils.go (ControllerExpectations)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::InPlaceSet;

/// How long a write may take to show up in the member cache before it is no longer trusted.
pub const EXPECTATION_TTL: Duration = Duration::from_secs(30);

/// (member, namespace, name)
pub type SetKey = (String, String, String);

#[derive(Clone, Debug)]
enum Expected {
    /// We applied a spec with this fingerprint and the server answered with this generation.
    Applied {
        fingerprint: String,
        uid: Option<String>,
        generation: i64,
        at: Instant,
    },
    /// We deleted the object with this uid.
    Deleted { uid: Option<String>, at: Instant },
}

impl Expected {
    fn at(&self) -> Instant {
        match self {
            Expected::Applied { at, .. } | Expected::Deleted { at, .. } => *at,
        }
    }
}

/// Writes the hub made whose effect the member caches may not show yet.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<SetKey, Expected>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SetKey, Expected>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every record: they belong to an earlier leadership term, and another replica
    /// may have written since.
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn applied(&self, key: SetKey, fingerprint: String, written: &InPlaceSet) {
        let record = Expected::Applied {
            fingerprint,
            uid: written.metadata.uid.clone(),
            generation: written.metadata.generation.unwrap_or(0),
            at: Instant::now(),
        };
        self.insert(key, record);
    }

    pub fn deleted(&self, key: SetKey, uid: Option<String>) {
        let record = Expected::Deleted {
            uid,
            at: Instant::now(),
        };
        self.insert(key, record);
    }

    /// Inserts `record`, first dropping every record past its TTL: one that no reconcile will
    /// ever look at again (its CafeDeployment or unit gone) would otherwise stay for ever.
    fn insert(&self, key: SetKey, record: Expected) {
        let now = record.at();
        let mut inner = self.lock();
        inner.retain(|_, e| now.saturating_duration_since(e.at()) <= EXPECTATION_TTL);
        inner.insert(key, record);
    }

    /// True when applying `fingerprint` would repeat a write the cache (`observed`) has not caught
    /// up with yet. Records the cache has caught up with (or that expired) are dropped.
    pub fn apply_pending(
        &self,
        key: &SetKey,
        fingerprint: &str,
        observed: Option<&InPlaceSet>,
    ) -> bool {
        let mut inner = self.lock();
        let Some(Expected::Applied {
            fingerprint: f,
            uid,
            generation,
            at,
        }) = inner.get(key)
        else {
            return false;
        };
        let caught_up = match observed {
            None => false,
            Some(o) => o.metadata.uid != *uid || o.metadata.generation.unwrap_or(0) >= *generation,
        };
        if caught_up || at.elapsed() > EXPECTATION_TTL {
            inner.remove(key);
            return false;
        }
        f == fingerprint
    }

    /// True when deleting the object with `uid` would repeat a delete the cache has not seen yet.
    pub fn delete_pending(&self, key: &SetKey, uid: Option<&str>) -> bool {
        let mut inner = self.lock();
        let Some(Expected::Deleted { uid: expected, at }) = inner.get(key) else {
            return false;
        };
        if at.elapsed() > EXPECTATION_TTL || expected.as_deref() != uid {
            inner.remove(key);
            return false;
        }
        true
    }

    /// The object is gone from the cache: nothing is pending for it any more.
    pub fn forget(&self, key: &SetKey) {
        self.lock().remove(key);
    }

    /// The CafeDeployment `namespace/name` is gone (or its cleanup finished): its InPlaceSets,
    /// named like it in every member, will never be reconciled again.
    pub fn forget_owner(&self, namespace: &str, name: &str) {
        self.lock()
            .retain(|(_, ns, n), _| !(ns == namespace && n == name));
    }

    /// Records held, for the bound tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InPlaceSetSpec;

    fn set(uid: &str, generation: i64) -> InPlaceSet {
        let mut s = InPlaceSet::new(
            "demo",
            InPlaceSetSpec {
                replicas: 1,
                selector: Default::default(),
                template: Default::default(),
                min_ready_seconds: 0,
                strategy: Default::default(),
                lifecycle: None,
            },
        );
        s.metadata.uid = Some(uid.into());
        s.metadata.generation = Some(generation);
        s
    }

    fn key() -> SetKey {
        ("dca".into(), "default".into(), "demo".into())
    }

    #[test]
    fn an_apply_is_pending_until_the_cache_shows_its_generation() {
        let e = Expectations::default();
        e.applied(key(), "f1".into(), &set("u1", 2));
        assert!(e.apply_pending(&key(), "f1", None));
        assert!(e.apply_pending(&key(), "f1", Some(&set("u1", 1))));
        assert!(
            !e.apply_pending(&key(), "f2", Some(&set("u1", 1))),
            "a new spec is written"
        );
        assert!(!e.apply_pending(&key(), "f1", Some(&set("u1", 2))));
        assert!(
            !e.apply_pending(&key(), "f1", None),
            "record dropped once caught up"
        );
    }

    #[test]
    fn records_of_deleted_cafedeployments_do_not_accumulate() {
        let e = Expectations::default();
        for i in 0..1000 {
            let name = format!("cd-{i}");
            for member in ["dca", "dcb"] {
                let key = (member.to_string(), "default".to_string(), name.clone());
                e.applied(key.clone(), "f1".into(), &set("u1", 1));
                e.deleted(key, Some("u1".into()));
            }
            e.forget_owner("default", &name);
        }
        assert_eq!(e.len(), 0);
    }

    #[test]
    fn records_never_checked_again_expire_on_the_next_insert() {
        let e = Expectations::default();
        let long_ago = Instant::now()
            .checked_sub(EXPECTATION_TTL + Duration::from_secs(1))
            .expect("the clock is past the TTL");
        for i in 0..1000 {
            let key = (
                "dca".to_string(),
                "default".to_string(),
                format!("gone-{i}"),
            );
            e.insert(
                key,
                Expected::Deleted {
                    uid: None,
                    at: long_ago,
                },
            );
        }
        e.deleted(key(), Some("u1".into()));
        assert_eq!(e.len(), 1, "only the fresh record is left");
    }

    #[test]
    fn a_delete_is_pending_while_the_cache_still_holds_that_object() {
        let e = Expectations::default();
        e.deleted(key(), Some("u1".into()));
        assert!(e.delete_pending(&key(), Some("u1")));
        assert!(!e.delete_pending(&key(), Some("u2")));
        assert!(!e.delete_pending(&key(), Some("u1")), "record dropped");
    }
}
