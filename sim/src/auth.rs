//! Who a request comes from and whether it may proceed: bearer-token authentication, user
//! impersonation, RBAC authorization, the self-review kinds, and the controllers RBAC and tokens
//! need (ClusterRole aggregation, the token controller).
//!
//! https://kubernetes.io/docs/reference/access-authn-authz/authentication/
//! https://kubernetes.io/docs/reference/access-authn-authz/authentication/#user-impersonation
//! https://kubernetes.io/docs/reference/access-authn-authz/authorization/#checking-api-access

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::{Reply, Request};
use crate::cluster::Cluster;
use crate::rbac::{self, Attributes, Decision, MASTERS, Policy, PolicyRule, UserInfo};
use crate::route::{ResourcePath, Route};
use crate::status::ApiError;
use crate::store::{Inner, meta_str};

/// The user the admin token stands for (kubeadm's name for its admin credential).
pub const ADMIN_USER: &str = "kubernetes-admin";
const ANONYMOUS: &str = "system:anonymous";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

pub fn admin() -> UserInfo {
    UserInfo {
        name: ADMIN_USER.to_string(),
        uid: String::new(),
        groups: vec![MASTERS.to_string(), rbac::AUTHENTICATED.to_string()],
    }
}

/// The user of a bearer token: the admin's, or a valid ServiceAccount token's.
pub fn authenticate(cluster: &Cluster, bearer: &str) -> Option<UserInfo> {
    if bearer.is_empty() {
        return None;
    }
    if bearer == cluster.identity.token {
        return Some(admin());
    }
    cluster
        .store
        .read(|s| cluster.tokens.authenticate(s, bearer))
}

fn storage(plural: &str) -> String {
    format!("{RBAC_GROUP}/{plural}")
}

/// The RBAC objects of a cluster, parsed.
pub fn policy(inner: &Inner) -> Policy {
    let list = |plural: &str| inner.list(&storage(plural), None);
    let (roles, cluster_roles, role_bindings, cluster_role_bindings) = (
        list("roles"),
        list("clusterroles"),
        list("rolebindings"),
        list("clusterrolebindings"),
    );
    Policy::from_objects(
        roles.iter().map(|o| &**o),
        cluster_roles.iter().map(|o| &**o),
        role_bindings.iter().map(|o| &**o),
        cluster_role_bindings.iter().map(|o| &**o),
    )
}

/// Authorizes without reading the store for system:masters, the admin's every request.
pub fn authorize(cluster: &Cluster, user: &UserInfo, a: &Attributes) -> Decision {
    if user.in_group(MASTERS) {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    cluster.store.read(policy).authorize(user, a)
}

/// 403 Forbidden as `responsewriters.Forbidden` writes it: details name the resource and object.
pub fn forbidden(user: &UserInfo, a: &Attributes, reason: &str) -> ApiError {
    let mut e = ApiError::new(
        403,
        "Forbidden",
        rbac::forbidden_message(&user.name, a, reason),
    );
    let set = |v: &str| (!v.is_empty()).then(|| v.to_string());
    e.name = set(&a.name);
    e.group = set(&a.api_group);
    e.kind = set(&a.resource);
    e
}

/// `metadata.name=X` of a field selector, which makes a list or watch one of a named object
/// (RequestInfoFactory does the same, so resourceNames rules apply to such watches).
fn name_from_field_selector(selector: &str) -> Option<&str> {
    selector.split(',').find_map(|term| {
        let term = term.trim();
        term.strip_prefix("metadata.name==")
            .or_else(|| term.strip_prefix("metadata.name="))
            .filter(|n| !n.is_empty())
    })
}

/// The request's authorization attributes, as RequestInfoFactory derives them.
pub fn attributes(route: &Route, req: &Request, url_path: &str) -> Attributes {
    use http::Method;
    let Route::Resource(path) = route else {
        return Attributes::non_resource(&req.method.as_str().to_lowercase(), url_path);
    };
    let mut name = path.name.clone().unwrap_or_default();
    let verb = match (&req.method, path.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) => {
            if let Some(n) = req
                .param("fieldSelector")
                .and_then(name_from_field_selector)
            {
                name = n.to_string();
            }
            if matches!(req.param("watch"), Some("true" | "1")) {
                "watch"
            } else {
                "list"
            }
        }
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        (m, _) => return Attributes::non_resource(&m.as_str().to_lowercase(), url_path),
    };
    // A namespace's own requests are in that namespace (GET /api/v1/namespaces/x is in "x").
    let namespace = match (&path.namespace, path.group.as_str(), path.plural.as_str()) {
        (Some(ns), _, _) => ns.clone(),
        (None, "", "namespaces") => name.clone(),
        (None, _, _) => String::new(),
    };
    Attributes {
        verb: verb.to_string(),
        resource_request: true,
        api_group: path.group.clone(),
        api_version: path.version.clone(),
        resource: path.plural.clone(),
        subresource: path.subresource.clone().unwrap_or_default(),
        namespace,
        name,
        path: url_path.to_string(),
    }
}

