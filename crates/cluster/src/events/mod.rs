//! [`JetStreamJournal`]: the event journal of a cluster, on JetStream, shared by every node.
//!
//! - **Messages** are published to the stream `TESSERA_EVENTS`, subject
//!   `tessera.events.<app>.<topic>` (both encoded as one token each), with
//!   `Nats-Msg-Id: <app>/<id>`, so a publish retried within the stream's duplicate window
//!   is recognised. A publish returns after JetStream's acknowledgement: the message is on
//!   disk on a majority of its replicas. The stream keeps a message while some
//!   subscription's consumer has not acknowledged it (interest retention).
//! - **A subscription is a durable pull consumer** (`ev-<key>`, the key a hash of its id)
//!   with the topic's subject as its only filter, created when a node first registers it.
//!   Every node that serves the subscription's service pulls from the same consumer, so
//!   deliveries are shared among them; a lease is a pull, the attempt number is the
//!   server's delivery count, an acknowledgement is `+ACK`, a failed attempt a `-NAK` with
//!   the backoff as its delay, and after the last attempt the delivery becomes a dead
//!   letter (`TESSERA_DEAD`) and is terminated (`+TERM`). The consumer's ack wait is the
//!   subscription's timeout, at most [`MAX_ACK_WAIT`]: a node extends its leases with
//!   `+WPI` while the handler runs, so a dead node's deliveries come back within seconds
//!   and a slow handler is not delivered twice.
//! - **Re-drives** publish the dead letter to `tessera.redrive.<key>`, which only that
//!   subscription's second consumer (`rd-<key>`, made on the first re-drive) reads.
//! - **Registrations** are records in `TESSERA_SUBS` (one per subscription: its latest
//!   settings, the nodes that register it, and the stretches of the stream published while
//!   no node did, which it skips), written with [`crate::cas::write_if`].
//! - **Status** of deliveries of the platform's own topics (async invocations) is a record
//!   per delivery in `TESSERA_STATUS`, kept a day.
//! - **Counts** (delivered, retries, in flight) are kept by each node and written to
//!   `TESSERA_SUBS` every second; [`Journal::stats`] adds up every node's.
//! - **Wake-ups** go over core NATS (`tessera.wake`), so a message published through one
//!   node reaches a dispatcher on another without waiting for a poll.

mod records;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tessera_events::{
    AsyncDelivery, DeadLetter, Delivery, DeliveryState, DeliveryStatus, EventError,
    INTERNAL_TOPIC_PREFIX, Journal, JournalFuture, NewMessage, Outcome, Published,
    SubscriptionSpec, SubscriptionStats, WAKEUP_CAPACITY, Wakeup, jitter, retry_delay, unix_ms,
    validate_message, validate_subscriptions,
};
use tokio::sync::broadcast;

use crate::setup::{DEAD_STREAM, EVENTS_STREAM, STATUS_STREAM, SUBS_STREAM};
use crate::{Cluster, REQUEST_TIMEOUT, encode_token};
use records::{
    CountsRecord, DeadHead, MessageMeta, SpecRecord, StatusRecord, SubCounts, SubRecord, capped,
    envelope, open_envelope,
};

/// The longest ack wait of a subscription's consumer. Longer leases are kept alive with
/// `+WPI` while the handler runs, so a delivery held by a node that died is handed out
/// again within this long.
pub const MAX_ACK_WAIT: Duration = Duration::from_secs(5);
/// How long a publish is remembered for deduplication by its id.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// How long dead letters are kept.
pub const DEAD_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a subscription no node registers keeps its consumer (and the messages of its
/// topic) for when it comes back.
pub const PAUSED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long the status of an async invocation is kept.
pub const STATUS_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Most deliveries of one subscription leased or waiting out a retry at once.
pub(crate) const MAX_ACK_PENDING: i64 = 100_000;
/// How old a cached subscription record may be before a lease reads it again.
const RECORD_FRESH: Duration = Duration::from_secs(1);
/// How often a node writes its counts, and polls re-drive consumers.
const EVERY: Duration = Duration::from_secs(1);
/// How long a publish keeps trying while JetStream elects a stream leader or the client
/// reconnects to another server. Trying again is safe: the message id deduplicates.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(10);
/// How long a delivery whose acknowledgement was lost is remembered as handled.
const UNCONFIRMED_KEPT: Duration = Duration::from_secs(600);
/// How long after a re-drive its consumer is pulled on every lease.
const REDRIVE_HOT: Duration = Duration::from_secs(30);
/// Least time between two wake-ups of one topic that a node sends other nodes.
const WAKE_GAP: Duration = Duration::from_millis(2);
/// Core NATS subject of wake-ups.
const WAKE_SUBJECT: &str = "tessera.wake";

/// The cluster's event journal. See the module documentation.
pub struct JetStreamJournal {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for JetStreamJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamJournal").finish_non_exhaustive()
    }
}

struct Shared {
    cluster: Cluster,
    /// This run's id in wake-ups, so a node ignores its own.
    instance: String,
    wakeups: broadcast::Sender<Wakeup>,
    state: Mutex<State>,
    /// The longest ack wait of a consumer ([`MAX_ACK_WAIT`] unless opened with another).
    max_ack_wait: Duration,
}

#[derive(Default)]
struct State {
    /// Subscription records by id, as last read.
    subs: HashMap<String, Cached>,
    /// Consumer handles by name.
    consumers: HashMap<String, PullConsumer>,
    /// Deliveries this node leased and has not answered, by (subscription, message id).
    in_flight: HashMap<(String, String), Lease>,
    /// Retries this node scheduled: when each becomes due, by subscription and message.
    retry_due: HashMap<String, HashMap<String, SystemTime>>,
    /// Subscriptions whose re-drive consumer was last pulled, and when.
    redrive_pulled: HashMap<String, Instant>,
    /// Subscriptions re-driven lately: pull their re-drive consumer on every lease.
    redrive_hot: HashMap<String, Instant>,
    /// This node's counts, by subscription.
    counts: HashMap<String, SubCounts>,
    /// Deliveries this node handled whose acknowledgement the server did not confirm:
    /// acknowledged unseen if they come back.
    unconfirmed: HashMap<(String, String), Instant>,
    /// When other nodes were last told of each (app, topic).
    woken: HashMap<(String, String), Woken>,
    counts_written: bool,
}

struct Woken {
    sent: Instant,
    /// Another wake-up is to be sent at the end of the gap.
    owed: bool,
}

struct Cached {
    record: SubRecord,
    read: Instant,
}

