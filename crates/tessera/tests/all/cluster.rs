//! Cluster mode through the real binary on real `nats-server` processes: nodes share
//! deploys, artifacts and key-value data; `tessera nodes` follows who is up; a node killed
//! with -9 costs no request on the others and rejoins; a node cut off from NATS keeps
//! serving and refuses writes with 503; start-up errors are clear.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_cluster::testing::NatsServer;

use crate::util::{App, Node, client, ok, serve_command, tessera};

const TOKEN: &str = "cluster-token-0123456789";

fn cluster_node(data: &Path, url: &str, name: &str) -> Node {
    Node::start_command(serve_command(
        data,
        TOKEN,
        &["--cluster", url, "--node", name],
    ))
}

fn counter_app() -> App {
    App::new(
        r#"
[app]
name = "tally"

[services.counter]
component = "{guest:counter}"
routes = ["/c"]
"#,
    )
}

async fn nodes(node: &Node) -> Vec<Value> {
    let response = client()
        .get(node.admin_url("/v1/nodes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["nodes"].as_array().unwrap().clone()
}

fn state_of<'a>(nodes: &'a [Value], name: &str) -> Option<&'a str> {
    nodes
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["state"].as_str())
}

/// Polls `url` until it answers `status` with `body`, returning how long that took.
async fn until_served(url: &str, status: u16, body: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(r) = client().get(url).send().await
            && r.status().as_u16() == status
            && r.text().await.unwrap_or_default() == body
        {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{url} not served within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn nodes_share_deploys_and_keys_and_survive_a_killed_node() {
    let nats = NatsServer::start();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = cluster_node(data_a.path(), &nats.url(), "a");
    let b = cluster_node(data_b.path(), &nats.url(), "b");

    // Deployed through a, served by b (which fetches the artifact and compiles it).
    let app = counter_app();
    ok(a.cli(TOKEN, &["deploy", app.path().to_str().unwrap()]));
    let r = client()
        .put(a.url("/c/set/greeting"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let took = until_served(&b.url("/c/get/greeting"), 200, "hi", Duration::from_secs(5)).await;
    eprintln!("deploy through a served by b after {took:?}");

    // Increments through both nodes at once are exact.
    let mut calls = Vec::new();
    for i in 0..40 {
        let node = if i % 2 == 0 { &a } else { &b };
        calls.push(client().post(node.url("/c/incr/hits")).send());
    }
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    until_served(&a.url("/c/get/hits"), 200, "40", Duration::from_secs(1)).await;
    until_served(&b.url("/c/get/hits"), 200, "40", Duration::from_secs(1)).await;

    // Both nodes are up, with their addresses; the CLI says so too.
    let listed = nodes(&b).await;
    assert_eq!(state_of(&listed, "a"), Some("up"), "{listed:?}");
    assert_eq!(state_of(&listed, "b"), Some("up"), "{listed:?}");
    let b_entry = listed.iter().find(|n| n["name"] == "b").unwrap();
    assert_eq!(b_entry["gateway"], b.addr.to_string());
    let table = ok(b.cli(TOKEN, &["nodes"]));
    assert!(
        table.contains("NODE") && table.contains(&b.addr.to_string()),
        "{table}"
    );

    // A deploy that needs SQL is refused in cluster mode, naming why.
    let sql = App::new(
        r#"
[app]
name = "ledger"

[services.books]
component = "{guest:data}"
routes = ["/books"]
"#,
    );
    let out = b.cli(TOKEN, &["deploy", sql.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SQL") && err.contains("cluster"), "{err}");

    // Kill a with -9 while eight clients keep b busy (reads and key-value writes): b
    // answers every request, and shows a down within 5 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|i| {
            let (read, write) = (b.url("/c/get/hits"), b.url("/c/incr/load"));
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = if i % 2 == 0 {
                        client().get(&read).send().await
                    } else {
                        client().post(&write).send().await
                    };
                    match r {
                        Ok(r) if r.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let mut down_after = None;
    while killed.elapsed() < Duration::from_secs(6) {
        if down_after.is_none() && state_of(&nodes(&b).await, "a") == Some("down") {
            down_after = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut served, mut failed) = (0, 0);
    for task in load {
        let (ok, bad) = task.await.unwrap();
        served += ok;
        failed += bad;
    }
    assert_eq!(
        failed, 0,
        "b failed requests while a was killed ({served} served)"
    );
    let down_after = down_after.expect("a shown down");
    eprintln!(
        "a shown down {down_after:?} after kill -9; b served {served} requests from 8 clients, 0 failed"
    );
    assert!(down_after <= Duration::from_secs(5), "{down_after:?}");
    let table = ok(b.cli(TOKEN, &["nodes"]));
    assert!(table.contains("down ("), "{table}");

    // Restarted on its data directory, a rejoins and serves what the cluster holds.
    let a = cluster_node(data_a.path(), &nats.url(), "a");
    until_served(&a.url("/c/get/hits"), 200, "40", Duration::from_secs(5)).await;
    let listed = nodes(&b).await;
    assert_eq!(state_of(&listed, "a"), Some("up"), "{listed:?}");
}

/// Sets a secret of the `greeter` app's `web` service through `node`'s control API.
async fn put_secret(node: &Node) -> reqwest::Response {
    client()
        .put(node.admin_url("/v1/apps/greeter/services/web/secrets/KEY"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"value": "v"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_node_cut_off_from_nats_keeps_serving_and_refuses_writes_with_503() {
    let mut nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let node = cluster_node(data.path(), &nats.url(), "solo");
    let app = App::new(
        r#"
[app]
name = "greeter"

[services.web]
component = "{guest:hello}"
routes = ["/"]
"#,
    );
    ok(node.cli(TOKEN, &["deploy", app.path().to_str().unwrap()]));
    until_served(
        &node.url("/"),
        200,
        "hello from tessera\n",
        Duration::from_secs(2),
    )
    .await;

    nats.kill();
    // Give the client a moment to notice the lost connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..20 {
        let r = client().get(node.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = put_secret(&node).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "cluster_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("not connected to NATS"), "{message}");
    // Reads answer from what the node has.
    let listed = ok(node.cli(TOKEN, &["ls"]));
    assert!(listed.contains("greeter"), "{listed}");

    // NATS comes back (same store): writes go through again.
    nats.restart();
    let start = Instant::now();
    loop {
        let r = put_secret(&node).await;
        if r.status().is_success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "writes did not resume: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("writes resumed {:?} after NATS restarted", start.elapsed());

    // And it follows changes made elsewhere after the outage: a second node deploys.
    let other_data = tempfile::tempdir().unwrap();
    let other = cluster_node(other_data.path(), &nats.url(), "other");
    let second = counter_app();
    ok(other.cli(TOKEN, &["deploy", second.path().to_str().unwrap()]));
    until_served(
        &node.url("/c/get/none"),
        404,
        "absent",
        Duration::from_secs(5),
    )
    .await;
}

/// `tessera serve --cluster` with this URL, expected to fail before binding; its stderr.
fn fails_to_start(url: &str, node: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let out = tessera()
        .env("TESSERA_TOKEN", TOKEN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--data")
        .arg(data.path())
        .args(["--cluster", url, "--node", node])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("gateway listening"), "{err}");
    err
}

#[test]
fn start_up_errors_name_the_server_and_what_is_wrong() {
    let err = fails_to_start("nats://127.0.0.1:1", "a");
    assert!(
        err.contains("cannot reach NATS at nats://127.0.0.1:1"),
        "{err}"
    );

    let plain = NatsServer::start_without_jetstream();
    let err = fails_to_start(&plain.url(), "a");
    assert!(err.contains("does not have JetStream enabled"), "{err}");

    let nats = NatsServer::start();
    let err = fails_to_start(&nats.url(), "bad.name");
    assert!(err.contains("cannot name a node"), "{err}");
    let data = tempfile::tempdir().unwrap();
    let _live = cluster_node(data.path(), &nats.url(), "taken");
    let err = fails_to_start(&nats.url(), "taken");
    assert!(err.contains("held by a live node"), "{err}");
}

#[tokio::test]
async fn a_cron_schedule_ticks_once_cluster_wide_and_survives_the_node_that_fired() {
    let nats = NatsServer::start();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = cluster_node(data_a.path(), &nats.url(), "a");
    let b = cluster_node(data_b.path(), &nats.url(), "b");
    let app = App::new(
        r#"
[app]
name = "clock"

[services.counter]
component = "{guest:counter}"
routes = ["/c"]

[[services.counter.cron]]
schedule = "@every 1s"
path = "/c/incr/ticks"
"#,
    );
    ok(a.cli(TOKEN, &["deploy", app.path().to_str().unwrap()]));
    let count = |node: &Node| {
        let url = node.url("/c/get/ticks");
        async move {
            let r = client().get(url).send().await.unwrap();
            match r.status().as_u16() {
                200 => r.text().await.unwrap().parse::<u64>().unwrap(),
                _ => 0,
            }
        }
    };
    // Both nodes run the schedule; each tick is delivered by one of them.
    until_served(&b.url("/c/get/none"), 404, "absent", Duration::from_secs(5)).await;
    let start = count(&b).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ticked = count(&b).await - start;
    assert!(
        (4..=7).contains(&ticked),
        "{ticked} ticks in 6 s on two nodes"
    );

    // Kill whichever node: the schedule goes on, once per tick.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let before = count(&b).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = count(&b).await - before;
    assert!(
        (3..=6).contains(&after),
        "{after} ticks in 5 s after a node was killed"
    );
}
