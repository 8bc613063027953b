//! The embedded journal: one SQLite file (`<data>/events.db`), written by one thread that
//! commits in groups, read through a separate connection.
//!
//! Durability: WAL with `synchronous = FULL`, and a write is answered only after the
//! commit that holds it, so an acknowledged publish, ack or failure survives a crash or a
//! power cut. Throughput comes from group commit (see `writer`): many callers share one
//! transaction and one fsync.
//!
//! One process owns the file. On open, leases left by a previous process are released
//! (its deliveries are due at once, and the interrupted attempt counts), which is what
//! makes delivery at least once across crashes.
//!
//! Retention: payloads are stored once per message and deleted when no delivery refers to
//! them any more. Dead letters are kept until re-driven, for at most
//! [`JournalConfig::dead_letter_retention`] (7 days by default) and, per subscription, the
//! newest [`JournalConfig::max_dead_letters`] (10,000 by default) that fit in
//! [`JournalConfig::max_dead_letter_bytes`] (64 MiB by default). A succeeded delivery, with its
//! last outcome, stays queryable through [`Journal::status`] for
//! [`JournalConfig::result_retention`] (24 h by default) unless more than
//! [`JournalConfig::max_results`] (10,000 by default) newer results of the same
//! subscription have been recorded since; pruning runs every
//! [`JournalConfig::prune_interval`]. A message id deduplicates publishes for as long as
//! the message is stored: until its deliveries are pruned, or, for a message that had no
//! subscriber, `result_retention` after it was published.

mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, Row, params};

use schema::{DEAD, SUCCEEDED};
use tessera_events::{
    DeadLetter, Delivery, DeliveryState, DeliveryStatus, EventError, Journal, Message, NewMessage,
    Outcome, Published, SubscriptionSpec, SubscriptionStats, WAKEUP_CAPACITY, Wakeup, from_unix_ms,
    unix_ms,
};
use writer::{Op, Reply, Request};

/// Settings of an [`EmbeddedJournal`].
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// How long a succeeded delivery's result stays queryable.
    pub result_retention: Duration,
    /// Most succeeded results kept per subscription.
    pub max_results: u64,
    /// How long a dead letter is kept (unless re-driven).
    pub dead_letter_retention: Duration,
    /// Most dead letters kept per subscription; older ones are dropped first.
    pub max_dead_letters: u64,
    /// Most bytes (payload and attributes) of dead letters kept per subscription; older
    /// ones are dropped first.
    pub max_dead_letter_bytes: u64,
    /// How often finished deliveries are pruned.
    pub prune_interval: Duration,
    /// Most requests committed together in one transaction.
    pub max_group: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            result_retention: Duration::from_secs(24 * 60 * 60),
            max_results: 10_000,
            dead_letter_retention: Duration::from_secs(7 * 24 * 60 * 60),
            max_dead_letters: 10_000,
            max_dead_letter_bytes: 64 << 20,
            prune_interval: Duration::from_secs(10),
            max_group: 1024,
        }
    }
}

/// A [`Journal`] in one SQLite file.
pub struct EmbeddedJournal {
    path: PathBuf,
    /// Requests to the writer thread; `None` once closing.
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<thread::JoinHandle<()>>,
    /// Reads are short and rare next to writes, so one connection is enough.
    reader: Mutex<Connection>,
    /// Wake-ups for dispatchers, sent after the commit that made deliveries ready. One
    /// process owns the file, so every publish passes through here.
    wakeups: tokio::sync::broadcast::Sender<Wakeup>,
}

impl std::fmt::Debug for EmbeddedJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedJournal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedJournal {
    /// Opens (creating if needed) the journal at `path` with default settings.
    pub fn open(path: &Path) -> Result<Self, EventError> {
        Self::open_with(path, JournalConfig::default())
    }

