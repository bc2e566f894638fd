//! Hub replicas end to end: two `cafe hub` processes (identities hub-a and hub-b, on the token
//! of the hub's ServiceAccount from `deploy/hub`) against one hub cluster with two member
//! agents. Only the holder of Lease `cafe-system/cafe-hub` writes, as the simulator's per-user
//! call record shows (each replica names itself in its User-Agent); both are ready and scrape
//! as described; killing the holder mid-rollout hands the rollout to the other within the lease
//! duration, and it continues the rollout with no group repeated or skipped. A member whose
//! agent stops is AgentNotRunning and its rollout freezes until the agent is back.

mod common;
mod hub_support;
mod invariants;

use hub_support::{revision_of, template};

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use cafe::api::labels::{SYSTEM_NAMESPACE, UPGRADE_CONFIRMED};
use cafe::api::{CafeDeployment, RolloutStatus};
use cafe::hub::HUB_LEASE;
use cafe::member::MemberOptions;
use common::{Part, admin_get, controller_token, kubeconfig_with_token, wait_for};
use hub_support::{Hub, condition, ready_of};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Rollouts wait on real pods; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

/// The lease timings both hub processes run with (the flags of the same names).
const LEASE: [(&str, &str); 3] = [
    ("--leader-elect-lease-duration", "2s"),
    ("--leader-elect-renew-deadline", "1500ms"),
    ("--leader-elect-retry-period", "250ms"),
];
const LEASE_DURATION: Duration = Duration::from_secs(2);

/// One `cafe hub` process, the binary an installation runs, authenticating as ServiceAccount
/// cafe-system/cafe-hub; killed when dropped.
struct HubProcess {
    identity: String,
    child: tokio::process::Child,
    admin: SocketAddr,
    /// Its log lines (JSON), kept for the failure message.
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl HubProcess {
    async fn start(kubeconfig: &Path, identity: &str) -> HubProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
            .args(["hub", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--identity", identity, "--admin-address", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(LEASE.iter().flat_map(|(flag, value)| [*flag, *value]))
            // HubOptions::fast(), probes every 200 ms, as the in-process hubs of these tests.
            .args(["--probe-interval", "200ms", "--probe-timeout", "2s"])
            .args(["--request-timeout", "5s", "--status-heartbeat", "5s"])
            .args([
                "--retry-min",
                "100ms",
                "--retry-max",
                "2s",
                "--member-wait",
                "500ms",
            ])
            .args(["--resync-interval", "30s", "--startup-settle", "5s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cafe hub starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let admin: SocketAddr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("stderr") {
                let event: Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(address) = event["address"].as_str() {
                    return address.parse().expect("an address");
                }
                log.lock().unwrap().push(line);
            }
            panic!("cafe hub {identity} exited: {:?}", log.lock().unwrap());
        })
        .await
        .expect("the admin address is logged");
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep.lock().unwrap().push(line);
            }
        });
        HubProcess {
            identity: identity.to_string(),
            child,
            admin,
            log,
        }
    }

    /// Killed where it stands (SIGKILL), as a crashed or evicted pod: no release of the Lease.
    async fn kill(&mut self) {
        self.child.kill().await.expect("killed");
    }

    /// Whether its `cafe_leader` gauge says it holds the hub's Lease.
    async fn says_leader(&self) -> bool {
        let (code, text) = admin_get(self.admin, "/metrics").await;
        assert_eq!(code, 200, "/metrics of {}", self.identity);
        let gauge = text
            .lines()
            .find(|l| l.starts_with("cafe_leader{") && l.contains(HUB_LEASE))
            .unwrap_or_else(|| panic!("{} exposes cafe_leader: {text}", self.identity));
        gauge.ends_with(" 1")
    }
}

/// The writes (anything but get, list, watch; its own Lease aside) that the replica named
/// `identity` made to `cluster`, from the simulator's per-user call record: every call it made
/// carries its identity in the User-Agent. Each call must be the hub's ServiceAccount's.
fn writes_by(h: &Hub, cluster: &str, identity: &str) -> Vec<String> {
    let agent = format!("({identity})");
    let calls: Vec<_> = h
        .sim
        .calls(cluster)
        .into_iter()
        .filter(|c| c.user_agent.ends_with(&agent))
        .collect();
    for c in &calls {
        assert_eq!(
            c.user,
            Part::Hub.user(),
            "{identity} calls {cluster} as the hub"
        );
        assert_ne!(c.code, 403, "refused: {c:?}");
    }
    calls
        .into_iter()
        .filter(|c| !matches!(c.verb.as_str(), "get" | "list" | "watch") && c.resource != "leases")
        .map(|c| format!("{} {}/{} {}", c.verb, c.resource, c.subresource, c.name))
        .collect()
}

