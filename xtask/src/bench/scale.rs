//! `cargo xtask bench-scale`: scale to zero, density and internal calls, measured against
//! the real release binary in one run.
//!
//! - **cold start vs warm** (`cold.rs`): the `hello` component as a service with
//!   `idle = "1s"`, timed back to back while loaded and on the first request after each
//!   idle unload, next to the node's own `tessera_cold_start_seconds`;
//! - **density** (`density.rs`): thousands of services of one component deployed to one
//!   `tessera serve` node with `tessera deploy`, the node's memory idle, after a request to
//!   a thousand of them, and after they are unloaded again;
//! - **internal calls** (`calls.rs`): a request straight to `hello`, through one in-process
//!   call to `http://hello.internal`, and through the gateway's socket.
//!
//! Latency is measured with sequential requests on kept-alive HTTP/1.1 connections
//! (`client.rs`); the node's view comes from its `/metrics` and `/proc` (`observe.rs`).

mod calls;
mod cold;
mod density;
mod observe;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::report::{self, format_duration};
use super::servers::{ScratchDir, free_port};
use super::{TESSERA, parse_flags, version_of};
use crate::native;
use crate::process::repo_root;
use calls::Calls;
use cold::Cold;
use density::Density;

// For `bench-polyglot`, which waits for idle unloads and reads the node's metrics the
// same way.
pub(super) use cold::{COLD_COUNT, COLD_SUM, wait_service_unloaded};
pub(super) use observe::Metrics;

/// The section this command owns in BENCHMARKS.md.
const SECTION_HEADING: &str = "## Scale to zero, density and internal calls";

/// What the `hello` component answers; the bench checks every response against it.
const HELLO_BODY: &str = native::BODY;
/// The goal for a cold request: at most this much slower than a warm one (p50).
const COLD_GOAL: Duration = Duration::from_millis(1);
/// Unreported requests before each latency measurement.
const WARMUP_REQUESTS: usize = 100;
/// Every request and read of the bench gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

const USAGE: &str = "usage: cargo xtask bench-scale [--services N] [--per-app N] [--touch N] \
                     [--cold N] [--requests N]";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    /// Services deployed for the density measurement.
    services: usize,
    /// Services per app (one `tessera deploy` each).
    per_app: usize,
    /// Distinct services that get one request each after the deploys.
    touch: usize,
    /// Cold requests (each after waiting for an idle unload).
    cold: usize,
    /// Warm requests, and rounds of the three internal-call variants.
    requests: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            services: 10_000,
            per_app: 1_000,
            touch: 1_000,
            cold: 100,
            requests: 1_000,
        };
        parse_flags(args, |flag, value| {
            let (field, max) = match flag {
                "--services" => (&mut options.services, 100_000),
                "--per-app" => (&mut options.per_app, 10_000),
                "--touch" => (&mut options.touch, 100_000),
                "--cold" => (&mut options.cold, 10_000),
                "--requests" => (&mut options.requests, 1_000_000),
                _ => bail!("unknown bench-scale option {flag:?}; {USAGE}"),
            };
            *field = value
                .parse()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .with_context(|| {
                    format!("{flag} takes a whole number from 1 to {max}, not {value:?}")
                })?;
            Ok(())
        })?;
        if options.touch > options.services {
            bail!(
                "--touch ({}) cannot exceed --services ({})",
                options.touch,
                options.services
            );
        }
        Ok(options)
    }

    fn command_line(&self) -> String {
        format!(
            "cargo xtask bench-scale --services {} --per-app {} --touch {} --cold {} --requests {}",
            self.services, self.per_app, self.touch, self.cold, self.requests
        )
    }
}

/// Percentiles of a set of request times (nearest rank, as the other benches use).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Latencies {
    pub(super) n: usize,
    pub(super) p50: Duration,
    pub(super) p99: Duration,
    pub(super) max: Duration,
    pub(super) total: Duration,
}

impl Latencies {
    pub(super) fn of(mut times: Vec<Duration>) -> Latencies {
        times.sort_unstable();
        let n = times.len();
        let rank = |p: usize| match n {
            0 => Duration::ZERO,
            n => times[(p * n).div_ceil(100).clamp(1, n) - 1],
        };
        Latencies {
            n,
            p50: rank(50),
            p99: rank(99),
            max: times.last().copied().unwrap_or_default(),
            total: times.iter().sum(),
        }
    }
}

