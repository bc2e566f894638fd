//! Probing a member: does it answer, who does it say it is, how much room has it. The outcome is a
//! [`ProbeReport`] or a [`Problem`] whose reason becomes the MemberCluster's Ready condition.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

use crate::api::Capacity;
use crate::api::labels::{ROOM_CONFIGMAP, ROOM_KEY, SYSTEM_NAMESPACE};

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
    /// The member does not serve InPlaceSets (404 listing or watching them): the CRD was never
    /// installed there, or was deleted.
    CrdNotInstalled,
    /// The member agent has not renewed its Lease (`cafe-system/cafe-member`) within the
    /// Lease's duration: nothing acts on the member's InPlaceSets.
    AgentNotRunning,
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
            ProblemReason::CrdNotInstalled => "CRDNotInstalled",
            ProblemReason::AgentNotRunning => "AgentNotRunning",
        }
    }

    /// The reason a MemberCluster's Ready condition names (one of [`ProblemReason::as_str`]).
    pub fn from_reason(reason: &str) -> Option<Self> {
        [
            ProblemReason::SecretNotFound,
            ProblemReason::KubeconfigInvalid,
            ProblemReason::Unauthorized,
            ProblemReason::Unreachable,
            ProblemReason::ProbeFailed,
            ProblemReason::Connecting,
            ProblemReason::CrdNotInstalled,
            ProblemReason::AgentNotRunning,
        ]
        .into_iter()
        .find(|r| r.as_str() == reason)
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
    /// The room the member agent measured (ConfigMap `cafe-system/cafe-member-room`); `None`
    /// until it has published one.
    pub capacity: Option<Capacity>,
}

/// Probes `/version`, then reads the room the member agent published (an authenticated request:
/// on some servers `/version` is public, so it alone cannot tell a bad token). Two small GETs,
/// whatever the member's size: the hub never lists a member's pods or nodes. The whole probe is
/// bounded by `timeout`.
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
    let room: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let room = room.get_opt(ROOM_CONFIGMAP).await.map_err(|e| {
        classify(
            &format!("reading ConfigMap {SYSTEM_NAMESPACE}/{ROOM_CONFIGMAP}"),
            &e,
        )
    })?;
    Ok(ProbeReport {
        version: info.git_version,
        capacity: room.as_ref().and_then(summary_of),
    })
}

/// The room a member agent's ConfigMap carries; `None` when it carries none that parses.
pub fn summary_of(cm: &ConfigMap) -> Option<Capacity> {
    let text = cm.data.as_ref()?.get(ROOM_KEY)?;
    serde_json::from_str(text).ok()
}

/// Why the hub's watch of a member's InPlaceSets failed, when that makes the member unusable:
/// the CRD is missing (404) or the credentials may not list or watch InPlaceSets (401, 403).
/// Other errors (a dropped connection, 410 Gone, a 500) are retried by the watcher and, when the
/// member stops answering, caught by the probe.
pub fn classify_watch(member: &str, error: &kube::runtime::watcher::Error) -> Option<Problem> {
    use kube::runtime::watcher::Error as W;
    let code = match error {
        W::InitialListFailed(kube::Error::Api(s))
        | W::WatchStartFailed(kube::Error::Api(s))
        | W::WatchFailed(kube::Error::Api(s)) => s.code,
        W::WatchError(s) => s.code,
        _ => return None,
    };
    match code {
        404 => Some(Problem::new(
            ProblemReason::CrdNotInstalled,
            format!(
                "member {member} does not serve inplacesets.apps.cafe.io (404): install the CRDs \
                 there with `cafe crds | kubectl --context {member} apply -f -`"
            ),
        )),
        401 | 403 => Some(Problem::new(
            ProblemReason::Unauthorized,
            format!(
                "member {member} refused to list or watch inplacesets.apps.cafe.io ({code}): the \
                 credentials in its kubeconfig Secret must allow list and watch of InPlaceSets \
                 in all namespaces"
            ),
        )),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use kube::core::Status;
    use kube::runtime::watcher;

    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            Status::failure("refused", "Refused")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_watch_without_the_crd_names_the_fix() {
        let problem = classify_watch("dca", &watcher::Error::InitialListFailed(api(404))).unwrap();
        assert_eq!(problem.reason.as_str(), "CRDNotInstalled");
        assert!(
            problem
                .message
                .contains("cafe crds | kubectl --context dca apply -f -"),
            "{}",
            problem.message
        );
        let forbidden = classify_watch("dca", &watcher::Error::WatchStartFailed(api(403)));
        assert_eq!(
            forbidden.map(|p| p.reason),
            Some(ProblemReason::Unauthorized)
        );
        // Errors the watcher gets over by itself leave the member as it is.
        assert_eq!(
            classify_watch("dca", &watcher::Error::WatchFailed(api(500))),
            None
        );
        assert_eq!(
            classify_watch("dca", &watcher::Error::NoResourceVersion),
            None
        );
    }
}
