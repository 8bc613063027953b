//! The app manifest (`tessera.toml`): parsing with source positions, validation, and the
//! plain app model the rest of Tessera consumes.
//!
//! Parsing walks the span-carrying TOML tree by hand instead of deriving serde, so every
//! error can name the file, line, column and the full key path (`services.greeter.memory`)
//! a user has to fix.

mod parse;
mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use units::{parse_duration, parse_size};

/// File name of the manifest inside an app directory.
pub const MANIFEST_FILE: &str = "tessera.toml";

/// Default per-instance memory limit of a service.
pub const DEFAULT_MEMORY: u64 = 128 * 1024 * 1024;
/// Default per-request deadline of a service.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest memory limit a 32-bit guest can use.
pub const MAX_MEMORY: u64 = 4 * 1024 * 1024 * 1024;
/// Longest per-request deadline accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Default of `concurrency`: requests of one service running at once on a node.
pub const DEFAULT_SERVICE_CONCURRENCY: u32 = 100;
/// Default of `queue`: requests of one service waiting for a free slot.
pub const DEFAULT_QUEUE: u32 = 100;
/// Default of `queue_timeout`: longest wait in the queue.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `idle`: how long a service stays loaded without requests.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// Largest `concurrency` accepted.
pub const MAX_SERVICE_CONCURRENCY: u32 = 10_000;
/// Largest `queue` accepted.
pub const MAX_QUEUE: u32 = 100_000;
/// Longest `queue_timeout` accepted.
pub const MAX_QUEUE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Shortest `idle` accepted: the node looks for idle services once a second.
pub const MIN_IDLE: Duration = Duration::from_secs(1);
/// Longest `idle` accepted (`"never"` keeps a service loaded for good).
pub const MAX_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default of `async.rate`: async invocations of one service accepted per second.
pub const DEFAULT_ASYNC_RATE: u32 = 100;
/// Largest `async.rate` accepted.
pub const MAX_ASYNC_RATE: u32 = 100_000;
/// Default of `async.stored`: bytes one service's queued (not yet finished) invocations
/// may hold on a node.
pub const DEFAULT_ASYNC_STORED: u64 = 64 * 1024 * 1024;
/// Bounds of `async.stored`: at least one largest async body, at most 64 GiB.
pub const MIN_ASYNC_STORED: u64 = 1024 * 1024;
pub const MAX_ASYNC_STORED: u64 = 64 * 1024 * 1024 * 1024;

/// A validated app manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest file this was read from.
    pub path: PathBuf,
    /// The app's name.
    pub app: String,
    /// The host name every route of the app is bound to, if the manifest gives one.
    pub host: Option<String>,
    /// The services, sorted by name.
    pub services: Vec<ServiceSpec>,
    /// Named environments (`[environments.NAME.SERVICE]`): per-service configuration
    /// values that replace or add to `[services.SERVICE.config]` when the app is deployed
    /// with that environment selected.
    pub environments: Environments,
}

/// Environment name → service name → configuration overrides.
pub type Environments = BTreeMap<String, BTreeMap<String, Vec<(String, String)>>>;

impl Manifest {
    /// The configuration a service sees: its `config` table with the overrides of the
    /// chosen environment applied, sorted by key.
    pub fn config_for(
        &self,
        service: &ServiceSpec,
        environment: Option<&str>,
    ) -> Result<Vec<(String, String)>, String> {
        let mut config: BTreeMap<String, String> = service.config.iter().cloned().collect();
        if let Some(name) = environment {
            let Some(overrides) = self.environments.get(name) else {
                let known: Vec<&str> = self.environments.keys().map(String::as_str).collect();
                return Err(if known.is_empty() {
                    format!(
                        "environment `{name}` is not declared: {} has no [environments] table",
                        self.path.display()
                    )
                } else {
                    format!(
                        "environment `{name}` is not declared in {}; declared: {}",
                        self.path.display(),
                        known.join(", ")
                    )
                });
            };
            if let Some(values) = overrides.get(&service.name) {
                config.extend(values.iter().cloned());
            }
        }
        Ok(config.into_iter().collect())
    }
}

/// One service as the manifest declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    /// Path of the component file, resolved against the manifest's directory.
    pub component: PathBuf,
    /// Path prefixes this service answers.
    pub routes: Vec<RoutePrefix>,
    pub limits: Limits,
    /// How many requests may run and wait, and when the service is unloaded.
    pub scaling: Scaling,
    /// Origins the service may call through `wasi:http/outgoing-handler`.
    pub outbound: Vec<Origin>,
    /// Origins an async invocation's `x-tessera-callback` may name; none unless listed.
    pub callbacks: Vec<Origin>,
    /// Environment variables granted to the guest; none unless listed.
    pub env: Vec<(String, String)>,
    /// Configuration values served through `wasi:config/store`, sorted by key.
    pub config: Vec<(String, String)>,
    /// Key-value buckets the service may open besides `default`.
    pub buckets: Vec<String>,
    /// SQL files applied once each, in this order, to the service's database at deploy.
    pub migrations: Vec<PathBuf>,
    /// Schedules (`[[services.NAME.cron]]`) whose ticks are delivered to a route.
    pub cron: Vec<CronTrigger>,
    /// Topics (`[[services.NAME.subscribe]]`) whose messages are delivered to a route.
    pub subscribe: Vec<Subscription>,
    /// How `tessera build` makes the component from its sources (`[services.NAME.build]`).
    pub build: Option<BuildSpec>,
}

