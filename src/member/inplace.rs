//! How a pod moves from one template to the next: in place when
//! only what Kubernetes lets a running pod change differs, by recreation otherwise; and, for
//! the in-place path, the patches that start it and the check that the kubelet carried it out.
//!
//! Kubernetes lets a pod's container images, labels and annotations change through an ordinary
//! update, and (from 1.33, through the `pods/resize` subresource) the cpu and memory of its
//! containers; everything else in a pod spec is immutable
//! (<https://kubernetes.io/docs/concepts/workloads/pods/#pod-update-and-replacement>,
//! <https://kubernetes.io/docs/tasks/configure-pod-container/resize-container-resources/>).
//! Which resource changes a resize accepts is decided in the sibling module `resize`.
//! Everything here is pure: the controller reads and writes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::cached::{CachedContainer, CachedContainerStatus, CachedPod};
use super::resize::{explicit, qos_class, resize_allowed, same_resources};
use crate::api::PodUpdatePolicy;
use crate::api::labels::{
    INPLACE_UPDATE_STATE, LIFECYCLE_SINCE, LIFECYCLE_STATE, RESTARTED_AT, REVISION, STATE_UPDATING,
    UNIT,
};

/// Labels and annotations the controllers write themselves; a template difference in them is
/// not the user's and never becomes part of a change.
const OWNED_KEYS: [&str; 5] = [
    REVISION,
    LIFECYCLE_STATE,
    LIFECYCLE_SINCE,
    INPLACE_UPDATE_STATE,
    UNIT,
];

/// How a pod reaches a new template.
#[derive(Clone, Debug, PartialEq)]
pub enum UpdatePath {
    InPlace(InPlaceChange),
    /// Delete the pod and create a replacement; `why` names what forbids the in-place path.
    Recreate {
        why: String,
    },
}

/// What an in-place update changes on a running pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InPlaceChange {
    /// Container name -> new image.
    pub images: BTreeMap<String, String>,
    /// Container name -> new resources (through `pods/resize`).
    pub resources: BTreeMap<String, ResourceRequirements>,
    /// `Some(v)` sets the label, `None` removes it.
    pub labels: BTreeMap<String, Option<String>>,
    /// `Some(v)` sets the annotation, `None` removes it.
    pub annotations: BTreeMap<String, Option<String>>,
}

/// How a pod created from template `from` reaches template `to`. Never in place under the
/// `ReCreate` policy; resources change in place only when `resize_supported` (the member
/// serves `pods/resize`) and the resize is one the API server accepts.
pub fn update_path(
    from: &PodTemplateSpec,
    to: &PodTemplateSpec,
    policy: &PodUpdatePolicy,
    resize_supported: bool,
) -> UpdatePath {
    if matches!(policy, PodUpdatePolicy::ReCreate) {
        return UpdatePath::Recreate {
            why: "podUpdatePolicy is ReCreate".to_string(),
        };
    }
    match change(from, to, resize_supported) {
        Ok(change) => UpdatePath::InPlace(change),
        Err(why) => UpdatePath::Recreate { why },
    }
}

