//! The embedded journal on its own: durability, fan-out, leases, retries, dead letters,
//! statistics, status, retention and group commit.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{message, message_with_id, open, open_with, spec};
use crate::JournalConfig;
use tessera_events::{
    DEFAULT_OWNER, DeliveryState, EventError, Journal, NewMessage, Outcome, from_unix_ms, unix_ms,
};

fn failure() -> Outcome {
    Outcome::response(500, b"boom".to_vec())
}

fn ok() -> Outcome {
    Outcome::response(200, b"{\"ok\":true}".to_vec())
}

#[test]
fn published_messages_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let sub = spec("shop/worker/orders", "orders");
    let ids: Vec<String> = {
        let journal = open(dir.path());
        journal
            .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
            .unwrap();
        let mut first = message("orders", "one");
        first.attributes = vec![
            ("method".into(), "POST".into()),
            ("path".into(), "/x".into()),
        ];
        let published = journal
            .publish("shop", vec![first, message("orders", "two")])
            .unwrap();
        published.into_iter().map(|p| p.id).collect()
    };
    let journal = open(dir.path());
    let leased = journal.lease(&sub.id, 10).unwrap();
    let got: Vec<&str> = leased.iter().map(|d| d.message.id.as_str()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let first = &leased[0];
    assert_eq!(first.attempt, 1);
    assert_eq!(first.subscription, sub.id);
    assert_eq!(first.message.data, b"one");
    assert_eq!(first.message.topic, "orders");
    assert_eq!(first.message.kind, "com.example.order.created");
    assert_eq!(first.message.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        first.message.attributes,
        [
            ("method".into(), "POST".into()),
            ("path".into(), "/x".into())
        ]
    );
    assert!(leased[1].message.attributes.is_empty());
    let age = SystemTime::now()
        .duration_since(first.message.time)
        .unwrap();
    assert!(age < Duration::from_secs(60), "{age:?}");
}

#[test]
fn generated_ids_are_distinct_uuid_v7() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let published = journal
        .publish("shop", vec![message("t", "a"), message("t", "b")])
        .unwrap();
    assert_ne!(published[0].id, published[1].id);
    for p in &published {
        let uuid = uuid::Uuid::parse_str(&p.id).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert!(p.new);
    }
}

#[test]
fn publish_fans_out_to_every_subscription_of_the_apps_topic() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let billing = spec("shop/billing/orders", "orders");
    let mail = spec("shop/mail/orders", "orders");
    let other_topic = spec("shop/mail/returns", "returns");
    let other_app = tessera_events::SubscriptionSpec {
        app: "blog".into(),
        ..spec("blog/mail/orders", "orders")
    };
    journal
        .register(
            DEFAULT_OWNER,
            &[
                billing.clone(),
                mail.clone(),
                other_topic.clone(),
                other_app.clone(),
            ],
        )
        .unwrap();

    let id = journal
        .publish("shop", vec![message("orders", "x")])
        .unwrap()[0]
        .id
        .clone();
    for sub in [&billing, &mail] {
        let leased = journal.lease(&sub.id, 10).unwrap();
        assert_eq!(leased.len(), 1, "{}", sub.id);
        assert_eq!(leased[0].message.id, id);
    }
    assert!(journal.lease(&other_topic.id, 10).unwrap().is_empty());
    assert!(journal.lease(&other_app.id, 10).unwrap().is_empty());
}

#[test]
fn a_topic_without_subscriptions_accepts_and_remembers_messages() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let published = journal
        .publish("shop", vec![message_with_id("nobody", "m1")])
        .unwrap();
    assert_eq!(published[0].id, "m1");
    assert!(published[0].new);
    let again = journal
        .publish("shop", vec![message_with_id("nobody", "m1")])
        .unwrap();
    assert!(!again[0].new, "the id still deduplicates");
}

