//! A long-running node: the durable control state (apps, revisions, traffic, artifacts),
//! the services loaded for the revisions that take traffic, and the gateway's routing
//! table, kept in step.
//!
//! Every control operation is validated and prepared (components compiled) before the
//! control state changes, then the state is committed in one transaction, then a new
//! routing table is built and swapped in whole. Requests in flight keep the table they
//! started with, so no operation ever fails a request. A serving revision's code is loaded
//! on its first request and unloaded when idle or when the memory budget needs the room
//! (`scaling.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

mod callback;
mod events;
mod internal;
mod quota;
mod scaling;

pub use callback::CallbackPolicy;

pub use scaling::{DEFAULT_MEMORY_BUDGET, MEMORY_BUDGET_ENV};

use arc_swap::ArcSwapOption;
use tessera_data::{DataBackend, DataError, Migration, SqlError};
use tessera_embedded::{ControlStore, EmbeddedData, EmbeddedJournal};
use tessera_events::{
    DeadLetter, DeliveryStatus, EventError, Journal, NewMessage, Published, SubscriptionStats,
    invocation,
};
use tessera_gateway::{Admission, AsyncRefusal, Backend, Limiter, RouteTable, Routes, Target};
use tessera_manifest::{Limits, Origin, RoutePrefix};
use tessera_runtime::{
    CodeSource, LoadReport, Runtime, RuntimeConfig, RuntimeError, Service, ServiceConfig,
    ServiceDataAccess,
};
use tessera_store::{
    AppState, ArtifactStore, ChangeKind, ControlState, DeployOptions, DeployOutcome,
    RevisionConfig, ServiceDeploy, ServiceState, StoreError,
};
use tessera_telemetry::Telemetry;

