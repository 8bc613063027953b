//! Joining: connect, check the server, and create (or check) every stream and bucket with
//! the settings Tessera relies on, asserting what the server echoes back.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use crate::{ClusterConfig, ClusterError, REQUEST_TIMEOUT};

/// The control log: one subject per app (`tessera.control.app.<app>`) and per app's
/// secrets (`tessera.control.secrets.<app>`).
pub(crate) const CONTROL_STREAM: &str = "TESSERA_CONTROL";
pub(crate) const CONTROL_SUBJECTS: &str = "tessera.control.>";
/// How many versions of each app's document the control log keeps: the history other
/// nodes catch up from. Older versions are superseded by the newest, which is always kept.
pub(crate) const CONTROL_HISTORY: i64 = 64;
/// Services' key-value data is spread over this many buckets (each service's keys in one,
/// by a hash of its name), so conditional writes of unrelated services rarely meet.
pub(crate) const KV_SHARDS: usize = 16;

/// The bucket of key-value shard `i`: `TESSERA_KV_00` ...
pub(crate) fn kv_bucket(i: usize) -> String {
    format!("TESSERA_KV_{i:02}")
}
/// Cron tick claims (kept a week).
pub(crate) const CRON_BUCKET: &str = "TESSERA_CRON";
/// Each schedule's last tick (kept).
pub(crate) const CRON_LAST_BUCKET: &str = "TESSERA_CRON_LAST";
/// The nodes that joined.
pub(crate) const NODES_BUCKET: &str = "TESSERA_NODES";
/// SQL databases' writer leases.
pub(crate) const SQL_LEASES_BUCKET: &str = "TESSERA_SQL_LEASES";
/// Component artifacts by sha256.
pub(crate) const ARTIFACTS_BUCKET: &str = "TESSERA_ARTIFACTS";
/// SQL databases' snapshots.
pub(crate) const SQL_SNAPSHOTS_BUCKET: &str = "TESSERA_SQL_SNAPSHOTS";

/// Published events (`tessera.events.<app>.<topic>`) and re-drives
/// (`tessera.redrive.<subscription>`), kept while a subscription has not acknowledged them.
pub(crate) const EVENTS_STREAM: &str = "TESSERA_EVENTS";
/// Dead letters, one subject per subscription and message.
pub(crate) const DEAD_STREAM: &str = "TESSERA_DEAD";
/// The status of async invocations' deliveries.
pub(crate) const STATUS_STREAM: &str = "TESSERA_STATUS";
/// Subscription records and nodes' delivery counts.
pub(crate) const SUBS_STREAM: &str = "TESSERA_SUBS";

/// The payload a server must accept: the largest key-value value and room for headers
/// and the key.
pub(crate) const NEEDED_PAYLOAD: usize = tessera_data::MAX_VALUE_BYTES + 64 * 1024;
/// How long setup retries while a fresh NATS cluster elects its JetStream leader.
const SETUP_PATIENCE: Duration = Duration::from_secs(20);

pub(crate) async fn connect(
    config: &ClusterConfig,
) -> Result<(async_nats::Client, jetstream::Context, usize), ClusterError> {
    check_node_name(&config.node)?;
    let urls = config.urls.join(",");
    let addrs = config
        .urls
        .iter()
        .map(|url| url.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClusterError::Unreachable {
            urls: urls.clone(),
            message: e.to_string(),
        })?;
    if addrs.is_empty() {
        return Err(ClusterError::Unreachable {
            urls,
            message: "no URL given".into(),
        });
    }
    let client = async_nats::ConnectOptions::new()
        .name(format!("tessera node {}", config.node))
        .connection_timeout(Duration::from_secs(3))
        // A node notices a dead server within seconds rather than the default two minutes.
        .ping_interval(Duration::from_secs(2))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                other => tracing::debug!(event = %other, "NATS"),
            }
        })
        .connect(addrs)
        .await
        .map_err(|e| ClusterError::Unreachable {
            urls: urls.clone(),
            message: e.to_string(),
        })?;
    let info = client.server_info();
    let server = format!("{} ({})", info.server_name, client_url(&info));
    if !version_at_least(&info.version, (2, 9)) {
        return Err(ClusterError::TooOld {
            server,
            version: info.version.clone(),
        });
    }
    if !info.jetstream {
        return Err(ClusterError::NoJetStream { server });
    }
    if info.max_payload < NEEDED_PAYLOAD {
        return Err(ClusterError::PayloadTooSmall {
            server,
            max_payload: info.max_payload,
            needed: NEEDED_PAYLOAD,
        });
    }
    let js = jetstream::new(client.clone());
    let replicas = config
        .replicas
        .unwrap_or(if info.cluster.is_some() { 3 } else { 1 });
    let deadline = Instant::now() + SETUP_PATIENCE;
    loop {
        match create_all(&js, replicas).await {
            Ok(()) => break,
            Err(e @ (ClusterError::SettingDropped { .. } | ClusterError::NoJetStream { .. })) => {
                return Err(e);
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "JetStream not ready yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    Ok((client, js, replicas))
}

fn client_url(info: &async_nats::ServerInfo) -> String {
    format!("{}:{}", info.host, info.port)
}

/// Node names are one subject token and a key: letters, digits, `-`, `_`.
fn check_node_name(node: &str) -> Result<(), ClusterError> {
    let ok = !node.is_empty()
        && node.len() <= 64
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::InvalidNodeName(node.to_owned()))
    }
}

