//! Serving one request: a fresh store and instance from the service's pre-instantiated
//! component, the deadline and memory limit applied, and the outcome classified.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use tokio::sync::oneshot;
use tokio::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::{Service as P3Service, ServicePre};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use crate::data::DataState;
use crate::headers;
use crate::internal::{Caller, InternalRouter, MAX_CALL_DEPTH};
use crate::messaging::{MessagingState, OutgoingMessage, Publisher};
use crate::outbound::OutboundPolicy;
use crate::output::{GuestLogSink, GuestOutput, OutputStream};
use crate::reuse::{DropReason, Instance, Pool};
use crate::state::{InstanceState, MemoryLimiter};
use crate::{Origin, Service, ServiceConfig};

/// Why a request did not get a response from its guest.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("service `{service}` trapped: {message}")]
    Trap { service: String, message: String },
    #[error("service `{service}` exceeded its memory limit of {limit} bytes")]
    MemoryLimit { service: String, limit: u64 },
    #[error("service `{service}` did not answer within its {timeout:?} deadline")]
    Timeout { service: String, timeout: Duration },
    #[error("service `{service}` returned without sending a response")]
    NoResponse { service: String },
    #[error("service `{service}` answered with an error: {code}")]
    GuestError { service: String, code: String },
    #[error("the node has no instance slot or instance memory free; retry shortly")]
    Capacity,
    #[error("service `{service}`: {message}")]
    Internal { service: String, message: String },
}

/// What every instance shares with the rest of the node: the memory budget and the
/// listeners no guest may reach.
pub(crate) struct NodeBounds {
    pub(crate) budget: Arc<crate::MemoryBudget>,
    pub(crate) own: Arc<std::sync::OnceLock<Vec<std::net::SocketAddr>>>,
}

/// A service's component, pre-instantiated, by the WASI version of its HTTP export.
#[derive(Clone)]
pub(crate) enum GuestPre {
    /// `wasi:http/incoming-handler@0.2.x`.
    P2(ProxyPre<InstanceState>),
    /// `wasi:http/handler@0.3.x`.
    P3(ServicePre<InstanceState>),
}

impl GuestPre {
    pub(crate) fn wasi_version(&self) -> &'static str {
        match self {
            GuestPre::P2(_) => "0.2",
            GuestPre::P3(_) => "0.3",
        }
    }

    fn engine(&self) -> &wasmtime::Engine {
        match self {
            GuestPre::P2(pre) => pre.engine(),
            GuestPre::P3(pre) => pre.engine(),
        }
    }
}

/// A component instance's HTTP export, once instantiated.
pub(crate) enum Guest {
    P2(Proxy),
    P3(P3Service),
}

/// What one request hands the guest's task: the 0.2 resources already in its store, or
/// the request and the head's callback for a 0.3 guest (which takes them inside its
/// store's event loop).
enum Call {
    P2 {
        incoming: wasmtime::component::Resource<
            wasmtime_wasi_http::p2::bindings::http::types::IncomingRequest,
        >,
        outparam: wasmtime::component::Resource<
            wasmtime_wasi_http::p2::bindings::http::types::ResponseOutparam,
        >,
    },
    P3 {
        request: Box<hyper::Request<HyperOutgoingBody>>,
        on_head: Box<dyn FnOnce(HeadResult) + Send>,
    },
}

pub(crate) struct ServiceInner {
    pub(crate) config: ServiceConfig,
    pub(crate) hash: String,
    pub(crate) pre: GuestPre,
    sink: Arc<dyn GuestLogSink>,
    internal: Option<Arc<dyn InternalRouter>>,
    app: Arc<str>,
    name: Arc<str>,
    outbound: Arc<[Origin]>,
    /// Size of the compiled code mapped for this service, in bytes.
    pub(crate) code_size: usize,
    /// Peak linear memory of the most recently finished instance, in bytes.
    pub(crate) last_memory: std::sync::atomic::AtomicU64,
    /// The node's budget for running instances' memory.
    budget: Arc<crate::MemoryBudget>,
    /// The node's listeners, once bound.
    own: Arc<std::sync::OnceLock<Vec<std::net::SocketAddr>>>,
    /// The service's allowance of stdout and stderr, shared by its requests.
    output: Arc<crate::output::OutputLimiter>,
    /// Instances waiting for their next request (only when the service reuses them).
    pub(crate) pool: Pool,
    /// Instances serving several requests at once (only with `reuse_concurrency` above 1).
    pub(crate) workers: crate::worker::Workers,
}

