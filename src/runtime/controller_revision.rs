//! ControllerRevisions (apps/v1) that keep a pod template, as the hub keeps each
//! CafeDeployment's history and a member each InPlaceSet's: how one is built, how its template
//! is read back, and how one is deleted without touching a namesake that replaced it.
//!
//! Each holds `{"template": <PodTemplateSpec>}` in `data`, as StatefulSets and DaemonSets keep
//! theirs (<https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/controller-revision-v1/>).
//! Naming, labelling and numbering stay with the owners' modules.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use serde_json::json;

use super::api_cause;

/// A ControllerRevision [`delete_listed`] could not delete; the owners' modules turn it into
/// their own error.
#[derive(Debug, thiserror::Error)]
#[error("deleting ControllerRevision {name}: {}", api_cause(.source))]
pub struct DeleteError {
    /// `namespace/name`.
    pub name: String,
    #[source]
    pub source: kube::Error,
}

/// The ControllerRevision `namespace/name` controlled by `owner` (a controller reference),
/// labelled `labels`, holding `template` as revision `number`.
pub fn build(
    owner: OwnerReference,
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    template: &PodTemplateSpec,
    number: i64,
) -> ControllerRevision {
    // blockOwnerDeletion: a foreground deletion of the owner waits for its history, as for a
    // StatefulSet's.
    let owner = OwnerReference {
        block_owner_deletion: Some(true),
        ..owner
    };
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        // A PodTemplateSpec always serializes (its maps are keyed by strings), so `json!`'s
        // conversion cannot fail here.
        data: Some(RawExtension(json!({ "template": template }))),
        revision: number,
    }
}

/// What `cr` holds as its template, as stored: `data.template`, not checked to be a
/// PodTemplateSpec.
pub fn stored_template(cr: &ControllerRevision) -> Option<&serde_json::Value> {
    cr.data.as_ref()?.0.get("template")
}

/// The pod template `cr` holds; `None` when it holds none or something else.
pub fn template(cr: &ControllerRevision) -> Option<PodTemplateSpec> {
    serde_json::from_value(stored_template(cr)?.clone()).ok()
}

/// Delete options that delete the object with uid `uid` and nothing else: an object created
/// under the same name meanwhile fails the precondition (409) instead.
pub fn exactly(uid: Option<String>) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::default()
    }
}

