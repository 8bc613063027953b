//! Which revisions have their code loaded. A serving revision's code is loaded on its
//! first request (mapped from the compiled-code cache, off the async workers), unloaded
//! after its `idle` time without requests, and unloaded least recently used first when the
//! node's budget for loaded code would be exceeded. A loaded service is a cache; the
//! control store is the truth, so unloading never changes what the node serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tessera_gateway::{Lease, LoadError, ServiceSlot};
use tessera_runtime::{CodeSource, LoadReport, Service};
use tessera_store::Revision;
use tessera_telemetry::{LogStream, ServiceLabels, Telemetry};

use crate::{NodeInner, RevisionKey};

/// Default budget for the compiled code of loaded revisions, node-wide.
pub const DEFAULT_MEMORY_BUDGET: u64 = 2 << 30;
/// Environment variable that sets the budget when the node is opened (`512MiB`, bytes).
pub const MEMORY_BUDGET_ENV: &str = "TESSERA_MEMORY_BUDGET";
/// How often the node looks for idle revisions.
pub(crate) const REAP_EVERY: Duration = Duration::from_secs(1);

/// Why a revision's code was unloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unload {
    /// No request for its `idle` time.
    Idle,
    /// The budget needed room and it was the least recently used.
    Lru,
    /// It no longer serves (redeployed, rolled back, removed, or its secrets changed).
    Retired,
}

impl Unload {
    fn as_str(self) -> &'static str {
        match self {
            Unload::Idle => "idle",
            Unload::Lru => "lru",
            Unload::Retired => "retired",
        }
    }
}

/// Every serving revision's slot and the budget their loaded code must fit in.
pub(crate) struct Residency {
    epoch: Instant,
    budget: AtomicU64,
    /// The slots of the current routing table. Lock order: this, then a slot's `current`.
    slots: Mutex<HashMap<RevisionKey, Arc<Slot>>>,
}

impl Residency {
    pub(crate) fn new(budget: u64) -> Residency {
        Residency {
            epoch: Instant::now(),
            budget: AtomicU64::new(budget),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RevisionKey, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Milliseconds since the node started, the clock of `last_used`.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    pub(crate) fn set_budget(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::Relaxed);
    }

    /// The slot a serving revision had in the previous table, to keep its loaded code.
    pub(crate) fn existing(&self, key: &RevisionKey) -> Option<Arc<Slot>> {
        self.lock().get(key).cloned()
    }

    /// Installs the slots of a new routing table; the slots left out are retired (their
    /// code unloaded, and never kept again if a request of an older table loads them).
    pub(crate) fn replace(&self, slots: HashMap<RevisionKey, Arc<Slot>>, cx: &Cx<'_>) {
        let old = std::mem::replace(&mut *self.lock(), slots);
        let current = self.lock().clone();
        for (key, slot) in old {
            if current.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                continue;
            }
            let unloaded = slot.retire(self, cx);
            if let Some(node) = slot.node.upgrade() {
                node.runtime.forget_code(&slot.revision.sha256);
            }
            if let Some(telemetry) = cx.telemetry {
                telemetry.forget(&slot.labels);
            }
            drop(unloaded);
        }
        self.report(cx);
    }

    /// Bytes of code loaded now.
    pub(crate) fn used(&self) -> u64 {
        self.lock()
            .values()
            .map(|s| s.code_size.load(Ordering::Relaxed))
            .sum()
    }

    /// How many revisions have code loaded now.
    pub(crate) fn loaded(&self) -> u64 {
        self.lock()
            .values()
            .filter(|s| s.code_size.load(Ordering::Relaxed) > 0)
            .count() as u64
    }

    fn report(&self, cx: &Cx<'_>) {
        if let Some(telemetry) = cx.telemetry {
            telemetry.set_code_memory(self.used(), self.budget());
        }
    }

    /// Unloads the least recently used idle revisions (never `keep`, never one serving a
    /// request) until the loaded code fits the budget. A budget smaller than what busy
    /// revisions need is exceeded rather than failing requests.
    pub(crate) fn fit_budget(&self, keep: Option<&RevisionKey>, cx: &Cx<'_>) {
        let budget = self.budget();
        let mut unloaded = Vec::new();
        {
            let slots = self.lock();
            let mut used: u64 = slots
                .values()
                .map(|s| s.code_size.load(Ordering::Relaxed))
                .sum();
            if used > budget {
                let mut candidates: Vec<&Arc<Slot>> = slots
                    .values()
                    .filter(|s| Some(&s.key) != keep && s.code_size.load(Ordering::Relaxed) > 0)
                    .filter(|s| s.busy.load(Ordering::Acquire) == 0)
                    .collect();
                candidates.sort_by_key(|s| s.last_used.load(Ordering::Relaxed));
                for slot in candidates {
                    if used <= budget {
                        break;
                    }
                    if let Some((service, size)) = slot.unload(Unload::Lru, self, cx) {
                        used = used.saturating_sub(size);
                        unloaded.push(service);
                    }
                }
                if used > budget {
                    tracing::warn!(
                        used,
                        budget,
                        "the code of revisions serving requests exceeds the memory budget"
                    );
                }
            }
        }
        // Unmapping code happens outside the lock.
        drop(unloaded);
        self.report(cx);
    }

