//! Tests of the embedded control store beyond the conformance suite every backend runs:
//! its files and schema, what survives reopening it, and migrations of older databases.

use tempfile::TempDir;

use super::schema::SCHEMA_VERSION;
use super::{ARTIFACTS_DIR, ControlStore, DATABASE_FILE};
use tessera_store::conformance::{
    self, artifact, deploy, full_config, service, svc, three_revisions,
};
use tessera_store::{DeployOptions, Scaling, ServiceDeploy, StoreError};

fn store() -> (TempDir, ControlStore) {
    let dir = TempDir::new().expect("create temp dir");
    let store = ControlStore::open(dir.path()).expect("open store");
    (dir, store)
}

#[test]
fn control_state_conformance() {
    conformance::run(|test| {
        let (_dir, store) = store();
        test(&store);
    });
}

// The store is shared between request handlers and its errors travel through `anyhow`;
// this fails to compile if either stops being possible.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    shareable::<ControlStore>();
    error::<StoreError>();
};

// --- Files and schema ---

#[test]
fn open_creates_the_data_directory_database_and_artifact_directory() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("nested").join("data");
    let store = ControlStore::open(&dir).expect("open");
    assert!(dir.join(DATABASE_FILE).is_file());
    assert!(dir.join(ARTIFACTS_DIR).is_dir());

    let conn = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");

    // Per-connection settings, so they are read from the store's own connection:
    // synchronous = FULL (2), so acknowledged changes survive a power cut, and foreign
    // keys enforced.
    let conn = store.conn();
    let synchronous: i64 = conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .unwrap();
    assert_eq!(synchronous, 2);
    let foreign_keys: bool = conn
        .pragma_query_value(None, "foreign_keys", |row| row.get(0))
        .unwrap();
    assert!(foreign_keys);
}

