//! Each service's own data: a key-value store and a SQL database that no other service
//! can name.
//!
//! Guests reach their data through `wasi:keyvalue@0.2.0-draft2` and `tessera:sql@0.1.0`
//! (see `wit/deps/`). The runtime implements those interfaces on top of the traits here,
//! calling them from `tokio::task::spawn_blocking`, which is why they are synchronous:
//!
//! - [`DataBackend`] is what a node holds. It opens a service's data
//!   ([`DataBackend::open_service`]) and deletes all data of an app
//!   ([`DataBackend::purge_app`]).
//! - [`KvStore`] and [`SqlDatabase`] are one service's handles, bundled as
//!   [`ServiceData`]. A handle is the only way to the data, and it is bound to one
//!   service when opened, so a guest can never reach another service's store.
//!
//! Size and validation rules that every backend must apply alike live in [`limits`].
//!
//! # Backends
//!
//! This crate names no backend. `tessera_embedded::EmbeddedData` keeps one SQLite database per service, `<root>/<app>/<service>.db`,
//! holding both the key-value data (in a table reserved for Tessera) and the service's
//! own tables. Guest SQL runs under an authorizer that fences it into its own tables.
//!
//! A cluster backend is planned behind the same traits: NATS JetStream KV for key-value
//! data (one bucket per service, compare-and-swap by the key's revision) and PostgreSQL
//! for SQL (one schema per service). The trait semantics are chosen so that it fits:
//!
//! - A key's version ([`KvStore::get_versioned`]) is an opaque number that changes on
//!   every write and never returns to an earlier value, like a JetStream revision; it is
//!   not a per-key counter, so a deleted and re-created key cannot be mistaken for the
//!   old one.
//! - Keys are any non-empty UTF-8 up to [`MAX_KEY_BYTES`]. JetStream restricts key
//!   characters, so that backend will store an order-preserving encoding of the key (for
//!   example hex of its bytes) to keep [`KvStore::list_keys`] in byte order.
//! - The SQL dialect seen by guests is SQLite's (the WIT says so); a PostgreSQL backend
//!   will have to translate or document its differences, but the error classes, the
//!   limits, transactions only through [`SqlDatabase::batch`], and migrations tracked by
//!   name and digest carry over unchanged.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod limits;

use std::sync::Arc;
use std::time::Instant;

/// Longest key, in bytes of UTF-8. Keys must also be non-empty.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest key-value value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most keys (or entries) in one `get_many`, `set_many` or `delete_many` call.
pub const MAX_BATCH_KEYS: usize = 1000;
/// Most keys returned by one [`KvStore::list_keys`] call.
pub const LIST_PAGE: usize = 1000;
/// Longest text of one SQL statement, in bytes.
pub const MAX_SQL_BYTES: usize = 1 << 20;
/// Largest single text or blob value in SQL, whether a parameter, a stored value or a
/// computed one.
pub const MAX_SQL_VALUE_BYTES: usize = 16 << 20;
/// Largest result of one query, counted approximately as the sum of its values' sizes.
/// It bounds the memory a guest can make the host hold for one call.
pub const MAX_RESULT_BYTES: usize = 32 << 20;
/// Most statements in one [`SqlDatabase::batch`].
pub const MAX_BATCH_STATEMENTS: usize = 1000;

/// Why a key-value operation failed. Each message is fit to show to the guest as it is.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// A value or a batch exceeds the limits.
    #[error("{0}")]
    TooLarge(String),
    /// A key is empty or too long.
    #[error("{0}")]
    InvalidKey(String),
    /// `increment` found a value that is not a decimal integer, or the sum overflows.
    #[error("{0}")]
    NotAnInteger(String),
    /// The store could not complete the operation (disk full, I/O error, closed handle).
    #[error("{0}")]
    Io(String),
}

