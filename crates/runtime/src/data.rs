//! The host side of a service's own data: `wasi:keyvalue` (store, atomics, batch),
//! `wasi:config/store` and `tessera:sql`, bound to the backends the node opened for this
//! service and nothing else. A guest names buckets, never services or files, so it cannot
//! reach another service's data.
//!
//! Backends are synchronous (SQLite, or a blocking client of a remote store). Writes and
//! long SQL run on tokio's blocking pool so a slow disk never stalls the threads that run
//! guests; key-value reads and short queries run on the worker only when the backend says
//! they are cheap there ([`tessera_data::KvStore::reads_inline`],
//! [`tessera_data::SqlDatabase::query_quick`]).

use std::sync::Arc;
use std::time::Instant;

use tessera_data::{KvError, SqlError, SqlValue};
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};

use crate::bindings::{self, Bucket, Cas};

use bindings::tessera::sql::sql;
use bindings::wasi::config::store as config;
use bindings::wasi::keyvalue::{atomics, batch, store};

/// What one service may reach: its data handles, its buckets and its configuration.
/// Shared by every instance of the service.
#[derive(Clone)]
pub struct ServiceDataAccess {
    /// The service's stores; `None` for a component loaded only to be checked.
    pub stores: Option<tessera_data::ServiceData>,
    /// Buckets the service may open besides `default`.
    pub buckets: Arc<[String]>,
    /// Configuration and secrets, sorted by key; secrets win over config of the same name.
    pub config: Arc<[(String, String)]>,
    /// Where messages the service publishes go; `None` refuses publishing.
    pub publisher: Option<Arc<dyn crate::Publisher>>,
}

impl std::fmt::Debug for ServiceDataAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Configuration may hold secrets: list keys only.
        let keys: Vec<&str> = self.config.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ServiceDataAccess")
            .field("stores", &self.stores.is_some())
            .field("buckets", &self.buckets)
            .field("config_keys", &keys)
            .field("publisher", &self.publisher.is_some())
            .finish()
    }
}

impl Default for ServiceDataAccess {
    fn default() -> Self {
        ServiceDataAccess {
            stores: None,
            buckets: Arc::from(Vec::new()),
            config: Arc::from(Vec::new()),
            publisher: None,
        }
    }
}

/// Per-instance data state: the service's access plus the request's deadline, which
/// bounds every SQL call.
pub(crate) struct DataState {
    pub(crate) access: ServiceDataAccess,
    pub(crate) deadline: Instant,
    /// The guest's open buckets and compare-and-swap handles.
    pub(crate) table: ResourceTable,
}

impl DataState {
    pub(crate) fn new(access: ServiceDataAccess, deadline: Instant) -> DataState {
        DataState {
            access,
            deadline,
            table: ResourceTable::new(),
        }
    }
}

/// Adds the data interfaces to a linker whose store state holds a [`DataState`], which
/// `get` reaches.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut DataState,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasSelf<DataState>>(linker, get)?;
    atomics::add_to_linker::<T, HasSelf<DataState>>(linker, get)?;
    batch::add_to_linker::<T, HasSelf<DataState>>(linker, get)?;
    config::add_to_linker::<T, HasSelf<DataState>>(linker, get)?;
    sql::add_to_linker::<T, HasSelf<DataState>>(linker, get)
}

/// Runs a key-value read where the backend says it belongs: on the calling worker when
/// reads are served from a local page cache in a few microseconds (far less than the
/// ~15-30 µs a hop to the blocking pool costs, measured in BENCHMARKS.md), else on the
/// blocking pool. Writes, which wait for an fsync, always go to the blocking pool.
async fn read<T: Send + 'static>(
    kv: Arc<dyn tessera_data::KvStore>,
    f: impl FnOnce(&dyn tessera_data::KvStore) -> T + Send + 'static,
) -> wasmtime::Result<T> {
    if kv.reads_inline() {
        Ok(f(kv.as_ref()))
    } else {
        blocking(move || f(kv.as_ref())).await
    }
}

/// How long a query may run on the calling worker before it is stopped and run again
/// on the blocking pool. Short enough that other requests on the worker barely notice.
const INLINE_QUERY_BUDGET: std::time::Duration = std::time::Duration::from_millis(1);

/// Runs a backend call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> wasmtime::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| wasmtime::Error::msg(format!("data operation failed: {e}")))
}

fn kv_error(error: KvError) -> store::Error {
    store::Error::Other(error.to_string())
}

const NO_STORES: &str = "this component was loaded without data stores";

impl DataState {
    fn kv(&self) -> Result<Arc<dyn tessera_data::KvStore>, store::Error> {
        self.access
            .stores
            .as_ref()
            .map(|s| s.kv.clone())
            .ok_or_else(|| store::Error::Other(NO_STORES.into()))
    }

    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<Arc<str>> {
        Ok(self.table.get(bucket)?.name.clone())
    }
}

