//! The one JSON form of a revision's settings: flat, durations in milliseconds, defaults
//! for every key added after the first release. The REST API carries it (with a
//! service's name, digest and migrations beside it) and the control state stores it
//! (with the names of the migrations that ran); neither has a form of its own.
//!
//! Reading it ([`RevisionJson::into_config`]) parses the typed values (routes, origins)
//! but does not check bounds: stored revisions are read back as they were accepted, and
//! an edge that takes new input calls [`RevisionConfig::validate`] itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::names::{Origin, RoutePrefix};
use crate::revision::{
    CronTrigger, Invalid, Limits, MissedTicks, Reuse, RevisionConfig, Scaling, Subscription,
};

/// A revision's settings as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionJson {
    pub routes: Vec<String>,
    pub memory: u64,
    pub timeout_ms: u64,
    #[serde(default)]
    pub outbound: Vec<String>,
    /// Origins an async invocation's callback may go to.
    #[serde(default)]
    pub callbacks: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Configuration served through `wasi:config/store`.
    #[serde(default)]
    pub config: Vec<(String, String)>,
    /// Key-value buckets besides `default`.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// Schedules whose ticks are POSTed to a route.
    #[serde(default)]
    pub cron: Vec<CronJson>,
    /// Topics whose messages are POSTed to a route. The control store keeps this key
    /// under its older name, `subscriptions` (see [`STORED_SUBSCRIPTIONS`]).
    #[serde(default, alias = "subscriptions")]
    pub subscribe: Vec<SubscriptionJson>,
    /// Requests of the service running at once on the node (default 100).
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u32,
    /// Requests waiting for a slot beyond those; more are answered 429 (default 100).
    #[serde(default = "defaults::queue")]
    pub queue: u32,
    /// Longest wait in the queue before a 503 (default 10 s).
    #[serde(default = "defaults::queue_timeout_ms")]
    pub queue_timeout_ms: u64,
    /// Unload a revision after this long without requests (default 5 min); `null`: never.
    #[serde(default = "defaults::idle_ms")]
    pub idle_ms: Option<u64>,
    /// Async invocations accepted per second (default 100); more are answered 503.
    #[serde(default = "defaults::async_rate")]
    pub async_rate: u32,
    /// Bytes queued async invocations may hold (default 64 MiB); past it async requests
    /// are answered 507.
    #[serde(default = "defaults::async_stored")]
    pub async_stored: u64,
    /// Requests one instance serves before it is dropped (default 1: a fresh instance
    /// per request).
    #[serde(default = "defaults::reuse")]
    pub reuse: u32,
    /// Requests one instance serves at once (default 1).
    #[serde(default = "defaults::reuse_concurrency")]
    pub reuse_concurrency: u32,
    /// How long a reusable instance waits for its next request (default 1 s).
    #[serde(default = "defaults::reuse_idle_ms")]
    pub reuse_idle_ms: u64,
}

/// The name the embedded control store has always stored `subscribe` under; reading
/// accepts it, and a store writes it so older binaries still see subscriptions.
pub const STORED_SUBSCRIPTIONS: &str = "subscriptions";

