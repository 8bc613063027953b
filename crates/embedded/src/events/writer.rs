//! The writer thread: every write of the embedded journal, committed in groups.
//!
//! Callers queue a request and wait for its answer. The thread takes whatever is queued
//! (up to `max_group` requests), runs all of it in one transaction, each request in its
//! own savepoint so one request's error does not undo the others, commits once (one
//! fsync for the whole group) and only then answers. Under load the group grows with the
//! number of waiting callers, so throughput scales while each caller still gets a durable
//! answer.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Instant, SystemTime};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::schema::{ACTIVE, DEAD, SUCCEEDED};
use super::{JournalConfig, Sub, commit_failed, db, find_delivery, load_message, sub_by_id};
use tessera_events::{
    Delivery, EventError, MAX_RESULT_BODY_BYTES, NewMessage, Outcome, Published, SubscriptionSpec,
    unix_ms, validate_message, validate_subscriptions,
};
use tessera_events::{jitter, retry_delay};

pub(super) enum Op {
    Register {
        owner: String,
        subs: Vec<SubscriptionSpec>,
    },
    Withdraw {
        owner: String,
    },
    Publish {
        app: String,
        messages: Vec<NewMessage>,
    },
    Lease {
        subscription: String,
        max: usize,
    },
    Ack {
        subscription: String,
        message_id: String,
        outcome: Outcome,
    },
    Fail {
        subscription: String,
        message_id: String,
        outcome: Outcome,
    },
    Redrive {
        subscription: String,
        ids: Option<Vec<String>>,
    },
    CronFire {
        app: String,
        schedule: String,
        tick_ms: i64,
        message: NewMessage,
    },
}

pub(super) enum Reply {
    Done,
    Published(Vec<Published>),
    Leased(Vec<Delivery>),
    Count(u64),
    Fired(bool),
}

pub(super) struct Request {
    pub op: Op,
    pub reply: SyncSender<Result<Reply, EventError>>,
}

/// Changes to the running totals of subscriptions, by subscription number, flushed once
/// per group.
#[derive(Default)]
struct Totals(HashMap<i64, (i64, i64)>);

impl Totals {
    fn delivered(&mut self, sub: i64) {
        self.0.entry(sub).or_default().0 += 1;
    }

    fn retried(&mut self, sub: i64) {
        self.0.entry(sub).or_default().1 += 1;
    }

    fn merge(&mut self, other: Totals) {
        for (sub, (delivered, retries)) in other.0 {
            let entry = self.0.entry(sub).or_default();
            entry.0 += delivered;
            entry.1 += retries;
        }
    }

    fn flush(self, conn: &Connection) -> rusqlite::Result<()> {
        let mut update = conn.prepare_cached(
            "UPDATE subscriptions SET delivered = delivered + ?2, retries = retries + ?3 WHERE num = ?1",
        )?;
        for (sub, (delivered, retries)) in self.0 {
            update.execute(params![sub, delivered, retries])?;
        }
        Ok(())
    }
}

