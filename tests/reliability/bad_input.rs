//! The bad-input table: invalid CafeDeployments, InPlaceSets, MemberClusters and kubeconfig
//! Secrets, each with the answer it must get: a 422 whose causes name the field (refused by the
//! API, nothing stored), or a status condition with a reason and a message (refused by a
//! controller). All of it is sent to one hub whose healthy CafeDeployment is watched by the
//! invariant checker the whole time: nothing already running may be disturbed.

use crate::{common, hub_support, invariants};

use cafe::api::labels::SYSTEM_NAMESPACE;
use hub_support::{Hub, WAIT};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// What a bad input must get.
enum Expect {
    /// 422 Invalid, a cause (or the message) naming this field.
    Refused(&'static str),
    /// Stored; the controller reports this condition type with this reason.
    Condition(&'static str, &'static str),
}

/// Where an input goes.
#[derive(Clone, Copy)]
enum Target {
    CafeDeployment,
    InPlaceSet,
    MemberCluster,
}

struct Case {
    name: &'static str,
    target: Target,
    object: Value,
    expect: Expect,
}

fn cafedeployment(name: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut v = json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": name, "namespace": "bad"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": "demo:1"}]}},
            "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"], "unitReplicas": {}},
            "strategy": {"upgradeType": "Beta", "batchSize": 2, "maxUnavailablePerUnit": 1},
        },
    });
    change(&mut v);
    v
}

fn inplaceset(name: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut v = json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "InPlaceSet",
        "metadata": {"name": name, "namespace": "bad"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": "demo:1"}]}},
        },
    });
    change(&mut v);
    v
}

fn membercluster(name: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut v = json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "MemberCluster",
        "metadata": {"name": name, "labels": {"unit.apps.cafe.io/DataCenter": "DCZ"}},
        "spec": {"kubeconfigSecretRef": {"namespace": SYSTEM_NAMESPACE, "name": format!("{name}-kubeconfig"), "key": "kubeconfig"}},
    });
    change(&mut v);
    v
}

fn cd(name: &'static str, change: impl FnOnce(&mut Value), expect: Expect) -> Case {
    Case {
        name,
        target: Target::CafeDeployment,
        object: cafedeployment(name, change),
        expect,
    }
}

fn ips(name: &'static str, change: impl FnOnce(&mut Value), expect: Expect) -> Case {
    Case {
        name,
        target: Target::InPlaceSet,
        object: inplaceset(name, change),
        expect,
    }
}

fn mc(name: &'static str, change: impl FnOnce(&mut Value), expect: Expect) -> Case {
    Case {
        name,
        target: Target::MemberCluster,
        object: membercluster(name, change),
        expect,
    }
}

