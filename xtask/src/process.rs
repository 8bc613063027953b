//! Helpers for locating the repository and running the build tools as visible, named steps.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The repository root: xtask lives in `<root>/xtask`, so this works from any working directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask's manifest directory has a parent")
        .to_path_buf()
}

/// The root workspace's target directory, honouring `CARGO_TARGET_DIR` like cargo does.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// The `tessera` binary produced by `cargo build --release -p tessera`.
pub fn tessera_release_binary() -> PathBuf {
    target_dir().join("release").join("tessera")
}

/// A `cargo` command run from the repository root. `CARGO` is set when we run under
/// `cargo xtask`, and using it keeps nested builds on the same toolchain.
pub fn cargo(args: &[&str]) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(repo_root());
    cmd
}

/// Runs `cargo ARGS` as a named step (see [`run_step`]).
pub fn cargo_step(args: &[&str]) -> Result<()> {
    run_step(&format!("cargo {}", args.join(" ")), &mut cargo(args))
}

/// Prints `==> LABEL`, runs the command with inherited stdio (so its output streams live) and
/// turns a failure into an error that names the step.
pub fn run_step(label: &str, cmd: &mut Command) -> Result<()> {
    println!("==> {label}");
    let status = cmd
        .status()
        .with_context(|| format!("step `{label}`: could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("step `{label}` failed ({status})");
    }
    Ok(())
}
