//! `cargo xtask bench-events`: end-to-end event throughput on the embedded backend, from
//! publish to a WebAssembly handler's 2xx to the durable acknowledgement.
//!
//! `cargo xtask` is a debug build, so the measuring runs in a release build of xtask
//! (`xtask bench-events-node`, see `events/node.rs`) with the node in-process; this half
//! builds it, runs it on a scratch data directory, prints the table and records it in
//! BENCHMARKS.md.

mod cpu;
pub mod node;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::report::{self, format_duration};
use super::servers::ScratchDir;
use super::{parse_flags, version_of};
use crate::guests;
use crate::process::{cargo_step, repo_root, target_dir};

/// The section this command owns in BENCHMARKS.md.
const SECTION_HEADING: &str = "## Events: publish to handled (embedded journal)";

/// The app, service and topic of the measured subscription, whose id is
/// `APP/SERVICE/TOPIC`.
const APP: &str = "benchevents";
const SERVICE: &str = "hello";
const TOPIC: &str = "bench";
const CONTENT_TYPE: &str = "application/json";
/// Every message's payload is a JSON object of exactly this many bytes.
const PAYLOAD_BYTES: usize = 100;
/// Unreported messages before each measured run: they warm the instance pool, the
/// statement caches and the journal's pages, and get the subscription's worker going.
const WARMUP_MESSAGES: u32 = 1000;
/// What the issue asks of publish → handled on a 2-core machine, in messages per second.
const GOAL: f64 = 10_000.0;

const DEFAULT_MESSAGES: u32 = 20_000;
const DEFAULT_PUBLISHERS: u32 = 32;
/// Deliveries in flight, and leased per journal round trip. A delivery holds its slot
/// across two group commits (its lease's and its ack's), so slots well beyond what one
/// commit carries keep the writer's groups full; past 128 nothing more was gained on the
/// 2-core machine these defaults were chosen on (64: about 10% less). The dispatcher never
/// leases more than the free slots, so a batch above the concurrency would change nothing.
const DEFAULT_CONCURRENCY: u32 = 128;
const DEFAULT_BATCH: u32 = 64;
const MAX_MESSAGES: u32 = 10_000_000;
const MAX_PUBLISHERS: u32 = 1024;
/// The node's instance pool holds 1000 instances, shared with everything else it runs.
const MAX_CONCURRENCY: u32 = 900;
const MAX_BATCH: u32 = 10_000;

/// The phases, as the node half names them.
const PHASE_PUBLISH: &str = "publish";
const PHASE_HANDLED: &str = "handled";
const PHASE_PACED: &str = "paced";
const PHASE_HANDLER: &str = "handler";
const PHASE_CLUSTER_HANDLED: &str = "cluster-handled";
const PHASE_CLUSTER_PACED: &str = "cluster-paced";

const USAGE: &str = "usage: cargo xtask bench-events [--messages N] [--publishers P] \
    [--concurrency C] [--batch B] [--cluster]";

/// What one run measures: how many messages, how many publishing threads, and the
/// subscription's delivery settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub messages: u32,
    pub publishers: u32,
    pub concurrency: u32,
    pub batch: u32,
    /// Also measure three cluster nodes on a NATS server (`--cluster`).
    pub cluster: bool,
}

impl Settings {
    fn parse(args: &[String]) -> Result<Settings> {
        let mut settings = Settings {
            messages: DEFAULT_MESSAGES,
            publishers: DEFAULT_PUBLISHERS,
            concurrency: DEFAULT_CONCURRENCY,
            batch: DEFAULT_BATCH,
            cluster: false,
        };
        let (cluster, args) = super::take_switch(args, "--cluster");
        settings.cluster = cluster;
        parse_flags(&args, |flag, value| {
            let (slot, max) = match flag {
                "--messages" => (&mut settings.messages, MAX_MESSAGES),
                "--publishers" => (&mut settings.publishers, MAX_PUBLISHERS),
                "--concurrency" => (&mut settings.concurrency, MAX_CONCURRENCY),
                "--batch" => (&mut settings.batch, MAX_BATCH),
                _ => bail!("unknown bench-events option {flag:?}; {USAGE}"),
            };
            *slot = value
                .parse()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .with_context(|| {
                    format!("{flag} takes a whole number from 1 to {max}, not {value:?}")
                })?;
            Ok(())
        })?;
        Ok(settings)
    }