struct Lease {
    reply: String,
    attempt: u32,
    max_attempts: u32,
    message: tessera_events::Message,
    /// Ends at `leased + timeout`; extended with `+WPI` until then.
    leased: Instant,
    timeout: Duration,
    ack_wait: Duration,
    progressed: Instant,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The journal error for a cluster call that failed.
fn storage(action: &str, e: impl std::fmt::Display) -> EventError {
    let message = e.to_string();
    EventError::Storage {
        disk_full: message.contains("insufficient resources"),
        message: format!("cannot {action} in the cluster: {message}"),
    }
}

/// A subscription's key in subjects and consumer names: a hash of its id, so any id fits.
pub(crate) fn sub_key(id: &str) -> String {
    tessera_embedded::digest(id.as_bytes())[..32].to_owned()
}

fn event_subject(app: &str, topic: &str) -> String {
    format!(
        "tessera.events.{}.{}",
        encode_token(app.as_bytes()),
        encode_token(topic.as_bytes())
    )
}

fn redrive_subject(key: &str) -> String {
    format!("tessera.redrive.{key}")
}

fn dead_subject(key: &str, id: &str) -> String {
    format!("tessera.dead.{key}.{}", encode_token(id.as_bytes()))
}

fn status_subject(key: &str, id: &str) -> String {
    format!("tessera.status.{key}.{}", encode_token(id.as_bytes()))
}

fn sub_subject(key: &str) -> String {
    format!("tessera.subs.{key}")
}

fn counts_subject(node: &str) -> String {
    format!("tessera.counts.{node}")
}

fn main_consumer(key: &str) -> String {
    format!("ev-{key}")
}

fn redrive_consumer(key: &str) -> String {
    format!("rd-{key}")
}

/// Whether deliveries of this topic keep a status record (async invocations do).
fn keeps_status(topic: &str) -> bool {
    topic.starts_with(INTERNAL_TOPIC_PREFIX)
}

async fn timed<T, E: std::fmt::Display>(
    action: &str,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, EventError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, future).await {
        Ok(result) => result.map_err(|e| storage(action, e)),
        Err(_) => Err(storage(action, "no answer in time")),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WakeMessage {
    instance: String,
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    subscription: Option<String>,
}

impl JetStreamJournal {
    /// The journal of `cluster` (whose setup made its streams). Starts listening for other
    /// nodes' wake-ups, keeping leases alive and writing this node's counts.
    pub fn open(cluster: &Cluster) -> Result<JetStreamJournal, EventError> {
        Self::open_with(cluster, MAX_ACK_WAIT)
    }

    /// [`JetStreamJournal::open`] with another longest ack wait: how soon a dead node's
    /// deliveries come back, against how often live ones are extended. Every node of a
    /// cluster must use the same (it is a setting of the shared consumers).
    pub fn open_with(
        cluster: &Cluster,
        max_ack_wait: Duration,
    ) -> Result<JetStreamJournal, EventError> {
        let (wakeups, _) = broadcast::channel(WAKEUP_CAPACITY);
        let shared = Arc::new(Shared {
            cluster: cluster.clone(),
            instance: crate::control::operation_id(cluster.node()),
            wakeups,
            state: Mutex::new(State::default()),
            max_ack_wait,
        });
        // Counts carry on from what this node wrote before.
        let own = cluster.bridge().run({
            let shared = shared.clone();
            async move { read_counts(&shared).await }
        })?;
        if let Some(own) = own.get(cluster.node()) {
            let mut state = lock(&shared.state);
            for (id, counts) in &own.subs {
                state.counts.insert(
                    id.clone(),
                    SubCounts {
                        in_flight: 0,
                        ..*counts
                    },
                );
            }
        }
        let subscriber = cluster
            .bridge()
            .run({
                let client = cluster.client();
                async move { client.subscribe(WAKE_SUBJECT).await }
            })
            .map_err(|e| storage("listen for wake-ups", e))?;
        let tasks = vec![
            cluster
                .bridge()
                .spawn(pass_on_wakeups(Arc::downgrade(&shared), subscriber)),
            cluster.bridge().spawn(keep_leases(Arc::downgrade(&shared))),
            cluster
                .bridge()
                .spawn(write_counts(Arc::downgrade(&shared))),
        ];
        Ok(JetStreamJournal { shared, tasks })
    }

    /// Runs `call` on the client's runtime and waits for it.
    fn run<F>(&self, call: impl FnOnce(Arc<Shared>) -> F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.shared.cluster.bridge().run(call(self.shared.clone()))
    }
}

impl Drop for JetStreamJournal {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Whether a publish that failed this way may succeed if sent again soon.
fn passes(kind: jetstream::context::PublishErrorKind) -> bool {
    use jetstream::context::PublishErrorKind::*;
    matches!(kind, StreamNotFound | TimedOut | BrokenPipe)
}

/// Publishes until JetStream acknowledges, trying again while the failure passes (see
/// [`PUBLISH_PATIENCE`]) and `deadline` is not reached.
/// Whether a publish that failed this way certainly stored nothing.
fn stored_nothing(kind: jetstream::context::PublishErrorKind) -> bool {
    kind == jetstream::context::PublishErrorKind::StreamNotFound
}

/// Returns the acknowledgement and whether some send may have been stored unanswered
/// (`unsure` says so of the sends before this call).
async fn publish_patiently(
    js: &jetstream::Context,
    subject: String,
    payload: Bytes,
    msg_id: &str,
    deadline: Instant,
    mut unsure: bool,
) -> Result<(jetstream::publish::PublishAck, bool), EventError> {
    let mut pause = Duration::from_millis(50);
    loop {
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(msg_id);
        let attempt = tokio::time::timeout(REQUEST_TIMEOUT, async {
            js.send_publish(subject.clone(), message).await?.await
        })
        .await;
        let error = match attempt {
            Ok(Ok(ack)) => return Ok((ack, unsure)),
            Ok(Err(e)) if !passes(e.kind()) => return Err(storage("publish a message", e)),
            Ok(Err(e)) => {
                unsure |= !stored_nothing(e.kind());
                e.to_string()
            }
            Err(_) => {
                unsure = true;
                "no answer in time".to_owned()
            }
        };
        if Instant::now() + pause >= deadline {
            return Err(storage("publish a message", error));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Sends an acknowledgement of some kind for a delivery and waits for the server to take
/// it.
async fn answer(client: &async_nats::Client, reply: &str, kind: AckKind) -> Result<(), EventError> {
    let payload: Bytes = kind.into();
    timed(
        "answer a delivery",
        client.request(reply.to_owned(), payload),
    )
    .await
    .map(|_| ())
}

/// Up to `max` messages from a pull consumer: those waiting now, or, with `wait`, those
/// that arrive within it.
async fn pull(
    consumer: &PullConsumer,
    max: usize,
    wait: Option<Duration>,
) -> Result<Vec<jetstream::Message>, EventError> {
    let batch = match wait {
        None => consumer.fetch().max_messages(max).messages().await,
        Some(wait) => {
            consumer
                .batch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await
        }
    };
    let mut batch = batch.map_err(|e| storage("lease deliveries", e))?;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, batch.next()).await {
            Ok(Some(Ok(message))) => out.push(message),
            Ok(Some(Err(e))) => {
                if out.is_empty() {
                    return Err(storage("lease deliveries", e));
                }
                // What was handed out stays leased; the rest comes with the next pull.
                break;
            }
            Ok(None) => break,
            Err(_) if out.is_empty() => {
                return Err(storage("lease deliveries", "no answer in time"));
            }
            Err(_) => break,
        }
    }
    Ok(out)
}

/// The newest message of each subject under `filter` (or, with `DeliverPolicy::All`, every
/// message), up to `limit`: subject, payload and stream sequence.
async fn read_subjects(
    cluster: &Cluster,
    stream_name: &str,
    filter: String,
    policy: DeliverPolicy,
    limit: usize,
) -> Result<Vec<(String, Bytes, u64)>, EventError> {
    let action = "read records";
    let stream = timed(action, cluster.js().get_stream(stream_name)).await?;
    let consumer = timed(
        action,
        stream.create_consumer(consumer::push::OrderedConfig {
            deliver_subject: cluster.client().new_inbox(),
            filter_subject: filter,
            deliver_policy: policy,
            ..Default::default()
        }),
    )
    .await?;
    let mut pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    if pending == 0 || limit == 0 {
        return Ok(out);
    }
    let mut messages = timed(action, consumer.messages()).await?;
    while pending > 0 && out.len() < limit {
        let Some(message) = tokio::time::timeout(REQUEST_TIMEOUT, messages.next())
            .await
            .map_err(|_| storage(action, "no answer in time"))?
        else {
            break;
        };
        let message = message.map_err(|e| storage(action, e))?;
        let info = message.info().map_err(|e| storage(action, e))?;
        pending = info.pending;
        let seq = info.stream_sequence;
        out.push((message.subject.to_string(), message.payload.clone(), seq));
    }
    Ok(out)
}

/// Every node's counts record, by node.
async fn read_counts(shared: &Shared) -> Result<HashMap<String, CountsRecord>, EventError> {
    let found = read_subjects(
        &shared.cluster,
        SUBS_STREAM,
        "tessera.counts.>".into(),
        DeliverPolicy::LastPerSubject,
        usize::MAX,
    )
    .await?;
    let mut out = HashMap::new();
    for (subject, payload, _) in found {
        let node = subject.trim_start_matches("tessera.counts.").to_owned();
        match serde_json::from_slice::<CountsRecord>(&payload) {
            Ok(record) => {
                out.insert(node, record);
            }
            Err(e) => tracing::warn!(node, error = %e, "an unreadable counts record"),
        }
    }
    Ok(out)
}

/// Passes other nodes' wake-ups on to this node's receivers.
async fn pass_on_wakeups(shared: std::sync::Weak<Shared>, mut subscriber: async_nats::Subscriber) {
    while let Some(message) = subscriber.next().await {
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let Ok(wake) = serde_json::from_slice::<WakeMessage>(&message.payload) else {
            continue;
        };
        if wake.instance == shared.instance {
            continue;
        }
        let wakeup = match (wake.app, wake.topic, wake.subscription) {
            (Some(app), Some(topic), _) => Wakeup::Topic { app, topic },
            (_, _, Some(subscription)) => {
                lock(&shared.state)
                    .redrive_hot
                    .insert(subscription.clone(), Instant::now());
                Wakeup::Subscription(subscription)
            }
            _ => continue,
        };
        let _ = shared.wakeups.send(wakeup);
    }
}

/// Extends this node's leases with `+WPI` while they last (their subscription's timeout),
/// and forgets leases nobody answered long after they ended.
async fn keep_leases(shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let now = Instant::now();
        let mut extend = Vec::new();
        {
            let mut state = lock(&shared.state);
            // Bookkeeping that only matters for a while.
            state.woken.retain(|_, w| w.owed || now < w.sent + WAKE_GAP);
            state.redrive_hot.retain(|_, at| now < *at + REDRIVE_HOT);
            state
                .unconfirmed
                .retain(|_, at| now < *at + UNCONFIRMED_KEPT);
            state.in_flight.retain(|_, lease| {
                // Up to when the dispatcher gives up on the handler (nine tenths of the
                // timeout); a delivery whose task is gone comes back soon after.
                let ends = lease.leased + lease.timeout.mul_f64(0.9);
                if now > lease.leased + lease.timeout + shared.max_ack_wait {
                    return false;
                }
                let server_ends = lease.progressed + lease.ack_wait;
                if server_ends < ends && now >= lease.progressed + lease.ack_wait / 2 {
                    lease.progressed = now;
                    extend.push(lease.reply.clone());
                }
                true
            });
        }
        let client = shared.cluster.client();
        for reply in extend {
            if let Err(e) = client.publish(reply, AckKind::Progress.into()).await {
                tracing::debug!(error = %e, "cannot extend a lease");
            }
        }
    }
}

/// Writes this node's counts every second when they changed (and while it holds leases,
/// so the others know its in-flight numbers are current).
async fn write_counts(shared: std::sync::Weak<Shared>) {
    let mut last: Option<HashMap<String, SubCounts>> = None;
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let now = shared.counts_now();
        let busy = now.values().any(|c| c.in_flight > 0);
        if !busy && last.as_ref() == Some(&now) {
            continue;
        }
        let record = CountsRecord {
            updated_ms: unix_ms(SystemTime::now()),
            subs: now.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        };
        let payload = Bytes::from(serde_json::to_vec(&record).expect("records serialise"));
        let subject = counts_subject(shared.cluster.node());
        let written = timed("write delivery counts", async {
            shared.cluster.js().publish(subject, payload).await?.await
        })
        .await;
        match written {
            Ok(_) => {
                lock(&shared.state).counts_written = true;
                last = Some(now);
            }
            Err(e) => tracing::debug!(error = %e, "cannot write delivery counts"),
        }
    }
}

impl Shared {
    fn js(&self) -> jetstream::Context {
        self.cluster.js()
    }

    /// The ack wait of a subscription's consumers: its timeout, at most `max_ack_wait`.
    fn ack_wait(&self, timeout: Duration) -> Duration {
        timeout.min(self.max_ack_wait)
    }

    /// This node's counts with its in-flight numbers as of now.
    fn counts_now(&self) -> HashMap<String, SubCounts> {
        let state = lock(&self.state);
        let mut counts = state.counts.clone();
        for c in counts.values_mut() {
            c.in_flight = 0;
        }
        for (sub, _) in state.in_flight.keys() {
            counts.entry(sub.clone()).or_default().in_flight += 1;
        }
        counts
    }

    fn count(&self, subscription: &str, change: impl FnOnce(&mut SubCounts)) {
        change(
            lock(&self.state)
                .counts
                .entry(subscription.to_owned())
                .or_default(),
        );
    }

    async fn stream(&self, name: &str) -> Result<stream::Stream, EventError> {
        timed("find a stream", self.js().get_stream(name)).await
    }

    async fn events_last_seq(&self) -> Result<u64, EventError> {
        Ok(self
            .stream(EVENTS_STREAM)
            .await?
            .cached_info()
            .state
            .last_sequence)
    }

    /// The active subscriptions of an app's topic, as cached.
    fn subscriptions_of(&self, app: &str, topic: &str) -> Vec<String> {
        lock(&self.state)
            .subs
            .values()
            .map(|cached| &cached.record)
            .filter(|r| r.active() && r.spec.app == app && r.spec.topic == topic)
            .map(|r| r.spec.id.clone())
            .collect()
    }

    fn remember(&self, record: &SubRecord) {
        lock(&self.state).subs.insert(
            record.spec.id.clone(),
            Cached {
                record: record.clone(),
                read: Instant::now(),
            },
        );
    }

    /// The record of subscription `id`, read again when the cached one is older than
    /// `fresh`.
    async fn record(&self, id: &str, fresh: Duration) -> Result<Option<SubRecord>, EventError> {
        if let Some(cached) = lock(&self.state).subs.get(id)
            && cached.read.elapsed() < fresh
        {
            return Ok(Some(cached.record.clone()));
        }
        let stream = self.stream(SUBS_STREAM).await?;
        let current = timed(
            "read a subscription",
            crate::cas::current(&stream, &sub_subject(&sub_key(id))),
        )
        .await?;
        let record = match current.and_then(|c| c.value) {
            Some(value) => Some(
                serde_json::from_slice::<SubRecord>(&value)
                    .map_err(|e| storage("read a subscription", e))?,
            )
            .filter(|r| r.spec.id == id),
            None => None,
        };
        match &record {
            Some(record) => self.remember(record),
            None => {
                lock(&self.state).subs.remove(id);
            }
        }
        Ok(record)
    }

    async fn known(&self, id: &str, fresh: Duration) -> Result<SubRecord, EventError> {
        self.record(id, fresh)
            .await?
            .ok_or_else(|| EventError::UnknownSubscription(id.to_owned()))
    }

    /// Every subscription record.
    async fn all_records(&self) -> Result<Vec<SubRecord>, EventError> {
        let found = read_subjects(
            &self.cluster,
            SUBS_STREAM,
            "tessera.subs.>".into(),
            DeliverPolicy::LastPerSubject,
            usize::MAX,
        )
        .await?;
        let mut records = Vec::new();
        for (subject, payload, _) in found {
            match serde_json::from_slice::<SubRecord>(&payload) {
                Ok(record) => {
                    self.remember(&record);
                    records.push(record);
                }
                Err(e) => tracing::warn!(subject, error = %e, "an unreadable subscription record"),
            }
        }
        Ok(records)
    }

    /// The consumer `name` reading `filter`, created (or its ack wait brought up to date)
    /// when needed, with the settings the server echoes back checked.
    async fn ensure_consumer(
        &self,
        name: &str,
        description: &str,
        filter: String,
        ack_wait: Duration,
    ) -> Result<PullConsumer, EventError> {
        let action = "set up a subscription's consumer";
        let wanted = pull::Config {
            durable_name: Some(name.to_owned()),
            description: Some(description.to_owned()),
            filter_subject: filter,
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            max_deliver: -1,
            max_ack_pending: MAX_ACK_PENDING,
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        };
        let stream = self.stream(EVENTS_STREAM).await?;
        let existing =
            tokio::time::timeout(REQUEST_TIMEOUT, stream.get_consumer::<pull::Config>(name)).await;
        let mut consumer = match existing {
            Ok(Ok(consumer)) if consumer.cached_info().config.ack_wait == ack_wait => consumer,
            // A 2.9 server updates the consumer's editable settings on a create.
            _ => timed(action, stream.create_consumer(wanted.clone())).await?,
        };
        let echoed = timed(action, consumer.info()).await?.config.clone();
        let dropped = |field: &str, wanted: String, found: String| {
            storage(
                action,
                format!(
                    "the server dropped {field} of consumer {name}: asked for {wanted}, holds {found}"
                ),
            )
        };
        if echoed.filter_subject != wanted.filter_subject {
            return Err(dropped(
                "filter_subject",
                wanted.filter_subject,
                echoed.filter_subject,
            ));
        }
        if echoed.ack_wait != ack_wait || echoed.max_deliver != -1 {
            return Err(dropped(
                "ack_wait or max_deliver",
                format!("{ack_wait:?}, -1"),
                format!("{:?}, {}", echoed.ack_wait, echoed.max_deliver),
            ));
        }
        lock(&self.state)
            .consumers
            .insert(name.to_owned(), consumer.clone());
        Ok(consumer)
    }

    /// The subscription's main (or re-drive) consumer.
    async fn consumer(
        &self,
        record: &SubRecord,
        redrive: bool,
    ) -> Result<PullConsumer, EventError> {
        let key = sub_key(&record.spec.id);
        let name = if redrive {
            redrive_consumer(&key)
        } else {
            main_consumer(&key)
        };
        if let Some(consumer) = lock(&self.state).consumers.get(&name) {
            return Ok(consumer.clone());
        }
        let filter = if redrive {
            redrive_subject(&key)
        } else {
            event_subject(&record.spec.app, &record.spec.topic)
        };
        self.ensure_consumer(
            &name,
            &record.spec.id,
            filter,
            self.ack_wait(Duration::from_millis(record.spec.timeout_ms)),
        )
        .await
    }

    /// Pulls from the subscription's main (or re-drive) consumer. A failed pull forgets
    /// the consumer's handle, so the next one finds (or makes) the consumer again.
    async fn pull_from(
        &self,
        record: &SubRecord,
        redrive: bool,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<jetstream::Message>, EventError> {
        let consumer = self.consumer(record, redrive).await?;
        let pulled = pull(&consumer, max, wait).await;
        if pulled.is_err() {
            let key = sub_key(&record.spec.id);
            let name = if redrive {
                redrive_consumer(&key)
            } else {
                main_consumer(&key)
            };
            lock(&self.state).consumers.remove(&name);
        }
        pulled
    }

    /// Writes status records (pipelined), each only if `only_new` finds none yet.
    async fn write_statuses(
        &self,
        records: Vec<(String, StatusRecord)>,
        only_new: bool,
    ) -> Result<(), EventError> {
        let js = self.js();
        let mut acks = Vec::new();
        for (subject, record) in records {
            let mut message = jetstream::message::PublishMessage::build().payload(
                serde_json::to_vec(&record)
                    .expect("records serialise")
                    .into(),
            );
            if only_new {
                message = message.expected_last_subject_sequence(0);
            }
            acks.push(
                timed(
                    "record a delivery's status",
                    js.send_publish(subject, message),
                )
                .await?,
            );
        }
        for ack in acks {
            match tokio::time::timeout(REQUEST_TIMEOUT, ack.into_future()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e))
                    if only_new
                        && e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {}
                Ok(Err(e)) => return Err(storage("record a delivery's status", e)),
                Err(_) => return Err(storage("record a delivery's status", "no answer in time")),
            }
        }
        Ok(())
    }

    async fn read_status(&self, key: &str, id: &str) -> Result<Option<StatusRecord>, EventError> {
        let stream = self.stream(STATUS_STREAM).await?;
        let current = timed(
            "read a delivery's status",
            crate::cas::current(&stream, &status_subject(key, id)),
        )
        .await?;
        match current.and_then(|c| c.value) {
            Some(value) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|e| storage("read a delivery's status", e)),
            None => Ok(None),
        }
    }