impl RevisionJson {
    /// Every key of the form, for edges that refuse unknown keys around it.
    pub const KEYS: &'static [&'static str] = &[
        "routes",
        "memory",
        "timeout_ms",
        "outbound",
        "callbacks",
        "env",
        "config",
        "buckets",
        "cron",
        "subscribe",
        "concurrency",
        "queue",
        "queue_timeout_ms",
        "idle_ms",
        "async_rate",
        "async_stored",
        "reuse",
        "reuse_concurrency",
        "reuse_idle_ms",
    ];

    /// The typed settings, with `migrations` (names) beside them. Parses routes and
    /// origins; bounds are the caller's to check ([`RevisionConfig::validate`]).
    pub fn into_config(self, migrations: Vec<String>) -> Result<RevisionConfig, Invalid> {
        let routes = self
            .routes
            .iter()
            .map(|r| RoutePrefix::new(r).map_err(|m| Invalid::new("routes", m)))
            .collect::<Result<_, _>>()?;
        let origins = |key: &str, list: &[String]| {
            list.iter()
                .map(|o| Origin::parse(o).map_err(|m| Invalid::new(key, m)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(RevisionConfig {
            routes,
            limits: Limits {
                memory: self.memory,
                timeout: Duration::from_millis(self.timeout_ms),
            },
            scaling: Scaling {
                concurrency: self.concurrency,
                queue: self.queue,
                queue_timeout: Duration::from_millis(self.queue_timeout_ms),
                idle: self.idle_ms.map(Duration::from_millis),
                async_rate: self.async_rate,
                async_stored: self.async_stored,
            },
            reuse: Reuse {
                requests: self.reuse,
                concurrency: self.reuse_concurrency,
                idle: Duration::from_millis(self.reuse_idle_ms),
            },
            outbound: origins("outbound", &self.outbound)?,
            callbacks: origins("callbacks", &self.callbacks)?,
            env: self.env,
            config: self.config,
            buckets: self.buckets,
            migrations,
            cron: self.cron.into_iter().map(CronJson::into_trigger).collect(),
            subscriptions: self
                .subscribe
                .into_iter()
                .map(SubscriptionJson::into_subscription)
                .collect(),
        })
    }
}

impl From<&RevisionConfig> for RevisionJson {
    fn from(c: &RevisionConfig) -> Self {
        RevisionJson {
            routes: c.routes.iter().map(|r| r.to_string()).collect(),
            memory: c.limits.memory,
            timeout_ms: millis(c.limits.timeout),
            outbound: c.outbound.iter().map(|o| o.to_string()).collect(),
            callbacks: c.callbacks.iter().map(|o| o.to_string()).collect(),
            env: c.env.clone(),
            config: c.config.clone(),
            buckets: c.buckets.clone(),
            cron: c.cron.iter().map(CronJson::from).collect(),
            subscribe: c.subscriptions.iter().map(SubscriptionJson::from).collect(),
            concurrency: c.scaling.concurrency,
            queue: c.scaling.queue,
            queue_timeout_ms: millis(c.scaling.queue_timeout),
            idle_ms: c.scaling.idle.map(millis),
            async_rate: c.scaling.async_rate,
            async_stored: c.scaling.async_stored,
            reuse: c.reuse.requests,
            reuse_concurrency: c.reuse.concurrency,
            reuse_idle_ms: millis(c.reuse.idle),
        }
    }
}

/// A schedule as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronJson {
    pub schedule: String,
    pub path: String,
    /// Fire one tick for ticks missed while no node ran the schedule (`missed = "once"`).
    #[serde(default)]
    pub run_missed: bool,
}

impl CronJson {
    fn into_trigger(self) -> CronTrigger {
        CronTrigger {
            schedule: self.schedule,
            path: self.path,
            missed: if self.run_missed {
                MissedTicks::RunOnce
            } else {
                MissedTicks::Skip
            },
        }
    }
}

impl From<&CronTrigger> for CronJson {
    fn from(c: &CronTrigger) -> Self {
        CronJson {
            schedule: c.schedule.clone(),
            path: c.path.clone(),
            run_missed: c.missed == MissedTicks::RunOnce,
        }
    }
}

/// A subscription as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionJson {
    pub topic: String,
    pub path: String,
    #[serde(default)]
    pub queue: Option<String>,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub concurrency: u32,
    pub batch: u32,
}

impl SubscriptionJson {
    fn into_subscription(self) -> Subscription {
        let backoff = Duration::from_millis(self.backoff_ms);
        Subscription {
            topic: self.topic,
            path: self.path,
            queue: self.queue,
            max_attempts: self.max_attempts,
            backoff,
            // As in a manifest: the ceiling is never below the first delay.
            max_backoff: Duration::from_millis(self.max_backoff_ms).max(backoff),
            concurrency: self.concurrency,
            batch: self.batch,
        }
    }
}