    fn command_line(&self) -> String {
        format!(
            "cargo xtask bench-events --messages {} --publishers {} --concurrency {} --batch {}{}",
            self.messages,
            self.publishers,
            self.concurrency,
            self.batch,
            if self.cluster { " --cluster" } else { "" }
        )
    }
}

/// The payload of message `n`: `{"seq":N,"pad":"xx…"}`, exactly [`PAYLOAD_BYTES`] long.
pub fn payload(n: usize) -> Vec<u8> {
    let head = format!("{{\"seq\":{n},\"pad\":\"");
    let pad = PAYLOAD_BYTES.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
}

/// CPU used during a phase, by thread group, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    /// The embedded journal's writer thread: all SQLite writes, and the fsyncs.
    pub writer_ns: u64,
    /// The tokio runtime's threads (workers and blocking pool): guests, dispatcher,
    /// request building, journal calls handed to the blocking pool.
    pub tokio_ns: u64,
    /// The publishing threads.
    pub publishers_ns: u64,
    /// Everything else (the epoch ticker, the main thread).
    pub other_ns: u64,
    /// Cluster nodes' NATS client threads (`tessera-nats`): the JetStream journal's calls,
    /// the client, the cluster's background tasks.
    pub nats_client_ns: u64,
    /// The NATS server process (another process: not part of `total_ns`).
    pub nats_server_ns: u64,
    /// Busy time of all the machine's cores, this process and every other one.
    pub machine_ns: u64,
}

impl Cpu {
    /// What this process used.
    fn total_ns(&self) -> u64 {
        self.writer_ns + self.tokio_ns + self.publishers_ns + self.other_ns + self.nats_client_ns
    }
}

/// What the journal saw during publish → handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalCalls {
    /// The publish calls, from call to durable return.
    pub publish_p50_ns: u64,
    pub publish_p99_ns: u64,
    /// The ack calls, from call to durable return (queueing for a group commit included).
    pub ack_p50_ns: u64,
    pub ack_p99_ns: u64,
    /// Lease round trips of the subscription's worker, and deliveries they returned.
    pub leases: u64,
    pub leased: u64,
    /// Failed attempts the journal counted since the node started.
    pub retries: u64,
}

/// One measured phase, as the node half reports it (one JSON object per line).
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: String,
    pub messages: u64,
    /// From the first publish (or request) starting to the last one finishing.
    pub wall_ns: u64,
    /// Nearest-rank percentiles of the per-message latency.
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub cpu: Cpu,
    /// The publishing rate, in messages per second, when publishers kept to one.
    pub paced: Option<u32>,
    pub journal: Option<JournalCalls>,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        self.messages as f64 * 1e9 / self.wall_ns.max(1) as f64
    }

    fn wall(&self) -> Duration {
        Duration::from_nanos(self.wall_ns)
    }

    fn summary_line(&self) -> String {
        format!(
            "{}: {} messages in {}, {:.0} msgs/s, p50 {}, p99 {}",
            self.name,
            self.messages,
            format_duration(self.wall()),
            self.per_sec(),
            format_duration(Duration::from_nanos(self.p50_ns)),
            format_duration(Duration::from_nanos(self.p99_ns)),
        )
    }

    fn to_json(&self) -> Value {
        let mut json = json!({
            "phase": self.name,
            "messages": self.messages,
            "wall_ns": self.wall_ns,
            "p50_ns": self.p50_ns,
            "p99_ns": self.p99_ns,
            "cpu_writer_ns": self.cpu.writer_ns,
            "cpu_tokio_ns": self.cpu.tokio_ns,
            "cpu_publishers_ns": self.cpu.publishers_ns,
            "cpu_other_ns": self.cpu.other_ns,
            "cpu_nats_client_ns": self.cpu.nats_client_ns,
            "cpu_nats_server_ns": self.cpu.nats_server_ns,
            "cpu_machine_ns": self.cpu.machine_ns,
        });
        if let Some(rate) = self.paced {
            json["paced"] = rate.into();
        }
        if let Some(j) = &self.journal {
            json["publish_p50_ns"] = j.publish_p50_ns.into();
            json["publish_p99_ns"] = j.publish_p99_ns.into();
            json["ack_p50_ns"] = j.ack_p50_ns.into();
            json["ack_p99_ns"] = j.ack_p99_ns.into();
            json["leases"] = j.leases.into();
            json["leased"] = j.leased.into();
            json["retries"] = j.retries.into();
        }
        json
    }

    fn from_json(json: &Value) -> Result<Phase> {
        let field = |name: &str| {
            json.get(name)
                .and_then(Value::as_u64)
                .with_context(|| format!("phase result without a whole number `{name}`: {json}"))
        };
        let journal = match json.get("leases") {
            None => None,
            Some(_) => Some(JournalCalls {
                publish_p50_ns: field("publish_p50_ns")?,
                publish_p99_ns: field("publish_p99_ns")?,
                ack_p50_ns: field("ack_p50_ns")?,
                ack_p99_ns: field("ack_p99_ns")?,
                leases: field("leases")?,
                leased: field("leased")?,
                retries: field("retries")?,
            }),
        };
        Ok(Phase {
            name: json
                .get("phase")
                .and_then(Value::as_str)
                .with_context(|| format!("phase result without a name: {json}"))?
                .to_owned(),
            messages: field("messages")?,
            wall_ns: field("wall_ns")?,
            p50_ns: field("p50_ns")?,
            p99_ns: field("p99_ns")?,
            paced: match json.get("paced") {
                None => None,
                Some(rate) => Some(
                    rate.as_u64()
                        .and_then(|rate| u32::try_from(rate).ok())
                        .with_context(|| format!("phase result with a bad `paced`: {json}"))?,
                ),
            },
            cpu: Cpu {
                writer_ns: field("cpu_writer_ns")?,
                tokio_ns: field("cpu_tokio_ns")?,
                publishers_ns: field("cpu_publishers_ns")?,
                other_ns: field("cpu_other_ns")?,
                nats_client_ns: field("cpu_nats_client_ns")?,
                nats_server_ns: field("cpu_nats_server_ns")?,
                machine_ns: field("cpu_machine_ns")?,
            },
            journal,
        })
    }
}