    /// The dead letter of message `id`, with its stream sequence.
    async fn read_dead(
        &self,
        key: &str,
        id: &str,
    ) -> Result<Option<(DeadHead, Vec<u8>, u64)>, EventError> {
        let stream = self.stream(DEAD_STREAM).await?;
        let current = timed(
            "read a dead letter",
            crate::cas::current(&stream, &dead_subject(key, id)),
        )
        .await?;
        match current {
            Some(crate::cas::Current {
                value: Some(value),
                seq,
            }) => {
                let (head, data) = open_envelope::<DeadHead>(&value)
                    .map_err(|e| storage("read a dead letter", e))?;
                Ok(Some((head, data, seq)))
            }
            _ => Ok(None),
        }
    }

    /// Removes the dead letter of message `id` at stream sequence `seq` (the one read),
    /// and none written after it.
    async fn remove_dead(&self, key: &str, id: &str, seq: u64) -> Result<(), EventError> {
        let stream = self.stream(DEAD_STREAM).await?;
        timed(
            "remove a dead letter",
            stream
                .purge()
                .filter(dead_subject(key, id))
                .sequence(seq + 1)
                .into_future(),
        )
        .await
        .map(|_| ())
    }

    /// Stores a dead letter and waits for JetStream to acknowledge it.
    async fn write_dead(
        &self,
        key: &str,
        message: &tessera_events::Message,
        attempts: u32,
        last_status: u16,
        last_error: &str,
    ) -> Result<(), EventError> {
        let head = DeadHead {
            message: MessageMeta::of(message),
            attempts,
            last_status,
            last_error: capped(last_error),
            failed_ms: unix_ms(SystemTime::now()),
        };
        let payload = envelope(&head, &message.data);
        timed("store a dead letter", async {
            self.js()
                .publish(dead_subject(key, &message.id), payload)
                .await?
                .await
        })
        .await
        .map(|_| ())
    }

