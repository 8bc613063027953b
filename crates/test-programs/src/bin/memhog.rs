//! `memhog`: allocates `?mb=N` MiB (default 1) and keeps it (for `?hold_ms=N`
//! more), to check the host's memory limits. Past the limit the allocation
//! fails and the Rust runtime aborts, which is a trap: that is the expected
//! outcome.

use test_programs::{query_param, respond};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct MemHog;

wasip2::http::proxy::export!(MemHog);

const MIB: usize = 1 << 20;

impl wasip2::exports::http::incoming_handler::Guest for MemHog {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let mb = match query_param(&request, "mb").map(|v| v.parse::<usize>()) {
            None => 1,
            Some(Ok(mb)) => mb,
            Some(Err(_)) => {
                return respond(response_out, 400, "text/plain", b"mb must be a number\n");
            }
        };
        // Non-zero filling writes every page, so the memory is really used.
        let hog: Vec<Vec<u8>> = (0..mb).map(|_| vec![1u8; MIB]).collect();
        std::hint::black_box(&hog);
        if let Some(ms) = query_param(&request, "hold_ms").and_then(|v| v.parse::<u64>().ok()) {
            wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
        }
        let body = format!("allocated {mb} MiB\n");
        respond(response_out, 200, "text/plain", body.as_bytes());
    }
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
