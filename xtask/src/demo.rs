//! `cargo xtask demo`: builds everything and serves examples/hello in the foreground.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::guests;
use crate::process::{cargo_step, repo_root, tessera_release_binary};

const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

/// `extra` is passed on to `tessera up`; a `--listen` in it replaces the default address.
pub fn run(extra: &[String]) -> Result<()> {
    guests::build()?;
    cargo_step(&["build", "--release", "-p", "tessera"])?;

    let listen = listen_override(extra);
    let mut cmd = Command::new(tessera_release_binary());
    cmd.current_dir(repo_root()).args(["up", "examples/hello"]);
    // clap rejects a repeated `--listen`, so only add ours when the caller gave none.
    if listen.is_none() {
        cmd.args(["--listen", DEFAULT_LISTEN]);
    }
    cmd.args(extra);
    let addr = listen.unwrap_or(DEFAULT_LISTEN);

    println!();
    println!("Serving examples/hello on http://{addr} (Ctrl-C to stop). Try:");
    for path in ["/hello", "/hello/Ada", "/users/42"] {
        println!("  curl http://{addr}{path}");
    }
    println!();

    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", tessera_release_binary().display()))?;
    if !status.success() {
        bail!("`tessera up examples/hello` exited with {status}");
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

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

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
