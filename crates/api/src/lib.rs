//! The control REST API of a node, under `/v1` on the admin listener: artifacts, deploys,
//! traffic, rollback, listing and removal, services' logs, plus the OpenAPI document
//! describing them; and the node's Prometheus metrics at `/metrics`, behind the same auth.
//!
//! Only this crate derives serde for wire types; the node and store speak plain Rust.

pub mod client;
mod error;
mod logs;
mod openapi;
mod wire;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use http::{StatusCode, header};
use subtle::ConstantTimeEq;
use tessera_node::{Node, NodeError, ServiceRelease};
use tessera_store::DeployOptions;
use tessera_telemetry::Telemetry;

pub use error::ApiError;
pub use openapi::document as openapi_document;
pub use wire::*;

/// Largest component upload accepted, in bytes.
pub const MAX_UPLOAD: usize = 256 * 1024 * 1024;

/// Who may call the API.
#[derive(Clone)]
pub enum Auth {
    /// Every request must carry `Authorization: Bearer <token>`.
    Token(Arc<str>),
    /// No token: only for a loopback admin address, chosen explicitly (`--dev`).
    Open,
}

#[derive(Clone)]
struct Api {
    node: Node,
    telemetry: Telemetry,
    auth: Auth,
    /// Uploads read and checked at once; more wait, their bodies unread.
    uploads: Arc<tokio::sync::Semaphore>,
}

/// Uploads read and compiled at once: each can take a few hundred MB while its component
/// is checked.
pub const CONCURRENT_UPLOADS: usize = 2;
/// Longest pause within an upload's body.
const UPLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// The admin listener's router: `/v1` and `/metrics`.
pub fn router(node: Node, telemetry: Telemetry, auth: Auth) -> Router {
    let api = Api {
        node,
        telemetry,
        auth,
        uploads: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_UPLOADS)),
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{app}", get(get_app).delete(remove_app))
        .route("/v1/apps/{app}/deploy", post(deploy))
        .route("/v1/apps/{app}/services/{service}", get(get_service))
        .route(
            "/v1/apps/{app}/services/{service}/traffic",
            put(set_traffic),
        )
        .route("/v1/apps/{app}/services/{service}/rollback", post(rollback))
        .route("/v1/apps/{app}/services/{service}/logs", get(logs::logs))
        .route(
            "/v1/apps/{app}/services/{service}/secrets",
            get(list_secrets),
        )
        .route(
            "/v1/apps/{app}/services/{service}/secrets/{name}",
            put(set_secret).delete(delete_secret),
        )
        .route(
            "/v1/apps/{app}/topics/{topic}",
            post(publish).layer(DefaultBodyLimit::max(tessera_events::MAX_DATA_BYTES)),
        )
        .route(tessera_events::invocation::STATUS_ROUTE, get(invocation))
        .route("/v1/events", get(event_stats))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/dead-letters", get(list_dead_letters))
        .route("/v1/dead-letters/{id}", get(show_dead_letter))
        .route("/v1/dead-letters/redrive", post(redrive))
        .route(
            "/v1/artifacts/{sha256}",
            get(has_artifact)
                .head(has_artifact)
                .put(upload_artifact)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(api.clone(), authorize))
        .with_state(api)
}

async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    if let Auth::Token(token) = &api.auth {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Constant-time, so the token cannot be guessed byte by byte from timings.
        let ok: bool = presented.as_bytes().ct_eq(token.as_bytes()).into();
        if !ok {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token (set TESSERA_TOKEN)",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

/// Runs a blocking node operation (SQLite, compiling) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("control operation failed: {e}"),
        )),
    }
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

/// Prometheus scrapes: every metric, with the event subscriptions' depths read just now.
async fn metrics(State(api): State<Api>) -> Response {
    let node = api.node.clone();
    // A scrape still answers when the journal cannot be read; the event gauges then keep
    // their last values.
    match blocking(move || node.event_stats()).await {
        Ok(stats) => {
            for s in &stats {
                api.telemetry
                    .event_stats(&s.id, s.ready, s.in_flight, s.dead);
            }
        }
        Err(e) => tracing::warn!("metrics: cannot read event subscriptions: {}", e.message),
    }
    (
        [(header::CONTENT_TYPE, tessera_telemetry::CONTENT_TYPE)],
        api.telemetry.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /v1/openapi.json",
    )
}

async fn list_nodes(State(api): State<Api>) -> Result<Json<NodeList>, ApiError> {
    let members = blocking(move || api.node.members()).await?;
    Ok(Json(NodeList {
        nodes: members.iter().map(NodeView::from).collect(),
    }))
}

async fn list_apps(State(api): State<Api>) -> Result<Json<AppList>, ApiError> {
    let apps = blocking(move || api.node.apps()).await?;
    Ok(Json(AppList {
        apps: apps.iter().map(AppView::from).collect(),
    }))
}

