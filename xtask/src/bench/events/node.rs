//! `xtask bench-events-node DATA_DIR COMPONENT MESSAGES PUBLISHERS CONCURRENCY BATCH`: the
//! measuring half of `bench-events`, run from a release build with the node in-process.
//!
//! It opens a node the way `Node::open` does, except that the event journal is wrapped
//! (`Watched`) so the bench learns the moment each acknowledgement is durable without
//! adding anything to the node's API. Four phases, each printed as one JSON line on stdout
//! for `bench-events` to read (progress goes to stderr):
//!
//! 1. **publish**: a fresh node with an app that subscribes to nothing; MESSAGES publishes
//!    from PUBLISHERS threads. Latency is the publish call (until its group commit).
//! 2. **handled**: a fresh node with the `hello` component subscribed to the topic; after an
//!    unreported warm-up, MESSAGES publishes flat out, and the phase ends when the last of
//!    them is acknowledged. Latency is publish start to durable ack, per message.
//! 3. **paced**: the same, with the publishers held to half the rate phase 2 reached, so
//!    latency is a message's own and not the backlog's.
//! 4. **handler**: on the same node, MESSAGES CloudEvents requests straight to the service,
//!    CONCURRENCY at a time, with no journal: what the WebAssembly part alone sustains.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use tessera_embedded::{ControlStore, EmbeddedData, EmbeddedJournal};
use tessera_events::{
    AsyncDelivery, DeadLetter, Delivery, DeliveryStatus, EventError, Journal, JournalFuture,
    NewMessage, Outcome, Published, SubscriptionSpec, SubscriptionStats,
};
use tessera_node::{
    Backends, COMPILED_DIR, EVENTS_FILE, Node, NodeBuilder, NodeError, SERVICE_DATA_DIR,
    ServiceRelease,
};
use tessera_runtime::RuntimeConfig;

use tessera_store::{DeployOptions, RevisionConfig, RoutePrefix, ServiceDeploy, Subscription};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::cpu::{self, ThreadTimes};
use super::{
    APP, CONTENT_TYPE, JournalCalls, PHASE_CLUSTER_HANDLED, PHASE_CLUSTER_PACED, PHASE_HANDLED,
    PHASE_HANDLER, PHASE_PACED, PHASE_PUBLISH, Phase, SERVICE, Settings, TOPIC, WARMUP_MESSAGES,
    payload,
};
use crate::bench::report::nearest_rank;

/// Names of the threads the bench starts, so their CPU time can be told apart.
pub const TOKIO_THREAD: &str = "bench-tokio";
const PUBLISHER_THREAD: &str = "bench-publish";

/// Nodes of the cluster phases.
pub const CLUSTER_NODES: usize = 3;

/// The app of the publish-only phase: deployed (publishing needs an app) but subscribing
/// to nothing.
const QUIET_APP: &str = "benchquiet";
/// Give up when no acknowledgement arrives for this long: something is broken.
const STALL: Duration = Duration::from_secs(60);

pub fn run(args: &[String]) -> Result<()> {
    let (args, cluster) = match args {
        [args @ .., url, pid] if args.len() == 6 => (args, Some((url, pid))),
        _ => (args, None),
    };
    let [data, component, messages, publishers, concurrency, batch] = args else {
        bail!(
            "usage: xtask bench-events-node DATA_DIR COMPONENT MESSAGES PUBLISHERS CONCURRENCY BATCH [NATS_URL NATS_PID]"
        );
    };
    let number = |name: &str, value: &str| -> Result<u32> {
        value
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{name} must be a positive number, not {value:?}"))
    };
    let settings = Settings {
        messages: number("MESSAGES", messages)?,
        publishers: number("PUBLISHERS", publishers)?,
        concurrency: number("CONCURRENCY", concurrency)?,
        batch: number("BATCH", batch)?,
        cluster: cluster.is_some(),
    };
    let data = PathBuf::from(data);
    let component =
        std::fs::read(component).with_context(|| format!("reading the component {component}"))?;
    // Like `tessera serve`: a multi-thread runtime with one worker per core. Named threads
    // let the CPU breakdown tell them from the journal writer and the publishers.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(TOKIO_THREAD)
        .build()
        .context("starting the tokio runtime")?;

    let publish = publish_only(&tokio, &data.join("publish"), &component, &settings)?;
    print_phase(&publish);
    handled(&tokio, &data.join("handled"), &component, &settings)?;
    if let Some((url, pid)) = cluster {
        let pid = pid
            .parse()
            .with_context(|| format!("NATS_PID must be a process id, not {pid:?}"))?;
        cpu::watch_server(pid);
        handled_in_cluster(&tokio, &data.join("cluster"), &component, &settings, url)?;
    }
    Ok(())
}

