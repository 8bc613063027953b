//! `trap`: a guest that fails, to check that the host turns traps and panics
//! into errors without harming the next request.

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

wasip2::http::proxy::export!(Trap);

impl wasip2::exports::http::incoming_handler::Guest for Trap {
    fn handle(request: IncomingRequest, _response_out: ResponseOutparam) {
        if test_programs::path(&request) == "/trap/unreachable" {
            unreachable_instruction();
        }
        panic!("guest panicked on purpose");
    }
}

/// Executes the wasm `unreachable` instruction directly (no panic message).
#[cfg(target_arch = "wasm32")]
fn unreachable_instruction() -> ! {
    core::arch::wasm32::unreachable()
}

// Lets `cargo check --workspace` on the host still compile this crate.
#[cfg(not(target_arch = "wasm32"))]
fn unreachable_instruction() -> ! {
    std::process::abort()
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
