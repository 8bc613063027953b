//! Services in five languages. Every template is scaffolded with `tessera new`, built
//! with `tessera build` and asked over HTTP; the polyglot shop runs end to end. The
//! toolchains come from `cargo xtask toolchains` (run by `cargo xtask test`, which puts
//! them on PATH and points `TESSERA_BUILD_CACHE` at a cache of built guests).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{Node, client, eventually, get, tessera, workspace};

/// Each template and the word its hello answer names its language with.
const LANGUAGES: &[(&str, &str)] = &[
    ("rust", "Rust"),
    ("rust-p3", "WASI 0.3"),
    ("python", "Python"),
    ("js", "JavaScript"),
    ("c", "C"),
    ("go", "Go"),
];

fn run(args: &[&str], dir: &Path) -> Output {
    let output = tessera()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run tessera");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "tessera panicked:\n{stderr}");
    output
}

fn succeeds(args: &[&str], dir: &Path) -> String {
    let output = run(args, dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "tessera {args:?} failed:\n{text}");
    text
}

#[test]
fn every_template_builds_and_answers_with_its_own_data() {
    let root = tempfile::tempdir().unwrap();
    for (language, _) in LANGUAGES {
        let said = succeeds(
            &["new", language, &format!("{language}-hello")],
            root.path(),
        );
        assert!(said.contains(&format!("GET /{language}-hello")), "{said}");
    }
    let built = succeeds(&["build"], root.path());
    for (language, _) in LANGUAGES {
        assert!(built.contains(&format!("{language}-hello")), "{built}");
    }
    // Nothing changed: nothing is built again.
    let again = succeeds(&["build"], root.path());
    assert_eq!(
        again.matches(": up to date").count(),
        LANGUAGES.len(),
        "{again}"
    );

    let node = Node::up(root.path(), &[]);
    for (language, word) in LANGUAGES {
        let path = format!("/{language}-hello");
        for visit in 1..=2 {
            let (status, body) = get(node.addr, &path);
            assert_eq!(status, 200, "{path}: {body}\n{}", node.stderr.text());
            assert!(body.contains(word), "{path}: {body}");
            assert!(body.contains(&format!("visit {visit}")), "{path}: {body}");
        }
    }
}

#[test]
fn new_refuses_what_it_cannot_make_and_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let output = run(&["new", "cobol", "ledger"], root.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for (language, _) in LANGUAGES {
        assert!(stderr.contains(language), "{stderr}");
    }
    let output = run(&["new", "rust", "Not_A_Label"], root.path());
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Not_A_Label"));
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);

    succeeds(&["new", "c", "stats"], root.path());
    let output = run(&["new", "go", "stats"], root.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already has a service `stats`"), "{stderr}");
}

#[test]
fn a_failing_build_names_the_service_and_shows_the_tool_output() {
    let root = tempfile::tempdir().unwrap();
    succeeds(&["new", "c", "broken"], root.path());
    let source = root.path().join("broken/broken.c");
    let source = if source.exists() {
        source
    } else {
        root.path().join("broken/main.c")
    };
    std::fs::write(&source, "int this is not C;\n").unwrap();
    let output = run(&["build", "--no-cache"], root.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("service `broken` failed to build"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error"),
        "the compiler's own message: {stderr}"
    );
}

/// Copies the example's sources (not what building or serving it left behind).
fn copy_sources(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if [".tessera", "node_modules", "__pycache__", "target"].contains(&name.as_str())
            || name.ends_with(".wasm")
        {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_sources(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

async fn call(node: &Node, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = client().request(method.parse().unwrap(), node.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"))
    };
    (status, json)
}

/// The shop: Python catalog, JavaScript cart, Go orders, C stats, each with its own data,
/// calling each other in-process and meeting through an event topic.
#[tokio::test]
async fn the_polyglot_shop_takes_an_order_end_to_end() {
    let root = tempfile::tempdir().unwrap();
    let app = root.path().join("shop");
    copy_sources(&workspace().join("examples/shop"), &app);
    succeeds(&["build"], &app);
    let node = Node::up(&app, &[]);

    // Python + SQL: the catalog, seeded by its migration.
    let (status, catalog) = call(&node, "GET", "/catalog", None).await;
    assert_eq!(status, 200, "{catalog}");
    let ids: Vec<&str> = catalog["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mug", "pot", "tea"]);
    let (status, error) = call(&node, "GET", "/catalog/kettle", None).await;
    assert_eq!(status, 404);
    assert!(
        error["error"].as_str().unwrap().contains("kettle"),
        "{error}"
    );

    // JavaScript + KV, asking the catalog through catalog.internal.
    let add = |product: &str, qty: i64| json!({"product": product, "qty": qty});
    let (status, cart) = call(&node, "POST", "/cart/c1/items", Some(add("tea", 2))).await;
    assert_eq!(
        (status, cart["total_cents"].as_i64()),
        (200, Some(900)),
        "{cart}"
    );
    call(&node, "POST", "/cart/c1/items", Some(add("mug", 1))).await;
    let (_, cart) = call(&node, "POST", "/cart/c1/items", Some(add("tea", 1))).await;
    assert_eq!(cart["total_cents"], 2550, "{cart}");
    assert_eq!(
        cart["items"].as_array().unwrap().len(),
        2,
        "lines merge: {cart}"
    );
    let (status, error) = call(&node, "POST", "/cart/c1/items", Some(add("kettle", 1))).await;
    assert_eq!(status, 404, "{error}");
    assert!(error["error"].is_string(), "{error}");
    let (status, _) = call(&node, "POST", "/cart/c1/items", Some(add("tea", 0))).await;
    assert_eq!(status, 400);

    // Go + SQL: the order reads and empties the cart, then publishes `orders`.
    let (status, order) = call(&node, "POST", "/orders", Some(json!({"cart": "c1"}))).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["total_cents"], 2550, "{order}");
    let id = order["order"].as_i64().unwrap();
    let (_, cart) = call(&node, "GET", "/cart/c1", None).await;
    assert_eq!(cart["items"], json!([]), "{cart}");
    let (status, error) = call(&node, "POST", "/orders", Some(json!({"cart": "c1"}))).await;
    assert_eq!(status, 400, "an empty cart: {error}");
    let (status, stored) = call(&node, "GET", &format!("/orders/{id}"), None).await;
    assert_eq!((status, &stored["cart"]), (200, &json!("c1")), "{stored}");
    assert_eq!(stored["items"].as_array().unwrap().len(), 2, "{stored}");

    // C + KV: the stats follow the topic.
    call(&node, "POST", "/cart/c2/items", Some(add("pot", 1))).await;
    let (status, _) = call(&node, "POST", "/orders", Some(json!({"cart": "c2"}))).await;
    assert_eq!(status, 201);
    eventually(
        Duration::from_secs(20),
        "both orders in the stats",
        || async {
            let (status, stats) = call(&node, "GET", "/stats", None).await;
            status == 200 && stats == json!({"orders": 2, "revenue_cents": 2550 + 3500})
        },
    )
    .await;

    // Each service kept its own database file.
    let data = app.join(".tessera/services/shop");
    for service in ["catalog", "cart", "orders", "stats"] {
        assert!(data.join(format!("{service}.db")).is_file(), "{service}.db");
    }
}
