//! In-place upgrades by the member's InPlaceSet controller, end to end against a simulated
//! member cluster: the partition and maxUnavailable, the per-pod state machine behind the
//! readiness gate, lifecycle hooks played by the test as a traffic component, recreate and
//! resize paths, restarts of the controller at every step, and an image that never gets ready.

mod common;
mod pod_timeline;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cafe::api::InPlaceSet;
use cafe::api::labels::{LIFECYCLE_STATE, READINESS_GATE};
use common::{
    ONE_MEMBER, Part, client, controller_client, install_crds, spawn_member, start_sim, wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use pod_timeline::{Snap, Timeline, check_in_place};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);
const TRAFFIC: &str = "example.com/traffic";

fn template(image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "demo"}},
        "spec": {"containers": [{"name": "app", "image": image,
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    })
}

fn inplaceset(replicas: i32, template: Value, strategy: Value, lifecycle: Value) -> InPlaceSet {
    serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "InPlaceSet",
        "metadata": {"name": "demo"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": template,
            "strategy": strategy,
            "lifecycle": lifecycle,
        },
    }))
    .expect("an InPlaceSet")
}

struct Fixture {
    client: kube::Client,
    /// The member agent's client: ServiceAccount cafe-system/cafe-member from deploy/member.
    agent: kube::Client,
    sets: Api<InPlaceSet>,
    pods: Api<Pod>,
    sim: cafe_sim::sim::Sim,
}

async fn setup() -> Fixture {
    let sim = start_sim(ONE_MEMBER).await;
    let c = client(&sim, "dca").await;
    install_crds(&c).await;
    Fixture {
        agent: controller_client(&sim, "dca", Part::Member).await,
        sets: Api::default_namespaced(c.clone()),
        pods: Api::default_namespaced(c.clone()),
        client: c,
        sim,
    }
}

impl Fixture {
    /// Creates InPlaceSet demo and waits until all its pods serve its template's image.
    async fn create_serving(&self, set: InPlaceSet) -> Vec<Pod> {
        let replicas = usize::try_from(set.spec.replicas).unwrap();
        let image = set.spec.template.spec.as_ref().unwrap().containers[0]
            .image
            .clone()
            .unwrap();
        self.sets
            .create(&PostParams::default(), &set)
            .await
            .unwrap();
        wait_all_serving(&self.pods, replicas, &image).await
    }
}

fn cond(pod: &Pod, t: &str) -> Option<bool> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status == "True")
}

