//! Services' SQL databases in a cluster: one database per service, cluster-wide, with
//! SQLite's dialect and one writer at a time.
//!
//! - **Every node keeps a copy** (`<data>/sql/<app>/<service>.db`, the embedded
//!   database with its fences: `tessera_embedded::ReplicatedSql`).
//! - **The log** is the stream `TESSERA_SQL_<app>_<service>` (subject
//!   `tessera.sql.<app>.<service>`): one message per write transaction, holding its
//!   effect (session changesets and schema statements, never the statements that made
//!   them), published with `Nats-Expected-Last-Sequence` = the last position the writer
//!   applied. Stream sequences are log positions. A write is acknowledged to the guest only
//!   after JetStream acknowledged its message, then committed to the writer's copy; a
//!   crash in between is repaired by replaying the log.
//! - **One writer**, holding a lease in the KV bucket `TESSERA_SQL_LEASES` (key
//!   `<app>.<service>`: the node and its run), renewed every second with a conditional
//!   write. Another node takes over only after seeing the record unchanged for
//!   [`LEASE_TTL`]. A new writer first applies the whole log, then appends an empty
//!   **marker** with the expected last sequence: from then on any append by a stale
//!   writer (paused, partitioned) expects an older sequence and is refused by the server,
//!   so it can never have a write acknowledged after the takeover; it steps down.
//! - **Calls**: on the writer they run locally. Elsewhere a write (or a query that
//!   writes) is forwarded to the writer over NATS request/reply
//!   (`tessera.sqlcall.<app>.<service>`); a read first waits until the local copy has
//!   applied the log up to the stream's last sequence (asked of the stream leader), so
//!   it sees every write acknowledged before it started, then runs locally. The writer
//!   reads locally while its lease was renewed within half the TTL.
//! - Every node follows the log with an ordered consumer and applies it to its copy.

mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use async_nats::jetstream::object_store::ObjectStore;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tessera_data::{Changes, Migration, Rows, SqlDatabase, SqlError, SqlValue, Statement};
use tessera_embedded::{ReplicatedSql, ReplicationLog, Segment, decode_segments, encode_segments};
use tokio::sync::watch;

use crate::setup::{SQL_LEASES_BUCKET, SQL_SNAPSHOTS_BUCKET};
use crate::{Cluster, REQUEST_TIMEOUT};
use wire::{Answer, Call};

/// How long a lease record must stay unchanged before another node may take over.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// A call the writer runs or ran: since when, and its answer once there is one.
type RunningCall = (Instant, watch::Receiver<Option<Answer>>);

/// The header of a log entry naming the call that made it.
const CALL_HEADER: &str = "Tessera-Call";
/// How long a writer remembers a call's answer, and a node a logged call's id.
const CALLS_KEPT: Duration = Duration::from_secs(120);

thread_local! {
    /// The id of the call this thread runs as the writer, written with its log entry.
    static CURRENT_CALL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The most a write transaction's effect may take in the log (one message).
pub const MAX_TRANSACTION_BYTES: usize = tessera_data::MAX_VALUE_BYTES;

/// How long before the TTL a writer that could not renew stops writing.
const LEASE_MARGIN: Duration = Duration::from_millis(500);
/// How long a catch-up waits for progress before it starts the follower again.
const CATCH_UP_SLICE: Duration = Duration::from_secs(2);
/// How long a call sent straight to the writer that answered last waits for an answer
/// before the lease is read.
const FAST_FORWARD_WAIT: Duration = Duration::from_secs(1);
/// How often the writer renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(1);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> SqlError {
    SqlError::Io(format!("cannot {what} in the cluster: {e}"))
}

/// Aborts its tasks when dropped.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Whether this node writes the database now.
enum Role {
    Follower,
    Writer {
        /// When the lease was last renewed.
        renewed: Instant,
        _tasks: Tasks,
    },
}

/// When a database's writer snapshots it and drops the log before the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlOptions {
    /// Snapshot once the log holds this many entries…
    pub snapshot_entries: u64,
    /// …or this many bytes.
    pub snapshot_bytes: u64,
    /// How often the writer looks at the log's size.
    pub snapshot_check: Duration,
}

impl Default for SqlOptions {
    fn default() -> SqlOptions {
        SqlOptions {
            snapshot_entries: 10_000,
            snapshot_bytes: 64 << 20,
            snapshot_check: Duration::from_secs(5),
        }
    }
}

/// The SQL databases of a node's services.
pub(crate) struct SqlDatabases {
    cluster: Cluster,
    root: PathBuf,
    options: SqlOptions,
    open: Mutex<HashMap<(String, String), Arc<ClusterSql>>>,
}

impl SqlDatabases {
    pub(crate) fn new(cluster: &Cluster, root: PathBuf, options: SqlOptions) -> SqlDatabases {
        SqlDatabases {
            cluster: cluster.clone(),
            root,
            options,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The service's database handle; the database itself is opened on its first call.
    pub(crate) fn handle(&self, app: &str, service: &str) -> Arc<ClusterSql> {
        lock(&self.open)
            .entry((app.to_owned(), service.to_owned()))
            .or_insert_with(|| {
                Arc::new(ClusterSql {
                    cluster: self.cluster.clone(),
                    path: self.root.join(app).join(format!("{service}.db")),
                    options: self.options,
                    app: app.to_owned(),
                    service: service.to_owned(),
                    db: OnceLock::new(),
                    opening: Mutex::new(()),
                    closed: Arc::new(AtomicBool::new(false)),
                })
            })
            .clone()
    }

    /// Deletes the app's databases: the local copies, their logs and leases.
    pub(crate) fn purge_app(&self, app: &str) -> Result<(), String> {
        let handles: Vec<Arc<ClusterSql>> = {
            let mut open = lock(&self.open);
            let mine = open
                .iter()
                .filter(|((a, _), _)| a == app)
                .map(|(_, h)| h.clone())
                .collect();
            open.retain(|(a, _), _| a != app);
            mine
        };
        for handle in &handles {
            handle.close();
        }
        let js = self.cluster.js();
        let prefix = format!("TESSERA_SQL_{app}_");
        let lease_prefix = format!("$KV.{SQL_LEASES_BUCKET}.{app}.>");
        let snapshot_prefix = format!("{app}/");
        self.cluster.bridge().run(async move {
            let mut names = js.stream_names();
            let mut doomed = Vec::new();
            while let Some(name) = names.next().await {
                let name = name.map_err(|e| e.to_string())?;
                if name.starts_with(&prefix) {
                    doomed.push(name);
                }
            }
            for name in doomed {
                js.delete_stream(&name).await.map_err(|e| e.to_string())?;
            }
            let leases = js
                .get_stream(format!("KV_{SQL_LEASES_BUCKET}"))
                .await
                .map_err(|e| e.to_string())?;
            leases
                .purge()
                .filter(lease_prefix)
                .await
                .map_err(|e| e.to_string())?;
            let snapshots = js
                .get_object_store(SQL_SNAPSHOTS_BUCKET)
                .await
                .map_err(|e| e.to_string())?;
            for stored in snapshot_names(&snapshots, &snapshot_prefix).await? {
                snapshots
                    .delete(&stored.name)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })?;
        let dir = self.root.join(app);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot delete {}: {e}", dir.display())),
        }
    }
}

/// One service's SQL database on this node.
pub(crate) struct ClusterSql {
    cluster: Cluster,
    path: PathBuf,
    options: SqlOptions,
    app: String,
    service: String,
    db: OnceLock<Arc<Db>>,
    opening: Mutex<()>,
    closed: Arc<AtomicBool>,
}

impl ClusterSql {
    fn db(&self) -> Result<Arc<Db>, SqlError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SqlError::Io(format!(
                "the data of service `{}` of app `{}` was deleted; this handle is closed",
                self.service, self.app
            )));
        }
        if let Some(db) = self.db.get() {
            return Ok(db.clone());
        }
        let _opening = lock(&self.opening);
        if let Some(db) = self.db.get() {
            return Ok(db.clone());
        }
        let db = Db::open(
            &self.cluster,
            &self.path,
            &self.app,
            &self.service,
            self.options,
        )?;
        let _ = self.db.set(db.clone());
        Ok(db)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(db) = self.db.get() {
            db.close();
        }
    }
}

