//! Events tell the story of a rollout: every distinct fact is its own Event, listed in the order
//! it happened (what `kubectl get events` and `kubectl describe cafedeployment` read), and what
//! needs a person is a Warning (`kubectl get events --field-selector type=Warning`).

mod common;
mod hub_support;
mod invariants;

use hub_support::{revision_of, template};

use std::time::Duration;

use cafe::api::CafeDeployment;
use common::wait_for;
use hub_support::{Hub, condition};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Rollouts wait on real pods in two members; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

/// The CafeDeployment's Events, in name order: the order the API lists them in, and (names
/// carry the time) the order they happened.
async fn events_of(events: &Api<Event>, fields: &str) -> Vec<Event> {
    let selector = format!("involvedObject.kind=CafeDeployment,involvedObject.name=demo{fields}");
    let mut list = events
        .list(&ListParams::default().fields(&selector))
        .await
        .expect("events list")
        .items;
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    list
}

fn message(e: &Event) -> &str {
    e.message.as_deref().unwrap_or_default()
}

async fn wait_phase(api: &Api<CafeDeployment>, what: &str, image: &str, phase: &str) {
    wait_for(what, WAIT, || async {
        let cd = api.get("demo").await.ok()?;
        let rollout = cd.status.as_ref()?.rollout.as_ref()?;
        let image_now = cd.spec.template.spec.as_ref()?.containers[0].image.clone();
        (image_now.as_deref() == Some(image)
            && cd.status.as_ref()?.observed_generation == cd.metadata.generation
            && rollout.phase.as_deref() == Some(phase))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn each_group_start_is_its_own_event() {
    let mut h = Hub::start().await;
    let agents = h.run_member_agents(&["dca", "dcb"]);
    h.run_hub();
    h.wait_members_ready().await;
    let cd: CafeDeployment = serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": template("demo:1"),
            "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"]},
            "strategy": {"upgradeType": "Batch", "batchSize": "100%", "maxUnavailablePerUnit": 1},
        },
    }))
    .unwrap();
    let api = h.deployments();
    api.create(&PostParams::default(), &cd).await.unwrap();
    wait_phase(&api, "demo:1 rolled out", "demo:1", "Completed").await;

    // A new image in groups of one pod: four groups, "group 1/4 started" ... "group 4/4".
    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "template": template("demo:2"),
            "strategy": {"batchSize": 1},
        }})),
    )
    .await
    .unwrap();
    wait_phase(&api, "demo:2 rolled out", "demo:2", "Completed").await;

    let events: Api<Event> = Api::namespaced(h.hub.clone(), "default");
    let started: Vec<Event> = events_of(&events, ",reason=GroupStarted")
        .await
        .into_iter()
        .filter(|e| message(e).contains("/4 started"))
        .collect();
    let groups: Vec<&str> = started
        .iter()
        .map(|e| message(e).split(" started").next().unwrap_or_default())
        .collect();
    assert_eq!(
        groups,
        ["group 1/4", "group 2/4", "group 3/4", "group 4/4"],
        "each group's start is its own Event, in order: {:#?}",
        started.iter().map(message).collect::<Vec<_>>()
    );
    for e in &started {
        assert_eq!(e.count, Some(1), "{}", message(e));
        assert_eq!(e.type_.as_deref(), Some("Normal"), "{}", message(e));
    }
    // The new revision is announced as itself, never as an older one.
    let revision = revision_of("demo:2");
    let revisions: Vec<String> = events_of(&events, ",reason=NewRevision")
        .await
        .iter()
        .map(|e| message(e).to_string())
        .collect();
    assert!(
        revisions.last().is_some_and(|m| m.contains(&revision)),
        "{revision} in {revisions:?}"
    );
    // Every unit's InPlaceSet writes show, not only the first unit's.
    let applied: Vec<String> = events_of(&events, ",reason=InPlaceSetApplied")
        .await
        .iter()
        .map(|e| message(e).to_string())
        .collect();
    for unit in ["DCA", "DCB"] {
        assert!(
            applied
                .iter()
                .any(|m| m.starts_with(&format!("unit {unit}:"))),
            "{unit} in {applied:#?}"
        );
    }

    // A group that misses its deadline needs a person: a Warning, found by type=Warning.
    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "template": template("demo:3-unready"),
            "strategy": {"progressDeadlineSeconds": 2},
        }})),
    )
    .await
    .unwrap();
    wait_for("the deadline passes", WAIT, || async {
        let cd = api.get("demo").await.ok()?;
        condition(&cd, "Progressing")
            .is_some_and(|c| c.reason == "ProgressDeadlineExceeded")
            .then_some(())
    })
    .await;
    let warnings = wait_for("a ProgressDeadlineExceeded Warning", WAIT, || async {
        let warnings = events_of(&events, ",type=Warning").await;
        warnings
            .iter()
            .any(|e| e.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            .then_some(warnings)
    })
    .await;
    assert!(
        warnings
            .iter()
            .all(|e| e.type_.as_deref() == Some("Warning")),
        "type=Warning selects Warnings only"
    );

    h.stop_hub().await;
    agents.cancel();
}