fn change(
    from: &PodTemplateSpec,
    to: &PodTemplateSpec,
    resize_supported: bool,
) -> Result<InPlaceChange, String> {
    let meta = |t: &PodTemplateSpec| t.metadata.clone().unwrap_or_default();
    let (from_meta, to_meta) = (meta(from), meta(to));
    let mut change = InPlaceChange {
        labels: map_diff(from_meta.labels.as_ref(), to_meta.labels.as_ref()),
        annotations: map_diff(from_meta.annotations.as_ref(), to_meta.annotations.as_ref()),
        ..InPlaceChange::default()
    };
    // Kubernetes has no call that restarts a container in place; a restart means new pods.
    if change.annotations.contains_key(RESTARTED_AT) {
        return Err("a restart was requested (`cafe rollout restart`)".to_string());
    }

    let spec_json = |t: &PodTemplateSpec| match serde_json::to_value(&t.spec) {
        Ok(Value::Object(map)) => Ok(normalize_map(map)),
        Ok(_) => Ok(Map::new()),
        Err(e) => Err(format!("the pod spec cannot be compared: {e}")),
    };
    let (from_spec, to_spec) = (spec_json(from)?, spec_json(to)?);
    for key in keys(&from_spec, &to_spec) {
        if key != "containers" && from_spec.get(key) != to_spec.get(key) {
            return Err(format!("spec.{key} changed"));
        }
    }

    let containers = |spec: &Map<String, Value>| -> Vec<Map<String, Value>> {
        spec.get("containers")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|c| c.as_object().cloned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (from_containers, to_containers) = (containers(&from_spec), containers(&to_spec));
    let names = |cs: &[Map<String, Value>]| -> Vec<String> {
        cs.iter()
            .map(|c| {
                c.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    let (from_names, to_names) = (names(&from_containers), names(&to_containers));
    if from_names != to_names {
        return Err(format!(
            "spec.containers changed: [{}] became [{}]",
            from_names.join(", "),
            to_names.join(", ")
        ));
    }
    for ((name, a), b) in to_names.iter().zip(&from_containers).zip(&to_containers) {
        container_change(name, a, b, resize_supported, &mut change)?;
    }

    if !change.resources.is_empty() {
        // A pod's QoS class is fixed at creation; the API server rejects a resize that would
        // compute another one (KEP-1287, "QOS Class").
        let (before, after) = (qos_class(from.spec.as_ref()), qos_class(to.spec.as_ref()));
        if before != after {
            return Err(format!(
                "resources change the pod's QoS class from {before} to {after}, which a \
                 resize cannot do"
            ));
        }
    }
    Ok(change)
}

/// Adds the difference between containers `a` and `b` (both named `name`) to `change`, or
/// says why it cannot be made in place.
/// The change in words for Events: " (app=demo:2, app resized)", or "" when only labels and
/// annotations change.
pub fn describe(change: &InPlaceChange) -> String {
    let mut parts: Vec<String> = change
        .images
        .iter()
        .map(|(c, image)| format!("{c}={image}"))
        .collect();
    parts.extend(change.resources.keys().map(|c| format!("{c} resized")));
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

fn container_change(
    name: &str,
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    resize_supported: bool,
    change: &mut InPlaceChange,
) -> Result<(), String> {
    let mut resources_differ = false;
    for key in keys(a, b) {
        if a.get(key) == b.get(key) {
            continue;
        }
        match key {
            "image" => {
                let image = b
                    .get("image")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("container {name}: image removed"))?;
                change.images.insert(name.to_string(), image.to_string());
            }
            "resources" => resources_differ = true,
            other => return Err(format!("container {name}: {other} changed")),
        }
    }
    if !resources_differ {
        return Ok(());
    }
    let read = |c: &Map<String, Value>| -> Result<ResourceRequirements, String> {
        let value = c.get("resources").cloned().unwrap_or_else(|| json!({}));
        serde_json::from_value(value).map_err(|e| format!("container {name}: resources: {e}"))
    };
    let (from, to) = (read(a)?, read(b)?);
    // resizePolicy is equal on both sides here: a change to it was refused above.
    let memory_restarts = b
        .get("resizePolicy")
        .and_then(Value::as_array)
        .is_some_and(|policies| {
            policies.iter().any(|p| {
                p.get("resourceName").and_then(Value::as_str) == Some("memory")
                    && p.get("restartPolicy").and_then(Value::as_str) == Some("RestartContainer")
            })
        });
    if resize_allowed(name, &from, &to, memory_restarts)? {
        if !resize_supported {
            return Err(format!(
                "container {name}: resources changed and the cluster has no pods/resize \
                 (Kubernetes < 1.33)"
            ));
        }
        change.resources.insert(name.to_string(), to);
    }
    Ok(())
}

/// `Some(v)` for each key of `to` that `from` lacks or holds with another value, `None` for
/// each key only `from` has; keys the controllers own are left out.
fn map_diff(
    from: Option<&BTreeMap<String, String>>,
    to: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, Option<String>> {
    let empty = BTreeMap::new();
    let (from, to) = (from.unwrap_or(&empty), to.unwrap_or(&empty));
    let set = to
        .iter()
        .filter(|(k, v)| from.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), Some(v.clone())));
    let removed = from
        .keys()
        .filter(|k| !to.contains_key(*k))
        .map(|k| (k.clone(), None));
    set.chain(removed)
        .filter(|(k, _)| !OWNED_KEYS.contains(&k.as_str()))
        .collect()
}

/// The keys of both objects, sorted, so the first difference reported is stable.
fn keys<'a>(a: &'a Map<String, Value>, b: &'a Map<String, Value>) -> BTreeSet<&'a str> {
    a.keys().chain(b.keys()).map(String::as_str).collect()
}

/// Drops null, `{}` and `[]` members at every level: the API treats an absent field and an
/// empty one alike (`resources: {}` is no resources).
fn normalize_map(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .map(|(k, v)| (k, normalize(v)))
        .filter(|(_, v)| !is_empty(v))
        .collect()
}

fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(normalize_map(map)),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

// --- the record, the patches, the verification ------------------------------------------------

/// What an in-place update changed, kept (as JSON) in the pod annotation
/// [`INPLACE_UPDATE_STATE`], so that the controller can tell, even after a restart, whether the
/// kubelet has carried it out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InPlaceRecord {
    /// The revision the pod moves to.
    pub revision: String,
    pub from_revision: String,
    /// When the update started (RFC 3339).
    pub started: String,
    /// The containers whose image changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub containers: BTreeMap<String, ContainerRecord>,
    /// The containers resized, with their new resources.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resized: BTreeMap<String, ResourceRequirements>,
}

/// One container whose image changed: the new image and the container as it ran before
/// (from `status.containerStatuses`), to recognise the restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub image: String,
    #[serde(default)]
    pub previous_image_id: String,
    #[serde(default)]
    pub previous_container_id: String,
    #[serde(default)]
    pub previous_restart_count: i32,
}

fn container_status<'a>(pod: &'a CachedPod, name: &str) -> Option<&'a CachedContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == name)
}

fn spec_container<'a>(pod: &'a CachedPod, name: &str) -> Option<&'a CachedContainer> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)
}

