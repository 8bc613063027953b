//! Guest SQL: statements prepared under the authorizer, run against the request's
//! deadline, with SQLite's errors sorted into the cases of `tessera:sql`.

use std::time::Instant;

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{ErrorCode, params};
use sha2::{Digest, Sha256};

use super::ServiceDb;
use super::conn::{AcquireError, Conn, lock};
use super::replica::{self, ReplicationLog};
use tessera_data::limits::{self, ResultBudget};
use tessera_data::{Changes, Migration, Rows, SqlDatabase, SqlError, SqlValue, Statement};

impl SqlDatabase for ServiceDb {
    fn query(&self, sql: &str, params: &[SqlValue], deadline: Instant) -> Result<Rows, SqlError> {
        limits::check_statement(sql, params)?;
        check_deadline(deadline)?;
        {
            let reader = self.readers.acquire(Some(deadline)).map_err(|e| match e {
                AcquireError::Closed => SqlError::Io(self.closed_message()),
                AcquireError::TimedOut => SqlError::Timeout(
                    "the request deadline passed while waiting for a database connection"
                        .to_owned(),
                ),
                AcquireError::Open(e) => SqlError::Io(e.to_string()),
            })?;
            let _deadline = reader.deadline(deadline);
            let stmt = prepare(&reader, sql)?;
            // Only statements that cannot write may run on a reader; anything else
            // (`INSERT ... RETURNING`, say) goes to the writer below.
            if stmt.readonly() {
                return read_rows(&reader, stmt, params);
            }
        }
        let mut writer = self
            .writer()
            .map_err(|_| SqlError::Io(self.closed_message()))?;
        let _deadline = writer.deadline(deadline);
        // In a transaction, so that a write whose result turns out too large to return
        // is not kept either.
        in_transaction(&mut writer, self.log(), |conn| {
            let stmt = prepare(conn, sql)?;
            read_rows(conn, stmt, params)
        })
    }

    fn query_quick(
        &self,
        sql: &str,
        params: &[SqlValue],
        budget: std::time::Duration,
    ) -> Option<Result<Rows, SqlError>> {
        if let Err(e) = limits::check_statement(sql, params) {
            return Some(Err(e));
        }
        // Only a reader that is free right now: waiting for one is for the blocking path.
        let reader = self.readers.try_acquire()?;
        let _deadline = reader.deadline(Instant::now() + budget);
        let stmt = match prepare(&reader, sql) {
            Ok(stmt) => stmt,
            Err(e) => return Some(Err(e)),
        };
        if !stmt.readonly() {
            return None;
        }
        match read_rows(&reader, stmt, params) {
            // Out of budget: nothing was changed, so the caller runs it again unhurried.
            Err(SqlError::Timeout(_)) => None,
            done => Some(done),
        }
    }

    fn execute(
        &self,
        sql: &str,
        params: &[SqlValue],
        deadline: Instant,
    ) -> Result<Changes, SqlError> {
        limits::check_statement(sql, params)?;
        check_deadline(deadline)?;
        let writer = self
            .writer()
            .map_err(|_| SqlError::Io(self.closed_message()))?;
        let mut writer = writer;
        let _deadline = writer.deadline(deadline);
        if let Some(log) = self.log() {
            // A replicated write is one transaction, so its effect can be captured.
            return in_transaction(&mut writer, Some(log), |conn| {
                let stmt = prepare(conn, sql)?;
                run(conn, stmt, params)
            });
        }
        // No explicit transaction: SQLite undoes a failed or interrupted statement by
        // itself, and some statements cannot run inside one.
        let stmt = prepare(&writer, sql)?;
        run(&writer, stmt, params)
    }

    fn batch(&self, statements: &[Statement], deadline: Instant) -> Result<Vec<Changes>, SqlError> {
        limits::check_batch_statements(statements.len())?;
        for (index, statement) in statements.iter().enumerate() {
            limits::check_statement(&statement.sql, &statement.params)
                .map_err(|e| e.prefixed(&statement_prefix(index)))?;
        }
        check_deadline(deadline)?;
        if statements.is_empty() {
            return Ok(Vec::new());
        }
        let mut writer = self
            .writer()
            .map_err(|_| SqlError::Io(self.closed_message()))?;
        let _deadline = writer.deadline(deadline);
        in_transaction(&mut writer, self.log(), |conn| {
            statements
                .iter()
                .enumerate()
                .map(|(index, statement)| {
                    prepare(conn, &statement.sql)
                        .and_then(|stmt| run(conn, stmt, &statement.params))
                        .map_err(|e| e.prefixed(&statement_prefix(index)))
                })
                .collect()
        })
    }

