//! The `greeter` service: `GET /hello` and `GET /hello/<name>` answer with a
//! greeting. A WebAssembly HTTP component (wasi:http/incoming-handler).
//!
//! The greeting comes from the service's configuration (`greeting` in
//! `[services.greeter.config]`), and every greeting counts one more visit in
//! the service's key-value store, sent back in the `x-visits` header.

use tessera_guest::{config, kv};
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// Longer names are refused, so a greeting stays a short line.
const MAX_NAME_BYTES: usize = 64;
/// The greeting when the configuration sets none.
const DEFAULT_GREETING: &str = "Hello";

struct Greeter;

wasip2::http::proxy::export!(Greeter);

impl wasip2::exports::http::incoming_handler::Guest for Greeter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        if !matches!(request.method(), Method::Get) {
            let headers = [("allow", "GET"), ("content-type", "text/plain")];
            return respond(response_out, 405, &headers, "method not allowed\n");
        }
        let text = [("content-type", "text/plain")];
        let path_with_query = request.path_with_query().unwrap_or_default();
        let path = path_with_query.split('?').next().unwrap_or_default();
        let name = match path.strip_prefix("/hello") {
            Some("" | "/") => "world".to_string(),
            Some(rest) if rest.starts_with('/') && !rest[1..].contains('/') => {
                match percent_decode(&rest[1..]) {
                    Some(name) if name.len() <= MAX_NAME_BYTES => name,
                    Some(_) => return respond(response_out, 400, &text, "name too long\n"),
                    None => return respond(response_out, 400, &text, "name is not UTF-8\n"),
                }
            }
            _ => return respond(response_out, 404, &text, "not found\n"),
        };
        let (greeting, visits) = match greeting_and_visit() {
            Ok(found) => found,
            Err(message) => {
                eprintln!("{message}");
                return respond(response_out, 500, &text, &format!("{message}\n"));
            }
        };
        // Guest stdout ends up in the platform's logs, tagged with the request.
        println!("greeted {name} (visit {visits})");
        let visits = visits.to_string();
        let headers = [
            ("content-type", "text/plain"),
            ("x-visits", visits.as_str()),
        ];
        respond(
            response_out,
            200,
            &headers,
            &format!("{greeting}, {name}!\n"),
        );
    }
}

/// Reads the configured greeting and counts this visit. The counter is one
/// atomic increment, so concurrent requests never lose a visit.
fn greeting_and_visit() -> Result<(String, i64), String> {
    let greeting = config::get("greeting")
        .map_err(|e| format!("reading the greeting: {}", e.message()))?
        .unwrap_or_else(|| DEFAULT_GREETING.to_string());
    let visits = kv::open("default")
        .and_then(|bucket| kv::increment(&bucket, "visits", 1))
        .map_err(|e| format!("counting the visit: {}", e.message()))?;
    Ok((greeting, visits))
}

/// Decodes `%XX` escapes (so `/hello/Ada%20L` greets "Ada L"). Returns
/// `None` when the result is not UTF-8.
fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
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
    String::from_utf8(out).ok()
}

/// Sends a complete response with a small in-memory body.
fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &str) {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    let response = OutgoingResponse::new(Fields::from_list(&entries).expect("valid headers"));
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("stream taken once");
    // Bodies here are tiny, well under the 4096-byte limit of this call.
    stream
        .blocking_write_and_flush(body.as_bytes())
        .expect("writing the body");
    // The stream belongs to the body and must be dropped before `finish`.
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finishing the body");
}

// A bin target needs `main`; the platform only calls the exported handler.
fn main() {}