    /// Tells this node's receivers at once, and every other node's, about new work. Other
    /// nodes hear of a topic at most once per [`WAKE_GAP`] from this node (the last of a
    /// burst at the end of the gap): a woken dispatcher leases until nothing is left, so
    /// one wake-up covers every message published just before it, and a flood of
    /// publishes does not cost every node a pull per message.
    async fn wake(self: &Arc<Self>, wakeups: Vec<Wakeup>) {
        for wakeup in wakeups {
            let _ = self.wakeups.send(wakeup.clone());
            let message = match wakeup {
                Wakeup::Topic { app, topic } => {
                    let key = (app.clone(), topic.clone());
                    let send_in = {
                        let mut state = lock(&self.state);
                        let now = Instant::now();
                        match state.woken.get_mut(&key) {
                            Some(w) if now < w.sent + WAKE_GAP => {
                                if w.owed {
                                    continue;
                                }
                                w.owed = true;
                                Some(w.sent + WAKE_GAP - now)
                            }
                            _ => {
                                state.woken.insert(
                                    key.clone(),
                                    Woken {
                                        sent: now,
                                        owed: false,
                                    },
                                );
                                None
                            }
                        }
                    };
                    let message = WakeMessage {
                        instance: self.instance.clone(),
                        app: Some(app),
                        topic: Some(topic),
                        subscription: None,
                    };
                    if let Some(delay) = send_in {
                        let shared = self.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            if let Some(w) = lock(&shared.state).woken.get_mut(&key) {
                                w.sent = Instant::now();
                                w.owed = false;
                            }
                            shared.send_wake(&message).await;
                        });
                        continue;
                    }
                    message
                }
                Wakeup::Subscription(subscription) => WakeMessage {
                    instance: self.instance.clone(),
                    app: None,
                    topic: None,
                    subscription: Some(subscription),
                },
            };
            self.send_wake(&message).await;
        }
    }

    async fn send_wake(&self, message: &WakeMessage) {
        let payload = Bytes::from(serde_json::to_vec(message).expect("records serialise"));
        if let Err(e) = self.cluster.client().publish(WAKE_SUBJECT, payload).await {
            tracing::debug!(error = %e, "cannot send a wake-up; other nodes find the work when they next poll");
        }
    }
}

async fn register(
    shared: Arc<Shared>,
    owner: String,
    subs: Vec<SubscriptionSpec>,
) -> Result<(), EventError> {
    if owner.is_empty() {
        return Err(EventError::Invalid("an owner must not be empty".into()));
    }
    validate_subscriptions(&subs)?;
    let records = shared.all_records().await?;
    let wanted: HashMap<String, SpecRecord> = subs
        .iter()
        .map(|s| (s.id.clone(), SpecRecord::from(s)))
        .collect();
    let mut changes: Vec<(String, Option<SpecRecord>)> = Vec::new();
    for record in &records {
        if record.owners.contains(&owner) && !wanted.contains_key(&record.spec.id) {
            changes.push((record.spec.id.clone(), None));
        }
    }
    let mut ids: Vec<&String> = wanted.keys().collect();
    ids.sort();
    for id in ids {
        let spec = &wanted[id];
        let current = records.iter().find(|r| &r.spec.id == id);
        if current.is_some_and(|r| r.owners.contains(&owner) && &r.spec == spec) {
            continue;
        }
        changes.push((id.clone(), Some(spec.clone())));
    }
    for (id, spec) in changes {
        let key = sub_key(&id);
        let mut floor = 0;
        if let Some(spec) = &spec {
            let wait = shared.ack_wait(Duration::from_millis(spec.timeout_ms));
            let mut consumer = shared
                .ensure_consumer(
                    &main_consumer(&key),
                    &id,
                    event_subject(&spec.app, &spec.topic),
                    wait,
                )
                .await?;
            floor = timed("read a consumer", consumer.info())
                .await?
                .ack_floor
                .stream_sequence;
            if records.iter().any(|r| r.spec.id == id && r.redrive) {
                shared
                    .ensure_consumer(&redrive_consumer(&key), &id, redrive_subject(&key), wait)
                    .await?;
            }
        }
        let last_seq = shared.events_last_seq().await?;
        let written = write_record(&shared, &key, |record| {
            let mut record = match (record, &spec) {
                (Some(record), _) => record,
                (None, Some(spec)) => SubRecord {
                    spec: spec.clone(),
                    owners: BTreeSet::new(),
                    paused_at: None,
                    paused_ms: None,
                    skip: Vec::new(),
                    redrive: false,
                },
                (None, None) => return None,
            };
            if let Some(spec) = &spec {
                record.spec = spec.clone();
            }
            record.set_owner(&owner, spec.is_some(), last_seq, floor);
            Some(record)
        })
        .await?;
        // A pause begins after every message published before it committed: raise its
        // start to the stream's last sequence now (later is the safe side: a message
        // published meanwhile is delivered rather than skipped).
        if let Some(paused) = written.as_ref().and_then(|r| r.paused_at)
            && spec.is_none()
        {
            let now = shared.events_last_seq().await?;
            if now > paused {
                write_record(&shared, &key, |record| {
                    let mut record = record?;
                    (record.paused_at == Some(paused)).then(|| {
                        record.paused_at = Some(now);
                        record
                    })
                })
                .await?;
            }
        }
    }
    forget_long_paused(&shared, &records).await;
    Ok(())
}

