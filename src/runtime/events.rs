//! Events the hub and the members publish: every distinct fact is its own Event.
//!
//! kube's `Recorder` keys an Event series on reason, type and object but not on the message, so
//! "group 1/3 started" and "group 2/3 started" became one Event whose message never changed. This
//! writer keys on the message too, as client-go's legacy recorder does (its EventCorrelator
//! aggregates only events whose key, message included, is identical: k8s.io/client-go
//! tools/record/events_cache.go): the exact same fact again becomes a series on its Event
//! (`series.count`, `series.lastObservedTime`, and the legacy `count`, `lastTimestamp`); any other
//! fact is a new core/v1 Event. Names are `<object>.<hex nanoseconds>` like the ones client-go
//! makes (tools/record/event.go `makeEvent`), so listing Events in name order lists them in the
//! order they happened (`kubectl get events` lists them so). Times are both `eventTime` /
//! `series.lastObservedTime` (microseconds, what newer kubectl sorts `describe` by) and the legacy
//! `firstTimestamp` / `lastTimestamp` (seconds, what older kubectl sorts by, so that facts of
//! different seconds are in order there too).
//! See <https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/>.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSeries, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Normal, or Warning for what needs a person (`kubectl get events --field-selector type=Warning`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Reasons that need a person: a rollout that stopped, replicas that could not be carried or
/// brought back, a member the hub lost, a hook that holds a pod past its timeout.
const WARNING_REASONS: &[&str] = &[
    "ProgressDeadlineExceeded",
    "RolloutFrozen",
    "FailoverStarted",
    "FailoverShort",
    "MoveBackFailed",
    "MemberLost",
    "MemberNotReady",
    "LifecycleBlocked",
    "PreUpdateHookTimeout",
    "PreDeleteHookTimeout",
];

/// The type an Event with `reason` is published as.
pub fn event_type(reason: &str) -> EventType {
    if WARNING_REASONS.contains(&reason) {
        EventType::Warning
    } else {
        EventType::Normal
    }
}

/// Facts remembered for counting repeats; past this the least recently seen is forgotten (its
/// next repeat starts a new Event). client-go's EventCorrelator keeps 4096 as well.
const REMEMBERED: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("writing Event {namespace}/{name}: {source}")]
    Write {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// One fact about an object.
#[derive(Clone, Debug)]
pub struct Fact<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub message: &'a str,
    /// What was done: "Reconcile", "Update", ...
    pub action: &'a str,
    /// A second object the fact is about (a pod of an InPlaceSet).
    pub related: Option<ObjectReference>,
}

#[derive(Debug)]
struct Seen {
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

/// Writes Events for one controller (`source.component` / `reportingComponent`).
pub struct EventWriter {
    client: kube::Client,
    component: String,
    instance: String,
    seen: Mutex<HashMap<u64, Seen>>,
}

impl EventWriter {
    pub fn new(client: kube::Client, component: &str) -> Self {
        Self {
            client,
            component: component.to_string(),
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| component.to_string()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `fact` about `regarding`: a repeat of the exact same fact counts on its Event,
    /// anything else is a new Event.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        fact: &Fact<'_>,
    ) -> Result<(), EventsError> {
        let key = fact_key(regarding, fact);
        let now = Timestamp::now();
        let repeat = self
            .lock()
            .get(&key)
            .map(|s| (s.namespace.clone(), s.name.clone(), s.count + 1));
        if let Some((namespace, name, count)) = repeat {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            let series = EventSeries {
                count: Some(count),
                last_observed_time: Some(MicroTime(now)),
            };
            let patch = serde_json::json!({
                "series": series,
                "count": count,
                "lastTimestamp": Time(now),
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    if let Some(s) = self.lock().get_mut(&key) {
                        s.count = count;
                        s.last = now;
                    }
                    return Ok(());
                }
                // Gone (Events expire, one hour by default): the repeat starts a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(EventsError::Write {
                        namespace,
                        name,
                        source,
                    });
                }
            }
        }
        let event = self.new_event(regarding, fact, key, now);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let name = event.metadata.name.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &event)
            .await
            .map_err(|source| EventsError::Write {
                namespace: namespace.clone(),
                name: name.clone(),
                source,
            })?;
        let mut seen = self.lock();
        if seen.len() >= REMEMBERED
            && let Some(oldest) = seen.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k)
        {
            seen.remove(&oldest);
        }
        seen.insert(
            key,
            Seen {
                namespace,
                name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    fn new_event(
        &self,
        regarding: &ObjectReference,
        fact: &Fact<'_>,
        key: u64,
        now: Timestamp,
    ) -> Event {
        // Cluster-scoped objects (MemberCluster) get their Events in `default`, as kubectl
        // describe looks for them there.
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(
                    regarding.name.as_deref().unwrap_or("object"),
                    now,
                    key,
                )),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            involved_object: regarding.clone(),
            related: fact.related.clone(),
            type_: Some(fact.type_.as_str().into()),
            reason: Some(fact.reason.into()),
            message: Some(fact.message.into()),
            action: Some(fact.action.into()),
            count: Some(1),
            event_time: Some(MicroTime(now)),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What makes two facts the same: the object, the related object, type, reason and message.
fn fact_key(regarding: &ObjectReference, fact: &Fact<'_>) -> u64 {
    let mut h = DefaultHasher::new();
    for r in std::iter::once(regarding).chain(fact.related.as_ref()) {
        (&r.kind, &r.namespace, &r.name, &r.uid).hash(&mut h);
    }
    (fact.type_, fact.reason, fact.message).hash(&mut h);
    h.finish()
}

/// `<object>.<nanoseconds, 16 hex digits><8 hex digits of the fact>`: name order is time
/// order, and two facts in the same nanosecond still get distinct names.
fn event_name(object: &str, now: Timestamp, key: u64) -> String {
    let nanos = u64::try_from(now.as_nanosecond()).unwrap_or_default();
    format!("{object}.{nanos:016x}{:08x}", key >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_needs_a_person_is_a_warning() {
        for reason in [
            "ProgressDeadlineExceeded",
            "FailoverStarted",
            "MoveBackFailed",
            "MemberLost",
            "RolloutFrozen",
            "PreUpdateHookTimeout",
        ] {
            assert_eq!(event_type(reason), EventType::Warning, "{reason}");
        }
        for reason in [
            "GroupStarted",
            "NewRevision",
            "RolloutCompleted",
            "MovedBack",
        ] {
            assert_eq!(event_type(reason), EventType::Normal, "{reason}");
        }
    }

    #[test]
    fn distinct_messages_are_distinct_facts_and_names_sort_in_time() {
        let cd = ObjectReference {
            kind: Some("CafeDeployment".into()),
            namespace: Some("default".into()),
            name: Some("demo".into()),
            uid: Some("u1".into()),
            ..ObjectReference::default()
        };
        let fact = |message| Fact {
            type_: EventType::Normal,
            reason: "GroupStarted",
            message,
            action: "Reconcile",
            related: None,
        };
        let (one, two) = (fact("group 1/3 started"), fact("group 2/3 started"));
        assert_ne!(fact_key(&cd, &one), fact_key(&cd, &two));
        assert_eq!(
            fact_key(&cd, &one),
            fact_key(&cd, &fact("group 1/3 started"))
        );

        let early = Timestamp::from_second(1_700_000_000).unwrap();
        let late = Timestamp::from_second(1_800_000_000).unwrap();
        let (a, b) = (
            event_name("demo", early, u64::MAX),
            event_name("demo", late, 0),
        );
        assert!(a < b, "{a} < {b}");
        assert_eq!(a.len(), "demo.".len() + 24);
    }
}
