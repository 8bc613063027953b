//! Services in five languages. Every template is scaffolded with `tessera new`, built
//! with `tessera build` and asked over HTTP; the polyglot shop runs end to end. The
//! toolchains come from `cargo xtask toolchains` (run by `cargo xtask test`, which puts
//! them on PATH and points `TESSERA_BUILD_CACHE` at a cache of built guests).

use std::path::Path;
use std::process::Output;

use crate::util::{Node, get, tessera};

/// Each template and the word its hello answer names its language with.
const LANGUAGES: &[(&str, &str)] = &[
    ("rust", "Rust"),
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