    fn migrate(&self, migrations: &[Migration]) -> Result<Vec<String>, SqlError> {
        // The writer is held throughout, so no other call sees a half-migrated schema
        // between two migrations' checks and their application.
        let mut writer = self
            .writer()
            .map_err(|_| SqlError::Io(self.closed_message()))?;
        let applied: std::collections::HashMap<String, String> = writer
            .internal(|conn| {
                conn.prepare("SELECT name, sha256 FROM _tessera_migrations")?
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(|e| SqlError::Io(format!("cannot read the applied migrations: {e}")))?;

        // Every check first, so a changed migration stops the run before anything new is
        // applied on top of a history that no longer matches.
        let mut seen = std::collections::HashSet::new();
        for migration in migrations {
            if !seen.insert(migration.name.as_str()) {
                return Err(SqlError::Migration {
                    name: migration.name.clone(),
                    message: "the name is given more than once".to_owned(),
                });
            }
            // SQLite's statement length limit applies to the text handed to it, which for
            // a migration is the whole file.
            limits::check_statement(&migration.sql, &[]).map_err(|e| SqlError::Migration {
                name: migration.name.clone(),
                message: e.to_string(),
            })?;
            if applied
                .get(&migration.name)
                .is_some_and(|digest| *digest != sha256_hex(&migration.sql))
            {
                return Err(SqlError::MigrationChanged {
                    name: migration.name.clone(),
                });
            }
        }

        let mut newly_applied = Vec::new();
        for migration in migrations {
            if applied.contains_key(&migration.name) {
                continue;
            }
            in_transaction(&mut writer, self.log(), |conn| {
                conn.clear_denial();
                // Several statements are the point of a migration; each still passes the
                // authorizer, and each schema change is captured when replicated.
                run_script(conn, &migration.sql)?;
                conn.internal(|c| {
                    c.execute(
                        "INSERT INTO _tessera_migrations (name, sha256, applied_at) VALUES (?1, ?2, unixepoch())",
                        params![migration.name, sha256_hex(&migration.sql)],
                    )
                })
                .map_err(|e| sql_error(conn, e))?;
                Ok(())
            })
            .map_err(|e| SqlError::Migration {
                name: migration.name.clone(),
                message: e.to_string(),
            })?;
            tracing::info!(app = %self.app, service = %self.service, migration = %migration.name, "applied migration");
            newly_applied.push(migration.name.clone());
        }
        Ok(newly_applied)
    }
}

impl ServiceDb {
    fn log(&self) -> Option<&dyn ReplicationLog> {
        self.replication.as_deref()
    }

    /// Runs `sql` on a reader if it cannot write; `None` if it would.
    pub(super) fn read_only(
        &self,
        sql: &str,
        params: &[SqlValue],
        deadline: Instant,
    ) -> Result<Option<Rows>, SqlError> {
        limits::check_statement(sql, params)?;
        check_deadline(deadline)?;
        let reader = self.readers.acquire(Some(deadline)).map_err(|e| match e {
            AcquireError::Closed => SqlError::Io(self.closed_message()),
            AcquireError::TimedOut => SqlError::Timeout(
                "the request deadline passed while waiting for a database connection".to_owned(),
            ),
            AcquireError::Open(e) => SqlError::Io(e.to_string()),
        })?;
        let _deadline = reader.deadline(deadline);
        let stmt = prepare(&reader, sql)?;
        if !stmt.readonly() {
            return Ok(None);
        }
        read_rows(&reader, stmt, params).map(Some)
    }
}

/// Runs every statement of a script (a migration) to its end.
fn run_script(conn: &Conn, script: &str) -> Result<(), SqlError> {
    use rusqlite::fallible_iterator::FallibleIterator as _;
    let mut statements = rusqlite::Batch::new(conn.guest(), script);
    loop {
        conn.take_schema_change();
        let Some(mut stmt) = statements.next().map_err(|e| sql_error(conn, e))? else {
            return Ok(());
        };
        if conn.take_schema_change() {
            let Some(text) = stmt.expanded_sql() else {
                return Err(SqlError::Io(
                    "cannot read back a schema statement of the migration".into(),
                ));
            };
            replica::capture_schema(conn, &text)?;
        }
        let mut rows = stmt.raw_query();
        while rows.next().map_err(|e| sql_error(conn, e))?.is_some() {}
    }
}

/// Runs `work` in an immediate transaction on the writer and commits if it succeeds;
/// otherwise nothing it did is kept. With a replication log, what the work changed is
/// appended to it first, and the commit happens only if the log took it.
fn in_transaction<T>(
    conn: &mut Conn,
    log: Option<&dyn ReplicationLog>,
    work: impl FnOnce(&mut Conn) -> Result<T, SqlError>,
) -> Result<T, SqlError> {
    conn.internal(|c| c.execute_batch("BEGIN IMMEDIATE"))
        .map_err(|e| sql_error(conn, e))?;
    let mut outcome = match log {
        Some(_) => replica::begin_capture(conn).and_then(|()| work(conn)),
        None => work(conn),
    };
    if outcome.is_ok() {
        // The work is done; a deadline passing now must not undo it.
        conn.clear_deadline();
        if let Some(log) = log
            && let Err(e) = replica::replicate(conn, log)
        {
            outcome = Err(e);
        }
    }
    // A capture not handed over (the work failed) is dropped with the transaction.
    lock(&conn.capture).take();
    if outcome.is_ok()
        && let Err(e) = conn.internal(|c| c.execute_batch("COMMIT"))
    {
        outcome = Err(match log {
            // The log has the write: it is made, and this copy applies it from there.
            Some(_) => SqlError::Io(format!(
                "the write is durable in the cluster's log, but this node's copy could not commit it ({}); the copy applies it from the log once it can",
                sql_error(conn, e)
            )),
            None => sql_error(conn, e),
        });
    }
    // Some errors (a full disk, an interrupt) make SQLite roll back by itself.
    if !conn.guest().is_autocommit() {
        let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
    }
    outcome
}

/// Prepares exactly one guest statement. In a replicated transaction, a statement that
/// changes the schema is captured as its text before it runs.
fn prepare<'c>(conn: &'c Conn, sql: &str) -> Result<rusqlite::Statement<'c>, SqlError> {
    conn.clear_denial();
    conn.take_schema_change();
    let stmt = conn.guest().prepare(sql).map_err(|e| sql_error(conn, e))?;
    if conn.take_schema_change() {
        replica::capture_schema(conn, sql)?;
    }
    Ok(stmt)
}

