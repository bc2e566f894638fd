//! The member's InPlaceSet controller, end to end against a simulated member cluster: it keeps
//! `replicas` pods behind the readiness gate, scales in the right order, replaces pods deleted
//! under it, reports status, never over-creates on a stale cache, and a restart writes nothing.

mod common;
mod member_forbidden;
mod member_slow_watch;

use std::collections::BTreeSet;
use std::time::Duration;

use cafe::api::InPlaceSet;
use cafe::api::labels::{LIFECYCLE_STATE, READINESS_GATE, REVISION};
use cafe::member::{CACHE_NOT_SYNCED, MemberOptions, REPLICA_FAILURE};
use cafe::plan::revision::revision_hash;
use cafe_sim::sim::Sim;
use common::{
    Member, ONE_MEMBER, Part, client, controller_client, install_crds, spawn_member, start_sim,
    wait_for,
};
use k8s_openapi::api::core::v1::{Node, Pod, PodTemplateSpec};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

fn template(image: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": "demo"}},
        "spec": {"containers": [{"name": "app", "image": image}]},
    })
}

fn inplaceset(name: &str, replicas: i32, template: Value) -> InPlaceSet {
    serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "InPlaceSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": template,
        },
    }))
    .expect("an InPlaceSet")
}

fn hash(template: &Value) -> String {
    let t: PodTemplateSpec = serde_json::from_value(template.clone()).expect("a template");
    revision_hash(&t)
}

/// A member cluster with the CRDs, its client, and a running member agent.
async fn setup() -> (Sim, kube::Client, Member) {
    let sim = start_sim(ONE_MEMBER).await;
    let c = client(&sim, "dca").await;
    install_crds(&c).await;
    let member = spawn_member(controller_client(&sim, "dca", Part::Member).await);
    (sim, c, member)
}

fn count(sim: &Sim, verb: &str, resource: &str, subresource: &str) -> u64 {
    sim.cluster("dca").expect("dca").metrics.count(|l| {
        l.verb == verb
            && l.resource == resource
            && l.subresource == subresource
            && l.code.starts_with('2')
    })
}

fn pod_creates(sim: &Sim) -> u64 {
    count(sim, "create", "pods", "")
}

fn pod_deletes(sim: &Sim) -> u64 {
    count(sim, "delete", "pods", "")
}

fn condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a str> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

fn is_ready(pod: &Pod) -> bool {
    condition(pod, "Ready") == Some("True")
}

/// The pods controlled by `ips` that are not being deleted.
async fn pods_of(pods: &Api<Pod>, ips: &InPlaceSet) -> Vec<Pod> {
    let uid = ips.uid().unwrap_or_default();
    pods.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.owner_references().iter().any(|o| o.uid == uid))
        .collect()
}

/// Waits until `ips` has exactly `n` pods, all Ready, and no pod of it is left terminating.
async fn wait_ready_pods(pods: &Api<Pod>, ips: &InPlaceSet, n: usize) -> Vec<Pod> {
    let uid = ips.uid().unwrap_or_default();
    wait_for(
        &format!("{n} Ready pods of {}", ips.name_any()),
        WAIT,
        || async {
            let all = pods.list(&ListParams::default()).await.ok()?.items;
            let owned: Vec<Pod> = all
                .into_iter()
                .filter(|p| p.owner_references().iter().any(|o| o.uid == uid))
                .collect();
            (owned.len() == n && owned.iter().all(is_ready)).then_some(owned)
        },
    )
    .await
}

async fn wait_status(
    api: &Api<InPlaceSet>,
    name: &str,
    what: &str,
    check: impl Fn(&cafe::api::InPlaceSetStatus) -> bool,
) -> InPlaceSet {
    wait_for(what, WAIT, || async {
        let ips = api.get(name).await.ok()?;
        ips.status.as_ref().is_some_and(&check).then_some(ips)
    })
    .await
}

/// Creates InPlaceSet `name` with `replicas` pods of `image`.
async fn create_set(api: &Api<InPlaceSet>, name: &str, replicas: i32, image: &str) -> InPlaceSet {
    api.create(
        &PostParams::default(),
        &inplaceset(name, replicas, template(image)),
    )
    .await
    .expect("created")
}

async fn patch_spec(api: &Api<InPlaceSet>, name: &str, spec: Value) -> InPlaceSet {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await
    .expect("spec patched")
}