/// Errors of control operations.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Events(#[from] EventError),
    /// A service's SQL migrations could not be applied; its revision was not created.
    #[error("service `{service}`: {source}")]
    Migration {
        service: String,
        #[source]
        source: SqlError,
    },
    /// The request itself is wrong (bad names, routes, limits): nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// Another process holds the data directory: two nodes on one directory would each
    /// serve their own deploys and dispatch from one journal.
    #[error("data directory {} is in use by another tessera process{}", dir.display(), holder.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    DataDirInUse {
        dir: std::path::PathBuf,
        holder: Option<String>,
    },
    /// The data directory cannot be created or locked.
    #[error("cannot lock data directory {}: {source}", dir.display())]
    DataDir {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the embedded backend keeps services' data inside the node's data directory.
pub const SERVICE_DATA_DIR: &str = "services";
/// The embedded event journal inside the node's data directory.
pub const EVENTS_FILE: &str = "events.db";

/// The lock file inside a node's data directory.
pub const LOCK_FILE: &str = "lock";
/// The compile cache inside the node's data directory.
pub const COMPILED_DIR: &str = "compiled";

/// Takes the exclusive advisory lock on `data` (creating the directory), which the
/// operating system releases when the process ends however it ends, so a killed node never
/// leaves a stale lock. The holder's pid is written into the file for the error message.
fn lock_data_dir(data: &Path) -> Result<std::fs::File, NodeError> {
    use std::io::{Read, Seek, Write};
    let io = |source| NodeError::DataDir {
        dir: data.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(data).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(data.join(LOCK_FILE))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = text
                .trim()
                .parse::<u32>()
                .ok()
                .map(|pid| format!("pid {pid}"));
            return Err(NodeError::DataDirInUse {
                dir: data.to_path_buf(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

/// One service of a deploy: its revision and the SQL migrations to apply before it
/// takes traffic.
#[derive(Debug, Clone)]
pub struct ServiceRelease {
    pub service: ServiceDeploy,
    /// In order; each is applied once per service database, tracked by name.
    pub migrations: Vec<Migration>,
}

/// The shared backends of a node: control state, artifacts, services' data and, when they
/// are shared too, events.
pub struct Backends {
    pub control: Arc<dyn ControlState>,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub data: Arc<dyn DataBackend>,
    /// `None`: the embedded journal in the node's data directory.
    pub journal: Option<Arc<dyn Journal>>,
}

/// Everything a node is made of, gathered before it is built, so a node is complete from
/// its first routing table: its backends, its runtime (with the router for internal calls),
/// its telemetry and its memory budget.
pub struct NodeBuilder {
    store: Arc<dyn ControlState>,
    artifacts: Arc<dyn ArtifactStore>,
    data: Arc<dyn DataBackend>,
    journal: Arc<dyn Journal>,
    runtime: RuntimeConfig,
    id: String,
    dispatcher: tessera_events::DispatcherConfig,
    telemetry: Option<Telemetry>,
    memory_budget: u64,
    dir_lock: Option<std::fs::File>,
}

impl NodeBuilder {
    /// A node over any control-state, artifact, service-data and event backends.
    pub fn new(
        store: Arc<dyn ControlState>,
        artifacts: Arc<dyn ArtifactStore>,
        data: Arc<dyn DataBackend>,
        journal: Arc<dyn Journal>,
    ) -> NodeBuilder {
        NodeBuilder {
            store,
            artifacts,
            data,
            journal,
            runtime: RuntimeConfig::default(),
            id: tessera_events::DEFAULT_OWNER.to_owned(),
            dispatcher: tessera_events::DispatcherConfig::default(),
            telemetry: None,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            dir_lock: None,
        }
    }

    /// The embedded backends in the data directory `data` (created if needed), which it
    /// locks for the node's life, with the compile cache in `data/compiled` and the
    /// budget for loaded code from `TESSERA_MEMORY_BUDGET` (`512MiB`, `2GiB`, bytes) when
    /// that is set.
    pub fn embedded(data: &Path) -> Result<NodeBuilder, NodeError> {
        NodeBuilder::local(data, |data| {
            let store = Arc::new(ControlStore::open(data)?);
            let service_data = Arc::new(EmbeddedData::new(data.join(SERVICE_DATA_DIR)));
            Ok(Backends {
                control: store.clone(),
                artifacts: store,
                data: service_data,
                journal: None,
            })
        })
    }

    /// A node whose control state, artifacts, service data and (if given) event journal
    /// come from `backends` (called with the data directory once it is locked; a cluster's
    /// shared backends, say) and whose own files live in `data` as for
    /// [`NodeBuilder::embedded`]: the lock, the compile cache and, unless `backends` gave
    /// one, the event journal.
    pub fn local(
        data: &Path,
        backends: impl FnOnce(&Path) -> Result<Backends, NodeError>,
    ) -> Result<NodeBuilder, NodeError> {
        // First of all, so a second process touches none of the files.
        let dir_lock = lock_data_dir(data)?;
        let budget = match std::env::var(MEMORY_BUDGET_ENV) {
            Ok(text) if !text.trim().is_empty() => tessera_manifest::parse_size(&text)
                .map_err(|m| NodeError::Invalid(format!("{MEMORY_BUDGET_ENV}: {m}")))?,
            _ => DEFAULT_MEMORY_BUDGET,
        };
        let Backends {
            control: store,
            artifacts,
            data: service_data,
            journal,
        } = backends(data)?;
        let journal: Arc<dyn Journal> = match journal {
            Some(journal) => journal,
            None => Arc::new(EmbeddedJournal::open(&data.join(EVENTS_FILE))?),
        };
        let mut builder =
            NodeBuilder::new(store, artifacts, service_data, journal).memory_budget(budget);
        builder.dir_lock = Some(dir_lock);
        builder.runtime.cache_dir = Some(data.join(COMPILED_DIR));
        Ok(builder)
    }

    /// The runtime's settings. A compile cache directory already chosen (by
    /// [`NodeBuilder::embedded`]) is kept when `config` names none.
    pub fn runtime(mut self, config: RuntimeConfig) -> NodeBuilder {
        let cache_dir = config.cache_dir.clone().or(self.runtime.cache_dir.take());
        self.runtime = RuntimeConfig {
            cache_dir,
            ..config
        };
        self
    }

    /// The node's id among the nodes sharing its backends (default `local`): the owner of
    /// its event subscriptions in the journal.
    pub fn id(mut self, id: impl Into<String>) -> NodeBuilder {
        self.id = id.into();
        self
    }

    /// How the node's dispatcher polls and shuts down (its owner is always the node's id).
    pub fn dispatcher(mut self, config: tessera_events::DispatcherConfig) -> NodeBuilder {
        self.dispatcher = config;
        self
    }

    /// Counts requests, loads and faults in `telemetry` and logs platform events there.
    pub fn telemetry(mut self, telemetry: Telemetry) -> NodeBuilder {
        self.telemetry = Some(telemetry);
        self
    }

    /// The budget, in bytes, for the compiled code of loaded revisions (default
    /// [`DEFAULT_MEMORY_BUDGET`]).
    pub fn memory_budget(mut self, bytes: u64) -> NodeBuilder {
        self.memory_budget = bytes;
        self
    }

    /// Builds the node and its first routing table from the control state.
    pub fn build(self) -> Result<Node, NodeError> {
        if self.id.is_empty() {
            return Err(NodeError::Invalid("a node id must not be empty".into()));
        }
        let dispatcher = tessera_events::DispatcherConfig {
            owner: self.id,
            ..self.dispatcher
        };
        let events = Arc::new(events::Events::new(self.journal, dispatcher));
        // Calls to `http://<service>.internal` are routed by this node, over the targets
        // every rebuild installs, unless the runtime config brings its own router.
        let internal = self
            .runtime
            .internal
            .clone()
            .unwrap_or_else(|| Arc::new(internal::Router::new(events.targets())));
        let runtime = Runtime::new(RuntimeConfig {
            internal: Some(internal),
            ..self.runtime
        })?;
        let node = Node {
            inner: Arc::new(NodeInner {
                store: self.store,
                artifacts: self.artifacts,
                data: self.data,
                events,
                runtime,
                routes: Routes::default(),
                serving: Mutex::new(Serving::default()),
                residency: scaling::Residency::new(self.memory_budget),
                telemetry: ArcSwapOption::new(self.telemetry.map(Arc::new)),
                reaper: Mutex::new(None),
                watcher: Mutex::new(None),
                membership: Mutex::new(None),
                _dir_lock: self.dir_lock,
            }),
        };
        let mut serving = node.lock();
        // Read before the state, so a change committed meanwhile is caught up on again
        // rather than missed.
        serving.seen = *node.inner.store.watch().borrow();
        node.rebuild(&mut serving, &Renew::default())?;
        drop(serving);
        Ok(node)
    }
}

/// Identity of a loaded revision.
type RevisionKey = (String, String, u32);

/// A node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    store: Arc<dyn ControlState>,
    artifacts: Arc<dyn ArtifactStore>,
    data: Arc<dyn DataBackend>,
    events: Arc<events::Events>,
    runtime: Runtime,
    routes: Routes,
    /// Serialises control operations and holds what routing tables share across rebuilds.
    serving: Mutex<Serving>,
    /// Serving revisions' slots: which are loaded, and the budget for their code.
    residency: scaling::Residency,
    telemetry: ArcSwapOption<Telemetry>,
    /// The task unloading idle revisions, once started.
    reaper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The task applying control changes made by anyone, once started.
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Who the node's peers are, once known.
    membership: Mutex<Option<Arc<dyn Membership>>>,
    /// The exclusive lock on the data directory, held for the node's life (`Node::open`).
    _dir_lock: Option<std::fs::File>,
}

/// One node as `/v1/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub gateway: String,
    pub admin: String,
    pub version: String,
    /// Revisions with code loaded.
    pub loaded: u64,
    pub up: bool,
    /// How long before the freshest heartbeat this node's last one was (0 while up).
    pub last_seen: std::time::Duration,
}

/// Where a node learns who its peers are: a cluster's registry, or just itself.
pub trait Membership: Send + Sync {
    fn members(&self) -> Result<Vec<Member>, NodeError>;
}

/// What successive routing tables share.
#[derive(Default)]
struct Serving {
    /// Each service's admission limiter with the settings it was made for, kept while the
    /// settings stay the same so requests in flight count against the new table's limit.
    limiters: HashMap<(String, String), Arc<Limiter>>,
    /// Each service's async quotas, kept like its limiter.
    quotas: HashMap<(String, String), Arc<quota::AsyncQuota>>,
    /// The sequence number of the last control change this node's table reflects.
    seen: u64,
}

/// Whose serving revisions a rebuild gives fresh slots (so their next request loads them
/// again, with the secrets as they are now).
#[derive(Debug, Default)]
struct Renew {
    all: bool,
    apps: std::collections::HashSet<String>,
    services: std::collections::HashSet<(String, String)>,
}

impl Renew {
    /// What a batch of control changes asks to renew: services whose secrets changed, and
    /// everything when the batch says changes were forgotten.
    fn from_changes(batch: &tessera_store::ChangeBatch) -> Renew {
        let mut renew = Renew {
            all: batch.gap,
            ..Renew::default()
        };
        for change in &batch.changes {
            match &change.kind {
                ChangeKind::App => {}
                ChangeKind::Secrets(Some(service)) => {
                    renew.services.insert((change.app.clone(), service.clone()));
                }
                ChangeKind::Secrets(None) => {
                    renew.apps.insert(change.app.clone());
                }
            }
        }
        renew
    }

    fn covers(&self, app: &str, service: &str) -> bool {
        self.all
            || self.apps.contains(app)
            || self
                .services
                .contains(&(app.to_owned(), service.to_owned()))
    }
}

impl Node {
    /// Opens (or creates) the node's state in `data` with the embedded backends
    /// ([`NodeBuilder::embedded`]). Serving revisions are loaded when their first request
    /// comes.
    pub fn open(data: &Path, runtime: RuntimeConfig) -> Result<Node, NodeError> {
        NodeBuilder::embedded(data)?.runtime(runtime).build()
    }

    /// Sets the budget, in bytes, for the compiled code of loaded revisions (default
    /// [`DEFAULT_MEMORY_BUDGET`]), unloading the least recently used idle ones at once if
    /// they no longer fit. A single revision larger than the budget still loads.
    pub fn set_memory_budget(&self, bytes: u64) {
        self.inner.residency.set_budget(bytes);
        let telemetry = self.inner.telemetry.load_full();
        let cx = scaling::Cx {
            telemetry: telemetry.as_deref(),
        };
        self.inner.residency.fit_budget(None, &cx);
        tracing::debug!(budget = bytes, "memory budget for loaded code set");
    }

    /// The budget for loaded code, in bytes.
    pub fn memory_budget(&self) -> u64 {
        self.inner.residency.budget()
    }

    /// How many serving revisions have their code loaded now.
    pub fn loaded_revisions(&self) -> u64 {
        self.inner.residency.loaded()
    }

    /// Tells the node who its peers are (`/v1/nodes`); set once its listeners are bound.
    pub fn set_membership(&self, membership: Arc<dyn Membership>) {
        *self
            .inner
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(membership);
    }

    /// Every node sharing this one's state, this one included, sorted by name.
    pub fn members(&self) -> Result<Vec<Member>, NodeError> {
        let membership = self
            .inner
            .membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match membership {
            Some(membership) => membership.members(),
            None => Ok(Vec::new()),
        }
    }

    /// Bytes of compiled code loaded now, across every serving revision.
    pub fn loaded_code_bytes(&self) -> u64 {
        self.inner.residency.used()
    }

    /// The routing table handle the gateway serves from.
    pub fn routes(&self) -> Routes {
        self.inner.routes.clone()
    }

    /// Whether the node stores a component with this digest.
    pub fn has_artifact(&self, sha256: &str) -> bool {
        self.inner.artifacts.has_artifact(sha256)
    }

    fn lock(&self) -> MutexGuard<'_, Serving> {
        self.inner.serving.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compile_cache(&self, report: &LoadReport) {
        if let Some(telemetry) = self.inner.telemetry.load().as_deref() {
            telemetry.compile_cache(report.source != CodeSource::Compiled);
        }
    }

    /// Stores a component after checking that it is a component this node can serve as
    /// an HTTP service; a corrupt or foreign upload is refused before anything is stored.
    pub fn upload(&self, bytes: &[u8]) -> Result<String, NodeError> {
        self.upload_for("upload", Path::new("uploaded component"), bytes)
    }

    /// Where an upload in progress is written before [`Node::upload_file`] stores it.
    pub fn staging_dir(&self) -> std::path::PathBuf {
        self.inner.artifacts.staging_dir()
    }

    /// Stores a component uploaded to a file in [`Node::staging_dir`], which must hash to
    /// `sha256` and be a component this node can serve; the file is taken either way only
    /// when it is stored.
    pub fn upload_file(&self, path: &Path, sha256: &str) -> Result<(), NodeError> {
        let (_, report) =
            self.inner
                .runtime
                .load_service_checked(probe_config("upload"), path, sha256)?;
        self.compile_cache(&report);
        tracing::info!(sha256 = &sha256[..12.min(sha256.len())], elapsed = ?report.elapsed, "upload checked");
        Ok(self.inner.artifacts.put_artifact_file(path, sha256)?)
    }

    /// Like [`Node::upload`], naming the service and file the bytes came from in errors
    /// and logs.
    pub fn upload_for(
        &self,
        service: &str,
        origin: &Path,
        bytes: &[u8],
    ) -> Result<String, NodeError> {
        let (loaded, report) =
            self.inner
                .runtime
                .load_service(probe_config(service), origin, bytes)?;
        self.compile_cache(&report);
        let how = match report.source {
            tessera_runtime::CodeSource::Compiled => "compiled",
            tessera_runtime::CodeSource::Cache => "loaded from cache",
            tessera_runtime::CodeSource::Retained => "still mapped",
        };
        tracing::info!(service = %service, sha256 = &loaded.content_hash()[..12], elapsed = ?report.elapsed, "{how}");
        Ok(self.inner.artifacts.put_artifact(bytes)?)
    }

    /// Deploys an app (or some of its services): loads every component, applies each
    /// deployed service's pending migrations, then commits the new revisions and swaps the
    /// routing table. A failed migration stops the deploy before anything is committed; the
    /// migrations before it in the same service, each in its own transaction, stay applied.
    pub fn deploy(
        &self,
        app: &str,
        releases: &[ServiceRelease],
        options: &DeployOptions,
    ) -> Result<DeployOutcome, NodeError> {
        check_name(app, "app")?;
        let mut services = Vec::with_capacity(releases.len());
        for release in releases {
            let mut service = release.service.clone();
            check_name(&service.name, "service")?;
            // The revision records which migrations its deploy ran or found.
            service.config.migrations = release.migrations.iter().map(|m| m.name.clone()).collect();
            services.push(service);
        }
        let services = &services[..];
        for only in &options.only {
            if !services.iter().any(|s| &s.name == only) {
                return Err(NodeError::Invalid(format!(
                    "service `{only}` is not in the deployed manifest"
                )));
            }
        }
        let mut serving = self.lock();
        // Read before preparing: if another node changes the app meanwhile, the commit is
        // refused (`StoreError::Conflict`) instead of overwriting what it did.
        let generation = self.inner.store.app(app)?.map_or(0, |a| a.generation);
        // Load every new component before committing, so a deploy that cannot be served
        // changes nothing; this also leaves its compiled code in the cache, so the
        // revision's first request only maps it.
        for service in services {
            let path = self.inner.artifacts.artifact_path(&service.sha256)?;
            let (loaded, report) = self.inner.runtime.load_service_known(
                runtime_config(&service.name, &service.config, ServiceDataAccess::default()),
                &path,
                &service.sha256,
            )?;
            self.compile_cache(&report);
            if !self.inner.data.sql_available()
                && (loaded.imports_package("tessera:sql") || !service.config.migrations.is_empty())
            {
                return Err(NodeError::Invalid(format!(
                    "service `{}` uses SQL ({}), which this node's data backend does not offer: \
                     in cluster mode each service's SQL database is not replicated yet, so a \
                     service that uses SQL runs on a single node (`tessera serve` without --cluster)",
                    service.name,
                    if service.config.migrations.is_empty() {
                        "it imports tessera:sql"
                    } else {
                        "it declares migrations"
                    }
                )));
            }
        }
        for release in releases {
            let name = &release.service.name;
            let deployed = options.only.is_empty() || options.only.contains(name);
            if !deployed || release.migrations.is_empty() {
                continue;
            }
            let data = self.inner.data.open_service(app, name)?;
            let applied =
                data.sql
                    .migrate(&release.migrations)
                    .map_err(|source| NodeError::Migration {
                        service: name.clone(),
                        source,
                    })?;
            for migration in applied {
                tracing::info!(app, service = %name, migration = %migration, "migration applied");
            }
        }
        let options = DeployOptions {
            if_generation: Some(options.if_generation.unwrap_or(generation)),
            ..options.clone()
        };
        let outcome = self.inner.store.deploy(app, services, &options)?;
        self.catch_up(&mut serving)?;
        Ok(outcome)
    }

    pub fn set_traffic(
        &self,
        app: &str,
        service: &str,
        weights: &[(u32, u8)],
    ) -> Result<ServiceState, NodeError> {
        let mut serving = self.lock();
        let state = self.inner.store.set_traffic(app, service, weights)?;
        self.catch_up(&mut serving)?;
        Ok(state)
    }

    pub fn rollback(
        &self,
        app: &str,
        service: &str,
        to: Option<u32>,
    ) -> Result<ServiceState, NodeError> {
        let mut serving = self.lock();
        let state = self.inner.store.rollback(app, service, to)?;
        self.catch_up(&mut serving)?;
        Ok(state)
    }

    /// Removes an app from serving. Its data (key-value, SQL, secrets) stays unless
    /// `purge` is set, so removing and redeploying an app keeps its data. Returns whether
    /// the app existed.
    pub fn remove_app(&self, app: &str, purge: bool) -> Result<bool, NodeError> {
        check_name(app, "app")?;
        let mut serving = self.lock();
        let existed = self.inner.store.remove_app(app)?;
        self.catch_up(&mut serving)?;
        if purge {
            self.inner.data.purge_app(app)?;
            self.inner.store.purge_secrets(app)?;
            self.catch_up(&mut serving)?;
            tracing::info!(app, "app data purged");
        }
        Ok(existed)
    }

    /// Sets a secret of a service and unloads the service's serving revisions so new
    /// requests see it (they load again, from the compiled cache, on their next request).
    /// The value is never logged or listed.
    pub fn set_secret(
        &self,
        app: &str,
        service: &str,
        name: &str,
        value: &str,
    ) -> Result<(), NodeError> {
        check_name(app, "app")?;
        check_name(service, "service")?;
        tessera_manifest::check_config_key(name)
            .map_err(|m| NodeError::Invalid(format!("secret name: {m}")))?;
        let mut serving = self.lock();
        self.inner.store.set_secret(app, service, name, value)?;
        self.catch_up(&mut serving)
    }

    /// Removes a secret; false if the service had none of that name.
    pub fn delete_secret(&self, app: &str, service: &str, name: &str) -> Result<bool, NodeError> {
        check_name(app, "app")?;
        check_name(service, "service")?;
        let mut serving = self.lock();
        let existed = self.inner.store.delete_secret(app, service, name)?;
        self.catch_up(&mut serving)?;
        Ok(existed)
    }

    /// Sets where async-invocation callbacks may go besides each service's own list: the
    /// node's listeners are always refused, private addresses unless allowed. Guests'
    /// outgoing requests never reach the node's listeners either.
    pub fn set_callback_policy(&self, policy: CallbackPolicy) {
        self.inner.runtime.set_own_listeners(policy.own.clone());
        self.inner.events.callbacks.store(Arc::new(policy));
    }

    /// Starts delivering events and firing schedules, and the task that unloads idle
    /// revisions (inside a tokio runtime; the node's listeners call it).
    pub fn start_events(&self) {
        self.inner.events.start();
        self.start_reaper();
        self.start_watcher();
    }

    /// Rebuilds the routing table whenever the control state changes, through this node or
    /// any other sharing the store, so a deploy made elsewhere is served here without a
    /// restart. Idempotent.
    fn start_watcher(&self) {
        let mut watcher = self.inner.watcher.lock().unwrap_or_else(|e| e.into_inner());
        if watcher.is_some() {
            return;
        }
        let mut changes = self.inner.store.watch();
        let node = Arc::downgrade(&self.inner);
        *watcher = Some(tokio::spawn(async move {
            loop {
                // Marks the current value seen, so a change committed while catching up
                // wakes the next round.
                changes.borrow_and_update();
                let Some(inner) = node.upgrade() else { break };
                let caught_up = tokio::task::spawn_blocking(move || {
                    let node = Node { inner };
                    let mut serving = node.lock();
                    node.catch_up(&mut serving)
                })
                .await;
                match caught_up {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::error!(%error, "cannot catch up on control changes")
                    }
                    Err(error) => tracing::error!(%error, "catching up on control changes failed"),
                }
                if changes.changed().await.is_err() {
                    break;
                }
            }
        }));
    }

    /// Stops delivering events; deliveries in flight finish (bounded).
    pub async fn stop_events(&self) {
        self.inner.events.shutdown().await;
        let reaper = self
            .inner
            .reaper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(reaper) = reaper {
            reaper.abort();
        }
        let watcher = self
            .inner
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(watcher) = watcher {
            watcher.abort();
        }
    }

    /// Looks for idle revisions every second and unloads them. Idempotent.
    fn start_reaper(&self) {
        let mut reaper = self.inner.reaper.lock().unwrap_or_else(|e| e.into_inner());
        if reaper.is_some() {
            return;
        }
        let node = Arc::downgrade(&self.inner);
        *reaper = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(scaling::REAP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(node) = node.upgrade() else { break };
                // Dropping unloaded code unmaps it: keep that off the async workers.
                let reaped = tokio::task::spawn_blocking(move || {
                    let telemetry = node.telemetry.load_full();
                    let cx = scaling::Cx {
                        telemetry: telemetry.as_deref(),
                    };
                    node.residency.reap(&cx);
                })
                .await;
                if let Err(error) = reaped {
                    tracing::error!(%error, "looking for idle revisions failed");
                }
            }
        }));
    }

    /// Publishes a message to a topic of an app; durable when it returns. A message whose
    /// id was already published is not published again (`new` is false).
    pub fn publish(
        &self,
        app: &str,
        topic: &str,
        data: Vec<u8>,
        content_type: Option<String>,
        id: Option<String>,
    ) -> Result<Published, NodeError> {
        tessera_manifest::check_topic(topic).map_err(NodeError::Invalid)?;
        if data.len() > tessera_events::MAX_DATA_BYTES {
            return Err(NodeError::Invalid(format!(
                "a message may be at most {} bytes, not {}",
                tessera_events::MAX_DATA_BYTES,
                data.len()
            )));
        }
        // The serving apps are known from the last rebuild; only an app not among them
        // (for example one whose services all failed to load) costs a store read.
        if !self.inner.events.serves_app(app) && self.inner.store.app(app)?.is_none() {
            return Err(StoreError::NoSuchApp(app.to_string()).into());
        }
        let message = NewMessage::new(
            topic,
            format!("/apps/{app}"),
            tessera_events::MESSAGE_TYPE,
            data,
        )
        .with_id(id)
        .with_content_type(content_type);
        let mut published = self.inner.events.publish(app, vec![message])?;
        published
            .pop()
            .ok_or_else(|| NodeError::Invalid("the journal returned no message id".into()))
    }

    /// Counts per subscription: ready, in flight, retrying, dead-lettered, delivered.
    pub fn event_stats(&self) -> Result<Vec<SubscriptionStats>, NodeError> {
        Ok(self.inner.events.journal.stats()?)
    }

    pub fn dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, NodeError> {
        Ok(self
            .inner
            .events
            .journal
            .dead_letters(subscription, limit)?)
    }

    pub fn dead_letter(
        &self,
        subscription: &str,
        id: &str,
    ) -> Result<Option<DeadLetter>, NodeError> {
        Ok(self.inner.events.journal.dead_letter(subscription, id)?)
    }

    /// Makes dead letters deliverable again (all of the subscription's when `ids` is
    /// None); returns how many.
    pub fn redrive(&self, subscription: &str, ids: Option<&[String]>) -> Result<u64, NodeError> {
        // The journal wakes the subscription's dispatchers.
        Ok(self.inner.events.journal.redrive(subscription, ids)?)
    }

    /// The state of an async invocation of a service.
    pub fn invocation(
        &self,
        app: &str,
        service: &str,
        id: &str,
    ) -> Result<Option<DeliveryStatus>, NodeError> {
        Ok(self
            .inner
            .events
            .journal
            .status(&invocation::subscription(app, service), id)?)
    }

    /// Names of a service's secrets with when each was last set.
    pub fn secret_names(&self, app: &str, service: &str) -> Result<Vec<(String, u64)>, NodeError> {
        Ok(self.inner.store.secret_names(app, service)?)
    }

    pub fn apps(&self) -> Result<Vec<AppState>, NodeError> {
        Ok(self.inner.store.apps()?)
    }

    pub fn app(&self, name: &str) -> Result<Option<AppState>, NodeError> {
        Ok(self.inner.store.app(name)?)
    }

    /// Applies the control changes committed since the last one this node applied (its
    /// own and any other node's): one rebuild, renewing the services whose secrets
    /// changed.
    fn catch_up(&self, serving: &mut Serving) -> Result<(), NodeError> {
        let batch = self.inner.store.changes(serving.seen)?;
        if batch.changes.is_empty() && !batch.gap {
            return Ok(());
        }
        self.rebuild(serving, &Renew::from_changes(&batch))?;
        serving.seen = batch.last;
        Ok(())
    }

    /// Builds the routing table from the control state and swaps it in. Revisions that
    /// kept serving keep their slot (and their loaded code) unless `renew` covers their
    /// service, whose revisions get fresh slots that load again on their next request.
    /// A revision whose component is missing is logged and left unrouted, so one broken
    /// service never keeps the rest of the node from serving.
    fn rebuild(&self, serving: &mut Serving, renew: &Renew) -> Result<(), NodeError> {
        let apps = self.inner.store.apps()?;
        let telemetry = self.inner.telemetry.load_full();
        let mut next = Rebuilt::default();
        for app in &apps {
            for service in &app.services {
                let Some(primary) = service.primary() else {
                    continue;
                };
                let renewed = renew.covers(&app.name, &service.name);
                let backends = self.backends(&app.name, service, renewed, &mut next.slots);
                if backends.is_empty() {
                    continue;
                }
                let name = (app.name.clone(), service.name.clone());
                let target = self.target(serving, &mut next, name, primary, backends, &telemetry);
                for route in &primary.config.routes {
                    next.entries.push((route.clone(), target.clone()));
                }
            }
        }
        serving.limiters = next.limiters;
        serving.quotas = next.quotas;
        self.inner.routes.swap(RouteTable::new(next.entries));
        self.inner.residency.replace(
            next.slots,
            &scaling::Cx {
                telemetry: telemetry.as_deref(),
            },
        );
        if let Err(error) = self.inner.events.update(&apps, next.targets) {
            tracing::error!(%error, "cannot install the event triggers");
        }
        Ok(())
    }

    /// The revisions of a service that take traffic, each in its slot: the slot it had
    /// unless `renewed`, a fresh one otherwise. A revision whose component is missing is
    /// logged and left out.
    fn backends(
        &self,
        app: &str,
        service: &ServiceState,
        renewed: bool,
        slots: &mut HashMap<RevisionKey, Arc<scaling::Slot>>,
    ) -> Vec<Backend> {
        let residency = &self.inner.residency;
        let mut backends = Vec::new();
        for (id, weight) in &service.traffic {
            let Some(revision) = service.revision(*id) else {
                continue;
            };
            let key = (app.to_string(), service.name.clone(), *id);
            let slot = match residency.existing(&key).filter(|_| !renewed) {
                Some(slot) => slot,
                None => {
                    if let Err(e) = self.inner.artifacts.artifact_path(&revision.sha256) {
                        tracing::error!(app, service = %service.name, revision = id, error = %e, "cannot serve revision; it takes no traffic");
                        continue;
                    }
                    Arc::new(scaling::Slot::new(
                        key.clone(),
                        revision.clone(),
                        Arc::downgrade(&self.inner),
                        residency,
                    ))
                }
            };
            slots.insert(key, slot.clone());
            backends.push(Backend {
                revision: Some(*id),
                weight: u32::from(*weight),
                labels: slot.labels().clone(),
                service: Arc::new(scaling::SlotRef(slot)),
            });
        }
        backends
    }

    /// A service's target: its backends behind the admission limiter and async quotas
    /// its primary revision declares (kept from the last table while those settings stay,
    /// so requests in flight keep counting), and its async queue.
    fn target(
        &self,
        serving: &Serving,
        next: &mut Rebuilt,
        name: (String, String),
        primary: &tessera_store::Revision,
        backends: Vec<Backend>,
        telemetry: &Option<Arc<Telemetry>>,
    ) -> Arc<Target> {
        let scaling = &primary.config.scaling;
        let admission = Admission {
            concurrency: scaling.concurrency,
            queue: scaling.queue,
            queue_timeout: scaling.queue_timeout,
        };
        let limiter = match serving.limiters.get(&name) {
            Some(limiter) if limiter.config() == admission => limiter.clone(),
            _ => Arc::new(Limiter::new(admission)),
        };
        next.limiters.insert(name.clone(), limiter.clone());
        let quota_settings = quota::QuotaSettings {
            rate: scaling.async_rate,
            stored: scaling.async_stored,
        };
        let quota = match serving.quotas.get(&name) {
            Some(quota) if quota.settings() == quota_settings => quota.clone(),
            _ => Arc::new(quota::AsyncQuota::new(quota_settings)),
        };
        next.quotas.insert(name.clone(), quota.clone());
        let sink = Arc::new(AsyncQueue {
            events: self.inner.events.clone(),
            app: name.0.clone(),
            service: name.1.clone(),
            callbacks: primary.config.callbacks.clone(),
            quota,
        });
        let target = Arc::new(
            Target::weighted(name.1.clone(), backends)
                .with_async(sink)
                .with_limiter(limiter)
                .with_telemetry(telemetry.as_deref().cloned()),
        );
        next.targets.insert(name, target.clone());
        target
    }
}

