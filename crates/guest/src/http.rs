//! HTTP in and out (`wasi:http` 0.2, through the `wasip2` crate): a [`Request`] read whole,
//! a [`Response`] built in memory, [`serve!`](crate::serve) to export a handler, and a
//! synchronous [`fetch`] for outgoing requests, including other services of the app at
//! `http://NAME.internal/...`.
//!
//! ```no_run
//! use tessera_guest::http::{self, Request, Response};
//!
//! fn handle(req: Request) -> Response {
//!     match (req.method.as_str(), req.path_segments().as_slice()) {
//!         ("GET", ["users", id]) => Response::json(200, format!(r#"{{"id":{}}}"#, http::json_string(id))),
//!         ("GET", ["search"]) => {
//!             let q = req.query_param("q").unwrap_or_default();
//!             Response::text(200, format!("searching for {q}\n"))
//!         }
//!         ("POST", ["echo"]) => Response::new(200)
//!             .header("content-type", req.header("content-type").unwrap_or("application/octet-stream"))
//!             .body(req.body),
//!         ("GET", ["catalog"]) => match http::get("http://catalog.internal/catalog") {
//!             Ok(answer) => Response::new(answer.status).body(answer.body),
//!             Err(error) => http::error_json(502, error.message()),
//!         },
//!         _ => http::error_json(404, "not found"),
//!     }
//! }
//!
//! tessera_guest::serve!(handle);
//! # fn main() {}
//! ```
//!
//! Bodies live in memory whole, both ways: this is for requests and responses of up to a
//! few megabytes. Streaming needs the `wasip2` API itself.

use std::borrow::Cow;
use std::fmt;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, ResponseOutparam, Scheme, http_error_code,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// The `wasip2` crate this module is built on, for [`serve!`](crate::serve) and for code
/// that needs the raw `wasi:http` API.
pub use wasip2;

/// The most `blocking-write-and-flush` accepts in one call.
const WRITE_CHUNK: usize = 4096;
/// How much one read asks for.
const READ_CHUNK: u64 = 64 * 1024;

/// A failed HTTP operation: a request that could not be read, a response that could not be
/// sent, or an outgoing request that got no response. (A response with an error status is
/// not an `Error`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
        }
    }

    /// What went wrong, for humans. For outgoing requests it names the `wasi:http` error
    /// code in WIT spelling, such as `http-request-denied` or `connection-refused`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// An incoming request, body read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Uppercase: `GET`, `POST`, ...
    pub method: String,
    /// The path, still percent-encoded, without the query: `/users/42`.
    pub path: String,
    /// The query string without `?`, still percent-encoded; empty when there is none.
    pub query: String,
    /// Name (lowercase) and value of every header, in order; a repeated header appears
    /// once per value.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// Reads a request handed to `wasi:http/incoming-handler`, its body to the end.
    pub fn read(incoming: IncomingRequest) -> Result<Request, Error> {
        let target = incoming.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let headers = header_list(incoming.headers());
        let body = incoming
            .consume()
            .map_err(|()| Error::new("the request body was already taken"))?;
        Ok(Request {
            method: method_name(&incoming.method()),
            path: if path.is_empty() { "/" } else { path }.to_string(),
            query: query.to_string(),
            headers,
            body: read_body(body)
                .map_err(|e| Error::new(format!("reading the request body: {e}")))?,
        })
    }

    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The first value of a query parameter, percent-decoded (`+` is a space):
    /// `?q=tea%20cup` gives `Some("tea cup")` for `"q"`, `?flag` gives `Some("")`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(key, _)| form_decode(key) == name)
            .map(|(_, value)| form_decode(value).into_owned())
    }

    /// The path's non-empty segments, still percent-encoded (see [`percent_decode`]):
    /// `/users/42/` gives `["users", "42"]`, for `match` on slice patterns.
    pub fn path_segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

