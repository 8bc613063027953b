//! `counter`: key-value only (no SQL import), for nodes whose data backend has no SQL.
//! Below any route prefix:
//! - `POST .../incr/<key>`: atomically adds 1 to the key in bucket `default` and answers
//!   the new value;
//! - `GET .../get/<key>`: the key's value, 404 when absent;
//! - `PUT .../set/<key>`: stores the body.

use tessera_guest::kv;
use test_programs::{method_name, path, read_body, respond};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Counter;

wasip2::http::proxy::export!(Counter);

impl wasip2::exports::http::incoming_handler::Guest for Counter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = path(&request);
        let path = path.split('?').next().unwrap_or_default().to_owned();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = method_name(&request.method()).to_owned();
        let (status, body) = match (method.as_str(), segments.as_slice()) {
            ("POST", [.., "incr", key]) => {
                match kv::open("default").and_then(|bucket| kv::increment(&bucket, key, 1)) {
                    Ok(value) => (200, value.to_string()),
                    Err(e) => (500, format!("{}: {}", e.kind(), e.message())),
                }
            }
            ("GET", [.., "get", key]) => {
                match kv::open("default").and_then(|bucket| bucket.get(key)) {
                    Ok(Some(value)) => (200, String::from_utf8_lossy(&value).into_owned()),
                    Ok(None) => (404, "absent".into()),
                    Err(e) => (500, format!("{}: {}", e.kind(), e.message())),
                }
            }
            ("PUT", [.., "set", key]) => {
                let value = read_body(&request);
                match kv::open("default").and_then(|bucket| bucket.set(key, &value)) {
                    Ok(()) => (204, String::new()),
                    Err(e) => (500, format!("{}: {}", e.kind(), e.message())),
                }
            }
            _ => (404, format!("no route for {method} {path}")),
        };
        respond(response_out, status, "text/plain", body.as_bytes());
    }
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
