//! [`ClusterData`]: services' key-value data in JetStream KV buckets `TESSERA_KV_00` to
//! `TESSERA_KV_15` (a service's keys all in one, chosen by a hash of its app and name).
//!
//! A key lives under `<app>.<service>.<bucket>.<key>`, each part one token of the
//! order-preserving encoding ([`crate::encode_token`]), so a service's handle can only
//! form its own subjects and listing one bucket's subjects lists its keys in byte order.
//! A key's version is its JetStream revision (the stream sequence of its last write):
//! it changes on every write and never returns to an earlier value. Compare-and-swap and
//! `increment` are conditional writes of [`crate::cas`] (the KV's own revision check is
//! not safe under concurrency on a 2.9 cluster). Reads go to the stream
//! leader (the bucket has no direct gets), so a write acknowledged through one node is
//! read through every other.
//!
//! Differences from the embedded store, which keeps a service's keys in one SQLite
//! transaction: `get_many` reads each key on its own (not one snapshot), and `set_many` /
//! `delete_many` write each key atomically but not the batch as a whole — a batch is
//! checked completely before its first write, so only a lost server can leave it half
//! applied (as `wasi:keyvalue/batch` allows).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures_util::StreamExt;
use tessera_data::{DataBackend, DataError, KvError, KvStore, LIST_PAGE, ServiceData, limits};

use crate::setup::{KV_SHARDS, kv_bucket};
use crate::sql::SqlOptions;
use crate::{Cluster, REQUEST_TIMEOUT, decode_token, encode_token};

/// A service's handles, and the flag that closes them when its app's data is deleted.
type OpenService = (ServiceData, Arc<AtomicBool>);

/// The data backend of a cluster node: key-value data and SQL databases shared by every
/// node (SQL: see [`crate::sql`]; each node keeps its copies under `sql_dir`).
pub struct ClusterData {
    cluster: Cluster,
    shards: Vec<kv::Store>,
    open: Mutex<HashMap<(String, String), OpenService>>,
    sql: crate::sql::SqlDatabases,
}

impl ClusterData {
    /// The cluster's data, SQL copies under `sql_dir`, with the default [`SqlOptions`].
    pub fn open(cluster: &Cluster, sql_dir: std::path::PathBuf) -> Result<ClusterData, DataError> {
        ClusterData::open_with(cluster, sql_dir, SqlOptions::default())
    }

    /// The cluster's data, SQL copies under `sql_dir`, SQL logs compacted as `options` say.
    pub fn open_with(
        cluster: &Cluster,
        sql_dir: std::path::PathBuf,
        options: SqlOptions,
    ) -> Result<ClusterData, DataError> {
        let js = cluster.js();
        let shards = cluster
            .bridge()
            .run(async move {
                let mut shards = Vec::with_capacity(KV_SHARDS);
                for i in 0..KV_SHARDS {
                    shards.push(js.get_key_value(kv_bucket(i)).await?);
                }
                Ok::<_, async_nats::jetstream::context::KeyValueError>(shards)
            })
            .map_err(|e| DataError::Open {
                app: String::new(),
                service: String::new(),
                message: format!("cannot open the cluster's key-value buckets: {e}"),
            })?;
        Ok(ClusterData {
            cluster: cluster.clone(),
            shards,
            open: Mutex::new(HashMap::new()),
            sql: crate::sql::SqlDatabases::new(cluster, sql_dir, options),
        })
    }
}

