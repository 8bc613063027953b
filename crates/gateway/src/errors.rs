//! Responses the gateway writes itself: JSON errors that carry a machine-readable code, a
//! message and the request id.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tessera_runtime::{InvokeError, ResponseBody};

use crate::dispatch::Failure;

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
pub fn invoke_error_response(error: InvokeError, request_id: &str) -> Response<ResponseBody> {
    failure_response(&Failure::Invoke(error), request_id)
}

/// The answer to a request that got none from its guest: `429` when the service is over
/// its own limit, `503` when it could not be served in time or the node is full (both
/// with `Retry-After`), else what the guest's failure means.
pub fn failure_response(failure: &Failure, request_id: &str) -> Response<ResponseBody> {
    let (status, code) = failure.status_and_code();
    let mut response = json_error(status, code, &failure.to_string(), request_id);
    if failure.is_transient() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