/// What a rebuild gathers before it swaps anything in.
#[derive(Default)]
struct Rebuilt {
    slots: HashMap<RevisionKey, Arc<scaling::Slot>>,
    limiters: HashMap<(String, String), Arc<Limiter>>,
    quotas: HashMap<(String, String), Arc<quota::AsyncQuota>>,
    entries: Vec<(RoutePrefix, Arc<Target>)>,
    targets: events::TargetMap,
}

impl NodeInner {
    /// Loads a slot's revision bound to its service's data, configuration and secrets
    /// (read once per slot). Blocking: maps (or compiles) its code, opens its data.
    fn load_revision(
        &self,
        app: &str,
        service: &str,
        slot: &scaling::Slot,
        observer: tessera_runtime::Observer,
    ) -> Result<(Service, LoadReport), NodeError> {
        let revision = slot.revision();
        let path = self.artifacts.artifact_path(&revision.sha256)?;
        let stores = self.data.open_service(app, service)?;
        let secrets = match slot.secrets.get() {
            Some(secrets) => secrets,
            None => {
                let read = self.store.secrets(app, service)?;
                slot.secrets.get_or_init(|| read)
            }
        };
        // Secrets win over configuration of the same name.
        let mut config: std::collections::BTreeMap<String, String> =
            revision.config.config.iter().cloned().collect();
        config.extend(secrets.iter().cloned());
        let access = ServiceDataAccess {
            stores: Some(stores),
            buckets: revision.config.buckets.clone().into(),
            config: config.into_iter().collect::<Vec<_>>().into(),
            publisher: Some(self.events.publisher(app)),
        };
        let mut config = runtime_config(service, &revision.config, access);
        config.app = app.to_string();
        config.observer = observer;
        // The revision records its component's digest: a cached load maps the compiled
        // code without reading and hashing the component again.
        Ok(self
            .runtime
            .load_service_known(config, &path, &revision.sha256)?)
    }
}

