//! Read your own writes (DESIGN.md section 3): after the hub applies or deletes a member InPlaceSet,
//! the member's cache shows the old state until the watch event arrives. A reconcile in that
//! window must not write again. Like Kubernetes' controller expectations, each record expires so
//! that a lost event cannot freeze a unit forever.
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

/// Writes the hub made whose effect the member caches may not show yet.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<SetKey, Expected>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SetKey, Expected>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn applied(&self, key: SetKey, fingerprint: String, written: &InPlaceSet) {
        self.lock().insert(
            key,
            Expected::Applied {
                fingerprint,
                uid: written.metadata.uid.clone(),
                generation: written.metadata.generation.unwrap_or(0),
                at: Instant::now(),
            },
        );
    }

    pub fn deleted(&self, key: SetKey, uid: Option<String>) {
        self.lock().insert(
            key,
            Expected::Deleted {
                uid,
                at: Instant::now(),
            },
        );
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
    fn a_delete_is_pending_while_the_cache_still_holds_that_object() {
        let e = Expectations::default();
        e.deleted(key(), Some("u1".into()));
        assert!(e.delete_pending(&key(), Some("u1")));
        assert!(!e.delete_pending(&key(), Some("u2")));
        assert!(!e.delete_pending(&key(), Some("u1")), "record dropped");
    }
}
