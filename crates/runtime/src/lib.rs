//! Runs WebAssembly HTTP components: one shared engine, compiled code cached on disk,
//! a pre-instantiated component per service, and a fresh, limited instance per request
//! (or, for a service that opts in with `reuse`, an instance kept for several).
//!
//! The runtime knows nothing about routing, listeners or manifests on disk: it is handed
//! a component and a [`ServiceConfig`], and turns an HTTP request into an HTTP response
//! or an [`InvokeError`] that says what went wrong.

mod bindings;
mod cache;
mod data;
mod engine;
pub mod headers;
mod internal;
mod invoke;
mod messaging;
pub mod net;
mod outbound;
mod output;
mod p3;
mod reuse;
mod state;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use cache::content_hash;
pub use data::ServiceDataAccess;
pub use internal::{
    CallFuture, Caller, INTERNAL_SUFFIX, InternalRouter, MAX_CALL_DEPTH, platform_response,
};
pub use invoke::{Completed, InvokeError};
pub use messaging::{OutgoingMessage, Publisher};
pub use output::{GuestLogSink, OutputStream as GuestStream, TerminalLog};
pub use reuse::{DropReason, InstanceObserver, Observer};
pub use tessera_model::{Limits, Origin, Reuse};
/// The body of an internal call's response.
pub use wasmtime_wasi_http::WasiBody as CallBody;
pub use wasmtime_wasi_http::p2::body::HyperOutgoingBody as ResponseBody;

use cache::CompileCache;
use engine::EpochTicker;
use state::InstanceState;
pub use state::MemoryBudget;

/// Node-wide runtime settings.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Where compiled code is cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// How many instances may exist at once across all services (the pool size).
    pub max_instances: u32,
    /// Largest memory limit any service may ask for; sizes the pool's memory slots.
    pub max_memory: u64,
    /// Most linear memory all running instances may hold together, in bytes; an instance
    /// that would need more is refused with [`InvokeError::Capacity`].
    pub instance_memory: u64,
    /// Where guest stdout and stderr lines go.
    pub log_sink: Arc<dyn GuestLogSink>,
    /// Serves calls to `http://<service>.internal`; without one they are denied.
    pub internal: Option<Arc<dyn InternalRouter>>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_instances: 1000,
            max_memory: tessera_model::MAX_MEMORY,
            instance_memory: default_instance_memory(),
            log_sink: Arc::new(TerminalLog),
            internal: None,
        }
    }
}

/// The default budget for running instances' memory: half of the memory the process may
/// use (the machine's, or its cgroup's limit when lower; 4 GiB where neither can be read).
pub fn default_instance_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    // cgroup v2, then v1; "max" (no limit) does not parse.
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    });
    let limit = match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    };
    limit.map_or(4 << 30, |bytes| bytes / 2)
}

/// What the runtime needs to know about one service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The app the service belongs to (for logs).
    pub app: String,
    pub name: String,
    pub limits: Limits,
    /// Origins the guest may call; everything else is denied.
    pub outbound: Vec<Origin>,
    /// Environment variables the guest sees; it sees none unless granted.
    pub env: Vec<(String, String)>,
    /// The service's own stores and configuration.
    pub data: ServiceDataAccess,
    /// Whether an instance serves more than one request.
    pub reuse: Reuse,
    /// Told about every instance's life.
    pub observer: Observer,
}

/// Errors from setting up the runtime or loading a service.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    #[error("service `{service}`: cannot read component {}: {source}", path.display())]
    ReadComponent {
        service: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("service `{service}`: {} is not a WebAssembly component: {reason}", path.display())]
    InvalidComponent {
        service: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "service `{service}`: component {} cannot run as an HTTP service: {reason}",
        path.display()
    )]
    NotAnHttpComponent {
        service: String,
        path: PathBuf,
        reason: String,
    },
    /// A stored component's bytes no longer hash to the digest it was stored under: it
    /// was altered or damaged on disk, so it is never compiled or served.
    #[error(
        "service `{service}`: component {} is damaged: its sha256 is {actual}, not {expected}",
        path.display()
    )]
    ArtifactMismatch {
        service: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// `reuse_concurrency` above 1 for a component that cannot serve several requests at
    /// once on one instance: a WASI 0.2 one, or one that publishes messages (which are
    /// committed per request, and an instance serving several cannot tell whose they
    /// are).
    #[error(
        "service `{service}`: reuse_concurrency = {concurrency} is not served: {}",
        if *wasi == "0.2" {
            "it needs a WASI 0.3 component; this one is WASI 0.2 \
             (`wasi:http/incoming-handler@0.2.x`), whose instances serve one request at a \
             time: remove the key or set it to 1"
        } else {
            "the component imports `tessera:messaging`, whose messages are committed per \
             request, and an instance serving several requests at once cannot tell whose a \
             message is: remove the key or set it to 1"
        }
    )]
    ReuseConcurrency {
        service: String,
        concurrency: u32,
        /// `0.2` or `0.3`.
        wasi: &'static str,
    },
    #[error("service `{service}`: memory limit {limit} bytes exceeds the node's maximum {max}")]
    MemoryLimitTooLarge {
        service: String,
        limit: u64,
        max: u64,
    },
}