#[tokio::test]
async fn five_replicas_become_five_ready_gated_pods_with_owner_and_labels() {
    let (sim, c, member) = setup().await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let tpl = template("demo:1");
    let ips = api
        .create(&PostParams::default(), &inplaceset("demo", 5, tpl.clone()))
        .await
        .expect("created");
    let revision = hash(&tpl);

    let ready = wait_ready_pods(&pods, &ips, 5).await;
    let mut names = BTreeSet::new();
    for pod in &ready {
        let name = pod.name_any();
        let suffix = name
            .strip_prefix("demo-")
            .expect("named after the InPlaceSet");
        assert_eq!(suffix.len(), 5, "{name}: a 5-character suffix");
        assert!(suffix.chars().all(|c| c.is_ascii_alphanumeric()));
        names.insert(name.clone());
        let owner = &pod.owner_references()[0];
        assert_eq!(pod.owner_references().len(), 1);
        assert_eq!(owner.kind, "InPlaceSet");
        assert_eq!(owner.name, "demo");
        assert_eq!(Some(&owner.uid), ips.meta().uid.as_ref());
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        let labels = pod.labels();
        assert_eq!(labels.get(REVISION), Some(&revision), "{name}");
        assert_eq!(labels.get("app").map(String::as_str), Some("demo"));
        assert_eq!(
            labels.get(LIFECYCLE_STATE).map(String::as_str),
            Some("Normal")
        );
        let gates = pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.clone())
            .unwrap_or_default();
        assert_eq!(gates.len(), 1);
        assert_eq!(gates[0].condition_type, READINESS_GATE);
        assert_eq!(condition(pod, READINESS_GATE), Some("True"), "{name}");
        assert_eq!(condition(pod, "ContainersReady"), Some("True"));
    }
    assert_eq!(names.len(), 5);

    let ips = wait_status(&api, "demo", "status: 5 ready and available", |s| {
        s.ready_replicas == 5 && s.available_replicas == 5
    })
    .await;
    let status = ips.status.clone().expect("status");
    assert_eq!(status.replicas, 5);
    assert_eq!(status.updated_replicas, 5);
    assert_eq!(status.updated_ready_replicas, 5);
    assert_eq!(status.unschedulable_replicas, 0);
    assert_eq!(status.unschedulable_since, None);
    assert_eq!(status.update_revision.as_deref(), Some(revision.as_str()));
    assert_eq!(status.current_revision.as_deref(), Some(revision.as_str()));
    assert_eq!(status.observed_generation, ips.metadata.generation);
    assert_eq!(status.selector.as_deref(), Some("app=demo"));
    assert!(status.conditions.is_empty());
    assert_eq!(pod_creates(&sim), 5);
    member.stop().await;
}

/// Waits until the clock is past the second in which the latest pod of `ips` was created, so
/// pods created from now on are strictly newer (creation timestamps have second precision).
async fn wait_for_next_second(pods: &Api<Pod>, ips: &InPlaceSet) -> Timestamp {
    wait_for("a later second", WAIT, || async {
        let latest = pods_of(pods, ips)
            .await
            .iter()
            .filter_map(|p| p.metadata.creation_timestamp.clone())
            .map(|t| t.0)
            .max()?;
        (Timestamp::now().as_second() > latest.as_second()).then_some(latest)
    })
    .await
}

#[tokio::test]
async fn scales_out_to_eight_and_in_to_two() {
    let (sim, c, member) = setup().await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let ips = create_set(&api, "demo", 5, "demo:1").await;
    let five: BTreeSet<String> = wait_ready_pods(&pods, &ips, 5)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();

    wait_for_next_second(&pods, &ips).await;
    patch_spec(&api, "demo", json!({"replicas": 8})).await;
    let eight: BTreeSet<String> = wait_ready_pods(&pods, &ips, 8)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(five.is_subset(&eight), "scale out keeps the pods it had");
    wait_status(&api, "demo", "status: 8 ready", |s| {
        s.replicas == 8 && s.ready_replicas == 8
    })
    .await;

    patch_spec(&api, "demo", json!({"replicas": 2})).await;
    let two: BTreeSet<String> = wait_ready_pods(&pods, &ips, 2)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert!(two.is_subset(&eight));
    // All pods were ready and scheduled: the newest go first, so two of the first five stay.
    assert!(two.is_subset(&five), "the oldest pods are kept: {two:?}");
    let ips = wait_status(&api, "demo", "status: 2 replicas", |s| {
        s.replicas == 2 && s.ready_replicas == 2 && s.available_replicas == 2
    })
    .await;
    assert_eq!(
        ips.status.and_then(|s| s.observed_generation),
        ips.metadata.generation
    );
    assert_eq!(pod_creates(&sim), 8, "no pod created twice");
    assert_eq!(pod_deletes(&sim), 6, "no pod deleted twice");
    member.stop().await;
}

