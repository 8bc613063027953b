//! Instances that serve several requests at once: a WASI 0.3 service with
//! `reuse_concurrency` above 1. Each such instance is a worker task that owns its store
//! and runs the store's event loop, calling the guest's handler once per request while
//! earlier calls still wait on I/O. Requests go to the first worker with room (fewer than
//! `reuse_concurrency` in flight, fewer than `reuse` started), else to a new one.
//!
//! What belongs to one request cannot be told apart inside an instance serving several:
//! while more than one is in flight its output and outgoing calls carry the instance's
//! tag (`instance-N`) instead of a request id, its call depth is the deepest of them and
//! its data calls are held to the latest deadline. A request past its deadline, a trap
//! or a memory-limit failure ends the instance at once: every request in flight on it
//! fails with the usual status, requests sent to it but not yet started go to another
//! instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc, oneshot};
use wasmtime::component::Accessor;
use wasmtime::{Trap, UpdateDeadline};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::internal::Caller;
use crate::invoke::{Guest, GuestPre, HeadResult, LimitHits, Outcome, ServiceInner};
use crate::reuse::{DropReason, Instance};
use crate::state::InstanceState;

/// One request for a shared instance.
pub(crate) struct Job {
    pub(crate) request: Box<hyper::Request<HyperOutgoingBody>>,
    pub(crate) on_head: Box<dyn FnOnce(HeadResult) + Send>,
    pub(crate) request_id: Arc<str>,
    pub(crate) deadline: Instant,
    pub(crate) depth: u32,
    /// Gets the request's outcome once its body is done with (or its instance ended).
    pub(crate) done: oneshot::Sender<Outcome>,
}

impl Job {
    /// The job, unless nobody waits for it any more or its deadline has passed (then its
    /// caller is told it timed out): a stale job must not start, since its deadline would
    /// end the instance and the requests it serves.
    fn live(self) -> Option<Job> {
        if self.done.is_closed() {
            return None;
        }
        if Instant::now() >= self.deadline {
            let _ = self.done.send(Outcome {
                result: Ok(Err(wasmtime::Error::new(Trap::Interrupt))),
                hits: LimitHits::default(),
                publish_error: None,
            });
            return None;
        }
        Some(self)
    }
}

/// A service's workers, as requests are sent to them.
#[derive(Default)]
pub(crate) struct Workers {
    list: Mutex<Vec<Entry>>,
    next: AtomicU64,
}

struct Entry {
    id: u64,
    jobs: mpsc::UnboundedSender<Job>,
    /// Requests sent to it that have not finished.
    in_flight: u32,
    /// Requests sent to it in all.
    started: u32,
}

impl Workers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request on worker `id` finished.
    fn finished(&self, id: u64) {
        if let Some(entry) = self.lock().iter_mut().find(|e| e.id == id) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }

    /// Takes worker `id` off the list if no request is on its way to it; `false` when one
    /// is (the worker must serve it first).
    fn retire_if_idle(&self, id: u64) -> bool {
        let mut list = self.lock();
        match list.iter().position(|e| e.id == id) {
            Some(at) if list[at].in_flight > 0 => false,
            Some(at) => {
                list.remove(at);
                true
            }
            None => true,
        }
    }

    /// Takes worker `id` off the list whatever it holds.
    fn retire(&self, id: u64) {
        self.lock().retain(|e| e.id != id);
    }
}

/// Sends a request to a worker of the service with room for it, or to a new one.
pub(crate) fn dispatch(inner: &Arc<ServiceInner>, mut job: Job) {
    let Some(live) = job.live() else { return };
    job = live;
    let reuse = &inner.config.reuse;
    let mut list = inner.workers.lock();
    for entry in list.iter_mut() {
        if entry.in_flight >= reuse.concurrency || entry.started >= reuse.requests {
            continue;
        }
        match entry.jobs.send(job) {
            Ok(()) => {
                entry.in_flight += 1;
                entry.started += 1;
                if let Some(observer) = &inner.config.observer.0 {
                    observer.reused();
                }
                return;
            }
            // The worker is ending; it takes no more.
            Err(mpsc::error::SendError(back)) => {
                job = back;
                entry.started = reuse.requests;
            }
        }
    }
    let id = inner.workers.next.fetch_add(1, Ordering::Relaxed);
    let (jobs, receiver) = mpsc::unbounded_channel();
    list.push(Entry {
        id,
        jobs,
        in_flight: 1,
        started: 1,
    });
    drop(list);
    tokio::spawn(run(inner.clone(), id, receiver, job));
}