#[test]
fn publishing_an_existing_id_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sub = spec("shop/worker/orders", "orders");
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let first = journal
        .publish("shop", vec![message_with_id("orders", "order-1")])
        .unwrap();
    assert!(first[0].new);
    // A client retry, and a duplicate inside one batch.
    let mut changed = message_with_id("orders", "order-1");
    changed.data = b"different".to_vec();
    let again = journal
        .publish(
            "shop",
            vec![
                changed,
                message_with_id("orders", "order-2"),
                message_with_id("orders", "order-2"),
            ],
        )
        .unwrap();
    assert_eq!(
        again.iter().map(|p| p.new).collect::<Vec<_>>(),
        [false, true, false]
    );
    let leased = journal.lease(&sub.id, 10).unwrap();
    assert_eq!(leased.len(), 2);
    assert_eq!(
        leased[0].message.data, b"order-1",
        "the first publication wins"
    );
    // The same id in another app is another message.
    assert!(
        journal
            .publish("blog", vec![message_with_id("orders", "order-1")])
            .unwrap()[0]
            .new
    );
}

#[test]
fn failed_attempts_back_off_then_dead_letter_and_redrive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sub = tessera_events::SubscriptionSpec {
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..spec("shop/worker/orders", "orders")
    };
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let id = journal
        .publish("shop", vec![message("orders", "x")])
        .unwrap()[0]
        .id
        .clone();

    // Attempt k fails; the retry is due after jitter in [d/2, d], d = 100ms * 2^(k-1).
    for (attempt, delay_ms) in [(1u32, 100u64), (2, 200)] {
        let leased = journal.lease(&sub.id, 10).unwrap();
        assert_eq!(leased.len(), 1);
        assert_eq!(leased[0].attempt, attempt);
        assert_eq!(
            leased[0].message.id, id,
            "the ce-id is stable across attempts"
        );
        let before = SystemTime::now();
        journal.fail(&sub.id, &id, &failure()).unwrap();
        let after = SystemTime::now();
        let due = journal.next_ready(&sub.id).unwrap().unwrap();
        // The journal took its clock between `before` and `after` (to the millisecond).
        let most = due.duration_since(before).unwrap_or(Duration::ZERO);
        let least = due.duration_since(after).unwrap_or(Duration::ZERO);
        assert!(
            most + Duration::from_millis(1) >= Duration::from_millis(delay_ms / 2)
                && least <= Duration::from_millis(delay_ms),
            "attempt {attempt}: retry due {least:?} to {most:?} after the failure"
        );
        assert!(
            journal.lease(&sub.id, 10).unwrap().is_empty(),
            "not due yet"
        );
        let status = journal.status(&sub.id, &id).unwrap().unwrap();
        assert_eq!(
            (status.state, status.attempts),
            (DeliveryState::Pending, attempt)
        );
        std::thread::sleep(
            due.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(2),
        );
    }
    let last = journal.lease(&sub.id, 10).unwrap();
    assert_eq!(last[0].attempt, 3);
    journal
        .fail(&sub.id, &id, &Outcome::error("trap: unreachable"))
        .unwrap();
    assert_eq!(
        journal.next_ready(&sub.id).unwrap(),
        None,
        "dead letters are not pending"
    );
    assert!(journal.lease(&sub.id, 10).unwrap().is_empty());

    let dead = journal.dead_letters(&sub.id, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, id);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error, "trap: unreachable");
    assert_eq!(dead[0].last_status, 0);
    assert_eq!(
        journal.dead_letter(&sub.id, &id).unwrap(),
        Some(dead[0].clone())
    );
    assert_eq!(journal.dead_letter(&sub.id, "nope").unwrap(), None);
    let status = journal.status(&sub.id, &id).unwrap().unwrap();
    assert_eq!(status.state, DeliveryState::Failed);
    assert_eq!(
        status.last.unwrap().error.as_deref(),
        Some("trap: unreachable")
    );

    assert_eq!(journal.redrive(&sub.id, None).unwrap(), 1);
    assert!(journal.dead_letters(&sub.id, 10).unwrap().is_empty());
    let again = journal.lease(&sub.id, 10).unwrap();
    assert_eq!(
        (again[0].message.id.as_str(), again[0].attempt),
        (id.as_str(), 1)
    );
    journal.ack(&sub.id, &id, &ok()).unwrap();
    assert_eq!(
        journal.status(&sub.id, &id).unwrap().unwrap().state,
        DeliveryState::Succeeded
    );
    assert_eq!(journal.redrive(&sub.id, None).unwrap(), 0);
}

