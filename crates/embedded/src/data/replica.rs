//! Replicated service databases: the same database, connections and fences as the embedded
//! one, with every write transaction handed to a [`ReplicationLog`] before it commits, and
//! transactions from the log applied to the local copy.
//!
//! A transaction's effect is captured, not its statements: rows through SQLite's session
//! extension (a changeset holds the values written, so `random()` or `datetime('now')`
//! are evaluated once, on the writer), schema statements as their text, in the order they
//! ran ([`Segment`]). Tables without a primary key are tracked by rowid. The local copy
//! records the log position it has applied in `_tessera_replica`, in the same
//! transaction as the changes. A copy commits with `synchronous=NORMAL`: the log, not the
//! copy, is what makes a write durable.

use std::ffi::{c_int, c_void};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rusqlite::ffi;
use rusqlite::{Connection, OpenFlags};
use tessera_data::{
    Changes, DataError, Migration, Rows, SqlDatabase, SqlError, SqlValue, Statement,
};

use super::ServiceDb;
use super::conn::{BUSY_TIMEOUT, Conn, lock};

/// One part of a replicated transaction, in the order it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Rows changed: a SQLite session changeset.
    Rows(Vec<u8>),
    /// A statement that changed the schema, run again as it is on every copy.
    Schema(String),
}

/// Where a replicated database's transactions go before they commit.
pub trait ReplicationLog: Send + Sync {
    /// Appends one transaction to the log, right after position `after` (the last this
    /// copy applied), and returns its position. The local commit happens only if this
    /// returns `Ok`; an append that is refused (another writer appended first) fails the
    /// call and nothing is kept.
    fn append(&self, after: u64, segments: &[Segment]) -> Result<u64, SqlError>;

    /// Called instead of `append` when a write transaction changed nothing: whether this
    /// copy may still answer as the writer (a stale one must not answer from an old
    /// copy). Nothing is committed if it fails.
    fn confirm(&self) -> Result<(), SqlError> {
        Ok(())
    }
}

