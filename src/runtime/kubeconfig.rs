//! kube-rs clients from kubeconfigs: the `--kubeconfig/--context` flags every hub-facing command
//! takes, and member kubeconfigs stored in Secrets.
//!
//! Without `--kubeconfig`, the configuration is found as kubectl finds it: the files of
//! `$KUBECONFIG` merged (the first file to set a value wins; files that do not exist are
//! skipped), else `~/.kube/config`, else the pod's service account (in-cluster). The loading
//! itself is kube's ([`Kubeconfig::read_from`], [`Kubeconfig::merge`],
//! [`kube::Config::from_custom_kubeconfig`], [`kube::Config::incluster`]); [`source`] only
//! decides where to look, so that choice is tested without a home directory or a pod.

use std::ffi::OsStr;
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
    #[error(
        "no cluster configuration found: tried {tried}, and in-cluster ({cause}); pass --kubeconfig FILE, set $KUBECONFIG or run in a pod with a service account"
    )]
    Missing { tried: String, cause: String },
    #[error(
        "--context {context}: no kubeconfig to find it in; pass --kubeconfig FILE, set $KUBECONFIG or create ~/.kube/config"
    )]
    ContextWithoutKubeconfig { context: String },
}

/// Where the hub is: `--kubeconfig` / `--context`, defaulting to what kubectl would use.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubeconfigArgs {
    /// Kubeconfig of the hub cluster (default, as kubectl: $KUBECONFIG, else ~/.kube/config,
    /// else in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
}

/// Where a client's configuration comes from, in kubectl's order of precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--kubeconfig FILE`: that file alone.
    Flag(PathBuf),
    /// `$KUBECONFIG`: these files (the ones that exist), merged in order.
    Env(Vec<PathBuf>),
    /// `~/.kube/config`.
    Home(PathBuf),
    /// No kubeconfig anywhere: the service account of the pod this runs in.
    InCluster,
}

