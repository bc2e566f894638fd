//! The simulator's API behaves like a real API server for what kube-rs and kubectl rely on.

mod common;

use std::time::Duration;

use common::{client, start, wait_for, widget_crd};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::Status;
use serde_json::json;

fn api_err(e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The resourceVersion a list of `api` is served at now.
async fn list_revision<K>(api: &Api<K>) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

async fn install_widgets(client: &kube::Client) -> Api<DynamicObject> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd()).unwrap(),
    )
    .await
    .expect("CRD created");
    wait_for("widgets Established", Duration::from_secs(5), || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("widgets.example.com").await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    Api::namespaced_with(client.clone(), "default", &ar)
}

fn widget(name: &str, replicas: i64) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": {"replicas": replicas},
    }))
    .unwrap()
}

#[tokio::test]
async fn lists_carry_a_global_monotonic_resource_version() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let a = cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    let ns: Api<Namespace> = Api::all(c.clone());
    let created_ns = ns
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap(),
        )
        .await
        .unwrap();
    let rv_a: u64 = a.metadata.resource_version.unwrap().parse().unwrap();
    let rv_ns: u64 = created_ns
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv_ns > rv_a, "one counter across kinds");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let list_rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert!(list_rv >= rv_ns);
}

#[tokio::test]
async fn default_namespaces_exist_and_missing_namespace_is_404() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let ns: Api<Namespace> = Api::all(c.clone());
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ns.get(name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let cms: Api<ConfigMap> = Api::namespaced(c, "nowhere");
    let err = api_err(
        cms.create(&PostParams::default(), &cm("x"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
    assert_eq!(err.reason, "NotFound");
}

#[tokio::test]
async fn watch_from_zero_starts_with_synthetic_added_and_bookmarks_carry_kind() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    cms.create(&PostParams::default(), &cm("before"))
        .await
        .unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Added(o)) => assert_eq!(o.metadata.name.as_deref(), Some("before")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    cms.create(&PostParams::default(), &cm("after"))
        .await
        .unwrap();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Added(o)) => assert_eq!(o.metadata.name.as_deref(), Some("after")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    // Bookmarks: a typed Api parses them only if kind/apiVersion are present.
    let rv = list_revision(&cms).await;
    let mut bm = cms
        .watch(&WatchParams::default().timeout(8), &rv)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(7), bm.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(first, Some(WatchEvent::Bookmark(_))),
        "got {first:?}"
    );
}

#[tokio::test]
async fn watch_honours_timeout_seconds() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    let rv = list_revision(&cms).await;
    let started = std::time::Instant::now();
    let stream = cms
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(Duration::from_secs(5), stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends by itself");
    assert!(events.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// A watch resumed from an older revision, after the store kept only the JSON of those
/// versions, gets the same events as one that saw them live: a selector sees objects enter
/// (ADDED) and leave (DELETED) it, and each event carries the version of its change.
#[tokio::test]
async fn a_watch_resumed_over_versions_kept_as_json_gets_the_same_events() {
    let sim = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client(&sim, "dca").await);
    let from = list_revision(&cms).await;
    let labelled = |name: &str, color: &str, n: i32| -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"color": color}},
            "data": {"n": n.to_string()},
        }))
        .unwrap()
    };
    cms.create(&PostParams::default(), &labelled("a", "red", 0))
        .await
        .unwrap();
    for (color, n) in [("red", 1), ("red", 2), ("blue", 3), ("red", 4)] {
        cms.replace("a", &PostParams::default(), &labelled("a", color, n))
            .await
            .unwrap();
    }
    cms.delete("a", &DeleteParams::default()).await.unwrap();

    let events = |frozen: bool| {
        let cms = cms.clone();
        let from = from.clone();
        let store = sim.cluster("dca").unwrap().store.clone();
        async move {
            if frozen {
                let later = std::time::Instant::now() + cafe_sim::store::FREEZE_AFTER;
                assert!(
                    store.freeze_history(later) > 0,
                    "older versions kept as JSON"
                );
            }
            let params = WatchParams::default().labels("color=red").timeout(1);
            let stream = cms.watch(&params, &from).await.unwrap().boxed();
            let seen: Vec<(String, String)> = stream
                .try_filter_map(|e| async move {
                    Ok(match e {
                        WatchEvent::Added(c) => {
                            Some(("ADDED".to_string(), c.data.unwrap()["n"].clone()))
                        }
                        WatchEvent::Modified(c) => {
                            Some(("MODIFIED".to_string(), c.data.unwrap()["n"].clone()))
                        }
                        WatchEvent::Deleted(c) => {
                            Some(("DELETED".to_string(), c.data.unwrap()["n"].clone()))
                        }
                        _ => None,
                    })
                })
                .try_collect()
                .await
                .unwrap();
            seen
        }
    };
    let live = events(false).await;
    let replayed = events(true).await;
    let expected: Vec<(String, String)> = [
        ("ADDED", "0"),
        ("MODIFIED", "1"),
        ("MODIFIED", "2"),
        ("DELETED", "3"),
        ("ADDED", "4"),
        ("DELETED", "4"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(live, expected);
    assert_eq!(replayed, expected);
}

#[tokio::test]
async fn trimmed_history_expires_watches_but_not_continue_tokens() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    for i in 0..3 {
        cms.create(&PostParams::default(), &cm(&format!("p{i}")))
            .await
            .unwrap();
    }
    let page = cms.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page.metadata.continue_.expect("a continue token");
    let listed_at = page.metadata.resource_version.unwrap();
    // More changes than the history keeps however old (at least 100, 3 per live object), then
    // 75 s pass.
    let store = &sim.cluster("dca").unwrap().store;
    store.write(|s| {
        let storage = s.registry.core("configmaps").storage.clone();
        for i in 0..cafe_sim::store::HISTORY_FLOOR + 4 * s.live() {
            s.put(
                &storage,
                json!({"metadata": {"name": "churn", "namespace": "kube-system"}, "data": {"i": i.to_string()}}),
            );
        }
    });
    assert!(store.trim_history(std::time::Instant::now() + Duration::from_secs(76)) > 0);
    // Watching from the list's revision: 410 Expired, as from beyond a watch cache's window.
    let mut stream = cms
        .watch(&WatchParams::default().timeout(5), &listed_at)
        .await
        .expect("HTTP 200: the error comes inside the stream")
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    // The continue token is served as etcd would until it compacts.
    let next = cms
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .expect("the continue token outlives the watch history");
    assert_eq!(next.items[0].metadata.name.as_deref(), Some("p1"));
    store.write(|s| s.compact());
    let err = api_err(
        cms.list(&ListParams::default().limit(1).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn too_old_resource_version_is_an_in_stream_410() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    let old = cms.create(&PostParams::default(), &cm("x")).await.unwrap();
    cms.create(&PostParams::default(), &cm("y")).await.unwrap();
    sim.cluster("dca").unwrap().store.write(|s| s.compact());
    let mut stream = cms
        .watch(
            &WatchParams::default().timeout(5),
            old.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .expect("HTTP 200: the error comes inside the stream")
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn json_patch_test_on_missing_path_equals_null() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    cms.create(&PostParams::default(), &cm("f")).await.unwrap();
    let add: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/x"]},
    ]))
    .unwrap();
    let patched = cms
        .patch("f", &PatchParams::default(), &Patch::Json::<()>(add))
        .await
        .unwrap();
    assert_eq!(
        patched.metadata.finalizers,
        Some(vec!["example.com/x".to_string()])
    );
    let failing: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
    ]))
    .unwrap();
    let err = api_err(
        cms.patch("f", &PatchParams::default(), &Patch::Json::<()>(failing))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
}