/// The shared engine, linker and compile cache. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    budget: Arc<MemoryBudget>,
    /// The node's listeners, set once they are bound: guests' requests never reach them.
    own: Arc<std::sync::OnceLock<Vec<std::net::SocketAddr>>>,
    linker: Linker<InstanceState>,
    cache: Option<CompileCache>,
    /// Code kept mapped after its service was unloaded for being idle.
    retained: Mutex<Retained>,
    config: RuntimeConfig,
    _ticker: EpochTicker,
}

/// Most compiled code kept mapped for services unloaded for being idle, in bytes.
pub const RETAINED_CODE_BYTES: usize = 256 << 20;

/// Compiled and linked code of services that were unloaded for being idle, oldest first,
/// at most [`RETAINED_CODE_BYTES`] of it: waking such a service skips mapping and linking
/// its code again, so it pays only for its first instance.
#[derive(Default)]
struct Retained {
    entries: std::collections::VecDeque<Linked>,
    bytes: usize,
}

/// A component's code, mapped and linked: what a service is made of besides its config.
struct Linked {
    hash: String,
    pre: invoke::GuestPre,
    imports: Arc<[String]>,
    code_size: usize,
}

/// How a component was obtained when a service was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSource {
    /// Compiled now (and written to the cache if there is one).
    Compiled,
    /// Mapped from the on-disk cache.
    Cache,
    /// Still mapped and linked, kept since the service was unloaded for being idle.
    Retained,
}

/// Timing of a service load, reported in the log.
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    pub source: CodeSource,
    pub elapsed: Duration,
}

