//! A client whose pod watches deliver every event `delay` late: a slow watch, as under a loaded
//! API server or network, so the controller's pod cache lags behind its own writes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cafe_sim::sim::Sim;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use kube::client::{Body, ClientBuilder, DynBody};
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub async fn client(sim: &Sim, cluster: &str, delay: Duration) -> kube::Client {
    ClientBuilder::try_from(crate::common::config(sim, cluster).await)
        .expect("client builder")
        .with_layer(&SlowPodWatchLayer(delay))
        .build()
}

struct SlowPodWatchLayer(Duration);

impl<S> tower_layer::Layer<S> for SlowPodWatchLayer {
    type Service = SlowPodWatch<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SlowPodWatch {
            inner,
            delay: self.0,
        }
    }
}

struct SlowPodWatch<S> {
    inner: S,
    delay: Duration,
}

fn is_pod_watch<B>(req: &Request<B>) -> bool {
    req.uri().path().ends_with("/pods")
        && req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true"))
}

impl<S> Service<Request<Body>> for SlowPodWatch<S>
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
        let slow = is_pod_watch(&req);
        let delay = self.delay;
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if !slow {
                return Ok(response);
            }
            Ok(response.map(|body| Box::new(delayed(body, delay)) as Box<DynBody>))
        })
    }
}

/// Every frame of `body`, each released `delay` after it arrived.
fn delayed(
    mut body: Box<DynBody>,
    delay: Duration,
) -> impl http_body::Body<Data = Bytes, Error = BoxError> + Send + Unpin {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let due = tokio::time::Instant::now() + delay;
            if tx.send((due, frame)).is_err() {
                break;
            }
        }
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let (due, frame): (_, Result<Frame<Bytes>, BoxError>) = rx.recv().await?;
        tokio::time::sleep_until(due).await;
        Some((frame, rx))
    });
    StreamBody::new(Box::pin(frames))
}
