//! The durable control state of a Tessera node: apps, their services, immutable
//! revisions, traffic weights, and the content-addressed component artifacts they run.
//!
//! The embedded backend keeps everything under one data directory: a SQLite database
//! `control.db` and artifact files `artifacts/<sha256>.wasm`. Every change that takes more
//! than one step runs in one transaction, so a node never holds half a deploy. Nothing in
//! the public API mentions SQLite, because a NATS JetStream backend is planned with the
//! same semantics.

mod artifacts;
mod control;
mod error;
mod schema;
mod seams;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

pub use error::StoreError;
pub use seams::{ArtifactStore, ControlState};

/// Name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "control.db";
/// Name of the artifact directory inside the data directory.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// How many revisions a service keeps when `DeployOptions::keep` is 0.
pub const DEFAULT_KEEP: usize = 10;

/// How one revision of a service runs: everything about it except the component bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionConfig {
    /// Path prefixes the service answers.
    pub routes: Vec<String>,
    /// Memory limit of one instance, in bytes.
    pub memory: u64,
    /// Deadline of one request, in milliseconds.
    pub timeout_ms: u64,
    /// Origins the service may call.
    pub outbound: Vec<String>,
    /// Origins an async invocation's callback may go to.
    pub callbacks: Vec<String>,
    /// Environment variables granted to the guest.
    pub env: Vec<(String, String)>,
    /// Configuration values served through `wasi:config/store`, sorted by key.
    pub config: Vec<(String, String)>,
    /// Key-value buckets the service may open besides `default`.
    pub buckets: Vec<String>,
    /// Names of the SQL migrations the deploy of this revision applied or found applied,
    /// in order (for display: the service's database records what ran).
    pub migrations: Vec<String>,
    /// Schedules whose ticks are delivered to a route of the service.
    pub cron: Vec<CronConfig>,
    /// Topics whose messages are delivered to a route of the service.
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Admission control and scale-to-zero. The primary revision's setting applies to the
    /// whole service.
    pub scaling: ScalingConfig,
}

/// How many requests of a service may run and wait on a node, and when an idle revision is
/// unloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalingConfig {
    /// Requests running at once across the service's revisions.
    pub concurrency: u32,
    /// Requests waiting for a slot; beyond that they are refused at once.
    pub queue: u32,
    /// Longest wait in the queue, in milliseconds.
    pub queue_timeout_ms: u64,
    /// Milliseconds without requests after which a revision is unloaded; `None`: never.
    pub idle_ms: Option<u64>,
    /// Async invocations accepted per second.
    pub async_rate: u32,
    /// Bytes the service's queued async invocations may hold.
    pub async_stored: u64,
}

impl Default for ScalingConfig {
    /// The manifest's defaults (`tessera_manifest::Scaling::default()`); revisions stored
    /// before these settings existed get them too.
    fn default() -> Self {
        ScalingConfig {
            concurrency: 100,
            queue: 100,
            queue_timeout_ms: 10_000,
            idle_ms: Some(300_000),
            async_rate: 100,
            async_stored: 64 << 20,
        }
    }
}

/// A schedule of a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronConfig {
    pub schedule: String,
    pub path: String,
    /// Fire one tick for ticks missed while the node was down (otherwise skip them).
    pub run_missed: bool,
}

/// A subscription of a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    pub topic: String,
    pub path: String,
    /// Work-sharing group shared with other services of the app.
    pub queue: Option<String>,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub concurrency: u32,
    pub batch: u32,
}

/// One service as a deploy asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDeploy {
    pub name: String,
    /// Digest of the component, which must already be stored with `put_artifact`.
    pub sha256: String,
    pub config: RevisionConfig,
}

/// How a deploy is applied.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// Only deploy these services (others of the app stay as they are); empty = the whole
    /// app: services absent from `services` are removed from the app.
    pub only: Vec<String>,
    /// Canary: give each newly created revision this share (1..=99) and the service's
    /// previously primary revision the rest.
    pub traffic: Option<u8>,
    /// How many revisions to keep per service (default 10 when 0): older ones that carry
    /// no traffic are pruned.
    pub keep: usize,
}

/// What a deploy changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployOutcome {
    pub app: String,
    /// (service, revision id) of the revisions created, sorted by service.
    pub created: Vec<(String, u32)>,
    /// Services whose primary revision already had the requested component and config,
    /// sorted.
    pub unchanged: Vec<String>,
    /// Services removed from the app because a whole-app deploy no longer names them,
    /// sorted.
    pub removed: Vec<String>,
}

/// An app and its services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppState {
    pub name: String,
    /// Sorted by name.
    pub services: Vec<ServiceState>,
}

/// A service: its retained revisions and how traffic is split among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    pub name: String,
    /// Ascending by id.
    pub revisions: Vec<Revision>,
    /// (revision id, percent), sorted by id; the percentages sum to 100 and none is 0.
    pub traffic: Vec<(u32, u8)>,
}

impl ServiceState {
    /// The revision with the largest share of traffic, ties going to the newest. Its
    /// routes are the service's current routes.
    pub fn primary(&self) -> Option<&Revision> {
        let (id, _) = self
            .traffic
            .iter()
            .max_by_key(|(id, percent)| (*percent, *id))?;
        self.revision(*id)
    }

    pub fn revision(&self, id: u32) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.id == id)
    }
}

/// An immutable version of a service: a component and how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// Per service, starting at 1, never reused.
    pub id: u32,
    pub sha256: String,
    pub config: RevisionConfig,
    /// When the revision was created, in seconds since the Unix epoch.
    pub created_at: u64,
}

