//! `cargo xtask bench-data`: key-value and SQL operations timed inside a guest, next to the
//! same operations done natively on the same SQLite file.
//!
//! The guest half is the `data` test program's `GET /bench/OP?n=N` endpoints, which time
//! each host call with the WASI monotonic clock. The native half runs after tessera has
//! stopped, in a release build of xtask (`xtask bench-data-native`, see `data/native.rs`),
//! so both halves see the same file, pragmas and rows, and neither is an unoptimised build.

pub mod cluster;
pub mod native;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::report::{self, format_duration};
use super::servers::{ScratchDir, free_port};
use super::{TESSERA, parse_flags, probe, version_of};
use crate::process::{repo_root, target_dir};

/// The section this command owns in BENCHMARKS.md.
const SECTION_HEADING: &str = "## Service data: key-value and SQL from a guest vs native";
/// The section `--cluster` adds.
const CLUSTER_HEADING: &str =
    "## SQL in a cluster: through the writer, through a forwarding node, takeover by size";

/// The app and service the `data` component is served as; its data file is
/// `DATA/services/APP/SERVICE.db`.
const APP: &str = "benchdata";
const SERVICE: &str = "bench";

/// The operations, in the order they run; each names a `/bench/OP` endpoint of the guest.
const OPS: [&str; 4] = ["kv-get", "kv-set", "sql-query", "sql-insert"];
const DEFAULT_OPS: usize = 5000;
/// The most operations the guest accepts in one request (`MAX_BENCH_OPS` in data.rs).
const MAX_OPS: usize = 1_000_000;
/// Unreported operations before each measured run, on both sides: they open connections,
/// fill statement caches and create the `bench` table.
const WARMUP_OPS: usize = 200;

/// The two native measurements, as the native half labels its results.
const BACKEND: &str = "tessera-data";
const RAW: &str = "rusqlite";

/// The statements the guest sends (see `bench` in crates/test-programs/src/bin/data.rs).
const SQL_QUERY: &str = "SELECT id, name, score FROM bench WHERE id = ?";
const SQL_INSERT: &str = "INSERT INTO bench (name, score) VALUES (?, ?)";
/// Rows of `bench` that `sql-query` cycles through; the guest creates them.
const BENCH_ROWS: i64 = 1000;
/// Every key-value value is this many bytes, as in the guest.
const VALUE_BYTES: usize = 100;

struct Options {
    ops: usize,
    /// Also measure SQL on three cluster nodes (`--cluster`).
    cluster: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            ops: DEFAULT_OPS,
            cluster: false,
        };
        let (cluster, args) = super::take_switch(args, "--cluster");
        options.cluster = cluster;
        parse_flags(&args, |flag, value| {
            match flag {
                "--ops" => {
                    options.ops = value
                        .parse()
                        .ok()
                        .filter(|ops| (1..=MAX_OPS).contains(ops))
                        .with_context(|| {
                            format!("--ops takes a whole number from 1 to {MAX_OPS}, not {value:?}")
                        })?;
                }
                _ => bail!(
                    "unknown bench-data option {flag:?}; usage: cargo xtask bench-data [--ops N] [--cluster]"
                ),
            }
            Ok(())
        })?;
        Ok(options)
    }
}

/// One timed run of one operation: the guest's JSON summary, which the native half
/// reproduces from its own timings by the same rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    n: u64,
    /// The sum of the operations' own times, not the wall time of the loop.
    total_ns: u64,
    p50_ns: u64,
    p99_ns: u64,
    ops_per_sec: f64,
}

impl Summary {
    /// Summarises per-operation times as `summary` in data.rs does: nearest-rank
    /// percentiles, and operations per second of time spent in the operations.
    pub fn from_durations(mut durations: Vec<u64>) -> Summary {
        durations.sort_unstable();
        let n = durations.len();
        let total_ns: u64 = durations.iter().sum();
        Summary {
            n: n as u64,
            total_ns,
            p50_ns: report::nearest_rank(&durations, 50),
            p99_ns: report::nearest_rank(&durations, 99),
            ops_per_sec: n as f64 * 1e9 / total_ns.max(1) as f64,
        }
    }

