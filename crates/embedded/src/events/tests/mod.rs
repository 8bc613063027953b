//! Tests of the journal, the dispatcher and the cron scheduler against real SQLite files
//! in temporary directories.

mod cron;
mod dispatcher;
mod journal;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{EmbeddedJournal, JournalConfig};
use tessera_events::conformance::{consumer, message, message_with_id, spec};
use tessera_events::{Consumer, Delivery, Invoker, Outcome, SubscriptionSpec};

fn open(dir: &Path) -> EmbeddedJournal {
    EmbeddedJournal::open(&dir.join("events.db")).unwrap()
}

fn open_with(dir: &Path, config: JournalConfig) -> EmbeddedJournal {
    EmbeddedJournal::open_with(&dir.join("events.db"), config).unwrap()
}

/// Polls `condition` every 10 ms until it holds, failing the test after `limit`.
async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One call an invoker received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    subscription: String,
    service: String,
    message: String,
    attempt: u32,
}

type Behaviour = Box<dyn Fn(&Delivery) -> Outcome + Send>;

/// An invoker that records its calls, answers as told after a delay, and measures how
/// many calls ran at once.
#[derive(Clone)]
struct TestInvoker(Arc<InvokerState>);

struct InvokerState {
    calls: Mutex<Vec<Call>>,
    behaviour: Mutex<Behaviour>,
    delay: Duration,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

impl TestInvoker {
    fn new(delay: Duration, behaviour: impl Fn(&Delivery) -> Outcome + Send + 'static) -> Self {
        TestInvoker(Arc::new(InvokerState {
            calls: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Box::new(behaviour)),
            delay,
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
        }))
    }

    fn succeeding() -> Self {
        Self::new(Duration::ZERO, |_| Outcome::response(200, b"done".to_vec()))
    }

    fn answer(&self, behaviour: impl Fn(&Delivery) -> Outcome + Send + 'static) {
        *self.0.behaviour.lock().unwrap() = Box::new(behaviour);
    }

    fn calls(&self) -> Vec<Call> {
        self.0.calls.lock().unwrap().clone()
    }

    fn call_count(&self) -> usize {
        self.0.calls.lock().unwrap().len()
    }

    fn most_running(&self) -> usize {
        self.0.most_running.load(Ordering::SeqCst)
    }
}

impl Invoker for TestInvoker {
    fn invoke(
        &self,
        subscription: &SubscriptionSpec,
        consumer: &Consumer,
        delivery: Delivery,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        let state = self.0.clone();
        let running = state.running.fetch_add(1, Ordering::SeqCst) + 1;
        state.most_running.fetch_max(running, Ordering::SeqCst);
        state.calls.lock().unwrap().push(Call {
            subscription: subscription.id.clone(),
            service: consumer.service.clone(),
            message: delivery.message.id.clone(),
            attempt: delivery.attempt,
        });
        let outcome = (state.behaviour.lock().unwrap())(&delivery);
        Box::pin(async move {
            if !state.delay.is_zero() {
                tokio::time::sleep(state.delay).await;
            }
            state.running.fetch_sub(1, Ordering::SeqCst);
            outcome
        })
    }
}
