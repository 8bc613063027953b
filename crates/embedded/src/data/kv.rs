//! Key-value data in the table `_tessera_kv`: reads on the readers, every write on the
//! writer in an immediate transaction, so read-modify-write operations (`increment`,
//! `compare_and_swap`) are atomic against every other writer of the file.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::ServiceDb;
use super::conn::AcquireError;
use tessera_data::{KvError, KvStore, LIST_PAGE, limits};

const GET: &str = "SELECT value FROM _tessera_kv WHERE bucket = ?1 AND key = ?2";
const GET_VERSIONED: &str = "SELECT value, version FROM _tessera_kv WHERE bucket = ?1 AND key = ?2";
const GET_VERSION: &str = "SELECT version FROM _tessera_kv WHERE bucket = ?1 AND key = ?2";
const EXISTS: &str = "SELECT 1 FROM _tessera_kv WHERE bucket = ?1 AND key = ?2";
const LIST: &str =
    "SELECT key FROM _tessera_kv WHERE bucket = ?1 AND key > ?2 ORDER BY key LIMIT ?3";
const PUT: &str = "INSERT INTO _tessera_kv (bucket, key, value, version) VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value, version = excluded.version";
const DELETE: &str = "DELETE FROM _tessera_kv WHERE bucket = ?1 AND key = ?2";
const BUMP_VERSION: &str = "UPDATE _tessera_kv_version SET last = last + 1 WHERE id = 0";
const LAST_VERSION: &str = "SELECT last FROM _tessera_kv_version WHERE id = 0";

impl KvStore for ServiceDb {
    /// Reads are served from SQLite's page cache (or one small file read) on a reader
    /// connection of their own, in a few microseconds.
    fn reads_inline(&self) -> bool {
        true
    }

    fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        limits::check_key(key)?;
        self.read(|conn| {
            conn.prepare_cached(GET)?
                .query_row(params![bucket, key], |row| row.get(0))
                .optional()
        })
    }

    fn get_versioned(&self, bucket: &str, key: &str) -> Result<Option<(Vec<u8>, u64)>, KvError> {
        limits::check_key(key)?;
        self.read(|conn| {
            conn.prepare_cached(GET_VERSIONED)?
                .query_row(params![bucket, key], |row| {
                    Ok((row.get(0)?, row.get::<_, i64>(1)?.cast_unsigned()))
                })
                .optional()
        })
    }

    fn set(&self, bucket: &str, key: &str, value: &[u8]) -> Result<(), KvError> {
        limits::check_key(key)?;
        limits::check_value(key, value)?;
        self.write(|conn| {
            let version = next_version(conn)?;
            put(conn, bucket, key, value, version)
        })
    }

    fn delete(&self, bucket: &str, key: &str) -> Result<(), KvError> {
        limits::check_key(key)?;
        self.write(|conn| {
            conn.prepare_cached(DELETE)?.execute(params![bucket, key])?;
            Ok(())
        })
    }

    fn exists(&self, bucket: &str, key: &str) -> Result<bool, KvError> {
        limits::check_key(key)?;
        self.read(|conn| conn.prepare_cached(EXISTS)?.exists(params![bucket, key]))
    }

    fn list_keys(
        &self,
        bucket: &str,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), KvError> {
        // Keys are never empty, so "after the empty string" is "from the start". SQLite
        // compares TEXT with memcmp, which is byte order for UTF-8.
        let after = after.unwrap_or("");
        let mut keys = self.read(|conn| {
            conn.prepare_cached(LIST)?
                .query_map(params![bucket, after, LIST_PAGE as i64 + 1], |row| {
                    row.get(0)
                })?
                .collect::<rusqlite::Result<Vec<String>>>()
        })?;
        // One key more than a page was asked for to learn whether more follow.
        let cursor = if keys.len() > LIST_PAGE {
            keys.truncate(LIST_PAGE);
            keys.last().cloned()
        } else {
            None
        };
        Ok((keys, cursor))
    }

    fn increment(&self, bucket: &str, key: &str, delta: i64) -> Result<i64, KvError> {
        limits::check_key(key)?;
        self.write_checked(|conn| {
            let current: Option<Vec<u8>> = conn
                .prepare_cached(GET)?
                .query_row(params![bucket, key], |row| row.get(0))
                .optional()?;
            let new = match limits::next_counter(key, current.as_deref(), delta) {
                Ok(new) => new,
                Err(e) => return Ok(Err(e)),
            };
            let version = next_version(conn)?;
            put(conn, bucket, key, new.to_string().as_bytes(), version)?;
            Ok(Ok(new))
        })
    }

    fn compare_and_swap(
        &self,
        bucket: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        limits::check_key(key)?;
        limits::check_value(key, value)?;
        self.write(|conn| {
            let current: Option<u64> = conn
                .prepare_cached(GET_VERSION)?
                .query_row(params![bucket, key], |row| {
                    row.get::<_, i64>(0).map(i64::cast_unsigned)
                })
                .optional()?;
            if current != expected {
                return Ok(false);
            }
            let version = next_version(conn)?;
            put(conn, bucket, key, value, version)?;
            Ok(true)
        })
    }

    fn get_many(&self, bucket: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        limits::check_keys(keys)?;
        self.read(|conn| {
            // One read transaction, so all values come from the same snapshot.
            let tx = conn.transaction()?;
            let values = {
                let mut get = tx.prepare_cached(GET)?;
                keys.iter()
                    .map(|key| {
                        get.query_row(params![bucket, key], |row| row.get(0))
                            .optional()
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.finish()?;
            Ok(values)
        })
    }

    fn set_many(&self, bucket: &str, entries: &[(String, Vec<u8>)]) -> Result<(), KvError> {
        limits::check_entries(entries)?;
        if entries.is_empty() {
            return Ok(());
        }
        self.write(|conn| {
            // One version for the whole batch: it still differs from every earlier one.
            let version = next_version(conn)?;
            entries
                .iter()
                .try_for_each(|(key, value)| put(conn, bucket, key, value, version))
        })
    }

    fn delete_many(&self, bucket: &str, keys: &[String]) -> Result<(), KvError> {
        limits::check_keys(keys)?;
        if keys.is_empty() {
            return Ok(());
        }
        self.write(|conn| {
            let mut delete = conn.prepare_cached(DELETE)?;
            keys.iter()
                .try_for_each(|key| delete.execute(params![bucket, key]).map(drop))
        })
    }
}

impl ServiceDb {
    /// Runs Tessera's statements on a reader.
    fn read<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, KvError> {
        let mut reader = self.readers.acquire(None).map_err(|e| match e {
            AcquireError::Closed | AcquireError::TimedOut => KvError::Io(self.closed_message()),
            AcquireError::Open(e) => io(e),
        })?;
        reader.internal(work).map_err(io)
    }

    /// Runs Tessera's statements on the writer in one immediate transaction.
    fn write<T>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, KvError> {
        self.write_checked(|conn| work(conn).map(Ok))
    }

    /// Like [`ServiceDb::write`], for work that may refuse with a [`KvError`], in which
    /// case nothing it did is committed.
    fn write_checked<T>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<Result<T, KvError>>,
    ) -> Result<T, KvError> {
        let mut writer = self
            .writer()
            .map_err(|_| KvError::Io(self.closed_message()))?;
        writer
            .internal(|conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let outcome = work(&tx)?;
                if outcome.is_ok() {
                    tx.commit()?;
                }
                Ok(outcome)
            })
            .map_err(io)?
    }
}

/// A new version number, larger than every one handed out before in this database.
fn next_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(BUMP_VERSION)?.execute([])?;
    conn.prepare_cached(LAST_VERSION)?
        .query_row([], |row| row.get(0))
}

fn put(
    conn: &Connection,
    bucket: &str,
    key: &str,
    value: &[u8],
    version: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(PUT)?
        .execute(params![bucket, key, value, version])?;
    Ok(())
}

fn io(error: rusqlite::Error) -> KvError {
    KvError::Io(format!("key-value store: {error}"))
}
