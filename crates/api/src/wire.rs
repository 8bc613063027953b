//! Wire types of the control API: what clients send and receive as JSON.

use serde::{Deserialize, Serialize};
use tessera_data::Migration;
use tessera_model::wire::RevisionJson;
use tessera_node::ServiceRelease;
use tessera_store::{AppState, DeployOutcome, Revision, ServiceDeploy, ServiceState};

/// One service of a deploy request: its component (already uploaded), its settings in the
/// model's one JSON form ([`RevisionJson`]) and its migrations. Unknown keys are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct ServiceSpecJson {
    pub name: String,
    pub sha256: String,
    #[serde(flatten)]
    pub revision: RevisionJson,
    /// SQL migrations, in order, applied once each before the revision takes traffic.
    #[serde(default)]
    pub migrations: Vec<MigrationJson>,
}

/// [`ServiceSpecJson`] as serde reads it once its keys are known to be valid.
#[derive(Deserialize)]
struct ServiceSpecFields {
    name: String,
    sha256: String,
    #[serde(flatten)]
    revision: RevisionJson,
    #[serde(default)]
    migrations: Vec<MigrationJson>,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for ServiceSpecJson {
    type Error = String;

    fn try_from(map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        const OWN: &[&str] = &["name", "sha256", "migrations"];
        if let Some(key) = map
            .keys()
            .find(|k| !OWN.contains(&k.as_str()) && !RevisionJson::KEYS.contains(&k.as_str()))
        {
            return Err(format!("unknown field `{key}` in a service"));
        }
        let fields: ServiceSpecFields =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())?;
        Ok(ServiceSpecJson {
            name: fields.name,
            sha256: fields.sha256,
            revision: fields.revision,
            migrations: fields.migrations,
        })
    }
}

/// One SQL migration: a name (the file name) and its statements.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationJson {
    pub name: String,
    pub sql: String,
}

impl ServiceSpecJson {
    /// The release it asks for, its settings checked against the model's bounds: this is
    /// the edge where a deploy through the API enters.
    pub fn into_release(self) -> Result<ServiceRelease, String> {
        let name = self.name;
        let config = self
            .revision
            .into_config(Vec::new())
            .and_then(|config| config.validate().map(|()| config))
            .map_err(|invalid| format!("service `{name}`: {invalid}"))?;
        Ok(ServiceRelease {
            service: ServiceDeploy {
                name,
                sha256: self.sha256,
                config,
            },
            migrations: self
                .migrations
                .into_iter()
                .map(|m| Migration {
                    name: m.name,
                    sql: m.sql,
                })
                .collect(),
        })
    }
}

impl From<ServiceRelease> for ServiceSpecJson {
    fn from(r: ServiceRelease) -> Self {
        ServiceSpecJson {
            revision: RevisionJson::from(&r.service.config),
            name: r.service.name,
            sha256: r.service.sha256,
            migrations: r
                .migrations
                .into_iter()
                .map(|m| MigrationJson {
                    name: m.name,
                    sql: m.sql,
                })
                .collect(),
        }
    }
}

/// The secrets of a service: names and when each was set, never values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretList {
    pub secrets: Vec<SecretView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretView {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub updated_at: u64,
}

/// Body of a secret update.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    pub value: String,
}