    /// Opens (creating if needed) the journal at `path`.
    pub fn open_with(path: &Path, config: JournalConfig) -> Result<Self, EventError> {
        const STATEMENT_CACHE: usize = 64;
        let open = |source: rusqlite::Error| EventError::Open {
            path: path.to_owned(),
            message: source.to_string(),
        };
        let mut conn = Connection::open(path).map_err(open)?;
        // The writer and reader use a few dozen distinct statements; rusqlite's default
        // cache of 16 would evict and re-prepare them on every group (seen in a profile).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        schema::prepare_writer(&mut conn, path, unix_ms(SystemTime::now()))?;
        // Drop what expired while the journal was closed before serving anything.
        writer::prune(&mut conn, &config, unix_ms(SystemTime::now())).map_err(open)?;
        let reader = Connection::open(path).map_err(open)?;
        reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        schema::prepare_reader(&reader, path)?;
        let (requests, receiver) = mpsc::channel();
        let config = JournalConfig {
            max_group: config.max_group.max(1),
            ..config
        };
        let writer = thread::Builder::new()
            .name("tessera-events-writer".into())
            .spawn(move || writer::run(conn, receiver, config))
            .map_err(EventError::Thread)?;
        Ok(EmbeddedJournal {
            path: path.to_owned(),
            requests: Some(requests),
            writer: Some(writer),
            reader: Mutex::new(reader),
            wakeups: tokio::sync::broadcast::Sender::new(WAKEUP_CAPACITY),
        })
    }

