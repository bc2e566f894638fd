//! Shared set-up for cafe's end-to-end tests: simulated hub and members on ephemeral ports,
//! kube-rs clients, CRDs installed, and polling with deadlines.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use cafe_sim::config::SimConfig;
use cafe_sim::sim::Sim;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
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
/// The controllers' logs (cafe's own, `info` and up, or `CAFE_TEST_LOG`) go to the test's
/// captured output, so a failing test shows what the hub and agents were doing. A binary that
/// installed its own subscriber keeps it.
pub fn log_to_test_output() {
    let filter = std::env::var("CAFE_TEST_LOG")
        .unwrap_or_else(|_| "cafe=info,cafe_sim=warn,cafe_base=warn".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

/// For benchmarks: only warnings (or `CAFE_TEST_LOG`), since writing a line per pod write to the
/// terminal costs as much time as some of what is measured.
pub fn quiet_logs() {
    let filter = std::env::var("CAFE_TEST_LOG").unwrap_or_else(|_| "warn".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .try_init();
}

pub async fn start_sim(config: &str) -> Sim {
    log_to_test_output();
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

/// A controller as `deploy/` installs it: its ServiceAccount and RBAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `cafe hub`, ServiceAccount `cafe-system/cafe-hub` in the hub (`deploy/hub`).
    Hub,
    /// `cafe member`, ServiceAccount `cafe-system/cafe-member` in a member (`deploy/member`).
    Member,
}

impl Part {
    fn dir(self) -> &'static str {
        match self {
            Part::Hub => "deploy/hub/controller",
            Part::Member => "deploy/member/agent",
        }
    }

    pub fn account(self) -> &'static str {
        match self {
            Part::Hub => "cafe-hub",
            Part::Member => "cafe-member",
        }
    }

    /// The user the API server sees for the ServiceAccount's tokens.
    pub fn user(self) -> String {
        format!("system:serviceaccount:cafe-system:{}", self.account())
    }
}

/// Installs `part`'s ServiceAccount and RBAC from `deploy/` in `cluster` (the objects
/// `kubectl apply -k` creates, applied here without kubectl, which is slow to start), and
/// returns a client authenticated with a token of that ServiceAccount only: the controller runs
/// with exactly what an installation grants it, RBAC enforced by the simulator.
pub async fn controller_client(sim: &Sim, cluster: &str, part: Part) -> kube::Client {
    let token = controller_token(sim, cluster, part).await;
    client_with_token(sim, cluster, &token).await
}

/// As [`controller_client`], the token itself (for a kubeconfig file a process reads).
pub async fn controller_token(sim: &Sim, cluster: &str, part: Part) -> String {
    let admin = client(sim, cluster).await;
    install_rbac(&admin, part).await;
    service_account_token(&admin, part.account()).await
}

/// Applies `part`'s serviceaccount.yaml and rbac.yaml, namespaced objects in cafe-system.
pub async fn install_rbac(admin: &kube::Client, part: Part) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(part.dir());
    let apply = PatchParams::apply("kubectl").force();
    for file in ["serviceaccount.yaml", "rbac.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("deploy/ file");
        for doc in serde_saphyr::from_multiple::<serde_json::Value>(&text).expect("deploy/ YAML") {
            if doc.is_null() {
                continue;
            }
            let object: DynamicObject = serde_json::from_value(doc).expect("an object");
            let types = object.types.clone().expect("apiVersion and kind");
            let gvk = GroupVersionKind::try_from(&types).expect("a group version kind");
            let resource = ApiResource::from_gvk(&gvk);
            let name = object.metadata.name.clone().expect("a name");
            let api: Api<DynamicObject> = match gvk.kind.as_str() {
                "ClusterRole" | "ClusterRoleBinding" => Api::all_with(admin.clone(), &resource),
                _ => Api::namespaced_with(
                    admin.clone(),
                    cafe::api::labels::SYSTEM_NAMESPACE,
                    &resource,
                ),
            };
            api.patch(&name, &apply, &Patch::Apply(&object))
                .await
                .unwrap_or_else(|e| panic!("applying {} {name}: {e}", gvk.kind));
        }
    }
}

/// A token of ServiceAccount `cafe-system/<account>`, as `kubectl create token` asks for one.
pub async fn service_account_token(admin: &kube::Client, account: &str) -> String {
    let api: Api<ServiceAccount> =
        Api::namespaced(admin.clone(), cafe::api::labels::SYSTEM_NAMESPACE);
    let answer = api
        .create_token_request(account, &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap_or_else(|e| panic!("a token for {account}: {e}"));
    answer.status.expect("token status").token
}

/// A client of `cluster` that authenticates with `token` only.
pub async fn client_with_token(sim: &Sim, cluster: &str, token: &str) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig_with_token(sim, cluster, token),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// The kubeconfig of `cluster` (its context only) with `token` as its only credential.
pub fn kubeconfig_with_token(sim: &Sim, cluster: &str, token: &str) -> Kubeconfig {
    let admin = Kubeconfig::from_yaml(&sim.kubeconfig(Some(cluster))).expect("kubeconfig");
    let flat = cafe::cli::cluster::flatten(admin, Some(cluster)).expect("flattened");
    cafe::hub::access::with_token(&flat, token).expect("with token")
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

/// GET `path` from an admin server (/healthz, /readyz, /metrics): status code and body.
pub async fn admin_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("the admin server accepts");
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    (code, body.to_string())
}

/// Polls `check` every 20 ms until it returns Some, or gives `None` after `timeout` (for a
/// caller that reports the failure itself).
pub async fn wait_for_or_none<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 20 ms until it returns Some, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match wait_for_or_none(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
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