/// Query of an app removal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// Also delete the app's data: key-value, SQL and secrets.
    #[serde(default)]
    pub purge: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub services: Vec<ServiceSpecJson>,
    /// Deploy only these services; the others stay as they are.
    #[serde(default)]
    pub only: Vec<String>,
    /// Canary share (1-99 percent) for each new revision.
    #[serde(default)]
    pub traffic: Option<u8>,
    /// Revisions of history to keep per service.
    #[serde(default)]
    pub keep: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResult {
    pub app: String,
    pub created: Vec<CreatedRevision>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedRevision {
    pub service: String,
    pub revision: u32,
}

impl From<DeployOutcome> for DeployResult {
    fn from(o: DeployOutcome) -> Self {
        DeployResult {
            app: o.app,
            created: o
                .created
                .into_iter()
                .map(|(service, revision)| CreatedRevision { service, revision })
                .collect(),
            unchanged: o.unchanged,
            removed: o.removed,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficShare {
    pub revision: u32,
    pub percent: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficRequest {
    pub traffic: Vec<TrafficShare>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The revision to go back to; default: the one before the current primary.
    #[serde(default)]
    pub to: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppList {
    pub apps: Vec<AppView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    pub name: String,
    pub services: Vec<ServiceView>,
}

impl From<&AppState> for AppView {
    fn from(a: &AppState) -> Self {
        AppView {
            name: a.name.clone(),
            services: a.services.iter().map(ServiceView::from).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    /// The routes of the primary revision.
    pub routes: Vec<String>,
    pub primary: Option<u32>,
    pub traffic: Vec<TrafficShare>,
    pub revisions: Vec<RevisionView>,
}

impl From<&ServiceState> for ServiceView {
    fn from(s: &ServiceState) -> Self {
        ServiceView {
            name: s.name.clone(),
            routes: s
                .primary()
                .map(|r| r.config.routes.iter().map(|p| p.to_string()).collect())
                .unwrap_or_default(),
            primary: s.primary().map(|r| r.id),
            traffic: s
                .traffic
                .iter()
                .map(|(revision, percent)| TrafficShare {
                    revision: *revision,
                    percent: *percent,
                })
                .collect(),
            revisions: s.revisions.iter().map(RevisionView::from).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionView {
    pub id: u32,
    pub sha256: String,
    pub created_at: u64,
    pub routes: Vec<String>,
    pub memory: u64,
    pub timeout_ms: u64,
    pub outbound: Vec<String>,
    pub callbacks: Vec<String>,
    /// Names of the environment variables granted (values are not listed).
    pub env: Vec<String>,
}

impl From<&Revision> for RevisionView {
    fn from(r: &Revision) -> Self {
        let json = RevisionJson::from(&r.config);
        RevisionView {
            id: r.id,
            sha256: r.sha256.clone(),
            created_at: r.created_at,
            routes: json.routes,
            memory: json.memory,
            timeout_ms: json.timeout_ms,
            outbound: json.outbound,
            callbacks: json.callbacks,
            env: json.env.into_iter().map(|(k, _)| k).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Uploaded {
    pub sha256: String,
}

/// What a publish did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishResult {
    /// The message id (`ce-id` for subscribers).
    pub id: String,
    /// False when a message with this id had already been published (nothing was sent).
    pub new: bool,
}

/// Delivery counts of every subscription of the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventStats {
    pub subscriptions: Vec<SubscriptionStatsView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriptionStatsView {
    pub id: String,
    pub active: bool,
    pub ready: u64,
    pub in_flight: u64,
    pub retrying: u64,
    pub dead: u64,
    pub delivered: u64,
    pub retries: u64,
}

impl From<tessera_events::SubscriptionStats> for SubscriptionStatsView {
    fn from(s: tessera_events::SubscriptionStats) -> Self {
        SubscriptionStatsView {
            id: s.id,
            active: s.active,
            ready: s.ready,
            in_flight: s.in_flight,
            retrying: s.retrying,
            dead: s.dead,
            delivered: s.delivered,
            retries: s.retries,
        }
    }
}

/// A message as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageView {
    pub id: String,
    pub topic: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339.
    pub time: String,
    pub content_type: Option<String>,
    /// The payload as text (invalid UTF-8 replaced).
    pub data: String,
    pub size: usize,
}

impl From<tessera_events::Message> for MessageView {
    fn from(m: tessera_events::Message) -> Self {
        MessageView {
            id: m.id,
            topic: m.topic,
            source: m.source,
            kind: m.kind,
            time: humantime::format_rfc3339_millis(m.time).to_string(),
            content_type: m.content_type,
            size: m.data.len(),
            data: String::from_utf8_lossy(&m.data).into_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterView {
    pub message: MessageView,
    pub attempts: u32,
    pub last_status: u16,
    pub last_error: String,
    /// RFC 3339.
    pub failed_at: String,
}

impl From<tessera_events::DeadLetter> for DeadLetterView {
    fn from(d: tessera_events::DeadLetter) -> Self {
        DeadLetterView {
            message: d.message.into(),
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error,
            failed_at: humantime::format_rfc3339_millis(d.failed_at).to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterList {
    pub subscription: String,
    pub dead_letters: Vec<DeadLetterView>,
}

/// Which dead letters to list or show.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    pub subscription: String,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Body of a re-drive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    pub subscription: String,
    /// Only these messages; all of the subscription's dead letters when absent.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Redriven {
    pub redriven: u64,
}

/// An async invocation's state and, once it ran, its result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationView {
    pub id: String,
    /// `pending`, `running`, `succeeded` or `failed` (dead-lettered after its attempts).
    pub state: String,
    pub attempts: u32,
    /// The last attempt's HTTP status (0 when it got no response).
    pub status: Option<u16>,
    /// The last attempt's response body as text.
    pub body: Option<String>,
    pub error: Option<String>,
    /// RFC 3339.
    pub updated: String,
}

/// Which log lines of a service to return (`GET .../logs`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// RFC 3339 time, or a duration back from now such as `5m` or `1h 30m`.
    #[serde(default)]
    pub since: Option<String>,
    /// At most this many of the newest matching lines (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Keep the response open and stream new lines as newline-delimited JSON.
    #[serde(default)]
    pub follow: Option<bool>,
}

/// One log line of a service: guest output (`stdout`, `stderr`) or a platform event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogView {
    pub seq: u64,
    /// RFC 3339.
    pub time: String,
    pub app: String,
    pub service: String,
    /// `stdout`, `stderr` or `platform`.
    pub stream: String,
    pub request_id: Option<String>,
    pub line: String,
}

impl From<tessera_telemetry::LogEntry> for LogView {
    fn from(e: tessera_telemetry::LogEntry) -> Self {
        LogView {
            seq: e.seq,
            time: humantime::format_rfc3339_millis(e.time).to_string(),
            app: e.app,
            service: e.service,
            stream: e.stream.as_str().to_string(),
            request_id: e.request_id,
            line: e.line,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogList {
    pub logs: Vec<LogView>,
}

/// `GET /v1/nodes`: every node that joined the cluster (one, this node, outside a cluster).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// `up` or `down`.
    pub state: String,
    /// How long before the freshest heartbeat this node's last one was, in milliseconds
    /// (0 while up).
    pub last_seen_ms: u64,
    pub gateway: String,
    pub admin: String,
    pub version: String,
    /// Revisions with code loaded now.
    pub loaded: u64,
}

impl From<&tessera_node::Member> for NodeView {
    fn from(m: &tessera_node::Member) -> Self {
        NodeView {
            name: m.name.clone(),
            state: if m.up { "up" } else { "down" }.into(),
            last_seen_ms: u64::try_from(m.last_seen.as_millis()).unwrap_or(u64::MAX),
            gateway: m.gateway.clone(),
            admin: m.admin.clone(),
            version: m.version.clone(),
            loaded: m.loaded,
        }
    }
}