impl ServiceInner {
    pub(crate) fn new(
        config: ServiceConfig,
        hash: String,
        pre: GuestPre,
        sink: Arc<dyn GuestLogSink>,
        internal: Option<Arc<dyn InternalRouter>>,
        code_size: usize,
        node: NodeBounds,
    ) -> Self {
        let NodeBounds { budget, own } = node;
        ServiceInner {
            internal,
            app: config.app.as_str().into(),
            code_size,
            budget,
            own,
            output: Arc::new(crate::output::OutputLimiter::new(
                crate::output::OUTPUT_RATE,
                crate::output::OUTPUT_BURST,
            )),
            last_memory: std::sync::atomic::AtomicU64::new(0),
            name: config.name.as_str().into(),
            outbound: config.outbound.clone().into(),
            config,
            hash,
            pre,
            sink,
            pool: Pool::default(),
            workers: Default::default(),
        }
    }

    /// Whether one instance may serve several requests at once.
    pub(crate) fn concurrent(&self) -> bool {
        let reuse = &self.config.reuse;
        reuse.enabled() && reuse.concurrency > 1 && matches!(self.pre, GuestPre::P3(_))
    }

    /// A store holding only what this service is granted: no preopened directories, no
    /// sockets, only the environment the manifest lists, output captured per request.
    /// [`ServiceInner::begin`] fits it to each request it serves.
    pub(crate) fn new_store(&self) -> Store<InstanceState> {
        let request_id: Arc<str> = Arc::from("");
        let caller = Caller {
            app: self.app.clone(),
            service: self.name.clone(),
            request_id: request_id.clone(),
            depth: 0,
        };
        let output = |stream| {
            GuestOutput::new(
                self.sink.clone(),
                self.output.clone(),
                self.app.clone(),
                self.name.clone(),
                request_id.clone(),
                stream,
            )
        };
        let outputs = [output(OutputStream::Stdout), output(OutputStream::Stderr)];
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(outputs[0].clone())
            .stderr(outputs[1].clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if !self.config.env.is_empty() {
            wasi.envs(&self.config.env);
        }
        let state = InstanceState {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            outbound: OutboundPolicy {
                service: self.name.clone(),
                allowed: self.outbound.clone(),
                caller,
                internal: self.internal.clone(),
                own: self.own.clone(),
            },
            limiter: MemoryLimiter::new(self.config.limits.memory, self.budget.clone()),
            data: DataState::new(self.config.data.clone(), std::time::Instant::now()),
            messaging: MessagingState {
                enabled: self.config.data.publisher.is_some(),
                outbox: Default::default(),
            },
            outputs,
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        store
    }

    /// An instance for one request: a parked one when the service reuses instances and
    /// one is waiting, a fresh store otherwise; fitted to the request either way.
    async fn instance(&self, request_id: &str, deadline: Instant, depth: u32) -> Instance {
        let reuse = &self.config.reuse;
        let parked = if reuse.enabled() {
            self.pool.take_or_wait(reuse.idle).await
        } else {
            None
        };
        let mut instance = match parked {
            Some(instance) => {
                if let Some(observer) = &self.config.observer.0 {
                    observer.reused();
                }
                instance
            }
            None => Instance::new(self.new_store(), self.config.observer.clone()),
        };
        instance.fate = None;
        instance.deadline = deadline.into_std();
        instance.served += 1;
        self.begin(&mut instance.store, request_id.into(), deadline, depth);
        instance
    }

    /// Fits a store to the request it is about to serve: the id its output and calls
    /// carry, the deadline its data calls and its running code are held to.
    fn begin(
        &self,
        store: &mut Store<InstanceState>,
        request_id: Arc<str>,
        deadline: Instant,
        depth: u32,
    ) {
        let deadline = deadline.into_std();
        let state = store.data_mut();
        for output in &state.outputs {
            output.begin_request(request_id.clone());
        }
        state.outbound.caller = Caller {
            app: self.app.clone(),
            service: self.name.clone(),
            request_id,
            depth,
        };
        state.data.deadline = deadline;
        // Every epoch tick a running guest yields to the executor, so a busy guest never
        // starves other requests on its thread; past the deadline it is stopped.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if std::time::Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // tokio's own yield puts the task at the back of the run queue; a plain
                // self-wake could land in the LIFO slot and run again at once.
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
    }

    pub(crate) fn classify(&self, error: wasmtime::Error, hits: LimitHits) -> InvokeError {
        let service = self.config.name.clone();
        if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() || hits.budget {
            return InvokeError::Capacity;
        }
        let memory_hit = hits.memory;
        if memory_hit {
            return InvokeError::MemoryLimit {
                service,
                limit: self.config.limits.memory,
            };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => InvokeError::Timeout {
                service,
                timeout: self.config.limits.timeout,
            },
            Some(trap) => InvokeError::Trap {
                service,
                message: trap.to_string(),
            },
            None => InvokeError::Trap {
                service,
                message: error.to_string(),
            },
        }
    }
}

/// The guest's run as seen from its task: the call's result (or a deadline miss),
/// whether the memory limit was hit on the way, and whether what it published after its
/// response head was committed.
pub(crate) struct Outcome {
    pub(crate) result: Result<wasmtime::Result<()>, tokio::time::error::Elapsed>,
    pub(crate) hits: LimitHits,
    pub(crate) publish_error: Option<String>,
}

/// Which memory limits an instance ran into.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LimitHits {
    /// The service's own limit.
    pub(crate) memory: bool,
    /// The node's budget for all instances.
    pub(crate) budget: bool,
}

/// A request served to the end (see [`Service::handle_to_completion`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub status: u16,
    /// The response body, cut at the limit the caller gave.
    pub body: Vec<u8>,
}

