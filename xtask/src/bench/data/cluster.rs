//! `cargo xtask bench-data --cluster`: the guest's SQL operations on three `tessera serve
//! --cluster` nodes on a three-server NATS JetStream cluster (R3), through the node that
//! holds the database's writer lease and through one that forwards to it, next to the
//! embedded figures of the same run; then how long a takeover and a new node's first read
//! take with a 1 MB and a 100 MB database.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tessera_cluster::testing::NatsCluster;

use super::super::client::Connection;
use super::super::cluster::{Node, deploy, start_node_logging};
use super::super::report::{self, format_duration};
use super::{Summary, WARMUP_OPS, guest_call, request_timeout};

/// The SQL operations measured in the cluster (a subset of the guest's).
pub const SQL_OPS: [&str; 2] = ["sql-query", "sql-insert"];
/// Each filling transaction inserts this many rows of [`ROW_BYTES`] random bytes: under
/// the 1 MiB a cluster transaction may change.
const ROWS_PER_FILL: u64 = 9;
const ROW_BYTES: u64 = 100_000;
/// How long a node may take to serve the app after a deploy or a start.
const READY: Duration = Duration::from_secs(90);
/// The nodes log takeovers and restores (info) so the run can check who wrote.
const NODE_LOG: &str = "warn,tessera_cluster=info";

/// What the cluster half measured.
pub struct Figures {
    /// Per [`SQL_OPS`], through the writer's node.
    pub writer: Vec<Summary>,
    /// Per [`SQL_OPS`], through a node that forwards writes and catches up before reads.
    pub forwarding: Vec<Summary>,
    pub sizes: Vec<SizeFigures>,
}

/// Takeover and joining with one database size.
pub struct SizeFigures {
    pub label: &'static str,
    /// Bytes of random rows in the database when the writer was killed.
    pub bytes: u64,
    pub fill: Duration,
    /// From kill -9 of the writer's node to the answer of a write sent right after
    /// through another node.
    pub takeover: Duration,
    /// From a new node (empty data directory) serving the app to its first SQL read's
    /// answer, which needs the snapshot and the log's tail.
    pub join_read: Duration,
    /// Whether the new node restored a snapshot (else it applied the whole log).
    pub from_snapshot: bool,
}

/// Nodes by name, so one can be killed (dropped) and others started.
struct Nodes<'a> {
    tessera: &'a Path,
    scratch: &'a Path,
    urls: String,
    running: Vec<(String, Node)>,
    started: usize,
}

impl Nodes<'_> {
    fn start(&mut self) -> Result<u16> {
        self.started += 1;
        let name = format!("n{}", self.started);
        let node = start_node_logging(
            self.tessera,
            self.scratch,
            &name,
            Some(&self.urls),
            NODE_LOG,
        )?;
        let gateway = node.gateway;
        self.running.push((name, node));
        Ok(gateway)
    }

    fn gateway(&self, i: usize) -> u16 {
        self.running[i].1.gateway
    }

    /// Kills node `i` with SIGKILL and waits for it to exit.
    fn kill(&mut self, i: usize) -> String {
        let (name, node) = self.running.remove(i);
        drop(node);
        name
    }

    /// Whether node `i`'s log says it took over as a database's writer.
    fn took_over(&self, i: usize) -> Result<bool> {
        self.logged(i, "took over as the database's writer")
    }

    fn logged(&self, i: usize, what: &str) -> Result<bool> {
        let log = self.scratch.join(format!("{}.log", self.running[i].0));
        let text =
            std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
        Ok(text.contains(what))
    }
}

