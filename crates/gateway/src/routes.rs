//! The routing table: path prefixes to targets, longest prefix first. Built whole and
//! swapped atomically, so a request always sees one consistent table.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arc_swap::ArcSwap;
use tessera_model::RoutePrefix;
use tessera_runtime::Service;
use tessera_telemetry::{LogStream, ServiceLabels, Telemetry};

use crate::admission::{Admission, Limiter, Permit, Rejection};

/// What a route leads to: one service, served by one or more revisions with traffic
/// weights, behind the service's admission limits.
pub struct Target {
    /// Name of the service, for logs and errors.
    pub service: String,
    backends: Vec<Backend>,
    /// Shared with the targets of earlier and later tables for the same service.
    limiter: Arc<Limiter>,
    /// Where requests, rejections and faults are counted; `None` counts nothing.
    telemetry: Option<Telemetry>,
    /// Backend indexes in the order requests are given to them, one round of the
    /// weights long (see [`schedule`]).
    schedule: Vec<u16>,
    /// Request counter walking the schedule.
    counter: AtomicU32,
    /// Where `x-tessera-async: 1` requests are queued; `None` answers them 501.
    async_sink: Option<Arc<dyn AsyncSink>>,
}

/// What the gateway answers an accepted async request with.
#[derive(Debug, Clone)]
pub struct AsyncAccepted {
    /// The invocation id.
    pub id: String,
    /// Where its status can be read (a path on the admin listener).
    pub status_path: String,
}

/// Why an async request was not queued, as the client is told.
#[derive(Debug, Clone)]
pub struct AsyncRefusal {
    pub status: http::StatusCode,
    /// The error's machine-readable code.
    pub code: &'static str,
    pub message: String,
    /// When to try again, for refusals that pass (a rate).
    pub retry_after: Option<std::time::Duration>,
}

