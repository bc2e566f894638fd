//! Benchmark: an in-place upgrade of one InPlaceSet by the member controller, against a
//! simulated member cluster in this process.
//!
//! Reports, for `podUpdatePolicy: InPlaceIfPossible` and for `ReCreate` with the same kubelet
//! delays: the time from the image change until every pod serves the new image, and every API
//! write the controller made per pod upgraded: pod patches, pods/status patches (the minimum is
//! 3: gate off, patch, gate on), and everything else (Events, InPlaceSet status, pod creations
//! and deletions), with the writes refused with 409 Conflict counted apart. The simulated kubelet
//! writes in process, so what the API server counts is the controller's alone. Prints a
//! Markdown table.
//!
//! Also prints (stderr) the mean time between a pod's successive in-place writes (gate off ->
//! patch -> gate on); `TIMELINE=1` lists the first writes with their times.
//!
//! Run: `cargo bench --bench inplace_upgrade` (PODS=, MAX_UNAVAILABLE= override the sizes).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use cafe::api::InPlaceSet;
use cafe::api::labels::READINESS_GATE;
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

/// Waits until all `n` pods run `image` and serve (Ready with the gate True, state Normal);
/// says where it is every 10 s and gives up after 5 minutes.
async fn wait_serving(pods: &Api<Pod>, n: usize, image: &str) {
    let started = Instant::now();
    let mut said = Instant::now();
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
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{serving} of {n} pods serve {image} after 5 minutes ({} pods)",
            list.len()
        );
        if said.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "waiting: {serving} of {n} pods serve {image} ({} pods)",
                list.len()
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one upgrade cost.
struct Run {
    policy: &'static str,
    upgrade: Duration,
    pod_patches: u64,
    status_patches: u64,
    other_writes: u64,
    conflicts: u64,
    by_resource: Vec<(String, u64)>,
}

const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

async fn upgrade(policy: &'static str, pods_n: usize, max_unavailable: usize) -> Run {
    // With namespace cafe-system, where the member agent keeps its Lease and room ConfigMap.
    let sim = common::start_sim(
        r#"
kubelet: {startMillis: 50, restartMillis: 50}
clusters:
  - name: bench
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 4, cpu: "64", memory: 256Gi, pods: 500}]
"#,
    )
    .await;
    let client = common::client(&sim, "bench").await;
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
                 "strategy": {"maxUnavailable": max_unavailable, "podUpdatePolicy": policy}},
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
    wait_serving(&pods, pods_n, "bench:1").await;

    let calls = &sim.cluster("bench").expect("cluster").calls;
    let before = calls.snapshot().len();
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
    // Everything written after the image change but the change itself (the controller never
    // writes an InPlaceSet's spec).
    let writes: Vec<_> = calls
        .snapshot()
        .into_iter()
        .skip(before)
        .filter(|c| WRITE_VERBS.contains(&c.verb.as_str()))
        .filter(|c| !(c.resource == "inplacesets" && c.subresource.is_empty()))
        .collect();
    let ok = |c: &&cafe_sim::metrics::CallRecord| (200..300).contains(&c.code);
    let count = |resource: &str, sub: &str| {
        writes
            .iter()
            .filter(ok)
            .filter(|c| c.resource == resource && c.subresource == sub && c.verb == "patch")
            .count() as u64
    };
    let pod_patches = count("pods", "");
    let status_patches = count("pods", "status");
    let all_ok = writes.iter().filter(ok).count() as u64;
    let mut by_resource = std::collections::BTreeMap::<String, u64>::new();
    for c in writes.iter().filter(ok) {
        let key = if c.subresource.is_empty() {
            format!("{} {}", c.verb, c.resource)
        } else {
            format!("{} {}/{}", c.verb, c.resource, c.subresource)
        };
        *by_resource.entry(key).or_default() += 1;
    }
    // Where a pod's upgrade time goes: the mean gap between its successive writes
    // (in place: gate off -> patch -> gate on).
    let mut per_pod_writes = std::collections::BTreeMap::<&str, Vec<Instant>>::new();
    for c in writes.iter().filter(ok).filter(|c| c.resource == "pods") {
        per_pod_writes
            .entry(c.name.as_str())
            .or_default()
            .push(c.at);
    }
    let mut gaps = Vec::<(Duration, u32)>::new();
    for times in per_pod_writes.values() {
        for (i, w) in times.windows(2).enumerate() {
            if gaps.len() <= i {
                gaps.push((Duration::ZERO, 0));
            }
            gaps[i].0 += w[1] - w[0];
            gaps[i].1 += 1;
        }
    }
    let gaps = gaps
        .iter()
        .map(|(sum, n)| format!("{:.0} ms", sum.as_secs_f64() * 1000.0 / f64::from(*n)))
        .collect::<Vec<_>>()
        .join(", ");
    if policy == "InPlaceIfPossible" {
        eprintln!("{policy}: mean gaps between a pod's writes: {gaps}");
    }
    // TIMELINE=1 prints the first writes, to see where a wave's time goes.
    if std::env::var("TIMELINE").is_ok() {
        for c in writes.iter().take(150) {
            eprintln!(
                "{:>6.1} {} {} {}/{} {}",
                (c.at - changed).as_secs_f64() * 1000.0,
                c.code,
                c.verb,
                c.resource,
                c.subresource,
                c.name
            );
        }
    }
    shutdown.cancel();
    let _ = member.await;
    Run {
        policy,
        upgrade,
        pod_patches,
        status_patches,
        other_writes: all_ok - pod_patches - status_patches,
        conflicts: writes.iter().filter(|c| c.code == 409).count() as u64,
        by_resource: by_resource.into_iter().collect(),
    }
}

#[tokio::main]
async fn main() {
    common::quiet_logs();
    let pods_n = env_or("PODS", 200);
    let max_unavailable = env_or("MAX_UNAVAILABLE", 20);
    let in_place = upgrade("InPlaceIfPossible", pods_n, max_unavailable).await;
    let recreate = upgrade("ReCreate", pods_n, max_unavailable).await;
    let per_pod = |n: u64| n as f64 / pods_n as f64;
    println!(
        "| podUpdatePolicy | pods | maxUnavailable | upgrade | pod patches/pod | pods/status patches/pod | other writes/pod | all writes/pod | 409s/pod |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in [&in_place, &recreate] {
        println!(
            "| {} | {pods_n} | {max_unavailable} | {:.1} s | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.policy,
            r.upgrade.as_secs_f64(),
            per_pod(r.pod_patches),
            per_pod(r.status_patches),
            per_pod(r.other_writes),
            per_pod(r.pod_patches + r.status_patches + r.other_writes + r.conflicts),
            per_pod(r.conflicts),
        );
    }
    println!();
    println!(
        "in-place time / ReCreate time: {:.2}",
        in_place.upgrade.as_secs_f64() / recreate.upgrade.as_secs_f64()
    );
    for r in [&in_place, &recreate] {
        println!();
        println!("{} writes by kind (2xx):", r.policy);
        for (kind, n) in &r.by_resource {
            println!("- {kind}: {n} ({:.2}/pod)", per_pod(*n));
        }
    }
}
