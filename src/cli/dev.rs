//! `cafe dev [--config FILE] [--state-dir DIR] [--demo]`: the whole system in one process.
//!
//! Simulated hub and member clusters, cafe's CRDs in each, the members registered with the hub
//! through the same code as `cafe cluster register`, the hub controllers and one member
//! controller per member, and optionally the demo CafeDeployment. Ctrl-C (or SIGTERM) stops the
//! controllers first, then the clusters, and exits 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cafe_sim::config::{ConfigError, Role, SimConfig};
use cafe_sim::sim::{Sim, SimError};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cluster::{ClusterError, one_line};
use crate::api::CafeDeployment;
use crate::runtime::kubeconfig::{KubeconfigError, client_from_yaml};

/// The demo applied by `--demo` (and shown in the README).
pub const DEMO: &str = include_str!("../../examples/cafedeployment.yaml");
/// Namespace the demo goes to.
pub const DEMO_NAMESPACE: &str = "default";
const FIELD_MANAGER: &str = "cafe-dev";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the controllers get to stop before the clusters go away under them.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Cluster configuration (the `cafe sim` format): the cluster with `role: hub` is the hub,
    /// every other one a member registered with its `units`. Default: hub, dca (DataCenter=DCA)
    /// and dcb (DataCenter=DCB).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to write the kubeconfig (hub as current context) and sim.json
    /// (default: a fresh temporary directory, printed on the ready line).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Apply the demo CafeDeployment (examples/cafedeployment.yaml) to the hub.
    #[arg(long)]
    pub demo: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("config {origin}: {message}")]
    Topology { origin: String, message: String },
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("state directory {path}: {source}; pass a writable --state-dir")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("simulated clusters did not start: {0}")]
    NotReady(String),
    #[error(transparent)]
    Client(#[from] KubeconfigError),
    #[error("installing CRD {crd} in cluster {cluster}: {message}")]
    Crd {
        crd: String,
        cluster: String,
        message: String,
    },
    #[error("creating namespace cafe-system in cluster {cluster}: {message}")]
    SystemNamespace { cluster: String, message: String },
    #[error("registering member cluster {cluster}: {source}")]
    Register {
        cluster: String,
        #[source]
        source: ClusterError,
    },
    #[error("applying the demo CafeDeployment: {0}")]
    Demo(String),
    #[error("{0}")]
    Controller(String),
    #[error("waiting for signals: {0}")]
    Signal(#[source] std::io::Error),
}

/// One simulated member and the units it is registered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub units: Vec<(String, String)>,
}

/// Which cluster is the hub and which are members, from a simulator config: exactly one
/// `role: hub`, and every member with at least one unit.
pub fn topology(config: &SimConfig, origin: &str) -> Result<(String, Vec<Member>), DevError> {
    let bad = |message: String| DevError::Topology {
        origin: origin.to_string(),
        message,
    };
    let hubs: Vec<_> = config
        .clusters
        .iter()
        .filter(|c| c.role == Role::Hub)
        .map(|c| c.name.clone())
        .collect();
    let hub = match hubs.as_slice() {
        [hub] => hub.clone(),
        [] => return Err(bad("no cluster has `role: hub`; mark exactly one".into())),
        _ => {
            return Err(bad(format!(
                "clusters {} all have `role: hub`; mark exactly one",
                hubs.join(", ")
            )));
        }
    };
    let mut members = vec![];
    for c in config.clusters.iter().filter(|c| c.role == Role::Member) {
        if c.units.is_empty() {
            return Err(bad(format!(
                "member cluster {} has no units; add e.g. `units: {{DataCenter: DCA}}`",
                c.name
            )));
        }
        let units: Vec<(String, String)> = c.units.clone().into_iter().collect();
        for (t, v) in &units {
            super::cluster::parse_unit(&format!("{t}={v}"))
                .map_err(|e| bad(format!("member cluster {}: {e}", c.name)))?;
        }
        members.push(Member {
            name: c.name.clone(),
            units,
        });
    }
    if members.is_empty() {
        return Err(bad(
            "no member clusters; add at least one with `role: member` and `units`".into(),
        ));
    }
    Ok((hub, members))
}

