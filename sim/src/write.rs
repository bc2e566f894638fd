//! Create, update and patch: the rules every write goes through.
//!
//! Mirrors the API server's generic registry (k8s.io/apiserver/pkg/registry/generic/registry/store.go):
//! optimistic concurrency on resourceVersion, generation bumps on spec changes, the status
//! subresource split, managedFields bookkeeping, and no-op writes that do not bump resourceVersion.
//! https://kubernetes.io/docs/reference/using-api/api-concepts/

use serde_json::{Value, json};

use crate::apply::{self, ListTypes};
use crate::kinds;
use crate::meta::{self, metadata_mut};
use crate::registry::{Conversion, ResourceType};
use crate::status::ApiError;
use crate::store::{Inner, Obj, meta_str};
use crate::{conversion, patch};

/// Per-request options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub manager: String,
    pub dry_run: bool,
    /// fieldValidation=Strict: unknown fields are an error instead of being dropped.
    pub strict: bool,
    pub subresource: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply { force: bool },
}

impl PatchKind {
    pub fn from_content_type(ct: &str, force: bool) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(Self::Apply { force })
            }
            _ => None,
        }
    }
}

/// List merge semantics for one resource: built-in merge keys, or the CRD schema's list types.
pub struct ResourceLists<'a>(pub &'a ResourceType);

impl ListTypes for ResourceLists<'_> {
    fn list_type(&self, path: &[String]) -> apply::ListType {
        if self.0.builtin {
            return apply::BuiltinListTypes.list_type(path);
        }
        self.0
            .list_types
            .iter()
            .find(|(p, _)| p.as_slice() == path)
            .map(|(_, t)| t.clone())
            .unwrap_or(apply::ListType::Atomic)
    }
}

fn check_type_meta(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the body ({kind}) does not match the resource ({}); send a {} to {}",
            rt.kind,
            rt.kind,
            rt.qualified()
        )));
    }
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
        && av != rt.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the apiVersion in the body ({av}) does not match the request ({})",
            rt.api_version()
        )));
    }
    Ok(())
}

fn set_type_meta(rt: &ResourceType, obj: &mut Value) {
    if let Value::Object(m) = obj {
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
    }
}

/// Validates against the CRD schema (custom resources only) after defaulting and pruning.
fn schema_check(
    rt: &ResourceType,
    obj: Value,
    old: Option<&Value>,
    strict: bool,
) -> Result<Value, ApiError> {
    let Some(schema) = &rt.schema else {
        return Ok(obj);
    };
    let (obj, unknown) = schema.default_and_prune(&obj);
    if strict && !unknown.is_empty() {
        let list = unknown
            .iter()
            .map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.')))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {list}"
        )));
    }
    let causes = schema.validate(&obj, old);
    if !causes.is_empty() {
        return Err(ApiError::invalid(
            &rt.group,
            &rt.kind,
            meta_str(&obj, "name"),
            causes
                .into_iter()
                .map(|c| crate::status::Cause {
                    reason: c.reason,
                    message: c.message,
                    field: c.field,
                })
                .collect(),
        ));
    }
    Ok(obj)
}

/// POST: create a new object.
pub fn create(
    inner: &mut Inner,
    rt: &ResourceType,
    namespace: &str,
    body: Value,
    opts: &WriteOptions,
) -> Result<Obj, ApiError> {
    create_with(inner, rt, namespace, body, opts, false)
}

