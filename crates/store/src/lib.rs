//! The contract of a node's durable control state: apps, their services, immutable
//! revisions, traffic weights, secrets, and the content-addressed component artifacts they
//! run. This crate holds the model, the traits and the errors; it names no backend. The
//! embedded backend (SQLite and files) is `tessera-embedded`; a NATS JetStream backend
//! implements the same traits and runs the same conformance suite.

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
pub mod rules;
mod seams;

pub use error::StoreError;
pub use seams::{ArtifactStore, ControlState, DEFAULT_CHANGE_HISTORY};

/// How many revisions a service keeps when `DeployOptions::keep` is 0.
pub const DEFAULT_KEEP: usize = 10;

/// How a revision runs, as the model crate defines it for every edge.
pub use tessera_model::{
    CronTrigger, Limits, MissedTicks, Origin, RevisionConfig, RoutePrefix, Scaling, Subscription,
};

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