pub async fn run(args: DevArgs) -> Result<(), DevError> {
    // Handlers first: a signal at any point from here on means a clean stop, never a kill.
    let shutdown = crate::runtime::shutdown::on_signal().map_err(DevError::Signal)?;
    let (config, origin) = match &args.config {
        Some(path) => (SimConfig::load(path)?, path.display().to_string()),
        None => (SimConfig::default_clusters(), "(default)".to_string()),
    };
    let (hub_name, members) = topology(&config, &origin)?;
    let dir = match args.state_dir {
        Some(dir) => dir,
        None => fresh_temp_dir()?,
    };

    let mut sim = Sim::start(config).await?;
    let kubeconfig = sim.publish(&dir, Some(&hub_name)).await?;
    let controllers = CancellationToken::new();
    let started = tokio::select! {
        r = start(&sim, &hub_name, &members, args.demo, &controllers) => r,
        _ = shutdown.cancelled() => Ok((vec![], None)),
    };
    let (tasks, admin) = match started {
        Ok(started) => started,
        Err(e) => {
            stop(&sim, &dir, &controllers, vec![]).await;
            return Err(e);
        }
    };
    if shutdown.is_cancelled() {
        stop(&sim, &dir, &controllers, tasks).await;
        return Ok(());
    }

    cafe_base::outln!("{}", ready_line(&sim, &kubeconfig));
    cafe_base::outln!("{}", usage(&kubeconfig, &members, args.demo, admin));

    // Run until a signal, or until a controller gives up (then report it, non-zero).
    let mut watched = tasks;
    let failure = tokio::select! {
        _ = shutdown.cancelled() => None,
        f = first_failure(&mut watched) => f,
    };
    stop(&sim, &dir, &controllers, watched).await;
    match failure {
        None => Ok(()),
        Some(message) => Err(DevError::Controller(message)),
    }
}

/// Everything between "clusters started" and "ready": CRDs, registrations, controllers, demo.
async fn start(
    sim: &Sim,
    hub_name: &str,
    members: &[Member],
    demo: bool,
    controllers: &CancellationToken,
) -> Result<(Vec<Controller>, Option<SocketAddr>), DevError> {
    sim.wait_ready(READY_TIMEOUT)
        .await
        .map_err(DevError::NotReady)?;
    let hub = cluster_client(sim, hub_name).await?;
    install_crds(&hub, hub_name, &super::crds::Part::Hub.crds()).await?;
    // The hub and member agents elect their leaders with Leases in cafe-system; they never
    // create namespaces themselves.
    ensure_system_namespace(&hub, hub_name).await?;
    let mut member_clients = vec![];
    for m in members {
        let client = cluster_client(sim, &m.name).await?;
        install_crds(&client, &m.name, &super::crds::Part::Member.crds()).await?;
        ensure_system_namespace(&client, &m.name).await?;
        member_clients.push((m.name.clone(), client));
    }
    for m in members {
        tracing::info!(member = %m.name, "registering with the hub");
        super::cluster::register(
            &hub,
            &m.name,
            &sim.kubeconfig(Some(&m.name)),
            Some(&m.name),
            &m.units,
            super::cluster::Credentials::Dedicated,
        )
        .await
        .map_err(|source| DevError::Register {
            cluster: m.name.clone(),
            source,
        })?;
    }

    let mut tasks = vec![];
    // The hub's admin server, as `cafe hub` has one, on a free loopback port (several `cafe dev`
    // may run at once); the agents share the process and have nothing of their own to show.
    let telemetry = crate::runtime::Telemetry::default();
    let admin = match crate::runtime::admin::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        telemetry.clone(),
        controllers.child_token(),
    )
    .await
    {
        Ok(server) => Some(server.address),
        Err(error) => {
            tracing::warn!(%error, "no admin server for the hub");
            None
        }
    };
    let token = controllers.child_token();
    let client = hub.clone();
    tasks.push(Controller {
        name: format!("hub controller ({hub_name})"),
        handle: tokio::spawn(async move {
            // Simulated members answer in milliseconds: probe often so the demo reacts quickly.
            let options = crate::hub::HubOptions {
                probe_interval: std::time::Duration::from_secs(2),
                telemetry,
                ..Default::default()
            };
            crate::hub::run_with(client, options, token)
                .await
                .map_err(|e| one_line(&e))
        }),
    });
    for (name, client) in member_clients {
        let token = controllers.child_token();
        tasks.push(Controller {
            name: format!("member controller ({name})"),
            handle: tokio::spawn(async move {
                crate::member::run(client, token)
                    .await
                    .map_err(|e| one_line(&e))
            }),
        });
    }

    if demo {
        apply_demo(&hub).await?;
    }
    Ok((tasks, admin))
}

