//! Every default and bound of a revision's settings, and the one check of each value
//! against its bounds. The manifest parser calls these checks key by key (so its errors
//! name the file and line), [`crate::RevisionConfig::validate`] calls them all for a
//! revision that came another way (the REST API); both give the same message.

use std::time::Duration;

/// Default per-instance memory limit of a service.
pub const DEFAULT_MEMORY: u64 = 128 * 1024 * 1024;
/// Smallest memory limit accepted.
pub const MIN_MEMORY: u64 = 1024 * 1024;
/// Largest memory limit a 32-bit guest can use.
pub const MAX_MEMORY: u64 = 4 * 1024 * 1024 * 1024;
/// Default per-request deadline of a service.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest per-request deadline accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Default of `concurrency`: requests of one service running at once on a node.
pub const DEFAULT_SERVICE_CONCURRENCY: u32 = 100;
/// Largest `concurrency` accepted.
pub const MAX_SERVICE_CONCURRENCY: u32 = 10_000;
/// Default of `queue`: requests of one service waiting for a free slot.
pub const DEFAULT_QUEUE: u32 = 100;
/// Largest `queue` accepted.
pub const MAX_QUEUE: u32 = 100_000;
/// Default of `queue_timeout`: longest wait in the queue.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `queue_timeout` accepted.
pub const MAX_QUEUE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default of `idle`: how long a service stays loaded without requests.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// Shortest `idle` accepted: the node looks for idle services once a second.
pub const MIN_IDLE: Duration = Duration::from_secs(1);
/// Longest `idle` accepted (`"never"` keeps a service loaded for good).
pub const MAX_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default of `async.rate`: async invocations of one service accepted per second.
pub const DEFAULT_ASYNC_RATE: u32 = 100;
/// Largest `async.rate` accepted.
pub const MAX_ASYNC_RATE: u32 = 100_000;
/// Default of `async.stored`: bytes one service's queued (not yet finished) invocations
/// may hold on a node.
pub const DEFAULT_ASYNC_STORED: u64 = 64 * 1024 * 1024;
/// Smallest `async.stored`: one largest async body.
pub const MIN_ASYNC_STORED: u64 = 1024 * 1024;
/// Largest `async.stored`.
pub const MAX_ASYNC_STORED: u64 = 64 * 1024 * 1024 * 1024;

/// Default of `reuse`: requests one instance serves before it is dropped (1: a fresh
/// instance for every request).
pub const DEFAULT_REUSE: u32 = 1;
/// Largest `reuse` accepted.
pub const MAX_REUSE: u32 = 1_000_000;
/// Default of `reuse_concurrency`: requests one instance serves at once.
pub const DEFAULT_REUSE_CONCURRENCY: u32 = 1;
/// Largest `reuse_concurrency` accepted.
pub const MAX_REUSE_CONCURRENCY: u32 = 1000;
/// Default of `reuse_idle`: how long an instance waits for its next request.
pub const DEFAULT_REUSE_IDLE: Duration = Duration::from_secs(1);
/// Longest `reuse_idle` accepted.
pub const MAX_REUSE_IDLE: Duration = Duration::from_secs(3600);

/// Defaults and bounds of a subscription's delivery settings.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const MAX_MAX_ATTEMPTS: u32 = 100;
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Longest `backoff` and `max_backoff`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_CONCURRENCY: u32 = 16;
pub const MAX_SUBSCRIPTION_CONCURRENCY: u32 = 10_000;
pub const DEFAULT_BATCH: u32 = 64;
pub const MAX_BATCH: u32 = 1000;

// Counts are checked as i64, the type of a TOML integer, so a negative number in a
// manifest gets the same message as one too large.

/// `memory`: between 1 MiB and 4 GiB.
pub fn check_memory(bytes: u64) -> Result<u64, String> {
    if (MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
        Ok(bytes)
    } else {
        Err("memory limit must be between 1MiB and 4GiB".into())
    }
}

/// `timeout`: more than 0, at most an hour.
pub fn check_timeout(timeout: Duration) -> Result<Duration, String> {
    within(
        timeout,
        MAX_TIMEOUT,
        "timeout must be more than 0 and at most 1h",
    )
}

/// `concurrency` of a service.
pub fn check_concurrency(n: i64) -> Result<u32, String> {
    positive(n, MAX_SERVICE_CONCURRENCY)
}

/// `queue`: may be 0.
pub fn check_queue(n: i64) -> Result<u32, String> {
    count(n, MAX_QUEUE)
}

/// `queue_timeout`: more than 0, at most an hour.
pub fn check_queue_timeout(timeout: Duration) -> Result<Duration, String> {
    within(
        timeout,
        MAX_QUEUE_TIMEOUT,
        "queue timeout must be more than 0 and at most 1h",
    )
}

/// `idle`: between a second and a week, or never (`None`).
pub fn check_idle(idle: Option<Duration>) -> Result<Option<Duration>, String> {
    match idle {
        Some(idle) if !(MIN_IDLE..=MAX_IDLE).contains(&idle) => {
            Err("idle must be between 1s and 7 days, or \"never\"".into())
        }
        other => Ok(other),
    }
}

/// `reuse`: at least 1 (a fresh instance per request).
pub fn check_reuse(n: i64) -> Result<u32, String> {
    positive(n, MAX_REUSE)
}

/// `reuse_concurrency`: at least 1.
pub fn check_reuse_concurrency(n: i64) -> Result<u32, String> {
    positive(n, MAX_REUSE_CONCURRENCY)
}

/// `reuse_idle`: more than 0, at most an hour.
pub fn check_reuse_idle(idle: Duration) -> Result<Duration, String> {
    within(
        idle,
        MAX_REUSE_IDLE,
        "reuse idle must be more than 0 and at most 1h",
    )
}

/// `async.rate`.
pub fn check_async_rate(n: i64) -> Result<u32, String> {
    positive(n, MAX_ASYNC_RATE)
}

/// `async.stored`: between 1 MiB and 64 GiB.
pub fn check_async_stored(bytes: u64) -> Result<u64, String> {
    if (MIN_ASYNC_STORED..=MAX_ASYNC_STORED).contains(&bytes) {
        Ok(bytes)
    } else {
        Err("stored must be between 1MiB and 64GiB".into())
    }
}

/// A subscription's `max_attempts`.
pub fn check_max_attempts(n: i64) -> Result<u32, String> {
    positive(n, MAX_MAX_ATTEMPTS)
}

/// A subscription's `backoff` or `max_backoff`: more than 0, at most a day.
pub fn check_backoff(backoff: Duration) -> Result<Duration, String> {
    within(backoff, MAX_BACKOFF, "must be more than 0 and at most 24h")
}

/// A subscription's `concurrency`.
pub fn check_subscription_concurrency(n: i64) -> Result<u32, String> {
    positive(n, MAX_SUBSCRIPTION_CONCURRENCY)
}

/// A subscription's `batch`.
pub fn check_batch(n: i64) -> Result<u32, String> {
    positive(n, MAX_BATCH)
}

/// A count from 1 to `max`.
fn positive(n: i64, max: u32) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be between 1 and {max}, not {n}")),
    }
}

/// A count from 0 to `max`.
fn count(n: i64, max: u32) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("must be between 0 and {max}, not {n}")),
    }
}

fn within(d: Duration, max: Duration, message: &str) -> Result<Duration, String> {
    if d.is_zero() || d > max {
        Err(message.to_string())
    } else {
        Ok(d)
    }
}
