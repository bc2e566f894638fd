//! The hub projects a CafeDeployment into its members: one InPlaceSet per unit, in the member the
//! unit resolves to, with the unit's share of the replicas; it follows scaling, unit removal and
//! deletion, reports what the members report, refuses what it cannot place, and a restart writes
//! nothing to the members.
//!
//! Except for the last test, the member InPlaceSet controller is not run: the tests play the
//! member by writing InPlaceSet status through the status subresource.

mod common;
mod hub_support;
mod invariants;

use std::time::Duration;

use cafe::api::labels::{CAFEDEPLOYMENT, CAFEDEPLOYMENT_NAMESPACE, CLEANUP_FINALIZER, UNIT};
use cafe::api::{CafeDeployment, IntOrPercent, MemberCluster};
use cafe::plan::revision::revision_hash;
use common::wait_for;
use hub_support::{Hub, MEMBERS, WAIT, condition, deployment, scale};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

async fn create(h: &Hub, cd: &CafeDeployment) {
    h.deployments()
        .create(&PostParams::default(), cd)
        .await
        .expect("CafeDeployment created");
}

/// The example: replicas 10, unitReplicas {DCA: 4, DCB: "30%"} over DCA, DCB, DCC.
fn example() -> CafeDeployment {
    deployment(10, &["DCA", "DCB", "DCC"], json!({"DCA": 4, "DCB": "30%"}))
}

#[tokio::test]
async fn units_get_their_share_in_the_right_members_and_status_adds_them_up() {
    let mut h = Hub::start().await;
    h.run_hub();
    h.wait_members_ready().await;
    create(&h, &example()).await;

    for (member, unit, replicas) in [("dca", "DCA", 4), ("dcb", "DCB", 3), ("dcc", "DCC", 3)] {
        let set = h.wait_set(member, Some(replicas)).await.unwrap();
        let labels = set.labels();
        assert_eq!(labels[CAFEDEPLOYMENT], "demo");
        assert_eq!(labels[CAFEDEPLOYMENT_NAMESPACE], "default");
        assert_eq!(labels[UNIT], unit);
        let selector = set.spec.selector.match_labels.clone().unwrap();
        assert_eq!(selector["app"], "demo");
        assert_eq!(selector[UNIT], unit);
        let template_labels = set.spec.template.metadata.clone().unwrap().labels.unwrap();
        assert_eq!(template_labels[UNIT], unit);
        assert_eq!(set.spec.strategy.partition, 0);
        // 25% of 4 is 1; of 3 it rounds down to 0 and is raised to 1.
        assert_eq!(set.spec.strategy.max_unavailable, IntOrPercent::Int(1));
    }

    for (member, _) in MEMBERS {
        h.report_running(member).await;
    }
    let cd = h
        .wait_status("status ready 10 and progress complete", |cd| {
            let s = cd.status.clone().unwrap_or_default();
            s.ready_replicas == 10
                && condition(cd, "Progressing").is_some_and(|c| c.reason == "RolloutCompleted")
        })
        .await;
    let status = cd.status.clone().unwrap();
    assert!(cd.finalizers().iter().any(|f| f == CLEANUP_FINALIZER));
    assert_eq!(status.observed_generation, cd.meta().generation);
    assert_eq!((status.replicas, status.available_replicas), (10, 10));
    assert_eq!(status.updated_replicas, 10);
    assert_eq!(status.selector.as_deref(), Some("app=demo"));
    let revision = revision_hash(&cd.spec.template);
    assert_eq!(status.update_revision.as_deref(), Some(revision.as_str()));
    assert_eq!(status.current_revision.as_deref(), Some(revision.as_str()));
    let rows: Vec<(String, Option<String>, i32, i32, bool)> = status
        .units
        .iter()
        .map(|u| {
            (
                u.name.clone(),
                u.cluster.clone(),
                u.desired_replicas,
                u.ready_replicas,
                u.reachable,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("DCA".into(), Some("dca".into()), 4, 4, true),
            ("DCB".into(), Some("dcb".into()), 3, 3, true),
            ("DCC".into(), Some("dcc".into()), 3, 3, true),
        ]
    );
    assert_eq!(condition(&cd, "Available").unwrap().status, "True");
    let resolved = condition(&cd, "UnitsResolved").unwrap();
    assert_eq!(resolved.status, "True");
    assert_eq!(resolved.message, "DCA -> dca, DCB -> dcb, DCC -> dcc");

    // A unit falling below its floor shows in the status.
    let sets = h.sets("dca");
    sets.patch_status(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"readyReplicas": 2, "availableReplicas": 2}})),
    )
    .await
    .unwrap();
    let cd = h
        .wait_status("Available=False for DCA", |cd| {
            condition(cd, "Available").is_some_and(|c| c.status == "False")
        })
        .await;
    let message = condition(&cd, "Available").unwrap().message;
    assert!(message.contains("DCA 2/4 available (floor 3)"), "{message}");
    h.stop_hub().await;
}