/// The requests in flight on one instance: what its epoch callback and its expiry watch
/// read.
#[derive(Default)]
struct Flight {
    requests: Mutex<Vec<InFlight>>,
    /// The latest deadline of a finished request: what holds guest tasks that run on after
    /// their request while nothing is in flight.
    lingering: Mutex<Option<Instant>>,
    changed: Notify,
}

struct InFlight {
    job: u64,
    request_id: Arc<str>,
    deadline: Instant,
    depth: u32,
}

impl Flight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<InFlight>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn earliest(&self) -> Option<Instant> {
        self.lock().iter().map(|r| r.deadline).min()
    }

    /// When running guest code is interrupted: at the earliest deadline in flight, or,
    /// with nothing in flight, at the latest deadline of a finished request.
    fn interrupt_at(&self) -> Option<Instant> {
        self.earliest()
            .or_else(|| *self.lingering.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A request is over.
    fn finished(&self, job: u64) {
        let deadline = {
            let mut requests = self.lock();
            let at = requests.iter().position(|r| r.job == job);
            at.map(|at| requests.remove(at).deadline)
        };
        if let Some(deadline) = deadline {
            let mut lingering = self.lingering.lock().unwrap_or_else(|e| e.into_inner());
            *lingering = Some(lingering.map_or(deadline, |d| d.max(deadline)));
        }
        self.changed.notify_one();
    }

    /// Resolves once a request in flight is past its deadline.
    async fn expired(&self) {
        loop {
            match self.earliest() {
                Some(deadline) if Instant::now() >= deadline => return,
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// One worker: instantiates the component, serves the requests sent to it, and ends when
/// it has started `reuse` of them and finished them all, when it waited `reuse_idle`
/// without one, or when the instance fails.
async fn run(
    inner: Arc<ServiceInner>,
    id: u64,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    first: Job,
) {
    // Off the list however the worker ends, a panic included.
    struct Retire<'a>(&'a ServiceInner, u64);
    impl Drop for Retire<'_> {
        fn drop(&mut self) {
            self.0.workers.retire(self.1);
        }
    }
    let _retire = Retire(&inner, id);
    let tag: Arc<str> = format!("instance-{id}").into();
    let flight = Arc::new(Flight::default());
    let mut waiting: HashMap<u64, oneshot::Sender<Outcome>> = HashMap::new();
    let mut instance = Instance::new(inner.new_store(), inner.config.observer.clone());
    {
        let flight = flight.clone();
        let store = &mut instance.store;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if flight.interrupt_at().is_some_and(|d| Instant::now() >= d) {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
    }
    instance.deadline = first.deadline;
    let result = serve(
        &inner,
        id,
        &tag,
        &flight,
        &mut instance,
        &mut jobs,
        first,
        &mut waiting,
    )
    .await;
    // Off the list first, so nothing more is sent here; what was sent but not started
    // goes to another instance.
    inner.workers.retire(id);
    jobs.close();
    let limiter = &instance.store.data().limiter;
    let hits = LimitHits {
        memory: limiter.hit,
        budget: limiter.budget_hit,
    };
    inner
        .last_memory
        .store(limiter.peak as u64, Ordering::Relaxed);
    let (fate, error) = match result {
        Ok(fate) => (fate, None),
        Err(Ended::Expired) => (
            DropReason::Timeout,
            Some(wasmtime::Error::new(Trap::Interrupt)),
        ),
        Err(Ended::Failed(error)) => {
            let outcome = Outcome {
                result: Ok(Err(copy(&error))),
                hits,
                publish_error: None,
            };
            (crate::invoke::fate(&outcome), Some(error))
        }
    };
    instance.fate = Some(fate);
    // Every request still in flight shares the instance's end.
    if let Some(error) = error {
        if !waiting.is_empty() {
            tracing::warn!(
                service = %inner.config.name,
                instance = %tag,
                requests = waiting.len(),
                reason = fate.as_str(),
                error = %format!("{error:#}"),
                "an instance serving several requests at once ended; its requests in flight fail"
            );
        }
        let mut rest: Vec<_> = waiting.drain().map(|(_, done)| done).collect();
        let last = rest.pop();
        let fail = |done: oneshot::Sender<Outcome>, error| {
            let _ = done.send(Outcome {
                result: Ok(Err(error)),
                hits,
                publish_error: None,
            });
        };
        for done in rest {
            fail(done, copy(&error));
        }
        // The original error to one of them: a refusal for want of an instance slot
        // keeps its type.
        if let Some(done) = last {
            fail(done, error);
        }
    }
    drop(instance);
    while let Ok(job) = jobs.try_recv() {
        dispatch(&inner, job);
    }
}

/// How a worker's instance ended other than by finishing its requests.
enum Ended {
    /// A request in flight passed its deadline.
    Expired,
    /// The guest trapped, hit a limit, or could not be instantiated.
    Failed(wasmtime::Error),
}

/// Instantiates the component and serves requests until the worker is done; the reason
/// its instance is dropped, or how it failed.
#[allow(clippy::too_many_arguments)]
async fn serve(
    inner: &Arc<ServiceInner>,
    id: u64,
    tag: &Arc<str>,
    flight: &Arc<Flight>,
    instance: &mut Instance,
    jobs: &mut mpsc::UnboundedReceiver<Job>,
    first: Job,
    waiting: &mut HashMap<u64, oneshot::Sender<Outcome>>,
) -> Result<DropReason, Ended> {
    let GuestPre::P3(pre) = &inner.pre else {
        return Err(Ended::Failed(wasmtime::format_err!(
            "only a WASI 0.3 instance serves several requests at once"
        )));
    };
    let Instance {
        store,
        proxy,
        served,
        ..
    } = instance;
    let mut admitted = Admitted {
        flight,
        waiting,
        served,
        next: 0,
    };
    // Admitted before the component is instantiated, so a failure to instantiate reaches
    // the first request as what it is (a refusal for want of a slot, a trap, a timeout).
    let deadline = first.deadline;
    let Some(first) = admitted.admit(first) else {
        inner.workers.finished(id);
        return Ok(DropReason::Done);
    };
    let made = tokio::time::timeout_at(deadline.into(), pre.instantiate_async(&mut *store))
        .await
        .map_err(|_| Ended::Expired)?
        .map_err(Ended::Failed)?;
    if let Some(observer) = &inner.config.observer.0 {
        observer.created();
    }
    let Guest::P3(service) = proxy.insert(Guest::P3(made)) else {
        unreachable!("a 0.3 instance was just made")
    };
    let service = &*service;
    let reuse = &inner.config.reuse;
    let events = store.run_concurrent(async |accessor| -> wasmtime::Result<DropReason> {
        let mut running = FuturesUnordered::new();
        let (key, request, on_head) = first;
        fit(accessor, tag, flight);
        running.push(call(accessor, service, key, request, on_head));
        let mut fate = DropReason::Done;
        loop {
            if running.is_empty() {
                if *admitted.served >= reuse.requests && inner.workers.retire_if_idle(id) {
                    break;
                }
                tokio::select! {
                    job = jobs.recv() => match job {
                        Some(job) => match admitted.admit(job) {
                            Some((key, request, on_head)) => {
                                fit(accessor, tag, flight);
                                running.push(call(accessor, service, key, request, on_head));
                            }
                            None => inner.workers.finished(id),
                        },
                        None => break,
                    },
                    _ = tokio::time::sleep(reuse.idle) => {
                        if inner.workers.retire_if_idle(id) {
                            fate = DropReason::Idle;
                            break;
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                Some((key, ended)) = running.next() => {
                    flight.finished(key);
                    inner.workers.finished(id);
                    let ended = ended?;
                    let hits = accessor.with(|mut access| {
                        let limiter = &access.get().limiter;
                        LimitHits { memory: limiter.hit, budget: limiter.budget_hit }
                    });
                    if let Some(done) = admitted.waiting.remove(&key) {
                        let _ = done.send(Outcome { result: Ok(Ok(())), hits, publish_error: None });
                    }
                    if hits.memory || hits.budget {
                        // A guest that survived a refused memory.grow is not served
                        // again; the requests in flight fail with the limit.
                        return Err(wasmtime::format_err!("the instance hit its memory limit"));
                    }
                    fit(accessor, tag, flight);
                    if !ended {
                        // A body left half read: this instance takes no more requests,
                        // and ends once the others are done.
                        fate = DropReason::Abandoned;
                        inner.workers.retire(id);
                        jobs.close();
                        while let Ok(job) = jobs.try_recv() {
                            dispatch(inner, job);
                        }
                    }
                }
                job = jobs.recv(), if fate != DropReason::Abandoned => {
                    match job.map(|job| admitted.admit(job)) {
                        Some(Some((key, request, on_head))) => {
                            fit(accessor, tag, flight);
                            running.push(call(accessor, service, key, request, on_head));
                        }
                        Some(None) => inner.workers.finished(id),
                        None => {}
                    }
                }
                else => {}
            }
            if fate == DropReason::Abandoned && running.is_empty() {
                break;
            }
        }
        Ok(fate)
    });
    tokio::select! {
        ended = events => match ended.and_then(|fate| fate) {
            Ok(fate) => Ok(fate),
            Err(error) => Err(Ended::Failed(error)),
        },
        () = flight.expired() => Err(Ended::Expired),
    }
}

/// The bookkeeping of the requests a worker started.
struct Admitted<'a> {
    flight: &'a Flight,
    waiting: &'a mut HashMap<u64, oneshot::Sender<Outcome>>,
    served: &'a mut u32,
    next: u64,
}

type Request = Box<hyper::Request<HyperOutgoingBody>>;
type OnHead = Box<dyn FnOnce(HeadResult) + Send>;

impl Admitted<'_> {
    /// Records a request as in flight: its key, and what the guest's call takes; `None`
    /// for a job gone stale on its way (see [`Job::live`]).
    fn admit(&mut self, job: Job) -> Option<(u64, Request, OnHead)> {
        let job = job.live()?;
        let key = self.next;
        self.next += 1;
        *self.served += 1;
        self.flight.lock().push(InFlight {
            job: key,
            request_id: job.request_id,
            deadline: job.deadline,
            depth: job.depth,
        });
        self.flight.changed.notify_one();
        self.waiting.insert(key, job.done);
        Some((key, job.request, job.on_head))
    }
}

/// One request's call of the guest's handler, keyed for the worker's bookkeeping.
async fn call(
    accessor: &Accessor<InstanceState>,
    service: &wasmtime_wasi_http::p3::bindings::Service,
    key: u64,
    request: Request,
    on_head: OnHead,
) -> (u64, wasmtime::Result<bool>) {
    (
        key,
        crate::p3::handle(accessor, service, request, on_head).await,
    )
}

/// Fits the instance's per-request state to the requests in flight: the one request's id
/// on output and outgoing calls when it is alone, the instance's tag otherwise; the
/// deepest call depth; the latest deadline for data calls.
fn fit(accessor: &Accessor<InstanceState>, tag: &Arc<str>, flight: &Flight) {
    let (request_id, depth, deadline) = {
        let requests = flight.lock();
        let request_id = match requests.as_slice() {
            [one] => one.request_id.clone(),
            _ => tag.clone(),
        };
        let depth = requests.iter().map(|r| r.depth).max().unwrap_or(0);
        let deadline = requests.iter().map(|r| r.deadline).max();
        (request_id, depth, deadline)
    };
    accessor.with(|mut access| {
        let state = access.get();
        for output in &state.outputs {
            output.begin_request(request_id.clone());
        }
        state.outbound.caller = Caller {
            app: state.outbound.caller.app.clone(),
            service: state.outbound.caller.service.clone(),
            request_id,
            depth,
        };
        if let Some(deadline) = deadline {
            state.data.deadline = deadline;
        }
    });
}

/// The same failure again, for each other request it ends (errors are not `Clone`): a
/// trap keeps its code, so each request is classified like the first.
fn copy(error: &wasmtime::Error) -> wasmtime::Error {
    match error.downcast_ref::<Trap>() {
        Some(trap) => wasmtime::Error::new(*trap),
        None => wasmtime::format_err!("{error:#}"),
    }
}
