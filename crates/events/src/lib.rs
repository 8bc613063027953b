//! Events for services, delivered at least once and never lost: a durable journal of
//! messages and deliveries, a dispatcher that hands them to services with retries and a
//! dead-letter queue, and a cron scheduler that turns schedules into messages.
//!
//! Every kind of event a service can receive (a message on a topic or queue, a cron
//! tick, an async invocation) is a [`Message`] published to a topic of an app. A
//! [`SubscriptionSpec`] is one consumer group of such a topic; publishing fans a message
//! out into one *delivery* per subscription of its `(app, topic)` at that moment, and the
//! [`Dispatcher`] delivers each one to one consumer of its subscription through an
//! [`Invoker`] that the node provides (a CloudEvents binary-mode HTTP POST). A 2xx
//! answer acknowledges; anything else is a failed attempt, retried after an exponential
//! backoff with jitter ([`retry_delay`]) until the subscription's `max_attempts`, after
//! which the delivery becomes a [`DeadLetter`] that an operator can inspect and re-drive.
//!
//! # Journals
//!
//! [`Journal`] is the seam between delivery semantics and storage; this crate names no
//! backend. `tessera_embedded::EmbeddedJournal` keeps everything in one SQLite file
//! (group-committed, fsync'd); `tessera_cluster::JetStreamJournal` keeps it in NATS
//! JetStream, shared by every node of a cluster. The trait is shaped for both:
//!
//! - publishing is to a topic of an app, idempotent by message id (JetStream's
//!   `Nats-Msg-Id` deduplication), and a message id is stable across retries, so it can
//!   be the CloudEvents `ce-id`;
//! - a subscription is a durable consumer: [`Journal::lease`] is a pull fetch with an ack
//!   wait of [`SubscriptionSpec::timeout`], [`Journal::ack`] an explicit ack,
//!   [`Journal::fail`] a negative ack with a delay, `max_attempts` is `max_deliver`;
//! - dead letters are kept per subscription (a dead-letter stream) and re-driven by
//!   publishing them again to that one subscription;
//! - cron bookkeeping ([`Journal::cron_last_tick`], [`Journal::cron_fire`]) is one record
//!   per schedule, a KV entry there; tick message ids are deterministic, so two nodes that
//!   fire the same tick deliver it once.
//!
//! Journal calls are synchronous (SQLite, or a blocking client); async callers run them
//! on tokio's blocking pool, as the [`Dispatcher`] and [`CronScheduler`] do.
//!
//! # Delivery guarantees
//!
//! At least once: a delivery whose consumer crashed, timed out or whose node died is
//! delivered again once its lease expires, so consumers must tolerate duplicates (the
//! `ce-id` tells them apart). Order is first-in first-out per subscription for first
//! attempts, but deliveries run concurrently (up to `concurrency`) and retries come back
//! in between (before or after first attempts, as the backend does it), so consumers must
//! not rely on order.

mod backoff;
#[cfg(feature = "conformance")]
pub mod conformance;
mod cron;
mod dispatcher;
mod error;
pub mod invocation;

use std::time::{Duration, SystemTime};

pub use backoff::{jitter, retry_delay};
pub use cron::{
    CronScheduler, CronSpec, MissedTicks, Schedule, TICK_KIND, TICK_SOURCE, tick_message,
};
pub use dispatcher::{DEFAULT_OWNER, Dispatcher, DispatcherConfig, Invoker};
pub use error::EventError;

/// Longest message id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;
/// Largest message payload, in bytes: NATS's default `max_payload`, so a message that
/// the embedded journal accepts fits a JetStream cluster too.
pub const MAX_DATA_BYTES: usize = 1 << 20;
/// Largest response body a journal keeps as a delivery's last outcome; longer bodies are
/// truncated. Invokers should cap bodies themselves; this only bounds what is stored.
pub const MAX_RESULT_BODY_BYTES: usize = 64 << 10;