#[tokio::test]
async fn put_on_custom_resources_needs_a_fresh_resource_version() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let widgets = install_widgets(&c).await;
    let created = widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await
        .unwrap();
    let mut without = widget("w", 2);
    without.metadata.resource_version = None;
    let err = api_err(
        widgets
            .replace("w", &PostParams::default(), &without)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422, "{}", err.message);
    let mut fresh = created.clone();
    fresh.data["spec"]["replicas"] = json!(2);
    widgets
        .replace("w", &PostParams::default(), &fresh)
        .await
        .unwrap();
    let err = api_err(
        widgets
            .replace("w", &PostParams::default(), &fresh)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409, "stale resourceVersion");
    let mut absent = created.clone();
    absent.metadata.name = Some("nope".into());
    let err = api_err(
        widgets
            .replace("nope", &PostParams::default(), &absent)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404, "no create on PUT");
}

#[tokio::test]
async fn server_side_apply_creates_tracks_managers_and_conflicts() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let widgets = install_widgets(&c).await;
    let alice = PatchParams::apply("alice");
    let created = widgets
        .patch("w", &alice, &Patch::Apply(widget("w", 1)))
        .await
        .expect("apply creates");
    let managers: Vec<String> = created
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, vec!["alice".to_string()]);
    let bob = PatchParams::apply("bob");
    let err = api_err(
        widgets
            .patch("w", &bob, &Patch::Apply(widget("w", 5)))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    assert!(err.message.contains("alice"), "{}", err.message);
    let forced = widgets
        .patch("w", &bob.force(), &Patch::Apply(widget("w", 5)))
        .await
        .expect("force takes ownership");
    assert_eq!(forced.data["spec"]["replicas"], 5);
}

