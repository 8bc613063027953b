//! Two nodes in one process over one control store, one journal and one service-data
//! backend, each with its own runtime, routing table and gateway on 127.0.0.1:0: what a
//! cluster of nodes sharing backends needs from the seams. A change made through one node
//! is served by the other without a restart, racing deploys have one winner, migrations
//! run once, and a publish through one is delivered by the other through the journal's
//! wake-up rather than a poll.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_data::{DataBackend, Migration, SqlValue};
use tessera_embedded::{ControlStore, EmbeddedData, EmbeddedJournal};
use tessera_events::DispatcherConfig;
use tessera_node::{Node, NodeBuilder, NodeError, ServiceRelease};
use tessera_runtime::RuntimeConfig;
use tessera_store::conformance::config;
use tessera_store::{DeployOptions, RevisionConfig, ServiceDeploy, StoreError, Subscription};

use crate::util::{client, guest};

/// How long a change made through one node may take to be served by the other.
const PROPAGATION: Duration = Duration::from_secs(1);

struct Pair {
    _dir: tempfile::TempDir,
    a: Node,
    b: Node,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    data: Arc<EmbeddedData>,
    stop: tokio::sync::watch::Sender<bool>,
    gateways: Vec<tokio::task::JoinHandle<()>>,
}

/// Two nodes over shared backends. Both run their events and change watchers; only
/// those listed in `dispatching` run a dispatcher.
async fn pair(dispatching_a: bool) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ControlStore::open(dir.path()).unwrap());
    let journal = Arc::new(EmbeddedJournal::open(&dir.path().join("events.db")).unwrap());
    let data = Arc::new(EmbeddedData::new(dir.path().join("services")));
    let node = |id: &str| {
        NodeBuilder::new(store.clone(), store.clone(), data.clone(), journal.clone())
            .id(id)
            .runtime(RuntimeConfig {
                // One compile cache: what one node compiled at deploy, the other maps.
                cache_dir: Some(dir.path().join("compiled")),
                ..RuntimeConfig::default()
            })
            // A poll that never comes within a test: deliveries must be woken.
            .dispatcher(DispatcherConfig {
                idle_poll: Duration::from_secs(600),
                ..DispatcherConfig::default()
            })
            .build()
            .unwrap()
    };
    let a = node("node-a");
    let b = node("node-b");
    if dispatching_a {
        a.start_events();
    }
    b.start_events();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut gateways = Vec::new();
    let mut addrs = Vec::new();
    for node in [&a, &b] {
        let listener = tessera_gateway::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        addrs.push(listener.local_addr().unwrap());
        let mut stopped = stopped.clone();
        let routes = node.routes();
        gateways.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            tessera_gateway::serve(listener, routes, Default::default(), shutdown)
                .await
                .unwrap();
        }));
    }
    Pair {
        _dir: dir,
        a,
        b,
        a_addr: addrs[0],
        b_addr: addrs[1],
        data,
        stop,
        gateways,
    }
}

impl Pair {
    async fn shutdown(self) {
        self.stop.send_replace(true);
        for gateway in self.gateways {
            gateway.await.unwrap();
        }
        self.a.stop_events().await;
        self.b.stop_events().await;
    }
}

fn release(node: &Node, name: &str, component: &Path, config: RevisionConfig) -> ServiceRelease {
    let bytes = std::fs::read(component).unwrap();
    let sha256 = node.upload_for(name, component, &bytes).unwrap();
    ServiceRelease {
        service: ServiceDeploy {
            name: name.into(),
            sha256,
            config,
        },
        migrations: Vec::new(),
    }
}

