//! The contract suites on a real `nats-server`, and what only a cluster has: several
//! nodes sharing one state, and their registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_data::DataBackend;
use tessera_store::conformance::{self as control_suite, artifact, deploy, svc};
use tessera_store::{ArtifactStore, ControlState};

use crate::testing::NatsServer;
use crate::*;

fn config(server: &NatsServer, node: &str) -> ClusterConfig {
    ClusterConfig {
        urls: vec![server.url()],
        node: node.into(),
        replicas: None,
    }
}

/// A node's control state and artifacts over `server`, caching in `cache`.
struct Backend {
    control: JetStreamControl,
    artifacts: Arc<ObjectArtifacts>,
    _cluster: Cluster,
}

impl Backend {
    fn open(server: &NatsServer, node: &str, cache: &std::path::Path) -> Backend {
        let cluster = Cluster::connect(&config(server, node)).expect("join the cluster");
        let artifacts = Arc::new(ObjectArtifacts::open(&cluster, cache.join(node)).unwrap());
        let control = JetStreamControl::open(&cluster, artifacts.clone()).unwrap();
        Backend {
            control,
            artifacts,
            _cluster: cluster,
        }
    }
}

impl ControlState for Backend {
    fn changes(&self, after: u64) -> Result<tessera_store::ChangeBatch, tessera_store::StoreError> {
        self.control.changes(after)
    }
    fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.control.watch()
    }
    fn apps(&self) -> Result<Vec<tessera_store::AppState>, tessera_store::StoreError> {
        self.control.apps()
    }
    fn app(
        &self,
        name: &str,
    ) -> Result<Option<tessera_store::AppState>, tessera_store::StoreError> {
        self.control.app(name)
    }
    fn deploy(
        &self,
        app: &str,
        services: &[tessera_store::ServiceDeploy],
        options: &tessera_store::DeployOptions,
    ) -> Result<tessera_store::DeployOutcome, tessera_store::StoreError> {
        self.control.deploy(app, services, options)
    }
    fn set_traffic(
        &self,
        app: &str,
        service: &str,
        weights: &[(u32, u8)],
    ) -> Result<tessera_store::ServiceState, tessera_store::StoreError> {
        self.control.set_traffic(app, service, weights)
    }
    fn rollback(
        &self,
        app: &str,
        service: &str,
        to: Option<u32>,
    ) -> Result<tessera_store::ServiceState, tessera_store::StoreError> {
        self.control.rollback(app, service, to)
    }
    fn remove_app(&self, app: &str) -> Result<bool, tessera_store::StoreError> {
        self.control.remove_app(app)
    }
    fn set_secret(
        &self,
        app: &str,
        service: &str,
        name: &str,
        value: &str,
    ) -> Result<(), tessera_store::StoreError> {
        self.control.set_secret(app, service, name, value)
    }
    fn delete_secret(
        &self,
        app: &str,
        service: &str,
        name: &str,
    ) -> Result<bool, tessera_store::StoreError> {
        self.control.delete_secret(app, service, name)
    }
    fn secret_names(
        &self,
        app: &str,
        service: &str,
    ) -> Result<Vec<(String, u64)>, tessera_store::StoreError> {
        self.control.secret_names(app, service)
    }
    fn secrets(
        &self,
        app: &str,
        service: &str,
    ) -> Result<Vec<(String, String)>, tessera_store::StoreError> {
        self.control.secrets(app, service)
    }
    fn purge_secrets(&self, app: &str) -> Result<(), tessera_store::StoreError> {
        self.control.purge_secrets(app)
    }
}

impl ArtifactStore for Backend {
    fn has_artifact(&self, sha256: &str) -> bool {
        self.artifacts.has_artifact(sha256)
    }
    fn put_artifact(&self, bytes: &[u8]) -> Result<String, tessera_store::StoreError> {
        self.artifacts.put_artifact(bytes)
    }
    fn artifact_path(&self, sha256: &str) -> Result<std::path::PathBuf, tessera_store::StoreError> {
        self.artifacts.artifact_path(sha256)
    }
    fn staging_dir(&self) -> std::path::PathBuf {
        self.artifacts.staging_dir()
    }
    fn put_artifact_file(
        &self,
        path: &std::path::Path,
        sha256: &str,
    ) -> Result<(), tessera_store::StoreError> {
        self.artifacts.put_artifact_file(path, sha256)
    }
}

/// The cluster tests need a real server; `cargo xtask test` installs it.
fn require_nats() {
    assert!(
        testing::available(),
        "nats-server is not installed: run `cargo xtask test`, or `apt-get install -y nats-server`"
    );
}