impl store::Host for DataState {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, store::Error>> {
        if self.access.stores.is_none() {
            return Ok(Err(store::Error::Other(NO_STORES.into())));
        }
        let declared = identifier == "default" || self.access.buckets.contains(&identifier);
        if !declared {
            return Ok(Err(store::Error::NoSuchStore));
        }
        let bucket = self.table.push(Bucket {
            name: identifier.into(),
        })?;
        Ok(Ok(bucket))
    }
}

impl store::HostBucket for DataState {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let name = self.bucket(&bucket)?;
        let kv = match self.kv() {
            Ok(kv) => kv,
            Err(e) => return Ok(Err(e)),
        };
        Ok(read(kv, move |kv| kv.get(&name, &key))
            .await?
            .map_err(kv_error))
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let name = self.bucket(&bucket)?;
        let kv = match self.kv() {
            Ok(kv) => kv,
            Err(e) => return Ok(Err(e)),
        };
        Ok(blocking(move || kv.set(&name, &key, &value))
            .await?
            .map_err(kv_error))
    }

    async fn delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let name = self.bucket(&bucket)?;
        let kv = match self.kv() {
            Ok(kv) => kv,
            Err(e) => return Ok(Err(e)),
        };
        Ok(blocking(move || kv.delete(&name, &key))
            .await?
            .map_err(kv_error))
    }

    async fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        let name = self.bucket(&bucket)?;
        let kv = match self.kv() {
            Ok(kv) => kv,
            Err(e) => return Ok(Err(e)),
        };
        Ok(read(kv, move |kv| kv.exists(&name, &key))
            .await?
            .map_err(kv_error))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let name = self.bucket(&bucket)?;
        let kv = match self.kv() {
            Ok(kv) => kv,
            Err(e) => return Ok(Err(e)),
        };
        let page = read(kv, move |kv| kv.list_keys(&name, cursor.as_deref())).await?;
        Ok(page
            .map(|(keys, cursor)| store::KeyResponse { keys, cursor })
            .map_err(kv_error))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for DataState {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, store::Error>> {
        let name = self.bucket(&bucket)?;
        let kv = match self.kv() {
            Ok(kv) => kv,
            Err(e) => return Ok(Err(e)),
        };
        Ok(blocking(move || kv.increment(&name, &key, delta))
            .await?
            .map_err(kv_error))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let kv = match self.kv() {
            Ok(kv) => kv,
            Err(e) => return Ok(Err(atomics::CasError::StoreError(e))),
        };
        let handle = self.table.get(&cas)?;
        let (bucket, key) = (handle.bucket.clone(), handle.key.clone());
        let expected = handle.seen.as_ref().map(|(_, version)| *version);
        let swapped =
            blocking(move || kv.compare_and_swap(&bucket, &key, expected, &value)).await?;
        match swapped {
            Ok(true) => {
                self.table.delete(cas)?;
                Ok(Ok(()))
            }
            // The guest gets its handle back to read the value it lost to.
            Ok(false) => Ok(Err(atomics::CasError::CasFailed(cas))),
            Err(e) => {
                self.table.delete(cas)?;
                Ok(Err(atomics::CasError::StoreError(kv_error(e))))
            }
        }
    }
}

impl atomics::HostCas for DataState {
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        let name = self.bucket(&bucket)?;
        let kv = match self.kv() {
            Ok(kv) => kv,
            Err(e) => return Ok(Err(e)),
        };
        let (bucket_name, key_name) = (name.clone(), key.clone());
        let seen = read(kv, move |kv| kv.get_versioned(&bucket_name, &key_name)).await?;
        match seen {
            Ok(seen) => Ok(Ok(self.table.push(Cas {
                bucket: name,
                key,
                seen,
            })?)),
            Err(e) => Ok(Err(kv_error(e))),
        }
    }

    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let handle = self.table.get(&cas)?;
        Ok(Ok(handle.seen.as_ref().map(|(value, _)| value.clone())))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for DataState {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, store::Error>> {
        let name = self.bucket(&bucket)?;
        let kv = match self.kv() {
            Ok(kv) => kv,
            Err(e) => return Ok(Err(e)),
        };
        let found = read(kv, move |kv| {
            let values = kv.get_many(&name, &keys)?;
            Ok(keys
                .into_iter()
                .zip(values)
                .map(|(key, value)| value.map(|v| (key, v)))
                .collect())
        })
        .await?;
        Ok(found.map_err(kv_error))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let name = self.bucket(&bucket)?;
        let kv = match self.kv() {
            Ok(kv) => kv,
            Err(e) => return Ok(Err(e)),
        };
        Ok(blocking(move || kv.set_many(&name, &key_values))
            .await?
            .map_err(kv_error))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let name = self.bucket(&bucket)?;
        let kv = match self.kv() {
            Ok(kv) => kv,
            Err(e) => return Ok(Err(e)),
        };
        Ok(blocking(move || kv.delete_many(&name, &keys))
            .await?
            .map_err(kv_error))
    }
}

