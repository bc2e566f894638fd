//! Controllers must survive what real clusters do to them: cut watches, compacted history,
//! outages and error bursts. These tests show the simulator produces each faithfully.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{client, start, wait_for};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"suite": "reflector"}},
        "spec": {"containers": [{"name": "app", "image": "nginx:1"}]},
    }))
    .unwrap()
}

async fn names_in_api(pods: &Api<Pod>) -> BTreeSet<String> {
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

#[tokio::test]
async fn reflector_survives_cut_watches_and_expired_resource_versions() {
    let sim = start().await;
    let dca = sim.cluster("dca").unwrap().clone();
    let c = client(&sim, "dca").await;
    let pods: Api<Pod> = Api::default_namespaced(c);
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(pods.clone(), watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let seen_errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let errors = seen_errors.clone();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if item.is_err() {
                errors.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let in_sync = |reader: reflector::Store<Pod>, pods: Api<Pod>| async move {
        let want = names_in_api(&pods).await;
        let state = reader.state();
        let got: Vec<String> = state
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let unique: BTreeSet<String> = got.iter().cloned().collect();
        (unique.len() == got.len() && unique == want).then_some(())
    };

    for i in 0..20 {
        pods.create(&PostParams::default(), &pod(&format!("a{i}")))
            .await
            .unwrap();
    }
    wait_for(
        "reflector has the first 20",
        Duration::from_secs(10),
        || in_sync(reader.clone(), pods.clone()),
    )
    .await;

    // Watches cut mid-stream: changes made while the watcher reconnects must not be lost.
    dca.faults.cut_watches();
    for i in 0..10 {
        pods.create(&PostParams::default(), &pod(&format!("b{i}")))
            .await
            .unwrap();
    }
    for i in 0..5 {
        pods.delete(&format!("a{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    wait_for(
        "reflector in sync after cut-watches",
        Duration::from_secs(10),
        || in_sync(reader.clone(), pods.clone()),
    )
    .await;

    // History compacted and watches cut: the re-watch gets 410 Expired and the watcher relists.
    dca.store.write(|s| s.compact());
    for i in 0..5 {
        pods.create(&PostParams::default(), &pod(&format!("c{i}")))
            .await
            .unwrap();
    }
    dca.faults.cut_watches();
    for i in 5..10 {
        pods.delete(&format!("a{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    dca.store.write(|s| s.compact());
    for i in 5..10 {
        pods.create(&PostParams::default(), &pod(&format!("c{i}")))
            .await
            .unwrap();
    }
    wait_for(
        "reflector in sync after an expired resourceVersion",
        Duration::from_secs(15),
        || in_sync(reader.clone(), pods.clone()),
    )
    .await;
    // Deleted pods bound to a node stay, terminating, until the kubelet finishes them; the churn
    // above leaves exactly 30 that are not being deleted.
    let live = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    assert_eq!(live, 30);
}

#[tokio::test]
async fn outage_refuses_connections_until_it_ends() {
    let sim = start().await;
    let dca = sim.cluster("dca").unwrap().clone();
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    cms.list(&ListParams::default())
        .await
        .expect("reachable before");
    dca.faults.outage(Duration::from_millis(800));
    let err = cms
        .list(&ListParams::default())
        .await
        .expect_err("unreachable during the outage");
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a connection failure, not an API answer: {err:?}"
    );
    wait_for(
        "reachable after the outage",
        Duration::from_secs(10),
        || {
            let cms = cms.clone();
            async move { cms.list(&ListParams::default()).await.ok().map(|_| ()) }
        },
    )
    .await;
}

#[tokio::test]
async fn injected_errors_answer_with_the_requested_code() {
    let sim = start().await;
    let dca = sim.cluster("dca").unwrap().clone();
    let c = client(&sim, "dca").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    for code in [500u16, 409] {
        dca.faults
            .inject_errors(code, 1.0, Duration::from_millis(500));
        match cms.list(&ListParams::default()).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, code),
            other => panic!("expected an injected {code}, got {other:?}"),
        }
        wait_for("errors stop", Duration::from_secs(5), || {
            let cms = cms.clone();
            async move { cms.list(&ListParams::default()).await.ok().map(|_| ()) }
        })
        .await;
    }
    // 429 carries Retry-After, which kube-rs honours by retrying; the server counts each answer.
    dca.faults
        .inject_errors(429, 1.0, Duration::from_millis(1500));
    let _ = cms.list(&ListParams::default()).await;
    assert!(dca.metrics.count(|l| l.code == "429" && l.verb == "list") >= 1);
    // A rate of 0.5 fails some requests and lets others through.
    dca.faults.inject_errors(500, 0.5, Duration::from_secs(30));
    let mut failed = 0;
    for _ in 0..40 {
        if cms.list(&ListParams::default()).await.is_err() {
            failed += 1;
        }
    }
    assert!((5..=35).contains(&failed), "about half failed: {failed}/40");
}