/// The record of `change` about to be made to `pod`, taken from the pod's current container
/// statuses.
pub fn record(
    pod: &CachedPod,
    change: &InPlaceChange,
    from_revision: &str,
    to_revision: &str,
    now: Timestamp,
) -> InPlaceRecord {
    let containers = change
        .images
        .iter()
        .map(|(name, image)| {
            let status = container_status(pod, name);
            let record = ContainerRecord {
                image: image.clone(),
                previous_image_id: status.map(|s| s.image_id.clone()).unwrap_or_default(),
                previous_container_id: status
                    .and_then(|s| s.container_id.clone())
                    .unwrap_or_default(),
                previous_restart_count: status.map_or(0, |s| s.restart_count),
            };
            (name.clone(), record)
        })
        .collect();
    InPlaceRecord {
        revision: to_revision.to_string(),
        from_revision: from_revision.to_string(),
        started: now.to_string(),
        containers,
        resized: change.resources.clone(),
    }
}

/// The record of the pod's in-place update; `None` when absent or unreadable.
pub fn read_record(pod: &CachedPod) -> Option<InPlaceRecord> {
    let text = pod
        .metadata
        .annotations
        .as_ref()?
        .get(INPLACE_UPDATE_STATE)?;
    serde_json::from_str(text).ok()
}

/// The JSON patch that starts the in-place update of `pod`: the new images, the label and
/// annotation changes, the revision label, the `Updating` lifecycle state and its start time,
/// and the record. Resources are not in it: the pod endpoint forbids changing them (see
/// [`resize_patch`]).
///
/// Its preconditions are `test` operations on what the decision read, not the pod's
/// `resourceVersion`: the same pod (uid), not being deleted, its labels (lifecycle state,
/// revision, hook labels) and finalizers (hook finalizers) as the cache showed them, each
/// container still where it was. The API server applies them with the patch, atomically, and
/// refuses the whole patch (422, "testing value ... failed") if one fails. A resourceVersion
/// would also be broken by the kubelet's status write for the gate the step before turned
/// False, which changes nothing this decision depends on (409s on every other pod).
pub fn in_place_patch(
    pod: &CachedPod,
    change: &InPlaceChange,
    record: &InPlaceRecord,
) -> json_patch::Patch {
    let escape = |key: &str| key.replace('~', "~0").replace('/', "~1");
    let meta = &pod.metadata;
    let mut ops = vec![
        json!({"op": "test", "path": "/metadata/uid", "value": meta.uid}),
        json!({"op": "test", "path": "/metadata/deletionTimestamp", "value": null}),
        json!({"op": "test", "path": "/metadata/labels", "value": meta.labels}),
        json!({"op": "test", "path": "/metadata/finalizers", "value": meta.finalizers}),
    ];

    let mut labels = meta.labels.clone().unwrap_or_default();
    for (key, value) in &change.labels {
        match value {
            Some(v) => labels.insert(key.clone(), v.clone()),
            None => labels.remove(key),
        };
    }
    labels.insert(REVISION.to_string(), record.revision.clone());
    labels.insert(LIFECYCLE_STATE.to_string(), STATE_UPDATING.to_string());
    ops.push(json!({"op": "add", "path": "/metadata/labels", "value": labels}));

    let mut annotations: BTreeMap<String, Option<String>> = change.annotations.clone();
    annotations.insert(LIFECYCLE_SINCE.to_string(), Some(record.started.clone()));
    // A struct of strings and string-keyed maps always serialises.
    let state = serde_json::to_string(record).unwrap_or_default();
    annotations.insert(INPLACE_UPDATE_STATE.to_string(), Some(state));
    match &meta.annotations {
        // Key by key, so annotations the cache does not keep (kubectl's last-applied) stay.
        Some(current) => {
            for (key, value) in annotations {
                let path = format!("/metadata/annotations/{}", escape(&key));
                match value {
                    Some(v) => ops.push(json!({"op": "add", "path": path, "value": v})),
                    None if current.contains_key(&key) => {
                        ops.push(json!({"op": "remove", "path": path}));
                    }
                    None => {}
                }
            }
        }
        None => {
            let all: BTreeMap<String, String> = annotations
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
            ops.push(json!({"op": "test", "path": "/metadata/annotations", "value": null}));
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": all}));
        }
    }

    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    for (name, image) in &change.images {
        // A container the pod lacks cannot take an image; the patch then fails its test.
        let index = containers
            .iter()
            .position(|c| &c.name == name)
            .unwrap_or(containers.len());
        ops.push(
            json!({"op": "test", "path": format!("/spec/containers/{index}/name"), "value": name}),
        );
        ops.push(json!({"op": "replace", "path": format!("/spec/containers/{index}/image"), "value": image}));
    }
    // Every operation above has an op, a path and (where its op needs one) a value.
    serde_json::from_value(Value::Array(ops)).unwrap_or_else(|_| json_patch::Patch(vec![]))
}

/// Whether `err` is the API server refusing a JSON patch because one of its `test` operations
/// failed: the object changed since it was read, as a 409 says of a resourceVersion.
pub fn is_failed_test(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 422 && s.message.contains("testing value"))
}

