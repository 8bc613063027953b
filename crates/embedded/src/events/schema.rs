//! The embedded journal's tables, and the settings of its connections.
//!
//! - `subscriptions`: the registered set (`active = 1`) and unregistered ones
//!   (`active = 0`) whose deliveries are kept; the settings `lease`/`fail` need, and
//!   running totals.
//! - `registrations`: which owner (node) registers which subscription; a subscription is
//!   active while it has one.
//! - `messages`: each payload once, keyed by `(app, id)` for idempotent publishing;
//!   `live` counts the deliveries that still refer to it.
//! - `deliveries`: one row per (subscription, message). `next_at` is the time the row
//!   matters next, which makes one index serve every query: when it is due (pending),
//!   when its lease expires (leased), when it finished (succeeded or dead, for pruning and
//!   listing).

use std::path::Path;

use rusqlite::Connection;

use tessera_events::EventError;

pub(super) const SCHEMA_VERSION: i64 = 2;

/// `deliveries.state`: waiting for an attempt, or leased (`leased = 1`).
pub(super) const ACTIVE: i64 = 0;
/// `deliveries.state`: acknowledged, kept for `status` until pruned.
pub(super) const SUCCEEDED: i64 = 2;
/// `deliveries.state`: dead-lettered.
pub(super) const DEAD: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE subscriptions (
    num INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    app TEXT NOT NULL,
    topic TEXT NOT NULL,
    active INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    backoff_ms INTEGER NOT NULL,
    max_backoff_ms INTEGER NOT NULL,
    timeout_ms INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX subscriptions_topic ON subscriptions (app, topic) WHERE active = 1;

CREATE TABLE messages (
    seq INTEGER PRIMARY KEY,
    app TEXT NOT NULL,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    content_type TEXT,
    data BLOB NOT NULL,
    attributes TEXT,
    live INTEGER NOT NULL,
    UNIQUE (app, id)
);
CREATE INDEX messages_unreferenced ON messages (time_ms) WHERE live = 0;

CREATE TABLE deliveries (
    sub INTEGER NOT NULL,
    message INTEGER NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    leased INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    status INTEGER,
    body BLOB,
    error TEXT,
    UNIQUE (sub, message)
);
CREATE INDEX deliveries_due ON deliveries (sub, state, next_at);

CREATE TABLE cron_ticks (
    schedule TEXT PRIMARY KEY,
    tick_ms INTEGER NOT NULL
);
";

/// From version 1, where one caller installed the whole set. Its active subscriptions
/// stay active until the first registration, which recomputes `active` for all.
const REGISTRATIONS: &str = "
CREATE TABLE registrations (
    owner TEXT NOT NULL,
    sub INTEGER NOT NULL REFERENCES subscriptions (num),
    PRIMARY KEY (owner, sub)
);
CREATE INDEX registrations_sub ON registrations (sub);
";

/// Prepares the writer connection: WAL with full sync (an acknowledged write survives a
/// power cut), the schema, and the release of leases left by a previous process.
pub(super) fn prepare_writer(
    conn: &mut Connection,
    path: &Path,
    now_ms: i64,
) -> Result<(), EventError> {
    let open = |source: rusqlite::Error| EventError::Open {
        path: path.to_owned(),
        message: source.to_string(),
    };
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(open)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL is required"
        ))));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -16000;",
    )
    .map_err(open)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(open)?;
    match version {
        0 | 1 => {
            let tx = conn.transaction().map_err(open)?;
            if version == 0 {
                tx.execute_batch(SCHEMA).map_err(open)?;
            }
            tx.execute_batch(REGISTRATIONS).map_err(open)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(open)?;
            tx.commit().map_err(open)?;
        }
        SCHEMA_VERSION => {}
        found => {
            return Err(EventError::Schema {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
    }
    // One process owns the file, so leases still running belong to a process that is
    // gone: make them due now rather than after their timeout. They keep `leased = 1`, so
    // the attempt counts and a delivery out of attempts is dead-lettered on its next lease.
    conn.execute(
        "UPDATE deliveries SET next_at = ?1 WHERE state = 0 AND leased = 1 AND next_at > ?1",
        [now_ms],
    )
    .map_err(open)?;
    Ok(())
}

/// Prepares a read connection. It never writes, which `query_only` makes sure of.
pub(super) fn prepare_reader(conn: &Connection, path: &Path) -> Result<(), EventError> {
    conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")
        .map_err(|source| EventError::Open {
            path: path.to_owned(),
            message: source.to_string(),
        })
}