impl AsyncRefusal {
    pub fn new(status: http::StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AsyncRefusal {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// Queues async invocations durably (the node's event journal). Called on the blocking
/// pool; Ok means the invocation will run at least once.
pub trait AsyncSink: Send + Sync {
    /// Refuses what can be refused from the head alone (a callback the service does not
    /// allow), before the body is read. The gateway calls it before every `enqueue`.
    fn check(&self, callback: Option<&str>) -> Result<(), AsyncRefusal> {
        let _ = callback;
        Ok(())
    }

    fn enqueue(
        &self,
        request: tessera_events::invocation::Request,
    ) -> Result<AsyncAccepted, AsyncRefusal>;
}

/// One revision of a service with its share of the traffic.
#[derive(Clone)]
pub struct Backend {
    /// The revision id, when the service is versioned; `None` for a service built
    /// without one.
    pub revision: Option<u32>,
    /// Share of the traffic, relative to the other backends of the target (percent, in
    /// practice).
    pub weight: u32,
    /// Names the revision in metrics.
    pub labels: ServiceLabels,
    /// The revision's code, loaded when a request needs it.
    pub service: Arc<dyn ServiceSlot>,
}

/// Where a revision's loaded code comes from. The node keeps a revision's code loaded
/// only while it is used, so the gateway asks for it per request; implementations load
/// once however many requests ask at the same time.
pub trait ServiceSlot: Send + Sync {
    /// The loaded service, loading it first if needed.
    fn get(&self) -> Pin<Box<dyn Future<Output = Result<Lease, LoadError>> + Send + '_>>;
}

/// A loaded service, lent to one request. While a lease exists, its slot counts the
/// revision as busy (it is not unloaded for idleness); the service itself stays alive as
/// long as the lease does, even if the slot unloads it meanwhile.
pub struct Lease {
    service: Service,
    _hold: Option<Box<dyn Any + Send + Sync>>,
}

impl Lease {
    /// Lends `service`, keeping `hold` (a guard of the slot's choosing) until the lease
    /// is dropped.
    pub fn new(service: Service, hold: impl Any + Send + Sync) -> Lease {
        Lease {
            service,
            _hold: Some(Box::new(hold)),
        }
    }

    pub fn service(&self) -> &Service {
        &self.service
    }
}

impl std::ops::Deref for Lease {
    type Target = Service;

    fn deref(&self) -> &Service {
        &self.service
    }
}

/// A revision's code could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("service `{service}`: cannot load its code: {message}")]
pub struct LoadError {
    pub service: String,
    pub message: String,
}

/// A service that is always loaded.
pub struct Loaded(pub Service);

impl ServiceSlot for Loaded {
    fn get(&self) -> Pin<Box<dyn Future<Output = Result<Lease, LoadError>> + Send + '_>> {
        let lease = Lease {
            service: self.0.clone(),
            _hold: None,
        };
        Box::pin(std::future::ready(Ok(lease)))
    }
}

impl Target {
    /// A target served by a single, always loaded, unversioned service.
    pub fn single(app: &str, service: Service) -> Self {
        Target::weighted(
            service.name().to_string(),
            vec![Backend {
                revision: None,
                weight: 1,
                labels: ServiceLabels::new(app, service.name(), None),
                service: Arc::new(Loaded(service)),
            }],
        )
    }

    /// A target split across revisions by weight, with the default admission limits.
    /// Backends with weight 0 are kept, so a request can still be pinned to them.
    pub fn weighted(service: String, backends: Vec<Backend>) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Target {
            service,
            schedule: schedule(&weights),
            backends,
            counter: AtomicU32::new(0),
            async_sink: None,
            limiter: Arc::new(Limiter::new(Admission::default())),
            telemetry: None,
        }
    }

    /// Admits requests through `limiter`, which the caller keeps across routing tables.
    pub fn with_limiter(mut self, limiter: Arc<Limiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Counts the target's requests, rejections and faults in `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Option<Telemetry>) -> Self {
        self.telemetry = telemetry;
        self
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    pub fn telemetry(&self) -> Option<&Telemetry> {
        self.telemetry.as_ref()
    }

    /// Takes one of the service's running slots for a request that will run on
    /// `backend`: at once, after a bounded wait in the queue, or not at once (429) or
    /// not in time (503). Every path into a guest (gateway, events, internal calls)
    /// goes through here, so the service's limit holds for all of them together.
    pub async fn admit(&self, backend: &Backend) -> Result<Permit, Rejection> {
        let telemetry = self.telemetry.as_ref();
        let result = self
            .limiter
            .admit(&self.service, || {
                telemetry.map(|t| t.queued(&backend.labels))
            })
            .await;
        if let Err(rejection) = &result {
            if let Some(telemetry) = telemetry {
                telemetry.rejected(&backend.labels, rejection.reason());
            }
            if let Some(count) = self.limiter.note_rejection() {
                let line =
                    format!("rejecting requests: {rejection} ({count} since the last report)");
                tracing::warn!(app = %backend.labels.app, service = %self.service, reason = %rejection.reason(), count, "rejecting requests");
                if let Some(telemetry) = telemetry {
                    telemetry.log(
                        &backend.labels.app,
                        &self.service,
                        LogStream::Platform,
                        None,
                        &line,
                    );
                }
            }
        }
        result
    }

    /// Lets the target take async invocations through `sink`.
    pub fn with_async(mut self, sink: Arc<dyn AsyncSink>) -> Self {
        self.async_sink = Some(sink);
        self
    }

    pub fn async_sink(&self) -> Option<&Arc<dyn AsyncSink>> {
        self.async_sink.as_ref()
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Picks the backend for the next request. Weights are honoured exactly over every
    /// round of the schedule (100 requests for percentages), with no randomness to drift.
    pub fn pick(&self) -> Option<&Backend> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed) as usize;
        Some(&self.backends[usize::from(self.schedule[n % self.schedule.len()])])
    }

    /// The backend of a given revision, for requests pinned with a header.
    pub fn revision(&self, id: u32) -> Option<&Backend> {
        self.backends.iter().find(|b| b.revision == Some(id))
    }
}

/// Longest schedule built; larger weight totals are scaled down to fit.
const MAX_SCHEDULE: u32 = 1000;

/// One round of smooth weighted round-robin (the nginx algorithm): each backend appears
/// as often as its weight, and picks are interleaved, so a 90/10 split sends the canary
/// every tenth request rather than ten in a row.
fn schedule(weights: &[u32]) -> Vec<u16> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 || weights.len() > usize::from(u16::MAX) {
        return Vec::new();
    }
    let weights: Vec<i64> = if total > u64::from(MAX_SCHEDULE) {
        weights
            .iter()
            .map(|w| (u64::from(*w) * u64::from(MAX_SCHEDULE) / total) as i64)
            .collect()
    } else {
        weights.iter().map(|w| i64::from(*w)).collect()
    };
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("at least one backend");
        current[best] -= total;
        order.push(best as u16);
    }
    order
}

