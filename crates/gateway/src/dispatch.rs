//! Runs one request on one backend of a target: admission under the service's limits, its
//! revision's code (loaded on demand), the guest, and the request's metrics. The running
//! slot and the loaded service stay held until the response body has been sent or
//! dropped, so the limit bounds what really runs, streaming included.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tessera_runtime::{InvokeError, ResponseBody};
use tessera_telemetry::{InFlight, ServiceLabels, Telemetry};

use crate::admission::{Permit, Rejection};
use crate::routes::{Backend, Lease, LoadError, Target};

/// Why a request got no answer from its guest.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Refused by the service's admission limits before reaching the guest.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The revision's code could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The guest (or the runtime on its behalf) failed the request.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
}

impl Failure {
    /// The status the request is answered with, and the error code of the JSON body.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Failure::Rejected(Rejection::Overloaded { .. }) => {
                (StatusCode::TOO_MANY_REQUESTS, "overloaded")
            }
            Failure::Rejected(Rejection::QueueTimeout { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "queue_timeout")
            }
            Failure::Load(_) => (StatusCode::INTERNAL_SERVER_ERROR, "load_failed"),
            Failure::Invoke(error) => match error {
                InvokeError::Trap { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "guest_trap"),
                InvokeError::MemoryLimit { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "memory_limit")
                }
                InvokeError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                InvokeError::NoResponse { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "no_response")
                }
                InvokeError::GuestError { .. } => (StatusCode::BAD_GATEWAY, "guest_error"),
                InvokeError::Capacity => (StatusCode::SERVICE_UNAVAILABLE, "capacity"),
                InvokeError::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }

    /// Whether the client should come back shortly (`Retry-After`): the refusal says
    /// nothing about the request itself, only about load.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Failure::Rejected(_) | Failure::Invoke(InvokeError::Capacity)
        )
    }
}

/// The fault kind metrics count for a failed invocation; `None` for a full instance
/// pool, which is a rejection, not a fault of the guest.
fn fault_kind(error: &InvokeError) -> Option<&'static str> {
    Some(match error {
        InvokeError::Trap { .. } => "trap",
        InvokeError::MemoryLimit { .. } => "memory_limit",
        InvokeError::Timeout { .. } => "timeout",
        InvokeError::NoResponse { .. } => "no_response",
        InvokeError::GuestError { .. } => "guest_error",
        InvokeError::Internal { .. } => "internal",
        InvokeError::Capacity => return None,
    })
}

/// Serves `request` on `backend` of `target`, counting it in the target's telemetry. On
/// success the response body holds the request's running slot and loaded service until it
/// ends or is dropped.
pub async fn dispatch<B>(
    target: &Target,
    backend: &Backend,
    request: Request<B>,
    request_id: &str,
) -> Result<Response<ResponseBody>, Failure>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<<ResponseBody as Body>::Error>,
{
    let start = Instant::now();
    let telemetry = target.telemetry();
    let labels = &backend.labels;
    let failed = |failure: Failure| {
        if let Some(telemetry) = telemetry {
            if let Failure::Invoke(error) = &failure {
                match fault_kind(error) {
                    Some(kind) => telemetry.fault(labels, kind),
                    None => telemetry.rejected(labels, "capacity"),
                }
            }
            let (status, _) = failure.status_and_code();
            telemetry.request_finished(labels, status.as_u16(), start.elapsed());
        }
        failure
    };
    let permit = target.admit(backend).await.map_err(|r| failed(r.into()))?;
    let lease = backend.service.get().await.map_err(|e| failed(e.into()))?;
    let in_flight = telemetry.map(|t| t.request_started(labels));
    let response = match lease.handle(request, request_id).await {
        Ok(response) => response,
        Err(error) => {
            if let Some(telemetry) = telemetry {
                telemetry.set_instance_memory(labels, lease.last_instance_memory());
            }
            return Err(failed(error.into()));
        }
    };
    let status = response.status().as_u16();
    Ok(response.map(|body| {
        Guarded {
            body,
            finish: Some(Finish {
                _permit: permit,
                _in_flight: in_flight,
                lease,
                telemetry: telemetry.cloned(),
                labels: labels.clone(),
                status,
                start,
            }),
        }
        .boxed_unsync()
    }))
}

/// What a request holds until its response body is done.
struct Finish {
    _permit: Permit,
    _in_flight: Option<InFlight>,
    lease: Lease,
    telemetry: Option<Telemetry>,
    labels: ServiceLabels,
    status: u16,
    start: Instant,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(telemetry) = &self.telemetry {
            telemetry.request_finished(&self.labels, self.status, self.start.elapsed());
            telemetry.set_instance_memory(&self.labels, self.lease.last_instance_memory());
        }
    }
}

/// A response body that lets go of its request's [`Finish`] at its end, on an error, or
/// when the client goes away (the body is dropped).
struct Guarded {
    body: ResponseBody,
    finish: Option<Finish>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.finish = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
