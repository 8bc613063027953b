//! Serving one request on a WASI 0.3 instance (`wasi:http/handler@0.3.x`): the handler
//! runs inside the store's event loop, which must keep running while the guest streams
//! its response body (a task of its own may write it after `handle` returned). So the
//! loop runs until the body has been read to its end or dropped by the client's side.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime::component::Accessor;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::Service;
use wasmtime_wasi_http::{FieldMap, WasiHttpView};

use crate::invoke::HeadResult;
use crate::state::InstanceState;

/// Runs `handle` for `request` and hands the response head to `on_head`; returns once the
/// response body is done with and the guest's own tasks have ended (or the guest
/// failed). `Ok(false)`: the body was dropped before its end (the client went away), so
/// the instance may hold half-done work and is not served again.
pub(crate) async fn serve(
    store: &mut Store<InstanceState>,
    service: &Service,
    request: Box<hyper::Request<HyperOutgoingBody>>,
    on_head: Box<dyn FnOnce(HeadResult) + Send>,
) -> wasmtime::Result<bool> {
    store
        .run_concurrent(async move |accessor| -> wasmtime::Result<bool> {
            let ended = handle(accessor, service, request, on_head).await?;
            // A guest's tasks may go on after its body (or after the client left): they
            // end here, inside this request's deadline, so nothing of this request runs
            // in the instance's next one.
            std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
            Ok(ended)
        })
        .await?
}

/// One request inside a store's event loop (which may serve others at the same time):
/// `handle` is called, its head handed to `on_head`, and the body awaited to its end.
/// `Ok(false)`: the body was dropped before its end. The guest's own tasks may still
/// run when this returns.
pub(crate) async fn handle(
    accessor: &Accessor<InstanceState>,
    service: &Service,
    request: Box<hyper::Request<HyperOutgoingBody>>,
    on_head: Box<dyn FnOnce(HeadResult) + Send>,
) -> wasmtime::Result<bool> {
    let (parts, body) = request.into_parts();
    let uri = parts.uri.into_parts();
    // As a 0.2 guest sees it: scheme `http`, the authority from `Host` when the request
    // line has none.
    let authority = uri.authority.or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(|host| host.parse().ok())
    });
    let scheme = uri.scheme.unwrap_or(http::uri::Scheme::HTTP);
    let headers = accessor.with(|mut access| {
        let http = access.get().http();
        FieldMap::new_immutable(http.hooks, parts.headers)
    });
    let (request, request_io) = wasmtime_wasi_http::p3::Request::new(
        parts.method,
        Some(scheme),
        authority,
        uri.path_and_query,
        headers,
        None,
        body,
    );
    Ok(match service.handle(accessor, request).await? {
        Ok(response) => {
            let response =
                accessor.with(|mut access| response.into_http(&mut access, request_io))?;
            let (done, finished) = oneshot::channel();
            on_head(Ok(response.map(|body| {
                http_body_util::BodyExt::boxed_unsync(Watched {
                    body,
                    done: Some(done),
                })
            })));
            // The body's frames come from the guest through this event loop.
            finished.await.unwrap_or(false)
        }
        Err(code) => {
            on_head(Err(format!("{code:?}")));
            true
        }
    })
}

/// A response body that says when it is finished with: `true` once read to its end,
/// `false` when it failed or was dropped before.
struct Watched {
    body: HyperOutgoingBody,
    done: Option<oneshot::Sender<bool>>,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(done) = self.done.take() {
                    let _ = done.send(true);
                }
            }
            Poll::Ready(Some(Err(_))) => drop(self.done.take()),
            _ => {}
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