/// A subscription: one consumer group of an app's topic. The node builds these from
/// manifests; its `id` is the stable key under which deliveries, dead letters and
/// statistics are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// Stable key, for example `shop/worker/orders.created`, `shop/queue:jobs`,
    /// `shop/worker/cron:0` or `shop/worker/async`.
    pub id: String,
    pub app: String,
    /// Messages published to `(app, topic)` fan out to every subscription of that pair.
    pub topic: String,
    /// Work sharing: each delivery goes to one consumer, chosen round-robin. A plain
    /// topic subscription has one consumer.
    pub consumers: Vec<Consumer>,
    /// Attempts before a delivery is dead-lettered; at least 1.
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles with each further attempt.
    pub backoff: Duration,
    /// Longest delay between two attempts.
    pub max_backoff: Duration,
    /// Most deliveries of this subscription in flight at once; at least 1.
    pub concurrency: u32,
    /// Most deliveries leased per journal round trip; at least 1.
    pub batch: u32,
    /// Lease length: the consumer's request timeout plus a margin. A delivery whose lease
    /// expires without an outcome is ready again.
    pub timeout: Duration,
}

impl SubscriptionSpec {
    /// Checks the numbers every journal relies on.
    pub fn validate(&self) -> Result<(), EventError> {
        let fail = |what: &str| {
            Err(EventError::Invalid(format!(
                "subscription {:?}: {what}",
                self.id
            )))
        };
        if self.id.is_empty() {
            return Err(EventError::Invalid(
                "a subscription id must not be empty".into(),
            ));
        }
        if self.app.is_empty() {
            return fail("app must not be empty");
        }
        check_journal_topic(&self.topic).or_else(|e| fail(&e))?;
        if self.consumers.is_empty() {
            return fail("needs at least one consumer");
        }
        for consumer in &self.consumers {
            if consumer.service.is_empty() {
                return fail("a consumer's service must not be empty");
            }
            if !consumer.path.starts_with('/') {
                return fail(&format!(
                    "consumer path {:?} must start with '/'",
                    consumer.path
                ));
            }
        }
        if self.max_attempts == 0 {
            return fail("max_attempts must be at least 1");
        }
        if self.concurrency == 0 {
            return fail("concurrency must be at least 1");
        }
        if self.batch == 0 {
            return fail("batch must be at least 1");
        }
        if self.timeout < Duration::from_millis(1) {
            return fail("timeout must be at least 1ms");
        }
        if self.max_backoff < self.backoff {
            return fail("max_backoff must not be shorter than backoff");
        }
        Ok(())
    }
}

/// Checks a set of subscriptions: each valid, ids unique.
pub fn validate_subscriptions(subs: &[SubscriptionSpec]) -> Result<(), EventError> {
    let mut seen = std::collections::HashSet::new();
    for sub in subs {
        sub.validate()?;
        if !seen.insert(sub.id.as_str()) {
            return Err(EventError::Invalid(format!(
                "subscription {:?} is listed twice",
                sub.id
            )));
        }
    }
    Ok(())
}

/// One consumer of a subscription: a service and the path its deliveries are POSTed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub service: String,
    pub path: String,
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The message id (`ce-id`); `None` generates a UUID v7. Publishing an id that the
    /// journal still holds for the app is ignored, which makes client retries and cron
    /// ticks idempotent.
    pub id: Option<String>,
    pub topic: String,
    /// `ce-source`.
    pub source: String,
    /// `ce-type`.
    pub kind: String,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
    /// Extra attributes, for example an async invocation's method, path, headers and
    /// callback.
    pub attributes: Vec<(String, String)>,
}

/// The `ce-type` of a message published by a guest or through the API.
pub const MESSAGE_TYPE: &str = "dev.tessera.message";

impl NewMessage {
    /// A message with a generated id, no content type and no extra attributes.
    pub fn new(
        topic: impl Into<String>,
        source: impl Into<String>,
        kind: impl Into<String>,
        data: Vec<u8>,
    ) -> NewMessage {
        NewMessage {
            id: None,
            topic: topic.into(),
            source: source.into(),
            kind: kind.into(),
            content_type: None,
            data,
            attributes: Vec::new(),
        }
    }

    /// The same message with the given id (`None` keeps a generated one).
    pub fn with_id(mut self, id: Option<String>) -> NewMessage {
        self.id = id;
        self
    }

    pub fn with_content_type(mut self, content_type: Option<String>) -> NewMessage {
        self.content_type = content_type;
        self
    }

    pub fn with_attributes(mut self, attributes: Vec<(String, String)>) -> NewMessage {
        self.attributes = attributes;
        self
    }
}

