//! Tests of the embedded backend against real SQLite files in temporary directories.

mod backend;
mod kv;
mod sql;

use std::sync::Arc;

use crate::EmbeddedData;
use tessera_data::{DataBackend, KvStore, SqlDatabase};

/// A backend in a fresh directory; the directory lives as long as the returned guard.
fn backend() -> (tempfile::TempDir, EmbeddedData) {
    let dir = tempfile::tempdir().unwrap();
    let data = EmbeddedData::new(dir.path().join("data"));
    (dir, data)
}

/// The key-value store of service `web` of app `shop` in a fresh directory.
fn kv() -> (tempfile::TempDir, Arc<dyn KvStore>) {
    let (dir, data) = backend();
    let kv = data.open_service("shop", "web").unwrap().kv;
    (dir, kv)
}

/// The SQL database of service `web` of app `shop` in a fresh directory.
fn sql() -> (tempfile::TempDir, Arc<dyn SqlDatabase>) {
    let (dir, data) = backend();
    let sql = data.open_service("shop", "web").unwrap().sql;
    (dir, sql)
}
