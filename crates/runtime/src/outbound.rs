//! Outgoing HTTP from guests: denied unless the request's origin is one the service's
//! manifest grants, and never to the node's own listeners (a grant of `localhost` must not
//! reach the control API). Host names compare case-insensitively and without a trailing
//! dot, the same way for grants and for `<service>.internal` dispatch, so no spelling of an
//! internal name ever goes to DNS.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tessera_model::{Origin, Scheme};

use crate::headers;
use crate::internal::{Caller, InternalRouter, MAX_CALL_DEPTH, platform_response};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Bounds on one outgoing request, so a slow peer ties up a guest no longer than this
/// (the request deadline still applies on top).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct OutboundPolicy {
    pub(crate) service: Arc<str>,
    pub(crate) allowed: Arc<[Origin]>,
    /// Who this instance is, for internal calls: app, service, request id, call depth.
    pub(crate) caller: Caller,
    pub(crate) internal: Option<Arc<dyn InternalRouter>>,
    /// The node's listeners, once bound: never a destination.
    pub(crate) own: Arc<OnceLock<Vec<SocketAddr>>>,
}

/// An outgoing request's destination, normalised.
struct Destination {
    scheme: Scheme,
    /// Lowercase, without brackets or a trailing dot.
    host: String,
    port: u16,
}

fn destination(uri: &http::Uri) -> Option<Destination> {
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => return None,
    };
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    });
    Some(Destination { scheme, host, port })
}

impl OutboundPolicy {
    fn permits(&self, to: &Destination) -> bool {
        self.allowed
            .iter()
            .any(|o| o.allows(to.scheme, &to.host, to.port))
    }
}

/// Whether any address `host:port` resolves to is one of the node's listeners. A name
/// that does not resolve counts as reaching one: the request's own lookup, a moment later,
/// must not be the first to see an answer.
async fn reaches_own_listener(host: &str, port: u16, own: &[SocketAddr]) -> bool {
    if own.is_empty() {
        return false;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => crate::net::is_own_listener(SocketAddr::new(ip, port), own),
        Err(_) => match tokio::net::lookup_host((host, port)).await {
            Ok(mut addrs) => addrs.any(|addr| crate::net::is_own_listener(addr, own)),
            Err(_) => true,
        },
    }
}

impl OutboundPolicy {
    /// Hands a granted call to `http://<service>.internal` to the node, in-process.
    fn call_internal(&self, callee: String, mut request: http::Request<WasiBody>) -> SendFuture {
        let done = || Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>;
        let caller = self.caller.clone();
        let depth = caller.depth + 1;
        if depth > MAX_CALL_DEPTH {
            tracing::warn!(app = %caller.app, service = %caller.service, callee, request_id = %caller.request_id, "internal call loop cut off");
            let response = platform_response(
                508,
                "loop_detected",
                &format!(
                    "call from `{}` to `{callee}` would be {depth} internal calls deep; the limit is {MAX_CALL_DEPTH}",
                    caller.service
                ),
            );
            return Box::new(async move { Ok((response, done())) });
        }
        let Some(router) = self.internal.clone() else {
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        let headers = request.headers_mut();
        for (name, value) in [
            (headers::CALL_DEPTH, depth.to_string()),
            (headers::REQUEST_ID, caller.request_id.to_string()),
            (
                headers::CALLER,
                format!("{}/{}", caller.app, caller.service),
            ),
        ] {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        Box::new(async move {
            let response = router.call(caller, &callee, request).await?;
            Ok((response, done()))
        })
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let Some(to) = destination(request.uri()).filter(|to| self.permits(to)) else {
            tracing::info!(service = %self.service, uri = %request.uri(), "outbound request denied: origin not granted in the manifest");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        if to.host.ends_with(crate::internal::INTERNAL_SUFFIX) {
            return match crate::internal::callee(&to.host) {
                Some(callee) => self.call_internal(callee.to_string(), request),
                None => Box::new(async { Err(HttpError::HttpRequestDenied) }),
            };
        }
        let own = self.own.clone();
        let service = self.service.clone();
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: Some(options.connect_timeout.unwrap_or(CONNECT_TIMEOUT)),
            first_byte_timeout: Some(options.first_byte_timeout.unwrap_or(FIRST_BYTE_TIMEOUT)),
            between_bytes_timeout: Some(
                options
                    .between_bytes_timeout
                    .unwrap_or(BETWEEN_BYTES_TIMEOUT),
            ),
        };
        Box::new(async move {
            use http_body_util::BodyExt;
            if reaches_own_listener(&to.host, to.port, own.get().map_or(&[][..], Vec::as_slice))
                .await
            {
                tracing::warn!(service = %service, uri = %request.uri(), "outbound request denied: it would reach this node's own listener");
                return Err(HttpError::HttpRequestDenied);
            }
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
