//! The Wasmtime engine configuration shared by all services, and the epoch ticker that
//! drives request deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::{RuntimeConfig, RuntimeError};

/// How often the engine's epoch advances. Guests that run without yielding are
/// interrupted at the next tick to let other requests run, and stopped at the first tick
/// past their deadline, so this bounds both unfairness and deadline overshoot.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Linear memory that stays mapped between instances in a pool slot. Resetting it is a
/// `memset` instead of an `madvise` plus page faults on the next request, which is what
/// makes small guests cheap to instantiate again and again.
const MEMORY_KEEP_RESIDENT: usize = 2 * 1024 * 1024;
const TABLE_KEEP_RESIDENT: usize = 64 * 1024;
/// Guest code may nest deeply (interpreters); the async fiber stack must hold the wasm
/// stack plus host frames.
const MAX_WASM_STACK: usize = 1024 * 1024;
const ASYNC_STACK: usize = 2 * 1024 * 1024;

pub(crate) fn build(config: &RuntimeConfig) -> Result<Engine, RuntimeError> {
    let mut pool = PoolingAllocationConfig::new();
    let instances = config.max_instances.max(1);
    pool.total_component_instances(instances)
        // Interpreted guests (Python, JavaScript) are made of several core modules, each
        // with its own memory and tables.
        .max_core_instances_per_component(64)
        .max_memories_per_component(16)
        .max_tables_per_component(32)
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(8))
        .total_stacks(instances)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .max_memory_size(usize::try_from(config.max_memory).unwrap_or(usize::MAX))
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        // Without PAGEMAP_SCAN (Linux 6.7+) "keep resident" means memsetting the whole
        // kept region on every reuse; with it only the pages the guest dirtied are reset.
        .pagemap_scan(Enabled::Auto);

    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        // WASI 0.3 components: async exports and imports, streams and futures.
        .wasm_component_model_async(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&wasm).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