/// Creates namespace `cafe-system` in `cluster` unless it exists.
async fn ensure_system_namespace(client: &kube::Client, cluster: &str) -> Result<(), DevError> {
    use k8s_openapi::api::core::v1::Namespace;
    let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
    let failed = |e: kube::Error| DevError::SystemNamespace {
        cluster: cluster.to_string(),
        message: crate::runtime::api_cause(&e),
    };
    let mut ns = Namespace::default();
    ns.metadata.name = Some(crate::api::labels::SYSTEM_NAMESPACE.to_string());
    match namespaces
        .create(&kube::api::PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(failed(e)),
    }
}

struct Controller {
    name: String,
    handle: JoinHandle<Result<(), String>>,
}

/// Resolves when the first controller stops on its own, with why.
async fn first_failure(tasks: &mut [Controller]) -> Option<String> {
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    let (result, index, _) =
        futures::future::select_all(tasks.iter_mut().map(|t| &mut t.handle)).await;
    let name = &tasks[index].name;
    Some(match result {
        Ok(Ok(())) => format!("{name} stopped unexpectedly"),
        Ok(Err(e)) => format!("{name} failed: {e}"),
        Err(e) => format!("{name} panicked: {e}"),
    })
}

/// Controllers first (they may still be writing), then the clusters. A controller that has not
/// stopped within `STOP_TIMEOUT` is aborted: the clusters are going away regardless.
async fn stop(sim: &Sim, dir: &Path, controllers: &CancellationToken, tasks: Vec<Controller>) {
    tracing::info!("stopping the controllers");
    controllers.cancel();
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    for t in tasks {
        let abort = t.handle.abort_handle();
        if tokio::time::timeout_at(deadline, t.handle).await.is_err() {
            tracing::warn!(
                "{} did not stop within {STOP_TIMEOUT:?}; aborting it",
                t.name
            );
            abort.abort();
        }
    }
    tracing::info!("stopping the simulated clusters");
    sim.stop();
    let _ = std::fs::remove_file(dir.join("sim.json"));
}

async fn cluster_client(sim: &Sim, name: &str) -> Result<kube::Client, DevError> {
    Ok(client_from_yaml(
        &sim.kubeconfig(Some(name)),
        Some(name),
        &format!("simulated cluster {name}"),
    )
    .await?)
}

