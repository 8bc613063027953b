//! Instances that outlive one request: a service with `reuse` above 1 parks an instance
//! that served a request cleanly, and the next request takes it instead of instantiating
//! anew. An instance that trapped, timed out or hit a memory limit is never parked; one
//! that served its `reuse` requests, or waited `reuse_idle` for another, is dropped.
//!
//! Every instance's life is reported to the service's [`InstanceObserver`]: created,
//! reused, dropped with its reason and how many requests it served.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use wasmtime::Store;

use crate::invoke::{Guest, ServiceInner};
use crate::state::InstanceState;

/// Why an instance was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// It served all the requests it may (one, unless the service reuses instances).
    Done,
    /// It waited `reuse_idle` without a request.
    Idle,
    /// The guest trapped (or failed in a way that leaves the instance unusable).
    Trap,
    /// A request ran past its deadline.
    Timeout,
    /// The guest hit its memory limit or the node's instance memory budget.
    Memory,
    /// The service was unloaded while the instance waited.
    Unloaded,
    /// The client stopped reading a WASI 0.3 response body before its end, so the
    /// instance may hold half-done work.
    Abandoned,
    /// The host gave up on the request without a verdict from the guest (an error of
    /// its own, or its task ended early).
    Failed,
}

impl DropReason {
    /// The reason as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Done => "done",
            DropReason::Idle => "idle",
            DropReason::Trap => "trap",
            DropReason::Timeout => "timeout",
            DropReason::Memory => "memory",
            DropReason::Unloaded => "unloaded",
            DropReason::Abandoned => "abandoned",
            DropReason::Failed => "failed",
        }
    }
}

/// Told about every instance of one service; called on the request path, so cheap.
pub trait InstanceObserver: Send + Sync {
    /// A new instance was made for a request.
    fn created(&self);
    /// A request was given an instance that had served before.
    fn reused(&self);
    /// An instance was dropped after serving `served` requests.
    fn dropped(&self, reason: DropReason, served: u32);
}

/// A service's observer, if it has one.
#[derive(Clone, Default)]
pub struct Observer(pub Option<Arc<dyn InstanceObserver>>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Observer(Some)"
        } else {
            "Observer(None)"
        })
    }
}

/// One instance and its store, from its first request to its drop (which reports it).
pub(crate) struct Instance {
    pub(crate) store: Store<InstanceState>,
    /// `None` until the component is instantiated in the store (inside the first
    /// request's deadline).
    pub(crate) proxy: Option<Guest>,
    /// Requests it started serving.
    pub(crate) served: u32,
    /// What its drop reports; set when a request ends. An instance dropped mid-request
    /// is reported as timed out when its request's deadline has passed, as failed
    /// otherwise.
    pub(crate) fate: Option<DropReason>,
    /// The current request's deadline.
    pub(crate) deadline: Instant,
    observer: Observer,
}

