//! The dispatcher against the embedded journal and a recording invoker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Call, TestInvoker, consumer, eventually, message, message_with_id, open, spec};
use crate::EmbeddedJournal;
use tessera_events::{
    DeliveryState, Dispatcher, DispatcherConfig, Journal, NewMessage, Outcome, SubscriptionSpec,
};

const PATIENCE: Duration = Duration::from_secs(20);

async fn publish(journal: &Arc<EmbeddedJournal>, messages: Vec<NewMessage>) -> Vec<String> {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || journal.publish("shop", messages).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect()
}

fn delivered(journal: &EmbeddedJournal, subscription: &str) -> u64 {
    journal
        .stats()
        .unwrap()
        .iter()
        .find(|s| s.id == subscription)
        .map_or(0, |s| s.delivered)
}

fn start(journal: &Arc<EmbeddedJournal>, invoker: &TestInvoker) -> Dispatcher {
    Dispatcher::start(journal.clone(), Arc::new(invoker.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_delivered_once_and_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let invoker = TestInvoker::succeeding();
    let dispatcher = start(&journal, &invoker);
    let sub = spec("shop/worker/orders", "orders");
    dispatcher
        .set_subscriptions(vec![sub.clone()])
        .await
        .unwrap();
    let ids = publish(
        &journal,
        (0..50).map(|i| message("orders", &i.to_string())).collect(),
    )
    .await;
    eventually(PATIENCE, "50 deliveries", || {
        delivered(&journal, &sub.id) == 50
    })
    .await;

    let mut calls = invoker.calls();
    calls.sort_by(|a, b| a.message.cmp(&b.message));
    let mut expected: Vec<Call> = ids
        .iter()
        .map(|id| Call {
            subscription: sub.id.clone(),
            service: "worker".into(),
            message: id.clone(),
            attempt: 1,
        })
        .collect();
    expected.sort_by(|a, b| a.message.cmp(&b.message));
    assert_eq!(calls, expected);
    let status = journal.status(&sub.id, &ids[0]).unwrap().unwrap();
    assert_eq!(status.state, DeliveryState::Succeeded);
    assert_eq!(status.last.unwrap().body, b"done");
    dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_a_queue_share_the_work_and_topics_fan_out() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let invoker = TestInvoker::succeeding();
    let dispatcher = start(&journal, &invoker);
    let queue = SubscriptionSpec {
        consumers: vec![consumer("a"), consumer("b")],
        ..spec("shop/queue:jobs", "jobs")
    };
    let audit = spec("shop/audit/jobs", "jobs");
    dispatcher
        .set_subscriptions(vec![queue.clone(), audit.clone()])
        .await
        .unwrap();
    let ids = publish(
        &journal,
        (0..100).map(|i| message("jobs", &i.to_string())).collect(),
    )
    .await;
    eventually(PATIENCE, "all deliveries", || {
        delivered(&journal, &queue.id) == 100 && delivered(&journal, &audit.id) == 100
    })
    .await;

    let calls = invoker.calls();
    let mut per_message: HashMap<&str, usize> = HashMap::new();
    let mut per_service: HashMap<&str, usize> = HashMap::new();
    for call in calls.iter().filter(|c| c.subscription == queue.id) {
        *per_message.entry(&call.message).or_default() += 1;
        *per_service.entry(&call.service).or_default() += 1;
    }
    assert_eq!(per_message.len(), 100);
    assert!(
        per_message.values().all(|n| *n == 1),
        "each message went to exactly one consumer"
    );
    assert!(ids.iter().all(|id| per_message.contains_key(id.as_str())));
    assert_eq!(
        (per_service["a"], per_service["b"]),
        (50, 50),
        "round-robin"
    );
    assert_eq!(
        calls.iter().filter(|c| c.subscription == audit.id).count(),
        100,
        "the other subscription got every message too"
    );
    dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_the_same_id_then_dead_lettered_and_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let invoker = TestInvoker::new(Duration::ZERO, |_| Outcome::response(503, b"busy".to_vec()));
    let dispatcher = start(&journal, &invoker);
    let sub = SubscriptionSpec {
        backoff: Duration::from_millis(20),
        ..spec("shop/worker/orders", "orders")
    };
    dispatcher
        .set_subscriptions(vec![sub.clone()])
        .await
        .unwrap();
    publish(&journal, vec![message_with_id("orders", "order-1")]).await;
    eventually(PATIENCE, "a dead letter", || {
        journal.dead_letters(&sub.id, 10).unwrap().len() == 1
    })
    .await;

    let attempts: Vec<(String, u32)> = invoker
        .calls()
        .into_iter()
        .map(|c| (c.message, c.attempt))
        .collect();
    assert_eq!(
        attempts,
        [
            ("order-1".into(), 1),
            ("order-1".into(), 2),
            ("order-1".into(), 3)
        ]
    );
    let dead = journal.dead_letter(&sub.id, "order-1").unwrap().unwrap();
    assert_eq!(
        (dead.attempts, dead.last_status, dead.last_error.as_str()),
        (3, 503, "status 503")
    );
    let stats = journal.stats().unwrap();
    assert_eq!(
        (stats[0].dead, stats[0].retries, stats[0].delivered),
        (1, 3, 0)
    );

    invoker.answer(|_| Outcome::response(204, Vec::new()));
    assert_eq!(journal.redrive(&sub.id, None).unwrap(), 1);
    eventually(PATIENCE, "the re-driven delivery", || {
        delivered(&journal, &sub.id) == 1
    })
    .await;
    assert_eq!(
        invoker.calls().last().unwrap().attempt,
        1,
        "attempts start over"
    );
    dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_does_not_answer_in_time_fails_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let invoker = TestInvoker::new(Duration::from_secs(5), |_| {
        Outcome::response(200, Vec::new())
    });
    let dispatcher = start(&journal, &invoker);
    let sub = SubscriptionSpec {
        max_attempts: 1,
        timeout: Duration::from_millis(100),
        ..spec("s", "orders")
    };
    dispatcher
        .set_subscriptions(vec![sub.clone()])
        .await
        .unwrap();
    publish(&journal, vec![message_with_id("orders", "slow")]).await;
    eventually(PATIENCE, "a dead letter", || {
        journal.dead_letter(&sub.id, "slow").unwrap().is_some()
    })
    .await;
    assert_eq!(
        journal
            .dead_letter(&sub.id, "slow")
            .unwrap()
            .unwrap()
            .last_error,
        "no answer within 90ms"
    );
    dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_concurrency_deliveries_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let invoker = TestInvoker::new(Duration::from_millis(30), |_| {
        Outcome::response(200, Vec::new())
    });
    let dispatcher = start(&journal, &invoker);
    let sub = SubscriptionSpec {
        concurrency: 3,
        batch: 2,
        ..spec("s", "orders")
    };
    dispatcher
        .set_subscriptions(vec![sub.clone()])
        .await
        .unwrap();
    publish(
        &journal,
        (0..30).map(|i| message("orders", &i.to_string())).collect(),
    )
    .await;
    eventually(PATIENCE, "30 deliveries", || {
        delivered(&journal, &sub.id) == 30
    })
    .await;
    assert_eq!(invoker.most_running(), 3);
    dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_wakes_the_dispatcher_without_waiting_for_the_poll() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let invoker = TestInvoker::succeeding();
    let config = DispatcherConfig {
        idle_poll: Duration::from_secs(60),
        ..DispatcherConfig::default()
    };
    let dispatcher = Dispatcher::start_with(journal.clone(), Arc::new(invoker.clone()), config);
    let sub = spec("s", "orders");
    dispatcher
        .set_subscriptions(vec![sub.clone()])
        .await
        .unwrap();
    // Let the worker find nothing and go to sleep.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    publish(&journal, vec![message("orders", "now")]).await;
    eventually(Duration::from_secs(5), "the delivery", || {
        delivered(&journal, &sub.id) == 1
    })
    .await;
    println!("publish to ack after the wake-up: {:.2?}", start.elapsed());
    dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_subscription_is_not_delivered_until_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let sub = spec("shop/worker/orders", "orders");
    let other = spec("shop/other/x", "x");
    journal
        .register(tessera_events::DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    publish(
        &journal,
        (0..3).map(|i| message("orders", &i.to_string())).collect(),
    )
    .await;

    let invoker = TestInvoker::succeeding();
    let dispatcher = start(&journal, &invoker);
    dispatcher
        .set_subscriptions(vec![other.clone()])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(invoker.call_count(), 0);

    dispatcher
        .set_subscriptions(vec![other, sub.clone()])
        .await
        .unwrap();
    eventually(PATIENCE, "the kept deliveries", || {
        delivered(&journal, &sub.id) == 3
    })
    .await;
    dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_deliveries_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let invoker = TestInvoker::new(Duration::from_millis(300), |_| {
        Outcome::response(200, Vec::new())
    });
    let dispatcher = start(&journal, &invoker);
    let sub = spec("s", "orders");
    dispatcher
        .set_subscriptions(vec![sub.clone()])
        .await
        .unwrap();
    publish(&journal, vec![message_with_id("orders", "m")]).await;
    eventually(PATIENCE, "the call", || invoker.call_count() == 1).await;
    dispatcher.shutdown().await;
    assert_eq!(
        journal.status(&sub.id, "m").unwrap().unwrap().state,
        DeliveryState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_throughput() {
    const MESSAGES: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let invoker = TestInvoker::succeeding();
    let dispatcher = start(&journal, &invoker);
    let sub = SubscriptionSpec {
        concurrency: 256,
        batch: 256,
        ..spec("s", "orders")
    };
    dispatcher
        .set_subscriptions(vec![sub.clone()])
        .await
        .unwrap();

    let start = Instant::now();
    let publisher = {
        let journal = journal.clone();
        tokio::task::spawn_blocking(move || {
            for batch in 0..MESSAGES / 100 {
                let messages = (0..100)
                    .map(|i| message("orders", &format!("{batch}-{i}")))
                    .collect();
                journal.publish("shop", messages).unwrap();
            }
        })
    };
    // Each publish wakes the workers through the journal.
    publisher.await.unwrap();
    let published = start.elapsed();
    eventually(Duration::from_secs(120), "every delivery", || {
        delivered(&journal, &sub.id) == MESSAGES as u64
    })
    .await;
    let elapsed = start.elapsed();
    println!(
        "end to end: {MESSAGES} messages published in batches of 100 (done after {published:.2?}) and delivered and \
         acknowledged in {elapsed:.2?}: {:.0} messages/s",
        MESSAGES as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(invoker.call_count(), MESSAGES);
    dispatcher.shutdown().await;
}
