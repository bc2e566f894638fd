//! DELETE: preconditions, graceful deletion, finalizers, propagation and garbage collection.
//!
//! https://kubernetes.io/docs/concepts/overview/working-with-objects/finalizers/
//! https://kubernetes.io/docs/concepts/architecture/garbage-collection/
//! https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-termination

use std::sync::Arc;

use serde_json::{Value, json};

use crate::kinds;
use crate::meta::{self, metadata_mut};
use crate::registry::ResourceType;
use crate::status::ApiError;
use crate::store::{Inner, Obj, meta_str};
use crate::write::served;

#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    /// Orphan, Background (default) or Foreground.
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Reads a DeleteOptions body (kubectl and kube-rs send one) over the query parameters.
    pub fn merge_body(&mut self, body: &Value) {
        if let Some(g) = body.get("gracePeriodSeconds").and_then(Value::as_i64) {
            self.grace_period_seconds = Some(g);
        }
        if let Some(p) = body.get("propagationPolicy").and_then(Value::as_str) {
            self.propagation = Some(p.to_string());
        }
        if body.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            self.propagation = Some("Orphan".into());
        }
        if let Some(u) = body.pointer("/preconditions/uid").and_then(Value::as_str) {
            self.precondition_uid = Some(u.to_string());
        }
        if let Some(r) = body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            self.precondition_rv = Some(r.to_string());
        }
        if body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            self.dry_run = true;
        }
    }
}

/// Whether the object is gone now or waits (grace period, finalizers).
pub enum Deleted {
    Gone(Obj),
    Pending(Obj),
}

pub fn delete(
    inner: &mut Inner,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let old = inner
        .get(&rt.storage, ns, name)
        .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
    if let Some(uid) = &opts.precondition_uid
        && uid != meta_str(&old, "uid")
    {
        return Err(ApiError::conflict(
            &rt.group,
            &rt.plural,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(&old, "uid")
            ),
        ));
    }
    if let Some(rv) = &opts.precondition_rv
        && rv != meta_str(&old, "resourceVersion")
    {
        return Err(ApiError::conflict(
            &rt.group,
            &rt.plural,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta_str(&old, "resourceVersion")
            ),
        ));
    }
    if opts.dry_run {
        return Ok(Deleted::Pending(served(rt, old)));
    }
    let is_pod = rt.builtin && rt.group.is_empty() && rt.plural == "pods";
    let is_namespace = rt.builtin && rt.group.is_empty() && rt.plural == "namespaces";
    let mut obj = (*old).clone();
    let already_deleting = meta::is_deleting(&old);
    let mut finalizers = meta::finalizers(&obj);
    match opts.propagation.as_deref() {
        Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
            finalizers.push("foregroundDeletion".into());
        }
        Some("Orphan") => orphan_dependents(inner, &old),
        _ => {}
    }
    let grace = if is_pod {
        pod_grace(&old, opts.grace_period_seconds)
    } else {
        0
    };
    if is_namespace {
        // The namespace controller empties it; deletion completes when nothing is left.
        delete_namespace_contents(inner, name);
    }
    let waiting_on_namespace = is_namespace && namespace_has_content(inner, name);
    if grace == 0 && finalizers.is_empty() && !waiting_on_namespace {
        let gone = inner
            .remove(&rt.storage, ns, name)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        kinds::after_remove(inner, rt, &gone);
        collect_dependents(inner, &gone);
        return Ok(Deleted::Gone(served(rt, gone)));
    }
    {
        let m = metadata_mut(&mut obj);
        m.insert("finalizers".into(), json!(finalizers));
        if finalizers.is_empty() {
            m.remove("finalizers");
        }
        if !already_deleting {
            m.insert("deletionTimestamp".into(), json!(meta::time_in(grace)));
            let generation = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
            if generation > 0 {
                // The first graceful deletion bumps generation, as the API server does.
                m.insert("generation".into(), json!(generation + 1));
            }
        }
        let current = m.get("deletionGracePeriodSeconds").and_then(Value::as_i64);
        // A grace period can only be shortened once deletion started.
        if current.is_none_or(|c| grace < c) {
            m.insert("deletionGracePeriodSeconds".into(), json!(grace));
        }
    }
    if is_namespace {
        obj["status"]["phase"] = json!("Terminating");
    }
    if is_pod && grace == 0 && finalizers.is_empty() {
        let gone = inner
            .remove(&rt.storage, ns, name)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        collect_dependents(inner, &gone);
        return Ok(Deleted::Gone(served(rt, gone)));
    }
    if foreground_done(inner, &obj) {
        strip_finalizer(&mut obj, "foregroundDeletion");
        if meta::finalizers(&obj).is_empty() && grace == 0 && !waiting_on_namespace {
            inner.put(&rt.storage, obj);
            let gone = inner
                .remove(&rt.storage, ns, name)
                .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
            collect_dependents(inner, &gone);
            return Ok(Deleted::Gone(served(rt, gone)));
        }
    } else if finalizers.iter().any(|f| f == "foregroundDeletion") {
        delete_dependents(inner, &old);
    }
    if *old == obj {
        return Ok(Deleted::Pending(served(rt, old)));
    }
    let stored = inner.put(&rt.storage, obj);
    Ok(Deleted::Pending(served(rt, stored)))
}