fn bind(
    stmt: &mut rusqlite::Statement<'_>,
    conn: &Conn,
    params: &[SqlValue],
) -> Result<(), SqlError> {
    let expected = stmt.parameter_count();
    if expected != params.len() {
        return Err(SqlError::InvalidStatement(format!(
            "the statement has {expected} parameter{} but {} value{} given",
            if expected == 1 { "" } else { "s" },
            params.len(),
            if params.len() == 1 { " was" } else { "s were" },
        )));
    }
    for (index, param) in params.iter().enumerate() {
        stmt.raw_bind_parameter(index + 1, Param(param))
            .map_err(|e| sql_error(conn, e))?;
    }
    Ok(())
}

/// Runs a statement to its end and collects its rows.
fn read_rows(
    conn: &Conn,
    mut stmt: rusqlite::Statement<'_>,
    params: &[SqlValue],
) -> Result<Rows, SqlError> {
    bind(&mut stmt, conn, params)?;
    let mut budget = ResultBudget::new();
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    for column in &columns {
        budget.add_column(column)?;
    }
    let mut rows = Vec::new();
    let mut cursor = stmt.raw_query();
    while let Some(row) = cursor.next().map_err(|e| sql_error(conn, e))? {
        let mut values = Vec::with_capacity(columns.len());
        for index in 0..columns.len() {
            let value = from_sql(row.get_ref(index).map_err(|e| sql_error(conn, e))?);
            budget.add_value(&value)?;
            values.push(value);
        }
        rows.push(values);
    }
    Ok(Rows { columns, rows })
}

