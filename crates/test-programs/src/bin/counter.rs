//! `counter`: key-value only (no SQL import), for nodes whose data backend has no SQL.
//! Below any route prefix:
//! - `POST .../incr/<key>`: atomically adds 1 to the key in bucket `default` and answers
//!   the new value;
//! - `GET .../get/<key>`: the key's value, 404 when absent;
//! - `PUT .../set/<key>`: stores the body; `DELETE .../del/<key>` deletes the key;
//! - `GET .../keys/<prefix>`: the keys starting with the prefix, one per line;
//! - `POST .../on/<name>`: an event delivery: adds 1 to `count:<name>` and to
//!   `seen:<name>:<ce-id>` and
//!   `by:<name>:<x-tessera-node>`, keeps `last:<name>` (`<ce-id> <x-tessera-attempt> <x-tessera-node>`), waits
//!   `?sleep_ms=N` first if asked, and answers 500 (after adding 1 to `failed:<name>`)
//!   while the key `fail:<name>` exists.

use tessera_guest::kv;
use test_programs::{method_name, path, read_body, respond};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Counter;

wasip2::http::proxy::export!(Counter);

impl wasip2::exports::http::incoming_handler::Guest for Counter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = path(&request);
        let path = path.split('?').next().unwrap_or_default().to_owned();
        // Keys may hold `/` and other characters, percent-encoded.
        let decoded: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(test_programs::percent_decode)
            .collect();
        let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
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
            ("DELETE", [.., "del", key]) => {
                match kv::open("default").and_then(|bucket| bucket.delete(key)) {
                    Ok(()) => (204, String::new()),
                    Err(e) => (500, format!("{}: {}", e.kind(), e.message())),
                }
            }
            ("GET", [.., "keys", prefix]) => match keys(prefix) {
                Ok(keys) => (200, keys.join("\n")),
                Err(e) => (500, format!("{}: {}", e.kind(), e.message())),
            },
            ("POST", [.., "on", name]) => on_event(&request, name),
            _ => (404, format!("no route for {method} {path}")),
        };
        respond(response_out, status, "text/plain", body.as_bytes());
    }
}

fn keys(prefix: &str) -> Result<Vec<String>, kv::Error> {
    let bucket = kv::open("default")?;
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = bucket.list_keys(cursor.as_deref())?;
        out.extend(page.keys.into_iter().filter(|k| k.starts_with(prefix)));
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(out),
        }
    }
}

fn header(request: &IncomingRequest, name: &str) -> String {
    request
        .headers()
        .get(name)
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn on_event(request: &IncomingRequest, name: &str) -> (u16, String) {
    if let Some(ms) =
        test_programs::query_param(request, "sleep_ms").and_then(|v| v.parse::<u64>().ok())
    {
        wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
    }
    let id = header(request, "ce-id");
    let attempt = header(request, "x-tessera-attempt");
    let node = header(request, "x-tessera-node");
    let handled = (|| {
        let bucket = kv::open("default")?;
        kv::increment(&bucket, &format!("count:{name}"), 1)?;
        kv::increment(&bucket, &format!("seen:{name}:{id}"), 1)?;
        kv::increment(&bucket, &format!("by:{name}:{node}"), 1)?;
        bucket.set(
            &format!("last:{name}"),
            format!("{id} {attempt} {node}").as_bytes(),
        )?;
        if bucket.exists(&format!("fail:{name}"))? {
            kv::increment(&bucket, &format!("failed:{name}"), 1)?;
            return Ok(false);
        }
        Ok::<_, kv::Error>(true)
    })();
    match handled {
        Ok(true) => (200, "handled".into()),
        Ok(false) => (500, "told to fail".into()),
        Err(e) => (500, format!("{}: {}", e.kind(), e.message())),
    }
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