/// `segments` as bytes: a count, then each as a kind byte, a length and its bytes.
pub fn encode_segments(segments: &[Segment]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(segments.len() as u32).to_be_bytes());
    for segment in segments {
        let (kind, bytes) = match segment {
            Segment::Rows(changeset) => (0u8, changeset.as_slice()),
            Segment::Schema(sql) => (1u8, sql.as_bytes()),
        };
        out.push(kind);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The segments [`encode_segments`] wrote.
pub fn decode_segments(mut bytes: &[u8]) -> Result<Vec<Segment>, String> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if bytes.len() < n {
            return Err("a replicated transaction is cut short".into());
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    let count = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes"));
    let mut segments = Vec::new();
    for _ in 0..count {
        let kind = take(&mut bytes, 1)?[0];
        let len = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes")) as usize;
        let body = take(&mut bytes, len)?;
        segments.push(match kind {
            0 => Segment::Rows(body.to_vec()),
            1 => Segment::Schema(
                String::from_utf8(body.to_vec())
                    .map_err(|_| "a replicated schema statement is not UTF-8".to_owned())?,
            ),
            other => return Err(format!("unknown segment kind {other}")),
        });
    }
    if !bytes.is_empty() {
        return Err("a replicated transaction has trailing bytes".into());
    }
    Ok(segments)
}

/// What a replicated transaction changed so far: finished segments and the session
/// recording the current one.
pub(crate) struct Capture {
    session: *mut ffi::sqlite3_session,
    segments: Vec<Segment>,
    /// `PRAGMA schema_version` when the transaction began.
    schema_version: i64,
}

// SAFETY: the session belongs to the writer connection and is only touched by whoever
// holds that connection (behind its mutex).
unsafe impl Send for Capture {}

fn session_error(rc: c_int, what: &str) -> SqlError {
    SqlError::Io(format!("cannot {what} (SQLite error {rc})"))
}

impl Capture {
    pub(super) fn start(conn: &Connection) -> Result<Capture, SqlError> {
        Ok(Capture {
            session: new_session(conn)?,
            segments: Vec::new(),
            schema_version: schema_version(conn)?,
        })
    }

    /// A schema statement is about to run: the rows changed before it become a segment,
    /// then the statement, and a new session records what follows.
    pub(super) fn schema(&mut self, conn: &Connection, sql: &str) -> Result<(), SqlError> {
        self.flush()?;
        self.segments.push(Segment::Schema(sql.to_owned()));
        self.session = new_session(conn)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SqlError> {
        if self.session.is_null() {
            return Ok(());
        }
        let mut size: c_int = 0;
        let mut buffer: *mut c_void = std::ptr::null_mut();
        // SAFETY: the session is live; SQLite allocates the buffer, freed below.
        let rc = unsafe { ffi::sqlite3session_changeset(self.session, &mut size, &mut buffer) };
        let changeset = if rc == ffi::SQLITE_OK && size > 0 && !buffer.is_null() {
            // SAFETY: SQLite wrote `size` bytes at `buffer`.
            Some(unsafe { std::slice::from_raw_parts(buffer as *const u8, size as usize) }.to_vec())
        } else {
            None
        };
        // SAFETY: freeing what SQLite allocated (null is fine), then the session.
        unsafe {
            ffi::sqlite3_free(buffer);
            ffi::sqlite3session_delete(self.session);
        }
        self.session = std::ptr::null_mut();
        if rc != ffi::SQLITE_OK {
            return Err(session_error(rc, "read a transaction's changes"));
        }
        if let Some(changeset) = changeset {
            self.segments.push(Segment::Rows(changeset));
        }
        Ok(())
    }

    /// Every segment of the transaction.
    pub(super) fn finish(mut self) -> Result<Vec<Segment>, SqlError> {
        self.flush()?;
        Ok(std::mem::take(&mut self.segments))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.session.is_null() {
            // SAFETY: the session is live and deleted once.
            unsafe { ffi::sqlite3session_delete(self.session) };
        }
    }
}

fn schema_version(conn: &Connection) -> Result<i64, SqlError> {
    conn.query_row("PRAGMA schema_version", [], |row| row.get(0))
        .map_err(|e| SqlError::Io(format!("cannot read the schema version: {e}")))
}

/// A session on every table of `main`, tables without a primary key included (by rowid).
fn new_session(conn: &Connection) -> Result<*mut ffi::sqlite3_session, SqlError> {
    let mut session: *mut ffi::sqlite3_session = std::ptr::null_mut();
    // SAFETY: the handle is the live connection's; "main" is a NUL-terminated name.
    let rc = unsafe { ffi::sqlite3session_create(conn.handle(), c"main".as_ptr(), &mut session) };
    if rc != ffi::SQLITE_OK {
        return Err(session_error(rc, "record a transaction"));
    }
    let mut on: c_int = 1;
    // SAFETY: the session was just created; the option takes a pointer to an int.
    let configured = unsafe {
        ffi::sqlite3session_object_config(
            session,
            ffi::SQLITE_SESSION_OBJCONFIG_ROWID,
            &mut on as *mut c_int as *mut c_void,
        )
    };
    // SAFETY: a null table name attaches every table.
    let attached = unsafe { ffi::sqlite3session_attach(session, std::ptr::null()) };
    if configured != ffi::SQLITE_OK || attached != ffi::SQLITE_OK {
        // SAFETY: deleting the session made above.
        unsafe { ffi::sqlite3session_delete(session) };
        return Err(session_error(
            attached.max(configured),
            "record a transaction",
        ));
    }
    Ok(session)
}

unsafe extern "C" fn abort_on_conflict(
    _context: *mut c_void,
    _conflict: c_int,
    _iterator: *mut ffi::sqlite3_changeset_iter,
) -> c_int {
    // A copy that applies the log in order never meets a conflict; one that does has
    // diverged, and the transaction is refused rather than half applied.
    ffi::SQLITE_CHANGESET_ABORT
}

/// Applies `segments` on `conn` inside the caller's transaction, past the authorizer,
/// with triggers off and foreign-key actions not taken: the writer's changeset already
/// holds every row its triggers and cascades changed.
fn apply_segments(conn: &mut Conn, segments: &[Segment]) -> Result<(), SqlError> {
    use rusqlite::config::DbConfig;
    conn.internal(|c| {
        c.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)
            .map_err(|e| SqlError::Io(e.to_string()))?;
        let applied = apply_each(c, segments);
        let restored = c.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true);
        applied?;
        restored
            .map(|_| ())
            .map_err(|e| SqlError::Io(e.to_string()))
    })
}

fn apply_each(c: &Connection, segments: &[Segment]) -> Result<(), SqlError> {
    {
        for segment in segments {
            match segment {
                Segment::Rows(changeset) => {
                    // SAFETY: the handle is live; SQLite reads `changeset` only during the
                    // call and does not keep the pointer; no rebase buffer is asked for.
                    let rc = unsafe {
                        ffi::sqlite3changeset_apply_v2(
                            c.handle(),
                            changeset.len() as c_int,
                            changeset.as_ptr() as *mut c_void,
                            None,
                            Some(abort_on_conflict),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            ffi::SQLITE_CHANGESETAPPLY_FKNOACTION,
                        )
                    };
                    if rc != ffi::SQLITE_OK {
                        return Err(SqlError::Io(format!(
                            "cannot apply a replicated change (SQLite error {rc}): this copy differs from the log"
                        )));
                    }
                }
                Segment::Schema(sql) => c.execute_batch(sql).map_err(|e| {
                    SqlError::Io(format!("cannot apply a replicated schema change: {e}"))
                })?,
            }
        }
        Ok(())
    }
}

/// One service's database, replicated through a log: the embedded database's calls, with
/// writes appended to the log before they commit, plus what the cluster needs to keep a
/// copy up to date and read from it.
pub struct ReplicatedSql {
    db: Arc<ServiceDb>,
}

impl std::fmt::Debug for ReplicatedSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedSql").finish_non_exhaustive()
    }
}

