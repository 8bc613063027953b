//! `cargo xtask demo` and `cargo xtask shop`: build everything and serve an example app
//! in the foreground: examples/hello (Rust), or examples/shop (Python, JavaScript, Go and
//! C, built from source by `tessera build` with the toolchains of `cargo xtask toolchains`).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::guests;
use crate::process::{cargo_step, repo_root, tessera_release_binary};
use crate::toolchains;

const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

/// `extra` is passed on to `tessera up`; a `--listen` in it replaces the default address.
pub fn run(extra: &[String]) -> Result<()> {
    guests::build()?;
    cargo_step(&["build", "--release", "-p", "tessera"])?;
    let cmd = Command::new(tessera_release_binary());
    serve(
        cmd,
        "examples/hello",
        &["/hello", "/hello/Ada", "/users/42"],
        extra,
    )
}

/// The polyglot shop: its services are built from source by `tessera up --build`.
pub fn shop(extra: &[String]) -> Result<()> {
    guests::ensure_wasm_target()?;
    toolchains::install()?;
    cargo_step(&["build", "--release", "-p", "tessera"])?;
    let mut cmd = Command::new(tessera_release_binary());
    cmd.env("PATH", toolchains::path_var())
        .env("TESSERA_BUILD_CACHE", toolchains::build_cache());
    let mut args = vec!["--build".to_string()];
    args.extend_from_slice(extra);
    serve(
        cmd,
        "examples/shop",
        &["/catalog", "/cart/c1", "/stats"],
        &args,
    )
}

fn serve(mut cmd: Command, app: &str, paths: &[&str], extra: &[String]) -> Result<()> {
    let listen = listen_override(extra);
    cmd.current_dir(repo_root()).args(["up", app]);
    // clap rejects a repeated `--listen`, so only add ours when the caller gave none.
    if listen.is_none() {
        cmd.args(["--listen", DEFAULT_LISTEN]);
    }
    cmd.args(extra);
    let addr = listen.unwrap_or(DEFAULT_LISTEN);

    println!();
    println!("Serving {app} on http://{addr} (Ctrl-C to stop). Try:");
    for path in paths {
        println!("  curl http://{addr}{path}");
    }
    println!();

    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", tessera_release_binary().display()))?;
    if !status.success() {
        bail!("`tessera up {app}` exited with {status}");
    }
    Ok(())
}

/// The address given with `--listen ADDR` or `--listen=ADDR`, if any.
fn listen_override(args: &[String]) -> Option<&str> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--listen" {
            return iter.next().map(String::as_str);
        }
        if let Some(addr) = arg.strip_prefix("--listen=") {
            return Some(addr);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::listen_override;

    use crate::test_args as args;

    #[test]
    fn finds_listen_in_both_spellings() {
        assert_eq!(listen_override(&args(&[])), None);
        assert_eq!(
            listen_override(&args(&["--listen", "0.0.0.0:8080"])),
            Some("0.0.0.0:8080")
        );
        assert_eq!(
            listen_override(&args(&["-v", "--listen=[::1]:80"])),
            Some("[::1]:80")
        );
    }
}
