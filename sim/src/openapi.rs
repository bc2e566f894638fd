//! /openapi/v3: enough of the OpenAPI documents for kubectl.
//!
//! kubectl reads the PATCH operation of each kind to learn that the server validates fields
//! (`fieldValidation` parameter), so `kubectl apply` lets the server reject unknown fields. We
//! deliberately do not advertise strategic-merge-patch request bodies: kubectl then computes
//! strategic patches for built-ins from its compiled-in types and merge patches for custom
//! resources, which is what it does against real servers for CRDs.
//! https://kubernetes.io/docs/concepts/overview/kubernetes-api/#openapi-v3

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::registry::{Registry, ResourceType};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// GET /openapi/v3: one entry per group-version, each with a content hash as real servers do.
pub fn root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    let mut gvs: Vec<(String, String)> = vec![];
    for t in registry.all() {
        let gv = (t.group.clone(), t.version.clone());
        if !gvs.contains(&gv) {
            gvs.push(gv);
        }
    }
    for (g, v) in gvs {
        let doc = document(registry, &g, &v);
        let hash = hex(&Sha256::digest(doc.to_string().as_bytes()));
        let path = gv_path(&g, &v);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", &hash[..32])}),
        );
    }
    json!({"paths": paths})
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn schema_name(t: &ResourceType) -> String {
    let group = if t.group.is_empty() {
        "core"
    } else {
        t.group.as_str()
    };
    format!("{group}.{}.{}", t.version, t.kind)
}

fn operation(t: &ResourceType, action: &str, params: &[&str]) -> Value {
    let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
    let mut op = json!({
        "operationId": format!("{action}{}", t.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "parameters": params.iter().map(|p| json!({"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": true}})).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(t))}}}}},
    });
    if action == "patch" {
        op["requestBody"] = json!({"content": {
            "application/apply-patch+yaml": {"schema": {"type": "object"}},
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
        }});
    }
    if action == "put" || action == "post" {
        op["requestBody"] = json!({"content": {"*/*": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(t))}}}});
    }
    op
}

/// GET /openapi/v3/api/v1, /openapi/v3/apis/{group}/{version}
pub fn document(registry: &Registry, group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in registry.in_group_version(group, version) {
        let base = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let collection = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{base}/{}", t.plural)
        };
        let write = ["dryRun", "fieldManager", "fieldValidation"];
        let patch_params = ["dryRun", "fieldManager", "fieldValidation", "force"];
        paths.insert(
            collection.clone(),
            json!({
                "get": operation(&t, "list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch"]),
                "post": operation(&t, "post", &write),
                "delete": operation(&t, "deletecollection", &["labelSelector"]),
            }),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": operation(&t, "get", &[]),
                "put": operation(&t, "put", &write),
                "patch": operation(&t, "patch", &patch_params),
                "delete": operation(&t, "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
            }),
        );
        let mut schema = t.openapi_schema.clone().unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": t.group, "version": t.version, "kind": t.kind}]);
        schemas.insert(schema_name(&t), schema);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