/// The `Impersonate-*` headers of a request.
#[derive(Debug, Default, Clone)]
pub struct Impersonation {
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub uid: Option<String>,
}

impl Impersonation {
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(String::from)
                .collect()
        };
        Impersonation {
            user: values("impersonate-user").into_iter().next(),
            groups: values("impersonate-group"),
            uid: values("impersonate-uid").into_iter().next(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.groups.is_empty() && self.uid.is_none()
    }
}

/// Acts as the impersonated user if `caller` may impersonate every part of it (verb
/// `impersonate` on users, groups, serviceaccounts and uids), as the impersonation filter does.
pub fn impersonate(
    cluster: &Cluster,
    caller: UserInfo,
    wanted: &Impersonation,
) -> Result<UserInfo, ApiError> {
    if wanted.is_empty() {
        return Ok(caller);
    }
    let Some(name) = &wanted.user else {
        return Err(ApiError::internal(format!(
            "requested {:?} without impersonating a user",
            wanted.groups
        )));
    };
    let mut checks = vec![];
    let sa = rbac::parse_service_account_user(name);
    checks.push(match sa {
        Some((ns, sa_name)) => {
            Attributes::resource("impersonate", "", "serviceaccounts", ns).named(sa_name)
        }
        None => Attributes::resource("impersonate", "", "users", "").named(name),
    });
    for g in &wanted.groups {
        checks.push(Attributes::resource("impersonate", "", "groups", "").named(g));
    }
    if let Some(uid) = &wanted.uid {
        checks.push(
            Attributes::resource("impersonate", "authentication.k8s.io", "uids", "").named(uid),
        );
    }
    for a in &checks {
        let d = authorize(cluster, &caller, a);
        if !d.allowed {
            return Err(forbidden(&caller, a, &d.reason));
        }
    }
    let mut groups = wanted.groups.clone();
    if let (Some((ns, _)), true) = (sa, wanted.groups.is_empty()) {
        groups = rbac::service_account_groups(ns);
    }
    if name != ANONYMOUS && !groups.iter().any(|g| g == rbac::AUTHENTICATED) {
        groups.push(rbac::AUTHENTICATED.to_string());
    }
    Ok(UserInfo {
        name: name.clone(),
        uid: wanted.uid.clone().unwrap_or_default(),
        groups,
    })
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn review_invalid(kind: &str, group: &str, message: &str) -> ApiError {
    ApiError::invalid(
        group,
        kind,
        "",
        vec![crate::status::Cause {
            reason: "FieldValueRequired".into(),
            message: message.into(),
            field: "spec".into(),
        }],
    )
}

/// POST of a SelfSubjectAccessReview, SelfSubjectRulesReview or SelfSubjectReview: answered from
/// the request, never stored. https://kubernetes.io/docs/reference/access-authn-authz/authorization/#checking-api-access
pub fn review(
    cluster: &Cluster,
    user: &UserInfo,
    path: &ResourcePath,
    req: &Request,
) -> Result<Reply, ApiError> {
    if req.method != http::Method::POST || path.name.is_some() {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let mut body = req.body_value()?;
    if !body.is_object() {
        body = json!({});
    }
    let kind_meta = |body: &mut Value, kind: &str| {
        body["apiVersion"] = json!(format!("{}/v1", path.group));
        body["kind"] = json!(kind);
        body["metadata"] = json!({"creationTimestamp": null});
    };
    match path.plural.as_str() {
        "selfsubjectaccessreviews" => {
            let spec = body.get("spec").cloned().unwrap_or(json!({}));
            let a = if let Some(r) = spec.get("resourceAttributes") {
                Attributes {
                    verb: str_at(r, "/verb").into(),
                    resource_request: true,
                    api_group: str_at(r, "/group").into(),
                    api_version: str_at(r, "/version").into(),
                    resource: str_at(r, "/resource").into(),
                    subresource: str_at(r, "/subresource").into(),
                    namespace: str_at(r, "/namespace").into(),
                    name: str_at(r, "/name").into(),
                    path: String::new(),
                }
            } else if let Some(n) = spec.get("nonResourceAttributes") {
                Attributes::non_resource(str_at(n, "/verb"), str_at(n, "/path"))
            } else {
                return Err(review_invalid(
                    "SelfSubjectAccessReview",
                    &path.group,
                    "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
                ));
            };
            let d = authorize(cluster, user, &a);
            kind_meta(&mut body, "SelfSubjectAccessReview");
            let mut status = json!({"allowed": d.allowed});
            if !d.reason.is_empty() {
                status["reason"] = json!(d.reason);
            }
            body["status"] = status;
            Ok(Reply::Json(201, body))
        }
        "selfsubjectrulesreviews" => {
            let ns = str_at(&body, "/spec/namespace").to_string();
            let rules = cluster.store.read(policy).rules_for(user, &ns);
            let (non_resource, resource): (Vec<PolicyRule>, Vec<PolicyRule>) = rules
                .into_iter()
                .partition(|r| !r.non_resource_urls.is_empty());
            kind_meta(&mut body, "SelfSubjectRulesReview");
            body["status"] = json!({
                "resourceRules": resource.iter().map(|r| json!({
                    "verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources,
                    "resourceNames": r.resource_names,
                })).collect::<Vec<_>>(),
                "nonResourceRules": non_resource.iter().map(|r| json!({
                    "verbs": r.verbs, "nonResourceURLs": r.non_resource_urls,
                })).collect::<Vec<_>>(),
                "incomplete": false,
            });
            Ok(Reply::Json(201, body))
        }
        "selfsubjectreviews" => {
            kind_meta(&mut body, "SelfSubjectReview");
            body["status"] = json!({"userInfo": {
                "username": user.name, "uid": user.uid, "groups": user.groups,
            }});
            Ok(Reply::Json(201, body))
        }
        other => Err(ApiError::not_found_path(other)),
    }
}

/// The object a write asks to store: the body of a create or replace, or the current object
/// with a patch applied (PolicyRule lists have no merge key, so every non-JSON patch replaces
/// `rules` whole, as a merge patch does).
fn intended_object(cluster: &Cluster, a: &Attributes, req: &Request) -> Result<Value, ApiError> {
    let body = req.body_value()?;
    if a.verb != "patch" {
        return Ok(body);
    }
    let ns = if a.resource.starts_with("cluster") {
        ""
    } else {
        a.namespace.as_str()
    };
    let Some(current) = cluster
        .store
        .read(|s| s.get(&storage(&a.resource), ns, &a.name))
    else {
        return Ok(body);
    };
    match crate::write::PatchKind::from_content_type(&req.content_type, false) {
        Some(crate::write::PatchKind::Json) => crate::patch::json_patch(&current, &body)
            .map_err(|e| ApiError::new(422, "Invalid", e.to_string())),
        _ => Ok(crate::patch::merge_patch(&current, &body)),
    }
}

/// RBAC's privilege-escalation prevention for writes of Roles, ClusterRoles and their bindings:
/// a user may only grant what they hold, unless they have `escalate` on the role (for roles) or
/// `bind` on the referenced role (for bindings).
/// https://kubernetes.io/docs/reference/access-authn-authz/rbac/#privilege-escalation-prevention-and-bootstrapping
pub fn check_escalation(
    cluster: &Cluster,
    user: &UserInfo,
    a: &Attributes,
    req: &Request,
) -> Result<(), ApiError> {
    let writes = matches!(a.verb.as_str(), "create" | "update" | "patch");
    if user.in_group(MASTERS) || a.api_group != RBAC_GROUP || !writes || !a.subresource.is_empty() {
        return Ok(());
    }
    let body = intended_object(cluster, a, req)?;
    let name = match meta_str(&body, "name") {
        "" => a.name.clone(),
        n => n.to_string(),
    };
    let policy = cluster.store.read(policy);
    let (rules, permission) = match a.resource.as_str() {
        "roles" | "clusterroles" => {
            let rules: Vec<PolicyRule> = body
                .get("rules")
                .cloned()
                .and_then(|r| serde_json::from_value(r).ok())
                .unwrap_or_default();
            let escalate = Attributes {
                verb: "escalate".into(),
                ..a.clone()
            }
            .named(&name);
            (rules, escalate)
        }
        "rolebindings" | "clusterrolebindings" => {
            let kind = str_at(&body, "/roleRef/kind");
            let role_name = str_at(&body, "/roleRef/name");
            let role = match kind {
                "ClusterRole" => policy.cluster_roles.iter().find(|r| r.name == role_name),
                _ => policy
                    .roles
                    .iter()
                    .find(|r| r.name == role_name && r.namespace == a.namespace),
            };
            let resource = if kind == "ClusterRole" {
                "clusterroles"
            } else {
                "roles"
            };
            let bind =
                Attributes::resource("bind", RBAC_GROUP, resource, &a.namespace).named(role_name);
            (role.map(|r| r.rules.clone()).unwrap_or_default(), bind)
        }
        _ => return Ok(()),
    };
    if policy.authorize(user, &permission).allowed || policy.covers(user, &a.namespace, &rules) {
        return Ok(());
    }
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{}.{RBAC_GROUP} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held",
            a.resource, user.name, user.groups
        ),
    );
    e.name = Some(name);
    e.group = Some(RBAC_GROUP.to_string());
    e.kind = Some(a.resource.clone());
    Err(e)
}

