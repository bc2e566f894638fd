//! The RBAC authorizer: who may do what, decided from Roles, ClusterRoles and their bindings.
//!
//! Pure functions over a [`Policy`] snapshot, mirroring kube-apiserver's RBAC authorizer
//! (plugin/pkg/auth/authorizer/rbac in kubernetes/kubernetes) and the rule matching of
//! `pkg/apis/rbac/v1/evaluation_helpers.go`:
//! https://kubernetes.io/docs/reference/access-authn-authz/rbac/
//! https://kubernetes.io/docs/reference/access-authn-authz/authorization/#review-your-request-attributes

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The group whose members every check allows, as the API server's privileged-group authorizer.
pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
const SA_PREFIX: &str = "system:serviceaccount:";

#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    #[error("{kind} {name}: {source}")]
    Malformed {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An authenticated (or impersonated) user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The user of a ServiceAccount's tokens, with the groups Kubernetes gives it.
    pub fn service_account(namespace: &str, name: &str, uid: &str) -> Self {
        UserInfo {
            name: service_account_user(namespace, name),
            uid: uid.to_string(),
            groups: service_account_groups(namespace),
        }
    }
}

pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("{SA_PREFIX}{namespace}:{name}")
}

/// `system:serviceaccounts`, `system:serviceaccounts:NS`, `system:authenticated`.
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{namespace}"),
        AUTHENTICATED.to_string(),
    ]
}

/// (namespace, name) of a `system:serviceaccount:NS:NAME` user name.
pub fn parse_service_account_user(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix(SA_PREFIX)?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// What a request asks to do (authorizer.Attributes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub verb: String,
    pub resource_request: bool,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The URL path, for non-resource requests.
    pub path: String,
}

impl Attributes {
    pub fn resource(verb: &str, group: &str, resource: &str, namespace: &str) -> Self {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            ..Default::default()
        }
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    pub fn of_subresource(mut self, subresource: &str) -> Self {
        self.subresource = subresource.into();
        self
    }

