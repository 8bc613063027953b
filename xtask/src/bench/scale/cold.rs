//! Cold start vs warm: the `hello` component as a service that unloads after one idle
//! second, timed back to back while loaded and on the first request after each unload.

use std::fmt::Write as _;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::super::Running;
use super::super::client::Connection;
use super::super::report::{format_duration, render_table};
use super::observe::Metrics;
use super::{
    COLD_GOAL, HELLO_BODY, Latencies, Options, REQUEST_TIMEOUT, WARMUP_REQUESTS, difference,
    expect_body,
};

/// The app and service measured (see `write_app`); the service unloads after `idle = "1s"`.
pub const APP: &str = "scale";
pub const SERVICE: &str = "cold";
const PATH: &str = "/cold";
/// A second service of the same component that stays loaded: the first request on each
/// new connection goes to it, so the cold request is not also the connection's first.
const PRIMER: &str = "/hello";
/// An unload cannot happen before `idle` has passed; the bench sleeps that long before
/// it starts polling `/metrics`.
const IDLE: Duration = Duration::from_secs(1);
const POLL_EVERY: Duration = Duration::from_millis(20);
/// The reaper looks every second, so an unload is due 1-2 s after the last request.
const UNLOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Times the component is read and hashed natively; the median is reported.
const HASH_RUNS: usize = 21;

const LOADED: &str = "tessera_service_loaded";
pub const COLD_SUM: &str = "tessera_cold_start_seconds_sum";
pub const COLD_COUNT: &str = "tessera_cold_start_seconds_count";

pub struct Cold {
    /// The service's first request ever: its code loaded and its data file created.
    first: Duration,
    warm: Latencies,
    cold: Latencies,
    /// The request right after each cold one, on the same connection.
    after: Latencies,
    /// `tessera_cold_start_seconds` of the service over the whole run: (sum, count).
    server_total: (f64, f64),
    /// The same over the cold requests alone.
    server_cold: (f64, f64),
    /// Size of the component file.
    component_bytes: u64,
    /// Reading the component file and hashing it, natively (medians): the first thing
    /// every load does, to find its compiled code.
    read: Duration,
    hash: Duration,
}

fn labels() -> [(&'static str, &'static str); 2] {
    [("app", APP), ("service", SERVICE)]
}

pub fn measure(
    node: &mut Running,
    admin: u16,
    component: &Path,
    options: &Options,
) -> Result<Cold> {
    let port = node.server.port();
    println!(
        "==> warm: {WARMUP_REQUESTS} + {} sequential GET {PATH} on one connection",
        options.requests
    );
    let mut conn = Connection::open(port, REQUEST_TIMEOUT)?;
    let (first, reply) = conn.timed_get(PATH)?;
    expect_body(PATH, &reply.body, HELLO_BODY)?;
    for _ in 0..WARMUP_REQUESTS {
        conn.timed_get(PATH)?;
    }
    let mut warm = Vec::with_capacity(options.requests);
    for _ in 0..options.requests {
        let (elapsed, reply) = conn.timed_get(PATH)?;
        expect_body(PATH, &reply.body, HELLO_BODY)?;
        warm.push(elapsed);
    }
    drop(conn);
    let warm = Latencies::of(warm);
    println!(
        "    first request {}, then p50 {}, p99 {}",
        format_duration(first),
        format_duration(warm.p50),
        format_duration(warm.p99)
    );

    println!(
        "==> cold: {} times, wait for the idle unload, then GET {PATH} twice",
        options.cold
    );
    let before = wait_unloaded(admin)?;
    let mut cold = Vec::with_capacity(options.cold);
    let mut after = Vec::with_capacity(options.cold);
    for i in 0..options.cold {
        if i > 0 {
            wait_unloaded(admin)?;
        }
        // The reaper unmaps the code just after flipping the gauge; let it finish.
        thread::sleep(Duration::from_millis(10));
        let mut conn = Connection::open(port, REQUEST_TIMEOUT)?;
        conn.timed_get(PRIMER)?;
        let (elapsed, reply) = conn.timed_get(PATH)?;
        expect_body(PATH, &reply.body, HELLO_BODY)?;
        cold.push(elapsed);
        let (elapsed, _) = conn.timed_get(PATH)?;
        after.push(elapsed);
        if (i + 1) % 10 == 0 {
            println!("    {} of {}", i + 1, options.cold);
        }
    }
    node.server.ensure_running()?;
    let end = Metrics::scrape(admin)?;
    let server_total = (end.sum(COLD_SUM, &labels()), end.sum(COLD_COUNT, &labels()));
    let server_cold = (
        server_total.0 - before.sum(COLD_SUM, &labels()),
        server_total.1 - before.sum(COLD_COUNT, &labels()),
    );
    // Each cold request must have been a load, or the figures mean something else.
    if server_cold.1 != options.cold as f64 {
        bail!(
            "{} cold requests made the node load `{SERVICE}` {} times",
            options.cold,
            server_cold.1
        );
    }
    let (component_bytes, read, hash) = read_and_hash(component)?;
    Ok(Cold {
        first,
        warm,
        cold: Latencies::of(cold),
        after: Latencies::of(after),
        server_total,
        server_cold,
        component_bytes,
        read,
        hash,
    })
}