impl Instance {
    pub(crate) fn new(store: Store<InstanceState>, observer: Observer) -> Instance {
        Instance {
            store,
            proxy: None,
            served: 0,
            fate: None,
            deadline: Instant::now(),
            observer,
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Only instances that were made count (a store whose instantiation failed did
        // not become one).
        if self.proxy.is_some()
            && let Some(observer) = &self.observer.0
        {
            let fate = self.fate.unwrap_or(if Instant::now() >= self.deadline {
                DropReason::Timeout
            } else {
                DropReason::Failed
            });
            observer.dropped(fate, self.served);
        }
    }
}

/// The instances of one service waiting for a request, most recently parked last.
#[derive(Default)]
pub(crate) struct Pool {
    state: Mutex<PoolState>,
    /// Instances whose response body has reached its end but which are not parked yet
    /// (the guest is still returning): a client that sends its next request as soon as
    /// it read the last answer would otherwise find the pool empty.
    finishing: Arc<AtomicUsize>,
    /// Requests waiting for a finishing instance: never more than there are finishing
    /// instances, so a burst that misses the pool does not wait for nothing.
    waiters: AtomicUsize,
    /// Woken when an instance is parked or stops finishing.
    changed: Notify,
}

/// The longest a request waits for a finishing instance before it makes a new one.
const MAX_FINISHING_WAIT: Duration = Duration::from_millis(5);

/// Whether one request's instance has sent the end of its response body (counted in its
/// pool's `finishing`) and whether its request is over.
pub(crate) struct Finish {
    state: AtomicU8,
    finishing: Arc<AtomicUsize>,
}

const OPEN: u8 = 0;
const BODY_ENDED: u8 = 1;
const OVER: u8 = 2;

impl Finish {
    /// The response body reached its end: the instance counts as finishing until its
    /// request is over.
    pub(crate) fn body_ended(&self) {
        if self
            .state
            .compare_exchange(OPEN, BODY_ENDED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.finishing.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The request is over (its instance parked or dropped).
    fn over(&self) -> bool {
        let was = self.state.swap(OVER, Ordering::AcqRel);
        if was == BODY_ENDED {
            self.finishing.fetch_sub(1, Ordering::AcqRel);
        }
        was == BODY_ENDED
    }
}

#[derive(Default)]
struct PoolState {
    idle: Vec<(Instance, Instant)>,
    /// A task is dropping instances as they pass their idle time.
    reaping: bool,
}

impl Pool {
    /// A watch for one request's instance: see [`Finish`].
    pub(crate) fn finish(&self) -> Arc<Finish> {
        Arc::new(Finish {
            state: AtomicU8::new(OPEN),
            finishing: self.finishing.clone(),
        })
    }

    /// Ends a request's watch once its instance is parked or dropped, waking requests
    /// that wait for a finishing instance.
    pub(crate) fn over(&self, finish: &Finish) {
        if finish.over() {
            self.changed.notify_waiters();
        }
    }
}

/// Ends a request's [`Finish`] when dropped: however its task ends, a panic included, the
/// instance stops counting as finishing.
pub(crate) struct FinishGuard {
    pub(crate) service: Arc<ServiceInner>,
    pub(crate) finish: Arc<Finish>,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.service.pool.over(&self.finish);
    }
}

impl Pool {
    /// A parked instance, or one about to be parked: when none waits but some instance
    /// has sent its whole response and is still returning, waits for it a little (at most
    /// [`MAX_FINISHING_WAIT`]).
    pub(crate) async fn take_or_wait(&self, idle: Duration) -> Option<Instance> {
        if let Some(instance) = self.take(idle) {
            return Some(instance);
        }
        let finishing = self.finishing.load(Ordering::Acquire);
        if finishing == 0 || self.waiters.fetch_add(1, Ordering::AcqRel) >= finishing {
            if finishing != 0 {
                self.waiters.fetch_sub(1, Ordering::AcqRel);
            }
            return None;
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.waiters);
        let give_up = tokio::time::Instant::now() + MAX_FINISHING_WAIT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(instance) = self.take(idle) {
                return Some(instance);
            }
            if self.finishing.load(Ordering::Acquire) == 0 {
                return None;
            }
            if tokio::time::timeout_at(give_up, changed).await.is_err() {
                return self.take(idle);
            }
        }
    }

    /// The most recently parked instance that has not waited longer than `idle`.
    pub(crate) fn take(&self, idle: Duration) -> Option<Instance> {
        let mut stale = Vec::new();
        let taken = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match state.idle.pop() {
                    Some((instance, since)) if since.elapsed() < idle => break Some(instance),
                    Some((mut instance, _)) => {
                        instance.fate = Some(DropReason::Idle);
                        stale.push(instance);
                    }
                    None => break None,
                }
            }
        };
        // Stores are dropped outside the lock.
        drop(stale);
        taken
    }

    /// Parks an instance for the next request, and makes sure a task drops it if none
    /// comes within the service's `reuse_idle`.
    pub(crate) fn park(service: &Arc<ServiceInner>, instance: Instance) {
        let mut state = service.pool.state.lock().unwrap_or_else(|e| e.into_inner());
        state.idle.push((instance, Instant::now()));
        if !state.reaping {
            state.reaping = true;
            tokio::spawn(reap(Arc::downgrade(service)));
        }
        drop(state);
        service.pool.changed.notify_waiters();
    }

    /// Drops the instances parked longer than `idle`; the time until the next one is
    /// due, or `None` (and reaping stops) when none is left.
    fn reap(&self, idle: Duration) -> Option<Duration> {
        let mut stale = Vec::new();
        let next = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            // Oldest first: the ones parked longest are at the front.
            let due = state
                .idle
                .iter()
                .take_while(|(_, since)| since.elapsed() >= idle)
                .count();
            stale.extend(state.idle.drain(..due).map(|(mut instance, _)| {
                instance.fate = Some(DropReason::Idle);
                instance
            }));
            match state.idle.first() {
                Some((_, since)) => Some(idle.saturating_sub(since.elapsed())),
                None => {
                    state.reaping = false;
                    None
                }
            }
        };
        drop(stale);
        next
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for (instance, _) in &mut state.idle {
            instance.fate = Some(DropReason::Unloaded);
        }
    }
}

/// Drops a service's parked instances as their idle time passes, until none is left or
/// the service is gone.
async fn reap(service: Weak<ServiceInner>) {
    let mut wait = match service.upgrade() {
        Some(service) => service.config.reuse.idle,
        None => return,
    };
    loop {
        tokio::time::sleep(wait).await;
        let Some(service) = service.upgrade() else {
            return;
        };
        match service.pool.reap(service.config.reuse.idle) {
            // A little late rather than early, so one sleep covers the instance.
            Some(next) => wait = next + Duration::from_millis(1),
            None => return,
        }
    }
}