/// A service's build: a shell command that writes the component, and the sources it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// Run with `sh -c` in `workdir`.
    pub command: String,
    /// Where the command runs, resolved against the manifest's directory (default: that
    /// directory itself).
    pub workdir: PathBuf,
    /// Globs of the sources, relative to `workdir` (`*`, `?`, and `**` for any depth). When
    /// none of the matched files changed, the build is skipped; without any, it always runs.
    pub watch: Vec<String>,
}

/// A schedule: each tick is POSTed to `path` as a CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronTrigger {
    /// Five-field cron (UTC) or `@every 30s` style; checked by the events crate.
    pub schedule: String,
    pub path: String,
    /// What to do about ticks missed while the node was down.
    pub missed: MissedTicks,
}

/// Ticks missed while the node was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissedTicks {
    /// Forget them; wait for the next tick.
    #[default]
    Skip,
    /// Fire one tick at once for all that were missed.
    RunOnce,
}

/// A subscription of a service to a topic of its app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub topic: String,
    /// The route each message is POSTed to.
    pub path: String,
    /// Work sharing: every service subscribing to the topic with the same queue name
    /// shares its messages (each goes to one of them); without one, the service gets
    /// every message.
    pub queue: Option<String>,
    /// Attempts before the message goes to the dead-letter queue.
    pub max_attempts: u32,
    /// First retry delay; it doubles with each failed attempt, with jitter.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Most deliveries of this subscription in flight at once.
    pub concurrency: u32,
    /// Most deliveries fetched from the journal at once.
    pub batch: u32,
}

/// Defaults of a subscription's delivery settings.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
pub const DEFAULT_CONCURRENCY: u32 = 16;
pub const DEFAULT_BATCH: u32 = 64;

/// Per-service resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum linear memory of one instance, in bytes.
    pub memory: u64,
    /// Deadline of one request, from arrival to the end of the guest's work.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: DEFAULT_MEMORY,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Admission control and scale-to-zero of one service on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaling {
    /// Requests of the service running at once, across its revisions.
    pub concurrency: u32,
    /// Requests waiting for one of those slots (first come, first served); one more is
    /// refused at once with `429`.
    pub queue: u32,
    /// Longest wait in the queue, after which the request is answered `503`.
    pub queue_timeout: Duration,
    /// How long the service stays loaded without requests; `None` (`"never"`) keeps it
    /// loaded until the node's memory budget needs the room.
    pub idle: Option<Duration>,
    /// Async invocations accepted per second (`[services.NAME.async] rate`); a burst of
    /// one second's worth is allowed, more are answered `503` with `Retry-After`.
    pub async_rate: u32,
    /// Bytes the service's queued async invocations may hold
    /// (`[services.NAME.async] stored`); past it async requests are answered `507`.
    pub async_stored: u64,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            concurrency: DEFAULT_SERVICE_CONCURRENCY,
            queue: DEFAULT_QUEUE,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            idle: Some(DEFAULT_IDLE),
            async_rate: DEFAULT_ASYNC_RATE,
            async_stored: DEFAULT_ASYNC_STORED,
        }
    }
}

/// A route: an optional host name and a path prefix. The prefix matches itself and
/// everything below it on a segment boundary (`/hello` matches `/hello` and `/hello/x`,
/// not `/helloworld`). Written `/hello` (any host) or `shop.localhost/hello` (only
/// requests for that host).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutePrefix {
    text: String,
    /// Byte offset where the path starts in `text` (0 when there is no host).
    path_start: usize,
}

impl RoutePrefix {
    /// Checks the shape of a route: an optional lowercase host name, then a path that
    /// starts with `/`, has no trailing `/` (except the root), and no query, fragment,
    /// empty segment or whitespace.
    pub fn new(route: &str) -> Result<Self, String> {
        let path_start = if route.starts_with('/') {
            0
        } else {
            let host = route.split('/').next().unwrap_or_default();
            check_host(host).map_err(|m| format!("route `{route}`: {m}"))?;
            host.len()
        };
        let text = if path_start == route.len() {
            // `shop.localhost` alone means the whole host.
            format!("{route}/")
        } else {
            route.to_string()
        };
        let prefix = &text[path_start..];
        if !prefix.starts_with('/') {
            return Err(format!(
                "route `{route}` must be a path starting with `/`, optionally after a host name"
            ));
        }
        if prefix.len() > 1 && prefix.ends_with('/') {
            return Err(format!(
                "route `{route}` must not end with `/` (a prefix already matches everything below it)"
            ));
        }
        if prefix.contains("//") {
            return Err(format!("route `{route}` has an empty path segment"));
        }
        if let Some(c) = prefix
            .chars()
            .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
        {
            return Err(format!("route `{route}` must not contain {c:?}"));
        }
        Ok(RoutePrefix { text, path_start })
    }

