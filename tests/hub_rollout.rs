//! Cross-cluster rollouts end to end: the hub releases groups (Beta, then batches) into real
//! member agents running real pods in simulated clusters; confirmations through `cafe rollout
//! confirm`; every unit's availability floor watched pod by pod; the progress deadline and
//! `cafe rollout undo`; a member outage; a hub killed mid-group.

mod common;
mod hub_support;
mod invariants;

use hub_support::{revision_of, template};
mod pod_timeline;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use cafe::api::labels::{UNIT, UPGRADE_CONFIRMED};
use cafe::api::{CafeDeployment, RolloutStatus};
use cafe::plan::rollout::plan_of;
use common::wait_for;
use hub_support::{Hub, condition};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use pod_timeline::{Timeline, check_in_place, serving};
use serde_json::{Value, json};

/// Rollouts wait on real pods in two members; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

fn rollout_deployment(replicas: i32, unit_replicas: Value, strategy: Value) -> CafeDeployment {
    serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": template("demo:1"),
            "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"], "unitReplicas": unit_replicas},
            "strategy": strategy,
        },
    }))
    .expect("a CafeDeployment")
}

struct Rollout {
    h: Hub,
    kubeconfig: PathBuf,
    dir: PathBuf,
    agents: tokio_util::sync::CancellationToken,
    /// Watches the whole test; [`Rollout::finish`] fails it on any violation.
    checker: invariants::Checker,
}

