//! Connections to a service's database: how each is opened and fenced in, and the small
//! pool of read-only connections.
//!
//! Every connection, reader or writer, carries the same fence, because guest SQL runs on
//! both: the authorizer of `authorizer.rs`, SQLite's size limits, defensive mode, and a
//! progress handler that stops statements at the request's deadline. Tessera's own
//! statements (key-value operations, transaction control, migration bookkeeping) pass the
//! authorizer only inside [`Conn::internal`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags};

use super::authorizer::{self, Decision};
use tessera_data::{MAX_SQL_BYTES, MAX_SQL_VALUE_BYTES};

/// How long a connection waits for a lock held by another connection before failing.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many SQLite virtual machine instructions run between deadline checks: small enough
/// that a runaway query stops within microseconds of its deadline, large enough that the
/// check costs nothing measurable.
const PROGRESS_OPS: i32 = 1000;

/// Most read-only connections per service. Reads in WAL mode never wait for the writer,
/// so a few connections let a service's concurrent requests read in parallel; more would
/// mostly hold page caches.
pub(super) const MAX_READERS: usize = 4;

/// The last-insert rowid a connection is reset to before each guest statement, so that
/// afterwards we can tell whether the statement inserted a row. A real row would need
/// this exact rowid to be mistaken for "none".
const NO_ROWID: i64 = i64::MIN;

/// The key-value table, its version counter and the migration record. Created at open
/// so that no later call has to think about a missing table.
///
/// `_tessera_kv_version` holds one row: the last version handed out. Versions come from
/// this one counter rather than per key, so a key that is deleted and set again never
/// gets back a version a compare-and-swap might still hold.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _tessera_kv (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS _tessera_kv_version (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    last INTEGER NOT NULL
) STRICT;
INSERT OR IGNORE INTO _tessera_kv_version (id, last) VALUES (0, 0);

