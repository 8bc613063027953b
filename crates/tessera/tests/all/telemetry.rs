//! What an operator sees of a running node through the real binary: Prometheus metrics on
//! the admin listener behind the token, and services' log lines (guest output with its
//! request id) through `tessera logs`, read back or followed live.
//!
//! The `inspect` test guest prints `inspect: handling PATH` to stdout and
//! `inspect: stderr line` to stderr on every request.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{App, Node, client, ok, sample, scrape};

const TOKEN: &str = "telemetry-token-0123456789";

fn shop() -> App {
    App::new(
        r#"
[app]
name = "shop"

[services.front]
component = "{guest:inspect}"
routes = ["/front"]

[services.sink]
component = "{guest:inspect}"
routes = ["/sink"]

[[services.sink.subscribe]]
topic = "orders"
path = "/sink/on/order"
"#,
    )
}

fn deploy(node: &Node, app: &Path) {
    ok(node.cli(TOKEN, &["deploy", app.to_str().unwrap()]));
}

async fn get(node: &Node, path: &str, request_id: &str) {
    let r = client()
        .get(node.url(path))
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn metrics_are_served_to_prometheus_behind_the_token() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    deploy(&node, shop().path());
    let http = client();

    let r = http.get(node.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(node.admin_url("/metrics"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = http
        .get(node.admin_url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let metrics = r.text().await.unwrap();
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert!(
        sample(&metrics, "tessera_code_memory_budget_bytes").is_some(),
        "{metrics}"
    );
    assert!(
        sample(&metrics, r#"tessera_compile_cache_total{result="miss"}"#).is_some(),
        "{metrics}"
    );

    // Every event subscription's depth is read at scrape time.
    let events: Value = http
        .get(node.admin_url("/v1/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let subscriptions = events["subscriptions"].as_array().unwrap();
    assert!(!subscriptions.is_empty(), "{events}");
    for subscription in subscriptions {
        let id = subscription["id"].as_str().unwrap();
        for gauge in [
            "tessera_event_ready",
            "tessera_event_in_flight",
            "tessera_event_dead",
        ] {
            let series = format!("{gauge}{{subscription=\"{id}\"}}");
            assert!(sample(&metrics, &series).is_some(), "{series}\n{metrics}");
        }
    }
}

#[tokio::test]
async fn request_counters_move_with_traffic() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    deploy(&node, shop().path());
    let series = r#"tessera_requests_total{app="shop",service="front",revision="r1",class="2xx"}"#;
    let before = sample(&scrape(&node, TOKEN).await, series).unwrap_or(0.0);
    for i in 0..5 {
        get(&node, &format!("/front/{i}"), &format!("metrics-{i}")).await;
    }
    let metrics = scrape(&node, TOKEN).await;
    let after = sample(&metrics, series).unwrap_or(0.0);
    assert!(after - before >= 5.0, "{before} -> {after}\n{metrics}");
    let count =
        r#"tessera_request_duration_seconds_count{app="shop",service="front",revision="r1"}"#;
    assert!(sample(&metrics, count).unwrap_or(0.0) >= 5.0, "{metrics}");
}

#[tokio::test]
async fn logs_show_guest_lines_with_their_request_id() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    deploy(&node, shop().path());
    get(&node, "/front/first", "log-req-1").await;
    get(&node, "/front/second", "log-req-2").await;

    let out = ok(node.cli(TOKEN, &["logs", "front"]));
    let first = out
        .lines()
        .find(|l| l.contains("inspect: handling /front/first"))
        .unwrap_or_else(|| panic!("no guest line in:\n{out}"));
    assert!(first.contains(" stdout "), "{first}");
    assert!(first.contains("[log-req-1]"), "{first}");
    // TIME first: an RFC 3339 timestamp.
    let time = first.split(' ').next().unwrap();
    assert!(humantime_like(time), "{first}");
    assert!(
        out.lines()
            .any(|l| l.contains(" stderr ") && l.contains("[log-req-2] inspect: stderr line")),
        "{out}"
    );
    // Oldest first.
    let position = |needle: &str| out.find(needle).unwrap();
    assert!(
        position("/front/first") < position("/front/second"),
        "{out}"
    );

    // Another service's lines are not mixed in.
    assert!(!out.contains("/sink"), "{out}");

    let recent = ok(node.cli(TOKEN, &["logs", "front", "--since", "1h"]));
    assert!(
        recent.contains("inspect: handling /front/first"),
        "{recent}"
    );
    let future = ok(node.cli(TOKEN, &["logs", "front", "--since", "2999-01-01T00:00:00Z"]));
    assert!(future.trim().is_empty(), "{future}");
    let last = ok(node.cli(TOKEN, &["logs", "front", "--app", "shop", "--limit", "1"]));
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(last.contains("[log-req-2] inspect: stderr line"), "{last}");

    // The same through the API, and its errors.
    let http = client();
    let json: Value = http
        .get(node.admin_url("/v1/apps/shop/services/front/logs?limit=2"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let logs = json["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 2, "{json}");
    assert_eq!(logs[1]["request_id"], "log-req-2");
    assert_eq!(logs[1]["stream"], "stderr");
    assert_eq!(logs[1]["app"], "shop");
    assert!(logs[0]["seq"].as_u64() < logs[1]["seq"].as_u64(), "{json}");
    let r = http
        .get(node.admin_url("/v1/apps/shop/services/nope/logs"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(node.admin_url("/v1/apps/shop/services/front/logs?since=yesterday-ish"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(node.admin_url("/v1/apps/shop/services/front/logs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let failed = node.cli(TOKEN, &["logs", "nope"]);
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("no deployed app has a service `nope`")
    );
}

fn humantime_like(text: &str) -> bool {
    text.len() >= 20 && text.ends_with('Z') && text.as_bytes()[10] == b'T'
}

/// A running `tessera logs -f`, killed on drop.
struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Follower {
    fn start(node: &Node, token: &str, service: &str) -> Follower {
        let mut child = crate::util::tessera()
            .env("TESSERA_SERVER", node.admin_url(""))
            .env("TESSERA_TOKEN", token)
            .args(["logs", service, "-f"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tessera logs -f");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                collected.lock().unwrap().push(line);
            }
        });
        Follower { child, lines }
    }

    fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return Some(line.clone());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits for the command to end by itself.
    fn wait(&mut self, timeout: Duration) {
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < timeout,
                "`logs -f` still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn logs_follow_streams_lines_printed_after_it_started() {
    // `up` keeps guest lines for `logs` too, and still prints them to its terminal.
    let app = shop();
    let mut node = app.up();
    get(&node, "/front/backlog", "follow-0").await;
    assert!(
        node.stdout
            .wait_for(
                "[front follow-0] inspect: handling /front/backlog",
                Duration::from_secs(5)
            )
            .is_some(),
        "{}",
        node.stdout.text()
    );

    let mut follower = Follower::start(&node, "", "front");
    // The backlog comes first; once it is here the follower is subscribed.
    let backlog = follower.wait_for("/front/backlog", Duration::from_secs(30));
    assert!(backlog.is_some(), "no backlog: {}", follower.text());

    get(&node, "/front/live", "follow-1").await;
    let live = follower.wait_for("inspect: handling /front/live", Duration::from_secs(10));
    let live = live.unwrap_or_else(|| panic!("no live line: {}", follower.text()));
    assert!(live.contains("[follow-1]"), "{live}");
    // Each line once: the backlog is not repeated by the live stream.
    let text = follower.text();
    assert_eq!(text.matches("/front/backlog").count(), 1, "{text}");

    // A follower does not keep the node from shutting down: its stream ends, and so
    // does the command.
    node.terminate();
    assert!(node.wait(Duration::from_secs(10)).success());
    follower.wait(Duration::from_secs(10));
}