fn table() -> Vec<Case> {
    use Expect::{Condition, Refused};
    vec![
        // CafeDeployment: numbers, types and ranges.
        cd(
            "negative-replicas",
            |o| o["spec"]["replicas"] = json!(-1),
            Refused("spec.replicas"),
        ),
        cd(
            "replicas-as-text",
            |o| o["spec"]["replicas"] = json!("ten"),
            Refused("spec.replicas"),
        ),
        cd(
            "replicas-beyond-int32",
            |o| o["spec"]["replicas"] = json!(4_294_967_296_i64),
            Refused("spec.replicas"),
        ),
        cd(
            "replicas-fraction",
            |o| o["spec"]["replicas"] = json!(2.5),
            Refused("spec.replicas"),
        ),
        cd(
            "min-ready-negative",
            |o| o["spec"]["minReadySeconds"] = json!(-1),
            Refused("spec.minReadySeconds"),
        ),
        // Topology.
        cd(
            "no-units",
            |o| o["spec"]["topology"]["values"] = json!([]),
            Refused("spec.topology.values"),
        ),
        cd(
            "duplicate-units",
            |o| o["spec"]["topology"]["values"] = json!(["DCA", "DCA"]),
            Refused("spec.topology.values"),
        ),
        cd(
            "unit-replicas-unknown-unit",
            |o| o["spec"]["topology"]["unitReplicas"] = json!({"DCC": 1}),
            Refused("spec.topology.unitReplicas"),
        ),
        cd(
            "unit-replicas-over-100-percent",
            |o| o["spec"]["topology"]["unitReplicas"] = json!({"DCA": "120%"}),
            Refused("spec.topology.unitReplicas"),
        ),
        cd(
            "unit-replicas-negative",
            |o| o["spec"]["topology"]["unitReplicas"] = json!({"DCA": -2}),
            Refused("spec.topology.unitReplicas"),
        ),
        cd(
            "unit-replicas-not-a-percent",
            |o| o["spec"]["topology"]["unitReplicas"] = json!({"DCA": "half"}),
            Refused("spec.topology.unitReplicas"),
        ),
        cd(
            "unit-type-missing",
            |o| {
                o["spec"]["topology"]
                    .as_object_mut()
                    .unwrap()
                    .remove("unitType");
            },
            Refused("spec.topology.unitType"),
        ),
        cd(
            "failover-toleration-negative",
            |o| {
                o["spec"]["topology"]["failover"] = json!({"enable": true, "tolerationSeconds": -1})
            },
            Refused("spec.topology.failover.tolerationSeconds"),
        ),
        // Strategy.
        cd(
            "batch-size-zero",
            |o| o["spec"]["strategy"]["batchSize"] = json!(0),
            Refused("spec.strategy.batchSize"),
        ),
        cd(
            "batch-size-bad-percent",
            |o| o["spec"]["strategy"]["batchSize"] = json!("abc%"),
            Refused("spec.strategy.batchSize"),
        ),
        cd(
            "batch-size-over-100-percent",
            |o| o["spec"]["strategy"]["batchSize"] = json!("150%"),
            Refused("spec.strategy.batchSize"),
        ),
        cd(
            "max-unavailable-over-100-percent",
            |o| o["spec"]["strategy"]["maxUnavailablePerUnit"] = json!("150%"),
            Refused("spec.strategy.maxUnavailablePerUnit"),
        ),
        cd(
            "max-unavailable-zero",
            |o| o["spec"]["strategy"]["maxUnavailablePerUnit"] = json!(0),
            Refused("spec.strategy.maxUnavailablePerUnit"),
        ),
        cd(
            "max-unavailable-zero-percent",
            |o| o["spec"]["strategy"]["maxUnavailablePerUnit"] = json!("0%"),
            Refused("spec.strategy.maxUnavailablePerUnit"),
        ),
        cd(
            "max-unavailable-negative",
            |o| o["spec"]["strategy"]["maxUnavailablePerUnit"] = json!(-1),
            Refused("spec.strategy.maxUnavailablePerUnit"),
        ),
        cd(
            "upgrade-type-unknown",
            |o| o["spec"]["strategy"]["upgradeType"] = json!("Canary"),
            Refused("spec.strategy.upgradeType"),
        ),
        cd(
            "pod-update-policy-unknown",
            |o| o["spec"]["strategy"]["podUpdatePolicy"] = json!("Sometimes"),
            Refused("spec.strategy.podUpdatePolicy"),
        ),
        cd(
            "progress-deadline-negative",
            |o| o["spec"]["strategy"]["progressDeadlineSeconds"] = json!(-5),
            Refused("spec.strategy.progressDeadlineSeconds"),
        ),
        cd(
            "grace-period-negative",
            |o| o["spec"]["strategy"]["gracePeriodSeconds"] = json!(-1),
            Refused("spec.strategy.gracePeriodSeconds"),
        ),
        cd(
            "pod-set-type-unknown",
            |o| o["spec"]["podSetType"] = json!("DaemonSet"),
            Refused("spec.podSetType"),
        ),
        // Selector and template.
        cd(
            "selector-empty",
            |o| o["spec"]["selector"] = json!({}),
            Refused("spec.selector"),
        ),
        cd(
            "selector-not-matching-template",
            |o| o["spec"]["selector"] = json!({"matchLabels": {"app": "other"}}),
            Refused("spec.selector"),
        ),
        cd(
            "template-missing",
            |o| {
                o["spec"].as_object_mut().unwrap().remove("template");
            },
            Refused("spec.template"),
        ),
        cd(
            "template-without-containers",
            |o| o["spec"]["template"]["spec"]["containers"] = json!([]),
            Refused("spec.template.spec.containers"),
        ),
        cd(
            "container-without-name",
            |o| o["spec"]["template"]["spec"]["containers"] = json!([{"image": "demo:1"}]),
            Refused("spec.template.spec.containers[0].name"),
        ),
        cd(
            "name-not-a-dns-label",
            |o| o["metadata"]["name"] = json!("Bad_Name"),
            Refused("metadata.name"),
        ),
        // Too long for the label that carries it to the InPlaceSets made from it.
        cd(
            "name-too-long-for-derived-labels",
            |o| o["metadata"]["name"] = json!("x".repeat(64)),
            Refused("metadata.name"),
        ),
        cd(
            "batch-size-making-too-many-groups",
            |o| {
                o["spec"]["replicas"] = json!(5000);
                o["spec"]["strategy"]["batchSize"] = json!(2);
            },
            Refused("spec.strategy.batchSize"),
        ),
        cd(
            "replicas-beyond-any-fleet",
            |o| o["spec"]["replicas"] = json!(1_000_001),
            Refused("spec.replicas"),
        ),
        // Accepted by the API, refused by the hub with a condition.
        cd(
            "unit-with-no-member",
            |o| o["spec"]["topology"]["values"] = json!(["DCA", "DCQ"]),
            Condition("UnitsResolved", "NoMemberForUnit"),
        ),
        cd(
            "fixed-counts-exceed-replicas",
            |o| o["spec"]["topology"]["unitReplicas"] = json!({"DCA": 3, "DCB": 3}),
            Condition("UnitsResolved", "UnitReplicasExceedReplicas"),
        ),
        // InPlaceSet, in a member.
        ips(
            "ips-negative-replicas",
            |o| o["spec"]["replicas"] = json!(-1),
            Refused("spec.replicas"),
        ),
        ips(
            "ips-replicas-as-text",
            |o| o["spec"]["replicas"] = json!("one"),
            Refused("spec.replicas"),
        ),
        ips(
            "ips-selector-not-matching",
            |o| o["spec"]["selector"] = json!({"matchLabels": {"app": "other"}}),
            Refused("spec.selector"),
        ),
        ips(
            "ips-selector-empty",
            |o| o["spec"]["selector"] = json!({}),
            Refused("spec.selector"),
        ),
        ips(
            "ips-template-missing",
            |o| {
                o["spec"].as_object_mut().unwrap().remove("template");
            },
            Refused("spec.template"),
        ),
        ips(
            "ips-policy-unknown",
            |o| o["spec"]["strategy"] = json!({"podUpdatePolicy": "Sometimes"}),
            Refused("spec.strategy.podUpdatePolicy"),
        ),
        ips(
            "ips-partition-negative",
            |o| o["spec"]["strategy"] = json!({"partition": -1}),
            Refused("spec.strategy.partition"),
        ),
        ips(
            "ips-max-unavailable-over-100-percent",
            |o| o["spec"]["strategy"] = json!({"maxUnavailable": "150%"}),
            Refused("spec.strategy.maxUnavailable"),
        ),
        // MemberCluster, on the hub.
        mc(
            "mc-no-secret-ref",
            |o| {
                o["spec"]
                    .as_object_mut()
                    .unwrap()
                    .remove("kubeconfigSecretRef");
            },
            Refused("spec.kubeconfigSecretRef"),
        ),
        mc(
            "mc-secret-ref-without-name",
            |o| {
                o["spec"]["kubeconfigSecretRef"]
                    .as_object_mut()
                    .unwrap()
                    .remove("name");
            },
            Refused("spec.kubeconfigSecretRef.name"),
        ),
        mc(
            "mc-pointing-at-nothing",
            |_| {},
            Condition("Ready", "SecretNotFound"),
        ),
        mc(
            "mc-broken-kubeconfig",
            |_| {},
            Condition("Ready", "KubeconfigInvalid"),
        ),
        mc(
            "mc-kubeconfig-without-credentials",
            |_| {},
            Condition("Ready", "KubeconfigInvalid"),
        ),
    ]
}