impl ReplicatedSql {
    /// Opens (creating) the local copy at `path`, whose writes go to `log`.
    pub fn open(
        path: &Path,
        app: &str,
        service: &str,
        log: Arc<dyn ReplicationLog>,
    ) -> Result<ReplicatedSql, DataError> {
        let open_error = |message: String| DataError::Open {
            app: app.to_owned(),
            service: service.to_owned(),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_error(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = ServiceDb::open_replicated(path.to_path_buf(), app, service, log)
            .map_err(|e| open_error(e.to_string()))?;
        {
            let mut writer = db.writer().map_err(|_| open_error(db.closed_message()))?;
            // A copy is the log applied in order, and the log holds every acknowledged
            // write: a commit need not wait for an fsync. WAL with NORMAL keeps the file
            // consistent through a crash or power loss; what the last commits lose is
            // applied again from the log (the position commits with the changes).
            writer
                .internal(|c| c.pragma_update(None, "synchronous", "NORMAL"))
                .map_err(|e| open_error(e.to_string()))?;
            // Copies made before the log's identity was recorded lack its column.
            writer
                .internal(|c| {
                    let has_log = c
                        .prepare("SELECT log FROM _tessera_replica WHERE id = 0")
                        .is_ok();
                    if has_log {
                        Ok(())
                    } else {
                        c.execute_batch(
                            "ALTER TABLE _tessera_replica ADD COLUMN log TEXT NOT NULL DEFAULT ''",
                        )
                    }
                })
                .map_err(|e| open_error(e.to_string()))?;
        }
        Ok(ReplicatedSql { db: Arc::new(db) })
    }

    /// The writer connection, or the error of a closed database.
    fn writer(&self) -> Result<super::Writer<'_>, SqlError> {
        self.db
            .writer()
            .map_err(|_| SqlError::Io(self.db.closed_message()))
    }

    /// The identity of the log this copy follows (`""`: none recorded yet). A log that is
    /// deleted and created again has another identity, so a copy of the old one is never
    /// taken for a copy of the new one.
    pub fn log_id(&self) -> Result<String, SqlError> {
        let mut writer = self.writer()?;
        writer
            .internal(|c| {
                c.query_row("SELECT log FROM _tessera_replica WHERE id = 0", [], |row| {
                    row.get(0)
                })
            })
            .map_err(|e| SqlError::Io(format!("cannot read the replicated log's identity: {e}")))
    }

    /// Records the identity of the log this copy follows; only for a copy that has applied
    /// nothing yet.
    pub fn set_log_id(&self, log: &str) -> Result<(), SqlError> {
        let mut writer = self.writer()?;
        let changed = writer
            .internal(|c| {
                c.execute(
                    "UPDATE _tessera_replica SET log = ?1 WHERE id = 0 AND position = 0",
                    [log],
                )
            })
            .map_err(|e| {
                SqlError::Io(format!("cannot record the replicated log's identity: {e}"))
            })?;
        if changed == 1 {
            Ok(())
        } else {
            Err(SqlError::Io(
                "this copy has applied a log already; its identity cannot change".into(),
            ))
        }
    }

    /// Writes a consistent, compacted copy of the database to `to` (replaced if it exists)
    /// and returns the log position and identity it holds. Writes go on meanwhile.
    pub fn snapshot(&self, to: &Path) -> Result<Snapshot, SqlError> {
        let io = |e: rusqlite::Error| SqlError::Io(format!("cannot snapshot the database: {e}"));
        match std::fs::remove_file(to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SqlError::Io(format!(
                    "cannot replace {}: {e}",
                    to.display()
                )));
            }
        }
        let target = to
            .to_str()
            .ok_or_else(|| SqlError::Io(format!("{} is not UTF-8", to.display())))?;
        let source = Connection::open_with_flags(
            self.db.readers.path(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(io)?;
        source.busy_timeout(BUSY_TIMEOUT).map_err(io)?;
        // One read transaction: the copy is the database as of one commit.
        source.execute("VACUUM INTO ?1", [target]).map_err(io)?;
        drop(source);
        let copy = Connection::open_with_flags(to, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(io)?;
        read_snapshot(&copy)
    }

    /// Replaces this copy's content with the snapshot at `from` if it is further along the
    /// same log, and returns the position this copy is at afterwards. A snapshot of
    /// another log, or one that fails SQLite's check, is refused and changes nothing.
    pub fn restore(&self, from: &Path) -> Result<u64, SqlError> {
        let io = |e: rusqlite::Error| {
            SqlError::Io(format!(
                "cannot restore the database from {}: {e}",
                from.display()
            ))
        };
        let source = Connection::open_with_flags(
            from,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(io)?;
        let snapshot = read_snapshot(&source)?;
        let check: String = source
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(io)?;
        if check != "ok" {
            return Err(SqlError::Io(format!(
                "the snapshot {} is damaged: {check}",
                from.display()
            )));
        }
        let mut writer = self.writer()?;
        let log: String = writer
            .internal(|c| {
                c.query_row("SELECT log FROM _tessera_replica WHERE id = 0", [], |row| {
                    row.get(0)
                })
            })
            .map_err(io)?;
        if log != snapshot.log {
            return Err(SqlError::Io(format!(
                "the snapshot {} belongs to another log ({:?}, this copy follows {log:?})",
                from.display(),
                snapshot.log
            )));
        }
        let current = read_position(&mut writer)?;
        if snapshot.position <= current {
            return Ok(current);
        }
        writer.internal(|c| copy_database(&source, c)).map_err(io)?;
        read_position(&mut writer)
    }

    /// The last log position this copy applied (0: none).
    pub fn position(&self) -> Result<u64, SqlError> {
        let mut writer = self.writer()?;
        read_position(&mut writer)
    }

    /// Applies the transaction at log position `position` to this copy, unless it has
    /// it already. An empty transaction only moves the position (a new writer's mark).
    pub fn apply(&self, position: u64, segments: &[Segment]) -> Result<bool, SqlError> {
        let before = self.position()?;
        Ok(self.apply_all(&[(position, segments)])? > before)
    }

    /// Applies consecutive log entries, in order, in one transaction, skipping those this
    /// copy has; returns its position afterwards. If one fails, none is kept.
    pub fn apply_all(&self, entries: &[(u64, &[Segment])]) -> Result<u64, SqlError> {
        let mut writer = self.writer()?;
        let conn = &mut *writer;
        conn.internal(|c| c.execute_batch("BEGIN IMMEDIATE"))
            .map_err(|e| SqlError::Io(e.to_string()))?;
        let outcome = (|| {
            let start = read_position(conn)?;
            let mut position = start;
            for (at, segments) in entries {
                if *at <= position {
                    continue;
                }
                if *at > position + 1 {
                    return Err(SqlError::Io(format!(
                        "log entry {at} follows entry {position} of this copy: the entries between are missing"
                    )));
                }
                apply_segments(conn, segments)?;
                position = *at;
            }
            if position > start {
                write_position(conn, position)?;
                conn.internal(|c| c.execute_batch("COMMIT"))
                    .map_err(|e| SqlError::Io(e.to_string()))?;
            }
            Ok(position)
        })();
        if !conn.guest().is_autocommit() {
            let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
        }
        outcome
    }

    /// Runs `sql` on this copy if it cannot write; `None` if it would write (it must go
    /// to the writer).
    pub fn read(
        &self,
        sql: &str,
        params: &[SqlValue],
        deadline: Instant,
    ) -> Result<Option<Rows>, SqlError> {
        self.db.read_only(sql, params, deadline)
    }

    /// Closes the connections; later calls fail.
    pub fn close(&self) {
        self.db.close();
    }
}

impl SqlDatabase for ReplicatedSql {
    fn query(&self, sql: &str, params: &[SqlValue], deadline: Instant) -> Result<Rows, SqlError> {
        self.db.query(sql, params, deadline)
    }

    fn query_quick(
        &self,
        sql: &str,
        params: &[SqlValue],
        budget: std::time::Duration,
    ) -> Option<Result<Rows, SqlError>> {
        self.db.query_quick(sql, params, budget)
    }

    fn execute(
        &self,
        sql: &str,
        params: &[SqlValue],
        deadline: Instant,
    ) -> Result<Changes, SqlError> {
        self.db.execute(sql, params, deadline)
    }

    fn batch(&self, statements: &[Statement], deadline: Instant) -> Result<Vec<Changes>, SqlError> {
        self.db.batch(statements, deadline)
    }

    fn migrate(&self, migrations: &[Migration]) -> Result<Vec<String>, SqlError> {
        self.db.migrate(migrations)
    }
}

/// What a snapshot holds: the log it is a copy of, and the last position it applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub position: u64,
    pub log: String,
}

fn read_snapshot(copy: &Connection) -> Result<Snapshot, SqlError> {
    copy.query_row(
        "SELECT position, log FROM _tessera_replica WHERE id = 0",
        [],
        |row| {
            Ok(Snapshot {
                position: row.get::<_, i64>(0)? as u64,
                log: row.get(1)?,
            })
        },
    )
    .map_err(|e| SqlError::Io(format!("not a snapshot of a replicated database: {e}")))
}

/// Copies every page of `source` over `target`'s main database, in one step.
fn copy_database(source: &Connection, target: &Connection) -> rusqlite::Result<()> {
    // SAFETY: both handles are live for the whole call; the backup object is finished
    // before returning, whatever happens.
    unsafe {
        let backup = ffi::sqlite3_backup_init(
            target.handle(),
            c"main".as_ptr(),
            source.handle(),
            c"main".as_ptr(),
        );
        if backup.is_null() {
            let rc = ffi::sqlite3_errcode(target.handle());
            return Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None));
        }
        let stepped = ffi::sqlite3_backup_step(backup, -1);
        let finished = ffi::sqlite3_backup_finish(backup);
        if stepped != ffi::SQLITE_DONE {
            return Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(stepped),
                None,
            ));
        }
        if finished != ffi::SQLITE_OK {
            return Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(finished),
                None,
            ));
        }
    }
    Ok(())
}

