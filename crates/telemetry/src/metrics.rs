//! The node's Prometheus metrics, kept with `prometheus-client` and rendered in the
//! OpenMetrics text format.
//!
//! Per-request hooks go through a small cache of each revision's handles (`Series`), so a
//! request costs one read-locked hash lookup and a few atomic operations; label sets are
//! cloned only when a series is created.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`crate::Telemetry::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Identifies one revision of one service in every per-service metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub app: String,
    pub service: String,
    /// `r7`, or `-` for a service that is not versioned.
    pub revision: String,
}

impl ServiceLabels {
    pub fn new(app: &str, service: &str, revision: Option<u32>) -> Self {
        ServiceLabels {
            app: app.to_string(),
            service: service.to_string(),
            revision: revision.map_or_else(|| "-".to_string(), |r| format!("r{r}")),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    subscription: String,
}

/// A service's labels plus one more: `class`, `reason`, `kind` or `source`.
type DetailLabels = (ServiceLabels, [(&'static str, &'static str); 1]);
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Status classes, indexed by [`class_index`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: u16) -> usize {
    match status {
        0..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// From half a millisecond (a small guest answering from memory) to a minute.
fn request_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ])
}

/// From 100 µs (code mapped from the cache) to 10 s (a large component compiled).
fn cold_start_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ])
}

/// Requests one instance served: 1 (a fresh instance per request) up to thousands.
fn instance_requests_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
    ])
}

/// The counters that carry a detail label.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Detail {
    Rejected,
    Fault,
    ColdStart,
    Dropped,
}

impl Detail {
    fn key(self) -> &'static str {
        match self {
            Detail::Rejected => "reason",
            Detail::Fault => "kind",
            Detail::ColdStart => "source",
            Detail::Dropped => "reason",
        }
    }
}

