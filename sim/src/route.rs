//! URL paths of the Kubernetes REST API.
//! https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-uris

/// What a request path names.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Version,
    Health,
    Metrics,
    OpenApiV3Root,
    OpenApiV3 { group: String, version: String },
    CoreVersions,
    Groups,
    Group(String),
    ResourceList { group: String, version: String },
    Resource(ResourcePath),
    NotFound,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// `is_resource(group, version, plural)` tells whether a segment names a resource, to tell
/// `/api/v1/namespaces/x/status` (a namespace subresource) from `/api/v1/namespaces/x/pods`.
pub fn parse(path: &str, is_resource: impl Fn(&str, &str, &str) -> bool) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "readyz" | "livez", ..] => Route::Health,
        ["metrics"] => Route::Metrics,
        ["openapi", "v3"] => Route::OpenApiV3Root,
        ["openapi", "v3", "api", v] => Route::OpenApiV3 {
            group: String::new(),
            version: v.to_string(),
        },
        ["openapi", "v3", "apis", g, v] => Route::OpenApiV3 {
            group: g.to_string(),
            version: v.to_string(),
        },
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", g] => Route::Group(g.to_string()),
        ["api", v] => Route::ResourceList {
            group: String::new(),
            version: v.to_string(),
        },
        ["apis", g, v] => Route::ResourceList {
            group: g.to_string(),
            version: v.to_string(),
        },
        ["api", v, rest @ ..] => resource("", v, rest, &is_resource),
        ["apis", g, v, rest @ ..] => resource(g, v, rest, &is_resource),
        _ => Route::NotFound,
    }
}

fn resource(
    group: &str,
    version: &str,
    rest: &[&str],
    is_resource: &impl Fn(&str, &str, &str) -> bool,
) -> Route {
    let build = |ns: Option<&str>, plural: &str, name: Option<&&str>, sub: Option<&&str>| {
        Route::Resource(ResourcePath {
            group: group.to_string(),
            version: version.to_string(),
            namespace: ns.map(String::from),
            plural: plural.to_string(),
            name: name.map(|s| s.to_string()),
            subresource: sub.map(|s| s.to_string()),
        })
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..]
            if tail.len() <= 2 && (!tail.is_empty() || is_resource(group, version, plural)) =>
        {
            build(Some(ns), plural, tail.first(), tail.get(1))
        }
        [plural, tail @ ..] if tail.len() <= 2 => build(None, plural, tail.first(), tail.get(1)),
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(_: &str, _: &str, p: &str) -> bool {
        p == "pods"
    }

    #[test]
    fn paths() {
        let r = parse("/api/v1/namespaces/default/pods/p/status", known);
        assert_eq!(
            r,
            Route::Resource(ResourcePath {
                group: "".into(),
                version: "v1".into(),
                namespace: Some("default".into()),
                plural: "pods".into(),
                name: Some("p".into()),
                subresource: Some("status".into())
            })
        );
        let ns = parse("/api/v1/namespaces/default/status", known);
        match ns {
            Route::Resource(p) => {
                assert_eq!(p.plural, "namespaces");
                assert_eq!(p.name.as_deref(), Some("default"));
                assert_eq!(p.subresource.as_deref(), Some("status"));
            }
            other => panic!("{other:?}"),
        }
        match parse("/apis/apps.cafe.io/v1alpha1/memberclusters/dca", known) {
            Route::Resource(p) => {
                assert_eq!(p.namespace, None);
                assert_eq!(p.name.as_deref(), Some("dca"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse("/apis", known), Route::Groups);
        assert_eq!(parse("/version", known), Route::Version);
    }
}
