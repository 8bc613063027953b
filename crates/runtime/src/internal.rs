//! Calls between services of one app: a guest sends an ordinary `wasi:http` request to
//! `http://<service>.internal/...`; if its manifest grants that origin, the request is
//! handed to the node's [`InternalRouter`] and served in-process (no socket), carrying the
//! caller's request id and a call depth that cuts off loops.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Host suffix that addresses a service of the caller's own app.
pub const INTERNAL_SUFFIX: &str = ".internal";
/// Deepest chain of internal calls; a call beyond it is answered `508 Loop Detected`.
pub const MAX_CALL_DEPTH: u32 = 8;

/// Who makes an internal call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub app: Arc<str>,
    pub service: Arc<str>,
    pub request_id: Arc<str>,
    /// The depth of the caller's own request; the call is one deeper.
    pub depth: u32,
}

/// The response future of an internal call.
pub type CallFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<WasiBody>, HttpError>> + Send>>;

/// Serves internal calls; the node implements it over its routing state. A refusal the
/// platform decides (no such service, overload, an open circuit) comes back as a
/// response with a JSON error body, so the guest sees an HTTP status it can act on.
pub trait InternalRouter: Send + Sync {
    fn call(&self, caller: Caller, callee: &str, request: http::Request<WasiBody>) -> CallFuture;
}

/// The callee's name if `host` (lowercase, without a trailing dot) addresses a service of
/// the same app.
pub(crate) fn callee(host: &str) -> Option<&str> {
    host.strip_suffix(INTERNAL_SUFFIX)
        .filter(|name| tessera_model::check_name(name).is_ok())
}

/// A JSON error response made by the platform for an internal call.
pub fn platform_response(status: u16, code: &str, message: &str) -> http::Response<WasiBody> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut response = http::Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
