//! Waiting for the InPlaceSet CRD: a controller started before its CRD would only log watch
//! errors, so the agent waits, saying why, until the API server serves the kind.
//! <https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#create-a-customresourcedefinition>
//! (the `Established` condition).

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::Api;
use tokio_util::sync::CancellationToken;

use super::MemberError;
use crate::api::InPlaceSet;

/// How often the CRD is looked at while waiting.
const POLL: Duration = Duration::from_millis(500);
/// How often the wait is logged again.
const REMIND: Duration = Duration::from_secs(30);

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Returns `Ok(true)` once the InPlaceSet CRD is Established, `Ok(false)` if `shutdown` came
/// first. Transient API errors are retried; authorization errors are returned, since waiting
/// cannot fix them.
pub async fn wait_established(
    client: &kube::Client,
    shutdown: &CancellationToken,
) -> Result<bool, MemberError> {
    let name = InPlaceSet::crd_name();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut last_log: Option<tokio::time::Instant> = None;
    loop {
        let state = match api.get_opt(name).await {
            Ok(Some(crd)) if established(&crd) => {
                tracing::info!(crd = name, "CRD is Established");
                return Ok(true);
            }
            Ok(Some(_)) => "installed but not yet Established".to_string(),
            Ok(None) => "not installed (install it with `cafe crds | kubectl apply -f -`)".into(),
            Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403 => {
                return Err(MemberError::CrdCheck {
                    crd: name.to_string(),
                    source: kube::Error::Api(s),
                });
            }
            Err(e) => format!("not readable yet ({})", crate::runtime::api_cause(&e)),
        };
        let now = tokio::time::Instant::now();
        if last_log.is_none_or(|t| now.duration_since(t) >= REMIND) {
            tracing::info!(crd = name, "waiting for the InPlaceSet CRD: {state}");
            last_log = Some(now);
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Whether the API server serves `pods/resize` (Kubernetes 1.33+), so that resource changes can
/// be applied in place; discovery says, as `kubectl` would see it. `None` if `shutdown` came
/// first. Transient errors are retried: the answer decides whether pods are recreated.
pub async fn resize_supported(client: &kube::Client, shutdown: &CancellationToken) -> Option<bool> {
    loop {
        match client.list_core_api_resources("v1").await {
            Ok(list) => {
                let supported = list.resources.iter().any(|r| r.name == "pods/resize");
                tracing::info!(supported, "in-place pod resize (pods/resize)");
                return Some(supported);
            }
            Err(e) => tracing::info!(
                "reading API discovery for pods/resize: {}; retrying",
                crate::runtime::api_cause(&e)
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}