/// Where kubectl would look, given `--kubeconfig`, `$KUBECONFIG`, the home directory and which
/// files exist. A `$KUBECONFIG` that is set hides `~/.kube/config` even when none of its files
/// exist (then kubectl falls back to in-cluster).
pub fn source(
    flag: Option<&Path>,
    env: Option<&OsStr>,
    home: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> Source {
    if let Some(path) = flag {
        return Source::Flag(path.to_path_buf());
    }
    let listed: Vec<PathBuf> = env
        .map(|v| {
            std::env::split_paths(v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        let present: Vec<PathBuf> = listed.into_iter().filter(|p| exists(p)).collect();
        return if present.is_empty() {
            Source::InCluster
        } else {
            Source::Env(present)
        };
    }
    match home.map(|h| h.join(".kube").join("config")) {
        Some(path) if exists(&path) => Source::Home(path),
        _ => Source::InCluster,
    }
}

/// What [`source`] looked at before falling back to in-cluster, for the error when that fails
/// too (the `--kubeconfig` flag was not given, or it would have been chosen).
pub fn tried(env: Option<&OsStr>, home: Option<&Path>) -> String {
    let env = match env.filter(|v| !v.is_empty()) {
        Some(v) => format!("$KUBECONFIG ({}: no such file)", v.to_string_lossy()),
        None => "$KUBECONFIG (unset)".to_string(),
    };
    let home = match home {
        Some(h) => format!(
            "{} (no such file)",
            h.join(".kube").join("config").display()
        ),
        None => "~/.kube/config (no home directory)".to_string(),
    };
    format!("no --kubeconfig, {env}, {home}")
}

/// The kubeconfig of `source` (`None` for in-cluster): one file, or several merged.
pub fn load(source: &Source) -> Result<Option<Kubeconfig>, KubeconfigError> {
    let read = |path: &Path| {
        Kubeconfig::read_from(path).map_err(|e| KubeconfigError::Invalid {
            origin: path.display().to_string(),
            message: crate::cli::cluster::one_line(&e),
        })
    };
    match source {
        Source::Flag(path) | Source::Home(path) => read(path).map(Some),
        Source::Env(paths) => {
            let mut merged = Kubeconfig::default();
            for path in paths {
                merged = merged
                    .merge(read(path)?)
                    .map_err(|e| KubeconfigError::Invalid {
                        origin: format!("$KUBECONFIG ({})", path.display()),
                        message: crate::cli::cluster::one_line(&e),
                    })?;
            }
            Ok(Some(merged))
        }
        Source::InCluster => Ok(None),
    }
}

impl KubeconfigArgs {
    /// Where the configuration comes from, from the flags and this process's environment.
    pub fn source(&self) -> Source {
        source(
            self.kubeconfig.as_deref(),
            std::env::var_os("KUBECONFIG").as_deref(),
            std::env::home_dir().as_deref(),
            Path::exists,
        )
    }

    pub async fn config(&self) -> Result<kube::Config, KubeconfigError> {
        let source = self.source();
        let origin = match &source {
            Source::Flag(p) | Source::Home(p) => p.display().to_string(),
            Source::Env(paths) => format!(
                "$KUBECONFIG ({})",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Source::InCluster => "in-cluster".to_string(),
        };
        match (load(&source)?, &self.context) {
            (Some(kubeconfig), context) => {
                let options = KubeConfigOptions {
                    context: context.clone(),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| KubeconfigError::Invalid {
                        origin,
                        message: crate::cli::cluster::one_line(&e),
                    })
            }
            (None, Some(context)) => Err(KubeconfigError::ContextWithoutKubeconfig {
                context: context.clone(),
            }),
            // In a pod: the service account token and CA under
            // /var/run/secrets/kubernetes.io/serviceaccount and $KUBERNETES_SERVICE_HOST/PORT,
            // as kubectl's and client-go's rest.InClusterConfig read them.
            (None, None) => kube::Config::incluster().map_err(|e| KubeconfigError::Missing {
                tried: tried(
                    std::env::var_os("KUBECONFIG").as_deref(),
                    std::env::home_dir().as_deref(),
                ),
                cause: crate::cli::cluster::one_line(&e),
            }),
        }
    }

    pub async fn client(&self) -> Result<kube::Client, KubeconfigError> {
        let config = self.config().await?;
        kube::Client::try_from(config).map_err(|e| KubeconfigError::Invalid {
            origin: "client".into(),
            message: e.to_string(),
        })
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
    let config = config_from_yaml(yaml, context, origin).await?;
    kube::Client::try_from(config).map_err(|e| KubeconfigError::Invalid {
        origin: origin.to_string(),
        message: e.to_string(),
    })
}

/// The client configuration in kubeconfig text (`origin` names it in errors).
pub async fn config_from_yaml(
    yaml: &str,
    context: Option<&str>,
    origin: &str,
) -> Result<kube::Config, KubeconfigError> {
    let invalid = |message: String| KubeconfigError::Invalid {
        origin: origin.to_string(),
        message,
    };
    let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(|e| invalid(e.to_string()))?;
    let options = KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exists_of(files: &[&str]) -> impl Fn(&Path) -> bool {
        let files: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        move |p| files.iter().any(|f| f == p)
    }

    #[test]
    fn kubeconfig_sources_follow_kubectls_precedence() {
        let home = Path::new("/home/me");
        let all = exists_of(&["/a", "/b", "/home/me/.kube/config", "/flag"]);
        let env = std::env::join_paths(["/a", "/missing", "/b"]).unwrap();
        assert_eq!(
            source(Some(Path::new("/flag")), Some(&env), Some(home), &all),
            Source::Flag("/flag".into()),
            "--kubeconfig wins"
        );
        assert_eq!(
            source(None, Some(&env), Some(home), &all),
            Source::Env(vec!["/a".into(), "/b".into()]),
            "every $KUBECONFIG path that exists, in order"
        );
        assert_eq!(
            source(None, Some(OsStr::new("")), Some(home), &all),
            Source::Home("/home/me/.kube/config".into()),
            "an empty $KUBECONFIG is unset"
        );
        assert_eq!(
            source(None, None, Some(home), &all),
            Source::Home("/home/me/.kube/config".into())
        );
        assert_eq!(
            source(None, Some(OsStr::new("/missing")), Some(home), &all),
            Source::InCluster,
            "a set $KUBECONFIG hides ~/.kube/config"
        );
        assert_eq!(
            source(None, None, Some(home), exists_of(&[])),
            Source::InCluster
        );
        assert_eq!(source(None, None, None, &all), Source::InCluster);
    }

    #[test]
    fn nothing_found_says_what_was_tried() {
        assert_eq!(
            tried(None, Some(Path::new("/home/me"))),
            "no --kubeconfig, $KUBECONFIG (unset), /home/me/.kube/config (no such file)"
        );
        assert_eq!(
            tried(Some(OsStr::new("/a:/b")), None),
            "no --kubeconfig, $KUBECONFIG (/a:/b: no such file), ~/.kube/config (no home directory)"
        );
    }

    fn config(current: Option<&str>, contexts: &[(&str, &str)]) -> String {
        let mut text = String::from("apiVersion: v1\nkind: Config\n");
        if let Some(c) = current {
            text.push_str(&format!("current-context: {c}\n"));
        }
        text.push_str("clusters:\n");
        for (_, server) in contexts {
            text.push_str(&format!(
                "- name: {server}\n  cluster: {{server: \"https://{server}:6443\"}}\n"
            ));
        }
        text.push_str("contexts:\n");
        for (name, server) in contexts {
            text.push_str(&format!(
                "- name: {name}\n  context: {{cluster: {server}, user: u}}\n"
            ));
        }
        text.push_str("users:\n- name: u\n  user: {token: t}\n");
        text
    }

    #[tokio::test]
    async fn kubeconfig_paths_are_merged_like_kubectl() {
        let dir =
            std::env::temp_dir().join(format!("cafe-kubeconfig-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = dir.join("first");
        let second = dir.join("second");
        // The first file names the current context; the second holds it, and a context of the
        // same name as one in the first (the first's wins).
        std::fs::write(&first, config(Some("hub"), &[("dca", "first-dca")])).unwrap();
        std::fs::write(
            &second,
            config(Some("dca"), &[("hub", "hub"), ("dca", "second-dca")]),
        )
        .unwrap();

        let merged = load(&Source::Env(vec![first.clone(), second.clone()]))
            .unwrap()
            .unwrap();
        assert_eq!(merged.current_context.as_deref(), Some("hub"));
        let options = KubeConfigOptions::default();
        let hub = kube::Config::from_custom_kubeconfig(merged.clone(), &options)
            .await
            .unwrap();
        assert_eq!(hub.cluster_url.host(), Some("hub"));
        let options = KubeConfigOptions {
            context: Some("dca".into()),
            ..Default::default()
        };
        let dca = kube::Config::from_custom_kubeconfig(merged, &options)
            .await
            .unwrap();
        assert_eq!(dca.cluster_url.host(), Some("first-dca"));

        let env = std::env::join_paths([&first, &dir.join("missing"), &second]).unwrap();
        assert_eq!(
            source(None, Some(&env), None, Path::exists),
            Source::Env(vec![first, second])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
