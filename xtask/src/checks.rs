//! `cargo xtask test`: the single entry point for every check CI runs, stopping at the first failure.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::guests::{self, WASM_TARGET};
use crate::process::{cargo, cargo_step};
use crate::toolchains;

const HELLO_MANIFEST: &str = "examples/hello/Cargo.toml";

pub fn run() -> Result<()> {
    // Host tests load the compiled guests, so they must exist (and be current) first.
    println!("==> cargo xtask guests");
    guests::build()?;
    // The polyglot tests build Python, JavaScript, C and Go guests with these.
    println!("==> cargo xtask toolchains");
    toolchains::install()?;
    // The cluster tests start real NATS servers.
    toolchains::system_packages()?;

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
    let (passed, failed) = cargo_test()?;

    println!("==> all checks passed");
    // A closing tally, so the last line says how many tests ran (cargo's own last line is
    // usually an empty doc-test run).
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test`, streaming its output, and adds up its `test result:` lines.
fn cargo_test() -> Result<(u64, u64)> {
    println!("==> cargo test");
    let mut child = cargo(&["test"])
        .env("PATH", toolchains::path_var())
        .env("TESSERA_BUILD_CACHE", toolchains::build_cache())
        .stdout(Stdio::piped())
        .spawn()
        .context("step `cargo test`: could not start cargo")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some((p, f)) = parse_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("step `cargo test` failed ({status}): {passed} passed, {failed} failed");
    }
    Ok((passed, failed))
}

/// Parses `test result: ok. 12 passed; 0 failed; ...` into (passed, failed).
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let number_before = |word: &str| -> Option<u64> {
        let end = rest.find(word)?;
        rest[..end]
            .trim_end()
            .rsplit([' ', '.'])
            .next()?
            .parse()
            .ok()
    };
    Some((number_before(" passed")?, number_before(" failed")?))
}

#[cfg(test)]
mod tests {
    use super::parse_result;

    #[test]
    fn test_result_lines_are_tallied() {
        assert_eq!(
            parse_result(
                "test result: ok. 26 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 10.00s"
            ),
            Some((26, 0))
        );
        assert_eq!(
            parse_result("test result: FAILED. 7 passed; 1 failed; 0 ignored"),
            Some((7, 1))
        );
        assert_eq!(parse_result("running 3 tests"), None);
    }
}