    /// The file this journal lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a write and waits until the group holding it is committed.
    fn call(&self, op: Op) -> Result<Reply, EventError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let requests = self.requests.as_ref().ok_or(EventError::Closed)?;
        requests
            .send(Request { op, reply })
            .map_err(|_| EventError::Closed)?;
        answer.recv().map_err(|_| EventError::Closed)?
    }

    /// Sends a wake-up; having no receivers (no dispatcher running) is fine.
    fn wake(&self, wakeup: Wakeup) {
        let _ = self.wakeups.send(wakeup);
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the reader cannot leave the connection half-used in a
        // way that matters: every read is a single statement.
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for EmbeddedJournal {
    fn drop(&mut self) {
        // Closing the channel ends the writer after the requests already queued; joining
        // it means the file is closed when `drop` returns.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Whether SQLite refused a write because the disk (or its quota) is full.
fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// A failed statement as the contract's storage error, which names no backend.
pub(crate) fn db(e: rusqlite::Error) -> EventError {
    EventError::Storage {
        disk_full: is_disk_full(&e),
        message: e.to_string(),
    }
}

/// A failed group commit, which every write of the group answers with.
pub(crate) fn commit_failed(e: &rusqlite::Error) -> EventError {
    EventError::Commit {
        disk_full: is_disk_full(e),
        message: e.to_string(),
    }
}

fn unexpected(reply: Reply) -> EventError {
    let name = match reply {
        Reply::Done => "done",
        Reply::Published(_) => "published",
        Reply::Leased(_) => "leased",
        Reply::Count(_) => "count",
        Reply::Fired(_) => "fired",
    };
    EventError::Invalid(format!(
        "internal error: the journal writer answered {name:?} to another request"
    ))
}

impl Journal for EmbeddedJournal {
    fn register(&self, owner: &str, subs: &[SubscriptionSpec]) -> Result<(), EventError> {
        let op = Op::Register {
            owner: owner.to_owned(),
            subs: subs.to_vec(),
        };
        match self.call(op)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn withdraw(&self, owner: &str) -> Result<(), EventError> {
        match self.call(Op::Withdraw {
            owner: owner.to_owned(),
        })? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn wakeups(&self) -> tokio::sync::broadcast::Receiver<Wakeup> {
        self.wakeups.subscribe()
    }

    fn publish(&self, app: &str, messages: Vec<NewMessage>) -> Result<Vec<Published>, EventError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let topics: Vec<String> = messages.iter().map(|m| m.topic.clone()).collect();
        let published = match self.call(Op::Publish {
            app: app.to_owned(),
            messages,
        })? {
            Reply::Published(published) => published,
            other => return Err(unexpected(other)),
        };
        let mut woken = std::collections::HashSet::new();
        for (topic, published) in topics.into_iter().zip(&published) {
            if published.new && woken.insert(topic.clone()) {
                self.wake(Wakeup::Topic {
                    app: app.to_owned(),
                    topic,
                });
            }
        }
        Ok(published)
    }

    fn lease(&self, subscription: &str, max: usize) -> Result<Vec<Delivery>, EventError> {
        match self.call(Op::Lease {
            subscription: subscription.to_owned(),
            max,
        })? {
            Reply::Leased(deliveries) => Ok(deliveries),
            other => Err(unexpected(other)),
        }
    }

    fn ack(
        &self,
        subscription: &str,
        message_id: &str,
        outcome: &Outcome,
    ) -> Result<(), EventError> {
        let op = Op::Ack {
            subscription: subscription.to_owned(),
            message_id: message_id.to_owned(),
            outcome: outcome.clone(),
        };
        match self.call(op)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn fail(
        &self,
        subscription: &str,
        message_id: &str,
        outcome: &Outcome,
    ) -> Result<(), EventError> {
        let op = Op::Fail {
            subscription: subscription.to_owned(),
            message_id: message_id.to_owned(),
            outcome: outcome.clone(),
        };
        match self.call(op)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, EventError> {
        let conn = self.reader();
        let sub = sub_by_id(&conn, subscription)?;
        let mut select = conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS}, d.attempts, d.status, d.error, d.next_at
             FROM deliveries d JOIN messages m ON m.seq = d.message
             WHERE d.sub = ?1 AND d.state = 3 ORDER BY d.next_at, d.rowid LIMIT ?2"
            ))
            .map_err(db)?;
        let rows = select
            .query_map(
                params![sub.num, i64::try_from(limit).unwrap_or(i64::MAX)],
                dead_letter_row,
            )
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn dead_letter(
        &self,
        subscription: &str,
        message_id: &str,
    ) -> Result<Option<DeadLetter>, EventError> {
        let conn = self.reader();
        let sub = sub_by_id(&conn, subscription)?;
        let mut select = conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS}, d.attempts, d.status, d.error, d.next_at
             FROM messages m JOIN deliveries d ON d.message = m.seq
             WHERE m.app = ?1 AND m.id = ?2 AND d.sub = ?3 AND d.state = 3"
            ))
            .map_err(db)?;
        select
            .query_row(params![sub.app, message_id, sub.num], dead_letter_row)
            .optional()
            .map_err(db)
    }

    fn redrive(&self, subscription: &str, ids: Option<&[String]>) -> Result<u64, EventError> {
        let op = Op::Redrive {
            subscription: subscription.to_owned(),
            ids: ids.map(<[String]>::to_vec),
        };
        match self.call(op)? {
            Reply::Count(count) => {
                if count > 0 {
                    self.wake(Wakeup::Subscription(subscription.to_owned()));
                }
                Ok(count)
            }
            other => Err(unexpected(other)),
        }
    }

    fn stats(&self) -> Result<Vec<SubscriptionStats>, EventError> {
        let conn = self.reader();
        let now = unix_ms(SystemTime::now());
        // In flight: leased with the lease still running. An expired lease is ready again.
        let mut select = conn.prepare_cached(
            "SELECT s.id, s.active, s.delivered, s.retries,
                 coalesce(sum(d.state = 0 AND NOT (d.leased = 1 AND d.next_at > ?1)), 0),
                 coalesce(sum(d.state = 0 AND d.leased = 1 AND d.next_at > ?1), 0),
                 coalesce(sum(d.state = 0 AND d.attempts > 0 AND NOT (d.leased = 1 AND d.next_at > ?1)), 0),
                 coalesce(sum(d.state = 3), 0)
             FROM subscriptions s LEFT JOIN deliveries d ON d.sub = s.num AND d.state IN (0, 3)
             GROUP BY s.num ORDER BY s.id",
        ).map_err(db)?;
        let rows = select
            .query_map([now], |row| {
                Ok(SubscriptionStats {
                    id: row.get(0)?,
                    active: row.get(1)?,
                    delivered: row.get::<_, i64>(2)?.max(0) as u64,
                    retries: row.get::<_, i64>(3)?.max(0) as u64,
                    ready: row.get::<_, i64>(4)?.max(0) as u64,
                    in_flight: row.get::<_, i64>(5)?.max(0) as u64,
                    retrying: row.get::<_, i64>(6)?.max(0) as u64,
                    dead: row.get::<_, i64>(7)?.max(0) as u64,
                })
            })
            .map_err(db)?;
        let mut stats = Vec::new();
        for row in rows {
            let row = row.map_err(db)?;
            if row.active || row.ready + row.in_flight + row.dead > 0 {
                stats.push(row);
            }
        }
        Ok(stats)
    }

    fn stored_bytes(&self, subscription: &str) -> Result<u64, EventError> {
        let bytes: i64 = self
            .reader()
            .prepare_cached(
                "SELECT COALESCE(SUM(length(m.data) + COALESCE(length(m.attributes), 0)), 0)
             FROM deliveries d JOIN messages m ON m.seq = d.message
             WHERE d.sub = (SELECT num FROM subscriptions WHERE id = ?1)
               AND d.state = ?2",
            )
            .map_err(db)?
            .query_row(params![subscription, schema::ACTIVE], |row| row.get(0))
            .map_err(db)?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    fn next_ready(&self, subscription: &str) -> Result<Option<SystemTime>, EventError> {
        let conn = self.reader();
        let sub = sub_by_id(&conn, subscription)?;
        let next: Option<i64> = conn
            .prepare_cached("SELECT min(next_at) FROM deliveries WHERE sub = ?1 AND state = 0")
            .map_err(db)?
            .query_row([sub.num], |row| row.get(0))
            .map_err(db)?;
        Ok(next.map(from_unix_ms))
    }

    fn status(
        &self,
        subscription: &str,
        message_id: &str,
    ) -> Result<Option<DeliveryStatus>, EventError> {
        let conn = self.reader();
        let sub = sub_by_id(&conn, subscription)?;
        let now = unix_ms(SystemTime::now());
        let mut select = conn.prepare_cached(
            "SELECT d.state, d.leased, d.next_at, d.attempts, d.status, d.body, d.error, d.updated_ms
             FROM messages m JOIN deliveries d ON d.message = m.seq
             WHERE m.app = ?1 AND m.id = ?2 AND d.sub = ?3",
        ).map_err(db)?;
        let status = select
            .query_row(params![sub.app, message_id, sub.num], |row| {
                let state: i64 = row.get(0)?;
                let leased: bool = row.get(1)?;
                let next_at: i64 = row.get(2)?;
                let state = match state {
                    SUCCEEDED => DeliveryState::Succeeded,
                    DEAD => DeliveryState::Failed,
                    _ if leased && next_at > now => DeliveryState::Running,
                    _ => DeliveryState::Pending,
                };
                let status: Option<u16> = row.get(4)?;
                let error: Option<String> = row.get(6)?;
                let last = if status.is_some() || error.is_some() {
                    Some(Outcome {
                        status: status.unwrap_or(0),
                        body: row.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
                        error,
                    })
                } else {
                    None
                };
                Ok(DeliveryStatus {
                    state,
                    attempts: row.get(3)?,
                    last,
                    updated: from_unix_ms(row.get(7)?),
                })
            })
            .optional()
            .map_err(db)?;
        Ok(status)
    }

    fn cron_last_tick(&self, schedule: &str) -> Result<Option<SystemTime>, EventError> {
        let conn = self.reader();
        let tick: Option<i64> = conn
            .prepare_cached("SELECT tick_ms FROM cron_ticks WHERE schedule = ?1")
            .map_err(db)?
            .query_row([schedule], |row| row.get(0))
            .optional()
            .map_err(db)?;
        Ok(tick.map(from_unix_ms))
    }

    fn cron_fire(
        &self,
        app: &str,
        schedule: &str,
        tick: SystemTime,
        message: NewMessage,
    ) -> Result<bool, EventError> {
        let topic = message.topic.clone();
        let op = Op::CronFire {
            app: app.to_owned(),
            schedule: schedule.to_owned(),
            tick_ms: unix_ms(tick),
            message,
        };
        match self.call(op)? {
            Reply::Fired(new) => {
                if new {
                    self.wake(Wakeup::Topic {
                        app: app.to_owned(),
                        topic,
                    });
                }
                Ok(new)
            }
            other => Err(unexpected(other)),
        }
    }
}

/// A subscription's row, as the writer and the readers need it.
pub(super) struct Sub {
    num: i64,
    app: String,
    active: bool,
    max_attempts: u32,
    backoff_ms: i64,
    max_backoff_ms: i64,
    timeout_ms: i64,
}

pub(super) fn sub_by_id(conn: &Connection, id: &str) -> Result<Sub, EventError> {
    conn.prepare_cached(
        "SELECT num, app, active, max_attempts, backoff_ms, max_backoff_ms, timeout_ms FROM subscriptions WHERE id = ?1",
    ).map_err(db)?
    .query_row([id], |row| {
        Ok(Sub {
            num: row.get(0)?,
            app: row.get(1)?,
            active: row.get(2)?,
            max_attempts: row.get(3)?,
            backoff_ms: row.get(4)?,
            max_backoff_ms: row.get(5)?,
            timeout_ms: row.get(6)?,
        })
    })
    .optional().map_err(db)?
    .ok_or_else(|| EventError::UnknownSubscription(id.to_owned()))
}

/// A delivery's row, as `ack` and `fail` need it.
pub(super) struct DeliveryRow {
    rowid: i64,
    state: i64,
    leased: bool,
    attempts: u32,
}

pub(super) fn find_delivery(
    conn: &Connection,
    sub: &Sub,
    subscription: &str,
    message_id: &str,
) -> Result<DeliveryRow, EventError> {
    conn.prepare_cached(
        "SELECT d.rowid, d.state, d.leased, d.attempts FROM messages m JOIN deliveries d ON d.message = m.seq
         WHERE m.app = ?1 AND m.id = ?2 AND d.sub = ?3",
    ).map_err(db)?
    .query_row(params![sub.app, message_id, sub.num], |row| {
        Ok(DeliveryRow { rowid: row.get(0)?, state: row.get(1)?, leased: row.get(2)?, attempts: row.get(3)? })
    })
    .optional().map_err(db)?
    .ok_or_else(|| EventError::NoDelivery { subscription: subscription.to_owned(), message: message_id.to_owned() })
}

/// The columns [`message_row`] reads, in its order, from `messages m`.
const MESSAGE_COLUMNS: &str =
    "m.id, m.topic, m.source, m.kind, m.time_ms, m.content_type, m.data, m.attributes";

/// A message from the first eight columns of a row selecting [`MESSAGE_COLUMNS`].
fn message_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    let attributes: Option<String> = row.get(7)?;
    let attributes = match attributes {
        None => Vec::new(),
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e))
        })?,
    };
    Ok(Message {
        id: row.get(0)?,
        topic: row.get(1)?,
        source: row.get(2)?,
        kind: row.get(3)?,
        time: from_unix_ms(row.get(4)?),
        content_type: row.get(5)?,
        data: row.get(6)?,
        attributes,
    })
}

pub(super) fn load_message(conn: &Connection, seq: i64) -> rusqlite::Result<Message> {
    conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.seq = ?1"
    ))?
    .query_row([seq], message_row)
}

fn dead_letter_row(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    let message = message_row(row)?;
    let status: Option<u16> = row.get(9)?;
    let error: Option<String> = row.get(10)?;
    let last = Outcome {
        status: status.unwrap_or(0),
        body: Vec::new(),
        error,
    };
    Ok(DeadLetter {
        message,
        attempts: row.get(8)?,
        last_status: last.status,
        last_error: last.describe(),
        failed_at: from_unix_ms(row.get(11)?),
    })
}
