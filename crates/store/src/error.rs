//! `StoreError`: everything that can go wrong reading or changing a node's control state.

use std::path::PathBuf;

/// What went wrong in the control store. Each variant names the app, service, revision or
/// file it is about, so callers can show it to a user as it is.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, as a verb phrase ("create the data directory").
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The embedded database failed. The cause is boxed so that the public API does not
    /// depend on the backend's own error type.
    #[error("control database: cannot {action}: {source}")]
    Database {
        /// The operation that failed, naming what it was about ("deploy app `shop`").
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    #[error(
        "control database {} has schema version {found}, but this tessera understands only up to {supported}",
        path.display()
    )]
    UnsupportedSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "app `{app}`, service `{service}`, revision {revision}: stored config is unreadable: {message}"
    )]
    CorruptConfig {
        app: String,
        service: String,
        revision: u32,
        message: String,
    },
    #[error("`{0}` is not a sha256 digest (64 lowercase hex digits)")]
    InvalidDigest(String),
    #[error("no artifact with sha256 {0} is stored on this node")]
    NoSuchArtifact(String),
    #[error("no app named `{0}`")]
    NoSuchApp(String),
    #[error("app `{app}` has no service `{service}`")]
    NoSuchService { app: String, service: String },
    #[error("service `{service}` of app `{app}` has no revision {revision}")]
    NoSuchRevision {
        app: String,
        service: String,
        revision: u32,
    },
    #[error(
        "service `{service}` of app `{app}` has no revision older than its primary revision {primary} to roll back to"
    )]
    NoEarlierRevision {
        app: String,
        service: String,
        primary: u32,
    },
    /// A traffic split or canary share that cannot be applied; the message names the
    /// service and what is wrong with the numbers.
    #[error("invalid traffic: {0}")]
    InvalidTraffic(String),
    #[error("route `{route}` is already claimed by service `{service}` of app `{app}`")]
    RouteConflict {
        route: String,
        /// The app whose service already claims the route.
        app: String,
        /// The service that already claims the route.
        service: String,
    },
    /// The app changed between reading its generation and committing (another deploy,
    /// traffic change, rollback or removal, possibly through another node); nothing was
    /// changed.
    #[error(
        "app `{app}` was changed by another operation while this deploy was prepared (generation {expected}, now {found}); nothing was changed, deploy again"
    )]
    Conflict {
        app: String,
        expected: u64,
        found: u64,
    },
    #[error("deploy of app `{0}` names no services")]
    EmptyDeploy(String),
    #[error("service `{service}` is given more than once in the deploy of app `{app}`")]
    DuplicateService { app: String, service: String },
    #[error("service `{service}` is selected for the deploy of app `{app}` but not given")]
    NotInDeploy { app: String, service: String },
    /// The shared store (a cluster's NATS JetStream) cannot be reached or did not answer
    /// in time; nothing is known to have changed. Reads of what a node has loaded go on.
    #[error("the cluster is unavailable: cannot {action}: {message}")]
    Unavailable { action: String, message: String },
}