CREATE TABLE IF NOT EXISTS _tessera_migrations (
    name TEXT NOT NULL PRIMARY KEY,
    sha256 TEXT NOT NULL,
    applied_at INTEGER NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS _tessera_replica (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    position INTEGER NOT NULL,
    log TEXT NOT NULL DEFAULT ''
) STRICT;
INSERT OR IGNORE INTO _tessera_replica (id, position) VALUES (0, 0);
";

/// A connection with its fence.
pub(super) struct Conn {
    /// While a replicated transaction runs: what it changed so far. Declared first so it
    /// is dropped (its session deleted) before the connection closes.
    pub(super) capture: Mutex<Option<super::replica::Capture>>,
    /// For a replicated database: the primary keys that may hold NULL, as of a schema
    /// version (see `replica::check_keys`).
    pub(super) nullable_keys: Mutex<Option<super::replica::NullableKeys>>,
    conn: Connection,
    /// Set while Tessera runs its own statements: the authorizer then allows everything.
    internal: Arc<AtomicBool>,
    /// Why the authorizer last refused something, to replace SQLite's bare "not
    /// authorized" in the error the guest sees.
    denial: Arc<Mutex<Option<String>>>,
    /// When the running call must stop; `None` outside guest SQL calls.
    deadline: Arc<Mutex<Option<Instant>>>,
    /// Set by the authorizer when a statement being prepared changes the schema.
    schema: Arc<AtomicBool>,
}

impl Conn {
    /// Opens the read-write connection of a database, creating the file and Tessera's
    /// tables as needed.
    pub(super) fn open_writer(path: &Path) -> rusqlite::Result<Conn> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets readers run while the writer writes, and commits append to one file.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!(
                    "cannot switch to WAL mode (journal mode is {mode})"
                )),
            ));
        }
        // FULL, not WAL's usual NORMAL: NORMAL syncs the WAL only at checkpoints, so a
        // power cut can lose the last transactions after the guest was told they
        // committed. FULL syncs on every commit, so an acknowledged write survives kill -9
        // and power loss alike.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Conn::fence(conn)
    }

    /// Opens a read-only connection to a database the writer has already created.
    pub(super) fn open_reader(path: &Path) -> rusqlite::Result<Conn> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Conn::fence(conn)
    }

    fn fence(mut conn: Connection) -> rusqlite::Result<Conn> {
        // No attached databases at all: ATTACH is refused by the authorizer too, but the
        // limit also stops the ATTACH that `VACUUM INTO 'file'` runs internally.
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, to_limit(MAX_SQL_VALUE_BYTES))?;
        conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, to_limit(MAX_SQL_BYTES))?;
        // Defensive mode forbids what could corrupt the file on purpose: writable_schema,
        // writes to virtual tables' shadow tables, and the like.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;

        let internal = Arc::new(AtomicBool::new(false));
        let denial = Arc::new(Mutex::new(None));
        let deadline = Arc::new(Mutex::new(None::<Instant>));
        let schema = Arc::new(AtomicBool::new(false));
        {
            let internal = internal.clone();
            let denial = denial.clone();
            let schema = schema.clone();
            conn.authorizer(Some(move |context: AuthContext<'_>| {
                if internal.load(Ordering::Relaxed) {
                    return Authorization::Allow;
                }
                if authorizer::changes_schema(&context.action) {
                    schema.store(true, Ordering::Relaxed);
                }
                match authorizer::decide(&context.action) {
                    Decision::Allow => Authorization::Allow,
                    Decision::Ignore => Authorization::Ignore,
                    Decision::Deny(reason) => {
                        *lock(&denial) = Some(reason);
                        Authorization::Deny
                    }
                }
            }))?;
        }
        {
            let deadline = deadline.clone();
            conn.progress_handler(
                PROGRESS_OPS,
                Some(move || lock(&deadline).is_some_and(|d| Instant::now() > d)),
            )?;
        }
        Ok(Conn {
            conn,
            internal,
            denial,
            deadline,
            schema,
            capture: Mutex::new(None),
            nullable_keys: Mutex::new(None),
        })
    }

    /// Runs `work`, which may make SQLite run statements of its own on this connection
    /// (the session extension reading table definitions), with the authorizer letting
    /// everything through. No guest statement may be prepared inside `work`.
    pub(super) fn allowing<T>(&self, work: impl FnOnce(&Connection) -> T) -> T {
        struct Reset<'a>(&'a AtomicBool, bool);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.store(self.1, Ordering::Relaxed);
            }
        }
        let before = self.internal.swap(true, Ordering::Relaxed);
        let _reset = Reset(&self.internal, before);
        work(&self.conn)
    }

    /// Whether a statement prepared since the last call changes the schema.
    pub(super) fn take_schema_change(&self) -> bool {
        self.schema.swap(false, Ordering::Relaxed)
    }

    /// The connection for guest SQL: every statement prepared through it passes the
    /// authorizer.
    ///
    /// Guest statements must be prepared with `prepare`, never `prepare_cached`: the cache
    /// is keyed by SQL text, so a guest sending the text of one of Tessera's cached
    /// statements would get a statement the authorizer approved in internal mode.
    pub(super) fn guest(&self) -> &Connection {
        &self.conn
    }

    /// Runs Tessera's own statements, which the authorizer lets through. Exclusive
    /// access guarantees no guest statement is prepared meanwhile.
    pub(super) fn internal<T>(&mut self, work: impl FnOnce(&mut Connection) -> T) -> T {
        struct Reset<'a>(&'a AtomicBool);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        self.internal.store(true, Ordering::Relaxed);
        let _reset = Reset(&self.internal);
        work(&mut self.conn)
    }

    /// Stops statements of this connection once `deadline` passes, until the returned
    /// guard is dropped.
    pub(super) fn deadline(&self, deadline: Instant) -> DeadlineGuard {
        *lock(&self.deadline) = Some(deadline);
        DeadlineGuard(self.deadline.clone())
    }

    /// Lifts the deadline early, e.g. so a finished batch is not interrupted while it
    /// commits.
    pub(super) fn clear_deadline(&self) {
        *lock(&self.deadline) = None;
    }

    /// Forgets any earlier authorizer refusal, before preparing a guest statement.
    pub(super) fn clear_denial(&self) {
        *lock(&self.denial) = None;
    }

    /// Why the authorizer refused the last statement, if it did.
    pub(super) fn take_denial(&self) -> Option<String> {
        lock(&self.denial).take()
    }

    /// Makes `last_insert_rowid` mean "none" until a row is inserted.
    pub(super) fn forget_last_insert_rowid(&self) {
        // SAFETY: the handle is valid while `self.conn` lives, and the call only stores
        // an integer in the connection. rusqlite has no safe wrapper for it.
        unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(self.conn.handle(), NO_ROWID) }
    }

    /// The rowid of the row last inserted since [`Conn::forget_last_insert_rowid`].
    pub(super) fn inserted_rowid(&self) -> Option<i64> {
        Some(self.conn.last_insert_rowid()).filter(|&rowid| rowid != NO_ROWID)
    }
}

