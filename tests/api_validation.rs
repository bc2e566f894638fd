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

/// The refusal of `base()` changed by `mutate`: its code, the fields its causes name, and its
/// message.
async fn refusal(
    api: &Api<CafeDeployment>,
    mutate: impl Fn(&mut Value),
) -> (u16, Vec<String>, String) {
    let mut obj = base();
    mutate(&mut obj);
    let cd: CafeDeployment = serde_json::from_value(obj).expect("representable");
    match api.create(&PostParams::default(), &cd).await {
        Err(kube::Error::Api(s)) => {
            let fields = s
                .details
                .map(|d| d.causes.into_iter().map(|c| c.field).collect())
                .unwrap_or_default();
            (s.code, fields, s.message)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_selector_that_does_not_match_the_template_is_refused() {
    let sim = start_sim(TWO_MEMBERS).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    let api: Api<CafeDeployment> = Api::default_namespaced(hub);
    let selector_refused = |(code, fields, message): (u16, Vec<String>, String)| {
        assert_eq!(code, 422, "{message}");
        assert!(
            fields.iter().any(|f| f == "spec.selector"),
            "a cause naming spec.selector, got {fields:?}: {message}"
        );
        assert!(
            message.contains("selector does not match template labels"),
            "{message}"
        );
    };
    // matchLabels: a different value, a key the template lacks, a template without labels.
    selector_refused(
        refusal(&api, |o| {
            o["spec"]["selector"] = json!({"matchLabels": {"app": "other"}})
        })
        .await,
    );
    selector_refused(
        refusal(&api, |o| {
            o["spec"]["selector"] = json!({"matchLabels": {"app": "demo", "tier": "web"}})
        })
        .await,
    );
    selector_refused(
        refusal(&api, |o| {
            o["spec"]["template"]["metadata"] = json!({});
        })
        .await,
    );
    // matchExpressions, each operator.
    for expression in [
        json!({"key": "app", "operator": "In", "values": ["web", "api"]}),
        json!({"key": "app", "operator": "NotIn", "values": ["demo"]}),
        json!({"key": "tier", "operator": "Exists"}),
        json!({"key": "app", "operator": "DoesNotExist"}),
    ] {
        selector_refused(
            refusal(&api, |o| {
                o["spec"]["selector"]["matchExpressions"] = json!([expression.clone()])
            })
            .await,
        );
    }
    // An empty selector selects every pod; Deployment refuses it too.
    let (code, fields, message) = refusal(&api, |o| o["spec"]["selector"] = json!({})).await;
    assert_eq!(code, 422, "{message}");
    assert!(fields.iter().any(|f| f == "spec.selector"), "{fields:?}");
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Matching expressions of each operator are accepted.
    let mut ok = base();
    ok["spec"]["template"]["metadata"]["labels"]["tier"] = json!("web");
    ok["spec"]["selector"]["matchExpressions"] = json!([
        {"key": "tier", "operator": "In", "values": ["web", "api"]},
        {"key": "app", "operator": "NotIn", "values": ["other"]},
        {"key": "track", "operator": "NotIn", "values": ["canary"]},
        {"key": "app", "operator": "Exists"},
        {"key": "track", "operator": "DoesNotExist"},
    ]);
    let ok: CafeDeployment = serde_json::from_value(ok).unwrap();
    api.create(&PostParams::default(), &ok)
        .await
        .expect("a matching selector is accepted");
}

#[tokio::test]
async fn max_unavailable_per_unit_zero_is_refused() {
    let sim = start_sim(TWO_MEMBERS).await;
    let hub = client(&sim, "hub").await;
    install_crds(&hub).await;
    let api: Api<CafeDeployment> = Api::default_namespaced(hub);
    for zero in [json!(0), json!("0%")] {
        let (code, fields, message) = refusal(&api, |o| {
            o["spec"]["strategy"]["maxUnavailablePerUnit"] = zero.clone()
        })
        .await;
        assert_eq!(code, 422, "{zero}: {message}");
        assert!(
            fields
                .iter()
                .any(|f| f == "spec.strategy.maxUnavailablePerUnit"),
            "{zero}: a cause naming spec.strategy.maxUnavailablePerUnit, got {fields:?}: {message}"
        );
        assert!(message.contains("may not be 0"), "{message}");
    }
    // A percent that rounds down to 0 pods is accepted, and allows 1 (IntOrPercent::budget).
    let mut ok = base();
    ok["spec"]["strategy"]["maxUnavailablePerUnit"] = json!("1%");
    let ok: CafeDeployment = serde_json::from_value(ok).unwrap();
    api.create(&PostParams::default(), &ok)
        .await
        .expect("1% is accepted");
    assert_eq!(ok.spec.strategy.max_unavailable_per_unit.budget(4), 1);

    // The field's description (what `kubectl explain` shows) says both.
    let description = cafe::cli::crds::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "CafeDeployment")
        .and_then(|c| serde_json::to_value(&c.spec.versions[0].schema).ok())
        .and_then(|s| {
            s.pointer(
                "/openAPIV3Schema/properties/spec/properties/strategy/properties/maxUnavailablePerUnit/description",
            )
            .and_then(Value::as_str)
            .map(str::to_string)
        })
        .expect("maxUnavailablePerUnit has a description");
    assert!(description.contains("0"), "{description}");
    assert!(description.contains("allows 1"), "{description}");
}
