//! The per-request store state: each capability's context plus the resource table, and
//! the linker that exposes them to guests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::RuntimeError;
use crate::data::DataState;
use crate::messaging::MessagingState;
use crate::outbound::OutboundPolicy;

/// Everything one instance can reach. Built with the instance and dropped with it; what
/// belongs to one request (its id, deadline, call depth) is set anew for each.
pub(crate) struct InstanceState {
    pub(crate) table: ResourceTable,
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) outbound: OutboundPolicy,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) data: DataState,
    pub(crate) messaging: MessagingState,
    /// The guest's stdout and stderr, which carry the current request's id.
    pub(crate) outputs: [crate::output::GuestOutput; 2],
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// The linker for every service: all of WASI 0.2 (guests built the default way by Rust,
/// componentize-py and jco import the CLI, filesystem and socket interfaces even when
/// they only serve HTTP), `wasi:http`, and the data interfaces (`wasi:keyvalue`,
/// `wasi:config`, `tessera:sql`). What a guest may actually do is decided per
/// request by the contexts, which deny everything not granted.
pub(crate) fn linker(engine: &Engine) -> Result<Linker<InstanceState>, RuntimeError> {
    let mut linker: Linker<InstanceState> = Linker::new(engine);
    let engine_error = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_error)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_error)?;
    // WASI 0.3 beside 0.2: the interfaces differ by version, so a component may use both
    // (a Rust 0.3 guest's standard library still imports the 0.2 CLI interfaces).
    wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(engine_error)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(engine_error)?;
    crate::data::add_to_linker(&mut linker, |s| &mut s.data).map_err(engine_error)?;
    crate::messaging::add_to_linker(&mut linker, |s| &mut s.messaging).map_err(engine_error)?;
    Ok(linker)
}

/// The node-wide budget for the linear memory of every running instance: each instance
/// takes what its memories grow to and gives it back when its store is dropped, so the
/// instances together never hold more than the budget, whatever each service's own limit.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        MemoryBudget {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes the running instances hold now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Caps each linear memory of an instance and remembers whether a guest hit the cap, so
/// the resulting trap can be reported as what it is; takes the memory from the node's
/// budget as it grows, and gives it back when the instance's store is dropped.
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub(crate) hit: bool,
    /// Set when growing would have passed the node's budget (the instance could not get
    /// memory the node does not have: a capacity refusal, not the guest's fault).
    pub(crate) budget_hit: bool,
    /// The largest linear memory the instance grew to, in bytes.
    pub(crate) peak: usize,
    budget: Arc<MemoryBudget>,
    taken: u64,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64, budget: Arc<MemoryBudget>) -> Self {
        MemoryLimiter {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            hit: false,
            budget_hit: false,
            peak: 0,
            budget,
            taken: 0,
        }
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.budget.give_back(self.taken);
    }
}

/// Tables hold function references; a million entries is far beyond any real guest and
/// keeps a table bomb from eating host memory.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        let more = desired.saturating_sub(current) as u64;
        if !self.budget.take(more) {
            self.budget_hit = true;
            return Ok(false);
        }
        self.taken += more;
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