/// The phases of one run.
struct Results {
    publish: Phase,
    handled: Phase,
    paced: Phase,
    handler: Phase,
    /// Publish → handled and its paced run on three cluster nodes, with `--cluster`.
    cluster: Option<(Phase, Phase)>,
}

impl Results {
    /// Reads the node half's output: one JSON object per line, one per phase.
    fn parse(output: &str) -> Result<Results> {
        let mut phases = Vec::new();
        for line in output.lines().filter(|line| line.starts_with('{')) {
            let json: Value =
                serde_json::from_str(line).with_context(|| format!("bad phase result {line:?}"))?;
            phases.push(Phase::from_json(&json)?);
        }
        let mut take = |name: &str| {
            let at = phases
                .iter()
                .position(|p| p.name == name)
                .with_context(|| format!("the node half reported no {name:?} phase"))?;
            Ok::<_, anyhow::Error>(phases.remove(at))
        };
        let handled = take(PHASE_HANDLED)?;
        if handled.journal.is_none() {
            bail!("the {PHASE_HANDLED:?} phase came without its journal figures");
        }
        let paced = take(PHASE_PACED)?;
        if paced.paced.is_none() {
            bail!("the {PHASE_PACED:?} phase does not say its rate");
        }
        let publish = take(PHASE_PUBLISH)?;
        let handler = take(PHASE_HANDLER)?;
        let cluster = match take(PHASE_CLUSTER_HANDLED) {
            Ok(handled) => Some((handled, take(PHASE_CLUSTER_PACED)?)),
            Err(_) => None,
        };
        Ok(Results {
            publish,
            handled,
            paced,
            handler,
            cluster,
        })
    }