/// Runs until every sender is gone, then returns (closing the connection).
pub(super) fn run(mut conn: Connection, requests: Receiver<Request>, config: JournalConfig) {
    let mut last_prune = Instant::now();
    loop {
        let first = match requests.recv_timeout(config.prune_interval) {
            Ok(request) => request,
            Err(RecvTimeoutError::Timeout) => {
                prune_logged(&mut conn, &config);
                last_prune = Instant::now();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut group = vec![first];
        while group.len() < config.max_group {
            match requests.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        run_group(&mut conn, group);
        if last_prune.elapsed() >= config.prune_interval {
            prune_logged(&mut conn, &config);
            last_prune = Instant::now();
        }
    }
}

fn run_group(conn: &mut Connection, group: Vec<Request>) {
    let now = unix_ms(SystemTime::now());
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            for request in group {
                let _ = request.reply.send(Err(commit_failed(&e)));
            }
            return;
        }
    };
    let mut totals = Totals::default();
    let mut answers = Vec::with_capacity(group.len());
    for request in group {
        let mut op_totals = Totals::default();
        let result = tx.savepoint().map_err(db).and_then(|savepoint| {
            let reply = apply(&savepoint, request.op, now, &mut op_totals)?;
            savepoint.commit().map_err(db)?;
            Ok(reply)
        });
        if result.is_ok() {
            totals.merge(op_totals);
        }
        answers.push((request.reply, result));
    }
    let committed = totals.flush(&tx).and_then(|()| tx.commit());
    match committed {
        Ok(()) => {
            for (reply, result) in answers {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "event journal commit failed");
            for (reply, _) in answers {
                let _ = reply.send(Err(commit_failed(&e)));
            }
        }
    }
}

fn apply(conn: &Connection, op: Op, now: i64, totals: &mut Totals) -> Result<Reply, EventError> {
    match op {
        Op::Register { owner, subs } => register(conn, &owner, &subs).map(|()| Reply::Done),
        Op::Withdraw { owner } => withdraw(conn, &owner).map(|()| Reply::Done),
        Op::Publish { app, messages } => publish(conn, &app, messages, now).map(Reply::Published),
        Op::Lease { subscription, max } => {
            lease(conn, &subscription, max, now, totals).map(Reply::Leased)
        }
        Op::Ack {
            subscription,
            message_id,
            outcome,
        } => ack(conn, &subscription, &message_id, &outcome, now, totals).map(|()| Reply::Done),
        Op::Fail {
            subscription,
            message_id,
            outcome,
        } => fail(conn, &subscription, &message_id, &outcome, now, totals).map(|()| Reply::Done),
        Op::Redrive { subscription, ids } => {
            redrive(conn, &subscription, ids.as_deref(), now).map(Reply::Count)
        }
        Op::CronFire {
            app,
            schedule,
            tick_ms,
            message,
        } => {
            let published = publish(conn, &app, vec![message], now)?;
            conn.prepare_cached(
                "INSERT INTO cron_ticks (schedule, tick_ms) VALUES (?1, ?2)
                 ON CONFLICT (schedule) DO UPDATE SET tick_ms = max(tick_ms, excluded.tick_ms)",
            )
            .map_err(db)?
            .execute(params![schedule, tick_ms])
            .map_err(db)?;
            Ok(Reply::Fired(published[0].new))
        }
    }
}

fn ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Replaces what `owner` registered; a subscription is active while any owner registers it.
fn register(conn: &Connection, owner: &str, subs: &[SubscriptionSpec]) -> Result<(), EventError> {
    validate_subscriptions(subs)?;
    if owner.is_empty() {
        return Err(EventError::Invalid("an owner must not be empty".into()));
    }
    conn.prepare_cached("DELETE FROM registrations WHERE owner = ?1")
        .map_err(db)?
        .execute([owner])
        .map_err(db)?;
    let mut claim = conn
        .prepare_cached(
            "INSERT INTO registrations (owner, sub) SELECT ?1, num FROM subscriptions WHERE id = ?2",
        )
        .map_err(db)?;
    let mut upsert = conn.prepare_cached(
        "INSERT INTO subscriptions (id, app, topic, active, max_attempts, backoff_ms, max_backoff_ms, timeout_ms)
         VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7)
         ON CONFLICT (id) DO UPDATE SET app = excluded.app, topic = excluded.topic, active = 1,
             max_attempts = excluded.max_attempts, backoff_ms = excluded.backoff_ms,
             max_backoff_ms = excluded.max_backoff_ms, timeout_ms = excluded.timeout_ms",
    ).map_err(db)?;
    for sub in subs {
        upsert
            .execute(params![
                sub.id,
                sub.app,
                sub.topic,
                sub.max_attempts,
                ms(sub.backoff),
                ms(sub.max_backoff),
                ms(sub.timeout),
            ])
            .map_err(db)?;
        claim.execute([owner, sub.id.as_str()]).map_err(db)?;
    }
    refresh_active(conn)
}

/// Withdraws everything `owner` registered.
fn withdraw(conn: &Connection, owner: &str) -> Result<(), EventError> {
    conn.prepare_cached("DELETE FROM registrations WHERE owner = ?1")
        .map_err(db)?
        .execute([owner])
        .map_err(db)?;
    refresh_active(conn)
}

/// Marks active exactly the subscriptions some owner registers.
fn refresh_active(conn: &Connection) -> Result<(), EventError> {
    conn.prepare_cached(
        "UPDATE subscriptions SET active = (num IN (SELECT sub FROM registrations))
         WHERE active != (num IN (SELECT sub FROM registrations))",
    )
    .map_err(db)?
    .execute([])
    .map_err(db)?;
    Ok(())
}