fn image(pod: &Pod) -> String {
    pod.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

fn state(pod: &Pod) -> String {
    pod.labels()
        .get(LIFECYCLE_STATE)
        .cloned()
        .unwrap_or_default()
}

/// The pods (not terminating) of InPlaceSet demo.
async fn live_pods(pods: &Api<Pod>) -> Vec<Pod> {
    pods.list(&ListParams::default().labels("app=demo"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Waits until all `n` pods run `image`, are Ready with the gate True and back in Normal, and
/// no other pod is left.
async fn wait_all_serving(pods: &Api<Pod>, n: usize, image_: &str) -> Vec<Pod> {
    wait_for(&format!("{n} pods serving {image_}"), WAIT, || async {
        let all = pods
            .list(&ListParams::default().labels("app=demo"))
            .await
            .ok()?
            .items;
        let ok = all.len() == n
            && all.iter().all(|p| {
                image(p) == image_
                    && cond(p, "Ready") == Some(true)
                    && cond(p, READINESS_GATE) == Some(true)
                    && state(p) == "Normal"
                    && p.metadata.deletion_timestamp.is_none()
            });
        ok.then_some(all)
    })
    .await
}

async fn set_template(sets: &Api<InPlaceSet>, template: Value) {
    sets.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": template}})),
    )
    .await
    .expect("template patched");
}

fn identity(p: &Pod) -> (String, String, Option<String>, Option<String>) {
    (
        p.name_any(),
        p.uid().unwrap_or_default(),
        p.spec.as_ref().and_then(|s| s.node_name.clone()),
        p.status.as_ref().and_then(|s| s.pod_ip.clone()),
    )
}

async fn events(client: &kube::Client) -> Vec<Event> {
    let api: Api<Event> = Api::default_namespaced(client.clone());
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

#[tokio::test]
async fn an_image_change_updates_every_pod_in_place_within_max_unavailable() {
    let f = setup().await;
    let member = spawn_member(f.agent.clone());
    let before = f
        .create_serving(inplaceset(
            6,
            template("demo:1"),
            json!({"maxUnavailable": 2}),
            json!(null),
        ))
        .await;
    let timeline = Timeline::start(f.client.clone(), "default").await;
    let calls = f.sim.cluster("dca").unwrap();
    let before_calls = calls.calls().len();

    set_template(&f.sets, template("demo:2")).await;
    let after = wait_all_serving(&f.pods, 6, "demo:2").await;

    let ids = |pods: &[Pod]| pods.iter().map(identity).collect::<BTreeSet<_>>();
    assert_eq!(ids(&before), ids(&after), "same names, UIDs, nodes and IPs");
    for pod in &after {
        let history = timeline.history(&pod.uid().unwrap());
        check_in_place(&history, "demo:1", "demo:2").unwrap();
        let states: Vec<&str> = history.iter().map(|s| s.state.as_str()).collect();
        for s in ["PreparingUpdate", "Updating", "Normal"] {
            assert!(
                states.contains(&s),
                "{}: went through {s}: {states:?}",
                pod.name_any()
            );
        }
        assert!(
            !states.contains(&"Updated"),
            "{}: without minReadySeconds there is no Updated wait to show: {states:?}",
            pod.name_any()
        );
        // Leaving service is one write: the state and the gate change together.
        for s in &history {
            if s.state == "PreparingUpdate" {
                assert_eq!(
                    s.gate,
                    Some(false),
                    "{}: PreparingUpdate with the gate on",
                    s.name
                );
            }
        }
    }
    // Three writes per pod and no more: gate off (with PreparingUpdate), the in-place patch
    // (with Updating), gate on (with Normal); none refused for a conflict with the kubelet.
    let agent_pod_writes: Vec<_> = calls
        .calls()
        .into_iter()
        .skip(before_calls)
        .filter(|c| c.user.contains("cafe-member") && c.resource == "pods")
        .filter(|c| !matches!(c.verb.as_str(), "get" | "list" | "watch"))
        .collect();
    let count = |sub: &str, ok: bool| {
        agent_pod_writes
            .iter()
            .filter(|c| c.subresource == sub && (200..300).contains(&c.code) == ok)
            .count()
    };
    assert_eq!(
        (count("status", true), count("", true)),
        (12, 6),
        "2 pods/status writes and 1 pod patch per pod: {agent_pod_writes:?}"
    );
    assert_eq!(
        count("status", false) + count("", false),
        0,
        "no write refused: {agent_pod_writes:?}"
    );
    let worst = timeline.max_unavailable(6);
    assert!(
        worst <= 2,
        "at most maxUnavailable=2 pods down at once, saw {worst}"
    );
    assert!(worst >= 1, "the upgrade did take pods out of service");

    let ips = f.sets.get("demo").await.unwrap();
    let status = ips.status.unwrap();
    assert_eq!(status.updated_replicas, 6);
    assert_eq!(status.current_revision, status.update_revision);
    // One Event for the step, naming what moves and how, not four per pod.
    let evs = events(&f.client).await;
    let updating: Vec<_> = evs
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Updating"))
        .collect();
    assert_eq!(
        updating.len(),
        1,
        "one Event for the step: {:?}",
        updating.iter().map(|e| &e.note).collect::<Vec<_>>()
    );
    let note = updating[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("updating 6 pods to revision")
            && note.contains("in place (app=demo:2)")
            && note.contains("partition 0"),
        "{note}"
    );
    for reason in [
        "PreparingUpdate",
        "UpdatingInPlace",
        "Updated",
        "UpdateCompleted",
    ] {
        assert!(
            !evs.iter().any(|e| e.reason.as_deref() == Some(reason)),
            "no per-pod {reason} Event"
        );
    }
    timeline.stop();
    member.stop().await;
}

#[tokio::test]
async fn the_partition_keeps_old_pods_and_scale_up_creates_new_ones() {
    let f = setup().await;
    let member = spawn_member(f.agent.clone());
    f.create_serving(inplaceset(
        4,
        template("demo:1"),
        json!({"partition": 4, "maxUnavailable": 4}),
        json!(null),
    ))
    .await;
    // New template with the partition at 4: nothing is updated.
    f.sets
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": template("demo:2"), "strategy": {"partition": 3}}}),
            ),
        )
        .await
        .unwrap();
    let images = wait_for("one pod updated, three kept", WAIT, || async {
        let pods = live_pods(&f.pods).await;
        let mut images: Vec<String> = pods
            .iter()
            .filter(|p| cond(p, "Ready") == Some(true) && state(p) == "Normal")
            .map(image)
            .collect();
        images.sort();
        (images == ["demo:1", "demo:1", "demo:1", "demo:2"]).then_some(images)
    })
    .await;
    assert_eq!(images.len(), 4);
    // Scale up to 6 with the partition at 3: the new pods run the update revision.
    f.sets
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 6}})),
        )
        .await
        .unwrap();
    wait_for("six pods, three old", WAIT, || async {
        let pods = live_pods(&f.pods).await;
        let old = pods.iter().filter(|p| image(p) == "demo:1").count();
        let ready = pods
            .iter()
            .filter(|p| cond(p, "Ready") == Some(true))
            .count();
        (pods.len() == 6 && old == 3 && ready == 6).then_some(())
    })
    .await;
    let status = f.sets.get("demo").await.unwrap().status.unwrap();
    assert_eq!(status.revisions.len(), 2, "{:?}", status.revisions);
    assert_eq!(status.revisions[0].replicas, 3, "update revision first");
    member.stop().await;
}

