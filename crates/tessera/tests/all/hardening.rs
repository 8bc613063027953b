//! What any client (or a damaged disk) could do to a node, each reproduced against the
//! real binary: idle connections under a low open-file limit, callbacks aimed at the node's
//! own network, damaged compiled code, a swapped artifact, forged event headers and a
//! second process on one data directory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{App, Node, client, error_code, ok, serve_command};

const TOKEN: &str = "hardening-token-0123456789abcdef";

/// Runs a command that must exit by itself (a refusal), killing it if it does not.
fn exits_within(mut command: std::process::Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tessera");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "tessera kept running instead of refusing to start:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

const HELLO: &str = r#"
[app]
name = "hard"

[services.hello]
component = "{guest:hello}"
routes = ["/hello"]

[services.store]
component = "{guest:data}"
routes = ["/store"]
"#;

fn deploy(node: &Node, app: &Path) {
    ok(node.cli(TOKEN, &["deploy", app.to_str().unwrap()]));
}

/// A client whose connections come from another loopback address than the flood's.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Opens `n` connections that send nothing; some may be refused at once.
fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect()
}

/// What a connection receives until the server closes it (or `limit` passes).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => Some(String::from_utf8_lossy(&received).into_owned()),
        // A refused connection may be reset after its 503 was sent.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Some(String::from_utf8_lossy(&received).into_owned())
        }
        Err(_) => None,
    }
}