    pub fn non_resource(verb: &str, path: &str) -> Self {
        Attributes {
            verb: verb.into(),
            path: path.into(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyRule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verbs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(rename = "nonResourceURLs", skip_serializing_if = "Vec::is_empty")]
    pub non_resource_urls: Vec<String>,
}

fn has(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == value)
}

impl PolicyRule {
    /// RuleAllows: resourceNames never match a request without a name (list, watch, create).
    pub fn allows(&self, a: &Attributes) -> bool {
        let verb = has(&self.verbs, "*") || has(&self.verbs, &a.verb);
        if !verb {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            });
        }
        let group = has(&self.api_groups, "*") || has(&self.api_groups, &a.api_group);
        let combined = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let resource = self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
        });
        let name = self.resource_names.is_empty() || has(&self.resource_names, &a.name);
        group && resource && name
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Subject {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

impl Subject {
    /// appliesToUser; a ServiceAccount subject without a namespace means the binding's.
    fn applies_to(&self, user: &UserInfo, binding_namespace: &str) -> bool {
        match self.kind.as_str() {
            "User" => user.name == self.name,
            "Group" => user.in_group(&self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_namespace
                } else {
                    &self.namespace
                };
                !ns.is_empty() && user.name == service_account_user(ns, &self.name)
            }
            _ => false,
        }
    }

    /// describeSubject, as in RBAC's "allowed by" reasons.
    fn describe(&self, binding_namespace: &str) -> String {
        if self.kind == "ServiceAccount" {
            let ns = if self.namespace.is_empty() {
                binding_namespace
            } else {
                &self.namespace
            };
            return format!("{} \"{}/{}\"", self.kind, self.name, ns);
        }
        format!("{} \"{}\"", self.kind, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RoleRef {
    pub kind: String,
    pub name: String,
}

/// A Role or ClusterRole (namespace "").
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Role {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub rules: Vec<PolicyRule>,
    /// aggregationRule.clusterRoleSelectors, as given.
    pub aggregation: Option<Vec<Value>>,
}

/// A RoleBinding or ClusterRoleBinding (namespace "").
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Binding {
    pub namespace: String,
    pub name: String,
    pub subjects: Vec<Subject>,
    pub role_ref: RoleRef,
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn parse<T: for<'de> Deserialize<'de> + Default>(
    obj: &Value,
    pointer: &str,
    kind: &'static str,
) -> Result<T, RbacError> {
    match obj.pointer(pointer) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => T::deserialize(v).map_err(|source| RbacError::Malformed {
            kind,
            name: meta(obj, "name").to_string(),
            source,
        }),
    }
}

impl Role {
    pub fn from_object(obj: &Value) -> Result<Self, RbacError> {
        Ok(Role {
            namespace: meta(obj, "namespace").to_string(),
            name: meta(obj, "name").to_string(),
            labels: parse(obj, "/metadata/labels", "role labels")?,
            rules: parse(obj, "/rules", "role")?,
            aggregation: obj
                .pointer("/aggregationRule/clusterRoleSelectors")
                .and_then(Value::as_array)
                .cloned(),
        })
    }
}

impl Binding {
    pub fn from_object(obj: &Value) -> Result<Self, RbacError> {
        Ok(Binding {
            namespace: meta(obj, "namespace").to_string(),
            name: meta(obj, "name").to_string(),
            subjects: parse(obj, "/subjects", "binding")?,
            role_ref: parse(obj, "/roleRef", "binding")?,
        })
    }

    fn describe(&self, subject: &Subject) -> String {
        if self.namespace.is_empty() {
            format!(
                "ClusterRoleBinding \"{}\" of {} \"{}\" to {}",
                self.name,
                self.role_ref.kind,
                self.role_ref.name,
                subject.describe("")
            )
        } else {
            format!(
                "RoleBinding \"{}/{}\" of {} \"{}\" to {}",
                self.name,
                self.namespace,
                self.role_ref.kind,
                self.role_ref.name,
                subject.describe(&self.namespace)
            )
        }
    }
}

/// Everything the authorizer reads, snapshotted from the store.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub roles: Vec<Role>,
    pub cluster_roles: Vec<Role>,
    pub role_bindings: Vec<Binding>,
    pub cluster_role_bindings: Vec<Binding>,
}

/// The authorizer's answer; `reason` is what SubjectAccessReviews report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

impl Policy {
    /// Malformed objects are skipped: one bad Role must not lock everyone out.
    pub fn from_objects<'a>(
        roles: impl IntoIterator<Item = &'a Value>,
        cluster_roles: impl IntoIterator<Item = &'a Value>,
        role_bindings: impl IntoIterator<Item = &'a Value>,
        cluster_role_bindings: impl IntoIterator<Item = &'a Value>,
    ) -> Self {
        fn roles_of<'a>(objs: impl IntoIterator<Item = &'a Value>) -> Vec<Role> {
            objs.into_iter()
                .filter_map(|o| Role::from_object(o).ok())
                .collect()
        }
        fn bindings_of<'a>(objs: impl IntoIterator<Item = &'a Value>) -> Vec<Binding> {
            objs.into_iter()
                .filter_map(|o| Binding::from_object(o).ok())
                .collect()
        }
        Policy {
            roles: roles_of(roles),
            cluster_roles: roles_of(cluster_roles),
            role_bindings: bindings_of(role_bindings),
            cluster_role_bindings: bindings_of(cluster_role_bindings),
        }
    }

    fn rules_of(&self, binding: &Binding) -> &[PolicyRule] {
        let found = match binding.role_ref.kind.as_str() {
            "ClusterRole" => self
                .cluster_roles
                .iter()
                .find(|r| r.name == binding.role_ref.name),
            "Role" => self
                .roles
                .iter()
                .find(|r| r.name == binding.role_ref.name && r.namespace == binding.namespace),
            _ => None,
        };
        found.map_or(&[], |r| r.rules.as_slice())
    }

    /// The bindings that apply to `user` for a request in `namespace` ("" = cluster scope):
    /// every ClusterRoleBinding, and the RoleBindings of that namespace.
    fn applicable<'a>(
        &'a self,
        user: &'a UserInfo,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a Binding, &'a Subject)> + 'a {
        let cluster = self.cluster_role_bindings.iter();
        let local = self
            .role_bindings
            .iter()
            .filter(move |b| !namespace.is_empty() && b.namespace == namespace);
        cluster.chain(local).filter_map(move |b| {
            b.subjects
                .iter()
                .find(|s| s.applies_to(user, &b.namespace))
                .map(|s| (b, s))
        })
    }

    /// Authorizes `a` for `user`: members of system:masters always, others by RBAC.
    pub fn authorize(&self, user: &UserInfo, a: &Attributes) -> Decision {
        if user.in_group(MASTERS) {
            return Decision {
                allowed: true,
                reason: String::new(),
            };
        }
        for (binding, subject) in self.applicable(user, &a.namespace) {
            if self.rules_of(binding).iter().any(|r| r.allows(a)) {
                return Decision {
                    allowed: true,
                    reason: format!("RBAC: allowed by {}", binding.describe(subject)),
                };
            }
        }
        Decision {
            allowed: false,
            reason: String::new(),
        }
    }

    /// Every rule that applies to `user` in `namespace` (SelfSubjectRulesReview).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut out: Vec<PolicyRule> = vec![];
        for (binding, _) in self.applicable(user, namespace) {
            for r in self.rules_of(binding) {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }

    /// Whether `user` holds every permission `rules` grant within `namespace` ("" = cluster-wide):
    /// RBAC's escalation check (a rule with wildcards needs the same wildcards held).
    pub fn covers(&self, user: &UserInfo, namespace: &str, rules: &[PolicyRule]) -> bool {
        if user.in_group(MASTERS) {
            return true;
        }
        let held = self.rules_for(user, namespace);
        rules.iter().all(|rule| covered(&held, rule))
    }

    /// The ClusterRoles whose rules aggregation changes, with their new rules. Aggregated roles
    /// feed other aggregated roles (view into edit into admin), so callers repeat to a fixpoint.
    pub fn aggregate(&self) -> Vec<(String, Vec<PolicyRule>)> {
        let mut changes = vec![];
        for role in &self.cluster_roles {
            let Some(selectors) = &role.aggregation else {
                continue;
            };
            let mut sources: Vec<&Role> = self
                .cluster_roles
                .iter()
                .filter(|r| r.name != role.name)
                .filter(|r| selectors.iter().any(|s| selector_matches(s, &r.labels)))
                .collect();
            sources.sort_by(|a, b| a.name.cmp(&b.name));
            let mut rules: Vec<PolicyRule> = vec![];
            for r in sources.iter().flat_map(|s| &s.rules) {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
            if rules != role.rules {
                changes.push((role.name.clone(), rules));
            }
        }
        changes
    }
}

/// Whether `rule` is implied by the union of `held` (ConfirmNoEscalation's coverage, verb by verb,
/// resource by resource, name by name).
fn covered(held: &[PolicyRule], rule: &PolicyRule) -> bool {
    let one = |v: &str, f: &dyn Fn(&PolicyRule, &str) -> bool| held.iter().any(|h| f(h, v));
    let covers_list = |h: &[String], v: &str| has(h, "*") || has(h, v);
    if !rule.non_resource_urls.is_empty() {
        return rule.verbs.iter().all(|verb| {
            rule.non_resource_urls.iter().all(|url| {
                one(url, &|h, u| {
                    covers_list(&h.verbs, verb)
                        && h.non_resource_urls.iter().any(|hu| {
                            hu == "*"
                                || hu == u
                                || hu
                                    .strip_suffix('*')
                                    .is_some_and(|p| u.starts_with(p) && !u.ends_with('*'))
                                || (hu.ends_with('*')
                                    && u.ends_with('*')
                                    && u.starts_with(hu.trim_end_matches('*')))
                        })
                })
            })
        });
    }
    let names: Vec<&str> = if rule.resource_names.is_empty() {
        vec![""]
    } else {
        rule.resource_names.iter().map(String::as_str).collect()
    };
    rule.verbs.iter().all(|verb| {
        rule.api_groups.iter().all(|group| {
            rule.resources.iter().all(|res| {
                names.iter().all(|name| {
                    held.iter().any(|h| {
                        covers_list(&h.verbs, verb)
                            && covers_list(&h.api_groups, group)
                            && (covers_list(&h.resources, res)
                                || res
                                    .split_once('/')
                                    .is_some_and(|(_, sub)| has(&h.resources, &format!("*/{sub}"))))
                            && (h.resource_names.is_empty()
                                || (!name.is_empty() && has(&h.resource_names, name)))
                    })
                })
            })
        })
    })
}

/// A metav1.LabelSelector (matchLabels, matchExpressions) against labels; empty matches all.
pub fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let expressions = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let actual = labels.get(key).map(String::as_str);
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => actual.is_some_and(|a| values.contains(&a)),
                "NotIn" => actual.is_none_or(|a| !values.contains(&a)),
                "Exists" => actual.is_some(),
                "DoesNotExist" => actual.is_none(),
                _ => false,
            }
        });
    match_labels && expressions
}

