//! Instance reuse through the real binary: a service with `reuse` keeps an instance for
//! several requests (its guest's memory survives between them), drops it after its quota,
//! after `reuse_idle`, and at once after a trap, a timeout or a memory-limit failure; a
//! service without the key gets a fresh instance for every request; metrics count it all.
//!
//! The `instance` test guest answers `<instance id> <requests this instance started>`.

use std::collections::HashSet;
use std::time::Duration;

use crate::util::{App, Node, client, error_code, instance_served, ok, scrape, up_fails};

const TOKEN: &str = "reuse-token-0123456789abcdef";

const APP: &str = r#"
[app]
name = "reuse"

[services.fresh]
component = "{guest:instance}"
routes = ["/fresh"]

[services.kept]
component = "{guest:instance}"
routes = ["/kept"]
reuse = 3
reuse_idle = "1s"
timeout = "1s"
memory = "24MiB"
"#;

/// The value of `metric` for revision r1 of `service` of this app (with `extra` labels),
/// 0 when absent.
fn value(metrics: &str, metric: &str, service: &str, extra: &str) -> f64 {
    crate::util::service_metric(metrics, metric, "reuse", service, extra)
}

#[tokio::test]
async fn a_reused_instance_serves_its_quota_and_any_failure_drops_it() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = App::new(APP);
    ok(node.cli(TOKEN, &["deploy", app.path().to_str().unwrap()]));

    // By default every request gets a fresh instance.
    let mut fresh = HashSet::new();
    for i in 0..3 {
        let (id, count) = instance_served(&node, "/fresh", &format!("fresh-{i}")).await;
        assert_eq!(count, 1, "a fresh instance served before");
        fresh.insert(id);
    }
    assert_eq!(fresh.len(), 3, "{fresh:?}");

    // With `reuse = 3`: one instance serves three requests (its memory lives on), then a
    // new one takes over.
    let mut seen = Vec::new();
    for i in 0..5 {
        seen.push(instance_served(&node, "/kept", &format!("kept-{i}")).await);
    }
    let counts: Vec<u32> = seen.iter().map(|(_, c)| *c).collect();
    assert_eq!(counts, [1, 2, 3, 1, 2], "{seen:?}");
    assert!(seen[0].0 == seen[1].0 && seen[1].0 == seen[2].0, "{seen:?}");
    assert!(seen[3].0 == seen[4].0 && seen[3].0 != seen[0].0, "{seen:?}");
    // Each request's output carries its own request id, whichever instance served it.
    let line = format!("[kept kept-4] instance {} request 2", seen[4].0);
    assert!(
        node.stdout
            .wait_for(&line, Duration::from_secs(5))
            .is_some(),
        "{line} not in:\n{}",
        node.stdout.text()
    );

    // An instance left waiting longer than `reuse_idle` is dropped.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (after_idle, count) = instance_served(&node, "/kept", "kept-idle").await;
    assert_eq!(count, 1, "the idle instance was reused");

    // A trap drops the instance at once: the next request gets a healthy new one.
    let r = client().get(node.url("/kept/trap")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(error_code(r).await, "guest_trap");
    let (after_trap, count) = instance_served(&node, "/kept", "kept-trap").await;
    assert_eq!(count, 1, "the trapped instance was reused");
    assert_ne!(after_trap, after_idle);

    // So does a timeout.
    let r = client()
        .get(node.url("/kept/sleep?ms=3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let (after_timeout, count) = instance_served(&node, "/kept", "kept-timeout").await;
    assert_eq!(count, 1, "the timed-out instance was reused");
    assert_ne!(after_timeout, after_trap);

    // Memory kept by one request stays with the instance; a request that then passes
    // the limit fails, and its instance is not served again.
    let (grown, count) = instance_served(&node, "/kept/grow?mb=6", "kept-grow").await;
    assert_eq!((grown.as_str(), count), (after_timeout.as_str(), 2));
    let r = client()
        .get(node.url("/kept/grow?mb=20"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(error_code(r).await, "memory_limit");
    let (after_memory, count) = instance_served(&node, "/kept", "kept-memory").await;
    assert_eq!(count, 1, "the instance that hit its limit was reused");
    assert_ne!(after_memory, grown);

    let metrics = scrape(&node, TOKEN).await;
    assert_eq!(
        value(&metrics, "tessera_instances_created_total", "fresh", ""),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, "tessera_instances_reused_total", "fresh", ""),
        0.0
    );
    assert_eq!(
        value(
            &metrics,
            "tessera_instances_dropped_total",
            "fresh",
            r#",reason="done""#
        ),
        3.0,
        "{metrics}"
    );
    // kept: instances A (3 requests), B (2, idle), C (1 then trap), D (1 then
    // timeout), E (1, grow, then memory), F (1, waiting).
    assert_eq!(
        value(&metrics, "tessera_instances_created_total", "kept", ""),
        6.0,
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, "tessera_instances_reused_total", "kept", ""),
        2.0 + 1.0 + 1.0 + 1.0 + 2.0,
        "{metrics}"
    );
    for (reason, count) in [
        ("done", 1.0),
        ("idle", 1.0),
        ("trap", 1.0),
        ("timeout", 1.0),
        ("memory", 1.0),
    ] {
        let extra = format!(r#",reason="{reason}""#);
        assert_eq!(
            value(&metrics, "tessera_instances_dropped_total", "kept", &extra),
            count,
            "{reason}: {metrics}"
        );
    }
    assert_eq!(
        value(&metrics, "tessera_instance_requests_count", "kept", ""),
        5.0,
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, "tessera_instance_requests_sum", "kept", ""),
        3.0 + 2.0 + 2.0 + 2.0 + 3.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn concurrent_requests_each_get_an_instance_and_later_ones_reuse_them() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = App::new(&APP.replace("reuse = 3", "reuse = 1000"));
    ok(node.cli(TOKEN, &["deploy", app.path().to_str().unwrap()]));

    // Eight at once, each sleeping: no instance serves two requests at a time, so each
    // runs in its own.
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let url = node.url("/kept/sleep?ms=900");
            tokio::spawn(async move {
                let r = client()
                    .get(url)
                    .header("x-request-id", format!("burst-{i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.text().await.unwrap()
            })
        })
        .collect();
    let mut burst = HashSet::new();
    for call in calls {
        let text = call.await.unwrap();
        let (id, count) = text.trim().split_once(' ').unwrap();
        assert_eq!(
            count, "1",
            "an instance served two requests at once: {text}"
        );
        burst.insert(id.to_string());
    }
    assert_eq!(burst.len(), 8, "{burst:?}");

    // Then one after another: all served by those same instances, none made anew.
    for i in 0..40 {
        let (id, count) = instance_served(&node, "/kept", &format!("after-{i}")).await;
        assert!(burst.contains(&id), "a new instance {id} was made");
        assert!(count >= 2, "{id} {count}");
    }
    let metrics = scrape(&node, TOKEN).await;
    assert_eq!(
        value(&metrics, "tessera_instances_created_total", "kept", ""),
        8.0,
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, "tessera_instances_reused_total", "kept", ""),
        40.0,
        "{metrics}"
    );
}

#[test]
fn reuse_concurrency_above_one_is_refused_naming_the_key() {
    for (guest, reason) in [
        ("instance", "needs a WASI 0.3 component"),
        ("p3-data", "imports `tessera:messaging`"),
    ] {
        let app = App::new(&format!(
            r#"
[app]
name = "reuse"

[services.kept]
component = "{{guest:{guest}}}"
routes = ["/kept"]
reuse = 16
reuse_concurrency = 4
"#
        ));
        let (status, stderr) = up_fails(app.path());
        assert!(!status.success());
        assert!(stderr.contains("reuse_concurrency = 4"), "{stderr}");
        assert!(stderr.contains(reason), "{guest}: {stderr}");
        assert!(stderr.contains("`kept`"), "{stderr}");
    }
}
