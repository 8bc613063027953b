//! The `{{name}}` service: a WebAssembly HTTP component (`wasi:http/incoming-handler`)
//! answering `GET /{{name}}`. Build it with `tessera build`, serve it with `tessera up`.

use tessera_guest::{config, kv};
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Service;

wasip2::http::proxy::export!(Service);

impl wasip2::exports::http::incoming_handler::Guest for Service {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        if !matches!(request.method(), Method::Get) {
            return respond(response_out, 405, "method not allowed\n");
        }
        match hello() {
            Ok(text) => respond(response_out, 200, &text),
            Err(message) => {
                // Guest stderr and stdout end up in `tessera logs {{name}}`.
                eprintln!("{message}");
                respond(response_out, 500, &format!("{message}\n"))
            }
        }
    }
}

/// Reads the greeting from the service's configuration (`[services.{{name}}.config]`)
/// and counts the visit in its own key-value store, atomically.
fn hello() -> Result<String, String> {
    let greeting = config::get("greeting")
        .map_err(|e| format!("reading the greeting: {}", e.message()))?
        .unwrap_or_else(|| "Hello".to_string());
    let visits = kv::open("default")
        .and_then(|bucket| kv::increment(&bucket, "visits", 1))
        .map_err(|e| format!("counting the visit: {}", e.message()))?;
    Ok(format!("{greeting} from Rust! This is {{name}}, visit {visits}.\n"))
}

/// Sends a complete plain-text response.
fn respond(out: ResponseOutparam, status: u16, body: &str) {
    let headers = [("content-type".to_string(), b"text/plain".to_vec())];
    let response = OutgoingResponse::new(Fields::from_list(&headers).expect("valid headers"));
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("stream taken once");
    for chunk in body.as_bytes().chunks(4096) {
        stream.blocking_write_and_flush(chunk).expect("writing the body");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finishing the body");
}

// A bin target needs `main`; the platform calls only the exported handler.
fn main() {}
