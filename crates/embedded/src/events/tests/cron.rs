//! The cron scheduler against the embedded journal.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{eventually, open, spec};
use crate::EmbeddedJournal;
use tessera_events::tick_message;
use tessera_events::{
    CronScheduler, CronSpec, DEFAULT_OWNER, Journal, MissedTicks, Schedule, from_unix_ms, unix_ms,
};

const HOUR_MS: i64 = 3_600_000;

fn cron_spec(n: usize, schedule: &str, missed: MissedTicks) -> CronSpec {
    CronSpec {
        id: format!("shop/worker/cron:{n}"),
        app: "shop".into(),
        topic: format!("$cron/worker/{n}"),
        schedule: Schedule::parse(schedule).unwrap(),
        missed,
    }
}

type Fired = Arc<Mutex<Vec<(String, String)>>>;

fn start(journal: &Arc<EmbeddedJournal>) -> (CronScheduler, Fired) {
    let fired: Fired = Arc::default();
    let record = fired.clone();
    // A tick is seen as the journal's wake-up for its topic, as a dispatcher sees it.
    let mut wakeups = journal.wakeups();
    tokio::spawn(async move {
        while let Ok(wakeup) = wakeups.recv().await {
            if let tessera_events::Wakeup::Topic { app, topic } = wakeup {
                record.lock().unwrap().push((app, topic));
            }
        }
    });
    (CronScheduler::start(journal.clone()), fired)
}

/// Installs a subscription for each cron spec, as the node would.
fn subscribe(journal: &EmbeddedJournal, specs: &[CronSpec]) {
    let subs: Vec<_> = specs.iter().map(|c| spec(&c.id, &c.topic)).collect();
    journal.register(DEFAULT_OWNER, &subs).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tick_is_published_once_with_a_deterministic_id() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let every = cron_spec(0, "@every 1s", MissedTicks::Skip);
    subscribe(&journal, std::slice::from_ref(&every));
    let (scheduler, fired) = start(&journal);
    let started = SystemTime::now();
    scheduler.set(vec![every.clone()]);
    eventually(Duration::from_secs(10), "two ticks", || {
        fired.lock().unwrap().len() >= 2
    })
    .await;
    scheduler.shutdown().await;

    assert_eq!(
        fired.lock().unwrap()[0],
        ("shop".to_owned(), "$cron/worker/0".to_owned())
    );
    let leased = journal.lease(&every.id, 100).unwrap();
    assert!(leased.len() >= 2);
    let mut previous = unix_ms(started) / 1000 * 1000;
    for delivery in &leased {
        let message = &delivery.message;
        let (id, tick) = message.id.split_once('@').unwrap();
        assert_eq!(id, every.id);
        let tick: i64 = tick.parse().unwrap();
        assert_eq!(tick % 1000, 0, "ticks are aligned to whole seconds");
        assert!(
            tick > previous,
            "ticks after the start, one per second: {tick} after {previous}"
        );
        previous = tick;
        assert_eq!(message.source, "tessera/cron");
        assert_eq!(message.kind, "dev.tessera.cron.tick");
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        let data: serde_json::Value = serde_json::from_slice(&message.data).unwrap();
        assert_eq!(data["schedule"], "@every 1s");
        let time = humantime::parse_rfc3339(data["tick"].as_str().unwrap()).unwrap();
        assert_eq!(unix_ms(time), tick);
    }
    assert_eq!(
        journal.cron_last_tick(&every.id).unwrap().map(unix_ms),
        Some(previous)
    );
}

/// The last hourly tick at or before now, and a record of a tick three hours earlier.
fn missed_three_hours(journal: &EmbeddedJournal, spec: &CronSpec) -> i64 {
    let this_hour = unix_ms(SystemTime::now()) / HOUR_MS * HOUR_MS;
    let last = from_unix_ms(this_hour - 3 * HOUR_MS);
    assert!(
        journal
            .cron_fire(&spec.app, &spec.id, last, tick_message(spec, last))
            .unwrap()
    );
    // Consume that old tick so only new ones are seen below.
    let old = journal.lease(&spec.id, 10).unwrap();
    assert_eq!(old.len(), 1);
    journal
        .ack(
            &spec.id,
            &old[0].message.id,
            &tessera_events::Outcome::response(200, Vec::new()),
        )
        .unwrap();
    this_hour
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_run_once_or_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let run_once = cron_spec(0, "@every 1h", MissedTicks::RunOnce);
    let skip = cron_spec(1, "@every 1h", MissedTicks::Skip);
    let fresh = cron_spec(2, "@every 1h", MissedTicks::RunOnce);
    let specs = [run_once.clone(), skip.clone(), fresh.clone()];
    subscribe(&journal, &specs);
    let this_hour = missed_three_hours(&journal, &run_once);
    missed_three_hours(&journal, &skip);

    let (scheduler, fired) = start(&journal);
    scheduler.set(specs.to_vec());
    eventually(Duration::from_secs(10), "the missed tick", || {
        !fired.lock().unwrap().is_empty()
    })
    .await;
    // Give a wrongly fired tick of the others time to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    scheduler.shutdown().await;

    assert_eq!(
        *fired.lock().unwrap(),
        [("shop".to_owned(), "$cron/worker/0".to_owned())]
    );
    let leased = journal.lease(&run_once.id, 10).unwrap();
    assert_eq!(leased.len(), 1, "one tick for the whole missed period");
    assert_eq!(
        leased[0].message.id,
        format!("{}@{this_hour}", run_once.id),
        "the latest missed tick"
    );
    assert_eq!(
        journal.cron_last_tick(&run_once.id).unwrap().map(unix_ms),
        Some(this_hour)
    );
    assert!(journal.lease(&skip.id, 10).unwrap().is_empty(), "skipped");
    assert!(
        journal.lease(&fresh.id, 10).unwrap().is_empty(),
        "a new schedule fires nothing for the past"
    );
    assert_eq!(journal.cron_last_tick(&fresh.id).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_does_not_fire_a_tick_again() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let run_once = cron_spec(0, "@every 1h", MissedTicks::RunOnce);
    subscribe(&journal, std::slice::from_ref(&run_once));
    missed_three_hours(&journal, &run_once);
    for _ in 0..2 {
        let (scheduler, _fired) = start(&journal);
        scheduler.set(vec![run_once.clone()]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        scheduler.shutdown().await;
    }
    assert_eq!(
        journal.lease(&run_once.id, 10).unwrap().len(),
        1,
        "the second start found nothing missed"
    );
}