/// [`writes_by`] in the hub and in every member.
fn all_writes_by(h: &Hub, identity: &str) -> Vec<String> {
    ["hub", "dca", "dcb"]
        .iter()
        .flat_map(|cluster| writes_by(h, cluster, identity))
        .collect()
}

/// How many calls of any kind the replica made to the hub (its caches are warm when it
/// follows).
fn reads_by(h: &Hub, identity: &str) -> usize {
    let agent = format!("({identity})");
    h.sim
        .calls("hub")
        .iter()
        .filter(|c| c.user_agent.ends_with(&agent) && matches!(c.verb.as_str(), "list" | "watch"))
        .count()
}

fn rollout_deployment(replicas: i32, strategy: Value) -> CafeDeployment {
    let mut cd = hub_support::rolling_deployment(replicas, strategy);
    cd.spec.min_ready_seconds = 1;
    cd
}

async fn wait_rollout(
    h: &Hub,
    what: &str,
    check: impl Fn(&RolloutStatus, &CafeDeployment) -> bool,
) -> CafeDeployment {
    let api = h.deployments();
    let check = &check;
    wait_for(what, WAIT, || {
        let api = api.clone();
        async move {
            let cd = api.get("demo").await.ok()?;
            let r = cd.status.as_ref()?.rollout.clone()?;
            check(&r, &cd).then_some(cd)
        }
    })
    .await
}

async fn wait_confirm_at(h: &Hub, image: &str, k: i32) {
    let revision = revision_of(image);
    wait_rollout(h, &format!("{image}: waiting after group {k}"), |r, _| {
        r.revision.as_deref() == Some(revision.as_str())
            && r.current_batch == k
            && r.phase.as_deref() == Some("WaitingForConfirm")
    })
    .await;
}

async fn wait_completed(h: &Hub, image: &str) {
    let revision = revision_of(image);
    wait_rollout(h, &format!("{image}: rollout completed"), |r, _| {
        r.revision.as_deref() == Some(revision.as_str()) && r.phase.as_deref() == Some("Completed")
    })
    .await;
}

/// What `cafe rollout confirm` does.
async fn confirm(h: &Hub) {
    h.deployments()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {UPGRADE_CONFIRMED: "true"}}})),
        )
        .await
        .unwrap();
}

async fn set_image(h: &Hub, image: &str) {
    h.deployments()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": template(image)}})),
        )
        .await
        .unwrap();
}

async fn hub_lease_holder(h: &Hub) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(h.hub.clone(), SYSTEM_NAMESPACE);
    leases.get_opt(HUB_LEASE).await.ok()??.spec?.holder_identity
}

/// Records every group the CafeDeployment's status shows, in order.
fn record_groups(h: &Hub) -> (Arc<std::sync::Mutex<Vec<i32>>>, JoinHandle<()>) {
    let api = h.deployments();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<i32>::new()));
    let recorder = seen.clone();
    let task = tokio::spawn(async move {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let mut s = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(cd)) = s.next().await {
            if let Some(k) = cd.status.and_then(|s| s.rollout).map(|r| r.current_batch) {
                let mut v = recorder.lock().unwrap();
                if v.last() != Some(&k) {
                    v.push(k);
                }
            }
        }
    });
    (seen, task)
}

