//! `cargo xtask bench-cluster`: three `tessera serve --cluster` nodes on a three-server
//! NATS JetStream cluster, next to one embedded `tessera serve`, all on this machine.
//!
//! - **Propagation**: each of N deploys (a new revision of a hello service, through the
//!   nodes in turn) is timed from starting `tessera deploy` to every node answering with
//!   the new revision (`x-tessera-revision`), polling each gateway.
//! - **Key-value**: sequential get, set and increment requests to the `counter` guest,
//!   embedded vs cluster, each request timed from the client (the HTTP path is the same on
//!   both sides, so the difference is the backend); then increments of one key from
//!   three nodes at once, checked exact.
//! - **HTTP**: wrk on a hello through one cluster node and through the embedded node.
//! - **Joining**: a fourth node started with an empty data directory, timed to its first
//!   answer (artifact fetched from the object store and compiled) and the next ones.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tessera_cluster::testing::NatsCluster;

use super::client::Connection;
use super::report::{self, format_duration, nearest_rank};
use super::servers::{ScratchDir, Server, free_port};
use super::{guest_component, parse_flags, wrk};
use crate::process::repo_root;
use crate::toolchains;

const SECTION_HEADING: &str = "## Cluster mode: propagation, key-value and HTTP on three nodes";
pub(super) const TOKEN: &str = "bench-cluster-token-0123456789";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

struct Options {
    deploys: usize,
    ops: usize,
    duration: Duration,
    connections: u32,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            deploys: 20,
            ops: 2000,
            duration: Duration::from_secs(8),
            connections: 32,
        };
        let number = |flag: &str, value: &str, max: usize| {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .with_context(|| {
                    format!("{flag} takes a whole number from 1 to {max}, not {value:?}")
                })
        };
        parse_flags(args, |flag, value| {
            match flag {
                "--deploys" => o.deploys = number(flag, value, 1000)?,
                "--ops" => o.ops = number(flag, value, 1_000_000)?,
                "--duration" => o.duration = Duration::from_secs(number(flag, value, 600)? as u64),
                "--connections" => o.connections = number(flag, value, 10_000)? as u32,
                _ => bail!(
                    "unknown bench-cluster option {flag:?}; usage: cargo xtask bench-cluster \
                     [--deploys N] [--ops N] [--duration SECS] [--connections N]"
                ),
            }
            Ok(())
        })?;
        Ok(o)
    }
}

/// A `tessera serve` under test: its gateway and admin ports.
pub(super) struct Node {
    pub(super) server: Server,
    pub(super) gateway: u16,
    pub(super) admin: u16,
}

fn start_node(tessera: &Path, scratch: &Path, name: &str, cluster: Option<&str>) -> Result<Node> {
    start_node_logging(tessera, scratch, name, cluster, "warn")
}