#[tokio::test]
async fn generation_and_status_subresource_rules() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let widgets = install_widgets(&c).await;
    let mut w = widget("w", 1);
    w.data["status"] = json!({"replicas": 9});
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.data.get("status").is_none(),
        "status is ignored on create"
    );
    // Metadata-only change: no generation bump.
    let labelled = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    // Status through the main endpoint is ignored; spec changes bump generation.
    let main = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}, "status": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(main.metadata.generation, Some(2));
    assert!(main.data.get("status").is_none());
    // The status subresource ignores spec.
    let st = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}, "status": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(st.data["status"]["replicas"], 3);
    assert_eq!(st.data["spec"]["replicas"], 2);
    assert_eq!(st.metadata.generation, Some(2));
    // The first graceful deletion bumps generation too.
    widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
        )
        .await
        .unwrap();
    widgets.delete("w", &DeleteParams::default()).await.unwrap();
    let deleting = widgets.get("w").await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert_eq!(deleting.metadata.generation, Some(3));
    widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    let err = api_err(widgets.get("w").await.unwrap_err());
    assert_eq!(
        err.code, 404,
        "removing the last finalizer completes the deletion"
    );
}

#[tokio::test]
async fn scale_subresource_reads_and_writes_replicas() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let widgets = install_widgets(&c).await;
    widgets
        .create(&PostParams::default(), &widget("w", 1))
        .await
        .unwrap();
    let scale = widgets.get_scale("w").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    widgets
        .patch_scale(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(widgets.get("w").await.unwrap().data["spec"]["replicas"], 4);
}

#[tokio::test]
async fn events_written_as_events_k8s_io_are_read_as_core_v1() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let obj = cms
        .create(&PostParams::default(), &cm("target"))
        .await
        .unwrap();
    let recorder = Recorder::new(
        c.clone(),
        Reporter {
            controller: "cafe-test".into(),
            instance: None,
        },
    );
    let reference = kube::Resource::object_ref(&obj, &());
    recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: "Tested".into(),
                note: Some("hello from the recorder".into()),
                action: "Test".into(),
                secondary: None,
            },
            &reference,
        )
        .await
        .expect("recorder publishes");
    let core: Api<CoreEvent> = Api::default_namespaced(c);
    let list = core
        .list(&ListParams::default().fields("involvedObject.name=target"))
        .await
        .unwrap();
    let ev = list.items.first().expect("one core/v1 event");
    assert_eq!(ev.reason.as_deref(), Some("Tested"));
    assert_eq!(ev.message.as_deref(), Some("hello from the recorder"));
}

#[tokio::test]
async fn crd_kinds_are_discoverable_with_short_names_and_subresources() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    install_widgets(&c).await;
    let discovery = kube::Discovery::new(c.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .expect("Widget discovered");
    assert_eq!(ar.plural, "widgets");
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
    let raw = c
        .request_text(
            http::Request::get("/apis/example.com/v1")
                .body(vec![])
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(raw.contains("\"shortNames\":[\"wd\"]"), "{raw}");
    let openapi = c
        .request_text(http::Request::get("/openapi/v3").body(vec![]).unwrap())
        .await
        .unwrap();
    assert!(openapi.contains("api/v1") && openapi.contains("apis/example.com/v1"));
}

#[tokio::test]
async fn tables_use_printer_columns() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let widgets = install_widgets(&c).await;
    widgets
        .create(&PostParams::default(), &widget("w", 3))
        .await
        .unwrap();
    let req = http::Request::get("/apis/example.com/v1/namespaces/default/widgets")
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(vec![])
        .unwrap();
    let table: serde_json::Value = c.request(req).await.unwrap();
    assert_eq!(table["kind"], "Table");
    let names: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Name", "Replicas"]);
    assert_eq!(table["rows"][0]["cells"], json!(["w", 3]));
}