    /// The summary the guest answers for `op`; anything else is an error.
    fn from_json(json: &Value, op: &str) -> Result<Summary> {
        let field = |name: &str| {
            json.get(name)
                .and_then(Value::as_u64)
                .with_context(|| format!("the {op} summary has no whole number `{name}`: {json}"))
        };
        let reported = json.get("op").and_then(Value::as_str);
        if reported != Some(op) {
            bail!("asked for a summary of {op}, got one of {reported:?}: {json}");
        }
        Ok(Summary {
            n: field("n")?,
            total_ns: field("total_ns")?,
            p50_ns: field("p50_ns")?,
            p99_ns: field("p99_ns")?,
            ops_per_sec: json
                .get("ops_per_sec")
                .and_then(Value::as_f64)
                .with_context(|| format!("the {op} summary has no number `ops_per_sec`: {json}"))?,
        })
    }

    /// The guest's JSON form, for the native half to hand its results over.
    pub fn to_json(self, op: &str) -> Value {
        json!({
            "op": op,
            "n": self.n,
            "total_ns": self.total_ns,
            "p50_ns": self.p50_ns,
            "p99_ns": self.p99_ns,
            "ops_per_sec": self.ops_per_sec,
        })
    }

    fn p50(&self) -> Duration {
        Duration::from_nanos(self.p50_ns)
    }

    fn p99(&self) -> Duration {
        Duration::from_nanos(self.p99_ns)
    }
}

/// One operation measured three ways.
struct Row {
    op: &'static str,
    guest: Summary,
    backend: Summary,
    raw: Summary,
}

/// Everything the native half reports.
struct Native {
    /// `(backend, op)` → summary.
    results: Vec<(String, String, Summary)>,
    /// A `spawn_blocking` round trip of an empty closure from a tokio worker: the thread
    /// hop every guest write and SQL call makes, alone.
    hop: Summary,
}

