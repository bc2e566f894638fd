//! Chaos: Beta + batches + confirm rollouts driven to completion while faults the controllers
//! cannot tell from real ones hit them, the invariant checker (tests/invariants) watching all of
//! it, the controllers on their `deploy/` ServiceAccounts with RBAC enforced (tests/hub_support).
//!
//! Each scenario's schedule is drawn from a seed, printed at its start; replay one with
//! `CAFE_CHAOS_SEED=<seed> cargo test --test reliability chaos::<scenario>`. Without it each scenario uses
//! its own fixed seed, so that CI runs are repeatable; docs/reliability.md says how to explore
//! more seeds.

use crate::{common, hub_support, invariants};
use hub_support::{revision_of, template};

use std::collections::BTreeMap;
use std::time::Duration;

use cafe::api::CafeDeployment;
use cafe::api::labels::UPGRADE_CONFIRMED;
use hub_support::Hub;
use kube::api::{Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most a scenario may take, faults included, on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(240);
const MEMBERS: [&str; 2] = ["dca", "dcb"];

/// The seed of a scenario: `CAFE_CHAOS_SEED`, else its own fixed one; printed for replay.
fn seed(scenario: &str, fixed: u64) -> StdRng {
    let seed = std::env::var("CAFE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(fixed);
    eprintln!(
        "chaos {scenario}: seed {seed} (replay: CAFE_CHAOS_SEED={seed} cargo test --test reliability chaos::{scenario})"
    );
    StdRng::seed_from_u64(seed)
}

/// 8 replicas over DCA and DCB: Beta (1 + 1), then groups of 2, each confirmed; one pod per
/// unit unavailable at most.
fn demo(failover: bool) -> CafeDeployment {
    let mut cd = hub_support::rolling_deployment(
        8,
        json!({"upgradeType": "Beta", "batchSize": 2, "needWaitingForConfirm": true,
               "maxUnavailablePerUnit": 1}),
    );
    if failover {
        cd.spec.topology.failover = Some(
            serde_json::from_value(json!({"enable": true, "tolerationSeconds": 3}))
                .expect("failover"),
        );
    }
    cd
}

/// One fault, at its moment.
#[derive(Clone, Debug)]
enum Fault {
    /// The hub controller aborted where it stands, restarted after a pause.
    KillHub { down: Duration },
    /// A member agent aborted, restarted after a pause.
    KillAgent {
        member: &'static str,
        down: Duration,
    },
    /// Every open watch of every cluster closed.
    CutWatches,
    /// Every cluster's watch history forgotten: old resourceVersions get 410.
    Compact,
    /// A member refuses connections for a while.
    Outage {
        member: &'static str,
        down: Duration,
    },
}

struct Chaos {
    h: Hub,
    agents: BTreeMap<&'static str, JoinHandle<Result<(), cafe::member::MemberError>>>,
    checker: Option<invariants::Checker>,
    /// (offset from the start, fault), in order.
    schedule: Vec<(Duration, Fault)>,
    started: Instant,
    confirms: u32,
}

impl Chaos {
    async fn start(cd: &CafeDeployment, schedule: Vec<(Duration, Fault)>) -> Chaos {
        let mut h = Hub::start_with(common::TWO_MEMBERS, &[("dca", "DCA"), ("dcb", "DCB")]).await;
        let mut agents = BTreeMap::new();
        for member in MEMBERS {
            h.stop_agent_lease(member).await;
            agents.insert(member, agent(&h, member));
        }
        h.run_hub();
        h.wait_members_ready().await;
        let checker =
            invariants::Checker::start(h.hub.clone(), h.watched(&[("DCA", "dca"), ("DCB", "dcb")]));
        h.deployments()
            .create(&PostParams::default(), cd)
            .await
            .expect("created");
        Chaos {
            h,
            agents,
            checker: Some(checker),
            schedule,
            started: Instant::now(),
            confirms: 0,
        }
    }

    async fn inject(&mut self, fault: &Fault) {
        match fault {
            Fault::KillHub { down } => {
                self.h.kill_hub().await;
                tokio::time::sleep(*down).await;
                self.h.run_hub();
            }
            Fault::KillAgent { member, down } => {
                if let Some(task) = self.agents.remove(member) {
                    task.abort();
                    let _ = task.await;
                }
                tokio::time::sleep(*down).await;
                self.agents.insert(member, agent(&self.h, member));
            }
            Fault::CutWatches => {
                for cluster in ["hub", "dca", "dcb"] {
                    self.h
                        .sim
                        .cluster(cluster)
                        .expect("cluster")
                        .faults
                        .cut_watches();
                }
            }
            Fault::Compact => {
                for cluster in ["hub", "dca", "dcb"] {
                    self.h
                        .sim
                        .cluster(cluster)
                        .expect("cluster")
                        .store
                        .write(|s| s.compact());
                }
            }
            Fault::Outage { member, down } => {
                self.h
                    .sim
                    .cluster(member)
                    .expect("cluster")
                    .faults
                    .outage(*down);
            }
        }
    }

    /// Rolls out `images` one after the other, confirming each group as a release engineer
    /// would (only when the rollout waits for it), injecting the schedule's faults on time; ends
    /// when every image is rolled out and every fault injected.
    async fn run(&mut self, images: &[&str]) {
        let mut next = 0;
        let mut image = 0;
        self.set_image(images[0]).await;
        let deadline = self.started + DEADLINE;
        loop {
            assert!(
                Instant::now() < deadline,
                "not done after {DEADLINE:?}: image {} of {images:?}, {next} of {} faults",
                image + 1,
                self.schedule.len()
            );
            if let Some((at, fault)) = self.schedule.get(next).cloned()
                && self.started.elapsed() >= at
            {
                self.inject(&fault).await;
                next += 1;
                continue;
            }
            let Ok(cd) = self.h.deployments().get("demo").await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let revision = revision_of(images[image]);
            let rollout = cd.status.as_ref().and_then(|s| s.rollout.clone());
            let on_it = rollout
                .as_ref()
                .is_some_and(|r| r.revision.as_deref() == Some(revision.as_str()));
            let phase = rollout.as_ref().and_then(|r| r.phase.clone());
            let confirmed = cd
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(UPGRADE_CONFIRMED))
                == Some(&"true".to_string());
            if on_it && phase.as_deref() == Some("WaitingForConfirm") && !confirmed {
                self.confirm().await;
            } else if on_it && phase.as_deref() == Some("Completed") {
                if image + 1 < images.len() {
                    image += 1;
                    self.set_image(images[image]).await;
                } else if next >= self.schedule.len() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn set_image(&self, image: &str) {
        // Retried: the hub cluster may be answering with injected errors.
        common::wait_for(
            &format!("image {image} set"),
            Duration::from_secs(30),
            || async {
                self.h
                    .deployments()
                    .patch(
                        "demo",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"template": template(image)}})),
                    )
                    .await
                    .ok()
            },
        )
        .await;
    }

    async fn confirm(&mut self) {
        let done = self
            .h
            .deployments()
            .patch(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {UPGRADE_CONFIRMED: "true"}}})),
            )
            .await;
        if done.is_ok() {
            self.confirms += 1;
        }
    }

    /// Faults off; the system settles (every member Ready, no loan, all 8 replicas available
    /// on the last image); the checker's verdict.
    async fn finish(mut self, image: &str) {
        for cluster in ["hub", "dca", "dcb"] {
            let faults = &self.h.sim.cluster(cluster).expect("cluster").faults;
            faults.inject_error_mix(&[], 0.0, Duration::ZERO);
            faults.slow(Duration::ZERO, Duration::ZERO);
        }
        // Outages run their course, and the hub sees every member again.
        common::wait_for("the outages end", DEADLINE, || async {
            MEMBERS
                .iter()
                .all(|m| !self.h.sim.cluster(m).expect("cluster").faults.in_outage())
                .then_some(())
        })
        .await;
        for member in MEMBERS {
            self.h.wait_member(member, "True", "Probed").await;
        }
        let revision = revision_of(image);
        let settled = common::wait_for("the system settles", DEADLINE, || async {
            let cd = self.h.deployments().get("demo").await.ok()?;
            let status = cd.status?;
            let rollout = status.rollout?;
            (rollout.revision.as_deref() == Some(revision.as_str())
                && rollout.phase.as_deref() == Some("Completed")
                && status.loans.is_empty()
                && status.available_replicas == 8
                && status.updated_replicas == 8)
                .then_some(())
        });
        settled.await;
        assert!(self.confirms > 0, "the rollouts waited for confirmations");
        if let Some(checker) = self.checker.take() {
            checker.assert_clean().await;
        }
        self.h.kill_hub().await;
        for (_, task) in std::mem::take(&mut self.agents) {
            task.abort();
        }
    }
}

