//! The admin HTTP server of `cafe hub` and `cafe member` (plain HTTP, for the kubelet's probes
//! and Prometheus):
//!
//! - `/healthz`: 200 `ok` while the process serves (it stops serving when its controllers stop);
//! - `/readyz`: 200 `ok` once every watch has synced, else 503 naming those that have not
//!   (on a leader and on followers alike: a follower's caches are as warm);
//! - `/metrics`: the Prometheus exposition of [`super::metrics::Metrics`].
//!
//! It stops with the process: on `shutdown` it accepts no more connections and lets the ones
//! open finish their request.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Telemetry;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("--admin-address {address}: cannot listen: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Not the admin server's own, but part of the same frame (see `serve`): without signal
    /// handlers a SIGTERM would kill the process instead of stopping it gracefully.
    #[error("installing the SIGINT/SIGTERM handlers: {0}")]
    Signal(#[source] std::io::Error),
}

/// The running server.
pub struct AdminServer {
    /// Where it listens (the port chosen when asked for port 0).
    pub address: SocketAddr,
    pub task: JoinHandle<()>,
}

/// Listens on `address` and serves until `shutdown`.
pub async fn start(
    address: SocketAddr,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> Result<AdminServer, AdminError> {
    let bind = |source| AdminError::Bind { address, source };
    let listener = TcpListener::bind(address).await.map_err(bind)?;
    let address = listener.local_addr().map_err(bind)?;
    let task = tokio::spawn(accept(listener, telemetry, shutdown));
    Ok(AdminServer { address, task })
}

async fn accept(listener: TcpListener, telemetry: Telemetry, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: passing, and the next accept may work.
                    tracing::debug!(%error, "admin server: accept failed");
                    continue;
                }
            },
        };
        let telemetry = telemetry.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &telemetry);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "admin server: connection failed");
            }
        });
    }
}

/// The answer to one request: a pure function of the path and the telemetry.
pub fn respond(request: &Request<Incoming>, telemetry: &Telemetry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = answer(request.uri().path(), telemetry);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

const TEXT: &str = "text/plain; charset=utf-8";
/// What prometheus-client writes (OpenMetrics text, ending in `# EOF`).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn answer(path: &str, telemetry: &Telemetry) -> (StatusCode, &'static str, String) {
    match path {
        "/healthz" | "/livez" => (StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => {
            if telemetry.readiness.is_ready() {
                (StatusCode::OK, TEXT, "ok\n".into())
            } else {
                let pending = telemetry.readiness.pending();
                let body = if pending.is_empty() {
                    "not ready: no watch started yet\n".to_string()
                } else {
                    format!("not ready: not synced: {}\n", pending.join(", "))
                };
                (StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
            }
        }
        "/metrics" => match telemetry.metrics.encode() {
            Ok(text) => (StatusCode::OK, OPENMETRICS, text),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "encoding the metrics failed\n".into(),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_names_what_has_not_synced() {
        let telemetry = Telemetry::default();
        let (status, _, body) = answer("/readyz", &telemetry);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: no watch started yet\n");
        telemetry.readiness.register("pods");
        telemetry.readiness.register("inplacesets");
        let (status, _, body) = answer("/readyz", &telemetry);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: not synced: inplacesets, pods\n");
        telemetry.readiness.mark_synced("pods");
        telemetry.readiness.mark_synced("inplacesets");
        assert_eq!(answer("/readyz", &telemetry).0, StatusCode::OK);
        assert_eq!(answer("/healthz", &telemetry).0, StatusCode::OK);
        assert_eq!(answer("/nope", &telemetry).0, StatusCode::NOT_FOUND);
    }
}
