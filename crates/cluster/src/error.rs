//! `ClusterError`: why a node cannot join or use its cluster. Each message names the
//! server, stream or node it is about, fit to print at start-up as it is.

/// What went wrong joining or setting up the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach NATS at {urls}: {message}")]
    Unreachable { urls: String, message: String },
    #[error(
        "NATS server {server} does not have JetStream enabled: start it with `-js` or a `jetstream {{}}` block in its config"
    )]
    NoJetStream { server: String },
    #[error("NATS server {server} is version {version}; Tessera needs nats-server 2.9 or newer")]
    TooOld { server: String, version: String },
    #[error(
        "NATS server {server} accepts messages of at most {max_payload} bytes; Tessera needs at least {needed} (a 1 MiB key-value value with its headers): set `max_payload: 8MB` in the server config"
    )]
    PayloadTooSmall {
        server: String,
        max_payload: usize,
        needed: usize,
    },
    #[error(
        "node name `{node}` is held by a live node (last heartbeat {ago_ms} ms ago, gateway {gateway}); give this node another --node name, or stop that one"
    )]
    NodeNameTaken {
        node: String,
        ago_ms: u64,
        gateway: String,
    },
    #[error("`{0}` cannot name a node: use 1 to 64 letters, digits, `-` or `_`")]
    InvalidNodeName(String),
    #[error("cannot set up {what}: {message}")]
    Setup { what: String, message: String },
    /// The server kept a setting other than the one asked for (2.9 silently drops the
    /// fields it does not know).
    #[error(
        "{what} was created with {field} = {found}, not {wanted}: the NATS server ignored the setting"
    )]
    SettingDropped {
        what: String,
        field: &'static str,
        wanted: String,
        found: String,
    },
}