/// Writes subscription record `key` as `change` makes it from the current one (`None`:
/// write nothing), conditionally; returns what was written.
async fn write_record(
    shared: &Shared,
    key: &str,
    mut change: impl FnMut(Option<SubRecord>) -> Option<SubRecord>,
) -> Result<Option<SubRecord>, EventError> {
    let mut written = None;
    crate::cas::write_if(
        &shared.js(),
        SUBS_STREAM,
        &sub_subject(key),
        |e| storage("write a subscription record", e),
        |current| {
            let record = match current.and_then(|c| c.value.as_ref()) {
                Some(value) => Some(
                    serde_json::from_slice::<SubRecord>(value)
                        .map_err(|e| storage("read a subscription record", e))?,
                ),
                None => None,
            };
            let Some(record) = change(record) else {
                written = None;
                return Ok(None);
            };
            let payload = serde_json::to_vec(&record).expect("records serialise");
            written = Some(record);
            Ok(Some(crate::cas::Write {
                payload: payload.into(),
                headers: Default::default(),
            }))
        },
    )
    .await?;
    if let Some(record) = &written {
        shared.remember(record);
    }
    Ok(written)
}

/// Deletes the consumers and records of subscriptions no node has registered for
/// [`PAUSED_RETENTION`]: their messages are released, and they start afresh if they come
/// back.
async fn forget_long_paused(shared: &Shared, records: &[SubRecord]) {
    let before = unix_ms(SystemTime::now())
        - i64::try_from(PAUSED_RETENTION.as_millis()).unwrap_or(i64::MAX);
    let long_paused =
        |record: &SubRecord| !record.active() && record.paused_ms.is_some_and(|at| at <= before);
    for record in records.iter().filter(|r| long_paused(r)) {
        // Read again: this very registration may have brought it back.
        match shared.record(&record.spec.id, Duration::ZERO).await {
            Ok(Some(now)) if long_paused(&now) => {}
            _ => continue,
        }
        let key = sub_key(&record.spec.id);
        let forgotten = async {
            let events = shared.stream(EVENTS_STREAM).await?;
            for name in [main_consumer(&key), redrive_consumer(&key)] {
                let _ = timed("delete a consumer", events.delete_consumer(&name)).await;
                lock(&shared.state).consumers.remove(&name);
            }
            let subs = shared.stream(SUBS_STREAM).await?;
            timed(
                "forget a subscription",
                subs.purge().filter(sub_subject(&key)).into_future(),
            )
            .await?;
            lock(&shared.state).subs.remove(&record.spec.id);
            Ok::<_, EventError>(())
        };
        match forgotten.await {
            Ok(()) => tracing::info!(
                subscription = record.spec.id,
                "forgot a subscription no node registered for a week"
            ),
            Err(e) => {
                tracing::warn!(subscription = record.spec.id, error = %e, "cannot forget a long-paused subscription")
            }
        }
    }
}

async fn publish(
    shared: Arc<Shared>,
    app: String,
    messages: Vec<NewMessage>,
) -> Result<Vec<Published>, EventError> {
    let max_payload = shared.cluster.client().server_info().max_payload;
    let time_ms = unix_ms(SystemTime::now());
    let mut prepared = Vec::with_capacity(messages.len());
    for message in messages {
        let id = message
            .id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let meta = MessageMeta {
            id: id.clone(),
            topic: message.topic.clone(),
            source: message.source,
            kind: message.kind,
            time_ms,
            content_type: message.content_type,
            attributes: message.attributes,
        };
        let payload = envelope(&meta, &message.data);
        if payload.len() + 1024 > max_payload {
            return Err(EventError::Invalid(format!(
                "message to topic {:?}: its payload and attributes are {} bytes, more than the cluster's limit of {} bytes",
                message.topic,
                payload.len(),
                max_payload - 1024
            )));
        }
        prepared.push((id, message.topic, payload));
    }
    // The status of an async invocation exists before anyone can lease it.
    let mut statuses = Vec::new();
    for (id, topic, _) in &prepared {
        if !keeps_status(topic) {
            continue;
        }
        let mut subscribed = shared.subscriptions_of(&app, topic);
        if subscribed.is_empty() {
            // This node may not have read a registration made through another yet.
            shared.all_records().await?;
            subscribed = shared.subscriptions_of(&app, topic);
        }
        for subscription in subscribed {
            statuses.push((
                status_subject(&sub_key(&subscription), id),
                StatusRecord::new(DeliveryState::Pending, 0, None),
            ));
        }
    }
    if !statuses.is_empty() {
        shared.write_statuses(statuses, true).await?;
    }
    let js = shared.js();
    let deadline = Instant::now() + PUBLISH_PATIENCE;
    // All sent at once, then each acknowledgement awaited; one that fails for a reason
    // that passes (no stream leader yet, a reconnect) is sent again on its own.
    let mut sent = Vec::with_capacity(prepared.len());
    for (id, topic, payload) in prepared {
        let subject = event_subject(&app, &topic);
        let msg_id = format!("{app}/{id}");
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(&msg_id);
        let ack = js.send_publish(subject.clone(), message).await.ok();
        sent.push((id, topic, subject, msg_id, payload, ack));
    }
    let mut published = Vec::with_capacity(sent.len());
    let mut woken: Vec<String> = Vec::new();
    for (id, topic, subject, msg_id, payload, ack) in sent {
        // `unsure`: an earlier send may have been stored without its answer reaching us,
        // so a later "duplicate" is that send, and the message is new.
        let (first, unsure) = match ack {
            Some(ack) => match tokio::time::timeout(REQUEST_TIMEOUT, ack.into_future()).await {
                Ok(Ok(ack)) => (Some(ack), false),
                Ok(Err(e)) if !passes(e.kind()) => return Err(storage("publish a message", e)),
                Ok(Err(e)) => (None, !stored_nothing(e.kind())),
                Err(_) => (None, true),
            },
            None => (None, true),
        };
        let (ack, unsure) = match first {
            Some(ack) => (ack, false),
            None => publish_patiently(&js, subject, payload, &msg_id, deadline, unsure).await?,
        };
        let new = !ack.duplicate || unsure;
        if new && !woken.contains(&topic) {
            woken.push(topic);
        }
        published.push(Published { id, new });
    }
    shared
        .wake(
            woken
                .into_iter()
                .map(|topic| Wakeup::Topic {
                    app: app.clone(),
                    topic,
                })
                .collect(),
        )
        .await;
    Ok(published)
}

/// How many pulls one lease makes at most while every message it pulls is skipped (they
/// were published while no node registered the subscription).
const MAX_SKIPPING_PULLS: usize = 64;