fn publish(
    conn: &Connection,
    app: &str,
    messages: Vec<NewMessage>,
    now: i64,
) -> Result<Vec<Published>, EventError> {
    if app.is_empty() {
        return Err(EventError::Invalid("app must not be empty".into()));
    }
    for message in &messages {
        validate_message(message)?;
    }
    let mut insert_message = conn.prepare_cached(
        "INSERT INTO messages (app, id, topic, source, kind, time_ms, content_type, data, attributes, live)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                 (SELECT count(*) FROM subscriptions WHERE app = ?1 AND topic = ?3 AND active = 1))
         ON CONFLICT (app, id) DO NOTHING",
    ).map_err(db)?;
    let mut fan_out = conn.prepare_cached(
        "INSERT INTO deliveries (sub, message, state, attempts, leased, next_at, updated_ms)
         SELECT num, ?1, 0, 0, 0, ?2, ?2 FROM subscriptions WHERE app = ?3 AND topic = ?4 AND active = 1",
    ).map_err(db)?;
    let mut published = Vec::with_capacity(messages.len());
    for message in messages {
        let id = message
            .id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let attributes = if message.attributes.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&message.attributes).expect("string pairs always serialize"))
        };
        let inserted = insert_message
            .execute(params![
                app,
                id,
                message.topic,
                message.source,
                message.kind,
                now,
                message.content_type,
                message.data,
                attributes,
            ])
            .map_err(db)?;
        if inserted == 1 {
            let seq = conn.last_insert_rowid();
            fan_out
                .execute(params![seq, now, app, message.topic])
                .map_err(db)?;
        }
        published.push(Published {
            id,
            new: inserted == 1,
        });
    }
    Ok(published)
}

