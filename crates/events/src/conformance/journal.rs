//! The journal's part of the suite: fan-out, idempotent publishes, leases, retries, dead
//! letters and re-drives, statistics, status, cron ticks, registrations and wake-ups.

use std::time::{Duration, SystemTime};

use super::{failure, message, message_with_id, ok, pending, spec};
use crate::{
    DEFAULT_OWNER, DeliveryState, EventError, Journal, NewMessage, Outcome, Wakeup, from_unix_ms,
    unix_ms,
};

pub(super) fn generated_ids_are_distinct_uuid_v7(journal: &dyn Journal) {
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

pub(super) fn publish_fans_out_to_every_subscription_of_the_apps_topic(journal: &dyn Journal) {
    let billing = spec("shop/billing/orders", "orders");
    let mail = spec("shop/mail/orders", "orders");
    let other_topic = spec("shop/mail/returns", "returns");
    let other_app = crate::SubscriptionSpec {
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

pub(super) fn a_topic_without_subscriptions_accepts_and_remembers_messages(journal: &dyn Journal) {
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

pub(super) fn publishing_an_existing_id_is_ignored(journal: &dyn Journal) {
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

pub(super) fn failed_attempts_back_off_then_dead_letter_and_redrive_restarts(
    journal: &dyn Journal,
) {
    // An async invocation's subscription: every backend keeps the status of those.
    let sub = crate::SubscriptionSpec {
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..spec("shop/worker/async", "$async/worker")
    };
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let id = journal
        .publish("shop", vec![message("$async/worker", "x")])
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

pub(super) fn redrive_by_id_leaves_other_dead_letters(journal: &dyn Journal) {
    let sub = crate::SubscriptionSpec {
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

pub(super) fn an_expired_lease_makes_the_delivery_ready_again(journal: &dyn Journal) {
    let sub = crate::SubscriptionSpec {
        timeout: Duration::from_millis(300),
        max_attempts: 2,
        ..spec("s", "$async/worker")
    };
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let id = journal
        .publish("shop", vec![message("$async/worker", "x")])
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

pub(super) fn stats_count_each_state(journal: &dyn Journal) {
    let sub = crate::SubscriptionSpec {
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
    let count = |journal: &dyn Journal| {
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
    assert_eq!(count(journal), (6, 0, 0, 0, 0, 0));

    assert_eq!(journal.lease(&sub.id, 4).unwrap().len(), 4);
    journal.ack(&sub.id, &ids[0], &ok()).unwrap();
    journal.ack(&sub.id, &ids[0], &ok()).unwrap(); // twice: counted once
    journal.fail(&sub.id, &ids[1], &failure()).unwrap();
    journal.fail(&sub.id, &ids[2], &failure()).unwrap();
    // In flight: 3. Ready: 1 and 2 (retrying), 4 and 5.
    assert_eq!(count(journal), (4, 1, 2, 0, 1, 2));

    std::thread::sleep(Duration::from_millis(60));
    let again = journal.lease(&sub.id, 10).unwrap();
    let mut again: Vec<(&str, u32)> = again
        .iter()
        .map(|d| (d.message.id.as_str(), d.attempt))
        .collect();
    // The first attempts of 4 and 5, in publication order, and the retries of 1 and 2
    // (whether retries come before or after first attempts is the backend's choice).
    let first_attempts: Vec<&str> = again
        .iter()
        .filter(|(_, attempt)| *attempt == 1)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(first_attempts, [ids[4].as_str(), ids[5].as_str()]);
    again.sort();
    let mut expected = vec![
        (ids[4].as_str(), 1),
        (ids[5].as_str(), 1),
        (ids[1].as_str(), 2),
        (ids[2].as_str(), 2),
    ];
    expected.sort();
    assert_eq!(again, expected);
    journal.fail(&sub.id, &ids[2], &failure()).unwrap(); // out of attempts: dead
    journal.fail(&sub.id, &ids[2], &failure()).unwrap(); // not leased any more: ignored
    // In flight: 1, 3, 4, 5.
    assert_eq!(count(journal), (0, 4, 0, 1, 1, 3));
}

pub(super) fn status_follows_a_delivery_and_keeps_the_result(journal: &dyn Journal) {
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

pub(super) fn result_bodies_are_capped(journal: &dyn Journal) {
    let sub = spec("s", "$async/worker");
    journal
        .register(DEFAULT_OWNER, std::slice::from_ref(&sub))
        .unwrap();
    let id = journal
        .publish("shop", vec![message("$async/worker", "x")])
        .unwrap()[0]
        .id
        .clone();
    journal.lease(&sub.id, 1).unwrap();
    journal
        .ack(
            &sub.id,
            &id,
            &Outcome::response(200, vec![b'x'; crate::MAX_RESULT_BODY_BYTES + 10]),
        )
        .unwrap();
    let body = journal
        .status(&sub.id, &id)
        .unwrap()
        .unwrap()
        .last
        .unwrap()
        .body;
    assert_eq!(body.len(), crate::MAX_RESULT_BODY_BYTES);
}

pub(super) fn a_removed_subscription_keeps_its_deliveries_until_it_returns(journal: &dyn Journal) {
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

pub(super) fn invalid_input_is_refused_with_a_reason(journal: &dyn Journal) {
    let bad = crate::SubscriptionSpec {
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

pub(super) fn cron_fire_publishes_once_per_tick_and_records_it(journal: &dyn Journal) {
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

pub(super) fn each_owner_registers_its_own_set_and_a_subscription_lives_while_anyone_registers_it(
    journal: &dyn Journal,
) {
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
    assert_eq!(pending(journal, &orders.id), 1);
    assert_eq!(pending(journal, &audit.id), 1);

    // node-1 drops `audit`: node-2 never had it, so it stops fanning out; `orders` stays.
    journal
        .register("node-1", std::slice::from_ref(&orders))
        .unwrap();
    journal
        .publish("shop", vec![message("orders", "2")])
        .unwrap();
    assert_eq!(pending(journal, &orders.id), 2);
    assert_eq!(pending(journal, &audit.id), 1, "kept, but no longer fed");
    assert!(journal.lease(&audit.id, 10).unwrap().is_empty());

    // node-2's registration alone keeps `orders` alive after node-1 withdraws.
    journal.withdraw("node-1").unwrap();
    journal
        .publish("shop", vec![message("orders", "3")])
        .unwrap();
    assert_eq!(pending(journal, &orders.id), 3);
    journal.withdraw("node-2").unwrap();
    journal
        .publish("shop", vec![message("orders", "4")])
        .unwrap();
    assert_eq!(pending(journal, &orders.id), 3);
    assert!(journal.lease(&orders.id, 10).unwrap().is_empty());

    // Registering again resumes where it stopped.
    journal
        .register("node-2", std::slice::from_ref(&orders))
        .unwrap();
    assert_eq!(journal.lease(&orders.id, 10).unwrap().len(), 3);
    let error = journal.register("", &[]).unwrap_err();
    assert!(matches!(error, EventError::Invalid(_)), "{error}");
}

pub(super) fn publishes_and_redrives_wake_every_receiver_once_per_new_topic(journal: &dyn Journal) {
    let sub = crate::SubscriptionSpec {
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