fn check_name(name: &str, what: &str) -> Result<(), NodeError> {
    tessera_manifest::check_name(name).map_err(|m| NodeError::Invalid(format!("{what} {m}")))
}

/// The runtime's view of a revision's configuration.
fn runtime_config(
    service: &str,
    config: &RevisionConfig,
    data: ServiceDataAccess,
) -> ServiceConfig {
    ServiceConfig {
        app: String::new(),
        name: service.to_string(),
        limits: config.limits,
        outbound: config.outbound.clone(),
        env: config.env.clone(),
        data,
        reuse: config.reuse,
        observer: Default::default(),
    }
}

/// The configuration an upload is checked with: a component alone, granted nothing.
fn probe_config(name: &str) -> ServiceConfig {
    ServiceConfig {
        app: String::new(),
        name: name.into(),
        limits: Limits::default(),
        outbound: Vec::new(),
        env: Vec::new(),
        data: ServiceDataAccess::default(),
        reuse: Default::default(),
        observer: Default::default(),
    }
}

/// Queues a service's async invocations in the event journal.
struct AsyncQueue {
    events: Arc<events::Events>,
    app: String,
    service: String,
    /// Origins its callbacks may go to, as the primary revision lists them.
    callbacks: Vec<Origin>,
    /// Its rate and storage quotas, kept across rebuilds while the settings stay.
    quota: Arc<quota::AsyncQuota>,
}