#[tokio::test]
async fn scaling_to_13_and_to_5_updates_the_member_inplacesets() {
    let mut h = Hub::start().await;
    let _members = h.fake_members().drop_guard();
    h.run_hub();
    h.wait_members_ready().await;
    create(&h, &example()).await;
    h.wait_set("dcc", Some(3)).await;

    // 13: DCA 4, DCB 30% = 3 (3.9 rounded down), DCC the remaining 6.
    scale(&h.deployments(), 13).await;
    for (member, replicas) in [("dca", 4), ("dcb", 3), ("dcc", 6)] {
        h.wait_set(member, Some(replicas)).await;
    }
    // 5: DCA 4, DCB 1 (1.5), DCC 0.
    scale(&h.deployments(), 5).await;
    for (member, replicas) in [("dca", 4), ("dcb", 1), ("dcc", 0)] {
        h.wait_set(member, Some(replicas)).await;
    }
    let cd = h
        .wait_status("status follows the new generation", |cd| {
            let s = cd.status.clone().unwrap_or_default();
            s.observed_generation == cd.meta().generation
                && s.units
                    .iter()
                    .map(|u| u.desired_replicas)
                    .collect::<Vec<_>>()
                    == vec![4, 1, 0]
        })
        .await;
    assert_eq!(cd.spec.replicas, 5);
    h.stop_hub().await;
}

#[tokio::test]
async fn deleting_the_cafedeployment_removes_its_inplacesets_from_every_member() {
    let mut h = Hub::start().await;
    h.run_hub();
    h.wait_members_ready().await;
    create(&h, &example()).await;
    for (member, replicas) in [("dca", 4), ("dcb", 3), ("dcc", 3)] {
        h.wait_set(member, Some(replicas)).await;
    }
    h.deployments()
        .delete("demo", &DeleteParams::default())
        .await
        .unwrap();
    for (member, _) in MEMBERS {
        h.wait_set(member, None).await;
    }
    let api = h.deployments();
    wait_for("the CafeDeployment is gone", WAIT, || {
        let api = api.clone();
        async move { api.get_opt("demo").await.ok()?.is_none().then_some(()) }
    })
    .await;
    h.stop_hub().await;
}

#[tokio::test]
async fn removing_a_unit_from_values_deletes_its_inplaceset() {
    let mut h = Hub::start().await;
    let _members = h.fake_members().drop_guard();
    h.run_hub();
    h.wait_members_ready().await;
    create(&h, &deployment(9, &["DCA", "DCB", "DCC"], json!({}))).await;
    for (member, _) in MEMBERS {
        h.wait_set(member, Some(3)).await;
    }
    h.deployments()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"topology": {"values": ["DCA", "DCB"]}}})),
        )
        .await
        .unwrap();
    h.wait_set("dcc", None).await;
    h.wait_set("dca", Some(5)).await;
    h.wait_set("dcb", Some(4)).await;
    h.stop_hub().await;
}

