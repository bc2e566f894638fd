//! The hub's own identity in each member cluster.
//!
//! `cafe cluster register` does not hand the hub the operator's credentials (usually
//! cluster-admin). By default it creates, in the member, the ServiceAccount
//! `cafe-system/cafe-hub` with a ClusterRole of exactly what the hub does there, and stores a
//! token of that ServiceAccount (from the TokenRequest API, so it expires) in the hub's Secret.
//! The hub renews the token itself before it expires, with the one extra right it holds:
//! requesting tokens for that ServiceAccount and no other.
//!
//! Everything registration creates hangs off the ClusterRole through owner references, so that
//! deleting the ClusterRole (which the identity may do to itself, and only to itself) removes
//! all of it through the member's garbage collector: `cafe cluster remove` needs no member
//! credentials beyond the stored token.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::config::Kubeconfig;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::labels::{ROOM_CONFIGMAP, SYSTEM_NAMESPACE};

/// Name of the ServiceAccount, ClusterRole, ClusterRoleBinding, Role and RoleBinding that make
/// up the hub's identity in a member.
pub const IDENTITY: &str = "cafe-hub";
/// Annotations on the hub's kubeconfig Secret of a member whose token registration issued:
/// whose token it is (`namespace/name`), when it was issued and when it expires (RFC 3339).
pub const TOKEN_SERVICE_ACCOUNT: &str = "apps.cafe.io/token-serviceaccount";
pub const TOKEN_ISSUED_AT: &str = "apps.cafe.io/token-issued-at";
pub const TOKEN_EXPIRES_AT: &str = "apps.cafe.io/token-expires-at";
/// How long a token is asked for. The API server may grant less (its
/// `--service-account-max-token-expiration`); renewal follows what it granted.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A token is renewed once this share of its lifetime has passed, as the kubelet renews
/// projected service-account tokens at 80%: late enough to be rare, early enough that a hub
/// down for hours still finds a valid token when it comes back.
pub const RENEW_AT: f64 = 0.8;
/// Field manager of what registration writes in the member.
const FIELD_MANAGER: &str = "cafe-cli";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// What went wrong setting up, renewing or removing the hub's identity in a member.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// In the API server's own words (its Status message), not kube's debug dump of it.
    #[error("{action} in the member: {}", crate::runtime::api_cause(.error))]
    Api { action: String, error: kube::Error },
    #[error("the member answered a TokenRequest without a token or expiry")]
    EmptyToken,
    #[error("the member kubeconfig cannot be rewritten: {0}")]
    Kubeconfig(String),
}

impl AccessError {
    fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> AccessError {
        let action = action.into();
        move |error| AccessError::Api { action, error }
    }

    /// The member's HTTP status, when it answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            AccessError::Api {
                error: kube::Error::Api(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }
}

/// What the hub does in a member cluster, cluster-wide. Each rule says which code needs it.
pub fn cluster_rules() -> Vec<PolicyRule> {
    vec![
        // hub::member_writes: InPlaceSets are applied server-side (an apply that creates is
        // authorized as create too), deleted when a unit goes; hub::membership watches them.
        rule(
            "apps.cafe.io",
            &["inplacesets"],
            &["list", "watch", "create", "patch", "delete"],
        ),
        // hub::member_writes: a CafeDeployment's namespace is created in the member if missing.
        rule("", &["namespaces"], &["get", "create"]),
        // `cafe cluster remove`: the identity may delete its own ClusterRole, and with it
        // (owner references) everything registration created; no other ClusterRole.
        PolicyRule {
            api_groups: Some(vec![RBAC_GROUP.into()]),
            resources: Some(vec!["clusterroles".into()]),
            resource_names: Some(vec![IDENTITY.into()]),
            verbs: vec!["delete".into()],
            ..PolicyRule::default()
        },
    ]
}

/// What the hub does in the member's `cafe-system` namespace only.
pub fn namespace_rules() -> Vec<PolicyRule> {
    vec![
        // hub::membership: the agent's Lease tells whether the agent runs (AgentNotRunning).
        rule("coordination.k8s.io", &["leases"], &["list", "watch"]),
        // hub::probe: the room the member agent measured, and nothing else of the member's
        // pods or nodes.
        PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(vec![ROOM_CONFIGMAP.into()]),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        },
        // hub::membercluster: the hub renews its own token, and only its own.
        PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["serviceaccounts/token".into()]),
            resource_names: Some(vec![IDENTITY.into()]),
            verbs: vec!["create".into()],
            ..PolicyRule::default()
        },
    ]
}

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// `system:serviceaccount:cafe-system:cafe-hub`, the user the member sees the hub as.
pub fn user() -> String {
    format!("system:serviceaccount:{SYSTEM_NAMESPACE}:{IDENTITY}")
}