/// Starts `tessera serve` as node `name` (data in `scratch/name`, log in
/// `scratch/name.log`), in the cluster at `cluster` if given, logging as `rust_log` says.
pub(super) fn start_node_logging(
    tessera: &Path,
    scratch: &Path,
    name: &str,
    cluster: Option<&str>,
    rust_log: &str,
) -> Result<Node> {
    let (gateway, admin) = (free_port()?, free_port()?);
    let mut cmd = Command::new(tessera);
    cmd.arg("serve")
        .arg("--data")
        .arg(scratch.join(name))
        .args(["--listen", &format!("127.0.0.1:{gateway}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .env("TESSERA_TOKEN", TOKEN)
        .env("RUST_LOG", rust_log);
    if let Some(urls) = cluster {
        cmd.args(["--cluster", urls, "--node", name]);
    }
    let mut server = Server::spawn(name, cmd, gateway, scratch.join(format!("{name}.log")))?;
    let started = Instant::now();
    // Listening once the admin port answers at all (401 without a token is fine).
    while super::probe::get(admin, "/v1/nodes", IO_TIMEOUT).is_err() {
        server.ensure_running()?;
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "{name} did not start within {READY_TIMEOUT:?}\n{}",
                server.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Node {
        server,
        gateway,
        admin,
    })
}

pub(super) fn deploy(tessera: &Path, node: &Node, app: &Path) -> Result<()> {
    let out = Command::new(tessera)
        .arg("deploy")
        .arg(app)
        .env("TESSERA_SERVER", format!("http://127.0.0.1:{}", node.admin))
        .env("TESSERA_TOKEN", TOKEN)
        .output()
        .context("running tessera deploy")?;
    if !out.status.success() {
        bail!(
            "tessera deploy {} failed: {}",
            app.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn write_manifest(
    dir: &Path,
    app: &str,
    service: &str,
    component: &Path,
    route: &str,
    n: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let manifest = format!(
        "[app]\nname = \"{app}\"\n\n[services.{service}]\ncomponent = \"{}\"\nroutes = [\"{route}\"]\nenv = {{ N = \"{n}\" }}\n",
        component.display()
    );
    std::fs::write(dir.join("tessera.toml"), manifest).context("writing a manifest")
}

/// p50, p99 and mean of durations, for the tables.
struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    per_sec: f64,
}

fn stats(durations: &[Duration]) -> Stats {
    let mut ns: Vec<u64> = durations.iter().map(|d| d.as_nanos() as u64).collect();
    ns.sort_unstable();
    let total: u64 = ns.iter().sum();
    Stats {
        p50: Duration::from_nanos(nearest_rank(&ns, 50)),
        p99: Duration::from_nanos(nearest_rank(&ns, 99)),
        max: Duration::from_nanos(*ns.last().unwrap_or(&0)),
        per_sec: ns.len() as f64 * 1e9 / total.max(1) as f64,
    }
}

/// Polls `node`'s gateway until `/` is answered by revision `revision`.
fn until_revision(conn: &mut Connection, revision: &str, deadline: Instant) -> Result<()> {
    loop {
        let reply = conn.get("/")?;
        if reply.status == 200 && reply.revision.as_deref() == Some(revision) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{revision} not served within the deadline");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sequential key-value requests through `gateway`: set, get, increment.
fn kv_ops(gateway: u16, ops: usize) -> Result<Vec<(&'static str, Stats)>> {
    let mut conn = Connection::open(gateway, IO_TIMEOUT)?;
    let value = vec![b'x'; 100];
    let mut results = Vec::new();
    for (op, method) in [("set", "PUT"), ("get", "GET"), ("increment", "POST")] {
        let mut times = Vec::with_capacity(ops);
        for i in 0..(ops + 100) {
            let path = match op {
                "set" => format!("/c/set/k{}", i % 100),
                "get" => format!("/c/get/k{}", i % 100),
                _ => "/c/incr/n".to_owned(),
            };
            let body: &[u8] = if op == "set" { &value } else { b"" };
            let started = Instant::now();
            let reply = conn.send(method, &path, body)?;
            let took = started.elapsed();
            if !(200..300).contains(&reply.status) {
                bail!(
                    "{method} {path} answered {}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                );
            }
            // The first hundred warm up connections and caches.
            if i >= 100 {
                times.push(took);
            }
        }
        results.push((op, stats(&times)));
    }
    Ok(results)
}

// Long because it is one scenario told in order: start everything, then each measurement,
// then the report; splitting it would only scatter the servers' lifetimes.
pub fn run(args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    toolchains::system_packages()?;
    let tessera = super::build()?;
    let hello = guest_component("hello")?;
    let counter = guest_component("counter")?;
    let scratch = ScratchDir::create()?;
    println!("==> three NATS servers (JetStream, R3)");
    let nats = NatsCluster::start();
    let urls = nats.urls();
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(start_node(&tessera, scratch.path(), name, Some(&urls))?);
    }
    let mut embedded = start_node(&tessera, scratch.path(), "embedded", None)?;
    println!("==> nodes up");

    // Propagation.
    let app = scratch.path().join("prop");
    let mut cli = Vec::new();
    let mut everywhere = Vec::new();
    let mut conns = nodes
        .iter()
        .map(|n| Connection::open(n.gateway, IO_TIMEOUT))
        .collect::<Result<Vec<_>, _>>()?;
    for i in 1..=options.deploys {
        write_manifest(&app, "prop", "web", &hello, "/", i)?;
        let through = &nodes[i % nodes.len()];
        let started = Instant::now();
        deploy(&tessera, through, &app)?;
        let answered = started.elapsed();
        let deadline = Instant::now() + Duration::from_secs(10);
        for conn in &mut conns {
            until_revision(conn, &format!("r{i}"), deadline)?;
        }
        cli.push(answered);
        everywhere.push(started.elapsed());
    }
    let propagation: Vec<Duration> = cli
        .iter()
        .zip(&everywhere)
        .map(|(c, e)| e.saturating_sub(*c))
        .collect();
    let (cli_s, all_s, prop_s) = (stats(&cli), stats(&everywhere), stats(&propagation));
    println!(
        "    deploy answered p50 {}, served everywhere p50 {} p99 {}",
        format_duration(cli_s.p50),
        format_duration(all_s.p50),
        format_duration(all_s.p99)
    );

    // Key-value: embedded vs cluster.
    let kv_app = scratch.path().join("kv");
    write_manifest(&kv_app, "kv", "counter", &counter, "/c", 0)?;
    deploy(&tessera, &nodes[0], &kv_app)?;
    deploy(&tessera, &embedded, &kv_app)?;
    let kv_embedded = kv_ops(embedded.gateway, options.ops)?;
    let kv_cluster = kv_ops(nodes[0].gateway, options.ops)?;

    // Increments of one key from three nodes at once.
    let per_node = options.ops.min(1000);
    let before: i64 = {
        let mut conn = Connection::open(nodes[0].gateway, IO_TIMEOUT)?;
        String::from_utf8_lossy(&conn.get("/c/get/shared")?.body)
            .parse()
            .unwrap_or(0)
    };
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = nodes
            .iter()
            .map(|node| {
                let port = node.gateway;
                scope.spawn(move || -> Result<()> {
                    let mut conn = Connection::open(port, IO_TIMEOUT)?;
                    for _ in 0..per_node {
                        let reply = conn.send("POST", "/c/incr/shared", b"")?;
                        if reply.status != 200 {
                            bail!("increment answered {}", reply.status);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker")?;
        }
        Ok(())
    })?;
    let contended = started.elapsed();
    let after: i64 = {
        let mut conn = Connection::open(nodes[1].gateway, IO_TIMEOUT)?;
        String::from_utf8_lossy(&conn.get("/c/get/shared")?.body)
            .parse()
            .context("reading the shared counter")?
    };
    let expected = before + (per_node * nodes.len()) as i64;
    if after != expected {
        bail!("contended increments lost updates: {after}, expected {expected}");
    }

    // HTTP: hello through a cluster node vs the embedded node.
    let hello_app = scratch.path().join("hello");
    write_manifest(&hello_app, "prop", "web", &hello, "/", 0)?;
    deploy(&tessera, &embedded, &hello_app)?;
    let wrk_bin = wrk::find()?;
    let mut http = Vec::new();
    for (label, port) in [
        ("embedded", embedded.gateway),
        ("cluster n1", nodes[0].gateway),
    ] {
        let url = format!("http://127.0.0.1:{port}/");
        wrk::run(&wrk_bin, options.connections, Duration::from_secs(2), &url)?;
        let (result, _) = wrk::run(&wrk_bin, options.connections, options.duration, &url)?;
        println!("    {label}: {:.0} req/s", result.requests_per_sec);
        http.push((label, result));
    }
    // A node that crashed under load would make its numbers meaningless.
    for node in nodes.iter_mut().chain(std::iter::once(&mut embedded)) {
        node.server.ensure_running()?;
    }

    // A node joining with an empty data directory.
    let joined = start_node(&tessera, scratch.path(), "n4", Some(&urls))?;
    let mut conn = Connection::open(joined.gateway, IO_TIMEOUT)?;
    let started = Instant::now();
    let first = conn.get("/")?;
    let first_took = started.elapsed();
    if first.status != 200 {
        bail!("the joining node answered {}", first.status);
    }
    let mut next = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        conn.get("/")?;
        next.push(started.elapsed());
    }
    let next_s = stats(&next);

    // Nodes first (dropping a server kills it), then NATS.
    drop((nodes, joined, embedded));
    drop(nats);

    let section = render(
        &options,
        Rendered {
            cli: cli_s,
            all: all_s,
            prop: prop_s,
            kv_embedded,
            kv_cluster,
            contended: (per_node * 3, contended),
            http,
            first_took,
            next: next_s,
        },
    );
    let path = repo_root().join("BENCHMARKS.md");
    report::update_benchmarks_md(&path, SECTION_HEADING, &section)?;
    println!("\nupdated {}", path.display());
    Ok(())
}

struct Rendered {
    cli: Stats,
    all: Stats,
    prop: Stats,
    kv_embedded: Vec<(&'static str, Stats)>,
    kv_cluster: Vec<(&'static str, Stats)>,
    contended: (usize, Duration),
    http: Vec<(&'static str, wrk::WrkResult)>,
    first_took: Duration,
    next: Stats,
}

fn render(options: &Options, r: Rendered) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{SECTION_HEADING}\n");
    let _ = writeln!(
        s,
        "Command: `cargo xtask bench-cluster --deploys {} --ops {} --duration {} --connections {}` \
         ({}; {}). Three `tessera serve --cluster` nodes on a three-server NATS 2.9 cluster \
         (every stream R3) and one embedded `tessera serve`, all on this machine, so the NATS \
         servers, the nodes and the load generator share its cores.\n",
        options.deploys,
        options.ops,
        options.duration.as_secs(),
        options.connections,
        report::utc_now(),
        report::machine()
    );
    let _ = writeln!(s, "### Deploy through one node, served by all three\n");
    let rows = vec![
        vec![
            "`tessera deploy` answered".to_owned(),
            format_duration(r.cli.p50),
            format_duration(r.cli.p99),
            format_duration(r.cli.max),
        ],
        vec![
            "then served by every node".to_owned(),
            format_duration(r.prop.p50),
            format_duration(r.prop.p99),
            format_duration(r.prop.max),
        ],
        vec![
            "deploy start → served everywhere".to_owned(),
            format_duration(r.all.p50),
            format_duration(r.all.p99),
            format_duration(r.all.max),
        ],
    ];
    let mut table = vec![vec![
        "".to_owned(),
        "p50".into(),
        "p99".into(),
        "max".into(),
    ]];
    table.extend(rows);
    let _ = writeln!(s, "{}", report::render_table(&table, &[0]));
    let _ = writeln!(
        s,
        "Each deploy is a new revision of a hello service, through n1, n2, n3 in turn; \
         \"served\" means the gateway answered with the new `x-tessera-revision`, polled \
         every millisecond on each node. The deploy itself includes the CLI's start, the \
         upload check and compiling on the node it went through; the other nodes compile \
         when the change reaches them.\n"
    );
    let _ = writeln!(
        s,
        "### Key-value through the `counter` guest, sequential requests\n"
    );
    let mut table = vec![vec![
        "operation".to_owned(),
        "embedded p50".into(),
        "embedded p99".into(),
        "embedded ops/s".into(),
        "cluster p50".into(),
        "cluster p99".into(),
        "cluster ops/s".into(),
        "cluster / embedded ops/s".into(),
    ]];
    for ((op, e), (_, c)) in r.kv_embedded.iter().zip(&r.kv_cluster) {
        table.push(vec![
            (*op).to_owned(),
            format_duration(e.p50),
            format_duration(e.p99),
            format!("{:.0}", e.per_sec),
            format_duration(c.p50),
            format_duration(c.p99),
            format!("{:.0}", c.per_sec),
            format!("{:.2}x", c.per_sec / e.per_sec),
        ]);
    }
    let _ = writeln!(s, "{}", report::render_table(&table, &[0]));
    let (count, took) = r.contended;
    let _ = writeln!(
        s,
        "Each figure is a whole HTTP request to the guest (gateway, instance, host call), \
         so both columns carry the same HTTP cost and the difference is the backend: an \
         fsync'd SQLite write vs a JetStream R3 acknowledgement, a local read vs a read from \
         the stream leader. Increments of one key from the three nodes at once: {count} in \
         {} ({:.0}/s), final value exact.\n",
        format_duration(took),
        count as f64 / took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "### HTTP: a hello through one cluster node vs the embedded node\n"
    );
    let mut table = vec![vec![
        "node".to_owned(),
        "req/s".into(),
        "p50".into(),
        "p99".into(),
    ]];
    for (label, w) in &r.http {
        table.push(vec![
            (*label).to_owned(),
            format!("{:.0}", w.requests_per_sec),
            format_duration(w.p50),
            format_duration(w.p99),
        ]);
    }
    let _ = writeln!(s, "{}", report::render_table(&table, &[0]));
    if let [(_, e), (_, c)] = r.http.as_slice() {
        let _ = writeln!(
            s,
            "Cluster / embedded: {:.2}x req/s. NATS is not on the request path; the cluster node \
             serves from the revision it loaded.\n",
            c.requests_per_sec / e.requests_per_sec
        );
    }
    let _ = writeln!(s, "### A node joining with an empty data directory\n");
    let _ = writeln!(
        s,
        "First request to a fourth node started empty: {} (artifact fetched from the \
         object store, verified, compiled); the next 50: p50 {}, p99 {}.\n",
        format_duration(r.first_took),
        format_duration(r.next.p50),
        format_duration(r.next.p99)
    );
    s
}