impl SqlDatabase for ClusterSql {
    fn query(&self, sql: &str, params: &[SqlValue], deadline: Instant) -> Result<Rows, SqlError> {
        let db = self.db()?;
        if let Some(rows) = db.read(sql, params, deadline)? {
            return Ok(rows);
        }
        match db.write(
            Call::Query {
                sql: sql.to_owned(),
                params: wire::values(params),
            },
            deadline,
        )? {
            Answer::Rows { columns, rows } => wire::into_rows(columns, rows),
            other => Err(unexpected(&other)),
        }
    }

    fn query_quick(
        &self,
        sql: &str,
        params: &[SqlValue],
        budget: Duration,
    ) -> Option<Result<Rows, SqlError>> {
        // Only the writer's copy is current without asking the log.
        let db = self.db.get()?;
        if self.closed.load(Ordering::SeqCst) || !db.surely_writer() {
            return None;
        }
        db.local.query_quick(sql, params, budget)
    }

    fn execute(
        &self,
        sql: &str,
        params: &[SqlValue],
        deadline: Instant,
    ) -> Result<Changes, SqlError> {
        let call = Call::Execute {
            sql: sql.to_owned(),
            params: wire::values(params),
        };
        match self.db()?.write(call, deadline)? {
            Answer::Changes(mut changes) if changes.len() == 1 => {
                Ok(wire::into_changes(vec![changes.remove(0)]).remove(0))
            }
            other => Err(unexpected(&other)),
        }
    }

    fn batch(&self, statements: &[Statement], deadline: Instant) -> Result<Vec<Changes>, SqlError> {
        match self.db()?.write(Call::batch(statements), deadline)? {
            Answer::Changes(changes) => Ok(wire::into_changes(changes)),
            other => Err(unexpected(&other)),
        }
    }