/// `a − b`, signed, for differences of latencies that may come out either way.
pub(super) fn difference(a: Duration, b: Duration) -> String {
    if a >= b {
        format!("+{}", format_duration(a - b))
    } else {
        format!("−{}", format_duration(b - a))
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

/// Checks a response body against what the guest should have answered.
fn expect_body(path: &str, body: &[u8], expected: &str) -> Result<()> {
    if body != expected.as_bytes() {
        bail!(
            "GET {path} answered {:?}, expected {expected:?}",
            String::from_utf8_lossy(body)
        );
    }
    Ok(())
}

pub fn run(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    let tessera = super::build()?;
    let hello = super::guest_component("hello")?;
    let fetch = super::guest_component("fetch")?;

    // Declared before the servers so it outlives them (locals drop in reverse order).
    let scratch = ScratchDir::create()?;
    // Taken after the builds, so the load average reflects the machine we measure on.
    let machine = report::machine();

    // Cold starts and internal calls share one node; density gets its own, so neither
    // measurement sees the other's services.
    let gateway = free_port()?;
    let admin = free_port()?;
    let peer_gateway = free_port()?;
    let app_dir = scratch.path().join("app");
    write_app(&app_dir, &hello, &fetch, peer_gateway)?;
    let cmd = up_command(
        &tessera,
        &app_dir,
        &scratch.path().join("data"),
        gateway,
        admin,
    );
    println!("==> cold starts and internal calls: tessera up on 127.0.0.1:{gateway}");
    let mut node = super::start(
        TESSERA,
        cmd,
        gateway,
        "/hello",
        scratch.path(),
        "tessera-up",
    )?;
    let cold = cold::measure(&mut node, admin, &hello, &options)?;
    // The socket variant of the internal calls goes to a second node: a node refuses
    // guests' requests to its own listeners.
    let peer_dir = scratch.path().join("peer");
    write_peer_app(&peer_dir, &hello)?;
    let cmd = up_command(
        &tessera,
        &peer_dir,
        &scratch.path().join("peer-data"),
        peer_gateway,
        free_port()?,
    );
    let mut peer = super::start(
        TESSERA,
        cmd,
        peer_gateway,
        "/hello",
        scratch.path(),
        "tessera-peer",
    )?;
    let calls = calls::measure(&mut node, &mut peer, &options)?;
    node.server.ensure_running()?;
    drop(node);
    drop(peer);

    let density = density::measure(&tessera, &hello, scratch.path(), &options)?;

    let section = Section {
        date: report::utc_now(),
        machine,
        command: options.command_line(),
        versions: vec![
            version_of(&tessera, TESSERA),
            version_of(Path::new("rustc"), "rustc"),
        ],
        cold,
        density,
        calls,
    };
    println!();
    println!("{}", section.cold.table());
    for line in section.cold.lines() {
        println!("{line}");
    }
    println!();
    println!("{}", section.density.memory_table());
    println!("{}", section.density.request_table());
    for line in section.density.lines() {
        println!("{line}");
    }
    println!();
    println!("{}", section.calls.table());
    for line in section.calls.lines() {
        println!("{line}");
    }
    let path = repo_root().join("BENCHMARKS.md");
    report::update_benchmarks_md(&path, SECTION_HEADING, &section.markdown())?;
    println!("\nupdated {}", path.display());
    Ok(())
}

/// The second node's app: `hello` on `/hello`.
fn write_peer_app(app_dir: &Path, hello: &Path) -> Result<()> {
    std::fs::create_dir_all(app_dir).with_context(|| format!("creating {}", app_dir.display()))?;
    let hello = super::toml_string(&hello.display().to_string());
    let manifest = format!(
        "[app]\nname = \"peer\"\n\n[services.hello]\ncomponent = {hello}\nroutes = [\"/hello\"]\n"
    );
    let path = app_dir.join("tessera.toml");
    std::fs::write(&path, manifest).with_context(|| format!("writing {}", path.display()))
}

/// The app of the cold-start and internal-call measurements. `cold` and `hello` are the
/// same component (so its code is compiled once); `cold` unloads after a second idle.
/// `front` may call `hello` in-process and the second node's gateway through the socket.
fn write_app(app_dir: &Path, hello: &Path, fetch: &Path, peer: u16) -> Result<()> {
    std::fs::create_dir_all(app_dir).with_context(|| format!("creating {}", app_dir.display()))?;
    let hello = super::toml_string(&hello.display().to_string());
    let fetch = super::toml_string(&fetch.display().to_string());
    let manifest = format!(
        "[app]\nname = \"{}\"\n\n\
         [services.{}]\ncomponent = {hello}\nroutes = [\"/cold\"]\nidle = \"1s\"\n\n\
         [services.hello]\ncomponent = {hello}\nroutes = [\"/hello\"]\n\n\
         [services.front]\ncomponent = {fetch}\nroutes = [\"/front\"]\n\
         outbound = [\"http://hello.internal\", \"http://127.0.0.1:{peer}\"]\n",
        cold::APP,
        cold::SERVICE,
    );
    let path = app_dir.join("tessera.toml");
    std::fs::write(&path, manifest).with_context(|| format!("writing {}", path.display()))
}

/// `tessera up APP_DIR` with both listeners on known ports: the bench reads `/metrics` on
/// the admin one.
pub(super) fn up_command(
    tessera: &Path,
    app_dir: &Path,
    data_dir: &Path,
    gateway: u16,
    admin: u16,
) -> Command {
    let mut cmd = Command::new(tessera);
    cmd.arg("up")
        .arg(app_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{gateway}"))
        .arg("--admin")
        .arg(format!("127.0.0.1:{admin}"))
        .arg("--data")
        .arg(data_dir)
        // Per-request logging would dominate a hello world.
        .env("RUST_LOG", "warn")
        .env_remove("TESSERA_TOKEN")
        .env_remove("TESSERA_MEMORY_BUDGET")
        .current_dir(repo_root());
    cmd
}

struct Section {
    date: String,
    machine: String,
    command: String,
    versions: Vec<String>,
    cold: Cold,
    density: Density,
    calls: Calls,
}

impl Section {
    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "{SECTION_HEADING}\n");
        let _ = writeln!(md, "Measured {} on {}.\n", self.date, self.machine);
        let _ = writeln!(
            md,
            "Command: `{}`. Everything runs against the release build of `tessera` \
             (RUST_LOG=warn) on loopback ports, with the `hello` component of \
             crates/test-programs (it answers `{}`); the client sends one request at a \
             time on a kept-alive HTTP/1.1 connection and times it from writing the \
             request to having read the whole response. Percentiles are nearest-rank, \
             so with fewer than 100 samples p99 is the largest.\n",
            self.command,
            HELLO_BODY.escape_default()
        );
        self.cold.markdown(&mut md);
        self.density.markdown(&mut md);
        self.calls.markdown(&mut md);
        let _ = writeln!(md, "Versions: {}.", self.versions.join("; "));
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_args as args;

    #[test]
    fn options_defaults_overrides_and_bounds() {
        let o = Options::parse(&[]).unwrap();
        assert_eq!(
            (o.services, o.per_app, o.touch, o.cold, o.requests),
            (10_000, 1_000, 1_000, 100, 1_000)
        );
        let o = Options::parse(&args(&[
            "--services=300",
            "--per-app",
            "100",
            "--touch",
            "50",
            "--cold=5",
            "--requests",
            "200",
        ]))
        .unwrap();
        assert_eq!(
            (o.services, o.per_app, o.touch, o.cold, o.requests),
            (300, 100, 50, 5, 200)
        );
        assert_eq!(
            o.command_line(),
            "cargo xtask bench-scale --services 300 --per-app 100 --touch 50 --cold 5 --requests 200"
        );
        assert!(Options::parse(&args(&["--services", "0"])).is_err());
        assert!(Options::parse(&args(&["--per-app", "10001"])).is_err());
        assert!(Options::parse(&args(&["--services", "10", "--touch", "11"])).is_err());
        assert!(Options::parse(&args(&["--cold", "many"])).is_err());
        assert!(Options::parse(&args(&["--duration", "3"])).is_err());
    }

    #[test]
    fn latencies_use_nearest_rank() {
        let ms = Duration::from_millis;
        let l = Latencies::of((1..=200).rev().map(ms).collect());
        assert_eq!((l.n, l.p50, l.p99, l.max), (200, ms(100), ms(198), ms(200)));
        assert_eq!(l.total, ms(20_100));
        let l = Latencies::of(vec![ms(3), ms(1), ms(2)]);
        assert_eq!((l.p50, l.p99, l.max), (ms(2), ms(3), ms(3)));
        assert_eq!(Latencies::of(Vec::new()).p50, Duration::ZERO);
    }

    #[test]
    fn differences_and_sizes_read_well() {
        let us = Duration::from_micros;
        assert_eq!(difference(us(1500), us(300)), "+1.20 ms");
        assert_eq!(difference(us(300), us(350)), "−50.0 µs");
        assert_eq!(mib(3 << 20), "3.0 MiB");
        assert_eq!(kib(1536.0), "1.5 KiB");
    }
}
