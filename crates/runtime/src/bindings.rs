//! The generated host side of the platform's own interfaces (`tessera:platform/data`):
//! `wasi:keyvalue`, `wasi:config`, `tessera:sql` and `tessera:messaging`, and the
//! resources a guest holds through them. Each capability implements its part on its own
//! per-instance state (`DataState` in `data.rs`, `MessagingState` in `messaging.rs`).

use std::sync::Arc;

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "tessera:platform/data",
    imports: { default: async | trappable },
    require_store_data_send: true,
    with: {
        "wasi:keyvalue/store.bucket": Bucket,
        "wasi:keyvalue/atomics.cas": Cas,
    },
});

/// An open bucket: just its name, checked against the service's declared buckets when
/// it was opened.
pub struct Bucket {
    pub(crate) name: Arc<str>,
}

/// A compare-and-swap handle: the key and the value and version seen when it was made.
pub struct Cas {
    pub(crate) bucket: Arc<str>,
    pub(crate) key: String,
    pub(crate) seen: Option<(Vec<u8>, u64)>,
}
