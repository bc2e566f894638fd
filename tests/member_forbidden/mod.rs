//! A client whose cluster-wide pod lists and watches are refused with 403, as when the member
//! agent's ClusterRole lacks `list` on pods: its pod cache can never fill.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use cafe_sim::sim::Sim;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kube::client::{Body, ClientBuilder, DynBody};
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const FORBIDDEN: &str = "pods is forbidden: User \"system:serviceaccount:cafe-system:cafe-member\" \
     cannot list resource \"pods\" in API group \"\" at the cluster scope";

pub async fn client(sim: &Sim, cluster: &str) -> kube::Client {
    ClientBuilder::try_from(crate::common::config(sim, cluster).await)
        .expect("client builder")
        .with_layer(&ForbidPodListLayer)
        .build()
}

struct ForbidPodListLayer;

impl<S> tower_layer::Layer<S> for ForbidPodListLayer {
    type Service = ForbidPodList<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ForbidPodList { inner }
    }
}

struct ForbidPodList<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for ForbidPodList<S>
where
    S: Service<Request<Body>, Response = Response<Box<DynBody>>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Box<DynBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if req.uri().path() != "/api/v1/pods" {
            return Box::pin(self.inner.call(req));
        }
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": FORBIDDEN, "reason": "Forbidden", "code": 403,
        });
        let body = Full::new(Bytes::from(status.to_string()))
            .map_err(|never: Infallible| -> BoxError { match never {} });
        let response = Response::builder()
            .status(StatusCode::FORBIDDEN)
            .header("content-type", "application/json")
            .body(Box::new(body) as Box<DynBody>)
            .expect("a response");
        Box::pin(async move { Ok(response) })
    }
}