/// One revision's handles into the families, so the hot path skips building label sets.
struct Series {
    in_flight: Gauge,
    queued: Gauge,
    duration: Histogram,
    classes: [OnceLock<Counter>; 5],
    /// Counters with a detail label; a few distinct values each, so a list will do.
    details: Mutex<Vec<(Detail, &'static str, Counter)>>,
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<DetailLabels, Counter>,
    durations: HistogramFamily<ServiceLabels>,
    in_flight: Family<ServiceLabels, Gauge>,
    queued: Family<ServiceLabels, Gauge>,
    rejected: Family<DetailLabels, Counter>,
    faults: Family<DetailLabels, Counter>,
    cold_starts: Family<DetailLabels, Counter>,
    cold_start_seconds: HistogramFamily<ServiceLabels>,
    loaded: Family<ServiceLabels, Gauge>,
    instance_memory: Family<ServiceLabels, Gauge>,
    instances_created: Family<ServiceLabels, Counter>,
    instances_reused: Family<ServiceLabels, Counter>,
    instances_dropped: Family<DetailLabels, Counter>,
    instance_requests: HistogramFamily<ServiceLabels>,
    code_memory: Gauge,
    code_memory_budget: Gauge,
    compile_hits: Counter,
    compile_misses: Counter,
    event_ready: Family<SubscriptionLabels, Gauge>,
    event_in_flight: Family<SubscriptionLabels, Gauge>,
    event_dead: Family<SubscriptionLabels, Gauge>,
    series: RwLock<HashMap<ServiceLabels, Arc<Series>>>,
    /// Whether each revision with instance observers is still reported: cleared by
    /// `forget`, so instances dropped later do not bring its series back.
    observed: Mutex<HashMap<ServiceLabels, Arc<AtomicBool>>>,
}

/// Keeps a service's in-flight gauge raised while it lives.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Keeps a service's queued gauge raised while it lives.
#[derive(Debug)]
pub struct Queued(Gauge);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn gauge_value(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl Metrics {
    // Long because it registers every metric family with its help text, one after the
    // other: a list, not logic.
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<DetailLabels, Counter>::default();
        registry.register(
            "tessera_requests",
            "Requests answered, by service revision and status class",
            requests.clone(),
        );
        let durations: HistogramFamily<ServiceLabels> =
            Family::new_with_constructor(request_histogram);
        registry.register_with_unit(
            "tessera_request_duration",
            "Time from routing a request to the end of its response head",
            Unit::Seconds,
            durations.clone(),
        );
        let in_flight = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tessera_requests_in_flight",
            "Requests being served",
            in_flight.clone(),
        );
        let queued = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tessera_requests_queued",
            "Requests waiting for an instance",
            queued.clone(),
        );
        let rejected = Family::<DetailLabels, Counter>::default();
        registry.register(
            "tessera_rejected",
            "Requests refused before reaching the guest, by reason",
            rejected.clone(),
        );
        let faults = Family::<DetailLabels, Counter>::default();
        registry.register(
            "tessera_faults",
            "Requests the guest failed, by kind",
            faults.clone(),
        );
        let cold_starts = Family::<DetailLabels, Counter>::default();
        registry.register(
            "tessera_cold_starts",
            "Revisions made ready to serve, by where their code came from",
            cold_starts.clone(),
        );
        let cold_start_seconds: HistogramFamily<ServiceLabels> =
            Family::new_with_constructor(cold_start_histogram);
        registry.register_with_unit(
            "tessera_cold_start",
            "Time to make a revision ready to serve",
            Unit::Seconds,
            cold_start_seconds.clone(),
        );
        let loaded = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tessera_service_loaded",
            "Whether a revision's code is loaded (1) or not (0)",
            loaded.clone(),
        );
        let instance_memory = Family::<ServiceLabels, Gauge>::default();
        registry.register_with_unit(
            "tessera_instance_memory",
            "Peak memory of the revision's last instance",
            Unit::Bytes,
            instance_memory.clone(),
        );
        let instances_created = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "tessera_instances_created",
            "Instances made to serve requests",
            instances_created.clone(),
        );
        let instances_reused = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "tessera_instances_reused",
            "Requests given an instance that had served before",
            instances_reused.clone(),
        );
        let instances_dropped = Family::<DetailLabels, Counter>::default();
        registry.register(
            "tessera_instances_dropped",
            "Instances dropped, by reason (done, idle, trap, timeout, memory, unloaded, abandoned, failed)",
            instances_dropped.clone(),
        );
        let instance_requests: HistogramFamily<ServiceLabels> =
            Family::new_with_constructor(instance_requests_histogram);
        registry.register(
            "tessera_instance_requests",
            "Requests each dropped instance served",
            instance_requests.clone(),
        );
        let code_memory = Gauge::default();
        registry.register_with_unit(
            "tessera_code_memory",
            "Memory taken by loaded code across the node",
            Unit::Bytes,
            code_memory.clone(),
        );
        let code_memory_budget = Gauge::default();
        registry.register_with_unit(
            "tessera_code_memory_budget",
            "Memory loaded code may take across the node",
            Unit::Bytes,
            code_memory_budget.clone(),
        );
        let compile_cache = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "tessera_compile_cache",
            "Lookups in the compiled-code cache, by result",
            compile_cache.clone(),
        );
        // Both series exist from the start, so a rate over them is defined at once.
        let compile_hits = compile_cache.get_or_create_owned(&[("result", "hit")]);
        let compile_misses = compile_cache.get_or_create_owned(&[("result", "miss")]);
        let event_ready = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "tessera_event_ready",
            "Messages of a subscription waiting for delivery",
            event_ready.clone(),
        );
        let event_in_flight = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "tessera_event_in_flight",
            "Messages of a subscription being delivered",
            event_in_flight.clone(),
        );
        let event_dead = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "tessera_event_dead",
            "Dead letters of a subscription",
            event_dead.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            in_flight,
            queued,
            rejected,
            faults,
            cold_starts,
            cold_start_seconds,
            loaded,
            instance_memory,
            instances_created,
            instances_reused,
            instances_dropped,
            instance_requests,
            code_memory,
            code_memory_budget,
            compile_hits,
            compile_misses,
            event_ready,
            event_in_flight,
            event_dead,
            series: RwLock::new(HashMap::new()),
            observed: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` on the revision's handles, created on first use. The common case holds
    /// only the read lock, and only for the few atomic operations `f` does.
    fn with_series<R>(&self, labels: &ServiceLabels, f: impl FnOnce(&Series) -> R) -> R {
        if let Some(series) = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(labels)
        {
            return f(series);
        }
        let series = self
            .series
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(labels.clone())
            .or_insert_with(|| {
                Arc::new(Series {
                    in_flight: self.in_flight.get_or_create_owned(labels),
                    queued: self.queued.get_or_create_owned(labels),
                    duration: self.durations.get_or_create_owned(labels),
                    classes: Default::default(),
                    details: Mutex::new(Vec::new()),
                })
            })
            .clone();
        f(&series)
    }

    fn detail_family(&self, detail: Detail) -> &Family<DetailLabels, Counter> {
        match detail {
            Detail::Rejected => &self.rejected,
            Detail::Fault => &self.faults,
            Detail::ColdStart => &self.cold_starts,
            Detail::Dropped => &self.instances_dropped,
        }
    }

    fn count_detail(&self, labels: &ServiceLabels, detail: Detail, value: &'static str) {
        self.with_series(labels, |series| {
            let mut details = series.details.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, _, counter)) =
                details.iter().find(|(d, v, _)| *d == detail && *v == value)
            {
                counter.inc();
                return;
            }
            let counter = self
                .detail_family(detail)
                .get_or_create_owned(&(labels.clone(), [(detail.key(), value)]));
            counter.inc();
            details.push((detail, value, counter));
        });
    }

    pub(crate) fn request_started(&self, labels: &ServiceLabels) -> InFlight {
        let gauge = self.with_series(labels, |series| series.in_flight.clone());
        gauge.inc();
        InFlight(gauge)
    }

    pub(crate) fn request_finished(&self, labels: &ServiceLabels, status: u16, elapsed: Duration) {
        let class = class_index(status);
        self.with_series(labels, |series| {
            series.classes[class]
                .get_or_init(|| {
                    self.requests
                        .get_or_create_owned(&(labels.clone(), [("class", CLASSES[class])]))
                })
                .inc();
            series.duration.observe(elapsed.as_secs_f64());
        });
    }

    pub(crate) fn queued(&self, labels: &ServiceLabels) -> Queued {
        let gauge = self.with_series(labels, |series| series.queued.clone());
        gauge.inc();
        Queued(gauge)
    }

    pub(crate) fn rejected(&self, labels: &ServiceLabels, reason: &'static str) {
        self.count_detail(labels, Detail::Rejected, reason);
    }

    pub(crate) fn fault(&self, labels: &ServiceLabels, kind: &'static str) {
        self.count_detail(labels, Detail::Fault, kind);
    }

    pub(crate) fn cold_start(
        &self,
        labels: &ServiceLabels,
        elapsed: Duration,
        source: &'static str,
    ) {
        self.count_detail(labels, Detail::ColdStart, source);
        self.cold_start_seconds
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn set_loaded(&self, labels: &ServiceLabels, loaded: bool) {
        self.loaded.get_or_create(labels).set(i64::from(loaded));
    }

    pub(crate) fn set_instance_memory(&self, labels: &ServiceLabels, bytes: u64) {
        self.instance_memory
            .get_or_create(labels)
            .set(gauge_value(bytes));
    }

    pub(crate) fn set_code_memory(&self, used: u64, budget: u64) {
        self.code_memory.set(gauge_value(used));
        self.code_memory_budget.set(gauge_value(budget));
    }

    pub(crate) fn compile_cache(&self, hit: bool) {
        if hit {
            self.compile_hits.inc();
        } else {
            self.compile_misses.inc();
        }
    }

    pub(crate) fn event_stats(&self, subscription: &str, ready: u64, in_flight: u64, dead: u64) {
        let labels = SubscriptionLabels {
            subscription: subscription.to_string(),
        };
        self.event_ready
            .get_or_create(&labels)
            .set(gauge_value(ready));
        self.event_in_flight
            .get_or_create(&labels)
            .set(gauge_value(in_flight));
        self.event_dead
            .get_or_create(&labels)
            .set(gauge_value(dead));
    }

    pub(crate) fn forget(&self, labels: &ServiceLabels) {
        let series = self
            .series
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(labels);
        self.in_flight.remove(labels);
        self.queued.remove(labels);
        self.durations.remove(labels);
        self.cold_start_seconds.remove(labels);
        self.loaded.remove(labels);
        self.instance_memory.remove(labels);
        self.instances_created.remove(labels);
        self.instances_reused.remove(labels);
        self.instance_requests.remove(labels);
        if let Some(live) = self
            .observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(labels)
        {
            live.store(false, Ordering::Release);
        }
        let Some(series) = series else { return };
        for (class, counter) in CLASSES.iter().zip(&series.classes) {
            if counter.get().is_some() {
                self.requests.remove(&(labels.clone(), [("class", class)]));
            }
        }
        let details = series.details.lock().unwrap_or_else(|e| e.into_inner());
        for (detail, value, _) in details.iter() {
            self.detail_family(*detail)
                .remove(&(labels.clone(), [(detail.key(), value)]));
        }
    }

    /// The handles one revision's instances report through.
    pub(crate) fn instances(self: &Arc<Self>, labels: &ServiceLabels) -> Instances {
        let live = self
            .observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(labels.clone())
            .or_insert_with(|| Arc::new(AtomicBool::new(true)))
            .clone();
        Instances {
            live,
            created: self.instances_created.get_or_create_owned(labels),
            reused: self.instances_reused.get_or_create_owned(labels),
            requests: self.instance_requests.get_or_create_owned(labels),
            metrics: self.clone(),
            labels: labels.clone(),
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail, and every metric here has classic buckets.
        encode(&mut text, &self.registry).expect("encoding metrics into a String");
        text
    }
}

/// One revision's instance metrics, reported to by the runtime as instances come and go.
pub(crate) struct Instances {
    /// False once the revision is forgotten.
    live: Arc<AtomicBool>,
    created: Counter,
    reused: Counter,
    requests: Histogram,
    metrics: Arc<Metrics>,
    labels: ServiceLabels,
}

impl tessera_runtime::InstanceObserver for Instances {
    fn created(&self) {
        self.created.inc();
    }

    fn reused(&self) {
        self.reused.inc();
    }

    fn dropped(&self, reason: tessera_runtime::DropReason, served: u32) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        self.requests.observe(f64::from(served));
        self.metrics
            .count_detail(&self.labels, Detail::Dropped, reason.as_str());
    }
}