/// A request in progress: the response head (once the guest sets it) and the guest's
/// task, which ends when the handler returns and its late publishes are committed.
struct Running {
    response: hyper::Response<HyperOutgoingBody>,
    task: GuestTask,
    deadline: Instant,
}

/// Where a request's [`Outcome`] comes from: the task that owns its instance, or (on an
/// instance serving several requests at once) the instance's worker.
enum GuestTask {
    Own(tokio::task::JoinHandle<Outcome>),
    Shared(oneshot::Receiver<Outcome>),
}

impl GuestTask {
    async fn outcome(self) -> Result<Outcome, String> {
        match self {
            GuestTask::Own(task) => task
                .await
                .map_err(|join| format!("guest task failed: {join}")),
            GuestTask::Shared(outcome) => outcome
                .await
                .map_err(|_| "the instance's worker ended without an outcome".to_string()),
        }
    }

    /// Stops a request's own task; a shared instance is stopped by its worker when the
    /// request's deadline passes.
    fn abort(&self) {
        if let GuestTask::Own(task) = self {
            task.abort();
        }
    }
}

type HeadSender = oneshot::Sender<HeadResult>;

impl Service {
    /// Serves one request in a fresh instance. The response's body keeps streaming from
    /// the guest after this returns; a failure after the head was sent cuts the body
    /// short and is logged.
    pub async fn handle<B>(
        &self,
        request: hyper::Request<B>,
        request_id: &str,
    ) -> Result<hyper::Response<HyperOutgoingBody>, InvokeError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        Ok(self.start(request, request_id).await?.response)
    }

    /// Serves one request to its end: the whole body is read (keeping at most `max_body`
    /// bytes), the handler has returned, and everything it published is durable. Event
    /// deliveries use this, so a delivery is acknowledged only after its own publishes.
    pub async fn handle_to_completion<B>(
        &self,
        request: hyper::Request<B>,
        request_id: &str,
        max_body: usize,
    ) -> Result<Completed, InvokeError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let inner = self.inner.clone();
        let running = self.start(request, request_id).await?;
        let status = running.response.status().as_u16();
        let mut body = running.response.into_body();
        let mut kept = Vec::new();
        let read = tokio::time::timeout_at(running.deadline, async {
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    let room = max_body.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        })
        .await;
        if read.is_err() {
            return Err(InvokeError::Timeout {
                service: inner.config.name.clone(),
                timeout: inner.config.limits.timeout,
            });
        }
        match running.task.outcome().await {
            Ok(Outcome {
                result: Ok(Ok(())),
                publish_error: None,
                ..
            }) => Ok(Completed { status, body: kept }),
            Ok(Outcome {
                publish_error: Some(message),
                ..
            }) => Err(InvokeError::Internal {
                service: inner.config.name.clone(),
                message: format!("could not publish the request's messages: {message}"),
            }),
            Ok(Outcome {
                result: Ok(Err(error)),
                hits,
                ..
            }) => Err(inner.classify(error, hits)),
            Ok(Outcome { result: Err(_), .. }) => Err(InvokeError::Timeout {
                service: inner.config.name.clone(),
                timeout: inner.config.limits.timeout,
            }),
            Err(message) => Err(InvokeError::Internal {
                service: inner.config.name.clone(),
                message,
            }),
        }
    }

    async fn start<B>(
        &self,
        mut request: hyper::Request<B>,
        request_id: &str,
    ) -> Result<Running, InvokeError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let inner = self.inner.clone();
        let deadline = Instant::now() + inner.config.limits.timeout;
        let internal = |e: wasmtime::Error| InvokeError::Internal {
            service: inner.config.name.clone(),
            message: format!("{e:#}"),
        };
        ensure_authority(&mut request);
        if inner.concurrent() {
            return start_shared(&inner, request, request_id, deadline).await;
        }
        let mut instance = inner
            .instance(request_id, deadline, call_depth(&request))
            .await;
        // Told when the response body ends, so the next request may wait for this
        // instance rather than make another (if it may serve again).
        let finish = (instance.served < inner.config.reuse.requests).then(|| inner.pool.finish());
        let store = &mut instance.store;
        let head = HeadWatch::default();
        let (sender, receiver) = oneshot::channel();
        let on_head = head.on_response(
            store.data().messaging.outbox.clone(),
            inner.config.data.publisher.clone(),
            inner.config.name.clone(),
            request_id.to_string(),
            sender,
        );
        let call = match &inner.pre {
            GuestPre::P2(_) => {
                let incoming = store
                    .data_mut()
                    .http()
                    .new_incoming_request(Scheme::Http, request)
                    .map_err(internal)?;
                let outparam = store
                    .data_mut()
                    .http()
                    .new_response_outparam_from_callback(move |head| {
                        on_head(head.map_err(|code| error_code_text(&code)))
                    })
                    .map_err(internal)?;
                Call::P2 { incoming, outparam }
            }
            GuestPre::P3(_) => Call::P3 {
                request: boxed_request(request),
                on_head: Box::new(on_head),
            },
        };
        let task = tokio::spawn(run_guest(
            inner.clone(),
            instance,
            call,
            head,
            deadline,
            request_id.to_string(),
            finish.clone(),
        ));
        let mut running =
            await_head(&inner, GuestTask::Own(task), receiver, deadline, request_id).await?;
        if let Some(finish) = finish {
            running.response = running
                .response
                .map(|body| http_body_util::BodyExt::boxed_unsync(EndWatch { body, finish }));
        }
        Ok(running)
    }
}

