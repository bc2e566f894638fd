//! Pods are scheduled by capacity and run by the kubelet, as on a real cluster.

mod common;

use std::time::Duration;

use common::{client, start, wait_for};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn condition(pod: &Pod, type_: &str) -> Option<(String, Option<String>, Option<String>)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn pod_that_fits_nowhere_is_unschedulable_until_a_node_with_room_is_added() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let big: Pod = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {"containers": [{"name": "app", "image": "nginx:1", "resources": {"requests": {"cpu": "20"}}}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &big).await.unwrap();
    let (status, reason, message) = wait_for("PodScheduled=False", Duration::from_secs(5), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("big").await.ok()?;
            condition(&p, "PodScheduled").filter(|(s, _, _)| s == "False")
        }
    })
    .await;
    assert_eq!(status, "False");
    assert_eq!(reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        message.as_deref(),
        Some("0/3 nodes are available: 3 Insufficient cpu.")
    );
    let p = pods.get("big").await.unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));

    let nodes: Api<Node> = Api::all(c);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "dca-big-node", "labels": {"kubernetes.io/hostname": "dca-big-node"}},
        "status": {
            "capacity": {"cpu": "32", "memory": "64Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "64Gi", "pods": "110"},
        },
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let running = wait_for(
        "the big pod runs on the new node",
        Duration::from_secs(10),
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get("big").await.ok()?;
                let ready = condition(&p, "Ready").is_some_and(|(s, _, _)| s == "True");
                ready.then_some(p)
            }
        },
    )
    .await;
    assert_eq!(
        running.spec.unwrap().node_name.as_deref(),
        Some("dca-big-node")
    );
}

#[tokio::test]
async fn readiness_gates_and_in_place_restarts() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let pods: Api<Pod> = Api::default_namespaced(c);
    let gated: Pod = serde_json::from_value(json!({
        "metadata": {"name": "gated"},
        "spec": {
            "readinessGates": [{"conditionType": "apps.cafe.io/InPlaceUpdateReady"}],
            "containers": [{"name": "app", "image": "nginx:1"}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &gated).await.unwrap();
    let running = wait_for("containers ready", Duration::from_secs(5), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("gated").await.ok()?;
            condition(&p, "ContainersReady")
                .is_some_and(|(s, _, _)| s == "True")
                .then_some(p)
        }
    })
    .await;
    assert_eq!(
        condition(&running, "Ready").map(|c| c.0).as_deref(),
        Some("False"),
        "the gate holds Ready"
    );
    let ip = running
        .status
        .as_ref()
        .unwrap()
        .pod_ip
        .clone()
        .expect("an IP");
    let uid = running.metadata.uid.clone();
    pods.patch_status(
        "gated",
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [{"type": "apps.cafe.io/InPlaceUpdateReady", "status": "True"}]}})),
    )
    .await
    .unwrap();
    wait_for(
        "Ready once the gate is True",
        Duration::from_secs(5),
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get("gated").await.ok()?;
                condition(&p, "Ready")
                    .is_some_and(|(s, _, _)| s == "True")
                    .then_some(())
            }
        },
    )
    .await;
    pods.patch(
        "gated",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}})),
    )
    .await
    .unwrap();
    let restarted = wait_for(
        "the container restarted on the new image",
        Duration::from_secs(5),
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get("gated").await.ok()?;
                let cs = p
                    .status
                    .as_ref()?
                    .container_statuses
                    .as_ref()?
                    .first()?
                    .clone();
                (cs.image == "nginx:2" && cs.ready && cs.restart_count == 1).then_some(p)
            }
        },
    )
    .await;
    assert_eq!(restarted.status.unwrap().pod_ip, Some(ip), "same IP");
    assert_eq!(restarted.metadata.uid, uid, "same pod");
}

#[tokio::test]
async fn unready_images_never_become_ready() {
    let sim = start().await;
    let c = client(&sim, "dca").await;
    let pods: Api<Pod> = Api::default_namespaced(c);
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stuck"},
        "spec": {"containers": [{"name": "app", "image": "demo:2-unready"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    wait_for("running", Duration::from_secs(5), || {
        let pods = pods.clone();
        async move {
            let p = pods.get("stuck").await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // several kubelet start periods
    let p = pods.get("stuck").await.unwrap();
    assert_eq!(
        condition(&p, "Ready").map(|c| c.0).as_deref(),
        Some("False")
    );
}