/// The strategic merge patch for the `pods/resize` subresource that gives the recorded
/// containers their recorded resources; `None` when the pod spec has them all already.
pub fn resize_patch(pod: &CachedPod, record: &InPlaceRecord) -> Option<Value> {
    let containers: Vec<Value> = record
        .resized
        .iter()
        .filter(|(name, want)| {
            // A container the pod lacks cannot be resized; verify() reports it.
            spec_container(pod, name).is_some_and(|c| {
                !same_resources(c.resources.as_ref().unwrap_or(&Default::default()), want)
            })
        })
        .map(|(name, want)| json!({"name": name, "resources": explicit(want)}))
        .collect();
    (!containers.is_empty()).then(|| json!({"spec": {"containers": containers}}))
}

/// Whether the kubelet has carried out an in-place update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    Done,
    /// What is still missing.
    Waiting(String),
}

/// Whether the kubelet has carried out the update in `record`: each re-imaged container was
/// restarted (a new container ID), runs the recorded image and is ready; each resized
/// container has its recorded resources in the spec, and no resize is pending.
///
/// The image matches when the names are equal once normalised as the container runtime does
/// (`nginx:1` is `docker.io/library/nginx:1`), or when the image ID changed.
pub fn verify(pod: &CachedPod, record: &InPlaceRecord) -> Verification {
    let waiting = |why: String| Verification::Waiting(why);
    for (name, want) in &record.containers {
        let Some(status) = container_status(pod, name) else {
            return waiting(format!("container {name} has no status yet"));
        };
        let id = status.container_id.as_deref().unwrap_or_default();
        if id.is_empty() {
            return waiting(format!(
                "container {name} has not started {} yet",
                want.image
            ));
        }
        if id == want.previous_container_id {
            return waiting(format!("container {name} still runs {}", status.image));
        }
        let image_changed =
            !status.image_id.is_empty() && status.image_id != want.previous_image_id;
        if !same_image(&status.image, &want.image) && !image_changed {
            return waiting(format!(
                "container {name} restarted but runs {} instead of {}",
                status.image, want.image
            ));
        }
        if !status.ready {
            return waiting(format!(
                "container {name} runs {} but is not ready",
                want.image
            ));
        }
    }
    if record.resized.is_empty() {
        return Verification::Done;
    }
    for (name, want) in &record.resized {
        let Some(container) = spec_container(pod, name) else {
            return waiting(format!("the pod has no container {name} to resize"));
        };
        if !same_resources(
            container.resources.as_ref().unwrap_or(&Default::default()),
            want,
        ) {
            return waiting(format!(
                "resize of {name} not applied yet: the pod spec has other resources"
            ));
        }
    }
    let resized = record
        .resized
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(pending) = resize_pending(pod) {
        return waiting(format!("resize of {resized} not applied yet ({pending})"));
    }
    Verification::Done
}

/// Why the kubelet has not finished a resize of `pod`, if it has not. Kubernetes 1.33 reports
/// it in the PodResizePending / PodResizeInProgress conditions; earlier versions in
/// `status.resize`, any value of which means not done (KEP-1287: unknown values count as
/// Deferred). Until the kubelet has observed the pod's latest generation, neither is current.
fn resize_pending(pod: &CachedPod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if let Some(state) = status.resize.as_deref().filter(|s| !s.is_empty()) {
        return Some(format!("status.resize is {state}"));
    }
    let pending = status.conditions.iter().flatten().find(|c| {
        matches!(c.type_.as_str(), "PodResizePending" | "PodResizeInProgress") && c.status == "True"
    });
    if let Some(c) = pending {
        let reason = c.reason.as_deref().unwrap_or_default();
        return Some(match c.message.as_deref().filter(|m| !m.is_empty()) {
            Some(message) => format!("{} {reason}: {message}", c.type_),
            None => format!("{} {reason}", c.type_).trim_end().to_string(),
        });
    }
    match (pod.metadata.generation, status.observed_generation) {
        (Some(generation), Some(observed)) if observed < generation => Some(format!(
            "the kubelet has observed generation {observed} of {generation}"
        )),
        _ => None,
    }
}

/// Whether two image references name the same image, completed as the Docker reference
/// grammar does: the default registry `docker.io`, its `library/` namespace and the `latest`
/// tag.
fn same_image(a: &str, b: &str) -> bool {
    a == b || full_image(a) == full_image(b)
}

