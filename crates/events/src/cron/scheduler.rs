//! The cron scheduler: one task that sleeps until the next tick of any schedule and
//! publishes it through the journal.
//!
//! A tick is a message with a deterministic id, `<schedule id>@<tick in Unix ms>`,
//! published together with the schedule's last-tick record ([`Journal::cron_fire`]). So a
//! tick is delivered once per schedule even if two nodes fire it, and a restarted node
//! knows which ticks it missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Schedule;
use crate::{EventError, Journal, NewMessage, blocking, unix_ms};

/// `ce-source` of tick messages.
pub const TICK_SOURCE: &str = "tessera/cron";
/// `ce-type` of tick messages.
pub const TICK_KIND: &str = "dev.tessera.cron.tick";

/// Longest sleep, so a jump of the wall clock is noticed within this time.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Wait before firing a tick again after the journal refused it.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What to do about ticks that fell while no node was running the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissedTicks {
    /// Forget them; fire the next tick on time.
    #[default]
    Skip,
    /// Fire once at start for the whole missed period (the latest missed tick).
    RunOnce,
}

/// One cron trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSpec {
    /// Stable key, for example `shop/worker/cron:0`; also the id of the subscription the
    /// ticks are delivered to.
    pub id: String,
    pub app: String,
    /// The subscription's topic, for example `$cron/worker/0`.
    pub topic: String,
    pub schedule: Schedule,
    pub missed: MissedTicks,
}

/// Fires the ticks of a set of schedules. Start it inside a tokio runtime.
pub struct CronScheduler {
    specs: watch::Sender<Vec<CronSpec>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for CronScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronScheduler").finish_non_exhaustive()
    }
}

impl CronScheduler {
    /// Starts the scheduler with no schedules. A fired tick wakes its subscription's
    /// dispatcher through the journal, like any publish.
    pub fn start(journal: Arc<dyn Journal>) -> Self {
        let (specs, receiver) = watch::channel(Vec::new());
        let task = tokio::spawn(run(journal, receiver));
        CronScheduler { specs, task }
    }

    /// Replaces the set of schedules. A schedule whose id was already set keeps its state
    /// if it is unchanged; a new or changed one looks up its last tick and, if it missed
    /// ticks, follows its [`MissedTicks`]. A schedule never fired before fires nothing for
    /// the past.
    pub fn set(&self, specs: Vec<CronSpec>) {
        self.specs.send_replace(specs);
    }

    /// Stops firing; a tick being published is finished first.
    pub async fn shutdown(self) {
        drop(self.specs);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the cron scheduler failed");
        }
    }
}

struct Entry {
    spec: CronSpec,
    /// The next tick to fire.
    due: Option<SystemTime>,
    /// Not before this time (after a failure).
    not_before: SystemTime,
}

async fn run(journal: Arc<dyn Journal>, mut specs: watch::Receiver<Vec<CronSpec>>) {
    let mut entries: HashMap<String, Entry> = HashMap::new();
    loop {
        let now = SystemTime::now();
        for entry in entries.values_mut() {
            let Some(due) = entry.due else { continue };
            if due > now || entry.not_before > now {
                continue;
            }
            match fire(&journal, &entry.spec, due).await {
                Ok(_) => {
                    // From now, not from the tick: a tick fired late does not make the
                    // ones after it fire in a burst.
                    entry.due = entry.spec.schedule.next_after(due.max(SystemTime::now()));
                }
                Err(e) => {
                    tracing::warn!(schedule = %entry.spec.id, error = %e, "cannot fire cron tick; retrying");
                    entry.not_before = SystemTime::now() + RETRY_PAUSE;
                }
            }
        }
        let wake = entries
            .values()
            .filter_map(|entry| entry.due.map(|due| due.max(entry.not_before)))
            .min();
        let sleep = wake
            .map(|wake| {
                wake.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            })
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            changed = specs.changed() => {
                if changed.is_err() {
                    return;
                }
                let wanted = specs.borrow_and_update().clone();
                entries = update(&journal, std::mem::take(&mut entries), wanted).await;
            }
        }
    }
}

async fn update(
    journal: &Arc<dyn Journal>,
    mut old: HashMap<String, Entry>,
    wanted: Vec<CronSpec>,
) -> HashMap<String, Entry> {
    let mut entries = HashMap::with_capacity(wanted.len());
    for spec in wanted {
        if let Some(entry) = old.remove(&spec.id).filter(|entry| entry.spec == spec) {
            entries.insert(spec.id.clone(), entry);
            continue;
        }
        let due = first_due(journal, &spec).await;
        entries.insert(
            spec.id.clone(),
            Entry {
                spec,
                due,
                not_before: SystemTime::UNIX_EPOCH,
            },
        );
    }
    entries
}

/// The first tick to fire for a schedule that was just added.
async fn first_due(journal: &Arc<dyn Journal>, spec: &CronSpec) -> Option<SystemTime> {
    let last = {
        let journal = journal.clone();
        let id = spec.id.clone();
        blocking(move || journal.cron_last_tick(&id)).await
    };
    let now = SystemTime::now();
    let last = match last {
        Ok(last) => last,
        Err(e) => {
            tracing::warn!(schedule = %spec.id, error = %e, "cannot read the last cron tick; missed ticks are skipped");
            None
        }
    };
    match last {
        None => spec.schedule.next_after(now),
        Some(last) => match spec.schedule.last_due(last, now) {
            Some(missed) if spec.missed == MissedTicks::RunOnce => {
                tracing::info!(schedule = %spec.id, tick = %humantime::format_rfc3339_seconds(missed), "firing a missed cron tick");
                Some(missed)
            }
            _ => spec.schedule.next_after(now.max(last)),
        },
    }
}

/// The message of a tick.
pub fn tick_message(spec: &CronSpec, tick: SystemTime) -> NewMessage {
    let tick_ms = unix_ms(tick);
    let time = if tick_ms % 1000 == 0 {
        humantime::format_rfc3339_seconds(tick).to_string()
    } else {
        humantime::format_rfc3339_millis(tick).to_string()
    };
    let data = serde_json::json!({ "schedule": spec.schedule.as_str(), "tick": time });
    NewMessage {
        id: Some(format!("{}@{tick_ms}", spec.id)),
        topic: spec.topic.clone(),
        source: TICK_SOURCE.into(),
        kind: TICK_KIND.into(),
        content_type: Some("application/json".into()),
        data: data.to_string().into_bytes(),
        attributes: Vec::new(),
    }
}

async fn fire(
    journal: &Arc<dyn Journal>,
    spec: &CronSpec,
    tick: SystemTime,
) -> Result<bool, EventError> {
    let journal = journal.clone();
    let message = tick_message(spec, tick);
    let (app, id) = (spec.app.clone(), spec.id.clone());
    blocking(move || journal.cron_fire(&app, &id, tick, message)).await
}