async fn get_app(
    State(api): State<Api>,
    Path(app): Path<String>,
) -> Result<Json<AppView>, ApiError> {
    let name = app.clone();
    match blocking(move || api.node.app(&name)).await? {
        Some(state) => Ok(Json(AppView::from(&state))),
        None => Err(no_app(&app)),
    }
}

async fn remove_app(
    State(api): State<Api>,
    Path(app): Path<String>,
    query: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Removed>, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let name = app.clone();
    if blocking(move || api.node.remove_app(&name, query.purge)).await? || query.purge {
        Ok(Json(Removed { removed: app }))
    } else {
        Err(no_app(&app))
    }
}

async fn get_service(
    State(api): State<Api>,
    Path((app, service)): Path<(String, String)>,
) -> Result<Json<ServiceView>, ApiError> {
    let (a, s) = (app.clone(), service.clone());
    let state = blocking(move || api.node.app(&a))
        .await?
        .ok_or_else(|| no_app(&app))?;
    state
        .services
        .iter()
        .find(|x| x.name == s)
        .map(|x| Json(ServiceView::from(x)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("app `{app}` has no service `{service}`"),
            )
        })
}

async fn deploy(
    State(api): State<Api>,
    Path(app): Path<String>,
    body: Result<Json<DeployRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DeployResult>, ApiError> {
    let Json(request) = body.map_err(bad_json)?;
    if let Some(traffic) = request.traffic
        && !(1..=99).contains(&traffic)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_traffic",
            "traffic for a new revision must be between 1 and 99 percent",
        ));
    }
    let services = request
        .services
        .into_iter()
        .map(ServiceSpecJson::into_release)
        .collect::<Result<Vec<ServiceRelease>, String>>()
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, "invalid", message))?;
    let options = DeployOptions {
        only: request.only,
        traffic: request.traffic,
        keep: request.keep.unwrap_or(0),
        if_generation: None,
    };
    let outcome = blocking(move || api.node.deploy(&app, &services, &options)).await?;
    Ok(Json(DeployResult::from(outcome)))
}

async fn set_traffic(
    State(api): State<Api>,
    Path((app, service)): Path<(String, String)>,
    body: Result<Json<TrafficRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    let Json(request) = body.map_err(bad_json)?;
    let weights: Vec<(u32, u8)> = request
        .traffic
        .iter()
        .map(|t| (t.revision, t.percent))
        .collect();
    let state = blocking(move || api.node.set_traffic(&app, &service, &weights)).await?;
    Ok(Json(ServiceView::from(&state)))
}

async fn rollback(
    State(api): State<Api>,
    Path((app, service)): Path<(String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    // The body is optional: empty means "the previous revision".
    let body = body.map_err(bad_body)?;
    let to = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<RollbackRequest>(&body)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("invalid rollback request: {e}"),
                )
            })?
            .to
    };
    let state = blocking(move || api.node.rollback(&app, &service, to)).await?;
    Ok(Json(ServiceView::from(&state)))
}

async fn list_secrets(
    State(api): State<Api>,
    Path((app, service)): Path<(String, String)>,
) -> Result<Json<SecretList>, ApiError> {
    let names = blocking(move || api.node.secret_names(&app, &service)).await?;
    Ok(Json(SecretList {
        secrets: names
            .into_iter()
            .map(|(name, updated_at)| SecretView { name, updated_at })
            .collect(),
    }))
}

async fn set_secret(
    State(api): State<Api>,
    Path((app, service, name)): Path<(String, String, String)>,
    body: Result<Json<SecretValue>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(secret) = body.map_err(bad_json)?;
    blocking(move || api.node.set_secret(&app, &service, &name, &secret.value)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_secret(
    State(api): State<Api>,
    Path((app, service, name)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let (service_name, secret) = (service.clone(), name.clone());
    if blocking(move || api.node.delete_secret(&app, &service, &name)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("service `{service_name}` has no secret `{secret}`"),
        ))
    }
}

async fn publish(
    State(api): State<Api>,
    Path((app, topic)): Path<(String, String)>,
    headers: http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<PublishResult>), ApiError> {
    let data = body.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "a message may be at most {} bytes: {e}",
                tessera_events::MAX_DATA_BYTES
            ),
        )
    })?;
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = text("content-type");
    // A client retrying a publish sends the same `ce-id`; it is published once.
    let id = text("ce-id");
    let published = blocking(move || {
        api.node
            .publish(&app, &topic, data.to_vec(), content_type, id)
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PublishResult {
            id: published.id,
            new: published.new,
        }),
    ))
}

async fn event_stats(State(api): State<Api>) -> Result<Json<EventStats>, ApiError> {
    let stats = blocking(move || api.node.event_stats()).await?;
    Ok(Json(EventStats {
        subscriptions: stats.into_iter().map(Into::into).collect(),
    }))
}

async fn list_dead_letters(
    State(api): State<Api>,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let subscription = query.subscription.clone();
    let limit = query.limit.unwrap_or(100).min(10_000);
    let letters = blocking(move || api.node.dead_letters(&query.subscription, limit)).await?;
    Ok(Json(DeadLetterList {
        subscription,
        dead_letters: letters.into_iter().map(Into::into).collect(),
    }))
}

