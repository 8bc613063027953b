//! The public gateway: accepts HTTP/1.1 and HTTP/2 (h2c) connections, gives every request
//! an id, routes it by longest path prefix to a service, and drains gracefully on shutdown.
//!
//! The gateway owns no services: it reads the current [`RouteTable`] from a [`Routes`]
//! handle for each request, so whoever owns the handle can swap the table at any time.
//! Each service's [`Target`] admits its requests under the service's limits
//! ([`Limiter`]) and asks its revision's [`ServiceSlot`] for the loaded code.

mod admission;
mod dispatch;
mod errors;
mod listener;
mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpListener;

pub use admission::{Admission, Limiter, Permit, Rejection};
pub use dispatch::{Failure, dispatch};
pub use errors::{failure_response, invoke_error_response, json_error};
pub use listener::{FdBudget, ListenerConfig, default_per_client, serve_connections};
pub use routes::{
    AsyncAccepted, AsyncRefusal, AsyncSink, Backend, Lease, LoadError, Loaded, RouteTable, Routes,
    ServiceSlot, Target,
};
use tessera_events::invocation;
pub use tessera_runtime::ResponseBody;
use tessera_runtime::headers;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Timeouts and connection caps of the public listener.
    pub listener: ListenerConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listener: ListenerConfig::new("gateway", 10_000),
        }
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves, then stops accepting and
/// waits (up to the drain timeout) for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    listener::serve_connections(
        listener,
        config.listener,
        move |_peer| {
            let routes = routes.clone();
            move |request| {
                let routes = routes.clone();
                Box::pin(async move {
                    match handle(request, routes).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                }) as std::pin::Pin<Box<dyn Future<Output = _> + Send>>
            }
        },
        shutdown,
    )
    .await
}

/// Binds the gateway's listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

async fn handle(
    mut request: Request<Incoming>,
    routes: Routes,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    let request_id = request_id(&request);
    let id_header = HeaderValue::from_str(&request_id).expect("request ids are visible ASCII");
    request
        .headers_mut()
        .insert(headers::REQUEST_ID, id_header.clone());
    strip_platform_headers(request.headers_mut());

    let table = routes.current();
    let host = request_host(&request);
    let mut response = match table.route(host.as_deref(), request.uri().path()) {
        None => json_error(
            StatusCode::NOT_FOUND,
            "no_route",
            &format!("no service answers {}", request.uri().path()),
            &request_id,
        ),
        Some(target) if wants_async(&request) => enqueue(target, request, &request_id).await,
        Some(target) => match choose(target, &request) {
            Ok(backend) => forward(target, backend, request, &request_id, start).await,
            Err(message) => json_error(
                StatusCode::NOT_FOUND,
                "no_such_revision",
                &message,
                &request_id,
            ),
        },
    };
    response
        .headers_mut()
        .insert(headers::REQUEST_ID, id_header);
    Ok(response)
}

/// Removes what only the platform may say from an outside request: who is calling and how
/// deep, that this is an event delivery and which attempt (`ce-*`), and every other
/// `x-tessera-*` header but the ones a client uses to talk to the gateway itself
/// ([`headers::is_platform_only`]). So a client can pose neither as another service of
/// the app nor as the platform delivering an event.
fn strip_platform_headers(request_headers: &mut http::HeaderMap) {
    let forged: Vec<http::HeaderName> = request_headers
        .keys()
        .filter(|name| headers::is_platform_only(name.as_str()))
        .cloned()
        .collect();
    for name in forged {
        request_headers.remove(name);
    }
}

fn wants_async<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(headers::ASYNC)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim(), "1" | "true"))
}

/// Queues an async invocation: `202 Accepted` with its id once it is durable.
async fn enqueue(
    target: &Target,
    request: Request<Incoming>,
    request_id: &str,
) -> Response<ResponseBody> {
    let Some(sink) = target.async_sink().cloned() else {
        return json_error(
            StatusCode::NOT_IMPLEMENTED,
            "async_unavailable",
            &format!(
                "service `{}` cannot be invoked asynchronously here",
                target.service
            ),
            request_id,
        );
    };
    let callback = request
        .headers()
        .get(headers::CALLBACK)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(url) = &callback
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_callback",
            &format!(
                "{} must be an http:// or https:// URL, not `{url}`",
                headers::CALLBACK
            ),
            request_id,
        );
    }
    if let Err(refusal) = sink.check(callback.as_deref()) {
        return refusal_response(refusal, request_id);
    }
    let (parts, body) = request.into_parts();
    let body = match read_async_body(body).await {
        Ok(body) => body,
        Err((status, code, message)) => return json_error(status, code, &message, request_id),
    };
    let async_request = invocation::Request {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string()),
        headers: stored_headers(&parts.headers),
        body,
        callback,
    };
    match tokio::task::spawn_blocking(move || sink.enqueue(async_request)).await {
        Ok(Ok(accepted)) => accepted_response(&accepted),
        Ok(Err(refusal)) => refusal_response(refusal, request_id),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("cannot queue the invocation: {e}"),
            request_id,
        ),
    }
}

