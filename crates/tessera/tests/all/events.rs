//! Functions answering events through the real binary: schedules, topics with fan-out,
//! queues with work sharing, retries then the dead-letter queue and re-drive, async
//! invocation with status and callback, publishing from guests only for requests that
//! succeed, and no acknowledged message lost across `kill -9`.
//!
//! The `data` test guest handles events at `.../on/{name}`: it counts deliveries in its
//! key-value store (`count:{name}`, `seen:{name}:{ce-id}`), keeps the last delivery's
//! CloudEvents headers in `last:{name}`, and fails while `fail:{name}` is set.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{App, Node, client, eventually, ok};

const TOKEN: &str = "events-token-0123456789";

async fn kv(node: &Node, service: &str, key: &str) -> Option<String> {
    let r = client()
        .get(node.url(&format!("/{service}/kv/default/{key}")))
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    assert_eq!(r.status(), 200);
    Some(r.text().await.unwrap())
}

async fn count(node: &Node, service: &str, name: &str) -> u64 {
    kv(node, service, &format!("count:{name}"))
        .await
        .map_or(0, |v| v.parse().unwrap())
}

/// Every key in the service's `default` bucket, page by page.
async fn kv_keys(node: &Node, service: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client().get(node.url(&format!("/{service}/kv/default")));
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let page: Value = request.send().await.unwrap().json().await.unwrap();
        for key in page["keys"].as_array().unwrap() {
            keys.push(key.as_str().unwrap().to_string());
        }
        match page["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return keys,
        }
    }
}

fn deploy(node: &Node, app: &Path) {
    ok(node.cli(TOKEN, &["deploy", app.to_str().unwrap()]));
}

#[tokio::test]
async fn cron_fires_on_schedule_with_cloud_event_headers() {
    let app = App::new(
        r#"
[app]
name = "clock"

[services.ticker]
component = "{guest:data}"
routes = ["/ticker"]

[[services.ticker.cron]]
schedule = "@every 1s"
path = "/ticker/on/tick"
"#,
    );
    let node = Node::up(app.path(), &[]);
    eventually(Duration::from_secs(10), "three ticks", || async {
        count(&node, "ticker", "tick").await >= 3
            && kv(&node, "ticker", "last:tick").await.is_some()
    })
    .await;
    let last: Value =
        serde_json::from_str(&kv(&node, "ticker", "last:tick").await.unwrap()).unwrap();
    assert_eq!(last["ce-specversion"], "1.0");
    assert_eq!(last["ce-type"], "dev.tessera.cron.tick");
    assert!(last["ce-id"].as_str().unwrap().contains("cron"), "{last}");
    assert!(last["ce-time"].as_str().unwrap().ends_with('Z'), "{last}");
}

const PUBSUB: &str = r#"
[app]
name = "shop"

[services.billing]
component = "{guest:data}"
routes = ["/billing"]

[[services.billing.subscribe]]
topic = "orders.created"
path = "/billing/on/order"

[services.mailer]
component = "{guest:data}"
routes = ["/mailer"]

[[services.mailer.subscribe]]
topic = "orders.created"
path = "/mailer/on/order"

[services.worker-a]
component = "{guest:data}"
routes = ["/worker-a"]

[[services.worker-a.subscribe]]
topic = "jobs"
queue = "workers"
path = "/worker-a/on/job"

[services.worker-b]
component = "{guest:data}"
routes = ["/worker-b"]

[[services.worker-b.subscribe]]
topic = "jobs"
queue = "workers"
path = "/worker-b/on/job"

[services.flaky]
component = "{guest:data}"
routes = ["/flaky"]

[[services.flaky.subscribe]]
topic = "payments"
path = "/flaky/on/payment"
max_attempts = 3
backoff = "100ms"
max_backoff = "200ms"
"#;

fn pubsub_app() -> App {
    App::new(PUBSUB)
}

