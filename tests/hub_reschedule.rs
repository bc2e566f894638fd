//! Capacity follows demand, end to end with real pods: a unit short of room lends its
//! unschedulable replicas to a unit with room and takes them back when room returns (the
//! borrower lets go only after the lender's pods serve); a member lost for longer than its
//! toleration has its replicas carried by the others; loans survive a hub restart.

mod common;
mod hub_support;
mod invariants;
mod pod_timeline;

use std::collections::BTreeMap;
use std::time::Duration;

use cafe::api::labels::UNIT;
use cafe::api::{CafeDeployment, Loan, MemberCluster};
use common::wait_for;
use hub_support::{Hub, condition, ready_of};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Resource;
use kube::api::{Api, ListParams, PostParams};
use pod_timeline::{Snap, Timeline, serving};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// DCA has room for 10 pods of 100m CPU, DCB's node for only 2.
const SHORT_DCB: &str = r#"
kubelet: {startMillis: 50, restartMillis: 50}
clusters:
  - name: hub
    role: hub
  - name: dca
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 1, cpu: "1", memory: 16Gi, pods: 110}]
  - name: dcb
    role: member
    units: {DataCenter: DCB}
    nodes: [{count: 1, cpu: "200m", memory: 16Gi, pods: 110}]
"#;

const ROOMY: &str = r#"
kubelet: {startMillis: 50, restartMillis: 50}
clusters:
  - name: hub
    role: hub
  - name: dca
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 2, cpu: "8", memory: 16Gi, pods: 110}]
  - name: dcb
    role: member
    units: {DataCenter: DCB}
    nodes: [{count: 2, cpu: "8", memory: 16Gi, pods: 110}]
"#;

const UNITS: [(&str, &str); 2] = [("dca", "DCA"), ("dcb", "DCB")];

fn deployment(replicas: i32, topology: Value) -> CafeDeployment {
    let mut t = json!({"unitType": "DataCenter", "values": ["DCA", "DCB"]});
    for (k, v) in topology.as_object().unwrap() {
        t[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": {
                "metadata": {"labels": {"app": "demo"}},
                "spec": {"containers": [{"name": "app", "image": "demo:1",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
            },
            "topology": t,
            "strategy": {"upgradeType": "Batch", "batchSize": "100%", "maxUnavailablePerUnit": 1},
        },
    }))
    .expect("a CafeDeployment")
}

async fn start(config: &str, cd: &CafeDeployment) -> (Hub, tokio_util::sync::CancellationToken) {
    let mut h = Hub::start_with(config, &UNITS).await;
    let agents = h.run_member_agents(&["dca", "dcb"]);
    h.run_hub();
    h.wait_members_ready().await;
    h.deployments()
        .create(&PostParams::default(), cd)
        .await
        .unwrap();
    (h, agents)
}

async fn serving_in(h: &Hub, member: &str) -> usize {
    let pods: Api<Pod> = Api::namespaced(h.members[member].clone(), "default");
    pods.list(&ListParams::default().labels(UNIT))
        .await
        .map(|l| l.items.iter().filter(|p| serving(p)).count())
        .unwrap_or(0)
}

/// Waits until DCA and DCB serve exactly these numbers of pods.
async fn wait_serving(h: &Hub, dca: usize, dcb: usize) {
    wait_for(
        &format!("DCA {dca} and DCB {dcb} serving"),
        WAIT,
        || async {
            (serving_in(h, "dca").await == dca && serving_in(h, "dcb").await == dcb).then_some(())
        },
    )
    .await;
}

async fn loans(h: &Hub) -> Vec<Loan> {
    h.deployments()
        .get("demo")
        .await
        .ok()
        .and_then(|cd| cd.status)
        .map(|s| s.loans)
        .unwrap_or_default()
}

async fn set_replicas(h: &Hub, member: &str) -> i32 {
    h.sets(member).get("demo").await.unwrap().spec.replicas
}

