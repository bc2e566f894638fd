//! The API rejects what can be rejected statically: 422 naming the field, nothing created.

mod common;

use cafe::api::CafeDeployment;
use common::{TWO_MEMBERS, client, install_crds, start_sim};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

fn base() -> Value {
    json!({
        "apiVersion": "apps.cafe.io/v1alpha1",
        "kind": "CafeDeployment",
        "metadata": {"name": "demo"},
        "spec": {
            "replicas": 10,
            "selector": {"matchLabels": {"app": "demo"}},
            "template": {"metadata": {"labels": {"app": "demo"}}, "spec": {"containers": [{"name": "app", "image": "demo:1"}]}},
            "topology": {"unitType": "DataCenter", "values": ["DCA", "DCB"], "unitReplicas": {"DCA": 4, "DCB": "60%"}},
            "strategy": {"upgradeType": "Beta", "batchSize": 4, "maxUnavailablePerUnit": "25%"},
        },
    })
}

async fn rejected(api: &Api<CafeDeployment>, mutate: impl Fn(&mut Value), field: &str) {
    let mut obj = base();
    mutate(&mut obj);
    let cd: CafeDeployment = match serde_json::from_value(obj.clone()) {
        Ok(cd) => cd,
        Err(_) => {
            // Not even representable by the typed client; send it raw.
            let raw = obj.to_string().into_bytes();
            let req = http::Request::post(
                "/apis/apps.cafe.io/v1alpha1/namespaces/default/cafedeployments",
            )
            .header("Content-Type", "application/json")
            .body(raw)
            .unwrap();
            let err = api_client(api)
                .request::<Value>(req)
                .await
                .expect_err("rejected");
            assert_status(err, field);
            return;
        }
    };
    let err = api
        .create(&PostParams::default(), &cd)
        .await
        .expect_err("rejected");
    assert_status(err, field);
}

fn api_client(api: &Api<CafeDeployment>) -> kube::Client {
    api.clone().into_client()
}

fn assert_status(err: kube::Error, field: &str) {
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422, "{}", s.message);
            let fields: Vec<String> = s
                .details
                .map(|d| d.causes.into_iter().map(|c| c.field).collect())
                .unwrap_or_default();
            assert!(
                fields.iter().any(|f| f.starts_with(field)) || s.message.contains(field),
                "expected a cause naming {field}, got {fields:?}: {}",
                s.message
            );
        }
        other => panic!("expected a 422, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_cafedeployments_are_rejected_naming_the_field() {
    let sim = start_sim(TWO_MEMBERS).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    let api: Api<CafeDeployment> = Api::default_namespaced(hub);
    rejected(
        &api,
        |o| o["spec"]["topology"]["values"] = json!([]),
        "spec.topology.values",
    )
    .await;
    rejected(
        &api,
        |o| o["spec"]["topology"]["values"] = json!(["DCA", "DCA"]),
        "spec.topology.values",
    )
    .await;
    rejected(
        &api,
        |o| o["spec"]["topology"]["unitReplicas"] = json!({"DCC": 1}),
        "spec.topology.unitReplicas",
    )
    .await;
    rejected(&api, |o| o["spec"]["replicas"] = json!(-1), "spec.replicas").await;
    rejected(
        &api,
        |o| o["spec"]["topology"]["unitReplicas"] = json!({"DCA": "120%"}),
        "spec.topology.unitReplicas",
    )
    .await;
    rejected(
        &api,
        |o| o["spec"]["topology"]["unitReplicas"] = json!({"DCA": -2}),
        "spec.topology.unitReplicas",
    )
    .await;
    rejected(
        &api,
        |o| o["spec"]["strategy"]["batchSize"] = json!(0),
        "spec.strategy.batchSize",
    )
    .await;
    rejected(
        &api,
        |o| o["spec"]["strategy"]["maxUnavailablePerUnit"] = json!("150%"),
        "spec.strategy.maxUnavailablePerUnit",
    )
    .await;
    rejected(
        &api,
        |o| o["spec"]["strategy"]["upgradeType"] = json!("Canary"),
        "spec.strategy.upgradeType",
    )
    .await;
    rejected(
        &api,
        |o| o["spec"]["podSetType"] = json!("DaemonSet"),
        "spec.podSetType",
    )
    .await;
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing created"
    );
    // The valid base is accepted.
    let ok: CafeDeployment = serde_json::from_value(base()).unwrap();
    api.create(&PostParams::default(), &ok)
        .await
        .expect("valid spec accepted");
}