/// Fills aggregated ClusterRoles until nothing changes. Returns how many writes it made.
pub fn aggregate(inner: &mut Inner) -> usize {
    let key = storage("clusterroles");
    let mut writes = 0;
    // view feeds edit feeds admin: a few rounds reach the fixpoint; the bound stops a cycle.
    for _ in 0..8 {
        let changes = policy(inner).aggregate();
        if changes.is_empty() {
            break;
        }
        for (name, rules) in changes {
            if let Some(old) = inner.get(&key, "", &name) {
                let mut role = (*old).clone();
                role["rules"] = serde_json::to_value(&rules).unwrap_or(json!([]));
                inner.put(&key, role);
                writes += 1;
            }
        }
    }
    writes
}

/// The control-plane controllers of authentication and RBAC: the token controller and the
/// ClusterRole aggregation controller. They act in-process on the store, as the sim's other
/// controllers do, and run again after any change to what they read.
pub async fn run_controllers(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let watched = [
        cluster
            .store
            .read(|s| s.registry.core("secrets").storage.clone()),
        cluster
            .store
            .read(|s| s.registry.core("serviceaccounts").storage.clone()),
        storage("clusterroles"),
    ];
    let mut changed = cluster.store.subscribe();
    let mut seen: Option<u64> = None;
    loop {
        let (relevant, now) = cluster.store.read(|s| {
            let relevant = seen.is_none_or(|rv| {
                s.changes_since(rv, usize::MAX)
                    .is_none_or(|cs| cs.iter().any(|c| watched.contains(&c.storage)))
            });
            (relevant, s.rv())
        });
        if relevant {
            let ca = cluster.identity.ca_pem.clone();
            cluster.store.write(|s| {
                crate::tokens::fill_secrets(&cluster.tokens, s, &ca);
                aggregate(s);
            });
        }
        seen = Some(now);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = changed.changed() => if r.is_err() { return },
        }
    }
}

