//! Performing a scale plan and readiness-gate changes against the API, recording every pod
//! write in the expectations so the next reconcile waits for the cache to show it.

use std::time::Instant;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::expectations::{Expectations, Seen};
use crate::api::labels::{MEMBER_MANAGER, READINESS_GATE};
use crate::plan::scale::{PodId, ScalePlan, slow_start_batches};

/// Pod writes in flight at once for one InPlaceSet.
const PARALLEL_WRITES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("creating a pod for InPlaceSet {inplaceset}: {}", cause(.source))]
    Create {
        inplaceset: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pod {pod}: {}", cause(.source))]
    Delete {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting readiness gate {READINESS_GATE}={value} on pod {pod}: {}", cause(.source))]
    Gate {
        pod: String,
        value: bool,
        #[source]
        source: kube::Error,
    },
}

impl ApplyError {
    /// A fixed label for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create_pod",
            Self::Delete { .. } => "delete_pod",
            Self::Gate { .. } => "readiness_gate",
        }
    }

    /// The Event / ReplicaFailure reason, as the ReplicaSet controller names them.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Create { .. } => "FailedCreate",
            Self::Delete { .. } => "FailedDelete",
            Self::Gate { .. } => "FailedReadinessGate",
        }
    }
}

/// The API server's own words for an API error; the error's text otherwise.
pub fn cause(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == code)
}

/// The pods of one InPlaceSet and what is needed to write them.
pub struct Target<'a> {
    /// `namespace/name`, for messages.
    pub inplaceset: String,
    pub owner_uid: &'a str,
    /// Pods API in the InPlaceSet's namespace.
    pub api: Api<Pod>,
    pub namespace: String,
    pub cache: &'a Store<Pod>,
    pub expectations: &'a Expectations,
}

impl Target<'_> {
    fn seen(&self, name: &str, uid: &str) -> Seen {
        let key = ObjectRef::new(name).within(&self.namespace);
        match self.cache.get(&key) {
            Some(p) if p.metadata.uid.as_deref() == Some(uid) => {
                if p.metadata.deletion_timestamp.is_some() {
                    Seen::Deleting
                } else {
                    Seen::Present
                }
            }
            _ => Seen::Absent,
        }
    }
}

fn params() -> PostParams {
    PostParams {
        field_manager: Some(MEMBER_MANAGER.to_string()),
        ..PostParams::default()
    }
}

/// Creates `plan.create` copies of `template` in slow-start batches and deletes `plan.delete`.
/// Stops at the first batch with a failure and returns that failure; what succeeded is recorded.
pub async fn scale(t: &Target<'_>, plan: &ScalePlan, template: &Pod) -> Result<(), ApplyError> {
    for batch in slow_start_batches(plan.create) {
        let results: Vec<Result<(), ApplyError>> = stream::iter(0..batch)
            .map(|_| create(t, template))
            .buffer_unordered(PARALLEL_WRITES)
            .collect()
            .await;
        if let Some(err) = results.into_iter().find_map(Result::err) {
            return Err(err);
        }
    }
    // Owned items: a closure over borrowed ones trips the `Send` check of the reconcile future
    // (rust-lang/rust#64552).
    let results: Vec<Result<(), ApplyError>> = stream::iter(plan.delete.clone())
        .map(|pod| async move { delete(t, &pod).await })
        .buffer_unordered(PARALLEL_WRITES)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn create(t: &Target<'_>, template: &Pod) -> Result<(), ApplyError> {
    let created = t
        .api
        .create(&params(), template)
        .await
        .map_err(|source| ApplyError::Create {
            inplaceset: t.inplaceset.clone(),
            source,
        })?;
    let name = created.name_any();
    let uid = created.metadata.uid.clone().unwrap_or_default();
    t.expectations
        .expect_creation(t.owner_uid, &uid, Instant::now(), || t.seen(&name, &uid));
    tracing::info!(inplaceset = %t.inplaceset, pod = %name, "created pod");
    // The gate is False from the start (the API server drops status on create), so nothing
    // reads the pod as updated-and-ready before the controller says so. A failure here is
    // repaired by the next reconcile, which sets a missing gate False.
    if let Err(err) = set_gate(t, &name, false).await {
        tracing::debug!(pod = %name, error = %err, "initial readiness gate not written");
    }
    Ok(())
}

async fn delete(t: &Target<'_>, pod: &PodId) -> Result<(), ApplyError> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(pod.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match t.api.delete(&pod.name, &params).await {
        Ok(_) => {
            t.expectations
                .expect_deletion(t.owner_uid, &pod.uid, Instant::now(), || {
                    t.seen(&pod.name, &pod.uid)
                });
            tracing::info!(inplaceset = %t.inplaceset, pod = %pod.name, "deleted pod");
            Ok(())
        }
        // Already gone, or the name now belongs to another pod (uid precondition): either way
        // the pod we meant is gone, and the watch will tell.
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        Err(source) => Err(ApplyError::Delete {
            pod: pod.name.clone(),
            source,
        }),
    }
}

/// Sets the readiness gate condition of each named pod; pods gone meanwhile are skipped.
pub async fn gates(t: &Target<'_>, changes: &[(String, bool)]) -> Result<(), ApplyError> {
    let results: Vec<Result<(), ApplyError>> = stream::iter(changes.to_vec())
        .map(|(name, value)| async move {
            match set_gate(t, &name, value).await {
                Err(ApplyError::Gate { source, .. }) if is_status(&source, 404) => Ok(()),
                other => other,
            }
        })
        .buffer_unordered(PARALLEL_WRITES)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Writes the gate condition through the pods/status subresource; a strategic merge patch
/// merges conditions by type, so the kubelet's conditions are untouched.
async fn set_gate(t: &Target<'_>, pod: &str, value: bool) -> Result<(), ApplyError> {
    let status = if value { "True" } else { "False" };
    let patch = Patch::Strategic(json!({"status": {"conditions": [{
        "type": READINESS_GATE,
        "status": status,
        "lastTransitionTime": Time(Timestamp::now()),
    }]}}));
    let params = PatchParams {
        field_manager: Some(MEMBER_MANAGER.to_string()),
        ..PatchParams::default()
    };
    t.api
        .patch_status(pod, &params, &patch)
        .await
        .map_err(|source| ApplyError::Gate {
            pod: pod.to_string(),
            value,
            source,
        })?;
    tracing::debug!(pod, gate = status, "readiness gate set");
    Ok(())
}