    fn rows(&self) -> [(String, &Phase); 4] {
        [
            ("publish only".to_owned(), &self.publish),
            ("publish → handled".to_owned(), &self.handled),
            (
                format!(
                    "publish → handled, paced at {} msgs/s",
                    self.paced.paced.unwrap_or_default()
                ),
                &self.paced,
            ),
            (
                "handler only, no journal (reference)".to_owned(),
                &self.handler,
            ),
        ]
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let settings = Settings::parse(args)?;
    guests::build()?;
    cargo_step(&["build", "--release", "-p", "xtask"])?;
    let component = super::guest_component("hello")?;

    let scratch = ScratchDir::create()?;
    // Taken after the builds, so the load average reflects the machine we measure on.
    let machine = report::machine();
    let results = measure(&settings, scratch.path(), &component)?;
    let mut versions = vec![
        format!("tessera {}", env!("CARGO_PKG_VERSION")),
        format!("SQLite {} (bundled with rusqlite)", rusqlite::version()),
        version_of(Path::new("rustc"), "rustc"),
    ];
    if settings.cluster {
        versions.push(version_of(Path::new("nats-server"), "nats-server"));
    }

    println!();
    print!("{}", table(&results));
    println!();
    println!("{}", goal_line(&results.handled));
    println!();
    print!("{}", cpu_table(&results));
    println!("\n{}", ceiling_line(&results.handled));
    if let Some(line) = journal_line(&results.handled, &settings) {
        println!("\n{line}");
    }
    if let Some(cluster) = &results.cluster {
        println!();
        print!("{}", cluster_table(&results, cluster));
        println!();
        for line in cluster_goal_lines(&results, cluster) {
            println!("{line}");
        }
        println!();
        print!("{}", cluster_cpu_table(cluster));
        if let Some(line) = journal_line_waiting(&cluster.0, &settings, CLUSTER_WAITS) {
            println!("\nCluster: {line}");
        }
    }
    let section = Section {
        date: report::utc_now(),
        machine,
        settings,
        results: &results,
        versions: &versions,
    };
    let path = repo_root().join("BENCHMARKS.md");
    report::update_benchmarks_md(&path, SECTION_HEADING, &markdown(&section))?;
    if let Some(cluster) = &results.cluster {
        report::update_benchmarks_md(
            &path,
            CLUSTER_SECTION_HEADING,
            &cluster_markdown(&section, cluster),
        )?;
    }
    println!("\nupdated {}", path.display());
    Ok(())
}

/// How a cluster journal call waits.
const CLUSTER_WAITS: &str =
    "a publish waits for JetStream's acknowledgement, an ack for the server's confirmation";

/// The section `--cluster` owns in BENCHMARKS.md.
const CLUSTER_SECTION_HEADING: &str =
    "## Events: publish to handled, three cluster nodes on JetStream";
/// What the issue asks of the cluster: throughput against the embedded journal's, the
/// paced p99, and the paced p50.
const CLUSTER_GOAL_RATIO: f64 = 0.5;
const CLUSTER_GOAL_P99: Duration = Duration::from_millis(20);
const CLUSTER_GOAL_P50: Duration = Duration::from_millis(10);

fn cluster_rows<'a>(results: &'a Results, cluster: &'a (Phase, Phase)) -> [(String, &'a Phase); 4] {
    let paced = |p: &Phase| p.paced.unwrap_or_default();
    [
        ("embedded: publish → handled".to_owned(), &results.handled),
        ("cluster: publish → handled".to_owned(), &cluster.0),
        (
            format!("embedded: paced at {} msgs/s", paced(&results.paced)),
            &results.paced,
        ),
        (
            format!("cluster: paced at {} msgs/s", paced(&cluster.1)),
            &cluster.1,
        ),
    ]
}

fn cluster_table(results: &Results, cluster: &(Phase, Phase)) -> String {
    let mut cells = vec![["run", "msgs/s", "p50", "p99", "msgs/s vs embedded"].map(str::to_owned)];
    for (i, (label, phase)) in cluster_rows(results, cluster).into_iter().enumerate() {
        let embedded = if i < 2 {
            &results.handled
        } else {
            &results.paced
        };
        cells.push([
            label,
            format!("{:.0}", phase.per_sec()),
            format_duration(Duration::from_nanos(phase.p50_ns)),
            format_duration(Duration::from_nanos(phase.p99_ns)),
            format!("{:.2}x", phase.per_sec() / embedded.per_sec().max(1e-9)),
        ]);
    }
    report::render_table(&cells, &[0])
}

fn cluster_goal_lines(results: &Results, cluster: &(Phase, Phase)) -> Vec<String> {
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let ratio = cluster.0.per_sec() / results.handled.per_sec().max(1e-9);
    let p99 = Duration::from_nanos(cluster.1.p99_ns);
    let p50 = Duration::from_nanos(cluster.1.p50_ns);
    vec![
        format!(
            "Goal (cluster publish → handled ≥ {CLUSTER_GOAL_RATIO}x the embedded journal's): {}, {ratio:.2}x.",
            met(ratio >= CLUSTER_GOAL_RATIO)
        ),
        format!(
            "Goal (paced p99 ≤ {}): {}, {}.",
            format_duration(CLUSTER_GOAL_P99),
            met(p99 <= CLUSTER_GOAL_P99),
            format_duration(p99)
        ),
        format!(
            "Goal (p50 publish → handled ≤ {} at low load): {}, {} (paced run).",
            format_duration(CLUSTER_GOAL_P50),
            met(p50 <= CLUSTER_GOAL_P50),
            format_duration(p50)
        ),
    ]
}