/// Waits until the pod named `name` satisfies `check`.
async fn wait_pod(pods: &Api<Pod>, name: &str, what: &str, check: impl Fn(&Pod) -> bool) {
    wait_for(&format!("{name}: {what}"), WAIT, || async {
        let p = pods.get(name).await.ok()?;
        check(&p).then_some(())
    })
    .await
}

/// Scales `demo` to `n` with a new template and returns the one new pod's name.
async fn add_one_pod(
    api: &Api<InPlaceSet>,
    pods: &Api<Pod>,
    n: i32,
    tpl: Value,
    partition: i32,
    known: &mut BTreeSet<String>,
) -> String {
    let mut tpl = tpl;
    if tpl["spec"].get("nodeSelector").is_none() {
        // A merge patch keeps what it does not mention: drop an earlier nodeSelector.
        tpl["spec"]["nodeSelector"] = Value::Null;
    }
    // `partition` keeps the pods on other templates where they are; the one new pod is made
    // from the new template.
    let ips = patch_spec(
        api,
        "demo",
        json!({"replicas": n, "template": tpl, "strategy": {"partition": partition}}),
    )
    .await;
    let name = wait_for("the new pod", WAIT, || async {
        let now: BTreeSet<String> = pods_of(pods, &ips)
            .await
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        let new: Vec<String> = now.difference(known).cloned().collect();
        (now.len() == usize::try_from(n).ok()? && new.len() == 1).then(|| new[0].clone())
    })
    .await;
    known.insert(name.clone());
    name
}

#[tokio::test]
async fn scale_in_removes_unscheduled_then_not_ready_then_newest_pods() {
    let (sim, c, member) = setup().await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let ready_tpl = template("demo:1");
    // Each template change below shapes only the next pod (see `add_one_pod`).
    let set = inplaceset("demo", 2, ready_tpl.clone());
    let ips = api
        .create(&PostParams::default(), &set)
        .await
        .expect("created");
    let mut known: BTreeSet<String> = wait_ready_pods(&pods, &ips, 2)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let originals = known.clone();

    // An unschedulable pod (no node has the label), then a running one that is never ready,
    // then the newest, ready one: each from a template change plus one more replica.
    let mut nowhere = ready_tpl.clone();
    nowhere["spec"]["nodeSelector"] = json!({"disktype": "none"});
    let unscheduled = add_one_pod(&api, &pods, 3, nowhere, 2, &mut known).await;
    wait_pod(&pods, &unscheduled, "Unschedulable", |p| {
        condition(p, "PodScheduled") == Some("False")
    })
    .await;
    let not_ready = add_one_pod(&api, &pods, 4, template("demo:1-unready"), 3, &mut known).await;
    wait_pod(&pods, &not_ready, "running, not ready", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && !is_ready(p)
    })
    .await;
    // The newest pod must be created in a later second than the others (creation timestamps
    // have second precision), so "newest" is unambiguous.
    let oldest_second = wait_for_next_second(&pods, &ips).await;
    let newest = add_one_pod(&api, &pods, 5, ready_tpl.clone(), 2, &mut known).await;
    wait_pod(&pods, &newest, "Ready", is_ready).await;
    let created = pods
        .get(&newest)
        .await
        .expect("newest")
        .metadata
        .creation_timestamp
        .expect("created at");
    assert!(created.0 > oldest_second);
    wait_status(&api, "demo", "status: 1 unschedulable", |s| {
        s.replicas == 5 && s.unschedulable_replicas == 1 && s.unschedulable_since.is_some()
    })
    .await;

    let remaining = |keep: usize| {
        let pods = pods.clone();
        let ips = ips.clone();
        async move {
            wait_for(&format!("{keep} pods left"), WAIT, || async {
                let now: BTreeSet<String> = pods_of(&pods, &ips)
                    .await
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect();
                (now.len() == keep).then_some(now)
            })
            .await
        }
    };
    // The newest pod is on the first template again (the update revision), with the two
    // originals; the partition keeps the other two (unscheduled, not ready) until they go, and
    // never asks a scale-in to remove an updated pod first.
    patch_spec(
        &api,
        "demo",
        json!({"replicas": 4, "strategy": {"partition": 1}}),
    )
    .await;
    let left = remaining(4).await;
    assert!(
        !left.contains(&unscheduled),
        "the unscheduled pod goes first, though not the newest"
    );
    patch_spec(
        &api,
        "demo",
        json!({"replicas": 3, "strategy": {"partition": 0}}),
    )
    .await;
    let left = remaining(3).await;
    assert!(
        !left.contains(&not_ready),
        "then the not-ready pod, though not the newest"
    );
    assert!(left.contains(&newest));
    patch_spec(&api, "demo", json!({"replicas": 2})).await;
    let left = remaining(2).await;
    assert_eq!(left, originals, "then the newest");
    wait_status(&api, "demo", "status: unschedulable cleared", |s| {
        s.replicas == 2 && s.unschedulable_replicas == 0 && s.unschedulable_since.is_none()
    })
    .await;
    assert_eq!(pod_deletes(&sim), 3);
    member.stop().await;
}

