//! The HTTPS front of a simulated cluster: TLS, authentication, impersonation and RBAC
//! authorization (see `auth.rs`), fault injection, metrics and the call record, and dispatch to
//! discovery, OpenAPI and resource handlers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::{self, Reply, Request};
use crate::cluster::Cluster;
use crate::metrics::{CallRecord, RequestLabels};
use crate::rbac::{Attributes, UserInfo};
use crate::route::{self, Route};
use crate::status::ApiError;
use crate::{auth, discovery, openapi, registry};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Raised to make hyper drop the connection (simulated outage).
#[derive(Debug, thiserror::Error)]
#[error("simulated outage: connection dropped")]
pub struct Dropped;

pub async fn serve(
    cluster: Arc<Cluster>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cluster.identity.server_config.clone());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((tcp, _peer)) = accepted else { continue };
        if cluster.faults.in_outage() {
            // Refuse: close before the TLS handshake, as a dead server's port would.
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let cluster = cluster.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let cluster = cluster.clone();
                async move { handle(cluster, req).await }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    if let Some(s) = e.retry_after_seconds
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    r
}

fn query_of(uri: &http::Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn header(req: &http::Request<Incoming>, name: http::header::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn handle(
    cluster: Arc<Cluster>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    if cluster.faults.in_outage() {
        return Err(Dropped);
    }
    if let Some(delay) = cluster.faults.delay() {
        tokio::time::sleep(delay).await;
    }
    let path = req.uri().path().to_string();
    let route = cluster
        .store
        .read(|s| route::parse(&path, |g, v, p| s.registry.find(g, v, p).is_some()));
    let public = matches!(route, Route::Version | Route::Health);
    let user = if public {
        None
    } else {
        let auth = header(&req, http::header::AUTHORIZATION);
        let token = auth.strip_prefix("Bearer ").unwrap_or("");
        let Some(caller) = auth::authenticate(&cluster, token) else {
            return Ok(error_response(&ApiError::new(
                401,
                "Unauthorized",
                "Unauthorized",
            )));
        };
        let wanted = auth::Impersonation::from_headers(req.headers());
        match auth::impersonate(&cluster, caller, &wanted) {
            Ok(user) => Some(user),
            Err(e) => return Ok(error_response(&e)),
        }
    };
    let query = query_of(req.uri());
    let request = Request {
        method: req.method().clone(),
        accept: header(&req, http::header::ACCEPT),
        content_type: header(&req, http::header::CONTENT_TYPE),
        user_agent: header(&req, http::header::USER_AGENT),
        query,
        body: Bytes::new(),
    };
    let (mut request, body) = (request, req.into_body());
    request.body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(error_response(&ApiError::bad_request(
                "could not read the request body",
            )));
        }
    };
    let Some(user) = user else {
        return Ok(dispatch(&cluster, route, &request, None).await);
    };
    let attrs = auth::attributes(&route, &request, &path);
    let decision = auth::authorize(&cluster, &user, &attrs);
    let denied = if decision.allowed {
        match auth::apply_create_check(&cluster, &route, &request, &attrs) {
            Some(create) => {
                let decision = auth::authorize(&cluster, &user, &create);
                // The check shows in the call record (not in the request metrics: it is no
                // request of its own) as the create it authorizes.
                cluster.calls.push(call_record(
                    &user,
                    &create,
                    &request,
                    if decision.allowed { 201 } else { 403 },
                ));
                (!decision.allowed).then(|| auth::forbidden(&user, &create, &decision.reason))
            }
            None => None,
        }
        .or_else(|| owner_references_admitted(&cluster, &user, &route, &request, &attrs).err())
        .or_else(|| auth::check_escalation(&cluster, &user, &attrs, &request).err())
    } else {
        Some(auth::forbidden(&user, &attrs, &decision.reason))
    };
    if let Some(e) = denied {
        if let Route::Resource(path) = &route {
            record(&cluster, &user, &attrs, &request, path, e.code);
        }
        return Ok(error_response(&e));
    }
    if let Some(code) = cluster.faults.injected_error() {
        let mut e = ApiError::new(
            code,
            match code {
                409 => "Conflict",
                429 => "TooManyRequests",
                _ => "InternalError",
            },
            format!("injected fault ({code}) by cafe sim ctl inject-errors"),
        );
        if code == 429 {
            e.retry_after_seconds = Some(1);
        }
        if let Route::Resource(path) = &route {
            record(&cluster, &user, &attrs, &request, path, code);
        }
        return Ok(error_response(&e));
    }
    Ok(dispatch(&cluster, route, &request, Some((&user, &attrs))).await)
}

