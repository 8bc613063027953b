//! [`ClaimedTicks`]: cron ticks fired once cluster-wide while each node keeps its own event
//! journal.
//!
//! Every node runs the schedules of the revisions it serves, so without this each tick
//! would be delivered once per node. Before a node publishes a tick into its journal it
//! claims it in the KV bucket `TESSERA_CRON` (key `tick.<schedule>.<tick ms>`, a
//! conditional create holding the run's id): one node wins and delivers it, the others move
//! on. The winner also records the schedule's last tick in `TESSERA_CRON_LAST`, so `missed = "once"` catches
//! up once after a full outage whichever node comes back first, and the ticks keep coming
//! when the node that fired the last one dies. Claims expire with their bucket's age
//! limit; last ticks do not.
//!
//! A tick claimed by a node that dies before its journal commits the tick's message is
//! lost (at most one tick per schedule per node failure).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tessera_events::{
    DeadLetter, Delivery, DeliveryStatus, EventError, Journal, NewMessage, Outcome, Published,
    SubscriptionSpec, SubscriptionStats, Wakeup, from_unix_ms, unix_ms,
};

use crate::setup::{CRON_BUCKET, CRON_LAST_BUCKET};
use crate::{Cluster, REQUEST_TIMEOUT, encode_token};

/// A node's journal whose cron ticks are claimed cluster-wide first.
pub struct ClaimedTicks {
    cluster: Cluster,
    inner: Arc<dyn Journal>,
    /// This run's id in its claims, so a claim whose acknowledgement was lost is known as
    /// ours when the scheduler tries the tick again.
    instance: String,
}

impl ClaimedTicks {
    pub fn new(cluster: &Cluster, inner: Arc<dyn Journal>) -> ClaimedTicks {
        ClaimedTicks {
            cluster: cluster.clone(),
            inner,
            instance: crate::control::operation_id(cluster.node()),
        }
    }

    fn subject(key: &str) -> String {
        format!("$KV.{CRON_BUCKET}.{key}")
    }

    fn last_subject(schedule: &str) -> String {
        format!(
            "$KV.{CRON_LAST_BUCKET}.{}",
            encode_token(schedule.as_bytes())
        )
    }

    /// Claims a tick: true for the one node that gets it.
    fn claim(&self, schedule: &str, tick: SystemTime) -> Result<bool, EventError> {
        let js = self.cluster.js();
        let schedule_token = encode_token(schedule.as_bytes());
        let tick_ms = unix_ms(tick);
        let instance = Bytes::from(self.instance.clone());
        let stream = format!("KV_{CRON_BUCKET}");
        let schedule = schedule.to_owned();
        let claimed = self.cluster.bridge().run(async move {
            let subject = Self::subject(&format!("tick.{schedule_token}.{tick_ms}"));
            let mut ours = false;
            let claim = crate::cas::write_if(
                &js,
                &stream,
                &subject,
                |e| e,
                |current| {
                    // An earlier try of this run may have committed without its answer.
                    ours = current.is_some_and(|c| c.value.as_ref() == Some(&instance));
                    Ok(current.is_none().then(|| crate::cas::Write {
                        payload: instance.clone(),
                        headers: Default::default(),
                    }))
                },
            );
            let written = tokio::time::timeout(REQUEST_TIMEOUT, claim)
                .await
                .map_err(|_| "timed out".to_owned())??
                .is_some();
            let claimed = written || ours;
            if claimed {
                // The newest tick of the schedule, for whoever starts next (never moved
                // back); a failure here only costs a missed-tick catch-up, never the tick.
                if let Err(error) = record_last_tick(&js, &schedule, tick).await {
                    tracing::warn!(%error, "cannot record the last cron tick in the cluster");
                }
            }
            Ok::<_, String>(claimed)
        });
        claimed.map_err(|message| EventError::Storage {
            message: format!("cannot claim a cron tick in the cluster: {message}"),
            disk_full: false,
        })
    }

    /// The schedule's newest tick anyone in the cluster fired.
    fn cluster_last_tick(&self, schedule: &str) -> Option<SystemTime> {
        let js = self.cluster.js();
        let schedule = schedule.to_owned();
        self.cluster
            .bridge()
            .run(async move { cluster_last_tick(&js, &schedule).await })
    }
}