/// Starts a request on an instance that serves several at once (a WASI 0.3 service with
/// `reuse_concurrency` above 1): the service's workers take it.
async fn start_shared<B>(
    inner: &Arc<ServiceInner>,
    request: hyper::Request<B>,
    request_id: &str,
    deadline: Instant,
) -> Result<Running, InvokeError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let depth = call_depth(&request);
    let head = HeadWatch::default();
    let (sender, receiver) = oneshot::channel();
    // Such a component imports no publishing interface (checked when it was loaded), so
    // its requests' outbox stays empty.
    let on_head = head.on_response(
        Default::default(),
        None,
        inner.config.name.clone(),
        request_id.to_string(),
        sender,
    );
    let (done, outcome) = oneshot::channel();
    crate::worker::dispatch(
        inner,
        crate::worker::Job {
            request: boxed_request(request),
            on_head: Box::new(on_head),
            request_id: request_id.into(),
            deadline: deadline.into_std(),
            depth,
            done,
        },
    );
    await_head(
        inner,
        GuestTask::Shared(outcome),
        receiver,
        deadline,
        request_id,
    )
    .await
}

/// The request with its body boxed, as a WASI 0.3 guest's call takes it.
fn boxed_request<B>(request: hyper::Request<B>) -> Box<hyper::Request<HyperOutgoingBody>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    Box::new(request.map(|body| {
        http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(body, Into::into))
    }))
}

/// HTTP/1.0 clients may send neither an absolute URI nor a Host header; the guest API
/// requires an authority, so give it a neutral one.
fn ensure_authority<B>(request: &mut hyper::Request<B>) {
    if request.uri().authority().is_none() && !request.headers().contains_key(http::header::HOST) {
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("localhost"),
        );
    }
}

/// How deep in a chain of internal calls a request is (0 from outside).
fn call_depth<B>(request: &hyper::Request<B>) -> u32 {
    request
        .headers()
        .get(headers::CALL_DEPTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0)
        .min(MAX_CALL_DEPTH + 1)
}

/// The rule for a request's messages, for those published before the response head and
/// after it alike: they count only if the request succeeds — the guest set a head below
/// 500 and its handler has not failed (so far, for the early ones).
fn may_publish(status: u16, handler_ok: bool) -> bool {
    handler_ok && (1..500).contains(&status)
}