#[test]
fn redrive_by_id_leaves_other_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sub = tessera_events::SubscriptionSpec {
        max_attempts: 1,
        ..spec("shop/worker/orders", "orders")
    };
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    journal
        .publish(
            "shop",
            vec![
                message_with_id("orders", "a"),
                message_with_id("orders", "b"),
            ],
        )
        .unwrap();
    for delivery in journal.lease(&sub.id, 10).unwrap() {
        journal
            .fail(&sub.id, &delivery.message.id, &failure())
            .unwrap();
    }
    let dead = journal.dead_letters(&sub.id, 10).unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| d.message.id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(dead[0].last_error, "status 500");
    assert_eq!(dead[0].last_status, 500);
    assert_eq!(journal.dead_letters(&sub.id, 1).unwrap().len(), 1);
    assert_eq!(
        journal
            .redrive(&sub.id, Some(&["b".to_owned(), "unknown".to_owned()]))
            .unwrap(),
        1
    );
    assert_eq!(
        journal.dead_letters(&sub.id, 10).unwrap()[0].message.id,
        "a"
    );
    assert_eq!(journal.lease(&sub.id, 10).unwrap()[0].message.id, "b");
}

#[test]
fn a_crash_mid_delivery_redelivers_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let sub = spec("shop/worker/orders", "orders");
    let id = {
        let journal = open(dir.path());
        journal
            .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
            .unwrap();
        let id = journal
            .publish("shop", vec![message("orders", "x")])
            .unwrap()[0]
            .id
            .clone();
        assert_eq!(journal.lease(&sub.id, 10).unwrap().len(), 1);
        id
        // Dropped without an ack: the process "crashed" with the delivery in flight.
    };
    let journal = open(dir.path());
    let leased = journal.lease(&sub.id, 10).unwrap();
    assert_eq!(
        leased.len(),
        1,
        "the 30s lease of the dead process is released on open"
    );
    assert_eq!(
        (leased[0].message.id.as_str(), leased[0].attempt),
        (id.as_str(), 2)
    );
}

#[test]
fn an_expired_lease_makes_the_delivery_ready_again() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sub = tessera_events::SubscriptionSpec {
        timeout: Duration::from_millis(300),
        max_attempts: 2,
        ..spec("s", "orders")
    };
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let id = journal
        .publish("shop", vec![message("orders", "x")])
        .unwrap()[0]
        .id
        .clone();
    assert_eq!(journal.lease(&sub.id, 10).unwrap()[0].attempt, 1);
    assert!(journal.lease(&sub.id, 10).unwrap().is_empty(), "leased");
    assert_eq!(
        journal.status(&sub.id, &id).unwrap().unwrap().state,
        DeliveryState::Running
    );
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(
        journal.status(&sub.id, &id).unwrap().unwrap().state,
        DeliveryState::Pending
    );
    assert_eq!(journal.lease(&sub.id, 10).unwrap()[0].attempt, 2);
    // The last attempt's lease expiring too is a failure: dead-lettered, not leased.
    std::thread::sleep(Duration::from_millis(350));
    assert!(journal.lease(&sub.id, 10).unwrap().is_empty());
    let dead = journal.dead_letter(&sub.id, &id).unwrap().unwrap();
    assert_eq!(dead.attempts, 2);
    assert_eq!(
        dead.last_error,
        "no outcome before the lease of attempt 2 expired"
    );
    // A late success still counts and takes it out of the dead letters.
    journal.ack(&sub.id, &id, &ok()).unwrap();
    assert_eq!(journal.dead_letter(&sub.id, &id).unwrap(), None);
    assert_eq!(
        journal.status(&sub.id, &id).unwrap().unwrap().state,
        DeliveryState::Succeeded
    );
}