fn cluster_cpu_table(cluster: &(Phase, Phase)) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cells = vec![
        [
            "run",
            "CPU a message",
            "tokio threads (guests, dispatchers)",
            "NATS client threads",
            "publishers",
            "other",
            "nats-server",
            "cores busy (bench + server)",
            "cores busy (machine)",
        ]
        .map(str::to_owned),
    ];
    for (label, phase) in [("publish → handled", &cluster.0), ("paced", &cluster.1)] {
        let cpu = &phase.cpu;
        let per_message =
            |ns: u64| format_duration(Duration::from_nanos(ns / phase.messages.max(1)));
        let busy = |ns: u64| format!("{:.2} of {cores}", ns as f64 / phase.wall_ns.max(1) as f64);
        let all = cpu.total_ns() + cpu.nats_server_ns;
        cells.push([
            label.to_owned(),
            per_message(all),
            per_message(cpu.tokio_ns),
            per_message(cpu.nats_client_ns),
            per_message(cpu.publishers_ns),
            per_message(cpu.other_ns + cpu.writer_ns),
            per_message(cpu.nats_server_ns),
            busy(all),
            busy(cpu.machine_ns),
        ]);
    }
    report::render_table(&cells, &[0])
}

fn cluster_markdown(s: &Section<'_>, cluster: &(Phase, Phase)) -> String {
    let Settings {
        messages,
        publishers,
        concurrency,
        batch,
        ..
    } = s.settings;
    let nodes = node::CLUSTER_NODES;
    let mut md = String::new();
    let _ = writeln!(md, "{CLUSTER_SECTION_HEADING}\n");
    let _ = writeln!(md, "Measured {} on {}.\n", s.date, s.machine);
    let _ = writeln!(
        md,
        "Command: `{}`, the same run as the embedded section above, whose rows are repeated \
         here. After the embedded phases, `xtask bench-events-node` opens {nodes} nodes in its \
         process, each as `tessera serve --cluster` builds one (the JetStream control log, the \
         object store for artifacts, the cluster's key-value data, the JetStream journal), each \
         with its own NATS connection and client runtime, on one `nats-server` started for the \
         run on loopback (JetStream, file storage, one replica). The `hello` component is \
         deployed through the first node and subscribed to `{TOPIC}` with concurrency \
         {concurrency}, batch {batch} and 3 attempts; every node serves it and pulls from the \
         subscription's one durable consumer. {publishers} publisher threads are spread \
         round-robin over the nodes' `Node::publish`, which returns once JetStream acknowledged \
         the message; a delivery's ack returns once the server confirmed it. N = {messages} \
         after a warm-up of {WARMUP_MESSAGES}; afterwards the journal's cluster-wide counts \
         must show every message delivered once and nothing left. Latency is from the start \
         of a message's publish call to the return of its ack, on whichever node; the paced \
         run publishes at half the rate of the flat-out one.\n",
        s.settings.command_line()
    );
    let _ = writeln!(md, "{}", cluster_table(s.results, cluster));
    for line in cluster_goal_lines(s.results, cluster) {
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(
        md,
        "\nWhere the CPU goes (this process by thread group from `/proc/self/task/*/schedstat`, \
         the NATS server from `/proc/PID/stat`, the machine from `/proc/stat`):\n"
    );
    let _ = writeln!(md, "{}", cluster_cpu_table(cluster));
    if let Some(line) = journal_line_waiting(&cluster.0, &s.settings, CLUSTER_WAITS) {
        let _ = writeln!(md, "{line}\n");
    }
    let _ = writeln!(md, "Versions: {}.", s.versions.join("; "));
    md
}

/// Runs `xtask bench-events-node` from the release build and reads its results.
fn measure(settings: &Settings, data: &Path, component: &Path) -> Result<Results> {
    let xtask = target_dir().join("release").join("xtask");
    let nats = if settings.cluster {
        if !tessera_cluster::testing::available() {
            bail!("--cluster needs nats-server on the PATH (apt-get install -y nats-server)");
        }
        Some(tessera_cluster::testing::NatsServer::start())
    } else {
        None
    };
    let mut cluster_args = Vec::new();
    if let Some(nats) = &nats {
        cluster_args.push(nats.url());
        cluster_args.push(
            nats.pid()
                .context("the NATS server is not running")?
                .to_string(),
        );
    }
    println!("==> {} bench-events-node", xtask.display());
    let output = Command::new(&xtask)
        .arg("bench-events-node")
        .arg(data)
        .arg(component)
        .args(
            [
                settings.messages,
                settings.publishers,
                settings.concurrency,
                settings.batch,
            ]
            .map(|n| n.to_string()),
        )
        .args(&cluster_args)
        // The node logs through tracing only when a subscriber is installed; none is, and
        // guest output (hello prints nothing) would go to stderr.
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", xtask.display()))?;
    if !output.status.success() {
        bail!("xtask bench-events-node failed ({})", output.status);
    }
    Results::parse(&String::from_utf8_lossy(&output.stdout))
}

fn table(results: &Results) -> String {
    let mut cells = vec![["run", "msgs/s", "p50", "p99"].map(str::to_owned)];
    for (label, phase) in results.rows() {
        cells.push([
            label,
            format!("{:.0}", phase.per_sec()),
            format_duration(Duration::from_nanos(phase.p50_ns)),
            format_duration(Duration::from_nanos(phase.p99_ns)),
        ]);
    }
    report::render_table(&cells, &[0])
}

fn goal_line(handled: &Phase) -> String {
    let rate = handled.per_sec();
    if rate >= GOAL {
        format!(
            "Goal (≥ {GOAL:.0} msgs/s publish → handled on this machine): met, {rate:.0} msgs/s."
        )
    } else {
        format!(
            "Goal (≥ {GOAL:.0} msgs/s publish → handled on this machine): not met, {rate:.0} \
             msgs/s is {:.0}% of it.",
            rate / GOAL * 100.0
        )
    }
}

/// Per run, the CPU a message cost, by thread group, and how busy the cores were: this
/// process's share, and the whole machine's (other work on it shows there).
fn cpu_table(results: &Results) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cells = vec![
        [
            "run",
            "CPU a message",
            "journal writer",
            "tokio threads",
            "publishers",
            "other",
            "cores busy (bench)",
            "cores busy (machine)",
        ]
        .map(str::to_owned),
    ];
    for (label, phase) in results.rows() {
        let cpu = &phase.cpu;
        let per_message =
            |ns: u64| format_duration(Duration::from_nanos(ns / phase.messages.max(1)));
        let busy = |ns: u64| format!("{:.2} of {cores}", ns as f64 / phase.wall_ns.max(1) as f64);
        cells.push([
            label,
            per_message(cpu.total_ns()),
            per_message(cpu.writer_ns),
            per_message(cpu.tokio_ns),
            per_message(cpu.publishers_ns),
            per_message(cpu.other_ns),
            busy(cpu.total_ns()),
            busy(cpu.machine_ns),
        ]);
    }
    report::render_table(&cells, &[0])
}

