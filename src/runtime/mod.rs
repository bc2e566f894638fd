//! Cross-cutting parts of every command: logging, kubeconfigs, shutdown, ControllerRevisions,
//! Events, and the wording of API errors; and the runtime of the long-running commands (`cafe
//! hub`, `cafe member`): their shared flags ([`args`]), admin server ([`admin`]), metrics
//! ([`metrics`]) and readiness ([`readiness`]), tied together by [`serve`].

pub mod admin;
pub mod args;
pub mod backoff;
pub mod controller_revision;
pub mod events;
pub mod kubeconfig;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod readiness;
mod serve;
pub mod shutdown;
pub mod status_patch;

use std::sync::Arc;

pub use serve::serve;

/// What a controller fed by `watcher(..).reflect(writer)` is to reconcile, read from the store
/// that writer fills: each applied object, and at the end of every (re)list each object the
/// store then holds. (`applied_objects()` passes listed objects on as they arrive, while the
/// reflector still buffers the list until its end, so the controller looks up an object created
/// since the previous list, does not find it in the store, and drops its reconcile until the
/// next relist: InPlaceSets were left without pods for 12 minutes that way at 10,000
/// CafeDeployments. kube's shared reflector dispatches likewise, after the store is updated.)
pub fn reconcile_triggers<K, S>(
    events: S,
    store: kube::runtime::reflector::Store<K>,
) -> impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send + 'static
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
    S: futures::Stream<
            Item = Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>,
        > + Send
        + 'static,
{
    use futures::StreamExt;
    use kube::runtime::watcher::Event;
    events.flat_map(move |event| {
        let objects: Vec<Result<K, kube::runtime::watcher::Error>> = match event {
            Ok(Event::Apply(object)) => vec![Ok(object)],
            Ok(Event::InitDone) => store
                .state()
                .iter()
                .map(|object| Ok(object.as_ref().clone()))
                .collect(),
            Ok(Event::Init | Event::InitApply(_) | Event::Delete(_)) => vec![],
            Err(error) => vec![Err(error)],
        };
        futures::stream::iter(objects)
    })
}

/// What a controller's cache need not keep of any object it watches: the field managers'
/// bookkeeping (`managedFields`, often a third of an object and, as JSON trees, the largest part
/// of it in memory) and the last-applied annotation `kubectl apply` leaves. No decision reads
/// either, and no write sends a cached object back whole, so nothing is lost on the server.
/// Used as `watcher(..).modify(strip_bookkeeping)` before the reflector.
pub fn strip_bookkeeping<K: kube::Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// What a controller reports to the admin server: its metrics and the readiness of its watches.
/// Cheap to clone (shared). The default is a fresh, private one (tests that do not scrape).
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    pub metrics: Arc<metrics::Metrics>,
    pub readiness: readiness::Readiness,
}

/// Names this process in every request it sends through `config` (`User-Agent: cafe-<component>/<version>
/// (<identity>)`), so that the API server's audit log, and the simulator's call record, tell
/// the replicas of one ServiceAccount apart. An identity no header can carry leaves kube's
/// default in place.
pub fn identify(config: &mut kube::Config, component: &str, identity: &str) {
    let agent = format!(
        "cafe-{component}/{} ({identity})",
        env!("CARGO_PKG_VERSION")
    );
    if let Ok(value) = http::HeaderValue::from_str(&agent) {
        config
            .headers
            .retain(|(name, _)| name != http::header::USER_AGENT);
        config.headers.push((http::header::USER_AGENT, value));
    }
}

/// The API server's own words for a failed request (its Status message), else the error's
/// text: the Status message says what was refused and why, where the error's own text wraps it
/// in details of the transport.
pub fn api_cause(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[tokio::test]
    async fn a_relisted_object_is_reconciled_only_once_the_store_holds_it() {
        use futures::StreamExt;
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::runtime::WatchStreamExt;
        use kube::runtime::reflector::{self, ObjectRef};
        use kube::runtime::watcher::Event;
        let cm = |name: &str| ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let (store, writer) = reflector::store::<ConfigMap>();
        // A first list with `old`, then a relist that also finds `new` (created meanwhile),
        // then a change of `new`.
        let events = futures::stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(cm("old"))),
            Ok(Event::InitDone),
            Ok(Event::Init),
            Ok(Event::InitApply(cm("old"))),
            Ok(Event::InitApply(cm("new"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(cm("new"))),
        ])
        .reflect(writer);
        let checked = store.clone();
        let seen: Vec<(String, bool)> = reconcile_triggers(events, store)
            .map(|object| {
                let object = object.unwrap();
                let found = checked.get(&ObjectRef::from_obj(&object)).is_some();
                (object.metadata.name.unwrap(), found)
            })
            .collect()
            .await;
        // Every object is handed on while the store holds it (with `applied_objects()`, `new`
        // came from the relist before the store had it), and each once per list or change.
        assert!(seen.iter().all(|(_, found)| *found), "{seen:?}");
        let mut names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["new", "new", "old", "old"]);
    }

    #[test]
    fn identify_names_component_version_and_identity_in_the_user_agent() {
        let mut config = kube::Config::new("https://example.invalid".parse().unwrap());
        identify(&mut config, "hub", "cafe-hub-7d9f-abcde");
        identify(&mut config, "hub", "cafe-hub-7d9f-xyz");
        let agents: Vec<_> = config
            .headers
            .iter()
            .filter(|(name, _)| name == http::header::USER_AGENT)
            .map(|(_, value)| value.to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            agents,
            [format!(
                "cafe-hub/{} (cafe-hub-7d9f-xyz)",
                env!("CARGO_PKG_VERSION")
            )]
        );
        identify(&mut config, "hub", "bad\nname");
        assert_eq!(
            config.headers.len(),
            1,
            "a header-breaking identity is not sent"
        );
    }

    #[test]
    fn api_cause_prefers_the_servers_message() {
        let refused = kube::Error::Api(
            Status::failure("controllerrevisions \"x\" already exists", "AlreadyExists")
                .with_code(409)
                .boxed(),
        );
        assert_eq!(
            api_cause(&refused),
            "controllerrevisions \"x\" already exists"
        );

        let silent = kube::Error::Api(Status::failure("", "InternalError").with_code(500).boxed());
        assert_eq!(api_cause(&silent), silent.to_string());

        let other = kube::Error::LinesCodecMaxLineLengthExceeded;
        assert_eq!(api_cause(&other), other.to_string());
    }

    #[test]
    fn a_cache_keeps_everything_but_the_field_managers_and_last_applied() {
        let mut set: crate::api::InPlaceSet = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps.cafe.io/v1alpha1", "kind": "InPlaceSet",
            "metadata": {"name": "s", "namespace": "ns", "resourceVersion": "3",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "kubernetes.io/change-cause": "v2"},
                "managedFields": [{"manager": "cafe-hub", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "a"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap();
        let before = set.clone();
        strip_bookkeeping(&mut set);
        assert_eq!(set.metadata.managed_fields, None);
        assert_eq!(
            set.metadata
                .annotations
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["kubernetes.io/change-cause"]
        );
        assert_eq!(set.spec, before.spec);
        assert_eq!(
            set.metadata.resource_version,
            before.metadata.resource_version
        );
    }
}