#[test]
fn stats_count_each_state() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sub = tessera_events::SubscriptionSpec {
        max_attempts: 2,
        ..spec("shop/worker/orders", "orders")
    };
    let idle = spec("shop/idle/other", "other");
    journal
        .register(DEFAULT_OWNER, &[sub.clone(), idle.clone()])
        .unwrap();
    let ids: Vec<String> = journal
        .publish(
            "shop",
            (0..6).map(|i| message("orders", &i.to_string())).collect(),
        )
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    let count = |journal: &crate::EmbeddedJournal| {
        let stats = journal.stats().unwrap();
        assert_eq!(stats.len(), 2);
        let idle_stats = stats.iter().find(|s| s.id == idle.id).unwrap();
        assert_eq!(
            (idle_stats.ready, idle_stats.in_flight, idle_stats.delivered),
            (0, 0, 0)
        );
        let s = stats.iter().find(|s| s.id == sub.id).unwrap().clone();
        assert!(s.active);
        (
            s.ready,
            s.in_flight,
            s.retrying,
            s.dead,
            s.delivered,
            s.retries,
        )
    };
    assert_eq!(count(&journal), (6, 0, 0, 0, 0, 0));

    assert_eq!(journal.lease(&sub.id, 4).unwrap().len(), 4);
    journal.ack(&sub.id, &ids[0], &ok()).unwrap();
    journal.ack(&sub.id, &ids[0], &ok()).unwrap(); // twice: counted once
    journal.fail(&sub.id, &ids[1], &failure()).unwrap();
    journal.fail(&sub.id, &ids[2], &failure()).unwrap();
    // In flight: 3. Ready: 1 and 2 (retrying), 4 and 5.
    assert_eq!(count(&journal), (4, 1, 2, 0, 1, 2));

    std::thread::sleep(Duration::from_millis(60));
    let again = journal.lease(&sub.id, 10).unwrap();
    let mut again: Vec<(&str, u32)> = again
        .iter()
        .map(|d| (d.message.id.as_str(), d.attempt))
        .collect();
    // First attempts in publication order, then the retries (in the order of their
    // jittered due times).
    again[2..].sort();
    assert_eq!(
        again,
        [
            (ids[4].as_str(), 1),
            (ids[5].as_str(), 1),
            (ids[1].as_str(), 2),
            (ids[2].as_str(), 2)
        ]
    );
    journal.fail(&sub.id, &ids[2], &failure()).unwrap(); // out of attempts: dead
    journal.fail(&sub.id, &ids[2], &failure()).unwrap(); // not leased any more: ignored
    // In flight: 1, 3, 4, 5.
    assert_eq!(count(&journal), (0, 4, 0, 1, 1, 3));
}

#[test]
fn status_follows_a_delivery_and_keeps_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sub = spec("shop/worker/async", "$async/worker");
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let id = journal
        .publish("shop", vec![message("$async/worker", "call")])
        .unwrap()[0]
        .id
        .clone();
    let pending = journal.status(&sub.id, &id).unwrap().unwrap();
    assert_eq!(
        (pending.state, pending.attempts, pending.last),
        (DeliveryState::Pending, 0, None)
    );
    journal.lease(&sub.id, 1).unwrap();
    assert_eq!(
        journal.status(&sub.id, &id).unwrap().unwrap().state,
        DeliveryState::Running
    );
    journal
        .ack(&sub.id, &id, &Outcome::response(201, b"created".to_vec()))
        .unwrap();
    let done = journal.status(&sub.id, &id).unwrap().unwrap();
    assert_eq!(done.state, DeliveryState::Succeeded);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.last, Some(Outcome::response(201, b"created".to_vec())));
    assert_eq!(journal.status(&sub.id, "unknown").unwrap(), None);
    assert!(
        matches!(journal.status("nope", &id), Err(EventError::UnknownSubscription(s)) if s == "nope")
    );
    assert!(matches!(
        journal.ack(&sub.id, "unknown", &ok()),
        Err(EventError::NoDelivery { .. })
    ));
}

#[test]
fn result_bodies_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sub = spec("s", "t");
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let id = journal.publish("shop", vec![message("t", "x")]).unwrap()[0]
        .id
        .clone();
    journal.lease(&sub.id, 1).unwrap();
    journal
        .ack(
            &sub.id,
            &id,
            &Outcome::response(200, vec![b'x'; tessera_events::MAX_RESULT_BODY_BYTES + 10]),
        )
        .unwrap();
    let body = journal
        .status(&sub.id, &id)
        .unwrap()
        .unwrap()
        .last
        .unwrap()
        .body;
    assert_eq!(body.len(), tessera_events::MAX_RESULT_BODY_BYTES);
}