pub(super) fn read_position(conn: &mut Conn) -> Result<u64, SqlError> {
    conn.internal(|c| {
        c.query_row(
            "SELECT position FROM _tessera_replica WHERE id = 0",
            [],
            |row| row.get::<_, i64>(0),
        )
    })
    .map(|p| p as u64)
    .map_err(|e| SqlError::Io(format!("cannot read the replicated position: {e}")))
}

pub(super) fn write_position(conn: &mut Conn, position: u64) -> Result<(), SqlError> {
    conn.internal(|c| {
        c.execute(
            "UPDATE _tessera_replica SET position = ?1 WHERE id = 0",
            [position as i64],
        )
    })
    .map(|_| ())
    .map_err(|e| SqlError::Io(format!("cannot record the replicated position: {e}")))
}

/// Starts capturing a replicated transaction on the writer (after `BEGIN`).
pub(super) fn begin_capture(conn: &Conn) -> Result<(), SqlError> {
    let capture = conn.allowing(Capture::start)?;
    *lock(&conn.capture) = Some(capture);
    Ok(())
}

/// A schema statement is about to run in the captured transaction, if one is.
pub(super) fn capture_schema(conn: &Conn, sql: &str) -> Result<(), SqlError> {
    let mut capture = lock(&conn.capture);
    match capture.as_mut() {
        Some(_) if creates_table_as_select(sql) => Err(SqlError::NotPermitted(
            "CREATE TABLE ... AS SELECT is not permitted in a database in a cluster (a copy \
             would fill the table from its own rows as well as from the log): create the \
             table, then INSERT INTO ... SELECT"
                .into(),
        )),
        Some(capture) => conn.allowing(|c| capture.schema(c, sql)),
        None => Ok(()),
    }
}

