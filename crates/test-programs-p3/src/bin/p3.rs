//! `p3`: a WASI 0.3 HTTP service (`wasi:http/handler@0.3.0`), to check that the host
//! serves 0.3 components like 0.2 ones. Below any route prefix:
//! - `.../hello`: `hello from wasi 0.3 <instance> <served>`, where `<instance>` is drawn
//!   once per instance and `<served>` counts the requests this instance started;
//! - `.../echo`: streams the request body back as it arrives;
//! - `.../sleep?ms=N`: waits N ms on the host's clock (asynchronously), then answers
//!   `slept N ms together <peak> <instance> <served>`, where `<peak>` is the most
//!   requests this instance had in flight at its start or its end;
//! - `.../stream?mb=N`: answers N MiB of `x`, written 64 KiB at a time;
//! - `.../trap`: panics;
//! - `/` itself: `hello from tessera` (the body `cargo xtask bench` compares every server on).
//!
//! It prints `p3 <instance> request <served>` to stdout on every request but `/`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(P3);

struct P3;

static SERVED: AtomicU32 = AtomicU32::new(0);
/// Requests between their start and their answer.
static IN_FLIGHT: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static ID: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn id() -> String {
    ID.with(|id| {
        id.borrow_mut()
            .get_or_insert_with(|| format!("{:016x}", wasip3::random::random::get_random_u64()))
            .clone()
    })
}

/// A response whose body is `body`, written by a task after the handler returns.
fn text(body: String) -> Result<Response, ErrorCode> {
    let (mut contents, contents_rx) = wit_stream::new();
    let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(Fields::new(), Some(contents_rx), trailers_rx);
    drop(trailers);
    wit_bindgen::spawn_local(async move {
        contents.write_all(body.into_bytes()).await;
    });
    Ok(response)
}

/// The number after `name=` in the query (`default` when absent).
fn query(request: &Request, name: &str, default: u64) -> u64 {
    let path = request.get_path_with_query().unwrap_or_default();
    path.split_once(&format!("{name}="))
        .and_then(|(_, rest)| rest.split('&').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

impl wasip3::exports::http::handler::Guest for P3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let served = SERVED.fetch_add(1, Ordering::SeqCst) + 1;
        let id = id();
        let path = request.get_path_with_query().unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default().to_owned();
        if path == "/" {
            // As plain as the other servers' hello: no output.
            return text("hello from tessera\n".to_owned());
        }
        println!("p3 {id} request {served}");
        if path.ends_with("/trap") {
            panic!("p3 {id} trapped on purpose");
        }
        if path.ends_with("/sleep") {
            let ms = query(&request, "ms", 100);
            let at_start = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
            wasip3::clocks::monotonic_clock::wait_for(ms.saturating_mul(1_000_000)).await;
            let at_end = IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            let peak = at_start.max(at_end);
            return text(format!("slept {ms} ms together {peak} {id} {served}\n"));
        }
        if path.ends_with("/stream") {
            let mb = query(&request, "mb", 1);
            let (mut contents, contents_rx) = wit_stream::new();
            let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
            let (response, _sent) = Response::new(Fields::new(), Some(contents_rx), trailers_rx);
            drop(trailers);
            wit_bindgen::spawn_local(async move {
                for _ in 0..mb * 16 {
                    if !contents.write_all(vec![b'x'; 64 * 1024]).await.is_empty() {
                        break;
                    }
                }
            });
            return Ok(response);
        }
        if path.ends_with("/echo") {
            let (_, result) = wit_future::new(|| Ok(()));
            let (mut body, _trailers) = Request::consume_body(request, result);
            let (mut contents, contents_rx) = wit_stream::new();
            let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
            let (response, _sent) = Response::new(Fields::new(), Some(contents_rx), trailers_rx);
            drop(trailers);
            wit_bindgen::spawn_local(async move {
                loop {
                    let (status, chunk) = body.read(Vec::with_capacity(64 * 1024)).await;
                    if chunk.is_empty() && !matches!(status, wit_bindgen::StreamResult::Complete(_))
                    {
                        break;
                    }
                    if !contents.write_all(chunk).await.is_empty() {
                        break;
                    }
                }
            });
            return Ok(response);
        }
        text(format!("hello from wasi 0.3 {id} {served}\n"))
    }
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
