//! Start-up and shutdown: compiled code survives restarts, shutdown drains in-flight work.

use std::time::Duration;

use crate::util::{App, Node, client};

const SLOW: &str = r#"
[app]
name = "life"

[services.slow]
component = "{guest:slow}"
routes = ["/slow"]
"#;

#[test]
fn compiled_code_is_cached_so_a_restart_does_not_recompile() {
    let app = App::new(SLOW);
    let data = app.path().join("state");
    let data = data.to_str().unwrap();
    {
        let node = Node::up(app.path(), &["--data", data]);
        assert!(
            node.stderr.contains("compiled service=slow"),
            "{}",
            node.stderr.text()
        );
    }
    let node = Node::up(app.path(), &["--data", data]);
    assert!(
        node.stderr.contains("loaded from cache service=slow"),
        "{}",
        node.stderr.text()
    );

    // A damaged cache entry costs a compile, not a failure.
    drop(node);
    for entry in walk(std::path::Path::new(data)) {
        if entry.extension().is_some_and(|e| e == "cwasm") {
            std::fs::write(&entry, b"garbage").unwrap();
        }
    }
    let node = Node::up(app.path(), &["--data", data]);
    assert!(
        node.stderr
            .contains("ignoring unusable compiled-code cache entry"),
        "{}",
        node.stderr.text()
    );
    // The component is recompiled when `up` checks it at start, so the revision's first
    // request maps fresh code from the cache.
    assert!(
        node.stderr.contains("compiled service=slow"),
        "{}",
        node.stderr.text()
    );
    let (status, body) = crate::util::get(node.addr, "/slow?ms=1");
    assert_eq!((status, body.as_str()), (200, "slept 1 ms\n"));
    assert!(
        node.stderr
            .wait_for("source=cache", Duration::from_secs(5))
            .is_some(),
        "{}",
        node.stderr.text()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let app = App::new(SLOW);
    let mut node = app.up();
    let http = client();
    let url = node.url("/slow?ms=1500");
    let in_flight = tokio::spawn({
        let http = http.clone();
        async move { http.get(url).send().await }
    });
    // Let the request reach the guest before asking the node to stop.
    tokio::time::sleep(Duration::from_millis(400)).await;
    node.terminate();

    let response = in_flight
        .await
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "slept 1500 ms\n");

    let status = node.wait(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    assert!(node.stderr.contains("received SIGTERM"));
    // Once stopped, the address no longer accepts connections.
    assert!(std::net::TcpStream::connect_timeout(&node.addr, Duration::from_secs(1)).is_err());
}