/// Publish → handled (flat out, then paced) on [`CLUSTER_NODES`] nodes in this process
/// that share one NATS server at `url` the way `tessera serve --cluster` nodes do (control
/// log, object store, JetStream journal), each with its own NATS connection and client
/// runtime; the publishers are spread over the nodes and every node delivers.
fn handled_in_cluster(
    tokio: &tokio::runtime::Runtime,
    dir: &Path,
    component: &[u8],
    settings: &Settings,
    url: &str,
) -> Result<()> {
    use tessera_cluster::{
        Cluster, ClusterConfig, ClusterData, JetStreamControl, JetStreamJournal, ObjectArtifacts,
    };
    let subscription = format!("{APP}/{SERVICE}/{TOPIC}");
    let watch = Arc::new(Watch::new(subscription.clone()));
    let mut nodes = Vec::new();
    for i in 0..CLUSTER_NODES {
        let name = format!("bench-{i}");
        let cluster = Cluster::connect(&ClusterConfig {
            urls: vec![url.to_owned()],
            node: name.clone(),
            replicas: None,
        })
        .with_context(|| format!("joining the cluster at {url}"))?;
        let watch = watch.clone();
        let node = NodeBuilder::local(&dir.join(&name), |data| {
            let artifacts = Arc::new(ObjectArtifacts::open(&cluster, data.join("artifacts"))?);
            let control = Arc::new(JetStreamControl::open(&cluster, artifacts.clone())?);
            let service_data = Arc::new(
                ClusterData::open(&cluster, data.join("sql"))
                    .map_err(|e| NodeError::Invalid(e.to_string()))?,
            );
            let journal: Arc<dyn Journal> = Arc::new(Watched {
                inner: Arc::new(JetStreamJournal::open(&cluster)?),
                watch,
            });
            Ok(Backends {
                control,
                artifacts,
                data: service_data,
                journal: Some(journal),
            })
        })?
        .id(&name)
        .runtime(RuntimeConfig {
            max_instances: 1000,
            ..RuntimeConfig::default()
        })
        .build()
        .context("opening a cluster node")?;
        nodes.push(node);
    }
    let _entered = tokio.enter();
    for node in &nodes {
        node.start_events();
    }
    deploy(&nodes[0], APP, component, bench_subscription(settings))?;
    let deployed = Instant::now();
    for node in &nodes {
        while node.routes().current().route(None, "/").is_none() {
            if deployed.elapsed() > Duration::from_secs(30) {
                bail!("a cluster node did not serve the deployed app within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let run = Delivering {
        nodes: &nodes,
        watch: &watch,
        subscription: &subscription,
        publishers: settings.publishers,
    };
    eprintln!(
        "==> cluster ({CLUSTER_NODES} nodes, one NATS server): publish → handled: warm-up, {WARMUP_MESSAGES} messages"
    );
    run.measure(PHASE_CLUSTER_HANDLED, WARMUP_MESSAGES, None)?;
    eprintln!(
        "==> cluster: publish → handled: {} messages from {} threads over {CLUSTER_NODES} nodes",
        settings.messages, settings.publishers
    );
    let handled = run.measure(PHASE_CLUSTER_HANDLED, settings.messages, None)?;
    print_phase(&handled);
    let rate = paced_rate(handled.per_sec());
    eprintln!(
        "==> cluster: publish → handled, paced: {} messages at {rate} msgs/s",
        settings.messages
    );
    let paced = run.measure(PHASE_CLUSTER_PACED, settings.messages, Some(rate))?;
    print_phase(&paced);
    for node in &nodes {
        tokio.block_on(node.stop_events());
    }
    Ok(())
}

fn print_phase(phase: &Phase) {
    eprintln!("    {}", phase.summary_line());
    println!("{}", phase.to_json());
}

/// Opens a node as `Node::open` does (control store, service data, the journal file, the
/// compile cache in `dir`), with the journal handed in.
fn open_node(dir: &Path, journal: Arc<dyn Journal>) -> Result<Node> {
    let store = Arc::new(ControlStore::open(dir).context("opening the control store")?);
    let data = Arc::new(EmbeddedData::new(dir.join(SERVICE_DATA_DIR)));
    NodeBuilder::new(store.clone(), store, data, journal)
        .runtime(RuntimeConfig {
            cache_dir: Some(dir.join(COMPILED_DIR)),
            max_instances: 1000,
            ..RuntimeConfig::default()
        })
        .build()
        .context("opening the node")
}

/// Deploys `component` as the app's only service on `/`, with the given subscriptions.
fn deploy(
    node: &Node,
    app: &str,
    component: &[u8],
    subscriptions: Vec<Subscription>,
) -> Result<()> {
    let sha256 = node.upload(component).context("uploading the component")?;
    let mut config = RevisionConfig::new(vec![RoutePrefix::new("/").expect("a route")]);
    config.limits.memory = 64 << 20;
    config.subscriptions = subscriptions;
    config.scaling.concurrency = 10_000;
    config.scaling.queue = 100_000;
    let release = ServiceRelease {
        service: ServiceDeploy {
            name: SERVICE.into(),
            sha256,
            config,
        },
        migrations: Vec::new(),
    };
    node.deploy(app, &[release], &DeployOptions::default())
        .with_context(|| format!("deploying app {app}"))?;
    Ok(())
}

fn publish_only(
    tokio: &tokio::runtime::Runtime,
    dir: &Path,
    component: &[u8],
    settings: &Settings,
) -> Result<Phase> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let journal = Arc::new(EmbeddedJournal::open(&dir.join(EVENTS_FILE))?);
    let node = open_node(dir, journal)?;
    let _entered = tokio.enter();
    // Started as a node starts them, although nothing subscribes to the topic.
    node.start_events();
    deploy(&node, QUIET_APP, component, Vec::new())?;
    eprintln!(
        "==> publish only: warm-up, {WARMUP_MESSAGES} messages, then {} from {} threads",
        settings.messages, settings.publishers
    );
    let nodes = [node.clone()];
    publish_all(
        &nodes,
        QUIET_APP,
        WARMUP_MESSAGES,
        settings.publishers,
        None,
    )?;
    let before = cpu::snapshot()?;
    let (sent, publishers) = publish_all(
        &nodes,
        QUIET_APP,
        settings.messages,
        settings.publishers,
        None,
    )?;
    let cpu = cpu::snapshot()?.since(&before).with_publishers(publishers);
    let started = first_start(&sent)?;
    let finished = sent.iter().map(|s| s.returned).max().unwrap_or(started);
    let mut latencies: Vec<u64> = sent.iter().map(|s| nanos(s.returned - s.started)).collect();
    latencies.sort_unstable();
    tokio.block_on(node.stop_events());
    Ok(Phase {
        name: PHASE_PUBLISH.into(),
        messages: sent.len() as u64,
        wall_ns: nanos(finished - started),
        p50_ns: nearest_rank(&latencies, 50),
        p99_ns: nearest_rank(&latencies, 99),
        cpu,
        paced: None,
        journal: None,
    })
}

/// The phases on a node with the subscribed component; prints each as it ends.
fn handled(
    tokio: &tokio::runtime::Runtime,
    dir: &Path,
    component: &[u8],
    settings: &Settings,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let subscription = format!("{APP}/{SERVICE}/{TOPIC}");
    let watch = Arc::new(Watch::new(subscription.clone()));
    let journal = Arc::new(Watched {
        inner: Arc::new(EmbeddedJournal::open(&dir.join(EVENTS_FILE))?),
        watch: watch.clone(),
    });
    let node = open_node(dir, journal)?;
    let _entered = tokio.enter();
    node.start_events();
    deploy(&node, APP, component, bench_subscription(settings))?;
    let nodes = [node.clone()];
    let run = Delivering {
        nodes: &nodes,
        watch: &watch,
        subscription: &subscription,
        publishers: settings.publishers,
    };

    eprintln!("==> publish → handled: warm-up, {WARMUP_MESSAGES} messages");
    run.measure(PHASE_HANDLED, WARMUP_MESSAGES, None)?;
    eprintln!(
        "==> publish → handled: {} messages from {} threads, subscription concurrency {}, batch {}",
        settings.messages, settings.publishers, settings.concurrency, settings.batch
    );
    let handled = run.measure(PHASE_HANDLED, settings.messages, None)?;
    print_phase(&handled);

    // Flat out, publishers outrun deliveries and latency is mostly the backlog; at half
    // the rate just measured it is what one message takes.
    let rate = paced_rate(handled.per_sec());
    eprintln!(
        "==> publish → handled, paced: {} messages at {rate} msgs/s",
        settings.messages
    );
    let paced = run.measure(PHASE_PACED, settings.messages, Some(rate))?;
    print_phase(&paced);

    eprintln!(
        "==> handler only: {} requests straight to the service, {} at a time",
        settings.messages, settings.concurrency
    );
    // On a worker, like the dispatcher's tasks.
    let handler = tokio.block_on(tokio::spawn(handler_only(node.clone(), *settings)))??;
    print_phase(&handler);
    tokio.block_on(node.stop_events());
    Ok(())
}

/// The measured subscription.
fn bench_subscription(settings: &Settings) -> Vec<Subscription> {
    vec![Subscription {
        max_attempts: 3,
        max_backoff: Duration::from_secs(60),
        concurrency: settings.concurrency,
        batch: settings.batch,
        ..Subscription::new(TOPIC, "/")
    }]
}

/// Half of `measured` messages per second, rounded down to a hundred (at least 100).
pub fn paced_rate(measured: f64) -> u32 {
    ((measured / 2.0 / 100.0).floor() as u32).max(1) * 100
}

/// The nodes with the subscribed component (publishers spread over them), and the record
/// of their acks.
struct Delivering<'a> {
    nodes: &'a [Node],
    watch: &'a Watch,
    subscription: &'a str,
    publishers: u32,
}

impl Delivering<'_> {
    /// Publishes `count` messages (flat out, or `pace` per second) and waits until every
    /// one is acknowledged; checks the journal's own counts afterwards.
    fn measure(&self, name: &str, count: u32, pace: Option<u32>) -> Result<Phase> {
        let delivered_before = self.delivered()?;
        self.watch.reset();
        let before = cpu::snapshot()?;
        let (sent, publishers) = publish_all(self.nodes, APP, count, self.publishers, pace)?;
        let acks = self.watch.wait_for_acks(sent.len())?;
        let cpu = cpu::snapshot()?.since(&before).with_publishers(publishers);
        let calls = self.watch.calls();

        let started = first_start(&sent)?;
        let mut finished = started;
        let mut latencies = Vec::with_capacity(sent.len());
        for s in &sent {
            let acked = acks
                .get(&s.id)
                .with_context(|| format!("message {} was never acknowledged", s.id))?;
            finished = finished.max(*acked);
            latencies.push(nanos(acked.saturating_duration_since(s.started)));
        }
        latencies.sort_unstable();
        let mut publish_calls: Vec<u64> =
            sent.iter().map(|s| nanos(s.returned - s.started)).collect();
        publish_calls.sort_unstable();

        // The journal's own counts must agree: each message delivered once, nothing left.
        // (A cluster's nodes write their counts every second.)
        let expected = delivered_before + sent.len() as u64;
        let checking = Instant::now();
        let stats = loop {
            let stats = self.stats()?;
            let agrees =
                stats.delivered == expected && stats.ready + stats.in_flight + stats.dead == 0;
            if agrees {
                break stats;
            }
            if checking.elapsed() > Duration::from_secs(5) {
                bail!(
                    "after the run the journal reports {stats:?}; expected {expected} delivered and nothing left"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        Ok(Phase {
            name: name.into(),
            messages: sent.len() as u64,
            wall_ns: nanos(finished - started),
            p50_ns: nearest_rank(&latencies, 50),
            p99_ns: nearest_rank(&latencies, 99),
            cpu,
            paced: pace,
            journal: Some(JournalCalls {
                publish_p50_ns: nearest_rank(&publish_calls, 50),
                publish_p99_ns: nearest_rank(&publish_calls, 99),
                ack_p50_ns: calls.ack_p50_ns,
                ack_p99_ns: calls.ack_p99_ns,
                leases: calls.leases,
                leased: calls.leased,
                retries: stats.retries,
            }),
        })
    }

    fn stats(&self) -> Result<SubscriptionStats> {
        self.nodes[0]
            .event_stats()?
            .into_iter()
            .find(|s| s.id == self.subscription)
            .with_context(|| format!("the journal has no statistics for {}", self.subscription))
    }

    fn delivered(&self) -> Result<u64> {
        Ok(self.stats()?.delivered)
    }
}

/// One publish call.
struct Sent {
    id: String,
    started: Instant,
    returned: Instant,
}

fn first_start(sent: &[Sent]) -> Result<Instant> {
    sent.iter()
        .map(|s| s.started)
        .min()
        .context("nothing was published")
}

/// Publishes `count` messages from `publishers` threads that take the next message number
/// as they go. Each call returns once its message is durable.
/// Flat out each thread publishes again as soon as its call returns; with a `pace`, message
/// n is not published before n / pace seconds after the start. Returns the calls and the
/// CPU the publisher threads used.
fn publish_all(
    nodes: &[Node],
    app: &str,
    count: u32,
    publishers: u32,
    pace: Option<u32>,
) -> Result<(Vec<Sent>, ThreadTimes)> {
    let next = AtomicUsize::new(0);
    let count = count as usize;
    // Leaves the threads time to start; the schedule is the same for all of them.
    let schedule_start = Instant::now() + Duration::from_millis(10);
    let due = |n: usize| {
        pace.map(|rate| schedule_start + Duration::from_secs_f64(n as f64 / f64::from(rate)))
    };
    std::thread::scope(|scope| {
        let threads = (0..publishers)
            .map(|t| {
                let node = &nodes[t as usize % nodes.len()];
                std::thread::Builder::new()
                    .name(PUBLISHER_THREAD.into())
                    .spawn_scoped(scope, || -> Result<(Vec<Sent>, ThreadTimes)> {
                        let mut sent = Vec::with_capacity(count / publishers as usize + 1);
                        let cpu = cpu::this_thread();
                        loop {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= count {
                                return Ok((sent, cpu::this_thread().since(cpu)));
                            }
                            let data = payload(n);
                            if let Some(due) = due(n) {
                                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                            }
                            let started = Instant::now();
                            let published = node
                                .publish(app, TOPIC, data, Some(CONTENT_TYPE.into()), None)
                                .with_context(|| format!("publishing message {n}"))?;
                            let returned = Instant::now();
                            sent.push(Sent {
                                id: published.id,
                                started,
                                returned,
                            });
                        }
                    })
                    .context("starting a publisher thread")
            })
            .collect::<Result<Vec<_>>>()?;
        let mut all = Vec::with_capacity(count);
        let mut used = ThreadTimes::default();
        for thread in threads {
            let (sent, cpu) = thread
                .join()
                .map_err(|_| anyhow::anyhow!("a publisher thread panicked"))??;
            all.extend(sent);
            used.run_ns += cpu.run_ns;
        }
        Ok((all, used))
    })
}

/// CloudEvents requests as the node's invoker builds them, straight to the service's
/// target, `concurrency` at a time: the WebAssembly side of a delivery without the journal.
async fn handler_only(node: Node, settings: Settings) -> Result<Phase> {
    let target = node
        .routes()
        .current()
        .route(None, "/")
        .cloned()
        .context("the bench app has no route for /")?;
    let before = cpu::snapshot()?;
    let permits = Arc::new(Semaphore::new(settings.concurrency as usize));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for n in 0..settings.messages as usize {
        let permit = permits.clone().acquire_owned().await?;
        let target = target.clone();
        tasks.spawn(async move {
            let begun = Instant::now();
            let backend = target.pick().context("the service has no backend")?;
            let id = format!("handler-{n}");
            let lease = backend.service.get().await?;
            let done = lease
                .service()
                .handle_to_completion(cloud_event(&id, n)?, &id, 1 << 20)
                .await?;
            drop(permit);
            if done.status != 200 {
                bail!("the handler answered {}", done.status);
            }
            Ok::<_, anyhow::Error>(nanos(begun.elapsed()))
        });
    }
    let mut latencies = Vec::with_capacity(settings.messages as usize);
    while let Some(done) = tasks.join_next().await {
        latencies.push(done??);
    }
    let wall = started.elapsed();
    let cpu = cpu::snapshot()?.since(&before);
    latencies.sort_unstable();
    Ok(Phase {
        name: PHASE_HANDLER.into(),
        messages: latencies.len() as u64,
        wall_ns: nanos(wall),
        p50_ns: nearest_rank(&latencies, 50),
        p99_ns: nearest_rank(&latencies, 99),
        cpu,
        paced: None,
        journal: None,
    })
}

/// The request a delivery of message `n` becomes (see `cloud_event_request` in
/// crates/node/src/events.rs).
fn cloud_event(id: &str, n: usize) -> Result<hyper::Request<Full<Bytes>>> {
    Ok(hyper::Request::builder()
        .method("POST")
        .uri("/")
        .header("host", format!("{SERVICE}.internal"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", format!("/apps/{APP}"))
        .header("ce-type", "dev.tessera.message")
        .header("ce-time", "2026-01-01T00:00:00.000Z")
        .header("x-tessera-attempt", "1")
        .header("ce-subject", TOPIC)
        .header("content-type", CONTENT_TYPE)
        .body(Full::new(Bytes::from(payload(n))))?)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The node's journal, unchanged, plus a record (shared by every node of a run) of when
/// each acknowledgement of the bench subscription became durable (its `ack` call returned)
/// and how long journal calls took.
struct Watched {
    inner: Arc<dyn Journal>,
    watch: Arc<Watch>,
}

struct Watch {
    subscription: String,
    log: Mutex<AckLog>,
    acked: Condvar,
    leases: AtomicU64,
    leased: AtomicU64,
}

#[derive(Default)]
struct AckLog {
    /// Message id → when its ack returned.
    acks: HashMap<String, Instant>,
    /// How long each ack call took (waiting for its group commit included).
    ack_calls: Vec<u64>,
    /// How many acks the waiting thread needs; it is woken only then, not on every ack,
    /// so waiting costs the measured run no CPU.
    wanted: usize,
}

/// What the journal wrapper saw since its last reset.
struct CallStats {
    ack_p50_ns: u64,
    ack_p99_ns: u64,
    leases: u64,
    leased: u64,
}

impl Watch {
    fn new(subscription: String) -> Watch {
        Watch {
            subscription,
            log: Mutex::new(AckLog::default()),
            acked: Condvar::new(),
            leases: AtomicU64::new(0),
            leased: AtomicU64::new(0),
        }
    }

    fn log(&self) -> MutexGuard<'_, AckLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets everything recorded so far (after the warm-up).
    fn reset(&self) {
        *self.log() = AckLog::default();
        self.leases.store(0, Ordering::Relaxed);
        self.leased.store(0, Ordering::Relaxed);
    }

    /// Waits until `count` distinct messages are acknowledged; fails when acknowledgements
    /// stop coming. Returns when each was acknowledged.
    fn wait_for_acks(&self, count: usize) -> Result<HashMap<String, Instant>> {
        let mut log = self.log();
        log.wanted = count;
        let mut seen = log.acks.len();
        while log.acks.len() < count {
            let (next, timeout) = self
                .acked
                .wait_timeout(log, STALL)
                .unwrap_or_else(PoisonError::into_inner);
            log = next;
            if timeout.timed_out() && log.acks.len() == seen {
                bail!(
                    "no delivery was acknowledged for {STALL:?}; {} of {count} were",
                    log.acks.len()
                );
            }
            seen = log.acks.len();
        }
        Ok(log.acks.clone())
    }

    fn calls(&self) -> CallStats {
        let mut ack_calls = self.log().ack_calls.clone();
        ack_calls.sort_unstable();
        CallStats {
            ack_p50_ns: nearest_rank(&ack_calls, 50),
            ack_p99_ns: nearest_rank(&ack_calls, 99),
            leases: self.leases.load(Ordering::Relaxed),
            leased: self.leased.load(Ordering::Relaxed),
        }
    }
}

impl Watch {
    fn leased(&self, subscription: &str, leased: &[Delivery]) {
        if subscription == self.subscription {
            self.leases.fetch_add(1, Ordering::Relaxed);
            self.leased
                .fetch_add(leased.len() as u64, Ordering::Relaxed);
        }
    }

    fn acked(&self, subscription: &str, message_id: &str, called: Instant) {
        let acked = Instant::now();
        if subscription == self.subscription {
            let mut log = self.log();
            log.acks.entry(message_id.to_owned()).or_insert(acked);
            log.ack_calls.push(nanos(acked - called));
            if log.acks.len() == log.wanted {
                self.acked.notify_all();
            }
        }
    }
}

/// The journal's asynchronous delivery calls, when it has them, watched the same way.
impl AsyncDelivery for Watched {
    fn lease(&self, subscription: &str, max: usize) -> JournalFuture<Vec<Delivery>> {
        let inner = self.async_inner().lease(subscription, max);
        let (watch, subscription) = (self.watch.clone(), subscription.to_owned());
        Box::pin(async move {
            let leased = inner.await?;
            watch.leased(&subscription, &leased);
            Ok(leased)
        })
    }

    fn ack(&self, subscription: &str, message_id: &str, outcome: &Outcome) -> JournalFuture<()> {
        let called = Instant::now();
        let inner = self.async_inner().ack(subscription, message_id, outcome);
        let (watch, subscription, id) = (
            self.watch.clone(),
            subscription.to_owned(),
            message_id.to_owned(),
        );
        Box::pin(async move {
            inner.await?;
            watch.acked(&subscription, &id, called);
            Ok(())
        })
    }

    fn fail(&self, subscription: &str, message_id: &str, outcome: &Outcome) -> JournalFuture<()> {
        self.async_inner().fail(subscription, message_id, outcome)
    }
}

impl Watched {
    fn async_inner(&self) -> &dyn AsyncDelivery {
        self.inner
            .delivery_async()
            .expect("only called when the inner journal has asynchronous delivery calls")
    }
}

impl Journal for Watched {
    fn delivery_async(&self) -> Option<&dyn AsyncDelivery> {
        self.inner
            .delivery_async()
            .map(|_| self as &dyn AsyncDelivery)
    }

    fn register(&self, owner: &str, subs: &[SubscriptionSpec]) -> Result<(), EventError> {
        self.inner.register(owner, subs)
    }

    fn withdraw(&self, owner: &str) -> Result<(), EventError> {
        self.inner.withdraw(owner)
    }

    fn wakeups(&self) -> tokio::sync::broadcast::Receiver<tessera_events::Wakeup> {
        self.inner.wakeups()
    }

    fn publish(&self, app: &str, messages: Vec<NewMessage>) -> Result<Vec<Published>, EventError> {
        self.inner.publish(app, messages)
    }

    fn lease(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, EventError> {
        let leased = self.inner.lease(subscription, max)?;
        self.watch.leased(subscription, &leased);
        Ok(leased)
    }

    fn ack(
        &self,
        subscription: &str,
        message_id: &str,
        outcome: &Outcome,
    ) -> Result<(), EventError> {
        let called = Instant::now();
        self.inner.ack(subscription, message_id, outcome)?;
        self.watch.acked(subscription, message_id, called);
        Ok(())
    }

    fn fail(
        &self,
        subscription: &str,
        message_id: &str,
        outcome: &Outcome,
    ) -> Result<(), EventError> {
        self.inner.fail(subscription, message_id, outcome)
    }

    fn dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, EventError> {
        self.inner.dead_letters(subscription, limit)
    }

    fn dead_letter(
        &self,
        subscription: &str,
        message_id: &str,
    ) -> Result<Option<DeadLetter>, EventError> {
        self.inner.dead_letter(subscription, message_id)
    }

    fn redrive(&self, subscription: &str, ids: Option<&[String]>) -> Result<u64, EventError> {
        self.inner.redrive(subscription, ids)
    }

    fn stats(&self) -> Result<Vec<SubscriptionStats>, EventError> {
        self.inner.stats()
    }

    fn stored_bytes(&self, subscription: &str) -> Result<u64, EventError> {
        self.inner.stored_bytes(subscription)
    }

    fn next_ready(&self, subscription: &str) -> Result<Option<SystemTime>, EventError> {
        self.inner.next_ready(subscription)
    }

    fn status(
        &self,
        subscription: &str,
        message_id: &str,
    ) -> Result<Option<DeliveryStatus>, EventError> {
        self.inner.status(subscription, message_id)
    }

    fn cron_last_tick(&self, schedule: &str) -> Result<Option<SystemTime>, EventError> {
        self.inner.cron_last_tick(schedule)
    }

    fn cron_fire(
        &self,
        app: &str,
        schedule: &str,
        tick: SystemTime,
        message: NewMessage,
    ) -> Result<bool, EventError> {
        self.inner.cron_fire(app, schedule, tick, message)
    }
}