impl DataBackend for ClusterData {
    fn open_service(&self, app: &str, service: &str) -> Result<ServiceData, DataError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let key = (app.to_owned(), service.to_owned());
        if let Some((data, _)) = open.get(&key) {
            return Ok(data.clone());
        }
        let closed = Arc::new(AtomicBool::new(false));
        let data = ServiceData {
            kv: Arc::new(ServiceKv {
                cluster: self.cluster.clone(),
                store: self.shards[shard_of(app, service)].clone(),
                prefix: format!(
                    "{}.{}.",
                    encode_token(app.as_bytes()),
                    encode_token(service.as_bytes())
                ),
                closed: closed.clone(),
            }),
            sql: self.sql.handle(app, service),
        };
        open.insert(key, (data.clone(), closed));
        Ok(data)
    }

    fn purge_app(&self, app: &str) -> Result<(), DataError> {
        {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.retain(|(a, _), (_, closed)| {
                if a == app {
                    closed.store(true, Ordering::SeqCst);
                }
                a != app
            });
        }
        let shards = self.shards.clone();
        let app_token = encode_token(app.as_bytes());
        self.cluster
            .bridge()
            .run(async move {
                // The app's services may be in any shard.
                for store in shards {
                    let filter = format!("$KV.{}.{app_token}.>", store.name);
                    tokio::time::timeout(REQUEST_TIMEOUT, store.stream.purge().filter(filter))
                        .await
                        .map_err(|_| "timed out".to_owned())?
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .map_err(|message| DataError::Purge {
                app: app.to_owned(),
                message,
            })?;
        self.sql.purge_app(app).map_err(|message| DataError::Purge {
            app: app.to_owned(),
            message,
        })
    }
}

/// The shard holding a service's keys: FNV-1a of `app/service`, stable across nodes
/// and releases.
fn shard_of(app: &str, service: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in app.bytes().chain([b'/']).chain(service.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % KV_SHARDS as u64) as usize
}

/// One service's keys.
struct ServiceKv {
    cluster: Cluster,
    store: kv::Store,
    /// `<app>.<service>.`, encoded.
    prefix: String,
    closed: Arc<AtomicBool>,
}

fn io(e: impl std::fmt::Display) -> KvError {
    KvError::Io(format!("the cluster's key-value store: {e}"))
}

impl ServiceKv {
    fn key(&self, bucket: &str, key: &str) -> String {
        format!(
            "{}{}.{}",
            self.prefix,
            encode_token(bucket.as_bytes()),
            encode_token(key.as_bytes())
        )
    }

    /// The stream and full subject of a key, for conditional writes.
    fn conditional(&self, bucket: &str, key: &str) -> (String, String) {
        (
            self.store.stream_name.clone(),
            format!("$KV.{}.{}", self.store.name, self.key(bucket, key)),
        )
    }

    /// Runs a call on the client's runtime, failing if the handle was closed or the call
    /// takes longer than a request may.
    fn run<T: Send + 'static>(
        &self,
        call: impl Future<Output = Result<T, KvError>> + Send + 'static,
    ) -> Result<T, KvError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(KvError::Io(
                "this service's data was deleted; the handle is closed".into(),
            ));
        }
        if !self.cluster.connected() {
            return Err(io("this node is not connected to NATS"));
        }
        self.cluster.bridge().run(async move {
            tokio::time::timeout(REQUEST_TIMEOUT * 2, call)
                .await
                .map_err(|_| io("no answer in time"))?
        })
    }

    fn entry(&self, bucket: &str, key: &str) -> Result<Option<(Bytes, u64)>, KvError> {
        limits::check_key(key)?;
        let store = self.store.clone();
        let subject = self.key(bucket, key);
        self.run(async move { read(&store, subject).await })
    }
}

/// A key's value and revision, `None` when absent or deleted.
async fn read(store: &kv::Store, key: String) -> Result<Option<(Bytes, u64)>, KvError> {
    let entry = store.entry(key).await.map_err(io)?;
    Ok(entry
        .filter(|e| e.operation == Operation::Put)
        .map(|e| (e.value, e.revision)))
}

