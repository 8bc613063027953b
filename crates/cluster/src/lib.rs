//! Cluster mode: many `tessera serve` processes share one NATS JetStream, and everything
//! that matters lives there rather than on any node.
//!
//! - [`JetStreamControl`] keeps apps, revisions, traffic and secrets as an ordered log (the
//!   stream `TESSERA_CONTROL`): every transaction is one message published with
//!   `Nats-Expected-Last-Sequence`, so transactions from all nodes form one order and a
//!   transaction computed against a stale view is refused by the server and recomputed.
//!   Every node applies the log to an in-memory projection; the stream sequence is the
//!   change sequence. It implements [`tessera_store::ControlState`] and runs the same
//!   conformance suite as the embedded store.
//! - [`ObjectArtifacts`] keeps components in the object store `TESSERA_ARTIFACTS`, named by
//!   sha256, verified when fetched, cached in a local directory.
//! - [`ClusterData`] keeps each service's key-value data in the KV bucket `TESSERA_KV`
//!   (keys prefixed by app, service and bucket, encoded to JetStream's key alphabet in an
//!   order-preserving way), read from the stream leader.
//! - [`Registry`] keeps the nodes that joined, with a heartbeat, in the KV bucket
//!   `TESSERA_NODES`.
//! - [`ClaimedTicks`] wraps a node's own event journal so each cron tick is fired by one
//!   node of the cluster (claims in `TESSERA_CRON`).
//!
//! The node-facing traits are synchronous (their callers run on blocking threads), so the
//! NATS client runs on a small runtime of its own and each call waits for its answer:
//! a node's async workers never drive, or starve, the client's connection.

mod artifacts;
mod bridge;
mod cas;
mod control;
mod error;
mod events;
mod kv;
mod names;
mod registry;
mod setup;
mod sql;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod ticks;

use std::sync::Arc;
use std::time::Duration;

pub use artifacts::ObjectArtifacts;
pub use control::JetStreamControl;
pub use error::ClusterError;
pub use events::{DEAD_RETENTION, DEDUP_WINDOW, JetStreamJournal, MAX_ACK_WAIT, STATUS_RETENTION};
pub use kv::ClusterData;
pub use names::{decode_token, encode_token};
pub use registry::{DOWN_AFTER, HEARTBEAT, NodeInfo, NodeRecord, NodeState, Registry};
pub use sql::{LEASE_TTL, SqlOptions};
pub use ticks::ClaimedTicks;

use bridge::Bridge;

/// How long a JetStream request may take before the operation reports the cluster
/// unavailable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The store error for an operation the cluster could not complete.
pub(crate) fn unavailable(
    action: &str,
    message: impl std::fmt::Display,
) -> tessera_store::StoreError {
    tessera_store::StoreError::Unavailable {
        action: action.to_owned(),
        message: message.to_string(),
    }
}

/// How to join a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`); the client also learns the rest of a NATS
    /// cluster from the first it reaches.
    pub urls: Vec<String>,
    /// This node's name, unique among the live nodes.
    pub node: String,
    /// Replicas of every stream and bucket Tessera creates; `None`: 3 when the server is
    /// part of a NATS cluster, else 1.
    pub replicas: Option<usize>,
}

/// A connection to a cluster's JetStream, checked and set up: the streams, buckets and
/// object store Tessera uses exist with the settings it needs.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    bridge: Bridge,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    node: String,
    replicas: usize,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.node)
            .field("replicas", &self.inner.replicas)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to NATS and checks the server before anything else happens: reachable,
    /// recent enough (2.9), JetStream enabled, a payload limit that fits Tessera's largest
    /// messages. Then creates (or checks) the streams and buckets.
    pub fn connect(config: &ClusterConfig) -> Result<Cluster, ClusterError> {
        let bridge = Bridge::new()?;
        let (client, js, replicas) = bridge.run({
            let config = config.clone();
            async move { setup::connect(&config).await }
        })?;
        Ok(Cluster {
            inner: Arc::new(Inner {
                bridge,
                client,
                js,
                node: config.node.clone(),
                replicas,
            }),
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The replicas of the streams and buckets this cluster uses.
    pub fn replicas(&self) -> usize {
        self.inner.replicas
    }

    /// Whether the client is connected to a NATS server now.
    pub fn connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The server this node is connected to, as it introduced itself.
    pub fn server(&self) -> String {
        let info = self.inner.client.server_info();
        format!("{} (nats-server {})", info.server_name, info.version)
    }

    fn js(&self) -> async_nats::jetstream::Context {
        self.inner.js.clone()
    }

    fn client(&self) -> async_nats::Client {
        self.inner.client.clone()
    }

    fn bridge(&self) -> &Bridge {
        &self.inner.bridge
    }
}