/// Whether `version` (`2.9.10`, `2.10.0-beta.1`) is at least `(major, minor)`.
fn version_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|part| part.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

async fn create_all(js: &jetstream::Context, replicas: usize) -> Result<(), ClusterError> {
    ensure_stream(
        js,
        stream::Config {
            name: CONTROL_STREAM.into(),
            description: Some("Tessera control state: one message per transaction".into()),
            subjects: vec![CONTROL_SUBJECTS.into()],
            max_messages_per_subject: CONTROL_HISTORY,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            discard: stream::DiscardPolicy::Old,
            deny_delete: true,
            deny_purge: true,
            // Reads that must be fresh go to the stream leader.
            allow_direct: false,
            ..Default::default()
        },
    )
    .await?;
    for i in 0..KV_SHARDS {
        let bucket = kv_bucket(i);
        let description = "Tessera services' key-value data (one shard)";
        ensure_stream(js, kv_stream(&bucket, description, replicas)).await?;
    }
    ensure_stream(
        js,
        kv_stream(NODES_BUCKET, "Tessera nodes and their heartbeats", replicas),
    )
    .await?;
    ensure_stream(
        js,
        stream::Config {
            max_age: crate::ticks::CLAIM_AGE,
            ..kv_stream(CRON_BUCKET, "Tessera cron tick claims", replicas)
        },
    )
    .await?;
    ensure_stream(
        js,
        kv_stream(
            CRON_LAST_BUCKET,
            "Tessera cron schedules' last ticks",
            replicas,
        ),
    )
    .await?;
    ensure_stream(
        js,
        kv_stream(
            SQL_LEASES_BUCKET,
            "Tessera SQL databases' writer leases",
            replicas,
        ),
    )
    .await?;
    create_event_streams(js, replicas).await?;
    ensure_object_store(
        js,
        ARTIFACTS_BUCKET,
        "Tessera component artifacts, named by sha256",
        replicas,
    )
    .await?;
    ensure_object_store(
        js,
        SQL_SNAPSHOTS_BUCKET,
        "Tessera SQL databases' snapshots, named <app>/<service>/<log position>",
        replicas,
    )
    .await?;
    Ok(())
}

