//! Recent log lines of every service: a bounded ring per (app, service) to read back, and
//! a broadcast channel per (app, service) for live followers.
//!
//! Writers never wait for readers: the ring drops its oldest line when full, and a
//! follower that falls behind the channel's buffer skips lines instead of holding anyone up.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde::{Serialize, Serializer};
use tokio::sync::broadcast;

use crate::TelemetryConfig;

/// Lines a follower may fall behind before it starts missing some.
const FOLLOW_BUFFER: usize = 1024;

/// Where a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
    /// The platform, about the service: loads, unloads, rejections.
    Platform,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Platform => "platform",
        }
    }
}

/// One stored line.
#[derive(Clone, Debug, Serialize)]
pub struct LogEntry {
    /// Increases with every line the node logs, across all services.
    pub seq: u64,
    /// When it was logged; RFC 3339 in JSON.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub app: String,
    pub service: String,
    pub stream: LogStream,
    /// The request being served when a guest wrote the line.
    pub request_id: Option<String>,
    pub line: String,
}

fn rfc3339<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*time))
}

type SharedLog = Arc<Mutex<ServiceLog>>;

struct ServiceLog {
    ring: VecDeque<LogEntry>,
    /// `None` once followers are closed: dropping the sender ends every follower.
    followers: Option<broadcast::Sender<LogEntry>>,
}

pub(crate) struct Logs {
    config: TelemetryConfig,
    last_seq: AtomicU64,
    closed: AtomicBool,
    /// app → service → its log; nested so a lookup by `&str` allocates nothing.
    services: RwLock<HashMap<String, HashMap<String, SharedLog>>>,
}

impl Logs {
    pub(crate) fn new(config: TelemetryConfig) -> Logs {
        Logs {
            config,
            last_seq: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            services: RwLock::new(HashMap::new()),
        }
    }

    fn existing(&self, app: &str, service: &str) -> Option<SharedLog> {
        self.services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .and_then(|services| services.get(service))
            .cloned()
    }

    fn service(&self, app: &str, service: &str) -> SharedLog {
        if let Some(log) = self.existing(app, service) {
            return log;
        }
        let mut all = self.services.write().unwrap_or_else(|e| e.into_inner());
        // Read under the write lock, so a log created now cannot miss `close_followers`.
        let closed = self.closed.load(Ordering::Relaxed);
        all.entry(app.to_string())
            .or_default()
            .entry(service.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(ServiceLog {
                    ring: VecDeque::new(),
                    followers: (!closed).then(|| broadcast::channel(FOLLOW_BUFFER).0),
                }))
            })
            .clone()
    }

    pub(crate) fn log(
        &self,
        app: &str,
        service: &str,
        stream: LogStream,
        request_id: Option<&str>,
        line: &str,
    ) {
        let line = truncate(line, self.config.max_line_bytes);
        let log = self.service(app, service);
        // The sequence number is taken under the log's lock so that the ring, and what
        // followers receive, are in sequence order.
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        let entry = LogEntry {
            seq: self.last_seq.fetch_add(1, Ordering::Relaxed) + 1,
            time: SystemTime::now(),
            app: app.to_string(),
            service: service.to_string(),
            stream,
            request_id: request_id.map(str::to_string),
            line: line.to_string(),
        };
        if let Some(followers) = &log.followers
            && followers.receiver_count() > 0
        {
            // Sending fails only when every follower has just gone: nothing to do then.
            let _ = followers.send(entry.clone());
        }
        let capacity = self.config.log_lines_per_service;
        while log.ring.len() >= capacity.max(1) {
            log.ring.pop_front();
        }
        if capacity > 0 {
            log.ring.push_back(entry);
        }
    }

    pub(crate) fn logs(
        &self,
        app: &str,
        service: &str,
        since: Option<SystemTime>,
        limit: usize,
    ) -> Vec<LogEntry> {
        let Some(log) = self.existing(app, service) else {
            return Vec::new();
        };
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        let mut newest: Vec<LogEntry> = log
            .ring
            .iter()
            .rev()
            .filter(|entry| since.is_none_or(|since| entry.time >= since))
            .take(limit)
            .cloned()
            .collect();
        newest.reverse();
        newest
    }

    pub(crate) fn follow(&self, app: &str, service: &str) -> broadcast::Receiver<LogEntry> {
        let log = self.service(app, service);
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        match &log.followers {
            Some(followers) => followers.subscribe(),
            // Closed: a receiver whose sender is already gone ends at once.
            None => broadcast::channel(1).1,
        }
    }

    pub(crate) fn close_followers(&self) {
        let all = self.services.write().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::Relaxed);
        for log in all.values().flat_map(HashMap::values) {
            log.lock().unwrap_or_else(|e| e.into_inner()).followers = None;
        }
    }
}

/// `line` cut to at most `max` bytes, at a character boundary.
fn truncate(line: &str, max: usize) -> &str {
    if line.len() <= max {
        line
    } else {
        &line[..line.floor_char_boundary(max)]
    }
}