impl KvStore for ServiceKv {
    fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.entry(bucket, key)?.map(|(value, _)| value.to_vec()))
    }

    fn get_versioned(&self, bucket: &str, key: &str) -> Result<Option<(Vec<u8>, u64)>, KvError> {
        Ok(self
            .entry(bucket, key)?
            .map(|(value, revision)| (value.to_vec(), revision)))
    }

    fn set(&self, bucket: &str, key: &str, value: &[u8]) -> Result<(), KvError> {
        limits::check_key(key)?;
        limits::check_value(key, value)?;
        let store = self.store.clone();
        let subject = self.key(bucket, key);
        let value = Bytes::copy_from_slice(value);
        self.run(async move { store.put(subject, value).await.map(|_| ()).map_err(io) })
    }

    fn delete(&self, bucket: &str, key: &str) -> Result<(), KvError> {
        limits::check_key(key)?;
        let store = self.store.clone();
        let subject = self.key(bucket, key);
        self.run(async move { store.delete(subject).await.map_err(io) })
    }

    fn exists(&self, bucket: &str, key: &str) -> Result<bool, KvError> {
        Ok(self.entry(bucket, key)?.is_some())
    }

    fn list_keys(
        &self,
        bucket: &str,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), KvError> {
        let store = self.store.clone();
        let prefix = format!("{}{}.", self.prefix, encode_token(bucket.as_bytes()));
        let client = self.cluster.client();
        let mut keys = self.run(async move { list(&client, &store, prefix).await })?;
        keys.sort();
        if let Some(after) = after {
            keys.retain(|k| k.as_str() > after);
        }
        let more = keys.len() > LIST_PAGE;
        keys.truncate(LIST_PAGE);
        let cursor = more.then(|| keys.last().cloned()).flatten();
        Ok((keys, cursor))
    }

    fn increment(&self, bucket: &str, key: &str, delta: i64) -> Result<i64, KvError> {
        limits::check_key(key)?;
        let js = self.cluster.js();
        let (stream, subject) = self.conditional(bucket, key);
        let shown = key.to_owned();
        self.run(async move {
            let mut next = 0;
            crate::cas::write_if(&js, &stream, &subject, io, |current| {
                let value = current.and_then(|c| c.value.as_deref());
                next = limits::next_counter(&shown, value, delta)?;
                Ok(Some(crate::cas::Write {
                    payload: Bytes::from(next.to_string()),
                    headers: Default::default(),
                }))
            })
            .await?;
            Ok(next)
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
        let js = self.cluster.js();
        let (stream, subject) = self.conditional(bucket, key);
        let value = Bytes::copy_from_slice(value);
        self.run(async move { swap(&js, &stream, &subject, expected, value).await })
    }

    fn get_many(&self, bucket: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        limits::check_keys(keys)?;
        let store = self.store.clone();
        let subjects: Vec<String> = keys.iter().map(|k| self.key(bucket, k)).collect();
        self.run(async move {
            let reads = subjects.into_iter().map(|s| read(&store, s));
            futures_util::future::try_join_all(reads)
                .await
                .map(|values| {
                    values
                        .into_iter()
                        .map(|v| v.map(|(value, _)| value.to_vec()))
                        .collect()
                })
        })
    }

    fn set_many(&self, bucket: &str, entries: &[(String, Vec<u8>)]) -> Result<(), KvError> {
        limits::check_entries(entries)?;
        let store = self.store.clone();
        // A later duplicate key wins: keep only each key's last value, then write them
        // all at once (pipelined, each acknowledged before this returns).
        let mut last: std::collections::HashMap<String, Bytes> = std::collections::HashMap::new();
        for (k, v) in entries {
            last.insert(self.key(bucket, k), Bytes::copy_from_slice(v));
        }
        self.run(async move {
            let puts = last
                .into_iter()
                .map(|(subject, value)| store.put(subject, value));
            futures_util::future::try_join_all(puts)
                .await
                .map(|_| ())
                .map_err(io)
        })
    }

    fn delete_many(&self, bucket: &str, keys: &[String]) -> Result<(), KvError> {
        limits::check_keys(keys)?;
        let store = self.store.clone();
        let subjects: std::collections::HashSet<String> =
            keys.iter().map(|k| self.key(bucket, k)).collect();
        self.run(async move {
            let deletes = subjects.into_iter().map(|subject| store.delete(subject));
            futures_util::future::try_join_all(deletes)
                .await
                .map(|_| ())
                .map_err(io)
        })
    }
}

/// Writes `value` only if the key is still at revision `expected` (`None`: absent or
/// deleted). `Ok(false)` if someone wrote it meanwhile.
async fn swap(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
    expected: Option<u64>,
    value: Bytes,
) -> Result<bool, KvError> {
    let written = crate::cas::write_if(js, stream, subject, io, |current| {
        let live = current.filter(|c| c.value.is_some()).map(|c| c.seq);
        Ok((live == expected).then(|| crate::cas::Write {
            payload: value.clone(),
            headers: Default::default(),
        }))
    })
    .await?;
    Ok(written.is_some())
}

/// Every live key under `prefix` (encoded, ending in `.`), decoded, unsorted: the newest
/// message of each subject, headers only.
async fn list(
    client: &async_nats::Client,
    store: &kv::Store,
    prefix: String,
) -> Result<Vec<String>, KvError> {
    let full = format!("$KV.{}.{prefix}", store.name);
    let consumer = store
        .stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{full}>"),
            headers_only: true,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(io)?;
    let mut pending = consumer.cached_info().num_pending;
    let mut keys = Vec::new();
    if pending == 0 {
        return Ok(keys);
    }
    let mut messages = consumer.messages().await.map_err(io)?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(io)?;
        let info = message.info().map_err(io)?;
        pending = info.pending;
        let deleted = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        if !deleted
            && let Some(token) = message.subject.strip_prefix(full.as_str())
            && let Some(key) = decode_token(token).and_then(|b| String::from_utf8(b).ok())
        {
            keys.push(key);
        }
        if pending == 0 {
            break;
        }
    }
    Ok(keys)
}