/// Runs a blocking node operation off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// GETs `path` until `accept` holds for (status, revision header, body), within `limit`;
/// returns how long it took.
async fn served_within(
    limit: Duration,
    addr: SocketAddr,
    path: &str,
    what: &str,
    accept: impl Fn(u16, &str, &str) -> bool,
) -> Duration {
    let client = client();
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        if let Ok(response) = client.get(format!("http://{addr}{path}")).send().await {
            let status = response.status().as_u16();
            let revision = response
                .headers()
                .get(tessera_runtime::headers::REVISION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = response.text().await.unwrap_or_default();
            if accept(status, &revision, &body) {
                return start.elapsed();
            }
            last = format!("{status} {revision} {body}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not served within {limit:?}: {what}; last answer: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_a_traffic_change_and_a_secret_set_through_one_node_are_served_by_the_other() {
    let pair = pair(true).await;
    let (a, b) = (pair.a.clone(), pair.b.clone());
    let data = guest("data");
    assert_eq!(crate::util::get(pair.b_addr, "/app/config/TOKEN").0, 404);

    // Deploy through A; B serves it without anything said to B.
    let first = release(&a, "svc", &data, config(&["/app"]));
    let node = a.clone();
    blocking(move || node.deploy("shop", &[first], &DeployOptions::default()))
        .await
        .unwrap();
    let took = served_within(
        PROPAGATION,
        pair.b_addr,
        "/app/config",
        "the deploy",
        |s, r, _| s == 200 && r == "r1",
    )
    .await;
    println!("deploy through A served by B after {took:?}");

    // A second revision through A, then all traffic back to the first through A.
    let mut second_config = config(&["/app"]);
    second_config.config = vec![("GREETING".into(), "two".into())];
    let second = release(&a, "svc", &data, second_config);
    let node = a.clone();
    blocking(move || node.deploy("shop", &[second], &DeployOptions::default()))
        .await
        .unwrap();
    served_within(
        PROPAGATION,
        pair.b_addr,
        "/app/config/GREETING",
        "revision 2",
        |s, r, b| s == 200 && r == "r2" && b == "two",
    )
    .await;
    let node = a.clone();
    blocking(move || node.set_traffic("shop", "svc", &[(1, 100)]))
        .await
        .unwrap();
    let took = served_within(
        PROPAGATION,
        pair.b_addr,
        "/app/config",
        "the traffic change",
        |s, r, _| s == 200 && r == "r1",
    )
    .await;
    println!("traffic change through A served by B after {took:?}");

    // A secret set through A reaches B's instances (B's loaded revision is renewed).
    let node = a.clone();
    blocking(move || node.set_secret("shop", "svc", "TOKEN", "s3cret"))
        .await
        .unwrap();
    let took = served_within(
        PROPAGATION,
        pair.b_addr,
        "/app/config/TOKEN",
        "the secret",
        |s, _, b| s == 200 && b == "s3cret",
    )
    .await;
    println!("secret set through A served by B after {took:?}");

    // And the other way round: B removes the app, A stops serving it.
    let node = b.clone();
    assert!(
        blocking(move || node.remove_app("shop", false))
            .await
            .unwrap()
    );
    served_within(
        PROPAGATION,
        pair.a_addr,
        "/app/config",
        "the removal",
        |s, _, _| s == 404,
    )
    .await;
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_racing_through_two_nodes_have_one_winner_and_migrations_run_once() {
    let pair = pair(true).await;
    let data = guest("data");
    let migration = Migration {
        name: "001_counter.sql".into(),
        sql: "CREATE TABLE runs (n INTEGER); INSERT INTO runs VALUES (1);".into(),
    };
    let mut conflicts = 0;
    // Each round races two deploys of a fresh app. Both read the app as absent before
    // either commits unless one finishes before the other starts, which a round may show
    // (then both win, one after the other); a conflict must come up within a few rounds,
    // and a round never has two losers.
    for round in 0..5 {
        let app = format!("race{round}");
        let mut attempts = Vec::new();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        for (node, tag) in [(pair.a.clone(), "a"), (pair.b.clone(), "b")] {
            let mut config = config(&[&format!("/{app}")]);
            config.config = vec![("WINNER".into(), tag.into())];
            let mut release = release(&node, "svc", &data, config);
            release.migrations = vec![migration.clone()];
            let (app, barrier) = (app.clone(), barrier.clone());
            attempts.push(tokio::task::spawn_blocking(move || {
                barrier.wait();
                node.deploy(&app, &[release], &DeployOptions::default())
            }));
        }
        let mut won = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(_) => won += 1,
                Err(NodeError::Store(StoreError::Conflict { app: named, .. })) => {
                    assert_eq!(named, app);
                    conflicts += 1;
                }
                Err(other) => panic!("round {round}: unexpected error: {other}"),
            }
        }
        assert!(won >= 1, "round {round}: both deploys lost");
        let state = pair.a.app(&app).unwrap().expect("the app exists");
        assert_eq!(
            state.services[0].revisions.len(),
            won,
            "round {round}: one revision per winning deploy"
        );
        // The migration ran once on the service's data, whoever applied it.
        let sql = pair.data.open_service(&app, "svc").unwrap().sql;
        let rows = sql
            .query(
                "SELECT count(*) FROM runs",
                &[],
                Instant::now() + Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(rows.rows, vec![vec![SqlValue::Integer(1)]], "round {round}");
        if conflicts > 0 {
            break;
        }
    }
    assert!(conflicts > 0, "no round raced into a conflict");
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_through_one_node_is_delivered_by_the_other_without_a_poll() {
    // Only B dispatches, and its poll is ten minutes away: the journal's wake-up must
    // bring the delivery.
    let pair = pair(false).await;
    let mut config = config(&["/app"]);
    config.subscriptions = vec![Subscription {
        max_attempts: 3,
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        concurrency: 4,
        batch: 8,
        ..Subscription::new("orders", "/app/on/orders")
    }];
    let svc = release(&pair.a, "svc", &guest("data"), config);
    let node = pair.a.clone();
    blocking(move || node.deploy("shop", &[svc], &DeployOptions::default()))
        .await
        .unwrap();
    // B has the subscription once its table has the service.
    served_within(
        PROPAGATION,
        pair.b_addr,
        "/app/config",
        "the deploy",
        |s, _, _| s == 200,
    )
    .await;
    // Let B's worker find nothing and go to sleep.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let node = pair.a.clone();
    let started = Instant::now();
    let published = blocking(move || node.publish("shop", "orders", b"one".to_vec(), None, None))
        .await
        .unwrap();
    assert!(published.new);
    let kv = pair.data.open_service("shop", "svc").unwrap().kv;
    let limit = Duration::from_secs(10);
    loop {
        if kv.get("default", "count:orders").unwrap().as_deref() == Some(b"1".as_slice()) {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "the publish through A was not delivered by B"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "published through A, handled by B after {:?}",
        started.elapsed()
    );
    pair.shutdown().await;
}
