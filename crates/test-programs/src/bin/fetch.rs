//! `fetch`: makes the outbound request given by `?url=...`, to check what the
//! host's outgoing-handler allows. A denied request is an answer, not a panic.
//! `?loop=HOST` calls `http://HOST` with the same path and query again, so a service
//! that names itself calls itself until the platform cuts the chain off.

use test_programs::{query_param, read_to_end, respond};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingRequest, ResponseOutparam, Scheme,
    http_error_code,
};

struct Fetch;

wasip2::http::proxy::export!(Fetch);

impl wasip2::exports::http::incoming_handler::Guest for Fetch {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let looped = query_param(&request, "loop").map(|host| {
            let path = request.path_with_query().unwrap_or_default();
            format!("http://{host}{path}")
        });
        let Some(url) = looped.or_else(|| query_param(&request, "url")) else {
            return respond(response_out, 400, "text/plain", b"missing ?url=\n");
        };
        let Some(outgoing) = build_request(&url) else {
            let body = format!("bad url: {url}\n");
            return respond(response_out, 400, "text/plain", body.as_bytes());
        };
        match send(outgoing) {
            Ok((status, body)) => {
                let mut answer = format!("status={status}\n").into_bytes();
                answer.extend_from_slice(&body);
                respond(response_out, 200, "text/plain", &answer);
            }
            Err(message) => {
                let body = format!("error={message}");
                respond(response_out, 502, "text/plain", body.as_bytes());
            }
        }
    }
}

/// A GET request for an absolute `scheme://authority/path?query` URL.
fn build_request(url: &str) -> Option<OutgoingRequest> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_with_query) = rest.split_at(split);
    if authority.is_empty() {
        return None;
    }
    let path_with_query = match path_with_query.chars().next() {
        None => "/".to_string(),
        Some('?') => format!("/{path_with_query}"),
        Some(_) => path_with_query.to_string(),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).ok()?;
    request.set_scheme(Some(&scheme)).ok()?;
    request.set_authority(Some(authority)).ok()?;
    request.set_path_with_query(Some(&path_with_query)).ok()?;
    Some(request)
}

/// Sends the request and reads the whole response; errors come back as the
/// `Debug` text of the host's `ErrorCode`.
fn send(request: OutgoingRequest) -> Result<(u16, Vec<u8>), String> {
    let future = outgoing_handler::handle(request, None).map_err(debug)?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(result)) => result.map_err(debug)?,
        Some(Err(())) => return Err("response already taken".to_string()),
        None => return Err("response not ready after waiting".to_string()),
    };
    let status = response.status();
    let body = response
        .consume()
        .map_err(|()| "response body taken twice".to_string())?;
    let stream = body
        .stream()
        .map_err(|()| "response body stream taken twice".to_string())?;
    let data = read_to_end(&stream).map_err(|e| match http_error_code(&e) {
        Some(code) => debug(code),
        None => e.to_debug_string(),
    })?;
    Ok((status, data))
}

fn debug(code: ErrorCode) -> String {
    format!("{code:?}")
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
