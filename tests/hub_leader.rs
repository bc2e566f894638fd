//! Hub replicas end to end: two hubs (`cafe::hub::run_with` in this process, identities hub-a
//! and hub-b) against one hub cluster with two member agents. Only the holder of Lease
//! `cafe-system/cafe-hub` writes; killing it mid-rollout hands the rollout to the other, which
//! continues it with no group repeated or skipped. A member whose agent stops is
//! AgentNotRunning and its rollout freezes until the agent is back.

mod common;
mod hub_support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use cafe::api::labels::{SYSTEM_NAMESPACE, UPGRADE_CONFIRMED};
use cafe::api::{CafeDeployment, RolloutStatus};
use cafe::hub::{HUB_LEASE, HubOptions};
use cafe::member::MemberOptions;
use cafe::plan::revision::revision_hash;
use cafe::runtime::leader::Leadership;
use common::wait_for;
use http::{Method, Request, Response};
use hub_support::{Hub, condition, ready_of};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Rollouts wait on real pods; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

/// Counts the writes one hub sends to the hub cluster, its own Lease aside.
#[derive(Clone)]
struct CountWrites {
    client: kube::Client,
    writes: Arc<AtomicU64>,
}

impl tower_service::Service<Request<Body>> for CountWrites {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), kube::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let write = !matches!(*request.method(), Method::GET | Method::HEAD);
        if write && !request.uri().path().contains("/leases") {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        let client = self.client.clone();
        Box::pin(async move { client.send(request).await })
    }
}

/// One hub replica running in this process.
struct Replica {
    identity: String,
    leadership: Leadership,
    /// Writes to the hub cluster.
    hub_writes: Arc<AtomicU64>,
    task: Option<JoinHandle<Result<(), cafe::hub::HubError>>>,
    stop: CancellationToken,
}

impl Replica {
    fn start(h: &Hub, identity: &str) -> Replica {
        let hub_writes = Arc::new(AtomicU64::new(0));
        let client = kube::Client::new(
            CountWrites {
                client: h.hub.clone(),
                writes: hub_writes.clone(),
            },
            "default",
        );
        let leadership = Leadership::elected();
        let options = HubOptions {
            identity: identity.to_string(),
            leadership: leadership.clone(),
            ..hub_support::options()
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(cafe::hub::run_with(client, options, stop.clone()));
        Replica {
            identity: identity.to_string(),
            leadership,
            hub_writes,
            task: Some(task),
            stop,
        }
    }

    /// Every write this replica made: to the hub cluster, and (through its write gate) to the
    /// members.
    fn writes(&self) -> (u64, u64) {
        (
            self.hub_writes.load(Ordering::SeqCst),
            self.leadership.writes(),
        )
    }

    /// Killed where it stands, as a crashed process: no release of the Lease.
    async fn kill(&mut self) {
        let task = self.task.take().expect("running");
        task.abort();
        let _ = task.await;
    }

    async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            self.stop.cancel();
            let _ = tokio::time::timeout(WAIT, task).await;
        }
    }
}

fn rollout_deployment(replicas: i32, strategy: Value) -> CafeDeployment {
    let mut cd: CafeDeployment = serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": template("demo:1"),
            "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"], "unitReplicas": {}},
            "strategy": strategy,
        },
    }))
    .expect("a CafeDeployment");
    cd.spec.min_ready_seconds = 1;
    cd
}

fn template(image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "demo"}},
        "spec": {"containers": [{"name": "app", "image": image,
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    })
}

fn revision_of(image: &str) -> String {
    revision_hash(&serde_json::from_value(template(image)).unwrap())
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
    let mut a = Replica::start(&h, "hub-a");
    let mut b = Replica::start(&h, "hub-b");
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
    assert!(leader.leadership.is_leader() && !follower.leadership.is_leader());

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
    let (leader_hub, leader_members) = leader.writes();
    assert!(
        leader_hub > 0 && leader_members > 0,
        "the holder wrote: {:?}",
        leader.writes()
    );
    assert_eq!(follower.writes(), (0, 0), "the follower wrote nothing");

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
    assert_eq!(follower.writes(), (0, 0), "the follower wrote nothing");

    leader.kill().await;
    let killed = Instant::now();
    let dead_writes = leader.writes();
    let lease_duration = hub_support::options().lease.lease_duration;
    wait_for("the other hub leads", WAIT, || async {
        follower.leadership.is_leader().then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took <= lease_duration + Duration::from_secs(1),
        "took over {took:?} after the kill (lease {lease_duration:?})"
    );
    assert_eq!(hub_lease_holder(&h).await, Some(follower.identity.clone()));

    wait_confirm_at(&h, "demo:2", 2).await;
    confirm(&h).await;
    wait_completed(&h, "demo:2").await;
    assert_eq!(
        leader.writes(),
        dead_writes,
        "the killed hub wrote nothing more"
    );
    assert!(follower.writes().0 > 0 && follower.writes().1 > 0);
    recorder.abort();
    let seen = seen.lock().unwrap().clone();
    let mut upgrade: Vec<i32> = seen
        .iter()
        .rev()
        .take_while(|k| **k != 0)
        .copied()
        .collect();
    upgrade.reverse();
    assert_eq!(upgrade, [1, 2, 3], "no group skipped or repeated: {seen:?}");

    b.stop().await;
    a.stop().await;
    agents.cancel();
}

/// The member agent of `member`, identity `agent-<member>`, fast lease timings.
fn agent(h: &Hub, member: &str) -> JoinHandle<Result<(), cafe::member::MemberError>> {
    let options = MemberOptions {
        identity: format!("agent-{member}"),
        ..MemberOptions::fast()
    };
    tokio::spawn(cafe::member::run_with(
        h.members[member].clone(),
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
