//! The embedded journal beyond the conformance suite every journal runs: durability
//! across reopening, retention and pruning, group commit, and older schemas.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{open, open_with};
use crate::JournalConfig;
use tessera_events::conformance::{self, failure, message, ok, pending, spec};
use tessera_events::{DEFAULT_OWNER, Journal, NewMessage};

#[test]
fn journal_conformance() {
    conformance::run(|test| {
        let dir = tempfile::tempdir().unwrap();
        test(&open(dir.path()));
    });
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
