//! `tessera serve --cluster`: joining a cluster before anything is bound, the node's
//! shared backends, and its membership (`/v1/nodes`) for either mode.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tessera_cluster::{
    ClaimedTicks, Cluster, ClusterConfig, ClusterData, JetStreamControl, JetStreamJournal,
    NodeInfo, NodeState, ObjectArtifacts, Registry,
};
use tessera_node::{Backends, Member, Membership, Node, NodeBuilder, NodeError};

/// The local cache of the cluster's artifacts, inside the node's data directory.
const ARTIFACT_CACHE_DIR: &str = "artifacts";
/// This node's copies of services' SQL databases, inside its data directory.
const SQL_DIR: &str = "sql";

/// This node's place in a cluster: its connection and its registry record.
pub struct Joined {
    registry: Arc<Registry>,
    node: Arc<OnceLock<Node>>,
}

/// The default node name: the host name's first label.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let label = host.trim().split('.').next().unwrap_or_default().to_owned();
    if label.is_empty() {
        "node".to_owned()
    } else {
        label
    }
}

/// Connects to the cluster at `urls` (comma-separated) as `node`, claims the name, and
/// returns a node builder over the cluster's shared backends with this node's own files
/// (lock, compile cache, journal) in `data`. Every check that can fail happens here,
/// before any listener is bound.
pub fn join(data: &Path, urls: &str, node: &str) -> anyhow::Result<(NodeBuilder, Joined)> {
    let replicas = match std::env::var("TESSERA_CLUSTER_REPLICAS") {
        Ok(text) if !text.trim().is_empty() => Some(
            text.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=5).contains(n))
                .context("TESSERA_CLUSTER_REPLICAS must be a number from 1 to 5")?,
        ),
        _ => None,
    };
    let config = ClusterConfig {
        urls: urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect(),
        node: node.to_owned(),
        replicas,
    };
    let cluster = Cluster::connect(&config).context("cannot join the cluster")?;
    tracing::info!(node, server = %cluster.server(), replicas = cluster.replicas(), "joined the cluster");
    let served: Arc<OnceLock<Node>> = Arc::new(OnceLock::new());
    let loaded = {
        let served = served.clone();
        Arc::new(move || served.get().map_or(0, Node::loaded_revisions))
    };
    let registry = Registry::join(
        &cluster,
        NodeInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            ..NodeInfo::default()
        },
        loaded,
    )
    .context("cannot join the cluster")?;
    let builder = NodeBuilder::local(data, |data| {
        let artifacts = Arc::new(ObjectArtifacts::open(
            &cluster,
            data.join(ARTIFACT_CACHE_DIR),
        )?);
        let control = Arc::new(JetStreamControl::open(&cluster, artifacts.clone())?);
        let service_data = Arc::new(
            ClusterData::open(&cluster, data.join(SQL_DIR))
                .map_err(|e| NodeError::Invalid(e.to_string()))?,
        );
        let journal: Arc<dyn tessera_events::Journal> = Arc::new(ClaimedTicks::new(
            &cluster,
            Arc::new(JetStreamJournal::open(&cluster).map_err(NodeError::from)?),
        ));
        Ok(Backends {
            control,
            artifacts,
            data: service_data,
            journal: Some(journal),
        })
    })?
    .id(node);
    Ok((
        builder,
        Joined {
            registry: Arc::new(registry),
            node: served,
        },
    ))
}

impl Joined {
    /// Announces the bound listeners and lets the node answer `/v1/nodes`.
    pub fn serving(&self, node: &Node, gateway: SocketAddr, admin: SocketAddr) {
        let _ = self.node.set(node.clone());
        self.registry.update(|info| {
            info.gateway = gateway.to_string();
            info.admin = admin.to_string();
        });
        node.set_membership(Arc::new(ClusterMembership(self.registry.clone())));
    }

    /// Marks this node stopped, so the others show it down at once.
    pub fn leave(&self) {
        self.registry.leave();
    }
}

struct ClusterMembership(Arc<Registry>);

impl Membership for ClusterMembership {
    fn members(&self) -> Result<Vec<Member>, NodeError> {
        Ok(self
            .0
            .nodes()?
            .into_iter()
            .map(|(record, state)| Member {
                name: record.name,
                gateway: record.info.gateway,
                admin: record.info.admin,
                version: record.info.version,
                loaded: record.info.loaded,
                up: state == NodeState::Up,
                last_seen: match state {
                    NodeState::Up => Duration::ZERO,
                    NodeState::Down { ago } => ago,
                },
            })
            .collect())
    }
}

/// A node on its own: it is its only member.
pub struct LocalMembership {
    pub node: Node,
    pub name: String,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
}

impl Membership for LocalMembership {
    fn members(&self) -> Result<Vec<Member>, NodeError> {
        Ok(vec![Member {
            name: self.name.clone(),
            gateway: self.gateway.to_string(),
            admin: self.admin.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            loaded: self.node.loaded_revisions(),
            up: true,
            last_seen: Duration::ZERO,
        }])
    }
}
