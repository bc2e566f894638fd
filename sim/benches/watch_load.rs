//! Benchmark: 10,000 pods created in one simulated cluster, watched by 100 watchers.
//!
//! Reports creates/s, watch delivery latency (p50/p99, create acknowledged -> event received),
//! time until the scheduler and kubelet have every pod Running, and peak memory (VmHWM of this
//! process, which holds the simulator and all clients). Prints a Markdown table.
//!
//! Run: `cargo bench -p cafe-sim --bench watch_load` (PODS=, WATCHERS= override the sizes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cafe_sim::config::SimConfig;
use cafe_sim::sim::Sim;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use parking_lot::Mutex;
use serde_json::json;

#[derive(serde::Deserialize)]
struct Event {
    #[serde(rename = "type")]
    type_: String,
    object: EventObject,
}

#[derive(serde::Deserialize)]
struct EventObject {
    metadata: EventMeta,
}

#[derive(serde::Deserialize)]
struct EventMeta {
    #[serde(default)]
    name: String,
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let pods_n = env_or("PODS", 10_000);
    let watchers_n = env_or("WATCHERS", 100);
    let nodes = pods_n.div_ceil(100) + 1;
    let config = SimConfig::parse(
        &format!(
            "kubelet: {{startMillis: 200, restartMillis: 200}}\nclusters:\n  - name: bench\n    nodes: [{{count: {nodes}, cpu: \"64\", memory: 256Gi, pods: 110}}]\n"
        ),
        "bench",
    )
    .expect("config");
    let sim = Sim::start(config).await.expect("sim");
    sim.wait_ready(Duration::from_secs(30))
        .await
        .expect("ready");
    let yaml = sim.kubeconfig(Some("bench"));
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
    let kc = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(kc).expect("client");
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    // Creation acknowledgement times by pod name, written by creators, read by watchers.
    let acked: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let rv = pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut watch_tasks = vec![];
    for _ in 0..watchers_n {
        // Raw NDJSON with a minimal decode: a watcher that deserialised whole Pods would make
        // this benchmark measure k8s-openapi instead of the simulator.
        let req = http::Request::get(format!(
            "/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}&timeoutSeconds=600"
        ))
        .body(vec![])
        .expect("request");
        let lines = client.request_stream(req).await.expect("watch");
        let acked = acked.clone();
        let latencies = latencies.clone();
        watch_tasks.push(tokio::spawn(async move {
            use futures::AsyncBufReadExt;
            let mut lines = Box::pin(lines).lines();
            let mut seen = 0usize;
            let mut pending: Vec<(String, Instant)> = vec![];
            while let Ok(Some(line)) = lines.try_next().await {
                let Ok(ev) = serde_json::from_str::<Event>(&line) else {
                    continue;
                };
                if ev.type_ == "ADDED" {
                    pending.push((ev.object.metadata.name, Instant::now()));
                    seen += 1;
                    if seen == pods_n {
                        break;
                    }
                }
            }
            // Resolve acknowledgement times after the fact: a create's response can arrive
            // after its watch event, which counts as zero latency.
            let acked = acked.lock();
            let mut l = latencies.lock();
            for (name, at) in pending {
                if let Some(t) = acked.get(&name) {
                    l.push(at.saturating_duration_since(*t));
                }
            }
        }));
    }

    let started = Instant::now();
    let concurrency = 32;
    let per_task = pods_n.div_ceil(concurrency);
    let mut creators = vec![];
    for t in 0..concurrency {
        let pods = pods.clone();
        let acked = acked.clone();
        creators.push(tokio::spawn(async move {
            for i in (t * per_task)..((t + 1) * per_task).min(pods_n) {
                let name = format!("p-{i}");
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"containers": [{"name": "app", "image": "nginx:1", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
                }))
                .expect("pod");
                let before = Instant::now();
                pods.create(&PostParams::default(), &pod).await.expect("create");
                acked.lock().insert(name, before);
            }
        }));
    }
    for c in creators {
        c.await.expect("creator");
    }
    let create_time = started.elapsed();
    for w in watch_tasks {
        w.await.expect("watcher");
    }
    let delivered = started.elapsed();
    // The scheduler and kubelet keep up: every pod bound and Running.
    let running_at = loop {
        let running = sim.cluster("bench").expect("cluster").store.read(|s| {
            s.list("/pods", Some("default"))
                .iter()
                .filter(|p| p.pointer("/status/phase").and_then(|v| v.as_str()) == Some("Running"))
                .count()
        });
        if running == pods_n {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(600) {
            panic!("only {running}/{pods_n} pods Running after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut l = latencies.lock().clone();
    l.sort();
    println!("| metric | value |");
    println!("|---|---|");
    println!("| pods created | {pods_n} |");
    println!("| watchers | {watchers_n} |");
    println!("| nodes | {nodes} |");
    println!(
        "| creates/s (32 concurrent clients) | {:.0} |",
        pods_n as f64 / create_time.as_secs_f64()
    );
    println!("| watch events delivered | {} |", l.len());
    println!(
        "| delivery latency p50 | {:.1} ms |",
        percentile(&l, 0.50).as_secs_f64() * 1000.0
    );
    println!(
        "| delivery latency p99 | {:.1} ms |",
        percentile(&l, 0.99).as_secs_f64() * 1000.0
    );
    println!(
        "| all events delivered after | {:.2} s |",
        delivered.as_secs_f64()
    );
    println!(
        "| all pods Running after | {:.2} s |",
        running_at.as_secs_f64()
    );
    println!(
        "| peak memory (VmHWM, sim + clients) | {:.0} MiB |",
        peak_rss_mib()
    );
    sim.stop();
}
