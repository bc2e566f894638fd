//! Which pods an InPlaceSet manages: those it controls (controller ownerReference) whose labels
//! its selector still matches. As the ReplicaSet controller does (`PodControllerRefManager`,
//! <https://github.com/kubernetes/kubernetes/blob/master/pkg/controller/controller_ref_manager.go>),
//! a pod it controls that no longer matches (someone removed or changed a selector label) is
//! released: the ownerReference goes, the pod keeps running on its own, and the InPlaceSet
//! creates a replacement because it no longer counts it.
//!
//! Unlike the ReplicaSet controller, orphans are never adopted, even when they match and carry
//! an InPlaceSet revision label: a pod the InPlaceSet did not create may lack the readiness gate
//! `apps.cafe.io/InPlaceUpdateReady` (readiness gates cannot be added to a running pod), and
//! without it an in-place update could not take the pod out of service first.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use serde_json::json;

use super::cached::CachedPod;
use super::pod;
use crate::api::labels::MEMBER_MANAGER;
use crate::runtime::api_cause;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("releasing pod {pod} (its labels no longer match the selector): {}", api_cause(.source))]
    Release {
        pod: String,
        #[source]
        source: kube::Error,
    },
}

impl ClaimError {
    /// A fixed label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Release { .. } => "release_pod",
        }
    }
}

/// The pods of one InPlaceSet, split.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Controlled and selected: the pods it counts and manages.
    pub owned: Vec<Arc<CachedPod>>,
    /// Controlled but no longer selected, and not being deleted: to release.
    pub release: Vec<Arc<CachedPod>>,
}

/// Splits the cached `pods` controlled by the InPlaceSet with uid `owner_uid` by `selector`.
/// Pods controlled by anything else, and orphans, are left out. A selector that does not parse
/// (the API refuses those) releases nothing: every controlled pod stays owned.
pub fn claim(pods: Vec<Arc<CachedPod>>, owner_uid: &str, selector: &LabelSelector) -> Claimed {
    let selector = Selector::try_from(selector.clone()).ok();
    let mut claimed = Claimed::default();
    for p in pods
        .into_iter()
        .filter(|p| pod::is_controlled_by(p, owner_uid))
    {
        let selected = selector.as_ref().is_none_or(|s| s.matches(p.labels()));
        if selected {
            claimed.owned.push(p);
        } else if p.metadata.deletion_timestamp.is_none() {
            claimed.release.push(p);
        }
        // A pod being deleted that no longer matches is neither counted nor released, as
        // upstream ignores objects being deleted: it is going anyway.
    }
    claimed
}

/// Removes the InPlaceSet's controller ownerReference from `pod`. The JSON patch tests the
/// pod's uid and resourceVersion and that reference first, so a pod recreated under the same
/// name, changed since the cache saw it, or already released is never touched. Gone (404), or a
/// failed test (422: released, replaced; upstream `ReleasePod` ignores Invalid for the same
/// reason) count as done; a conflict is retried by the next reconcile.
pub async fn release(api: &Api<Pod>, pod: &CachedPod, owner_uid: &str) -> Result<(), ClaimError> {
    let name = pod.name_any();
    let Some(index) = pod
        .owner_references()
        .iter()
        .position(|o| o.controller == Some(true) && o.uid == owner_uid)
    else {
        return Ok(());
    };
    let patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/uid", "value": pod.metadata.uid},
        {"op": "test", "path": "/metadata/resourceVersion", "value": pod.metadata.resource_version},
        {"op": "test", "path": format!("/metadata/ownerReferences/{index}/uid"), "value": owner_uid},
        {"op": "remove", "path": format!("/metadata/ownerReferences/{index}")},
    ]))
    .map_err(|e| ClaimError::Release {
        pod: name.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    let params = PatchParams {
        field_manager: Some(MEMBER_MANAGER.to_string()),
        ..PatchParams::default()
    };
    match api.patch(&name, &params, &Patch::Json::<()>(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => Ok(()),
        Err(source) => Err(ClaimError::Release { pod: name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(
        name: &str,
        labels: serde_json::Value,
        owner: Option<&str>,
        deleting: bool,
    ) -> Arc<CachedPod> {
        let owners = owner.map_or(json!([]), |uid| {
            json!([{"apiVersion": "apps.cafe.io/v1alpha1", "kind": "InPlaceSet", "name": "demo",
                    "uid": uid, "controller": true}])
        });
        let mut meta =
            json!({"name": name, "uid": name, "labels": labels, "ownerReferences": owners});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(json!({"metadata": meta})).unwrap())
    }

    fn names(pods: &[Arc<CachedPod>]) -> Vec<String> {
        pods.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn a_controlled_pod_whose_selector_label_was_removed_is_released_not_counted() {
        let selector: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "demo"}})).unwrap();
        let claimed = claim(
            vec![
                pod("kept", json!({"app": "demo"}), Some("u1"), false),
                pod("unlabelled", json!({}), Some("u1"), false),
                pod("relabelled", json!({"app": "other"}), Some("u1"), false),
                pod("going", json!({}), Some("u1"), true),
                pod("orphan", json!({"app": "demo"}), None, false),
                pod("others", json!({"app": "demo"}), Some("u2"), false),
            ],
            "u1",
            &selector,
        );
        assert_eq!(names(&claimed.owned), ["kept"]);
        assert_eq!(names(&claimed.release), ["unlabelled", "relabelled"]);
    }
}
