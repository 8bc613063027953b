//! The embedded backends of a single node: everything durable lives in SQLite files and
//! plain files under the node's data directory, and nothing else has to run.
//!
//! - [`ControlStore`] implements `tessera_store::{ControlState, ArtifactStore}`:
//!   `control.db` and `artifacts/<sha256>.wasm`.
//! - [`EmbeddedData`] implements `tessera_data::DataBackend`: one SQLite file per service,
//!   `services/<app>/<service>.db`.
//! - [`EmbeddedJournal`] implements `tessera_events::Journal`: `events.db`, written by one
//!   group-committing thread.
//!
//! Each contract crate's conformance suite runs against these backends in this crate's
//! tests; the cluster backend runs the same suites.

mod control;
mod data;
mod events;

pub use control::artifacts::{ArtifactDir, digest, is_digest};
pub use control::{ARTIFACTS_DIR, ControlStore, DATABASE_FILE};
pub use data::EmbeddedData;
pub use data::replica::{
    ReplicatedSql, ReplicationLog, Segment, Snapshot, decode_segments, encode_segments,
};
pub use events::{EmbeddedJournal, JournalConfig};
