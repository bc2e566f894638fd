//! The whole path of an image change: a user patches a CafeDeployment on the hub; the hub sets
//! each member InPlaceSet's template (partition 0, bounded by maxUnavailablePerUnit); each
//! member upgrades its pods in place behind the readiness gate.

mod common;
mod hub_support;
mod invariants;
mod pod_timeline;

use std::collections::BTreeSet;

use cafe::api::labels::UNIT;
use common::wait_for;
use hub_support::{Hub, WAIT, deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use pod_timeline::{Timeline, check_in_place, serving};
use serde_json::json;

fn serving_on(pod: &Pod, image: &str) -> bool {
    pod.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(image) && serving(pod)
}

/// Waits until `member` runs exactly `n` pods, all serving `image`.
async fn wait_serving(h: &Hub, member: &str, n: usize, image: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(h.members[member].clone(), "default");
    wait_for(
        &format!("{n} pods serving {image} in {member}"),
        WAIT,
        || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default().labels(UNIT)).await.ok()?;
                (list.items.len() == n && list.items.iter().all(|p| serving_on(p, image)))
                    .then_some(list.items)
            }
        },
    )
    .await
}

fn identity(p: &Pod) -> (String, String, Option<String>, Option<String>) {
    (
        p.name_any(),
        p.uid().unwrap_or_default(),
        p.spec.as_ref().and_then(|s| s.node_name.clone()),
        p.status.as_ref().and_then(|s| s.pod_ip.clone()),
    )
}

#[tokio::test]
async fn an_image_change_on_the_hub_upgrades_every_pod_in_place_in_every_unit() {
    let mut h = Hub::start().await;
    let members = h.run_member_agents(&["dca", "dcb"]);
    h.run_hub();
    h.wait_members_ready().await;
    // 5 replicas over DCA and DCB: 3 + 2; maxUnavailablePerUnit 25% -> 1 per unit.
    let cd = deployment(5, &["DCA", "DCB"], json!({}));
    h.deployments()
        .create(&PostParams::default(), &cd)
        .await
        .unwrap();
    let units = [("dca", 3usize), ("dcb", 2usize)];
    let mut before = BTreeSet::new();
    let mut timelines = vec![];
    for (member, n) in units {
        before.extend(
            wait_serving(&h, member, n, "demo:1")
                .await
                .iter()
                .map(identity),
        );
        timelines.push((
            member,
            n,
            Timeline::start(h.members[member].clone(), "default").await,
        ));
    }

    h.deployments()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "demo:2",
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}}})),
        )
        .await
        .unwrap();

    let mut after = BTreeSet::new();
    for (member, n) in units {
        after.extend(
            wait_serving(&h, member, n, "demo:2")
                .await
                .iter()
                .map(identity),
        );
    }
    assert_eq!(
        before, after,
        "same names, UIDs, nodes and IPs in every unit"
    );
    for (member, n, timeline) in timelines {
        for (_, uid, _, _) in after.iter() {
            let history = timeline.history(uid);
            if history.is_empty() {
                continue; // a pod of the other unit
            }
            check_in_place(&history, "demo:1", "demo:2")
                .unwrap_or_else(|e| panic!("{member}: {e}"));
        }
        let worst = timeline.max_unavailable(n);
        assert!(
            worst <= 1,
            "{member}: at most maxUnavailablePerUnit=1 pod down, saw {worst}"
        );
        timeline.stop();
    }
    let cd = h
        .wait_status("hub status: 5 updated and ready", |cd| {
            cd.status
                .as_ref()
                .is_some_and(|s| s.updated_replicas == 5 && s.updated_ready_replicas == 5)
        })
        .await;
    let status = cd.status.unwrap();
    assert_eq!(status.current_revision, status.update_revision);
    for member in ["dca", "dcb"] {
        let set = h.sets(member).get("demo").await.unwrap();
        assert_eq!(set.spec.strategy.partition, 0);
        assert_eq!(
            set.status.and_then(|s| s.update_revision),
            status.update_revision,
            "{member} agrees with the hub on the revision"
        );
    }
    h.stop_hub().await;
    members.cancel();
}