/// The control state of one node, safe to share between threads.
pub struct ControlStore {
    dir: PathBuf,
    /// One connection behind a mutex: writes to SQLite are serialised anyway, and control
    /// operations are rare and short, so a pool would buy nothing.
    conn: Mutex<Connection>,
    artifacts: artifacts::Artifacts,
}

impl std::fmt::Debug for ControlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ControlStore {
    /// Opens the store in `dir`, creating the directory, the database and the artifact
    /// directory as needed, and migrating the schema to the current version.
    pub fn open(dir: &Path) -> Result<ControlStore, StoreError> {
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io("create the data directory", dir))?;
        let artifact_dir = dir.join(ARTIFACTS_DIR);
        if !artifact_dir.is_dir() {
            std::fs::create_dir_all(&artifact_dir)
                .map_err(io("create the artifact directory", &artifact_dir))?;
            // Without this a power cut could lose the directory entry while artifacts
            // written into it were reported durable.
            artifacts::sync_dir(dir)?;
        }
        let conn = schema::open(&dir.join(DATABASE_FILE))?;
        Ok(ControlStore {
            dir: dir.to_owned(),
            conn: Mutex::new(conn),
            artifacts: artifacts::Artifacts::new(artifact_dir),
        })
    }

    /// Sets (or replaces) a secret of a service. The service need not be deployed yet, so
    /// secrets can be in place before its first deploy.
    pub fn set_secret(
        &self,
        app: &str,
        service: &str,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        control::set_secret(&mut self.conn(), app, service, name, value)
    }

    /// Removes a secret; false if there was none.
    pub fn delete_secret(&self, app: &str, service: &str, name: &str) -> Result<bool, StoreError> {
        control::delete_secret(&mut self.conn(), app, service, name)
    }

    /// Names of a service's secrets and when each was last set, sorted by name. Never the
    /// values.
    pub fn secret_names(&self, app: &str, service: &str) -> Result<Vec<(String, u64)>, StoreError> {
        control::secret_names(&self.conn(), app, service)
    }

    /// A service's secrets with their values, for the host to hand to that service only.
    pub fn secrets(&self, app: &str, service: &str) -> Result<Vec<(String, String)>, StoreError> {
        control::secrets(&self.conn(), app, service)
    }

    /// Removes every secret of an app's services.
    pub fn purge_secrets(&self, app: &str) -> Result<(), StoreError> {
        control::purge_secrets(&mut self.conn(), app)
    }

    /// The data directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied change behind: an
        // unfinished transaction rolls back when dropped. So the connection stays usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether an artifact with this digest is stored; false for anything that is not a
    /// well-formed digest.
    pub fn has_artifact(&self, sha256: &str) -> bool {
        self.artifacts.contains(sha256)
    }

    /// Stores component bytes and returns their lowercase hex sha256. Storing the same
    /// bytes again is a cheap no-op. The artifact is durable when this returns.
    pub fn put_artifact(&self, bytes: &[u8]) -> Result<String, StoreError> {
        self.artifacts.put(bytes)
    }

    /// The file holding an artifact.
    pub fn artifact_path(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        self.artifacts.path(sha256)
    }

    /// Where uploads in progress are written: inside the artifact directory, so storing
    /// one is a rename.
    pub fn staging_dir(&self) -> PathBuf {
        self.artifacts.dir().to_path_buf()
    }

    /// Stores a complete file from [`ControlStore::staging_dir`] under `sha256`.
    pub fn put_artifact_file(&self, path: &Path, sha256: &str) -> Result<(), StoreError> {
        self.artifacts.put_file(path, sha256)
    }

    /// Every app, sorted by name.
    pub fn apps(&self) -> Result<Vec<AppState>, StoreError> {
        control::apps(&mut self.conn())
    }

    /// One app, if it exists.
    pub fn app(&self, name: &str) -> Result<Option<AppState>, StoreError> {
        control::app(&mut self.conn(), name)
    }

    /// Deploys services of an app in one transaction: either every change (new revisions,
    /// traffic, removed services, pruning) is applied and durable, or none is.
    pub fn deploy(
        &self,
        app: &str,
        services: &[ServiceDeploy],
        options: &DeployOptions,
    ) -> Result<DeployOutcome, StoreError> {
        let plan = control::DeployPlan::new(app, services, options)?;
        // Artifacts are never deleted, so checking them before the transaction cannot
        // race with anything that would make the check stale.
        for service in &plan.selected {
            self.artifacts.path(&service.sha256)?;
        }
        control::deploy(&mut self.conn(), &plan, control::now())
    }

    /// Replaces the traffic split of a service.
    pub fn set_traffic(
        &self,
        app: &str,
        service: &str,
        weights: &[(u32, u8)],
    ) -> Result<ServiceState, StoreError> {
        control::set_traffic(&mut self.conn(), app, service, weights)
    }

    /// Sends all traffic of a service to revision `to`, or, with `None`, to the newest
    /// revision older than the current primary.
    pub fn rollback(
        &self,
        app: &str,
        service: &str,
        to: Option<u32>,
    ) -> Result<ServiceState, StoreError> {
        control::rollback(&mut self.conn(), app, service, to)
    }

    /// Removes an app with its services, revisions and traffic; returns whether it
    /// existed. Artifacts stay, since other apps may share them, and revision ids stay
    /// reserved so a redeployed app continues its numbering.
    pub fn remove_app(&self, app: &str) -> Result<bool, StoreError> {
        control::remove_app(&mut self.conn(), app)
    }
}

#[cfg(test)]
mod tests;