/// The `create` check a server-side apply also needs when its object does not exist yet: the
/// API server's patch handler authorizes an apply that creates as `create` as well as `patch`
/// (https://kubernetes.io/docs/reference/using-api/api-concepts/#patch-and-apply). `None` for
/// any other request.
pub fn apply_create_check(
    cluster: &Cluster,
    route: &Route,
    req: &Request,
    attrs: &Attributes,
) -> Option<Attributes> {
    let Route::Resource(path) = route else {
        return None;
    };
    let name = path.name.as_deref()?;
    let applying = req.method == http::Method::PATCH
        && req.content_type.starts_with("application/apply-patch")
        && path.subresource.is_none();
    if !applying {
        return None;
    }
    let namespace = path.namespace.clone().unwrap_or_default();
    let exists = cluster.store.read(|s| {
        s.registry
            .find(&path.group, &path.version, &path.plural)
            .is_some_and(|rt| {
                let ns = if rt.namespaced {
                    namespace.as_str()
                } else {
                    ""
                };
                s.get(&rt.storage, ns, name).is_some()
            })
    });
    (!exists).then(|| Attributes {
        verb: "create".into(),
        ..attrs.clone()
    })
}
/// One check the OwnerReferencesPermissionEnforcement admission plugin makes of a write, and
/// the words it refuses with.
pub struct OwnerCheck {
    /// The name of the object written (empty for a create with generateName).
    pub object: String,
    pub attrs: Attributes,
    pub refusal: String,
}

