//! Tests of the embedded backend against real SQLite files in temporary directories: the
//! conformance suite every data backend runs, then what is particular to files.

mod backend;

use crate::EmbeddedData;
use tessera_data::conformance;

/// A backend in a fresh directory; the directory lives as long as the returned guard.
fn backend() -> (tempfile::TempDir, EmbeddedData) {
    let dir = tempfile::tempdir().unwrap();
    let data = EmbeddedData::new(dir.path().join("data"));
    (dir, data)
}

#[test]
fn data_conformance() {
    conformance::run(|test| {
        let (_dir, data) = backend();
        test(&data);
    });
}
