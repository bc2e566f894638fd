//! The hub probes every registered member and reports it on its MemberCluster: Ready with a reason
//! (Probed, Unauthorized, SecretNotFound, KubeconfigInvalid, Unreachable), Kubernetes version,
//! units and capacity; a fixed Secret or a member that answers again turns it Ready.

mod common;
mod hub_support;
mod invariants;

use std::time::Duration;

use cafe::api::MemberCluster;
use cafe::api::labels::SYSTEM_NAMESPACE;
use hub_support::{Hub, ready_of};
use kube::api::{Api, PostParams};
use serde_json::json;

/// The member as soon as the hub reports the room its agent measured.
async fn wait_capacity(h: &Hub, member: &str) -> MemberCluster {
    let mcs: Api<MemberCluster> = Api::all(h.hub.clone());
    common::wait_for(
        &format!("{member}'s capacity on its MemberCluster"),
        Duration::from_secs(30),
        || async {
            mcs.get(member)
                .await
                .ok()
                .filter(|mc| mc.status.as_ref().is_some_and(|s| s.capacity.is_some()))
        },
    )
    .await
}

#[tokio::test]
async fn registered_members_report_ready_version_units_and_capacity() {
    let mut h = Hub::start().await;
    let agents = h.run_member_agents(&["dca", "dcb", "dcc"]);
    h.run_hub();
    let dca = h.wait_member("dca", "True", "Probed").await;
    let status = dca.status.clone().unwrap();
    assert_eq!(status.kubernetes_version.as_deref(), Some("v1.33.0"));
    assert_eq!(status.units.as_deref(), Some("DataCenter=DCA"));
    assert!(status.last_probe_time.is_some());
    // The room is the member agent's measure (the hub lists no node or pod there).
    let capacity = wait_capacity(&h, "dca")
        .await
        .status
        .unwrap()
        .capacity
        .unwrap();
    assert_eq!(capacity.nodes, 3);
    assert_eq!(capacity.allocatable.cpu_millis, 24_000);
    assert_eq!(capacity.allocatable.memory_bytes, 48 << 30);
    assert_eq!(capacity.allocatable.pods, 330);
    assert_eq!(
        capacity.free.iter().map(|f| f.nodes).sum::<i32>(),
        3,
        "{capacity:?}"
    );
    let dcc = wait_capacity(&h, "dcc").await;
    assert_eq!(dcc.status.unwrap().capacity.unwrap().nodes, 2);
    h.stop_hub().await;
    agents.cancel();
}

#[tokio::test]
async fn a_secret_with_a_bad_token_is_unauthorized_until_fixed() {
    let mut h = Hub::start().await;
    let token = h.sim.cluster("dca").unwrap().identity.token.clone();
    let bad = h
        .sim
        .kubeconfig(Some("dca"))
        .replace(&token, "not-the-token");
    h.register("intruder", "DCZ", &bad).await;
    h.run_hub();
    let mc = h.wait_member("intruder", "False", "Unauthorized").await;
    let ready = ready_of(&mc).unwrap();
    assert!(ready.message.contains("401"), "{}", ready.message);
    assert!(
        !ready.message.contains("not-the-token"),
        "no credentials in messages"
    );

    // A corrected Secret restarts the member's client and it turns Ready.
    let good = h.sim.kubeconfig(Some("dca"));
    h.set_kubeconfig("intruder", &good).await;
    h.wait_member("intruder", "True", "Probed").await;
    h.stop_hub().await;
}

#[tokio::test]
async fn a_missing_secret_and_a_broken_kubeconfig_are_reported() {
    let mut h = Hub::start().await;
    h.run_hub();
    let mcs: Api<MemberCluster> = Api::all(h.hub.clone());
    let orphan: MemberCluster = serde_json::from_value(json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "MemberCluster",
        "metadata": {"name": "orphan", "labels": {"unit.apps.cafe.io/DataCenter": "DCY"}},
        "spec": {"kubeconfigSecretRef": {"namespace": SYSTEM_NAMESPACE, "name": "nowhere"}},
    }))
    .unwrap();
    mcs.create(&PostParams::default(), &orphan).await.unwrap();
    let mc = h.wait_member("orphan", "False", "SecretNotFound").await;
    assert!(
        ready_of(&mc)
            .unwrap()
            .message
            .contains("cafe-system/nowhere"),
        "{:?}",
        ready_of(&mc)
    );

    h.register("garbled", "DCW", "this: [is not a kubeconfig")
        .await;
    h.wait_member("garbled", "False", "KubeconfigInvalid").await;
    h.stop_hub().await;
}

#[tokio::test]
async fn an_unreachable_member_is_reported_and_recovers() {
    let mut h = Hub::start().await;
    let agents = h.run_member_agents(&["dcb"]);
    h.run_hub();
    h.wait_member("dcb", "True", "Probed").await;
    wait_capacity(&h, "dcb").await;
    h.sim
        .cluster("dcb")
        .unwrap()
        .faults
        .outage(Duration::from_secs(3));
    let mc = h.wait_member("dcb", "False", "Unreachable").await;
    // Last seen version and capacity stay while it is away.
    let status = mc.status.unwrap();
    assert_eq!(status.kubernetes_version.as_deref(), Some("v1.33.0"));
    assert!(status.capacity.is_some());
    h.wait_member("dcb", "True", "Probed").await;
    h.stop_hub().await;
    agents.cancel();
}

