//! The `{{name}}` service: a WASI 0.3 HTTP component (`wasi:http/handler@0.3.0`)
//! answering `GET /{{name}}`. Build it with `tessera build`, serve it with `tessera up`.
//!
//! The handler is `async`: awaiting a timer, an outgoing request
//! (`wasip3::http::client::send`) or a body stream lets the instance serve other requests
//! meanwhile when the manifest sets `reuse` and `reuse_concurrency` above 1.

use tessera_guest::{config, kv};
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(Service);

struct Service;

impl wasip3::exports::http::handler::Guest for Service {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        if !matches!(request.get_method(), Method::Get) {
            return text(405, "method not allowed\n".to_string());
        }
        match hello() {
            Ok(body) => text(200, body),
            Err(message) => {
                // Guest stderr and stdout end up in `tessera logs {{name}}`.
                eprintln!("{message}");
                text(500, format!("{message}\n"))
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
    Ok(format!(
        "{greeting} from Rust on WASI 0.3! This is {{name}}, visit {visits}.\n"
    ))
}

/// A `text/plain` response with `status`; its body is written by a task of its own,
/// which runs on after the handler has returned the response.
fn text(status: u16, body: String) -> Result<Response, ErrorCode> {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
    let (mut contents, contents_rx) = wit_stream::new();
    let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(contents_rx), trailers_rx);
    drop(trailers);
    let _ = response.set_status_code(status);
    wit_bindgen::spawn_local(async move {
        contents.write_all(body.into_bytes()).await;
    });
    Ok(response)
}

// A bin target needs `main`; the platform calls only the exported handler.
fn main() {}