/// Runs a statement to its end, discarding any rows, and says what it changed.
fn run(
    conn: &Conn,
    mut stmt: rusqlite::Statement<'_>,
    params: &[SqlValue],
) -> Result<Changes, SqlError> {
    bind(&mut stmt, conn, params)?;
    let writes = !stmt.readonly();
    // `changes()` keeps the count of the last INSERT, UPDATE or DELETE, even after a
    // statement of another kind; the total moves only when this statement changed rows.
    let total_before = conn.guest().total_changes();
    conn.forget_last_insert_rowid();
    let mut cursor = stmt.raw_query();
    while cursor.next().map_err(|e| sql_error(conn, e))?.is_some() {}
    drop(cursor);
    let changed = writes && conn.guest().total_changes() != total_before;
    Ok(Changes {
        rows_affected: if changed { conn.guest().changes() } else { 0 },
        last_insert_id: conn.inserted_rowid(),
    })
}

fn check_deadline(deadline: Instant) -> Result<(), SqlError> {
    if Instant::now() >= deadline {
        return Err(SqlError::Timeout(
            "the request deadline passed before the statement started".to_owned(),
        ));
    }
    Ok(())
}

fn statement_prefix(index: usize) -> String {
    format!("statement {}: ", index + 1)
}

/// Sorts a SQLite error into the cases of `tessera:sql`, keeping SQLite's message.
fn sql_error(conn: &Conn, error: rusqlite::Error) -> SqlError {
    // A refusal by the authorizer is what failed the statement, whatever code SQLite
    // reports for it (a refused function, for one, comes back as a plain SQLITE_ERROR).
    if let Some(reason) = conn.take_denial() {
        return SqlError::NotPermitted(reason);
    }
    let (code, message) = match error {
        rusqlite::Error::SqliteFailure(e, message) => {
            (e.code, message.unwrap_or_else(|| e.to_string()))
        }
        rusqlite::Error::SqlInputError { error, msg, .. } => (error.code, msg),
        rusqlite::Error::MultipleStatement => {
            return SqlError::InvalidStatement(
                "only one statement may be given per call; use batch to run several".to_owned(),
            );
        }
        rusqlite::Error::Empty => {
            return SqlError::InvalidStatement("the statement is empty".to_owned());
        }
        other => return SqlError::Io(other.to_string()),
    };
    match code {
        ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch => SqlError::Constraint(message),
        ErrorCode::AuthorizationForStatementDenied => SqlError::NotPermitted(message),
        // A write refused by defensive mode (a shadow table, the schema).
        ErrorCode::ReadOnly => SqlError::NotPermitted(message),
        ErrorCode::TooBig => SqlError::TooLarge(message),
        // Only the deadline's progress handler interrupts statements.
        ErrorCode::OperationInterrupted => SqlError::Timeout(
            "the statement exceeded the request deadline and was stopped".to_owned(),
        ),
        // The attach limit of 0, should an ATTACH (or a VACUUM, which attaches a scratch
        // database) ever get past the authorizer.
        // A replicated database runs every write in a transaction, where VACUUM fails
        // before it can reach the attach limit; it is refused all the same.
        ErrorCode::Unknown if message.starts_with("cannot VACUUM from within a transaction") => {
            SqlError::NotPermitted(format!(
                "VACUUM is not permitted: it attaches a scratch database ({message})"
            ))
        }
        ErrorCode::Unknown if message.starts_with("too many attached databases") => {
            SqlError::NotPermitted(format!(
                "attaching databases is not permitted, and VACUUM needs to: {message}"
            ))
        }
        ErrorCode::Unknown | ErrorCode::ParameterOutOfRange => SqlError::InvalidStatement(message),
        _ => SqlError::Io(message),
    }
}

fn from_sql(value: ValueRef<'_>) -> SqlValue {
    match value {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(n) => SqlValue::Integer(n),
        ValueRef::Real(x) => SqlValue::Real(x),
        // SQLite does not check that TEXT is UTF-8 (a cast from a blob need not be).
        ValueRef::Text(bytes) => SqlValue::Text(String::from_utf8_lossy(bytes).into_owned()),
        ValueRef::Blob(bytes) => SqlValue::Blob(bytes.to_vec()),
    }
}

/// A parameter as rusqlite binds it. A private wrapper rather than an impl on
/// [`SqlValue`], so that no rusqlite trait shows in the crate's public API.
struct Param<'a>(&'a SqlValue);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(n) => ValueRef::Integer(*n),
            SqlValue::Real(x) => ValueRef::Real(*x),
            SqlValue::Text(text) => ValueRef::Text(text.as_bytes()),
            SqlValue::Blob(bytes) => ValueRef::Blob(bytes),
        }))
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}