/// The fewest pods serving across both members at any instant both timelines saw, from the
/// first instant at which `floor` served.
fn fewest_serving(timelines: &[&Timeline], floor: usize) -> usize {
    let mut all: Vec<Snap> = timelines.iter().flat_map(|t| t.snaps()).collect();
    all.sort_by_key(|s| s.at);
    let mut now: BTreeMap<String, Snap> = BTreeMap::new();
    let mut started = false;
    let mut fewest = usize::MAX;
    for s in all {
        if s.gone {
            now.remove(&s.uid);
        } else {
            now.insert(s.uid.clone(), s);
        }
        let serving = now.values().filter(|s| s.serving()).count();
        started |= serving >= floor;
        if started {
            fewest = fewest.min(serving);
        }
    }
    fewest
}

#[tokio::test]
async fn a_unit_short_of_room_lends_its_replicas_and_takes_them_back_when_a_node_arrives() {
    let cd = deployment(
        10,
        json!({"autoReschedule": {"enable": true, "initialDelaySeconds": 2, "stabilizationSeconds": 2}}),
    );
    let (mut h, agents) = start(SHORT_DCB, &cd).await;

    // DCB fits 2 of its 5; after 2 s its other 3 run in DCA.
    wait_serving(&h, 8, 2).await;
    let lent = loans(&h).await;
    assert_eq!(lent.len(), 1, "{lent:?}");
    assert_eq!(
        (lent[0].from.as_str(), lent[0].to.as_str(), lent[0].replicas),
        ("DCB", "DCA", 3)
    );
    assert_eq!(lent[0].reason, "Unschedulable");
    let cd = h.deployments().get("demo").await.unwrap();
    let units = cd.status.clone().unwrap().units;
    assert_eq!((units[1].name.as_str(), units[1].lent_replicas), ("DCB", 3));
    assert_eq!(
        (units[0].name.as_str(), units[0].borrowed_replicas),
        ("DCA", 3)
    );
    assert!(condition(&cd, "Rescheduled").is_some_and(|c| c.status == "True"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
        .args(["status", "demo", "--kubeconfig"])
        .arg(
            h.sim
                .publish(
                    &std::env::temp_dir().join(format!("cafe-resched-{}", std::process::id())),
                    Some("hub"),
                )
                .await
                .unwrap(),
        )
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DCB lent 3"),
        "cafe status shows the loan: {text}"
    );
    // Each unit's target after the loan: DCA 8 (5+3), DCB 2 (5-3).
    assert!(text.contains("8 (5+3 borrowed)"), "{text}");
    assert!(text.contains("2 (5-3 lent)"), "{text}");
    // Every replica serves, loans or not: Available, as `kubectl wait` sees it.
    wait_for("Available while DCB lends 3", WAIT, || async {
        let cd = h.deployments().get("demo").await.ok()?;
        condition(&cd, "Available")
            .is_some_and(|c| c.status == "True")
            .then_some(())
    })
    .await;

    // A hub restart neither forgets nor repeats the loan. A harmless spec change (a new
    // generation) proves the new hub has reconciled the CafeDeployment.
    let writes = (h.set_writes("dca"), h.set_writes("dcb"));
    h.kill_hub().await;
    h.run_hub();
    let changed = h
        .deployments()
        .patch(
            "demo",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"spec": {"strategy": {"progressDeadlineSeconds": 601}}}),
            ),
        )
        .await
        .unwrap();
    wait_for(
        "the new hub to observe the new generation",
        WAIT,
        || async {
            let cd = h.deployments().get("demo").await.ok()?;
            (cd.status?.observed_generation == changed.meta().generation).then_some(())
        },
    )
    .await;
    assert_eq!(loans(&h).await, lent, "the same loan after the restart");
    assert_eq!(
        (set_replicas(&h, "dca").await, set_replicas(&h, "dcb").await),
        (8, 2)
    );
    assert_eq!(
        (h.set_writes("dca"), h.set_writes("dcb")),
        writes,
        "the restarted hub wrote no InPlaceSet"
    );

    // A Node joins DCB: the 3 go back, DCB first, DCA only once DCB's serve.
    let dca = Timeline::start(h.members["dca"].clone(), "default").await;
    let dcb = Timeline::start(h.members["dcb"].clone(), "default").await;
    let nodes: Api<Node> = Api::all(h.members["dcb"].clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "dcb-node-2"}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    wait_serving(&h, 5, 5).await;
    wait_for("the loan ended", WAIT, || async {
        loans(&h).await.is_empty().then_some(())
    })
    .await;
    let fewest = fewest_serving(&[&dca, &dcb], 10);
    assert!(
        fewest >= 10,
        "only {fewest} pods served at some instant during the return"
    );
    let cd = h.deployments().get("demo").await.unwrap();
    assert!(condition(&cd, "Rescheduled").is_none());
    dca.stop();
    dcb.stop();
    h.stop_hub().await;
    agents.cancel();
}

