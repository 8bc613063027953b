//! Faults stay inside the request that caused them: traps, runaway loops, memory bombs,
//! denied capabilities, and a full instance pool.

use std::time::{Duration, Instant};

use crate::util::{App, Node, client, error_code};

const GOOD_AND_BAD: &str = r#"
[app]
name = "faults"

[services.good]
component = "{guest:hello}"
routes = ["/good"]

[services.trap]
component = "{guest:trap}"
routes = ["/trap"]

[services.spin]
component = "{guest:spin}"
routes = ["/spin"]
timeout = "1500ms"

[services.memhog]
component = "{guest:memhog}"
routes = ["/memhog"]
memory = "16MiB"
"#;

#[tokio::test]
async fn a_trapping_service_fails_its_own_requests_while_others_keep_answering() {
    let app = App::new(GOOD_AND_BAD);
    let node = app.up();
    let http = client();

    let mut tasks = Vec::new();
    for i in 0..40 {
        let http = http.clone();
        let path = match i % 3 {
            0 => "/trap/panic",
            1 => "/trap/unreachable",
            _ => "/good",
        };
        let url = node.url(path);
        tasks.push(tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            (path, r.status().as_u16(), r)
        }));
    }
    for task in tasks {
        let (path, status, response) = task.await.unwrap();
        if path == "/good" {
            assert_eq!(status, 200);
            assert_eq!(response.text().await.unwrap(), "hello from tessera\n");
        } else {
            assert_eq!(status, 500, "{path}");
            assert_eq!(error_code(response).await, "guest_trap");
        }
    }
    // The guest's panic message reaches the log, tagged with the service.
    assert!(
        node.stderr
            .wait_for("guest panicked on purpose", Duration::from_secs(5))
            .is_some_and(|l| l.starts_with("[trap ")),
        "{}",
        node.stderr.text()
    );
}

#[tokio::test]
async fn an_endless_loop_is_cut_off_with_504_and_does_not_starve_other_services() {
    let app = App::new(GOOD_AND_BAD);
    let node = app.up();
    let http = client();

    // More spinning guests than the node has worker threads: if guests did not yield,
    // they would occupy every thread and the good service could not answer until the
    // spinners are stopped.
    let started = Instant::now();
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let http = http.clone();
            let url = node.url("/spin");
            tokio::spawn(async move {
                let r = http.get(url).send().await.unwrap();
                (Instant::now(), r)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut good_done = Instant::now();
    for _ in 0..10 {
        let r = http.get(node.url("/good")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        good_done = Instant::now();
    }
    for spinner in spinners {
        let (finished, response) = spinner.await.unwrap();
        assert_eq!(response.status(), 504);
        assert_eq!(error_code(response).await, "timeout");
        assert!(
            good_done < finished,
            "the good service only answered after the spinning guests were stopped"
        );
        // Cut off at its 1.5 s deadline, not left running.
        assert!(finished.duration_since(started) < Duration::from_secs(10));
    }
}

#[tokio::test]
async fn a_memory_bomb_fails_only_its_request() {
    let app = App::new(GOOD_AND_BAD);
    let node = app.up();
    let http = client();

    let r = http.get(node.url("/memhog?mb=64")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(error_code(r).await, "memory_limit");

    // Within the limit the same service works, before and after a good request elsewhere.
    let r = http.get(node.url("/memhog?mb=4")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "allocated 4 MiB\n");
    let r = http.get(node.url("/good")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(node.url("/memhog?mb=64")).send().await.unwrap();
    assert_eq!(r.status(), 500);
}

#[tokio::test]
async fn guests_get_no_environment_files_or_arguments_unless_granted() {
    let app = App::new(
        r#"
[app]
name = "grants"

[services.bare]
component = "{guest:inspect}"
routes = ["/bare"]

[services.granted]
component = "{guest:inspect}"
routes = ["/granted"]
env = { GREETING = "hi", MODE = "test" }
"#,
    );
    // The node's own environment must not leak into guests.
    let node = Node::up_with_env(app.path(), &[], &[("SECRET_OF_THE_HOST", "leaked")]);
    let http = client();

    let bare: serde_json::Value = http
        .get(node.url("/bare"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bare["env"], serde_json::json!([]), "{bare}");
    assert_ne!(bare["fs_root"], "ok", "{bare}");
    assert_ne!(bare["file_read"], "ok", "{bare}");

    let granted: serde_json::Value = http
        .get(node.url("/granted"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let env: Vec<&str> = granted["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(env, vec!["GREETING=hi", "MODE=test"]);
}

/// A one-shot HTTP server on loopback standing in for an outside API.
fn fake_upstream() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nupstream",
            );
        }
    });
    addr
}

#[tokio::test]
async fn outbound_http_is_denied_unless_the_origin_is_granted() {
    let upstream = fake_upstream();
    let app = App::new(&format!(
        r#"
[app]
name = "outbound"

[services.denied]
component = "{{guest:fetch}}"
routes = ["/denied"]

[services.allowed]
component = "{{guest:fetch}}"
routes = ["/allowed"]
outbound = ["http://{upstream}"]
"#
    ));
    let node = app.up();
    let http = client();
    let target = format!("http://{upstream}/data");

    let r = http
        .get(node.url("/denied"))
        .query(&[("url", &target)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("HttpRequestDenied"));

    let r = http
        .get(node.url("/allowed"))
        .query(&[("url", &target)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "status=200\nupstream");

    // The grant is for one origin: another port on the same host stays closed.
    let other = format!("http://127.0.0.1:{}/", upstream.port() + 1);
    let r = http
        .get(node.url("/allowed"))
        .query(&[("url", &other)])
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("HttpRequestDenied"));
}

#[tokio::test]
async fn a_full_instance_pool_answers_503_with_retry_after() {
    let app = App::new(
        r#"
[app]
name = "pool"

[services.slow]
component = "{guest:slow}"
routes = ["/slow"]
"#,
    );
    let node = Node::up(app.path(), &["--max-instances", "2"]);
    let http = client();
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let http = http.clone();
            let url = node.url("/slow?ms=1500");
            tokio::spawn(async move { http.get(url).send().await.unwrap() })
        })
        .collect();
    let mut ok = 0;
    let mut rejected = 0;
    for request in requests {
        let r = request.await.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.headers()["retry-after"], "1");
                assert_eq!(error_code(r).await, "capacity");
                rejected += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, rejected), (2, 4));
    // Once the slots are free again, requests are served.
    let r = http.get(node.url("/slow?ms=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