pub fn measure(tessera: &Path, app_dir: &Path, scratch: &Path, ops: usize) -> Result<Figures> {
    println!("==> cluster: three NATS servers (JetStream, R3), three nodes");
    let nats = NatsCluster::start();
    let mut nodes = Nodes {
        tessera,
        scratch,
        urls: nats.urls(),
        running: Vec::new(),
        started: 0,
    };
    for _ in 0..3 {
        nodes.start()?;
    }
    deploy(tessera, &nodes.running[0].1, app_dir)?;
    for i in 0..3 {
        until_serving(nodes.gateway(i))?;
    }
    let timeout = request_timeout(ops);
    // The first write goes through node 0, which takes the writer lease.
    for i in [0, 1] {
        for op in SQL_OPS {
            guest_call(nodes.gateway(i), op, WARMUP_OPS, timeout)
                .with_context(|| format!("warming up {op} on node {i}"))?;
        }
    }
    if !nodes.took_over(0)? {
        bail!("node n1 did not become the database's writer");
    }
    let measured = |label: &str, i: usize| -> Result<Vec<Summary>> {
        let mut results = Vec::new();
        for op in SQL_OPS {
            println!("==> cluster, {label}: GET /bench/{op}?n={ops}");
            let summary = guest_call(nodes.gateway(i), op, ops, timeout)
                .with_context(|| format!("measuring {op} through the {label}"))?;
            println!("    {}", super::summary_line(&summary));
            results.push(summary);
        }
        Ok(results)
    };
    let writer = measured("writer's node", 0)?;
    let forwarding = measured("forwarding node", 1)?;

    let mut sizes = Vec::new();
    for (label, bytes) in [("1 MB", 1_000_000u64), ("100 MB", 100_000_000)] {
        // The writer is node 0 of those running; node 1 fills (forwarding) and then writes
        // right after the kill, so it is the one that takes over.
        let fill = fill(nodes.gateway(1), bytes)?;
        let expected = query(
            nodes.gateway(1),
            "SELECT count(*), sum(length(body)) FROM fill",
        )?;
        let filled = expected[0][1].as_u64().unwrap_or(0);
        println!(
            "==> cluster, {label}: filled {filled} bytes in {}",
            format_duration(fill)
        );
        let killed = nodes.kill(0);
        let started = Instant::now();
        execute(nodes.gateway(0), "INSERT INTO fill (body) VALUES (x'00')")?;
        let takeover = started.elapsed();
        if !nodes.took_over(0)? {
            bail!("the write after killing {killed} was answered, but no node took over");
        }
        println!(
            "    killed {killed}: the next write was answered after {}",
            format_duration(takeover)
        );
        let joined = nodes.start()?;
        let new = nodes.running.len() - 1;
        until_serving(joined)?;
        let started = Instant::now();
        let seen = query(
            joined,
            "SELECT count(*) - 1, sum(length(body)) - 1 FROM fill",
        )?;
        let join_read = started.elapsed();
        if seen != expected {
            bail!("the new node read {seen:?}, the others {expected:?}");
        }
        let from_snapshot = nodes.logged(new, "restored the database from its snapshot")?;
        println!(
            "    a new node's first read was answered after {} ({})",
            format_duration(join_read),
            if from_snapshot {
                "from a snapshot and the log after it"
            } else {
                "from the whole log"
            }
        );
        sizes.push(SizeFigures {
            label,
            bytes: filled,
            fill,
            takeover,
            join_read,
            from_snapshot,
        });
    }
    for (_, node) in &mut nodes.running {
        node.server.ensure_running()?;
    }
    drop(nodes);
    drop(nats);
    Ok(Figures {
        writer,
        forwarding,
        sizes,
    })
}