/// A response: built by a handler and sent with [`Response::send`] (which
/// [`serve!`](crate::serve) does), or received from [`fetch`].
///
/// No `content-length` is needed: the platform frames the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Name and value of every header, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response with no headers and an empty body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(body.into())
    }

    /// An `application/json` response; `body` is JSON text already (see [`json_string`]
    /// for escaping strings into it).
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .header("content-type", "application/json")
            .body(body.into())
    }

    /// Sets a header, replacing any with the same name (case-insensitive).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        let name = name.into();
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        self.headers.push((name, value.into()));
        self
    }

    /// Adds a header, keeping any with the same name (`set-cookie`, say).
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The first value of a header (name case-insensitive).
    pub fn get_header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as UTF-8 text.
    pub fn body_text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// Answers the request of `out` with this response. Headers the host refuses (such as
    /// `connection`) are left out and logged; an invalid status becomes 500. An error
    /// usually means the client went away while the body was being written.
    pub fn send(self, out: ResponseOutparam) -> Result<(), Error> {
        let response = OutgoingResponse::new(fields(&self.headers));
        if response.set_status_code(self.status).is_err() {
            eprintln!("tessera-guest: invalid status {}, sending 500", self.status);
            let _ = response.set_status_code(500);
        }
        let body = response
            .body()
            .map_err(|()| Error::new("the response body was already taken"))?;
        ResponseOutparam::set(out, Ok(response));
        write_body(body, &self.body).map_err(|e| Error::new(format!("sending the response: {e}")))
    }
}

/// A JSON error response: `{"error":"<message>"}`.
pub fn error_json(status: u16, message: &str) -> Response {
    Response::json(status, format!(r#"{{"error":{}}}"#, json_string(message)))
}

/// `text` as a JSON string literal, quotes included: `json_string("a \"b\"")` is
/// `"a \"b\""`.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Decodes `%XX` escapes; bytes that are not UTF-8 afterwards become `U+FFFD`.
pub fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) if bytes[i] == b'%' => {
                out.push(byte);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Query-string decoding: `+` is a space, then `%XX` escapes.
fn form_decode(text: &str) -> Cow<'_, str> {
    if text.contains('+') {
        Cow::Owned(percent_decode(&text.replace('+', " ")).into_owned())
    } else {
        percent_decode(text)
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, Error> {
    fetch("GET", url, &[], &[])
}

/// Sends a request to an absolute `http://` or `https://` URL and waits for the whole
/// response. Services of the same app answer at `http://NAME.internal/...`, in-process.
/// Either origin must be granted in the manifest: `outbound = ["http://NAME.internal"]`,
/// else the error is `http-request-denied`.
///
/// ```no_run
/// use tessera_guest::http;
///
/// let answer = http::fetch(
///     "POST",
///     "http://users.internal/users",
///     &[("content-type", "application/json")],
///     br#"{"name":"Ada"}"#,
/// )?;
/// println!("{}: {}", answer.status, String::from_utf8_lossy(&answer.body));
/// # Ok::<(), http::Error>(())
/// ```
pub fn fetch(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, Error> {
    let fail = |message: String| Error::new(format!("{method} {url}: {message}"));
    let (scheme, authority, path_with_query) = split_url(url).map_err(|m| fail(m.to_string()))?;

    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let request = OutgoingRequest::new(fields(&headers));
    request
        .set_method(&method_value(method))
        .map_err(|()| fail("invalid method".to_string()))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| fail("invalid scheme".to_string()))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| fail("invalid authority".to_string()))?;
    request
        .set_path_with_query(Some(&path_with_query))
        .map_err(|()| fail("invalid path".to_string()))?;
    let outgoing = request
        .body()
        .map_err(|()| fail("request body taken twice".to_string()))?;

    // The body is written after `handle`, so the host is already reading it.
    let future = match outgoing_handler::handle(request, None) {
        Ok(future) => future,
        Err(code) => {
            drop(outgoing);
            return Err(fail(error_code(&code)));
        }
    };
    let sent = write_body(outgoing, body);
    // The response (or why there is none, such as a denied origin) arrives through the
    // future even when sending the body failed, and says more.
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(fail(error_code(&code))),
        Some(Err(())) => return Err(fail("response taken twice".to_string())),
        None => return Err(fail("no response after waiting".to_string())),
    };
    sent.map_err(|e| fail(format!("sending the body: {e}")))?;

    let status = response.status();
    let headers = header_list(response.headers());
    let body = response
        .consume()
        .map_err(|()| fail("response body taken twice".to_string()))?;
    let body = read_body(body).map_err(|e| fail(format!("reading the response body: {e}")))?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// `scheme://authority/path?query` as its parts; the path is `/` when empty.
fn split_url(url: &str) -> Result<(Scheme, &str, String), &'static str> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("not an absolute URL (scheme://host/path)")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err("unsupported scheme (http or https)"),
    };
    // A fragment never goes to the server.
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_with_query) = rest.split_at(split);
    if authority.is_empty() {
        return Err("no host");
    }
    let path_with_query = match path_with_query.chars().next() {
        None => "/".to_string(),
        Some('?') => format!("/{path_with_query}"),
        Some(_) => path_with_query.to_string(),
    };
    Ok((scheme, authority, path_with_query))
}

