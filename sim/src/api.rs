//! Resource requests: verbs on /api and /apis paths, answered from the store.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::delete::{self, DeleteOptions, Deleted};
use crate::registry::ResourceType;
use crate::route::ResourcePath;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Obj, meta_str};
use crate::table::{self, IncludeObject};
use crate::write::{self, PatchKind, WriteOptions};
use crate::{meta, pods};

/// A request, reduced to what the API needs.
#[derive(Clone)]
pub struct Request {
    pub method: http::Method,
    pub query: HashMap<String, String>,
    pub accept: String,
    pub content_type: String,
    pub user_agent: String,
    pub body: Bytes,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    /// The object in the body: JSON, or YAML for apply patches.
    pub fn body_value(&self) -> Result<Value, ApiError> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        if self.content_type.starts_with(crate::protobuf::CONTENT_TYPE) {
            return crate::protobuf::to_json(&self.body).map_err(|e| match e {
                crate::protobuf::ProtoError::Unsupported(_) => {
                    ApiError::new(415, "UnsupportedMediaType", e.to_string())
                }
                _ => ApiError::bad_request(format!("error decoding protobuf: {e}")),
            });
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(v) => Ok(v),
            Err(json_err) => {
                if self.content_type.contains("yaml") {
                    let text = std::str::from_utf8(&self.body).map_err(|e| {
                        ApiError::bad_request(format!("the body is not UTF-8: {e}"))
                    })?;
                    serde_saphyr::from_str::<Value>(text)
                        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
                } else {
                    Err(ApiError::bad_request(format!(
                        "the body is not valid JSON: {json_err}"
                    )))
                }
            }
        }
    }

    /// The field manager: `?fieldManager=`, else the user agent's program name, as the API server does.
    fn manager(&self) -> String {
        match self.param("fieldManager") {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => self
                .user_agent
                .split('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("unknown")
                .chars()
                .take(128)
                .collect(),
        }
    }

    fn write_options(&self, subresource: Option<&str>) -> WriteOptions {
        WriteOptions {
            manager: self.manager(),
            dry_run: self.param("dryRun").is_some_and(|v| !v.is_empty()),
            strict: self.param("fieldValidation") == Some("Strict"),
            subresource: subresource.map(String::from),
        }
    }

    pub fn wants_table(&self) -> bool {
        table::wants_table(&self.accept)
    }
}

/// What a handler answers: a JSON document with a status code, or a watch stream.
pub enum Reply {
    Json(u16, Value),
    Watch(crate::watch::WatchRequest),
}

fn ok(v: &Obj) -> Reply {
    Reply::Json(200, (**v).clone())
}

/// The verb name used in metrics, as the API server's audit/metrics label it.
pub fn verb_of(req: &Request, path: &ResourcePath) -> &'static str {
    use http::Method;
    match (&req.method, &path.name) {
        (&Method::GET, None) if req.flag("watch") => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) if req.content_type.starts_with("application/apply-patch") => "apply",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, None) => "deletecollection",
        (&Method::DELETE, Some(_)) => "delete",
        _ => "other",
    }
}