    fn migrate(&self, migrations: &[Migration]) -> Result<Vec<String>, SqlError> {
        if migrations.is_empty() {
            // Every deploy asks; a service without migrations needs no database yet.
            return Ok(Vec::new());
        }
        // Migrations have no deadline of their own; a takeover may have to wait out a lease.
        let deadline = Instant::now() + Duration::from_secs(120);
        match self.db()?.write(Call::migrate(migrations), deadline)? {
            Answer::Applied(names) => Ok(names),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(answer: &Answer) -> SqlError {
    match answer {
        Answer::Error {
            kind,
            message,
            name,
        } => wire::answer_error(kind, message.clone(), name.clone()),
        other => SqlError::Io(format!("unexpected answer from the writer: {other:?}")),
    }
}

/// An open database: the local copy, its role, the log it follows.
struct Db {
    cluster: Cluster,
    app: String,
    service: String,
    stream: String,
    subject: String,
    call_subject: String,
    lease_subject: String,
    instance: String,
    local: ReplicatedSql,
    /// The identity of the log (see `log_identity`).
    log_id: String,
    /// Where the copy is, and where snapshots are written and fetched.
    path: PathBuf,
    options: SqlOptions,
    snapshots: ObjectStore,
    role: Arc<Mutex<Role>>,
    /// An append's outcome was unknown: the copy may be behind the log.
    dirty: Arc<AtomicBool>,
    applied: watch::Sender<u64>,
    /// The lease record as last seen: its sequence, and since when it has not changed.
    observed: Mutex<Option<(u64, Instant)>>,
    /// Calls this node runs or ran as the writer, by id, with their answers.
    calls: Mutex<HashMap<String, RunningCall>>,
    /// When a writer last answered a call this node forwarded.
    answered: Mutex<Option<Instant>>,
    /// Ids of calls recently written to the log (by any writer), as this node applied it.
    logged_calls: Arc<Mutex<HashMap<String, Instant>>>,
    follower: Mutex<Option<Tasks>>,
    /// Tells the follower to start its consumer again.
    restart: Arc<tokio::sync::Notify>,
}

/// The log as the local copy writes to it.
struct Log {
    cluster: Cluster,
    stream: String,
    subject: String,
    instance: String,
    role: Arc<Mutex<Role>>,
    dirty: Arc<AtomicBool>,
}

impl Log {
    /// Whether the log's last entry was written by this run (false when unsure).
    fn last_entry_is_mine(&self) -> bool {
        let js = self.cluster.js();
        let stream = self.stream.clone();
        let subject = self.subject.clone();
        let instance = self.instance.clone();
        self.cluster.bridge().run(async move {
            let read = async {
                let stream = js.get_stream(&stream).await.ok()?;
                let last = stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .ok()?;
                Some(
                    last.headers
                        .get("Tessera-Writer")
                        .is_some_and(|w| w.as_str() == instance),
                )
            };
            tokio::time::timeout(REQUEST_TIMEOUT, read)
                .await
                .ok()
                .flatten()
                .unwrap_or(false)
        })
    }

    /// Whether this node may still answer as the writer: it is one, and renewed its lease
    /// recently enough that no other node can have taken over.
    fn still_writer(&self) -> Result<(), SqlError> {
        let mut role = lock(&self.role);
        match &*role {
            Role::Writer { renewed, .. } if renewed.elapsed() < LEASE_TTL - LEASE_MARGIN => Ok(()),
            Role::Writer { .. } => {
                // Not renewed for nearly the TTL: another node may be taking over.
                *role = Role::Follower;
                Err(SqlError::Io(
                    "this node could not renew its writer lease in time; the write was not made"
                        .into(),
                ))
            }
            Role::Follower => Err(SqlError::Io(
                "this node is no longer the database's writer; the write was not made".into(),
            )),
        }
    }
}

impl ReplicationLog for Log {
    fn confirm(&self) -> Result<(), SqlError> {
        self.still_writer()
    }

    fn append(&self, after: u64, segments: &[Segment]) -> Result<u64, SqlError> {
        self.still_writer()?;
        let payload = Bytes::from(encode_segments(segments));
        if payload.len() > MAX_TRANSACTION_BYTES {
            return Err(SqlError::TooLarge(format!(
                "this transaction changes {} bytes of rows and schema; a database in a cluster takes at most {MAX_TRANSACTION_BYTES} per transaction (split it into smaller ones); nothing was written",
                payload.len()
            )));
        }
        let js = self.cluster.js();
        let subject = self.subject.clone();
        let instance = self.instance.clone();
        let call = CURRENT_CALL.with(|current| current.borrow().clone());
        let appended = self.cluster.bridge().run(async move {
            let mut message = jetstream::message::PublishMessage::build()
                .payload(payload)
                .expected_last_sequence(after)
                .header("Tessera-Writer", instance.as_str());
            if let Some(call) = &call {
                message = message.header(CALL_HEADER, call.as_str());
            }
            let ack = js.send_publish(subject, message).await?;
            tokio::time::timeout(REQUEST_TIMEOUT, ack.into_future())
                .await
                .map_err(|_| {
                    jetstream::context::PublishError::new(
                        jetstream::context::PublishErrorKind::TimedOut,
                    )
                })?
        });
        match appended {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                if self.last_entry_is_mine() {
                    // This copy is behind an entry of its own (its commit failed after
                    // the log took it): catch up before the next write.
                    self.dirty.store(true, Ordering::SeqCst);
                    return Err(SqlError::Io(
                        "this node's copy was behind the database's log; the write was not made (try it again)"
                            .into(),
                    ));
                }
                // Someone else appended: another node took over.
                *lock(&self.role) = Role::Follower;
                Err(SqlError::Io(
                    "another node took over as the database's writer; the write was not made"
                        .into(),
                ))
            }
            Err(e) => {
                self.dirty.store(true, Ordering::SeqCst);
                Err(SqlError::Io(format!(
                    "the cluster's log did not confirm the write ({e}): it may have been made or not; read before repeating it"
                )))
            }
        }
    }
}

/// The lease record's value.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseRecord {
    node: String,
    instance: String,
}

enum LeaseState {
    /// A live writer other than this node holds it.
    Held,
    /// Nobody, or a holder silent for the TTL: at this record sequence (0: none).
    Free(u64),
}

impl Db {
    fn open(
        cluster: &Cluster,
        path: &std::path::Path,
        app: &str,
        service: &str,
        options: SqlOptions,
    ) -> Result<Arc<Db>, SqlError> {
        let stream = format!("TESSERA_SQL_{app}_{service}");
        let subject = format!("tessera.sql.{app}.{service}");
        let replicas = cluster.replicas();
        let (log_id, snapshots) = {
            let js = cluster.js();
            let config = stream::Config {
                name: stream.clone(),
                // The log's identity: a log deleted and made again has another.
                description: Some(format!(
                    "Tessera: the log of service `{service}` of app `{app}`'s SQL database (log {})",
                    nuid::next()
                )),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                max_message_size: i32::try_from(crate::setup::NEEDED_PAYLOAD).unwrap_or(i32::MAX),
                discard: stream::DiscardPolicy::New,
                deny_delete: true,
                deny_purge: false,
                allow_direct: false,
                ..Default::default()
            };
            let name = stream.clone();
            cluster
                .bridge()
                .run(async move {
                    let open = async {
                        // Two nodes may create it at once: one wins, both read the winner's.
                        let info = match js.get_or_create_stream(config).await {
                            Ok(mut created) => {
                                created.info().await.map_err(|e| e.to_string())?.clone()
                            }
                            Err(_) => js
                                .get_stream(&name)
                                .await
                                .map_err(|e| e.to_string())?
                                .cached_info()
                                .clone(),
                        };
                        let snapshots = js
                            .get_object_store(SQL_SNAPSHOTS_BUCKET)
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>((log_identity(&info), snapshots))
                    };
                    tokio::time::timeout(REQUEST_TIMEOUT, open)
                        .await
                        .map_err(|_| "no answer in time".to_owned())?
                })
                .map_err(|e| unavailable("open the database's log", e))?
        };
        let role = Arc::new(Mutex::new(Role::Follower));
        let dirty = Arc::new(AtomicBool::new(false));
        let instance = crate::control::operation_id(cluster.node());
        let log = Arc::new(Log {
            cluster: cluster.clone(),
            stream: stream.clone(),
            subject: subject.clone(),
            instance: instance.clone(),
            role: role.clone(),
            dirty: dirty.clone(),
        });
        let local = open_copy(path, app, service, log, &log_id)?;
        let position = local.position()?;
        let (applied, _) = watch::channel(position);
        let db = Arc::new(Db {
            cluster: cluster.clone(),
            app: app.to_owned(),
            service: service.to_owned(),
            stream,
            subject,
            call_subject: format!("tessera.sqlcall.{app}.{service}"),
            lease_subject: format!("$KV.{SQL_LEASES_BUCKET}.{app}.{service}"),
            instance,
            local,
            log_id,
            path: path.to_path_buf(),
            options,
            snapshots,
            role,
            dirty,
            applied,
            observed: Mutex::new(None),
            calls: Mutex::new(HashMap::new()),
            answered: Mutex::new(None),
            logged_calls: Arc::new(Mutex::new(HashMap::new())),
            follower: Mutex::new(None),
            restart: Arc::new(tokio::sync::Notify::new()),
        });
        let task = cluster.bridge().spawn(follow(Arc::downgrade(&db)));
        *lock(&db.follower) = Some(Tasks(vec![task]));
        Ok(db)
    }

