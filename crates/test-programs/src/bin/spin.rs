//! `spin`: a guest that never answers, to check that the host's timeout
//! (epoch interruption) stops a busy guest.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Spin;

wasip2::http::proxy::export!(Spin);

impl wasip2::exports::http::incoming_handler::Guest for Spin {
    fn handle(_request: IncomingRequest, _response_out: ResponseOutparam) {
        eprintln!("spin: looping forever");
        let mut turns: u64 = 0;
        loop {
            // `black_box` keeps the optimiser from removing the loop body.
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
    }
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
