//! The narrow seams a node sees: control state and artifacts. The embedded backend
//! (`tessera_embedded::ControlStore`, SQLite plus files) implements both; a NATS JetStream backend (KV
//! buckets with revision compare-and-set for the state, an object store for artifacts)
//! will implement the same traits without callers changing.

use std::path::{Path, PathBuf};

use crate::{
    AppState, ChangeBatch, DeployOptions, DeployOutcome, ServiceDeploy, ServiceState, StoreError,
};

/// How many changes a backend remembers at least, for nodes catching up on them.
pub const DEFAULT_CHANGE_HISTORY: u64 = 10_000;

/// Content-addressed component storage.
pub trait ArtifactStore: Send + Sync {
    /// Whether an artifact with this digest is stored.
    fn has_artifact(&self, sha256: &str) -> bool;
    /// Stores bytes durably and returns their lowercase hex sha256.
    fn put_artifact(&self, bytes: &[u8]) -> Result<String, StoreError>;
    /// A local file holding the artifact; a remote backend fetches it into a local cache
    /// first, so the runtime can always map compiled code from files.
    fn artifact_path(&self, sha256: &str) -> Result<PathBuf, StoreError>;
    /// A local directory for uploads in progress, on the same file system as the local
    /// artifact files (so an upload becomes one with a rename).
    fn staging_dir(&self) -> PathBuf;
    /// Stores the file at `path` (in [`ArtifactStore::staging_dir`]), whose bytes the
    /// caller has checked hash to `sha256`, taking the file away. Durable when it returns.
    fn put_artifact_file(&self, path: &Path, sha256: &str) -> Result<(), StoreError>;
}

/// Apps, immutable revisions and traffic. Every method is all-or-nothing and durable
/// when it returns, and every change that commits is recorded as a [`crate::Change`] that
/// every node sharing the state can read and be woken by.
pub trait ControlState: Send + Sync {
    /// Changes committed after sequence number `after` (0: from the start of the kept
    /// history), oldest first.
    fn changes(&self, after: u64) -> Result<ChangeBatch, StoreError>;
    /// A receiver whose value is the sequence number of the latest change, updated when
    /// anyone commits one through this backend (by any node sharing it). Cheap; each
    /// caller gets its own.
    fn watch(&self) -> tokio::sync::watch::Receiver<u64>;
    fn apps(&self) -> Result<Vec<AppState>, StoreError>;
    fn app(&self, name: &str) -> Result<Option<AppState>, StoreError>;
    fn deploy(
        &self,
        app: &str,
        services: &[ServiceDeploy],
        options: &DeployOptions,
    ) -> Result<DeployOutcome, StoreError>;
    fn set_traffic(
        &self,
        app: &str,
        service: &str,
        weights: &[(u32, u8)],
    ) -> Result<ServiceState, StoreError>;
    fn rollback(
        &self,
        app: &str,
        service: &str,
        to: Option<u32>,
    ) -> Result<ServiceState, StoreError>;
    fn remove_app(&self, app: &str) -> Result<bool, StoreError>;
    /// Secrets: per service, set and removed one at a time, listed by name only; values
    /// are read only to hand them to the service's own instances.
    fn set_secret(
        &self,
        app: &str,
        service: &str,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError>;
    fn delete_secret(&self, app: &str, service: &str, name: &str) -> Result<bool, StoreError>;
    fn secret_names(&self, app: &str, service: &str) -> Result<Vec<(String, u64)>, StoreError>;
    fn secrets(&self, app: &str, service: &str) -> Result<Vec<(String, String)>, StoreError>;
    fn purge_secrets(&self, app: &str) -> Result<(), StoreError>;
}