/// An immutable routing table.
#[derive(Clone, Default)]
pub struct RouteTable {
    /// Routes bound to a host, by host; each list longest prefix first.
    hosted: HashMap<String, Vec<(RoutePrefix, Arc<Target>)>>,
    /// Routes for any host, longest prefix first.
    any_host: Vec<(RoutePrefix, Arc<Target>)>,
}

impl RouteTable {
    /// Builds a table; when two entries share a route the later one wins (manifests and
    /// the control store refuse such conflicts, so this only matters to programmatic
    /// callers).
    pub fn new(entries: impl IntoIterator<Item = (RoutePrefix, Arc<Target>)>) -> Self {
        let mut table = RouteTable::default();
        for (prefix, target) in entries {
            match prefix.host() {
                Some(host) => table
                    .hosted
                    .entry(host.to_string())
                    .or_default()
                    .push((prefix, target)),
                None => table.any_host.push((prefix, target)),
            }
        }
        for list in table.hosted.values_mut().chain([&mut table.any_host]) {
            list.reverse();
            // A stable sort keeps later duplicates first among equals.
            list.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.path().len()));
            list.dedup_by(|b, a| a.0 == b.0);
        }
        table
    }

    /// The target answering `path` (without query) for `host` (lowercase, without port):
    /// the longest route bound to that host, else the longest route for any host.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Target>> {
        let hosted = host.and_then(|h| self.hosted.get(h)).into_iter().flatten();
        hosted
            .chain(&self.any_host)
            .find(|(prefix, _)| prefix.matches(path))
            .map(|(_, target)| target)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&RoutePrefix, &Arc<Target>)> {
        self.hosted
            .values()
            .flatten()
            .chain(&self.any_host)
            .map(|(p, t)| (p, t))
    }

    pub fn is_empty(&self) -> bool {
        self.hosted.is_empty() && self.any_host.is_empty()
    }
}

/// A shared, swappable handle to the current routing table. Swapping never blocks or
/// fails requests: those in flight finish with the table they started with.
#[derive(Clone, Default)]
pub struct Routes(Arc<ArcSwap<RouteTable>>);

impl Routes {
    pub fn new(table: RouteTable) -> Self {
        Routes(Arc::new(ArcSwap::from_pointee(table)))
    }

    pub fn current(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    pub fn swap(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::schedule;

    #[test]
    fn schedule_honours_weights_exactly() {
        let order = schedule(&[90, 10]);
        assert_eq!(order.len(), 100);
        assert_eq!(order.iter().filter(|i| **i == 1).count(), 10);
        let order = schedule(&[1, 0, 2]);
        assert_eq!(order.iter().filter(|i| **i == 1).count(), 0);
        assert_eq!(order.iter().filter(|i| **i == 2).count(), 2);
        assert!(schedule(&[0, 0]).is_empty());
    }

    #[test]
    fn a_ten_percent_canary_is_interleaved() {
        let order = schedule(&[90, 10]);
        let canary: Vec<usize> = (0..100).filter(|i| order[*i] == 1).collect();
        // Evenly spaced: every tenth request.
        assert!(canary.windows(2).all(|w| w[1] - w[0] == 10), "{canary:?}");
    }
}
