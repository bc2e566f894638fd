//! Performing pod creations and per-pod lifecycle writes against the API, recording every pod
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

use serde_json::Value;

use super::cached::CachedPod;
use super::expectations::{Expectations, Seen};
use super::inplace::{self, InPlaceChange};
use super::lifecycle::label_of;
use crate::api::labels::{LIFECYCLE_SINCE, LIFECYCLE_STATE, MEMBER_MANAGER, READINESS_GATE};
use crate::plan::scale::{PodId, slow_start_batches};
use crate::plan::update::Stage;
use crate::runtime::api_cause;

/// Pod writes in flight at once for one InPlaceSet.
const PARALLEL_WRITES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("creating a pod for InPlaceSet {inplaceset}: {}", api_cause(.source))]
    Create {
        inplaceset: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pod {pod}: {}", api_cause(.source))]
    Delete {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting readiness gate {READINESS_GATE}={value} on pod {pod}: {}", api_cause(.source))]
    Gate {
        pod: String,
        value: bool,
        #[source]
        source: kube::Error,
    },
    #[error("{action} pod {pod}: {}", api_cause(.source))]
    Update {
        pod: String,
        action: String,
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
            Self::Update { .. } => "update_pod",
        }
    }

    /// The Event / ReplicaFailure reason, as the ReplicaSet controller names them.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Create { .. } => "FailedCreate",
            Self::Delete { .. } => "FailedDelete",
            Self::Gate { .. } => "FailedReadinessGate",
            Self::Update { .. } => "FailedUpdate",
        }
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
    pub cache: &'a Store<CachedPod>,
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

/// Creates `count` copies of `template` in slow-start batches. Stops at the first batch with a
/// failure and returns that failure; what succeeded is recorded.
pub async fn create_pods(t: &Target<'_>, count: usize, template: &Pod) -> Result<(), ApplyError> {
    for batch in slow_start_batches(count) {
        let results: Vec<Result<(), ApplyError>> = stream::iter(0..batch)
            .map(|_| create(t, template))
            .buffer_unordered(PARALLEL_WRITES)
            .collect()
            .await;
        if let Some(err) = results.into_iter().find_map(Result::err) {
            return Err(err);
        }
    }
    Ok(())
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
    // No gate condition is written: the pod's spec lists the gate, and a missing gate condition
    // counts as False, so nothing reads the pod as ready before the controller says so.
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

/// The pods/status patch that moves `pod` to `stage`, with its gate if given. The pods/status
/// subresource takes labels and annotations (Kubernetes resets only spec, deletionTimestamp and
/// ownerReferences there), so a state and its gate are one write. Taking a pod out of service
/// spends the availability budget, so it is decided on the pod as seen and applies only to it
/// (resourceVersion precondition); going back in service or marking progress is decided on what
/// the kubelet already reported, and has no precondition the kubelet's next status write could
/// break.
fn mark_patch(pod: &CachedPod, stage: Stage, gate: Option<bool>) -> Value {
    let now = Timestamp::now();
    let mut patch = json!({"metadata": {
        "labels": {LIFECYCLE_STATE: label_of(stage)},
        "annotations": {LIFECYCLE_SINCE: now.to_string()},
    }});
    if gate == Some(false) {
        patch["metadata"]["resourceVersion"] = json!(pod.metadata.resource_version);
    }
    if let Some(value) = gate {
        patch["status"] = gate_status(value, now);
    }
    patch
}

fn gate_status(value: bool, now: Timestamp) -> Value {
    json!({"conditions": [{
        "type": READINESS_GATE,
        "status": if value { "True" } else { "False" },
        "lastTransitionTime": Time(now),
    }]})
}

/// Writes the gate condition through the pods/status subresource; a strategic merge patch
/// merges conditions by type, so the kubelet's conditions are untouched.
async fn set_gate(t: &Target<'_>, pod: &str, value: bool) -> Result<Pod, ApplyError> {
    let patch = Patch::Strategic(json!({"status": gate_status(value, Timestamp::now())}));
    let written = t
        .api
        .patch_status(pod, &patch_params(), &patch)
        .await
        .map_err(|source| ApplyError::Gate {
            pod: pod.to_string(),
            value,
            source,
        })?;
    tracing::debug!(pod, gate = value, "readiness gate set");
    Ok(written)
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MEMBER_MANAGER.to_string()),
        ..PatchParams::default()
    }
}