/// The Secrets some MemberCluster cases point at.
fn secret_text(case: &str) -> Option<&'static str> {
    match case {
        "mc-broken-kubeconfig" => Some("this: [is not a kubeconfig"),
        "mc-kubeconfig-without-credentials" => Some(
            "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\ncurrent-context: nowhere\n",
        ),
        _ => None,
    }
}

fn resource(target: Target) -> (ApiResource, bool) {
    let kind = match target {
        Target::CafeDeployment => "CafeDeployment",
        Target::InPlaceSet => "InPlaceSet",
        Target::MemberCluster => "MemberCluster",
    };
    let gvk = GroupVersionKind::gvk("apps.cafe.io", "v1alpha1", kind);
    (
        ApiResource::from_gvk(&gvk),
        !matches!(target, Target::MemberCluster),
    )
}

/// Sends `object` raw (it may not even fit the Rust types) and returns the API's answer.
async fn send(
    client: &kube::Client,
    target: Target,
    object: &Value,
) -> Result<(), kube::core::Status> {
    let (resource, namespaced) = resource(target);
    let path = if namespaced {
        format!(
            "/apis/apps.cafe.io/v1alpha1/namespaces/bad/{}",
            resource.plural
        )
    } else {
        format!("/apis/apps.cafe.io/v1alpha1/{}", resource.plural)
    };
    let request = http::Request::post(path)
        .header("Content-Type", "application/json")
        .body(object.to_string().into_bytes())
        .expect("a request");
    match client.request::<Value>(request).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(*status),
        Err(other) => panic!("not an API answer: {other}"),
    }
}