#[tokio::test]
async fn a_pre_update_finalizer_holds_its_pod_until_the_traffic_component_lets_go() {
    let f = setup().await;
    let member = spawn_member(f.agent.clone());
    let pods = f
        .create_serving(inplaceset(
            5,
            template("demo:1"),
            json!({"maxUnavailable": 2}),
            json!({"preUpdate": {"finalizersHandler": [TRAFFIC]}, "timeoutSeconds": 2}),
        ))
        .await;
    // The traffic component protects one pod.
    let held = pods[2].name_any();
    f.pods
        .patch(
            &held,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": [TRAFFIC]}})),
        )
        .await
        .unwrap();
    let timeline = Timeline::start(f.client.clone(), "default").await;
    set_template(&f.sets, template("demo:2")).await;

    // The others are upgraded meanwhile; the held pod leaves service and waits, past the
    // timeout, which the InPlaceSet reports naming the pod and the hook.
    let ips = wait_for("the hook timeout reported", WAIT, || async {
        let ips = f.sets.get("demo").await.ok()?;
        let c = ips
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "LifecycleBlocked" && c.status == "True")?
            .clone();
        let others_done = live_pods(&f.pods)
            .await
            .iter()
            .filter(|p| p.name_any() != held)
            .all(|p| {
                image(p) == "demo:2" && state(p) == "Normal" && cond(p, "Ready") == Some(true)
            });
        others_done.then_some((ips.clone(), c))
    })
    .await;
    let (_, condition) = ips;
    assert_eq!(condition.reason, "PreUpdateHookTimeout");
    assert!(condition.message.contains(&held), "{}", condition.message);
    assert!(condition.message.contains(TRAFFIC), "{}", condition.message);
    let held_pod = f.pods.get(&held).await.unwrap();
    assert_eq!(image(&held_pod), "demo:1", "the held pod is not touched");
    assert_eq!(state(&held_pod), "PreparingUpdate");
    assert_eq!(
        cond(&held_pod, READINESS_GATE),
        Some(false),
        "it left service"
    );
    let evs = events(&f.client).await;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("PreUpdateHookTimeout")
                && e.note.as_deref().unwrap_or("").contains(&held)),
        "a Warning Event names the pod"
    );

    // The traffic component lets go: the pod is upgraded and the condition clears.
    f.pods
        .patch(
            &held,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    wait_all_serving(&f.pods, 5, "demo:2").await;
    wait_for("the condition cleared", WAIT, || async {
        let ips = f.sets.get("demo").await.ok()?;
        (!ips
            .status?
            .conditions
            .iter()
            .any(|c| c.type_ == "LifecycleBlocked"))
        .then_some(())
    })
    .await;
    let held_uid = held_pod.uid().unwrap();
    let history = timeline.history(&held_uid);
    check_in_place(&history, "demo:1", "demo:2").unwrap();
    // Its image changed only after the finalizer was gone.
    let changed = history.iter().position(|s| s.images == ["demo:2"]).unwrap();
    assert!(history[..changed].last().unwrap().finalizers.is_empty());
    assert!(timeline.max_unavailable(5) <= 2);
    timeline.stop();
    member.stop().await;
}

