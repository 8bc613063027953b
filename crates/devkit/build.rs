//! Embeds the service templates: for each language under `templates/` (except the shared
//! `templates/wit`), the complete file set `tessera new` writes, already composed: the
//! language's own files, the WIT the service builds against (the language's `wit/` or the
//! shared one, plus Tessera's packages from `wit/`), and for Rust the `tessera-guest` crate.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let templates = root.join("templates");
    for watched in [
        "templates",
        "wit",
        "crates/guest/src",
        "crates/guest/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let mut languages: Vec<String> = fs::read_dir(&templates)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_dir())
        .map(|entry| entry.file_name().into_string().unwrap())
        .filter(|name| name != "wit")
        .collect();
    languages.sort();

    let mut out = String::from("pub(crate) static TEMPLATES: &[Template] = &[\n");
    for language in &languages {
        let dir = templates.join(language);
        let spec = dir.join("template.toml");
        if !spec.is_file() {
            println!("cargo:warning=templates/{language} has no template.toml; left out");
            continue;
        }
        let mut files: Vec<(String, PathBuf)> = walk(&dir)
            .into_iter()
            .filter(|(rel, _)| rel != "template.toml")
            .collect();
        if !files.iter().any(|(rel, _)| rel.starts_with("wit/")) {
            files.extend(prefixed("wit/", walk(&templates.join("wit"))));
        }
        files.extend(prefixed("wit/deps/", walk(&root.join("wit/deps"))));
        files.push((
            "wit/deps/platform/world.wit".into(),
            root.join("wit/world.wit"),
        ));
        if language.starts_with("rust") {
            files.extend(prefixed(
                "tessera-guest/src/",
                walk(&root.join("crates/guest/src")),
            ));
        }
        files.sort();
        writeln!(
            out,
            "    Template {{ language: {language:?}, spec: include_str!({:?}), files: &[",
            spec.display()
        )
        .unwrap();
        for (rel, path) in files {
            writeln!(
                out,
                "        ({rel:?}, include_bytes!({:?})),",
                path.display()
            )
            .unwrap();
        }
        out.push_str("    ] },\n");
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("templates.rs");
    fs::write(dest, out).unwrap();
}

fn prefixed(prefix: &str, files: Vec<(String, PathBuf)>) -> Vec<(String, PathBuf)> {
    files
        .into_iter()
        .map(|(rel, path)| (format!("{prefix}{rel}"), path))
        .collect()
}

/// Every file under `dir` as (relative path with `/`, absolute path), skipping build
/// outputs and tool caches that a template directory may hold while someone works in it.
fn walk(dir: &Path) -> Vec<(String, PathBuf)> {
    const SKIP: &[&str] = &["target", "node_modules", "__pycache__", ".git"];
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in fs::read_dir(&current).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name().into_string().unwrap();
            if entry.file_type().unwrap().is_dir() {
                if !SKIP.contains(&name.as_str()) {
                    stack.push(path);
                }
            } else if !name.ends_with(".wasm") && name != "Cargo.lock" {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .replace('\\', "/");
                found.push((rel, path));
            }
        }
    }
    found
}