/// The 403 message of a denied request, as the API server's `responsewriters.Forbidden` words it
/// (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go, forbiddenMessage,
/// wrapped by apierrors.NewForbidden).
pub fn forbidden_message(user: &str, a: &Attributes, reason: &str) -> String {
    let mut inner = if !a.resource_request {
        format!("User \"{user}\" cannot {} path \"{}\"", a.verb, a.path)
    } else {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        if a.namespace.is_empty() {
            format!(
                "User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" at the cluster scope",
                a.verb, a.api_group
            )
        } else {
            format!(
                "User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" in the namespace \"{}\"",
                a.verb, a.api_group, a.namespace
            )
        }
    };
    if !reason.is_empty() {
        inner = format!("{inner}: {reason}");
    }
    let qualified = if a.api_group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.api_group)
    };
    if qualified.is_empty() {
        format!("forbidden: {inner}")
    } else if a.name.is_empty() {
        format!("{qualified} is forbidden: {inner}")
    } else {
        format!("{qualified} \"{}\" is forbidden: {inner}", a.name)
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 5] = ["create", "delete", "deletecollection", "patch", "update"];
const AGGREGATE: &str = "rbac.authorization.k8s.io/aggregate-to-";

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    if let (Some(l), Some(extra)) = (l.as_object_mut(), labels.as_object()) {
        l.extend(extra.clone());
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": l,
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "rules": rules,
    })
}

