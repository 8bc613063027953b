//! WASI 0.3 components (`wasi:http/handler@0.3.0`) served next to 0.2 ones through the
//! real binary: the same routes, limits, errors, streaming bodies, request ids and
//! instance reuse.
//!
//! The `p3` test guest answers `.../hello` with `hello from wasi 0.3 <instance> <served>`,
//! streams `.../echo` back, waits `.../sleep?ms=N` on the host's clock and panics on
//! `.../trap`.

use std::collections::HashSet;

use std::time::Duration;

use crate::util::{App, Node, client, error_code, eventually, instance_served, ok, scrape};

const TOKEN: &str = "p3-token-0123456789abcdef";

const APP: &str = r#"
[app]
name = "p3"

[services.fresh]
component = "{guest:p3}"
routes = ["/fresh"]

[services.kept]
component = "{guest:p3}"
routes = ["/kept"]
reuse = 50
timeout = "1s"

[services.classic]
component = "{guest:hello}"
routes = ["/classic"]
"#;

#[tokio::test]
async fn a_wasi_0_3_component_is_served_beside_0_2_with_reuse_and_failures_contained() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = App::new(APP);
    ok(node.cli(TOKEN, &["deploy", app.path().to_str().unwrap()]));
    let http = client();

    // A 0.3 hello, and a 0.2 service beside it.
    let r = http.get(node.url("/fresh/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text().await.unwrap().starts_with("hello from wasi 0.3 "),
        "not the 0.3 guest"
    );
    let r = http.get(node.url("/classic")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello from tessera\n");

    // A fresh instance per request by default; one instance for many with `reuse`.
    let mut fresh = HashSet::new();
    for i in 0..3 {
        let (id, count) = instance_served(&node, "/fresh/hello", &format!("f-{i}")).await;
        assert_eq!(count, 1);
        fresh.insert(id);
    }
    assert_eq!(fresh.len(), 3, "{fresh:?}");
    let first = instance_served(&node, "/kept/hello", "k-0").await;
    for i in 1..5 {
        let (id, count) = instance_served(&node, "/kept/hello", &format!("k-{i}")).await;
        assert_eq!((id.as_str(), count), (first.0.as_str(), i + 1));
    }
    // Its output carries each request's id.
    let line = format!("[kept k-4] p3 {} request 5", first.0);
    assert!(
        node.stdout
            .wait_for(&line, std::time::Duration::from_secs(5))
            .is_some(),
        "{line} not in:\n{}",
        node.stdout.text()
    );

    // An async sleep on the host's clock, and a body streamed both ways.
    let (id, _) = instance_served(&node, "/kept/sleep?ms=50", "k-sleep").await;
    assert_eq!(id, first.0);
    let body: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    let r = http
        .post(node.url("/kept/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echoed = r.bytes().await.unwrap();
    assert!(
        echoed == body,
        "echoed {} bytes, not the 4 MiB sent",
        echoed.len()
    );

    // A trap drops the instance; the next request gets a new one.
    let r = http.get(node.url("/kept/trap")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(error_code(r).await, "guest_trap");
    let (after_trap, count) = instance_served(&node, "/kept/hello", "k-after-trap").await;
    assert_eq!(count, 1, "the trapped instance was reused");
    assert_ne!(after_trap, first.0);

    // So does a timeout.
    let r = http
        .get(node.url("/kept/sleep?ms=5000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(error_code(r).await, "timeout");
    let (after_timeout, count) = instance_served(&node, "/kept/hello", "k-after-timeout").await;
    assert_eq!(count, 1, "the timed-out instance was reused");
    assert_ne!(after_timeout, after_trap);

    // A client that stops reading a streamed body leaves its instance unfit to serve
    // again (it may hold half-done work): the next request gets a new one.
    let (before, _) = instance_served(&node, "/kept/hello", "k-before-abandon").await;
    {
        use std::io::{Read, Write};
        let mut socket = std::net::TcpStream::connect(node.addr).unwrap();
        socket
            .write_all(b"GET /kept/stream?mb=256 HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 4096];
        let read = socket.read(&mut first).unwrap();
        assert!(
            String::from_utf8_lossy(&first[..read]).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&first[..read])
        );
    }
    let (after_abandon, count) = instance_served(&node, "/kept/hello", "k-after-abandon").await;
    assert_eq!(count, 1, "the abandoned instance was reused");
    assert_ne!(after_abandon, before);

    // Concurrent requests each get an instance of their own and all succeed.
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let url = node.url("/kept/sleep?ms=300");
            tokio::spawn(async move {
                let r = client()
                    .get(url)
                    .header("x-request-id", format!("c-{i}"))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    for call in calls {
        let (status, text) = call.await.unwrap();
        assert_eq!(status, 200, "{text}");
    }
}

const SHARED: &str = r#"
[app]
name = "p3"

[services.shared]
component = "{guest:p3}"
routes = ["/shared"]
reuse = 1000
reuse_concurrency = 16
timeout = "6s"

[services.brief]
component = "{guest:p3}"
routes = ["/brief"]
reuse = 1000
reuse_concurrency = 8
timeout = "1s"
"#;

/// GETs `path` from a task of its own, with `request_id`: the answer's status and body.
fn spawn_get(node: &Node, path: &str, request_id: &str) -> tokio::task::JoinHandle<(u16, String)> {
    let url = node.url(path);
    let request_id = request_id.to_string();
    tokio::spawn(async move {
        let r = client()
            .get(url)
            .header("x-request-id", request_id)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    })
}

/// A `p3` guest's sleep answer (`slept N ms together P ID SERVED`): peak and instance id.
fn slept(text: &str) -> (u32, String) {
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.get(3), Some(&"together"), "{text}");
    (words[4].parse().unwrap(), words[5].to_string())
}

/// The value of `metric` for revision r1 of `service` of this app (with `extra` labels),
/// 0 when absent.
fn metric(metrics: &str, metric: &str, service: &str, extra: &str) -> f64 {
    crate::util::service_metric(metrics, metric, "p3", service, extra)
}

#[tokio::test]
async fn many_requests_share_one_wasi_0_3_instance_at_once_and_a_failure_ends_only_it() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = App::new(SHARED);
    ok(node.cli(TOKEN, &["deploy", app.path().to_str().unwrap()]));

    // Sixteen sleeps at once: one instance holds them all at the same time.
    let calls: Vec<_> = (0..16)
        .map(|i| spawn_get(&node, "/shared/sleep?ms=1500", &format!("s-{i}")))
        .collect();
    let mut instances = HashSet::new();
    let mut peak = 0;
    for call in calls {
        let (status, text) = call.await.unwrap();
        assert_eq!(status, 200, "{text}");
        let (together, id) = slept(&text);
        peak = peak.max(together);
        instances.insert(id);
    }
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(peak, 16, "the sleeps did not all wait at once");
    let first = instances.into_iter().next().unwrap();
    let metrics = scrape(&node, TOKEN).await;
    assert_eq!(
        metric(&metrics, "tessera_instances_created_total", "shared", ""),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "tessera_instances_reused_total", "shared", ""),
        15.0,
        "{metrics}"
    );
    // Lines printed while several requests were in flight carry the instance's tag.
    assert!(
        node.stdout
            .wait_for("[shared instance-0] p3 ", Duration::from_secs(5))
            .is_some(),
        "{}",
        node.stdout.text()
    );

    // A trap while others wait on the same instance: all of them fail as trapped, and
    // the next request gets a new instance.
    let waiting: Vec<_> = (0..4)
        .map(|i| spawn_get(&node, "/shared/sleep?ms=4000", &format!("w-{i}")))
        .collect();
    // The guest prints `p3 <instance> request <served>` as each starts.
    // (Polled without blocking: the sleeps' tasks run on this test's thread.)
    let line = format!("p3 {first} request 20");
    eventually(Duration::from_secs(5), &line, || async {
        node.stdout.text().contains(&line)
    })
    .await;
    let r = client().get(node.url("/shared/trap")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(error_code(r).await, "guest_trap");
    for call in waiting {
        let (status, text) = call.await.unwrap();
        assert_eq!(status, 500, "{text}");
        assert!(text.contains("guest_trap"), "{text}");
    }
    let (after, count) = instance_served(&node, "/shared/hello", "after-trap").await;
    assert_eq!(count, 1, "the trapped instance served again");
    assert_ne!(after, first);

    // A request past its deadline ends its instance at once: what finished before is
    // answered, what was still in flight fails as timed out too.
    let late = spawn_get(&node, "/brief/sleep?ms=4000", "late");
    let (status, text) = spawn_get(&node, "/brief/sleep?ms=100", "quick")
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let (_, quick_instance) = slept(&text);
    let also = spawn_get(&node, "/brief/sleep?ms=4000", "also");
    for call in [late, also] {
        let (status, text) = call.await.unwrap();
        assert_eq!(status, 504, "{text}");
        assert!(text.contains("timeout"), "{text}");
    }
    let (after, count) = instance_served(&node, "/brief/hello", "after-timeout").await;
    assert_eq!(count, 1, "the timed-out instance served again");
    assert_ne!(after, quick_instance);
    let metrics = scrape(&node, TOKEN).await;
    for (service, reason) in [("shared", "trap"), ("brief", "timeout")] {
        let extra = format!(r#",reason="{reason}""#);
        assert_eq!(
            metric(&metrics, "tessera_instances_dropped_total", service, &extra),
            1.0,
            "{service} {reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_wasi_0_3_component_reaches_kv_sql_config_and_messaging() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = App::new(
        r#"
[app]
name = "p3data"

[services.d]
component = "{guest:p3-data}"
routes = ["/d"]
reuse = 10

[services.d.config]
greeting = "hello from config"

[services.mailer]
component = "{guest:data}"
routes = ["/mailer"]

[[services.mailer.subscribe]]
topic = "p3.hello"
path = "/mailer/on/hello"
"#,
    );
    ok(node.cli(TOKEN, &["deploy", app.path().to_str().unwrap()]));
    let get = |path: &str| {
        let url = node.url(path);
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/d/visit").await, (200, "visits 1\n".into()));
    assert_eq!(get("/d/visit").await, (200, "visits 2\n".into()));
    assert_eq!(get("/d/note?text=a").await, (200, "notes 1\n".into()));
    assert_eq!(get("/d/note?text=b").await, (200, "notes 2\n".into()));
    assert_eq!(
        get("/d/config/greeting").await,
        (200, "hello from config".into())
    );
    assert_eq!(get("/d/config/nope").await.0, 404);
    let (status, text) = get("/d/publish?topic=p3.hello").await;
    assert_eq!(status, 200, "{text}");
    let id = text.trim().strip_prefix("published ").unwrap().to_string();
    eventually(
        Duration::from_secs(10),
        "the 0.3 guest's message",
        || async { get("/mailer/kv/default/last:hello").await.0 == 200 },
    )
    .await;
    let last: serde_json::Value =
        serde_json::from_str(&get("/mailer/kv/default/last:hello").await.1).unwrap();
    assert_eq!(last["ce-id"], id.as_str(), "{last}");
    assert_eq!(last["body"], "hello", "{last}");
}