#[test]
fn a_removed_subscription_keeps_its_deliveries_until_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sub = spec("shop/worker/orders", "orders");
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let kept = journal
        .publish("shop", vec![message("orders", "kept")])
        .unwrap()[0]
        .id
        .clone();
    journal.register(DEFAULT_OWNER, &[]).unwrap();
    assert!(journal.lease(&sub.id, 10).unwrap().is_empty());
    journal
        .publish("shop", vec![message("orders", "not fanned out")])
        .unwrap();
    let stats = journal.stats().unwrap();
    assert_eq!(stats.len(), 1);
    assert!(!stats[0].active);
    assert_eq!(stats[0].ready, 1);

    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let leased = journal.lease(&sub.id, 10).unwrap();
    assert_eq!(
        leased
            .iter()
            .map(|d| d.message.id.as_str())
            .collect::<Vec<_>>(),
        [kept.as_str()]
    );
}

#[test]
fn invalid_input_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let bad = tessera_events::SubscriptionSpec {
        max_attempts: 0,
        ..spec("s", "t")
    };
    let error = journal
        .register(DEFAULT_OWNER, &[bad])
        .unwrap_err()
        .to_string();
    assert_eq!(error, "subscription \"s\": max_attempts must be at least 1");
    let error = journal
        .register(DEFAULT_OWNER, &[spec("s", "t"), spec("s", "u")])
        .unwrap_err()
        .to_string();
    assert_eq!(error, "subscription \"s\" is listed twice");
    let error = journal
        .publish("shop", vec![message("", "x")])
        .unwrap_err()
        .to_string();
    assert_eq!(error, "topic must not be empty");
    let error = journal
        .publish("shop", vec![message_with_id("t", "")])
        .unwrap_err()
        .to_string();
    assert_eq!(error, "a message id must not be empty");
    assert!(matches!(
        journal.lease("missing", 1),
        Err(EventError::UnknownSubscription(_))
    ));
    // A refused request does not disturb others committed in the same group.
    assert!(journal.publish("shop", vec![message("t", "fine")]).unwrap()[0].new);
}

#[test]
fn finished_deliveries_and_their_messages_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        max_results: 2,
        prune_interval: Duration::from_millis(50),
        ..JournalConfig::default()
    };
    let journal = open_with(dir.path(), config);
    let sub = spec("s", "t");
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let ids: Vec<String> = journal
        .publish(
            "shop",
            (0..5).map(|i| message("t", &i.to_string())).collect(),
        )
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    for d in journal.lease(&sub.id, 10).unwrap() {
        journal.ack(&sub.id, &d.message.id, &ok()).unwrap();
    }
    // The writer prunes when idle for a prune interval.
    std::thread::sleep(Duration::from_millis(200));
    let kept: Vec<bool> = ids
        .iter()
        .map(|id| journal.status(&sub.id, id).unwrap().is_some())
        .collect();
    assert_eq!(kept, [false, false, false, true, true]);
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let messages: i64 = conn
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(messages, 2, "payloads nothing refers to are deleted");
    // Totals outlive the pruned rows.
    assert_eq!(journal.stats().unwrap()[0].delivered, 5);
}

#[test]
fn results_older_than_the_retention_are_pruned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let sub = spec("s", "t");
    let id = {
        let journal = open(dir.path());
        journal
            .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
            .unwrap();
        let id = journal.publish("shop", vec![message("t", "x")]).unwrap()[0]
            .id
            .clone();
        journal.lease(&sub.id, 1).unwrap();
        journal.ack(&sub.id, &id, &ok()).unwrap();
        id
    };
    std::thread::sleep(Duration::from_millis(20));
    let short = JournalConfig {
        result_retention: Duration::from_millis(10),
        ..JournalConfig::default()
    };
    let journal = open_with(dir.path(), short);
    assert_eq!(journal.status(&sub.id, &id).unwrap(), None);
    // Its id no longer deduplicates: the message is gone.
    assert!(
        journal
            .publish(
                "shop",
                vec![NewMessage {
                    id: Some(id),
                    ..message("t", "x")
                }]
            )
            .unwrap()[0]
            .new
    );
}

