//! Small helpers shared by the guest test programs: writing whole responses,
//! reading request bodies and query parameters, and hand-writing JSON.

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, OutputStream,
    ResponseOutparam, Scheme,
};
use wasip2::io::error::Error as IoError;
use wasip2::io::streams::{InputStream, StreamError};

/// Answers with `status`, a `content-type` and a body that is already in memory.
pub fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    respond_with_headers(out, status, &[("content-type", content_type)], body);
}

/// Like [`respond`], with any list of headers.
///
/// No `content-length` is sent on purpose: with one, the host's HTTP server
/// may close the body as soon as the last byte arrives, and the guest's final
/// flush then fails with `closed` although the client got everything.
pub fn respond_with_headers(
    out: ResponseOutparam,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let (response, outgoing) = start_response(status, headers);
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("outgoing body stream taken twice");
    let written = write_all(&stream, body);
    // The stream is a child of the body: it must be gone before `finish`.
    drop(stream);
    // When the client went away, dropping the body unfinished tells the
    // host the response is incomplete; that is not the guest's fault.
    if written.is_ok() {
        OutgoingBody::finish(outgoing, None).expect("finishing the response body");
    }
}

/// Builds a response with its headers and takes its body, so the caller can
/// set the response first and stream the body afterwards.
pub fn start_response(status: u16, headers: &[(&str, &str)]) -> (OutgoingResponse, OutgoingBody) {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    let fields = Fields::from_list(&entries).expect("valid response headers");
    let response = OutgoingResponse::new(fields);
    response
        .set_status_code(status)
        .expect("valid response status");
    let body = response.body().expect("response body taken twice");
    (response, body)
}

/// Writes all of `bytes` and flushes. `blocking-write-and-flush` is capped
/// at 4096 bytes per call, so this asks the host how much it accepts
/// (`check-write`) and waits when it accepts nothing yet. An error usually
/// means the client went away (`closed`).
pub fn write_all(stream: &OutputStream, mut bytes: &[u8]) -> Result<(), StreamError> {
    while !bytes.is_empty() {
        let permitted = stream.check_write()?;
        if permitted == 0 {
            stream.subscribe().block();
            continue;
        }
        let n = bytes
            .len()
            .min(usize::try_from(permitted).unwrap_or(usize::MAX));
        stream.write(&bytes[..n])?;
        bytes = &bytes[n..];
    }
    stream.blocking_flush()
}

/// Reads the whole request body into memory (for small bodies only).
pub fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let body = request.consume().expect("request body consumed twice");
    let stream = body.stream().expect("request body stream taken twice");
    read_to_end(&stream).unwrap_or_else(|e| panic!("reading request body: {}", e.to_debug_string()))
}

/// Reads an input stream until the other side closes it.
pub fn read_to_end(stream: &InputStream) -> Result<Vec<u8>, IoError> {
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(data),
            Err(StreamError::LastOperationFailed(e)) => return Err(e),
        }
    }
}

/// The path of the request, without its query string.
pub fn path(request: &IncomingRequest) -> String {
    let full = request.path_with_query().unwrap_or_default();
    match full.split_once('?') {
        Some((path, _)) => path.to_string(),
        None => full,
    }
}

/// The first query parameter called `name`, percent-decoded. A `+` is kept
/// as is (not turned into a space) so that URLs passed in a query survive.
pub fn query_param(request: &IncomingRequest, name: &str) -> Option<String> {
    let full = request.path_with_query()?;
    let (_, query) = full.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// Decodes `%XX` escapes; malformed escapes are left untouched and invalid
/// UTF-8 is replaced, because the test programs only need readable text.
pub fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The method as it appears on the wire.
pub fn method_name(method: &Method) -> &str {
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
        Method::Other(other) => other,
    }
}

/// The scheme as it appears in a URL.
pub fn scheme_name(scheme: &Scheme) -> &str {
    match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
        Scheme::Other(other) => other,
    }
}

/// `s` as a JSON string literal, quotes included.
pub use tessera_guest::http::json_string;

/// A JSON string literal, or `null` when there is no value.
pub fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_string)
}
