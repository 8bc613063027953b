//! `cargo xtask test`: the single entry point for every check CI runs, stopping at the first failure.

use anyhow::Result;

use crate::guests::{self, WASM_TARGET};
use crate::process::cargo_step;

const HELLO_MANIFEST: &str = "examples/hello/Cargo.toml";

pub fn run() -> Result<()> {
    // Host tests load the compiled guests, so they must exist (and be current) first.
    println!("==> cargo xtask guests");
    guests::build()?;

    cargo_step(&["fmt", "--all", "--", "--check"])?;
    // The example's manifest is a virtual workspace, which cargo fmt only formats with --all.
    cargo_step(&["fmt", "--all", "--check", "--manifest-path", HELLO_MANIFEST])?;

    // The workspace includes crates/test-programs, which also compiles on the host; linting
    // it there is enough to keep it warning-free.
    cargo_step(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The example only makes sense for the wasm target (and is its own workspace).
    cargo_step(&[
        "clippy",
        "--release",
        "--target",
        WASM_TARGET,
        "--manifest-path",
        HELLO_MANIFEST,
        "--",
        "-D",
        "warnings",
    ])?;

    // The default members: the host crates.
    cargo_step(&["test"])?;

    println!("==> all checks passed");
    Ok(())
}
