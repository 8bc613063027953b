//! `hello`: the smallest useful guest, a fixed text answer. Benchmarks use it,
//! so it does nothing beyond writing the response.

use test_programs::respond;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

wasip2::http::proxy::export!(Hello);

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        respond(response_out, 200, "text/plain", b"hello from tessera\n");
    }
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