/// `applied`: managedFields were already computed by server-side apply.
fn create_with(
    inner: &mut Inner,
    rt: &ResourceType,
    namespace: &str,
    body: Value,
    opts: &WriteOptions,
    applied: bool,
) -> Result<Obj, ApiError> {
    check_type_meta(rt, &body)?;
    let mut obj = body;
    set_type_meta(rt, &mut obj);
    if rt.namespaced {
        let in_body = meta_str(&obj, "namespace").to_string();
        if !in_body.is_empty() && in_body != namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let ns = inner.registry.core("namespaces");
        match inner.get(&ns.storage, "", namespace) {
            None => return Err(ApiError::not_found("", "namespaces", namespace)),
            Some(n) if meta::is_deleting(&n) => {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                        rt.qualified(),
                        meta_str(&obj, "name")
                    ),
                ));
            }
            Some(_) => {}
        }
        metadata_mut(&mut obj).insert("namespace".into(), json!(namespace));
    } else {
        metadata_mut(&mut obj).remove("namespace");
    }
    let mut name = meta_str(&obj, "name").to_string();
    if name.is_empty() {
        let prefix = meta_str(&obj, "generateName").to_string();
        if prefix.is_empty() {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                "",
                vec![crate::status::Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value: name or generateName is required".into(),
                    field: "metadata.name".into(),
                }],
            ));
        }
        // Retry on the (unlikely) collision, as the API server's name generator leaves to clients;
        // we have the lock, so we can simply pick a free one.
        loop {
            let candidate = format!("{prefix}{}", meta::random_suffix());
            if inner.get(&rt.storage, namespace, &candidate).is_none() {
                name = candidate;
                break;
            }
        }
        metadata_mut(&mut obj).insert("name".into(), json!(name));
    }
    kinds::validate_name(rt, &name)?;
    kinds::validate_metadata(rt, &obj)?;
    if inner
        .get(
            &rt.storage,
            if rt.namespaced { namespace } else { "" },
            &name,
        )
        .is_some()
    {
        return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
    }
    {
        let m = metadata_mut(&mut obj);
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(meta::now()));
        m.insert("generation".into(), json!(1));
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("selfLink");
    }
    if rt.has_subresource("status") && !rt.builtin {
        // CRDs with a status subresource ignore status on create.
        if let Value::Object(m) = &mut obj {
            m.remove("status");
        }
    }
    let mut obj = schema_check(rt, obj, None, opts.strict)?;
    kinds::prepare_create(inner, rt, &mut obj)?;
    if !applied {
        obj = apply::record_update(
            None,
            &obj,
            &opts.manager,
            opts.subresource.as_deref(),
            &rt.api_version(),
            &meta::now(),
            &ResourceLists(rt),
        );
    }
    let stored = conversion::to_storage(rt, obj);
    if opts.dry_run {
        return Ok(std::sync::Arc::new(conversion::to_served(rt, &stored)));
    }
    let stored = inner.put(&rt.storage, stored);
    kinds::after_write(inner, rt, &stored)?;
    crate::delete::collect_if_orphaned(inner, rt, &stored);
    Ok(served(rt, stored))
}

/// The object in the form this resource serves it.
pub fn served(rt: &ResourceType, obj: Obj) -> Obj {
    if rt.conversion == Conversion::None {
        obj
    } else {
        std::sync::Arc::new(conversion::to_served(rt, &obj))
    }
}

fn current(inner: &Inner, rt: &ResourceType, ns: &str, name: &str) -> Result<Obj, ApiError> {
    inner
        .get(&rt.storage, ns, name)
        .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
}