/// Creates (or updates) the hub's identity in the member, with `member` (the operator's
/// credentials): namespace `cafe-system`, the ClusterRole, then the ServiceAccount, Role and
/// both bindings, each owned by the ClusterRole.
pub async fn grant(member: &kube::Client) -> Result<(), AccessError> {
    ensure_namespace(member).await?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let roles: Api<ClusterRole> = Api::all(member.clone());
    let role = roles
        .patch(
            IDENTITY,
            &params,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": IDENTITY, "labels": labels()},
                "rules": cluster_rules(),
            })),
        )
        .await
        .map_err(AccessError::api(format!("applying ClusterRole {IDENTITY}")))?;
    let owner = json!([{
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "name": IDENTITY,
        "uid": role.uid().unwrap_or_default(),
    }]);
    let meta = |namespaced: bool| {
        let mut m = json!({"name": IDENTITY, "labels": labels(), "ownerReferences": owner});
        if namespaced {
            m["namespace"] = json!(SYSTEM_NAMESPACE);
        }
        m
    };
    let subject =
        json!([{"kind": "ServiceAccount", "name": IDENTITY, "namespace": SYSTEM_NAMESPACE}]);
    let objects = [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(true)}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(true),
            "rules": namespace_rules(),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(true),
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": IDENTITY},
            "subjects": subject,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": meta(false),
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": IDENTITY},
            "subjects": subject,
        }),
    ];
    for object in objects {
        apply(member, &params, object).await?;
    }
    Ok(())
}

/// Server-side applies one of the objects [`grant`] makes.
async fn apply(
    member: &kube::Client,
    params: &PatchParams,
    object: Value,
) -> Result<(), AccessError> {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let action = format!("applying {kind} {IDENTITY}");
    let patch = Patch::Apply(&object);
    let namespaced = || SYSTEM_NAMESPACE;
    let result = match kind.as_str() {
        "ServiceAccount" => Api::<ServiceAccount>::namespaced(member.clone(), namespaced())
            .patch(IDENTITY, params, &patch)
            .await
            .map(drop),
        "Role" => Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(member.clone(), namespaced())
            .patch(IDENTITY, params, &patch)
            .await
            .map(drop),
        "RoleBinding" => {
            Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(member.clone(), namespaced())
                .patch(IDENTITY, params, &patch)
                .await
                .map(drop)
        }
        _ => Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(member.clone())
            .patch(IDENTITY, params, &patch)
            .await
            .map(drop),
    };
    result.map_err(AccessError::api(action))
}

fn labels() -> Value {
    json!({"app.kubernetes.io/part-of": "cafe", "app.kubernetes.io/component": "hub-access"})
}

async fn ensure_namespace(member: &kube::Client) -> Result<(), AccessError> {
    let api: Api<Namespace> = Api::all(member.clone());
    let action = format!("creating namespace {SYSTEM_NAMESPACE}");
    if api
        .get_metadata_opt(SYSTEM_NAMESPACE)
        .await
        .map_err(AccessError::api(&action))?
        .is_some()
    {
        return Ok(());
    }
    let mut ns = Namespace::default();
    ns.meta_mut().name = Some(SYSTEM_NAMESPACE.into());
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(AccessError::Api { action, error: e }),
    }
}

/// A token of the hub's ServiceAccount, and its validity.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

// Never print the token itself, not even in debug output.
impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl IssuedToken {
    /// The Secret annotations that let the hub renew the token in time.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                TOKEN_SERVICE_ACCOUNT.to_string(),
                format!("{SYSTEM_NAMESPACE}/{IDENTITY}"),
            ),
            (TOKEN_ISSUED_AT.to_string(), self.issued_at.to_rfc3339()),
            (TOKEN_EXPIRES_AT.to_string(), self.expires_at.to_rfc3339()),
        ])
    }
}

/// Asks the member for a token of the hub's ServiceAccount. With the operator's credentials at
/// registration; with the hub's own token when the hub renews it.
pub async fn issue_token(
    member: &kube::Client,
    lifetime: Duration,
) -> Result<IssuedToken, AccessError> {
    let api: Api<ServiceAccount> = Api::namespaced(member.clone(), SYSTEM_NAMESPACE);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued_at = Utc::now();
    let answer = api
        .create_token_request(IDENTITY, &PostParams::default(), &request)
        .await
        .map_err(AccessError::api(format!(
            "requesting a token for ServiceAccount {SYSTEM_NAMESPACE}/{IDENTITY}"
        )))?;
    let status = answer.status.ok_or(AccessError::EmptyToken)?;
    if status.token.is_empty() {
        return Err(AccessError::EmptyToken);
    }
    let expires = status.expiration_timestamp.0;
    let expires_at =
        DateTime::from_timestamp(expires.as_second(), 0).ok_or(AccessError::EmptyToken)?;
    Ok(IssuedToken {
        token: status.token,
        issued_at,
        expires_at,
    })
}