/// Pods bound to a node get their grace period (default: spec.terminationGracePeriodSeconds);
/// pods no kubelet runs are deleted at once, as in Kubernetes.
fn pod_grace(pod: &Value, requested: Option<i64>) -> i64 {
    let bound = meta::get_str(pod, "/spec/nodeName").is_some_and(|n| !n.is_empty());
    let phase = meta::get_str(pod, "/status/phase").unwrap_or("");
    if !bound || phase == "Succeeded" || phase == "Failed" {
        return 0;
    }
    requested
        .or_else(|| meta::get_i64(pod, "/spec/terminationGracePeriodSeconds"))
        .unwrap_or(30)
        .max(0)
}

fn strip_finalizer(obj: &mut Value, name: &str) {
    let left: Vec<String> = meta::finalizers(obj)
        .into_iter()
        .filter(|f| f != name)
        .collect();
    let m = metadata_mut(obj);
    if left.is_empty() {
        m.remove("finalizers");
    } else {
        m.insert("finalizers".into(), json!(left));
    }
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Every stored object that names `owner` in its ownerReferences, with its storage key.
fn dependents(inner: &Inner, owner: &Value) -> Vec<(String, Obj)> {
    let uid = meta_str(owner, "uid");
    if uid.is_empty() {
        return vec![];
    }
    let storages: Vec<String> = inner.storages().cloned().collect();
    let mut out = vec![];
    for storage in storages {
        for obj in inner.list(&storage, None) {
            if owner_uids(&obj).iter().any(|u| u == uid) {
                out.push((storage.clone(), obj));
            }
        }
    }
    out
}

fn storage_type(inner: &Inner, storage: &str) -> Option<Arc<ResourceType>> {
    inner
        .registry
        .all()
        .iter()
        .find(|t| t.storage == storage)
        .cloned()
}

/// Background garbage collection: dependents whose owners are all gone are deleted.
pub fn collect_dependents(inner: &mut Inner, gone: &Value) {
    for (storage, dep) in dependents(inner, gone) {
        let owners_left = owner_uids(&dep)
            .into_iter()
            .any(|u| u != meta_str(gone, "uid") && uid_exists(inner, &u));
        if owners_left || meta::is_deleting(&dep) {
            continue;
        }
        if let Some(rt) = storage_type(inner, &storage) {
            let _ = delete(
                inner,
                &rt,
                meta_str(&dep, "namespace"),
                meta_str(&dep, "name"),
                &DeleteOptions::default(),
            );
        }
    }
    release_foreground_owners(inner);
}

/// An object created naming only owners that do not exist (deleted while the creator still
/// held a stale cache, say) is deleted in the background, as Kubernetes' garbage collector does
/// once it has looked the owners up. An owner of a kind this server does not serve is assumed
/// to exist (the collector cannot look it up either).
pub fn collect_if_orphaned(inner: &mut Inner, rt: &ResourceType, created: &Value) {
    let Some(refs) = created
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    else {
        return;
    };
    if refs.is_empty() || refs.iter().any(|r| owner_exists(inner, created, r)) {
        return;
    }
    let _ = delete(
        inner,
        rt,
        meta_str(created, "namespace"),
        meta_str(created, "name"),
        &DeleteOptions::default(),
    );
}

fn owner_exists(inner: &Inner, dependent: &Value, owner: &Value) -> bool {
    let field = |k: &str| owner.get(k).and_then(Value::as_str).unwrap_or_default();
    let group = field("apiVersion")
        .rsplit_once('/')
        .map_or("", |(group, _)| group);
    let Some(owner_type) = inner
        .registry
        .all()
        .iter()
        .find(|t| t.kind == field("kind") && t.group == group)
        .cloned()
    else {
        return true;
    };
    let namespace = if owner_type.namespaced {
        meta_str(dependent, "namespace")
    } else {
        ""
    };
    inner
        .get(&owner_type.storage, namespace, field("name"))
        .is_some_and(|o| meta_str(&o, "uid") == field("uid"))
}

fn uid_exists(inner: &Inner, uid: &str) -> bool {
    let storages: Vec<String> = inner.storages().cloned().collect();
    storages.iter().any(|s| {
        inner
            .list(s, None)
            .iter()
            .any(|o| meta_str(o, "uid") == uid)
    })
}

fn delete_dependents(inner: &mut Inner, owner: &Value) {
    for (storage, dep) in dependents(inner, owner) {
        if let Some(rt) = storage_type(inner, &storage) {
            let _ = delete(
                inner,
                &rt,
                meta_str(&dep, "namespace"),
                meta_str(&dep, "name"),
                &DeleteOptions::default(),
            );
        }
    }
}

fn foreground_done(inner: &Inner, owner: &Value) -> bool {
    meta::finalizers(owner)
        .iter()
        .any(|f| f == "foregroundDeletion")
        && dependents(inner, owner).is_empty()
}

/// Owners deleted in the foreground lose their finalizer once their dependents are gone.
fn release_foreground_owners(inner: &mut Inner) {
    let storages: Vec<String> = inner.storages().cloned().collect();
    for storage in storages {
        for obj in inner.list(&storage, None) {
            if meta::is_deleting(&obj) && foreground_done(inner, &obj) {
                let mut o = (*obj).clone();
                strip_finalizer(&mut o, "foregroundDeletion");
                if meta::finalizers(&o).is_empty() {
                    inner.remove(&storage, meta_str(&o, "namespace"), meta_str(&o, "name"));
                } else {
                    inner.put(&storage, o);
                }
            }
        }
    }
}

fn orphan_dependents(inner: &mut Inner, owner: &Value) {
    let uid = meta_str(owner, "uid").to_string();
    for (storage, dep) in dependents(inner, owner) {
        let mut d = (*dep).clone();
        if let Some(Value::Array(refs)) = d.pointer_mut("/metadata/ownerReferences") {
            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
        }
        inner.put(&storage, d);
    }
}

fn namespace_has_content(inner: &Inner, ns: &str) -> bool {
    let types: Vec<Arc<ResourceType>> = inner.registry.all().to_vec();
    types
        .iter()
        .filter(|t| t.namespaced)
        .any(|t| !inner.list(&t.storage, Some(ns)).is_empty())
}

fn delete_namespace_contents(inner: &mut Inner, ns: &str) {
    let types: Vec<Arc<ResourceType>> = inner.registry.all().to_vec();
    for t in types
        .iter()
        .filter(|t| t.namespaced && t.conversion == crate::registry::Conversion::None)
    {
        for obj in inner.list(&t.storage, Some(ns)) {
            if !meta::is_deleting(&obj) {
                let _ = delete(
                    inner,
                    t,
                    ns,
                    meta_str(&obj, "name"),
                    &DeleteOptions::default(),
                );
            }
        }
    }
}

/// Namespaces in Terminating whose content is gone are removed (the namespace controller's job).
pub fn finish_namespaces(inner: &mut Inner) {
    let rt = inner.registry.core("namespaces");
    for ns in inner.list(&rt.storage, None) {
        let name = meta_str(&ns, "name").to_string();
        if meta::is_deleting(&ns)
            && !namespace_has_content(inner, &name)
            && meta::finalizers(&ns).is_empty()
        {
            inner.remove(&rt.storage, "", &name);
        }
    }
}