#[test]
fn dead_letters_expire_and_are_capped_per_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let sub = tessera_events::SubscriptionSpec {
        max_attempts: 1,
        ..spec("s", "t")
    };
    let bodies = ["0123456789", "abcdefghij", "ABCDEFGHIJ"];
    let reopen = |config: JournalConfig| {
        open_with(
            dir.path(),
            JournalConfig {
                prune_interval: Duration::from_millis(20),
                ..config
            },
        )
    };
    let kept = |journal: &crate::EmbeddedJournal, n: usize| {
        let started = Instant::now();
        loop {
            let dead = journal.dead_letters(&sub.id, 10).unwrap().len();
            if dead == n {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{dead} dead letters, not {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    {
        // Two of the three fit in 25 bytes.
        let journal = reopen(JournalConfig {
            max_dead_letter_bytes: 25,
            ..JournalConfig::default()
        });
        journal
            .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
            .unwrap();
        journal
            .publish("shop", bodies.iter().map(|b| message("t", b)).collect())
            .unwrap();
        assert!(journal.stored_bytes(&sub.id).unwrap() >= 30);
        for d in journal.lease(&sub.id, 10).unwrap() {
            journal.fail(&sub.id, &d.message.id, &failure()).unwrap();
        }
        // Dead letters are not queued work: the quota's count drops to nothing.
        assert_eq!(journal.stored_bytes(&sub.id).unwrap(), 0);
        kept(&journal, 2);
        let dead = journal.dead_letters(&sub.id, 10).unwrap();
        assert_eq!(
            dead[0].message.data,
            bodies[1].as_bytes(),
            "the oldest went first"
        );
    }
    {
        let journal = reopen(JournalConfig {
            max_dead_letters: 1,
            ..JournalConfig::default()
        });
        kept(&journal, 1);
    }
    std::thread::sleep(Duration::from_millis(20));
    let journal = reopen(JournalConfig {
        dead_letter_retention: Duration::from_millis(10),
        ..JournalConfig::default()
    });
    kept(&journal, 0);
    assert_eq!(journal.stored_bytes("unknown").unwrap(), 0);
}

#[test]
fn cron_fire_publishes_once_per_tick_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sub = spec("shop/worker/cron:0", "$cron/worker/0");
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    assert_eq!(journal.cron_last_tick(&sub.id).unwrap(), None);
    let tick = from_unix_ms(1_700_000_040_000);
    let tick_message = || NewMessage {
        id: Some(format!("{}@{}", sub.id, unix_ms(tick))),
        ..message("$cron/worker/0", "{}")
    };
    assert!(
        journal
            .cron_fire("shop", &sub.id, tick, tick_message())
            .unwrap()
    );
    assert!(
        !journal
            .cron_fire("shop", &sub.id, tick, tick_message())
            .unwrap(),
        "a second node firing the same tick"
    );
    assert_eq!(journal.cron_last_tick(&sub.id).unwrap(), Some(tick));
    // An older tick never moves the record back.
    let older = from_unix_ms(1_700_000_000_000);
    journal
        .cron_fire(
            "shop",
            &sub.id,
            older,
            NewMessage {
                id: Some("older".into()),
                ..tick_message()
            },
        )
        .unwrap();
    assert_eq!(journal.cron_last_tick(&sub.id).unwrap(), Some(tick));
    let leased = journal.lease(&sub.id, 10).unwrap();
    assert_eq!(leased.len(), 2);
    assert_eq!(leased[0].message.id, "shop/worker/cron:0@1700000040000");
}

#[test]
fn group_commit_publishes_many_small_batches_quickly() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 2500;
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let sub = spec("shop/worker/orders", "orders");
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let published = journal
                        .publish("shop", vec![message("orders", &format!("{t}-{i}"))])
                        .unwrap();
                    assert!(published[0].new);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let elapsed = start.elapsed();
    let total = THREADS * PER_THREAD;
    println!(
        "group commit: published {total} messages from {THREADS} threads, one per call, in {elapsed:.2?}: {:.0} messages/s",
        total as f64 / elapsed.as_secs_f64()
    );
    let stats = journal.stats().unwrap();
    assert_eq!(stats[0].ready, total as u64);
}

// --- Registrations per owner, and wake-ups ---

/// Deliveries of a subscription waiting for an attempt.
fn pending(journal: &crate::EmbeddedJournal, subscription: &str) -> usize {
    journal
        .stats()
        .unwrap()
        .into_iter()
        .find(|s| s.id == subscription)
        .map_or(0, |s| s.ready as usize)
}

#[test]
fn each_owner_registers_its_own_set_and_a_subscription_lives_while_anyone_registers_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let orders = spec("shop/a/orders", "orders");
    let audit = spec("shop/b/orders", "orders");
    journal
        .register("node-1", &[orders.clone(), audit.clone()])
        .unwrap();
    journal
        .register("node-2", std::slice::from_ref(&orders))
        .unwrap();
    journal
        .publish("shop", vec![message("orders", "1")])
        .unwrap();
    assert_eq!(pending(&journal, &orders.id), 1);
    assert_eq!(pending(&journal, &audit.id), 1);

    // node-1 drops `audit`: node-2 never had it, so it stops fanning out; `orders` stays.
    journal
        .register("node-1", std::slice::from_ref(&orders))
        .unwrap();
    journal
        .publish("shop", vec![message("orders", "2")])
        .unwrap();
    assert_eq!(pending(&journal, &orders.id), 2);
    assert_eq!(pending(&journal, &audit.id), 1, "kept, but no longer fed");
    assert!(journal.lease(&audit.id, 10).unwrap().is_empty());

    // node-2's registration alone keeps `orders` alive after node-1 withdraws.
    journal.withdraw("node-1").unwrap();
    journal
        .publish("shop", vec![message("orders", "3")])
        .unwrap();
    assert_eq!(pending(&journal, &orders.id), 3);
    journal.withdraw("node-2").unwrap();
    journal
        .publish("shop", vec![message("orders", "4")])
        .unwrap();
    assert_eq!(pending(&journal, &orders.id), 3);
    assert!(journal.lease(&orders.id, 10).unwrap().is_empty());

    // Registering again resumes where it stopped.
    journal
        .register("node-2", std::slice::from_ref(&orders))
        .unwrap();
    assert_eq!(journal.lease(&orders.id, 10).unwrap().len(), 3);
    let error = journal.register("", &[]).unwrap_err();
    assert!(matches!(error, EventError::Invalid(_)), "{error}");
}