    fn close(&self) {
        lock(&self.follower).take();
        *lock(&self.role) = Role::Follower;
        self.local.close();
    }

    fn is_writer(&self) -> bool {
        matches!(*lock(&self.role), Role::Writer { .. })
    }

    /// Whether this node is the writer with a lease renewed lately enough that no other
    /// node can have taken over.
    fn surely_writer(&self) -> bool {
        matches!(&*lock(&self.role), Role::Writer { renewed, .. } if renewed.elapsed() < LEASE_TTL / 2)
    }

    /// A read: on this copy once it has applied everything acknowledged before now.
    /// `None` if the statement would write.
    fn read(
        &self,
        sql: &str,
        params: &[SqlValue],
        deadline: Instant,
    ) -> Result<Option<Rows>, SqlError> {
        if !self.surely_writer() {
            self.catch_up(deadline)?;
        }
        self.local.read(sql, params, deadline)
    }

    /// Waits until this copy has applied the log up to its last sequence now.
    fn catch_up(&self, deadline: Instant) -> Result<(), SqlError> {
        let js = self.cluster.js();
        let stream = self.stream.clone();
        let last = self
            .cluster
            .bridge()
            .run(async move {
                let stream = tokio::time::timeout(REQUEST_TIMEOUT, js.get_stream(stream))
                    .await
                    .map_err(|_| "no answer in time".to_owned())?
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(stream.cached_info().state.last_sequence)
            })
            .map_err(|e| unavailable("read the database's log", e))?;
        let mut applied = self.applied.subscribe();
        let restart = self.restart.clone();
        let caught_up = self.cluster.bridge().run(async move {
            loop {
                let before = *applied.borrow();
                let left = deadline.saturating_duration_since(Instant::now());
                let slice = left.min(CATCH_UP_SLICE);
                let waited = tokio::time::timeout(slice, applied.wait_for(|p| *p >= last))
                    .await
                    .map(|reached| reached.is_ok());
                match waited {
                    Ok(reached) => return reached,
                    Err(_) if slice == left => return false,
                    Err(_) => {
                        // Not one entry applied in a whole slice while behind: the
                        // follower's consumer may be stuck (its server died); start it
                        // again.
                        if *applied.borrow() == before {
                            restart.notify_one();
                        }
                    }
                }
            }
        });
        if caught_up {
            Ok(())
        } else {
            Err(SqlError::Timeout(
                "the request deadline passed while this node caught up with the database's log"
                    .into(),
            ))
        }
    }

