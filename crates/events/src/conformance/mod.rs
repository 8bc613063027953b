//! The semantics of [`Journal`] as a test suite every backend runs unchanged: the embedded
//! SQLite journal today, the JetStream journal in a cluster. A backend's test calls [`run`]
//! with a function that hands each test a fresh, empty journal; backend specifics (files,
//! reopening, retention settings, group commit) stay in the backend's own tests, which may
//! reuse the helpers below.

mod journal;

use std::time::Duration;

use crate::{Consumer, Journal, NewMessage, Outcome, SubscriptionSpec};

/// One test of the suite.
pub struct Test {
    pub name: &'static str,
    pub run: fn(&dyn Journal),
}

/// Runs every test of the suite in turn, each on a fresh, empty journal that `fresh`
/// creates and hands to the test. A failing test panics; the name printed last before the
/// panic is the failing test's.
pub fn run(fresh: impl Fn(&dyn Fn(&dyn Journal))) {
    for test in TESTS {
        eprintln!("conformance: journal: {}", test.name);
        fresh(&|journal| (test.run)(journal));
    }
}

macro_rules! tests {
    ($($module:ident :: $name:ident),* $(,)?) => {
        /// Every test of the suite, in the order [`run`] runs them.
        pub const TESTS: &[Test] = &[$(Test { name: stringify!($name), run: $module::$name }),*];
    };
}

tests![
    journal::generated_ids_are_distinct_uuid_v7,
    journal::publish_fans_out_to_every_subscription_of_the_apps_topic,
    journal::a_topic_without_subscriptions_accepts_and_remembers_messages,
    journal::publishing_an_existing_id_is_ignored,
    journal::failed_attempts_back_off_then_dead_letter_and_redrive_restarts,
    journal::redrive_by_id_leaves_other_dead_letters,
    journal::an_expired_lease_makes_the_delivery_ready_again,
    journal::stats_count_each_state,
    journal::status_follows_a_delivery_and_keeps_the_result,
    journal::result_bodies_are_capped,
    journal::a_removed_subscription_keeps_its_deliveries_until_it_returns,
    journal::invalid_input_is_refused_with_a_reason,
    journal::cron_fire_publishes_once_per_tick_and_records_it,
    journal::each_owner_registers_its_own_set_and_a_subscription_lives_while_anyone_registers_it,
    journal::publishes_and_redrives_wake_every_receiver_once_per_new_topic,
];

/// A subscription of app `shop` to `topic` with one consumer, three attempts and short
/// delays.
pub fn spec(id: &str, topic: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        id: id.into(),
        app: "shop".into(),
        topic: topic.into(),
        consumers: vec![consumer("worker")],
        max_attempts: 3,
        backoff: Duration::from_millis(40),
        max_backoff: Duration::from_millis(200),
        concurrency: 8,
        batch: 16,
        timeout: Duration::from_secs(30),
    }
}

/// A consumer of `service` at `/events`.
pub fn consumer(service: &str) -> Consumer {
    Consumer {
        service: service.into(),
        path: "/events".into(),
    }
}

/// A text message to `topic` whose id the journal chooses.
pub fn message(topic: &str, data: &str) -> NewMessage {
    NewMessage {
        id: None,
        topic: topic.into(),
        source: "/shop/api".into(),
        kind: "com.example.order.created".into(),
        content_type: Some("text/plain".into()),
        data: data.as_bytes().to_vec(),
        attributes: Vec::new(),
    }
}

/// A message to `topic` with this id (and the id as its body).
pub fn message_with_id(topic: &str, id: &str) -> NewMessage {
    NewMessage {
        id: Some(id.into()),
        ..message(topic, id)
    }
}

/// A failed attempt.
pub fn failure() -> Outcome {
    Outcome::response(500, b"boom".to_vec())
}

/// A successful attempt.
pub fn ok() -> Outcome {
    Outcome::response(200, b"{\"ok\":true}".to_vec())
}

/// Deliveries of a subscription waiting for an attempt.
pub fn pending(journal: &dyn Journal, subscription: &str) -> usize {
    journal
        .stats()
        .unwrap()
        .into_iter()
        .find(|s| s.id == subscription)
        .map_or(0, |s| s.ready as usize)
}