impl Runtime {
    /// The node-wide budget for running instances' memory.
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.inner.budget
    }

    /// Tells the runtime the node's listener addresses, which guests' outgoing requests
    /// may never reach whatever their grants say. Only the first call counts.
    pub fn set_own_listeners(&self, listeners: Vec<std::net::SocketAddr>) {
        let _ = self.inner.own.set(listeners);
    }

    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = engine::build(&config)?;
        let linker = state::linker(&engine)?;
        let cache = config
            .cache_dir
            .as_deref()
            .map(|dir| CompileCache::new(dir, &engine));
        let ticker = EpochTicker::start(engine.clone());
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                budget: Arc::new(MemoryBudget::new(config.instance_memory)),
                own: Arc::default(),
                engine,
                linker,
                cache,
                retained: Mutex::default(),
                config,
                _ticker: ticker,
            }),
        })
    }

    /// Loads a service from a component file: validates it, compiles it or maps it from
    /// the cache, and pre-instantiates it. Nothing is instantiated until a request comes.
    pub fn load_service_file(
        &self,
        config: ServiceConfig,
        path: &Path,
    ) -> Result<(Service, LoadReport), RuntimeError> {
        let bytes = read_component(&config, path)?;
        self.load_service(config, path, &bytes)
    }

    /// Loads a service from component bytes; `origin` names them in errors.
    pub fn load_service(
        &self,
        config: ServiceConfig,
        origin: &Path,
        bytes: &[u8],
    ) -> Result<(Service, LoadReport), RuntimeError> {
        self.load_bytes(config, origin, bytes, None)
    }

    /// Loads component bytes; when `expected` is given, they must hash to it.
    fn load_bytes(
        &self,
        config: ServiceConfig,
        origin: &Path,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<(Service, LoadReport), RuntimeError> {
        let start = Instant::now();
        let inner = &self.inner;
        if config.limits.memory > inner.config.max_memory {
            return Err(RuntimeError::MemoryLimitTooLarge {
                service: config.name.clone(),
                limit: config.limits.memory,
                max: inner.config.max_memory,
            });
        }
        let invalid = |reason: String| RuntimeError::InvalidComponent {
            service: config.name.clone(),
            path: origin.to_path_buf(),
            reason,
        };
        if !is_component(bytes) {
            return Err(invalid(NOT_A_COMPONENT.to_string()));
        }
        let hash = cache::content_hash(bytes);
        if let Some(expected) = expected
            && expected != hash
        {
            return Err(RuntimeError::ArtifactMismatch {
                service: config.name.clone(),
                path: origin.to_path_buf(),
                expected: expected.to_string(),
                actual: hash,
            });
        }
        let (component, source) = match inner.cache.as_ref().and_then(|c| c.load(&hash)) {
            Some(component) => (component, CodeSource::Cache),
            None => {
                let compiled = inner
                    .engine
                    .precompile_component(bytes)
                    .map_err(|e| invalid(format!("{e:#}")))?;
                if let Some(cache) = &inner.cache {
                    cache.store(&hash, &compiled);
                }
                // SAFETY: the bytes were produced by this engine just above.
                let component = unsafe { Component::deserialize(&inner.engine, &compiled) }
                    .map_err(|e| invalid(format!("{e:#}")))?;
                (component, CodeSource::Compiled)
            }
        };
        self.finish(config, origin, hash, component, source, start)
    }

    /// Loads a service whose component's sha256 is already known (a stored revision):
    /// when the compile cache has it, the code is mapped straight away, without reading
    /// or hashing the component; otherwise the file is read and must still hash to
    /// `sha256` before it is compiled ([`RuntimeError::ArtifactMismatch`]).
    pub fn load_service_known(
        &self,
        config: ServiceConfig,
        path: &Path,
        sha256: &str,
    ) -> Result<(Service, LoadReport), RuntimeError> {
        let start = Instant::now();
        if config.limits.memory <= self.inner.config.max_memory
            && let Some(code) = self.take_retained(sha256)
        {
            return self.assemble(config, code, CodeSource::Retained, start);
        }
        if config.limits.memory <= self.inner.config.max_memory
            && let Some(component) = self.inner.cache.as_ref().and_then(|c| c.load(sha256))
        {
            return self.finish(
                config,
                path,
                sha256.to_string(),
                component,
                CodeSource::Cache,
                start,
            );
        }
        self.load_service_checked(config, path, sha256)
    }

    /// Loads a component file that must hash to `sha256` (an upload, a stored artifact
    /// without cached code): read, hashed and compared before anything is compiled.
    pub fn load_service_checked(
        &self,
        config: ServiceConfig,
        path: &Path,
        sha256: &str,
    ) -> Result<(Service, LoadReport), RuntimeError> {
        let bytes = read_component(&config, path)?;
        self.load_bytes(config, path, &bytes, Some(sha256))
    }

    /// Pre-instantiates a compiled component as an HTTP service.
    fn finish(
        &self,
        config: ServiceConfig,
        origin: &Path,
        hash: String,
        component: Component,
        source: CodeSource,
        start: Instant,
    ) -> Result<(Service, LoadReport), RuntimeError> {
        let inner = &self.inner;
        let not_http = |reason: String| RuntimeError::NotAnHttpComponent {
            service: config.name.clone(),
            path: origin.to_path_buf(),
            reason,
        };
        let instance_pre = inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| not_http(format!("{e:#}")))?;
        // Told apart by what they export: `wasi:http/incoming-handler@0.2.x` (WASI 0.2)
        // or `wasi:http/handler@0.3.x` (WASI 0.3).
        let pre = match ProxyPre::new(instance_pre.clone()) {
            Ok(pre) => invoke::GuestPre::P2(pre),
            Err(p2) => match wasmtime_wasi_http::p3::bindings::ServicePre::new(instance_pre) {
                Ok(pre) => invoke::GuestPre::P3(pre),
                Err(p3) => {
                    return Err(not_http(format!(
                        "it exports neither `wasi:http/incoming-handler@0.2.x` ({p2:#}) nor \
                         `wasi:http/handler@0.3.x` ({p3:#})"
                    )));
                }
            },
        };
        let code_size = {
            let range = component.image_range();
            (range.end as usize).saturating_sub(range.start as usize)
        };
        let imports: Arc<[String]> = component
            .component_type()
            .imports(component.engine())
            .map(|(name, _)| name.to_owned())
            .collect();
        let code = Linked {
            hash,
            pre,
            imports,
            code_size,
        };
        self.assemble(config, code, source, start)
    }

    /// A service from its linked code.
    fn assemble(
        &self,
        config: ServiceConfig,
        code: Linked,
        source: CodeSource,
        start: Instant,
    ) -> Result<(Service, LoadReport), RuntimeError> {
        let inner = &self.inner;
        let Linked {
            hash,
            pre,
            imports,
            code_size,
        } = code;
        if config.reuse.concurrency > 1
            && (matches!(pre, invoke::GuestPre::P2(_))
                || imports_package(&imports, "tessera:messaging"))
        {
            return Err(RuntimeError::ReuseConcurrency {
                service: config.name.clone(),
                concurrency: config.reuse.concurrency,
                wasi: pre.wasi_version(),
            });
        }
        let service = Service {
            imports,
            inner: Arc::new(invoke::ServiceInner::new(
                config,
                hash,
                pre,
                inner.config.log_sink.clone(),
                inner.config.internal.clone(),
                code_size,
                invoke::NodeBounds {
                    budget: inner.budget.clone(),
                    own: inner.own.clone(),
                },
            )),
        };
        Ok((
            service,
            LoadReport {
                source,
                elapsed: start.elapsed(),
            },
        ))
    }
}