fn full_image(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry = name.contains('/') && (first.contains(['.', ':']) || first == "localhost");
    let mut full = if has_registry {
        name.to_string()
    } else {
        format!("docker.io/{name}")
    };
    if let Some(rest) = full.strip_prefix("index.docker.io/") {
        full = format!("docker.io/{rest}");
    }
    if let Some(rest) = full.strip_prefix("docker.io/")
        && !rest.contains('/')
    {
        full = format!("docker.io/library/{rest}");
    }
    let last = full.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && digest.is_none() {
        full.push_str(":latest");
    }
    match digest {
        Some(digest) => format!("{full}@{digest}"),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(v: Value) -> PodTemplateSpec {
        serde_json::from_value(v).unwrap()
    }

    /// A template with one container `app` (plus `extra` merged into it) and labels.
    fn app(extra: Value) -> PodTemplateSpec {
        let mut container = json!({"name": "app", "image": "demo:1"});
        for (k, v) in extra.as_object().unwrap() {
            container[k] = v.clone();
        }
        template(json!({
            "metadata": {"labels": {"app": "demo"}},
            "spec": {"containers": [container]},
        }))
    }

    fn path(from: &PodTemplateSpec, to: &PodTemplateSpec) -> UpdatePath {
        update_path(from, to, &PodUpdatePolicy::InPlaceIfPossible, true)
    }

    fn why(p: UpdatePath) -> String {
        match p {
            UpdatePath::Recreate { why } => why,
            other => panic!("expected Recreate, got {other:?}"),
        }
    }

    fn in_place(p: UpdatePath) -> InPlaceChange {
        match p {
            UpdatePath::InPlace(c) => c,
            other => panic!("expected InPlace, got {other:?}"),
        }
    }

    fn res(v: Value) -> ResourceRequirements {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn identical_templates_change_nothing() {
        let t = app(json!({"resources": {}}));
        assert_eq!(
            in_place(path(&t, &app(json!({})))),
            InPlaceChange::default()
        );
    }

    #[test]
    fn the_recreate_policy_always_recreates() {
        let t = app(json!({}));
        assert_eq!(
            why(update_path(&t, &t, &PodUpdatePolicy::ReCreate, true)),
            "podUpdatePolicy is ReCreate"
        );
    }

    #[test]
    fn a_restart_request_recreates() {
        let from = app(json!({}));
        let mut to = app(json!({}));
        to.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([(
            RESTARTED_AT.to_string(),
            "2026-11-27T18:00:00Z".to_string(),
        )]));
        assert!(why(path(&from, &to)).contains("cafe rollout restart"));
    }

    #[test]
    fn an_image_changes_in_place() {
        let change = in_place(path(&app(json!({})), &app(json!({"image": "demo:2"}))));
        assert_eq!(
            change.images,
            BTreeMap::from([("app".into(), "demo:2".into())])
        );
        assert!(change.resources.is_empty() && change.labels.is_empty());
    }

    #[test]
    fn labels_and_annotations_change_in_place_except_the_controllers_own() {
        let from = template(json!({
            "metadata": {"labels": {"app": "demo", "old": "x", REVISION: "r1", UNIT: "DCA"},
                         "annotations": {"keep": "1"}},
            "spec": {"containers": [{"name": "app", "image": "demo:1"}]},
        }));
        let to = template(json!({
            "metadata": {"labels": {"app": "demo", "new": "y", REVISION: "r2"},
                         "annotations": {"keep": "2"}, "finalizers": ["example.com/f"]},
            "spec": {"containers": [{"name": "app", "image": "demo:1"}]},
        }));
        let change = in_place(path(&from, &to));
        assert_eq!(
            change.labels,
            BTreeMap::from([("new".into(), Some("y".into())), ("old".into(), None)])
        );
        assert_eq!(
            change.annotations,
            BTreeMap::from([("keep".into(), Some("2".into()))])
        );
        assert!(change.images.is_empty());
    }

    #[test]
    fn cpu_and_memory_resize_in_place_when_the_cluster_supports_it() {
        let from = app(json!({"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}));
        let to = app(json!({"resources": {"requests": {"cpu": "200m", "memory": "128Mi"}}}));
        let change = in_place(path(&from, &to));
        assert_eq!(
            change.resources["app"],
            res(json!({"requests": {"cpu": "200m", "memory": "128Mi"}}))
        );
        let old = update_path(&from, &to, &PodUpdatePolicy::InPlaceIfPossible, false);
        assert_eq!(
            why(old),
            "container app: resources changed and the cluster has no pods/resize \
             (Kubernetes < 1.33)"
        );
    }

    #[test]
    fn a_respelled_quantity_is_no_change() {
        let from =
            app(json!({"resources": {"limits": {"cpu": "0.5"}, "requests": {"cpu": "0.5"}}}));
        let to = app(json!({"resources": {"limits": {"cpu": "500m"}}}));
        assert_eq!(
            in_place(update_path(
                &from,
                &to,
                &PodUpdatePolicy::InPlaceIfPossible,
                false
            )),
            InPlaceChange::default()
        );
    }

    #[test]
    fn resizes_the_api_server_refuses_recreate() {
        let burstable = app(json!({"resources": {"requests": {"cpu": "1"}}}));
        let other =
            app(json!({"resources": {"requests": {"cpu": "1", "ephemeral-storage": "1Gi"}}}));
        assert!(why(path(&burstable, &other)).contains("ephemeral-storage"));

        let no_request = app(json!({"resources": {"requests": {"memory": "1Gi"}}}));
        assert_eq!(
            why(path(&burstable, &no_request)),
            "container app: the cpu request is removed, which a resize cannot do"
        );

        let guaranteed = app(json!({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}));
        let now_burstable = app(json!({"resources": {
            "requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}));
        assert!(why(path(&guaranteed, &now_burstable)).contains("from Guaranteed to Burstable"));

        let smaller = app(json!({"resources": {"limits": {"cpu": "1", "memory": "512Mi"}}}));
        assert!(why(path(&guaranteed, &smaller)).contains("memory limit decreases"));
        let restarting = |limits: Value| {
            app(json!({"resources": {"limits": limits}, "resizePolicy": [
                {"resourceName": "memory", "restartPolicy": "RestartContainer"}]}))
        };
        let change = in_place(path(
            &restarting(json!({"cpu": "1", "memory": "1Gi"})),
            &restarting(json!({"cpu": "1", "memory": "512Mi"})),
        ));
        assert!(change.resources.contains_key("app"));
    }

    #[test]
    fn other_container_fields_recreate() {
        let to = app(json!({"env": [{"name": "A", "value": "1"}]}));
        assert_eq!(
            why(path(&app(json!({})), &to)),
            "container app: env changed"
        );
        let to = app(json!({"image": "demo:2", "args": ["--x"]}));
        assert_eq!(
            why(path(&app(json!({})), &to)),
            "container app: args changed"
        );
    }

    #[test]
    fn an_added_or_reordered_container_recreates() {
        let two = template(json!({"spec": {"containers": [
            {"name": "app", "image": "demo:1"}, {"name": "side", "image": "s:1"}]}}));
        let swapped = template(json!({"spec": {"containers": [
            {"name": "side", "image": "s:1"}, {"name": "app", "image": "demo:1"}]}}));
        assert_eq!(
            why(path(&app(json!({})), &two)),
            "spec.containers changed: [app] became [app, side]"
        );
        assert!(why(path(&two, &swapped)).starts_with("spec.containers changed"));
    }

    #[test]
    fn other_pod_spec_fields_recreate() {
        let mut with_init = app(json!({}));
        with_init.spec.as_mut().unwrap().init_containers = Some(vec![
            serde_json::from_value(json!({"name": "init", "image": "i:1"})).unwrap(),
        ]);
        assert_eq!(
            why(path(&app(json!({})), &with_init)),
            "spec.initContainers changed"
        );
        let mut with_volume = app(json!({}));
        with_volume.spec.as_mut().unwrap().volumes = Some(vec![
            serde_json::from_value(json!({"name": "v", "emptyDir": {}})).unwrap(),
        ]);
        assert_eq!(
            why(path(&app(json!({})), &with_volume)),
            "spec.volumes changed"
        );
        let mut empty_volumes = app(json!({}));
        empty_volumes.spec.as_mut().unwrap().volumes = Some(vec![]);
        assert_eq!(
            in_place(path(&app(json!({})), &empty_volumes)),
            InPlaceChange::default()
        );
    }

    fn pod(extra_meta: Value, status: Value) -> CachedPod {
        let mut metadata = json!({"name": "demo-x", "namespace": "prod", "resourceVersion": "42",
                                  "labels": {REVISION: "r1"}});
        for (k, v) in extra_meta.as_object().unwrap() {
            metadata[k] = v.clone();
        }
        serde_json::from_value(json!({
            "metadata": metadata,
            "spec": {"containers": [
                {"name": "app", "image": "demo:1",
                 "resources": {"requests": {"cpu": "100m"}}},
                {"name": "side", "image": "s:1"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn running(image: &str, image_id: &str, container_id: &str, ready: bool) -> Value {
        json!({"containerStatuses": [
            {"name": "app", "image": image, "imageID": image_id, "containerID": container_id,
             "ready": ready, "restartCount": 3},
            {"name": "side", "image": "s:1", "imageID": "sha-s", "containerID": "c-s",
             "ready": true, "restartCount": 0}]})
    }

    fn change() -> InPlaceChange {
        InPlaceChange {
            images: BTreeMap::from([("app".into(), "demo:2".into())]),
            resources: BTreeMap::from([("app".into(), res(json!({"requests": {"cpu": "200m"}})))]),
            labels: BTreeMap::from([("gone".into(), None), ("tier".into(), Some("web".into()))]),
            annotations: BTreeMap::from([("note".into(), None)]),
        }
    }

    fn now() -> Timestamp {
        "2025-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_record_keeps_the_containers_as_they_ran() {
        let p = pod(json!({}), running("demo:1", "sha-1", "c-1", true));
        let r = record(&p, &change(), "r1", "r2", now());
        assert_eq!(
            (r.revision.as_str(), r.from_revision.as_str()),
            ("r2", "r1")
        );
        assert_eq!(r.started, "2025-01-01T00:00:00Z");
        assert_eq!(
            r.containers,
            BTreeMap::from([(
                "app".to_string(),
                ContainerRecord {
                    image: "demo:2".into(),
                    previous_image_id: "sha-1".into(),
                    previous_container_id: "c-1".into(),
                    previous_restart_count: 3,
                }
            )])
        );
        assert_eq!(r.resized, change().resources);
    }

    #[test]
    fn the_patch_sets_images_labels_state_record_and_tests_what_the_decision_read() {
        // The pod as the API server holds it: what the cache showed, plus an annotation the
        // cache drops and the kubelet's status written since.
        let meta = json!({"uid": "u-1", "finalizers": ["example.com/drain"],
                          "labels": {"gone": "x", "keep": "y"},
                          "annotations": {"note": "n", "kubectl.kubernetes.io/last-applied-configuration": "{}"}});
        let p = pod(meta.clone(), running("demo:1", "sha-1", "c-1", true));
        let mut cached = p.clone();
        crate::runtime::strip_bookkeeping(&mut cached);
        let r = record(&cached, &change(), "r1", "r2", now());
        let patch = serde_json::to_value(in_place_patch(&cached, &change(), &r)).unwrap();
        assert!(!patch.to_string().contains("resources"), "{patch}");
        let mut stored = serde_json::to_value(&p).unwrap();
        stored["metadata"]["resourceVersion"] = json!("43");
        stored["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        let applied = cafe_sim::patch::json_patch(&stored, &patch).unwrap();

        assert_eq!(applied["spec"]["containers"][0]["image"], "demo:2");
        assert_eq!(applied["spec"]["containers"][1]["image"], "s:1");
        let labels = &applied["metadata"]["labels"];
        assert_eq!(labels[REVISION], "r2");
        assert_eq!(labels[LIFECYCLE_STATE], STATE_UPDATING);
        assert_eq!(labels["tier"], "web");
        assert_eq!(labels["keep"], "y");
        assert!(labels.get("gone").is_none(), "{labels}");
        let annotations = &applied["metadata"]["annotations"];
        assert_eq!(annotations[LIFECYCLE_SINCE], "2025-01-01T00:00:00Z");
        assert!(annotations.get("note").is_none(), "{annotations}");
        assert_eq!(
            annotations["kubectl.kubernetes.io/last-applied-configuration"], "{}",
            "what the cache does not keep stays"
        );

        // What the decision read changed meanwhile: the patch fails as a whole.
        let changed = |f: &dyn Fn(&mut Value)| {
            let mut other = stored.clone();
            f(&mut other);
            cafe_sim::patch::json_patch(&other, &patch).is_err()
        };
        assert!(changed(
            &|p| p["metadata"]["labels"]["traffic"] = json!("on")
        ));
        assert!(changed(
            &|p| p["metadata"]["finalizers"] = json!(["example.com/drain", "lb"])
        ));
        assert!(changed(
            &|p| p["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:01Z")
        ));
        assert!(changed(&|p| p["metadata"]["uid"] = json!("u-2")));
        assert!(changed(
            &|p| p["spec"]["containers"] = json!([{"name": "side", "image": "s:1"}])
        ));

        // The record reads back from the annotation the patch wrote.
        let mut annotated = p.clone();
        annotated.metadata.annotations = Some(BTreeMap::from([(
            INPLACE_UPDATE_STATE.to_string(),
            annotations[INPLACE_UPDATE_STATE]
                .as_str()
                .unwrap()
                .to_string(),
        )]));
        assert_eq!(read_record(&annotated), Some(r));
        annotated.metadata.annotations = Some(BTreeMap::from([(
            INPLACE_UPDATE_STATE.to_string(),
            "{not json".to_string(),
        )]));
        assert_eq!(read_record(&annotated), None);
        assert_eq!(read_record(&p), None);
    }

    #[test]
    fn a_pod_without_annotations_gets_them_whole() {
        let p = pod(
            json!({"uid": "u-1"}),
            running("demo:1", "sha-1", "c-1", true),
        );
        let r = record(&p, &change(), "r1", "r2", now());
        let patch = serde_json::to_value(in_place_patch(&p, &change(), &r)).unwrap();
        let applied =
            cafe_sim::patch::json_patch(&serde_json::to_value(&p).unwrap(), &patch).unwrap();
        assert_eq!(
            applied["metadata"]["annotations"][LIFECYCLE_SINCE],
            "2025-01-01T00:00:00Z"
        );
        assert!(applied["metadata"]["annotations"].get("note").is_none());
    }

    #[test]
    fn a_labels_only_patch_has_no_spec() {
        let p = pod(json!({}), json!({}));
        let labels_only = InPlaceChange {
            labels: BTreeMap::from([("tier".into(), Some("web".into()))]),
            ..InPlaceChange::default()
        };
        let r = record(&p, &labels_only, "r1", "r2", now());
        assert!(r.containers.is_empty() && r.resized.is_empty());
        let patch = serde_json::to_value(in_place_patch(&p, &labels_only, &r)).unwrap();
        let paths: Vec<&str> = patch
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|op| op["path"].as_str())
            .collect();
        assert!(paths.iter().all(|p| !p.starts_with("/spec")), "{paths:?}");
    }

    #[test]
    fn the_resize_patch_carries_what_the_spec_lacks() {
        let p = pod(json!({}), json!({}));
        let mut r = record(&p, &change(), "r1", "r2", now());
        // `side` already has (no) resources: nothing to send for it.
        r.resized
            .insert("side".into(), ResourceRequirements::default());
        assert_eq!(
            resize_patch(&p, &r),
            Some(json!({"spec": {"containers": [
                {"name": "app", "resources": {"requests": {"cpu": "200m"}}}]}}))
        );
        let mut resized = p.clone();
        resized.spec.as_mut().unwrap().containers[0].resources =
            Some(res(json!({"requests": {"cpu": "0.2"}})));
        assert_eq!(resize_patch(&resized, &r), None);
    }

    #[test]
    fn the_resize_patch_writes_defaulted_requests() {
        let p = pod(json!({}), json!({}));
        let r = InPlaceRecord {
            revision: "r2".into(),
            from_revision: "r1".into(),
            started: now().to_string(),
            containers: BTreeMap::new(),
            resized: BTreeMap::from([("app".into(), res(json!({"limits": {"cpu": "2"}})))]),
        };
        assert_eq!(
            resize_patch(&p, &r).unwrap()["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "2"}, "limits": {"cpu": "2"}})
        );
    }

    fn image_record() -> InPlaceRecord {
        let p = pod(json!({}), running("demo:1", "sha-1", "c-1", true));
        let images_only = InPlaceChange {
            images: change().images,
            ..InPlaceChange::default()
        };
        record(&p, &images_only, "r1", "r2", now())
    }

    fn waiting(v: Verification) -> String {
        match v {
            Verification::Waiting(why) => why,
            Verification::Done => panic!("expected Waiting"),
        }
    }

    #[test]
    fn verify_waits_for_the_restart_the_image_and_readiness() {
        let r = image_record();
        let same = pod(json!({}), running("demo:1", "sha-1", "c-1", true));
        assert_eq!(
            waiting(verify(&same, &r)),
            "container app still runs demo:1"
        );
        let starting = pod(json!({}), running("demo:2", "", "", false));
        assert_eq!(
            waiting(verify(&starting, &r)),
            "container app has not started demo:2 yet"
        );
        let crashed_old = pod(json!({}), running("demo:1", "sha-1", "c-2", true));
        assert!(waiting(verify(&crashed_old, &r)).contains("instead of demo:2"));
        let not_ready = pod(json!({}), running("demo:2", "sha-2", "c-2", false));
        assert_eq!(
            waiting(verify(&not_ready, &r)),
            "container app runs demo:2 but is not ready"
        );
        let done = pod(json!({}), running("demo:2", "sha-2", "c-2", true));
        assert_eq!(verify(&done, &r), Verification::Done);
        let no_status = pod(json!({}), json!({}));
        assert_eq!(
            waiting(verify(&no_status, &r)),
            "container app has no status yet"
        );
    }

    #[test]
    fn verify_accepts_a_normalised_image_name() {
        let r = image_record();
        let normalised = pod(
            json!({}),
            running("docker.io/library/demo:2", "sha-1", "c-2", true),
        );
        assert_eq!(verify(&normalised, &r), Verification::Done);
        let renamed = pod(
            json!({}),
            running("registry.local/demo:2", "sha-2", "c-2", true),
        );
        assert_eq!(verify(&renamed, &r), Verification::Done, "a new image ID");
        assert!(same_image("nginx", "docker.io/library/nginx:latest"));
        assert!(same_image("index.docker.io/org/x:1", "org/x:1"));
        assert!(!same_image("registry.local/nginx:1", "nginx:1"));
        assert!(!same_image("nginx:1", "nginx:2"));
    }

    #[test]
    fn verify_waits_for_the_resize() {
        let resized = InPlaceRecord {
            containers: BTreeMap::new(),
            resized: change().resources,
            ..image_record()
        };
        let before = pod(json!({}), running("demo:1", "sha-1", "c-1", true));
        assert_eq!(
            waiting(verify(&before, &resized)),
            "resize of app not applied yet: the pod spec has other resources"
        );
        let mut applied = before.clone();
        applied.spec.as_mut().unwrap().containers[0].resources =
            Some(res(json!({"requests": {"cpu": "200m"}})));
        assert_eq!(verify(&applied, &resized), Verification::Done);

        let mut in_progress = applied.clone();
        let status = in_progress.status.as_mut().unwrap();
        status.conditions = Some(vec![
            serde_json::from_value(json!({
            "type": "PodResizeInProgress", "status": "True"}))
            .unwrap(),
        ]);
        assert_eq!(
            waiting(verify(&in_progress, &resized)),
            "resize of app not applied yet (PodResizeInProgress)"
        );
        let mut deferred = applied.clone();
        deferred.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(json!({
            "type": "PodResizePending", "status": "True", "reason": "Deferred",
            "message": "not enough cpu"}))
            .unwrap(),
        ]);
        assert_eq!(
            waiting(verify(&deferred, &resized)),
            "resize of app not applied yet (PodResizePending Deferred: not enough cpu)"
        );
        let mut legacy = applied.clone();
        legacy.status.as_mut().unwrap().resize = Some("InProgress".into());
        assert!(waiting(verify(&legacy, &resized)).contains("status.resize is InProgress"));
        let unobserved = {
            let mut p = applied.clone();
            p.metadata.generation = Some(3);
            p.status.as_mut().unwrap().observed_generation = Some(2);
            p
        };
        assert!(waiting(verify(&unobserved, &resized)).contains("generation 2 of 3"));
    }
}