/// Checks a message before it is stored.
pub fn validate_message(message: &NewMessage) -> Result<(), EventError> {
    let invalid = |what: String| Err(EventError::Invalid(what));
    if let Some(id) = &message.id {
        if id.is_empty() {
            return invalid("a message id must not be empty".into());
        }
        if id.len() > MAX_ID_BYTES {
            return invalid(format!(
                "message id is {} bytes, the most is {MAX_ID_BYTES}",
                id.len()
            ));
        }
        if id.chars().any(char::is_control) {
            return invalid(format!("message id {id:?} contains a control character"));
        }
    }
    check_journal_topic(&message.topic).or_else(invalid)?;
    if message.source.is_empty() {
        return invalid(format!(
            "message to topic {:?}: source must not be empty",
            message.topic
        ));
    }
    if message.kind.is_empty() {
        return invalid(format!(
            "message to topic {:?}: kind (ce-type) must not be empty",
            message.topic
        ));
    }
    if message.data.len() > MAX_DATA_BYTES {
        return invalid(format!(
            "message to topic {:?}: payload is {} bytes, the most is {MAX_DATA_BYTES}",
            message.topic,
            message.data.len()
        ));
    }
    Ok(())
}

/// The topic names users choose (manifests, the API, guests): letters, digits, `.`, `-`
/// and `_`, with no empty `.`-separated part, 1 to [`MAX_TOPIC_BYTES`] bytes — what both
/// the embedded journal and NATS subjects accept.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic must not be empty".into());
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "topic must be 1-{MAX_TOPIC_BYTES} bytes long, not {}",
            topic.len()
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "topic `{topic}` has the character {c:?}; use letters, digits, `.`, `-` and `_`"
        ));
    }
    if topic.starts_with('.') || topic.ends_with('.') || topic.contains("..") {
        return Err(format!("topic `{topic}` has an empty `.`-separated part"));
    }
    Ok(())
}

/// The platform's own topics (async invocations: `$async/SERVICE`) start with `$`, which
/// no user topic can.
pub const INTERNAL_TOPIC_PREFIX: char = '$';

/// What the journal accepts: a user topic ([`check_topic`]) or one of the platform's own.
fn check_journal_topic(topic: &str) -> Result<(), String> {
    match topic.strip_prefix(INTERNAL_TOPIC_PREFIX) {
        Some(rest) if !rest.is_empty() && topic.len() <= MAX_TOPIC_BYTES => {
            if topic.chars().any(char::is_control) {
                return Err(format!("topic {topic:?} contains a control character"));
            }
            Ok(())
        }
        _ => check_topic(topic),
    }
}

/// A stored message. Its `id` is the `ce-id` of every delivery of it, on every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub topic: String,
    pub source: String,
    pub kind: String,
    /// When it was published (`ce-time`).
    pub time: SystemTime,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
    pub attributes: Vec<(String, String)>,
}

/// What [`Journal::publish`] says about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub id: String,
    /// False when a message with this id was already stored, so nothing was published.
    pub new: bool,
}

/// One attempt to deliver a message to a subscription, as leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub subscription: String,
    pub message: Message,
    /// This attempt, counted from 1.
    pub attempt: u32,
}

/// A delivery that failed `max_attempts` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message: Message,
    pub attempts: u32,
    /// The last attempt's status; 0 when there was no HTTP response.
    pub last_status: u16,
    /// The last attempt's error, or `status N` when the consumer answered without one.
    pub last_error: String,
    pub failed_at: SystemTime,
}

/// Counts for one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionStats {
    pub id: String,
    /// False for a subscription that was removed but still holds deliveries, which are
    /// kept until it comes back.
    pub active: bool,
    /// Deliveries waiting for an attempt, whether due now or waiting out a retry delay
    /// (an expired lease counts here too).
    pub ready: u64,
    /// Deliveries leased and not yet answered.
    pub in_flight: u64,
    /// The part of `ready` that has been attempted before.
    pub retrying: u64,
    /// Dead letters.
    pub dead: u64,
    /// Acknowledged deliveries, in total.
    pub delivered: u64,
    /// Failed attempts, in total.
    pub retries: u64,
}