async fn lease(
    shared: Arc<Shared>,
    subscription: String,
    max: usize,
) -> Result<Vec<Delivery>, EventError> {
    let record = shared.known(&subscription, RECORD_FRESH).await?;
    if !record.active() || max == 0 {
        return Ok(Vec::new());
    }
    let spec = record.spec.spec();
    let key = sub_key(&subscription);
    let client = shared.cluster.client();
    let mut deliveries = Vec::new();
    let mut statuses = Vec::new();
    for round in 0..MAX_SKIPPING_PULLS {
        let got = pull_due(&shared, &record, max - deliveries.len(), round == 0).await?;
        if got.is_empty() {
            break;
        }
        let pulled = Instant::now();
        let mut skipped = 0;
        // From here on nothing returns early: every pulled message is either handed out,
        // answered, or left to come back when its ack wait ends.
        for message in got {
            let Some(reply) = message.reply.as_ref().map(|r| r.to_string()) else {
                continue;
            };
            let Ok(info) = message.info() else {
                continue;
            };
            let seq = info.stream_sequence;
            let attempt = u32::try_from(info.delivered).unwrap_or(u32::MAX);
            let redriven = message.subject.starts_with("tessera.redrive.");
            if !redriven && record.skips(seq) {
                // Published while no node registered the subscription: not its message.
                skipped += 1;
                let _ = client.publish(reply, AckKind::Ack.into()).await;
                continue;
            }
            let (meta, data) = match open_envelope::<MessageMeta>(&message.payload) {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::error!(subscription, seq, error = %e, "a stored event cannot be read; it is dropped");
                    let _ = client.publish(reply, AckKind::Term.into()).await;
                    continue;
                }
            };
            let message = meta.into_message(data);
            let id = (subscription.clone(), message.id.clone());
            let unconfirmed = lock(&shared.state).unconfirmed.remove(&id).is_some();
            if unconfirmed {
                // Handled here already; only the acknowledgement was lost.
                let _ = answer(&client, &reply, AckKind::Ack).await;
                continue;
            }
            if attempt > spec.max_attempts {
                expired_last_attempt(&shared, &spec, &key, &reply, &message, &mut statuses).await;
                continue;
            }
            if keeps_status(&spec.topic) {
                let mut status = StatusRecord::new(DeliveryState::Running, attempt, None);
                status.expires_ms = Some(unix_ms(SystemTime::now() + spec.timeout));
                statuses.push((status_subject(&key, &message.id), status));
            }
            lock(&shared.state).in_flight.insert(
                id,
                Lease {
                    reply,
                    attempt,
                    max_attempts: spec.max_attempts,
                    message: message.clone(),
                    leased: pulled,
                    timeout: spec.timeout,
                    ack_wait: shared.ack_wait(spec.timeout),
                    progressed: pulled,
                },
            );
            deliveries.push(Delivery {
                subscription: subscription.clone(),
                message,
                attempt,
            });
        }
        // Pull again only past a stretch of skipped messages, so new ones behind it are not
        // kept waiting for the next poll.
        if skipped == 0 || deliveries.len() >= max {
            break;
        }
    }
    if !statuses.is_empty()
        && let Err(e) = shared.write_statuses(statuses, false).await
    {
        tracing::warn!(subscription, error = %e, "cannot record that deliveries started");
    }
    Ok(deliveries)
}

/// Up to `max` messages of the subscription: from its re-drive consumer when re-drives may
/// be waiting, then from its main consumer (waiting briefly when a retry this node
/// scheduled is due).
async fn pull_due(
    shared: &Arc<Shared>,
    record: &SubRecord,
    max: usize,
    first: bool,
) -> Result<Vec<jetstream::Message>, EventError> {
    let subscription = &record.spec.id;
    let mut got = Vec::new();
    if record.redrive && first {
        let pull_now = {
            let mut state = lock(&shared.state);
            let hot = state
                .redrive_hot
                .get(subscription)
                .is_some_and(|at| at.elapsed() < REDRIVE_HOT);
            let due = state
                .redrive_pulled
                .get(subscription)
                .is_none_or(|at| at.elapsed() >= EVERY);
            if hot || due {
                state
                    .redrive_pulled
                    .insert(subscription.clone(), Instant::now());
            }
            hot || due
        };
        if pull_now {
            got = shared.pull_from(record, true, max, None).await?;
            if !got.is_empty() {
                lock(&shared.state)
                    .redrive_hot
                    .insert(subscription.clone(), Instant::now());
            }
        }
    }
    if got.len() < max {
        got.extend(
            shared
                .pull_from(record, false, max - got.len(), None)
                .await?,
        );
    }
    if first {
        // A retry this node scheduled is due: the server may release it a moment after
        // the time it was asked for.
        let now = SystemTime::now();
        let retry_due = lock(&shared.state)
            .retry_due
            .get(subscription)
            .is_some_and(|due| due.values().any(|at| *at <= now));
        if got.len() < max && retry_due {
            got.extend(
                shared
                    .pull_from(
                        record,
                        false,
                        max - got.len(),
                        Some(Duration::from_millis(50)),
                    )
                    .await?,
            );
        }
        let mut state = lock(&shared.state);
        if let Some(due) = state.retry_due.get_mut(subscription) {
            due.retain(|_, at| *at > now);
            if due.is_empty() {
                state.retry_due.remove(subscription);
            }
        }
    }
    Ok(got)
}

/// A message fetched after its last attempt's lease ran out without an answer (its node
/// died, or gave up on it): a dead letter, unless one was written already (a `+TERM`
/// that did not arrive), terminated either way.
async fn expired_last_attempt(
    shared: &Arc<Shared>,
    spec: &SubscriptionSpec,
    key: &str,
    reply: &str,
    message: &tessera_events::Message,
    statuses: &mut Vec<(String, StatusRecord)>,
) {
    let client = shared.cluster.client();
    lock(&shared.state)
        .in_flight
        .remove(&(spec.id.clone(), message.id.clone()));
    let written = match shared.read_dead(key, &message.id).await {
        Ok(Some(_)) => true,
        Ok(None) => {
            let error = format!(
                "no outcome before the lease of attempt {} expired",
                spec.max_attempts
            );
            match shared
                .write_dead(key, message, spec.max_attempts, 0, &error)
                .await
            {
                Ok(()) => {
                    shared.count(&spec.id, |c| c.retries += 1);
                    if keeps_status(&spec.topic) {
                        let outcome = Outcome::error(error);
                        statuses.push((
                            status_subject(key, &message.id),
                            StatusRecord::new(
                                DeliveryState::Failed,
                                spec.max_attempts,
                                Some(&outcome),
                            ),
                        ));
                    }
                    true
                }
                Err(e) => {
                    tracing::warn!(subscription = spec.id, error = %e, "cannot store a dead letter; the delivery comes back");
                    false
                }
            }
        }
        Err(e) => {
            tracing::warn!(subscription = spec.id, error = %e, "cannot read dead letters; the delivery comes back");
            false
        }
    };
    if written {
        let _ = answer(&client, reply, AckKind::Term).await;
    }
}

/// How many times an answer to a delivery is sent before the call fails (answers are
/// idempotent; a reconnect or a consumer leader change can lose one).
const ANSWER_TRIES: usize = 3;

async fn answer_patiently(
    client: &async_nats::Client,
    reply: &str,
    kind: AckKind,
) -> Result<(), EventError> {
    let mut last = None;
    for attempt in 0..ANSWER_TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
        }
        let payload: Bytes = kind.into();
        match tokio::time::timeout(REQUEST_TIMEOUT, client.request(reply.to_owned(), payload)).await
        {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => last = Some("no answer in time".into()),
        }
    }
    Err(storage("answer a delivery", last.unwrap_or_default()))
}