fn lease(
    conn: &Connection,
    subscription: &str,
    max: usize,
    now: i64,
    totals: &mut Totals,
) -> Result<Vec<Delivery>, EventError> {
    let sub = sub_by_id(conn, subscription)?;
    if !sub.active || max == 0 {
        return Ok(Vec::new());
    }
    let due: Vec<(i64, i64, u32, bool)> = conn
        .prepare_cached(
            "SELECT rowid, message, attempts, leased FROM deliveries
             WHERE sub = ?1 AND state = 0 AND next_at <= ?2 ORDER BY next_at, rowid LIMIT ?3",
        )
        .map_err(db)?
        .query_map(
            params![sub.num, now, i64::try_from(max).unwrap_or(i64::MAX)],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?;
    let mut leased = Vec::with_capacity(due.len());
    for (rowid, seq, attempts, was_leased) in due {
        if was_leased && attempts >= sub.max_attempts {
            // The last allowed attempt never reported back: that is a failure too.
            totals.retried(sub.num);
            conn.prepare_cached(
                "UPDATE deliveries SET state = 3, leased = 0, next_at = ?2, updated_ms = ?2,
                     status = NULL, body = NULL, error = ?3 WHERE rowid = ?1",
            )
            .map_err(db)?
            .execute(params![
                rowid,
                now,
                format!("no outcome before the lease of attempt {attempts} expired")
            ])
            .map_err(db)?;
            continue;
        }
        conn.prepare_cached(
            "UPDATE deliveries SET attempts = attempts + 1, leased = 1, next_at = ?2, updated_ms = ?3 WHERE rowid = ?1",
        ).map_err(db)?
        .execute(params![rowid, now.saturating_add(sub.timeout_ms), now]).map_err(db)?;
        leased.push(Delivery {
            subscription: subscription.to_owned(),
            message: load_message(conn, seq).map_err(db)?,
            attempt: attempts + 1,
        });
    }
    Ok(leased)
}

/// The outcome as stored: the body capped at [`MAX_RESULT_BODY_BYTES`].
fn stored_body(outcome: &Outcome) -> &[u8] {
    &outcome.body[..outcome.body.len().min(MAX_RESULT_BODY_BYTES)]
}

fn ack(
    conn: &Connection,
    subscription: &str,
    message_id: &str,
    outcome: &Outcome,
    now: i64,
    totals: &mut Totals,
) -> Result<(), EventError> {
    let sub = sub_by_id(conn, subscription)?;
    let delivery = find_delivery(conn, &sub, subscription, message_id)?;
    if delivery.state == SUCCEEDED {
        return Ok(());
    }
    // A late success of a delivery that was dead-lettered meanwhile (its lease expired)
    // still counts: the work was done, so it leaves the dead-letter queue.
    conn.prepare_cached(
        "UPDATE deliveries SET state = 2, leased = 0, next_at = ?2, updated_ms = ?2,
             status = ?3, body = ?4, error = ?5 WHERE rowid = ?1",
    )
    .map_err(db)?
    .execute(params![
        delivery.rowid,
        now,
        outcome.status,
        stored_body(outcome),
        outcome.error
    ])
    .map_err(db)?;
    totals.delivered(sub.num);
    Ok(())
}

fn fail(
    conn: &Connection,
    subscription: &str,
    message_id: &str,
    outcome: &Outcome,
    now: i64,
    totals: &mut Totals,
) -> Result<(), EventError> {
    let sub = sub_by_id(conn, subscription)?;
    let delivery = find_delivery(conn, &sub, subscription, message_id)?;
    if delivery.state != ACTIVE || !delivery.leased {
        return Ok(());
    }
    totals.retried(sub.num);
    let (state, next_at) = if delivery.attempts >= sub.max_attempts {
        (DEAD, now)
    } else {
        let delay = retry_delay(delivery.attempts, sub.backoff(), sub.max_backoff());
        (ACTIVE, now.saturating_add(ms(jitter(delay))))
    };
    conn.prepare_cached(
        "UPDATE deliveries SET state = ?2, leased = 0, next_at = ?3, updated_ms = ?4,
             status = ?5, body = ?6, error = ?7 WHERE rowid = ?1",
    )
    .map_err(db)?
    .execute(params![
        delivery.rowid,
        state,
        next_at,
        now,
        outcome.status,
        stored_body(outcome),
        outcome.error
    ])
    .map_err(db)?;
    Ok(())
}

fn redrive(
    conn: &Connection,
    subscription: &str,
    ids: Option<&[String]>,
    now: i64,
) -> Result<u64, EventError> {
    let sub = sub_by_id(conn, subscription)?;
    let count = match ids {
        None => conn
            .prepare_cached(
                "UPDATE deliveries SET state = 0, attempts = 0, leased = 0, next_at = ?2, updated_ms = ?2
                 WHERE sub = ?1 AND state = 3",
            ).map_err(db)?
            .execute(params![sub.num, now]).map_err(db)?,
        Some(ids) => {
            let mut update = conn.prepare_cached(
                "UPDATE deliveries SET state = 0, attempts = 0, leased = 0, next_at = ?2, updated_ms = ?2
                 WHERE sub = ?1 AND state = 3
                   AND message = (SELECT seq FROM messages WHERE app = ?3 AND id = ?4)",
            ).map_err(db)?;
            let mut count = 0;
            for id in ids {
                count += update.execute(params![sub.num, now, sub.app, id]).map_err(db)?;
            }
            count
        }
    };
    Ok(count as u64)
}

impl Sub {
    fn backoff(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.backoff_ms.max(0) as u64)
    }

    fn max_backoff(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.max_backoff_ms.max(0) as u64)
    }
}

fn prune_logged(conn: &mut Connection, config: &JournalConfig) {
    match prune(conn, config, unix_ms(SystemTime::now())) {
        Ok(0) => {}
        Ok(removed) => tracing::debug!(removed, "pruned finished deliveries"),
        Err(e) => tracing::warn!(error = %e, "pruning the event journal failed"),
    }
}