/// `flat` (one context, as registration stores it) authenticating with `token` instead of
/// whatever credentials it held.
pub fn with_token(flat: &Kubeconfig, token: &str) -> Result<Kubeconfig, AccessError> {
    let mut value =
        serde_json::to_value(flat).map_err(|e| AccessError::Kubeconfig(e.to_string()))?;
    let users = value
        .get_mut("users")
        .and_then(Value::as_array_mut)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| AccessError::Kubeconfig("it has no user".into()))?;
    for user in users {
        user["user"] = json!({"token": token});
    }
    serde_json::from_value(value).map_err(|e| AccessError::Kubeconfig(e.to_string()))
}

/// When the token described by a Secret's annotations should be renewed; `None` when the
/// Secret holds no token registration issued (the operator's own credentials, kept with
/// `--use-kubeconfig-credentials`, are never touched).
pub fn renewal_time(annotations: &BTreeMap<String, String>) -> Option<DateTime<Utc>> {
    annotations.get(TOKEN_SERVICE_ACCOUNT)?;
    let at = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    match (at(TOKEN_ISSUED_AT), at(TOKEN_EXPIRES_AT)) {
        (Some(issued), Some(expires)) if expires > issued => {
            let lifetime = (expires - issued).to_std().ok()?;
            let renew_after = chrono::Duration::from_std(lifetime.mul_f64(RENEW_AT)).ok()?;
            Some(issued + renew_after)
        }
        // Unreadable annotations: renew now rather than let an unknown expiry pass.
        _ => Some(DateTime::<Utc>::MIN_UTC),
    }
}

/// Deletes the hub's identity from the member (the ClusterRole; the garbage collector removes
/// the rest). `Ok(false)` when it was already gone.
pub async fn revoke(member: &kube::Client) -> Result<bool, AccessError> {
    let api: Api<ClusterRole> = Api::all(member.clone());
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(IDENTITY, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(AccessError::Api {
            action: format!("deleting ClusterRole {IDENTITY}"),
            error: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(issued: &str, expires: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TOKEN_SERVICE_ACCOUNT.into(), "cafe-system/cafe-hub".into()),
            (TOKEN_ISSUED_AT.into(), issued.into()),
            (TOKEN_EXPIRES_AT.into(), expires.into()),
        ])
    }

    #[test]
    fn a_token_is_renewed_at_four_fifths_of_its_lifetime() {
        let due = renewal_time(&annotations("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"));
        assert_eq!(
            due.map(|t| t.to_rfc3339()),
            Some("2026-01-01T19:12:00+00:00".to_string())
        );
    }

    #[test]
    fn the_operators_own_credentials_are_never_renewed() {
        assert_eq!(renewal_time(&BTreeMap::new()), None);
    }

    #[test]
    fn unreadable_token_dates_mean_renew_now() {
        let due = renewal_time(&annotations("yesterday", "2026-01-02T00:00:00Z"));
        assert_eq!(due, Some(DateTime::<Utc>::MIN_UTC));
    }

    #[test]
    fn no_rule_uses_a_wildcard() {
        for rule in cluster_rules().iter().chain(namespace_rules().iter()) {
            let all = rule
                .verbs
                .iter()
                .chain(rule.resources.iter().flatten())
                .chain(rule.api_groups.iter().flatten());
            for word in all {
                assert!(!word.contains('*'), "{rule:?}");
            }
        }
    }

    #[test]
    fn the_stored_kubeconfig_authenticates_with_the_token_only() {
        let flat = Kubeconfig::from_yaml(
            "apiVersion: v1\nkind: Config\ncurrent-context: dca\nclusters: [{name: dca, cluster: {server: 'https://127.0.0.1:1', certificate-authority-data: QUJD}}]\ncontexts: [{name: dca, context: {cluster: dca, user: dca}}]\nusers: [{name: dca, user: {client-certificate-data: QUJD, client-key-data: QUJD}}]\n",
        )
        .expect("kubeconfig");
        let rewritten = with_token(&flat, "t0ken").expect("rewritten");
        let user = serde_json::to_value(&rewritten.auth_infos[0]).expect("json");
        assert_eq!(user["user"], json!({"token": "t0ken"}));
        assert_eq!(
            rewritten.clusters[0]
                .cluster
                .as_ref()
                .and_then(|c| c.server.clone()),
            Some("https://127.0.0.1:1".to_string())
        );
    }

    #[test]
    fn an_issued_token_never_prints() {
        let t = IssuedToken {
            token: "s3cret".into(),
            issued_at: DateTime::<Utc>::MIN_UTC,
            expires_at: DateTime::<Utc>::MIN_UTC,
        };
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