    /// Unloads every revision idle for longer than its `idle` setting.
    pub(crate) fn reap(&self, cx: &Cx<'_>) {
        let now = self.now();
        let slots: Vec<Arc<Slot>> = self.lock().values().cloned().collect();
        let mut unloaded = Vec::new();
        for slot in slots {
            let Some(idle) = slot.idle else { continue };
            let quiet = now.saturating_sub(slot.last_used.load(Ordering::Relaxed));
            if slot.busy.load(Ordering::Acquire) == 0
                && Duration::from_millis(quiet) >= idle
                && let Some((service, _)) = slot.unload(Unload::Idle, self, cx)
            {
                // Its code stays mapped and linked (bounded), so waking it costs only its
                // first instance.
                if let Some(node) = slot.node.upgrade() {
                    node.runtime.retain_code(&service);
                }
                unloaded.push(service);
            }
        }
        if !unloaded.is_empty() {
            drop(unloaded);
            self.report(cx);
        }
    }
}

/// What loading and unloading report to.
pub(crate) struct Cx<'a> {
    pub(crate) telemetry: Option<&'a Telemetry>,
}

/// One serving revision's code: loaded on demand, shared by every request to it.
pub(crate) struct Slot {
    key: RevisionKey,
    labels: ServiceLabels,
    revision: Revision,
    idle: Option<Duration>,
    node: Weak<NodeInner>,
    /// The loaded service. Lock order: after the residency's map.
    current: Mutex<Option<Service>>,
    /// Bytes of code loaded, 0 while unloaded (kept apart from `current` so the budget can
    /// be summed without locking every slot).
    code_size: AtomicU64,
    /// Held while loading, so concurrent first requests load once.
    loading: Arc<tokio::sync::Mutex<()>>,
    /// When a request last started or finished (ms on the residency's clock).
    last_used: AtomicU64,
    /// Requests holding a lease.
    busy: AtomicU32,
    /// No longer in the routing table: loads serve only the request that made them.
    retired: AtomicBool,
    /// The service's secrets as its first load read them. A change to them gives the
    /// service fresh slots (`Renew`), so a slot's own copy is never stale; later loads
    /// (after an idle unload) skip reading the control store.
    pub(crate) secrets: std::sync::OnceLock<Vec<(String, String)>>,
}