/// What an [`Invoker`] reports about one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The HTTP status; 0 when there was no response (a trap, a timeout).
    pub status: u16,
    /// The response body, capped by the invoker.
    pub body: Vec<u8>,
    /// Why the attempt failed without a usable response.
    pub error: Option<String>,
}

impl Outcome {
    /// A response from the consumer.
    pub fn response(status: u16, body: Vec<u8>) -> Self {
        Outcome {
            status,
            body,
            error: None,
        }
    }

    /// An attempt that got no usable response.
    pub fn error(error: impl Into<String>) -> Self {
        Outcome {
            status: 0,
            body: Vec::new(),
            error: Some(error.into()),
        }
    }

    /// An attempt succeeds on a 2xx response without an error.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status) && self.error.is_none()
    }

    /// The error, or `status N`.
    pub fn describe(&self) -> String {
        match &self.error {
            Some(error) => error.clone(),
            None => format!("status {}", self.status),
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its first attempt or for a retry.
    Pending,
    /// Leased to a consumer, no outcome yet.
    Running,
    /// Acknowledged.
    Succeeded,
    /// Dead-lettered.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Running => "running",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Failed => "failed",
        }
    }
}

/// The last result recorded for a message on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryStatus {
    pub state: DeliveryState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The last attempt's outcome, if one was recorded.
    pub last: Option<Outcome>,
    /// When the state last changed.
    pub updated: SystemTime,
}

/// Why a dispatcher should look for ready deliveries again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// New messages were published to an app's topic.
    Topic { app: String, topic: String },
    /// Deliveries of one subscription became ready (re-driven).
    Subscription(String),
}

/// A journal call as a future.
pub type JournalFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, EventError>> + Send>>;

/// The calls a dispatcher makes for every delivery, as futures, for a journal whose work
/// is asynchronous underneath (a network client): awaiting them holds no blocking-pool
/// thread and costs no hop onto one. Same semantics as the [`Journal`] calls of the same
/// names.
pub trait AsyncDelivery: Send + Sync {
    fn lease(&self, subscription: &str, max: usize) -> JournalFuture<Vec<Delivery>>;
    fn ack(&self, subscription: &str, message_id: &str, outcome: &Outcome) -> JournalFuture<()>;
    fn fail(&self, subscription: &str, message_id: &str, outcome: &Outcome) -> JournalFuture<()>;
}

/// How many wake-ups a journal's broadcast holds for a slow receiver before it lags.
pub const WAKEUP_CAPACITY: usize = 1024;

/// The durable store of messages and deliveries. See the crate documentation for the
/// semantics every backend must honour.
pub trait Journal: Send + Sync {
    /// Registers `owner`'s subscriptions (an owner is one node: its dispatcher delivers
    /// them), replacing what the same owner registered before; other owners'
    /// registrations stay. A subscription is active while at least one owner registers
    /// it, with the settings of its latest registration.
    ///
    /// Deliveries of subscriptions that no owner registers any more are kept but not
    /// delivered (and new messages no longer fan out to them), so a redeploy that adds
    /// them back resumes where they stopped. Acks and failures of their in-flight
    /// deliveries are still recorded.
    fn register(&self, owner: &str, subs: &[SubscriptionSpec]) -> Result<(), EventError>;

    /// Withdraws everything `owner` registered (a node leaving for good).
    fn withdraw(&self, owner: &str) -> Result<(), EventError>;

    /// The delivery calls as futures, when the backend has them ([`AsyncDelivery`]);
    /// `None` (the default): callers run the synchronous calls on the blocking pool.
    fn delivery_async(&self) -> Option<&dyn AsyncDelivery> {
        None
    }

    /// Tells dispatchers, of every node sharing the journal, when deliveries may have
    /// become ready: after publishes (also other nodes') and re-drives. Each receiver sees
    /// every wake-up sent after it subscribed; one that lags must treat every
    /// subscription as woken. Retries and expired leases are not announced: a dispatcher
    /// finds them through [`Journal::next_ready`].
    fn wakeups(&self) -> tokio::sync::broadcast::Receiver<Wakeup>;