/// Creates an object store unless it exists, with reads that go to the stream leader.
async fn ensure_object_store(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
) -> Result<(), ClusterError> {
    let objects = format!("OBJ_{bucket}");
    let what = format!("the object store {bucket}");
    match js.get_stream(&objects).await {
        Ok(_) => {}
        Err(_) => {
            js.create_object_store(jetstream::object_store::Config {
                bucket: bucket.into(),
                description: Some(description.into()),
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| setup_error(&what, e))?;
        }
    }
    let mut stream = js
        .get_stream(&objects)
        .await
        .map_err(|e| setup_error(&what, e))?;
    let mut config = stream
        .info()
        .await
        .map_err(|e| setup_error(&what, e))?
        .config
        .clone();
    // The object store is created with direct gets; reads must see what another node
    // just stored, so they go to the leader.
    if config.allow_direct {
        config.allow_direct = false;
        js.update_stream(&config)
            .await
            .map_err(|e| setup_error(&what, e))?;
        config = stream
            .info()
            .await
            .map_err(|e| setup_error(&what, e))?
            .config
            .clone();
    }
    check_echo(&objects, "num_replicas", replicas, config.num_replicas)?;
    check_echo(&objects, "allow_direct", false, config.allow_direct)?;
    Ok(())
}

async fn create_event_streams(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<(), ClusterError> {
    let events = stream::Config {
        name: EVENTS_STREAM.into(),
        description: Some("Tessera events, kept until every subscription took them".into()),
        subjects: vec!["tessera.events.>".into(), "tessera.redrive.>".into()],
        retention: stream::RetentionPolicy::Interest,
        max_messages_per_subject: -1,
        duplicate_window: crate::events::DEDUP_WINDOW,
        max_message_size: i32::try_from(NEEDED_PAYLOAD).unwrap_or(i32::MAX),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::Old,
        deny_delete: true,
        deny_purge: true,
        allow_direct: false,
        ..Default::default()
    };
    let found = ensure_stream(js, events.clone()).await?;
    check_echo(
        EVENTS_STREAM,
        "retention",
        format!("{:?}", events.retention),
        format!("{:?}", found.retention),
    )?;
    check_echo(
        EVENTS_STREAM,
        "duplicate_window",
        format!("{:?}", events.duplicate_window),
        format!("{:?}", found.duplicate_window),
    )?;
    let records = |name: &str, description: &str, subjects: &[&str], max_age| stream::Config {
        name: name.into(),
        description: Some(description.into()),
        subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        max_messages_per_subject: 1,
        max_age,
        max_message_size: i32::try_from(NEEDED_PAYLOAD).unwrap_or(i32::MAX),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::Old,
        deny_delete: true,
        deny_purge: false,
        allow_direct: false,
        ..Default::default()
    };
    ensure_stream(
        js,
        records(
            DEAD_STREAM,
            "Tessera dead letters",
            &["tessera.dead.>"],
            crate::events::DEAD_RETENTION,
        ),
    )
    .await?;
    ensure_stream(
        js,
        records(
            STATUS_STREAM,
            "Tessera async invocations' status",
            &["tessera.status.>"],
            crate::events::STATUS_RETENTION,
        ),
    )
    .await?;
    ensure_stream(
        js,
        records(
            SUBS_STREAM,
            "Tessera event subscriptions and delivery counts",
            &["tessera.subs.>", "tessera.counts.>"],
            Duration::ZERO,
        ),
    )
    .await?;
    Ok(())
}

/// The stream behind a KV bucket, made by hand so that reads go to the leader
/// (`allow_direct: false`): direct gets on replicas were measured stale right after an
/// acknowledged write.
fn kv_stream(bucket: &str, description: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_message_size: i32::try_from(NEEDED_PAYLOAD).unwrap_or(i32::MAX),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: false,
        ..Default::default()
    }
}

/// Creates a stream, or finds it, and checks that the server holds the settings asked for.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Config, ClusterError> {
    let name = config.name.clone();
    let mut stream = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| setup_error(&format!("stream {name}"), e))?;
    let found = stream
        .info()
        .await
        .map_err(|e| setup_error(&format!("stream {name}"), e))?
        .config
        .clone();
    check_echo(
        &name,
        "subjects",
        config.subjects.join(","),
        found.subjects.join(","),
    )?;
    check_echo(
        &name,
        "max_msgs_per_subject",
        config.max_messages_per_subject,
        found.max_messages_per_subject,
    )?;
    check_echo(
        &name,
        "allow_direct",
        config.allow_direct,
        found.allow_direct,
    )?;
    check_echo(
        &name,
        "num_replicas",
        config.num_replicas,
        found.num_replicas,
    )?;
    check_echo(&name, "deny_delete", config.deny_delete, found.deny_delete)?;
    Ok(found)
}

fn check_echo<T: PartialEq + std::fmt::Display>(
    what: &str,
    field: &'static str,
    wanted: T,
    found: T,
) -> Result<(), ClusterError> {
    if wanted == found {
        Ok(())
    } else {
        Err(ClusterError::SettingDropped {
            what: format!("stream {what}"),
            field,
            wanted: wanted.to_string(),
            found: found.to_string(),
        })
    }
}

fn setup_error(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Setup {
        what: what.to_owned(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(version_at_least("2.9.10", (2, 9)));
        assert!(version_at_least("2.10.0-beta.1", (2, 9)));
        assert!(version_at_least("3.0.0", (2, 9)));
        assert!(!version_at_least("2.8.4", (2, 9)));
        assert!(!version_at_least("garbage", (2, 9)));
    }

    #[test]
    fn node_names_are_one_token() {
        assert!(check_node_name("node-1_a").is_ok());
        assert!(check_node_name("").is_err());
        assert!(check_node_name("a.b").is_err());
        assert!(check_node_name(&"x".repeat(65)).is_err());
    }
}