#[tokio::test]
async fn a_member_lost_past_its_toleration_has_its_replicas_carried_until_it_returns() {
    let cd = deployment(
        6,
        json!({"failover": {"enable": true, "tolerationSeconds": 3}}),
    );
    let (mut h, agents) = start(ROOMY, &cd).await;
    wait_serving(&h, 3, 3).await;
    let dcb_generation = h.sets("dcb").get("demo").await.unwrap().meta().generation;
    let dca = Timeline::start(h.members["dca"].clone(), "default").await;

    h.sim
        .cluster("dcb")
        .unwrap()
        .faults
        .outage(Duration::from_secs(15));
    // DCA carries DCB's 3.
    wait_for("DCA runs 6", WAIT, || async {
        (serving_in(&h, "dca").await == 6).then_some(())
    })
    .await;
    let carried = loans(&h).await;
    assert_eq!(carried.len(), 1);
    assert_eq!(
        (carried[0].reason.as_str(), carried[0].replicas),
        ("Failover", 3)
    );

    // DCB comes back with its pods: the extra replicas in DCA go.
    let mcs: Api<MemberCluster> = Api::all(h.hub.clone());
    wait_for("dcb Ready again", WAIT, || async {
        ready_of(&mcs.get("dcb").await.ok()?)
            .is_some_and(|c| c.status == "True")
            .then_some(())
    })
    .await;
    wait_for("the failover ended", WAIT, || async {
        loans(&h).await.is_empty().then_some(())
    })
    .await;
    wait_serving(&h, 3, 3).await;
    assert_eq!(
        h.sets("dcb").get("demo").await.unwrap().meta().generation,
        dcb_generation,
        "the lost member was never written to"
    );
    let min_dca = fewest_serving(&[&dca], 3);
    assert!(
        min_dca >= 3,
        "DCA never dropped below its own share ({min_dca})"
    );
    dca.stop();
    h.stop_hub().await;
    agents.cancel();
}

#[tokio::test]
async fn an_outage_shorter_than_the_toleration_moves_nothing() {
    let cd = deployment(
        6,
        json!({"failover": {"enable": true, "tolerationSeconds": 30}}),
    );
    let (mut h, agents) = start(ROOMY, &cd).await;
    wait_serving(&h, 3, 3).await;
    let mcs: Api<MemberCluster> = Api::all(h.hub.clone());
    h.sim
        .cluster("dcb")
        .unwrap()
        .faults
        .outage(Duration::from_secs(4));
    wait_for("dcb seen NotReady", WAIT, || async {
        ready_of(&mcs.get("dcb").await.ok()?)
            .is_some_and(|c| c.status != "True")
            .then_some(())
    })
    .await;
    // Until it is back, no loan appears and DCA keeps its 3.
    wait_for("dcb Ready again", WAIT, || async {
        assert!(loans(&h).await.is_empty(), "a short outage moved replicas");
        assert_eq!(set_replicas(&h, "dca").await, 3);
        ready_of(&mcs.get("dcb").await.ok()?)
            .is_some_and(|c| c.status == "True")
            .then_some(())
    })
    .await;
    assert!(loans(&h).await.is_empty());
    wait_serving(&h, 3, 3).await;
    h.stop_hub().await;
    agents.cancel();
}

