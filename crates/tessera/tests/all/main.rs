//! Integration tests: the real `tessera` binary serving real components on 127.0.0.1:0.
//! Guest components come from `crates/test-programs` and `examples/`, built by
//! `cargo xtask guests`.

mod bad_input;
mod cluster;
mod data;
mod deployments;
mod events;
mod gateway;
mod hardening;
mod internal;
mod isolation;
mod lifecycle;
mod polyglot;
mod reuse;
mod scaling;
mod shared_backends;
mod telemetry;
mod util;
mod wasi_p3;