impl Native {
    fn get(&self, backend: &str, op: &str) -> Result<Summary> {
        self.results
            .iter()
            .find(|(b, o, _)| b == backend && o == op)
            .map(|(_, _, summary)| *summary)
            .with_context(|| format!("the native half reported no {op} result for {backend}"))
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    let tessera = super::build()?;
    let component = super::guest_component("data")?;

    let scratch = ScratchDir::create()?;
    let app_dir = scratch.path().join("app");
    let data_dir = scratch.path().join("data");
    write_app(&app_dir, &component, options.ops)?;

    // Taken after the builds, so the load average reflects the machine we measure on.
    let machine = report::machine();
    let guest = measure_guest(&tessera, &app_dir, &data_dir, scratch.path(), options.ops)?;
    let native = measure_native(&data_dir.join("services"), options.ops)?;
    let in_cluster = if options.cluster {
        crate::toolchains::system_packages()?;
        let scratch = scratch.path().join("cluster");
        std::fs::create_dir_all(&scratch)?;
        Some(cluster::measure(&tessera, &app_dir, &scratch, options.ops)?)
    } else {
        None
    };

    let embedded_sql: Vec<Summary> = cluster::SQL_OPS
        .iter()
        .map(|op| guest[OPS.iter().position(|o| o == op).expect("a guest op")])
        .collect();
    let rows = OPS
        .iter()
        .zip(guest)
        .map(|(&op, guest)| {
            Ok(Row {
                op,
                guest,
                backend: native.get(BACKEND, op)?,
                raw: native.get(RAW, op)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let versions = [
        version_of(&tessera, TESSERA),
        format!("SQLite {} (bundled with rusqlite)", rusqlite::version()),
        version_of(Path::new("rustc"), "rustc"),
    ];

    println!();
    print!("{}", table(&rows));
    println!();
    for line in overhead_lines(&rows, &native.hop) {
        println!("{line}");
    }
    let section = markdown(&Section {
        date: report::utc_now(),
        machine,
        ops: options.ops,
        rows: &rows,
        hop: &native.hop,
        versions: &versions,
    });
    let path = repo_root().join("BENCHMARKS.md");
    if let Some(figures) = &in_cluster {
        let date = report::utc_now();
        let section = cluster::markdown(
            CLUSTER_HEADING,
            &date,
            &report::machine(),
            options.ops,
            &embedded_sql,
            figures,
        );
        print!("\n{section}");
        report::update_benchmarks_md(&path, CLUSTER_HEADING, &section)?;
    }
    report::update_benchmarks_md(&path, SECTION_HEADING, &section)?;
    println!("\nupdated {}", path.display());
    Ok(())
}

/// The app: the `data` component as service `bench` on `/`, with a timeout that leaves room
/// for `ops` writes, each waiting for an fsync.
fn write_app(app_dir: &Path, component: &Path, ops: usize) -> Result<()> {
    std::fs::create_dir_all(app_dir).with_context(|| format!("creating {}", app_dir.display()))?;
    let manifest = format!(
        "[app]\nname = \"{APP}\"\n\n[services.{SERVICE}]\ncomponent = {}\nroutes = [\"/\"]\ntimeout = \"{}s\"\n",
        super::toml_string(&component.display().to_string()),
        request_timeout(ops).as_secs()
    );
    let path = app_dir.join("tessera.toml");
    std::fs::write(&path, manifest).with_context(|| format!("writing {}", path.display()))
}

/// How long one benchmark request may take: two minutes, or 20 ms per operation when that is
/// more (a slow disk's fsync), but no more than the manifest's limit of an hour.
fn request_timeout(ops: usize) -> Duration {
    let per_op = Duration::from_millis(20).saturating_mul(u32::try_from(ops).unwrap_or(u32::MAX));
    per_op.clamp(Duration::from_secs(120), Duration::from_secs(3600))
}

/// Serves the guest, warms up every operation, then measures each once; stops tessera
/// with SIGTERM so the file is closed before the native half opens it.
fn measure_guest(
    tessera: &Path,
    app_dir: &Path,
    data_dir: &Path,
    logs: &Path,
    ops: usize,
) -> Result<Vec<Summary>> {
    let port = free_port()?;
    let cmd = super::tessera_command(tessera, app_dir, data_dir, port);
    // `/config` answers 200 without touching the database, so readiness polling writes
    // nothing the measurements would then see.
    let mut running = super::start(TESSERA, cmd, port, "/config", logs, "tessera")?;
    let timeout = request_timeout(ops);
    println!("==> guest: warm-up, {WARMUP_OPS} of each operation");
    for op in OPS {
        guest_call(port, op, WARMUP_OPS, timeout)
            .with_context(|| format!("warming up {op} in the guest"))?;
    }
    let mut results = Vec::new();
    for op in OPS {
        println!("==> guest: GET /bench/{op}?n={ops}");
        let summary = guest_call(port, op, ops, timeout)
            .with_context(|| format!("measuring {op} in the guest"))?;
        println!("    {}", summary_line(&summary));
        results.push(summary);
    }
    running.server.ensure_running()?;
    println!("==> stopping tessera (SIGTERM)");
    let status = running.server.terminate(Duration::from_secs(30))?;
    if !status.success() {
        bail!(
            "tessera exited with {status} after SIGTERM\n{}",
            running.server.log_tail()
        );
    }
    Ok(results)
}

fn guest_call(port: u16, op: &str, n: usize, timeout: Duration) -> Result<Summary> {
    let reply = probe::get(port, &format!("/bench/{op}?n={n}"), timeout)?;
    let body = String::from_utf8_lossy(&reply.body);
    if reply.status != 200 {
        bail!("GET /bench/{op} answered {}: {body}", reply.status);
    }
    let json: Value =
        serde_json::from_str(&body).with_context(|| format!("the answer is not JSON: {body}"))?;
    let summary = Summary::from_json(&json, op)?;
    if summary.n != n as u64 {
        bail!("asked for {n} operations, the guest ran {}", summary.n);
    }
    Ok(summary)
}

/// Runs `xtask bench-data-native` from the release build and reads its results.
fn measure_native(services: &Path, ops: usize) -> Result<Native> {
    let xtask = target_dir().join("release").join("xtask");
    println!("==> native: {} bench-data-native", xtask.display());
    let output = Command::new(&xtask)
        .arg("bench-data-native")
        .arg(services)
        .arg(ops.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", xtask.display()))?;
    if !output.status.success() {
        bail!("xtask bench-data-native failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_native(&stdout)
}

/// Reads the native half's output: one JSON object per line, each a guest-style summary
/// with a `backend` field (`hop` for the `spawn_blocking` round trip).
fn parse_native(output: &str) -> Result<Native> {
    let mut results = Vec::new();
    let mut hop = None;
    for line in output.lines().filter(|line| line.starts_with('{')) {
        let json: Value =
            serde_json::from_str(line).with_context(|| format!("bad native result {line:?}"))?;
        let field = |name: &str| {
            json.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("native result without `{name}`: {line}"))
        };
        let (backend, op) = (field("backend")?, field("op")?);
        let summary = Summary::from_json(&json, &op)?;
        if backend == native::HOP {
            hop = Some(summary);
        } else {
            results.push((backend, op, summary));
        }
    }
    Ok(Native {
        results,
        hop: hop.context("the native half reported no spawn_blocking round trip")?,
    })
}

fn summary_line(s: &Summary) -> String {
    format!(
        "{:.0} ops/s, p50 {}, p99 {}",
        s.ops_per_sec,
        format_duration(s.p50()),
        format_duration(s.p99())
    )
}

fn table(rows: &[Row]) -> String {
    let header = [
        "operation",
        "guest ops/s",
        "guest p50",
        "guest p99",
        "tessera-data ops/s",
        "tessera-data p50",
        "tessera-data p99",
        "rusqlite ops/s",
        "rusqlite p50",
        "rusqlite p99",
        "guest / tessera-data",
        "guest / rusqlite",
    ];
    let mut cells = vec![header.map(str::to_owned).to_vec()];
    for row in rows {
        let mut line = vec![row.op.to_owned()];
        for s in [&row.guest, &row.backend, &row.raw] {
            line.push(format!("{:.0}", s.ops_per_sec));
            line.push(format_duration(s.p50()));
            line.push(format_duration(s.p99()));
        }
        line.push(ratio(row.guest.ops_per_sec, row.backend.ops_per_sec));
        line.push(ratio(row.guest.ops_per_sec, row.raw.ops_per_sec));
        cells.push(line);
    }
    report::render_table(&cells, &[0])
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}

/// Per operation, what crossing from the guest into the host adds at the median, next to
/// what the thread hop alone costs.
fn overhead_lines(rows: &[Row], hop: &Summary) -> Vec<String> {
    let mut lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let extra = row.guest.p50_ns.saturating_sub(row.backend.p50_ns);
            format!(
                "{}: a guest call takes {} longer than a native tessera-data call at the median ({} against {})",
                row.op,
                format_duration(Duration::from_nanos(extra)),
                format_duration(row.guest.p50()),
                format_duration(row.backend.p50()),
            )
        })
        .collect();
    lines.push(format!(
        "the thread hop alone, `spawn_blocking` of an empty closure awaited from a task on a \
         tokio multi-thread runtime (measured natively, {} round trips): p50 {}, p99 {}",
        hop.n,
        format_duration(hop.p50()),
        format_duration(hop.p99())
    ));
    lines
}

struct Section<'a> {
    date: String,
    machine: String,
    ops: usize,
    rows: &'a [Row],
    hop: &'a Summary,
    versions: &'a [String],
}

fn markdown(s: &Section<'_>) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{SECTION_HEADING}\n");
    let _ = writeln!(md, "Measured {} on {}.\n", s.date, s.machine);
    let _ = writeln!(
        md,
        "Command: `cargo xtask bench-data --ops {ops}`. It serves the `data` component of \
         crates/test-programs with `tessera up` (release build, RUST_LOG=warn) as service \
         `{SERVICE}` of app `{APP}`, calls each `GET /bench/OP?n=N` endpoint once with \
         n = {WARMUP_OPS} (unreported warm-up) and once with n = {ops}, stops tessera with \
         SIGTERM, and then does the same operations natively, again after a warm-up of \
         {WARMUP_OPS}, on the same file `services/{APP}/{SERVICE}.db` (WAL, \
         synchronous=FULL). One operation at a time; each is timed on its own, ops/s is N \
         divided by the sum of those times, p50 and p99 are nearest-rank percentiles.\n",
        ops = s.ops
    );
    let _ = writeln!(
        md,
        "- **kv-get**: one {VALUE_BYTES}-byte value of bucket `default`; **kv-set**: a \
         {VALUE_BYTES}-byte value under a new key; **sql-query**: `{SQL_QUERY}` over \
         {BENCH_ROWS} rows, cycling ids; **sql-insert**: `{SQL_INSERT}`, one row per \
         statement."
    );
    let _ = writeln!(
        md,
        "- **guest**: timed inside the component with `wasi:clocks/monotonic-clock` around \
         one `wasi:keyvalue` or `tessera:sql` call: lowering the arguments and lifting the \
         result through the canonical ABI, Wasmtime's async host call, and the tessera-data \
         call itself. Key-value reads run on the worker that runs the guest; writes and SQL \
         (which may run until the request's deadline) hop onto tokio's blocking pool \
         (`spawn_blocking`) and back."
    );
    let _ = writeln!(
        md,
        "- **tessera-data**: the same backend (`EmbeddedData::open_service`, then \
         `KvStore::get`/`set` and `SqlDatabase::query`/`execute`) called on a native thread \
         of a release build (`xtask bench-data-native`): the same statements, connections, \
         authorizer and pragmas, no WebAssembly and no thread hop."
    );
    let _ = writeln!(
        md,
        "- **rusqlite**: the floor: one plain rusqlite connection to the same file with \
         cached prepared statements and no authorizer, progress handler or reader pool. \
         kv-get is the backend's `SELECT value FROM _tessera_kv WHERE bucket = ?1 AND key = \
         ?2`; kv-set is one upsert into `_tessera_kv`, where the backend also bumps a version \
         counter in the same transaction.\n"
    );
    let _ = writeln!(
        md,
        "Every write is its own transaction, and with synchronous=FULL each commit waits for \
         an fsync of the WAL, so writes measure the disk more than the code path; reads find \
         the file in the page cache.\n"
    );
    let _ = writeln!(md, "{}", table(s.rows));
    for line in overhead_lines(s.rows, s.hop) {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(
        md,
        "\nThe tessera-data column shows how little of a guest read is SQLite; the rest is the \
         way into the host and back. Reads run on the worker that runs the guest: key-value gets, \
         and SQL queries that cannot write when a reader is free, within a 1 ms budget (an \
         earlier run whose reads hopped to the blocking pool measured kv-get p50 24.8 µs and \
         sql-query 44.1 µs in the guest). Writes keep the hop, which costs usually two thread \
         wake-ups (a blocking-pool thread, then the worker that runs the guest). What a wake-up costs depends on the scheduler and on \
         whether the other core is idle, so guest figures move more between runs than the \
         other columns; compare them within one run."
    );
    let _ = writeln!(md, "\nVersions: {}.", s.versions.join("; "));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_args as args;

    #[test]
    fn options_default_and_bounds() {
        assert_eq!(Options::parse(&[]).unwrap().ops, DEFAULT_OPS);
        assert_eq!(Options::parse(&args(&["--ops", "300"])).unwrap().ops, 300);
        assert_eq!(Options::parse(&args(&["--ops=7"])).unwrap().ops, 7);
        assert!(Options::parse(&args(&["--ops", "0"])).is_err());
        assert!(Options::parse(&args(&["--ops", "1000001"])).is_err());
        assert!(Options::parse(&args(&["--ops", "many"])).is_err());
        assert!(Options::parse(&args(&["--ops"])).is_err());
        assert!(Options::parse(&args(&["--duration", "3"])).is_err());
        assert!(!Options::parse(&[]).unwrap().cluster);
        let both = Options::parse(&args(&["--cluster", "--ops", "9"])).unwrap();
        assert!(both.cluster && both.ops == 9);
    }

    #[test]
    fn summaries_match_the_guests_rules_and_round_trip_through_json() {
        // 1..=100 µs: nearest rank puts p50 at the 50th value and p99 at the 99th.
        let summary = Summary::from_durations((1..=100).rev().map(|us| us * 1000).collect());
        assert_eq!(summary.n, 100);
        assert_eq!(summary.total_ns, 5_050_000);
        assert_eq!((summary.p50_ns, summary.p99_ns), (50_000, 99_000));
        assert!((summary.ops_per_sec - 100.0 / 0.00505).abs() < 1e-6);
        assert_eq!(
            Summary::from_json(&summary.to_json("kv-get"), "kv-get").unwrap(),
            summary
        );
        assert!(Summary::from_json(&summary.to_json("kv-get"), "kv-set").is_err());
        assert!(Summary::from_json(&json!({"op": "kv-get", "n": 1}), "kv-get").is_err());
    }

    #[test]
    fn native_output_is_read_line_by_line() {
        let s = Summary::from_durations(vec![1000, 2000]);
        let line = |backend: &str, op: &str| {
            let mut json = s.to_json(op);
            json["backend"] = json!(backend);
            format!("{json}\n")
        };
        let output = format!(
            "noise\n{}{}",
            line(BACKEND, "kv-get"),
            line(native::HOP, "spawn-blocking")
        );
        let native = parse_native(&output).unwrap();
        assert_eq!(native.get(BACKEND, "kv-get").unwrap(), s);
        assert!(native.get(RAW, "kv-get").is_err());
        assert_eq!(native.hop, s);
        assert!(parse_native(&line(BACKEND, "kv-get")).is_err());
    }

    #[test]
    fn request_timeout_grows_with_the_operations() {
        assert_eq!(request_timeout(5000), Duration::from_secs(120));
        assert_eq!(request_timeout(10_000), Duration::from_secs(200));
        assert_eq!(request_timeout(MAX_OPS), Duration::from_secs(3600));
    }
}