impl Slot {
    pub(crate) fn new(
        key: RevisionKey,
        revision: Revision,
        node: Weak<NodeInner>,
        residency: &Residency,
    ) -> Slot {
        let labels = ServiceLabels::new(&key.0, &key.1, Some(key.2));
        Slot {
            idle: revision.config.scaling.idle,
            labels,
            key,
            revision,
            node,
            current: Mutex::new(None),
            code_size: AtomicU64::new(0),
            loading: Arc::new(tokio::sync::Mutex::new(())),
            last_used: AtomicU64::new(residency.now()),
            busy: AtomicU32::new(0),
            retired: AtomicBool::new(false),
            secrets: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn labels(&self) -> &ServiceLabels {
        &self.labels
    }

    pub(crate) fn revision(&self) -> &Revision {
        &self.revision
    }

    fn current(&self) -> MutexGuard<'_, Option<Service>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a freshly loaded service, unless the slot was retired meanwhile.
    fn install(&self, service: &Service) -> bool {
        let mut current = self.current();
        if self.retired.load(Ordering::Acquire) {
            return false;
        }
        *current = Some(service.clone());
        self.code_size
            .store(service.code_size() as u64, Ordering::Relaxed);
        true
    }

    /// Drops the loaded service (requests in flight keep their own reference); returns it
    /// with its size, for the caller to drop outside any lock.
    fn unload(&self, why: Unload, residency: &Residency, cx: &Cx<'_>) -> Option<(Service, u64)> {
        let (service, size) = {
            let mut current = self.current();
            let service = current.take()?;
            (service, self.code_size.swap(0, Ordering::Relaxed))
        };
        let (app, name, id) = &self.key;
        let quiet = Duration::from_millis(
            residency
                .now()
                .saturating_sub(self.last_used.load(Ordering::Relaxed)),
        );
        tracing::info!(app = %app, service = %name, revision = id, reason = %why.as_str(), code_bytes = size, idle = ?quiet, "service unloaded");
        if let Some(telemetry) = cx.telemetry {
            telemetry.set_loaded(&self.labels, false);
            let line = match why {
                Unload::Idle => format!("unloaded r{id}: no request for {quiet:?}"),
                Unload::Lru => format!(
                    "unloaded r{id}: least recently used, to keep loaded code within the memory budget"
                ),
                Unload::Retired => format!("unloaded r{id}: it no longer serves"),
            };
            telemetry.log(app, name, LogStream::Platform, None, &line);
        }
        Some((service, size))
    }

    fn retire(&self, residency: &Residency, cx: &Cx<'_>) -> Option<Service> {
        {
            let _current = self.current();
            self.retired.store(true, Ordering::Release);
        }
        self.unload(Unload::Retired, residency, cx)
            .map(|(service, _)| service)
    }
}

/// The gateway's handle on a slot.
pub(crate) struct SlotRef(pub(crate) Arc<Slot>);

/// Marks a slot busy for as long as a lease lives.
struct Busy {
    slot: Arc<Slot>,
}

impl Busy {
    fn new(slot: &Arc<Slot>) -> Busy {
        slot.busy.fetch_add(1, Ordering::AcqRel);
        Busy { slot: slot.clone() }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(node) = self.slot.node.upgrade() {
            self.slot
                .last_used
                .store(node.residency.now(), Ordering::Relaxed);
        }
        self.slot.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ServiceSlot for SlotRef {
    fn get(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<Lease, LoadError>> + Send + '_>> {
        Box::pin(async move {
            let slot = &self.0;
            let busy = Busy::new(slot);
            let unavailable = |message: String| LoadError {
                service: slot.key.1.clone(),
                message,
            };
            let node = slot
                .node
                .upgrade()
                .ok_or_else(|| unavailable("the node is shutting down".into()))?;
            slot.last_used
                .store(node.residency.now(), Ordering::Relaxed);
            if let Some(service) = slot.current().clone() {
                return Ok(Lease::new(service, busy));
            }
            let loading = slot.loading.clone().lock_owned().await;
            if let Some(service) = slot.current().clone() {
                return Ok(Lease::new(service, busy));
            }
            // The load finishes and is kept even if this request goes away meanwhile; the
            // lock travels with it, so nobody starts a second one.
            let load_slot = slot.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                let _loading = loading;
                load(&node, &load_slot)
            })
            .await
            .map_err(|e| unavailable(format!("loading stopped: {e}")))?
            .map_err(|e| unavailable(e.to_string()))?;
            Ok(Lease::new(loaded, busy))
        })
    }
}

/// Loads a slot's revision, keeps it, and makes room in the budget.
fn load(node: &Arc<NodeInner>, slot: &Arc<Slot>) -> Result<Service, crate::NodeError> {
    let (app, name, id) = &slot.key;
    let telemetry = node.telemetry.load_full();
    let cx = Cx {
        telemetry: telemetry.as_deref(),
    };
    let observer = cx
        .telemetry
        .map(|t| t.instance_observer(&slot.labels))
        .unwrap_or_default();
    let (service, report) = match node.load_revision(app, name, slot, observer) {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::error!(app = %app, service = %name, revision = id, %error, "cannot load revision");
            if let Some(telemetry) = cx.telemetry {
                let line = format!("cannot load r{id}: {error}");
                telemetry.log(app, name, LogStream::Platform, None, &line);
            }
            return Err(error);
        }
    };
    let LoadReport { source, elapsed } = report;
    let source = match source {
        CodeSource::Cache => "cache",
        CodeSource::Compiled => "compiled",
        CodeSource::Retained => "retained",
    };
    let kept = slot.install(&service);
    tracing::info!(app = %app, service = %name, revision = id, source = %source, elapsed = ?elapsed, code_bytes = service.code_size(), "service loaded");
    if let Some(telemetry) = cx.telemetry {
        telemetry.compile_cache(source != "compiled");
        telemetry.cold_start(&slot.labels, elapsed, source);
        telemetry.set_loaded(&slot.labels, kept);
        let line = format!(
            "loaded r{id} from {source} in {elapsed:?} ({} KiB of code)",
            service.code_size() / 1024
        );
        telemetry.log(app, name, LogStream::Platform, None, &line);
    }
    if kept {
        node.residency.fit_budget(Some(&slot.key), &cx);
    }
    Ok(service)
}
