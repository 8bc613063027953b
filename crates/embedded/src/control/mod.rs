//! The embedded control state: a SQLite database `control.db` and artifact files
//! `artifacts/<sha256>.wasm` under the node's data directory. Every change that takes more
//! than one step runs in one transaction, so a node never holds half a deploy.

pub(crate) mod artifacts;
mod ops;
mod schema;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;
use tessera_store::{
    AppState, ArtifactStore, ChangeBatch, ControlState, DeployOptions, DeployOutcome,
    ServiceDeploy, ServiceState, StoreError,
};

/// Name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "control.db";
/// Name of the artifact directory inside the data directory.
pub const ARTIFACTS_DIR: &str = "artifacts";

/// The control state of one node, safe to share between threads.
pub struct ControlStore {
    dir: PathBuf,
    /// One connection behind a mutex: writes to SQLite are serialised anyway, and control
    /// operations are rare and short, so a pool would buy nothing.
    conn: Mutex<Connection>,
    artifacts: artifacts::ArtifactDir,
    /// The latest change's sequence number, sent after every commit that records one.
    /// Only this process writes the database (the node locks its data directory), so
    /// every change passes through here.
    latest: tokio::sync::watch::Sender<u64>,
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
        let latest = ops::latest_change(&conn)?;
        Ok(ControlStore {
            dir: dir.to_owned(),
            conn: Mutex::new(conn),
            artifacts: artifacts::ArtifactDir::new(artifact_dir),
            latest: tokio::sync::watch::Sender::new(latest),
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
        let result = ops::set_secret(&mut self.conn(), app, service, name, value);
        self.notify(result)
    }

    /// Removes a secret; false if there was none.
    pub fn delete_secret(&self, app: &str, service: &str, name: &str) -> Result<bool, StoreError> {
        let result = ops::delete_secret(&mut self.conn(), app, service, name);
        self.notify(result)
    }

    /// Names of a service's secrets and when each was last set, sorted by name. Never the
    /// values.
    pub fn secret_names(&self, app: &str, service: &str) -> Result<Vec<(String, u64)>, StoreError> {
        ops::secret_names(&self.conn(), app, service)
    }

    /// A service's secrets with their values, for the host to hand to that service only.
    pub fn secrets(&self, app: &str, service: &str) -> Result<Vec<(String, String)>, StoreError> {
        ops::secrets(&self.conn(), app, service)
    }

    /// Removes every secret of an app's services.
    pub fn purge_secrets(&self, app: &str) -> Result<(), StoreError> {
        let result = ops::purge_secrets(&mut self.conn(), app);
        self.notify(result)
    }

    /// The data directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tells watchers about the changes a successful write recorded. Callers pass a
    /// result bound beforehand: the connection must be unlocked, since this locks it.
    fn notify<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_ok() {
            match ops::latest_change(&self.conn()) {
                Ok(seq) => {
                    self.latest.send_if_modified(|latest| {
                        let newer = seq > *latest;
                        *latest = (*latest).max(seq);
                        newer
                    });
                }
                Err(error) => tracing::error!(%error, "cannot read the latest control change"),
            }
        }
        result
    }

    /// Changes committed after `after`, oldest first.
    pub fn changes(&self, after: u64) -> Result<ChangeBatch, StoreError> {
        ops::changes(&mut self.conn(), after)
    }

