//! [`Registry`]: the nodes that joined a cluster, each with a record in the KV bucket
//! `TESSERA_NODES` that it rewrites every [`HEARTBEAT`].
//!
//! Liveness is judged by the server's clock only: every record carries the time the server
//! stored it, and a node is `down` when its record is more than [`DOWN_AFTER`] older than
//! the server's time now. A reader takes that time from its own newest record (stored at a
//! server time it reads back) plus how long ago, on its monotonic clock, the server
//! acknowledged that write; so a reader whose heartbeat lags on a loaded machine still
//! sees a dead node go down on time, and machines whose clocks disagree still agree on
//! who is up. A node that stops cleanly
//! marks its record stopped and is shown down at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tessera_store::StoreError;

use crate::setup::NODES_BUCKET;
use crate::{Cluster, ClusterError, REQUEST_TIMEOUT};

/// How often a node rewrites its record.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How stale a record may be before its node is shown down.
pub const DOWN_AFTER: Duration = Duration::from_secs(3);

/// What a node says about itself in each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The gateway's address (`127.0.0.1:3000`), empty while starting.
    pub gateway: String,
    /// The admin listener's address.
    pub admin: String,
    /// The tessera version it runs.
    pub version: String,
    /// How many revisions it has loaded now.
    pub loaded: u64,
}

/// A node's record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Distinguishes this run of the node from an earlier one of the same name.
    pub instance: String,
    /// The node stopped cleanly.
    #[serde(default)]
    pub stopped: bool,
    /// When the server stored the record, in milliseconds since the Unix epoch (filled in
    /// from the entry when read).
    #[serde(skip)]
    pub seen_ms: u64,
    /// The entry's revision (filled in when read).
    #[serde(skip)]
    pub revision: u64,
}

/// Whether a node is up, as [`Registry::nodes`] judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Up,
    /// Its last heartbeat is this long before the newest one.
    Down {
        ago: Duration,
    },
}

