//! What a node tells its operator: Prometheus metrics of every service revision (requests,
//! latency, rejections, faults, cold starts, memory) and a bounded ring of recent log lines
//! per service (guest output and platform events) that can be read back or followed live.
//!
//! One [`Telemetry`] is shared by the gateway, the node and the control API; it is cheap to
//! clone. The request hooks are on the hot path of every request, so they take a read lock
//! and bump atomics, and allocate only the first time a series is seen.

mod logs;
mod metrics;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tessera_runtime::{GuestLogSink, GuestStream};

pub use logs::{LogEntry, LogStream};
pub use metrics::{CONTENT_TYPE, InFlight, Queued, ServiceLabels};

/// How much the log store keeps.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// Lines kept per (app, service); older ones are dropped first.
    pub log_lines_per_service: usize,
    /// Longer lines are cut to this many bytes (at a character boundary).
    pub max_line_bytes: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_lines_per_service: 5000,
            max_line_bytes: 8192,
        }
    }
}

/// Metrics and logs of one node. Clones share everything.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Arc<metrics::Metrics>,
    logs: logs::Logs,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new(TelemetryConfig::default())
    }
}

impl Telemetry {
    pub fn new(config: TelemetryConfig) -> Telemetry {
        Telemetry {
            inner: Arc::new(Inner {
                metrics: Arc::new(metrics::Metrics::new()),
                logs: logs::Logs::new(config),
            }),
        }
    }

    /// A request reached a service revision: the in-flight gauge counts it until the
    /// returned guard is dropped.
    pub fn request_started(&self, labels: &ServiceLabels) -> InFlight {
        self.inner.metrics.request_started(labels)
    }

    /// A request was answered with `status` after `elapsed`: counted by status class
    /// (`tessera_requests_total{class}`) and timed (`tessera_request_duration_seconds`).
    pub fn request_finished(&self, labels: &ServiceLabels, status: u16, elapsed: Duration) {
        self.inner.metrics.request_finished(labels, status, elapsed);
    }

    /// A request waits for an instance: the queued gauge counts it until the guard drops.
    pub fn queued(&self, labels: &ServiceLabels) -> Queued {
        self.inner.metrics.queued(labels)
    }

    /// A request was refused before reaching the guest (`tessera_rejected_total{reason}`):
    /// `concurrency`, `queue_timeout`, `capacity`, `circuit_open`, `loop`, ...
    pub fn rejected(&self, labels: &ServiceLabels, reason: &'static str) {
        self.inner.metrics.rejected(labels, reason);
    }

    /// A guest failed a request (`tessera_faults_total{kind}`): `trap`, `timeout`,
    /// `memory_limit`, `no_response`, `guest_error`, `internal`, ...
    pub fn fault(&self, labels: &ServiceLabels, kind: &'static str) {
        self.inner.metrics.fault(labels, kind);
    }

    /// A revision's code was made ready to serve (`tessera_cold_starts_total{source}` and
    /// `tessera_cold_start_seconds`); `source` is `cache` or `compiled`.
    pub fn cold_start(&self, labels: &ServiceLabels, elapsed: Duration, source: &'static str) {
        self.inner.metrics.cold_start(labels, elapsed, source);
    }

    /// Whether a revision's code is loaded (`tessera_service_loaded`, 0 or 1).
    pub fn set_loaded(&self, labels: &ServiceLabels, loaded: bool) {
        self.inner.metrics.set_loaded(labels, loaded);
    }

    /// What the runtime tells about one revision's instances
    /// (`tessera_instances_created_total`, `tessera_instances_reused_total`,
    /// `tessera_instances_dropped_total{reason}`, `tessera_instance_requests`).
    pub fn instance_observer(&self, labels: &ServiceLabels) -> tessera_runtime::Observer {
        tessera_runtime::Observer(Some(Arc::new(self.inner.metrics.instances(labels))))
    }

    /// Peak memory of the revision's last instance (`tessera_instance_memory_bytes`).
    pub fn set_instance_memory(&self, labels: &ServiceLabels, bytes: u64) {
        self.inner.metrics.set_instance_memory(labels, bytes);
    }

    /// Memory taken by loaded code across the node, and the budget it must fit in
    /// (`tessera_code_memory_bytes`, `tessera_code_memory_budget_bytes`).
    pub fn set_code_memory(&self, used: u64, budget: u64) {
        self.inner.metrics.set_code_memory(used, budget);
    }

    /// A lookup in the compiled-code cache (`tessera_compile_cache_total{result}`).
    pub fn compile_cache(&self, hit: bool) {
        self.inner.metrics.compile_cache(hit);
    }

    /// Current depth of one event subscription (`tessera_event_ready`,
    /// `tessera_event_in_flight`, `tessera_event_dead`).
    pub fn event_stats(&self, subscription: &str, ready: u64, in_flight: u64, dead: u64) {
        self.inner
            .metrics
            .event_stats(subscription, ready, in_flight, dead);
    }

    /// Drops every series of a revision that no longer exists. Best effort: a request
    /// still finishing on it creates its series again.
    pub fn forget(&self, labels: &ServiceLabels) {
        self.inner.metrics.forget(labels);
    }

    /// Every metric in the OpenMetrics text format (serve it as [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        self.inner.metrics.render()
    }

    /// Stores one log line of a service and hands it to its followers.
    pub fn log(
        &self,
        app: &str,
        service: &str,
        stream: LogStream,
        request_id: Option<&str>,
        line: &str,
    ) {
        self.inner.logs.log(app, service, stream, request_id, line);
    }

    /// The newest `limit` stored lines of a service written at or after `since`, oldest
    /// first.
    pub fn logs(
        &self,
        app: &str,
        service: &str,
        since: Option<SystemTime>,
        limit: usize,
    ) -> Vec<LogEntry> {
        self.inner.logs.logs(app, service, since, limit)
    }

    /// Every line of a service logged from now on. A follower that falls behind misses
    /// lines (it receives `Lagged`) rather than slowing down the services writing them.
    pub fn follow(&self, app: &str, service: &str) -> tokio::sync::broadcast::Receiver<LogEntry> {
        self.inner.logs.follow(app, service)
    }

    /// Ends every follower, now and from now on (lines are still stored): a node shutting
    /// down calls it so that open `follow` streams finish and connections can drain.
    pub fn close_followers(&self) {
        self.inner.logs.close_followers();
    }

    /// A [`GuestLogSink`] that stores guest lines here and passes them on to `inner`
    /// (the terminal printer, for instance).
    pub fn guest_sink(&self, inner: Option<Arc<dyn GuestLogSink>>) -> Arc<dyn GuestLogSink> {
        Arc::new(GuestSink {
            telemetry: self.clone(),
            inner,
        })
    }
}

struct GuestSink {
    telemetry: Telemetry,
    inner: Option<Arc<dyn GuestLogSink>>,
}

impl GuestLogSink for GuestSink {
    fn line(&self, app: &str, service: &str, request_id: &str, stream: GuestStream, line: &str) {
        let log_stream = match stream {
            GuestStream::Stdout => LogStream::Stdout,
            GuestStream::Stderr => LogStream::Stderr,
        };
        let id = (!request_id.is_empty()).then_some(request_id);
        self.telemetry.log(app, service, log_stream, id, line);
        if let Some(inner) = &self.inner {
            inner.line(app, service, request_id, stream, line);
        }
    }
}

#[cfg(test)]
mod tests;