#[tokio::test]
async fn a_pod_deleted_by_someone_else_is_replaced() {
    let (sim, c, member) = setup().await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let ips = create_set(&api, "demo", 3, "demo:1").await;
    let before = wait_ready_pods(&pods, &ips, 3).await;
    let victim = before[0].name_any();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .expect("deleted");
    let after = wait_for("a replacement, Ready", WAIT, || async {
        let now = pods_of(&pods, &ips).await;
        let names: BTreeSet<String> = now.iter().map(ResourceExt::name_any).collect();
        (now.len() == 3 && !names.contains(&victim) && now.iter().all(is_ready)).then_some(names)
    })
    .await;
    for p in &before[1..] {
        assert!(after.contains(&p.name_any()), "the others are untouched");
    }
    wait_status(&api, "demo", "status: 3 ready again", |s| {
        s.replicas == 3 && s.ready_replicas == 3
    })
    .await;
    assert_eq!(pod_creates(&sim), 4, "exactly one replacement");
    assert_eq!(pod_deletes(&sim), 1, "the controller deleted nothing");
    member.stop().await;
}

/// As with a ReplicaSet: a pod whose labels no longer match the selector is released (its
/// controller ownerReference removed, the pod left running) and replaced.
#[tokio::test]
async fn a_pod_whose_selector_label_is_removed_is_released_and_replaced() {
    let (sim, c, member) = setup().await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let ips = create_set(&api, "demo", 3, "demo:1").await;
    let before = wait_ready_pods(&pods, &ips, 3).await;
    let stray = before[0].name_any();
    let unlabel = serde_json::from_value(json!([
        {"op": "remove", "path": "/metadata/labels/app"},
    ]))
    .expect("a JSON patch");
    pods.patch(&stray, &PatchParams::default(), &Patch::Json::<()>(unlabel))
        .await
        .expect("selector label removed");

    wait_pod(&pods, &stray, "no controller ownerReference", |p| {
        p.owner_references()
            .iter()
            .all(|o| o.controller != Some(true))
    })
    .await;
    let after = wait_ready_pods(&pods, &ips, 3).await;
    let names: BTreeSet<String> = after.iter().map(ResourceExt::name_any).collect();
    assert!(!names.contains(&stray), "the released pod is not counted");
    for p in &before[1..] {
        assert!(names.contains(&p.name_any()), "the others are untouched");
    }
    let released = pods
        .get(&stray)
        .await
        .expect("the released pod still exists");
    assert!(
        released.metadata.deletion_timestamp.is_none(),
        "released, not deleted"
    );
    wait_status(
        &api,
        "demo",
        "status: 3 replicas, 3 ready and available",
        |s| s.replicas == 3 && s.ready_replicas == 3 && s.available_replicas == 3,
    )
    .await;
    assert_eq!(pod_creates(&sim), 4, "exactly one replacement");
    assert_eq!(pod_deletes(&sim), 0, "nothing deleted");
    member.stop().await;
}

