//! ServiceAccount tokens: the TokenRequest subresource and the token controller that fills
//! `kubernetes.io/service-account-token` Secrets.
//!
//! Tokens are opaque random strings remembered by the cluster (a real API server signs JWTs; no
//! client here looks inside them). A token authenticates while it has not expired, its
//! ServiceAccount still exists with the same uid, and (for Secret tokens) its Secret still exists
//! holding it, as kube-apiserver's service-account token authenticator checks.
//! https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/token-request-v1/
//! https://kubernetes.io/docs/concepts/configuration/secret/#serviceaccount-token-secrets

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::api::{Reply, Request};
use crate::meta;
use crate::rbac::UserInfo;
use crate::status::{ApiError, Cause};
use crate::store::{Inner, meta_str};

/// Kubernetes' bounds on `spec.expirationSeconds` (ValidateTokenRequest) and its default.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

pub const SECRET_TYPE: &str = "kubernetes.io/service-account-token";
pub const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const SA_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

#[derive(Debug, Clone)]
struct Issued {
    namespace: String,
    service_account: String,
    service_account_uid: String,
    /// None for Secret tokens, which live as long as their Secret.
    expires: Option<DateTime<Utc>>,
    /// (name, uid) of the Secret holding the token.
    secret: Option<(String, String)>,
}

/// The tokens one cluster has issued, and its token clock.
#[derive(Default)]
pub struct Tokens {
    issued: Mutex<HashMap<String, Issued>>,
    /// Seconds added to the wall clock when judging expiry: lets tests see a token expire
    /// without waiting the ten-minute minimum lifetime.
    skew_seconds: AtomicI64,
}

impl Tokens {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(self.skew_seconds.load(Ordering::Relaxed))
    }

    /// Moves the token clock forward (tests).
    pub fn advance_clock(&self, by: Duration) {
        let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX / 2);
        self.skew_seconds.fetch_add(secs, Ordering::Relaxed);
    }

    /// The ServiceAccount user a token stands for, if it is still valid.
    pub fn authenticate(&self, inner: &Inner, token: &str) -> Option<UserInfo> {
        let issued = self.issued.lock().get(token).cloned()?;
        if issued.expires.is_some_and(|e| e <= self.now()) {
            return None;
        }
        let sa = inner.get(
            &inner.registry.core("serviceaccounts").storage,
            &issued.namespace,
            &issued.service_account,
        )?;
        if meta_str(&sa, "uid") != issued.service_account_uid || meta::is_deleting(&sa) {
            return None;
        }
        if let Some((name, uid)) = &issued.secret {
            let secret = inner.get(
                &inner.registry.core("secrets").storage,
                &issued.namespace,
                name,
            )?;
            let held = secret
                .pointer("/data/token")
                .and_then(Value::as_str)
                .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok());
            if meta_str(&secret, "uid") != uid || held.as_deref() != Some(token.as_bytes()) {
                return None;
            }
        }
        Some(UserInfo::service_account(
            &issued.namespace,
            &issued.service_account,
            &issued.service_account_uid,
        ))
    }

    fn issue(&self, issued: Issued) -> String {
        let token = format!(
            "{}{}",
            crate::tls::random_token(),
            crate::tls::random_token()
        );
        let now = self.now();
        let mut map = self.issued.lock();
        // Expired tokens can never authenticate again: forget them so long runs stay bounded.
        map.retain(|_, i| i.expires.is_none_or(|e| e > now));
        map.insert(token.clone(), issued);
        token
    }
}

fn invalid_expiration(name: &str, seconds: i64, why: &str) -> ApiError {
    ApiError::invalid(
        "authentication.k8s.io",
        "TokenRequest",
        name,
        vec![Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {seconds}: {why}"),
            field: "spec.expirationSeconds".into(),
        }],
    )
}

/// POST .../serviceaccounts/{name}/token (what `kubectl create token` sends).
pub fn request(
    tokens: &Tokens,
    inner: &Inner,
    namespace: &str,
    name: &str,
    req: &Request,
) -> Result<Reply, ApiError> {
    let body = req.body_value()?;
    let seconds = body
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if seconds < MIN_EXPIRATION_SECONDS {
        return Err(invalid_expiration(
            "",
            seconds,
            "may not specify a duration less than 10 minutes",
        ));
    }
    if seconds > MAX_EXPIRATION_SECONDS {
        return Err(invalid_expiration(
            "",
            seconds,
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let sa = inner
        .get(
            &inner.registry.core("serviceaccounts").storage,
            namespace,
            name,
        )
        .ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?;
    let expires = tokens.now() + chrono::Duration::seconds(seconds);
    let token = tokens.issue(Issued {
        namespace: namespace.to_string(),
        service_account: name.to_string(),
        service_account_uid: meta_str(&sa, "uid").to_string(),
        expires: Some(expires),
        secret: None,
    });
    let audiences = body
        .pointer("/spec/audiences")
        .filter(|a| a.as_array().is_some_and(|a| !a.is_empty()))
        .cloned()
        .unwrap_or_else(|| json!(["https://kubernetes.default.svc.cluster.local"]));
    Ok(Reply::Json(
        201,
        json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": meta::now()},
            "spec": {
                "audiences": audiences,
                "expirationSeconds": seconds,
                "boundObjectRef": body.pointer("/spec/boundObjectRef").cloned().unwrap_or(Value::Null),
            },
            "status": {
                "token": token,
                "expirationTimestamp": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            },
        }),
    ))
}

/// The token controller's pass: every ServiceAccount-token Secret whose ServiceAccount exists
/// gets `data.token`, `data.ca.crt`, `data.namespace` and the ServiceAccount's uid annotation.
/// Returns how many Secrets it filled.
pub fn fill_secrets(tokens: &Tokens, inner: &mut Inner, ca_pem: &str) -> usize {
    let secrets = inner.registry.core("secrets").storage.clone();
    let accounts = inner.registry.core("serviceaccounts").storage.clone();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut filled = 0;
    for secret in inner.list(&secrets, None) {
        let has_token = secret
            .pointer("/data/token")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty());
        if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE)
            || has_token
            || meta::is_deleting(&secret)
        {
            continue;
        }
        let namespace = meta_str(&secret, "namespace").to_string();
        let Some(account) = secret
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SA_NAME_ANNOTATION))
            .and_then(Value::as_str)
            .map(String::from)
        else {
            continue;
        };
        let Some(sa) = inner.get(&accounts, &namespace, &account) else {
            continue;
        };
        let sa_uid = meta_str(&sa, "uid").to_string();
        let token = tokens.issue(Issued {
            namespace: namespace.clone(),
            service_account: account,
            service_account_uid: sa_uid.clone(),
            expires: None,
            secret: Some((
                meta_str(&secret, "name").to_string(),
                meta_str(&secret, "uid").to_string(),
            )),
        });
        let mut updated = (*secret).clone();
        let data = meta::ensure_object(&mut updated["data"]);
        data.insert("token".into(), json!(b64(&token)));
        data.insert("ca.crt".into(), json!(b64(ca_pem)));
        data.insert("namespace".into(), json!(b64(&namespace)));
        let annotations = meta::ensure_object(
            meta::metadata_mut(&mut updated)
                .entry("annotations")
                .or_insert(json!({})),
        );
        annotations.insert(SA_UID_ANNOTATION.into(), json!(sa_uid));
        inner.put(&secrets, updated);
        filled += 1;
    }
    filled
}
