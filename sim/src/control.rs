//! The control endpoint behind `cafe sim ctl`: loopback HTTP, bearer token from sim.json.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;

pub async fn serve(
    listener: tokio::net::TcpListener,
    clusters: Vec<Arc<Cluster>>,
    token: String,
    shutdown: CancellationToken,
) {
    let clusters = Arc::new(clusters);
    let token = Arc::new(token);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let clusters = clusters.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let clusters = clusters.clone();
                let token = token.clone();
                async move { Ok::<_, Infallible>(handle(&clusters, &token, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn reply(code: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = code;
    r
}

fn handle(
    clusters: &[Arc<Cluster>],
    token: &str,
    req: http::Request<Incoming>,
) -> Response<Full<Bytes>> {
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth.strip_prefix("Bearer ") != Some(token) {
        return reply(StatusCode::UNAUTHORIZED, "bad control token\n".into());
    }
    let q: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let name = q.get("cluster").cloned().unwrap_or_default();
    let Some(cluster) = clusters.iter().find(|c| c.name == name) else {
        let known: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        return reply(
            StatusCode::NOT_FOUND,
            format!("no cluster {name:?}; clusters are: {}\n", known.join(", ")),
        );
    };
    let num = |k: &str| q.get(k).and_then(|v| v.parse::<f64>().ok());
    match req.uri().path() {
        "/outage" => {
            let seconds = num("seconds").unwrap_or(0.0).max(0.0);
            cluster.faults.outage(Duration::from_secs_f64(seconds));
            reply(
                StatusCode::OK,
                format!("{name}: unreachable for {seconds}s\n"),
            )
        }
        "/inject-errors" => {
            let codes: Vec<u16> = q
                .get("code")
                .map_or("500", String::as_str)
                .split(',')
                .filter_map(|c| c.trim().parse().ok())
                .collect();
            let rate = num("rate").unwrap_or(1.0);
            let seconds = num("seconds").unwrap_or(0.0).max(0.0);
            cluster
                .faults
                .inject_error_mix(&codes, rate, Duration::from_secs_f64(seconds));
            let codes: Vec<String> = codes.iter().map(u16::to_string).collect();
            reply(
                StatusCode::OK,
                format!(
                    "{name}: answering {rate} of requests with {} for {seconds}s\n",
                    codes.join(" or ")
                ),
            )
        }
        "/slow" => {
            let max = num("max-delay-ms").unwrap_or(500.0).max(0.0);
            let seconds = num("seconds").unwrap_or(0.0).max(0.0);
            cluster.faults.slow(
                Duration::from_secs_f64(max / 1000.0),
                Duration::from_secs_f64(seconds),
            );
            reply(
                StatusCode::OK,
                format!("{name}: every answer delayed by 0-{max}ms for {seconds}s\n"),
            )
        }
        "/cut-watches" => {
            cluster.faults.cut_watches();
            reply(StatusCode::OK, format!("{name}: watches cut\n"))
        }
        "/compact" => {
            cluster.store.write(|s| s.compact());
            reply(StatusCode::OK, format!("{name}: watch history compacted\n"))
        }
        other => reply(
            StatusCode::NOT_FOUND,
            format!("unknown control action {other}\n"),
        ),
    }
}
