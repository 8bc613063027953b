//! Each service's own data through the real binary: key-value CRUD and atomics under
//! contention, SQL with transactions and migrations, configuration and secrets, isolation
//! between services, and durability across `kill -9`.
//!
//! The `data` test guest serves its data over HTTP (see crates/test-programs/src/bin/data.rs)
//! below whatever route prefix it is given, so one component plays several services.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{App, Node, client, ok, tessera};

const TOKEN: &str = "data-token-0123456789";

/// Two services running the same data guest: `a` (with an extra bucket and config) and `b`.
fn two_services(extra_a: &str) -> App {
    App::new(&format!(
        r#"
[app]
name = "store"

[services.a]
component = "{{guest:data}}"
routes = ["/a"]
buckets = ["sessions"]
{extra_a}

[services.b]
component = "{{guest:data}}"
routes = ["/b"]
"#
    ))
}

async fn put(url: String, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client().put(url).body(body).send().await.unwrap()
}

async fn text(url: String) -> (u16, String) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post_json(url: String, body: &Value) -> (u16, Value) {
    let r = client().post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, json)
}

#[tokio::test]
async fn key_value_crud_buckets_limits_and_isolation() {
    let app = two_services("");
    let node = Node::up(app.path(), &[]);

    let r = put(node.url("/a/kv/default/greeting"), "hello").await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        text(node.url("/a/kv/default/greeting")).await,
        (200, "hello".into())
    );
    let (_, exists) = text(node.url("/a/kv/default/greeting?exists")).await;
    assert_eq!(
        serde_json::from_str::<Value>(&exists).unwrap(),
        json!({"exists": true})
    );
    // Service b asks for the same bucket and key and sees nothing.
    let (status, body) = text(node.url("/b/kv/default/greeting")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not-found"), "{body}");

    // Buckets: `default` always, declared ones, and nothing else.
    assert_eq!(put(node.url("/a/kv/sessions/s1"), "x").await.status(), 204);
    let (status, body) = text(node.url("/a/kv/carts/s1")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no-such-store"), "{body}");
    let (status, body) = text(node.url("/b/kv/sessions/s1")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no-such-store"), "{body}");

    // Listing pages through keys in order.
    for key in ["k3", "k1", "k2"] {
        put(node.url(&format!("/a/kv/sessions/{key}")), key).await;
    }
    let (_, list) = text(node.url("/a/kv/sessions")).await;
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["keys"], json!(["k1", "k2", "k3", "s1"]), "{list}");
    assert_eq!(list["cursor"], Value::Null);

    // Limits give a clear error and store nothing.
    let long_key = "k".repeat(1025);
    let r = put(node.url(&format!("/a/kv/default/{long_key}")), "v").await;
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("1024"), "{body}");
    let r = put(node.url("/a/kv/default/big"), vec![b'x'; (1 << 20) + 1]).await;
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("1048576"), "{body}");
    assert_eq!(text(node.url("/a/kv/default/big")).await.0, 404);
    assert_eq!(
        put(node.url("/a/kv/default/big"), vec![b'x'; 1 << 20])
            .await
            .status(),
        204
    );

    // Batch: set, get, delete in one request.
    let (status, got) = post_json(
        node.url("/a/kv/default/_batch"),
        &json!({"set": {"x": "1", "y": "2"}, "get": ["x", "y", "z"], "delete": ["x"]}),
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["got"], json!({"x": "1", "y": "2", "z": null}));
    assert_eq!(text(node.url("/a/kv/default/x")).await.0, 404);

    let r = client()
        .delete(node.url("/a/kv/default/greeting"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(text(node.url("/a/kv/default/greeting")).await.0, 404);
}

#[tokio::test]
async fn atomic_increment_and_compare_and_swap_lose_no_update() {
    let app = two_services("");
    let node = Node::up(app.path(), &[]);
    let http = client();

    // 200 concurrent increments: every one sees a distinct new value, and the total is
    // exact.
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let http = http.clone();
            let url = node.url("/a/kv/default/hits/incr");
            tokio::spawn(async move {
                let r = http.post(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.json::<Value>().await.unwrap()["value"].as_i64().unwrap()
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for task in tasks {
        assert!(
            seen.insert(task.await.unwrap()),
            "a value was handed out twice"
        );
    }
    assert_eq!(seen, (1..=200).collect::<BTreeSet<i64>>());
    assert_eq!(
        text(node.url("/a/kv/default/hits")).await,
        (200, "200".into())
    );
    let r = http
        .post(node.url("/a/kv/default/hits/incr?by=-50"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["value"], 150);

    // Compare-and-swap loops from 50 concurrent requests: each retries until it wins.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let http = http.clone();
            let url = node.url("/a/kv/default/cas-counter/cas-incr");
            tokio::spawn(async move {
                let r = http.post(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.json::<Value>().await.unwrap()
            })
        })
        .collect();
    let mut values = BTreeSet::new();
    for task in tasks {
        let result = task.await.unwrap();
        values.insert(result["value"].as_i64().unwrap());
    }
    assert_eq!(values, (1..=50).collect::<BTreeSet<i64>>());
    assert_eq!(
        text(node.url("/a/kv/default/cas-counter")).await,
        (200, "50".into())
    );

    // A swap against a stale expectation fails and changes nothing.
    let r = http
        .post(node.url("/a/kv/default/cas-counter/cas"))
        .header("x-expect", "49")
        .body("999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = http
        .post(node.url("/a/kv/default/cas-counter/cas"))
        .header("x-expect", "50")
        .body("51")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        text(node.url("/a/kv/default/cas-counter")).await,
        (200, "51".into())
    );
    // Increment of a value that is not an integer is an error, not a silent reset.
    put(node.url("/a/kv/default/word"), "hello").await;
    let r = http
        .post(node.url("/a/kv/default/word/incr"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        text(node.url("/a/kv/default/word")).await,
        (200, "hello".into())
    );
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn sql_app(timeout: &str, migrations: &[&str]) -> String {
    let list: Vec<String> = migrations
        .iter()
        .map(|m| format!("\"migrations/{m}\""))
        .collect();
    format!(
        r#"
[app]
name = "ledger"

[services.a]
component = "{{guest:data}}"
routes = ["/a"]
timeout = "{timeout}"
migrations = [{}]

[services.b]
component = "{{guest:data}}"
routes = ["/b"]
"#,
        list.join(", ")
    )
}

fn deploy(node: &Node, app: &Path) -> std::process::Output {
    node.cli(TOKEN, &["deploy", app.to_str().unwrap()])
}

async fn query(node: &Node, service: &str, sql: &str, params: Value) -> (u16, Value) {
    post_json(
        node.url(&format!("/{service}/sql/query")),
        &json!({"sql": sql, "params": params}),
    )
    .await
}

async fn count(node: &Node, service: &str, table: &str) -> i64 {
    let (status, rows) = query(
        node,
        service,
        &format!("SELECT count(*) FROM {table}"),
        json!([]),
    )
    .await;
    assert_eq!(status, 200, "{rows}");
    rows["rows"][0][0].as_i64().unwrap()
}

#[tokio::test]
async fn sql_types_batches_migrations_and_data_lifecycle() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = App::new(&sql_app("5s", &["0001_items.sql", "0002_seed.sql"]));
    write(
        app.path(),
        "migrations/0001_items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, price REAL, photo BLOB);\n",
    );
    write(
        app.path(),
        "migrations/0002_seed.sql",
        "INSERT INTO items (name, price) VALUES ('seed', 1.5);\n",
    );
    ok(deploy(&node, app.path()));
    assert_eq!(count(&node, "a", "items").await, 1);
    // b has its own database: no such table there.
    let (status, error) = query(&node, "b", "SELECT * FROM items", json!([])).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"], "invalid-statement", "{error}");

    // Typed parameters and columns round-trip.
    let (status, done) = post_json(
        node.url("/a/sql/execute"),
        &json!({"sql": "INSERT INTO items (name, price, photo) VALUES (?, ?, ?)", "params": ["pen", 2.25, {"blob": "00ff10"}]}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["rows_affected"], 1);
    assert_eq!(done["last_insert_id"], 2);
    let (_, rows) = query(
        &node,
        "a",
        "SELECT id, name, price, photo, NULL AS missing FROM items WHERE name = ?1",
        json!(["pen"]),
    )
    .await;
    assert_eq!(
        rows["columns"],
        json!(["id", "name", "price", "photo", "missing"]),
        "{rows}"
    );
    assert_eq!(
        rows["rows"],
        json!([[2, "pen", 2.25, {"blob": "00ff10"}, null]])
    );

    // A batch whose third statement fails applies nothing.
    let (status, error) = post_json(
        node.url("/a/sql/batch"),
        &json!([
            {"sql": "INSERT INTO items (name) VALUES (?)", "params": ["a"]},
            {"sql": "UPDATE items SET price = 9 WHERE name = 'seed'", "params": []},
            {"sql": "INSERT INTO items (name) VALUES (?)", "params": ["pen"]},
        ]),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error["error"], "constraint-violation", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("statement 3"),
        "{error}"
    );
    assert_eq!(count(&node, "a", "items").await, 2);
    let (_, rows) = query(
        &node,
        "a",
        "SELECT price FROM items WHERE name = 'seed'",
        json!([]),
    )
    .await;
    assert_eq!(rows["rows"], json!([[1.5]]));
    // A good batch applies whole.
    let (status, done) = post_json(
        node.url("/a/sql/batch"),
        &json!([
            {"sql": "INSERT INTO items (name) VALUES (?)", "params": ["b"]},
            {"sql": "INSERT INTO items (name) VALUES (?)", "params": ["c"]},
        ]),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(count(&node, "a", "items").await, 4);

    // Guests are fenced into their own tables.
    for sql in [
        "SELECT * FROM _tessera_kv",
        "ATTACH DATABASE '/tmp/other.db' AS other",
        "PRAGMA journal_mode = DELETE",
    ] {
        let (status, error) = query(&node, "a", sql, json!([])).await;
        assert_eq!(status, 400, "{sql}");
        assert_eq!(error["error"], "not-permitted", "{sql}: {error}");
    }

    // A redeploy (new revision) does not re-run migrations; a new one runs once.
    app.write_manifest(&sql_app(
        "6s",
        &["0001_items.sql", "0002_seed.sql", "0003_tags.sql"],
    ));
    write(
        app.path(),
        "migrations/0003_tags.sql",
        "CREATE TABLE tags (item INTEGER NOT NULL REFERENCES items (id), tag TEXT NOT NULL);\nINSERT INTO tags VALUES (1, 'first');\n",
    );
    let out = ok(deploy(&node, app.path()));
    assert!(out.contains("a r2"), "{out}");
    assert_eq!(count(&node, "a", "items").await, 4);
    assert_eq!(count(&node, "a", "tags").await, 1);

    // A migration whose content changed after it ran is refused, and nothing changes.
    write(
        app.path(),
        "migrations/0002_seed.sql",
        "INSERT INTO items (name) VALUES ('other seed');\n",
    );
    app.write_manifest(&sql_app(
        "7s",
        &["0001_items.sql", "0002_seed.sql", "0003_tags.sql"],
    ));
    let refused = deploy(&node, app.path());
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("0002_seed.sql"), "{stderr}");
    let revisions = ok(node.cli(TOKEN, &["revisions", "a"]));
    assert!(!revisions.contains("r3"), "{revisions}");

    // Rollback keeps the data.
    ok(node.cli(TOKEN, &["rollback", "a"]));
    assert_eq!(count(&node, "a", "items").await, 4);

    // Removing the app keeps its data; a redeploy finds it again.
    write(
        app.path(),
        "migrations/0002_seed.sql",
        "INSERT INTO items (name, price) VALUES ('seed', 1.5);\n",
    );
    ok(node.cli(TOKEN, &["rm", "ledger"]));
    ok(deploy(&node, app.path()));
    assert_eq!(count(&node, "a", "items").await, 4);
    // `--purge` deletes it: the next deploy starts from the migrations alone.
    let out = ok(node.cli(TOKEN, &["rm", "ledger", "--purge"]));
    assert!(out.contains("deleted its data"), "{out}");
    assert!(!data.path().join("services/ledger").exists());
    ok(deploy(&node, app.path()));
    assert_eq!(count(&node, "a", "items").await, 1);
}

#[tokio::test]
async fn config_per_environment_and_secrets_readable_only_by_their_service() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = two_services(
        r#"
[services.a.config]
greeting = "hello"
limit = 5

[environments.production.a]
greeting = "welcome"
"#,
    );
    ok(deploy(&node, app.path()));
    assert_eq!(
        text(node.url("/a/config/greeting")).await,
        (200, "hello".into())
    );
    assert_eq!(text(node.url("/a/config/limit")).await, (200, "5".into()));
    assert_eq!(text(node.url("/b/config/greeting")).await.0, 404);
    ok(node.cli(
        TOKEN,
        &[
            "deploy",
            app.path().to_str().unwrap(),
            "--env",
            "production",
        ],
    ));
    assert_eq!(
        text(node.url("/a/config/greeting")).await,
        (200, "welcome".into())
    );
    let unknown = node.cli(
        TOKEN,
        &["deploy", app.path().to_str().unwrap(), "--env", "staging"],
    );
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("`staging` is not declared"));

    // A secret set from stdin reaches the running service at once, and only it.
    const SECRET: &str = "sk-live-4f9a0c2e7d";
    let mut set = tessera()
        .env("TESSERA_SERVER", node.admin_url(""))
        .env("TESSERA_TOKEN", TOKEN)
        .args(["secret", "set", "a", "API_KEY"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = set.stdin.take().unwrap();
        writeln!(stdin, "{SECRET}").unwrap();
    }
    let out = set.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text(node.url("/a/config/API_KEY")).await,
        (200, SECRET.into())
    );
    assert_eq!(text(node.url("/b/config/API_KEY")).await.0, 404);
    let (_, all) = text(node.url("/a/config")).await;
    let all: Value = serde_json::from_str(&all).unwrap();
    assert_eq!(all["API_KEY"], SECRET);
    assert_eq!(all["greeting"], "welcome");

    // Listed by name only; never in listings or logs.
    let names = ok(node.cli(TOKEN, &["secret", "ls", "a"]));
    assert!(
        names.contains("API_KEY") && !names.contains(SECRET),
        "{names}"
    );
    let ls = ok(node.cli(TOKEN, &["ls"]));
    assert!(!ls.contains(SECRET), "{ls}");
    let apps = client()
        .get(node.admin_url("/v1/apps"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!apps.contains(SECRET), "{apps}");
    // A redeploy keeps the secret.
    ok(node.cli(
        TOKEN,
        &[
            "deploy",
            app.path().to_str().unwrap(),
            "--env",
            "production",
        ],
    ));
    assert_eq!(
        text(node.url("/a/config/API_KEY")).await,
        (200, SECRET.into())
    );
    ok(node.cli(TOKEN, &["secret", "rm", "a", "API_KEY"]));
    assert_eq!(text(node.url("/a/config/API_KEY")).await.0, 404);
    let missing = node.cli(TOKEN, &["secret", "rm", "a", "API_KEY"]);
    assert!(!missing.status.success());
    assert!(
        !node.stderr.text().contains(SECRET),
        "the secret reached the log"
    );
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let app = App::new(&sql_app("5s", &["0001_items.sql"]));
    write(
        app.path(),
        "migrations/0001_items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n",
    );
    let mut node = Node::serve(data.path(), TOKEN);
    ok(deploy(&node, app.path()));
    let http = client();
    for i in 0..40 {
        let r = put(
            node.url(&format!("/a/kv/default/key-{i}")),
            format!("value-{i}"),
        )
        .await;
        assert_eq!(r.status(), 204);
        let (status, done) = post_json(
            node.url("/a/sql/execute"),
            &json!({"sql": "INSERT INTO items (name) VALUES (?)", "params": [format!("item-{i}")]}),
        )
        .await;
        assert_eq!(status, 200, "{done}");
        let r = http
            .post(node.url("/a/kv/default/counter/incr"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // SIGKILL: no shutdown, no checkpoint, no flush.
    node.child.kill().unwrap();
    node.wait(Duration::from_secs(10));

    let node = Node::serve(data.path(), TOKEN);
    for i in 0..40 {
        assert_eq!(
            text(node.url(&format!("/a/kv/default/key-{i}"))).await,
            (200, format!("value-{i}"))
        );
    }
    assert_eq!(
        text(node.url("/a/kv/default/counter")).await,
        (200, "40".into())
    );
    assert_eq!(count(&node, "a", "items").await, 40);
}

/// Waits until the node has logged `count` idle unloads of `service`.
fn wait_for_unloads(node: &Node, service: &str, count: usize) {
    let field = format!("service={service} ");
    let started = std::time::Instant::now();
    while node
        .stderr
        .text()
        .lines()
        .filter(|l| {
            l.contains("service unloaded") && l.contains(&field) && l.contains("reason=idle")
        })
        .count()
        < count
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{service} was not unloaded: {}",
            node.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn secrets_stay_across_idle_unloads_and_a_change_reaches_the_next_load() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::serve(data.path(), TOKEN);
    let app = two_services("idle = \"1s\"");
    ok(deploy(&node, app.path()));
    let set = |value: &'static str| {
        client()
            .put(node.admin_url("/v1/apps/store/services/a/secrets/API_KEY"))
            .bearer_auth(TOKEN)
            .json(&json!({ "value": value }))
            .send()
    };
    assert!(set("first").await.unwrap().status().is_success());
    assert_eq!(
        text(node.url("/a/config/API_KEY")).await,
        (200, "first".into())
    );
    // Unloaded for idleness and loaded again: the same secret.
    wait_for_unloads(&node, "a", 1);
    assert_eq!(
        text(node.url("/a/config/API_KEY")).await,
        (200, "first".into())
    );
    // Changed while loaded, then again while unloaded: each next request sees it.
    assert!(set("second").await.unwrap().status().is_success());
    assert_eq!(
        text(node.url("/a/config/API_KEY")).await,
        (200, "second".into())
    );
    wait_for_unloads(&node, "a", 2);
    assert!(set("third").await.unwrap().status().is_success());
    assert_eq!(
        text(node.url("/a/config/API_KEY")).await,
        (200, "third".into())
    );
}