/// A member without the InPlaceSet CRD (never installed, or deleted after the hub synced) is not
/// Ready, with the reason and the command that fixes it, and a Warning Event; installing the CRD
/// makes it Ready.
#[tokio::test]
async fn a_member_without_the_crd_is_not_ready() {
    use k8s_openapi::api::core::v1::Event;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DeleteParams, ListParams};

    // No member registered yet, so no member has cafe's CRDs.
    let mut h = Hub::start_with(hub_support::THREE_MEMBERS, &[]).await;
    let dca = common::client(&h.sim, "dca").await;
    h.register("dca", "DCA", &h.sim.kubeconfig(Some("dca")))
        .await;
    h.members.insert("dca".to_string(), dca.clone());
    h.keep_agent_lease("dca");
    h.run_hub();

    let fix = "cafe crds | kubectl --context dca apply -f -";
    let mc = h.wait_member("dca", "False", "CRDNotInstalled").await;
    let message = ready_of(&mc).unwrap().message;
    assert!(message.contains(fix), "{message}");
    let events: Api<Event> = Api::namespaced(h.hub.clone(), "default");
    common::wait_for(
        "a MemberNotReady Warning for dca",
        hub_support::WAIT,
        || async {
            events
                .list(&ListParams::default().fields("type=Warning,reason=MemberNotReady"))
                .await
                .ok()?
                .items
                .iter()
                .any(|e| e.involved_object.name.as_deref() == Some("dca"))
                .then_some(())
        },
    )
    .await;

    hub_support::install_crds(&dca, cafe::hub::crds::member_crds()).await;
    h.wait_member("dca", "True", "Probed").await;

    // Deleted after the hub's cache was filled: the watch fails, and the member is not Ready
    // again rather than planned from a frozen cache.
    let crds: Api<CustomResourceDefinition> = Api::all(dca.clone());
    for name in cafe::hub::crds::member_crds() {
        crds.delete(&name, &DeleteParams::default()).await.unwrap();
    }
    let mc = h.wait_member("dca", "False", "CRDNotInstalled").await;
    assert!(ready_of(&mc).unwrap().message.contains(fix));
    h.stop_hub().await;
}

/// A member that answers again is written to only once the hub has said it is Ready: while
/// the MemberCluster still reports it lost (here the status write is forbidden), nothing of
/// the hub reaches it, and everything does once the report is out.
#[tokio::test]
async fn a_member_back_is_not_written_to_before_the_hub_reports_it_ready() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use kube::api::{Patch, PatchParams};

    let mut h = Hub::start_with(common::TWO_MEMBERS, &[("dca", "DCA"), ("dcb", "DCB")]).await;
    let agents = h.run_member_agents(&["dca", "dcb"]);
    h.run_hub();
    h.wait_members_ready().await;
    h.deployments()
        .create(
            &PostParams::default(),
            &hub_support::deployment(4, &["DCA", "DCB"], json!({})),
        )
        .await
        .unwrap();
    h.wait_status("4 available", |cd| {
        cd.status
            .as_ref()
            .is_some_and(|s| s.available_replicas == 4)
    })
    .await;

    let dcb = h.sim.cluster("dcb").unwrap();
    dcb.faults.outage(Duration::from_secs(2));
    h.wait_member("dcb", "False", "Unreachable").await;
    // The hub may no longer write MemberCluster status: dcb stays reported lost.
    let roles: Api<ClusterRole> = Api::all(common::client(&h.sim, "hub").await);
    let granted = roles.get("cafe-hub").await.unwrap();
    let mut revoked = granted.clone();
    revoked.metadata.managed_fields = None;
    if let Some(rules) = revoked.rules.as_mut() {
        rules.retain(|r| {
            !r.resources
                .as_ref()
                .is_some_and(|rs| rs.iter().any(|x| x == "memberclusters/status"))
        });
    }
    roles
        .replace("cafe-hub", &PostParams::default(), &revoked)
        .await
        .unwrap();
    common::wait_for("the outage ends", Duration::from_secs(10), || async {
        (!dcb.faults.in_outage()).then_some(())
    })
    .await;
    // dcb answers again; a scale-out would write to both members.
    let before = h.set_writes("dcb");
    h.deployments()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 6}})),
        )
        .await
        .unwrap();
    // Ten probes of the member answering, none reported: a window to see nothing happen in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mc: MemberCluster = Api::all(h.hub.clone()).get("dcb").await.unwrap();
    assert_eq!(ready_of(&mc).unwrap().status, "False");
    assert_eq!(
        h.set_writes("dcb"),
        before,
        "the hub wrote to dcb while it reported it not Ready"
    );

    let mut restored = granted;
    restored.metadata.managed_fields = None;
    restored.metadata.resource_version = None;
    roles
        .replace("cafe-hub", &PostParams::default(), &restored)
        .await
        .unwrap();
    h.wait_member("dcb", "True", "Probed").await;
    for member in ["dca", "dcb"] {
        common::wait_for(
            &format!("{member} scaled to 3"),
            Duration::from_secs(30),
            || async { (h.sets(member).get("demo").await.ok()?.spec.replicas == 3).then_some(()) },
        )
        .await;
    }
    h.stop_hub().await;
    agents.cancel();
}