/// `name`: `replicas` pods of `cpu` CPU over `values`, every replica in the first unit (the
/// others have a share of 0: they only take loans), rescheduled after 1 s.
fn loaner(name: &str, replicas: i32, values: &[&str], cpu: &str) -> CafeDeployment {
    let zero: serde_json::Map<String, Value> = values[1..]
        .iter()
        .map(|u| (u.to_string(), json!(0)))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "demo:1",
                    "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
            },
            "topology": {"unitType": "DataCenter", "values": values, "unitReplicas": zero,
                "autoReschedule": {"enable": true, "initialDelaySeconds": 1, "stabilizationSeconds": 600}},
            "strategy": {"upgradeType": "Batch", "batchSize": "100%", "maxUnavailablePerUnit": 1},
        },
    }))
    .expect("a CafeDeployment")
}

async fn loans_of(h: &Hub, name: &str) -> Vec<Loan> {
    h.deployments()
        .get(name)
        .await
        .ok()
        .and_then(|cd| cd.status)
        .map(|s| s.loans)
        .unwrap_or_default()
}

/// Pods of `member` the scheduler could not place (PodScheduled False, Unschedulable).
async fn unschedulable_in(h: &Hub, member: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(h.members[member].clone(), "default");
    let Ok(list) = pods.list(&ListParams::default().labels(UNIT)).await else {
        return vec![];
    };
    list.items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
        })
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

/// Every call the hub made to a member that reads its pods or nodes: there must be none.
fn hub_pod_or_node_reads(h: &Hub, members: &[&str]) -> Vec<String> {
    members
        .iter()
        .flat_map(|m| {
            h.sim
                .cluster(m)
                .expect("cluster")
                .calls()
                .into_iter()
                .filter(|c| c.user_agent.starts_with("cafe-hub/"))
                .filter(|c| c.resource == "pods" || c.resource == "nodes")
                .map(move |c| format!("{m}: {} {}", c.verb, c.resource))
        })
        .collect()
}

/// DCA fits one of its two 2-CPU pods. DCB has 2 CPUs free, 1 on each of two nodes: no 2-CPU
/// pod fits there. DCC's one node fits one.
const FRAGMENTED: &str = r#"
kubelet: {startMillis: 50, restartMillis: 50}
clusters:
  - name: hub
    role: hub
  - name: dca
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 1, cpu: "2", memory: 16Gi, pods: 110}]
  - name: dcb
    role: member
    units: {DataCenter: DCB}
    nodes: [{count: 2, cpu: "1", memory: 16Gi, pods: 110}]
  - name: dcc
    role: member
    units: {DataCenter: DCC}
    nodes: [{count: 1, cpu: "3", memory: 16Gi, pods: 110}]
"#;