    /// A write (or a query that writes): here if this node is the writer, else on the
    /// writer, taking over if there is none.
    ///
    /// A forwarded call carries an id. The writer runs a call once however often it is
    /// sent, and writes the id with the call's log entry; the caller waits in slices of
    /// the lease's TTL and, while the lease is renewed, sends again. When the writer stops
    /// renewing (dead or paused), this node takes over: if the call's id is in the log, the
    /// old writer made it before it stopped, and the call fails saying so rather than run
    /// twice.
    fn write(self: &Arc<Self>, call: Call, deadline: Instant) -> Result<Answer, SqlError> {
        let id = nuid::next().to_string();
        loop {
            if Instant::now() >= deadline {
                return Err(SqlError::Timeout(
                    "the request deadline passed while the database had no writer".into(),
                ));
            }
            if self.is_writer() {
                return Ok(self.run_local_as(&id, call, deadline));
            }
            // A writer answered lately: send it the call before reading the lease (one
            // round trip less). The writer checks its own role, so whoever answers
            // with a result is the writer; a miss falls back to the lease.
            let lately = lock(&self.answered).is_some_and(|at| at.elapsed() < LEASE_TTL / 2);
            if lately {
                // A short wait: a writer that stopped answering is found out through the
                // lease. A slow call sent again is not run twice (same id).
                match self.forward(&id, &call, deadline, FAST_FORWARD_WAIT) {
                    Err(Forward::TooLarge(message)) => return Err(SqlError::TooLarge(message)),
                    Ok(Answer::NotWriter) | Err(Forward::Failed(_)) => {
                        lock(&self.answered).take();
                    }
                    Ok(answer) => {
                        *lock(&self.answered) = Some(Instant::now());
                        return Ok(answer);
                    }
                }
            }
            match self.lease()? {
                LeaseState::Held => match self.forward(&id, &call, deadline, LEASE_TTL) {
                    Err(Forward::TooLarge(message)) => return Err(SqlError::TooLarge(message)),
                    Ok(Answer::NotWriter) => std::thread::sleep(Duration::from_millis(50)),
                    Err(Forward::Failed(e)) => {
                        tracing::debug!(app = %self.app, service = %self.service, error = %e, "a call forwarded to the database's writer got no answer; trying again");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Ok(answer) => {
                        *lock(&self.answered) = Some(Instant::now());
                        return Ok(answer);
                    }
                },
                LeaseState::Free(seq) => {
                    if let Err(e) = self.take_over(seq, deadline) {
                        tracing::debug!(app = %self.app, service = %self.service, error = %e, "cannot take over as the database's writer");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }

    /// Runs a call here as the writer, once per id: a call sent again while it runs (or
    /// after) gets the same answer.
    fn run_local_as(&self, id: &str, call: Call, deadline: Instant) -> Answer {
        let (sender, first) = {
            let mut running = lock(&self.calls);
            running.retain(|_, (at, _)| at.elapsed() < CALLS_KEPT);
            match running.get(id) {
                Some((_, receiver)) => (None, Some(receiver.clone())),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    running.insert(id.to_owned(), (Instant::now(), receiver));
                    (Some(sender), None)
                }
            }
        };
        if let Some(mut receiver) = first {
            let waited = self.cluster.bridge().run(async move {
                receiver
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|a| a.clone())
            });
            return waited.unwrap_or(Answer::NotWriter);
        }
        let answer = if lock(&self.logged_calls).contains_key(id) {
            // A writer before this one made it and stopped before answering.
            wire::error_answer(SqlError::Io(
                "the database's previous writer made this write and stopped before it could \
                 answer; its result is unknown (do not repeat it blindly)"
                    .into(),
            ))
        } else if self.dirty.swap(false, Ordering::SeqCst)
            && let Err(e) = self.catch_up(deadline)
        {
            self.dirty.store(true, Ordering::SeqCst);
            wire::error_answer(e)
        } else {
            CURRENT_CALL.with(|current| *current.borrow_mut() = Some(id.to_owned()));
            let answer = self.run_local(call, deadline);
            CURRENT_CALL.with(|current| current.borrow_mut().take());
            answer
        };
        if let Some(sender) = sender {
            let _ = sender.send(Some(answer.clone()));
        }
        answer
    }

    fn run_local(&self, call: Call, deadline: Instant) -> Answer {
        let result = match call {
            Call::Query { sql, params } => wire::from_values(&params)
                .and_then(|params| self.local.query(&sql, &params, deadline))
                .map(wire::rows_answer),
            Call::Execute { sql, params } => wire::from_values(&params)
                .and_then(|params| self.local.execute(&sql, &params, deadline))
                .map(|c| wire::changes_answer(&[c])),
            Call::Batch { statements } => statements
                .into_iter()
                .map(|(sql, params)| {
                    wire::from_values(&params).map(|params| Statement { sql, params })
                })
                .collect::<Result<Vec<_>, _>>()
                .and_then(|statements| self.local.batch(&statements, deadline))
                .map(|c| wire::changes_answer(&c)),
            Call::Migrate { migrations } => self
                .local
                .migrate(
                    &migrations
                        .into_iter()
                        .map(|(name, sql)| Migration { name, sql })
                        .collect::<Vec<_>>(),
                )
                .map(Answer::Applied),
        };
        result.unwrap_or_else(wire::error_answer)
    }

    /// Sends the call to the writer and waits for its answer, at most `wait` (the caller
    /// sends it again while the lease lives).
    fn forward(
        &self,
        id: &str,
        call: &Call,
        deadline: Instant,
        wait: Duration,
    ) -> Result<Answer, Forward> {
        let client = self.cluster.client();
        let subject = self.call_subject.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        let forwarded = wire::Forwarded {
            id: id.to_owned(),
            budget_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
            call: call.clone(),
        };
        let payload = Bytes::from(serde_json::to_vec(&forwarded).expect("calls serialise"));
        // Room for the subject, the reply inbox and the headers.
        let limit = client.server_info().max_payload.saturating_sub(4096);
        if payload.len() > limit {
            return Err(Forward::TooLarge(format!(
                "this write's statements and parameters take {} bytes as sent to the database's writer on another node; at most {limit} fit in one NATS message; nothing was written",
                payload.len()
            )));
        }
        let wait = left.min(wait);
        self.cluster.bridge().run(async move {
            let request = async_nats::Request::new()
                .payload(payload)
                .timeout(Some(wait));
            let reply = client
                .send_request(subject, request)
                .await
                .map_err(|e| Forward::Failed(e.to_string()))?;
            serde_json::from_slice::<Answer>(&reply.payload)
                .map_err(|e| Forward::Failed(e.to_string()))
        })
    }

    /// The lease as this node sees it now.
    fn lease(&self) -> Result<LeaseState, SqlError> {
        let js = self.cluster.js();
        let subject = self.lease_subject.clone();
        let current = self
            .cluster
            .bridge()
            .run(async move {
                let stream = js
                    .get_stream(format!("KV_{SQL_LEASES_BUCKET}"))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(REQUEST_TIMEOUT, crate::cas::current(&stream, &subject))
                    .await
                    .map_err(|_| "no answer in time".to_owned())?
            })
            .map_err(|e| unavailable("read the database's writer lease", e))?;
        let Some(current) = current.filter(|c| c.value.is_some()) else {
            return Ok(LeaseState::Free(0));
        };
        let ours = held_by(current.value.as_ref(), &self.instance);
        if ours && !self.is_writer() {
            // This node's own record, left from before it stepped down: take it back.
            return Ok(LeaseState::Free(current.seq));
        }
        let mut observed = lock(&self.observed);
        match *observed {
            Some((seq, since)) if seq == current.seq => {
                if since.elapsed() >= LEASE_TTL {
                    return Ok(LeaseState::Free(seq));
                }
            }
            _ => *observed = Some((current.seq, Instant::now())),
        }
        Ok(LeaseState::Held)
    }

    /// Takes the lease (expecting the record at `seq`), applies the whole log, fences it
    /// with a marker, and starts serving as the writer.
    fn take_over(self: &Arc<Self>, seq: u64, deadline: Instant) -> Result<(), SqlError> {
        let value = Bytes::from(
            serde_json::to_vec(&LeaseRecord {
                node: self.cluster.node().to_owned(),
                instance: self.instance.clone(),
            })
            .expect("records serialise"),
        );
        if self.write_lease(Some(seq), value.clone())?.is_none() {
            return Err(SqlError::Io("another node took the lease first".into()));
        }
        // Everything any earlier writer appended, then the marker after it.
        let marker = loop {
            if Instant::now() >= deadline {
                return Err(SqlError::Timeout(
                    "the request deadline passed while this node took over as the writer".into(),
                ));
            }
            self.catch_up(deadline)?;
            // Still ours? (A long catch-up renews nothing; this renews it.)
            if self.write_lease(None, value.clone())?.is_none() {
                return Err(SqlError::Io(
                    "the lease was taken while this node caught up".into(),
                ));
            }
            let position = self.local.position()?;
            match self.append_marker(position) {
                Ok(marker) => break marker,
                Err(true) => continue,
                Err(false) => return Err(SqlError::Io("cannot fence the database's log".into())),
            }
        };
        // Still ours after the catch-up (which renews nothing)?
        if self.write_lease(None, value.clone())?.is_none() {
            return Err(SqlError::Io(
                "the lease was taken while this node caught up".into(),
            ));
        }
        self.local.apply(marker, &[])?;
        let _ = self.applied.send(marker.max(*self.applied.borrow()));
        let weak = Arc::downgrade(self);
        let tasks = Tasks(vec![
            self.cluster.bridge().spawn(renew(weak.clone(), value)),
            self.cluster.bridge().spawn(serve_calls(weak.clone())),
            self.cluster.bridge().spawn(compact(weak)),
        ]);
        *lock(&self.role) = Role::Writer {
            renewed: Instant::now(),
            _tasks: tasks,
        };
        tracing::info!(app = %self.app, service = %self.service, position = marker, "took over as the database's writer");
        Ok(())
    }

    /// Writes the lease record if it is still at `expected` (`Some(0)`: absent); returns
    /// its new sequence, `None` if it had moved on.
    fn write_lease(&self, expected: Option<u64>, value: Bytes) -> Result<Option<u64>, SqlError> {
        let js = self.cluster.js();
        let subject = self.lease_subject.clone();
        let instance = self.instance.clone();
        self.cluster
            .bridge()
            .run(async move { write_lease_if(&js, &subject, &instance, expected, value).await })
            .map_err(|e| unavailable("write the database's writer lease", e))
    }

    /// Appends the new writer's marker after `position`. `Err(true)`: someone appended
    /// meanwhile (catch up and try again).
    fn append_marker(&self, position: u64) -> Result<u64, bool> {
        let js = self.cluster.js();
        let subject = self.subject.clone();
        let instance = self.instance.clone();
        self.cluster.bridge().run(async move {
            let message = jetstream::message::PublishMessage::build()
                .payload(Bytes::from(encode_segments(&[])))
                .expected_last_sequence(position)
                .header("Tessera-Writer", instance.as_str());
            let ack = match js.send_publish(subject, message).await {
                Ok(ack) => ack,
                Err(_) => return Err(false),
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, ack.into_future()).await {
                Ok(Ok(ack)) => Ok(ack.sequence),
                Ok(Err(e))
                    if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence =>
                {
                    Err(true)
                }
                _ => Err(false),
            }
        })
    }
}

/// Whether a lease record's value names this run.
fn held_by(value: Option<&Bytes>, instance: &str) -> bool {
    value
        .and_then(|v| serde_json::from_slice::<LeaseRecord>(v).ok())
        .is_some_and(|r| r.instance == instance)
}

/// Writes the lease record `value` if it is this run's already, or (with `expected`)
/// still at that sequence (0: absent); returns the new sequence, `None` if it moved on.
async fn write_lease_if(
    js: &jetstream::Context,
    subject: &str,
    instance: &str,
    expected: Option<u64>,
    value: Bytes,
) -> Result<Option<u64>, String> {
    crate::cas::write_if(
        js,
        &format!("KV_{SQL_LEASES_BUCKET}"),
        subject,
        |e| e,
        |current| {
            let ours = held_by(current.and_then(|c| c.value.as_ref()), instance);
            let at = current.filter(|c| c.value.is_some()).map_or(0, |c| c.seq);
            let allowed = ours || expected.is_some_and(|seq| at == seq);
            Ok(allowed.then(|| crate::cas::Write {
                payload: value.clone(),
                headers: Default::default(),
            }))
        },
    )
    .await
}

/// Follows the log into the local copy, from its position on.
async fn follow(db: Weak<Db>) {
    loop {
        let Some(strong) = db.upgrade() else {
            return;
        };
        let position = *strong.applied.borrow();
        let js = strong.cluster.js();
        let client = strong.cluster.client();
        let stream_name = strong.stream.clone();
        let consumer = async {
            let stream = js
                .get_stream(&stream_name)
                .await
                .map_err(|e| e.to_string())?;
            let first = stream.cached_info().state.first_sequence;
            if position + 1 < first {
                // The entries this copy lacks were dropped after a snapshot: take it.
                return Err(Gap(first));
            }
            stream
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: client.new_inbox(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: position + 1,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .messages()
                .await
                .map_err(|e| Gap::from(e.to_string()))
        };
        let mut messages = match consumer.await {
            Ok(messages) => messages,
            Err(Gap(first)) if first > 0 => {
                match restore_snapshot(&strong, first).await {
                    Ok(restored) => {
                        tracing::info!(app = %strong.app, service = %strong.service, position = restored, "restored the database from its snapshot");
                        strong.applied.send_if_modified(|p| {
                            let moved = restored > *p;
                            *p = (*p).max(restored);
                            moved
                        });
                    }
                    Err(e) => {
                        tracing::warn!(app = %strong.app, service = %strong.service, error = %e, "cannot restore the database from its snapshot; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let restart = strong.restart.clone();
        drop(strong);
        loop {
            let first = tokio::select! {
                next = messages.next() => next,
                () = restart.notified() => None,
            };
            let Some(first) = first else {
                break;
            };
            let Some(strong) = db.upgrade() else {
                return;
            };
            // This entry and those delivered behind it, applied in one transaction: a copy
            // that is behind catches up without a commit per entry.
            let mut batch = Vec::new();
            let mut expected = *strong.applied.borrow() + 1;
            let mut next = Some(first);
            let mut stop = None;
            while let Some(message) = next.take() {
                match read_entry(&strong, message, expected) {
                    Ok(entry) => {
                        expected = entry.0 + 1;
                        batch.push(entry);
                    }
                    Err(why) => {
                        stop = Some(why);
                        break;
                    }
                }
                if batch.len() < APPLY_BATCH {
                    next = messages.next().now_or_never().flatten();
                }
            }
            if let Some(&(last, _)) = batch.last() {
                let applier = strong.clone();
                let applied = tokio::task::spawn_blocking(move || {
                    let entries: Vec<(u64, &[Segment])> =
                        batch.iter().map(|(at, s)| (*at, s.as_slice())).collect();
                    applier.local.apply_all(&entries)
                })
                .await;
                match applied {
                    Ok(Ok(_)) => {
                        strong.applied.send_if_modified(|p| {
                            let moved = last > *p;
                            *p = (*p).max(last);
                            moved
                        });
                    }
                    Ok(Err(e)) => {
                        tracing::error!(app = %strong.app, service = %strong.service, last, error = %e, "cannot apply a database's log; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                    Err(_) => return,
                }
            }
            match stop {
                None => {}
                Some(Stop::Restart) => break,
                Some(Stop::Unreadable) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The most log entries a copy applies in one transaction.
const APPLY_BATCH: usize = 256;

/// Why following must start again.
enum Stop {
    /// The delivery failed, or entries were dropped under the reader (a snapshot was
    /// taken meanwhile).
    Restart,
    /// The entry cannot be read: never skipped (the copy would silently differ from the
    /// log); tried again after a pause.
    Unreadable,
}

/// One delivered log entry, read: its position and segments.
fn read_entry(
    db: &Db,
    message: Result<jetstream::Message, impl std::fmt::Display>,
    expected: u64,
) -> Result<(u64, Vec<Segment>), Stop> {
    let message = message.map_err(|_| Stop::Restart)?;
    let seq = message.info().map_err(|_| Stop::Restart)?.stream_sequence;
    if seq > expected {
        return Err(Stop::Restart);
    }
    let writer = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Tessera-Writer"))
        .map(|v| v.as_str().to_owned());
    if writer.as_deref().is_some_and(|w| w != db.instance) && db.is_writer() {
        // Another node wrote after this one's last write: it took over.
        tracing::warn!(app = %db.app, service = %db.service, "another node writes the database now; stepping down");
        *lock(&db.role) = Role::Follower;
    }
    if let Some(call) = message.headers.as_ref().and_then(|h| h.get(CALL_HEADER)) {
        let mut logged = lock(&db.logged_calls);
        logged.retain(|_, at| at.elapsed() < CALLS_KEPT);
        logged.insert(call.as_str().to_owned(), Instant::now());
    }
    match decode_segments(&message.payload) {
        Ok(segments) => Ok((seq, segments)),
        Err(e) => {
            tracing::error!(app = %db.app, service = %db.service, seq, error = %e, "an unreadable entry in a database's log; retrying");
            Err(Stop::Unreadable)
        }
    }
}

/// Why a forwarded call got no answer.
enum Forward {
    /// It cannot be sent at all.
    TooLarge(String),
    /// No answer (yet): the writer may be gone; try again or take over.
    Failed(String),
}

/// Why following the log could not start: a plain error, or the log's first entry lies
/// past this copy's next one.
struct Gap(u64);

impl From<String> for Gap {
    fn from(e: String) -> Gap {
        tracing::debug!(error = %e, "cannot follow a database's log; retrying");
        Gap(0)
    }
}

/// Longest a snapshot's upload or download may take, whatever its size.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How many snapshots of a database are kept: the newest, and the one before it.
const SNAPSHOTS_KEPT: usize = 2;
/// Snapshots are stored in chunks of this size (under the servers' payload limit).
const SNAPSHOT_CHUNK: usize = 512 * 1024;

/// A stored snapshot: its object's name, the log it is a copy of, its position.
pub(crate) struct Stored {
    pub(crate) name: String,
    log: String,
    position: u64,
}

/// The snapshots whose names start with `prefix` (`<app>/` or `<app>/<service>/`); their
/// names are `<app>/<service>/<log>/<position>`.
pub(crate) async fn snapshot_names(
    store: &ObjectStore,
    prefix: &str,
) -> Result<Vec<Stored>, String> {
    let mut list = store.list().await.map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    while let Some(info) = list.next().await {
        let info = info.map_err(|e| e.to_string())?;
        let Some(rest) = info.name.strip_prefix(prefix) else {
            continue;
        };
        let mut parts = rest.rsplit('/');
        let (Some(position), Some(log)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Ok(position) = position.parse::<u64>() {
            names.push(Stored {
                log: log.to_owned(),
                position,
                name: info.name.clone(),
            });
        }
    }
    Ok(names)
}

/// Fetches the newest snapshot and restores the copy from it; it must reach at least the
/// entry before the log's first (`first`). Returns the copy's position afterwards.
async fn restore_snapshot(db: &Arc<Db>, first: u64) -> Result<u64, String> {
    // A copy already far enough along (a writer whose own commits ran ahead of what
    // it followed) needs nothing.
    let copy = db.clone();
    let local = tokio::task::spawn_blocking(move || copy.local.position())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if local + 1 >= first {
        return Ok(local);
    }
    let prefix = format!("{}/{}/", db.app, db.service);
    let newest = snapshot_names(&db.snapshots, &prefix)
        .await?
        .into_iter()
        .filter(|s| s.log == db.log_id)
        .max_by_key(|s| s.position);
    let Some(Stored { name, position, .. }) = newest else {
        return Err(format!(
            "the log starts at entry {first}, and no snapshot holds the entries before it"
        ));
    };
    if position + 1 < first {
        return Err(format!(
            "the log starts at entry {first}, and the newest snapshot ends at entry {position}"
        ));
    }
    let file = db.path.with_extension("snapshot-in");
    let download = async {
        let mut object = db.snapshots.get(&name).await.map_err(|e| e.to_string())?;
        let mut out = tokio::fs::File::create(&file)
            .await
            .map_err(|e| format!("cannot create {}: {e}", file.display()))?;
        tokio::io::copy(&mut object, &mut out)
            .await
            .map_err(|e| format!("cannot fetch snapshot {name}: {e}"))?;
        out.sync_all().await.map_err(|e| e.to_string())
    };
    let fetched = tokio::time::timeout(SNAPSHOT_TIMEOUT, download)
        .await
        .map_err(|_| format!("fetching snapshot {name} took too long"))
        .and_then(|r| r);
    let restored = match fetched {
        Ok(()) => {
            let copy = db.clone();
            let from = file.clone();
            tokio::task::spawn_blocking(move || copy.local.restore(&from))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        }
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&file).await;
    restored
}

/// On the writer: snapshots the database when its log has grown past the options' limits,
/// stores the snapshot, drops the log's entries it holds, and deletes older snapshots.
async fn compact(db: Weak<Db>) {
    loop {
        let Some(every) = db.upgrade().map(|db| db.options.snapshot_check) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(strong) = db.upgrade() else {
            return;
        };
        if !strong.is_writer() {
            return;
        }
        match snapshot_once(&strong).await {
            Ok(Some((position, bytes, dropped))) => {
                tracing::info!(app = %strong.app, service = %strong.service, position, bytes, dropped, "snapshotted the database and dropped the log before it");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(app = %strong.app, service = %strong.service, error = %e, "cannot snapshot the database; trying again later");
            }
        }
    }
}

/// One snapshot, if the log is long enough: its position, size and the entries dropped.
async fn snapshot_once(db: &Arc<Db>) -> Result<Option<(u64, u64, u64)>, String> {
    let js = db.cluster.js();
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, js.get_stream(&db.stream))
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let state = &stream.cached_info().state;
    if state.messages < db.options.snapshot_entries && state.bytes < db.options.snapshot_bytes {
        return Ok(None);
    }
    let file = db.path.with_extension("snapshot-out");
    let copy = db.clone();
    let to = file.clone();
    let taken = async {
        let snapshot = tokio::task::spawn_blocking(move || copy.local.snapshot(&to))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut reader = tokio::fs::File::open(&file)
            .await
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let bytes = reader.metadata().await.map_err(|e| e.to_string())?.len();
        let name = format!(
            "{}/{}/{}/{:020}",
            db.app, db.service, snapshot.log, snapshot.position
        );
        let meta = async_nats::jetstream::object_store::ObjectMetadata {
            name: name.clone(),
            description: Some(format!(
                "log {} up to entry {}",
                snapshot.log, snapshot.position
            )),
            chunk_size: Some(SNAPSHOT_CHUNK),
            ..Default::default()
        };
        tokio::time::timeout(SNAPSHOT_TIMEOUT, db.snapshots.put(meta, &mut reader))
            .await
            .map_err(|_| "storing the snapshot took too long".to_owned())?
            .map_err(|e| e.to_string())?;
        // Kept: this snapshot and the one before it (a node may be fetching that one
        // now). Deleted: older ones, and any of another log (left by a deleted app).
        let prefix = format!("{}/{}/", db.app, db.service);
        let mut stored = snapshot_names(&db.snapshots, &prefix).await?;
        stored.sort_by_key(|s| std::cmp::Reverse((s.log == snapshot.log, s.position)));
        for old in stored
            .iter()
            .enumerate()
            .filter(|(i, s)| s.log != snapshot.log || *i >= SNAPSHOTS_KEPT)
            .map(|(_, s)| s)
        {
            db.snapshots
                .delete(&old.name)
                .await
                .map_err(|e| e.to_string())?;
        }
        // Every entry up to the snapshot's position is in it now.
        let purged = stream
            .purge()
            .sequence(snapshot.position + 1)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(Some((snapshot.position, bytes, purged.purged)))
    };
    let outcome = taken.await;
    let _ = tokio::fs::remove_file(&file).await;
    outcome
}

/// The log's identity: the token its creator wrote into its description.
fn log_identity(info: &stream::Info) -> String {
    info.config
        .description
        .as_deref()
        .and_then(|d| d.rsplit_once("(log "))
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map_or_else(|| format!("created {}", info.created), str::to_owned)
}

/// Opens the local copy of the log `log_id`. A copy of another log (the app's data was
/// deleted and made again while this node was away) is deleted first.
fn open_copy(
    path: &std::path::Path,
    app: &str,
    service: &str,
    log: Arc<Log>,
    log_id: &str,
) -> Result<ReplicatedSql, SqlError> {
    let open = || {
        ReplicatedSql::open(path, app, service, log.clone())
            .map_err(|e| SqlError::Io(e.to_string()))
    };
    let local = open()?;
    let recorded = local.log_id()?;
    if recorded == log_id {
        return Ok(local);
    }
    if recorded.is_empty() && local.position()? == 0 {
        local.set_log_id(log_id)?;
        return Ok(local);
    }
    tracing::warn!(app, service, path = %path.display(), "the local copy follows a log that no longer exists; starting it over");
    local.close();
    drop(local);
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SqlError::Io(format!(
                    "cannot delete {}: {e}",
                    std::path::Path::new(&file).display()
                )));
            }
        }
    }
    let local = open()?;
    local.set_log_id(log_id)?;
    Ok(local)
}

/// Renews the writer's lease every second; steps down when it is lost or cannot be
/// renewed within the TTL.
async fn renew(db: Weak<Db>, value: Bytes) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let Some(strong) = db.upgrade() else {
            return;
        };
        let js = strong.cluster.js();
        let subject = strong.lease_subject.clone();
        let instance = strong.instance.clone();
        let value = value.clone();
        // The lease counts from when the renewal was sent, not when it was answered.
        let sent = Instant::now();
        let renewed = tokio::time::timeout(
            REQUEST_TIMEOUT,
            write_lease_if(&js, &subject, &instance, None, value),
        )
        .await;
        let mut role = lock(&strong.role);
        match renewed {
            Ok(Ok(Some(_))) => {
                if let Role::Writer { renewed, .. } = &mut *role {
                    *renewed = sent;
                }
            }
            Ok(Ok(None)) => {
                tracing::warn!(app = %strong.app, service = %strong.service, "lost the database's writer lease; stepping down");
                *role = Role::Follower;
                return;
            }
            _ => {
                let silent = matches!(&*role, Role::Writer { renewed, .. } if renewed.elapsed() >= LEASE_TTL);
                if silent {
                    tracing::warn!(app = %strong.app, service = %strong.service, "cannot renew the database's writer lease; stepping down");
                    *role = Role::Follower;
                    return;
                }
            }
        }
    }
}

/// Answers calls other nodes forward, while this node is the writer.
async fn serve_calls(db: Weak<Db>) {
    let Some(strong) = db.upgrade() else {
        return;
    };
    let client = strong.cluster.client();
    let subject = strong.call_subject.clone();
    drop(strong);
    let mut calls = match client.subscribe(subject).await {
        Ok(calls) => calls,
        Err(e) => {
            // Other nodes could not reach this writer: step down, so one that can
            // serve calls takes over.
            if let Some(db) = db.upgrade() {
                tracing::warn!(app = %db.app, service = %db.service, error = %e, "cannot serve the database's calls; stepping down");
                *lock(&db.role) = Role::Follower;
            }
            return;
        }
    };
    serve_each(db.clone(), &client, &mut calls).await;
    if let Some(db) = db.upgrade() {
        tracing::warn!(app = %db.app, service = %db.service, "the database's call subscription ended; stepping down");
        *lock(&db.role) = Role::Follower;
    }
}

async fn serve_each(db: Weak<Db>, client: &async_nats::Client, calls: &mut async_nats::Subscriber) {
    while let Some(message) = calls.next().await {
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let Some(strong) = db.upgrade() else {
            return;
        };
        let client = client.clone();
        tokio::spawn(async move {
            let answer = match serde_json::from_slice::<wire::Forwarded>(&message.payload) {
                Ok(forwarded) => {
                    let db = strong.clone();
                    tokio::task::spawn_blocking(move || {
                        if !db.is_writer() {
                            return Answer::NotWriter;
                        }
                        // The caller's deadline, less the trip here.
                        let deadline = Instant::now() + Duration::from_millis(forwarded.budget_ms);
                        let answer = db.run_local_as(&forwarded.id, forwarded.call, deadline);
                        // A writer that lost its role on the way made nothing it did not
                        // report as made; another node may run the call now (same id),
                        // and the caller must hear from that one.
                        if matches!(answer, Answer::Error { .. }) && !db.is_writer() {
                            return Answer::NotWriter;
                        }
                        answer
                    })
                    .await
                    .unwrap_or(Answer::NotWriter)
                }
                Err(e) => wire::error_answer(SqlError::Io(format!("an unreadable call: {e}"))),
            };
            let payload = Bytes::from(serde_json::to_vec(&answer).expect("answers serialise"));
            let _ = client.publish(reply, payload).await;
        });
    }
}
