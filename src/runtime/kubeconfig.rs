//! kube-rs clients from kubeconfigs: the `--kubeconfig/--context` flags every hub-facing command
//! takes, and member kubeconfigs stored in Secrets.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("reading kubeconfig {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("no kubeconfig: pass --kubeconfig FILE or set $KUBECONFIG")]
    Missing,
}

/// Where the hub is: `--kubeconfig` / `--context`, defaulting to `$KUBECONFIG` and its current context.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubeconfigArgs {
    /// Kubeconfig of the hub cluster (default: $KUBECONFIG).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
}

impl KubeconfigArgs {
    pub fn path(&self) -> Result<PathBuf, KubeconfigError> {
        self.kubeconfig
            .clone()
            .or_else(|| {
                std::env::var_os("KUBECONFIG")
                    .filter(|v| !v.is_empty())
                    .map(|v| std::env::split_paths(&v).next().unwrap_or_default())
            })
            .ok_or(KubeconfigError::Missing)
    }

    pub async fn client(&self) -> Result<kube::Client, KubeconfigError> {
        let path = self.path()?;
        client_from_file(&path, self.context.as_deref()).await
    }
}

pub async fn client_from_file(
    path: &Path,
    context: Option<&str>,
) -> Result<kube::Client, KubeconfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    client_from_yaml(&text, context, &path.display().to_string()).await
}

/// A client from kubeconfig text (`origin` names it in errors).
pub async fn client_from_yaml(
    yaml: &str,
    context: Option<&str>,
    origin: &str,
) -> Result<kube::Client, KubeconfigError> {
    let invalid = |message: String| KubeconfigError::Invalid {
        origin: origin.to_string(),
        message,
    };
    let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(|e| invalid(e.to_string()))?;
    let options = KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| invalid(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| invalid(e.to_string()))
}
