//! What a client of the gateway sees: routing, request ids, HTTP versions, streaming.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::util::{App, Node, client, error_code, workspace};

#[tokio::test]
async fn demo_app_answers_on_two_services_behind_one_address() {
    let demo = workspace().join("examples/hello");
    assert!(
        demo.join("target/wasm32-wasip2/release/greeter.wasm")
            .exists(),
        "build the demo's guests with `cargo xtask guests`"
    );
    let data = tempfile::tempdir().unwrap();
    let node = Node::up(&demo, &["--data", data.path().to_str().unwrap()]);
    let http = client();

    let hello = http.get(node.url("/hello")).send().await.unwrap();
    assert_eq!(hello.status(), 200);
    let request_id = hello.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(hello.text().await.unwrap(), "Hello, world!\n");

    let ada = http.get(node.url("/hello/Ada")).send().await.unwrap();
    assert_eq!(ada.text().await.unwrap(), "Hello, Ada!\n");

    let user = http.get(node.url("/users/42")).send().await.unwrap();
    assert_eq!(user.status(), 200);
    let user: serde_json::Value = user.json().await.unwrap();
    assert_eq!(user["name"], "Alan Turing");

    let missing = http.get(node.url("/users/7")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // Guest stdout is shown prefixed with the service and the request id.
    let line = format!("[greeter {request_id}] greeted world");
    assert!(
        node.stdout
            .wait_for(&line, std::time::Duration::from_secs(5))
            .is_some(),
        "missing {line:?} in stdout:\n{}",
        node.stdout.text()
    );
}

#[tokio::test]
async fn longest_prefix_wins_and_unrouted_paths_get_json_404() {
    let app = App::new(
        r#"
[app]
name = "routing"

[services.root]
component = "{guest:inspect}"
routes = ["/"]

[services.hello]
component = "{guest:hello}"
routes = ["/api/hello"]
"#,
    );
    let node = app.up();
    let http = client();
    let body = |r: reqwest::Response| async { r.text().await.unwrap() };

    let r = http.get(node.url("/api/hello/x?y=1")).send().await.unwrap();
    assert_eq!(body(r).await, "hello from tessera\n");
    // A segment boundary is required: /api/helloworld is not under /api/hello.
    let r = http.get(node.url("/api/helloworld")).send().await.unwrap();
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["path_with_query"], "/api/helloworld");

    let app = App::new(
        r#"
[app]
name = "routing"

[services.hello]
component = "{guest:hello}"
routes = ["/hello"]
"#,
    );
    let node = app.up();
    let r = http.get(node.url("/elsewhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(error_code(r).await, "no_route");
}

#[tokio::test]
async fn request_id_is_kept_from_the_client_or_generated_and_reaches_the_guest() {
    let app = App::new(
        r#"
[app]
name = "ids"

[services.inspect]
component = "{guest:inspect}"
routes = ["/"]
"#,
    );
    let node = app.up();
    let http = client();

    let r = http
        .get(node.url("/who"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-chosen-42");
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["headers"]["x-request-id"], "client-chosen-42");

    let r = http.get(node.url("/who")).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 32, "{generated}");
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["headers"]["x-request-id"], generated.as_str());

    // A request id that is not visible ASCII is replaced, not echoed.
    let r = http
        .get(node.url("/who"))
        .header("x-request-id", "has spaces in it")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "has spaces in it");

    // Guest stdout and stderr both carry the request id.
    let line = format!("[inspect {generated}] inspect: stderr line");
    assert!(
        node.stderr
            .wait_for(&line, std::time::Duration::from_secs(5))
            .is_some(),
        "missing {line:?} in stderr:\n{}",
        node.stderr.text()
    );
}

#[tokio::test]
async fn http2_cleartext_and_http1_are_both_served() {
    let app = App::new(
        r#"
[app]
name = "h2"

[services.hello]
component = "{guest:hello}"
routes = ["/"]
"#,
    );
    let node = app.up();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(node.url("/")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "hello from tessera\n");

    let r = client().get(node.url("/")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_100_mb_upload_streams_through_without_being_buffered() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 400; // 100 MiB
    let app = App::new(
        r#"
[app]
name = "stream"

[services.echo]
component = "{guest:echo}"
routes = ["/echo"]
timeout = "120s"
"#,
    );
    let node = app.up();
    let rss_before = node.peak_rss_bytes();

    let mut sent = Sha256::new();
    let chunks: Vec<bytes::Bytes> = (0..CHUNKS)
        .map(|i| {
            let chunk = bytes::Bytes::from(vec![(i % 251) as u8; CHUNK]);
            sent.update(&chunk);
            chunk
        })
        .collect();
    let upload = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let response = client()
        .post(node.url("/echo"))
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-echo-method"], "POST");
    let mut received = Sha256::new();
    let mut length = 0usize;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        length += chunk.len();
        received.update(&chunk);
    }
    assert_eq!(length, CHUNK * CHUNKS);
    assert_eq!(sent.finalize(), received.finalize());

    // Buffering the upload (or the answer) whole would cost at least 100 MiB.
    let growth = node.peak_rss_bytes().saturating_sub(rss_before);
    assert!(
        growth < 48 * 1024 * 1024,
        "peak memory grew by {} MiB while streaming 100 MiB",
        growth >> 20
    );
}