#[test]
fn database_written_by_a_newer_tessera_is_refused() {
    let tmp = TempDir::new().unwrap();
    drop(ControlStore::open(tmp.path()).unwrap());
    let conn = rusqlite::Connection::open(tmp.path().join(DATABASE_FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);

    let err = ControlStore::open(tmp.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedSchema { found: 99, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[test]
fn put_artifact_returns_the_sha256_and_stores_the_bytes() {
    let (_dir, store) = store();
    let sha = store.put_artifact(b"abc").unwrap();
    assert_eq!(
        sha,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(store.has_artifact(&sha));
    let path = store.artifact_path(&sha).unwrap();
    assert_eq!(
        path,
        store.dir().join(ARTIFACTS_DIR).join(format!("{sha}.wasm"))
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"abc");
}

#[test]
fn putting_the_same_bytes_again_is_idempotent_and_leaves_no_temporary_files() {
    let (_dir, store) = store();
    let first = store.put_artifact(b"component").unwrap();
    let second = store.put_artifact(b"component").unwrap();
    assert_eq!(first, second);
    let other = store.put_artifact(b"another component").unwrap();
    assert_ne!(first, other);

    let mut entries: Vec<String> = std::fs::read_dir(store.dir().join(ARTIFACTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    let mut expected = vec![format!("{first}.wasm"), format!("{other}.wasm")];
    expected.sort();
    assert_eq!(entries, expected);
}

// --- Reopening and older databases ---

#[test]
fn state_survives_reopening_the_store() {
    let tmp = TempDir::new().unwrap();
    let (sha, before) = {
        let store = ControlStore::open(tmp.path()).unwrap();
        three_revisions(&store);
        let sha = artifact(&store, "api");
        store
            .deploy(
                "shop",
                &[svc("api", &sha, &["/api"])],
                &DeployOptions {
                    only: vec!["api".into()],
                    ..DeployOptions::default()
                },
            )
            .unwrap();
        store
            .set_traffic("shop", "web", &[(2, 30), (3, 70)])
            .unwrap();
        deploy(&store, "gone", &[svc("web", &sha, &["/gone"])]);
        store.remove_app("gone").unwrap();
        (sha, store.apps().unwrap())
    };
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].services.len(), 2);

    let store = ControlStore::open(tmp.path()).unwrap();
    assert_eq!(store.apps().unwrap(), before);
    assert_eq!(
        std::fs::read(store.artifact_path(&sha).unwrap()).unwrap(),
        b"\0asm component api"
    );
    // Counters survive too: the next revision of `web` is 4, and the removed app's
    // service continues at 2.
    let v4 = artifact(&store, "v4");
    let out = store
        .deploy(
            "shop",
            &[svc("web", &v4, &["/"])],
            &DeployOptions {
                only: vec!["web".into()],
                ..DeployOptions::default()
            },
        )
        .unwrap();
    assert_eq!(out.created, [("web".to_owned(), 4)]);
    let out = deploy(&store, "gone", &[svc("web", &sha, &["/gone"])]);
    assert_eq!(out.created, [("web".to_owned(), 2)]);
}

#[test]
fn unreadable_stored_config_names_the_revision() {
    let tmp = TempDir::new().unwrap();
    let store = ControlStore::open(tmp.path()).unwrap();
    let sha = artifact(&store, "x");
    deploy(&store, "shop", &[svc("web", &sha, &["/"])]);
    let conn = rusqlite::Connection::open(tmp.path().join(DATABASE_FILE)).unwrap();
    conn.execute("UPDATE revisions SET config = 'not json'", [])
        .unwrap();
    let err = store.apps().unwrap_err();
    assert!(
        matches!(&err, StoreError::CorruptConfig { app, service, revision: 1, .. }
            if app == "shop" && service == "web"),
        "{err:?}"
    );
}

#[test]
fn changes_and_generations_survive_reopening_and_old_history_reports_a_gap() {
    let tmp = TempDir::new().unwrap();
    let store = ControlStore::open(tmp.path()).unwrap();
    let a = artifact(&store, "a");
    deploy(&store, "shop", &[svc("api", &a, &["/api"])]);
    let generation = store.app("shop").unwrap().unwrap().generation;
    drop(store);
    let store = ControlStore::open(tmp.path()).unwrap();
    assert_eq!(*store.watch().borrow(), generation);
    assert_eq!(store.app("shop").unwrap().unwrap().generation, generation);

    // Forget the first change as a full history would: asking from before it is a gap.
    store.set_secret("shop", "api", "A", "1").unwrap();
    store
        .conn()
        .execute("DELETE FROM changes WHERE seq = ?1", [generation as i64])
        .unwrap();
    assert!(store.changes(0).unwrap().gap);
    assert!(!store.changes(generation).unwrap().gap);
}

#[test]
fn apps_stored_before_generations_existed_get_distinct_ones() {
    let tmp = TempDir::new().unwrap();
    let store = ControlStore::open(tmp.path()).unwrap();
    let a = artifact(&store, "a");
    deploy(&store, "shop", &[svc("api", &a, &["/api"])]);
    deploy(&store, "blog", &[svc("web", &a, &["/blog"])]);
    drop(store);
    // Back to the schema before changes were recorded.
    let conn = rusqlite::Connection::open(tmp.path().join(DATABASE_FILE)).unwrap();
    conn.execute_batch(
        "DROP TABLE changes; ALTER TABLE apps DROP COLUMN generation; PRAGMA user_version = 2;",
    )
    .unwrap();
    drop(conn);

    let store = ControlStore::open(tmp.path()).unwrap();
    let generations: Vec<u64> = store.apps().unwrap().iter().map(|a| a.generation).collect();
    assert_eq!(generations, vec![1, 2], "one change per app, in name order");
    assert_eq!(*store.watch().borrow(), 2);
    let b = artifact(&store, "b");
    deploy(&store, "shop", &[svc("api", &b, &["/api"])]);
    assert_eq!(store.app("shop").unwrap().unwrap().generation, 3);
}
#[test]
fn secrets_survive_reopening() {
    let tmp = TempDir::new().unwrap();
    let store = ControlStore::open(tmp.path()).unwrap();
    store
        .set_secret("shop", "cart", "API_KEY", "s3cret")
        .unwrap();
    store.set_secret("shop", "cart", "TOKEN", "t1").unwrap();
    assert!(store.delete_secret("shop", "cart", "TOKEN").unwrap());
    drop(store);
    let store = ControlStore::open(tmp.path()).unwrap();
    assert_eq!(
        store.secrets("shop", "cart").unwrap(),
        vec![("API_KEY".into(), "s3cret".into())]
    );
}

#[test]
fn every_setting_of_a_revision_survives_reopening() {
    let tmp = TempDir::new().unwrap();
    let store = ControlStore::open(tmp.path()).unwrap();
    let sha = artifact(&store, "full");
    let cart = ServiceDeploy {
        name: "cart".into(),
        sha256: sha,
        config: full_config(),
    };
    deploy(&store, "shop", std::slice::from_ref(&cart));
    drop(store);
    let store = ControlStore::open(tmp.path()).unwrap();
    assert_eq!(
        service(&store, "shop", "cart").revisions[0].config,
        cart.config
    );
}

#[test]
fn revisions_stored_before_scaling_settings_existed_get_the_defaults() {
    let (dir, store) = store();
    let sha = artifact(&store, "scaling");
    deploy(&store, "shop", &[svc("api", &sha, &["/api"])]);
    // A revision written before these settings existed has none of the keys.
    let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    let old = r#"{"routes":["/api"],"memory":1048576,"timeout_ms":1000,"outbound":[],"env":[]}"#;
    conn.execute(
        "UPDATE revisions SET config = ?1 WHERE service = 'api'",
        [old],
    )
    .unwrap();
    let api = service(&store, "shop", "api");
    assert_eq!(api.revisions[0].config.scaling, Scaling::default());
}

#[test]
fn rows_keep_the_stored_form_every_release_reads() {
    let (dir, store) = store();
    let sha = artifact(&store, "golden");
    let cart = ServiceDeploy {
        name: "cart".into(),
        sha256: sha,
        config: full_config(),
    };
    deploy(&store, "shop", std::slice::from_ref(&cart));
    let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    let written: String = conn
        .query_row("SELECT config FROM revisions", [], |row| row.get(0))
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert!(json.get("subscriptions").is_some(), "{written}");
    assert!(json.get("subscribe").is_none(), "{written}");

    // A row as the release before the shared form wrote it.
    let old = r#"{"routes":["/cart"],"memory":67108864,"timeout_ms":30000,
        "outbound":["https://example.com:443"],"env":[],"callbacks":["https://hooks.example.com:443"],
        "config":[],"buckets":["sessions"],"migrations":["0001_init.sql"],
        "cron":[{"schedule":"@every 2s","path":"/tick","run_missed":true}],
        "subscriptions":[{"topic":"orders.created","path":"/on-order","queue":null,
        "max_attempts":3,"backoff_ms":1000,"max_backoff_ms":60000,"concurrency":4,"batch":8}],
        "concurrency":100,"queue":100,"queue_timeout_ms":10000,"idle_ms":300000,
        "async_rate":100,"async_stored":67108864}"#;
    conn.execute("UPDATE revisions SET config = ?1", [old])
        .unwrap();
    let config = service(&store, "shop", "cart").revisions[0].config.clone();
    assert_eq!(config.subscriptions[0].topic, "orders.created");
    assert_eq!(config.cron[0].path, "/tick");
    assert_eq!(config.callbacks.len(), 1);
    assert_eq!(config.migrations, ["0001_init.sql"]);
}