#[tokio::test]
async fn pagination_and_selectors() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    for i in 0..5 {
        let mut m = cm(&format!("cm{i}"));
        m.metadata.labels = Some(
            [(
                "parity".to_string(),
                (if i % 2 == 0 { "even" } else { "odd" }).to_string(),
            )]
            .into(),
        );
        cms.create(&PostParams::default(), &m).await.unwrap();
    }
    let mut names = vec![];
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(2);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = cms.list(&lp).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.into_iter().filter_map(|i| i.metadata.name));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(names, vec!["cm0", "cm1", "cm2", "cm3", "cm4"]);
    let even = cms
        .list(&ListParams::default().labels("parity=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 3);
    let one = cms
        .list(&ListParams::default().fields("metadata.name=cm3"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
}

/// ConfigMap `name`, owned by ConfigMap `owner` with `uid`.
fn owned_by(name: &str, uid: &str) -> ConfigMap {
    let mut dep = cm(name);
    dep.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: uid.into(),
            ..Default::default()
        },
    ]);
    dep
}

/// A simulator, the ConfigMaps of `dca`'s default namespace, and the uid of ConfigMap `owner`
/// created there.
async fn with_owner() -> (cafe_sim::sim::Sim, Api<ConfigMap>, String) {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    let owner = cms
        .create(&PostParams::default(), &cm("owner"))
        .await
        .unwrap();
    let uid = owner.metadata.uid.clone().unwrap();
    (sim, cms, uid)
}

#[tokio::test]
async fn owner_references_are_garbage_collected() {
    let (_sim, cms, owner_uid) = with_owner().await;
    let dep = owned_by("dependent", &owner_uid);
    cms.create(&PostParams::default(), &dep).await.unwrap();
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    wait_for("dependent collected", Duration::from_secs(5), || {
        let cms = cms.clone();
        async move {
            cms.get_opt("dependent")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        }
    })
    .await;
}

/// A dependent created after its owner is gone (its creator acted on a stale cache) is collected
/// too, as Kubernetes' garbage collector does; one whose owner exists stays.
#[tokio::test]
async fn a_dependent_created_for_a_missing_owner_is_collected() {
    let (_sim, cms, live) = with_owner().await;
    cms.create(&PostParams::default(), &owned_by("kept", &live))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &owned_by("orphan", "gone-uid"))
        .await
        .unwrap();
    wait_for("the orphan collected", Duration::from_secs(5), || {
        let cms = cms.clone();
        async move { cms.get_opt("orphan").await.unwrap().is_none().then_some(()) }
    })
    .await;
    assert!(cms.get_opt("kept").await.unwrap().is_some());
}

#[tokio::test]
async fn unauthenticated_requests_are_401() {
    let sim = start().await;
    let dca = sim.cluster("dca").unwrap();
    let mut kubeconfig = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig(Some("dca"))).unwrap();
    for user in kubeconfig.auth_infos.iter_mut() {
        if let Some(info) = user.auth_info.as_mut() {
            info.token = Some("wrong".to_string().into());
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let c = kube::Client::try_from(config).unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    let err = api_err(cms.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(err.code, 401);
    assert_eq!(dca.name, "dca");
}

#[tokio::test]
async fn metrics_count_requests_by_verb() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    cms.create(&PostParams::default(), &cm("m")).await.unwrap();
    let text = c
        .request_text(http::Request::get("/metrics").body(vec![]).unwrap())
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("apiserver_request_total{")
                && l.contains("verb=\"create\"")
                && l.contains("resource=\"configmaps\"")),
        "{text}"
    );
}