/// One service's key-value data, split into buckets.
///
/// `bucket` is always a name the runtime has already checked against the service's
/// manifest. Keys are checked here (see [`limits::check_key`]).
pub trait KvStore: Send + Sync {
    /// Whether reads (`get`, `get_versioned`, `exists`, `list_keys`, `get_many`) are cheap
    /// enough to run on the async worker that asks: a few microseconds from a local page
    /// cache. A backend that may wait on a disk or the network says `false` (the default),
    /// and its reads go to the blocking pool like every write.
    fn reads_inline(&self) -> bool {
        false
    }
    /// The value of a key, or `None` if it is absent.
    fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// The value and its version (changes on every write to the key) for compare-and-swap.
    fn get_versioned(&self, bucket: &str, key: &str) -> Result<Option<(Vec<u8>, u64)>, KvError>;
    /// Sets a key, replacing any value it had.
    fn set(&self, bucket: &str, key: &str, value: &[u8]) -> Result<(), KvError>;
    /// Removes a key; removing an absent key is not an error.
    fn delete(&self, bucket: &str, key: &str) -> Result<(), KvError>;
    /// Whether a key is present.
    fn exists(&self, bucket: &str, key: &str) -> Result<bool, KvError>;
    /// Up to [`LIST_PAGE`] keys > `after` in ascending byte order, and the cursor (last
    /// key) if more follow.
    fn list_keys(
        &self,
        bucket: &str,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), KvError>;
    /// Atomically adds `delta` to the integer stored as decimal ASCII text (absent = 0);
    /// returns the new value. Overflow is a [`KvError::NotAnInteger`] error.
    fn increment(&self, bucket: &str, key: &str, delta: i64) -> Result<i64, KvError>;
    /// Writes `value` only if the key's version is still `expected` (`None` = the key must
    /// be absent). `Ok(false)` if it changed.
    fn compare_and_swap(
        &self,
        bucket: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<bool, KvError>;
    /// The values of several keys, in the order asked, read from one consistent snapshot.
    fn get_many(&self, bucket: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError>;
    /// Sets every pair in one transaction; a later duplicate key wins.
    fn set_many(&self, bucket: &str, entries: &[(String, Vec<u8>)]) -> Result<(), KvError>;
    /// Removes every key in one transaction.
    fn delete_many(&self, bucket: &str, keys: &[String]) -> Result<(), KvError>;
}

/// A SQL parameter or column value, with SQLite's storage classes.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// The result of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    /// One value per column in each row.
    pub rows: Vec<Vec<SqlValue>>,
}

/// What a statement changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// Rows inserted, updated or deleted by the statement itself (not by triggers).
    pub rows_affected: u64,
    /// The rowid of the last row the statement inserted, if it inserted any into a table
    /// with rowids.
    pub last_insert_id: Option<i64>,
}

/// One statement of a [`SqlDatabase::batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    /// Bound in order to `?`, `?1`, `?2`, ...
    pub params: Vec<SqlValue>,
}

/// A schema migration shipped with an app, identified by its name (usually the file
/// name, which orders them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub name: String,
    pub sql: String,
}

/// Why a SQL call failed. The first six variants mirror the cases of `tessera:sql`'s
/// `error`, and their messages are fit to show to the guest as they are (SQLite's own
/// text where it has one).
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// Not valid SQL, several statements where one was expected, a wrong number of
    /// parameters, or a name that does not exist.
    #[error("{0}")]
    InvalidStatement(String),
    /// A UNIQUE, NOT NULL, CHECK, FOREIGN KEY or type constraint failed.
    #[error("{0}")]
    Constraint(String),
    /// Something a service may not do: attach databases, control transactions, change
    /// settings, touch Tessera's own tables.
    #[error("{0}")]
    NotPermitted(String),
    /// A statement, a value or a result exceeds the limits.
    #[error("{0}")]
    TooLarge(String),
    /// The call ran past its deadline and was stopped; nothing it did was kept.
    #[error("{0}")]
    Timeout(String),
    /// The database could not complete the call (disk full, I/O error, closed handle).
    #[error("{0}")]
    Io(String),
    /// A migration already applied under this name had other content.
    #[error(
        "migration `{name}` was already applied with different content; add a new migration instead of editing an applied one"
    )]
    MigrationChanged { name: String },
    /// A migration failed (message names the file); none of its statements were kept.
    #[error("migration `{name}` failed: {message}")]
    Migration { name: String, message: String },
}

