//! Pod rules the API server enforces: defaults on create, what an update may change, resize.
//!
//! https://kubernetes.io/docs/concepts/workloads/pods/#pod-update-and-replacement
//! https://kubernetes.io/docs/tasks/configure-pod-container/resize-container-resources/

use serde_json::{Value, json};

use crate::meta::{ensure_object, metadata_mut};
use crate::status::{ApiError, Cause};
use crate::store::meta_str;

fn cause(reason: &str, field: &str, message: impl Into<String>) -> Cause {
    Cause {
        reason: reason.into(),
        message: message.into(),
        field: field.into(),
    }
}

fn containers(spec: &Value, field: &str) -> Vec<Value> {
    spec.get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Required fields and the defaults a real API server fills in.
pub fn prepare_create(pod: &mut Value) -> Result<(), ApiError> {
    let name = meta_str(pod, "name").to_string();
    let spec = pod.get("spec").cloned().unwrap_or(json!({}));
    let mut causes = vec![];
    let list = containers(&spec, "containers");
    if list.is_empty() {
        causes.push(cause(
            "FieldValueRequired",
            "spec.containers",
            "Required value",
        ));
    }
    for (i, c) in list.iter().enumerate() {
        if c.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(cause(
                "FieldValueRequired",
                &format!("spec.containers[{i}].name"),
                "Required value",
            ));
        }
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(cause(
                "FieldValueRequired",
                &format!("spec.containers[{i}].image"),
                "Required value",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("", "Pod", &name, causes));
    }
    let spec_obj = ensure_object(&mut pod["spec"]);
    spec_obj.entry("restartPolicy").or_insert(json!("Always"));
    spec_obj
        .entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    spec_obj.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    spec_obj
        .entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    spec_obj.entry("enableServiceLinks").or_insert(json!(true));
    spec_obj.entry("priority").or_insert(json!(0));
    if let Some(Value::Array(cs)) = spec_obj.get_mut("containers") {
        for c in cs.iter_mut() {
            let image = c
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let c = ensure_object(c);
            let latest =
                image.ends_with(":latest") || !image.rsplit('/').next().unwrap_or("").contains(':');
            c.entry("imagePullPolicy").or_insert(json!(if latest {
                "Always"
            } else {
                "IfNotPresent"
            }));
            c.entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            c.entry("resources").or_insert(json!({}));
        }
    }
    let qos = qos_class(&pod["spec"]);
    // Status is the kubelet's and the scheduler's; a new pod starts Pending.
    pod["status"] = json!({"phase": "Pending", "qosClass": qos});
    metadata_mut(pod);
    Ok(())
}

/// https://kubernetes.io/docs/concepts/workloads/pods/pod-qos/
fn qos_class(spec: &Value) -> &'static str {
    let cs = containers(spec, "containers");
    let mut any = false;
    let mut guaranteed = true;
    for c in &cs {
        for res in ["cpu", "memory"] {
            let req = c.pointer(&format!("/resources/requests/{res}"));
            let lim = c.pointer(&format!("/resources/limits/{res}"));
            if req.is_some() || lim.is_some() {
                any = true;
            }
            if lim.is_none() || (req.is_some() && req != lim) {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

const UPDATE_RULE: &str = "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// What the main pod endpoint may change: images, activeDeadlineSeconds, added tolerations,
/// removed scheduling gates. Everything else in spec is immutable.
pub fn validate_update(old: &Value, new: &Value) -> Result<(), ApiError> {
    let old_spec = old.get("spec").cloned().unwrap_or(json!({}));
    let new_spec = new.get("spec").cloned().unwrap_or(json!({}));
    let mut allowed = old_spec.clone();
    for field in ["containers", "initContainers"] {
        let old_list = containers(&old_spec, field);
        let new_list = containers(&new_spec, field);
        if old_list.len() == new_list.len()
            && let Some(Value::Array(list)) = allowed.get_mut(field)
        {
            for (c, n) in list.iter_mut().zip(new_list.iter()) {
                if let Some(image) = n.get("image") {
                    c["image"] = image.clone();
                }
            }
        }
    }
    for field in ["activeDeadlineSeconds", "tolerations", "schedulingGates"] {
        match new_spec.get(field) {
            Some(v) => allowed[field] = v.clone(),
            None => {
                if let Value::Object(m) = &mut allowed {
                    m.remove(field);
                }
            }
        }
    }
    if allowed != new_spec {
        return Err(ApiError::invalid(
            "",
            "Pod",
            meta_str(old, "name"),
            vec![cause("FieldValueForbidden", "spec", UPDATE_RULE)],
        ));
    }
    Ok(())
}

/// pods/resize: only containers' resources (and resizePolicy) change; the rest comes from `old`.
pub fn resize(old: &Value, new: &Value) -> Result<Value, ApiError> {
    let name = meta_str(old, "name");
    let old_list = containers(&old["spec"], "containers");
    let new_list = containers(&new["spec"], "containers");
    if old_list.len() != new_list.len()
        || old_list
            .iter()
            .zip(&new_list)
            .any(|(a, b)| a.get("name") != b.get("name"))
    {
        return Err(ApiError::invalid(
            "",
            "Pod",
            name,
            vec![cause(
                "FieldValueForbidden",
                "spec.containers",
                "Forbidden: containers may not be added, removed or renamed by a resize",
            )],
        ));
    }
    let mut merged = old.clone();
    let mut changed = false;
    if let Some(Value::Array(list)) = merged.pointer_mut("/spec/containers") {
        for (c, n) in list.iter_mut().zip(&new_list) {
            for field in ["resources", "resizePolicy"] {
                if let Some(v) = n.get(field)
                    && c.get(field) != Some(v)
                {
                    changed = true;
                    c[field] = v.clone();
                }
            }
        }
    }
    let mut check = new.clone();
    if let Some(Value::Array(list)) = check.pointer_mut("/spec/containers") {
        for (c, o) in list.iter_mut().zip(&old_list) {
            for field in ["resources", "resizePolicy"] {
                match o.get(field) {
                    Some(v) => c[field] = v.clone(),
                    None => {
                        if let Value::Object(m) = c {
                            m.remove(field);
                        }
                    }
                }
            }
        }
    }
    if check.get("spec") != old.get("spec") {
        return Err(ApiError::invalid(
            "",
            "Pod",
            name,
            vec![cause(
                "FieldValueForbidden",
                "spec",
                "Forbidden: only cpu and memory resources are mutable through pods/resize",
            )],
        ));
    }
    if changed {
        // The kubelet picks the new resources up; until then the resize is pending.
        if let Some(status) = merged.get_mut("status").and_then(Value::as_object_mut) {
            status.insert("resize".into(), json!("InProgress"));
        }
    }
    Ok(merged)
}

/// pods/binding: the scheduler's assignment of a pod to a node. Sets spec.nodeName (which no
/// update may change) and PodScheduled=True.
/// https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#create-binding-pod-v1-core
pub fn bind(
    inner: &mut crate::store::Inner,
    namespace: &str,
    name: &str,
    node: &str,
) -> Result<crate::store::Obj, ApiError> {
    let rt = inner.registry.core("pods");
    let pod = inner
        .get(&rt.storage, namespace, name)
        .ok_or_else(|| ApiError::not_found("", "pods", name))?;
    if crate::meta::is_deleting(&pod) {
        return Err(ApiError::conflict(
            "",
            "pods",
            name,
            "the pod is being deleted",
        ));
    }
    let current = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !current.is_empty() {
        return Err(ApiError::conflict(
            "",
            "pods",
            name,
            &format!("pod {name} is already assigned to node \"{current}\""),
        ));
    }
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            name,
            vec![cause("FieldValueRequired", "target.name", "Required value")],
        ));
    }
    let mut bound = (*pod).clone();
    bound["spec"]["nodeName"] = json!(node);
    set_condition(&mut bound, "PodScheduled", "True", None, None);
    Ok(inner.put(&rt.storage, bound))
}

/// Sets a pod condition, keeping lastTransitionTime when the status did not change.
pub fn set_condition(
    pod: &mut Value,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    let now = crate::meta::now();
    let status_obj = ensure_object(&mut pod["status"]);
    let conds = status_obj.entry("conditions").or_insert(json!([]));
    if !conds.is_array() {
        *conds = json!([]);
    }
    let Value::Array(list) = conds else { return };
    let mut cond =
        json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(r) = reason {
        cond["reason"] = json!(r);
    }
    if let Some(m) = message {
        cond["message"] = json!(m);
    }
    match list.iter_mut().find(|c| c["type"] == type_) {
        Some(existing) => {
            if existing["status"] == status {
                cond["lastTransitionTime"] = existing["lastTransitionTime"].clone();
            }
            *existing = cond;
        }
        None => list.push(cond),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx:1", "resources": {"requests": {"cpu": "100m"}}}]}})
    }

    #[test]
    fn create_defaults_and_requires_containers() {
        let mut p = pod();
        prepare_create(&mut p).unwrap();
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(p["status"]["qosClass"], "Burstable");
        let mut empty = json!({"metadata": {"name": "p"}, "spec": {}});
        let err = prepare_create(&mut empty).unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(err.causes[0].field, "spec.containers");
    }

    #[test]
    fn only_images_change_in_place() {
        let old = pod();
        let mut new = pod();
        new["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert!(validate_update(&old, &new).is_ok());
        new["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "1"}]);
        assert_eq!(validate_update(&old, &new).unwrap_err().code, 422);
        let mut cpu = pod();
        cpu["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("200m");
        assert!(validate_update(&old, &cpu).is_err());
        assert!(resize(&old, &cpu).is_ok());
        let mut img = pod();
        img["spec"]["containers"][0]["image"] = json!("x");
        assert!(resize(&old, &img).is_err());
    }
}