#[tokio::test]
async fn reschedule_judges_room_node_by_node_and_the_hub_reads_no_member_pod_or_node() {
    let units = [("dca", "DCA"), ("dcb", "DCB"), ("dcc", "DCC")];
    let mut h = Hub::start_with(FRAGMENTED, &units).await;
    let agents = h.run_member_agents(&["dca", "dcb", "dcc"]);
    h.run_hub();
    h.wait_members_ready().await;
    // By cluster totals DCB (2 CPUs free, first in `values`) would take the loan.
    let dcb: MemberCluster = Api::all(h.hub.clone()).get("dcb").await.unwrap();
    let dcb_capacity = wait_for("DCB's room on its MemberCluster", WAIT, || async {
        let mc: MemberCluster = Api::all(h.hub.clone()).get("dcb").await.ok()?;
        mc.status?.capacity
    })
    .await;
    assert_eq!(
        dcb_capacity.allocatable.cpu_millis - dcb_capacity.requested.cpu_millis,
        2_000,
        "{dcb:?}"
    );
    h.deployments()
        .create(
            &PostParams::default(),
            &loaner("big", 2, &["DCA", "DCB", "DCC"], "2"),
        )
        .await
        .unwrap();
    let lent = wait_for("a loan", WAIT, || async {
        let l = loans_of(&h, "big").await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(
        lent.iter()
            .map(|l| (l.from.as_str(), l.to.as_str(), l.replicas))
            .collect::<Vec<_>>(),
        [("DCA", "DCC", 1)],
        "{lent:?}"
    );
    wait_for("the loaned pod serving in DCC", WAIT, || async {
        let pods: Api<Pod> = Api::namespaced(h.members["dcc"].clone(), "default");
        let list = pods.list(&ListParams::default().labels(UNIT)).await.ok()?;
        (list.items.iter().filter(|p| serving(p)).count() == 1).then_some(())
    })
    .await;
    assert!(unschedulable_in(&h, "dcb").await.is_empty());
    assert_eq!(
        hub_pod_or_node_reads(&h, &["dca", "dcb", "dcc"]),
        Vec::<String>::new(),
        "the hub reads room from the agents, never a member's pods or nodes"
    );
    h.stop_hub().await;
    agents.cancel();
}

/// DCA and DCB each fit one of their two 2-CPU pods; DCC fits one more 2-CPU pod in all.
const ONE_SPARE: &str = r#"
kubelet: {startMillis: 50, restartMillis: 50}
clusters:
  - name: hub
    role: hub
  - name: dca
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 1, cpu: "2", memory: 16Gi, pods: 110}]
  - name: dcb
    role: member
    units: {DataCenter: DCB}
    nodes: [{count: 1, cpu: "2", memory: 16Gi, pods: 110}]
  - name: dcc
    role: member
    units: {DataCenter: DCC}
    nodes: [{count: 1, cpu: "2", memory: 16Gi, pods: 110}]
"#;

#[tokio::test]
async fn two_deployments_short_of_room_at_once_never_get_the_same_room() {
    let units = [("dca", "DCA"), ("dcb", "DCB"), ("dcc", "DCC")];
    let mut h = Hub::start_with(ONE_SPARE, &units).await;
    let agents = h.run_member_agents(&["dca", "dcb", "dcc"]);
    h.run_hub();
    h.wait_members_ready().await;
    wait_for("DCC's room on its MemberCluster", WAIT, || async {
        let mc: MemberCluster = Api::all(h.hub.clone()).get("dcc").await.ok()?;
        mc.status?.capacity
    })
    .await;
    // Both short at once: each has one pod its unit cannot place, past the same delay.
    let (x, y) = (
        loaner("x", 2, &["DCA", "DCC"], "2"),
        loaner("y", 2, &["DCB", "DCC"], "2"),
    );
    let (api, params) = (h.deployments(), PostParams::default());
    let (a, b) = tokio::join!(api.create(&params, &x), api.create(&params, &y));
    a.unwrap();
    b.unwrap();
    let first = wait_for("one loan", WAIT, || async {
        let all: Vec<Loan> = [loans_of(&h, "x").await, loans_of(&h, "y").await].concat();
        (!all.is_empty()).then_some(all)
    })
    .await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!((first[0].to.as_str(), first[0].replicas), ("DCC", 1));
    // Long past the delay and the time the room takes to show the placed pod: still one loan,
    // and nothing left waiting for a node in DCC.
    let until = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < until {
        let all: Vec<Loan> = [loans_of(&h, "x").await, loans_of(&h, "y").await].concat();
        assert_eq!(all.len(), 1, "only one loan fits DCC: {all:?}");
        assert_eq!(all[0].replicas, 1, "{all:?}");
        let pending = unschedulable_in(&h, "dcc").await;
        assert!(pending.is_empty(), "pods left Pending in DCC: {pending:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The one that waits still has its pod unschedulable in its own unit.
    let waiting = if first[0].from == "DCA" { "dcb" } else { "dca" };
    assert_eq!(unschedulable_in(&h, waiting).await.len(), 1);
    h.stop_hub().await;
    agents.cancel();
}