async fn ack(
    shared: Arc<Shared>,
    subscription: String,
    id: String,
    outcome: Outcome,
) -> Result<(), EventError> {
    let record = shared.known(&subscription, Duration::MAX).await?;
    let key = sub_key(&subscription);
    let status_of = |attempts| {
        (
            status_subject(&key, &id),
            StatusRecord::new(DeliveryState::Succeeded, attempts, Some(&outcome)),
        )
    };
    let lease = lock(&shared.state)
        .in_flight
        .remove(&(subscription.clone(), id.clone()));
    let Some(lease) = lease else {
        // A late success of a delivery dead-lettered meanwhile still counts.
        if let Some((head, _, seq)) = shared.read_dead(&key, &id).await? {
            shared.remove_dead(&key, &id, seq).await?;
            shared.count(&subscription, |c| c.delivered += 1);
            if keeps_status(&record.spec.topic) {
                shared
                    .write_statuses(vec![status_of(head.attempts)], false)
                    .await?;
            }
            return Ok(());
        }
        if keeps_status(&record.spec.topic) {
            return match shared.read_status(&key, &id).await? {
                Some(status) if status.state == DeliveryState::Succeeded.as_str() => Ok(()),
                _ => Err(EventError::NoDelivery {
                    subscription,
                    message: id,
                }),
            };
        }
        // Answered before (acknowledging twice is harmless).
        return Ok(());
    };
    // The result is recorded before the server lets go of the delivery, so a status read
    // never says pending after a success.
    if keeps_status(&record.spec.topic) {
        shared
            .write_statuses(vec![status_of(lease.attempt)], false)
            .await?;
    }
    if let Err(e) = answer_patiently(&shared.cluster.client(), &lease.reply, AckKind::Ack).await {
        // It comes back when its ack wait ends; this node then acknowledges it unseen
        // rather than run it again or dead-letter it.
        lock(&shared.state)
            .unconfirmed
            .insert((subscription, id), Instant::now());
        return Err(e);
    }
    shared.count(&subscription, |c| c.delivered += 1);
    if lease.attempt >= lease.max_attempts {
        // Its lease may have lapsed, and another node dead-lettered it meanwhile.
        if let Some((_, _, seq)) = shared.read_dead(&key, &id).await? {
            shared.remove_dead(&key, &id, seq).await?;
        }
    }
    Ok(())
}

async fn fail(
    shared: Arc<Shared>,
    subscription: String,
    id: String,
    outcome: Outcome,
) -> Result<(), EventError> {
    let record = shared.known(&subscription, Duration::MAX).await?;
    let spec = record.spec.spec();
    let key = sub_key(&subscription);
    let Some(lease) = lock(&shared.state)
        .in_flight
        .remove(&(subscription.clone(), id.clone()))
    else {
        return Ok(());
    };
    shared.count(&subscription, |c| c.retries += 1);
    let client = shared.cluster.client();
    let status = if lease.attempt >= spec.max_attempts {
        shared
            .write_dead(
                &key,
                &lease.message,
                lease.attempt,
                outcome.status,
                &outcome.describe(),
            )
            .await?;
        // A lost `+TERM` only brings the delivery back once more, to be terminated unseen
        // (its dead letter exists).
        if let Err(e) = answer_patiently(&client, &lease.reply, AckKind::Term).await {
            tracing::debug!(subscription, error = %e, "a dead letter's delivery was not terminated");
        }
        StatusRecord::new(DeliveryState::Failed, lease.attempt, Some(&outcome))
    } else {
        let delay = jitter(retry_delay(lease.attempt, spec.backoff, spec.max_backoff));
        let due = SystemTime::now() + delay;
        answer_patiently(&client, &lease.reply, AckKind::Nak(Some(delay))).await?;
        lock(&shared.state)
            .retry_due
            .entry(subscription.clone())
            .or_default()
            .insert(id.clone(), due);
        StatusRecord::new(DeliveryState::Pending, lease.attempt, Some(&outcome))
    };
    if keeps_status(&spec.topic) {
        shared
            .write_statuses(vec![(status_subject(&key, &id), status)], false)
            .await?;
    }
    Ok(())
}

async fn dead_letters(
    shared: Arc<Shared>,
    subscription: String,
    limit: usize,
) -> Result<Vec<(DeadLetter, u64)>, EventError> {
    shared.known(&subscription, RECORD_FRESH).await?;
    let key = sub_key(&subscription);
    let found = read_subjects(
        &shared.cluster,
        DEAD_STREAM,
        format!("tessera.dead.{key}.>"),
        DeliverPolicy::All,
        limit,
    )
    .await?;
    let mut out = Vec::with_capacity(found.len());
    for (subject, payload, seq) in found {
        match open_envelope::<DeadHead>(&payload) {
            Ok((head, data)) => out.push((head.into_dead_letter(data), seq)),
            Err(e) => tracing::warn!(subject, error = %e, "an unreadable dead letter"),
        }
    }
    Ok(out)
}

async fn redrive(
    shared: Arc<Shared>,
    subscription: String,
    ids: Option<Vec<String>>,
) -> Result<u64, EventError> {
    let record = shared.known(&subscription, RECORD_FRESH).await?;
    let key = sub_key(&subscription);
    let dead: Vec<(DeadLetter, u64)> = match ids {
        None => dead_letters(shared.clone(), subscription.clone(), usize::MAX).await?,
        Some(ids) => {
            let mut found = Vec::new();
            let mut seen = HashSet::new();
            for id in ids {
                if !seen.insert(id.clone()) {
                    continue;
                }
                if let Some((head, data, seq)) = shared.read_dead(&key, &id).await? {
                    found.push((head.into_dead_letter(data), seq));
                }
            }
            found
        }
    };
    if dead.is_empty() {
        return Ok(0);
    }
    // The re-drive consumer exists before anything is published to it.
    shared.consumer(&record, true).await?;
    if !record.redrive {
        let written = write_record(&shared, &key, |record| {
            let mut record = record?;
            (!record.redrive).then(|| {
                record.redrive = true;
                record
            })
        })
        .await?;
        if written.is_none() {
            shared.record(&subscription, Duration::ZERO).await?;
        }
    }
    let js = shared.js();
    let mut statuses = Vec::new();
    for (letter, seq) in &dead {
        let payload = envelope(&MessageMeta::of(&letter.message), &letter.message.data);
        let message = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(format!("redrive/{key}/{seq}"));
        timed("re-drive a dead letter", async {
            js.send_publish(redrive_subject(&key), message).await?.await
        })
        .await?;
        shared.remove_dead(&key, &letter.message.id, *seq).await?;
        if keeps_status(&record.spec.topic) {
            statuses.push((
                status_subject(&key, &letter.message.id),
                StatusRecord::new(DeliveryState::Pending, 0, None),
            ));
        }
    }
    if !statuses.is_empty() {
        shared.write_statuses(statuses, false).await?;
    }
    lock(&shared.state)
        .redrive_hot
        .insert(subscription.clone(), Instant::now());
    shared.wake(vec![Wakeup::Subscription(subscription)]).await;
    Ok(dead.len() as u64)
}

/// How many messages of `subject` the stream holds after sequence `after`.
async fn count_after(shared: &Shared, subject: String, after: u64) -> Result<u64, EventError> {
    let action = "count messages";
    let stream = shared.stream(EVENTS_STREAM).await?;
    let consumer = timed(
        action,
        stream.create_consumer(consumer::push::OrderedConfig {
            deliver_subject: shared.cluster.client().new_inbox(),
            filter_subject: subject,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            headers_only: true,
            ..Default::default()
        }),
    )
    .await?;
    Ok(consumer.cached_info().num_pending)
}

