//! Shared set-up for cafe's end-to-end tests: simulated hub and members on ephemeral ports,
//! kube-rs clients, CRDs installed, and polling with deadlines.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use cafe_sim::config::SimConfig;
use cafe_sim::sim::Sim;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// hub + dca + dcb with fast kubelets.
/// One member cluster, DCA, with three roomy nodes and a fast kubelet.
pub const ONE_MEMBER: &str = r#"
kubelet: {startMillis: 50, restartMillis: 50}
clusters:
  - name: dca
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 3, cpu: "8", memory: 16Gi, pods: 110}]
"#;

pub const TWO_MEMBERS: &str = r#"
kubelet: {startMillis: 50, restartMillis: 50}
clusters:
  - name: hub
    role: hub
  - name: dca
    role: member
    units: {DataCenter: DCA}
    nodes: [{count: 3, cpu: "8", memory: 16Gi, pods: 110}]
  - name: dcb
    role: member
    units: {DataCenter: DCB}
    nodes: [{count: 3, cpu: "8", memory: 16Gi, pods: 110}]
"#;

/// Starts the clusters of `config`, each with namespace `cafe-system` (where the hub and the
/// member agents keep their leader election Leases), as an installation would have it.
pub async fn start_sim(config: &str) -> Sim {
    let sim = start_bare_sim(config).await;
    let names: Vec<String> = SimConfig::parse(config, "test")
        .expect("test config")
        .clusters
        .iter()
        .map(|c| c.name.clone())
        .collect();
    for name in names {
        create_system_namespace(&client(&sim, &name).await).await;
    }
    sim
}

/// The clusters of `config` as the simulator starts them: no `cafe-system` (for what
/// `cafe cluster register` writes there).
pub async fn start_bare_sim(config: &str) -> Sim {
    let config = SimConfig::parse(config, "test").expect("test config");
    let sim = Sim::start(config).await.expect("sim starts");
    sim.wait_ready(Duration::from_secs(10))
        .await
        .expect("sim ready");
    sim
}

/// Creates namespace `cafe-system` unless it exists.
pub async fn create_system_namespace(client: &kube::Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(cafe::api::labels::SYSTEM_NAMESPACE.to_string());
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace cafe-system: {e}"),
    }
}

pub async fn client(sim: &Sim, cluster: &str) -> kube::Client {
    kube::Client::try_from(config(sim, cluster).await).expect("client")
}

/// The client configuration of `cluster`, from the kubeconfig the simulator publishes.
pub async fn config(sim: &Sim, cluster: &str) -> kube::Config {
    let yaml = sim.kubeconfig(Some(cluster));
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig parses");
    let options = kube::config::KubeConfigOptions {
        context: Some(cluster.to_string()),
        ..Default::default()
    };
    kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .expect("kube config")
}

/// Installs cafe's CRDs and waits until each is Established.
pub async fn install_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in cafe::cli::crds::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("installing {name}: {e}"));
        wait_for(
            &format!("{name} Established"),
            Duration::from_secs(5),
            || {
                let crds = crds.clone();
                let name = name.clone();
                async move {
                    let c = crds.get(&name).await.ok()?;
                    c.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await;
    }
}

/// Polls `check` every 20 ms until it returns Some, or panics after `timeout` naming `what`.
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The member agent running in this process.
pub struct Member {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), cafe::member::MemberError>>,
}

pub fn spawn_member(client: kube::Client) -> Member {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(cafe::member::run(client, shutdown.clone()));
    Member { shutdown, task }
}

impl Member {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the member stops on cancel")
            .expect("the member task does not panic")
            .expect("the member stops cleanly");
    }

    /// Kills the controller wherever it is (no graceful shutdown), as a crash would.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