/// The schedule's newest tick anyone in the cluster fired, if it can be read.
pub(crate) async fn cluster_last_tick(
    js: &async_nats::jetstream::Context,
    schedule: &str,
) -> Option<SystemTime> {
    let subject = ClaimedTicks::last_subject(schedule);
    let stream = js.get_stream(format!("KV_{CRON_LAST_BUCKET}")).await.ok()?;
    let current = tokio::time::timeout(REQUEST_TIMEOUT, crate::cas::current(&stream, &subject))
        .await
        .ok()?
        .ok()??;
    std::str::from_utf8(&current.value?)
        .ok()?
        .parse::<i64>()
        .ok()
        .map(from_unix_ms)
}

/// Records `tick` as the schedule's last unless a later one is recorded.
pub(crate) async fn record_last_tick(
    js: &async_nats::jetstream::Context,
    schedule: &str,
    tick: SystemTime,
) -> Result<(), EventError> {
    let tick_ms = unix_ms(tick);
    let storage = |message: String| EventError::Storage {
        message: format!("cannot record a cron tick in the cluster: {message}"),
        disk_full: false,
    };
    let stream = format!("KV_{CRON_LAST_BUCKET}");
    let subject = ClaimedTicks::last_subject(schedule);
    let write = crate::cas::write_if(js, &stream, &subject, storage, |current| {
        let recorded = current
            .and_then(|c| c.value.as_ref())
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
        Ok(
            (recorded.is_none_or(|r| r < tick_ms)).then(|| crate::cas::Write {
                payload: Bytes::from(tick_ms.to_string()),
                headers: Default::default(),
            }),
        )
    });
    match tokio::time::timeout(REQUEST_TIMEOUT, write).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(storage("no answer in time".into())),
    }
}

/// How long claims and last ticks are kept.
pub(crate) const CLAIM_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

impl Journal for ClaimedTicks {
    fn delivery_async(&self) -> Option<&dyn tessera_events::AsyncDelivery> {
        self.inner.delivery_async()
    }
    fn register(&self, owner: &str, subs: &[SubscriptionSpec]) -> Result<(), EventError> {
        self.inner.register(owner, subs)
    }
    fn withdraw(&self, owner: &str) -> Result<(), EventError> {
        self.inner.withdraw(owner)
    }
    fn wakeups(&self) -> tokio::sync::broadcast::Receiver<Wakeup> {
        self.inner.wakeups()
    }
    fn publish(&self, app: &str, messages: Vec<NewMessage>) -> Result<Vec<Published>, EventError> {
        self.inner.publish(app, messages)
    }
    fn lease(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, EventError> {
        self.inner.lease(subscription, max)
    }
    fn ack(&self, subscription: &str, message: &str, outcome: &Outcome) -> Result<(), EventError> {
        self.inner.ack(subscription, message, outcome)
    }
    fn fail(&self, subscription: &str, message: &str, outcome: &Outcome) -> Result<(), EventError> {
        self.inner.fail(subscription, message, outcome)
    }
    fn dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, EventError> {
        self.inner.dead_letters(subscription, limit)
    }
    fn dead_letter(
        &self,
        subscription: &str,
        message: &str,
    ) -> Result<Option<DeadLetter>, EventError> {
        self.inner.dead_letter(subscription, message)
    }
    fn redrive(&self, subscription: &str, ids: Option<&[String]>) -> Result<u64, EventError> {
        self.inner.redrive(subscription, ids)
    }
    fn stats(&self) -> Result<Vec<SubscriptionStats>, EventError> {
        self.inner.stats()
    }
    fn stored_bytes(&self, subscription: &str) -> Result<u64, EventError> {
        self.inner.stored_bytes(subscription)
    }
    fn next_ready(&self, subscription: &str) -> Result<Option<SystemTime>, EventError> {
        self.inner.next_ready(subscription)
    }
    fn status(
        &self,
        subscription: &str,
        message: &str,
    ) -> Result<Option<DeliveryStatus>, EventError> {
        self.inner.status(subscription, message)
    }
    fn cron_last_tick(&self, schedule: &str) -> Result<Option<SystemTime>, EventError> {
        let local = self.inner.cron_last_tick(schedule)?;
        Ok(local.max(self.cluster_last_tick(schedule)))
    }
    fn cron_fire(
        &self,
        app: &str,
        schedule: &str,
        tick: SystemTime,
        message: NewMessage,
    ) -> Result<bool, EventError> {
        if !self.claim(schedule, tick)? {
            tracing::debug!(schedule, "cron tick fired by another node");
            return Ok(false);
        }
        self.inner.cron_fire(app, schedule, tick, message)
    }
}