fn aggregated(name: &str, into: Option<&str>) -> Value {
    let labels = into.map_or(json!({}), |i| json!({format!("{AGGREGATE}{i}"): "true"}));
    let mut role = cluster_role(name, labels, vec![]);
    role["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("{AGGREGATE}{name}"): "true"}}
    ]});
    role
}

fn group_binding(name: &str, role: &str, groups: &[&str]) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": groups.iter().map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g})).collect::<Vec<_>>(),
    })
}

/// The ClusterRoles every cluster starts with (a subset of kube-apiserver's bootstrap policy,
/// plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go), limited to the kinds served here.
pub fn bootstrap_cluster_roles() -> Vec<Value> {
    let core_read = [
        "pods",
        "pods/log",
        "pods/status",
        "configmaps",
        "events",
        "services",
        "services/status",
        "serviceaccounts",
        "endpoints",
        "persistentvolumeclaims",
        "replicationcontrollers",
        "limitranges",
        "resourcequotas",
    ];
    let apps = [
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "statefulsets",
        "statefulsets/scale",
        "statefulsets/status",
        "controllerrevisions",
        "daemonsets",
    ];
    vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            vec![
                rule(&["*"], &["*"], &["*"]),
                json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ],
        ),
        aggregated("admin", None),
        aggregated("edit", Some("admin")),
        aggregated("view", Some("edit")),
        cluster_role(
            "system:aggregate-to-admin",
            json!({format!("{AGGREGATE}admin"): "true"}),
            vec![rule(
                &["rbac.authorization.k8s.io"],
                &["roles", "rolebindings"],
                &[
                    "create",
                    "delete",
                    "deletecollection",
                    "get",
                    "list",
                    "patch",
                    "update",
                    "watch",
                ],
            )],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            json!({format!("{AGGREGATE}edit"): "true"}),
            vec![
                rule(
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "pods/eviction",
                    ],
                    &WRITE,
                ),
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                        "endpoints",
                    ],
                    &WRITE,
                ),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(&[""], &["secrets"], &READ),
                rule(&[""], &["serviceaccounts"], &["impersonate"]),
                rule(
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                    &WRITE,
                ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &[
                        "create",
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "update",
                        "watch",
                    ],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            json!({format!("{AGGREGATE}view"): "true"}),
            vec![
                rule(&[""], &core_read, &READ),
                rule(&[""], &["namespaces", "namespaces/status"], &READ),
                rule(&["apps"], &apps, &READ),
                rule(&["events.k8s.io"], &["events"], &READ),
            ],
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![
                json!({"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}),
            ],
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![
                json!({"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}),
            ],
        ),
    ]
}

/// The ClusterRoleBindings every cluster starts with.
pub fn bootstrap_cluster_role_bindings() -> Vec<Value> {
    vec![
        group_binding("cluster-admin", "cluster-admin", &[MASTERS]),
        group_binding("system:discovery", "system:discovery", &[AUTHENTICATED]),
        group_binding("system:basic-user", "system:basic-user", &[AUTHENTICATED]),
        group_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[AUTHENTICATED, UNAUTHENTICATED],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(ns: &str, name: &str) -> UserInfo {
        UserInfo::service_account(ns, name, "uid-1")
    }

    fn role(ns: &str, name: &str, rules: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "rules": rules})
    }

    fn binding(ns: &str, name: &str, kind: &str, role: &str, subjects: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "roleRef": {"kind": kind, "name": role}, "subjects": subjects})
    }

    fn policy(roles: Vec<Value>, crs: Vec<Value>, rbs: Vec<Value>, crbs: Vec<Value>) -> Policy {
        Policy::from_objects(&roles, &crs, &rbs, &crbs)
    }

    fn pod_reader() -> Policy {
        policy(
            vec![role(
                "apps",
                "reader",
                json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
            )],
            vec![],
            vec![binding(
                "apps",
                "read",
                "Role",
                "reader",
                json!([{"kind": "ServiceAccount", "name": "bot"}]),
            )],
            vec![],
        )
    }

    #[test]
    fn a_role_binding_grants_only_in_its_namespace_and_only_its_verbs() {
        let p = pod_reader();
        let bot = sa("apps", "bot");
        let list = |ns: &str| Attributes::resource("list", "", "pods", ns);
        assert!(p.authorize(&bot, &list("apps")).allowed);
        assert!(!p.authorize(&bot, &list("default")).allowed);
        assert!(!p.authorize(&bot, &list("")).allowed, "not cluster-wide");
        assert!(
            !p.authorize(&bot, &Attributes::resource("create", "", "pods", "apps"))
                .allowed
        );
        assert!(
            !p.authorize(&sa("other", "bot"), &list("apps")).allowed,
            "another namespace's SA"
        );
        assert_eq!(
            p.authorize(&bot, &list("apps")).reason,
            "RBAC: allowed by RoleBinding \"read/apps\" of Role \"reader\" to ServiceAccount \"bot/apps\""
        );
    }

    #[test]
    fn masters_are_always_allowed() {
        let admin = UserInfo {
            name: "kubernetes-admin".into(),
            uid: String::new(),
            groups: vec![MASTERS.into(), AUTHENTICATED.into()],
        };
        assert!(
            Policy::default()
                .authorize(
                    &admin,
                    &Attributes::resource("delete", "apps", "deployments", "x")
                )
                .allowed
        );
        assert!(
            Policy::default()
                .authorize(&admin, &Attributes::non_resource("get", "/metrics"))
                .allowed
        );
    }

    #[test]
    fn cluster_role_bindings_grant_everywhere_and_role_bindings_scope_cluster_roles() {
        let crs = vec![
            json!({"metadata": {"name": "pods-all"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]}),
        ];
        let everywhere = policy(
            vec![],
            crs.clone(),
            vec![],
            vec![binding(
                "",
                "b",
                "ClusterRole",
                "pods-all",
                json!([{"kind": "User", "name": "alice"}]),
            )],
        );
        let alice = UserInfo {
            name: "alice".into(),
            ..Default::default()
        };
        assert!(
            everywhere
                .authorize(&alice, &Attributes::resource("create", "", "pods", "x"))
                .allowed
        );
        assert!(
            everywhere
                .authorize(&alice, &Attributes::resource("list", "", "pods", ""))
                .allowed
        );
        let local = policy(
            vec![],
            crs,
            vec![binding(
                "x",
                "b",
                "ClusterRole",
                "pods-all",
                json!([{"kind": "Group", "name": "devs"}]),
            )],
            vec![],
        );
        let dev = UserInfo {
            name: "bob".into(),
            groups: vec!["devs".into()],
            ..Default::default()
        };
        assert!(
            local
                .authorize(&dev, &Attributes::resource("create", "", "pods", "x"))
                .allowed
        );
        assert!(
            !local
                .authorize(&dev, &Attributes::resource("create", "", "pods", "y"))
                .allowed
        );
    }

    #[test]
    fn resource_names_restrict_get_but_never_match_list_or_create() {
        let p = policy(
            vec![role(
                "ns",
                "one",
                json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cfg"], "verbs": ["get", "list", "create"]}]),
            )],
            vec![],
            vec![binding(
                "ns",
                "b",
                "Role",
                "one",
                json!([{"kind": "ServiceAccount", "name": "bot", "namespace": "ns"}]),
            )],
            vec![],
        );
        let bot = sa("ns", "bot");
        let get = |n: &str| Attributes::resource("get", "", "configmaps", "ns").named(n);
        assert!(p.authorize(&bot, &get("cfg")).allowed);
        assert!(!p.authorize(&bot, &get("other")).allowed);
        assert!(
            !p.authorize(&bot, &Attributes::resource("list", "", "configmaps", "ns"))
                .allowed
        );
        assert!(
            !p.authorize(
                &bot,
                &Attributes::resource("create", "", "configmaps", "ns")
            )
            .allowed
        );
    }

    #[test]
    fn subresources_need_their_own_rule_or_a_star_form() {
        let rules: Vec<PolicyRule> = serde_json::from_value(json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]},
            {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["update"]},
        ]))
        .unwrap();
        let evict = Attributes::resource("create", "", "pods", "ns")
            .named("p")
            .of_subresource("eviction");
        assert!(!rules.iter().any(|r| r.allows(&evict)));
        let scale = Attributes::resource("update", "apps", "deployments", "ns")
            .named("d")
            .of_subresource("scale");
        assert!(rules.iter().any(|r| r.allows(&scale)));
        let star: PolicyRule =
            serde_json::from_value(json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}))
                .unwrap();
        assert!(star.allows(&evict));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_trailing_star() {
        let r: PolicyRule = serde_json::from_value(
            json!({"nonResourceURLs": ["/apis/*", "/version"], "verbs": ["get"]}),
        )
        .unwrap();
        assert!(r.allows(&Attributes::non_resource("get", "/apis/apps/v1")));
        assert!(r.allows(&Attributes::non_resource("get", "/version")));
        assert!(!r.allows(&Attributes::non_resource("get", "/metrics")));
        assert!(!r.allows(&Attributes::non_resource("post", "/version")));
    }

    #[test]
    fn aggregation_collects_labelled_roles_in_name_order_to_a_fixpoint() {
        let mut crs = bootstrap_cluster_roles();
        crs.push(json!({"metadata": {"name": "widgets-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}, "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}]}));
        let mut p = policy(vec![], crs, vec![], vec![]);
        for _ in 0..5 {
            for (name, rules) in p.aggregate() {
                if let Some(r) = p.cluster_roles.iter_mut().find(|r| r.name == name) {
                    r.rules = rules;
                }
            }
        }
        assert!(p.aggregate().is_empty(), "a fixpoint");
        let widgets = Attributes::resource("get", "example.com", "widgets", "ns").named("w");
        for name in ["view", "edit", "admin"] {
            let role = p.cluster_roles.iter().find(|r| r.name == name).unwrap();
            assert!(role.rules.iter().any(|r| r.allows(&widgets)), "{name}");
        }
        let view = p.cluster_roles.iter().find(|r| r.name == "view").unwrap();
        let secrets = Attributes::resource("get", "", "secrets", "ns").named("s");
        assert!(
            !view.rules.iter().any(|r| r.allows(&secrets)),
            "view does not read secrets"
        );
    }

    #[test]
    fn forbidden_messages_match_the_api_server() {
        let user = "system:serviceaccount:ns:sa";
        assert_eq!(
            forbidden_message(
                user,
                &Attributes::resource("list", "", "pods", "default"),
                ""
            ),
            "pods is forbidden: User \"system:serviceaccount:ns:sa\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(
            forbidden_message(
                user,
                &Attributes::resource("get", "apps", "deployments", "x").named("d"),
                ""
            ),
            "deployments.apps \"d\" is forbidden: User \"system:serviceaccount:ns:sa\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"x\""
        );
        assert_eq!(
            forbidden_message(user, &Attributes::resource("list", "", "nodes", ""), ""),
            "nodes is forbidden: User \"system:serviceaccount:ns:sa\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        );
        assert_eq!(
            forbidden_message(
                user,
                &Attributes::resource("create", "", "pods", "x")
                    .named("p")
                    .of_subresource("eviction"),
                ""
            ),
            "pods \"p\" is forbidden: User \"system:serviceaccount:ns:sa\" cannot create resource \"pods/eviction\" in API group \"\" in the namespace \"x\""
        );
        assert_eq!(
            forbidden_message(user, &Attributes::non_resource("get", "/metrics"), ""),
            "forbidden: User \"system:serviceaccount:ns:sa\" cannot get path \"/metrics\""
        );
    }

    #[test]
    fn escalation_check_needs_every_granted_permission_held() {
        let p = pod_reader();
        let bot = sa("apps", "bot");
        let get_pods: Vec<PolicyRule> = serde_json::from_value(
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]),
        )
        .unwrap();
        let all_pods: Vec<PolicyRule> = serde_json::from_value(
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]),
        )
        .unwrap();
        assert!(p.covers(&bot, "apps", &get_pods));
        assert!(!p.covers(&bot, "apps", &all_pods));
        assert!(!p.covers(&bot, "default", &get_pods));
    }

    #[test]
    fn service_account_user_names_parse() {
        assert_eq!(
            parse_service_account_user("system:serviceaccount:ns:bot"),
            Some(("ns", "bot"))
        );
        assert_eq!(parse_service_account_user("alice"), None);
        assert_eq!(parse_service_account_user("system:serviceaccount:ns"), None);
    }
}