#[tokio::test]
async fn idle_connections_under_a_low_fd_limit_do_not_take_the_node_down() {
    let app = App::new(HELLO);
    let data = tempfile::tempdir().unwrap();
    // 256 descriptors in all, soft and hard, so the node cannot raise them.
    let inner = serve_command(
        data.path(),
        TOKEN,
        &["--header-timeout", "3s", "--idle-timeout", "3s"],
    );
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args())
        .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let node = Node::start_command(command);
    deploy(&node, app.path());
    let admin = node.admin.unwrap();

    // More idle connections than the node has descriptors, on both listeners.
    let started = Instant::now();
    let mut gateway_flood = idle_connections(node.addr, 400);
    let mut admin_flood = idle_connections(admin, 100);
    assert!(started.elapsed() < Duration::from_secs(20));

    // Another client is served at once by both listeners, and its request opens a
    // service's database files: descriptors were kept for them.
    let other = client_from("127.0.0.2");
    let r = other
        .get(format!("http://{admin}/v1/apps"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the control API stopped answering");
    let r = other
        .put(format!("http://{}/store/kv/default/flood", node.addr))
        .body("survived")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = other
        .get(format!("http://{}/hello", node.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Connections past the caps were answered with a 503 and closed at once; the others
    // are closed by the node once they have been silent past the header timeout.
    let mut refused = 0;
    let mut timed_out = 0;
    for stream in gateway_flood.iter_mut().chain(admin_flood.iter_mut()) {
        let received = read_until_closed(stream, Duration::from_secs(15))
            .expect("the node never closed an idle connection");
        if received.starts_with("HTTP/1.1 503") {
            assert!(received.contains("too_many_connections"), "{received}");
            refused += 1;
        } else {
            assert_eq!(received, "", "an idle connection received data");
            timed_out += 1;
        }
    }
    assert!(
        refused > 0 && timed_out > 0,
        "{refused} refused, {timed_out} timed out"
    );
    assert!(
        !node.stderr.contains("Too many open files"),
        "{}",
        node.stderr.text()
    );
    drop(gateway_flood);
    drop(admin_flood);

    // The flooding address is served again once its connections are gone.
    let r = client().get(node.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(node.url("/store/kv/default/flood"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "survived");
}

#[tokio::test]
async fn a_keep_alive_connection_survives_a_request_longer_than_the_idle_timeout() {
    let app = App::new(
        r#"
[app]
name = "slowpoke"

[services.slow]
component = "{guest:slow}"
routes = ["/slow"]
"#,
    );
    let node = Node::up(
        app.path(),
        &["--idle-timeout", "3s", "--header-timeout", "1s"],
    );
    let mut stream = TcpStream::connect(node.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for round in 0..2 {
        if round == 1 {
            // Idle longer than the header timeout, shorter than the idle timeout: kept.
            std::thread::sleep(Duration::from_secs(2));
        }
        // Each request runs for longer than the idle timeout; the connection stays.
        write!(stream, "GET /slow?ms=3500 HTTP/1.1\r\nhost: test\r\n\r\n").unwrap();
        let mut buffer = [0u8; 4096];
        let mut text = String::new();
        while !text.contains("slept 3500 ms") {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "the connection was closed during a request: {text}");
            text.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    // Then, silent, it is closed after the idle timeout.
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_millis(2500) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
}

/// A one-shot HTTP receiver: whether anything connected to it within `limit`.
fn receiver() -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut socket, _)) = listener.accept() {
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut buffer = vec![0u8; 65536];
            let n = socket.read(&mut buffer).unwrap_or(0);
            let _ = socket.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    });
    (addr, rx)
}

fn async_app(callbacks: &[String]) -> App {
    let list = callbacks
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    App::new(&format!(
        r#"
[app]
name = "hooks"

[services.store]
component = "{{guest:data}}"
routes = ["/store"]
callbacks = [{list}]
"#
    ))
}

async fn invoke_async(node: &Node, callback: &str) -> reqwest::Response {
    client()
        .put(node.url("/store/kv/default/later"))
        .header("x-tessera-async", "1")
        .header("x-tessera-callback", callback)
        .body("done")
        .send()
        .await
        .unwrap()
}

async fn wait_for_kv(node: &Node, key: &str, value: &str) {
    crate::util::eventually(Duration::from_secs(10), "the invocation to run", || async {
        let r = client()
            .get(node.url(&format!("/store/kv/default/{key}")))
            .send()
            .await
            .unwrap();
        r.status() == 200 && r.text().await.unwrap() == value
    })
    .await;
}

#[tokio::test]
async fn a_callback_to_loopback_is_refused() {
    let (addr, received) = receiver();
    let allowed = format!("http://{addr}");
    let app = async_app(std::slice::from_ref(&allowed));
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    deploy(&node, app.path());

    // An origin the manifest does not list is refused before anything is queued.
    let r = invoke_async(&node, "http://example.com/hook").await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "callback_not_allowed");

    // A listed origin on loopback is queued and runs, but the node never connects to it.
    let r = invoke_async(&node, &format!("{allowed}/done")).await;
    assert_eq!(r.status(), 202);
    wait_for_kv(&node, "later", "done").await;
    assert!(
        node.stderr
            .wait_for("callback not sent", Duration::from_secs(10))
            .is_some(),
        "{}",
        node.stderr.text()
    );
    assert!(
        received.recv_timeout(Duration::from_secs(1)).is_err(),
        "the node called back to a loopback address"
    );
}

#[tokio::test]
async fn a_callback_never_reaches_the_nodes_own_listeners() {
    // `tessera up` on loopback: its control API takes requests without a token.
    let app = async_app(&[]);
    let node = Node::up(app.path(), &["--allow-private-callbacks"]);
    let admin = format!("http://{}", node.admin.unwrap());
    let manifest = format!(
        r#"
[app]
name = "hooks"

[services.store]
component = "{{guest:data}}"
routes = ["/store"]
callbacks = ["{admin}"]

[[services.store.subscribe]]
topic = "evil"
path = "/store/on/evil"
"#
    );
    app.write_manifest(&manifest);
    deploy(&node, app.path());
    // Aimed at the control API, the callback's POST would publish a message to `evil`.
    let r = invoke_async(&node, &format!("{admin}/v1/apps/hooks/topics/evil")).await;
    assert_eq!(r.status(), 202);
    wait_for_kv(&node, "later", "done").await;
    let line = node
        .stderr
        .wait_for("callback not sent", Duration::from_secs(10))
        .unwrap_or_else(|| node.stderr.text());
    assert!(line.contains("this node's listeners"), "{line}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = client()
        .get(node.url("/store/kv/default/count:evil"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "a message was published through the callback"
    );
}

fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_with_extension(&path, ext));
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out
}

/// The file range of an ELF64 section, by name.
fn elf_section(bytes: &[u8], wanted: &str) -> Option<std::ops::Range<usize>> {
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    if bytes.get(..4)? != b"\x7fELF" {
        return None;
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(header(shstrndx) + 0x18);
    (0..shnum).find_map(|i| {
        let h = header(i);
        let name_start = names + u32_at(h);
        let name_end = name_start + bytes[name_start..].iter().position(|b| *b == 0)?;
        (&bytes[name_start..name_end] == wanted.as_bytes()).then(|| {
            let offset = u64_at(h + 0x18);
            offset..offset + u64_at(h + 0x20)
        })
    })
}

#[test]
fn a_damaged_cwasm_is_recompiled_instead_of_crashing_the_node() {
    let app = App::new(HELLO);
    let data = app.path().join("state");
    let data = data.to_str().unwrap();
    drop(Node::up(app.path(), &["--data", data]));
    // Alter the machine code of every cached entry: mapped as it is, it would execute.
    let entries = files_with_extension(Path::new(data), "cwasm");
    assert!(!entries.is_empty());
    for entry in &entries {
        let mut bytes = std::fs::read(entry).unwrap();
        let text = elf_section(&bytes, ".text").expect("a .text section");
        for byte in &mut bytes[text] {
            *byte = 0x0f; // `0f 0f` sequences are invalid opcodes
        }
        std::fs::write(entry, bytes).unwrap();
    }
    for _ in 0..2 {
        let node = Node::up(app.path(), &["--data", data]);
        let (status, body) = crate::util::get(node.addr, "/hello");
        assert_eq!(status, 200, "{body}\n{}", node.stderr.text());
        let (status, _) = crate::util::get(node.addr, "/store/kv/default/x");
        assert_eq!(status, 404, "{}", node.stderr.text());
    }
}

#[tokio::test]
async fn a_modified_artifact_is_never_compiled_or_served() {
    let app = App::new(HELLO);
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::serve(data.path(), TOKEN);
    deploy(&node, app.path());
    node.child.kill().unwrap();
    node.wait(Duration::from_secs(10));
    drop(node);

    // Swap the hello artifact for another valid component, and drop the compiled code.
    let hello = crate::util::guest("hello");
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(&hello).unwrap(),
    ));
    let artifact = data.path().join(format!("artifacts/{sha}.wasm"));
    assert!(artifact.exists(), "{}", artifact.display());
    std::fs::copy(crate::util::guest("echo"), &artifact).unwrap();
    std::fs::remove_dir_all(data.path().join("compiled")).unwrap();

    let node = Node::serve(data.path(), TOKEN);
    let r = client().get(node.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["error"]["code"], "load_failed", "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("damaged"), "{message}");
    // The other service is unaffected.
    let r = client()
        .get(node.url("/store/kv/default/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn forged_event_headers_from_outside_clients_never_reach_the_guest() {
    let app = App::new(HELLO);
    let node = app.up();
    let r = client()
        .post(node.url("/store/on/order"))
        .header("ce-id", "forged")
        .header("ce-specversion", "1.0")
        .header("ce-type", "dev.tessera.cron.tick")
        .header("ce-source", "/apps/hard")
        .header("x-tessera-attempt", "9")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let last: Value = client()
        .get(node.url("/store/kv/default/last:order"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for header in [
        "ce-id",
        "ce-specversion",
        "ce-type",
        "ce-source",
        "x-tessera-attempt",
    ] {
        assert!(last[header].is_null(), "{header} reached the guest: {last}");
    }
    assert_eq!(last["body"], "payload");
}

#[test]
fn a_second_process_on_one_data_directory_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let mut first = Node::serve(data.path(), TOKEN);
    let output = exits_within(
        serve_command(data.path(), TOKEN, &[]),
        Duration::from_secs(30),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is in use by another tessera process")
            && stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
    // The lock goes with the process, however it ends.
    first.child.kill().unwrap();
    first.wait(Duration::from_secs(10));
    let second = Node::serve(data.path(), TOKEN);
    let (status, _) = crate::util::get(second.addr, "/nothing");
    assert_eq!(status, 404);
}

const QUOTA: &str = r#"
[app]
name = "flood"

[services.slow]
component = "{guest:slow}"
routes = ["/slow"]
timeout = "20s"

[services.slow.async]
rate = 1000
stored = "4MiB"

[services.limited]
component = "{guest:slow}"
routes = ["/limited"]

[services.limited.async]
rate = 1
"#;

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test]
async fn async_floods_of_1mb_bodies_stop_at_the_services_quota() {
    let app = App::new(QUOTA);
    let data = app.path().join("state");
    let node = Node::up(app.path(), &["--data", data.to_str().unwrap()]);
    let body = vec![b'x'; 1_000_000];
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..20 {
        let r = client()
            .post(node.url("/slow?ms=10000"))
            .header("x-tessera-async", "1")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => accepted += 1,
            507 => {
                assert_eq!(error_code(r).await, "quota_exceeded");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
    }
    assert!((2..=4).contains(&accepted), "{accepted} accepted");
    assert_eq!(accepted + refused, 20);
    let journal = file_size(&data.join("events.db")) + file_size(&data.join("events.db-wal"));
    assert!(journal < 12 << 20, "the journal grew to {journal} bytes");
    // Another service's quota is its own.
    let r = client()
        .post(node.url("/limited?ms=1"))
        .header("x-tessera-async", "1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn async_requests_past_the_rate_are_refused_with_retry_after() {
    let app = App::new(QUOTA);
    let node = app.up();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = client()
            .post(node.url("/limited?ms=1"))
            .header("x-tessera-async", "1")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 503 {
            assert!(r.headers().contains_key("retry-after"));
            assert_eq!(error_code(r).await, "rate_limited");
        }
    }
    assert_eq!(statuses, [202, 503]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = client()
        .post(node.url("/limited?ms=1"))
        .header("x-tessera-async", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "the rate refills");
}

#[tokio::test]
async fn the_instance_memory_budget_caps_all_instances_together() {
    let app = App::new(
        r#"
[app]
name = "hogs"

[services.memhog]
component = "{guest:memhog}"
routes = ["/memhog"]
memory = "256MiB"
"#,
    );
    let node = Node::up(app.path(), &["--instance-memory", "300MiB"]);
    let (status, _) = crate::util::get(node.addr, "/memhog?mb=1");
    assert_eq!(status, 200);
    let before = node.peak_rss_bytes();

    // The first takes 200 MiB and holds it; two more of the same cannot fit beside it.
    let first = tokio::spawn(client().get(node.url("/memhog?mb=200&hold_ms=2000")).send());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (second, third) = tokio::join!(
        client().get(node.url("/memhog?mb=200&hold_ms=2000")).send(),
        client().get(node.url("/memhog?mb=200&hold_ms=2000")).send(),
    );
    for r in [second.unwrap(), third.unwrap()] {
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(error_code(r).await, "capacity");
    }
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap());
    let grown = node.peak_rss_bytes().saturating_sub(before);
    assert!(grown < 300 << 20, "the node grew by {} MiB", grown >> 20);
    // The memory went back to the budget with the instances.
    let (status, body) = crate::util::get(node.addr, "/memhog?mb=200");
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn outbound_grants_never_reach_the_nodes_own_listeners_and_internal_names_ignore_case() {
    let manifest = |admin: &str| {
        format!(
            r#"
[app]
name = "out"

[services.fetch]
component = "{{guest:fetch}}"
routes = ["/fetch"]
outbound = ["http://data1.internal", "http://localhost:{admin}", "http://127.0.0.1:{admin}"]

[services.data1]
component = "{{guest:data}}"
routes = ["/data1"]
"#
        )
    };
    let app = App::new(&manifest("1"));
    let node = app.up();
    let admin = node.admin.unwrap().port().to_string();
    app.write_manifest(&manifest(&admin));
    deploy(&node, app.path());

    for url in [
        format!("http://localhost:{admin}/v1/apps"),
        format!("http://127.0.0.1:{admin}/v1/apps"),
    ] {
        let r = client()
            .get(node.url(&format!("/fetch?url={url}")))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 502, "{url} was reached: {body}");
        assert!(body.contains("denied") || body.contains("Denied"), "{body}");
    }
    // Any spelling of an internal name is dispatched in-process, never looked up in DNS.
    for host in ["Data1.Internal", "data1.internal."] {
        let r = client()
            .get(node.url(&format!("/fetch?url=http://{host}/data1/kv/default/none")))
            .send()
            .await
            .unwrap();
        let body = r.text().await.unwrap();
        assert!(body.starts_with("status=404"), "{host}: {body}");
    }
}

#[tokio::test]
async fn control_api_errors_are_json_with_the_right_status() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = App::new(HELLO);
    deploy(&node, app.path());
    let http = client();
    let json_error = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let json: Value = r.json().await.expect("a JSON error body");
        (
            status,
            json["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };

    let r = http
        .post(node.admin_url("/v1/apps/hard/services/hello/rollback"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"to":-1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(r).await, (400, "invalid_json".to_string()));

    // A name that is a path step is refused before it reaches any file.
    let marker = data.path().parent().unwrap().join(format!(
        "{}-sibling",
        data.path().file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&marker, "keep").unwrap();
    // Sent as it is: an HTTP client library would normalise the path first.
    let mut stream = TcpStream::connect(node.admin.unwrap()).unwrap();
    write!(
        stream,
        "DELETE /v1/apps/%2e%2e?purge=true HTTP/1.0\r\nhost: test\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 400"), "{response}");
    assert!(response.contains(r#""code":"invalid""#), "{response}");
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();

    let r = http
        .post(node.admin_url("/v1/apps/hard/deploy"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(vec![b' '; 3 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(r).await, (413, "too_large".to_string()));
}

#[test]
fn a_guessable_control_token_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let output = exits_within(
        serve_command(data.path(), "x", &[]),
        Duration::from_secs(30),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TESSERA_TOKEN is 1 bytes long"), "{stderr}");
}

#[test]
fn a_host_with_a_trailing_dot_is_bound_like_the_host() {
    let app = App::new(
        r#"
[app]
name = "shop"
host = "shop.localhost"

[services.hello]
component = "{guest:hello}"
routes = ["/hello"]
"#,
    );
    let node = app.up();
    let get_with_host = |host: &str| {
        let mut stream = TcpStream::connect(node.addr).unwrap();
        write!(stream, "GET /hello HTTP/1.0\r\nhost: {host}\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response[9..12].to_string()
    };
    assert_eq!(get_with_host("shop.localhost"), "200");
    assert_eq!(get_with_host("shop.localhost."), "200");
    assert_eq!(get_with_host("SHOP.localhost.:80"), "200");
    assert_eq!(get_with_host("other.localhost"), "404");
}

#[tokio::test]
async fn a_guest_printing_in_a_loop_does_not_flood_the_nodes_output() {
    let app = App::new(
        r#"
[app]
name = "chatty"

[services.slow]
component = "{guest:slow}"
routes = ["/slow"]
timeout = "60s"
"#,
    );
    let node = app.up();
    // 64 MiB of output in one request; the node passes on a few MiB and says so.
    let r = client()
        .get(node.url("/slow?ms=1&print_mb=64"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // What the node passed on, once its output has settled.
    let mut printed = 0;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = node.stdout.text().len();
        if now == printed {
            break;
        }
        printed = now;
    }
    assert!(printed > 1 << 20, "the node printed only {printed} bytes");
    assert!(printed < 12 << 20, "the node printed {printed} bytes");
    assert!(
        node.stdout
            .contains("of this service's output were dropped")
    );
}

/// A streamed upload body of `mb` MiB: `head` and then zeros, made as it is sent.
fn streamed(head: &'static [u8], mb: usize) -> reqwest::Body {
    let chunks = (0..mb).map(move |i| {
        let mut chunk = vec![0u8; 1 << 20];
        if i == 0 {
            chunk[..head.len()].copy_from_slice(head);
        }
        Ok::<_, std::io::Error>(bytes::Bytes::from(chunk))
    });
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn uploads_are_streamed_and_refused_early_instead_of_buffered() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let (status, _) = crate::util::get(node.addr, "/nothing");
    assert_eq!(status, 404);
    let before = node.peak_rss_bytes();
    let address = "0".repeat(64);
    let upload = |body: reqwest::Body| {
        client()
            .put(node.admin_url(&format!("/v1/artifacts/{address}")))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
    };
    // A refusal comes before the client has sent its body, so the client may see its
    // write cut off instead of the answer; either way the body was not taken.
    let refused_with = |result: reqwest::Result<reqwest::Response>| async move {
        match result {
            Ok(r) => {
                let status = r.status().as_u16();
                let json: Value = r.json().await.unwrap();
                Some((status, json["error"]["code"].as_str().unwrap().to_string()))
            }
            Err(e) if e.is_request() => None,
            Err(e) => panic!("{e}"),
        }
    };
    // Not a component: refused at its first bytes, however large it claims to be. The
    // answer comes while the client has sent 16 bytes of the 100 MB it announced.
    let mut stream = TcpStream::connect(node.admin.unwrap()).unwrap();
    write!(
        stream,
        "PUT /v1/artifacts/{address} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {TOKEN}\r\n\
         content-length: 104857600\r\n\r\njunk, then more.."
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 512];
    let n = stream
        .read(&mut answer)
        .expect("an answer before the body was sent");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    assert!(answer.contains("invalid_component"), "{answer}");
    let r = upload(reqwest::Body::from("junk, and nothing more")).await;
    assert_eq!(
        refused_with(r).await,
        Some((422, "invalid_component".to_string()))
    );
    let started = std::time::Instant::now();
    let garbage =
        futures_util::future::join_all((0..4).map(|_| upload(streamed(b"junk", 100)))).await;
    for r in garbage {
        if let Some(answer) = refused_with(r).await {
            assert_eq!(answer, (422, "invalid_component".to_string()));
        }
    }
    // A component preamble followed by more than the limit: refused once past it.
    let r = upload(streamed(b"\0asm\x0d\0\x01\0", 300)).await;
    if let Some(answer) = refused_with(r).await {
        assert_eq!(answer, (413, "too_large".to_string()));
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let grown = node.peak_rss_bytes().saturating_sub(before);
    assert!(grown < 96 << 20, "the node grew by {} MiB", grown >> 20);
    // Nothing was left behind in the artifact directory.
    let leftovers: Vec<_> = std::fs::read_dir(data.path().join("artifacts"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