/// Serves a handler, `fn(Request) -> Response`, as the component's
/// `wasi:http/incoming-handler`:
///
/// ```no_run
/// use tessera_guest::http::{Request, Response};
///
/// fn handle(req: Request) -> Response {
///     Response::text(200, format!("you asked for {}\n", req.path))
/// }
///
/// tessera_guest::serve!(handle);
/// # fn main() {}
/// ```
///
/// A request whose body cannot be read gets a 400 without calling the handler. A panic in
/// the handler traps the component, and the platform answers 500. The handler may be any
/// path or closure expression.
///
/// Use it once per component, in place of `wasip2::http::proxy::export!`. It invokes that
/// macro through this crate's re-export, and that macro names its own items through
/// `$crate`, so the calling crate needs no `wasip2` dependency of its own; having one (of
/// the same version) is fine. A binary crate still needs its (empty) `fn main() {}`.
#[macro_export]
macro_rules! serve {
    ($handler:expr $(,)?) => {
        const _: () = {
            struct TesseraService;

            impl $crate::http::wasip2::exports::http::incoming_handler::Guest for TesseraService {
                fn handle(
                    request: $crate::http::wasip2::http::types::IncomingRequest,
                    out: $crate::http::wasip2::http::types::ResponseOutparam,
                ) {
                    $crate::http::__serve(request, out, $handler);
                }
            }

            $crate::http::wasip2::http::proxy::export!(TesseraService);
        };
    };
}

/// What [`serve!`](crate::serve)'s handler does; not part of the API.
#[doc(hidden)]
pub fn __serve(
    incoming: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(Request) -> Response,
) {
    let response = match Request::read(incoming) {
        Ok(request) => handler(request),
        Err(error) => Response::text(400, format!("{error}\n")),
    };
    if let Err(error) = response.send(out) {
        // Guest stderr goes to the service's log.
        eprintln!("tessera-guest: {error}");
    }
}

/// Fields from a header list; headers the host refuses are logged and left out.
fn fields(headers: &[(String, String)]) -> Fields {
    let fields = Fields::new();
    for (name, value) in headers {
        if let Err(error) = fields.append(name, value.as_bytes()) {
            eprintln!("tessera-guest: header {name:?} left out: {error:?}");
        }
    }
    fields
}

/// A header list from fields (which are dropped here, before their parent).
fn header_list(fields: Fields) -> Vec<(String, String)> {
    fields
        .entries()
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                String::from_utf8_lossy(&value).into_owned(),
            )
        })
        .collect()
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads an incoming body to its end and finishes it.
fn read_body(body: IncomingBody) -> Result<Vec<u8>, String> {
    let stream = body
        .stream()
        .map_err(|()| "the body stream was already taken".to_string())?;
    let data = read_to_end(&stream);
    // The stream is a child of the body: it must be gone before `finish`.
    drop(stream);
    drop(IncomingBody::finish(body));
    data
}

fn read_to_end(stream: &InputStream) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(data),
            Err(StreamError::LastOperationFailed(error)) => return Err(stream_error(&error)),
        }
    }
}

/// Writes all of `data` to an outgoing body and finishes it; when writing fails, the body
/// is dropped unfinished, which tells the host it is incomplete.
fn write_body(body: OutgoingBody, data: &[u8]) -> Result<(), String> {
    let stream = body
        .write()
        .map_err(|()| "the body stream was already taken".to_string())?;
    let written = write_all(&stream, data);
    drop(stream);
    written?;
    OutgoingBody::finish(body, None).map_err(|code| error_code(&code))
}