    /// Stores messages of an app durably (fsync'd when this returns `Ok`) and fans each
    /// out into one delivery per subscription of `(app, topic)` at this moment.
    ///
    /// A message whose id the journal already holds for the app is ignored and reported
    /// with `new: false`. A message to a topic without subscriptions is accepted and
    /// stored (so its id still deduplicates) but delivered to no one.
    fn publish(&self, app: &str, messages: Vec<NewMessage>) -> Result<Vec<Published>, EventError>;

    /// Leases up to `max` deliveries of a subscription that are due (or whose lease
    /// expired), oldest first, marking them in flight until now plus the subscription's
    /// `timeout`. A removed subscription leases nothing.
    fn lease(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, EventError>;

    /// Records a successful attempt. Acknowledging twice is harmless.
    fn ack(
        &self,
        subscription: &str,
        message_id: &str,
        outcome: &Outcome,
    ) -> Result<(), EventError>;

    /// Records a failed attempt: schedules the retry after a backoff with jitter, or
    /// dead-letters the delivery when it has had `max_attempts` attempts. A failure of a
    /// delivery that is no longer leased (already acknowledged, dead or released) is
    /// ignored.
    fn fail(
        &self,
        subscription: &str,
        message_id: &str,
        outcome: &Outcome,
    ) -> Result<(), EventError>;

    /// Dead letters of a subscription, oldest failure first.
    fn dead_letters(&self, subscription: &str, limit: usize)
    -> Result<Vec<DeadLetter>, EventError>;

    /// One dead letter, if the message is dead on that subscription.
    fn dead_letter(
        &self,
        subscription: &str,
        message_id: &str,
    ) -> Result<Option<DeadLetter>, EventError>;

    /// Makes dead letters ready again with their attempts reset; `None` re-drives all of
    /// the subscription's. Returns how many were re-driven.
    fn redrive(&self, subscription: &str, ids: Option<&[String]>) -> Result<u64, EventError>;

    /// Counts per subscription: every active one, and removed ones that still hold
    /// deliveries.
    fn stats(&self) -> Result<Vec<SubscriptionStats>, EventError>;

    /// Bytes the subscription's pending (waiting or in flight) deliveries hold, payload and
    /// attributes: what a quota on queued invocations counts. Dead letters are bounded by
    /// the journal's own retention instead. 0 for an unknown subscription.
    fn stored_bytes(&self, subscription: &str) -> Result<u64, EventError>;

    /// When the subscription's earliest pending delivery becomes due (a past time means
    /// now), counting lease expiries of in-flight ones; `None` if it holds none. A journal
    /// shared by many nodes may know only the retries this node scheduled, and answer
    /// `None` for the rest: dispatchers poll every `idle_poll` regardless.
    fn next_ready(&self, subscription: &str) -> Result<Option<SystemTime>, EventError>;

    /// The last result recorded for a message on a subscription (async invocation
    /// status), or `None` if there is no such delivery or it was pruned. Every backend
    /// keeps it for subscriptions of the platform's own topics
    /// ([`INTERNAL_TOPIC_PREFIX`]: async invocations); for other subscriptions a backend
    /// may keep only what their dead letters say.
    fn status(
        &self,
        subscription: &str,
        message_id: &str,
    ) -> Result<Option<DeliveryStatus>, EventError>;

    /// The last tick fired for a schedule.
    fn cron_last_tick(&self, schedule: &str) -> Result<Option<SystemTime>, EventError>;

    /// Publishes a tick's message (idempotent by its id) and records the tick as the
    /// schedule's last, in one transaction. Returns whether the message was new.
    fn cron_fire(
        &self,
        app: &str,
        schedule: &str,
        tick: SystemTime,
        message: NewMessage,
    ) -> Result<bool, EventError>;
}

/// Runs a synchronous journal call on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, EventError> + Send + 'static,
) -> Result<T, EventError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| EventError::Task(e.to_string()))?
}

/// Milliseconds since the Unix epoch, negative before it.
pub fn unix_ms(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => {
            // Round towards the past, so a time is never mapped after itself.
            let before = before.duration();
            let ms = i64::try_from(before.as_millis()).unwrap_or(i64::MAX);
            if before.subsec_nanos() % 1_000_000 == 0 {
                -ms
            } else {
                -ms - 1
            }
        }
    }
}

/// The time `ms` milliseconds after (or before) the Unix epoch.
pub fn from_unix_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}
