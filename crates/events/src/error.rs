//! The one error type of the events crate.

use std::path::PathBuf;

/// What went wrong in a journal, the dispatcher or the cron scheduler.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The journal file could not be opened or prepared.
    #[error("cannot open event journal {}: {message}", path.display())]
    Open { path: PathBuf, message: String },
    /// The journal file was written by a build with another schema.
    #[error("event journal {} has schema version {found}, this build understands {supported}", path.display())]
    Schema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// The journal's writer thread could not be started.
    #[error("cannot start the event journal writer: {0}")]
    Thread(std::io::Error),
    /// The backend's storage failed; the message is the backend's own.
    #[error("event journal: {message}")]
    Storage {
        message: String,
        /// The disk (or its quota) is full: nothing was stored.
        disk_full: bool,
    },
    /// A group of writes could not be committed; every write of the group fails with it.
    #[error("event journal commit failed: {message}")]
    Commit { message: String, disk_full: bool },
    /// The journal has been closed.
    #[error("the event journal is closed")]
    Closed,
    /// A journal call on tokio's blocking pool did not finish (it panicked or the runtime
    /// is shutting down).
    #[error("a journal call did not finish: {0}")]
    Task(String),
    /// No subscription has this id.
    #[error("unknown subscription {0:?}")]
    UnknownSubscription(String),
    /// The subscription has no delivery of this message.
    #[error("subscription {subscription:?} has no delivery of message {message:?}")]
    NoDelivery {
        subscription: String,
        message: String,
    },
    /// A subscription or message breaks a rule; the text says which and why.
    #[error("{0}")]
    Invalid(String),
}

impl EventError {
    /// Whether the journal's disk (or its quota) is full: the write was refused, nothing
    /// was stored, and retrying only helps once space is freed.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            EventError::Storage {
                disk_full: true,
                ..
            } | EventError::Commit {
                disk_full: true,
                ..
            }
        )
    }
}