fn write_all(stream: &OutputStream, data: &[u8]) -> Result<(), String> {
    for chunk in data.chunks(WRITE_CHUNK) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| match e {
                StreamError::Closed => "the stream is closed".to_string(),
                StreamError::LastOperationFailed(error) => stream_error(&error),
            })?;
    }
    Ok(())
}

fn stream_error(error: &wasip2::io::error::Error) -> String {
    match http_error_code(error) {
        Some(code) => error_code(&code),
        None => error.to_debug_string(),
    }
}

/// An `error-code` in WIT spelling, with its payload if it has one:
/// `http-request-denied`, `dns-error(DnsErrorPayload { .. })`.
fn error_code(code: &ErrorCode) -> String {
    let debug = format!("{code:?}");
    let debug = debug.strip_prefix("ErrorCode::").unwrap_or(&debug);
    let (name, payload) = debug.split_at(debug.find('(').unwrap_or(debug.len()));
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    if matches!(code, ErrorCode::HttpRequestDenied) {
        out.push_str(" (the origin is not in the manifest's `outbound`)");
    }
    out + payload
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => return other.to_ascii_uppercase(),
    }
    .to_string()
}

fn method_value(name: &str) -> Method {
    match name.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        _ => Method::Other(name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, query: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"hi".to_vec(),
        }
    }

    #[test]
    fn query_params_are_decoded() {
        let req = request("/", "q=tea%20cup&x=a+b&flag&q=second&n%61me=v");
        assert_eq!(req.query_param("q").as_deref(), Some("tea cup"));
        assert_eq!(req.query_param("x").as_deref(), Some("a b"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("name").as_deref(), Some("v"));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(req.header("Content-Type"), Some("text/plain"));
        assert_eq!(req.text(), Ok("hi"));
    }

    #[test]
    fn path_segments_skip_empty_ones() {
        assert_eq!(request("/users/42/", "").path_segments(), ["users", "42"]);
        assert!(request("/", "").path_segments().is_empty());
        assert_eq!(percent_decode("Ada%20L%"), "Ada L%");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a \"b\"\\\n\u{1}é"), r#""a \"b\"\\\n\u0001é""#);
        let response = error_json(404, "no \"x\"");
        assert_eq!(response.body_text(), Ok(r#"{"error":"no \"x\""}"#));
        assert_eq!(
            response.get_header("CONTENT-TYPE"),
            Some("application/json")
        );
    }

    #[test]
    fn header_replaces_and_append_header_keeps() {
        let response = Response::text(200, "x")
            .header("Content-Type", "text/html")
            .append_header("set-cookie", "a=1")
            .append_header("set-cookie", "b=2");
        assert_eq!(
            response.headers,
            [
                ("Content-Type".to_string(), "text/html".to_string()),
                ("set-cookie".to_string(), "a=1".to_string()),
                ("set-cookie".to_string(), "b=2".to_string()),
            ]
        );
    }

    #[test]
    fn urls_split_into_parts() {
        let (scheme, authority, path) = split_url("http://hi.internal/hi?x=1#frag").unwrap();
        assert!(matches!(scheme, Scheme::Http));
        assert_eq!((authority, path.as_str()), ("hi.internal", "/hi?x=1"));
        let (_, authority, path) = split_url("HTTPS://example.com:8443").unwrap();
        assert_eq!((authority, path.as_str()), ("example.com:8443", "/"));
        assert_eq!(split_url("http://example.com?q").unwrap().2, "/?q");
        assert!(split_url("ftp://example.com/").is_err());
        assert!(split_url("http:///x").is_err());
        assert!(split_url("/relative").is_err());
    }

    #[test]
    fn error_codes_use_wit_spelling() {
        assert_eq!(
            error_code(&ErrorCode::ConnectionRefused),
            "connection-refused"
        );
        assert_eq!(
            error_code(&ErrorCode::InternalError(Some("boom".into()))),
            "internal-error(Some(\"boom\"))"
        );
    }
}