impl tessera_gateway::AsyncSink for AsyncQueue {
    fn check(&self, callback: Option<&str>) -> Result<(), AsyncRefusal> {
        match callback {
            Some(url) => {
                callback::check_allowed(url, &self.service, &self.callbacks).map_err(|refused| {
                    AsyncRefusal::new(
                        http::StatusCode::FORBIDDEN,
                        "callback_not_allowed",
                        refused.to_string(),
                    )
                })
            }
            None => Ok(()),
        }
    }

    fn enqueue(
        &self,
        request: invocation::Request,
    ) -> Result<tessera_gateway::AsyncAccepted, AsyncRefusal> {
        let subscription = invocation::subscription(&self.app, &self.service);
        let journal = &self.events.journal;
        let reservation = self
            .quota
            .admit(request.stored_size() as u64, || {
                journal.stored_bytes(&subscription)
            })
            .map_err(|refusal| refusal.into_async_refusal(&self.service))?;
        let message = request.into_message(&self.app, &self.service);
        let unavailable = |message: String| {
            AsyncRefusal::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "async_unavailable",
                message,
            )
        };
        let published = self.events.publish(&self.app, vec![message]).map_err(|e| {
            if e.is_disk_full() {
                AsyncRefusal::new(
                    http::StatusCode::INSUFFICIENT_STORAGE,
                    "disk_full",
                    format!("the node's event journal is out of disk space: {e}"),
                )
            } else {
                unavailable(e.to_string())
            }
        })?;
        reservation.commit();
        let id = published
            .into_iter()
            .next()
            .map(|p| p.id)
            .ok_or_else(|| unavailable("the journal returned no id".into()))?;
        Ok(tessera_gateway::AsyncAccepted {
            status_path: invocation::status_path(&self.app, &self.service, &id),
            id,
        })
    }
}
