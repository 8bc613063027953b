//! The dispatcher: one worker task per subscription that leases deliveries from the
//! journal and hands them to consumers through the node's [`Invoker`].
//!
//! A worker leases up to `min(batch, concurrency - in flight)` deliveries, runs each in
//! its own task (so at most `concurrency` run at once), picks consumers round-robin, and
//! records the outcome: a success is acknowledged, anything else is a failure whose retry
//! (or dead-lettering) the journal decides. With nothing due it sleeps until the journal's
//! next due time, a wake-up from the journal ([`Journal::wakeups`]: a publish or re-drive
//! through any node sharing it), or `idle_poll`, whichever comes first. Journal calls are
//! synchronous and run on tokio's blocking pool.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::{
    Consumer, Delivery, EventError, Journal, Outcome, SubscriptionSpec, Wakeup, blocking,
    validate_subscriptions,
};

/// Delivers one delivery to one consumer. The node builds a CloudEvents binary-mode HTTP
/// POST (`ce-id` is the message id, stable across attempts) to `consumer.path` of
/// `consumer.service`.
pub trait Invoker: Send + Sync + 'static {
    /// Delivers and reports the outcome; never panics. The dispatcher gives up on an
    /// invocation after nine tenths of the subscription's `timeout` (the lease length) and
    /// records a failure, so the invoker's own deadline should be shorter still.
    fn invoke(
        &self,
        subscription: &SubscriptionSpec,
        consumer: &Consumer,
        delivery: Delivery,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;
}

/// Settings of a [`Dispatcher`].
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Who registers the subscriptions in the journal ([`Journal::register`]): the node's
    /// id, unique among the nodes sharing the journal.
    pub owner: String,
    /// Longest sleep of an idle worker, so expired leases and clock changes are noticed.
    pub idle_poll: Duration,
    /// How long [`Dispatcher::shutdown`] waits for deliveries in flight.
    pub shutdown_grace: Duration,
    /// Pause after a journal error before a worker tries again.
    pub error_pause: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            owner: DEFAULT_OWNER.to_owned(),
            idle_poll: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            error_pause: Duration::from_secs(1),
        }
    }
}

/// The owner a node registers its subscriptions under when it is the only one.
pub const DEFAULT_OWNER: &str = "local";

