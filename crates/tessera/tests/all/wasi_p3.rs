//! WASI 0.3 components (`wasi:http/handler@0.3.0`) served next to 0.2 ones through the
//! real binary: the same routes, limits, errors, streaming bodies, request ids and
//! instance reuse.
//!
//! The `p3` test guest answers `.../hello` with `hello from wasi 0.3 <instance> <served>`,
//! streams `.../echo` back, waits `.../sleep?ms=N` on the host's clock and panics on
//! `.../trap`.

use std::collections::HashSet;

use crate::util::{App, Node, client, error_code, instance_served, ok};

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
