//! Responses the gateway writes itself: JSON errors that carry a machine-readable code, a
//! message and the request id.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tessera_runtime::{InvokeError, ResponseBody};

/// Builds a JSON error response: `{"error": {"code", "message", "request_id"}}`.
pub fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "request_id": request_id }
    });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn full(text: String) -> ResponseBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The status and code a failed invocation is answered with.
pub fn invoke_error_response(error: &InvokeError, request_id: &str) -> Response<ResponseBody> {
    let (status, code) = match error {
        InvokeError::Trap { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "guest_trap"),
        InvokeError::MemoryLimit { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "memory_limit"),
        InvokeError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        InvokeError::NoResponse { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "no_response"),
        InvokeError::GuestError { .. } => (StatusCode::BAD_GATEWAY, "guest_error"),
        InvokeError::Capacity => (StatusCode::SERVICE_UNAVAILABLE, "capacity"),
        InvokeError::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let mut response = json_error(status, code, &error.to_string(), request_id);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