/// Delivers the deliveries of a set of subscriptions. Start it inside a tokio runtime.
pub struct Dispatcher {
    shared: Arc<Shared>,
    workers: Arc<Mutex<Workers>>,
    /// Passes the journal's wake-ups on to the workers they concern.
    waker: JoinHandle<()>,
    /// Serialises [`Dispatcher::set_subscriptions`], so the journal and the workers see
    /// the same order of updates.
    updating: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

struct Shared {
    journal: Arc<dyn Journal>,
    invoker: Arc<dyn Invoker>,
    config: DispatcherConfig,
}

#[derive(Default)]
struct Workers {
    by_id: HashMap<String, Worker>,
    /// The wake-ups of the workers of each (app, topic).
    by_topic: HashMap<(String, String), Vec<Arc<Notify>>>,
    /// Workers of removed subscriptions, finishing their deliveries in flight.
    retired: Vec<JoinHandle<()>>,
}

struct Worker {
    spec: Arc<SubscriptionSpec>,
    /// The spec to follow; `None` tells the worker to stop leasing and finish.
    control: watch::Sender<Option<Arc<SubscriptionSpec>>>,
    notify: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Dispatcher {
    /// Starts a dispatcher with default settings and no subscriptions.
    pub fn start(journal: Arc<dyn Journal>, invoker: Arc<dyn Invoker>) -> Dispatcher {
        Self::start_with(journal, invoker, DispatcherConfig::default())
    }

    /// Starts a dispatcher with no subscriptions.
    pub fn start_with(
        journal: Arc<dyn Journal>,
        invoker: Arc<dyn Invoker>,
        config: DispatcherConfig,
    ) -> Dispatcher {
        let workers = Arc::new(Mutex::new(Workers::default()));
        let waker = tokio::spawn(pass_on_wakeups(journal.wakeups(), Arc::downgrade(&workers)));
        Dispatcher {
            shared: Arc::new(Shared {
                journal,
                invoker,
                config,
            }),
            workers,
            waker,
            updating: tokio::sync::Mutex::new(()),
        }
    }

    /// Registers the full set of this dispatcher's subscriptions in the journal
    /// ([`Journal::register`] under the configured owner), then starts workers for new
    /// ones, updates changed ones and stops removed ones (their deliveries in flight
    /// finish).
    pub async fn set_subscriptions(&self, subs: Vec<SubscriptionSpec>) -> Result<(), EventError> {
        let _updating = self.updating.lock().await;
        validate_subscriptions(&subs)?;
        let journal = self.shared.journal.clone();
        let installed = subs.clone();
        let owner = self.shared.config.owner.clone();
        blocking(move || journal.register(&owner, &installed)).await?;

        let mut workers = self.lock();
        let mut old = std::mem::take(&mut workers.by_id);
        for spec in subs {
            let spec = Arc::new(spec);
            let worker = match old.remove(&spec.id) {
                Some(mut worker) => {
                    if worker.spec != spec {
                        worker.control.send_replace(Some(spec.clone()));
                        worker.spec = spec.clone();
                    }
                    worker
                }
                None => self.spawn_worker(spec.clone()),
            };
            workers.by_id.insert(spec.id.clone(), worker);
        }
        for (_, worker) in old {
            worker.control.send_replace(None);
            workers.retired.push(worker.task);
        }
        workers.retired.retain(|task| !task.is_finished());
        let mut by_topic: HashMap<(String, String), Vec<Arc<Notify>>> = HashMap::new();
        for worker in workers.by_id.values() {
            by_topic
                .entry((worker.spec.app.clone(), worker.spec.topic.clone()))
                .or_default()
                .push(worker.notify.clone());
        }
        workers.by_topic = by_topic;
        Ok(())
    }

    /// Stops leasing and waits up to `shutdown_grace` for deliveries in flight. Those
    /// still running then are abandoned; their leases expire and they are delivered again.
    pub async fn shutdown(self) {
        self.waker.abort();
        let mut tasks = Vec::new();
        {
            let mut workers = self.lock();
            for (_, worker) in workers.by_id.drain() {
                worker.control.send_replace(None);
                tasks.push(worker.task);
            }
            tasks.append(&mut workers.retired);
            workers.by_topic.clear();
        }
        let all = async {
            for task in tasks.iter_mut() {
                if let Err(e) = task.await
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a dispatcher worker panicked");
                }
            }
        };
        if tokio::time::timeout(self.shared.config.shutdown_grace, all)
            .await
            .is_err()
        {
            tracing::warn!(
                "deliveries still in flight at shutdown are abandoned; they will be delivered again"
            );
            for task in &tasks {
                task.abort();
            }
        }
    }

