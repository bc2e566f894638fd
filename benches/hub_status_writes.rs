//! Benchmark: what creating CafeDeployments costs the hub cluster. A simulated hub and two
//! members in this process, the hub and both member agents running on their `deploy/`
//! ServiceAccounts (as the end-to-end tests run them); `CDS` CafeDeployments of 2 replicas
//! (one per unit) are created at once, then the benchmark waits until every one is Completed
//! with both replicas available.
//!
//! Reports, per CafeDeployment: the hub's status writes (`patch cafedeployments/status` answered
//! 2xx, counted by the hub cluster's API server) and those refused with 409 Conflict (a status
//! decided from a stale cache), and the time until all are available. Prints a Markdown table.
//!
//! Run: `cargo bench --bench hub_status_writes` (CDS= overrides the count, default 20).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/hub_support/mod.rs"]
mod hub_support;
#[path = "../tests/invariants/mod.rs"]
mod invariants;

use std::time::{Duration, Instant};

use kube::api::PostParams;
use serde_json::json;

#[tokio::main]
async fn main() {
    common::quiet_logs();
    let n: usize = std::env::var("CDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut h =
        hub_support::Hub::start_with(common::TWO_MEMBERS, &[("dca", "DCA"), ("dcb", "DCB")]).await;
    let agents = h.run_member_agents(&["dca", "dcb"]);
    h.run_hub();
    h.wait_members_ready().await;
    let metrics = &h.sim.cluster("hub").expect("hub cluster").metrics;
    let status_writes = |code: &'static str| {
        metrics.count(|l| {
            l.resource == "cafedeployments"
                && l.subresource == "status"
                && matches!(l.verb.as_str(), "patch" | "update")
                && l.code.starts_with(code)
        })
    };
    let (ok_before, conflict_before) = (status_writes("2"), status_writes("409"));

    let started = Instant::now();
    let api = h.deployments();
    for i in 0..n {
        let mut cd = hub_support::rolling_deployment(
            2,
            json!({"upgradeType": "Batch", "batchSize": "100%", "maxUnavailablePerUnit": 1}),
        );
        cd.metadata.name = Some(format!("cd-{i}"));
        api.create(&PostParams::default(), &cd)
            .await
            .expect("created");
    }
    common::wait_for(
        "every CafeDeployment available",
        Duration::from_secs(600),
        || async {
            let list = api.list(&Default::default()).await.ok()?;
            let done = list
                .items
                .iter()
                .filter(|cd| {
                    cd.status.as_ref().is_some_and(|s| {
                        s.available_replicas == 2
                            && s.rollout
                                .as_ref()
                                .is_some_and(|r| r.phase.as_deref() == Some("Completed"))
                    })
                })
                .count();
            (done == n).then_some(())
        },
    )
    .await;
    let elapsed = started.elapsed();
    // Writes still on their way for the last ones are counted too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ok = status_writes("2") - ok_before;
    let conflicts = status_writes("409") - conflict_before;
    let per = |v: u64| v as f64 / n as f64;
    println!(
        "| CafeDeployments | status writes/CafeDeployment | 409s/CafeDeployment | all available |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {n} | {:.2} | {:.2} | {:.1} s |",
        per(ok),
        per(conflicts),
        elapsed.as_secs_f64()
    );
    h.stop_hub().await;
    agents.cancel();
}