impl From<&Subscription> for SubscriptionJson {
    fn from(s: &Subscription) -> Self {
        SubscriptionJson {
            topic: s.topic.clone(),
            path: s.path.clone(),
            queue: s.queue.clone(),
            max_attempts: s.max_attempts,
            backoff_ms: millis(s.backoff),
            max_backoff_ms: millis(s.max_backoff),
            concurrency: s.concurrency,
            batch: s.batch,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Defaults of the keys added after the first release: the model's own.
mod defaults {
    use crate::revision::{Reuse, Scaling};

    pub fn concurrency() -> u32 {
        Scaling::default().concurrency
    }

    pub fn queue() -> u32 {
        Scaling::default().queue
    }

    pub fn queue_timeout_ms() -> u64 {
        super::millis(Scaling::default().queue_timeout)
    }

    pub fn idle_ms() -> Option<u64> {
        Scaling::default().idle.map(super::millis)
    }

    pub fn async_rate() -> u32 {
        Scaling::default().async_rate
    }

    pub fn async_stored() -> u64 {
        Scaling::default().async_stored
    }

    pub fn reuse() -> u32 {
        Reuse::default().requests
    }

    pub fn reuse_concurrency() -> u32 {
        Reuse::default().concurrency
    }

    pub fn reuse_idle_ms() -> u64 {
        super::millis(Reuse::default().idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> RevisionConfig {
        let mut config = RevisionConfig::new(vec![RoutePrefix::new("/cart").unwrap()]);
        config.outbound = vec![Origin::parse("https://example.com").unwrap()];
        config.callbacks = vec![Origin::parse("http://hooks.example.com:8080").unwrap()];
        config.env = vec![("B".into(), "2".into()), ("A".into(), "1".into())];
        config.config = vec![("currency".into(), "EUR".into())];
        config.buckets = vec!["sessions".into()];
        config.cron = vec![CronTrigger {
            schedule: "@every 2s".into(),
            path: "/tick".into(),
            missed: MissedTicks::RunOnce,
        }];
        config.subscriptions = vec![Subscription::new("orders.created", "/on-order")];
        config.scaling.idle = None;
        config.reuse = Reuse {
            requests: 128,
            concurrency: 4,
            idle: Duration::from_millis(2500),
        };
        config
    }

    #[test]
    fn a_config_survives_its_json_form() {
        let config = full();
        let json = serde_json::to_string(&RevisionJson::from(&config)).unwrap();
        let back: RevisionJson = serde_json::from_str(&json).unwrap();
        assert_eq!(back.into_config(Vec::new()).unwrap(), config);
    }

    #[test]
    fn keys_lists_every_key_of_the_form() {
        let json = serde_json::to_value(RevisionJson::from(&full())).unwrap();
        let mut written: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        written.sort_unstable();
        let mut keys: Vec<&str> = RevisionJson::KEYS.to_vec();
        keys.sort_unstable();
        assert_eq!(written, keys);
    }

    #[test]
    fn rows_from_before_the_scaling_settings_get_the_defaults() {
        let old = r#"{"routes":["/api"],"memory":1048576,"timeout_ms":1000,"outbound":[],"env":[],
            "subscriptions":[{"topic":"t","path":"/on","queue":null,"max_attempts":3,
            "backoff_ms":10,"max_backoff_ms":5,"concurrency":1,"batch":1}]}"#;
        let config = serde_json::from_str::<RevisionJson>(old)
            .unwrap()
            .into_config(Vec::new())
            .unwrap();
        assert_eq!(config.scaling, Scaling::default());
        assert_eq!(config.subscriptions[0].topic, "t");
        assert_eq!(
            config.subscriptions[0].max_backoff,
            Duration::from_millis(10),
            "the ceiling is raised to the first delay"
        );
    }

    #[test]
    fn out_of_bounds_values_are_refused_by_key_with_the_manifests_message() {
        let mut config = full();
        config.limits.memory = 1;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "memory: memory limit must be between 1MiB and 4GiB"
        );
        let mut config = full();
        config.subscriptions[0].batch = 0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "subscribe[0].batch: must be between 1 and 1000, not 0"
        );
        let mut config = full();
        config.subscriptions[0].topic = "a b".into();
        assert!(config.validate().unwrap_err().key.ends_with("topic"));
        assert_eq!(full().validate(), Ok(()));
    }
}