#[test]
fn control_state_passes_the_conformance_suite() {
    require_nats();
    control_suite::run(|test| {
        // A fresh server per test: an empty log and object store.
        let server = NatsServer::start();
        let cache = tempfile::tempdir().unwrap();
        let backend = Backend::open(&server, "n1", cache.path());
        test(&backend);
    });
}

#[test]
fn key_value_and_sql_pass_the_conformance_suite() {
    require_nats();
    tessera_data::conformance::run(|test| {
        let server = NatsServer::start();
        let cluster = Cluster::connect(&config(&server, "n1")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = ClusterData::open(&cluster, dir.path().join("sql")).unwrap();
        test(&data);
    });
}

#[test]
fn two_nodes_share_one_control_state_and_read_their_own_writes() {
    require_nats();
    let server = NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    let a = Backend::open(&server, "a", cache.path());
    let b = Backend::open(&server, "b", cache.path());
    let b_changes = b.watch();
    let sha = artifact(&a, "one");
    deploy(&a, "shop", &[svc("web", &sha, &["/"])]);
    // Read through the other node at once: it catches up before answering.
    let seen = b.app("shop").unwrap().expect("node b sees the deploy");
    assert_eq!(seen, a.app("shop").unwrap().unwrap());
    assert!(b_changes.has_changed().unwrap());
    // Its artifact is fetched from the object store into b's own cache, verified.
    let path = b.artifact_path(&sha).unwrap();
    assert!(path.starts_with(cache.path().join("b")));

    // A route claimed through one node is refused through the other.
    let err = b
        .deploy("blog", &[svc("web", &sha, &["/"])], &Default::default())
        .unwrap_err();
    assert!(
        matches!(err, tessera_store::StoreError::RouteConflict { .. }),
        "{err:?}"
    );

    // Concurrent deploys of one app through both nodes: every one lands, none is lost,
    // and revision ids stay unique.
    std::thread::scope(|scope| {
        for (node, backend) in [("a", &a), ("b", &b)] {
            let sha = &sha;
            scope.spawn(move || {
                for i in 0..10 {
                    let mut web = svc("web", sha, &["/"]);
                    web.config.env = vec![("N".into(), format!("{node}{i}"))];
                    deploy(backend, "shop", &[web]);
                }
            });
        }
    });
    let web = tessera_store::conformance::service(&a, "shop", "web");
    assert_eq!(web.revisions.last().unwrap().id, 21);
    assert_eq!(web, tessera_store::conformance::service(&b, "shop", "web"));

    // Secrets set through one node are read through the other.
    a.set_secret("shop", "web", "TOKEN", "t").unwrap();
    assert_eq!(
        b.secrets("shop", "web").unwrap(),
        [("TOKEN".into(), "t".into())]
    );

    // A change through one node right after another through the other node is decided
    // on the state that includes it: nothing is judged absent or unchanged from a stale view.
    for i in 0..20 {
        let app = format!("quick{i}");
        deploy(&a, &app, &[svc("web", &sha, &[&format!("/quick{i}")])]);
        assert!(
            b.remove_app(&app).unwrap(),
            "{app} removed through the other node"
        );
        b.set_secret(&app, "web", "K", "v").unwrap();
        assert!(a.delete_secret(&app, "web", "K").unwrap());
    }
}

#[test]
fn a_node_that_joins_later_rebuilds_the_state_from_the_log() {
    require_nats();
    let server = NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    let a = Backend::open(&server, "a", cache.path());
    let sha = artifact(&a, "one");
    // More versions of one app than the log keeps per app.
    for i in 0..(crate::setup::CONTROL_HISTORY + 6) {
        let mut web = svc("web", &sha, &["/"]);
        web.config.env = vec![("I".into(), i.to_string())];
        deploy(&a, "shop", &[web]);
    }
    deploy(&a, "blog", &[svc("web", &sha, &["/blog"])]);
    a.set_secret("blog", "web", "K", "v").unwrap();
    assert!(a.remove_app("blog").unwrap());
    let late = Backend::open(&server, "late", cache.path());
    assert_eq!(late.apps().unwrap(), a.apps().unwrap());
    assert_eq!(late.secrets("blog", "web").unwrap().len(), 1);
    // It cannot tell which changes came before it joined.
    assert!(late.changes(0).unwrap().gap);
    // Revision ids continue after what the log dropped.
    let out = deploy(
        &late,
        "shop",
        &[svc("web", &artifact(&late, "two"), &["/"])],
    );
    assert_eq!(
        out.created,
        [("web".to_owned(), crate::setup::CONTROL_HISTORY as u32 + 7)]
    );
}

#[test]
fn registry_shows_nodes_up_and_a_silent_one_down_and_refuses_a_live_name() {
    require_nats();
    let server = NatsServer::start();
    let loaded: Arc<dyn Fn() -> u64 + Send + Sync> = Arc::new(|| 3);
    let join = |node: &str| {
        let cluster = Cluster::connect(&config(&server, node)).unwrap();
        let info = NodeInfo {
            gateway: format!("{node}:3000"),
            admin: format!("{node}:3001"),
            version: "test".into(),
            loaded: 0,
        };
        (
            Registry::join(&cluster, info.clone(), loaded.clone()),
            cluster,
            info,
        )
    };
    let (a, _ca, _) = join("a");
    let a = a.unwrap();
    let (b, cb, _) = join("b");
    let b = b.unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let nodes = a.nodes().unwrap();
    let names: Vec<&str> = nodes.iter().map(|(r, _)| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(nodes.iter().all(|(_, s)| *s == NodeState::Up), "{nodes:?}");
    assert_eq!(nodes[1].0.info.gateway, "b:3000");
    assert_eq!(nodes[1].0.info.loaded, 3);

    // A second run under a live node's name is refused.
    let (again, _, _) = join("b");
    let err = again.err().expect("the name is held");
    assert!(matches!(err, ClusterError::NodeNameTaken { .. }), "{err}");

    // b falls silent (its heartbeat stops, as if killed): down within DOWN_AFTER + a beat.
    drop(b);
    drop(cb);
    let silent = Instant::now();
    loop {
        let nodes = a.nodes().unwrap();
        if let NodeState::Down { ago } = nodes[1].1 {
            assert!(ago >= DOWN_AFTER);
            break;
        }
        assert!(
            silent.elapsed() < Duration::from_secs(5),
            "b still up: {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its name can be taken again.
    let (b, _cb2, _) = join("b");
    b.expect("a dead node's name is taken over");
}

/// The name of the server leading `stream`.
fn leader_of(cluster: &Cluster, stream: &str) -> String {
    let js = cluster.js();
    let stream = stream.to_owned();
    cluster.bridge().run(async move {
        let mut s = js.get_stream(&stream).await.unwrap();
        s.info()
            .await
            .unwrap()
            .cluster
            .clone()
            .unwrap()
            .leader
            .unwrap_or_default()
    })
}

#[test]
fn killing_the_leading_nats_server_loses_no_acknowledged_write() {
    require_nats();
    let mut nats = crate::testing::NatsCluster::start();
    let urls: Vec<String> = nats.servers.iter().map(NatsServer::url).collect();
    let join = |node: &str| {
        Cluster::connect(&ClusterConfig {
            urls: urls.clone(),
            node: node.into(),
            replicas: None,
        })
        .unwrap()
    };
    let cache = tempfile::tempdir().unwrap();
    let (ca, cb) = (join("a"), join("b"));
    assert_eq!(ca.replicas(), 3);
    let open = |cluster: &Cluster, node: &str| {
        let artifacts = Arc::new(ObjectArtifacts::open(cluster, cache.path().join(node)).unwrap());
        let control = JetStreamControl::open(cluster, artifacts).unwrap();
        let data = ClusterData::open(cluster, cache.path().join(node).join("sql")).unwrap();
        (control, data)
    };
    let (control_a, data_a) = open(&ca, "a");
    let (control_b, data_b) = open(&cb, "b");
    let leader = leader_of(&ca, crate::setup::CONTROL_STREAM);
    let kv_leader = leader_of(&ca, &format!("KV_{}", crate::setup::kv_bucket(0)));

    let stop = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    // Each writer records what was acknowledged and the longest stretch without an ack.
    let write = |node: &str, control: &JetStreamControl, data: &ClusterData| {
        let kv = data.open_service("shop", node).unwrap().kv;
        // One counter both nodes increment: what it ends at must lie between the
        // increments acknowledged and those plus the ones that failed.
        let shared = data.open_service("shop", "counter").unwrap().kv;
        let (mut acked_keys, mut acked_secrets) = (Vec::new(), Vec::new());
        let mut acks = Vec::new();
        let mut increments = (0u64, 0u64);
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            let key = format!("k{i}");
            if kv.set("default", &key, key.as_bytes()).is_ok() {
                acked_keys.push(key);
                acks.push(started.elapsed());
            }
            if i.is_multiple_of(5) {
                let name = format!("S{i}");
                if control.set_secret("shop", node, &name, "v").is_ok() {
                    acked_secrets.push(name);
                }
            }
            if i.is_multiple_of(3) {
                match shared.increment("default", "hits", 1) {
                    Ok(_) => increments.0 += 1,
                    Err(_) => increments.1 += 1,
                }
            }
        }
        (acked_keys, acked_secrets, acks, increments)
    };
    let (a, b, killed) = std::thread::scope(|scope| {
        let a = scope.spawn(|| write("a", &control_a, &data_a));
        let b = scope.spawn(|| write("b", &control_b, &data_b));
        std::thread::sleep(Duration::from_secs(2));
        let victim = nats
            .servers
            .iter_mut()
            .find(|s| s.name == leader)
            .expect("the leader is one of ours");
        victim.kill();
        let killed = started.elapsed();
        std::thread::sleep(Duration::from_secs(12));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (a.join().unwrap(), b.join().unwrap(), killed)
    });
    // How long after the kill each writer's next write was acknowledged.
    let resumed = |acks: &[Duration]| {
        acks.iter()
            .find(|at| **at > killed)
            .map(|at| *at - killed)
            .expect("writes resumed after the kill")
    };
    eprintln!(
        "killed {leader} (control leader; KV leader was {kv_leader}) at {killed:?}; \
         a: {} keys, {} secrets acknowledged, first write after the kill {:?}; \
         b: {} keys, {} secrets, first write after the kill {:?}",
        a.0.len(),
        a.1.len(),
        resumed(&a.2),
        b.0.len(),
        b.1.len(),
        resumed(&b.2)
    );
    // Writes resumed after the election.
    for (node, (keys, _, _, _)) in [("a", &a), ("b", &b)] {
        assert!(keys.len() > 20, "node {node} wrote almost nothing");
    }
    // Every acknowledged write survives, read through the other node.
    let counted: u64 = String::from_utf8(
        data_b
            .open_service("shop", "counter")
            .unwrap()
            .kv
            .get("default", "hits")
            .unwrap()
            .unwrap(),
    )
    .unwrap()
    .parse()
    .unwrap();
    let (ok, failed) = (a.3.0 + b.3.0, a.3.1 + b.3.1);
    eprintln!("shared counter: {counted}; increments acknowledged {ok}, failed {failed}");
    assert!(
        (ok..=ok + failed).contains(&counted),
        "counter {counted} outside acknowledged {ok} .. {ok} + failed {failed}"
    );
    for (node, (keys, secrets, _, _), reader, control) in [
        ("a", &a, &data_b, &control_b),
        ("b", &b, &data_a, &control_a),
    ] {
        let kv = reader.open_service("shop", node).unwrap().kv;
        for key in keys {
            assert_eq!(
                kv.get("default", key).unwrap().as_deref(),
                Some(key.as_bytes()),
                "acknowledged key {key} of {node} lost"
            );
        }
        // The control log's catch-up may still wait for the new leader on a loaded
        // machine: read again until it answers (what it answers is what is checked).
        let started = Instant::now();
        let names = loop {
            match control.secret_names("shop", node) {
                Ok(names) => break names,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    eprintln!("reading the secrets back: {e}; again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let stored: std::collections::BTreeSet<String> =
            names.into_iter().map(|(n, _)| n).collect();
        for name in secrets {
            assert!(
                stored.contains(name),
                "acknowledged secret {name} of {node} lost"
            );
        }
    }
}

#[test]
fn on_three_servers_concurrent_writers_are_serialised() {
    require_nats();
    let nats = crate::testing::NatsCluster::start();
    let urls: Vec<String> = nats.servers.iter().map(NatsServer::url).collect();
    let cache = tempfile::tempdir().unwrap();
    let nodes: Vec<(Cluster, JetStreamControl, ClusterData)> = (0..3)
        .map(|i| {
            let cluster = Cluster::connect(&ClusterConfig {
                // Each node talks to a different server, so proposals race at the leader.
                urls: vec![urls[i].clone()],
                node: format!("n{i}"),
                replicas: Some(3),
            })
            .unwrap();
            let artifacts = Arc::new(
                ObjectArtifacts::open(&cluster, cache.path().join(format!("n{i}"))).unwrap(),
            );
            let control = JetStreamControl::open(&cluster, artifacts).unwrap();
            let data = ClusterData::open(&cluster, cache.path().join(format!("n{i}/sql"))).unwrap();
            (cluster, control, data)
        })
        .collect();
    let sha = ObjectArtifacts::open(&nodes[0].0, cache.path().join("upload"))
        .unwrap()
        .put_artifact(b"component")
        .unwrap();
    const EACH: usize = 15;
    std::thread::scope(|scope| {
        for (i, (_, control, data)) in nodes.iter().enumerate() {
            let sha = &sha;
            scope.spawn(move || {
                let kv = data.open_service("shop", "web").unwrap().kv;
                for n in 0..EACH {
                    let mut web = svc("web", sha, &["/"]);
                    web.config.env = vec![("N".into(), format!("{i}-{n}"))];
                    control.deploy("shop", &[web], &Default::default()).unwrap();
                    for _ in 0..10 {
                        kv.increment("default", "hits", 1).unwrap();
                    }
                }
            });
        }
    });
    let app = nodes[2].1.app("shop").unwrap().unwrap();
    let web = &app.services[0];
    assert_eq!(
        web.revisions.last().unwrap().id,
        (3 * EACH) as u32,
        "a deploy was lost"
    );
    let kv = nodes[1].2.open_service("shop", "web").unwrap().kv;
    assert_eq!(
        kv.get("default", "hits").unwrap().as_deref(),
        Some((3 * EACH * 10).to_string().as_bytes()),
        "an increment was lost"
    );
}

/// What the events of the next cluster step rely on, checked on this server: a durable
/// pull consumer per subscription keeps its settings (2.9 drops fields it does not know),
/// the attempt number counts redeliveries, a NAK with a delay holds a retry back for that
/// long, `+WPI` extends a lease, `+TERM` ends redelivery, and running out of attempts
/// raises the max-deliveries advisory naming the message.
#[test]
fn server_keeps_what_event_delivery_relies_on() {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    use async_nats::jetstream::{AckKind, stream};
    use futures_util::StreamExt;

    require_nats();
    let server = NatsServer::start();
    let cluster = Cluster::connect(&config(&server, "probe")).unwrap();
    let js = cluster.js();
    let client = cluster.client();
    cluster.bridge().run(async move {
        let stream = js
            .get_or_create_stream(stream::Config {
                name: "PROBE_EVENTS".into(),
                subjects: vec!["probe.events.>".into()],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .unwrap();
        let wanted = pull::Config {
            durable_name: Some("orders".into()),
            filter_subject: "probe.events.orders".into(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_millis(400),
            max_deliver: 3,
            max_ack_pending: 64,
            ..Default::default()
        };
        let mut consumer = stream.create_consumer(wanted.clone()).await.unwrap();
        let echoed = consumer.info().await.unwrap().config.clone();
        assert_eq!(echoed.filter_subject, wanted.filter_subject);
        assert_eq!(echoed.ack_wait, wanted.ack_wait);
        assert_eq!(echoed.max_deliver, wanted.max_deliver);
        assert_eq!(echoed.max_ack_pending, wanted.max_ack_pending);

        let mut advisories = client
            .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.PROBE_EVENTS.orders")
            .await
            .unwrap();
        // A second publish with the same id is a duplicate, and a message to another
        // topic is not this consumer's.
        let mut duplicates = Vec::new();
        for subject in [
            "probe.events.orders",
            "probe.events.orders",
            "probe.events.other",
        ] {
            let ack = js
                .send_publish(
                    subject,
                    async_nats::jetstream::message::PublishMessage::build()
                        .payload("x".into())
                        .message_id(format!("m-{subject}")),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            duplicates.push(ack.duplicate);
        }
        assert_eq!(duplicates, [false, true, false]);
        let fetch = |c: &async_nats::jetstream::consumer::Consumer<pull::Config>| {
            let c = c.clone();
            async move {
                let mut batch = c
                    .fetch()
                    .max_messages(10)
                    .expires(Duration::from_millis(900))
                    .messages()
                    .await
                    .unwrap();
                let mut out = Vec::new();
                while let Some(m) = batch.next().await {
                    out.push(m.unwrap());
                }
                out
            }
        };
        let first = fetch(&consumer).await;
        assert_eq!(first.len(), 1, "one message of this topic, deduplicated");
        assert_eq!(first[0].info().unwrap().delivered, 1);
        // A NAK with a delay holds the retry back.
        let nacked = Instant::now();
        first[0]
            .ack_with(AckKind::Nak(Some(Duration::from_millis(300))))
            .await
            .unwrap();
        let second = fetch(&consumer).await;
        assert_eq!(second.len(), 1);
        assert!(
            nacked.elapsed() >= Duration::from_millis(250),
            "{:?}",
            nacked.elapsed()
        );
        assert_eq!(second[0].info().unwrap().delivered, 2);
        // In progress: the lease is extended past ack_wait, so no redelivery yet.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            second[0].ack_with(AckKind::Progress).await.unwrap();
        }
        let none = consumer
            .fetch()
            .max_messages(10)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .unwrap()
            .count()
            .await;
        assert_eq!(none, 0, "redelivered while in progress");
        // Left to expire: the third attempt is the last. The advisory comes when a pull
        // next asks for messages after that attempt's lease expired (not by itself), and the
        // message is not delivered again.
        let third = fetch(&consumer).await;
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].info().unwrap().delivered, 3);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            fetch(&consumer).await.is_empty(),
            "delivered past max_deliver"
        );
        let advisory = tokio::time::timeout(Duration::from_secs(3), advisories.next())
            .await
            .expect("a max-deliveries advisory")
            .unwrap();
        let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload).unwrap();
        assert_eq!(
            advisory["stream_seq"],
            third[0].info().unwrap().stream_sequence
        );
        assert_eq!(advisory["deliveries"], 3);

        // TERM ends redelivery at once.
        js.publish("probe.events.orders", "y".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let fresh = fetch(&consumer).await;
        assert_eq!(fresh.len(), 1);
        fresh[0].ack_with(AckKind::Term).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            fetch(&consumer).await.is_empty(),
            "a terminated message came back"
        );
        let info = consumer.info().await.unwrap();
        assert_eq!(info.num_ack_pending, 0);
        assert_eq!(info.num_pending, 0);
    });
}

#[test]
fn each_cron_tick_is_fired_by_one_node_and_the_last_tick_is_shared() {
    use tessera_events::{Journal, NewMessage};
    require_nats();
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str| {
        let cluster = Cluster::connect(&config(&server, name)).unwrap();
        let journal =
            tessera_embedded::EmbeddedJournal::open(&dir.path().join(format!("{name}.db")))
                .unwrap();
        let journal = ClaimedTicks::new(&cluster, Arc::new(journal));
        let mut sub = tessera_events::conformance::spec("shop/web/cron:0", "$cron/0");
        sub.max_attempts = 1;
        journal.register(name, &[sub]).unwrap();
        (journal, cluster)
    };
    let (a, _ca) = node("a");
    let (b, _cb) = node("b");
    let tick = |i: i64| tessera_events::from_unix_ms(1_700_000_000_000 + i * 1000);
    let message = |i: i64| NewMessage {
        id: Some(format!(
            "shop/web/cron:0@{}",
            tessera_events::unix_ms(tick(i))
        )),
        ..tessera_events::conformance::message("$cron/0", "tick")
    };
    let mut fired = 0;
    for i in 0..6 {
        // Whoever asks first gets it; the other is told it was not new.
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let x = first
            .cron_fire("shop", "shop/web/cron:0", tick(i), message(i))
            .unwrap();
        let y = second
            .cron_fire("shop", "shop/web/cron:0", tick(i), message(i))
            .unwrap();
        assert!(x && !y, "tick {i}: {x} {y}");
        fired += 1;
    }
    let delivered = a.lease("shop/web/cron:0", 100).unwrap().len()
        + b.lease("shop/web/cron:0", 100).unwrap().len();
    assert_eq!(
        delivered, fired,
        "each tick delivered once across both nodes"
    );
    // A node that never fired the schedule knows its last tick from the cluster.
    let (late, _cl) = node("late");
    assert_eq!(
        late.cron_last_tick("shop/web/cron:0").unwrap(),
        Some(tick(5))
    );
}

#[test]
fn jetstream_journal_passes_the_journal_conformance_suite() {
    require_nats();
    tessera_events::conformance::run(|test| {
        let server = NatsServer::start();
        let cluster = Cluster::connect(&config(&server, "conformance")).unwrap();
        let journal = JetStreamJournal::open(&cluster).unwrap();
        test(&journal);
    });
}

#[test]
fn leases_outlive_the_ack_wait_while_handlers_run_and_come_back_soon_after_their_node_dies() {
    use tessera_events::conformance::{message_with_id, ok};
    use tessera_events::{Journal, SubscriptionSpec};
    require_nats();
    let server = NatsServer::start();
    let ack_wait = Duration::from_millis(400);
    let open = |name: &str| {
        let cluster = Cluster::connect(&config(&server, name)).unwrap();
        JetStreamJournal::open_with(&cluster, ack_wait).unwrap()
    };
    let (a, b) = (open("a"), open("b"));
    let sub = SubscriptionSpec {
        timeout: Duration::from_secs(5),
        ..tessera_events::conformance::spec("shop/worker/orders", "orders")
    };
    a.register("a", std::slice::from_ref(&sub)).unwrap();
    b.register("b", std::slice::from_ref(&sub)).unwrap();
    a.publish(
        "shop",
        vec![
            message_with_id("orders", "slow"),
            message_with_id("orders", "doomed"),
        ],
    )
    .unwrap();
    assert_eq!(a.lease(&sub.id, 10).unwrap().len(), 2);
    // Handlers run for four ack waits: node a extends their leases meanwhile.
    std::thread::sleep(ack_wait * 4);
    assert!(
        b.lease(&sub.id, 10).unwrap().is_empty(),
        "redelivered while running"
    );
    a.ack(&sub.id, "slow", &ok()).unwrap();

    // Node a dies with `doomed` in flight: node b gets it once the ack wait has passed,
    // not after the subscription's whole timeout.
    drop(a);
    let died = Instant::now();
    let again = loop {
        let leased = b.lease(&sub.id, 10).unwrap();
        if !leased.is_empty() {
            break leased;
        }
        assert!(
            died.elapsed() < sub.timeout,
            "not redelivered within the timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = died.elapsed();
    assert_eq!(
        again
            .iter()
            .map(|d| (d.message.id.as_str(), d.attempt))
            .collect::<Vec<_>>(),
        [("doomed", 2)]
    );
    assert!(took < ack_wait * 3, "came back after {took:?}");
    b.ack(&sub.id, "doomed", &ok()).unwrap();
}

#[test]
fn one_sql_database_serves_every_node_exactly_and_survives_its_writer() {
    use tessera_data::{DataBackend, Migration, SqlValue, Statement};
    require_nats();
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        let cluster = Cluster::connect(&config(&server, name)).unwrap();
        let data = ClusterData::open(&cluster, dir.path().join(name)).unwrap();
        (data, cluster)
    };
    let nodes: Vec<(ClusterData, Cluster)> = ["a", "b", "c"].iter().map(|n| open(n)).collect();
    let sql = |i: usize| nodes[i].0.open_service("shop", "orders").unwrap().sql;
    let soon = || Instant::now() + Duration::from_secs(20);
    let migration = Migration {
        name: "001.sql".into(),
        sql: "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
              INSERT INTO counter VALUES (1, 0);
              CREATE TABLE orders (item TEXT NOT NULL);"
            .into(),
    };
    // Migrations run once, whichever nodes ask.
    assert_eq!(
        sql(0).migrate(std::slice::from_ref(&migration)).unwrap(),
        ["001.sql"]
    );
    assert!(
        sql(1)
            .migrate(std::slice::from_ref(&migration))
            .unwrap()
            .is_empty()
    );

    // A write through one node is read through another at once.
    sql(1)
        .execute("INSERT INTO orders VALUES ('first')", &[], soon())
        .unwrap();
    let rows = sql(2)
        .query("SELECT item FROM orders", &[], soon())
        .unwrap()
        .rows;
    assert_eq!(rows, [[SqlValue::Text("first".into())]]);

    // 300 transactional increments through all three nodes at once end exact.
    std::thread::scope(|scope| {
        for i in 0..3 {
            let db = sql(i);
            scope.spawn(move || {
                for _ in 0..100 {
                    db.batch(
                        &[
                            Statement {
                                sql: "UPDATE counter SET n = n + 1 WHERE id = 1".into(),
                                params: vec![],
                            },
                            Statement {
                                sql: "INSERT INTO orders VALUES ('x')".into(),
                                params: vec![],
                            },
                        ],
                        soon(),
                    )
                    .unwrap();
                }
            });
        }
    });
    for i in 0..3 {
        let n = sql(i)
            .query(
                "SELECT n, (SELECT count(*) FROM orders) FROM counter",
                &[],
                soon(),
            )
            .unwrap()
            .rows;
        assert_eq!(
            n,
            [[SqlValue::Integer(300), SqlValue::Integer(301)]],
            "node {i}"
        );
    }

    // The writer goes away: another node takes over within the lease's TTL and nothing
    // acknowledged is lost.
    let writer = (0..3)
        .find(|&i| {
            nodes[i]
                .0
                .open_service("shop", "orders")
                .unwrap()
                .sql
                .query_quick("SELECT 1", &[], Duration::from_millis(100))
                .is_some()
        })
        .expect("one node writes");
    let mut nodes = nodes;
    drop(nodes.remove(writer));
    let started = Instant::now();
    let db = nodes[0].0.open_service("shop", "orders").unwrap().sql;
    db.execute("INSERT INTO orders VALUES ('after')", &[], soon())
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took over after {took:?}");
    eprintln!("a new writer took over after {took:?}");
    let other = nodes[1].0.open_service("shop", "orders").unwrap().sql;
    let rows = other
        .query("SELECT count(*) FROM orders", &[], soon())
        .unwrap()
        .rows;
    assert_eq!(rows, [[SqlValue::Integer(302)]]);
}

#[test]
fn a_long_log_is_snapshotted_and_copies_that_fell_behind_or_are_new_start_from_the_snapshot() {
    use tessera_data::{DataBackend, Migration, SqlValue};
    require_nats();
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let options = SqlOptions {
        snapshot_entries: 50,
        snapshot_bytes: u64::MAX,
        snapshot_check: Duration::from_millis(100),
    };
    let open = |name: &str| {
        let cluster = Cluster::connect(&config(&server, name)).unwrap();
        let data = ClusterData::open_with(&cluster, dir.path().join(name), options).unwrap();
        (data, cluster)
    };
    let soon = || Instant::now() + Duration::from_secs(30);
    let sql = |node: &(ClusterData, Cluster)| node.0.open_service("shop", "orders").unwrap().sql;
    let a = open("a");
    let migration = Migration {
        name: "001.sql".into(),
        sql: "CREATE TABLE orders (id INTEGER PRIMARY KEY, body BLOB NOT NULL);".into(),
    };
    sql(&a).migrate(std::slice::from_ref(&migration)).unwrap();
    let insert = |node: &(ClusterData, Cluster), n: usize| {
        let db = sql(node);
        for _ in 0..n {
            db.execute(
                "INSERT INTO orders (body) VALUES (randomblob(500))",
                &[],
                soon(),
            )
            .unwrap();
        }
    };
    let summary =
        "SELECT count(*), sum(length(body)), group_concat(hex(substr(body, 1, 4)), '') FROM orders";
    insert(&a, 100);
    // `b` follows for a while, then goes away while the log grows and is compacted.
    let b = open("b");
    assert_eq!(
        sql(&b)
            .query("SELECT count(*) FROM orders", &[], soon())
            .unwrap()
            .rows,
        [[SqlValue::Integer(100)]]
    );
    drop(b);
    insert(&a, 200);

    let first_entry = || {
        let js = a.1.js();
        a.1.bridge().run(async move {
            let mut stream = js.get_stream("TESSERA_SQL_shop_orders").await.unwrap();
            stream.info().await.unwrap().state.first_sequence
        })
    };
    let waited = Instant::now();
    while first_entry() < 250 {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the log was not compacted: it starts at entry {}",
            first_entry()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let snapshots = || {
        let js = a.1.js();
        a.1.bridge().run(async move {
            let store = js
                .get_object_store(crate::setup::SQL_SNAPSHOTS_BUCKET)
                .await
                .unwrap();
            crate::sql::snapshot_names(&store, "shop/").await.unwrap()
        })
    };
    // Snapshots before the newest two are deleted once a newer one is stored.
    let waited = Instant::now();
    while snapshots().len() > 2 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "{} snapshots",
            snapshots().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!snapshots().is_empty());
    let expected = sql(&a).query(summary, &[], soon()).unwrap();
    assert_eq!(expected.rows[0][0], SqlValue::Integer(300));

    // A new node and the one that was away both start from the snapshot and the tail.
    let c = open("c");
    assert_eq!(sql(&c).query(summary, &[], soon()).unwrap(), expected);
    let b = open("b");
    assert_eq!(sql(&b).query(summary, &[], soon()).unwrap(), expected);
    // A transaction too large for one log entry is refused whole.
    let refused = sql(&c)
        .execute(
            "INSERT INTO orders (body) SELECT randomblob(400000) FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)",
            &[],
            soon(),
        )
        .unwrap_err();
    assert!(
        matches!(&refused, tessera_data::SqlError::TooLarge(m) if m.contains("per transaction")),
        "{refused:?}"
    );
    // And they keep following.
    insert(&c, 5);
    assert_eq!(
        sql(&b)
            .query("SELECT count(*) FROM orders", &[], soon())
            .unwrap()
            .rows,
        [[SqlValue::Integer(305)]]
    );

    // Deleting the app deletes its snapshots; a copy of the deleted log on a node that was
    // away is not taken for a copy of the new one.
    drop(b);
    a.0.purge_app("shop").unwrap();
    assert!(snapshots().is_empty(), "{} snapshots", snapshots().len());
    sql(&a).migrate(std::slice::from_ref(&migration)).unwrap();
    insert(&a, 1);
    let b = open("b");
    assert_eq!(
        sql(&b)
            .query("SELECT count(*) FROM orders", &[], soon())
            .unwrap()
            .rows,
        [[SqlValue::Integer(1)]]
    );
}
