//! A revision's settings as typed values: what the manifest produces, the control state
//! stores, the API carries and the runtime and the node's event machinery consume.

use std::time::Duration;

use crate::bounds::*;
use crate::names::{Origin, RoutePrefix, check_config_key, check_name};
pub use tessera_events::MissedTicks;

/// Per-service resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum linear memory of one instance, in bytes.
    pub memory: u64,
    /// Deadline of one request, from arrival to the end of the guest's work.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: DEFAULT_MEMORY,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Whether and how a service's instances serve more than one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// Requests one instance serves before it is dropped; 1 (the default) gives every
    /// request a fresh instance.
    pub requests: u32,
    /// Requests one instance serves at once.
    pub concurrency: u32,
    /// How long an instance that finished its requests waits for another before it is
    /// dropped.
    pub idle: Duration,
}

impl Reuse {
    /// Whether an instance may serve more than one request.
    pub fn enabled(&self) -> bool {
        self.requests > 1
    }
}

impl Default for Reuse {
    fn default() -> Self {
        Reuse {
            requests: DEFAULT_REUSE,
            concurrency: DEFAULT_REUSE_CONCURRENCY,
            idle: DEFAULT_REUSE_IDLE,
        }
    }
}

/// Admission control and scale-to-zero of one service on a node. The primary revision's
/// setting applies to the whole service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaling {
    /// Requests of the service running at once, across its revisions.
    pub concurrency: u32,
    /// Requests waiting for one of those slots (first come, first served); one more is
    /// refused at once with `429`.
    pub queue: u32,
    /// Longest wait in the queue, after which the request is answered `503`.
    pub queue_timeout: Duration,
    /// How long the service stays loaded without requests; `None` (`"never"`) keeps it
    /// loaded until the node's memory budget needs the room.
    pub idle: Option<Duration>,
    /// Async invocations accepted per second (`[services.NAME.async] rate`); a burst of
    /// one second's worth is allowed, more are answered `503` with `Retry-After`.
    pub async_rate: u32,
    /// Bytes the service's queued async invocations may hold
    /// (`[services.NAME.async] stored`); past it async requests are answered `507`.
    pub async_stored: u64,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            concurrency: DEFAULT_SERVICE_CONCURRENCY,
            queue: DEFAULT_QUEUE,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            idle: Some(DEFAULT_IDLE),
            async_rate: DEFAULT_ASYNC_RATE,
            async_stored: DEFAULT_ASYNC_STORED,
        }
    }
}

/// A schedule: each tick is POSTed to `path` as a CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronTrigger {
    /// Five-field cron (UTC) or `@every 30s` style ([`check_schedule`]).
    pub schedule: String,
    pub path: String,
    /// What to do about ticks missed while no node ran the schedule.
    pub missed: MissedTicks,
}

/// A subscription of a service to a topic of its app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub topic: String,
    /// The route each message is POSTed to.
    pub path: String,
    /// Work sharing: every service subscribing to the topic with the same queue name
    /// shares its messages (each goes to one of them); without one, the service gets
    /// every message.
    pub queue: Option<String>,
    /// Attempts before the message goes to the dead-letter queue.
    pub max_attempts: u32,
    /// First retry delay; it doubles with each failed attempt, with jitter.
    pub backoff: Duration,
    /// Never less than `backoff`.
    pub max_backoff: Duration,
    /// Most deliveries of this subscription in flight at once.
    pub concurrency: u32,
    /// Most deliveries fetched from the journal at once.
    pub batch: u32,
}

impl Subscription {
    /// A subscription of `topic` delivered to `path` with the default settings.
    pub fn new(topic: impl Into<String>, path: impl Into<String>) -> Subscription {
        Subscription {
            topic: topic.into(),
            path: path.into(),
            queue: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            concurrency: DEFAULT_CONCURRENCY,
            batch: DEFAULT_BATCH,
        }
    }
}

/// How one revision of a service runs: everything about it except the component bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionConfig {
    /// Path prefixes the service answers; at least one.
    pub routes: Vec<RoutePrefix>,
    pub limits: Limits,
    pub scaling: Scaling,
    /// Instance reuse (`reuse`, `reuse_concurrency`, `reuse_idle`).
    pub reuse: Reuse,
    /// Origins the service may call.
    pub outbound: Vec<Origin>,
    /// Origins an async invocation's callback may go to; none unless listed.
    pub callbacks: Vec<Origin>,
    /// Environment variables granted to the guest; none unless listed.
    pub env: Vec<(String, String)>,
    /// Configuration values served through `wasi:config/store`, sorted by key.
    pub config: Vec<(String, String)>,
    /// Key-value buckets the service may open besides `default`.
    pub buckets: Vec<String>,
    /// Names of the SQL migrations the deploy of this revision applied or found applied,
    /// in order (for display: the service's database records what ran).
    pub migrations: Vec<String>,
    /// Schedules whose ticks are delivered to a route of the service.
    pub cron: Vec<CronTrigger>,
    /// Topics whose messages are delivered to a route of the service.
    pub subscriptions: Vec<Subscription>,
}

