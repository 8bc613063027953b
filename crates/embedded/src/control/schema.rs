//! Opening `control.db`: connection settings and the schema migrations, numbered by
//! SQLite's `user_version`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use tessera_store::StoreError;

/// The schema, one migration per version: `MIGRATIONS[n]` takes the database from version
/// `n` to `n + 1`. Migrations are only ever appended, never edited, because databases in
/// the field have already run the old ones.
///
/// Foreign keys have no `ON DELETE CASCADE` on purpose: removals delete children
/// explicitly, and an accidental removal of a revision that still carries traffic fails
/// loudly instead of silently dropping the traffic row. `revision_counters` has no foreign
/// key at all, because it must outlive the service it numbers so that a removed and
/// redeployed app never reuses a revision id.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE apps (
    name TEXT NOT NULL PRIMARY KEY
) STRICT;

CREATE TABLE services (
    app TEXT NOT NULL REFERENCES apps (name),
    name TEXT NOT NULL,
    PRIMARY KEY (app, name)
) STRICT;

CREATE TABLE revisions (
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    id INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (app, service, id),
    FOREIGN KEY (app, service) REFERENCES services (app, name)
) STRICT;

CREATE TABLE traffic (
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    revision INTEGER NOT NULL,
    percent INTEGER NOT NULL CHECK (percent BETWEEN 1 AND 100),
    PRIMARY KEY (app, service, revision),
    FOREIGN KEY (app, service, revision) REFERENCES revisions (app, service, id)
) STRICT;

CREATE TABLE revision_counters (
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    last_id INTEGER NOT NULL,
    PRIMARY KEY (app, service)
) STRICT;
"#,
    r#"
-- Secrets belong to a service by name and may exist before its first deploy, so they
-- have no foreign key. Values are readable only through `secrets()`, which the node
-- hands to the service's own instances.
CREATE TABLE secrets (
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (app, service, name)
) STRICT;
"#,
    r#"
-- Every committed change, for nodes sharing the state to catch up on; the newest
-- `DEFAULT_CHANGE_HISTORY` are kept. AUTOINCREMENT, so a sequence number is never reused,
-- not even after the newest rows were deleted. An app's generation is the sequence number
-- of its last change; apps that existed before get one change each.
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('app', 'secrets')),
    service TEXT
) STRICT;
ALTER TABLE apps ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
INSERT INTO changes (app, kind) SELECT name, 'app' FROM apps ORDER BY name;
UPDATE apps SET generation = (SELECT MAX(seq) FROM changes WHERE changes.app = apps.name);
"#,
];

/// The schema version this build writes and understands.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens (creating if needed) the database at `path`, configures the connection and
/// brings the schema up to date.
pub(crate) fn open(path: &Path) -> Result<Connection, StoreError> {
    let db = |source: rusqlite::Error| StoreError::Database {
        action: format!("open {}", path.display()),
        source: Box::new(source),
    };
    let mut conn = Connection::open(path).map_err(db)?;
    // A CLI command and the server may open the same data directory at once; waiting a
    // little for the other's write lock beats failing at once with "database is locked".
    conn.busy_timeout(Duration::from_secs(5)).map_err(db)?;
    // WAL lets readers proceed while a deploy writes, and never rewrites committed pages
    // in place.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(db)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database {
            action: format!("switch {} to write-ahead logging", path.display()),
            source: format!("journal mode stayed `{mode}`").into(),
        });
    }
    // FULL, not NORMAL: in WAL mode NORMAL skips the fsync at each commit, so a power cut
    // could lose deploys that were already acknowledged to the user. FULL syncs the log on
    // every commit, which is what "acknowledged means durable" needs.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db)?;
    // SQLite leaves foreign keys unchecked unless asked, per connection; they must be set
    // outside a transaction.
    conn.pragma_update(None, "foreign_keys", true).map_err(db)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Runs every migration the database has not seen yet, all in one transaction, so a
/// crash mid-way leaves the old version intact.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let db = |source: rusqlite::Error| StoreError::Database {
        action: format!("migrate the schema of {}", path.display()),
        source: Box::new(source),
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(db)?;
    if !(0..=SCHEMA_VERSION).contains(&found) {
        // A newer tessera wrote this database; guessing at its meaning could destroy it.
        return Err(StoreError::UnsupportedSchema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    for migration in &MIGRATIONS[found as usize..] {
        tx.execute_batch(migration).map_err(db)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(db)?;
    tx.commit().map_err(db)
}
