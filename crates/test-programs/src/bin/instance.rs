//! `instance`: tells which instance served a request, to check instance reuse. Every
//! request answers `<instance> <served>`: an id drawn once per instance (from
//! `wasi:random`) and how many requests this instance has started, this one included.
//! It prints `instance <id> request <served>` to stdout. Below any route prefix:
//! - `.../trap`: panics (after counting the request);
//! - `.../sleep?ms=N`: sleeps N ms first;
//! - `.../grow?mb=N`: allocates and keeps N MiB more first (so it stays with the
//!   instance, and a later request may pass the memory limit).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use test_programs::{path, query_param, respond};
use wasip2::clocks::monotonic_clock::subscribe_duration;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Instance;

wasip2::http::proxy::export!(Instance);

static SERVED: AtomicU32 = AtomicU32::new(0);
static ID: Mutex<Option<String>> = Mutex::new(None);
static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

const MIB: usize = 1 << 20;

fn id() -> String {
    let mut id = ID.lock().unwrap();
    id.get_or_insert_with(|| format!("{:016x}", wasip2::random::random::get_random_u64()))
        .clone()
}

impl wasip2::exports::http::incoming_handler::Guest for Instance {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let served = SERVED.fetch_add(1, Ordering::SeqCst) + 1;
        let id = id();
        println!("instance {id} request {served}");
        let path = path(&request);
        let path = path.split('?').next().unwrap_or_default().to_owned();
        if path.ends_with("/trap") {
            panic!("instance {id} trapped on purpose");
        }
        if path.ends_with("/sleep") {
            let ms = query_param(&request, "ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(100);
            subscribe_duration(ms.saturating_mul(1_000_000)).block();
        }
        if path.ends_with("/grow") {
            let mb = query_param(&request, "mb")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(1);
            // Touch every page so the memory is really there.
            KEPT.lock().unwrap().push(vec![1u8; mb * MIB]);
        }
        let body = format!("{id} {served}\n");
        respond(response_out, 200, "text/plain", body.as_bytes());
    }
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
