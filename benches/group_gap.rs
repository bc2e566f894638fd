//! Benchmark: how long the hub takes from one rollout group done to the next group's first pod
//! write. A simulated hub and two members in this process (kubelet start and restart 50 ms),
//! the hub and both member agents running; CafeDeployment `demo` of `REPLICAS` pods over DCA and
//! DCB, `Batch` groups of 2 (one pod per unit), `maxUnavailablePerUnit: 1`, no confirmation. Once
//! it is available, its image changes and the benchmark waits until the rollout is Completed.
//!
//! From the members' call records: each release of a group is the hub's first write to a member
//! InPlaceSet after a quiet spell; the group before it is done at the last pod write
//! (`pods/status`, the readiness gate turning True) of the agents before that release, and the
//! next group starts at their first pod write after it. The gap is the difference: the agents
//! reporting, the hub seeing it and deciding, its write, and the agent acting on it. Prints the
//! gaps' median, p99 and maximum as a Markdown table.
//!
//! Run: `cargo bench --bench group_gap` (REPLICAS= overrides the size, default 40: 20 groups).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/hub_support/mod.rs"]
mod hub_support;
#[path = "../tests/invariants/mod.rs"]
mod invariants;

use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// Hub writes closer together than this belong to one group's release (one per member).
const ONE_RELEASE: Duration = Duration::from_millis(20);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    common::quiet_logs();
    let replicas: i32 = std::env::var("REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut h =
        hub_support::Hub::start_with(common::TWO_MEMBERS, &[("dca", "DCA"), ("dcb", "DCB")]).await;
    let agents = h.run_member_agents(&["dca", "dcb"]);
    h.run_hub();
    h.wait_members_ready().await;
    let api = h.deployments();
    let cd = hub_support::rolling_deployment(
        replicas,
        json!({"upgradeType": "Batch", "batchSize": 2, "maxUnavailablePerUnit": 1}),
    );
    api.create(&PostParams::default(), &cd)
        .await
        .expect("created");
    let completed_at = |image: &'static str| {
        let api = api.clone();
        let revision = hub_support::revision_of(image);
        move || {
            let api = api.clone();
            let revision = revision.clone();
            async move {
                let cd = api.get("demo").await.ok()?;
                let status = cd.status?;
                let rollout = status.rollout?;
                (status.available_replicas == replicas
                    && rollout.revision.as_deref() == Some(revision.as_str())
                    && rollout.phase.as_deref() == Some("Completed"))
                .then_some(())
            }
        }
    };
    common::wait_for(
        "demo available",
        Duration::from_secs(300),
        completed_at("demo:1"),
    )
    .await;

    let started = Instant::now();
    let patch = json!({"spec": {"template": hub_support::template("demo:2")}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("image changed");
    common::wait_for(
        "the rollout to demo:2 Completed",
        Duration::from_secs(600),
        completed_at("demo:2"),
    )
    .await;
    let rollout = started.elapsed();

    // Both members' calls after the image change, in time order.
    let mut calls: Vec<_> = ["dca", "dcb"]
        .into_iter()
        .flat_map(|m| h.sim.calls(m))
        .filter(|c| c.at >= started && (200..300).contains(&c.code))
        .collect();
    calls.sort_by_key(|c| c.at);
    let hub_set_write = |c: &&cafe_sim::metrics::CallRecord| {
        c.user_agent.starts_with("cafe-hub/")
            && c.resource == "inplacesets"
            && c.subresource.is_empty()
            && c.verb != "get"
            && c.verb != "list"
            && c.verb != "watch"
    };
    // The simulated kubelet writes in process: every pod patch the API server answers is an
    // agent's.
    let pod_write = |c: &&cafe_sim::metrics::CallRecord| c.resource == "pods" && c.verb == "patch";
    let mut releases: Vec<Instant> = vec![];
    for c in calls.iter().filter(hub_set_write) {
        if releases.last().is_none_or(|&r| c.at > r + ONE_RELEASE) {
            releases.push(c.at);
        }
    }
    let pod_writes: Vec<Instant> = calls.iter().filter(pod_write).map(|c| c.at).collect();
    // The first release starts the rollout: no group is done before it.
    let mut gaps: Vec<Duration> = releases
        .iter()
        .skip(1)
        .filter_map(|&release| {
            let done = pod_writes.iter().rev().find(|&&t| t <= release)?;
            let next = pod_writes.iter().find(|&&t| t > release)?;
            Some(next.duration_since(*done))
        })
        .collect();
    gaps.sort();
    assert!(!gaps.is_empty(), "no group released after another");
    println!("| replicas | groups released | rollout | gap median | gap p99 | gap max |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {replicas} | {} | {:.1} s | {} | {} | {} |",
        releases.len(),
        rollout.as_secs_f64(),
        ms(percentile(&gaps, 0.5)),
        ms(percentile(&gaps, 0.99)),
        ms(*gaps.last().unwrap_or(&Duration::ZERO)),
    );
    h.stop_hub().await;
    agents.cancel();
}