#[tokio::test]
async fn topics_fan_out_queues_share_work_and_failures_go_to_the_dead_letter_queue() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = pubsub_app();
    deploy(&node, app.path());

    // Fan-out: both subscribers get the message, with the same ce-id.
    let out = ok(node.cli(TOKEN, &["publish", "orders.created", r#"{"id":1}"#]));
    let id = out.trim().rsplit(' ').next().unwrap().to_string();
    eventually(Duration::from_secs(10), "both subscribers", || async {
        kv(&node, "billing", "last:order").await.is_some()
            && kv(&node, "mailer", "last:order").await.is_some()
    })
    .await;
    for service in ["billing", "mailer"] {
        let last: Value =
            serde_json::from_str(&kv(&node, service, "last:order").await.unwrap()).unwrap();
        assert_eq!(last["ce-id"], id.as_str(), "{last}");
        assert_eq!(last["body"], r#"{"id":1}"#);
        assert_eq!(last["content-type"], "application/json");
        assert_eq!(last["ce-source"], "/apps/shop");
    }

    // Work sharing: every job handled exactly once, by one of the two workers.
    for i in 0..20 {
        ok(node.cli(TOKEN, &["publish", "jobs", &format!("job {i}")]));
    }
    eventually(Duration::from_secs(20), "all jobs", || async {
        count(&node, "worker-a", "job").await + count(&node, "worker-b", "job").await == 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a, b) = (
        count(&node, "worker-a", "job").await,
        count(&node, "worker-b", "job").await,
    );
    assert_eq!(a + b, 20);
    assert!(a > 0 && b > 0, "work was not shared: {a} and {b}");

    // Failures: retried with backoff, then dead-lettered; listed, inspected, re-driven.
    let put = client()
        .put(node.url("/flaky/kv/default/fail:payment"))
        .body("yes")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let out = ok(node.cli(
        TOKEN,
        &[
            "publish",
            "payments",
            "pay 42",
            "--content-type",
            "text/plain",
        ],
    ));
    let payment = out.trim().rsplit(' ').next().unwrap().to_string();
    let subscription = "shop/flaky/payments";
    eventually(Duration::from_secs(10), "a dead letter", || async {
        ok(node.cli(TOKEN, &["dlq", "ls", subscription])).contains(&payment)
    })
    .await;
    assert_eq!(
        kv(&node, "flaky", "failed:payment").await.as_deref(),
        Some("3")
    );
    let last: Value =
        serde_json::from_str(&kv(&node, "flaky", "last:payment").await.unwrap()).unwrap();
    assert_eq!(
        last["ce-id"],
        payment.as_str(),
        "ce-id is stable across retries"
    );
    assert_eq!(last["x-tessera-attempt"], "3");
    let shown = ok(node.cli(TOKEN, &["dlq", "show", subscription, &payment]));
    assert!(
        shown.contains("pay 42") && shown.contains("attempts: 3"),
        "{shown}"
    );
    let stats = ok(node.cli(TOKEN, &["events"]));
    assert!(stats.contains(subscription), "{stats}");

    client()
        .delete(node.url("/flaky/kv/default/fail:payment"))
        .send()
        .await
        .unwrap();
    let out = ok(node.cli(TOKEN, &["dlq", "redrive", subscription]));
    assert!(out.contains("1"), "{out}");
    eventually(Duration::from_secs(10), "the re-driven payment", || async {
        count(&node, "flaky", "payment").await == 4
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "an empty dead-letter queue",
        || async { !ok(node.cli(TOKEN, &["dlq", "ls", subscription])).contains(&payment) },
    )
    .await;
}

#[tokio::test]
async fn guests_publish_only_when_their_request_succeeds() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = pubsub_app();
    deploy(&node, app.path());
    let http = client();

    let r = http
        .post(node.url("/billing/publish/orders.created"))
        .header("content-type", "text/plain")
        .body("from a guest")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(Duration::from_secs(10), "the guest's message", || async {
        kv(&node, "mailer", "last:order").await.is_some()
    })
    .await;
    let last: Value =
        serde_json::from_str(&kv(&node, "mailer", "last:order").await.unwrap()).unwrap();
    assert_eq!(last["ce-id"], id.as_str());
    assert_eq!(last["ce-source"], "/apps/shop/services/billing");
    assert_eq!(last["body"], "from a guest");

    // A request that fails publishes nothing.
    let r = http
        .post(node.url("/billing/publish/orders.created?status=500"))
        .body("ghost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&node, "mailer", "order").await, 1);
    assert_eq!(count(&node, "billing", "order").await, 1);
}

#[tokio::test]
async fn async_invocation_answers_202_then_runs_with_status_and_callback() {
    let data = tempfile::tempdir().unwrap();
    // A callback receiver on loopback, which the manifest allows and the node may reach.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let callback_url = format!("http://{receiver}/done");
    let node = Node::serve_with(data.path(), TOKEN, &["--allow-private-callbacks"]);
    let app = App::new(&PUBSUB.replace(
        "routes = [\"/billing\"]\n",
        &format!("routes = [\"/billing\"]\ncallbacks = [\"http://{receiver}\"]\n"),
    ));
    deploy(&node, app.path());
    let http = client();

    let received = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            buffer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buffer).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    socket
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    return body.to_string();
                }
            }
            if n == 0 {
                return String::new();
            }
        }
    });

    let r = http
        .put(node.url("/billing/kv/default/async-key"))
        .header("x-tessera-async", "1")
        .header("x-tessera-callback", &callback_url)
        .body("later")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_string();
    let status_path = accepted["status"].as_str().unwrap().to_string();
    assert!(status_path.ends_with(&id));

    eventually(Duration::from_secs(10), "the async call to run", || async {
        kv(&node, "billing", "async-key").await.as_deref() == Some("later")
    })
    .await;
    let started = Instant::now();
    let status = loop {
        let status: Value = http
            .get(node.admin_url(&status_path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["state"] == "succeeded" {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["status"], 204, "{status}");
    let callback: Value = serde_json::from_str(
        &tokio::time::timeout(Duration::from_secs(10), received)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(callback["id"], id.as_str());
    assert_eq!(callback["state"], "succeeded");
    assert_eq!(callback["status"], 204);

    // An unknown function is refused at once, not accepted.
    let r = http
        .post(node.url("/nowhere"))
        .header("x-tessera-async", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn no_acknowledged_message_is_lost_across_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let app = App::new(
        r#"
[app]
name = "crash"

[services.sink]
component = "{guest:data}"
routes = ["/sink"]
timeout = "5s"

[[services.sink.subscribe]]
topic = "work"
path = "/sink/on/work?sleep_ms=20"
concurrency = 4
"#,
    );
    let mut node = Node::serve(data.path(), TOKEN);
    deploy(&node, app.path());
    let http = client();
    let mut ids = BTreeSet::new();
    for i in 0..150 {
        let r = http
            .post(node.admin_url("/v1/apps/crash/topics/work"))
            .bearer_auth(TOKEN)
            .body(format!("message {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        let published: Value = r.json().await.unwrap();
        ids.insert(published["id"].as_str().unwrap().to_string());
    }
    // Kill while deliveries are in progress.
    eventually(Duration::from_secs(10), "processing to start", || async {
        count(&node, "sink", "work").await >= 10
    })
    .await;
    node.child.kill().unwrap();
    node.wait(Duration::from_secs(10));
    let node = Node::serve(data.path(), TOKEN);
    let started = Instant::now();
    loop {
        let mut missing = 0;
        for id in &ids {
            if kv(&node, "sink", &format!("seen:work:{id}"))
                .await
                .is_none()
            {
                missing += 1;
            }
        }
        if missing == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{missing} messages were never handled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Duplicates are allowed (at least once), but only as redeliveries of a known id.
    for key in kv_keys(&node, "sink").await {
        if let Some(id) = key.strip_prefix("seen:work:") {
            assert!(ids.contains(id), "a delivery carried an unknown ce-id {id}");
        }
    }
    let total = count(&node, "sink", "work").await;
    let mut handled = 0;
    for id in &ids {
        handled += kv(&node, "sink", &format!("seen:work:{id}"))
            .await
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    // The guest bumps `count:` before `seen:`, in two writes: a delivery killed between them
    // counts once more than it is seen. At most `concurrency` deliveries were in flight.
    assert!(
        handled <= total && total <= handled + 4,
        "{total} deliveries counted, {handled} seen"
    );
}