/// PUT: replace an object (or its status / resize subresource).
pub fn update(
    inner: &mut Inner,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    body: Value,
    opts: &WriteOptions,
) -> Result<Obj, ApiError> {
    check_type_meta(rt, &body)?;
    let old = current(inner, rt, ns, name)?;
    let body_name = meta_str(&body, "name");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let rv = meta_str(&body, "resourceVersion");
    if rv.is_empty() {
        if !rt.builtin {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                name,
                vec![crate::status::Cause {
                    reason: "FieldValueInvalid".into(),
                    message: "Invalid value: 0x0: must be specified for an update".into(),
                    field: "metadata.resourceVersion".into(),
                }],
            ));
        }
    } else if rv != meta_str(&old, "resourceVersion") {
        return Err(ApiError::conflict(
            &rt.group,
            &rt.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    let new = conversion::to_storage(rt, body);
    commit_update(inner, rt, &old, new, opts, false)
}

/// PATCH of any kind; server-side apply creates the object when it is absent.
#[allow(clippy::too_many_arguments)]
pub fn patch_object(
    inner: &mut Inner,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    kind: PatchKind,
    body: Value,
    opts: &WriteOptions,
) -> Result<Obj, ApiError> {
    let existing = inner.get(&rt.storage, ns, name);
    let lists = ResourceLists(rt);
    let Some(old) = existing else {
        if let PatchKind::Apply { force } = kind {
            check_type_meta(rt, &body)?;
            let mut obj = apply::server_side_apply(
                None,
                &body,
                &opts.manager,
                opts.subresource.as_deref(),
                force,
                &rt.api_version(),
                &meta::now(),
                &lists,
            )
            .map_err(|e| apply_error(rt, name, e))?;
            metadata_mut(&mut obj).insert("name".into(), json!(name));
            return create_with(inner, rt, ns, obj, opts, true);
        }
        return Err(ApiError::not_found(&rt.group, &rt.plural, name));
    };
    let served_old = conversion::to_served(rt, &old);
    let new = match kind {
        PatchKind::Json => patch::json_patch(&served_old, &body),
        PatchKind::Merge => Ok(patch::merge_patch(&served_old, &body)),
        PatchKind::Strategic => {
            if !rt.builtin {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "strategic merge patch is not supported for custom resources ({}); use a JSON merge patch (--type merge) or JSON patch",
                        rt.qualified()
                    ),
                ));
            }
            patch::strategic_merge_patch(&served_old, &body, &rt.kind)
        }
        PatchKind::Apply { force } => {
            check_type_meta(rt, &body)?;
            let result = apply::server_side_apply(
                Some(&served_old),
                &body,
                &opts.manager,
                opts.subresource.as_deref(),
                force,
                &rt.api_version(),
                &meta::now(),
                &lists,
            )
            .map_err(|e| apply_error(rt, name, e))?;
            let new = conversion::to_storage(rt, result);
            return commit_update(inner, rt, &old, new, opts, true);
        }
    };
    let new = new.map_err(|e| match e {
        patch::PatchError::Malformed(m) => ApiError::bad_request(m),
        patch::PatchError::Unprocessable(m) => ApiError::new(422, "Invalid", m),
    })?;
    // A resourceVersion in a patch is a precondition, as for PUT.
    let rv = meta_str(&new, "resourceVersion");
    if !rv.is_empty() && rv != meta_str(&old, "resourceVersion") {
        return Err(ApiError::conflict(
            &rt.group,
            &rt.plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    let new = conversion::to_storage(rt, new);
    commit_update(inner, rt, &old, new, opts, false)
}

fn apply_error(rt: &ResourceType, name: &str, e: apply::ApplyError) -> ApiError {
    match e {
        apply::ApplyError::Conflict { message, conflicts } => {
            let mut err =
                ApiError::new(409, "Conflict", message).with_target(&rt.group, &rt.plural, name);
            err.causes = conflicts
                .into_iter()
                .map(|c| crate::status::Cause {
                    reason: "FieldManagerConflict".into(),
                    message: format!("conflict with \"{}\"", c.manager),
                    field: c.field,
                })
                .collect();
            err
        }
        apply::ApplyError::Invalid(m) => ApiError::bad_request(m),
    }
}

/// Managed-field timestamps change on every write; ignore them when deciding whether anything did.
fn without_volatile(obj: &Value) -> Value {
    let mut o = obj.clone();
    let m = metadata_mut(&mut o);
    m.remove("resourceVersion");
    if let Some(Value::Array(entries)) = m.get_mut("managedFields") {
        for e in entries {
            if let Value::Object(e) = e {
                e.remove("time");
            }
        }
    }
    o
}

/// The shared tail of PUT and PATCH. `old` and `new` are in storage form.
pub fn commit_update(
    inner: &mut Inner,
    rt: &ResourceType,
    old: &Obj,
    mut new: Value,
    opts: &WriteOptions,
    applied: bool,
) -> Result<Obj, ApiError> {
    if !new.is_object() {
        return Err(ApiError::bad_request(
            "the patched object is not a JSON object",
        ));
    }
    let storage_rt = kinds::storage_type(inner, rt);
    set_type_meta(&storage_rt, &mut new);
    let name = meta_str(old, "name").to_string();
    // Identity and lifecycle fields belong to the server.
    {
        let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
        let m = metadata_mut(&mut new);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match old_meta.get(field) {
                Some(v) => {
                    m.insert(field.into(), v.clone());
                }
                None => {
                    m.remove(field);
                }
            }
        }
        m.remove("selfLink");
    }
    match opts.subresource.as_deref() {
        Some("status") if rt.builtin && rt.group.is_empty() && rt.plural == "pods" => {
            // pods/status takes metadata with the status, as Kubernetes' pod status strategy
            // does: it resets only spec, deletionTimestamp and ownerReferences (kubelets once
            // corrupted owner references). The identity fields were restored above.
            if let Some(spec) = old.get("spec") {
                new["spec"] = spec.clone();
            }
            let owners = old.pointer("/metadata/ownerReferences").cloned();
            let m = metadata_mut(&mut new);
            match owners {
                Some(o) => {
                    m.insert("ownerReferences".into(), o);
                }
                None => {
                    m.remove("ownerReferences");
                }
            }
        }
        Some("status") => {
            // The status subresource changes status (and managedFields) only.
            let mut merged = (**old).clone();
            match new.get("status") {
                Some(s) => merged["status"] = s.clone(),
                None => {
                    if let Value::Object(m) = &mut merged {
                        m.remove("status");
                    }
                }
            }
            if let Some(mf) = new.pointer("/metadata/managedFields") {
                metadata_mut(&mut merged).insert("managedFields".into(), mf.clone());
            }
            new = merged;
        }
        Some("resize") => {
            new = kinds::pods_resize(old, &new)?;
        }
        _ => {
            if rt.has_subresource("status") {
                // The main endpoint ignores status when a status subresource exists.
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Value::Object(m) = &mut new {
                            m.remove("status");
                        }
                    }
                }
            }
        }
    }
    if meta::is_deleting(old) {
        let before = meta::finalizers(old);
        if let Some(added) = meta::finalizers(&new).iter().find(|f| !before.contains(f)) {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                &name,
                vec![crate::status::Cause {
                    reason: "FieldValueForbidden".into(),
                    message: format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{\"{added}\"}}"
                    ),
                    field: "metadata.finalizers".into(),
                }],
            ));
        }
    }
    let mut new = schema_check(rt, new, Some(old), opts.strict)?;
    kinds::validate_update(rt, old, &new, opts.subresource.as_deref())?;
    kinds::validate_metadata(rt, &new)?;
    if meta::spec_part(old) != meta::spec_part(&new) {
        let generation = meta::get_i64(old, "/metadata/generation").unwrap_or(0) + 1;
        metadata_mut(&mut new).insert("generation".into(), json!(generation));
    }
    if !applied {
        new = apply::record_update(
            Some(old),
            &new,
            &opts.manager,
            opts.subresource.as_deref(),
            &rt.api_version(),
            &meta::now(),
            &ResourceLists(rt),
        );
    }
    if without_volatile(old) == without_volatile(&new) {
        // No-op writes keep the resourceVersion and emit no watch event, as in Kubernetes.
        return Ok(served(rt, old.clone()));
    }
    if opts.dry_run {
        let mut preview = new;
        metadata_mut(&mut preview).insert(
            "resourceVersion".into(),
            json!(meta_str(old, "resourceVersion")),
        );
        return Ok(std::sync::Arc::new(conversion::to_served(rt, &preview)));
    }
    if meta::is_deleting(&new) && meta::finalizers(&new).is_empty() && kinds::finalizable(rt, &new)
    {
        // The last finalizer is gone: the deletion completes now.
        let stored = inner.put(&rt.storage, new);
        let ns = meta_str(&stored, "namespace").to_string();
        let gone = inner.remove(&rt.storage, &ns, &name).unwrap_or(stored);
        crate::delete::collect_dependents(inner, &gone);
        return Ok(served(rt, gone));
    }
    let stored = inner.put(&rt.storage, new);
    kinds::after_write(inner, rt, &stored)?;
    Ok(served(rt, stored))
}