/// The rate publish → handled could reach at its measured CPU cost a message if this
/// process had every core to itself.
fn ceiling_line(handled: &Phase) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_message = handled.cpu.total_ns() as f64 / handled.messages.max(1) as f64;
    format!(
        "At {} of CPU a message, publish → handled cannot go faster than {:.0} msgs/s on {cores} \
         cores, even with the machine to itself and no core ever idle.",
        format_duration(Duration::from_nanos(per_message as u64)),
        cores as f64 * 1e9 / per_message.max(1.0),
    )
}

/// What the journal calls of publish → handled looked like.
fn journal_line(handled: &Phase, settings: &Settings) -> Option<String> {
    journal_line_waiting(
        handled,
        settings,
        "each call waits for the group commit that holds it",
    )
}

fn journal_line_waiting(handled: &Phase, settings: &Settings, waits: &str) -> Option<String> {
    let j = handled.journal.as_ref()?;
    let d = |ns| format_duration(Duration::from_nanos(ns));
    Some(format!(
        "Journal calls during publish → handled: publish p50 {} / p99 {}, ack p50 {} / p99 {} \
         ({waits}); the workers leased {} times, {:.1} deliveries on average (at most {} each); \
         {} failed attempts.",
        d(j.publish_p50_ns),
        d(j.publish_p99_ns),
        d(j.ack_p50_ns),
        d(j.ack_p99_ns),
        j.leases,
        j.leased as f64 / j.leases.max(1) as f64,
        settings.batch.min(settings.concurrency),
        j.retries,
    ))
}

struct Section<'a> {
    date: String,
    machine: String,
    settings: Settings,
    results: &'a Results,
    versions: &'a [String],
}