    /// The route as written (normalised: a bare host gets its `/`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The host this route is bound to, if any.
    pub fn host(&self) -> Option<&str> {
        (self.path_start > 0).then(|| &self.text[..self.path_start])
    }

    /// The path prefix.
    pub fn path(&self) -> &str {
        &self.text[self.path_start..]
    }

    /// The same path bound to `host`.
    pub fn with_host(&self, host: &str) -> Result<Self, String> {
        RoutePrefix::new(&format!("{host}{}", self.path()))
    }

    /// Whether `path` (without query) falls under this prefix; the host is matched by
    /// the router, not here.
    pub fn matches(&self, path: &str) -> bool {
        let prefix = self.path();
        if prefix == "/" {
            return path.starts_with('/');
        }
        match path.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

impl std::fmt::Display for RoutePrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Names of apps and services become DNS labels (`<service>.internal`), so they follow
/// the label rules: lowercase letters, digits and `-`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid name `{name}`: use 1-63 lowercase letters, digits and `-`, starting with a letter"
        ))
    }
}

/// Configuration keys and secret names: 1-128 ASCII letters, digits, `_`, `-` and `.`,
/// the characters every backend and every language's config conventions accept.
pub fn check_config_key(key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid key `{key}`: use 1-128 ASCII letters, digits, `_`, `-` and `.`"
        ))
    }
}

/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;

/// Topic names: letters, digits, `.`, `-` and `_`, with no empty `.`-separated part —
/// what both the embedded journal and NATS subjects accept.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "topic must be 1-{MAX_TOPIC_BYTES} bytes long, not {}",
            topic.len()
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "topic `{topic}` has the character {c:?}; use letters, digits, `.`, `-` and `_`"
        ));
    }
    if topic.starts_with('.') || topic.ends_with('.') || topic.contains("..") {
        return Err(format!("topic `{topic}` has an empty `.`-separated part"));
    }
    Ok(())
}

/// Checks a cron schedule (five fields, UTC, or `@every 30s`, `@hourly` ...).
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    tessera_events::Schedule::parse(schedule).map(|_| ())
}

/// Host names in routes: lowercase DNS names (letters, digits, `-`, `.`), no port.
/// Checks a `watch` glob: relative, inside the work directory, `**` only as a whole segment.
pub fn check_glob(glob: &str) -> Result<(), String> {
    if glob.trim().is_empty() {
        return Err("a watch glob is empty".to_string());
    }
    if glob.starts_with('/') || glob.contains('\\') {
        return Err(format!(
            "`{glob}` must be a relative path with `/` separators"
        ));
    }
    for segment in glob.split('/') {
        if segment == ".." {
            return Err(format!("`{glob}` leaves the work directory"));
        }
        if segment.contains("**") && segment != "**" {
            return Err(format!(
                "`{glob}`: `**` must be a whole path segment, as in `src/**/*.py`"
            ));
        }
    }
    Ok(())
}

pub fn check_host(host: &str) -> Result<(), String> {
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{host}` is not a host name (lowercase letters, digits, `-` and `.`, no port)"
        ))
    }
}

/// An origin a service may call: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: Scheme,
    /// Lowercased host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Origin {
    /// Parses `http://host[:port]` or `https://host[:port]`, optionally with a trailing `/`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(format!(
                "origin `{text}` must start with `http://` or `https://`"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(format!("origin `{text}` has no host"));
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "origin `{text}` must be scheme, host and port only (no path, query or user)"
            ));
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = split_host_port(rest)
            .ok_or_else(|| format!("origin `{text}` has an invalid host or port"))?;
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(default_port),
        })
    }

    /// Whether a request to `scheme://host:port` is covered by this origin.
    pub fn allows(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        self.scheme == scheme && self.port == port && self.host.eq_ignore_ascii_case(host)
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Splits `host[:port]` (IPv6 in brackets) into its parts.
pub fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !host_ok {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host, port))
}

/// What went wrong reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {}{message}", file.display(), key_prefix(key))]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        /// Dotted key path of the offending entry; empty for syntax errors.
        key: String,
        message: String,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("`{key}`: ")
    }
}

/// Reads and validates the manifest at `path` (a file, or a directory holding
/// `tessera.toml`).
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let file = if path.is_dir() {
        path.join(MANIFEST_FILE)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
        path: file.clone(),
        source,
    })?;
    parse(&text, &file)
}

/// Validates manifest text; `file` names it in errors and anchors relative paths.
pub fn parse(text: &str, file: &Path) -> Result<Manifest, ManifestError> {
    parse::parse(text, file)
}

#[cfg(test)]
mod tests;
