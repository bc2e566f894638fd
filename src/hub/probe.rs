//! Probing a member: does it answer, who does it say it is, how much room has it. The outcome is a
//! [`ProbeReport`] or a [`Problem`] whose reason becomes the MemberCluster's Ready condition.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

use crate::api::Capacity;

/// Why a member is not usable. The names are the Ready condition's reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemReason {
    /// The Secret named by `spec.kubeconfigSecretRef` does not exist (or lacks the key).
    SecretNotFound,
    /// The Secret holds something that is not a usable kubeconfig.
    KubeconfigInvalid,
    /// The member rejected the credentials (401 or 403).
    Unauthorized,
    /// No answer: connection refused or reset, TLS failure, timeout.
    Unreachable,
    /// The member answered with an error other than 401/403.
    ProbeFailed,
    /// Registered, but the hub has not yet connected to it or filled its cache.
    Connecting,
}

impl ProblemReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemReason::SecretNotFound => "SecretNotFound",
            ProblemReason::KubeconfigInvalid => "KubeconfigInvalid",
            ProblemReason::Unauthorized => "Unauthorized",
            ProblemReason::Unreachable => "Unreachable",
            ProblemReason::ProbeFailed => "ProbeFailed",
            ProblemReason::Connecting => "Connecting",
        }
    }
}

/// A reason and a message for people (never a credential).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: ProblemReason,
    pub message: String,
}

impl Problem {
    pub fn new(reason: ProblemReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}

/// What a successful probe saw.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    /// `gitVersion` from `/version`, e.g. "v1.33.0".
    pub version: String,
    pub capacity: Capacity,
}

/// Probes `/version`, then lists Nodes and non-terminated Pods (authenticated requests: on some
/// servers `/version` is public, so it alone cannot tell a bad token). The whole probe is bounded
/// by `timeout`.
pub async fn probe(client: &kube::Client, timeout: Duration) -> Result<ProbeReport, Problem> {
    match tokio::time::timeout(timeout, probe_unbounded(client)).await {
        Ok(result) => result,
        Err(_) => Err(Problem::new(
            ProblemReason::Unreachable,
            format!("no answer within {timeout:?}"),
        )),
    }
}

async fn probe_unbounded(client: &kube::Client) -> Result<ProbeReport, Problem> {
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| classify("GET /version", &e))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| classify("listing nodes", &e))?;
    let pods: Api<Pod> = Api::all(client.clone());
    let pods = pods
        .list(&ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"))
        .await
        .map_err(|e| classify("listing pods", &e))?;
    Ok(ProbeReport {
        version: info.git_version,
        capacity: super::capacity::capacity(&nodes.items, &pods.items),
    })
}

/// Sorts a client error into a reason: the API's own answers by code, everything that never got
/// an answer as Unreachable.
pub fn classify(what: &str, error: &kube::Error) -> Problem {
    match error {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => Problem::new(
            ProblemReason::Unauthorized,
            format!(
                "{what}: the member answered {} {}: check the credentials in the kubeconfig Secret",
                status.code, status.reason
            ),
        ),
        kube::Error::Api(status) => Problem::new(
            ProblemReason::ProbeFailed,
            format!(
                "{what}: the member answered {} {}: {}",
                status.code, status.reason, status.message
            ),
        ),
        other => Problem::new(ProblemReason::Unreachable, format!("{what}: {other}")),
    }
}