fn discarded(service: &str, request_id: &str, count: usize) {
    tracing::debug!(
        service,
        request_id,
        discarded = count,
        "failed request: its messages are not published"
    );
}

/// What the guest's task and the caller learn about the response head.
#[derive(Clone, Default)]
struct HeadWatch {
    /// Whether the guest has set the head (after which nobody awaits the task).
    responded: Arc<AtomicBool>,
    /// 0 until the guest sets a response head; its status after.
    status: Arc<AtomicU16>,
}

/// The guest's response head, or the error it answered with (as text: 0.2 and 0.3 guests
/// have error codes of their own types).
pub(crate) type HeadResult = Result<hyper::Response<HyperOutgoingBody>, String>;

impl HeadWatch {
    /// The callback the guest's response outparam calls with the head: it records the
    /// status and hands the head to the caller, first committing what was published so
    /// far if the request may publish.
    fn on_response(
        &self,
        outbox: crate::messaging::Outbox,
        publisher: Option<Arc<dyn Publisher>>,
        service: String,
        request_id: String,
        sender: HeadSender,
    ) -> impl FnOnce(HeadResult) + Send + 'static {
        let watch = self.clone();
        move |response| {
            watch.responded.store(true, Ordering::Release);
            let code = response.as_ref().map_or(0, |r| r.status().as_u16());
            watch.status.store(code, Ordering::Release);
            let early = outbox.take();
            match publisher {
                Some(publisher) if !early.is_empty() && may_publish(code, true) => {
                    // Published before answering: durable before the client hears.
                    tokio::spawn(commit_then_answer(
                        publisher, service, early, response, sender,
                    ));
                }
                _ => {
                    if !early.is_empty() {
                        discarded(&service, &request_id, early.len());
                    }
                    let _ = sender.send(response);
                }
            }
        }
    }
}

/// Runs the guest's handler to its end (or the deadline), then commits what it published
/// after the head if the request may publish, and reports failures nobody awaits.
async fn run_guest(
    inner: Arc<ServiceInner>,
    mut instance: Instance,
    call: Call,
    head: HeadWatch,
    deadline: Instant,
    request_id: String,
    finish: Option<Arc<crate::reuse::Finish>>,
) -> Outcome {
    let _finish = finish.map(|finish| crate::reuse::FinishGuard {
        service: inner.clone(),
        finish,
    });
    // A 0.3 response body the client stopped reading leaves the instance unfit to serve
    // again.
    let mut finished_cleanly = true;
    let result = tokio::time::timeout_at(deadline, async {
        let Instance { store, proxy, .. } = &mut instance;
        let guest = match proxy {
            Some(guest) => guest,
            None => {
                let made = match &inner.pre {
                    GuestPre::P2(pre) => Guest::P2(pre.instantiate_async(&mut *store).await?),
                    GuestPre::P3(pre) => Guest::P3(pre.instantiate_async(&mut *store).await?),
                };
                if let Some(observer) = &inner.config.observer.0 {
                    observer.created();
                }
                proxy.insert(made)
            }
        };
        match (guest, call) {
            (Guest::P2(proxy), Call::P2 { incoming, outparam }) => {
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut *store, incoming, outparam)
                    .await
            }
            (Guest::P3(service), Call::P3 { request, on_head }) => {
                crate::p3::serve(store, service, request, on_head)
                    .await
                    .map(|ended| finished_cleanly = ended)
            }
            _ => Err(wasmtime::format_err!(
                "the request was prepared for another WASI version than the instance"
            )),
        }
    })
    .await;
    let service = &inner.config.name;
    let store = &mut instance.store;
    let late = store.data().messaging.outbox.take();
    let mut publish_error = None;
    if !late.is_empty() {
        let code = head.status.load(Ordering::Acquire);
        match &inner.config.data.publisher {
            Some(publisher) if may_publish(code, matches!(result, Ok(Ok(())))) => {
                publish_error = publish(publisher.clone(), service, late).await.err();
            }
            _ => discarded(service, &request_id, late.len()),
        }
    }
    let limiter = &store.data().limiter;
    inner
        .last_memory
        .store(limiter.peak as u64, Ordering::Relaxed);
    let outcome = Outcome {
        result,
        hits: LimitHits {
            memory: limiter.hit,
            budget: limiter.budget_hit,
        },
        publish_error,
    };
    if head.responded.load(Ordering::Acquire) {
        report_late_failure(service, &request_id, &outcome);
    }
    let fate = match fate(&outcome) {
        DropReason::Done if !finished_cleanly => DropReason::Abandoned,
        fate => fate,
    };
    instance.fate = Some(fate);
    let reuse = &inner.config.reuse;
    if fate == DropReason::Done && instance.served < reuse.requests {
        Pool::park(&inner, instance);
    }
    outcome
}