async fn stats(shared: Arc<Shared>) -> Result<Vec<SubscriptionStats>, EventError> {
    let records = shared.all_records().await?;
    let others = read_counts(&shared).await?;
    let own = shared.counts_now();
    let node = shared.cluster.node().to_owned();
    let fresh_after = unix_ms(SystemTime::now()) - 3 * EVERY.as_millis() as i64;
    let stream = shared.stream(EVENTS_STREAM).await?;
    let dead_stream = shared.stream(DEAD_STREAM).await?;
    let mut out = Vec::new();
    for record in records {
        let id = record.spec.id.clone();
        let key = sub_key(&id);
        let mut pending = 0u64;
        let mut ack_pending = 0u64;
        let mut names = vec![main_consumer(&key)];
        if record.redrive {
            names.push(redrive_consumer(&key));
        }
        for name in names {
            match tokio::time::timeout(REQUEST_TIMEOUT, stream.consumer_info(&name)).await {
                Ok(Ok(info)) => {
                    pending += info.num_pending;
                    ack_pending += info.num_ack_pending as u64;
                }
                Ok(Err(e)) => tracing::debug!(consumer = name, error = %e, "no consumer info"),
                Err(_) => return Err(storage("count deliveries", "no answer in time")),
            }
        }
        if let Some(at) = record.paused_at {
            let skipped = count_after(
                &shared,
                event_subject(&record.spec.app, &record.spec.topic),
                at,
            )
            .await?;
            pending = pending.saturating_sub(skipped);
        }
        let mut dead = 0u64;
        let mut subjects = timed(
            "count dead letters",
            dead_stream.info_with_subjects(format!("tessera.dead.{key}.>")),
        )
        .await?;
        while let Some(entry) = tokio::time::timeout(REQUEST_TIMEOUT, subjects.next())
            .await
            .map_err(|_| storage("count dead letters", "no answer in time"))?
        {
            entry.map_err(|e| storage("count dead letters", e))?;
            dead += 1;
        }
        let mut counts = own.get(&id).copied().unwrap_or_default();
        for (other, record) in &others {
            if other == &node {
                continue;
            }
            if let Some(c) = record.subs.get(&id) {
                counts.delivered += c.delivered;
                counts.retries += c.retries;
                if record.updated_ms >= fresh_after {
                    counts.in_flight += c.in_flight;
                }
            }
        }
        let in_flight = counts.in_flight.min(ack_pending);
        let retrying = ack_pending - in_flight;
        let stats = SubscriptionStats {
            id,
            active: record.active(),
            ready: pending + retrying,
            in_flight,
            retrying,
            dead,
            delivered: counts.delivered,
            retries: counts.retries,
        };
        if stats.active || stats.ready + stats.in_flight + stats.dead > 0 {
            out.push(stats);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

async fn stored_bytes(shared: Arc<Shared>, subscription: String) -> Result<u64, EventError> {
    let Some(record) = shared.record(&subscription, Duration::MAX).await? else {
        return Ok(0);
    };
    let stream = shared.stream(EVENTS_STREAM).await?;
    let state = &stream.cached_info().state;
    if state.messages == 0 {
        return Ok(0);
    }
    let average = state.bytes / state.messages;
    let subject = event_subject(&record.spec.app, &record.spec.topic);
    let mut subjects = timed(
        "measure stored messages",
        stream.info_with_subjects(&subject),
    )
    .await?;
    let mut count = 0u64;
    while let Some(entry) = tokio::time::timeout(REQUEST_TIMEOUT, subjects.next())
        .await
        .map_err(|_| storage("measure stored messages", "no answer in time"))?
    {
        let (_, n) = entry.map_err(|e| storage("measure stored messages", e))?;
        count += n as u64;
    }
    Ok(count * average)
}

async fn status(
    shared: Arc<Shared>,
    subscription: String,
    id: String,
) -> Result<Option<DeliveryStatus>, EventError> {
    let record = shared.known(&subscription, RECORD_FRESH).await?;
    let key = sub_key(&subscription);
    if keeps_status(&record.spec.topic) {
        return Ok(shared
            .read_status(&key, &id)
            .await?
            .map(|s| s.status(SystemTime::now())));
    }
    // Other subscriptions keep no status; a dead letter still tells its story.
    Ok(shared
        .read_dead(&key, &id)
        .await?
        .map(|(head, _, _)| DeliveryStatus {
            state: DeliveryState::Failed,
            attempts: head.attempts,
            last: Some(Outcome {
                status: head.last_status,
                body: Vec::new(),
                error: Some(head.last_error.clone()),
            }),
            updated: tessera_events::from_unix_ms(head.failed_ms),
        }))
}

async fn cron_last_tick(shared: Arc<Shared>, schedule: String) -> Option<SystemTime> {
    crate::ticks::cluster_last_tick(&shared.js(), &schedule).await
}

async fn cron_fire(
    shared: Arc<Shared>,
    app: String,
    schedule: String,
    tick: SystemTime,
    message: NewMessage,
) -> Result<bool, EventError> {
    let published = publish(shared.clone(), app, vec![message]).await?;
    crate::ticks::record_last_tick(&shared.js(), &schedule, tick).await?;
    Ok(published.first().is_some_and(|p| p.new))
}

/// The delivery calls run on the caller's runtime: they only hand requests to the client's
/// connection (which stays on the client's own runtime) and await the answers.
impl AsyncDelivery for JetStreamJournal {
    fn lease(&self, subscription: &str, max: usize) -> JournalFuture<Vec<Delivery>> {
        Box::pin(lease(self.shared.clone(), subscription.to_owned(), max))
    }

    fn ack(&self, subscription: &str, message_id: &str, outcome: &Outcome) -> JournalFuture<()> {
        Box::pin(ack(
            self.shared.clone(),
            subscription.to_owned(),
            message_id.to_owned(),
            outcome.clone(),
        ))
    }

    fn fail(&self, subscription: &str, message_id: &str, outcome: &Outcome) -> JournalFuture<()> {
        Box::pin(fail(
            self.shared.clone(),
            subscription.to_owned(),
            message_id.to_owned(),
            outcome.clone(),
        ))
    }
}

impl Journal for JetStreamJournal {
    fn delivery_async(&self) -> Option<&dyn AsyncDelivery> {
        Some(self)
    }

    fn register(&self, owner: &str, subs: &[SubscriptionSpec]) -> Result<(), EventError> {
        let (owner, subs) = (owner.to_owned(), subs.to_vec());
        self.run(move |shared| register(shared, owner, subs))
    }

    fn withdraw(&self, owner: &str) -> Result<(), EventError> {
        let owner = owner.to_owned();
        self.run(move |shared| register(shared, owner, Vec::new()))
    }

    fn wakeups(&self) -> broadcast::Receiver<Wakeup> {
        self.shared.wakeups.subscribe()
    }

    fn publish(&self, app: &str, messages: Vec<NewMessage>) -> Result<Vec<Published>, EventError> {
        if app.is_empty() {
            return Err(EventError::Invalid("an app must not be empty".into()));
        }
        for message in &messages {
            validate_message(message)?;
        }
        let app = app.to_owned();
        self.run(move |shared| publish(shared, app, messages))
    }

    fn lease(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, EventError> {
        let subscription = subscription.to_owned();
        self.run(move |shared| lease(shared, subscription, max))
    }

    fn ack(
        &self,
        subscription: &str,
        message_id: &str,
        outcome: &Outcome,
    ) -> Result<(), EventError> {
        let (subscription, id, outcome) = (
            subscription.to_owned(),
            message_id.to_owned(),
            outcome.clone(),
        );
        self.run(move |shared| ack(shared, subscription, id, outcome))
    }

    fn fail(
        &self,
        subscription: &str,
        message_id: &str,
        outcome: &Outcome,
    ) -> Result<(), EventError> {
        let (subscription, id, outcome) = (
            subscription.to_owned(),
            message_id.to_owned(),
            outcome.clone(),
        );
        self.run(move |shared| fail(shared, subscription, id, outcome))
    }

    fn dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, EventError> {
        let subscription = subscription.to_owned();
        let found = self.run(move |shared| dead_letters(shared, subscription, limit))?;
        Ok(found.into_iter().map(|(letter, _)| letter).collect())
    }

    fn dead_letter(
        &self,
        subscription: &str,
        message_id: &str,
    ) -> Result<Option<DeadLetter>, EventError> {
        let (subscription, id) = (subscription.to_owned(), message_id.to_owned());
        self.run(move |shared| async move {
            shared.known(&subscription, RECORD_FRESH).await?;
            Ok(shared
                .read_dead(&sub_key(&subscription), &id)
                .await?
                .map(|(head, data, _)| head.into_dead_letter(data)))
        })
    }

    fn redrive(&self, subscription: &str, ids: Option<&[String]>) -> Result<u64, EventError> {
        let (subscription, ids) = (subscription.to_owned(), ids.map(<[String]>::to_vec));
        self.run(move |shared| redrive(shared, subscription, ids))
    }

    fn stats(&self) -> Result<Vec<SubscriptionStats>, EventError> {
        self.run(stats)
    }

    fn stored_bytes(&self, subscription: &str) -> Result<u64, EventError> {
        let subscription = subscription.to_owned();
        self.run(move |shared| stored_bytes(shared, subscription))
    }

    fn next_ready(&self, subscription: &str) -> Result<Option<SystemTime>, EventError> {
        Ok(lock(&self.shared.state)
            .retry_due
            .get(subscription)
            .and_then(|due| due.values().min().copied()))
    }

    fn status(
        &self,
        subscription: &str,
        message_id: &str,
    ) -> Result<Option<DeliveryStatus>, EventError> {
        let (subscription, id) = (subscription.to_owned(), message_id.to_owned());
        self.run(move |shared| status(shared, subscription, id))
    }

    fn cron_last_tick(&self, schedule: &str) -> Result<Option<SystemTime>, EventError> {
        let schedule = schedule.to_owned();
        Ok(self.run(move |shared| cron_last_tick(shared, schedule)))
    }

    fn cron_fire(
        &self,
        app: &str,
        schedule: &str,
        tick: SystemTime,
        message: NewMessage,
    ) -> Result<bool, EventError> {
        validate_message(&message)?;
        let (app, schedule) = (app.to_owned(), schedule.to_owned());
        self.run(move |shared| cron_fire(shared, app, schedule, tick, message))
    }
}