async fn show_dead_letter(
    State(api): State<Api>,
    Path(id): Path<String>,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadLetterView>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let (subscription, message) = (query.subscription.clone(), id.clone());
    match blocking(move || api.node.dead_letter(&query.subscription, &id)).await? {
        Some(letter) => Ok(Json(letter.into())),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead letter `{message}` on subscription `{subscription}`"),
        )),
    }
}

async fn redrive(
    State(api): State<Api>,
    body: Result<Json<RedriveRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Redriven>, ApiError> {
    let Json(request) = body.map_err(bad_json)?;
    let redriven = blocking(move || {
        api.node
            .redrive(&request.subscription, request.ids.as_deref())
    })
    .await?;
    Ok(Json(Redriven { redriven }))
}

async fn invocation(
    State(api): State<Api>,
    Path((app, service, id)): Path<(String, String, String)>,
) -> Result<Json<InvocationView>, ApiError> {
    let invocation = id.clone();
    let status = blocking(move || api.node.invocation(&app, &service, &id)).await?;
    let Some(status) = status else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no invocation `{invocation}` (unknown, or its result has expired)"),
        ));
    };
    let last = status.last;
    Ok(Json(InvocationView {
        id: invocation,
        state: status.state.as_str().to_string(),
        attempts: status.attempts,
        status: last.as_ref().map(|o| o.status),
        body: last
            .as_ref()
            .map(|o| String::from_utf8_lossy(&o.body).into_owned()),
        error: last.and_then(|o| o.error),
        updated: humantime::format_rfc3339_millis(status.updated).to_string(),
    }))
}

fn bad_query(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        rejection.body_text(),
    )
}

async fn has_artifact(State(api): State<Api>, Path(sha256): Path<String>) -> StatusCode {
    if api.node.has_artifact(&sha256) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

/// Streams an upload to a file beside the artifacts (never whole in memory), refusing a
/// body that does not start like a component at its first bytes and one over the limit as
/// soon as it passes it; at most [`CONCURRENT_UPLOADS`] are read and checked at once.
// Long because the upload is one streaming loop whose refusals (preamble, limit, stall,
// digest) must each clean up the staged file the same way.
async fn upload_artifact(
    State(api): State<Api>,
    Path(sha256): Path<String>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let _permit = api.uploads.acquire().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the node is stopping",
        )
    })?;
    let internal = |what: &str, e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot {what} the upload: {e}"),
        )
    };
    let staging = api.node.staging_dir();
    let staged = tempfile::Builder::new()
        .prefix(".upload-")
        .suffix(".tmp")
        .tempfile_in(&staging)
        .map_err(|e| internal("stage", e))?;
    let mut file = tokio::io::BufWriter::with_capacity(
        1 << 20,
        tokio::fs::File::from_std(staged.reopen().map_err(|e| internal("stage", e))?),
    );
    let (mut body, mut received, mut head) = (body, 0usize, Vec::with_capacity(8));
    loop {
        // A client that stops sending gives its upload slot back.
        let Ok(frame) = tokio::time::timeout(UPLOAD_STALL, body.frame()).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the upload sent nothing for {}s", UPLOAD_STALL.as_secs()),
            ));
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("cannot read the upload: {e}"),
            )
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        received += chunk.len();
        if received > MAX_UPLOAD {
            return Err(too_large(format!(
                "an upload may be at most {MAX_UPLOAD} bytes"
            )));
        }
        if head.len() < 8 {
            head.extend_from_slice(&chunk[..chunk.len().min(8 - head.len())]);
            if head.len() == 8 && !tessera_runtime::is_component(&head) {
                return Err(not_a_component());
            }
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| internal("write", e))?;
    }
    if head.len() < 8 {
        return Err(not_a_component());
    }
    file.flush().await.map_err(|e| internal("write", e))?;
    drop(file);
    let address = sha256.clone();
    blocking(move || {
        // The staged file is moved into place when stored; otherwise dropping it removes it.
        api.node.upload_file(staged.path(), &address)
    })
    .await
    .map_err(|e| {
        if e.code == "digest_mismatch" {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "digest_mismatch",
                format!("upload does not match its address {sha256}"),
            )
        } else {
            e
        }
    })?;
    Ok((StatusCode::CREATED, Json(Uploaded { sha256 })))
}

fn not_a_component() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_component",
        tessera_runtime::NOT_A_COMPONENT,
    )
}

fn no_app(app: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no app named `{app}`"),
    )
}

/// A JSON body that could not be read: 413 when it is over the limit, else 400.
fn bad_json(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large(rejection.body_text());
    }
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_json",
        rejection.body_text(),
    )
}

fn bad_body(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large(rejection.body_text());
    }
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_body",
        rejection.body_text(),
    )
}

fn too_large(detail: String) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the request body is over this endpoint's limit: {detail}"),
    )
}