/// Clears a connection's deadline when dropped.
pub(super) struct DeadlineGuard(Arc<Mutex<Option<Instant>>>);

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        *lock(&self.0) = None;
    }
}

/// Why no reader could be had.
pub(super) enum AcquireError {
    /// The service's data was closed (its app purged).
    Closed,
    /// All readers stayed busy until the deadline.
    TimedOut,
    /// Opening a new reader failed.
    Open(rusqlite::Error),
}

/// Read-only connections of one database, opened on demand up to [`MAX_READERS`].
pub(super) struct Readers {
    path: PathBuf,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Conn>,
    /// Readers in existence, idle or lent out.
    open: usize,
    closed: bool,
}

impl Readers {
    /// The database file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn new(path: PathBuf) -> Readers {
        Readers {
            path,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
                closed: false,
            }),
            returned: Condvar::new(),
        }
    }

    /// Lends a reader, waiting for one to come back if all are busy (until `deadline`,
    /// if given).
    /// An idle reader, if one is free right now (none is opened).
    pub(super) fn try_acquire(&self) -> Option<Reader<'_>> {
        let mut state = lock(&self.state);
        if state.closed {
            return None;
        }
        let conn = state.idle.pop()?;
        Some(Reader {
            pool: self,
            conn: Some(conn),
        })
    }

    pub(super) fn acquire(&self, deadline: Option<Instant>) -> Result<Reader<'_>, AcquireError> {
        let mut state = lock(&self.state);
        loop {
            if state.closed {
                return Err(AcquireError::Closed);
            }
            if let Some(conn) = state.idle.pop() {
                return Ok(Reader {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if state.open < MAX_READERS {
                break;
            }
            state = match deadline {
                None => self
                    .returned
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(AcquireError::TimedOut);
                    }
                    self.returned
                        .wait_timeout(state, left)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
            };
        }
        // Reserve the slot, then open outside the lock: opening touches the disk.
        state.open += 1;
        drop(state);
        match Conn::open_reader(&self.path) {
            Ok(conn) => Ok(Reader {
                pool: self,
                conn: Some(conn),
            }),
            Err(error) => {
                lock(&self.state).open -= 1;
                self.returned.notify_one();
                Err(AcquireError::Open(error))
            }
        }
    }

    /// Closes idle readers and makes lent ones close when returned.
    pub(super) fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.open -= state.idle.len();
        state.idle.clear();
        drop(state);
        self.returned.notify_all();
    }
}

/// A lent reader; goes back to the pool when dropped.
pub(super) struct Reader<'a> {
    pool: &'a Readers,
    conn: Option<Conn>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a lent reader holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Reader<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a lent reader holds its connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let mut state = lock(&self.pool.state);
        if state.closed {
            state.open -= 1;
            drop(state);
            drop(conn);
        } else {
            state.idle.push(conn);
            drop(state);
        }
        self.pool.returned.notify_one();
    }
}

/// Locks a mutex, taking over its state if a holder panicked: every value behind these
/// locks stays consistent whatever point a panic interrupts.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn to_limit(bytes: usize) -> i32 {
    i32::try_from(bytes).expect("SQLite limits fit in an i32")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The authorizer already refuses ATTACH; the limit must hold on its own too, in case
    /// an authorizer bug or a future SQLite path lets one through.
    #[test]
    fn the_attach_limit_alone_stops_vacuum_into() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Conn::open_writer(&dir.path().join("service.db")).unwrap();
        let target = dir.path().join("copy.db");
        let err = conn
            .internal(|c| c.execute_batch(&format!("VACUUM INTO '{}'", target.display())))
            .unwrap_err();
        assert!(
            err.to_string().contains("too many attached databases"),
            "{err}"
        );
        assert!(!target.exists());
    }

    #[test]
    fn internal_mode_ends_with_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Conn::open_writer(&dir.path().join("service.db")).unwrap();
        conn.internal(|c| c.execute_batch("SELECT count(*) FROM _tessera_kv"))
            .unwrap();
        assert!(
            conn.guest()
                .execute_batch("SELECT count(*) FROM _tessera_kv")
                .is_err()
        );
        assert!(conn.take_denial().is_some());
    }
}