/// An agent that may not list pods cluster-wide never fills its pod cache: each reconcile gives
/// up after the deadline and says why in the InPlaceSet's status, instead of hanging silently.
#[tokio::test]
async fn a_forbidden_pod_list_sets_cache_not_synced_instead_of_hanging() {
    let sim = start_sim(ONE_MEMBER).await;
    let c = client(&sim, "dca").await;
    install_crds(&c).await;
    let shutdown = CancellationToken::new();
    let options = MemberOptions {
        cache_sync_timeout: Duration::from_millis(300),
        ..MemberOptions::default()
    };
    let task = tokio::spawn(cafe::member::run_with(
        member_forbidden::client(&sim, "dca").await,
        options,
        shutdown.clone(),
    ));
    let member = Member { shutdown, task };
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    create_set(&api, "demo", 2, "demo:1").await;

    let ips = wait_status(&api, "demo", "ReplicaFailure CacheNotSynced", |s| {
        s.conditions.iter().any(|c| {
            c.type_ == REPLICA_FAILURE && c.status == "True" && c.reason == CACHE_NOT_SYNCED
        })
    })
    .await;
    let status = ips.status.expect("status");
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == REPLICA_FAILURE)
        .expect("ReplicaFailure")
        .message;
    for part in [
        "cannot list pods in all namespaces",
        member_forbidden::FORBIDDEN,
        "check the member agent's permissions",
    ] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    assert_eq!(
        pod_creates(&sim),
        0,
        "nothing created from a cache that never listed"
    );
    member.stop().await;
}

#[tokio::test]
async fn status_reports_unschedulable_pods_and_since_when_until_a_node_fits() {
    let (_sim, c, member) = setup().await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let mut tpl = template("demo:1");
    tpl["spec"]["nodeSelector"] = json!({"disktype": "ssd"});
    let created = api
        .create(&PostParams::default(), &inplaceset("demo", 2, tpl))
        .await
        .expect("created");
    let ips = wait_status(&api, "demo", "status: 2 unschedulable", |s| {
        s.unschedulable_replicas == 2
    })
    .await;
    let status = ips.status.clone().expect("status");
    assert_eq!(status.replicas, 2);
    assert_eq!(status.ready_replicas, 0);
    assert_eq!(status.available_replicas, 0);
    assert_eq!(status.observed_generation, created.metadata.generation);
    let since = status.unschedulable_since.expect("unschedulableSince").0;
    let created_at = created.metadata.creation_timestamp.expect("created").0;
    assert!(since >= created_at && since <= Timestamp::now(), "{since}");

    // A node that matches: the pods schedule, run, and the count and time are cleared.
    let nodes: Api<Node> = Api::all(c.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "dca-ssd", "labels": {"kubernetes.io/hostname": "dca-ssd", "disktype": "ssd"}},
        "status": {
            "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
        },
    }))
    .expect("a node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node added");
    let ips = wait_status(&api, "demo", "status: scheduled and ready", |s| {
        s.unschedulable_replicas == 0 && s.ready_replicas == 2
    })
    .await;
    assert_eq!(ips.status.expect("status").unschedulable_since, None);
    member.stop().await;
}

#[tokio::test]
async fn available_counts_pods_ready_for_min_ready_seconds() {
    let (_sim, c, member) = setup().await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let mut ips = inplaceset("demo", 3, template("demo:1"));
    ips.spec.min_ready_seconds = 2;
    api.create(&PostParams::default(), &ips)
        .await
        .expect("created");
    let ready = wait_status(&api, "demo", "status: 3 ready", |s| s.ready_replicas == 3).await;
    assert!(
        ready.status.expect("status").available_replicas < 3,
        "not available before minReadySeconds"
    );
    wait_status(&api, "demo", "status: 3 available", |s| {
        s.available_replicas == 3
    })
    .await;
    member.stop().await;
}