/// Applies `crds` (server-side, so a restart over the same clusters is harmless) and waits until
/// each is Established: until then the API server does not serve the new resource.
async fn install_crds(
    client: &kube::Client,
    cluster: &str,
    crds: &[CustomResourceDefinition],
) -> Result<(), DevError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let fail = |message: String| DevError::Crd {
            crd: name.clone(),
            cluster: cluster.to_string(),
            message,
        };
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(crd),
        )
        .await
        .map_err(|e| fail(one_line(&e)))?;
        let deadline = tokio::time::Instant::now() + ESTABLISHED_TIMEOUT;
        loop {
            let established = api
                .get_opt(&name)
                .await
                .map_err(|e| fail(one_line(&e)))?
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(fail(format!(
                    "not Established after {ESTABLISHED_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The demo as the JSON it is applied with (only the fields the manifest sets, so the
/// field manager owns nothing else).
pub fn demo_object() -> Result<serde_json::Value, DevError> {
    serde_saphyr::from_str(DEMO).map_err(|e| DevError::Demo(one_line(&e)))
}

async fn apply_demo(hub: &kube::Client) -> Result<(), DevError> {
    let demo = demo_object()?;
    let name = demo["metadata"]["name"]
        .as_str()
        .ok_or_else(|| DevError::Demo("the demo manifest has no metadata.name".into()))?
        .to_string();
    let api: Api<CafeDeployment> = Api::namespaced(hub.clone(), DEMO_NAMESPACE);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&demo),
    )
    .await
    .map_err(|e| DevError::Demo(one_line(&e)))?;
    tracing::info!(%name, "demo CafeDeployment applied");
    Ok(())
}

/// `ready kubeconfig=DIR/kubeconfig hub=https://... dca=https://...`
fn ready_line(sim: &Sim, kubeconfig: &Path) -> String {
    let clusters: Vec<String> = sim
        .clusters
        .iter()
        .map(|c| format!("{}={}", c.name, c.url()))
        .collect();
    format!(
        "ready kubeconfig={} {}",
        kubeconfig.display(),
        clusters.join(" ")
    )
}

fn usage(kubeconfig: &Path, members: &[Member], demo: bool, admin: Option<SocketAddr>) -> String {
    let member = members.first().map_or("dca", |m| m.name.as_str());
    let mut lines = vec![
        String::new(),
        "From another terminal (the hub is the current context):".to_string(),
        format!("  export KUBECONFIG={}", kubeconfig.display()),
        "  kubectl get memberclusters".to_string(),
    ];
    if demo {
        lines.extend([
            "  kubectl get cafedeployments".to_string(),
            "  cafe status demo        # in a checkout: cargo run --release -- status demo"
                .to_string(),
            format!("  kubectl --context {member} get inplacesets,pods -o wide"),
        ]);
    } else {
        lines.extend([
            "  kubectl apply -f examples/cafedeployment.yaml".to_string(),
            "  cafe status             # in a checkout: cargo run --release -- status".to_string(),
        ]);
    }
    if let Some(admin) = admin {
        lines.push(format!(
            "  curl http://{admin}/metrics   # the hub's metrics; also /healthz, /readyz"
        ));
    }
    lines.push("Ctrl-C stops the controllers, then the clusters.".to_string());
    lines.join("\n")
}

fn fresh_temp_dir() -> Result<PathBuf, DevError> {
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let dir = base.join(format!("cafe-dev-{:08x}", rand::random::<u32>()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(DevError::StateDir {
                    path: dir.display().to_string(),
                    source,
                });
            }
        }
    }
    Err(DevError::StateDir {
        path: base.display().to_string(),
        source: std::io::Error::other("no free name for a fresh directory"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_text_shows_where_the_hubs_metrics_are() {
        let members = [Member {
            name: "dca".into(),
            units: vec![("DataCenter".into(), "DCA".into())],
        }];
        let admin = SocketAddr::from(([127, 0, 0, 1], 41234));
        let text = usage(Path::new("/tmp/k"), &members, true, Some(admin));
        assert!(
            text.contains("curl http://127.0.0.1:41234/metrics"),
            "{text}"
        );
        assert!(!usage(Path::new("/tmp/k"), &members, true, None).contains("curl"));
    }

    #[test]
    fn default_topology_is_a_hub_and_two_units() {
        let (hub, members) = topology(&SimConfig::default_clusters(), "t").unwrap();
        assert_eq!(hub, "hub");
        assert_eq!(
            members,
            vec![
                Member {
                    name: "dca".into(),
                    units: vec![("DataCenter".into(), "DCA".into())]
                },
                Member {
                    name: "dcb".into(),
                    units: vec![("DataCenter".into(), "DCB".into())]
                },
            ]
        );
    }

    #[test]
    fn topology_needs_one_hub_and_units_on_every_member() {
        let parse = |text: &str| SimConfig::parse(text, "t").unwrap();
        let err = topology(&parse("clusters: [{name: a, units: {DataCenter: A}}]"), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("role: hub"), "{err}");
        let err = topology(&parse("clusters: [{name: h, role: hub}, {name: g, role: hub}, {name: a, units: {DataCenter: A}}]"), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("h, g"), "{err}");
        let err = topology(&parse("clusters: [{name: h, role: hub}, {name: a}]"), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("member cluster a has no units"), "{err}");
        let err = topology(&parse("clusters: [{name: h, role: hub}]"), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no member clusters"), "{err}");
    }

    #[test]
    fn the_demo_is_a_valid_cafedeployment_over_two_units() {
        let demo: CafeDeployment = serde_json::from_value(demo_object().unwrap()).unwrap();
        assert_eq!(demo.metadata.name.as_deref(), Some("demo"));
        assert_eq!(demo.spec.replicas, 6);
        assert_eq!(demo.spec.topology.unit_type, "DataCenter");
        assert_eq!(demo.spec.topology.values, ["DCA", "DCB"]);
        assert_eq!(
            demo.spec.strategy.upgrade_type,
            crate::api::UpgradeType::Beta
        );
        assert!(
            !demo.spec.strategy.need_waiting_for_confirm,
            "the demo must converge unattended"
        );
        let container = &demo.spec.template.spec.as_ref().unwrap().containers[0];
        assert!(container.image.as_deref().unwrap().starts_with("nginx:"));
        assert!(container.resources.as_ref().unwrap().requests.is_some());
    }
}
