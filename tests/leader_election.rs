//! Leader election through a Lease (`cafe::runtime::leader`) against a simulated API server,
//! through kube-rs: one holder at a time, release on shutdown, stepping down when the API
//! cannot be reached or refuses, and taking over only after the lease duration.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use cafe::api::labels::SYSTEM_NAMESPACE;
use cafe::runtime::leader::{Leadership, LeaseLock, LeaseTimings, run_election};
use cafe_sim::sim::Sim;
use common::{client, create_system_namespace, start_bare_sim, start_sim, wait_for};
use http::{Request, Response};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::client::Body;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LEASE: &str = "test-election";

struct Candidate {
    leadership: Leadership,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

fn candidate(client: kube::Client, identity: &str, timings: LeaseTimings) -> Candidate {
    let leadership = Leadership::elected();
    let stop = CancellationToken::new();
    let lock = LeaseLock {
        namespace: SYSTEM_NAMESPACE.to_string(),
        name: LEASE.to_string(),
        identity: identity.to_string(),
    };
    let task = tokio::spawn(run_election(
        client,
        lock,
        timings,
        leadership.clone(),
        stop.clone(),
    ));
    Candidate {
        leadership,
        stop,
        task,
    }
}

async fn holder(client: &kube::Client) -> Option<Lease> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    leases.get_opt(LEASE).await.ok().flatten()
}

fn holder_of(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

/// Waits until exactly one of `a`, `b` leads; returns (leader, follower).
async fn one_leads<'a>(a: &'a Candidate, b: &'a Candidate) -> (&'a Candidate, &'a Candidate) {
    wait_for("one candidate leads", Duration::from_secs(10), || async {
        match (a.leadership.is_leader(), b.leadership.is_leader()) {
            (true, false) => Some((a, b)),
            (false, true) => Some((b, a)),
            _ => None,
        }
    })
    .await
}

async fn sim() -> (Sim, kube::Client) {
    let sim = start_sim(common::ONE_MEMBER).await;
    let c = client(&sim, "dca").await;
    (sim, c)
}

/// An existing client whose requests fail while `cut` is set: one replica partitioned from the
/// API server while the others still reach it.
#[derive(Clone)]
struct Partitionable {
    client: kube::Client,
    cut: Arc<AtomicBool>,
}

impl tower_service::Service<Request<Body>> for Partitionable {
    type Response = Response<Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (client, cut) = (self.client.clone(), self.cut.load(Ordering::SeqCst));
        Box::pin(async move {
            if cut {
                return Err("partitioned from the API server".into());
            }
            Ok(client.send(request).await?)
        })
    }
}

#[tokio::test]
async fn one_of_two_candidates_holds_the_lease_and_the_lease_names_it() {
    let (_sim, c) = sim().await;
    let a = candidate(c.clone(), "a", LeaseTimings::fast());
    let b = candidate(c.clone(), "b", LeaseTimings::fast());
    let (leader, follower) = one_leads(&a, &b).await;
    let name = if std::ptr::eq(leader, &a) { "a" } else { "b" };
    let lease = holder(&c).await.expect("the Lease exists");
    assert_eq!(holder_of(&lease), name);
    let spec = lease.spec.unwrap();
    assert_eq!(spec.lease_duration_seconds, Some(2));
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
    // Over several renewals, never both, and the holder keeps it.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(leader.leadership.is_leader(), "the holder keeps leading");
        assert!(!follower.leadership.is_leader(), "never two leaders");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let renewed = holder(&c).await.unwrap().spec.unwrap();
    assert!(renewed.renew_time.unwrap().0 > spec.renew_time.unwrap().0);
    assert_eq!(
        renewed.acquire_time, spec.acquire_time,
        "renewing is not acquiring"
    );
}

