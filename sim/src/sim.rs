//! Running several clusters at once: start them, write the kubeconfig and sim.json, and serve
//! the control endpoint `cafe sim ctl` talks to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::cluster::{self, Cluster, ClusterError};
use crate::config::SimConfig;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control endpoint: {0}")]
    Control(std::io::Error),
}

/// All clusters of one simulator process.
pub struct Sim {
    pub clusters: Vec<Arc<Cluster>>,
    pub config: SimConfig,
    pub shutdown: CancellationToken,
    pub control_address: Option<std::net::SocketAddr>,
    pub control_token: String,
}

/// What `DIR/sim.json` holds: where each cluster and the control endpoint listen.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimState {
    pub pid: u32,
    pub control: String,
    pub control_token: String,
    pub kubeconfig: String,
    pub clusters: BTreeMap<String, ClusterState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    pub server: String,
}

impl Sim {
    /// Starts every configured cluster (no files written: tests use this directly).
    pub async fn start(config: SimConfig) -> Result<Self, SimError> {
        let shutdown = CancellationToken::new();
        let mut clusters = vec![];
        for c in &config.clusters {
            let running = cluster::start(
                c,
                &config.kubernetes_version,
                config.kubelet,
                shutdown.child_token(),
            )
            .await?;
            clusters.push(running.cluster);
        }
        Ok(Sim {
            clusters,
            config,
            shutdown,
            control_address: None,
            control_token: crate::tls::random_token(),
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The call record of one cluster (empty for an unknown cluster), oldest first.
    pub fn calls(&self, cluster: &str) -> Vec<crate::metrics::CallRecord> {
        self.cluster(cluster).map(|c| c.calls()).unwrap_or_default()
    }

    /// A kubeconfig with one context per cluster, named after it; `current` is the current context.
    pub fn kubeconfig(&self, current: Option<&str>) -> String {
        kubeconfig_yaml(&self.clusters, current)
    }

    /// Writes `DIR/kubeconfig` and `DIR/sim.json` and starts the control endpoint.
    pub async fn publish(
        &mut self,
        dir: &Path,
        current: Option<&str>,
    ) -> Result<PathBuf, SimError> {
        let io = |source| SimError::StateDir {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let kubeconfig = dir.join("kubeconfig");
        write_private(&kubeconfig, &self.kubeconfig(current)).map_err(io)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(SimError::Control)?;
        let addr = listener.local_addr().map_err(SimError::Control)?;
        self.control_address = Some(addr);
        tokio::spawn(crate::control::serve(
            listener,
            self.clusters.clone(),
            self.control_token.clone(),
            self.shutdown.clone(),
        ));
        let state = SimState {
            pid: std::process::id(),
            control: format!("http://{addr}"),
            control_token: self.control_token.clone(),
            kubeconfig: kubeconfig.display().to_string(),
            clusters: self
                .clusters
                .iter()
                .map(|c| (c.name.clone(), ClusterState { server: c.url() }))
                .collect(),
        };
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        write_private(&dir.join("sim.json"), &text).map_err(io)?;
        Ok(kubeconfig)
    }

    /// Waits until every cluster answers /readyz over HTTPS with its own CA.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        for c in &self.clusters {
            loop {
                match crate::client::get(c, "/readyz").await {
                    Ok((200, _)) => break,
                    other => {
                        if tokio::time::Instant::now() > deadline {
                            return Err(format!(
                                "cluster {} did not become ready: {other:?}",
                                c.name
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

/// Credentials are secrets: the kubeconfig is readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

pub fn kubeconfig_yaml(clusters: &[Arc<Cluster>], current: Option<&str>) -> String {
    let current = current
        .map(String::from)
        .or_else(|| clusters.first().map(|c| c.name.clone()))
        .unwrap_or_default();
    let doc: Value = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "current-context": current,
        "clusters": clusters.iter().map(|c| json!({
            "name": c.name,
            "cluster": {"server": c.url(), "certificate-authority-data": c.identity.ca_base64()},
        })).collect::<Vec<_>>(),
        "users": clusters.iter().map(|c| json!({
            "name": format!("{}-admin", c.name),
            "user": {"token": c.identity.token},
        })).collect::<Vec<_>>(),
        "contexts": clusters.iter().map(|c| json!({
            "name": c.name,
            "context": {"cluster": c.name, "user": format!("{}-admin", c.name)},
        })).collect::<Vec<_>>(),
    });
    serde_saphyr::to_string(&doc).unwrap_or_else(|_| doc.to_string())
}
