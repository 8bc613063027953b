//! Per-service admission control: at most `concurrency` requests of a service run at once,
//! at most `queue` more wait for a slot (first come, first served), each for at most
//! `queue_timeout`. Anything beyond is refused at once, so no request ever waits
//! unboundedly and an overloaded service cannot pile up work that slows the rest of the
//! node down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many requests of a service may run and wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub concurrency: u32,
    pub queue: u32,
    pub queue_timeout: Duration,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            concurrency: tessera_model::DEFAULT_SERVICE_CONCURRENCY,
            queue: tessera_model::DEFAULT_QUEUE,
            queue_timeout: tessera_model::DEFAULT_QUEUE_TIMEOUT,
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Every slot is taken and the queue is full: the service is over its own limit.
    #[error(
        "service `{service}` is at its limit of {concurrency} running and {queue} waiting requests; retry shortly"
    )]
    Overloaded {
        service: String,
        concurrency: u32,
        queue: u32,
    },
    /// The request waited its whole `queue_timeout` without getting a slot.
    #[error(
        "service `{service}` could not start the request within its queue timeout of {timeout:?}"
    )]
    QueueTimeout { service: String, timeout: Duration },
}

impl Rejection {
    /// The reason as metrics name it.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Overloaded { .. } => "concurrency",
            Rejection::QueueTimeout { .. } => "queue_timeout",
        }
    }
}

/// Holds one of a service's running slots until dropped.
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
}

/// The running slots and the queue of one service. Shared by every routing table that
/// routes to the service, so swapping a table never resets the count of requests in
/// flight.
#[derive(Debug)]
pub struct Limiter {
    config: Admission,
    slots: Arc<Semaphore>,
    waiting: AtomicU32,
    /// Rejections not yet reported in the log, and when the log last reported them (ms
    /// since `epoch`), so a flood is logged once a second rather than once per request.
    unreported: AtomicU64,
    reported_at: AtomicU64,
    epoch: Instant,
}

/// How often a burst of rejections is reported in the log, at most.
const REPORT_EVERY: Duration = Duration::from_secs(1);

impl Limiter {
    pub fn new(config: Admission) -> Limiter {
        let concurrency = config.concurrency.max(1) as usize;
        Limiter {
            config,
            slots: Arc::new(Semaphore::new(concurrency.min(Semaphore::MAX_PERMITS))),
            waiting: AtomicU32::new(0),
            unreported: AtomicU64::new(0),
            reported_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn config(&self) -> Admission {
        self.config
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests running now.
    pub fn running(&self) -> u32 {
        let free = self.slots.available_permits() as u32;
        self.config.concurrency.max(1).saturating_sub(free)
    }

    /// Takes a slot: at once if one is free, else after waiting in the queue (calling
    /// `on_wait` once, whose result is held while waiting), else refused.
    pub async fn admit<G>(
        &self,
        service: &str,
        on_wait: impl FnOnce() -> G,
    ) -> Result<Permit, Rejection> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(Permit { _slot: slot });
        }
        let queue = self.config.queue;
        let joined = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < queue).then_some(w + 1)
            });
        if joined.is_err() {
            return Err(Rejection::Overloaded {
                service: service.to_string(),
                concurrency: self.config.concurrency,
                queue,
            });
        }
        let _left = LeaveQueue(&self.waiting);
        let _waiting = on_wait();
        // Tokio's semaphore hands freed permits to waiters in arrival order.
        match tokio::time::timeout(
            self.config.queue_timeout,
            self.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(slot)) => Ok(Permit { _slot: slot }),
            // The semaphore is never closed; treat it like a timeout if it ever were.
            Ok(Err(_)) | Err(_) => Err(Rejection::QueueTimeout {
                service: service.to_string(),
                timeout: self.config.queue_timeout,
            }),
        }
    }

    /// Counts a rejection; returns how many there were since the last report when one is
    /// due (at most once a second).
    pub fn note_rejection(&self) -> Option<u64> {
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let every = REPORT_EVERY.as_millis() as u64;
        // Offset by one period, so the very first rejection is reported at once.
        let now = self.epoch.elapsed().as_millis() as u64 + every;
        let last = self.reported_at.load(Ordering::Relaxed);
        if now < last + every {
            return None;
        }
        self.reported_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.unreported.swap(0, Ordering::Relaxed))
    }
}

/// Leaves the queue when the waiting request is admitted, refused or dropped.
struct LeaveQueue<'a>(&'a AtomicU32);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(concurrency: u32, queue: u32, timeout_ms: u64) -> Arc<Limiter> {
        Arc::new(Limiter::new(Admission {
            concurrency,
            queue,
            queue_timeout: Duration::from_millis(timeout_ms),
        }))
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once_and_a_long_wait_times_out() {
        let limiter = limiter(1, 1, 100);
        let running = limiter.admit("s", || ()).await.unwrap();
        assert_eq!(limiter.running(), 1);
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.admit("s", || ()).await })
        };
        while limiter.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let refused = limiter.admit("s", || ()).await.unwrap_err();
        assert!(matches!(refused, Rejection::Overloaded { .. }), "{refused}");
        assert_eq!(refused.reason(), "concurrency");
        assert!(started.elapsed() < Duration::from_millis(50));
        let timed_out = waiter.await.unwrap().unwrap_err();
        assert!(matches!(timed_out, Rejection::QueueTimeout { .. }));
        assert_eq!(limiter.waiting(), 0);
        drop(running);
        assert_eq!(limiter.running(), 0);
    }

    #[tokio::test]
    async fn waiters_get_freed_slots_in_arrival_order() {
        let limiter = limiter(1, 10, 5_000);
        let first = limiter.admit("s", || ()).await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (waiter, order) = (limiter.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = waiter.admit("s", || ()).await.unwrap();
                order.lock().unwrap().push(i);
            }));
            while limiter.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn rejections_are_reported_at_most_once_a_second() {
        let limiter = limiter(1, 0, 10);
        assert_eq!(limiter.note_rejection(), Some(1));
        for _ in 0..10 {
            assert_eq!(limiter.note_rejection(), None);
        }
    }
}