/// Waits until the gateway serves the app (`/config` does not touch the database).
fn until_serving(gateway: u16) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(reply) = super::super::probe::get(gateway, "/config", Duration::from_secs(10))
            && reply.status == 200
        {
            return Ok(());
        }
        if started.elapsed() > READY {
            bail!("the node on port {gateway} did not serve the app within {READY:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn call(gateway: u16, path: &str, sql: &str, params: Value) -> Result<Value> {
    let mut conn = Connection::open(gateway, Duration::from_secs(120))?;
    let body = serde_json::to_vec(&json!({ "sql": sql, "params": params }))?;
    let reply = conn.send("POST", path, &body)?;
    let text = String::from_utf8_lossy(&reply.body);
    if reply.status != 200 {
        bail!("POST {path} {sql:?} answered {}: {text}", reply.status);
    }
    serde_json::from_str(&text).with_context(|| format!("the answer is not JSON: {text}"))
}

fn execute(gateway: u16, sql: &str) -> Result<Value> {
    call(gateway, "/sql/execute", sql, json!([]))
}

fn query(gateway: u16, sql: &str) -> Result<Vec<Vec<Value>>> {
    let answer = call(gateway, "/sql/query", sql, json!([]))?;
    serde_json::from_value(answer["rows"].clone()).context("reading the rows")
}

/// Adds random rows to `fill` until it holds `bytes` more; returns how long it took.
fn fill(gateway: u16, bytes: u64) -> Result<Duration> {
    execute(
        gateway,
        "CREATE TABLE IF NOT EXISTS fill (id INTEGER PRIMARY KEY, body BLOB NOT NULL)",
    )?;
    let started = Instant::now();
    let mut written = 0;
    while written < bytes {
        let rows = ROWS_PER_FILL.min((bytes - written).div_ceil(ROW_BYTES));
        call(
            gateway,
            "/sql/execute",
            "INSERT INTO fill (body) SELECT randomblob(?1) FROM \
             (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) SELECT i FROM n)",
            json!([ROW_BYTES, rows]),
        )?;
        written += rows * ROW_BYTES;
    }
    Ok(started.elapsed())
}

/// The cluster section of BENCHMARKS.md.
pub fn markdown(
    heading: &str,
    date: &str,
    machine: &str,
    ops: usize,
    embedded: &[Summary],
    figures: &Figures,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{heading}\n");
    let _ = writeln!(md, "Measured {date} on {machine}.\n");
    let _ = writeln!(
        md,
        "Command: `cargo xtask bench-data --cluster --ops {ops}`. In the same run as the \
         section above, the `data` component is deployed to three `tessera serve --cluster` \
         nodes (release build) on a three-server NATS 2.9 cluster, every stream R3, all on \
         this machine. The first write goes through node n1, which takes the database's \
         writer lease (its log says so; the run checks). Then each operation is timed inside \
         the guest as above, n = {ops} after a warm-up of {WARMUP_OPS}: through **n1** (the \
         writer: reads on its copy while its lease is fresh, writes appended to the log, \
         acknowledged by JetStream, then committed) and through **n2** (a follower: a read \
         first asks the log's last position and waits until its copy has applied it; a \
         write is forwarded to the writer over NATS request/reply). The embedded column is \
         the guest figure of the section above, from the same run.\n"
    );
    let mut cells = vec![
        [
            "operation",
            "embedded ops/s",
            "embedded p50",
            "embedded p99",
            "writer ops/s",
            "writer p50",
            "writer p99",
            "forwarding ops/s",
            "forwarding p50",
            "forwarding p99",
            "writer / embedded",
            "forwarding / embedded",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for (i, op) in SQL_OPS.iter().enumerate() {
        let (e, w, f) = (&embedded[i], &figures.writer[i], &figures.forwarding[i]);
        let mut line = vec![(*op).to_owned()];
        for s in [e, w, f] {
            line.push(format!("{:.0}", s.ops_per_sec));
            line.push(format_duration(s.p50()));
            line.push(format_duration(s.p99()));
        }
        line.push(super::ratio(w.ops_per_sec, e.ops_per_sec));
        line.push(super::ratio(f.ops_per_sec, e.ops_per_sec));
        cells.push(line);
    }
    let _ = writeln!(md, "{}", report::render_table(&cells, &[0]));
    let _ = writeln!(
        md,
        "Then, for each size, rows of {ROW_BYTES} random bytes are added to a table through n2 \
         ({ROWS_PER_FILL} rows per transaction), the writer's node is killed with SIGKILL, \
         and a write is sent at once through the next node: it waits for the lease to lapse \
         ({ttl:?} unchanged), takes over (apply the log to its copy, append a fencing \
         marker) and answers. A new node with an empty data directory is then started; once \
         it serves the app, its first read is timed: it applies the whole log, or, once the \
         writer has snapshotted the database (a log past 10,000 entries or 64 MiB), restores \
         the newest snapshot from the object store and applies the log after it. The sizes \
         add up: the second table holds the first size's rows too.\n",
        ttl = tessera_cluster::LEASE_TTL
    );
    let mut cells = vec![
        [
            "database",
            "bytes of rows",
            "filled in",
            "kill -9 of the writer → next write answered",
            "new node → first read answered",
            "the new node started from",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for s in &figures.sizes {
        cells.push(vec![
            s.label.to_owned(),
            s.bytes.to_string(),
            format_duration(s.fill),
            format_duration(s.takeover),
            format_duration(s.join_read),
            if s.from_snapshot {
                "a snapshot and the log after it"
            } else {
                "the whole log"
            }
            .to_owned(),
        ]);
    }
    let _ = writeln!(md, "{}", report::render_table(&cells, &[0]));
    let _ = writeln!(
        md,
        "A takeover does not replay the database: every node keeps its copy current, so \
         the time is at most the lease's TTL plus one catch-up whatever the size (less when \
         the last renewal was seen before the kill). A new node's first read grows with \
         what it fetches: the log, or the snapshot and the log's tail."
    );
    md
}