    /// A receiver of the latest change's sequence number.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.latest.subscribe()
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
        ops::apps(&mut self.conn())
    }

    /// One app, if it exists.
    pub fn app(&self, name: &str) -> Result<Option<AppState>, StoreError> {
        ops::app(&mut self.conn(), name)
    }

    /// Deploys services of an app in one transaction: either every change (new revisions,
    /// traffic, removed services, pruning) is applied and durable, or none is.
    pub fn deploy(
        &self,
        app: &str,
        services: &[ServiceDeploy],
        options: &DeployOptions,
    ) -> Result<DeployOutcome, StoreError> {
        let plan = tessera_store::rules::DeployPlan::new(app, services, options)?;
        // Artifacts are never deleted, so checking them before the transaction cannot
        // race with anything that would make the check stale.
        for service in &plan.selected {
            self.artifacts.path(&service.sha256)?;
        }
        let result = ops::deploy(&mut self.conn(), &plan, ops::now());
        self.notify(result)
    }

    /// Replaces the traffic split of a service.
    pub fn set_traffic(
        &self,
        app: &str,
        service: &str,
        weights: &[(u32, u8)],
    ) -> Result<ServiceState, StoreError> {
        let result = ops::set_traffic(&mut self.conn(), app, service, weights);
        self.notify(result)
    }

    /// Sends all traffic of a service to revision `to`, or, with `None`, to the newest
    /// revision older than the current primary.
    pub fn rollback(
        &self,
        app: &str,
        service: &str,
        to: Option<u32>,
    ) -> Result<ServiceState, StoreError> {
        let result = ops::rollback(&mut self.conn(), app, service, to);
        self.notify(result)
    }

    /// Removes an app with its services, revisions and traffic; returns whether it
    /// existed. Artifacts stay, since other apps may share them, and revision ids stay
    /// reserved so a redeployed app continues its numbering.
    pub fn remove_app(&self, app: &str) -> Result<bool, StoreError> {
        let result = ops::remove_app(&mut self.conn(), app);
        self.notify(result)
    }
}

impl ArtifactStore for ControlStore {
    fn has_artifact(&self, sha256: &str) -> bool {
        ControlStore::has_artifact(self, sha256)
    }
    fn put_artifact(&self, bytes: &[u8]) -> Result<String, StoreError> {
        ControlStore::put_artifact(self, bytes)
    }
    fn artifact_path(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        ControlStore::artifact_path(self, sha256)
    }
    fn staging_dir(&self) -> PathBuf {
        ControlStore::staging_dir(self)
    }
    fn put_artifact_file(&self, path: &Path, sha256: &str) -> Result<(), StoreError> {
        ControlStore::put_artifact_file(self, path, sha256)
    }
}

impl ControlState for ControlStore {
    fn changes(&self, after: u64) -> Result<ChangeBatch, StoreError> {
        ControlStore::changes(self, after)
    }
    fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        ControlStore::watch(self)
    }
    fn apps(&self) -> Result<Vec<AppState>, StoreError> {
        ControlStore::apps(self)
    }
    fn app(&self, name: &str) -> Result<Option<AppState>, StoreError> {
        ControlStore::app(self, name)
    }
    fn deploy(
        &self,
        app: &str,
        services: &[ServiceDeploy],
        options: &DeployOptions,
    ) -> Result<DeployOutcome, StoreError> {
        ControlStore::deploy(self, app, services, options)
    }
    fn set_traffic(
        &self,
        app: &str,
        service: &str,
        weights: &[(u32, u8)],
    ) -> Result<ServiceState, StoreError> {
        ControlStore::set_traffic(self, app, service, weights)
    }
    fn rollback(
        &self,
        app: &str,
        service: &str,
        to: Option<u32>,
    ) -> Result<ServiceState, StoreError> {
        ControlStore::rollback(self, app, service, to)
    }
    fn remove_app(&self, app: &str) -> Result<bool, StoreError> {
        ControlStore::remove_app(self, app)
    }
    fn set_secret(
        &self,
        app: &str,
        service: &str,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        ControlStore::set_secret(self, app, service, name, value)
    }
    fn delete_secret(&self, app: &str, service: &str, name: &str) -> Result<bool, StoreError> {
        ControlStore::delete_secret(self, app, service, name)
    }
    fn secret_names(&self, app: &str, service: &str) -> Result<Vec<(String, u64)>, StoreError> {
        ControlStore::secret_names(self, app, service)
    }
    fn secrets(&self, app: &str, service: &str) -> Result<Vec<(String, String)>, StoreError> {
        ControlStore::secrets(self, app, service)
    }
    fn purge_secrets(&self, app: &str) -> Result<(), StoreError> {
        ControlStore::purge_secrets(self, app)
    }
}