impl RevisionConfig {
    /// A revision answering `routes` with every other setting at its default.
    pub fn new(routes: Vec<RoutePrefix>) -> RevisionConfig {
        RevisionConfig {
            routes,
            limits: Limits::default(),
            scaling: Scaling::default(),
            reuse: Reuse::default(),
            outbound: Vec::new(),
            callbacks: Vec::new(),
            env: Vec::new(),
            config: Vec::new(),
            buckets: Vec::new(),
            migrations: Vec::new(),
            cron: Vec::new(),
            subscriptions: Vec::new(),
        }
    }

    /// Checks every setting against its bounds and rules, with the manifest's messages;
    /// the first failure names its key as the manifest spells it (`memory`,
    /// `subscribe[0].topic`, `async.stored`).
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.routes.is_empty() {
            return Err(Invalid::new("routes", "at least one route is required"));
        }
        for (i, route) in self.routes.iter().enumerate() {
            if self.routes[..i].contains(route) {
                return Err(Invalid::new(
                    "routes",
                    format!("route `{route}` is listed twice"),
                ));
            }
        }
        check_memory(self.limits.memory).map_err(at("memory"))?;
        check_timeout(self.limits.timeout).map_err(at("timeout"))?;
        let scaling = &self.scaling;
        check_concurrency(scaling.concurrency.into()).map_err(at("concurrency"))?;
        check_queue(scaling.queue.into()).map_err(at("queue"))?;
        check_queue_timeout(scaling.queue_timeout).map_err(at("queue_timeout"))?;
        check_idle(scaling.idle).map_err(at("idle"))?;
        check_async_rate(scaling.async_rate.into()).map_err(at("async.rate"))?;
        check_async_stored(scaling.async_stored).map_err(at("async.stored"))?;
        check_reuse(self.reuse.requests.into()).map_err(at("reuse"))?;
        check_reuse_concurrency(self.reuse.concurrency.into()).map_err(at("reuse_concurrency"))?;
        check_reuse_idle(self.reuse.idle).map_err(at("reuse_idle"))?;
        for (name, _) in &self.env {
            check_env_name(name).map_err(at(&format!("env.{name}")))?;
        }
        for (key, _) in &self.config {
            check_config_key(key).map_err(at("config"))?;
        }
        for (i, bucket) in self.buckets.iter().enumerate() {
            check_bucket(bucket, &self.buckets[..i]).map_err(at("buckets"))?;
        }
        for (i, cron) in self.cron.iter().enumerate() {
            let key = |name: &str| format!("cron[{i}].{name}");
            check_schedule(&cron.schedule).map_err(at(&key("schedule")))?;
            check_trigger_path(&cron.path).map_err(at(&key("path")))?;
        }
        for (i, sub) in self.subscriptions.iter().enumerate() {
            let key = |name: &str| format!("subscribe[{i}].{name}");
            check_topic(&sub.topic).map_err(at(&key("topic")))?;
            check_trigger_path(&sub.path).map_err(at(&key("path")))?;
            if let Some(queue) = &sub.queue {
                check_name(queue).map_err(at(&key("queue")))?;
            }
            check_max_attempts(sub.max_attempts.into()).map_err(at(&key("max_attempts")))?;
            check_backoff(sub.backoff).map_err(at(&key("backoff")))?;
            check_backoff(sub.max_backoff).map_err(at(&key("max_backoff")))?;
            check_subscription_concurrency(sub.concurrency.into())
                .map_err(at(&key("concurrency")))?;
            check_batch(sub.batch.into()).map_err(at(&key("batch")))?;
            if self.subscriptions[..i]
                .iter()
                .any(|s| s.topic == sub.topic && s.queue == sub.queue)
            {
                return Err(Invalid::new(
                    format!("subscribe[{i}]"),
                    format!("the service already subscribes to `{}`", sub.topic),
                ));
            }
        }
        Ok(())
    }
}

/// Turns a check's message into an [`Invalid`] naming `key`.
fn at(key: &str) -> impl FnOnce(String) -> Invalid + '_ {
    move |message| Invalid::new(key, message)
}

/// A setting out of its bounds or against its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The key as a manifest spells it under `[services.NAME]`.
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for Invalid {}

pub use tessera_events::check_topic;

/// Checks a cron schedule (five fields, UTC, or `@every 30s`, `@hourly` ...).
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    tessera_events::Schedule::parse(schedule).map(|_| ())
}

/// The route a tick or a message is POSTed to: a path with no spaces or fragment.
pub fn check_trigger_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(format!(
            "`{path}` is not a path: it must start with `/` and have no spaces"
        ));
    }
    Ok(())
}

/// An environment variable's name: not empty, without `=` or NUL.
pub fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err("invalid environment variable name".into());
    }
    Ok(())
}

/// A bucket besides `default`, not among those `before` it.
pub fn check_bucket(bucket: &str, before: &[String]) -> Result<(), String> {
    check_name(bucket)?;
    if bucket == "default" {
        return Err("bucket `default` always exists; list only further buckets".into());
    }
    if before.iter().any(|b| b == bucket) {
        return Err(format!("bucket `{bucket}` is listed twice"));
    }
    Ok(())
}
