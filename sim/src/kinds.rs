//! Kind-specific rules layered on the generic write path (the "strategies" of the API server).

use std::borrow::Cow;

use serde_json::{Value, json};

use crate::meta::{self, metadata_mut};
use crate::registry::{Conversion, ResourceType};
use crate::status::{ApiError, Cause};
use crate::store::{Inner, Obj, meta_str};
use crate::{crd, pods};

fn is(rt: &ResourceType, group: &str, plural: &str) -> bool {
    rt.builtin && rt.group == group && rt.plural == plural
}

/// The resource type objects are stored as (core/v1 Event for events.k8s.io/v1). Borrowed
/// when it is `rt` itself: a custom resource's type carries its whole schema, and cloning it
/// on every write was a fifth of the simulator's time at 10,000 CafeDeployments.
pub fn storage_type<'a>(inner: &Inner, rt: &'a ResourceType) -> Cow<'a, ResourceType> {
    match rt.conversion {
        Conversion::EventsV1 => Cow::Owned(inner.registry.core("events").as_ref().clone()),
        Conversion::None => Cow::Borrowed(rt),
    }
}

pub fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    // Events use dotted names with timestamps; everything else here is a DNS subdomain, except
    // RBAC objects, whose names only need to be path segments ("system:basic-user").
    let path_segment =
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%']);
    let rbac = rt.builtin && rt.group == "rbac.authorization.k8s.io";
    if meta::is_dns_subdomain(name)
        || (rt.plural == "events" && !name.contains('/'))
        || (rbac && path_segment)
    {
        return Ok(());
    }
    Err(ApiError::invalid(
        &rt.group,
        &rt.kind,
        name,
        vec![Cause {
            reason: "FieldValueInvalid".into(),
            message: format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
            ),
            field: "metadata.name".into(),
        }],
    ))
}

pub fn prepare_create(inner: &Inner, rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    if is(rt, "", "pods") {
        pods::prepare_create(obj)?;
    } else if is(rt, "", "namespaces") {
        let name = meta_str(obj, "name").to_string();
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
        obj["status"] = json!({"phase": "Active"});
        let m = metadata_mut(obj);
        let labels = meta::ensure_object(m.entry("labels").or_insert(json!({})));
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    } else if is(rt, "apiextensions.k8s.io", "customresourcedefinitions") {
        let types = crd::resource_types(obj)?;
        if let Some(t) = types.first() {
            check_name_conflicts(inner, t, meta_str(obj, "name"))?;
        }
        obj["status"] = json!({});
    }
    Ok(())
}

/// Two CRDs may not claim the same kind or plural in a group.
fn check_name_conflicts(inner: &Inner, t: &ResourceType, name: &str) -> Result<(), ApiError> {
    if inner
        .registry
        .all()
        .iter()
        .any(|o| o.group == t.group && o.plural == t.plural && o.builtin)
    {
        return Err(ApiError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            name,
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: format!(
                    "Invalid value: \"{}\": is already served by a built-in resource",
                    t.plural
                ),
                field: "spec.names.plural".into(),
            }],
        ));
    }
    Ok(())
}

/// Kubernetes caps the total size of an object's annotations (keys and values) at 256 KiB
/// (`TotalAnnotationSizeLimitB` in apimachinery's ValidateAnnotations). Client-side
/// `kubectl apply` keeps the whole applied object in one annotation, so this is the limit that
/// makes it refuse large objects, as a real API server does.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// Checks what every object's metadata must satisfy, on create and update.
pub fn validate_metadata(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let size: usize = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                .sum()
        })
        .unwrap_or(0);
    if size > TOTAL_ANNOTATION_SIZE_LIMIT {
        return Err(ApiError::invalid(
            &rt.group,
            &rt.kind,
            meta_str(obj, "name"),
            vec![Cause {
                reason: "FieldValueTooLong".into(),
                message: format!("Too long: must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
                field: "metadata.annotations".into(),
            }],
        ));
    }
    Ok(())
}

pub fn validate_update(
    rt: &ResourceType,
    old: &Value,
    new: &Value,
    subresource: Option<&str>,
) -> Result<(), ApiError> {
    if is(rt, "", "pods") && subresource.is_none() {
        pods::validate_update(old, new)?;
    }
    if is(rt, "apiextensions.k8s.io", "customresourcedefinitions") && subresource.is_none() {
        let before = crd::resource_types(old).ok();
        let after = crd::resource_types(new)?;
        if let (Some(b), Some(a)) = (before.and_then(|b| b.first().cloned()), after.first())
            && b.namespaced != a.namespaced
        {
            return Err(ApiError::invalid(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                meta_str(old, "name"),
                vec![Cause {
                    reason: "FieldValueInvalid".into(),
                    message: "Invalid value: field is immutable".into(),
                    field: "spec.scope".into(),
                }],
            ));
        }
    }
    Ok(())
}

pub fn pods_resize(old: &Value, new: &Value) -> Result<Value, ApiError> {
    pods::resize(old, new)
}

/// Whether an object whose finalizers are all gone may be removed now. Pods that are still
/// bound and running wait for their kubelet to confirm termination.
pub fn finalizable(rt: &ResourceType, obj: &Value) -> bool {
    if is(rt, "", "pods") {
        let bound = meta::get_str(obj, "/spec/nodeName").is_some_and(|n| !n.is_empty());
        let grace = meta::get_i64(obj, "/metadata/deletionGracePeriodSeconds").unwrap_or(0);
        return !bound || grace == 0;
    }
    true
}

/// Side effects of a stored write: a CRD becomes served and Established.
pub fn after_write(inner: &mut Inner, rt: &ResourceType, stored: &Obj) -> Result<(), ApiError> {
    if is(rt, "apiextensions.k8s.io", "customresourcedefinitions") && !meta::is_deleting(stored) {
        let types = crd::resource_types(stored)?;
        if let Some(t) = types.first() {
            let (group, plural) = (t.group.clone(), t.plural.clone());
            inner.registry.set_custom(&group, &plural, types);
        }
        let status = crd::established_status(stored);
        if stored.get("status") != Some(&status) {
            let mut with_status = (**stored).clone();
            with_status["status"] = status;
            inner.put(&rt.storage, with_status);
        }
    }
    Ok(())
}

/// When a CRD goes away, so do its kind and every object of it.
pub fn after_remove(inner: &mut Inner, rt: &ResourceType, gone: &Value) {
    if is(rt, "apiextensions.k8s.io", "customresourcedefinitions") {
        let group = meta::get_str(gone, "/spec/group").unwrap_or("").to_string();
        let plural = meta::get_str(gone, "/spec/names/plural")
            .unwrap_or("")
            .to_string();
        let storage = format!("{group}/{plural}");
        for obj in inner.list(&storage, None) {
            inner.remove(
                &storage,
                meta_str(&obj, "namespace"),
                meta_str(&obj, "name"),
            );
        }
        inner.registry.remove_custom(&group, &plural);
    }
}