    fn spawn_worker(&self, spec: Arc<SubscriptionSpec>) -> Worker {
        let (control, receiver) = watch::channel(Some(spec.clone()));
        let notify = Arc::new(Notify::new());
        let task = tokio::spawn(run_worker(self.shared.clone(), receiver, notify.clone()));
        Worker {
            spec,
            control,
            notify,
            task,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Workers> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Without `shutdown`, workers still stop leasing; deliveries in flight finish.
        self.waker.abort();
        let workers = self.lock();
        for worker in workers.by_id.values() {
            worker.control.send_replace(None);
        }
    }
}

/// Wakes the workers a journal wake-up concerns; all of them when wake-ups were missed.
async fn pass_on_wakeups(
    mut wakeups: tokio::sync::broadcast::Receiver<Wakeup>,
    workers: std::sync::Weak<Mutex<Workers>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let wakeup = wakeups.recv().await;
        let Some(workers) = workers.upgrade() else {
            break;
        };
        let workers = workers.lock().unwrap_or_else(PoisonError::into_inner);
        match wakeup {
            Ok(Wakeup::Topic { app, topic }) => {
                if let Some(notifies) = workers.by_topic.get(&(app, topic)) {
                    for notify in notifies {
                        notify.notify_one();
                    }
                }
            }
            Ok(Wakeup::Subscription(id)) => {
                if let Some(worker) = workers.by_id.get(&id) {
                    worker.notify.notify_one();
                }
            }
            Err(RecvError::Lagged(_)) => {
                for worker in workers.by_id.values() {
                    worker.notify.notify_one();
                }
            }
            Err(RecvError::Closed) => break,
        }
    }
}

async fn run_worker(
    shared: Arc<Shared>,
    mut control: watch::Receiver<Option<Arc<SubscriptionSpec>>>,
    notify: Arc<Notify>,
) {
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut next_consumer = 0usize;
    loop {
        while let Some(done) = in_flight.try_join_next() {
            log_panic(done);
        }
        let Some(spec) = control.borrow_and_update().clone() else {
            break;
        };
        let free = (spec.concurrency as usize).saturating_sub(in_flight.len());
        if free == 0 {
            tokio::select! {
                Some(done) = in_flight.join_next() => log_panic(done),
                changed = control.changed() => if changed.is_err() { break },
            }
            continue;
        }
        let want = free.min(spec.batch as usize);
        let leased = match shared.journal.delivery_async() {
            Some(journal) => journal.lease(&spec.id, want).await,
            None => {
                let journal = shared.journal.clone();
                let id = spec.id.clone();
                blocking(move || journal.lease(&id, want)).await
            }
        };
        match leased {
            Ok(deliveries) => {
                let full = deliveries.len() == want;
                for delivery in deliveries {
                    let consumer = next_consumer % spec.consumers.len();
                    next_consumer = next_consumer.wrapping_add(1);
                    in_flight.spawn(deliver(shared.clone(), spec.clone(), consumer, delivery));
                }
                if full {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(subscription = %spec.id, error = %e, "cannot lease deliveries");
                tokio::select! {
                    () = tokio::time::sleep(shared.config.error_pause) => {}
                    changed = control.changed() => if changed.is_err() { break },
                }
                continue;
            }
        }
        // Nothing more is due: sleep until the next delivery is, a publish wakes us, or
        // the poll interval passes (leases may expire without anyone saying so).
        let next = {
            let journal = shared.journal.clone();
            let id = spec.id.clone();
            blocking(move || journal.next_ready(&id)).await
        };
        let sleep = match next {
            Ok(Some(at)) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            Ok(None) => shared.config.idle_poll,
            Err(e) => {
                tracing::warn!(subscription = %spec.id, error = %e, "cannot read the next due delivery");
                shared.config.error_pause
            }
        };
        // At least a millisecond: the journal counts in milliseconds, so a delivery due
        // "now" may not be leasable for another fraction of one.
        let sleep = sleep.clamp(Duration::from_millis(1), shared.config.idle_poll);
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            changed = control.changed() => if changed.is_err() { break },
        }
    }
    while let Some(done) = in_flight.join_next().await {
        log_panic(done);
    }
}

/// How long the dispatcher waits for an invocation: nine tenths of the lease, so the
/// failure is recorded while the lease still runs. Were it the whole lease, the delivery
/// could be leased again (and delivered twice) before its failure is written.
fn give_up_after(lease: Duration) -> Duration {
    lease.mul_f64(0.9)
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "a delivery task panicked; the delivery is retried when its lease expires");
    }
}

async fn deliver(
    shared: Arc<Shared>,
    spec: Arc<SubscriptionSpec>,
    consumer: usize,
    delivery: Delivery,
) {
    let message_id = delivery.message.id.clone();
    let attempt = delivery.attempt;
    let invocation = shared
        .invoker
        .invoke(&spec, &spec.consumers[consumer], delivery);
    let deadline = give_up_after(spec.timeout);
    let outcome = match tokio::time::timeout(deadline, invocation).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::error(format!(
            "no answer within {}",
            humantime::format_duration(deadline)
        )),
    };
    let success = outcome.is_success();
    if !success {
        tracing::debug!(
            subscription = %spec.id, message = %message_id, attempt, error = %outcome.describe(),
            "delivery attempt failed"
        );
    }
    let recorded = match shared.journal.delivery_async() {
        Some(journal) if success => journal.ack(&spec.id, &message_id, &outcome).await,
        Some(journal) => journal.fail(&spec.id, &message_id, &outcome).await,
        None => {
            let journal = shared.journal.clone();
            let subscription = spec.id.clone();
            let id = message_id.clone();
            blocking(move || {
                if success {
                    journal.ack(&subscription, &id, &outcome)
                } else {
                    journal.fail(&subscription, &id, &outcome)
                }
            })
            .await
        }
    };
    if let Err(e) = recorded {
        tracing::warn!(
            subscription = %spec.id, message = %message_id, error = %e,
            "cannot record a delivery outcome; it is delivered again when its lease expires"
        );
    }
}
