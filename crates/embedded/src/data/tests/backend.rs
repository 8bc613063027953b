//! Opening, caching, reopening and purging services' data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend;
use crate::EmbeddedData;
use tessera_data::{DataBackend, DataError, KvError, SqlError, SqlValue};

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

#[test]
fn each_service_gets_one_database_file_under_its_app() {
    let (dir, data) = backend();
    data.open_service("shop", "web").unwrap();
    data.open_service("shop", "api").unwrap();
    data.open_service("blog", "web").unwrap();
    let root = dir.path().join("data");
    for (app, service) in [("shop", "web"), ("shop", "api"), ("blog", "web")] {
        let path = root.join(app).join(format!("{service}.db"));
        assert!(path.is_file(), "{}", path.display());
        assert_eq!(data.database_path(app, service), path);
    }
}

#[test]
fn opening_a_service_again_returns_the_same_handles() {
    let (_dir, data) = backend();
    let first = data.open_service("shop", "web").unwrap();
    let second = data.open_service("shop", "web").unwrap();
    assert!(Arc::ptr_eq(&first.kv, &second.kv));
    assert!(Arc::ptr_eq(&first.sql, &second.sql));
    let other = data.open_service("shop", "api").unwrap();
    assert!(!Arc::ptr_eq(&first.kv, &other.kv));
}

/// How many of this process's file descriptors are open on files under `dir`.
#[cfg(target_os = "linux")]
fn open_files_under(prefix: &std::path::Path) -> usize {
    let prefix = prefix.to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(&prefix))
        .count()
}

#[test]
#[cfg(target_os = "linux")]
fn only_the_most_recently_used_unheld_services_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let data = EmbeddedData::new(root.clone()).keep_open(1);
    let files = |service: &str| open_files_under(&root.join("shop").join(format!("{service}.db")));
    let web = data.open_service("shop", "web").unwrap();
    web.kv.set("default", "greeting", b"hello").unwrap();
    let again = data.open_service("shop", "web").unwrap();
    drop((web, again));
    assert!(files("web") > 0, "the most recent service stays open");

    // Another service is now the most recent: web's files close, api's stay.
    drop(data.open_service("shop", "api").unwrap());
    assert_eq!(files("web"), 0, "web was pushed out and nothing holds it");
    assert!(files("api") > 0);

    // A held service stays open however many others come after it.
    let held = data.open_service("shop", "held").unwrap();
    drop(data.open_service("shop", "other").unwrap());
    assert!(files("held") > 0);
    drop(held);

    // Opening web again finds its data.
    let web = data.open_service("shop", "web").unwrap();
    assert_eq!(
        web.kv.get("default", "greeting").unwrap().unwrap(),
        b"hello"
    );
}

#[test]
fn data_survives_reopening_on_the_same_root() {
    let dir = tempfile::tempdir().unwrap();
    {
        let data = EmbeddedData::new(dir.path().to_owned());
        let service = data.open_service("shop", "web").unwrap();
        service.kv.set("default", "greeting", b"hello").unwrap();
        service.kv.increment("default", "visits", 3).unwrap();
        service
            .sql
            .execute("CREATE TABLE notes (body TEXT)", &[], soon())
            .unwrap();
        service
            .sql
            .execute(
                "INSERT INTO notes VALUES (?)",
                &[SqlValue::Text("kept".into())],
                soon(),
            )
            .unwrap();
    }
    let data = EmbeddedData::new(dir.path().to_owned());
    let service = data.open_service("shop", "web").unwrap();
    assert_eq!(
        service.kv.get("default", "greeting").unwrap().unwrap(),
        b"hello"
    );
    assert_eq!(service.kv.increment("default", "visits", 1).unwrap(), 4);
    let rows = service
        .sql
        .query("SELECT body FROM notes", &[], soon())
        .unwrap();
    assert_eq!(rows.rows, [[SqlValue::Text("kept".into())]]);
}

#[test]
fn purge_app_removes_its_files_and_closes_its_handles() {
    let (dir, data) = backend();
    let web = data.open_service("shop", "web").unwrap();
    web.kv.set("default", "k", b"v").unwrap();
    let other_app = data.open_service("blog", "web").unwrap();
    other_app.kv.set("default", "k", b"blog").unwrap();
    let app_dir = dir.path().join("data").join("shop");
    assert!(app_dir.is_dir());

    data.purge_app("shop").unwrap();
    assert!(!app_dir.exists());

    // Handles opened before the purge are closed, not writing into deleted files.
    let err = web.kv.get("default", "k").unwrap_err();
    assert!(matches!(err, KvError::Io(_)), "{err:?}");
    assert!(err.to_string().contains("was deleted"), "{err}");
    assert!(matches!(
        web.sql.query("SELECT 1", &[], soon()),
        Err(SqlError::Io(_))
    ));

    // Opening the service again starts empty.
    let fresh = data.open_service("shop", "web").unwrap();
    assert_eq!(fresh.kv.get("default", "k").unwrap(), None);
    // Other apps are untouched.
    assert_eq!(other_app.kv.get("default", "k").unwrap().unwrap(), b"blog");

    // Purging an app that has no data is fine.
    data.purge_app("never-deployed").unwrap();
}

#[test]
fn names_that_would_leave_the_root_are_refused() {
    let (dir, data) = backend();
    for (app, service) in [("..", "web"), ("shop", "../x"), ("", "web"), ("a/b", "web")] {
        let err = data.open_service(app, service).unwrap_err();
        assert!(matches!(err, DataError::Open { .. }), "{err:?}");
    }
    assert!(matches!(data.purge_app(".."), Err(DataError::Purge { .. })));
    assert!(!dir.path().join("x.db").exists());
}