/// Reads an async request's body, which is stored until the invocation runs: it must
/// arrive whole and in time (a request in flight is exempt from the connection's idle
/// timeout). Errors are (status, code, message) for the client.
async fn read_async_body(body: Incoming) -> Result<Vec<u8>, (StatusCode, &'static str, String)> {
    let collected = tokio::time::timeout(
        invocation::BODY_TIMEOUT,
        http_body_util::Limited::new(body, invocation::MAX_BODY).collect(),
    )
    .await;
    match collected {
        Ok(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "an async request body may be at most {} bytes",
                    invocation::MAX_BODY
                ),
            ))
        }
        Ok(Err(e)) => Err((
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("cannot read the request body: {e}"),
        )),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "an async request body must arrive within {}s",
                invocation::BODY_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// The headers an async request keeps: not the platform's, not hop-by-hop ones, and not
/// the length of a body that is stored whole.
fn stored_headers(request_headers: &http::HeaderMap) -> Vec<(String, String)> {
    request_headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !name.starts_with(headers::PLATFORM_PREFIX)
                && !matches!(
                    name,
                    "host"
                        | "connection"
                        | "keep-alive"
                        | "transfer-encoding"
                        | "te"
                        | "upgrade"
                        | "content-length"
                )
        })
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

/// `202 Accepted` with the invocation's id and where to read its status.
fn accepted_response(accepted: &AsyncAccepted) -> Response<ResponseBody> {
    let body = serde_json::json!({ "id": accepted.id, "status": accepted.status_path });
    let mut response = Response::new(errors::full(body.to_string()));
    *response.status_mut() = StatusCode::ACCEPTED;
    let response_headers = response.headers_mut();
    response_headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(value) = HeaderValue::from_str(&accepted.id) {
        response_headers.insert(headers::INVOCATION, value);
    }
    response
}

fn refusal_response(refusal: AsyncRefusal, request_id: &str) -> Response<ResponseBody> {
    let mut response = json_error(
        refusal.status,
        refusal.code,
        &format!("cannot queue the invocation: {}", refusal.message),
        request_id,
    );
    if let Some(after) = refusal.retry_after {
        let secs = after.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The backend for a request: the pinned revision if the request names one, else the
/// next one by weight.
fn choose<'t, B>(target: &'t Target, request: &Request<B>) -> Result<&'t Backend, String> {
    if let Some(pinned) = request.headers().get(headers::REVISION) {
        let text = pinned.to_str().unwrap_or_default();
        let id = text.strip_prefix('r').unwrap_or(text).parse::<u32>().ok();
        return id.and_then(|id| target.revision(id)).ok_or_else(|| {
            format!(
                "service `{}` has no serving revision `{text}`",
                target.service
            )
        });
    }
    target.pick().ok_or_else(|| {
        format!(
            "service `{}` has no revision taking traffic",
            target.service
        )
    })
}

async fn forward(
    target: &Target,
    backend: &Backend,
    request: Request<Incoming>,
    request_id: &str,
    start: Instant,
) -> Response<ResponseBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let service = &target.service;
    let mut response = match dispatch(target, backend, request, request_id).await {
        Ok(response) => {
            tracing::debug!(service, %method, %path, status = response.status().as_u16(), elapsed = ?start.elapsed(), request_id, "request");
            response
        }
        // Refusals under load are counted and reported in bursts, not logged one by one.
        Err(failure @ Failure::Rejected(_)) => failure_response(&failure, request_id),
        Err(failure) => {
            tracing::warn!(service, %method, %path, elapsed = ?start.elapsed(), request_id, "{failure}");
            failure_response(&failure, request_id)
        }
    };
    if let Some(revision) = backend.revision {
        let value = HeaderValue::from_str(&format!("r{revision}")).expect("ascii");
        response.headers_mut().insert(headers::REVISION, value);
    }
    response
}

/// The host a request is for (HTTP/2 authority or HTTP/1 `Host`), lowercase, without
/// port.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.host().to_string(),
        None => {
            let host = request.headers().get(http::header::HOST)?.to_str().ok()?;
            let (name, _) = tessera_model::split_host_port(host)?;
            name.to_string()
        }
    };
    // `shop.localhost.` is the same name as `shop.localhost`.
    Some(authority.trim_end_matches('.').to_ascii_lowercase())
}

/// The client's request id when it sent a sane one, else a fresh time-ordered one.
fn request_id<B>(request: &Request<B>) -> String {
    let client = request
        .headers()
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    match client {
        Some(id) => id.to_string(),
        None => uuid::Uuid::now_v7().simple().to_string(),
    }
}