pub fn handle(
    cluster: &Arc<Cluster>,
    req: &Request,
    path: &ResourcePath,
) -> Result<Reply, ApiError> {
    let rt = cluster
        .store
        .read(|s| s.registry.find(&path.group, &path.version, &path.plural))
        .ok_or_else(|| {
            ApiError::not_found_path(&format!(
                "{}{}/{}",
                if path.group.is_empty() { "" } else { "apis/" },
                path.group,
                path.plural
            ))
        })?;
    if let Some(sub) = &path.subresource
        && !rt.has_subresource(sub)
    {
        return Err(ApiError::not_found_path(&format!("{}/{sub}", rt.plural)));
    }
    // Cluster-scoped kinds ignore a namespace in the path; namespaced ones need it for writes.
    let ns = if rt.namespaced {
        path.namespace.clone()
    } else {
        None
    };
    let store_ns = ns.clone().unwrap_or_default();
    use http::Method;
    match (&req.method, &path.name, path.subresource.as_deref()) {
        (&Method::GET, None, _) if req.flag("watch") => Ok(Reply::Watch(
            crate::watch::WatchRequest::from_request(rt, ns, req)?,
        )),
        (&Method::GET, None, _) => list(cluster, &rt, ns.as_deref(), req),
        (&Method::GET, Some(name), Some("scale")) => {
            let obj = get(cluster, &rt, &store_ns, name)?;
            Ok(Reply::Json(200, scale_of(&rt, &obj)))
        }
        (&Method::GET, Some(name), _) => {
            let obj = get(cluster, &rt, &store_ns, name)?;
            if req.wants_table() {
                let include = IncludeObject::parse(req.param("includeObject"));
                let meta = json!({"resourceVersion": meta_str(&obj, "resourceVersion")});
                return Ok(Reply::Json(200, table::table(&rt, &[&obj], meta, include)));
            }
            Ok(ok(&obj))
        }
        (&Method::POST, None, None) => {
            if rt.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "create {} needs a namespace: POST to /.../namespaces/<ns>/{}",
                    rt.plural, rt.plural
                )));
            }
            let body = req.body_value()?;
            let opts = req.write_options(None);
            let created = cluster
                .store
                .write(|s| write::create(s, &rt, &store_ns, body, &opts))?;
            Ok(Reply::Json(201, (*created).clone()))
        }
        (&Method::POST, Some(name), Some("binding")) => {
            let body = req.body_value()?;
            let node = body
                .pointer("/target/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            cluster
                .store
                .write(|s| pods::bind(s, &store_ns, name, &node))?;
            Ok(Reply::Json(
                201,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        (&Method::POST, Some(name), Some("token")) => cluster
            .store
            .read(|s| crate::tokens::request(&cluster.tokens, s, &store_ns, name, req)),
        (&Method::POST, Some(name), Some("eviction")) => {
            cluster
                .store
                .write(|s| delete::delete(s, &rt, &store_ns, name, &DeleteOptions::default()))?;
            Ok(Reply::Json(
                201,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        (&Method::PUT, Some(name), Some("scale")) => {
            let body = req.body_value()?;
            let replicas = body
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .ok_or_else(|| ApiError::bad_request("a Scale needs spec.replicas"))?;
            set_scale(cluster, &rt, &store_ns, name, replicas, req)
        }
        (&Method::PUT, Some(name), sub) => {
            let body = req.body_value()?;
            let opts = req.write_options(sub);
            let updated = cluster
                .store
                .write(|s| write::update(s, &rt, &store_ns, name, body, &opts))?;
            Ok(ok(&updated))
        }
        (&Method::PATCH, Some(name), Some("scale")) => {
            let obj = get(cluster, &rt, &store_ns, name)?;
            let scale = scale_of(&rt, &obj);
            let body = req.body_value()?;
            let patched = match PatchKind::from_content_type(&req.content_type, false) {
                Some(PatchKind::Json) => crate::patch::json_patch(&scale, &body)
                    .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?,
                _ => crate::patch::merge_patch(&scale, &body),
            };
            let replicas = patched
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .ok_or_else(|| ApiError::bad_request("a Scale needs spec.replicas"))?;
            set_scale(cluster, &rt, &store_ns, name, replicas, req)
        }
        (&Method::PATCH, Some(name), sub) => {
            let kind = PatchKind::from_content_type(&req.content_type, req.flag("force"))
                .ok_or_else(|| {
                    ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format ({}); accepted: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml",
                            req.content_type
                        ),
                    )
                })?;
            if matches!(kind, PatchKind::Apply { .. })
                && req.param("fieldManager").is_none_or(str::is_empty)
            {
                return Err(ApiError::bad_request(
                    "PATCH, fieldManager is required for apply requests",
                ));
            }
            let body = req.body_value()?;
            let opts = req.write_options(sub);
            let patched = cluster
                .store
                .write(|s| write::patch_object(s, &rt, &store_ns, name, kind, body, &opts))?;
            Ok(ok(&patched))
        }
        (&Method::DELETE, Some(name), None) => {
            let mut opts = delete_options(req);
            if let Ok(body) = req.body_value() {
                opts.merge_body(&body);
            }
            let outcome = cluster
                .store
                .write(|s| delete::delete(s, &rt, &store_ns, name, &opts))?;
            match outcome {
                Deleted::Gone(obj) => Ok(ok(&obj)),
                Deleted::Pending(obj) => Ok(Reply::Json(200, (*obj).clone())),
            }
        }
        (&Method::DELETE, None, None) => delete_collection(cluster, &rt, ns.as_deref(), req),
        _ => Err(ApiError::method_not_allowed(format!(
            "{} is not supported on {}",
            req.method,
            rt.qualified()
        ))),
    }
}

fn delete_options(req: &Request) -> DeleteOptions {
    DeleteOptions {
        grace_period_seconds: req.param("gracePeriodSeconds").and_then(|g| g.parse().ok()),
        propagation: req.param("propagationPolicy").map(String::from),
        precondition_uid: None,
        precondition_rv: None,
        dry_run: req.param("dryRun").is_some_and(|v| !v.is_empty()),
    }
}

fn get(cluster: &Cluster, rt: &ResourceType, ns: &str, name: &str) -> Result<Obj, ApiError> {
    cluster
        .store
        .read(|s| s.get(&rt.storage, ns, name))
        .map(|o| write::served(rt, o))
        .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
}

/// Parsed `?labelSelector=` and `?fieldSelector=`.
pub fn selectors(req: &Request) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid labelSelector: {e}")))?;
    let fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid fieldSelector: {e}")))?;
    Ok((labels, fields))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: u64,
    start: (String, String),
}

fn list(
    cluster: &Cluster,
    rt: &ResourceType,
    ns: Option<&str>,
    req: &Request,
) -> Result<Reply, ApiError> {
    let (labels, fields) = selectors(req)?;
    let limit: usize = req
        .param("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let cont = match req.param("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            Some(
                serde_json::from_slice::<Continue>(&bytes)
                    .map_err(|_| ApiError::bad_request("invalid continue token"))?,
            )
        }
        None => None,
    };
    // Judged against the continue floor, not the watch history: a real API server serves a
    // continue token from etcd until etcd compacts, however short its watch cache's window.
    let (objects, rv, continue_floor) = cluster
        .store
        .read(|s| (s.list(&rt.storage, ns), s.rv(), s.continue_floor()));
    if let Some(c) = &cont
        && c.rv < continue_floor
    {
        return Err(ApiError::expired(
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
        ));
    }
    let list_rv = cont.as_ref().map_or(rv, |c| c.rv);
    let mut matching = objects.into_iter().filter(|o| {
        let key = (
            meta_str(o, "namespace").to_string(),
            meta_str(o, "name").to_string(),
        );
        cont.as_ref().is_none_or(|c| key > c.start)
    });
    let mut items: Vec<Value> = vec![];
    let mut last_key = None;
    for o in matching.by_ref() {
        let served = write::served(rt, o);
        if !labels.matches(&served) || !fields.matches(&served) {
            continue;
        }
        if items.len() == limit {
            break;
        }
        last_key = Some((
            meta_str(&served, "namespace").to_string(),
            meta_str(&served, "name").to_string(),
        ));
        items.push((*served).clone());
    }
    let remaining = matching.count();
    let mut list_meta = json!({"resourceVersion": list_rv.to_string()});
    if items.len() == limit
        && let Some(start) = last_key
    {
        let token = serde_json::to_vec(&Continue { rv: list_rv, start })
            .map(|b| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
            .unwrap_or_default();
        list_meta["continue"] = json!(token);
        list_meta["remainingItemCount"] = json!(remaining + 1);
    }
    if req.wants_table() {
        let include = IncludeObject::parse(req.param("includeObject"));
        let refs: Vec<&Value> = items.iter().collect();
        return Ok(Reply::Json(
            200,
            table::table(rt, &refs, list_meta, include),
        ));
    }
    Ok(Reply::Json(
        200,
        json!({
            "kind": rt.list_kind,
            "apiVersion": rt.api_version(),
            "metadata": list_meta,
            "items": items,
        }),
    ))
}

fn delete_collection(
    cluster: &Cluster,
    rt: &ResourceType,
    ns: Option<&str>,
    req: &Request,
) -> Result<Reply, ApiError> {
    let (labels, fields) = selectors(req)?;
    let mut opts = delete_options(req);
    if let Ok(body) = req.body_value() {
        opts.merge_body(&body);
    }
    let deleted = cluster.store.write(|s| {
        let mut out = vec![];
        for o in s.list(&rt.storage, ns) {
            let served = write::served(rt, o.clone());
            if labels.matches(&served) && fields.matches(&served) {
                let name = meta_str(&o, "name").to_string();
                let ns = meta_str(&o, "namespace").to_string();
                if let Ok(Deleted::Gone(d) | Deleted::Pending(d)) =
                    delete::delete(s, rt, &ns, &name, &opts)
                {
                    out.push((*d).clone());
                }
            }
        }
        out
    });
    Ok(Reply::Json(
        200,
        json!({"kind": rt.list_kind, "apiVersion": rt.api_version(), "metadata": {}, "items": deleted}),
    ))
}

/// autoscaling/v1 Scale of an object with a scale subresource.
fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let paths = rt.scale.clone();
    let read =
        |p: Option<&String>| p.and_then(|p| obj.pointer(&meta::dotted_to_pointer(p)).cloned());
    let spec = read(paths.as_ref().map(|p| &p.spec_replicas)).unwrap_or(json!(0));
    let status = read(paths.as_ref().map(|p| &p.status_replicas)).unwrap_or(json!(0));
    let mut scale = json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta_str(obj, "name"),
            "namespace": meta_str(obj, "namespace"),
            "uid": meta_str(obj, "uid"),
            "resourceVersion": meta_str(obj, "resourceVersion"),
            "creationTimestamp": meta_str(obj, "creationTimestamp"),
        },
        "spec": {"replicas": spec},
        "status": {"replicas": status},
    });
    if let Some(sel) = read(paths.as_ref().and_then(|p| p.label_selector.as_ref())) {
        scale["status"]["selector"] = sel;
    }
    scale
}

fn set_scale(
    cluster: &Cluster,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    replicas: i64,
    req: &Request,
) -> Result<Reply, ApiError> {
    let pointer = rt
        .scale
        .as_ref()
        .map(|p| meta::dotted_to_pointer(&p.spec_replicas))
        .unwrap_or_else(|| "/spec/replicas".into());
    let opts = req.write_options(None);
    let updated = cluster.store.write(|s| {
        let old = s
            .get(&rt.storage, ns, name)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let mut new = (*old).clone();
        meta::set_pointer(&mut new, &pointer, json!(replicas));
        write::commit_update(s, rt, &old, new, &opts, false)
    })?;
    Ok(Reply::Json(200, scale_of(rt, &updated)))
}