/// The pods a traffic component released, with their gate at that moment.
type Released = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<bool>)>>>;

/// Plays a traffic component: whenever a pod of demo is in `stage`, removes `finalizer` from it
/// (recording which pods it released and whether their gate was already False).
fn release_on(
    pods: Api<Pod>,
    stage: &'static str,
    finalizer: &'static str,
) -> (JoinHandle<()>, Released) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let released = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let log = released.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(pods.clone(), watcher::Config::default().labels("app=demo"))
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(pod)) = stream.next().await {
            if state(&pod) == stage && pod.finalizers().iter().any(|f| f == finalizer) {
                log.lock()
                    .unwrap()
                    .push((pod.name_any(), cond(&pod, READINESS_GATE)));
                let rest: Vec<&String> = pod
                    .finalizers()
                    .iter()
                    .filter(|f| *f != finalizer)
                    .collect();
                let _ = pods
                    .patch(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": rest}})),
                    )
                    .await;
            }
        }
    });
    (task, released)
}

#[tokio::test]
async fn an_env_change_recreates_the_pods_through_the_pre_delete_hooks() {
    let f = setup().await;
    let member = spawn_member(f.agent.clone());
    // Pods are born protected by the traffic component's finalizer.
    let protected = |env: Option<&str>| {
        let mut t = template("demo:1");
        t["metadata"]["finalizers"] = json!([TRAFFIC]);
        if let Some(v) = env {
            t["spec"]["containers"][0]["env"] = json!([{"name": "MODE", "value": v}]);
        }
        t
    };
    let before = f
        .create_serving(inplaceset(
            3,
            protected(None),
            json!({"maxUnavailable": 1}),
            json!({"preDelete": {"finalizersHandler": [TRAFFIC]}}),
        ))
        .await;
    let (traffic, released) = release_on(f.pods.clone(), "PreparingDelete", TRAFFIC);
    let timeline = Timeline::start(f.client.clone(), "default").await;
    set_template(&f.sets, protected(Some("blue"))).await;

    let after = wait_for("three new pods with the env", WAIT, || async {
        let pods = live_pods(&f.pods).await;
        let ok = pods.len() == 3
            && pods.iter().all(|p| {
                p.spec.as_ref().unwrap().containers[0].env.is_some()
                    && cond(p, "Ready") == Some(true)
                    && state(p) == "Normal"
            });
        ok.then_some(pods)
    })
    .await;
    let old_uids: BTreeSet<String> = before.iter().map(|p| p.uid().unwrap()).collect();
    let new_uids: BTreeSet<String> = after.iter().map(|p| p.uid().unwrap()).collect();
    assert!(old_uids.is_disjoint(&new_uids), "every pod was replaced");
    // Each old pod left service and went through its pre-delete hook before it was deleted.
    let released = released.lock().unwrap().clone();
    for old in &before {
        let history: Vec<Snap> = timeline.history(&old.uid().unwrap());
        let deleted = history
            .iter()
            .position(|s| s.deleting || s.gone)
            .expect("the old pod was deleted");
        let prior = &history[..deleted];
        assert!(
            prior
                .iter()
                .any(|s| s.state == "PreparingDelete" && s.gate == Some(false) && !s.ready),
            "{}: out of service in PreparingDelete before deletion",
            old.name_any()
        );
        assert!(
            history[deleted].finalizers.is_empty(),
            "{}: deleted only after the hook released it",
            old.name_any()
        );
        assert!(released.iter().any(|(n, _)| *n == old.name_any()));
    }
    assert!(timeline.max_unavailable(3) <= 1);
    traffic.abort();
    timeline.stop();
    member.stop().await;
}