/// What a load does before it can look up the compiled code: read the component file and
/// take its sha256 (tessera-runtime's `content_hash`), timed here with the same sha2
/// crate; medians of [`HASH_RUNS`]. Returns the file's size too.
fn read_and_hash(component: &Path) -> Result<(u64, Duration, Duration)> {
    let mut reads = Vec::with_capacity(HASH_RUNS);
    let mut hashes = Vec::with_capacity(HASH_RUNS);
    let mut size = 0;
    for _ in 0..HASH_RUNS {
        let started = Instant::now();
        let bytes =
            std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
        reads.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(Sha256::digest(&bytes));
        hashes.push(started.elapsed());
        size = bytes.len() as u64;
    }
    Ok((size, Latencies::of(reads).p50, Latencies::of(hashes).p50))
}

/// Waits until the node reports the service unloaded; returns the metrics saying so.
fn wait_unloaded(admin: u16) -> Result<Metrics> {
    wait_service_unloaded(admin, APP, SERVICE)
}

/// Waits until the node reports `service` of `app` unloaded (it must have been loaded
/// once, and have an `idle` of one second); returns the metrics saying so.
pub fn wait_service_unloaded(admin: u16, app: &str, service: &str) -> Result<Metrics> {
    let started = Instant::now();
    thread::sleep(IDLE);
    loop {
        let metrics = Metrics::scrape(admin)?;
        let labels = [("app", app), ("service", service)];
        let unloaded = {
            let mut loaded = metrics.matching(LOADED, &labels).peekable();
            loaded.peek().is_some() && loaded.all(|s| s.value == 0.0)
        };
        if unloaded {
            return Ok(metrics);
        }
        if started.elapsed() > UNLOAD_TIMEOUT {
            bail!("`{service}` was not unloaded within {UNLOAD_TIMEOUT:?} of its last request");
        }
        thread::sleep(POLL_EVERY);
    }
}

impl Cold {
    pub fn table(&self) -> String {
        let rows = [
            ("warm: back to back on one connection", &self.warm),
            ("cold: the first after an idle unload", &self.cold),
            ("the request right after each cold one", &self.after),
        ];
        let mut cells = vec![["request", "n", "p50", "p99"].map(str::to_owned)];
        for (label, l) in rows {
            cells.push([
                label.to_owned(),
                l.n.to_string(),
                format_duration(l.p50),
                format_duration(l.p99),
            ]);
        }
        render_table(&cells, &[0])
    }

    /// What a cold request adds at the median, and whether that meets the goal.
    fn added(&self) -> (String, bool) {
        let met = self.cold.p50 <= self.warm.p50 + COLD_GOAL;
        (difference(self.cold.p50, self.warm.p50), met)
    }

    pub fn lines(&self) -> Vec<String> {
        let (added, met) = self.added();
        let mean_of = |(sum, count): (f64, f64)| {
            Duration::from_secs_f64(if count > 0.0 { sum / count } else { 0.0 })
        };
        let mean = |pair| format_duration(mean_of(pair));
        let outside = self
            .cold
            .p50
            .saturating_sub(self.warm.p50)
            .saturating_sub(mean_of(self.server_cold));
        vec![
            format!(
                "added latency of a cold request at p50 (cold − warm): {added}; goal at most \
                 {} over a warm request: {}",
                format_duration(COLD_GOAL),
                if met { "met" } else { "not met" }
            ),
            format!(
                "server side, `tessera_cold_start_seconds` of `{SERVICE}`: {} loads in {:.4} s \
                 (mean {}); the {} cold requests alone: {:.4} s, mean {} per load",
                self.server_total.1,
                self.server_total.0,
                mean(self.server_total),
                self.server_cold.1,
                self.server_cold.0,
                mean(self.server_cold),
            ),
            format!(
                "outside the timed load ((cold − warm) at p50 − mean load): {}, which covers \
                 reading the component file, the hop onto the blocking pool and back, looking \
                 up the service's secrets, and the first instance of freshly loaded code",
                format_duration(outside)
            ),
            format!(
                "reading the {:.1} MB component file and taking its sha256, which every load \
                 does before it can look up the compiled code (timed natively with the same \
                 sha2 crate, median of {HASH_RUNS}): read {}, sha256 {}",
                self.component_bytes as f64 / 1e6,
                format_duration(self.read),
                format_duration(self.hash)
            ),
            format!(
                "the service's very first request (load, plus creating and opening its SQLite \
                 data file): {}",
                format_duration(self.first)
            ),
        ]
    }

    pub fn markdown(&self, md: &mut String) {
        let _ = writeln!(md, "### Cold start vs warm\n");
        let _ = writeln!(
            md,
            "Served by `tessera up` as service `{SERVICE}` (route `{PATH}`, `idle = \"1s\"`). \
             **warm**: {WARMUP_REQUESTS} unreported requests, then the measured ones, back to \
             back on one connection. **cold**: wait until `/metrics` on the admin listener \
             shows `{LOADED}{{app=\"{APP}\",service=\"{SERVICE}\"}} 0` (the reaper looks every \
             second, so 1-2 s after the last request), open a connection, send one request \
             to another, loaded service so the connection is set up, then time `GET {PATH}`, \
             and time one more right after it. The node must count exactly one load per cold \
             request, or the run fails. A load reads the component file, hashes it to find \
             its compiled code in the on-disk cache, maps that code and pre-instantiates it \
             (`tessera_cold_start_seconds` times all but the read), then the request is \
             served as usual; the service's data handles stay open after its first load.\n"
        );
        let _ = writeln!(md, "{}", self.table());
        for line in self.lines() {
            let _ = writeln!(md, "- {line}");
        }
        md.push('\n');
    }
}