impl SqlError {
    /// The same error with `prefix` put before its message, e.g. to say which statement
    /// of a batch failed. Migration errors, which already name their file, are unchanged.
    pub fn prefixed(self, prefix: &str) -> SqlError {
        let add = |message: String| format!("{prefix}{message}");
        match self {
            SqlError::InvalidStatement(m) => SqlError::InvalidStatement(add(m)),
            SqlError::Constraint(m) => SqlError::Constraint(add(m)),
            SqlError::NotPermitted(m) => SqlError::NotPermitted(add(m)),
            SqlError::TooLarge(m) => SqlError::TooLarge(add(m)),
            SqlError::Timeout(m) => SqlError::Timeout(add(m)),
            SqlError::Io(m) => SqlError::Io(add(m)),
            other @ (SqlError::MigrationChanged { .. } | SqlError::Migration { .. }) => other,
        }
    }
}

/// One service's SQL database.
///
/// Every call takes the request's deadline: a statement still running when it passes is
/// stopped and fails with [`SqlError::Timeout`]. Outside [`SqlDatabase::batch`] and
/// [`SqlDatabase::migrate`] each statement commits on its own.
pub trait SqlDatabase: Send + Sync {
    /// Runs one statement and returns the rows it produced. A statement that writes
    /// (`INSERT ... RETURNING`) applies whole or not at all.
    fn query(&self, sql: &str, params: &[SqlValue], deadline: Instant) -> Result<Rows, SqlError>;
    /// Tries [`query`](Self::query) on the calling thread when that is sure to be quick
    /// and harmless to give up: a statement that cannot write, on a reader that is free at
    /// once, stopped after `budget`. `None` means "not tried, or given up": run `query`
    /// (on a thread that may block). Backends without a cheap path return `None`.
    fn query_quick(
        &self,
        sql: &str,
        params: &[SqlValue],
        budget: std::time::Duration,
    ) -> Option<Result<Rows, SqlError>> {
        let _ = (sql, params, budget);
        None
    }
    /// Runs one statement and says what it changed; any rows it produces are discarded.
    fn execute(
        &self,
        sql: &str,
        params: &[SqlValue],
        deadline: Instant,
    ) -> Result<Changes, SqlError>;
    /// All statements in one transaction; on error nothing applies and the message starts
    /// with "statement N: " (1-based).
    fn batch(&self, statements: &[Statement], deadline: Instant) -> Result<Vec<Changes>, SqlError>;
    /// Applies, in order, each migration not yet applied (tracked by name + sha256 in a
    /// table `_tessera_migrations`), each in its own transaction; returns the names newly
    /// applied. Same name with different content -> [`SqlError::MigrationChanged`], found
    /// before anything is applied. Migrations run under the same rules as guest SQL,
    /// except that they may hold several statements and have no deadline.
    fn migrate(&self, migrations: &[Migration]) -> Result<Vec<String>, SqlError>;
}

/// One service's data handles.
#[derive(Clone)]
pub struct ServiceData {
    pub kv: Arc<dyn KvStore>,
    pub sql: Arc<dyn SqlDatabase>,
}

impl std::fmt::Debug for ServiceData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceData").finish_non_exhaustive()
    }
}

/// Why a backend could not open or delete data. These are operator-facing, never shown
/// to a guest.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot open the data of service `{service}` of app `{app}`: {message}")]
    Open {
        app: String,
        service: String,
        message: String,
    },
    #[error("cannot delete the data of app `{app}`: {message}")]
    Purge { app: String, message: String },
}

/// Opens services' data; the node holds one.
pub trait DataBackend: Send + Sync {
    /// The data handles of a service, created empty on first use. Cached: while open, the
    /// same service gets the same handles, so connections are shared by all its requests.
    fn open_service(&self, app: &str, service: &str) -> Result<ServiceData, DataError>;
    /// Deletes all data of every service of the app (closing open handles first: calls on
    /// handles opened before fail afterwards). Purging an app without data is not an
    /// error.
    fn purge_app(&self, app: &str) -> Result<(), DataError>;
    /// Whether services' SQL databases are available. A backend without them (a cluster,
    /// until its replicated databases exist) says `false`, and the node refuses to deploy
    /// a service that uses SQL rather than serve it half-working.
    fn sql_available(&self) -> bool {
        true
    }
}