#[tokio::test]
async fn a_template_change_behind_a_partition_records_the_update_revision_without_touching_pods() {
    let (sim, c, member) = setup().await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let v1 = template("demo:1");
    let ips = api
        .create(&PostParams::default(), &inplaceset("demo", 3, v1.clone()))
        .await
        .expect("created");
    let before = wait_ready_pods(&pods, &ips, 3).await;
    wait_status(&api, "demo", "status: 3 updated", |s| {
        s.updated_ready_replicas == 3
    })
    .await;
    let pod_writes = |sim: &Sim| {
        sim.cluster("dca").expect("dca").metrics.count(|l| {
            l.resource == "pods" && l.verb != "get" && l.verb != "list" && l.verb != "watch"
        })
    };
    let writes_before = pod_writes(&sim);

    // With the partition at 3, every pod stays on the old revision.
    let v2 = template("demo:2");
    let changed = patch_spec(
        &api,
        "demo",
        json!({"template": v2, "strategy": {"partition": 3}}),
    )
    .await;
    let ips = wait_status(&api, "demo", "status: the new update revision", |s| {
        s.observed_generation == changed.metadata.generation
    })
    .await;
    let status = ips.status.expect("status");
    assert_eq!(status.update_revision, Some(hash(&v2)));
    assert_eq!(status.current_revision, Some(hash(&v1)));
    assert_eq!(status.updated_replicas, 0);
    assert_eq!(status.updated_ready_replicas, 0);
    assert_eq!((status.replicas, status.ready_replicas), (3, 3));

    let after = pods_of(&pods, &changed).await;
    let uids = |ps: &[Pod]| -> BTreeSet<(String, String, String)> {
        ps.iter()
            .map(|p| {
                (
                    p.uid().unwrap_or_default(),
                    p.resource_version().unwrap_or_default(),
                    p.labels().get(REVISION).cloned().unwrap_or_default(),
                )
            })
            .collect()
    };
    assert_eq!(uids(&before), uids(&after), "pods untouched");
    assert_eq!(pod_writes(&sim), writes_before, "no pod writes");
    member.stop().await;
}

#[tokio::test]
async fn a_restarted_controller_creates_and_deletes_nothing() {
    let (sim, c, member) = setup().await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let ips = create_set(&api, "demo", 4, "demo:1").await;
    let before = wait_ready_pods(&pods, &ips, 4).await;
    wait_status(&api, "demo", "status: 4 ready", |s| s.ready_replicas == 4).await;
    member.stop().await;
    let (creates, deletes) = (pod_creates(&sim), pod_deletes(&sim));
    let pod_patches = count(&sim, "patch", "pods", "status");
    assert_eq!((creates, deletes), (4, 0));

    let status_writes = count(&sim, "patch", "inplacesets", "status");

    let member = spawn_member(controller_client(&sim, "dca", Part::Member).await);
    // A spec change the new controller must acknowledge proves it has reconciled; this one
    // changes nothing else in the status.
    let changed = patch_spec(&api, "demo", json!({"strategy": {"gracePeriodSeconds": 5}})).await;
    wait_status(&api, "demo", "the restarted controller's status", |s| {
        s.observed_generation == changed.metadata.generation
    })
    .await;
    assert_eq!(pod_creates(&sim), creates, "nothing created after restart");
    assert_eq!(pod_deletes(&sim), deletes, "nothing deleted after restart");
    assert_eq!(
        count(&sim, "patch", "pods", "status"),
        pod_patches,
        "no readiness gate rewritten"
    );
    assert_eq!(
        count(&sim, "patch", "inplacesets", "status"),
        status_writes + 1,
        "one status write: the new observedGeneration"
    );
    let after = wait_ready_pods(&pods, &ips, 4).await;
    let names = |ps: &[Pod]| {
        ps.iter()
            .map(ResourceExt::name_any)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(names(&before), names(&after));
    member.stop().await;
}

#[tokio::test]
async fn no_over_creation_or_over_deletion_under_a_stale_pod_cache() {
    let sim = start_sim(ONE_MEMBER).await;
    let c = client(&sim, "dca").await;
    install_crds(&c).await;
    // The controller's pod watch lags one second behind the API: every reconcile in that second
    // sees a cache without its own writes.
    let slow = member_slow_watch::client(&sim, "dca", Duration::from_secs(1)).await;
    let member = spawn_member(slow);
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());

    // Many quick reconciles: each annotation change is an InPlaceSet event, seen at once.
    let nudge = |api: Api<InPlaceSet>| async move {
        for i in 0..25 {
            let patch = json!({"metadata": {"annotations": {"test/nudge": i.to_string()}}});
            api.patch("demo", &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("nudged");
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    };

    let ips = create_set(&api, "demo", 5, "demo:1").await;
    nudge(api.clone()).await;
    wait_ready_pods(&pods, &ips, 5).await;
    assert_eq!(pod_creates(&sim), 5, "no pod created twice");

    patch_spec(&api, "demo", json!({"replicas": 2})).await;
    nudge(api.clone()).await;
    wait_ready_pods(&pods, &ips, 2).await;
    assert_eq!(pod_deletes(&sim), 3, "no pod deleted twice");

    patch_spec(&api, "demo", json!({"replicas": 4})).await;
    nudge(api.clone()).await;
    wait_ready_pods(&pods, &ips, 4).await;
    wait_status(&api, "demo", "status: 4 ready", |s| {
        s.replicas == 4 && s.ready_replicas == 4
    })
    .await;
    assert_eq!(pod_creates(&sim), 7);
    assert_eq!(pod_deletes(&sim), 3);
    member.stop().await;
}

#[tokio::test]
async fn a_rejected_pod_sets_replica_failure_naming_the_cause_until_fixed() {
    let (_sim, c, member) = setup().await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    // The CRD schema accepts a container without an image; the pods API does not.
    let broken = json!({
        "metadata": {"labels": {"app": "demo"}},
        "spec": {"containers": [{"name": "app"}]},
    });
    let ips = api
        .create(&PostParams::default(), &inplaceset("demo", 2, broken))
        .await
        .expect("created");
    let failed = wait_status(&api, "demo", "ReplicaFailure", |s| {
        s.conditions.iter().any(|c| c.type_ == "ReplicaFailure")
    })
    .await;
    let status = failed.status.expect("status");
    let cond = status
        .conditions
        .iter()
        .find(|c| c.type_ == "ReplicaFailure")
        .expect("condition");
    assert_eq!(cond.status, "True");
    assert_eq!(cond.reason, "FailedCreate");
    assert!(
        cond.message.contains("spec.containers[0].image"),
        "{}",
        cond.message
    );
    assert_eq!(status.replicas, 0);
    let events: Api<Event> = Api::default_namespaced(c.clone());
    wait_for("a FailedCreate Warning event", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedCreate")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("demo")
            })
            .then_some(())
    })
    .await;

    patch_spec(&api, "demo", json!({"template": template("demo:1")})).await;
    wait_ready_pods(&pods, &ips, 2).await;
    wait_status(&api, "demo", "ReplicaFailure cleared", |s| {
        s.ready_replicas == 2 && s.conditions.is_empty()
    })
    .await;
    member.stop().await;
}

