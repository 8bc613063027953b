//! `slow`: sleeps `?ms=N` milliseconds (default 200) before answering, to
//! check that graceful shutdown lets an in-flight request finish. `?print_mb=N`
//! first writes N MiB of 1 KiB lines to stdout.

use test_programs::{query_param, respond};
use wasip2::clocks::monotonic_clock::subscribe_duration;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Slow;

wasip2::http::proxy::export!(Slow);

impl wasip2::exports::http::incoming_handler::Guest for Slow {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let ms = match query_param(&request, "ms").map(|v| v.parse::<u64>()) {
            None => 200,
            Some(Ok(ms)) => ms,
            Some(Err(_)) => {
                return respond(response_out, 400, "text/plain", b"ms must be a number\n");
            }
        };
        if let Some(mb) = query_param(&request, "print_mb").and_then(|v| v.parse::<usize>().ok()) {
            use std::io::Write;
            let line = format!("{}\n", "x".repeat(1023));
            let mut stdout = std::io::stdout().lock();
            for _ in 0..mb * 1024 {
                let _ = stdout.write_all(line.as_bytes());
            }
            let _ = stdout.flush();
        }
        // Sleeping through a host pollable lets the host run other work meanwhile.
        subscribe_duration(ms.saturating_mul(1_000_000)).block();
        let body = format!("slept {ms} ms\n");
        respond(response_out, 200, "text/plain", body.as_bytes());
    }
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