/// One write to one pod: a step of its lifecycle (see `lifecycle`).
#[derive(Clone, Debug, PartialEq)]
pub enum PodWrite {
    /// Set the lifecycle state label (and when it began), and the readiness gate with it when
    /// `gate` says so: one pods/status write.
    Mark {
        to: Stage,
        gate: Option<bool>,
    },
    Gate(bool),
    /// Patch the pod in place from revision `from` to `to`.
    InPlace {
        change: InPlaceChange,
        from: String,
        to: String,
    },
    /// A pods/resize body.
    Resize(Value),
    Delete,
}

impl PodWrite {
    /// What the write is called in logs and errors.
    pub fn action(&self) -> String {
        match self {
            Self::Mark { to, gate: None } => format!("moving to {}", label_of(*to)),
            Self::Mark {
                to,
                gate: Some(gate),
            } => format!("moving to {} with {READINESS_GATE}={gate}", label_of(*to)),
            Self::Gate(v) => format!("setting {READINESS_GATE}={v}"),
            Self::InPlace { to, .. } => format!("updating in place to revision {to}"),
            Self::Resize(_) => "resizing".to_string(),
            Self::Delete => "deleting".to_string(),
        }
    }
}

fn update_error(pod: &str, write: &PodWrite, source: kube::Error) -> ApplyError {
    ApplyError::Update {
        pod: pod.to_string(),
        action: write.action(),
        source,
    }
}

/// Performs `write` on `pod` (as the cache showed it) and records the version it produced, so
/// the next reconcile waits until the cache shows it. A pod that changed meanwhile (409, or a
/// failed JSON patch test) or is gone (404) is left to the next reconcile, which reads it
/// afresh.
pub async fn perform(t: &Target<'_>, pod: &CachedPod, write: &PodWrite) -> Result<(), ApplyError> {
    let name = pod.name_any();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let written = match write {
        PodWrite::Delete => {
            return delete(
                t,
                &PodId {
                    name: name.clone(),
                    uid,
                },
            )
            .await;
        }
        PodWrite::Gate(value) => set_gate(t, &name, *value).await,
        PodWrite::Mark { to, gate } => t
            .api
            .patch_status(
                &name,
                &patch_params(),
                &Patch::Strategic(mark_patch(pod, *to, *gate)),
            )
            .await
            .map_err(|source| update_error(&name, write, source)),
        PodWrite::InPlace { change, from, to } => {
            let record = inplace::record(pod, change, from, to, Timestamp::now());
            let patch: Patch<()> = Patch::Json(inplace::in_place_patch(pod, change, &record));
            t.api.patch(&name, &patch_params(), &patch).await
        }
        .map_err(|source| update_error(&name, write, source)),
        PodWrite::Resize(body) => t
            .api
            .patch_subresource("resize", &name, &patch_params(), &Patch::Strategic(body))
            .await
            .map_err(|source| update_error(&name, write, source)),
    };
    let written = match written {
        Ok(p) => p,
        Err(ApplyError::Update { source, .. } | ApplyError::Gate { source, .. })
            if is_status(&source, 404)
                || is_status(&source, 409)
                || inplace::is_failed_test(&source) =>
        {
            tracing::debug!(pod = %name, action = write.action(), "pod changed meanwhile; next reconcile reads it again");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if let Some(rv) = written.metadata.resource_version.as_deref() {
        let key = ObjectRef::new(&name).within(&t.namespace);
        t.expectations
            .expect_update(t.owner_uid, &uid, rv, Instant::now(), || {
                t.cache
                    .get(&key)
                    .filter(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
                    .and_then(|p| p.metadata.resource_version.clone())
            });
    }
    tracing::info!(inplaceset = %t.inplaceset, pod = %name, action = write.action(), "pod written");
    Ok(())
}