/// Deletes ControllerRevision `name` if it is still the one with uid `uid`; whether it deleted
/// it. One already gone (404) or whose name holds another object now (409, the uid
/// precondition) is left alone: either way the revision meant is no more.
pub async fn delete_exactly(
    api: &Api<ControllerRevision>,
    name: &str,
    uid: Option<String>,
) -> Result<bool, kube::Error> {
    match api.delete(name, &exactly(uid)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Deletes the ControllerRevisions named `doomed` in `namespace`, in that order, each by
/// [`delete_exactly`] as the object of that name in `listed` (what the caller chose them
/// from), logging each deletion as `logged_as`; stops at the first failure.
pub async fn delete_listed<R: Borrow<ControllerRevision>>(
    api: &Api<ControllerRevision>,
    namespace: &str,
    listed: &[R],
    doomed: Vec<String>,
    logged_as: &str,
) -> Result<(), DeleteError> {
    for name in doomed {
        let uid = listed
            .iter()
            .map(Borrow::borrow)
            .find(|cr| cr.name_any() == name)
            .and_then(|cr| cr.uid());
        let key = format!("{namespace}/{name}");
        match delete_exactly(api, &name, uid).await {
            Ok(true) => tracing::info!(revision = %key, "{logged_as}"),
            Ok(false) => {}
            Err(source) => return Err(DeleteError { name: key, source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use tower_service::Service;

    use super::*;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "apps.cafe.io/v1alpha1".into(),
            kind: "InPlaceSet".into(),
            name: "demo".into(),
            uid: "u-1".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    fn pod_template() -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "demo"}},
            "spec": {"containers": [{"name": "app", "image": "demo:1"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_built_revision_is_named_labelled_owned_and_holds_the_template() {
        let labels = BTreeMap::from([("a".to_string(), "b".to_string())]);
        let cr = build(
            owner(),
            "prod",
            "demo-abc",
            labels.clone(),
            &pod_template(),
            3,
        );
        assert_eq!(cr.metadata.name.as_deref(), Some("demo-abc"));
        assert_eq!(cr.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(cr.metadata.labels, Some(labels));
        let owners = cr.metadata.owner_references.clone().unwrap();
        assert_eq!(
            owners,
            [OwnerReference {
                block_owner_deletion: Some(true),
                ..owner()
            }]
        );
        assert_eq!(cr.revision, 3);
        assert_eq!(
            cr.data.as_ref().unwrap().0,
            json!({ "template": pod_template() })
        );
        assert_eq!(template(&cr), Some(pod_template()));
    }

    #[test]
    fn a_missing_or_malformed_template_reads_as_none() {
        let mut cr = build(
            owner(),
            "prod",
            "demo-abc",
            BTreeMap::new(),
            &pod_template(),
            1,
        );
        cr.data = Some(RawExtension(json!({"template": "nope"})));
        assert_eq!(stored_template(&cr), Some(&json!("nope")));
        assert_eq!(template(&cr), None);
        cr.data = Some(RawExtension(json!({})));
        assert_eq!(stored_template(&cr), None);
        cr.data = None;
        assert_eq!(template(&cr), None);
    }

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    /// An API server that answers every request with one status code and body, and keeps each
    /// request as `METHOD path body`.
    struct Canned {
        code: u16,
        body: String,
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Service<Request<kube::client::Body>> for Canned {
        type Response = Response<Full<Bytes>>;
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
            let (code, body, seen) = (self.code, self.body.clone(), self.seen.clone());
            Box::pin(async move {
                let line = format!("{} {}", req.method(), req.uri().path());
                let sent = req.into_body().collect().await?.to_bytes();
                let sent = String::from_utf8_lossy(&sent);
                seen.lock().unwrap().push(format!("{line} {sent}"));
                Ok(Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?)
            })
        }
    }

    /// An Api on namespace `prod` of a server that answers every request with `code` (and a
    /// Status saying `answered <code>`), and the requests it receives.
    fn answering(code: u16) -> (Api<ControllerRevision>, Arc<Mutex<Vec<String>>>) {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": if code < 300 { "Success" } else { "Failure" },
            "message": format!("answered {code}"), "code": code,
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = Canned {
            code,
            body: body.to_string(),
            seen: seen.clone(),
        };
        let api = Api::namespaced(kube::Client::new(server, "default"), "prod");
        (api, seen)
    }

    /// What `delete_exactly` returns when the API server answers `code`, and the requests made.
    async fn delete_answered(code: u16) -> (Result<bool, kube::Error>, Vec<String>) {
        let (api, seen) = answering(code);
        let result = delete_exactly(&api, "demo-abc", Some("u-9".into())).await;
        let seen = seen.lock().unwrap().clone();
        (result, seen)
    }

    #[tokio::test]
    async fn delete_exactly_deletes_by_uid_and_tolerates_gone_or_replaced() {
        let (deleted, seen) = delete_answered(200).await;
        assert!(deleted.unwrap());
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0]
                .starts_with("DELETE /apis/apps/v1/namespaces/prod/controllerrevisions/demo-abc "),
            "{seen:?}"
        );
        assert!(
            seen[0].contains(r#""preconditions":{"uid":"u-9""#),
            "{seen:?}"
        );

        assert!(!delete_answered(404).await.0.unwrap(), "already gone");
        assert!(!delete_answered(409).await.0.unwrap(), "replaced meanwhile");
        match delete_answered(500).await.0 {
            Err(kube::Error::Api(s)) => {
                assert_eq!((s.code, s.message.as_str()), (500, "answered 500"))
            }
            other => panic!("expected the API error, got {other:?}"),
        }
    }

    fn listed(name: &str, uid: &str) -> ControllerRevision {
        let mut cr = build(owner(), "prod", name, BTreeMap::new(), &pod_template(), 1);
        cr.metadata.uid = Some(uid.into());
        cr
    }

    #[tokio::test]
    async fn delete_listed_deletes_each_named_revision_as_listed_and_stops_at_a_failure() {
        let crs = [listed("demo-a", "u-a"), listed("demo-b", "u-b")];
        let (api, seen) = answering(200);
        let doomed = vec!["demo-b".to_string(), "demo-a".to_string()];
        delete_listed(&api, "prod", &crs, doomed, "deleted")
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0].contains("/controllerrevisions/demo-b "), "{seen:?}");
        assert!(seen[0].contains(r#""uid":"u-b""#), "{seen:?}");
        assert!(seen[1].contains("/controllerrevisions/demo-a "), "{seen:?}");
        assert!(seen[1].contains(r#""uid":"u-a""#), "{seen:?}");

        let (api, seen) = answering(404);
        let doomed = vec!["demo-a".to_string(), "demo-b".to_string()];
        delete_listed(&api, "prod", &crs, doomed, "deleted")
            .await
            .unwrap();
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "a revision gone already is no failure"
        );

        let (api, seen) = answering(403);
        let doomed = vec!["demo-a".to_string(), "demo-b".to_string()];
        let err = delete_listed(&api, "prod", &crs, doomed, "deleted")
            .await
            .unwrap_err();
        assert_eq!(err.name, "prod/demo-a");
        assert_eq!(
            err.to_string(),
            "deleting ControllerRevision prod/demo-a: answered 403"
        );
        assert_eq!(seen.lock().unwrap().len(), 1, "stops at the first failure");
    }
}