impl config::Host for DataState {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, config::Error>> {
        let config = &self.access.config;
        Ok(Ok(config
            .binary_search_by(|(k, _)| k.as_str().cmp(&key))
            .ok()
            .map(|i| config[i].1.clone())))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config::Error>> {
        Ok(Ok(self.access.config.to_vec()))
    }
}

impl DataState {
    fn sql(&self) -> Result<Arc<dyn tessera_data::SqlDatabase>, sql::Error> {
        self.access
            .stores
            .as_ref()
            .map(|s| s.sql.clone())
            .ok_or_else(|| sql::Error::Io(NO_STORES.into()))
    }
}

fn to_value(value: sql::Value) -> SqlValue {
    match value {
        sql::Value::Null => SqlValue::Null,
        sql::Value::Integer(i) => SqlValue::Integer(i),
        sql::Value::Real(r) => SqlValue::Real(r),
        sql::Value::Text(t) => SqlValue::Text(t),
        sql::Value::Blob(b) => SqlValue::Blob(b),
    }
}

fn from_value(value: SqlValue) -> sql::Value {
    match value {
        SqlValue::Null => sql::Value::Null,
        SqlValue::Integer(i) => sql::Value::Integer(i),
        SqlValue::Real(r) => sql::Value::Real(r),
        SqlValue::Text(t) => sql::Value::Text(t),
        SqlValue::Blob(b) => sql::Value::Blob(b),
    }
}

fn sql_error(error: SqlError) -> sql::Error {
    let message = error.to_string();
    match error {
        SqlError::InvalidStatement(_) => sql::Error::InvalidStatement(message),
        SqlError::Constraint(_) => sql::Error::ConstraintViolation(message),
        SqlError::NotPermitted(_) => sql::Error::NotPermitted(message),
        SqlError::TooLarge(_) => sql::Error::TooLarge(message),
        SqlError::Timeout(_) => sql::Error::Timeout(message),
        _ => sql::Error::Io(message),
    }
}

fn changes(c: tessera_data::Changes) -> sql::Changes {
    sql::Changes {
        rows_affected: c.rows_affected,
        last_insert_id: c.last_insert_id,
    }
}

impl sql::Host for DataState {
    async fn query(
        &mut self,
        statement: String,
        params: Vec<sql::Value>,
    ) -> wasmtime::Result<Result<sql::Rows, sql::Error>> {
        let db = match self.sql() {
            Ok(db) => db,
            Err(e) => return Ok(Err(e)),
        };
        let deadline = self.deadline;
        let params: Vec<SqlValue> = params.into_iter().map(to_value).collect();
        // Most queries are short reads: tried here first, within a bounded slice of this
        // worker's time; a write, a busy reader pool or a long query goes to the pool.
        let rows = match db.query_quick(&statement, &params, INLINE_QUERY_BUDGET) {
            Some(rows) => rows,
            None => blocking(move || db.query(&statement, &params, deadline)).await?,
        };
        Ok(rows
            .map(|rows| sql::Rows {
                columns: rows.columns,
                rows: rows
                    .rows
                    .into_iter()
                    .map(|row| row.into_iter().map(from_value).collect())
                    .collect(),
            })
            .map_err(sql_error))
    }

    async fn execute(
        &mut self,
        statement: String,
        params: Vec<sql::Value>,
    ) -> wasmtime::Result<Result<sql::Changes, sql::Error>> {
        let db = match self.sql() {
            Ok(db) => db,
            Err(e) => return Ok(Err(e)),
        };
        let deadline = self.deadline;
        let params: Vec<SqlValue> = params.into_iter().map(to_value).collect();
        let done = blocking(move || db.execute(&statement, &params, deadline)).await?;
        Ok(done.map(changes).map_err(sql_error))
    }

    async fn batch(
        &mut self,
        statements: Vec<sql::Statement>,
    ) -> wasmtime::Result<Result<Vec<sql::Changes>, sql::Error>> {
        let db = match self.sql() {
            Ok(db) => db,
            Err(e) => return Ok(Err(e)),
        };
        let deadline = self.deadline;
        let statements: Vec<tessera_data::Statement> = statements
            .into_iter()
            .map(|s| tessera_data::Statement {
                sql: s.sql,
                params: s.params.into_iter().map(to_value).collect(),
            })
            .collect();
        let done = blocking(move || db.batch(&statements, deadline)).await?;
        Ok(done
            .map(|all| all.into_iter().map(changes).collect())
            .map_err(sql_error))
    }
}