/// Deletes a subscription's deliveries in a finished `state` that ended before `cutoff`,
/// and all but the newest `keep`, collecting the messages they referred to.
fn prune_finished(
    tx: &rusqlite::Transaction<'_>,
    sub: i64,
    state: i64,
    cutoff: i64,
    keep: u64,
    freed: &mut Vec<i64>,
) -> rusqlite::Result<()> {
    let mut expired = tx.prepare_cached(
        "DELETE FROM deliveries WHERE sub = ?1 AND state = ?2 AND next_at < ?3 RETURNING message",
    )?;
    for message in expired.query_map(params![sub, state, cutoff], |row| row.get(0))? {
        freed.push(message?);
    }
    let boundary: Option<(i64, i64)> = tx
        .prepare_cached(
            "SELECT next_at, rowid FROM deliveries WHERE sub = ?1 AND state = ?2
             ORDER BY next_at DESC, rowid DESC LIMIT 1 OFFSET ?3",
        )?
        .query_row(
            params![sub, state, i64::try_from(keep).unwrap_or(i64::MAX)],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    delete_through(tx, sub, state, boundary, freed)
}

/// Deletes a subscription's oldest dead letters until the rest hold at most `keep` bytes.
fn prune_dead_bytes(
    tx: &rusqlite::Transaction<'_>,
    sub: i64,
    keep: u64,
    freed: &mut Vec<i64>,
) -> rusqlite::Result<()> {
    // The newest dead letter that no longer fits, counting from the newest.
    let boundary: Option<(i64, i64)> = tx
        .prepare_cached(
            "SELECT next_at, rid FROM (
                SELECT d.next_at, d.rowid AS rid,
                       SUM(length(m.data) + COALESCE(length(m.attributes), 0))
                         OVER (ORDER BY d.next_at DESC, d.rowid DESC) AS total
                FROM deliveries d JOIN messages m ON m.seq = d.message
                WHERE d.sub = ?1 AND d.state = ?2)
             WHERE total > ?3 ORDER BY next_at DESC, rid DESC LIMIT 1",
        )?
        .query_row(
            params![sub, DEAD, i64::try_from(keep).unwrap_or(i64::MAX)],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    delete_through(tx, sub, DEAD, boundary, freed)
}

/// Deletes a subscription's deliveries in `state` up to and including `boundary` (a
/// `(next_at, rowid)` position, oldest first), collecting the messages they referred to.
fn delete_through(
    tx: &rusqlite::Transaction<'_>,
    sub: i64,
    state: i64,
    boundary: Option<(i64, i64)>,
    freed: &mut Vec<i64>,
) -> rusqlite::Result<()> {
    let Some((next_at, rowid)) = boundary else {
        return Ok(());
    };
    let mut excess = tx.prepare_cached(
        "DELETE FROM deliveries WHERE sub = ?1 AND state = ?2
           AND (next_at < ?3 OR (next_at = ?3 AND rowid <= ?4)) RETURNING message",
    )?;
    for message in excess.query_map(params![sub, state, next_at, rowid], |row| row.get(0))? {
        freed.push(message?);
    }
    Ok(())
}

/// Forgets finished deliveries past their retention, and messages nothing refers to any
/// more. Returns how many deliveries were removed.
///
/// A succeeded delivery is kept for `result_retention` after it finished, but of each
/// subscription only the newest `max_results`. Messages are kept while a delivery refers to
/// them; a message that never had a subscriber is kept for `result_retention` after
/// publication so its id still deduplicates. Dead letters are kept until re-driven, for
/// `dead_letter_retention` after they died and, of each subscription, the newest
/// `max_dead_letters`.
pub(super) fn prune(
    conn: &mut Connection,
    config: &JournalConfig,
    now: i64,
) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let cutoff = now.saturating_sub(ms(config.result_retention));
    let subs: Vec<i64> = tx
        .prepare("SELECT num FROM subscriptions")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let dead_cutoff = now.saturating_sub(ms(config.dead_letter_retention));
    let mut freed: Vec<i64> = Vec::new();
    for sub in subs {
        for (state, cutoff, keep) in [
            (SUCCEEDED, cutoff, config.max_results),
            (DEAD, dead_cutoff, config.max_dead_letters),
        ] {
            prune_finished(&tx, sub, state, cutoff, keep, &mut freed)?;
        }
        prune_dead_bytes(&tx, sub, config.max_dead_letter_bytes, &mut freed)?;
    }
    {
        let mut release =
            tx.prepare_cached("UPDATE messages SET live = live - 1 WHERE seq = ?1 RETURNING live")?;
        let mut delete = tx.prepare_cached("DELETE FROM messages WHERE seq = ?1")?;
        for &seq in &freed {
            let live: Option<i64> = release.query_row([seq], |row| row.get(0)).optional()?;
            if live.is_some_and(|live| live <= 0) {
                delete.execute([seq])?;
            }
        }
        tx.execute(
            "DELETE FROM messages WHERE live = 0 AND time_ms < ?1",
            [cutoff],
        )?;
    }
    tx.commit()?;
    Ok(freed.len() as u64)
}
