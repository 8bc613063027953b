//! Unit tests: what the rendered metrics say, and how the log store bounds, filters and
//! follows lines.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tessera_runtime::{GuestLogSink, GuestStream};

use super::*;

fn labels() -> ServiceLabels {
    ServiceLabels::new("shop", "front", Some(7))
}

/// The value of the one sample line starting with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
}

#[test]
fn revision_label_is_r_number_or_dash() {
    assert_eq!(labels().revision, "r7");
    assert_eq!(ServiceLabels::new("a", "b", None).revision, "-");
}

#[test]
fn requests_are_counted_by_class_and_timed() {
    let telemetry = Telemetry::default();
    let labels = labels();
    for status in [200, 201, 204, 404, 503] {
        let guard = telemetry.request_started(&labels);
        telemetry.request_finished(&labels, status, Duration::from_millis(3));
        drop(guard);
    }
    let text = telemetry.render();
    let id = r#"app="shop",service="front",revision="r7""#;
    assert_eq!(
        sample(
            &text,
            &format!("tessera_requests_total{{{id},class=\"2xx\"}}")
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("tessera_requests_total{{{id},class=\"4xx\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("tessera_requests_total{{{id},class=\"5xx\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("tessera_request_duration_seconds_count{{{id}}}")
        ),
        Some(5.0)
    );
    // 3 ms falls in the 5 ms bucket, not the 2.5 ms one.
    assert_eq!(
        sample(
            &text,
            &format!("tessera_request_duration_seconds_bucket{{le=\"0.005\",{id}}}")
        )
        .or_else(|| sample(
            &text,
            &format!("tessera_request_duration_seconds_bucket{{{id},le=\"0.005\"}}")
        )),
        Some(5.0),
        "{text}"
    );
    assert!(text.contains("# UNIT tessera_request_duration_seconds seconds"));
    assert_eq!(
        sample(&text, &format!("tessera_requests_in_flight{{{id}}}")),
        Some(0.0)
    );
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn guards_hold_gauges_up_until_dropped() {
    let telemetry = Telemetry::default();
    let labels = labels();
    let id = r#"{app="shop",service="front",revision="r7"}"#;
    let a = telemetry.request_started(&labels);
    let b = telemetry.request_started(&labels);
    let q = telemetry.queued(&labels);
    let text = telemetry.render();
    assert_eq!(
        sample(&text, &format!("tessera_requests_in_flight{id}")),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, &format!("tessera_requests_queued{id}")),
        Some(1.0)
    );
    drop((a, b, q));
    let text = telemetry.render();
    assert_eq!(
        sample(&text, &format!("tessera_requests_in_flight{id}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, &format!("tessera_requests_queued{id}")),
        Some(0.0)
    );
}

#[test]
fn rejections_faults_cold_starts_and_gauges_are_rendered() {
    let telemetry = Telemetry::default();
    let labels = labels();
    telemetry.rejected(&labels, "capacity");
    telemetry.rejected(&labels, "capacity");
    telemetry.rejected(&labels, "loop");
    telemetry.fault(&labels, "trap");
    telemetry.cold_start(&labels, Duration::from_micros(300), "cache");
    telemetry.set_loaded(&labels, true);
    telemetry.set_instance_memory(&labels, 1 << 20);
    telemetry.set_code_memory(5_000, 1 << 30);
    telemetry.compile_cache(true);
    telemetry.compile_cache(false);
    telemetry.compile_cache(false);
    telemetry.event_stats("shop/orders/front", 4, 1, 2);
    let text = telemetry.render();
    let id = r#"app="shop",service="front",revision="r7""#;
    let expect = [
        (
            format!("tessera_rejected_total{{{id},reason=\"capacity\"}}"),
            2.0,
        ),
        (
            format!("tessera_rejected_total{{{id},reason=\"loop\"}}"),
            1.0,
        ),
        (format!("tessera_faults_total{{{id},kind=\"trap\"}}"), 1.0),
        (
            format!("tessera_cold_starts_total{{{id},source=\"cache\"}}"),
            1.0,
        ),
        (format!("tessera_cold_start_seconds_count{{{id}}}"), 1.0),
        (format!("tessera_service_loaded{{{id}}}"), 1.0),
        (format!("tessera_instance_memory_bytes{{{id}}}"), 1048576.0),
        ("tessera_code_memory_bytes ".to_string(), 5000.0),
        (
            "tessera_code_memory_budget_bytes ".to_string(),
            1073741824.0,
        ),
        (
            r#"tessera_compile_cache_total{result="hit"}"#.to_string(),
            1.0,
        ),
        (
            r#"tessera_compile_cache_total{result="miss"}"#.to_string(),
            2.0,
        ),
        (
            r#"tessera_event_ready{subscription="shop/orders/front"}"#.to_string(),
            4.0,
        ),
        (
            r#"tessera_event_in_flight{subscription="shop/orders/front"}"#.to_string(),
            1.0,
        ),
        (
            r#"tessera_event_dead{subscription="shop/orders/front"}"#.to_string(),
            2.0,
        ),
    ];
    for (prefix, value) in expect {
        assert_eq!(sample(&text, &prefix), Some(value), "{prefix}\n{text}");
    }
}

#[test]
fn node_wide_series_exist_before_any_request() {
    // prometheus-client leaves out families without samples; the node-wide ones always
    // have one, so a scrape of an idle node is never empty.
    let text = Telemetry::default().render();
    for line in [
        "# TYPE tessera_code_memory_bytes gauge",
        "tessera_code_memory_bytes 0",
        "tessera_code_memory_budget_bytes 0",
        r#"tessera_compile_cache_total{result="hit"} 0"#,
        r#"tessera_compile_cache_total{result="miss"} 0"#,
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

#[test]
fn forget_drops_a_revisions_series_only() {
    let telemetry = Telemetry::default();
    let old = labels();
    let new = ServiceLabels::new("shop", "front", Some(8));
    for labels in [&old, &new] {
        telemetry.request_finished(labels, 200, Duration::from_millis(1));
        telemetry.fault(labels, "timeout");
        telemetry.set_loaded(labels, true);
    }
    telemetry.forget(&old);
    let text = telemetry.render();
    assert!(!text.contains(r#"revision="r7""#), "{text}");
    assert!(text.contains(r#"revision="r8""#), "{text}");
    // A later request on the forgotten revision starts its series again.
    telemetry.request_finished(&old, 200, Duration::from_millis(1));
    assert!(telemetry.render().contains(r#"revision="r7""#));
}

#[test]
fn log_ring_keeps_the_newest_lines_and_cuts_long_ones() {
    let telemetry = Telemetry::new(TelemetryConfig {
        log_lines_per_service: 3,
        max_line_bytes: 5,
    });
    for i in 0..5 {
        telemetry.log(
            "shop",
            "front",
            LogStream::Stdout,
            Some("rid"),
            &format!("line{i}"),
        );
    }
    telemetry.log("shop", "front", LogStream::Stderr, None, "ééé");
    let lines: Vec<String> = telemetry
        .logs("shop", "front", None, 100)
        .into_iter()
        .map(|e| e.line)
        .collect();
    // "ééé" is six bytes: cut at the character boundary below five.
    assert_eq!(lines, ["line3", "line4", "éé"]);
    assert!(telemetry.logs("shop", "other", None, 100).is_empty());
    assert!(telemetry.logs("other", "front", None, 100).is_empty());
}

#[test]
fn logs_filter_by_time_and_limit_oldest_first() {
    let telemetry = Telemetry::default();
    telemetry.log("a", "s", LogStream::Stdout, None, "old");
    std::thread::sleep(Duration::from_millis(20));
    let cut = SystemTime::now();
    for line in ["one", "two", "three"] {
        telemetry.log("a", "s", LogStream::Platform, None, line);
    }
    let text = |entries: Vec<LogEntry>| entries.into_iter().map(|e| e.line).collect::<Vec<_>>();
    assert_eq!(text(telemetry.logs("a", "s", None, 2)), ["two", "three"]);
    assert_eq!(
        text(telemetry.logs("a", "s", Some(cut), 10)),
        ["one", "two", "three"]
    );
    assert_eq!(telemetry.logs("a", "s", None, 0).len(), 0);
    let entries = telemetry.logs("a", "s", None, 10);
    assert!(entries.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[test]
fn entries_serialize_with_rfc3339_time_and_lowercase_stream() {
    let telemetry = Telemetry::default();
    telemetry.log("a", "s", LogStream::Platform, Some("r1"), "loaded r1");
    let entry = telemetry.logs("a", "s", None, 1).remove(0);
    let json = serde_json::to_value(&entry).unwrap();
    assert_eq!(json["stream"], "platform");
    assert_eq!(json["request_id"], "r1");
    assert_eq!(json["line"], "loaded r1");
    let time = json["time"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
}

#[tokio::test]
async fn followers_receive_new_lines_of_their_service_only() {
    let telemetry = Telemetry::default();
    telemetry.log("a", "s", LogStream::Stdout, None, "before");
    let mut follower = telemetry.follow("a", "s");
    telemetry.log("a", "other", LogStream::Stdout, None, "elsewhere");
    telemetry.log("a", "s", LogStream::Stdout, Some("rid"), "after");
    let entry = follower.recv().await.unwrap();
    assert_eq!(entry.line, "after");
    assert_eq!(entry.request_id.as_deref(), Some("rid"));
    assert!(follower.try_recv().is_err());
}

#[test]
fn a_lagging_follower_never_blocks_writers() {
    let telemetry = Telemetry::default();
    let mut follower = telemetry.follow("a", "s");
    for i in 0..5000 {
        telemetry.log("a", "s", LogStream::Stdout, None, &i.to_string());
    }
    assert!(matches!(
        follower.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
    ));
    // After the skip it reads on from what is still buffered.
    assert!(follower.try_recv().is_ok());
}

#[tokio::test]
async fn closing_followers_ends_them_after_what_was_sent() {
    let telemetry = Telemetry::default();
    let mut follower = telemetry.follow("a", "s");
    telemetry.log("a", "s", LogStream::Stdout, None, "last");
    telemetry.close_followers();
    assert_eq!(follower.recv().await.unwrap().line, "last");
    assert!(matches!(
        follower.recv().await,
        Err(tokio::sync::broadcast::error::RecvError::Closed)
    ));
    // Followers that come later end at once; lines are still stored.
    let mut late = telemetry.follow("b", "new");
    telemetry.log("b", "new", LogStream::Stdout, None, "kept");
    assert!(late.recv().await.is_err());
    assert_eq!(telemetry.logs("b", "new", None, 10).len(), 1);
}

#[derive(Default)]
struct Collect(Mutex<Vec<String>>);

impl GuestLogSink for Collect {
    fn line(&self, app: &str, service: &str, request_id: &str, _: GuestStream, line: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{app}/{service}/{request_id}: {line}"));
    }
}

#[test]
fn guest_sink_stores_lines_and_passes_them_on() {
    let telemetry = Telemetry::default();
    let terminal = Arc::new(Collect::default());
    let sink = telemetry.guest_sink(Some(terminal.clone()));
    sink.line("shop", "front", "01abc", GuestStream::Stdout, "hello");
    sink.line("shop", "front", "01abd", GuestStream::Stderr, "oops");
    assert_eq!(
        *terminal.0.lock().unwrap(),
        ["shop/front/01abc: hello", "shop/front/01abd: oops"]
    );
    let entries = telemetry.logs("shop", "front", None, 10);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].stream, LogStream::Stdout);
    assert_eq!(entries[0].request_id.as_deref(), Some("01abc"));
    assert_eq!(entries[1].stream, LogStream::Stderr);
    assert_eq!(entries[1].line, "oops");
    // Without a terminal behind it, it only stores.
    telemetry
        .guest_sink(None)
        .line("shop", "front", "01abe", GuestStream::Stdout, "quiet");
    assert_eq!(telemetry.logs("shop", "front", None, 10).len(), 3);
}