/// A fresh state directory for each test in this process.
fn state_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("cafe-hub-rollout-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Rollout {
    async fn start(cd: &CafeDeployment) -> Rollout {
        let mut h = Hub::start().await;
        let dir = state_dir();
        let kubeconfig = h.sim.publish(&dir, Some("hub")).await.unwrap();
        let agents = h.run_member_agents(&["dca", "dcb"]);
        h.run_hub();
        h.wait_members_ready().await;
        let checker = invariants::Checker::start(
            h.hub.clone(),
            h.watched(&[("DCA", "dca"), ("DCB", "dcb"), ("DCC", "dcc")]),
        );
        h.deployments()
            .create(&PostParams::default(), cd)
            .await
            .unwrap();
        Rollout {
            h,
            kubeconfig,
            dir,
            agents,
            checker,
        }
    }

    /// `cafe rollout VERB demo` against the hub, as a user runs it.
    async fn cafe_rollout(&self, verb: &str) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
            .args(["rollout", verb, "demo", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .args(["--context", "hub"])
            .output()
            .await
            .unwrap()
    }

    /// `cafe status demo` against the hub: what it prints.
    async fn cafe_status(&self) -> String {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
            .args(["status", "demo", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .args(["--context", "hub"])
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn confirm(&self) {
        let out = self.cafe_rollout("confirm").await;
        assert!(
            out.status.success(),
            "cafe rollout confirm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn wait_rollout(
        &self,
        what: &str,
        check: impl Fn(&RolloutStatus, &CafeDeployment) -> bool,
    ) -> CafeDeployment {
        let api = self.h.deployments();
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

    /// Waits for the rollout toward `image` to wait for confirmation after group `k`.
    async fn wait_confirm_at(&self, image: &str, k: i32) -> CafeDeployment {
        let revision = revision_of(image);
        self.wait_rollout(
            &format!("{image}: waiting for confirmation after group {k}"),
            |r, _| {
                r.revision.as_deref() == Some(revision.as_str())
                    && r.current_batch == k
                    && r.phase.as_deref() == Some("WaitingForConfirm")
            },
        )
        .await
    }

    async fn wait_completed(&self, image: &str) -> CafeDeployment {
        let revision = revision_of(image);
        self.wait_rollout(&format!("{image}: rollout completed"), |r, _| {
            r.revision.as_deref() == Some(revision.as_str())
                && r.phase.as_deref() == Some("Completed")
        })
        .await
    }

    async fn set_image(&self, image: &str) {
        self.h
            .deployments()
            .patch(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": template(image)}})),
            )
            .await
            .unwrap();
    }

    fn pods(&self, member: &str) -> Api<Pod> {
        Api::namespaced(self.h.members[member].clone(), "default")
    }

    /// Serving pods per image in `member`.
    async fn serving(&self, member: &str) -> BTreeMap<String, usize> {
        let list = self
            .pods(member)
            .list(&ListParams::default().labels(UNIT))
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for p in list.items.iter().filter(|p| serving(p)) {
            *out.entry(image_of(p)).or_default() += 1;
        }
        out
    }

    /// Waits until `member` serves exactly `want` pods per image.
    async fn wait_serving(&self, member: &str, want: &[(&str, usize)]) {
        let want: BTreeMap<String, usize> = want.iter().map(|(i, n)| (i.to_string(), *n)).collect();
        wait_for(&format!("{member} serving {want:?}"), WAIT, || async {
            (self.serving(member).await == want).then_some(())
        })
        .await;
    }

    async fn partition(&self, member: &str) -> i32 {
        self.h
            .sets(member)
            .get("demo")
            .await
            .unwrap()
            .spec
            .strategy
            .partition
    }

    async fn finish(mut self) {
        self.h.stop_hub().await;
        self.agents.cancel();
        self.checker.assert_clean().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// Each group's pods per unit, of the whole plan made again from the status (which keeps only
/// the groups around the current one: at most 2 rows, each with its index).
fn quotas(r: &RolloutStatus) -> Vec<(i32, i32)> {
    assert!(
        r.batches.len() <= 2 && r.batches.windows(2).all(|w| w[1].index == w[0].index + 1),
        "status.rollout.batches is a window: {:?}",
        r.batches
    );
    let plan = plan_of(r);
    for kept in &r.batches {
        assert_eq!(
            Some(kept),
            plan.get(usize::try_from(kept.index - 1).unwrap())
        );
    }
    plan.iter()
        .map(|b| (b.units["DCA"], b.units["DCB"]))
        .collect()
}

fn annotation(cd: &CafeDeployment) -> Option<String> {
    cd.annotations().get(UPGRADE_CONFIRMED).cloned()
}

#[tokio::test]
async fn the_seed_example_rolls_out_in_groups_of_one_plus_one_then_two_plus_two_with_confirmations()
{
    let cd = rollout_deployment(
        10,
        json!({}),
        json!({"upgradeType": "Beta", "batchSize": 4, "needWaitingForConfirm": true,
               "maxUnavailablePerUnit": 1}),
    );
    let r = Rollout::start(&cd).await;

    // Creation goes through the same groups.
    let cd = r.wait_confirm_at("demo:1", 1).await;
    assert_eq!(
        quotas(cd.status.as_ref().unwrap().rollout.as_ref().unwrap()),
        [(1, 1), (2, 2), (2, 2)]
    );
    r.wait_serving("dca", &[("demo:1", 1)]).await;
    r.confirm().await;
    r.wait_confirm_at("demo:1", 2).await;
    r.wait_serving("dca", &[("demo:1", 3)]).await;
    r.confirm().await;
    r.wait_completed("demo:1").await;
    r.wait_serving("dca", &[("demo:1", 5)]).await;
    r.wait_serving("dcb", &[("demo:1", 5)]).await;

    // The upgrade.
    let dca = Timeline::start(r.h.members["dca"].clone(), "default").await;
    let dcb = Timeline::start(r.h.members["dcb"].clone(), "default").await;
    r.set_image("demo:2").await;
    for (k, done) in [(1, 1usize), (2, 3)] {
        let cd = r.wait_confirm_at("demo:2", k).await;
        let rollout = cd.status.as_ref().unwrap().rollout.clone().unwrap();
        assert_eq!(quotas(&rollout), [(1, 1), (2, 2), (2, 2)]);
        assert_eq!(annotation(&cd).as_deref(), Some("false"), "the group waits");
        for member in ["dca", "dcb"] {
            r.wait_serving(member, &[("demo:1", 5 - done), ("demo:2", done)])
                .await;
            assert_eq!(
                r.partition(member).await,
                i32::try_from(5 - done).unwrap(),
                "{member}: the partition holds the rest"
            );
        }
        // `cafe status` says what the rollout waits for.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
            .args(["status", "demo", "--kubeconfig"])
            .arg(&r.kubeconfig)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("cafe rollout confirm demo"), "{text}");
        r.confirm().await;
    }
    r.wait_completed("demo:2").await;
    for member in ["dca", "dcb"] {
        r.wait_serving(member, &[("demo:2", 5)]).await;
    }
    for (member, timeline) in [("dca", dca), ("dcb", dcb)] {
        let worst = timeline.max_unavailable(5);
        assert!(
            worst <= 1,
            "{member}: {worst} pods down at once, floor allows 1"
        );
        for p in r
            .pods(member)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            check_in_place(&timeline.history(&p.uid().unwrap()), "demo:1", "demo:2")
                .unwrap_or_else(|e| panic!("{member}: {e}"));
        }
        timeline.stop();
    }
    // Confirming when nothing waits is refused, with a reason.
    let out = r.cafe_rollout("confirm").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not waiting"));
    r.finish().await;
}

#[tokio::test]
async fn uneven_units_split_every_group_in_proportion_and_complete() {
    let cd = rollout_deployment(
        10,
        json!({"DCA": 7}),
        json!({"upgradeType": "Beta", "batchSize": 4, "maxUnavailablePerUnit": 1}),
    );
    let r = Rollout::start(&cd).await;
    r.wait_completed("demo:1").await;
    r.wait_serving("dca", &[("demo:1", 7)]).await;
    r.wait_serving("dcb", &[("demo:1", 3)]).await;
    let dca = Timeline::start(r.h.members["dca"].clone(), "default").await;
    let dcb = Timeline::start(r.h.members["dcb"].clone(), "default").await;
    // `cafe status demo -w` redraws as the rollout moves through its groups.
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_cafe"))
        .args(["status", "demo", "-w", "--kubeconfig"])
        .arg(&r.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let screen = screen.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = screen.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        })
    };
    r.set_image("demo:2").await;
    let cd = r.wait_completed("demo:2").await;
    let rollout = cd.status.unwrap().rollout.unwrap();
    assert_eq!(quotas(&rollout), [(1, 1), (3, 1), (3, 1)]);
    let new = rollout.revision.clone().unwrap();
    wait_for("cafe status -w to draw every group", WAIT, || async {
        let text = screen.lock().unwrap().clone();
        let drew = |k: i32| text.contains(&format!("revision {new}, group {k}/3"));
        (drew(1) && drew(2) && drew(3) && text.contains("Completed, revision")).then_some(())
    })
    .await;
    let _ = watch.kill().await;
    reader.abort();
    assert!(
        plan_of(&rollout)
            .iter()
            .all(|b| b.state.as_deref() == Some("Completed"))
    );
    r.wait_serving("dca", &[("demo:2", 7)]).await;
    r.wait_serving("dcb", &[("demo:2", 3)]).await;
    assert!(dca.max_unavailable(7) <= 1, "{:#?}", dca.worst_instant(7));
    assert!(dcb.max_unavailable(3) <= 1, "{:#?}", dcb.worst_instant(3));
    dca.stop();
    dcb.stop();
    r.finish().await;
}

#[tokio::test]
async fn a_beta_pod_that_never_gets_ready_stalls_at_the_deadline_and_undo_brings_it_back() {
    let cd = rollout_deployment(
        4,
        json!({}),
        json!({"upgradeType": "Beta", "batchSize": 2, "progressDeadlineSeconds": 3,
               "maxUnavailablePerUnit": 1}),
    );
    let r = Rollout::start(&cd).await;
    r.wait_completed("demo:1").await;
    for member in ["dca", "dcb"] {
        r.wait_serving(member, &[("demo:1", 2)]).await;
    }
    r.set_image("demo:2-unready").await;
    let cd = r
        .wait_rollout("the deadline passes at Beta", |ro, cd| {
            ro.phase.as_deref() == Some("Stalled")
                && condition(cd, "Progressing")
                    .is_some_and(|c| c.status == "False" && c.reason == "ProgressDeadlineExceeded")
        })
        .await;
    let rollout = cd.status.unwrap().rollout.unwrap();
    assert_eq!(rollout.current_batch, 1, "stopped at Beta");
    assert!(plan_of(&rollout)[0].beta);
    for member in ["dca", "dcb"] {
        // One Beta pod on the bad image, not serving; the other keeps serving the old one.
        r.wait_serving(member, &[("demo:1", 1)]).await;
        let pods = r
            .pods(member)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        assert_eq!(
            pods.iter()
                .filter(|p| image_of(p) == "demo:2-unready")
                .count(),
            1,
            "{member}: only the Beta pod"
        );
    }
    // What the stuck group waits for is told per unit, reported by the member agents: the
    // Beta pod, its revision, and why it is not ready; and `cafe status` shows it.
    let new = revision_of("demo:2-unready");
    let cd = r
        .wait_rollout("each unit names its not-ready Beta pod", |_, cd| {
            cd.status.as_ref().is_some_and(|s| {
                s.units.iter().all(|u| {
                    u.not_ready_pods.len() == 1
                        && u.not_ready_pods[0].revision.as_deref() == Some(new.as_str())
                        && !u.not_ready_pods[0].reason.is_empty()
                })
            })
        })
        .await;
    let stuck = &cd.status.as_ref().unwrap().units[0].not_ready_pods[0];
    let text = r.cafe_status().await;
    assert!(
        text.contains(&format!(
            "Not ready:\n  DCA {} (revision {new}): {}",
            stuck.name, stuck.reason
        )),
        "{text}"
    );
    assert!(
        text.contains("(demo:2-unready)"),
        "the revision's image: {text}"
    );

    let out = r.cafe_rollout("undo").await;
    assert!(
        out.status.success(),
        "cafe rollout undo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    r.wait_completed("demo:1").await;
    for member in ["dca", "dcb"] {
        r.wait_serving(member, &[("demo:1", 2)]).await;
    }
    let cd = r.h.deployments().get("demo").await.unwrap();
    assert_eq!(
        condition(&cd, "Progressing").unwrap().reason,
        "RolloutCompleted"
    );
    r.finish().await;
}

#[tokio::test]
async fn no_group_starts_while_a_member_is_unreachable_and_the_rollout_completes_after() {
    let cd = rollout_deployment(
        8,
        json!({}),
        json!({"upgradeType": "Beta", "batchSize": 2, "maxUnavailablePerUnit": 1}),
    );
    let mut cd = cd;
    cd.spec.min_ready_seconds = 1;
    let r = Rollout::start(&cd).await;
    r.wait_completed("demo:1").await;
    r.set_image("demo:2").await;
    let new = revision_of("demo:2");
    r.wait_rollout("group 2 in flight", |ro, _| {
        ro.current_batch == 2
            && ro.revision.as_deref() == Some(new.as_str())
            && ro.phase.as_deref() == Some("Progressing")
    })
    .await;
    r.h.sim
        .cluster("dcb")
        .unwrap()
        .faults
        .outage(Duration::from_secs(8));
    let cd = r
        .wait_rollout("the rollout frozen", |ro, _| {
            ro.phase.as_deref() == Some("Stalled")
        })
        .await;
    let frozen_at = cd
        .status
        .as_ref()
        .unwrap()
        .rollout
        .as_ref()
        .unwrap()
        .current_batch;
    assert!(
        condition(&cd, "Progressing")
            .is_some_and(|c| c.reason == "MemberUnavailable" && c.message.contains("dcb")),
        "the condition names the member"
    );
    // Until dcb is Ready again, no group starts.
    let api = r.h.deployments();
    let mcs: Api<cafe::api::MemberCluster> = Api::all(r.h.hub.clone());
    wait_for("dcb back", WAIT, || async {
        let cd = api.get("demo").await.ok()?;
        let k = cd.status?.rollout?.current_batch;
        assert!(k <= frozen_at, "group {k} started while dcb was away");
        let mc = mcs.get("dcb").await.ok()?;
        hub_support::ready_of(&mc)
            .is_some_and(|c| c.status == "True")
            .then_some(())
    })
    .await;
    r.wait_completed("demo:2").await;
    for member in ["dca", "dcb"] {
        r.wait_serving(member, &[("demo:2", 4)]).await;
    }
    r.finish().await;
}

#[tokio::test]
async fn a_hub_killed_mid_group_continues_the_same_group_and_keeps_the_confirmation_state() {
    let cd = rollout_deployment(
        6,
        json!({}),
        json!({"upgradeType": "Batch", "batchSize": 2, "needWaitingForConfirm": true,
               "maxUnavailablePerUnit": 1}),
    );
    let mut cd = cd;
    cd.spec.min_ready_seconds = 1;
    let mut r = Rollout::start(&cd).await;
    // Creation: 3 groups of 1+1.
    for k in 1..3 {
        r.wait_confirm_at("demo:1", k).await;
        r.confirm().await;
    }
    r.wait_completed("demo:1").await;
    let dca = Timeline::start(r.h.members["dca"].clone(), "default").await;
    let dcb = Timeline::start(r.h.members["dcb"].clone(), "default").await;
    // Every group the status ever shows, in order.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i32>::new()));
    let recorder = {
        let api = r.h.deployments();
        let seen = seen.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            use kube::runtime::{WatchStreamExt, watcher};
            let mut s = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(Ok(cd)) = s.next().await {
                if let Some(k) = cd.status.and_then(|s| s.rollout).map(|r| r.current_batch) {
                    let mut v = seen.lock().unwrap();
                    if v.last() != Some(&k) {
                        v.push(k);
                    }
                }
            }
        })
    };
    r.set_image("demo:2").await;

    // Killed while waiting for confirmation: still waiting after the restart.
    r.wait_confirm_at("demo:2", 1).await;
    r.h.kill_hub().await;
    r.h.run_hub();
    let before = r.h.deployments().get("demo").await.unwrap();
    r.wait_rollout("the new hub has looked", |_, cd| {
        cd.resource_version() != before.resource_version()
            || condition(cd, "Progressing").is_some_and(|c| c.reason == "WaitingForConfirm")
    })
    .await;
    let cd = r.wait_confirm_at("demo:2", 1).await;
    assert_eq!(annotation(&cd).as_deref(), Some("false"));
    for member in ["dca", "dcb"] {
        assert_eq!(r.partition(member).await, 2, "{member}: still at group 1");
    }

    // Killed with group 2 in flight: the same group continues.
    r.confirm().await;
    r.wait_rollout("group 2 in flight", |ro, _| {
        ro.current_batch == 2 && ro.phase.as_deref() == Some("Progressing")
    })
    .await;
    r.h.kill_hub().await;
    r.h.run_hub();
    r.wait_confirm_at("demo:2", 2).await;
    r.confirm().await;
    r.wait_completed("demo:2").await;
    for member in ["dca", "dcb"] {
        r.wait_serving(member, &[("demo:2", 3)]).await;
    }
    recorder.abort();
    let seen = seen.lock().unwrap().clone();
    let upgrade: Vec<i32> = seen
        .iter()
        .rev()
        .take_while(|k| **k != 0)
        .copied()
        .collect();
    let mut upgrade = upgrade;
    upgrade.reverse();
    assert_eq!(upgrade, [1, 2, 3], "no group skipped or repeated: {seen:?}");
    for (member, timeline) in [("dca", dca), ("dcb", dcb)] {
        for p in r
            .pods(member)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            check_in_place(&timeline.history(&p.uid().unwrap()), "demo:1", "demo:2")
                .unwrap_or_else(|e| panic!("{member}: {e}"));
        }
        timeline.stop();
    }
    r.finish().await;
}

/// The release engineer's scenario: groups with confirmation, group 2 of 3 confirmed, then DCB
/// lost past its failover toleration, the hub killed and restarted while DCA carries DCB's
/// replicas, and DCB back. DCA carries DCB's replicas at the revisions DCB ran them (1 old, 2
/// new), gives back the right pods when DCB returns, and at no moment do more pods run the new
/// revision than the confirmed groups released, per unit or in total.
#[tokio::test]
async fn a_failover_never_releases_a_pod_past_the_confirmation() {
    let mut cd = rollout_deployment(
        6,
        json!({}),
        json!({"upgradeType": "Beta", "batchSize": 2, "needWaitingForConfirm": true,
               "maxUnavailablePerUnit": 1}),
    );
    cd.spec.topology.failover =
        Some(serde_json::from_value(json!({"enable": true, "tolerationSeconds": 3})).unwrap());
    let mut r = Rollout::start(&cd).await;
    for k in 1..=2 {
        r.wait_confirm_at("demo:1", k).await;
        r.confirm().await;
    }
    r.wait_completed("demo:1").await;
    r.set_image("demo:2").await;
    r.wait_confirm_at("demo:2", 1).await;
    r.confirm().await;
    r.wait_confirm_at("demo:2", 2).await;
    for member in ["dca", "dcb"] {
        r.wait_serving(member, &[("demo:1", 1), ("demo:2", 2)])
            .await;
    }

    r.h.sim
        .cluster("dcb")
        .unwrap()
        .faults
        .outage(Duration::from_secs(20));
    // DCA carries DCB's 3 as DCB ran them: 1 old, 2 new.
    r.wait_serving("dca", &[("demo:1", 2), ("demo:2", 4)]).await;
    let cd = r.h.deployments().get("demo").await.unwrap();
    let loans = &cd.status.as_ref().unwrap().loans;
    assert!(
        loans.len() == 1 && loans[0].reason == "Failover" && loans[0].replicas == 3,
        "{loans:?}"
    );
    // What is known is said, what is not is not: DCB's numbers are unknown and count in no
    // total; DCA's target carries DCB's 3; every replica serves, so Available.
    let cd = r
        .wait_rollout("Available while DCA carries DCB", |_, cd| {
            condition(cd, "Available").is_some_and(|c| c.status == "True")
        })
        .await;
    let dcb = &cd.status.as_ref().unwrap().units[1];
    assert!(!dcb.reachable && dcb.unreachable_since.is_some(), "{dcb:?}");
    let text = r.cafe_status().await;
    let row = text
        .lines()
        .find(|l| l.starts_with("DCB "))
        .unwrap_or_default();
    assert!(row.contains(" ? ") && row.contains("no, for"), "{text}");
    assert!(text.contains("6 (3+3 borrowed)"), "{text}");
    // The hub dies and comes back while DCB is away: nothing changes.
    r.h.kill_hub().await;
    r.h.run_hub();

    let mcs: Api<cafe::api::MemberCluster> = Api::all(r.h.hub.clone());
    wait_for("dcb back", WAIT, || async {
        hub_support::ready_of(&mcs.get("dcb").await.ok()?)
            .is_some_and(|c| c.status == "True")
            .then_some(())
    })
    .await;
    r.wait_rollout("the failover ended", |_, cd| {
        cd.status.as_ref().is_some_and(|s| s.loans.is_empty())
    })
    .await;
    // DCA gave back the right pods: 4 of 6 new, as confirmed.
    for member in ["dca", "dcb"] {
        r.wait_serving(member, &[("demo:1", 1), ("demo:2", 2)])
            .await;
    }
    let cd = r.wait_confirm_at("demo:2", 2).await;
    assert_eq!(annotation(&cd).as_deref(), Some("false"));

    r.confirm().await;
    r.wait_completed("demo:2").await;
    for member in ["dca", "dcb"] {
        r.wait_serving(member, &[("demo:2", 3)]).await;
    }
    r.finish().await;
}