/// Whether `sql` is `CREATE [TEMP] TABLE [IF NOT EXISTS] name AS ...`: the token after
/// the table's name is not `(`.
fn creates_table_as_select(sql: &str) -> bool {
    let tokens = sql_tokens(sql, 12);
    let upper: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
    let mut at = 0;
    let mut take = |word: &str| {
        let found = upper.get(at).is_some_and(|t| t == word);
        if found {
            at += 1;
        }
        found
    };
    if !take("CREATE") {
        return false;
    }
    let _ = take("TEMP") || take("TEMPORARY");
    if !take("TABLE") {
        return false;
    }
    if take("IF") {
        let _ = take("NOT") && take("EXISTS");
    }
    // The name, maybe `schema.name`.
    at += 1;
    if upper.get(at).is_some_and(|t| t == ".") {
        at += 2;
    }
    upper.get(at).is_some_and(|t| t != "(")
}

/// The first `limit` tokens of `sql`: words, quoted names and strings whole, any other
/// character alone; whitespace and comments skipped.
fn sql_tokens(sql: &str, limit: usize) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() && tokens.len() < limit {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if sql[i..].starts_with("--") {
            i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
        } else if sql[i..].starts_with("/*") {
            i = sql[i + 2..]
                .find("*/")
                .map_or(bytes.len(), |n| i + 2 + n + 2);
        } else if let Some(close) = match c {
            b'"' => Some(b'"'),
            b'`' => Some(b'`'),
            b'\'' => Some(b'\''),
            b'[' => Some(b']'),
            _ => None,
        } {
            // The closing quote; a doubled one (`"a""b"`, `'it''s'`) is part of the text.
            let mut end = i + 1;
            loop {
                match bytes[end..].iter().position(|&b| b == close) {
                    None => {
                        end = bytes.len();
                        break;
                    }
                    Some(n) => {
                        end += n + 1;
                        if close != b']' && bytes.get(end) == Some(&close) {
                            end += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            tokens.push(&sql[i..end]);
            i = end;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            let end = bytes[i..]
                .iter()
                .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80))
                .map_or(bytes.len(), |n| i + n);
            tokens.push(&sql[i..end]);
            i = end;
        } else {
            let width = sql[i..].chars().next().map_or(1, char::len_utf8);
            tokens.push(&sql[i..i + width]);
            i += width;
        }
    }
    tokens
}

/// The single-column primary keys of rowid tables that may hold NULL, as of one schema
/// version: `(version, [(table, column)])`.
pub(crate) type NullableKeys = (i64, Vec<(String, String)>);

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Refuses what a changeset would not carry, before the append. A session leaves out rows
/// whose primary key holds NULL (SQLite allows it in a non-INTEGER key of a rowid table),
/// so such a row would exist on the writer only: the transaction fails if any table with
/// such a key has one (one index probe per table). Virtual tables (their rows live in the
/// module) and composite keys that may hold NULL (which no probe finds cheaply) are
/// refused in the schema.
fn check_keys(
    c: &Connection,
    cache: &std::sync::Mutex<Option<NullableKeys>>,
) -> Result<(), SqlError> {
    let version = schema_version(c)?;
    let keys = {
        let mut cached = lock(cache);
        match &*cached {
            Some((at, keys)) if *at == version => keys.clone(),
            _ => {
                let keys = nullable_keys(c)?;
                *cached = Some((version, keys.clone()));
                keys
            }
        }
    };
    for (table, column) in keys {
        let found = c
            .prepare_cached(&format!(
                "SELECT 1 FROM main.{} WHERE {} IS NULL LIMIT 1",
                quoted(&table),
                quoted(&column)
            ))
            .and_then(|mut stmt| stmt.exists([]))
            .map_err(|e| SqlError::Io(format!("cannot check table `{table}`: {e}")))?;
        if found {
            return Err(SqlError::Constraint(format!(
                "table `{table}`: a row whose primary key `{column}` is NULL cannot be replicated; a database in a cluster needs a value in every primary key (declare the column NOT NULL to have SQLite refuse it)"
            )));
        }
    }
    Ok(())
}

/// The schema's nullable single-column keys; an error for what cannot be replicated.
fn nullable_keys(c: &Connection) -> Result<Vec<(String, String)>, SqlError> {
    let io = |e: rusqlite::Error| SqlError::Io(format!("cannot check the schema: {e}"));
    let tables: Vec<(String, String, bool)> = c
        .prepare("SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main'")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect()
        })
        .map_err(io)?;
    let mut nullable = Vec::new();
    for (table, kind, without_rowid) in tables {
        if table.starts_with("sqlite_") {
            continue;
        }
        match kind.as_str() {
            "virtual" => {
                return Err(SqlError::NotPermitted(format!(
                    "virtual table `{table}`: a database in a cluster replicates ordinary tables only (FTS5, R-Tree and other virtual tables are not replicated)"
                )));
            }
            "table" if !without_rowid => {}
            _ => continue,
        }
        let keys: Vec<(String, String, bool)> = c
            .prepare(
                "SELECT name, type, \"notnull\" FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk",
            )
            .and_then(|mut stmt| {
                stmt.query_map([&table], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                    .collect()
            })
            .map_err(io)?;
        // A key that is not the rowid has an index of its own (`origin = 'pk'`); an
        // `INTEGER PRIMARY KEY` is the rowid (never NULL), unless declared `DESC`.
        let rowid_key = !c
            .prepare("SELECT 1 FROM pragma_index_list(?1) WHERE origin = 'pk'")
            .and_then(|mut stmt| stmt.exists([&table]))
            .map_err(io)?;
        match keys.as_slice() {
            [] => {}
            [_] if rowid_key => {}
            [(column, _, false)] => nullable.push((table.clone(), column.clone())),
            [_] => {}
            many => {
                if let Some((column, _, _)) = many.iter().find(|(_, _, not_null)| !not_null) {
                    return Err(SqlError::NotPermitted(format!(
                        "table `{table}`: column `{column}` of its composite primary key must be NOT NULL in a database in a cluster (SQLite lets such a key hold NULL, and rows with a NULL key are not replicated); declare the key's columns NOT NULL, or make the table WITHOUT ROWID"
                    )));
                }
            }
        }
    }
    Ok(nullable)
}