async fn dispatch(
    cluster: &Arc<Cluster>,
    route: Route,
    req: &Request,
    caller: Option<(&UserInfo, &Attributes)>,
) -> Response<Body> {
    let reg = || cluster.store.registry();
    match route {
        Route::Version => json_response(
            200,
            &json!({
                "major": "1",
                "minor": cluster.minor(),
                "gitVersion": format!("v{}.0", cluster.version),
                "gitCommit": "cafe-sim",
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24",
                "compiler": "gc",
                "platform": "linux/amd64",
            }),
        ),
        Route::Health => {
            let mut r = Response::new(full("ok"));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
            r
        }
        Route::Metrics => {
            let mut r = Response::new(full(cluster.metrics.encode()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        Route::OpenApiV3Root => json_response(200, &openapi::root(&reg())),
        Route::OpenApiV3 { group, version } => {
            let r = reg();
            if r.in_group_version(&group, &version).is_empty() {
                error_response(&ApiError::not_found_path(&format!(
                    "openapi/v3 {group}/{version}"
                )))
            } else {
                json_response(200, &openapi::document(&r, &group, &version))
            }
        }
        Route::CoreVersions => {
            json_response(200, &discovery::core_versions(&cluster.address.to_string()))
        }
        Route::Groups => json_response(200, &discovery::group_list(&reg())),
        Route::Group(g) => match discovery::group(&reg(), &g) {
            Some(v) => json_response(200, &v),
            None => error_response(&ApiError::not_found_path(&format!("apis/{g}"))),
        },
        Route::ResourceList { group, version } => {
            match discovery::resource_list(&reg(), &group, &version) {
                Some(v) => json_response(200, &v),
                None => error_response(&ApiError::not_found_path(&format!("{group}/{version}"))),
            }
        }
        Route::Resource(path) => {
            let Some((user, attrs)) = caller else {
                return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
            };
            let result = if registry::is_review(&path.group, &path.plural) {
                auth::review(cluster, user, &path, req)
            } else {
                api::handle(cluster, req, &path)
            };
            let code = match &result {
                Ok(Reply::Json(c, _)) => *c,
                Ok(Reply::Watch(_)) => 200,
                Err(e) => e.code,
            };
            record(cluster, user, attrs, req, &path, code);
            match result {
                Ok(Reply::Json(code, v)) => json_response(code, &v),
                Ok(Reply::Watch(w)) => watch_response(cluster.clone(), w),
                Err(e) => error_response(&e),
            }
        }
        Route::NotFound => error_response(&ApiError::not_found_path(&format!("{:?}", req.method))),
    }
}

/// Counts the request in the metrics and appends it to the per-user call record.
fn record(
    cluster: &Cluster,
    user: &UserInfo,
    attrs: &Attributes,
    req: &Request,
    path: &route::ResourcePath,
    code: u16,
) {
    cluster.metrics.record(RequestLabels {
        cluster: cluster.name.clone(),
        verb: api::verb_of(req, path).to_string(),
        resource: path.plural.clone(),
        subresource: path.subresource.clone().unwrap_or_default(),
        code: code.to_string(),
    });
    cluster.calls.push(call_record(user, attrs, req, code));
}

/// The OwnerReferencesPermissionEnforcement checks of a write ([`auth::owner_reference_checks`]),
/// each in the call record as the request it authorizes.
fn owner_references_admitted(
    cluster: &Arc<Cluster>,
    user: &UserInfo,
    route: &Route,
    request: &Request,
    attrs: &Attributes,
) -> Result<(), ApiError> {
    if user.in_group(crate::rbac::MASTERS) {
        return Ok(());
    }
    for check in auth::owner_reference_checks(cluster, route, request, attrs)? {
        let decision = auth::authorize(cluster, user, &check.attrs);
        cluster.calls.push(call_record(
            user,
            &check.attrs,
            request,
            if decision.allowed { 200 } else { 403 },
        ));
        if !decision.allowed {
            return Err(auth::owner_forbidden(
                attrs,
                &check.object,
                &format!("{}: {}, <nil>", check.refusal, decision.reason),
            ));
        }
    }
    Ok(())
}

fn call_record(user: &UserInfo, attrs: &Attributes, req: &Request, code: u16) -> CallRecord {
    CallRecord {
        user: user.name.clone(),
        user_agent: req.user_agent.clone(),
        verb: attrs.verb.clone(),
        api_group: attrs.api_group.clone(),
        resource: attrs.resource.clone(),
        subresource: attrs.subresource.clone(),
        namespace: attrs.namespace.clone(),
        name: attrs.name.clone(),
        code,
        at: std::time::Instant::now(),
    }
}

fn watch_response(cluster: Arc<Cluster>, w: crate::watch::WatchRequest) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(crate::watch::run(cluster, w, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    })
    .boxed();
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    r
}
