//! The agent's cached pod: only the fields its decisions read.
//!
//! A typed `Pod` from k8s-openapi holds every field of the API (a container alone is about
//! 2 KB of struct before any of its strings), so a cache of 10,000 of them cost about 96 MB in
//! the agent. The watch deserialises straight into this type instead: the same JSON shape and
//! field names as `Pod`, so the code reading it reads like code reading a `Pod`, but what no
//! decision reads is never kept. Writes still send and receive whole `Pod`s.
//!
//! What each part is for: metadata (names, labels and annotations carry the lifecycle state
//! and in-place record, owner references the claim, finalizers the hooks, resourceVersion the
//! write preconditions and expectations); `spec.nodeName` (scheduled), `spec.containers[]`
//! name, image and resources (resize); `status.conditions` (Ready, ContainersReady,
//! PodScheduled, the gate, resize conditions), `status.containerStatuses[]` (restarts and the
//! verification of an in-place update), `status.resize` and `status.observedGeneration`
//! (resize progress).

use k8s_openapi::api::core::v1::{ContainerStateWaiting, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Serialize};

/// A pod as the agent caches it; see the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedPod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<CachedPodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CachedPodStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<CachedContainer>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedContainer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<CachedCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A pod condition without `lastProbeTime` and `observedGeneration`, which no decision reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default, rename = "imageID")]
    pub image_id: String,
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default)]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<CachedContainerState>,
}

/// Only why a container waits is read (crash loops, image pulls).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CachedContainerState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<ContainerStateWaiting>,
}

// The watch and the cache address it as the API's Pod: same path, kind and scope.
impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    /// A pod as the API serves it, with fields the cache drops.
    fn served() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "generation": 2, "labels": {"a": "b"}, "annotations": {"c": "d"},
                "finalizers": ["f"], "ownerReferences": [{"apiVersion": "apps.cafe.io/v1alpha1",
                    "kind": "InPlaceSet", "name": "s", "uid": "o", "controller": true}]},
            "spec": {"nodeName": "n1", "dnsPolicy": "ClusterFirst",
                "containers": [{"name": "app", "image": "demo:2",
                    "terminationMessagePath": "/dev/termination-log",
                    "resources": {"requests": {"cpu": "1"}}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "resize": "InProgress",
                "observedGeneration": 1,
                "conditions": [{"type": "Ready", "status": "False", "reason": "R",
                    "message": "M", "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "lastProbeTime": null}],
                "containerStatuses": [{"name": "app", "image": "demo:2",
                    "imageID": "sha256:1", "containerID": "sim://1", "restartCount": 3,
                    "ready": true, "started": true,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "m"}}}]}
        })
    }

    #[test]
    fn keeps_every_field_the_agent_reads_from_a_served_pod() {
        let pod: CachedPod = serde_json::from_value(served()).unwrap();
        assert_eq!(pod.metadata.uid.as_deref(), Some("u"));
        assert_eq!(pod.metadata.generation, Some(2));
        assert_eq!(pod.metadata.finalizers, Some(vec!["f".to_string()]));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.containers[0].image.as_deref(), Some("demo:2"));
        assert!(spec.containers[0].resources.is_some());
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.resize.as_deref(), Some("InProgress"));
        assert_eq!(status.observed_generation, Some(1));
        let c = &status.conditions.as_ref().unwrap()[0];
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Ready", "False"));
        assert!(c.last_transition_time.is_some());
        let s = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(s.image_id, "sha256:1");
        assert_eq!(s.container_id.as_deref(), Some("sim://1"));
        assert_eq!((s.restart_count, s.ready), (3, true));
        let waiting = s.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    }

    #[test]
    fn what_it_keeps_reads_back_as_the_same_pod() {
        let pod: CachedPod = serde_json::from_value(served()).unwrap();
        let full: Pod = serde_json::from_value(served()).unwrap();
        let again: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": serde_json::to_value(&pod.metadata).unwrap(),
            "spec": serde_json::to_value(&pod.spec).unwrap(),
            "status": serde_json::to_value(&pod.status).unwrap(),
        }))
        .unwrap();
        assert_eq!(again.metadata, full.metadata);
        let (a, f) = (again.spec.unwrap(), full.spec.unwrap());
        assert_eq!(a.node_name, f.node_name);
        assert_eq!(a.containers[0].resources, f.containers[0].resources);
        let (a, f) = (again.status.unwrap(), full.status.unwrap());
        assert_eq!(a.conditions, f.conditions);
        assert_eq!(
            a.container_statuses.as_ref().unwrap()[0].image_id,
            "sha256:1"
        );
        assert_eq!(a.resize, f.resize);
    }
}
