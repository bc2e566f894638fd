//! One simulated cluster: its store, identity, faults, metrics, and the controllers a real
//! control plane runs (scheduler, kubelet).

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, KubeletTiming};
use crate::faults::Faults;
use crate::metrics::{CallLog, CallRecord, Metrics};
use crate::registry::Registry;
use crate::store::Store;
use crate::tls::{ClusterIdentity, TlsError};
use crate::tokens::Tokens;
use crate::write::{self, WriteOptions};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster {cluster}: {source}")]
    Tls {
        cluster: String,
        #[source]
        source: TlsError,
    },
    #[error("cluster {cluster}: cannot listen on 127.0.0.1: {source}")]
    Listen {
        cluster: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster {cluster}: seeding {what}: {message}")]
    Seed {
        cluster: String,
        what: String,
        message: String,
    },
}

pub struct Cluster {
    pub name: String,
    pub store: Arc<Store>,
    pub identity: ClusterIdentity,
    /// "1.33"
    pub version: String,
    pub faults: Faults,
    pub metrics: Metrics,
    pub address: SocketAddr,
    pub timing: KubeletTiming,
    /// ServiceAccount tokens this cluster issued.
    pub tokens: Tokens,
    /// The per-user record of resource requests.
    pub calls: CallLog,
}

impl Cluster {
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    pub fn minor(&self) -> &str {
        self.version.split('.').nth(1).unwrap_or("33")
    }

    /// Every recorded resource request (the last [`crate::metrics::CALL_RECORD_LIMIT`]), oldest first.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls.snapshot()
    }
}

/// A running cluster; dropping the handle does not stop it, `shutdown` does.
pub struct RunningCluster {
    pub cluster: Arc<Cluster>,
    pub shutdown: CancellationToken,
}

/// Namespaces every Kubernetes cluster starts with.
const NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Seeds the store, binds a port, and starts the server, scheduler and kubelet.
pub async fn start(
    config: &ClusterConfig,
    version: &str,
    timing: KubeletTiming,
    shutdown: CancellationToken,
) -> Result<RunningCluster, ClusterError> {
    let identity = ClusterIdentity::generate(&config.name).map_err(|source| ClusterError::Tls {
        cluster: config.name.clone(),
        source,
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| ClusterError::Listen {
            cluster: config.name.clone(),
            source,
        })?;
    let address = listener
        .local_addr()
        .map_err(|source| ClusterError::Listen {
            cluster: config.name.clone(),
            source,
        })?;
    let store = Arc::new(Store::new(Registry::with_builtins()));
    seed(&store, config, version)?;
    let cluster = Arc::new(Cluster {
        name: config.name.clone(),
        store: store.clone(),
        identity,
        version: version.to_string(),
        faults: Faults::default(),
        metrics: Metrics::default(),
        address,
        timing,
        tokens: Tokens::default(),
        calls: CallLog::default(),
    });
    tokio::spawn(crate::server::serve(
        cluster.clone(),
        listener,
        shutdown.clone(),
    ));
    tokio::spawn(crate::scheduler::run(store.clone(), shutdown.clone()));
    tokio::spawn(crate::kubelet::run(store.clone(), timing, shutdown.clone()));
    tokio::spawn(crate::store::run_trimmer(
        store.clone(),
        crate::store::TRIM_EVERY,
        shutdown.clone(),
    ));
    tokio::spawn(crate::gc::run(store, shutdown.clone()));
    tokio::spawn(crate::auth::run_controllers(
        cluster.clone(),
        shutdown.clone(),
    ));
    Ok(RunningCluster { cluster, shutdown })
}

fn seed(store: &Store, config: &ClusterConfig, version: &str) -> Result<(), ClusterError> {
    let err = |what: &str, e: crate::status::ApiError| ClusterError::Seed {
        cluster: config.name.clone(),
        what: what.to_string(),
        message: e.to_string(),
    };
    let opts = WriteOptions {
        manager: "cafe-sim".into(),
        ..Default::default()
    };
    store.write(|s| {
        let ns = s.registry.core("namespaces");
        for name in NAMESPACES {
            write::create(s, &ns, "", json!({"metadata": {"name": name}}), &opts)
                .map_err(|e| err(name, e))?;
        }
        let nodes = s.registry.core("nodes");
        let kubelet_version = format!("v{version}.0");
        for node in crate::nodes::node_objects(&config.name, &config.nodes, &kubelet_version) {
            write::create(s, &nodes, "", node, &opts).map_err(|e| err("nodes", e))?;
        }
        let rbac_type = |plural: &str| {
            s.registry
                .find("rbac.authorization.k8s.io", "v1", plural)
                .ok_or_else(|| err(plural, crate::status::ApiError::not_found_path(plural)))
        };
        let (roles, bindings) = (
            rbac_type("clusterroles")?,
            rbac_type("clusterrolebindings")?,
        );
        for role in crate::rbac::bootstrap_cluster_roles() {
            write::create(s, &roles, "", role, &opts).map_err(|e| err("clusterroles", e))?;
        }
        for binding in crate::rbac::bootstrap_cluster_role_bindings() {
            write::create(s, &bindings, "", binding, &opts)
                .map_err(|e| err("clusterrolebindings", e))?;
        }
        crate::auth::aggregate(s);
        Ok(())
    })
}