#[tokio::test]
async fn a_cpu_request_change_resizes_in_place_without_a_restart() {
    let f = setup().await;
    let member = spawn_member(f.agent.clone());
    let before = f
        .create_serving(inplaceset(
            3,
            template("demo:1"),
            json!({"maxUnavailable": 1}),
            json!(null),
        ))
        .await;
    let mut bigger = template("demo:1");
    bigger["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("250m");
    set_template(&f.sets, bigger).await;
    let after = wait_for("every pod resized and serving", WAIT, || async {
        let pods = live_pods(&f.pods).await;
        let ok = pods.len() == 3
            && pods.iter().all(|p| {
                let requests = p.spec.as_ref().unwrap().containers[0]
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.clone())
                    .unwrap_or_default();
                requests.get("cpu").map(|q| q.0.as_str()) == Some("250m")
                    && cond(p, "Ready") == Some(true)
                    && state(p) == "Normal"
            });
        ok.then_some(pods)
    })
    .await;
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .restart_count
    };
    let by_uid: BTreeMap<String, &Pod> = before.iter().map(|p| (p.uid().unwrap(), p)).collect();
    for p in &after {
        let old = by_uid
            .get(&p.uid().unwrap())
            .expect("same pod (UID) after the resize");
        assert_eq!(restarts(p), restarts(old), "{}: no restart", p.name_any());
        assert_eq!(identity(p), identity(old));
    }
    let sim = &f.sim;
    let resizes =
        sim.cluster("dca").unwrap().metrics.count(|l| {
            l.resource == "pods" && l.subresource == "resize" && l.code.starts_with('2')
        });
    assert_eq!(resizes, 3, "one pods/resize call per pod");
    member.stop().await;
}

#[tokio::test]
async fn an_image_that_never_gets_ready_stops_after_max_unavailable_pods() {
    let f = setup().await;
    let member = spawn_member(f.agent.clone());
    f.create_serving(inplaceset(
        5,
        template("demo:1"),
        json!({"maxUnavailable": 2}),
        json!(null),
    ))
    .await;
    let timeline = Timeline::start(f.client.clone(), "default").await;
    set_template(&f.sets, template("demo:2-unready")).await;
    // The controller has seen two pods run the new image without getting ready (its status
    // says so, written by the same reconcile that decides what to start next).
    wait_for("two pods stuck on the new image", WAIT, || async {
        let s = f.sets.get("demo").await.ok()?.status?;
        let pods = live_pods(&f.pods).await;
        let running_new = pods
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs[0].image == "demo:2-unready" && !cs[0].ready)
            })
            .count();
        (s.updated_replicas == 2
            && s.ready_replicas == 3
            && s.updated_ready_replicas == 0
            && running_new == 2)
            .then_some(())
    })
    .await;
    // Nudge one more reconcile and wait for it to be done: a status change it must write.
    f.sets
        .patch(
            "demo",
            &PatchParams::default(),
            // 40% of 5 is the same 2 pods: a new generation, not a new budget.
            &Patch::Merge(json!({"spec": {"strategy": {"maxUnavailable": "40%"}}})),
        )
        .await
        .unwrap();
    let generation = f.sets.get("demo").await.unwrap().meta().generation;
    wait_for("the nudged reconcile", WAIT, || async {
        let s = f.sets.get("demo").await.ok()?.status?;
        (s.observed_generation >= generation).then_some(())
    })
    .await;
    let pods = live_pods(&f.pods).await;
    let old: Vec<&Pod> = pods.iter().filter(|p| image(p) == "demo:1").collect();
    assert_eq!(old.len(), 3, "the others stay on the old revision");
    for p in old {
        assert_eq!(state(p), "Normal");
        assert_eq!(
            cond(p, "Ready"),
            Some(true),
            "{} keeps serving",
            p.name_any()
        );
    }
    assert!(timeline.max_unavailable(5) <= 2);
    timeline.stop();
    member.stop().await;
}