fn markdown(s: &Section<'_>) -> String {
    let Settings {
        messages,
        publishers,
        concurrency,
        batch,
        ..
    } = s.settings;
    let mut md = String::new();
    let _ = writeln!(md, "{SECTION_HEADING}\n");
    let _ = writeln!(md, "Measured {} on {}.\n", s.date, s.machine);
    let _ = writeln!(
        md,
        "Command: `{}`. It runs `xtask bench-events-node` from a release build: a node \
         in-process (the backends `Node::open` uses, with the event journal wrapped only to \
         note when each acknowledgement returns), on a tokio multi-thread runtime with one \
         worker per core, in a fresh data directory under the system temp directory for each \
         of the first two rows. Every message is a {PAYLOAD_BYTES}-byte JSON payload \
         (`{CONTENT_TYPE}`) published with `Node::publish`, a blocking call that returns once \
         the message is fsync'd, from {publishers} threads at once, after an unreported \
         warm-up of {WARMUP_MESSAGES} messages. N = {messages}; p50 and p99 are nearest-rank \
         percentiles.\n",
        s.settings.command_line()
    );
    let _ = writeln!(
        md,
        "- **publish only**: an app that subscribes to nothing; msgs/s is N over the time from \
         the first publish call starting to the last one returning; latency is one publish \
         call."
    );
    let _ = writeln!(
        md,
        "- **publish → handled**: the `hello` component of crates/test-programs (answers 200) \
         subscribed to topic `{TOPIC}` on `/` with concurrency {concurrency}, batch {batch} \
         and 3 attempts. msgs/s is N over the time from the first publish call starting to the \
         last acknowledgement being durable; latency is, per message, from the start of its \
         publish call to the return of its ack. Afterwards the journal's own counts must show \
         all {WARMUP_MESSAGES} + N delivered and nothing ready, in flight or dead. The \
         publishers run flat out (each publishes again as soon as its call returns), so when \
         they outpace delivery a backlog builds up and the latency is mostly time spent in it."
    );
    let _ = writeln!(
        md,
        "- **publish → handled, paced**: the same node and subscription, N more messages, \
         with the publishers held to a schedule at half the rate of the row above (message n \
         is published no earlier than n / rate after the start): the latency of a message \
         when there is no backlog."
    );
    let _ = writeln!(
        md,
        "- **handler only, no journal (reference)**: the same node, N CloudEvents `POST`s with \
         the same headers and payload straight to the service \
         (`Service::handle_to_completion`, as the dispatcher's invoker calls it), \
         {concurrency} at a time: the WebAssembly side of a delivery alone.\n"
    );
    let _ = writeln!(
        md,
        "What publish → handled includes: the journal is one SQLite file in WAL mode with \
         synchronous=FULL, written by one thread that commits whatever is queued in one \
         transaction (group commit), so every publish, every lease and every ack is \
         fsync'd before it is answered, shared with whatever else is in its group; each \
         delivery is a CloudEvents binary-mode HTTP request to a fresh WebAssembly instance \
         (one instance per request, nothing reused), and journal calls hop onto tokio's \
         blocking pool. Publishers, guests and the journal writer share the same cores.\n"
    );
    let _ = writeln!(md, "{}", table(s.results));
    let _ = writeln!(md, "{}\n", goal_line(&s.results.handled));
    let _ = writeln!(
        md,
        "Where the time goes: CPU time per message by thread group (from \
         `/proc/self/task/*/schedstat`; the journal writer also pays for its fsync calls, the \
         tokio threads run the guests, the dispatcher and the blocking pool), and how many \
         cores were busy on average, in this process and on the whole machine (`/proc/stat`):\n"
    );
    let _ = writeln!(md, "{}", cpu_table(s.results));
    let _ = writeln!(md, "{}\n", ceiling_line(&s.results.handled));
    if let Some(line) = journal_line(&s.results.handled, &s.settings) {
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(md, "\nVersions: {}.", s.versions.join("; "));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_args as args;

    #[test]
    fn options_default_and_bounds() {
        let defaults = Settings::parse(&[]).unwrap();
        assert_eq!(
            defaults,
            Settings {
                messages: 20_000,
                publishers: 32,
                concurrency: DEFAULT_CONCURRENCY,
                batch: DEFAULT_BATCH,
                cluster: false,
            }
        );
        assert!(
            Settings::parse(&args(&["--cluster", "--messages", "5"]))
                .unwrap()
                .cluster
        );
        let s = Settings::parse(&args(&[
            "--messages",
            "500",
            "--publishers=4",
            "--concurrency",
            "16",
            "--batch=8",
        ]))
        .unwrap();
        assert_eq!(
            (s.messages, s.publishers, s.concurrency, s.batch),
            (500, 4, 16, 8)
        );
        for bad in [
            &["--messages", "0"][..],
            &["--messages", "lots"],
            &["--messages"],
            &["--publishers", "1025"],
            &["--concurrency", "901"],
            &["--batch", "-1"],
            &["--duration", "3"],
            &["20000"],
        ] {
            assert!(Settings::parse(&args(bad)).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            Settings::parse(&args(&["--messages", "7"]))
                .unwrap()
                .command_line(),
            "cargo xtask bench-events --messages 7 --publishers 32 --concurrency 128 --batch 64"
        );
    }

    #[test]
    fn payloads_are_json_of_the_advertised_size() {
        for n in [0, 7, 19_999, 9_999_999] {
            let payload = payload(n);
            assert_eq!(payload.len(), PAYLOAD_BYTES, "payload of message {n}");
            let json: Value = serde_json::from_slice(&payload).unwrap();
            assert_eq!(json["seq"], n);
        }
    }

    fn phase(name: &str, journal: Option<JournalCalls>) -> Phase {
        Phase {
            name: name.into(),
            messages: 20_000,
            wall_ns: 4_000_000_000,
            p50_ns: 1_500_000,
            p99_ns: 9_000_000,
            cpu: Cpu {
                writer_ns: 1,
                tokio_ns: 2,
                publishers_ns: 3,
                other_ns: 4,
                nats_client_ns: 6,
                nats_server_ns: 7,
                machine_ns: 5,
            },
            paced: None,
            journal,
        }
    }

    #[test]
    fn phases_round_trip_through_the_node_halfs_output() {
        let calls = JournalCalls {
            publish_p50_ns: 10,
            publish_p99_ns: 20,
            ack_p50_ns: 30,
            ack_p99_ns: 40,
            leases: 50,
            leased: 60,
            retries: 0,
        };
        let paced = Phase {
            paced: Some(2500),
            ..phase(PHASE_PACED, None)
        };
        let output = format!(
            "noise\n{}\n{}\n{}\n{}\n",
            phase(PHASE_HANDLER, None).to_json(),
            phase(PHASE_PUBLISH, None).to_json(),
            phase(PHASE_HANDLED, Some(calls)).to_json(),
            paced.to_json(),
        );
        let results = Results::parse(&output).unwrap();
        assert_eq!(results.handled, phase(PHASE_HANDLED, Some(calls)));
        assert_eq!(results.publish, phase(PHASE_PUBLISH, None));
        assert_eq!(results.paced, paced);
        assert_eq!(results.handler.per_sec(), 5000.0);
        assert_eq!(
            results.rows()[2].0,
            "publish → handled, paced at 2500 msgs/s"
        );
        // A run that lost a phase, or the journal figures, is an error, not a table.
        let partial = format!("{}\n", phase(PHASE_PUBLISH, None).to_json());
        assert!(Results::parse(&partial).is_err());
        let without_journal = output.replace("\"leases\"", "\"leases_\"");
        assert!(Results::parse(&without_journal).is_err());
        let without_rate = output.replace("\"paced\"", "\"paced_\"");
        assert!(Results::parse(&without_rate).is_err());
    }

    #[test]
    fn latency_is_measured_at_half_the_measured_rate() {
        assert_eq!(node::paced_rate(10_668.0), 5300);
        assert_eq!(node::paced_rate(9_999.0), 4900);
        assert_eq!(node::paced_rate(150.0), 100);
    }

    #[test]
    fn the_cpu_ceiling_follows_from_the_cost_a_message() {
        let mut handled = phase(PHASE_HANDLED, None);
        // 200 µs a message: 5,000 msgs/s a core.
        handled.cpu = Cpu {
            writer_ns: 1_000_000_000,
            tokio_ns: 2_000_000_000,
            publishers_ns: 1_000_000_000,
            ..Cpu::default()
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            ceiling_line(&handled).contains(&format!(
                "At 200 µs of CPU a message, publish → handled cannot go faster than {} msgs/s",
                5000 * cores
            )),
            "{}",
            ceiling_line(&handled)
        );
    }

    #[test]
    fn the_goal_is_judged_on_publish_to_handled() {
        let mut handled = phase(PHASE_HANDLED, None);
        assert!(goal_line(&handled).contains("not met, 5000 msgs/s is 50% of it"));
        handled.wall_ns = 1_000_000_000;
        assert!(goal_line(&handled).contains(": met, 20000 msgs/s"));
    }
}