#[tokio::test]
async fn the_agent_waits_for_the_crd_and_stops_on_cancel() {
    let sim = start_sim(ONE_MEMBER).await;
    let c = client(&sim, "dca").await;
    let member = spawn_member(controller_client(&sim, "dca", Part::Member).await);
    // No CRD yet: the agent waits instead of failing.
    tokio::task::yield_now().await;
    assert!(!member.task.is_finished());
    install_crds(&c).await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let ips = create_set(&api, "demo", 1, "demo:1").await;
    wait_ready_pods(&pods, &ips, 1).await;
    member.stop().await;

    // Cancelled while still waiting for the CRD: returns Ok promptly.
    let bare = start_sim(ONE_MEMBER).await;
    let waiting = spawn_member(controller_client(&bare, "dca", Part::Member).await);
    waiting.stop().await;
}

/// After a long outage of its cluster's API the member agent watches again within seconds: a
/// spec change made right after the cluster is back is acted on promptly, not after a backoff
/// grown to half a minute (kube's default) while the API was away.
#[tokio::test]
async fn the_agent_acts_within_seconds_after_an_outage() {
    let (sim, c, member) = setup().await;
    let api: Api<InPlaceSet> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let ips = create_set(&api, "demo", 1, "demo:1").await;
    wait_ready_pods(&pods, &ips, 1).await;
    sim.cluster("dca")
        .expect("dca")
        .faults
        .outage(Duration::from_secs(40));
    wait_for("the API back", Duration::from_secs(60), || async {
        api.get("demo").await.ok().map(|_| ())
    })
    .await;
    patch_spec(&api, "demo", json!({"replicas": 2})).await;
    // The watches retry at most a few seconds apart (runtime::backoff::MAX_DELAY, with jitter).
    wait_for("the second pod", Duration::from_secs(20), || async {
        let status = api.get("demo").await.ok()?.status?;
        (status.ready_replicas == 2).then_some(())
    })
    .await;
    member.stop().await;
}