#[tokio::test]
async fn killing_the_controller_at_every_step_upgrades_each_pod_exactly_once() {
    let f = setup().await;
    let mut member = spawn_member(f.agent.clone());
    let before = f
        .create_serving(inplaceset(
            3,
            template("demo:1"),
            json!({"maxUnavailable": 1}),
            json!(null),
        ))
        .await;
    let timeline = Timeline::start(f.client.clone(), "default").await;
    set_template(&f.sets, template("demo:2")).await;

    // Kill the controller as soon as any pod reaches each step, in turn, until all are done.
    let steps = ["PreparingUpdate", "Updating", "Normal"];
    let mut kills = 0;
    'outer: for round in 0.. {
        let step = steps[round % steps.len()];
        let seen = tokio::time::timeout(WAIT, async {
            loop {
                let pods = live_pods(&f.pods).await;
                let all_done = pods.len() == 3
                    && pods.iter().all(|p| {
                        image(p) == "demo:2"
                            && state(p) == "Normal"
                            && cond(p, "Ready") == Some(true)
                    });
                if all_done {
                    return None;
                }
                if pods
                    .iter()
                    .any(|p| state(p) == step && (step != "Normal" || image(p) == "demo:2"))
                {
                    return Some(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("progress between kills");
        if seen.is_none() {
            break 'outer;
        }
        member.kill().await;
        kills += 1;
        member = spawn_member(f.agent.clone());
        assert!(round < 100, "the upgrade finishes");
    }
    assert!(kills >= 3, "killed at each step at least once ({kills})");
    let after = wait_all_serving(&f.pods, 3, "demo:2").await;
    assert_eq!(
        after.iter().map(identity).collect::<BTreeSet<_>>(),
        before.iter().map(identity).collect::<BTreeSet<_>>()
    );
    for p in &after {
        // Exactly one restart, never serving the old image after the change, never ahead of
        // its gate.
        check_in_place(&timeline.history(&p.uid().unwrap()), "demo:1", "demo:2").unwrap();
        for s in timeline.history(&p.uid().unwrap()) {
            // PreparingUpdate turns the gate False in the same write; from then until Normal it
            // stays False.
            if s.state == "Updating" {
                assert!(!s.serving(), "{}: served while {}", s.name, s.state);
            }
            if s.images == ["demo:2"] && s.state != "Normal" && s.state != "Updated" {
                assert_ne!(
                    s.gate,
                    Some(true),
                    "{}: gate True while {}",
                    s.name,
                    s.state
                );
            }
        }
    }
    assert!(timeline.max_unavailable(3) <= 1);
    timeline.stop();
    member.stop().await;
}

#[tokio::test]
async fn the_grace_period_passes_between_leaving_service_and_the_restart() {
    let f = setup().await;
    let member = spawn_member(f.agent.clone());
    f.create_serving(inplaceset(
        2,
        template("demo:1"),
        json!({"maxUnavailable": 2, "gracePeriodSeconds": 2}),
        json!(null),
    ))
    .await;
    let timeline = Timeline::start(f.client.clone(), "default").await;
    set_template(&f.sets, template("demo:2")).await;
    let after = wait_all_serving(&f.pods, 2, "demo:2").await;
    for p in &after {
        let history = timeline.history(&p.uid().unwrap());
        let drained = history
            .iter()
            .find(|s| s.gate == Some(false))
            .expect("the gate went False")
            .at;
        let restarted = history
            .iter()
            .find(|s| s.images == ["demo:2"])
            .expect("the image changed")
            .at;
        let gap = restarted.duration_since(drained);
        // Watch delivery may shift either event by a little; without the grace period the gap
        // is a few milliseconds.
        assert!(
            gap >= Duration::from_millis(1800),
            "{}: only {gap:?} between leaving service and the update",
            p.name_any()
        );
    }
    timeline.stop();
    member.stop().await;
}

#[tokio::test]
async fn scale_down_waits_for_the_pre_delete_hook() {
    let f = setup().await;
    let member = spawn_member(f.agent.clone());
    let mut protected = template("demo:1");
    protected["metadata"]["finalizers"] = json!([TRAFFIC]);
    f.create_serving(inplaceset(
        3,
        protected,
        json!({}),
        json!({"preDelete": {"finalizersHandler": [TRAFFIC]}, "timeoutSeconds": 1}),
    ))
    .await;
    f.sets
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    // The chosen pod leaves service and waits for the traffic component past the timeout.
    let (victim, message) = wait_for("the pre-delete hook timeout", WAIT, || async {
        let ips = f.sets.get("demo").await.ok()?;
        let c = ips
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "LifecycleBlocked" && c.reason == "PreDeleteHookTimeout")?;
        let victim = live_pods(&f.pods)
            .await
            .into_iter()
            .find(|p| state(p) == "PreparingDelete")?;
        Some((victim, c.message))
    })
    .await;
    assert!(message.contains(&victim.name_any()), "{message}");
    let victim = f.pods.get(&victim.name_any()).await.unwrap();
    assert!(
        victim.metadata.deletion_timestamp.is_none(),
        "not deleted yet"
    );
    assert_eq!(cond(&victim, READINESS_GATE), Some(false), "out of service");
    assert_eq!(live_pods(&f.pods).await.len(), 3);
    // Released: it goes, and no replacement comes.
    f.pods
        .patch(
            &victim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    wait_for("the victim gone", WAIT, || async {
        let all = f
            .pods
            .list(&ListParams::default().labels("app=demo"))
            .await
            .ok()?
            .items;
        (all.len() == 2 && all.iter().all(|p| p.uid() != victim.uid())).then_some(())
    })
    .await;
    member.stop().await;
}
