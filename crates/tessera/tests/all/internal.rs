//! Calls between services of one app through the real binary: `http://<service>.internal`
//! dispatched in-process when the caller's manifest grants it, with the request id and
//! call depth carried along, loops cut off with 508, and a circuit breaker in front of a
//! callee that keeps failing.

use serde_json::Value;

use crate::util::{App, Node, client};

fn app() -> App {
    App::new(
        r#"
[app]
name = "mesh"

[services.front]
component = "{guest:fetch}"
routes = ["/front"]
outbound = ["http://info.internal", "http://broken.internal", "http://front.internal", "http://ghost.internal"]

[services.stranger]
component = "{guest:fetch}"
routes = ["/stranger"]

[services.info]
component = "{guest:inspect}"
routes = ["/info"]

[services.broken]
component = "{guest:trap}"
routes = ["/broken"]
"#,
    )
}

/// Calls `url` from the `front` (or another) service; returns the fetch guest's answer:
/// its own status, and the callee's status and body.
async fn call_from(node: &Node, service: &str, url: &str, request_id: &str) -> (u16, String) {
    let r = client()
        .get(node.url(&format!("/{service}")))
        .query(&[("url", url)])
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn granted_internal_calls_carry_request_id_and_depth() {
    let app = app();
    let node = Node::up(app.path(), &[]);
    let (status, body) =
        call_from(&node, "front", "http://info.internal/info/who", "trace-123").await;
    assert_eq!(status, 200, "{body}");
    let (first, json) = body.split_once('\n').unwrap();
    assert_eq!(first, "status=200");
    let seen: Value = serde_json::from_str(json).unwrap();
    assert_eq!(seen["path_with_query"], "/info/who");
    assert_eq!(seen["headers"]["x-request-id"], "trace-123");
    assert_eq!(seen["headers"]["x-tessera-call-depth"], "1");
    assert_eq!(seen["headers"]["x-tessera-caller"], "mesh/front");
    // The callee's guest output carries the caller's request id.
    assert!(
        node.stdout
            .wait_for(
                "[info trace-123] inspect: handling /info/who",
                std::time::Duration::from_secs(5)
            )
            .is_some(),
        "{}",
        node.stdout.text()
    );

    // Not granted: denied in the guest, no call made.
    let (status, body) = call_from(&node, "stranger", "http://info.internal/info", "t-2").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");

    // Granted but no such service: a 404 from the platform.
    let (status, body) = call_from(&node, "front", "http://ghost.internal/", "t-3").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("status=404") && body.contains("no_such_service"),
        "{body}"
    );

    // A client cannot pose as another service of the app.
    let r = client()
        .get(node.url("/info"))
        .header("x-tessera-caller", "mesh/front")
        .header("x-tessera-call-depth", "3")
        .send()
        .await
        .unwrap();
    let seen: Value = r.json().await.unwrap();
    assert!(seen["headers"]["x-tessera-caller"].is_null(), "{seen}");
    assert!(seen["headers"]["x-tessera-call-depth"].is_null(), "{seen}");
}

#[tokio::test]
async fn call_loops_are_cut_off_with_508() {
    let app = app();
    let node = Node::up(app.path(), &[]);
    // front calls itself with the same request, again and again.
    let r = client()
        .get(node.url("/front/again?loop=front.internal"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert_eq!(body.matches("status=200").count(), 8, "{body}");
    assert!(
        body.contains("status=508") && body.contains("loop_detected"),
        "{body}"
    );
}

#[tokio::test]
async fn a_failing_callee_trips_the_circuit_breaker() {
    let app = app();
    let node = Node::up(app.path(), &[]);
    for i in 0..5 {
        let (_, body) = call_from(
            &node,
            "front",
            "http://broken.internal/broken",
            &format!("b-{i}"),
        )
        .await;
        assert!(body.starts_with("status=500"), "call {i}: {body}");
    }
    let (_, body) = call_from(&node, "front", "http://broken.internal/broken", "b-open").await;
    assert!(
        body.starts_with("status=503") && body.contains("circuit_open"),
        "{body}"
    );
    assert!(
        !node.stderr.contains("b-open"),
        "the open circuit must not reach the callee"
    );
    // Other callees are unaffected.
    let (_, body) = call_from(&node, "front", "http://info.internal/info", "ok").await;
    assert!(body.starts_with("status=200"), "{body}");
}