/// This node's membership: its record, rewritten by a heartbeat task until it leaves.
pub struct Registry {
    cluster: Cluster,
    store: kv::Store,
    record: Arc<Mutex<NodeRecord>>,
    /// Wakes the heartbeat to write a changed record at once.
    changed: Arc<tokio::sync::Notify>,
    /// The revision of this node's newest acknowledged heartbeat, and when (on this
    /// node's monotonic clock) the acknowledgement came.
    acked: Arc<Mutex<(u64, Instant)>>,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Registry {
    /// Claims this node's name and starts its heartbeat. A name whose record is still
    /// being rewritten by another run is refused; a record that stays unchanged for
    /// [`DOWN_AFTER`] (its node died) is taken over.
    pub fn join(
        cluster: &Cluster,
        info: NodeInfo,
        loaded: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<Registry, ClusterError> {
        let name = cluster.node().to_owned();
        let js = cluster.js();
        let store = cluster
            .bridge()
            .run(async move { js.get_key_value(NODES_BUCKET).await })
            .map_err(|e| ClusterError::Setup {
                what: "the node registry".into(),
                message: e.to_string(),
            })?;
        let record = NodeRecord {
            name: name.clone(),
            info,
            instance: crate::control::operation_id(&name),
            stopped: false,
            seen_ms: 0,
            revision: 0,
        };
        let claimed = cluster.bridge().run({
            let store = store.clone();
            let record = record.clone();
            let js = cluster.js();
            async move { claim(&js, &store, &record).await }
        })?;
        let registry = Registry {
            cluster: cluster.clone(),
            store: store.clone(),
            record: Arc::new(Mutex::new(record)),
            changed: Arc::new(tokio::sync::Notify::new()),
            acked: Arc::new(Mutex::new((claimed, Instant::now()))),
            heartbeat: Mutex::new(None),
        };
        let task = cluster.bridge().spawn(beat(
            cluster.js(),
            store,
            registry.record.clone(),
            registry.changed.clone(),
            registry.acked.clone(),
            loaded,
            claimed,
        ));
        *registry.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(registry)
    }

    /// Changes what the next heartbeats say (the listeners' addresses once bound).
    pub fn update(&self, change: impl FnOnce(&mut NodeInfo)) {
        change(&mut self.record.lock().unwrap_or_else(|e| e.into_inner()).info);
        self.changed.notify_one();
    }

    /// Every node that joined, sorted by name, with its state.
    pub fn nodes(&self) -> Result<Vec<(NodeRecord, NodeState)>, StoreError> {
        if !self.cluster.connected() {
            return Err(crate::unavailable(
                "list the cluster's nodes",
                "this node is not connected to NATS",
            ));
        }
        let store = self.store.clone();
        // Taken before the records are read, so the estimate below never runs ahead of
        // the server's time at any of those reads.
        let scan_started = Instant::now();
        let mut records = self
            .cluster
            .bridge()
            .run(async move {
                tokio::time::timeout(REQUEST_TIMEOUT, read_all(&store))
                    .await
                    .map_err(|_| "timed out".to_owned())?
            })
            .map_err(|message| crate::unavailable("list the cluster's nodes", message))?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        let mut now = records.iter().map(|r| r.seen_ms).max().unwrap_or(0);
        let (acked, acked_at) = *self.acked.lock().unwrap_or_else(|e| e.into_inner());
        let instance = self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .instance
            .clone();
        // The server stored our record no later than it acknowledged a write at least as
        // new, so this never runs ahead of the server's clock.
        if let Some(own) = records
            .iter()
            .find(|r| r.instance == instance && r.revision <= acked)
        {
            let since = u64::try_from(scan_started.saturating_duration_since(acked_at).as_millis())
                .unwrap_or(u64::MAX);
            now = now.max(own.seen_ms.saturating_add(since));
        }
        let newest = now;
        Ok(records
            .into_iter()
            .map(|record| {
                let ago = Duration::from_millis(newest.saturating_sub(record.seen_ms));
                let state = if record.stopped || ago > DOWN_AFTER {
                    NodeState::Down { ago }
                } else {
                    NodeState::Up
                };
                (record, state)
            })
            .collect())
    }

    /// Stops the heartbeat and marks the record stopped, so other nodes show this one
    /// down at once.
    pub fn leave(&self) {
        if let Some(task) = self
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
        let mut record = self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        record.stopped = true;
        let store = self.store.clone();
        let js = self.cluster.js();
        self.cluster.bridge().run(async move {
            let value = Bytes::from(serde_json::to_vec(&record).expect("records serialise"));
            // Only while the record is still this run's: another run that took the name
            // over must not be marked stopped.
            for _ in 0..3 {
                let Ok(Some(entry)) = store.entry(record.name.as_str()).await else {
                    return;
                };
                let ours = serde_json::from_slice::<NodeRecord>(&entry.value)
                    .is_ok_and(|r| r.instance == record.instance);
                if !ours {
                    return;
                }
                let written = take(
                    &js,
                    &store,
                    &record.name,
                    Some(entry.revision),
                    value.clone(),
                );
                if let Ok(Ok(Some(_))) = tokio::time::timeout(REQUEST_TIMEOUT, written).await {
                    return;
                }
            }
        });
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(task) = self
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// Takes the name: creates the record, or takes over one that is stopped or stays
/// unchanged for [`DOWN_AFTER`]. Returns the revision written.
async fn claim(
    js: &async_nats::jetstream::Context,
    store: &kv::Store,
    record: &NodeRecord,
) -> Result<u64, ClusterError> {
    let value = Bytes::from(serde_json::to_vec(record).expect("records serialise"));
    let setup = |e: &dyn std::fmt::Display| ClusterError::Setup {
        what: format!("the registration of node `{}`", record.name),
        message: e.to_string(),
    };
    loop {
        let entry = store
            .entry(record.name.as_str())
            .await
            .map_err(|e| setup(&e))?;
        let live = entry
            .as_ref()
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| {
                let held: NodeRecord = serde_json::from_slice(&e.value).ok()?;
                (!held.stopped).then_some((e.revision, held))
            });
        let Some((revision, held)) = live else {
            let expected = entry.map(|e| e.revision);
            match take(js, store, &record.name, expected, value.clone()).await {
                Ok(Some(revision)) => return Ok(revision),
                // Someone else claimed it meanwhile: look again.
                Ok(None) => continue,
                Err(e) => return Err(setup(&e)),
            }
        };
        // Watch the record for a while: a live node rewrites it every heartbeat.
        // From when this revision was seen, not from the start: after a lost race the
        // record just written must be watched for a full period too.
        let deadline = Instant::now() + DOWN_AFTER + HEARTBEAT;
        loop {
            tokio::time::sleep(HEARTBEAT / 4).await;
            let now = store
                .entry(record.name.as_str())
                .await
                .map_err(|e| setup(&e))?;
            if now.as_ref().map(|e| e.revision) != Some(revision) {
                let ago = now
                    .map(|e| {
                        let created = e.created.unix_timestamp_nanos() / 1_000_000;
                        let local = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as i128);
                        (local - created).max(0) as u64
                    })
                    .unwrap_or(0);
                return Err(ClusterError::NodeNameTaken {
                    node: record.name.clone(),
                    ago_ms: ago,
                    gateway: held.info.gateway.clone(),
                });
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        // Unchanged for longer than a node may be silent: its node is dead.
        match take(js, store, &record.name, Some(revision), value.clone()).await {
            Ok(Some(revision)) => return Ok(revision),
            Ok(None) => continue,
            Err(e) => return Err(setup(&e)),
        }
    }
}

/// Writes the record of `name` only if its newest message is still `expected` (`None`:
/// there is none), as a conditional write that holds on a 2.9 cluster.
async fn take(
    js: &async_nats::jetstream::Context,
    store: &kv::Store,
    name: &str,
    expected: Option<u64>,
    value: Bytes,
) -> Result<Option<u64>, String> {
    let subject = format!("{}{name}", store.prefix);
    crate::cas::write_if(
        js,
        &store.stream_name,
        &subject,
        |e| e,
        |current| {
            Ok(
                (current.map(|c| c.seq) == expected).then(|| crate::cas::Write {
                    payload: value.clone(),
                    headers: Default::default(),
                }),
            )
        },
    )
    .await
}

/// Rewrites the record every [`HEARTBEAT`] with the current load, for the node's life.
/// Each write expects the revision of the previous one, so if another run of the same
/// name took the record over, this one notices and stops claiming it.
async fn beat(
    js: async_nats::jetstream::Context,
    store: kv::Store,
    record: Arc<Mutex<NodeRecord>>,
    changed: Arc<tokio::sync::Notify>,
    acked: Arc<Mutex<(u64, Instant)>>,
    loaded: Arc<dyn Fn() -> u64 + Send + Sync>,
    mut revision: u64,
) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = changed.notified() => {}
        }
        let value = {
            let mut record = record.lock().unwrap_or_else(|e| e.into_inner());
            record.info.loaded = loaded();
            Bytes::from(serde_json::to_vec(&*record).expect("records serialise"))
        };
        let name = record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .name
            .clone();
        let instance = record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .instance
            .clone();
        let written = tokio::time::timeout(
            REQUEST_TIMEOUT,
            take(&js, &store, &name, Some(revision), value),
        )
        .await;
        match written {
            Ok(Ok(Some(next))) => {
                revision = next;
                *acked.lock().unwrap_or_else(|e| e.into_inner()) = (next, Instant::now());
            }
            Ok(Ok(None)) => {
                // Someone wrote the record since our last beat: our own write whose answer
                // was lost, or another run that took the name.
                if let Ok(Some(entry)) = store.entry(name.as_str()).await {
                    let ours = serde_json::from_slice::<NodeRecord>(&entry.value)
                        .is_ok_and(|r| r.instance == instance);
                    if !ours {
                        tracing::error!(node = %name, "another process took over this node's name; heartbeat stopped");
                        return;
                    }
                    revision = entry.revision;
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "heartbeat failed"),
            Err(_) => tracing::warn!("heartbeat timed out"),
        }
    }
}

async fn read_all(store: &kv::Store) -> Result<Vec<NodeRecord>, String> {
    let mut keys = store.keys().await.map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        names.push(key.map_err(|e| e.to_string())?);
    }
    let mut records = Vec::new();
    for name in names {
        let Some(entry) = store.entry(name).await.map_err(|e| e.to_string())? else {
            continue;
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        if let Ok(mut record) = serde_json::from_slice::<NodeRecord>(&entry.value) {
            record.seen_ms = (entry.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
            record.revision = entry.revision;
            records.push(record);
        }
    }
    Ok(records)
}