impl Runtime {
    /// Keeps a service's code mapped and linked after it was unloaded for being idle, so
    /// loading it again costs only its first instance; the oldest retained code goes
    /// first past [`RETAINED_CODE_BYTES`].
    pub fn retain_code(&self, service: &Service) {
        let inner = &service.inner;
        if inner.code_size > RETAINED_CODE_BYTES {
            return;
        }
        let mut retained = self.lock_retained();
        retained.entries.retain(|code| code.hash != inner.hash);
        retained.entries.push_back(Linked {
            hash: inner.hash.clone(),
            pre: inner.pre.clone(),
            imports: service.imports.clone(),
            code_size: inner.code_size,
        });
        retained.bytes = retained.entries.iter().map(|code| code.code_size).sum();
        while retained.bytes > RETAINED_CODE_BYTES {
            let Some(oldest) = retained.entries.pop_front() else {
                break;
            };
            retained.bytes -= oldest.code_size;
        }
    }

    /// Drops retained code of this digest (its revision no longer serves).
    pub fn forget_code(&self, sha256: &str) {
        self.take_retained(sha256);
    }

    /// Bytes of code retained for idle services.
    pub fn retained_code_bytes(&self) -> usize {
        self.lock_retained().bytes
    }

    fn take_retained(&self, sha256: &str) -> Option<Linked> {
        let mut retained = self.lock_retained();
        let at = retained
            .entries
            .iter()
            .position(|code| code.hash == sha256)?;
        let code = retained.entries.remove(at)?;
        retained.bytes -= code.code_size;
        Some(code)
    }

    fn lock_retained(&self) -> std::sync::MutexGuard<'_, Retained> {
        self.inner
            .retained
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

fn read_component(config: &ServiceConfig, path: &Path) -> Result<Vec<u8>, RuntimeError> {
    std::fs::read(path).map_err(|source| RuntimeError::ReadComponent {
        service: config.name.clone(),
        path: path.to_path_buf(),
        source,
    })
}

/// Why bytes without the component preamble are refused, wherever they are checked.
pub const NOT_A_COMPONENT: &str = "expected a component (WASI 0.2 or 0.3); core modules must be \
     converted with `wasm-tools component new`";

/// Whether the bytes carry the component-model preamble (version 0x0d, layer 1), as
/// opposed to a core module or something else entirely. The first 8 bytes decide.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

/// Whether one of `imports` is an interface of `package` (`tessera:sql`), in any version.
fn imports_package(imports: &[String], package: &str) -> bool {
    imports.iter().any(|name| {
        name.split('/')
            .next()
            .is_some_and(|p| p.split('@').next() == Some(package))
    })
}

/// A loaded service: a pre-instantiated component ready to serve requests. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<invoke::ServiceInner>,
    /// The interfaces the component imports (`tessera:sql/sql@0.1.0`, ...).
    imports: Arc<[String]>,
}

impl Service {
    /// Whether the component imports an interface of this package (`tessera:sql`), in
    /// any version.
    pub fn imports_package(&self, package: &str) -> bool {
        imports_package(&self.imports, package)
    }

    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The WASI version of the component's HTTP export: `0.2` or `0.3`.
    pub fn wasi_version(&self) -> &'static str {
        self.inner.pre.wasi_version()
    }

    /// The sha256 of the component, hex-encoded.
    pub fn content_hash(&self) -> &str {
        &self.inner.hash
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// Peak linear memory, in bytes, of the instance that most recently finished a
    /// request (0 before the first).
    pub fn last_instance_memory(&self) -> u64 {
        self.inner
            .last_memory
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of compiled code mapped for this service: what unloading it gives back.
    pub fn code_size(&self) -> usize {
        self.inner.code_size
    }
}