/// What becomes of an instance after a request: only one whose guest returned normally
/// may serve again; any failure drops it.
pub(crate) fn fate(outcome: &Outcome) -> DropReason {
    if outcome.hits.memory || outcome.hits.budget {
        return DropReason::Memory;
    }
    match &outcome.result {
        Ok(Ok(())) => DropReason::Done,
        Ok(Err(error)) => match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => DropReason::Timeout,
            _ => DropReason::Trap,
        },
        Err(_) => DropReason::Timeout,
    }
}

/// A response body that tells its request's [`Finish`](crate::reuse::Finish) when it
/// has reached its end.
struct EndWatch {
    body: HyperOutgoingBody,
    finish: Arc<crate::reuse::Finish>,
}

impl Body for EndWatch {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.body.is_end_stream() {
            self.finish.body_ended();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Once the head is out, nobody awaits the guest's task: its failures are logged here.
fn report_late_failure(service: &str, request_id: &str, outcome: &Outcome) {
    match &outcome.result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            service,
            request_id,
            error = %format!("{e:?}"),
            "guest failed after sending its response head; body cut short"
        ),
        Err(_) => tracing::warn!(
            service,
            request_id,
            "deadline reached while the guest was still streaming its response body"
        ),
    }
    if let Some(error) = &outcome.publish_error {
        tracing::error!(
            service,
            request_id,
            %error,
            "messages published after the response head were not published"
        );
    }
}

/// Waits for the guest's response head until the deadline; a guest that ends without
/// one is classified by how its task ended.
async fn await_head(
    inner: &ServiceInner,
    task: GuestTask,
    receiver: oneshot::Receiver<HeadResult>,
    deadline: Instant,
    request_id: &str,
) -> Result<Running, InvokeError> {
    let service = || inner.config.name.clone();
    let timed_out = || InvokeError::Timeout {
        service: service(),
        timeout: inner.config.limits.timeout,
    };
    match tokio::time::timeout_at(deadline, receiver).await {
        Ok(Ok(Ok(response))) => Ok(Running {
            response,
            task,
            deadline,
        }),
        Ok(Ok(Err(code))) => Err(InvokeError::GuestError {
            service: service(),
            code,
        }),
        // The guest dropped the response outparam: its task is over or ending.
        Ok(Err(_)) => match task.outcome().await {
            Ok(Outcome {
                result: Ok(Ok(())), ..
            }) => Err(InvokeError::NoResponse { service: service() }),
            Ok(Outcome {
                result: Ok(Err(error)),
                hits,
                ..
            }) => {
                tracing::debug!(service = %inner.config.name, request_id, error = %format!("{error:?}"), "guest failed");
                Err(inner.classify(error, hits))
            }
            Ok(Outcome { result: Err(_), .. }) => Err(timed_out()),
            Err(message) => Err(InvokeError::Internal {
                service: service(),
                message,
            }),
        },
        Err(_) => {
            task.abort();
            Err(timed_out())
        }
    }
}

/// Commits messages published before the response head, then lets the head go; if the
/// commit fails the client gets an error instead of a success that lost its messages.
async fn commit_then_answer(
    publisher: Arc<dyn Publisher>,
    service: String,
    messages: Vec<OutgoingMessage>,
    response: HeadResult,
    sender: HeadSender,
) {
    let answer = match publish(publisher, &service, messages).await {
        Ok(()) => response,
        Err(message) => {
            tracing::error!(service = %service, error = %message, "cannot publish the request's messages; answering with an error");
            Err(error_code_text(&ErrorCode::InternalError(Some(format!(
                "could not publish the request's messages: {message}"
            )))))
        }
    };
    let _ = sender.send(answer);
}

async fn publish(
    publisher: Arc<dyn Publisher>,
    service: &str,
    messages: Vec<OutgoingMessage>,
) -> Result<(), String> {
    let service = service.to_string();
    tokio::task::spawn_blocking(move || publisher.publish(&service, messages))
        .await
        .map_err(|e| format!("publishing task failed: {e}"))?
}

fn error_code_text(code: &ErrorCode) -> String {
    format!("{code:?}")
}
