//! The `{{name}}` service: a WebAssembly HTTP component (`wasi:http/incoming-handler`)
//! answering `GET /{{name}}`. Build it with `tessera build`, serve it with `tessera up`.

use tessera_guest::http::{Request, Response};
use tessera_guest::{config, kv};

fn handle(request: Request) -> Response {
    if request.method != "GET" {
        return Response::text(405, "method not allowed\n");
    }
    match hello() {
        Ok(text) => Response::text(200, text),
        Err(message) => {
            // Guest stderr and stdout end up in `tessera logs {{name}}`.
            eprintln!("{message}");
            Response::text(500, format!("{message}\n"))
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
        "{greeting} from Rust! This is {{name}}, visit {visits}.\n"
    ))
}

tessera_guest::serve!(handle);

// A bin target needs `main`; the platform calls only the exported handler.
fn main() {}
