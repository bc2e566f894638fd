//! Shared set-up for the simulator's conformance tests: clusters on ephemeral ports, kube-rs clients.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use cafe_sim::config::SimConfig;
use cafe_sim::sim::Sim;

pub const CONFIG: &str = r#"
kubelet: {startMillis: 30, restartMillis: 30}
clusters:
  - name: dca
    nodes: [{count: 3, cpu: "8", memory: 16Gi, pods: 110}]
"#;

pub async fn start() -> Sim {
    start_with(CONFIG).await
}

pub async fn start_with(config: &str) -> Sim {
    let config = SimConfig::parse(config, "test").expect("test config");
    let sim = Sim::start(config).await.expect("sim starts");
    sim.wait_ready(Duration::from_secs(10))
        .await
        .expect("sim ready");
    sim
}

pub async fn client(sim: &Sim, cluster: &str) -> kube::Client {
    let yaml = sim.kubeconfig(Some(cluster));
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig parses");
    let options = kube::config::KubeConfigOptions {
        context: Some(cluster.to_string()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("kube config");
    kube::Client::try_from(config).expect("client")
}

/// Polls `check` every 10 ms until it returns Some, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn widget_crd() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                "additionalPrinterColumns": [{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["replicas"],
                            "properties": {
                                "replicas": {"type": "integer", "minimum": 0},
                                "mode": {"type": "string", "enum": ["Fast", "Slow"]},
                                "values": {"type": "array", "items": {"type": "string"}},
                            },
                            "x-kubernetes-validations": [{"rule": "!has(self.values) || size(self.values) > 0", "message": "values must not be empty"}],
                        },
                        "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
                    },
                }},
            }],
        },
    })
}