#[tokio::test]
async fn a_unit_with_no_member_is_a_condition_naming_it_and_nothing_is_created() {
    let mut h = Hub::start().await;
    h.run_hub();
    h.wait_members_ready().await;
    create(&h, &deployment(10, &["DCA", "DCX"], json!({}))).await;
    let cd = h
        .wait_status("UnitsResolved=False", |cd| {
            condition(cd, "UnitsResolved").is_some_and(|c| c.status == "False")
        })
        .await;
    let c = condition(&cd, "UnitsResolved").unwrap();
    assert_eq!(c.reason, "NoMemberForUnit");
    assert!(c.message.contains("unit DCX"), "{}", c.message);
    assert!(
        c.message.contains("unit.apps.cafe.io/DataCenter=DCX"),
        "{}",
        c.message
    );
    assert_eq!(c.observed_generation, cd.meta().generation);
    for (member, _) in MEMBERS {
        assert!(h.sets(member).get_opt("demo").await.unwrap().is_none());
        assert_eq!(h.set_writes(member), 0, "no InPlaceSet written in {member}");
    }

    // Relabelling member dcc as DCX resolves the unit, and the InPlaceSets appear.
    let mcs: Api<MemberCluster> = Api::all(h.hub.clone());
    mcs.patch(
        "dcc",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"unit.apps.cafe.io/DataCenter": "DCX"}}})),
    )
    .await
    .unwrap();
    h.wait_set("dca", Some(5)).await;
    h.wait_set("dcc", Some(5)).await;
    h.stop_hub().await;
}

#[tokio::test]
async fn a_spec_whose_fixed_counts_exceed_replicas_is_a_condition_and_nothing_is_created() {
    let mut h = Hub::start().await;
    h.run_hub();
    h.wait_members_ready().await;
    create(&h, &deployment(3, &["DCA", "DCB"], json!({"DCA": 4}))).await;
    let cd = h
        .wait_status("UnitsResolved=False", |cd| {
            condition(cd, "UnitsResolved").is_some_and(|c| c.status == "False")
        })
        .await;
    let c = condition(&cd, "UnitsResolved").unwrap();
    assert_eq!(c.reason, "UnitReplicasExceedReplicas");
    assert!(c.message.contains("DCA: 4"), "{}", c.message);
    for (member, _) in MEMBERS {
        assert_eq!(h.set_writes(member), 0, "no InPlaceSet written in {member}");
    }
    h.stop_hub().await;
}

#[tokio::test]
async fn a_hub_restart_writes_no_inplacesets() {
    let mut h = Hub::start().await;
    h.run_hub();
    h.wait_members_ready().await;
    create(&h, &example()).await;
    for (member, replicas) in [("dca", 4), ("dcb", 3), ("dcc", 3)] {
        h.wait_set(member, Some(replicas)).await;
        h.report_running(member).await;
    }
    h.wait_status("status ready 10", |cd| {
        cd.status.as_ref().is_some_and(|s| s.ready_replicas == 10)
    })
    .await;

    let set_writes: Vec<u64> = MEMBERS.iter().map(|(m, _)| h.set_writes(m)).collect();
    let hub = h.sim.cluster("hub").unwrap().clone();
    let deployment_writes = || {
        hub.metrics.count(|l| {
            cafe_sim::metrics::WRITE_VERBS.contains(&l.verb.as_str())
                && l.resource == "cafedeployments"
                && l.subresource.is_empty()
        })
    };
    let before = deployment_writes();

    h.stop_hub().await;
    h.run_hub();
    // Change a member under the restarted hub: once the status shows it, the new hub has
    // reconciled with full caches.
    h.sets("dca")
        .patch_status(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 3, "availableReplicas": 3}})),
        )
        .await
        .unwrap();
    h.wait_status("the restarted hub reports ready 9", |cd| {
        cd.status.as_ref().is_some_and(|s| s.ready_replicas == 9)
    })
    .await;
    // And a scale still works after the restart (a write that is needed).
    let after: Vec<u64> = MEMBERS.iter().map(|(m, _)| h.set_writes(m)).collect();
    assert_eq!(after, set_writes, "no InPlaceSet writes across the restart");
    assert_eq!(
        deployment_writes(),
        before,
        "no CafeDeployment writes beyond status"
    );
    scale(&h.deployments(), 13).await;
    h.wait_set("dcc", Some(6)).await;
    h.stop_hub().await;
}

