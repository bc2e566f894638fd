//! Benchmark: an in-place upgrade of one InPlaceSet by the member controller, against a
//! simulated member cluster in this process.
//!
//! Reports the time from the image change until every pod serves the new image, and the API
//! writes the controller made per pod upgraded (pod patches and pods/status patches), against the
//! minimum of 3 (gate off, patch, gate on). Prints a Markdown table.
//!
//! Run: `cargo bench --bench inplace_upgrade` (PODS=, MAX_UNAVAILABLE= override the sizes).

use std::time::{Duration, Instant};

use cafe::api::InPlaceSet;
use cafe::api::labels::READINESS_GATE;
use cafe_sim::config::SimConfig;
use cafe_sim::sim::Sim;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn client(sim: &Sim) -> kube::Client {
    let yaml = sim.kubeconfig(Some("bench"));
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// Waits until all `n` pods run `image` and serve (Ready with the gate True, state Normal).
async fn wait_serving(pods: &Api<Pod>, n: usize, image: &str) {
    loop {
        let list = pods
            .list(&ListParams::default().labels("app=bench"))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let serving = list
            .iter()
            .filter(|p| {
                let conds = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default();
                let is = |t: &str| conds.iter().any(|c| c.type_ == t && c.status == "True");
                p.spec
                    .as_ref()
                    .and_then(|s| s.containers[0].image.as_deref())
                    == Some(image)
                    && is("Ready")
                    && is(READINESS_GATE)
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("apps.cafe.io/lifecycle-state"))
                        .map(String::as_str)
                        == Some("Normal")
            })
            .count();
        if list.len() == n && serving == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() {
    let pods_n = env_or("PODS", 200);
    let max_unavailable = env_or("MAX_UNAVAILABLE", 20);
    let config = SimConfig::parse(
        r#"
kubelet: {startMillis: 50, restartMillis: 50}
clusters:
  - name: bench
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 4, cpu: "64", memory: 256Gi, pods: 500}]
"#,
        "bench",
    )
    .expect("config");
    let sim = Sim::start(config).await.expect("sim");
    sim.wait_ready(Duration::from_secs(10))
        .await
        .expect("ready");
    let client = client(&sim).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in cafe::cli::crds::all() {
        if crd.metadata.name.as_deref() == Some("inplacesets.apps.cafe.io") {
            crds.create(&PostParams::default(), &crd)
                .await
                .expect("crd");
        }
    }
    let shutdown = CancellationToken::new();
    let member = tokio::spawn(cafe::member::run(client.clone(), shutdown.clone()));

    let template = |image: &str| {
        json!({"metadata": {"labels": {"app": "bench"}},
               "spec": {"containers": [{"name": "app", "image": image}]}})
    };
    let set: InPlaceSet = serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1", "kind": "InPlaceSet",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {"replicas": pods_n, "selector": {"matchLabels": {"app": "bench"}},
                 "template": template("bench:1"),
                 "strategy": {"maxUnavailable": max_unavailable}},
    }))
    .expect("set");
    let sets: Api<InPlaceSet> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    // The CRD needs a moment to be served.
    let started = Instant::now();
    while sets.create(&PostParams::default(), &set).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "CRD never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = Instant::now();
    wait_serving(&pods, pods_n, "bench:1").await;
    let creation = created.elapsed();

    let metrics = &sim.cluster("bench").expect("cluster").metrics;
    let writes = |sub: &'static str| {
        metrics.count(|l| {
            l.resource == "pods"
                && l.subresource == sub
                && matches!(l.verb.as_str(), "patch" | "update")
                && l.code.starts_with('2')
        })
    };
    let (meta_before, status_before) = (writes(""), writes("status"));
    let changed = Instant::now();
    sets.patch(
        "bench",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": template("bench:2")}})),
    )
    .await
    .expect("patch");
    wait_serving(&pods, pods_n, "bench:2").await;
    let upgrade = changed.elapsed();
    // Counted at the API server: the simulated kubelet writes pod status in process, so these
    // are the controller's writes alone.
    let meta = writes("") - meta_before;
    let status = writes("status") - status_before;
    let per_pod = |n: u64| n as f64 / pods_n as f64;

    println!(
        "| pods | maxUnavailable | creation | upgrade | pod patches/pod | pods/status patches/pod | writes/pod | minimum |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {pods_n} | {max_unavailable} | {:.1} s | {:.1} s | {:.2} | {:.2} | {:.2} | 3 |",
        creation.as_secs_f64(),
        upgrade.as_secs_f64(),
        per_pod(meta),
        per_pod(status),
        per_pod(meta + status),
    );
    shutdown.cancel();
    let _ = member.await;
}
