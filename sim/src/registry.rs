//! The kinds a simulated cluster serves: the built-ins, and those CRDs add at run time.

use std::sync::Arc;

use serde_json::Value;

/// Where `kubectl scale` and the scale subresource read and write replicas.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// A CRD `additionalPrinterColumns` entry (or a built-in column).
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// Stored and served representations can differ (events.k8s.io/v1 Event is served from core/v1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    None,
    EventsV1,
}

/// One served resource (a group/version/plural).
#[derive(Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources besides the object itself: "status", "scale", "binding", "resize", ...
    pub subresources: Vec<String>,
    pub scale: Option<ScalePaths>,
    pub columns: Vec<PrinterColumn>,
    /// Key of the object map this resource is stored in; shared by two served forms of Event.
    pub storage: String,
    pub conversion: Conversion,
    /// Built-ins use strategic merge patch; custom resources don't.
    pub builtin: bool,
    /// Compiled validation for custom resources.
    pub schema: Option<Arc<crate::validation::Schema>>,
    /// The CRD's openAPIV3Schema, served in /openapi/v3.
    pub openapi_schema: Option<Value>,
    /// Lists in a CRD schema with `x-kubernetes-list-type: map|set` (paths of field names).
    pub list_types: Vec<(Vec<String>, crate::apply::ListType)>,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {}", self.group, self.version, self.plural)
    }
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s == name)
    }

    /// "pods" or "cafedeployments.apps.cafe.io", as used in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        short: &[&str],
        subresources: &[&str],
    ) -> Self {
        let storage = format!("{group}/{plural}");
        ResourceType {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            list_kind: format!("{kind}List"),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: vec![],
            subresources: subresources.iter().map(|s| s.to_string()).collect(),
            scale: None,
            columns: vec![],
            storage,
            conversion: Conversion::None,
            builtin: true,
            schema: None,
            openapi_schema: None,
            list_types: vec![],
        }
    }
}

/// Kinds that are only ever created, answered from the request and never stored.
pub const REVIEWS: [(&str, &str, &str); 3] = [
    (
        "authorization.k8s.io",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
    ),
    (
        "authorization.k8s.io",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
    ),
    (
        "authentication.k8s.io",
        "SelfSubjectReview",
        "selfsubjectreviews",
    ),
];

/// Whether a resource is one of the create-only review kinds.
pub fn is_review(group: &str, plural: &str) -> bool {
    REVIEWS.iter().any(|(g, _, p)| *g == group && *p == plural)
}

/// All served resources of one cluster.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: Vec<Arc<ResourceType>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let b = ResourceType::builtin;
        let mut types = vec![
            b(
                "",
                "v1",
                "Namespace",
                "namespaces",
                false,
                &["ns"],
                &["status", "finalize"],
            ),
            b("", "v1", "Node", "nodes", false, &["no"], &["status"]),
            b(
                "",
                "v1",
                "Pod",
                "pods",
                true,
                &["po"],
                &["status", "binding", "resize", "eviction"],
            ),
            b("", "v1", "Secret", "secrets", true, &[], &[]),
            b("", "v1", "ConfigMap", "configmaps", true, &["cm"], &[]),
            b("", "v1", "Event", "events", true, &["ev"], &[]),
            b("", "v1", "Service", "services", true, &["svc"], &["status"]),
            b(
                "",
                "v1",
                "ServiceAccount",
                "serviceaccounts",
                true,
                &["sa"],
                &["token"],
            ),
            b(
                "coordination.k8s.io",
                "v1",
                "Lease",
                "leases",
                true,
                &[],
                &[],
            ),
            b(
                "apps",
                "v1",
                "ControllerRevision",
                "controllerrevisions",
                true,
                &[],
                &[],
            ),
            b(
                "apps",
                "v1",
                "ReplicaSet",
                "replicasets",
                true,
                &["rs"],
                &["status", "scale"],
            ),
            b(
                "apps",
                "v1",
                "StatefulSet",
                "statefulsets",
                true,
                &["sts"],
                &["status", "scale"],
            ),
            b(
                "apps",
                "v1",
                "Deployment",
                "deployments",
                true,
                &["deploy"],
                &["status", "scale"],
            ),
            // Stored and served only: no disruption controller fills its status (enough for
            // `kubectl apply -k` of cafe's install manifests).
            b(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
                true,
                &["pdb"],
                &["status"],
            ),
            b(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                &["crd", "crds"],
                &["status"],
            ),
        ];
        // RBAC and the review kinds (https://kubernetes.io/docs/reference/access-authn-authz/rbac/).
        let rbac = "rbac.authorization.k8s.io";
        types.extend([
            b(rbac, "v1", "Role", "roles", true, &[], &[]),
            b(rbac, "v1", "ClusterRole", "clusterroles", false, &[], &[]),
            b(rbac, "v1", "RoleBinding", "rolebindings", true, &[], &[]),
            b(
                rbac,
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
                false,
                &[],
                &[],
            ),
        ]);
        for (group, kind, plural) in REVIEWS {
            types.push(b(group, "v1", kind, plural, false, &[], &[]));
        }
        for t in types.iter_mut() {
            if t.has_subresource("scale") {
                t.scale = Some(ScalePaths {
                    spec_replicas: ".spec.replicas".into(),
                    status_replicas: ".status.replicas".into(),
                    label_selector: Some(".status.selector".into()),
                });
            }
        }
        // events.k8s.io/v1 serves the same objects as core/v1 Event, so that kube-rs' Recorder
        // (events.k8s.io) writes what `kubectl describe` (core/v1) reads.
        let mut events = b("events.k8s.io", "v1", "Event", "events", true, &["ev"], &[]);
        events.storage = "/events".into();
        events.conversion = Conversion::EventsV1;
        types.push(events);
        Registry {
            types: types.into_iter().map(Arc::new).collect(),
        }
    }

    pub fn all(&self) -> &[Arc<ResourceType>] {
        &self.types
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    pub fn find_kind(&self, group: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == group && t.kind == kind)
            .cloned()
    }

    /// Builtin lookup used by the sim's own controllers.
    pub fn core(&self, plural: &str) -> Arc<ResourceType> {
        self.find("", "v1", plural).unwrap_or_else(|| {
            Arc::new(ResourceType::builtin(
                "",
                "v1",
                "Unknown",
                plural,
                true,
                &[],
                &[],
            ))
        })
    }

    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = vec![];
        for t in &self.types {
            if t.group.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) => {
                    if !versions.contains(&t.version) {
                        versions.push(t.version.clone());
                    }
                }
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        out
    }

    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .cloned()
            .collect()
    }

    /// Replaces every version of a CRD's group/plural with `versions`.
    pub fn set_custom(&mut self, group: &str, plural: &str, versions: Vec<ResourceType>) {
        self.types
            .retain(|t| !(t.group == group && t.plural == plural && !t.builtin));
        self.types.extend(versions.into_iter().map(Arc::new));
    }

    pub fn remove_custom(&mut self, group: &str, plural: &str) {
        self.types
            .retain(|t| !(t.group == group && t.plural == plural && !t.builtin));
    }
}