/// Hands the captured transaction to the log and records its position; before `COMMIT`.
pub(super) fn replicate(conn: &mut Conn, log: &dyn ReplicationLog) -> Result<(), SqlError> {
    let Some(capture) = lock(&conn.capture).take() else {
        return Ok(());
    };
    let schema_before = capture.schema_version;
    let segments = conn.allowing(|_| capture.finish())?;
    // Before anything else: a row with a NULL key is in no changeset at all.
    conn.allowing(|c| check_keys(c, &conn.nullable_keys))?;
    let rows = segments.iter().any(|s| matches!(s, Segment::Rows(_)));
    // Schema statements that changed nothing (`CREATE TABLE IF NOT EXISTS` of a table
    // that exists) and no rows: nothing to replicate.
    if segments.is_empty() || (!rows && conn.allowing(schema_version)? == schema_before) {
        return log.confirm();
    }
    let after = read_position(conn)?;
    let position = log.append(after, &segments)?;
    write_position(conn, position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_table_as_select_is_told_apart_from_a_table_with_columns() {
        for sql in [
            "CREATE TABLE t AS SELECT 1",
            "create temp table if not exists main.\"my t\" as select * from x",
            "CREATE TABLE /* ( */ [t] -- (\n AS VALUES (1)",
        ] {
            assert!(creates_table_as_select(sql), "{sql}");
        }
        for sql in [
            "CREATE TABLE t (a, b)",
            "CREATE TABLE IF NOT EXISTS \"as\" (x AS (1))",
            "CREATE TABLE main.t(x)",
            "CREATE TABLE \"a\"\"b\" (x)",
            "CREATE TABLE [odd name] (x)",
            "CREATE INDEX i ON t (a)",
            "CREATE VIEW v AS SELECT 1",
        ] {
            assert!(!creates_table_as_select(sql), "{sql}");
        }
    }

    #[test]
    fn segments_round_trip_and_bad_bytes_are_refused() {
        let segments = vec![
            Segment::Rows(vec![1, 2, 3]),
            Segment::Schema("CREATE TABLE t (a)".into()),
            Segment::Rows(Vec::new()),
        ];
        let bytes = encode_segments(&segments);
        assert_eq!(decode_segments(&bytes).unwrap(), segments);
        assert!(decode_segments(&bytes[..bytes.len() - 1]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_segments(&trailing).is_err());
        assert_eq!(decode_segments(&encode_segments(&[])).unwrap(), Vec::new());
    }
}

#[cfg(test)]
mod replication_tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A log in memory: positions from 1; refuses appends while `refuse` is set.
    #[derive(Default)]
    struct MemoryLog {
        entries: Mutex<Vec<Vec<Segment>>>,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl ReplicationLog for MemoryLog {
        fn append(&self, after: u64, segments: &[Segment]) -> Result<u64, SqlError> {
            if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(SqlError::Io("refused".into()));
            }
            let mut entries = self.entries.lock().unwrap();
            assert_eq!(
                after,
                entries.len() as u64,
                "appends follow the last position"
            );
            entries.push(segments.to_vec());
            Ok(entries.len() as u64)
        }
    }

    /// A copy at `path` that writes to a log of its own (unused).
    fn copy_of(path: &Path) -> ReplicatedSql {
        ReplicatedSql::open(path, "app", "svc", Arc::new(MemoryLog::default())).unwrap()
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    fn all(db: &ReplicatedSql, sql: &str) -> Vec<Vec<SqlValue>> {
        db.read(sql, &[], deadline()).unwrap().unwrap().rows
    }

    #[test]
    fn a_copy_that_applies_the_log_ends_equal_including_random_values_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(MemoryLog::default());
        let writer =
            ReplicatedSql::open(&dir.path().join("a.db"), "app", "svc", log.clone()).unwrap();
        let copy = copy_of(&dir.path().join("b.db"));
        let applied = writer
            .migrate(&[Migration {
                name: "001.sql".into(),
                sql: "CREATE TABLE t (k INTEGER PRIMARY KEY, v); CREATE TABLE loose (x, y); INSERT INTO t (v) VALUES ('seed');".into(),
            }])
            .unwrap();
        assert_eq!(applied, ["001.sql"]);
        writer
            .execute("INSERT INTO t (v) VALUES (random())", &[], deadline())
            .unwrap();
        writer
            .batch(
                &[
                    Statement {
                        sql: "INSERT INTO loose VALUES (?1, datetime('now'))".into(),
                        params: vec![SqlValue::Integer(7)],
                    },
                    Statement {
                        sql: "ALTER TABLE loose ADD COLUMN z DEFAULT 'zed'".into(),
                        params: vec![],
                    },
                    Statement {
                        sql: "UPDATE loose SET x = x + 1".into(),
                        params: vec![],
                    },
                ],
                deadline(),
            )
            .unwrap();
        writer
            .query(
                "DELETE FROM t WHERE v = 'seed' RETURNING k",
                &[],
                deadline(),
            )
            .unwrap();
        // Triggers and foreign-key cascades run once, on the writer; the copy takes the
        // rows they changed from the changeset.
        let statement = |sql: &str| Statement {
            sql: sql.into(),
            params: vec![],
        };
        writer
            .batch(
                &[
                    statement("CREATE TABLE parent (id INTEGER PRIMARY KEY)"),
                    statement(
                        "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id) ON DELETE CASCADE)",
                    ),
                    statement("CREATE TABLE audit (n INTEGER PRIMARY KEY, what TEXT)"),
                    statement(
                        "CREATE TRIGGER log_child AFTER INSERT ON child BEGIN INSERT INTO audit (what) VALUES ('child ' || new.id); END",
                    ),
                    statement("INSERT INTO parent VALUES (1), (2)"),
                    statement("INSERT INTO child VALUES (10, 1), (20, 2)"),
                ],
                deadline(),
            )
            .unwrap();
        writer
            .execute("DELETE FROM parent WHERE id = 1", &[], deadline())
            .unwrap();
        // Reads write nothing to the log.
        all(&writer, "SELECT * FROM t");
        let entries = log.entries.lock().unwrap().clone();
        assert_eq!(entries.len(), 6, "one entry per write transaction");
        assert!(matches!(entries[0][0], Segment::Schema(_)));
        for (i, segments) in entries.iter().enumerate() {
            assert!(copy.apply(i as u64 + 1, segments).unwrap());
        }
        assert!(!copy.apply(2, &entries[1]).unwrap(), "applied already");
        assert_eq!(copy.position().unwrap(), 6);
        assert_eq!(writer.position().unwrap(), 6);
        // The copy knows the migration is applied: running it there changes nothing.
        assert!(copy.migrate(&[Migration {
            name: "001.sql".into(),
            sql: "CREATE TABLE t (k INTEGER PRIMARY KEY, v); CREATE TABLE loose (x, y); INSERT INTO t (v) VALUES ('seed');".into(),
        }]).unwrap().is_empty());
        for sql in ["SELECT k, v FROM t ORDER BY k", "SELECT x, y, z FROM loose"] {
            let on_writer = writer.query(sql, &[], deadline()).unwrap();
            assert_eq!(
                copy.query(sql, &[], deadline()).unwrap(),
                on_writer,
                "{sql}"
            );
            assert!(!on_writer.rows.is_empty(), "{sql}");
        }
        // Schemas whose rows a changeset would not carry are refused, and nothing is kept.
        for (sql, says) in [
            (
                "CREATE TABLE pair (a, b NOT NULL, PRIMARY KEY (a, b))",
                "`a` of its composite",
            ),
            (
                "CREATE VIRTUAL TABLE docs USING fts5(body)",
                "virtual table `docs`",
            ),
            (
                "CREATE TABLE copied AS SELECT * FROM t",
                "INSERT INTO ... SELECT",
            ),
        ] {
            let refused = writer.execute(sql, &[], deadline()).unwrap_err();
            assert!(
                matches!(&refused, SqlError::NotPermitted(m) if m.contains(says)),
                "{sql}: {refused:?}"
            );
        }
        for sql in [
            "CREATE TABLE loose_key (k TEXT PRIMARY KEY, v)",
            "CREATE TABLE desc_key (k INTEGER PRIMARY KEY DESC, v)",
            "CREATE TABLE strict_key (k TEXT NOT NULL PRIMARY KEY, v)",
            "CREATE TABLE no_rowid (k TEXT PRIMARY KEY, v) WITHOUT ROWID",
            "CREATE TABLE alias (k INTEGER PRIMARY KEY, v)",
        ] {
            writer.execute(sql, &[], deadline()).unwrap();
        }
        assert_eq!(log.entries.lock().unwrap().len(), 11);
        writer
            .execute(
                "CREATE TABLE IF NOT EXISTS alias (k INTEGER PRIMARY KEY, v)",
                &[],
                deadline(),
            )
            .unwrap();
        assert_eq!(
            log.entries.lock().unwrap().len(),
            11,
            "a schema statement that changed nothing"
        );
        // A NULL in a key that allows it is refused by row; other rows go.
        let refused = writer
            .execute("INSERT INTO loose_key VALUES (NULL, 1)", &[], deadline())
            .unwrap_err();
        assert!(
            matches!(&refused, SqlError::Constraint(m) if m.contains("`k` is NULL")),
            "{refused:?}"
        );
        let refused = writer
            .execute("INSERT INTO desc_key VALUES (NULL, 1)", &[], deadline())
            .unwrap_err();
        assert!(matches!(&refused, SqlError::Constraint(_)), "{refused:?}");
        writer
            .execute("INSERT INTO loose_key VALUES ('a', 1)", &[], deadline())
            .unwrap();
        assert_eq!(log.entries.lock().unwrap().len(), 12);
        // A write the log refuses is not kept.
        log.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        let refused = writer.execute("INSERT INTO t (v) VALUES ('lost')", &[], deadline());
        assert!(matches!(refused, Err(SqlError::Io(_))), "{refused:?}");
        assert_eq!(
            all(&writer, "SELECT count(*) FROM t WHERE v = 'lost'"),
            [[SqlValue::Integer(0)]]
        );
        assert_eq!(writer.position().unwrap(), 12);
        assert!(
            copy.read("INSERT INTO t (v) VALUES (1)", &[], deadline())
                .unwrap()
                .is_none(),
            "a write is not run as a read"
        );
    }

    #[test]
    fn a_snapshot_restores_a_copy_of_the_same_log_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(MemoryLog::default());
        let writer =
            ReplicatedSql::open(&dir.path().join("a.db"), "app", "svc", log.clone()).unwrap();
        writer.set_log_id("log-1").unwrap();
        writer
            .migrate(&[Migration {
                name: "001.sql".into(),
                sql: "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)".into(),
            }])
            .unwrap();
        for _ in 0..50 {
            writer
                .execute(
                    "INSERT INTO t (v) VALUES (randomblob(1000))",
                    &[],
                    deadline(),
                )
                .unwrap();
        }
        let file = dir.path().join("snapshot.db");
        let snapshot = writer.snapshot(&file).unwrap();
        assert_eq!(
            snapshot,
            Snapshot {
                position: 51,
                log: "log-1".into()
            }
        );
        assert!(
            writer.set_log_id("log-2").is_err(),
            "a used copy keeps its log"
        );

        // A fresh copy of the same log takes the snapshot, then the log's tail.
        let copy = copy_of(&dir.path().join("b.db"));
        copy.set_log_id("log-1").unwrap();
        writer
            .execute("DELETE FROM t WHERE k <= 10", &[], deadline())
            .unwrap();
        assert_eq!(copy.restore(&file).unwrap(), 51);
        let tail = log.entries.lock().unwrap()[51].clone();
        assert!(copy.apply(52, &tail).unwrap());
        let sql = "SELECT k, hex(v) FROM t ORDER BY k";
        assert_eq!(
            copy.query(sql, &[], deadline()).unwrap(),
            writer.query(sql, &[], deadline()).unwrap()
        );
        assert_eq!(
            all(&copy, "SELECT count(*) FROM t"),
            [[SqlValue::Integer(40)]]
        );
        // An older snapshot changes nothing.
        assert_eq!(copy.restore(&file).unwrap(), 52);
        assert_eq!(
            all(&copy, "SELECT count(*) FROM t"),
            [[SqlValue::Integer(40)]]
        );
        // The restored file is still in WAL mode.
        copy.close();
        let raw = Connection::open(dir.path().join("b.db")).unwrap();
        let mode: String = raw
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");

        // A copy of another log refuses it, and so does anything for a damaged file.
        let other = copy_of(&dir.path().join("c.db"));
        other.set_log_id("log-2").unwrap();
        let refused = other.restore(&file).unwrap_err().to_string();
        assert!(refused.contains("another log"), "{refused}");
        assert_eq!(other.position().unwrap(), 0);
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, b"not a database at all, not even close").unwrap();
        assert!(other.restore(&garbage).is_err());
        assert_eq!(other.position().unwrap(), 0);
    }
}