#[tokio::test]
async fn a_cancelled_holder_releases_and_the_other_takes_over_well_within_the_lease_duration() {
    let (_sim, c) = sim().await;
    // A long lease: waiting it out would take 10 s.
    let timings = LeaseTimings {
        lease_duration: Duration::from_secs(10),
        renew_deadline: Duration::from_secs(5),
        retry_period: Duration::from_millis(250),
    };
    let a = candidate(c.clone(), "a", timings);
    wait_for("a leads", Duration::from_secs(10), || async {
        a.leadership.is_leader().then_some(())
    })
    .await;
    let b = candidate(c.clone(), "b", timings);
    let transitions = holder(&c).await.unwrap().spec.unwrap().lease_transitions;
    let stopped = Instant::now();
    a.stop.cancel();
    a.task.await.unwrap();
    assert!(!a.leadership.is_leader());
    wait_for("b leads", Duration::from_secs(10), || async {
        b.leadership.is_leader().then_some(())
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "took over after {took:?}, not at the release"
    );
    let lease = holder(&c).await.unwrap();
    assert_eq!(holder_of(&lease), "b");
    assert_eq!(
        lease.spec.unwrap().lease_transitions,
        transitions.map(|t| t + 1)
    );
}

#[tokio::test]
async fn a_holder_cut_off_steps_down_within_the_renew_deadline_and_the_other_waits_out_the_lease() {
    let (_sim, c) = sim().await;
    let timings = LeaseTimings::fast();
    let cut = Arc::new(AtomicBool::new(false));
    let partitionable = kube::Client::new(
        Partitionable {
            client: c.clone(),
            cut: cut.clone(),
        },
        "default",
    );
    let a = candidate(partitionable, "a", timings);
    wait_for("a leads", Duration::from_secs(10), || async {
        a.leadership.is_leader().then_some(())
    })
    .await;
    let b = candidate(c.clone(), "b", timings);
    cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let mut stepped_down = None;
    let mut took_over = None;
    while took_over.is_none() {
        let now = Instant::now();
        assert!(now < cut_at + Duration::from_secs(10), "b never took over");
        if stepped_down.is_none() && !a.leadership.is_leader() {
            stepped_down = Some(now);
        }
        if b.leadership.is_leader() {
            took_over = Some(now);
            assert!(
                stepped_down.is_some(),
                "b leads while a still believes it leads"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (stepped_down, took_over) = (stepped_down.unwrap(), took_over.unwrap());
    assert!(
        stepped_down - cut_at <= timings.renew_deadline + Duration::from_millis(50),
        "a stepped down {:?} after it was cut off",
        stepped_down - cut_at
    );
    // a's last renewal was at most one retry period before the cut; b counts from when it saw it.
    assert!(
        took_over - cut_at >= timings.lease_duration - timings.retry_period,
        "b took over {:?} after the cut, before the lease could expire",
        took_over - cut_at
    );
    assert_eq!(holder_of(&holder(&c).await.unwrap()), "b");
    // a reaches the API again: it follows.
    cut.store(false, Ordering::SeqCst);
    let until = Instant::now() + timings.lease_duration;
    while Instant::now() < until {
        assert!(!a.leadership.is_leader(), "a must not lead again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_holder_that_cannot_reach_the_api_server_steps_down_within_the_renew_deadline() {
    let (sim, c) = sim().await;
    let timings = LeaseTimings::fast();
    let a = candidate(c.clone(), "a", timings);
    wait_for("a leads", Duration::from_secs(10), || async {
        a.leadership.is_leader().then_some(())
    })
    .await;
    let mut leader_seen = a.leadership.watch();
    sim.cluster("dca")
        .unwrap()
        .faults
        .outage(Duration::from_secs(4));
    let outage = Instant::now();
    wait_for(
        "a steps down",
        timings.renew_deadline + Duration::from_millis(200),
        || async { (!a.leadership.is_leader()).then_some(()) },
    )
    .await;
    assert!(outage.elapsed() <= timings.renew_deadline + Duration::from_millis(200));
    // The flag others follow said so too.
    tokio::time::timeout(Duration::from_secs(1), leader_seen.wait_for(|l| !*l))
        .await
        .expect("the leadership watch turns false")
        .unwrap();
    // Never leading again while the API cannot be reached.
    while outage.elapsed() < Duration::from_millis(3800) {
        assert!(!a.leadership.is_leader(), "leading without the API");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Back: a takes its own Lease again.
    wait_for("a leads again", Duration::from_secs(10), || async {
        a.leadership.is_leader().then_some(())
    })
    .await;
}

#[tokio::test]
async fn api_errors_during_renewal_never_leave_a_stale_leader() {
    let (sim, c) = sim().await;
    let timings = LeaseTimings::fast();
    let a = candidate(c.clone(), "a", timings);
    let b = candidate(c.clone(), "b", timings);
    let (leader, _) = one_leads(&a, &b).await;
    let faults = &sim.cluster("dca").unwrap().faults;
    faults.inject_errors(500, 1.0, Duration::from_secs(4));
    let errors = Instant::now();
    wait_for(
        "the holder steps down",
        timings.renew_deadline + Duration::from_millis(200),
        || async { (!leader.leadership.is_leader()).then_some(()) },
    )
    .await;
    while errors.elapsed() < Duration::from_millis(3800) {
        assert!(
            !a.leadership.is_leader() && !b.leadership.is_leader(),
            "leading while every renewal fails"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    one_leads(&a, &b).await;
}

#[tokio::test]
async fn without_the_namespace_nobody_leads_and_the_election_starts_once_it_exists() {
    let sim = start_bare_sim(common::ONE_MEMBER).await;
    let c = client(&sim, "dca").await;
    let a = candidate(c.clone(), "a", LeaseTimings::fast());
    // Several attempts, each refused: the candidate never creates the namespace itself.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert!(!a.leadership.is_leader(), "leading without a Lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    assert!(
        namespaces
            .get_opt(SYSTEM_NAMESPACE)
            .await
            .unwrap()
            .is_none()
    );
    create_system_namespace(&c).await;
    wait_for("a leads", Duration::from_secs(10), || async {
        a.leadership.is_leader().then_some(())
    })
    .await;
    assert_eq!(holder_of(&holder(&c).await.unwrap()), "a");
}
