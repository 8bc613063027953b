//! The contract of a node's durable control state: apps, their services, immutable
//! revisions, traffic weights, secrets, and the content-addressed component artifacts they
//! run. This crate holds the model, the traits and the errors; it names no backend. The
//! embedded backend (SQLite and files) is `tessera-embedded`; a NATS JetStream backend
//! implements the same traits and runs the same conformance suite.

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod seams;

pub use error::StoreError;
pub use seams::{ArtifactStore, ControlState, DEFAULT_CHANGE_HISTORY};

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
    /// Apply only if the app's [`AppState::generation`] is still this (0: the app must not
    /// exist), else [`StoreError::Conflict`] and nothing changes. A node reads the
    /// generation before it prepares a deploy (compiles, migrates), so two deploys of one
    /// app racing through two nodes end with one winner.
    pub if_generation: Option<u64>,
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
    /// The sequence number ([`Change::seq`]) of the last change to the app's services,
    /// revisions or traffic. It only grows, across removals too, so an app removed and
    /// deployed again never shows a generation seen before.
    pub generation: u64,
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

/// One committed change to the control state, as [`ControlState::changes`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Grows with every change of the whole control state, never reused.
    pub seq: u64,
    pub app: String,
    pub kind: ChangeKind,
}

/// What a [`Change`] touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// The app's services, revisions or traffic changed, or the app was removed.
    App,
    /// Secrets changed: of one service, or of every service of the app (`None`).
    Secrets(Option<String>),
}

/// The changes after a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeBatch {
    /// Oldest first.
    pub changes: Vec<Change>,
    /// The sequence number to ask from next time (the last change's, or the one asked
    /// from when nothing changed).
    pub last: u64,
    /// Changes after the one asked from were forgotten (a backend keeps a bounded
    /// history): the caller must treat everything as changed.
    pub gap: bool,
}