/// What the OwnerReferencesPermissionEnforcement admission plugin (enabled by kubeadm, kind,
/// k3s and the managed services) asks of a create, update or patch that changes an object's
/// ownerReferences: that the caller may delete the object, and, for each owner reference it
/// newly marks `blockOwnerDeletion`, that it may update the owner's `finalizers` subresource
/// (plugin/pkg/admission/gc). A controller that makes its pods block their owner's deletion
/// needs `update` on `<owner>/finalizers`; a real cluster refuses it otherwise, so the
/// simulator does too. The owner of an unknown kind is refused (no REST mapping), as upstream.
pub fn owner_reference_checks(
    cluster: &Arc<Cluster>,
    route: &Route,
    req: &Request,
    attrs: &Attributes,
) -> Result<Vec<OwnerCheck>, ApiError> {
    let Route::Resource(path) = route else {
        return Ok(vec![]);
    };
    if path.subresource.is_some() {
        return Ok(vec![]);
    }
    let refs_of = |obj: &Value| -> Vec<Value> {
        obj.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let stored = || -> Vec<Value> {
        let Some(name) = path.name.as_deref() else {
            return vec![];
        };
        cluster.store.read(|s| {
            s.registry
                .find(&path.group, &path.version, &path.plural)
                .and_then(|rt| {
                    let ns = if rt.namespaced {
                        attrs.namespace.as_str()
                    } else {
                        ""
                    };
                    s.get(&rt.storage, ns, name)
                })
                .map(|o| refs_of(&o))
                .unwrap_or_default()
        })
    };
    use http::Method;
    let (name, old, new) = match (&req.method, path.name.as_deref()) {
        (&Method::POST, None) => {
            let Ok(body) = req.body_value() else {
                return Ok(vec![]);
            };
            (meta_str(&body, "name").to_string(), vec![], refs_of(&body))
        }
        (&Method::PUT, Some(name)) => {
            let Ok(body) = req.body_value() else {
                return Ok(vec![]);
            };
            (name.to_string(), stored(), refs_of(&body))
        }
        (&Method::PATCH, Some(name)) if req.body.windows(15).any(|w| w == b"ownerReferences") => {
            // The object the patch makes, as admission sees it: the same patch, dry run.
            let mut dry = req.clone();
            dry.query.insert("dryRun".into(), "All".into());
            let new = match crate::api::handle(cluster, &dry, path) {
                Ok(Reply::Json(_, obj)) => refs_of(&obj),
                // An apply that creates: the body is the object.
                Err(e) if e.code == 404 => refs_of(&req.body_value().unwrap_or_default()),
                // The real request fails the same way, with its own error.
                _ => return Ok(vec![]),
            };
            (name.to_string(), stored(), new)
        }
        _ => return Ok(vec![]),
    };
    if old == new {
        return Ok(vec![]);
    }
    let mut checks = vec![OwnerCheck {
        object: name.clone(),
        attrs: Attributes {
            verb: "delete".into(),
            name: name.clone(),
            ..attrs.clone()
        },
        refusal: "cannot set an ownerRef on a resource you can't delete".into(),
    }];
    let blocking = |r: &Value| r["blockOwnerDeletion"].as_bool() == Some(true);
    for owner in new.iter().filter(|r| blocking(r)) {
        let uid = &owner["uid"];
        if old.iter().any(|o| &o["uid"] == uid && blocking(o)) {
            continue;
        }
        let api_version = owner["apiVersion"].as_str().unwrap_or_default();
        let kind = owner["kind"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let Some(rt) = cluster.store.read(|s| s.registry.find_kind(group, kind)) else {
            return Err(owner_forbidden(
                attrs,
                &name,
                &format!(
                    "cannot set blockOwnerDeletion in this case because cannot find RESTMapping for APIVersion {api_version} Kind {kind}: no matches for kind \"{kind}\" in version \"{api_version}\""
                ),
            ));
        };
        checks.push(OwnerCheck {
            object: name.clone(),
            attrs: Attributes {
                verb: "update".into(),
                api_group: group.to_string(),
                api_version: version.to_string(),
                resource: rt.plural.clone(),
                subresource: "finalizers".into(),
                name: owner["name"].as_str().unwrap_or_default().to_string(),
                ..attrs.clone()
            },
            refusal: "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on".into(),
        });
    }
    Ok(checks)
}

/// 403 as admission.NewForbidden words it: `<resource> "<name>" is forbidden: <cause>`.
pub fn owner_forbidden(attrs: &Attributes, name: &str, cause: &str) -> ApiError {
    let resource = if attrs.api_group.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}.{}", attrs.resource, attrs.api_group)
    };
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!("{resource} \"{name}\" is forbidden: {cause}"),
    );
    e.name = (!name.is_empty()).then(|| name.to_string());
    e.group = (!attrs.api_group.is_empty()).then(|| attrs.api_group.clone());
    e.kind = Some(attrs.resource.clone());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selector_names_a_watch() {
        assert_eq!(name_from_field_selector("metadata.name=web"), Some("web"));
        assert_eq!(
            name_from_field_selector("spec.nodeName=n,metadata.name==x"),
            Some("x")
        );
        assert_eq!(name_from_field_selector("spec.nodeName=n"), None);
    }
}
