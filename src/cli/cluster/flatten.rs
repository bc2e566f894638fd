//! A member kubeconfig reduced to one context, with every credential inline: what the hub
//! stores in the member's Secret and connects with.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kube::config::{Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};

use super::{ClusterError, one_line};

/// Reads a kubeconfig file; relative certificate and token paths resolve against its directory.
pub(super) fn read_member_kubeconfig(path: &Path) -> Result<Kubeconfig, ClusterError> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(ClusterError::ReadKubeconfig {
            path: path.display().to_string(),
            message: e.to_string(),
        });
    }
    Kubeconfig::read_from(path).map_err(|e| ClusterError::InvalidKubeconfig {
        origin: path.display().to_string(),
        message: one_line(&e),
    })
}

/// One context of `kubeconfig` (default: its current context) as a self-contained kubeconfig:
/// just that context, its cluster and its user, with certificate, key and token files read
/// into the file, and that context current. Exec plugins and auth providers are refused: the
/// hub, which uses this kubeconfig, cannot run them.
pub fn flatten(kubeconfig: Kubeconfig, context: Option<&str>) -> Result<Kubeconfig, ClusterError> {
    let available = kubeconfig
        .contexts
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let available = if available.is_empty() {
        "it defines no contexts".to_string()
    } else {
        format!("it has: {available}")
    };
    let wanted = match context
        .map(String::from)
        .or(kubeconfig.current_context.clone())
    {
        Some(c) if !c.is_empty() => c,
        _ => return Err(ClusterError::NoContext { available }),
    };
    let Some(named) = kubeconfig.contexts.iter().find(|c| c.name == wanted) else {
        return Err(ClusterError::UnknownContext {
            context: wanted,
            available,
        });
    };
    let incomplete = |problem: String| ClusterError::IncompleteContext {
        context: wanted.clone(),
        problem,
    };
    let ctx = named
        .context
        .clone()
        .ok_or_else(|| incomplete("is empty".into()))?;
    let mut cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| {
            incomplete(format!(
                "names cluster {:?}, which is not defined",
                ctx.cluster
            ))
        })?;
    if cluster.server.as_deref().unwrap_or("").is_empty() {
        return Err(incomplete(format!(
            "uses cluster {:?}, which has no server",
            ctx.cluster
        )));
    }
    if let Some(path) = cluster.certificate_authority.take() {
        cluster.certificate_authority_data = Some(BASE64.encode(read_credential(&path)?));
    }
    let user_name = ctx.user.clone().unwrap_or_default();
    let mut auth = match &ctx.user {
        None => None,
        Some(user) => Some(
            kubeconfig
                .auth_infos
                .iter()
                .find(|a| &a.name == user)
                .and_then(|a| a.auth_info.clone())
                .ok_or_else(|| incomplete(format!("names user {user:?}, which is not defined")))?,
        ),
    };
    if let Some(auth) = auth.as_mut() {
        if auth.exec.is_some() {
            return Err(ClusterError::UnsupportedAuth {
                context: wanted,
                mechanism: "an exec plugin".into(),
            });
        }
        if let Some(p) = &auth.auth_provider {
            return Err(ClusterError::UnsupportedAuth {
                context: wanted,
                mechanism: format!("the {:?} auth provider", p.name),
            });
        }
        if let Some(path) = auth.client_certificate.take() {
            auth.client_certificate_data = Some(BASE64.encode(read_credential(&path)?));
        }
        if let Some(path) = auth.client_key.take() {
            auth.client_key_data = Some(BASE64.encode(read_credential(&path)?).into());
        }
        if let Some(path) = auth.token_file.take() {
            // kubectl reads the token file on every request; a Secret can only hold its value now.
            if auth.token.is_none() {
                let token = String::from_utf8_lossy(&read_credential(&path)?)
                    .trim()
                    .to_string();
                auth.token = Some(token.into());
            }
        }
    }
    Ok(Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        current_context: Some(wanted.clone()),
        clusters: vec![NamedCluster {
            name: ctx.cluster.clone(),
            cluster: Some(cluster),
            ..Default::default()
        }],
        auth_infos: auth
            .map(|a| NamedAuthInfo {
                name: user_name,
                auth_info: Some(a),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        contexts: vec![NamedContext {
            name: wanted,
            context: Some(ctx),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn read_credential(path: &str) -> Result<Vec<u8>, ClusterError> {
    std::fs::read(path).map_err(|e| ClusterError::CredentialFile {
        path: path.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    const TWO_CONTEXTS: &str = r#"
apiVersion: v1
kind: Config
current-context: dca
clusters:
- name: dca
  cluster: {server: "https://127.0.0.1:6443", certificate-authority-data: Q0E=}
- name: dcb
  cluster: {server: "https://127.0.0.1:6444", certificate-authority-data: Q0I=}
users:
- name: dca-admin
  user: {token: secret-a}
- name: dcb-admin
  user: {token: secret-b}
contexts:
- name: dca
  context: {cluster: dca, user: dca-admin}
- name: dcb
  context: {cluster: dcb, user: dcb-admin, namespace: apps}
"#;

    fn parse(yaml: &str) -> Kubeconfig {
        Kubeconfig::from_yaml(yaml).unwrap()
    }

    #[test]
    fn flatten_keeps_only_the_chosen_context() {
        let flat = flatten(parse(TWO_CONTEXTS), Some("dcb")).unwrap();
        assert_eq!(flat.current_context.as_deref(), Some("dcb"));
        assert_eq!(flat.contexts.len(), 1);
        assert_eq!(flat.clusters.len(), 1);
        assert_eq!(flat.clusters[0].name, "dcb");
        assert_eq!(flat.auth_infos.len(), 1);
        assert_eq!(flat.auth_infos[0].name, "dcb-admin");
        let yaml = serde_saphyr::to_string(&flat).unwrap();
        assert!(
            yaml.contains("secret-b") && !yaml.contains("secret-a"),
            "{yaml}"
        );
        // It reads back as a kubeconfig whose current context is the chosen one.
        let back = parse(&yaml);
        assert_eq!(back.current_context.as_deref(), Some("dcb"));
        assert_eq!(
            back.contexts[0]
                .context
                .as_ref()
                .unwrap()
                .namespace
                .as_deref(),
            Some("apps")
        );
    }

    #[test]
    fn flatten_defaults_to_the_current_context() {
        let flat = flatten(parse(TWO_CONTEXTS), None).unwrap();
        assert_eq!(flat.current_context.as_deref(), Some("dca"));
    }

    #[test]
    fn flatten_names_unknown_and_missing_contexts() {
        let err = flatten(parse(TWO_CONTEXTS), Some("dcc"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"dcc\"") && err.contains("dca, dcb") && err.contains("--context"),
            "{err}"
        );
        let no_current = TWO_CONTEXTS.replace("current-context: dca\n", "");
        let err = flatten(parse(&no_current), None).unwrap_err().to_string();
        assert!(
            err.contains("no current-context") && err.contains("--context"),
            "{err}"
        );
        let dangling = TWO_CONTEXTS.replace("{cluster: dca, user", "{cluster: nowhere, user");
        let err = flatten(parse(&dangling), None).unwrap_err().to_string();
        assert!(err.contains("nowhere"), "{err}");
    }

    #[test]
    fn flatten_inlines_credential_files() {
        let dir = std::env::temp_dir().join(format!("cafe-flatten-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), "CA PEM").unwrap();
        std::fs::write(dir.join("token"), "tok-123\n").unwrap();
        let yaml = format!(
            "current-context: c\nclusters: [{{name: k, cluster: {{server: 'https://x', certificate-authority: {ca}}}}}]\n\
             users: [{{name: u, user: {{tokenFile: {tok}}}}}]\ncontexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n",
            ca = dir.join("ca.crt").display(),
            tok = dir.join("token").display(),
        );
        let flat = flatten(parse(&yaml), None).unwrap();
        let cluster = flat.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.certificate_authority, None);
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some(BASE64.encode("CA PEM").as_str())
        );
        let out = serde_saphyr::to_string(&flat).unwrap();
        assert!(
            out.contains("tok-123") && !out.contains("tokenFile"),
            "{out}"
        );
        let missing = yaml.replace("ca.crt", "missing.crt");
        let err = flatten(parse(&missing), None).unwrap_err().to_string();
        assert!(err.contains("missing.crt"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flatten_refuses_exec_plugins() {
        let yaml = TWO_CONTEXTS.replace(
            "user: {token: secret-a}",
            "user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}}",
        );
        let err = flatten(parse(&yaml), Some("dca")).unwrap_err().to_string();
        assert!(err.contains("exec plugin"), "{err}");
    }
}