#[tokio::test]
async fn only_the_lease_holder_writes_and_the_other_hub_finishes_the_rollout_after_a_kill() {
    let h = Hub::start_with(common::TWO_MEMBERS, &[("dca", "DCA"), ("dcb", "DCB")]).await;
    let agents = h.run_member_agents(&["dca", "dcb"]);
    // Two `cafe hub` processes on the token of the hub's ServiceAccount (from deploy/hub).
    let token = controller_token(&h.sim, "hub", Part::Hub).await;
    let dir = std::env::temp_dir().join(format!("cafe-hub-leader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("cafe-hub.kubeconfig");
    std::fs::write(
        &kubeconfig,
        serde_json::to_string(&kubeconfig_with_token(&h.sim, "hub", &token)).expect("JSON"),
    )
    .expect("kubeconfig written");
    let mut a = HubProcess::start(&kubeconfig, "hub-a").await;
    let mut b = HubProcess::start(&kubeconfig, "hub-b").await;
    h.wait_members_ready().await;

    let holder = wait_for("a hub holds the Lease", WAIT, || async {
        hub_lease_holder(&h).await.filter(|s| !s.is_empty())
    })
    .await;
    let (leader, follower) = if holder == a.identity {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // Both ready (caches synced), the gauge names the holder only.
    for replica in [&*leader, &*follower] {
        let (code, _) = wait_for("/readyz 200", WAIT, || async {
            let (code, body) = admin_get(replica.admin, "/readyz").await;
            (code == 200).then_some((code, body))
        })
        .await;
        assert_eq!(code, 200);
        assert_eq!(admin_get(replica.admin, "/healthz").await.0, 200);
    }
    assert!(leader.says_leader().await && !follower.says_leader().await);

    // Beta (1 + 1), then batches of 2, each confirmed.
    let cd = rollout_deployment(
        6,
        json!({"upgradeType": "Beta", "batchSize": 2, "needWaitingForConfirm": true,
               "maxUnavailablePerUnit": 1}),
    );
    h.deployments()
        .create(&PostParams::default(), &cd)
        .await
        .unwrap();
    for k in 1..3 {
        wait_confirm_at(&h, "demo:1", k).await;
        confirm(&h).await;
    }
    wait_completed(&h, "demo:1").await;
    for cluster in ["hub", "dca", "dcb"] {
        assert!(
            !writes_by(&h, cluster, &leader.identity).is_empty(),
            "the holder wrote to {cluster}"
        );
    }
    assert!(reads_by(&h, &follower.identity) > 0, "the follower watches");
    assert_eq!(
        all_writes_by(&h, &follower.identity),
        Vec::<String>::new(),
        "the follower wrote nothing"
    );

    let (seen, recorder) = record_groups(&h);
    set_image(&h, "demo:2").await;
    wait_confirm_at(&h, "demo:2", 1).await;
    confirm(&h).await;
    let new = revision_of("demo:2");
    wait_rollout(&h, "group 2 in flight", |r, _| {
        r.current_batch == 2
            && r.revision.as_deref() == Some(new.as_str())
            && r.phase.as_deref() == Some("Progressing")
    })
    .await;
    assert_eq!(all_writes_by(&h, &follower.identity), Vec::<String>::new());

    leader.kill().await;
    let killed = Instant::now();
    let dead_writes = all_writes_by(&h, &leader.identity).len();
    wait_for("the other hub holds the Lease", WAIT, || async {
        (hub_lease_holder(&h).await.as_deref() == Some(follower.identity.as_str())).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took <= LEASE_DURATION + Duration::from_secs(1),
        "took over {took:?} after the kill (lease {LEASE_DURATION:?})"
    );
    wait_for("the new leader's gauge", WAIT, || async {
        follower.says_leader().await.then_some(())
    })
    .await;

    wait_confirm_at(&h, "demo:2", 2).await;
    confirm(&h).await;
    wait_completed(&h, "demo:2").await;
    assert_eq!(
        all_writes_by(&h, &leader.identity).len(),
        dead_writes,
        "the killed hub wrote nothing more"
    );
    assert!(
        !writes_by(&h, "hub", &follower.identity).is_empty()
            && !writes_by(&h, "dcb", &follower.identity).is_empty(),
        "the new leader finished the rollout"
    );
    recorder.abort();
    let seen = seen.lock().unwrap().clone();
    let mut upgrade: Vec<i32> = seen
        .iter()
        .rev()
        .take_while(|k| **k != 0)
        .copied()
        .collect();
    upgrade.reverse();
    assert_eq!(
        upgrade,
        [1, 2, 3],
        "no group skipped or repeated: {seen:?}; log of {}: {:?}",
        follower.identity,
        follower.log.lock().unwrap()
    );

    agents.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The member agent of `member`, identity `agent-<member>`, fast lease timings.
fn agent(h: &Hub, member: &str) -> JoinHandle<Result<(), cafe::member::MemberError>> {
    let options = MemberOptions {
        identity: format!("agent-{member}"),
        ..MemberOptions::fast()
    };
    tokio::spawn(cafe::member::run_with(
        h.agents[member].clone(),
        options,
        CancellationToken::new(),
    ))
}

#[tokio::test]
async fn a_member_whose_agent_stops_is_agent_not_running_and_its_rollout_freezes_until_it_returns()
{
    let mut h = Hub::start_with(common::TWO_MEMBERS, &[("dca", "DCA"), ("dcb", "DCB")]).await;
    let agents = h.run_member_agents(&["dca"]);
    // dcb's agent is run by hand, to be killed.
    h.stop_agent_lease("dcb").await;
    let dcb = agent(&h, "dcb");
    h.run_hub();
    h.wait_members_ready().await;
    let cd = rollout_deployment(
        8,
        json!({"upgradeType": "Beta", "batchSize": 2, "maxUnavailablePerUnit": 1}),
    );
    h.deployments()
        .create(&PostParams::default(), &cd)
        .await
        .unwrap();
    wait_completed(&h, "demo:1").await;

    // Killed: it renews its Lease no more.
    dcb.abort();
    let _ = dcb.await;
    let killed = Instant::now();
    let mc = h.wait_member("dcb", "False", "AgentNotRunning").await;
    let took = killed.elapsed();
    // The agent's Lease lasts 2 s (fast timings); the hub probes every 200 ms.
    assert!(took <= Duration::from_secs(4), "noticed after {took:?}");
    let message = ready_of(&mc).unwrap().message;
    for part in ["cafe-system/cafe-member", "agent-dcb", "not renewed since"] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }

    // A rollout now: nothing starts in dcb, and the rollout says why.
    let writes_before = h.set_writes("dcb");
    set_image(&h, "demo:2").await;
    let cd = wait_rollout(&h, "the rollout frozen", |r, _| {
        r.phase.as_deref() == Some("Stalled")
    })
    .await;
    assert!(
        condition(&cd, "Progressing")
            .is_some_and(|c| c.reason == "MemberUnavailable" && c.message.contains("dcb")),
        "the condition names the member: {:?}",
        condition(&cd, "Progressing")
    );
    let frozen_at = cd.status.unwrap().rollout.unwrap().current_batch;
    // While the agent stays down, no group starts and nothing is written to dcb.
    let api = h.deployments();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let k = api
            .get("demo")
            .await
            .unwrap()
            .status
            .unwrap()
            .rollout
            .unwrap()
            .current_batch;
        assert_eq!(k, frozen_at, "group {k} started while dcb's agent was down");
        assert_eq!(h.set_writes("dcb"), writes_before, "nothing written to dcb");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back: Ready again, and the rollout goes on to the end.
    let restarted = agent(&h, "dcb");
    h.wait_member("dcb", "True", "Probed").await;
    wait_completed(&h, "demo:2").await;
    h.stop_hub().await;
    restarted.abort();
    agents.cancel();
}

/// An outage hides the agent's Lease from the hub; what the agent did meanwhile is not held
/// against it: once the member answers again it is Ready, never reported AgentNotRunning.
#[tokio::test]
async fn an_outage_is_not_taken_for_a_stopped_agent() {
    let mut h = Hub::start_with(common::TWO_MEMBERS, &[("dca", "DCA"), ("dcb", "DCB")]).await;
    let agents = h.run_member_agents(&["dca", "dcb"]);
    h.run_hub();
    h.wait_members_ready().await;
    let reasons = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = reasons.clone();
    let mcs: Api<cafe::api::MemberCluster> = Api::all(h.hub.clone());
    let recorder = tokio::spawn(async move {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let mut s = watcher(mcs, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(mc)) = s.next().await {
            if mc.metadata.name.as_deref() == Some("dcb")
                && let Some(ready) = ready_of(&mc)
            {
                let mut v = seen.lock().unwrap();
                if v.last() != Some(&ready.reason) {
                    v.push(ready.reason);
                }
            }
        }
    });
    // Longer than the agent's Lease (2 s): the hub sees no renewal all that time.
    h.sim
        .cluster("dcb")
        .unwrap()
        .faults
        .outage(Duration::from_secs(5));
    h.wait_member("dcb", "False", "Unreachable").await;
    h.wait_member("dcb", "True", "Probed").await;
    // Some probes after the return, where a stale Lease clock would have spoken.
    let back = Instant::now();
    wait_for("3 s of probes after the return", WAIT, || async {
        (back.elapsed() >= Duration::from_secs(3)).then_some(())
    })
    .await;
    recorder.abort();
    let reasons = reasons.lock().unwrap().clone();
    assert!(
        !reasons.iter().any(|r| r == "AgentNotRunning"),
        "reported a running agent as stopped: {reasons:?}"
    );
    h.stop_hub().await;
    agents.cancel();
}
