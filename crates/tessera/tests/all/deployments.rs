//! A long-running node (`tessera serve`): deploys through the CLI and the control API,
//! immutable revisions, traffic splitting, rollback, auth, durability, zero downtime.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::util::{App, Node, client, guest, ok};

const TOKEN: &str = "test-token-0123456789";

/// An app with one service whose timeout can be changed to force a new revision.
fn hello_app(timeout: &str) -> App {
    App::new(&format!(
        r#"
[app]
name = "shop"

[services.front]
component = "{{guest:hello}}"
routes = ["/front"]
timeout = "{timeout}"

[services.info]
component = "{{guest:inspect}}"
routes = ["/info"]
"#
    ))
}

fn deploy(node: &Node, app: &Path, extra: &[&str]) -> String {
    let mut args = vec!["deploy", app.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(node.cli(TOKEN, &args))
}

#[tokio::test]
async fn deploy_creates_revisions_only_for_changed_services_and_rollback_is_instant() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let http = client();

    let v1 = hello_app("5s");
    assert_eq!(deploy(&node, v1.path(), &[]), "front r1\ninfo r1\n");
    let r = http.get(node.url("/front")).send().await.unwrap();
    assert_eq!(r.headers()["x-tessera-revision"], "r1");
    assert_eq!(r.text().await.unwrap(), "hello from tessera\n");

    // Same components and config: nothing new, nothing uploaded again.
    let again = node.cli(TOKEN, &["deploy", v1.path().to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("uploaded"));
    assert_eq!(ok(again), "front unchanged\ninfo unchanged\n");

    // A change to one service makes a revision of that service only.
    let v2 = hello_app("6s");
    assert_eq!(deploy(&node, v2.path(), &[]), "front r2\ninfo unchanged\n");
    let r = http.get(node.url("/front")).send().await.unwrap();
    assert_eq!(r.headers()["x-tessera-revision"], "r2");

    let listing = ok(node.cli(TOKEN, &["ls"]));
    assert!(
        listing.contains("shop") && listing.contains("front") && listing.contains("r2=100%"),
        "{listing}"
    );
    let history = ok(node.cli(TOKEN, &["revisions", "front"]));
    assert!(
        history.contains("r2") && history.contains("r1"),
        "{history}"
    );

    assert_eq!(
        ok(node.cli(TOKEN, &["rollback", "front"])),
        "front r1=100%\n"
    );
    let r = http.get(node.url("/front")).send().await.unwrap();
    assert_eq!(r.headers()["x-tessera-revision"], "r1");
    assert_eq!(
        ok(node.cli(TOKEN, &["rollback", "front", "--to", "r2"])),
        "front r2=100%\n"
    );

    let removed = ok(node.cli(TOKEN, &["rm", "shop"]));
    assert!(removed.starts_with("removed shop"), "{removed}");
    let r = http.get(node.url("/front")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_canary_split_is_honoured_within_two_percent_over_ten_thousand_requests() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    deploy(&node, hello_app("5s").path(), &[]);
    let out = deploy(
        &node,
        hello_app("7s").path(),
        &["--service", "front", "--traffic", "10"],
    );
    assert_eq!(out, "front r2\n");

    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let http = client();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, counts) = (http.clone(), node.url("/front"), counts.clone());
            tokio::spawn(async move {
                for _ in 0..1250 {
                    let r = http.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    match r.headers()["x-tessera-revision"].to_str().unwrap() {
                        "r1" => counts[0].fetch_add(1, Ordering::Relaxed),
                        "r2" => counts[1].fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected revision {other}"),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let canary = counts[1].load(Ordering::Relaxed);
    assert_eq!(counts[0].load(Ordering::Relaxed) + canary, 10_000);
    assert!(
        (800..=1200).contains(&canary),
        "canary got {canary} of 10000"
    );

    // A header pins a request to a revision, whatever the split.
    for _ in 0..5 {
        let r = http
            .get(node.url("/front"))
            .header("x-tessera-revision", "r2")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-tessera-revision"], "r2");
    }
    // Promote: all traffic to the canary.
    assert_eq!(
        ok(node.cli(TOKEN, &["traffic", "front", "r2=100"])),
        "front r2=100%\n"
    );
    let r = http.get(node.url("/front")).send().await.unwrap();
    assert_eq!(r.headers()["x-tessera-revision"], "r2");
}

#[tokio::test]
async fn repeated_deploys_traffic_changes_and_rollbacks_drop_no_request() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    deploy(&node, hello_app("5s").path(), &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let http = client();
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (http, url, stop, succeeded) = (
                http.clone(),
                node.url("/front"),
                stop.clone(),
                succeeded.clone(),
            );
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            let body = r.text().await.unwrap_or_default();
                            if body == "hello from tessera\n" {
                                succeeded.fetch_add(1, Ordering::Relaxed);
                            } else {
                                failures.push(format!("body {body:?}"));
                            }
                        }
                        Ok(r) => failures.push(format!("status {}", r.status())),
                        Err(e) => failures.push(format!("error {e}")),
                    }
                }
                failures
            })
        })
        .collect();

    let apps: Vec<App> = ["6s", "7s", "8s", "9s"]
        .iter()
        .map(|t| hello_app(t))
        .collect();
    for app in &apps {
        deploy(&node, app.path(), &[]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok(node.cli(TOKEN, &["traffic", "front", "r3=50", "r5=50"]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    ok(node.cli(TOKEN, &["rollback", "front", "--to", "r2"]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    ok(node.cli(TOKEN, &["rollback", "front", "--to", "r5"]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);

    let mut failures = Vec::new();
    for worker in load {
        failures.extend(worker.await.unwrap());
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        succeeded.load(Ordering::Relaxed) > 100,
        "too little traffic to prove anything"
    );
}

#[tokio::test]
async fn the_control_api_requires_the_token_and_answers_json_errors() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let http = client();

    let r = http.get(node.admin_url("/v1/apps")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["error"]["code"], "unauthorized");
    let r = http
        .get(node.admin_url("/v1/apps"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = http
        .get(node.admin_url("/v1/apps/nope"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["error"]["code"], "not_found");
    assert!(json["error"]["message"].as_str().unwrap().contains("nope"));

    let r = http
        .post(node.admin_url("/v1/apps/shop/deploy"))
        .bearer_auth(TOKEN)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["error"]["code"], "invalid_json");
}

#[tokio::test]
async fn a_corrupt_or_non_component_upload_is_refused_before_anything_changes() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let http = client();
    let upload = |bytes: Vec<u8>, address: String| {
        http.put(node.admin_url(&format!("/v1/artifacts/{address}")))
            .bearer_auth(TOKEN)
            .body(bytes)
            .send()
    };

    let junk = b"not a component".to_vec();
    let address = sha256(&junk);
    let r = upload(junk, address.clone()).await.unwrap();
    assert_eq!(r.status(), 422);
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["error"]["code"], "invalid_component");
    let r = http
        .head(node.admin_url(&format!("/v1/artifacts/{address}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a refused upload must not be stored");

    // A command component is a component, but not an HTTP service.
    let command = std::fs::read(guest("not_http")).unwrap();
    let address = sha256(&command);
    let r = upload(command, address).await.unwrap();
    assert_eq!(r.status(), 422);

    // Bytes that do not match their address.
    let hello = std::fs::read(guest("hello")).unwrap();
    let r = upload(hello, "0".repeat(64)).await.unwrap();
    assert_eq!(r.status(), 400);

    let r = http
        .get(node.admin_url("/v1/apps"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["apps"], serde_json::json!([]));
}

#[tokio::test]
async fn deployed_state_survives_a_restart_of_the_node() {
    let data = tempfile::tempdir().unwrap();
    {
        let node = Node::serve(data.path(), TOKEN);
        deploy(&node, hello_app("5s").path(), &[]);
        deploy(&node, hello_app("6s").path(), &["--traffic", "25"]);
    }
    let node = Node::serve(data.path(), TOKEN);
    let listing = ok(node.cli(TOKEN, &["ls"]));
    assert!(listing.contains("r1=75% r2=25%"), "{listing}");
    let r = client().get(node.url("/front")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Compiled code comes from the cache on restart (loaded by the first request).
    assert!(
        node.stderr
            .wait_for("source=cache", Duration::from_secs(5))
            .is_some(),
        "{}",
        node.stderr.text()
    );
}

#[tokio::test]
async fn every_path_in_the_openapi_document_is_served() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    deploy(&node, hello_app("5s").path(), &[]);
    let http = client();
    let doc: serde_json::Value = http
        .get(node.admin_url("/v1/openapi.json"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 8);
    let hello_sha = sha256(&std::fs::read(guest("hello")).unwrap());
    for (path, item) in paths {
        let concrete = path
            .replace("{app}", "shop")
            .replace("{service}", "front")
            .replace("{sha256}", &hello_sha)
            .replace("{name}", "API_KEY")
            .replace("{topic}", "orders")
            .replace("{id}", "0000");
        let methods = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| ["get", "head", "put", "post", "delete"].contains(&k.as_str()));
        for method in methods {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            if method == reqwest::Method::DELETE {
                continue; // exercised last, below
            }
            let r = http
                .request(method.clone(), node.admin_url(&concrete))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            // The endpoint exists: anything but the router's own "no such endpoint" or
            // "method not allowed" proves the document matches the router.
            assert_ne!(r.status(), 405, "{method} {path}");
            if r.status() == 404 {
                let json: serde_json::Value = r.json().await.unwrap_or_default();
                assert_ne!(
                    json["error"]["message"], "no such endpoint; see /v1/openapi.json",
                    "{method} {path} is documented but not served"
                );
            }
        }
    }
    let r = http
        .delete(node.admin_url("/v1/apps/shop"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn serve_refuses_to_run_without_a_token_unless_dev_on_loopback() {
    let data = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        crate::util::tessera()
            .env_remove("TESSERA_TOKEN")
            .arg("serve")
            .arg("--data")
            .arg(data.path())
            .args(args)
            .output()
            .unwrap()
    };
    let output = run(&["--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0", "--dev"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
    let output = run(&["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("TESSERA_TOKEN"));
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The JSON deploy request for `hello_app(timeout)`'s front service alone.
fn front_deploy(timeout_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "services": [{
            "name": "front",
            "sha256": sha256(&std::fs::read(guest("hello")).unwrap()),
            "routes": ["/front"],
            "memory": 128u64 << 20,
            "timeout_ms": timeout_ms,
        }],
        "only": ["front"],
    })
}

#[tokio::test]
async fn kill_9_during_deploys_leaves_the_old_or_the_new_state_and_keeps_acknowledged_ones() {
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::serve(data.path(), TOKEN);
    deploy(&node, hello_app("5s").path(), &[]);
    let http = client();
    let post = |node: &Node, timeout_ms: u64| {
        http.post(node.admin_url("/v1/apps/shop/deploy"))
            .bearer_auth(TOKEN)
            .json(&front_deploy(timeout_ms))
            .send()
    };
    // How long one deploy call takes here, to spread the kills across its window.
    let started = std::time::Instant::now();
    assert_eq!(post(&node, 6000).await.unwrap().status(), 200);
    let window = started.elapsed();

    let mut outcomes = Vec::new();
    for round in 0..8u32 {
        // Kill the node at a different moment each round: before, during or after the
        // commit of the deploy in flight.
        let request = tokio::spawn(post(&node, 10_000 + u64::from(round)));
        tokio::time::sleep(window * round / 6).await;
        let _ = node.child.kill();
        let _ = node.child.wait();
        let answer = match request.await.unwrap() {
            Ok(r) if r.status() == 200 => Some(r.json::<serde_json::Value>().await.ok()),
            _ => None,
        };
        let acknowledged = answer.as_ref().and_then(|a| a.as_ref()).map(|a| {
            a["created"][0]["revision"]
                .as_u64()
                .expect("created revision")
        });
        outcomes.push(acknowledged);

        node = Node::serve(data.path(), TOKEN);
        let state: serde_json::Value = http
            .get(node.admin_url("/v1/apps/shop/services/front"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // One revision carries all traffic, and it is the newest: never a half-applied
        // deploy.
        let traffic = state["traffic"].as_array().unwrap();
        assert_eq!(traffic.len(), 1, "{state}");
        assert_eq!(traffic[0]["percent"], 100, "{state}");
        let primary = traffic[0]["revision"].as_u64().unwrap();
        let newest = state["revisions"].as_array().unwrap().last().unwrap()["id"]
            .as_u64()
            .unwrap();
        assert_eq!(
            primary, newest,
            "a revision exists that never took traffic: {state}"
        );
        let timeout = state["revisions"].as_array().unwrap().last().unwrap()["timeout_ms"]
            .as_u64()
            .unwrap();
        if let Some(revision) = acknowledged {
            assert_eq!(primary, revision, "acknowledged deploy lost: {state}");
        }
        // Either this round's deploy (new) or the previous state (old), nothing else.
        assert!(
            timeout == 10_000 + u64::from(round) || acknowledged.is_none(),
            "{state}"
        );
        // The node serves exactly what its state says.
        let r = http.get(node.url("/front")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-tessera-revision"],
            format!("r{primary}").as_str()
        );
    }
    // Shown with --nocapture: which rounds were acknowledged before the kill.
    eprintln!("deploy window {window:?}; acknowledged per round: {outcomes:?}");
}

#[tokio::test]
async fn apps_bound_to_host_names_share_one_gateway() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let shop = App::new(
        r#"
[app]
name = "shop"
host = "shop.localhost"

[services.storefront]
component = "{guest:inspect}"
routes = ["/"]
"#,
    );
    let blog = App::new(
        r#"
[app]
name = "blog"

[services.posts]
component = "{guest:hello}"
routes = ["/"]
"#,
    );
    assert_eq!(deploy(&node, shop.path(), &[]), "storefront r1\n");
    assert_eq!(deploy(&node, blog.path(), &[]), "posts r1\n");
    let http = client();

    for host in ["shop.localhost", "SHOP.localhost:8080"] {
        let r = http
            .get(node.url("/cart"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        let json: serde_json::Value = r.json().await.unwrap();
        assert_eq!(json["path_with_query"], "/cart", "{host}");
    }
    // Any other host reaches the app without a host binding.
    let r = http
        .get(node.url("/cart"))
        .header("host", "blog.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello from tessera\n");

    // A second app claiming the same host and path is refused, and nothing changes.
    let rival = App::new(
        r#"
[app]
name = "rival"
host = "shop.localhost"

[services.other]
component = "{guest:hello}"
routes = ["/"]
"#,
    );
    let output = node.cli(TOKEN, &["deploy", rival.path().to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "route `shop.localhost/` is already claimed by service `storefront` of app `shop`"
        ),
        "{stderr}"
    );
    let listing = ok(node.cli(TOKEN, &["ls"]));
    assert!(!listing.contains("rival"), "{listing}");
    assert!(listing.contains("shop.localhost/"), "{listing}");
}

#[tokio::test]
async fn a_value_out_of_range_gets_the_same_message_from_a_manifest_and_the_api() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = App::new(
        r#"
[app]
name = "shop"

[services.front]
component = "{guest:hello}"
routes = ["/front"]
memory = "512KiB"
"#,
    );
    let out = node.cli(TOKEN, &["deploy", app.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = "memory limit must be between 1MiB and 4GiB";
    assert!(stderr.contains("services.front.memory"), "{stderr}");
    assert!(stderr.contains(message), "{stderr}");

    // The component must be stored for the API to get as far as the settings.
    let hello = std::fs::read(guest("hello")).unwrap();
    let http = client();
    let r = http
        .put(node.admin_url(&format!("/v1/artifacts/{}", sha256(&hello))))
        .bearer_auth(TOKEN)
        .body(hello)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let post = |body: serde_json::Value| {
        http.post(node.admin_url("/v1/apps/shop/deploy"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let mut body = front_deploy(1000);
    body["services"][0]["memory"] = serde_json::json!(512 << 10);
    let r = post(body).await.unwrap();
    assert_eq!(r.status(), 400);
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["error"]["code"], "invalid");
    assert_eq!(
        json["error"]["message"],
        format!("service `front`: memory: {message}")
    );

    let mut body = front_deploy(1000);
    body["services"][0]["subscribe"] = serde_json::json!([{
        "topic": "orders created", "path": "/front/on", "max_attempts": 3,
        "backoff_ms": 10, "max_backoff_ms": 10, "concurrency": 1, "batch": 1
    }]);
    let r = post(body).await.unwrap();
    assert_eq!(r.status(), 400);
    let json: serde_json::Value = r.json().await.unwrap();
    let text = json["error"]["message"].as_str().unwrap();
    assert!(text.contains("subscribe[0].topic"), "{text}");

    // A key no service has is refused, not ignored.
    let mut body = front_deploy(1000);
    body["services"][0]["memroy"] = serde_json::json!(1);
    let r = post(body).await.unwrap();
    assert_eq!(r.status(), 400);
    let json: serde_json::Value = r.json().await.unwrap();
    let text = json["error"]["message"].as_str().unwrap();
    assert!(text.contains("unknown field `memroy`"), "{text}");

    let r = http
        .get(node.admin_url("/v1/apps"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["apps"], serde_json::json!([]), "nothing was deployed");
}