/// Kubernetes' pod status strategy resets only spec, deletionTimestamp and ownerReferences on
/// pods/status, so labels and annotations written with a status change stick (controllers move
/// a lifecycle label and a readiness gate condition in one write); a custom resource's status
/// subresource takes nothing but status (see `generation_and_status_subresource_rules`).
#[tokio::test]
async fn pods_status_takes_labels_and_annotations_but_not_spec_or_owners() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "labels": {"state": "Normal"}},
        "spec": {"containers": [{"name": "app", "image": "nginx:1"}]},
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let written = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({
                "metadata": {"labels": {"state": "Preparing"}, "annotations": {"since": "now"},
                             "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                                                  "name": "x", "uid": "u"}]},
                "spec": {"containers": [{"name": "app", "image": "nginx:2"}]},
                "status": {"conditions": [{"type": "example.com/gate", "status": "False"}]},
            })),
        )
        .await
        .expect("pods/status patched");
    assert_eq!(written.metadata.labels.unwrap()["state"], "Preparing");
    assert_eq!(written.metadata.annotations.unwrap()["since"], "now");
    assert_eq!(written.metadata.owner_references, None, "owners stay");
    assert_eq!(written.metadata.uid, created.metadata.uid);
    assert_eq!(
        written.spec.unwrap().containers[0].image.as_deref(),
        Some("nginx:1"),
        "spec stays"
    );
    assert!(
        written
            .status
            .unwrap()
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "example.com/gate" && c.status == "False")
    );
    // A resourceVersion in the patch is a precondition there too.
    let err = api_err(
        pods.patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"metadata": {"resourceVersion": created.metadata.resource_version,
                                                  "labels": {"state": "Late"}}}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 409);
}

#[tokio::test]
async fn pods_may_only_change_allowed_fields() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let pods: Api<Pod> = Api::default_namespaced(c);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "nginx:1", "resources": {"requests": {"cpu": "100m"}}}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}})),
    )
    .await
    .expect("image change allowed");
    let err = api_err(
        pods.patch("p", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"containers": [{"name": "app", "env": [{"name": "A", "value": "1"}]}]}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    let resize = pods
        .patch_subresource(
            "resize",
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "200m"}}}]}})),
        )
        .await
        .expect("pods/resize changes resources");
    let cpu = resize.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap()
        .requests
        .unwrap()["cpu"]
        .0
        .clone();
    assert_eq!(cpu, "200m");
}

#[tokio::test]
async fn custom_resources_are_validated_with_causes() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let widgets = install_widgets(&c).await;
    let mut bad = widget("bad", -1);
    bad.data["spec"]["mode"] = json!("Bogus");
    let err = api_err(
        widgets
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert_eq!(err.reason, "Invalid");
    let causes = err.details.expect("details").causes;
    let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
    assert!(fields.contains(&"spec.replicas"), "{causes:?}");
    assert!(fields.contains(&"spec.mode"), "{causes:?}");
    // A CEL rule.
    let mut empty = widget("empty", 1);
    empty.data["spec"]["values"] = json!([]);
    let err = api_err(
        widgets
            .create(&PostParams::default(), &empty)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message.contains("values must not be empty"),
        "{}",
        err.message
    );
    // Strict field validation rejects unknown fields; nothing was created.
    let mut unknown = widget("unknown", 1);
    unknown.data["spec"]["colour"] = json!("red");
    let strict = PatchParams::apply("test").validation_strict();
    let err = api_err(
        widgets
            .patch("unknown", &strict, &Patch::Apply(&unknown))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
    assert!(err.message.contains("colour"), "{}", err.message);
    assert!(
        widgets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn pods_binding_assigns_a_node_once() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    // A pod for another scheduler: ours leaves it alone, so the binding below is the only one.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "manual"},
        "spec": {"schedulerName": "my-scheduler", "containers": [{"name": "app", "image": "nginx:1"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "manual"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "dca-node-2"}});
    let req = |body: &serde_json::Value| {
        http::Request::post("/api/v1/namespaces/default/pods/manual/binding")
            .header("Content-Type", "application/json")
            .body(body.to_string().into_bytes())
            .unwrap()
    };
    c.request::<serde_json::Value>(req(&binding))
        .await
        .expect("first binding");
    let bound = pods.get("manual").await.unwrap();
    assert_eq!(bound.spec.unwrap().node_name.as_deref(), Some("dca-node-2"));
    let err = api_err(
        c.request::<serde_json::Value>(req(&binding))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409, "a pod is bound once");
    wait_for(
        "the kubelet runs the bound pod",
        Duration::from_secs(5),
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get("manual").await.ok()?;
                (p.status?.phase.as_deref() == Some("Running")).then_some(())
            }
        },
    )
    .await;
}