#[tokio::test]
async fn deletion_waits_for_an_unreachable_member_and_says_which() {
    let mut h = Hub::start().await;
    h.run_hub();
    h.wait_members_ready().await;
    create(&h, &example()).await;
    for (member, replicas) in [("dca", 4), ("dcb", 3), ("dcc", 3)] {
        h.wait_set(member, Some(replicas)).await;
    }
    h.sim
        .cluster("dcb")
        .unwrap()
        .faults
        .outage(Duration::from_secs(6));
    h.wait_member("dcb", "False", "Unreachable").await;
    h.deployments()
        .delete("demo", &DeleteParams::default())
        .await
        .unwrap();
    let cd = h
        .wait_status("CleanedUp=False naming dcb", |cd| {
            condition(cd, "CleanedUp").is_some_and(|c| c.status == "False")
        })
        .await;
    let message = condition(&cd, "CleanedUp").unwrap().message;
    assert!(message.contains("member dcb"), "{message}");
    assert!(message.contains("Unreachable"), "{message}");
    assert!(cd.finalizers().iter().any(|f| f == CLEANUP_FINALIZER));
    h.wait_set("dca", None).await;
    h.wait_set("dcc", None).await;

    // When dcb answers again its InPlaceSet goes, and so does the CafeDeployment.
    h.wait_set("dcb", None).await;
    let api = h.deployments();
    wait_for("the CafeDeployment is gone", WAIT, || {
        let api = api.clone();
        async move { api.get_opt("demo").await.ok()?.is_none().then_some(()) }
    })
    .await;
    h.stop_hub().await;
}

/// The whole path with real pods: the member InPlaceSet controller (`cafe::member::run`) runs in
/// every member.
#[tokio::test]
async fn pods_run_in_every_unit_and_the_hub_reports_them_ready() {
    let mut h = Hub::start().await;
    let members = h.run_member_agents(&["dca", "dcb", "dcc"]);
    h.run_hub();
    h.wait_members_ready().await;
    create(&h, &example()).await;
    for (member, replicas) in [("dca", 4usize), ("dcb", 3), ("dcc", 3)] {
        let pods: Api<Pod> = Api::namespaced(h.members[member].clone(), "default");
        wait_for(&format!("{replicas} ready pods in {member}"), WAIT, || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default().labels(UNIT)).await.ok()?;
                let ready = list
                    .items
                    .iter()
                    .filter(|p| {
                        p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .count();
                (ready == replicas).then_some(())
            }
        })
        .await;
    }
    h.wait_status("status ready 10", |cd| {
        cd.status.as_ref().is_some_and(|s| s.ready_replicas == 10)
            && condition(cd, "Available").is_some_and(|c| c.status == "True")
    })
    .await;
    // One revision function everywhere: each member reports the hub's update revision.
    let hub_revision = h
        .deployments()
        .get("demo")
        .await
        .unwrap()
        .status
        .and_then(|s| s.update_revision)
        .expect("hub update revision");
    for (member, _) in MEMBERS {
        let sets: Api<cafe::api::InPlaceSet> =
            Api::namespaced(h.members[member].clone(), "default");
        let ips = sets.get("demo").await.unwrap();
        assert_eq!(
            ips.status.and_then(|s| s.update_revision).as_deref(),
            Some(hub_revision.as_str()),
            "{member} agrees with the hub on the revision"
        );
    }
    scale(&h.deployments(), 13).await;
    h.wait_status("status ready 13", |cd| {
        cd.status
            .as_ref()
            .is_some_and(|s| s.ready_replicas == 13 && s.replicas == 13)
    })
    .await;
    scale(&h.deployments(), 5).await;
    h.wait_status("status ready 5", |cd| {
        cd.status.as_ref().is_some_and(|s| s.ready_replicas == 5)
    })
    .await;
    h.deployments()
        .delete("demo", &DeleteParams::default())
        .await
        .unwrap();
    for (member, _) in MEMBERS {
        let pods: Api<Pod> = Api::namespaced(h.members[member].clone(), "default");
        wait_for(&format!("no pods in {member}"), WAIT, || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default().labels(UNIT)).await.ok()?;
                list.items.is_empty().then_some(())
            }
        })
        .await;
    }
    h.stop_hub().await;
    members.cancel();
}