/// The member agent of `member` on its ServiceAccount, identity `agent-<member>`.
fn agent(h: &Hub, member: &str) -> JoinHandle<Result<(), cafe::member::MemberError>> {
    tokio::spawn(cafe::member::run_with(
        h.agents[member].clone(),
        cafe::member::MemberOptions {
            identity: format!("agent-{member}"),
            ..cafe::member::MemberOptions::fast()
        },
        CancellationToken::new(),
    ))
}

/// `count` faults made by `make`, at random moments 0.3-1.5 s apart.
fn spread(
    rng: &mut StdRng,
    count: usize,
    mut make: impl FnMut(&mut StdRng) -> Fault,
) -> Vec<(Duration, Fault)> {
    let mut at = Duration::ZERO;
    (0..count)
        .map(|_| {
            at += Duration::from_millis(rng.random_range(300..1500));
            (at, make(rng))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_killed_at_20_random_moments() {
    let mut rng = seed("the_hub_killed_at_20_random_moments", 1);
    let schedule = spread(&mut rng, 20, |rng| Fault::KillHub {
        down: Duration::from_millis(rng.random_range(0..500)),
    });
    let mut chaos = Chaos::start(&demo(false), schedule).await;
    chaos.run(&["demo:2", "demo:3"]).await;
    chaos.finish("demo:3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_agent_killed_at_20_random_moments() {
    let mut rng = seed("each_member_agent_killed_at_20_random_moments", 2);
    let schedule = spread(&mut rng, 20, |rng| Fault::KillAgent {
        member: MEMBERS[rng.random_range(0..MEMBERS.len())],
        down: Duration::from_millis(rng.random_range(0..500)),
    });
    let mut chaos = Chaos::start(&demo(false), schedule).await;
    chaos.run(&["demo:2", "demo:3"]).await;
    chaos.finish("demo:3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_cut_and_history_compacted_every_few_seconds() {
    let mut rng = seed("watches_cut_and_history_compacted_every_few_seconds", 3);
    let schedule = spread(&mut rng, 16, |rng| {
        if rng.random_bool(0.5) {
            Fault::CutWatches
        } else {
            Fault::Compact
        }
    });
    let mut chaos = Chaos::start(&demo(false), schedule).await;
    chaos.run(&["demo:2", "demo:3"]).await;
    chaos.finish("demo:3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_in_ten_answered_500_409_or_429() {
    let _ = seed("one_call_in_ten_answered_500_409_or_429", 4);
    let mut chaos = Chaos::start(&demo(false), vec![]).await;
    for cluster in ["hub", "dca", "dcb"] {
        chaos
            .h
            .sim
            .cluster(cluster)
            .expect("cluster")
            .faults
            .inject_error_mix(&[500, 409, 429], 0.1, DEADLINE);
    }
    chaos.run(&["demo:2"]).await;
    chaos.finish("demo:2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_members_answer_after_up_to_500_ms() {
    let _ = seed("slow_members_answer_after_up_to_500_ms", 5);
    let mut chaos = Chaos::start(&demo(false), vec![]).await;
    for member in MEMBERS {
        chaos
            .h
            .sim
            .cluster(member)
            .expect("cluster")
            .faults
            .slow(Duration::from_millis(500), DEADLINE);
    }
    chaos.run(&["demo:2"]).await;
    chaos.finish("demo:2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_unreachable_shorter_and_longer_than_its_failover_toleration() {
    let mut rng = seed(
        "a_member_unreachable_shorter_and_longer_than_its_failover_toleration",
        6,
    );
    // Toleration 3 s: one outage below it, one well past it (failover, then move back).
    let member = MEMBERS[rng.random_range(0..MEMBERS.len())];
    let first = Duration::from_millis(rng.random_range(1500..4000));
    let schedule = vec![
        (
            first,
            Fault::Outage {
                member,
                down: Duration::from_millis(1500),
            },
        ),
        (
            first + Duration::from_secs(6),
            Fault::Outage {
                member,
                down: Duration::from_secs(8),
            },
        ),
    ];
    let mut chaos = Chaos::start(&demo(true), schedule).await;
    chaos.run(&["demo:2", "demo:3"]).await;
    chaos.finish("demo:3").await;
}

/// A hub client whose connection can be cut, as a network partition between one hub replica
/// and the hub cluster would: every request fails at the transport while it is.
#[derive(Clone)]
struct Cuttable {
    client: kube::Client,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl tower_service::Service<http::Request<kube::client::Body>> for Cuttable {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, kube::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), kube::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let cut = self.cut.load(std::sync::atomic::Ordering::SeqCst);
        let client = self.client.clone();
        Box::pin(async move {
            if cut {
                return Err(kube::Error::Service(
                    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "partitioned").into(),
                ));
            }
            client.send(request).await
        })
    }
}

/// The member writes (not reads, not Leases) the hub replica `identity` made, with their times.
fn member_writes_by(h: &Hub, identity: &str) -> Vec<std::time::Instant> {
    let agent = format!("({identity})");
    MEMBERS
        .iter()
        .flat_map(|m| h.sim.calls(m))
        .filter(|c| c.user_agent.ends_with(&agent))
        .filter(|c| !matches!(c.verb.as_str(), "get" | "list" | "watch"))
        .filter(|c| c.resource != "leases" && (200..300).contains(&c.code))
        .map(|c| c.at)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_race_and_the_leader_cut_off_from_the_hub_stops_before_the_other_starts() {
    let mut rng = seed(
        "two_hubs_race_and_the_leader_cut_off_from_the_hub_stops_before_the_other_starts",
        7,
    );
    let mut chaos = Chaos::start(&demo(false), vec![]).await;
    // The fixture's hub is replaced by two replicas, hub-a and hub-b.
    chaos.h.kill_hub().await;
    let mut replicas = vec![];
    for identity in ["hub-a", "hub-b"] {
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = kube::Client::new(
            Cuttable {
                client: chaos.h.controller.clone(),
                cut: cut.clone(),
            },
            "default",
        );
        let leadership = cafe::runtime::leader::Leadership::elected();
        let options = cafe::hub::HubOptions {
            identity: identity.to_string(),
            leadership: leadership.clone(),
            ..hub_support::options()
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(cafe::hub::run_with(client, options, stop.clone()));
        replicas.push((identity, cut, leadership, stop, task));
    }
    let leader = common::wait_for("a replica leads", Duration::from_secs(30), || async {
        replicas.iter().position(|r| r.2.is_leader())
    })
    .await;
    // Cut off mid-rollout, at a random moment.
    chaos.set_image("demo:2").await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
    let cut_at = std::time::Instant::now();
    replicas[leader]
        .1
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (cut_off, other) = (replicas[leader].0, replicas[1 - leader].0);
    common::wait_for(
        "the other replica leads",
        Duration::from_secs(30),
        || async { replicas[1 - leader].2.is_leader().then_some(()) },
    )
    .await;
    chaos.run(&["demo:2", "demo:3"]).await;

    // The cut-off replica still reached the members; it must have stopped writing to them
    // before the other began.
    let old = member_writes_by(&chaos.h, cut_off);
    let new = member_writes_by(&chaos.h, other);
    let first_new = new.iter().min().copied().expect("the new leader wrote");
    let last_old = old.iter().max().copied();
    if let Some(last_old) = last_old {
        assert!(
            last_old < first_new,
            "{cut_off} wrote to a member {:?} after {other} began",
            last_old - first_new
        );
    }
    let renew = hub_support::options().lease.renew_deadline;
    assert!(
        old.iter()
            .all(|t| t.saturating_duration_since(cut_at) <= renew),
        "{cut_off} wrote more than the renew deadline ({renew:?}) after it was cut off"
    );
    for (_, _, _, stop, task) in replicas {
        stop.cancel();
        task.abort();
    }
    // The fixture's own hub ends the scenario (finish kills it).
    chaos.h.run_hub();
    chaos.finish("demo:3").await;
}
