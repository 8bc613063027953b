//! `cargo xtask guests`: builds every guest component (test programs and the hello example).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::process::{cargo_step, run_step};

/// The only target guests are built for: WASI 0.2 components.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Builds `<target dir>/wasm32-wasip2/release/<bin>.wasm` for every bin of
/// `crates/test-programs` and `crates/test-programs-p3` (WASI 0.3; the target dir honours
/// `CARGO_TARGET_DIR`) and
/// `examples/hello/target/wasm32-wasip2/release/{greeter,users}.wasm`.
pub fn build() -> Result<()> {
    ensure_wasm_target()?;
    cargo_step(&[
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "-p",
        "test-programs",
        "-p",
        "test-programs-p3",
    ])?;
    // The example is its own workspace (excluded from ours), so it has its own target dir,
    // which is the one its tessera.toml points at: named explicitly, so a CARGO_TARGET_DIR
    // in the environment does not send the components elsewhere.
    cargo_step(&[
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "--manifest-path",
        "examples/hello/Cargo.toml",
        "--target-dir",
        "examples/hello/target",
    ])
}

/// Installs the wasm target through rustup when it is missing, so a fresh checkout just works.
pub fn ensure_wasm_target() -> Result<()> {
    let output = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let output = match output {
        Ok(output) if output.status.success() => output,
        Ok(output) => bail!(
            "`rustup target list --installed` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        // Without rustup the toolchain manages its targets some other way; let cargo report
        // a missing target itself.
        Err(err) => {
            eprintln!(
                "xtask: note: could not run rustup ({err}); assuming {WASM_TARGET} is installed"
            );
            return Ok(());
        }
    };
    let installed = String::from_utf8(output.stdout)
        .context("`rustup target list --installed` printed non-UTF-8 output")?;
    if installed.lines().any(|line| line.trim() == WASM_TARGET) {
        return Ok(());
    }
    run_step(
        &format!("rustup target add {WASM_TARGET}"),
        Command::new("rustup").args(["target", "add", WASM_TARGET]),
    )
}