#[test]
fn publishes_and_redrives_wake_every_receiver_once_per_new_topic() {
    use tessera_events::Wakeup;
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sub = tessera_events::SubscriptionSpec {
        max_attempts: 1,
        ..spec("shop/a/orders", "orders")
    };
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let mut first = journal.wakeups();
    let mut second = journal.wakeups();
    journal
        .publish(
            "shop",
            vec![
                message_with_id("orders", "a"),
                message_with_id("orders", "b"),
                message_with_id("audit", "c"),
            ],
        )
        .unwrap();
    let topic = |t: &str| Wakeup::Topic {
        app: "shop".into(),
        topic: t.into(),
    };
    for receiver in [&mut first, &mut second] {
        assert_eq!(receiver.try_recv().unwrap(), topic("orders"));
        assert_eq!(receiver.try_recv().unwrap(), topic("audit"));
        assert!(receiver.try_recv().is_err());
    }
    // A duplicate publishes nothing new, so it wakes no one.
    journal
        .publish("shop", vec![message_with_id("orders", "a")])
        .unwrap();
    assert!(first.try_recv().is_err());

    let leased = journal.lease(&sub.id, 1).unwrap();
    journal
        .fail(&sub.id, &leased[0].message.id, &failure())
        .unwrap();
    assert_eq!(journal.redrive(&sub.id, None).unwrap(), 1);
    assert_eq!(
        first.try_recv().unwrap(),
        Wakeup::Subscription(sub.id.clone())
    );
    assert_eq!(journal.redrive(&sub.id, None).unwrap(), 0);
    assert!(
        first.try_recv().is_err(),
        "nothing re-driven, nothing to wake"
    );
}

#[test]
fn a_journal_from_before_registrations_keeps_its_subscriptions_until_someone_registers() {
    let dir = tempfile::tempdir().unwrap();
    let sub = spec("shop/a/orders", "orders");
    {
        let journal = open(dir.path());
        journal
            .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
            .unwrap();
    }
    // Back to schema 1, which had no registrations.
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    conn.execute_batch("DROP TABLE registrations; PRAGMA user_version = 1;")
        .unwrap();
    drop(conn);
    let journal = open(dir.path());
    journal
        .publish("shop", vec![message("orders", "1")])
        .unwrap();
    assert_eq!(
        pending(&journal, &sub.id),
        1,
        "still active after the upgrade"
    );
    journal.register("node-1", &[]).unwrap();
    journal
        .publish("shop", vec![message("orders", "2")])
        .unwrap();
    assert_eq!(
        pending(&journal, &sub.id),
        1,
        "no owner registers it any more"
    );
}