async fn condition_of(
    client: &kube::Client,
    target: Target,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let (resource, namespaced) = resource(target);
    let api: Api<DynamicObject> = if namespaced {
        Api::namespaced_with(client.clone(), "bad", &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    let object = api.get(name).await.ok()?;
    let conditions = object.data["status"]["conditions"].as_array()?.clone();
    conditions.iter().find(|c| c["type"] == type_).map(|c| {
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["reason"].as_str().unwrap_or_default().to_string(),
            c["message"].as_str().unwrap_or_default().to_string(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_answer_and_nothing_running_is_disturbed() {
    let cases = table();
    assert!(cases.len() >= 40, "the table has {} cases", cases.len());

    let mut h = Hub::start_with(common::TWO_MEMBERS, &[("dca", "DCA"), ("dcb", "DCB")]).await;
    let agents = h.run_member_agents(&["dca", "dcb"]);
    h.run_hub();
    h.wait_members_ready().await;
    for client in [&h.hub, &h.members["dca"]] {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "bad"}})).expect("namespace"),
            )
            .await
            .expect("namespace bad");
    }
    // The healthy one, running throughout.
    let checker =
        invariants::Checker::start(h.hub.clone(), h.watched(&[("DCA", "dca"), ("DCB", "dcb")]));
    h.deployments()
        .create(
            &PostParams::default(),
            &hub_support::deployment(6, &["DCA", "DCB"], json!({})),
        )
        .await
        .expect("the healthy CafeDeployment");
    let healthy = |cd: &cafe::api::CafeDeployment| {
        cd.status
            .as_ref()
            .is_some_and(|s| s.available_replicas == 6)
    };
    h.wait_status("the healthy one available", healthy).await;

    let mut wrong = vec![];
    for case in &cases {
        if let Some(text) = secret_text(case.name) {
            h.set_kubeconfig(case.name, text).await;
        }
        let client = match case.target {
            Target::InPlaceSet => h.members["dca"].clone(),
            _ => h.hub.clone(),
        };
        let answer = send(&client, case.target, &case.object).await;
        match (&case.expect, answer) {
            (Expect::Refused(field), Err(status)) => {
                let causes: Vec<String> = status
                    .details
                    .iter()
                    .flat_map(|d| d.causes.iter().map(|c| c.field.clone()))
                    .collect();
                let named =
                    causes.iter().any(|f| f.starts_with(field)) || status.message.contains(field);
                if status.code != 422 || !named {
                    wrong.push(format!(
                        "{}: expected 422 naming {field}, got {} {causes:?}: {}",
                        case.name, status.code, status.message
                    ));
                }
            }
            (Expect::Refused(field), Ok(())) => {
                wrong.push(format!(
                    "{}: accepted, expected 422 naming {field}",
                    case.name
                ));
            }
            (Expect::Condition(type_, reason), Ok(())) => {
                let name = case.object["metadata"]["name"].as_str().unwrap_or_default();
                let seen = common::wait_for_or_none(WAIT, || async {
                    let (status, r, message) =
                        condition_of(&h.hub, case.target, name, type_).await?;
                    (r == *reason).then_some((status, message))
                })
                .await;
                match seen {
                    Some((status, message)) if status != "True" && !message.is_empty() => {}
                    Some((status, message)) => wrong.push(format!(
                        "{}: {type_} {reason} but status {status:?}, message {message:?}",
                        case.name
                    )),
                    None => wrong.push(format!(
                        "{}: no {type_} condition with reason {reason}: {:?}",
                        case.name,
                        condition_of(&h.hub, case.target, name, type_).await
                    )),
                }
            }
            (Expect::Condition(type_, reason), Err(status)) => wrong.push(format!(
                "{}: refused ({} {}), expected a {type_} condition {reason}",
                case.name, status.code, status.message
            )),
        }
    }

    // Nothing already running was disturbed.
    let cd = h.deployments().get("demo").await.expect("the healthy one");
    assert!(healthy(&cd), "the healthy one: {:?}", cd.status);
    for member in ["dca", "dcb"] {
        h.wait_member(member, "True", "Probed").await;
    }
    checker.assert_clean().await;
    assert!(
        wrong.is_empty(),
        "{} of {} cases answered wrongly:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    h.stop_hub().await;
    agents.cancel();
}
