//! `tessera new`: a service from a language template, added to the app's manifest.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::DevkitError;

/// One language's template, embedded at build time (see `build.rs`).
pub struct Template {
    pub language: &'static str,
    /// The template's `template.toml`: component, build command, watch globs.
    spec: &'static str,
    /// Every file the service directory receives, relative paths with `{{name}}` tokens.
    files: &'static [(&'static str, &'static [u8])],
}

include!(concat!(env!("OUT_DIR"), "/templates.rs"));

/// The template's `template.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    component: String,
    build: String,
    watch: Vec<String>,
}

/// The languages there are templates for, sorted.
pub fn languages() -> Vec<&'static str> {
    TEMPLATES.iter().map(|t| t.language).collect()
}

/// The template for `language`.
pub fn template(language: &str) -> Result<&'static Template, DevkitError> {
    TEMPLATES
        .iter()
        .find(|t| t.language == language)
        .ok_or_else(|| DevkitError::UnknownTemplate {
            language: language.to_string(),
            available: languages().join(", "),
        })
}

impl Template {
    fn spec(&self) -> Spec {
        toml::from_str(self.spec).expect("templates/*/template.toml is checked by a unit test")
    }
}

/// What [`new_service`] made.
#[derive(Debug)]
pub struct NewService {
    /// The service's directory.
    pub dir: PathBuf,
    /// The manifest the service was added to.
    pub manifest: PathBuf,
    /// Whether the manifest was created because the directory had none.
    pub created_manifest: bool,
    /// The route the service answers.
    pub route: String,
    /// How many files were written.
    pub files: usize,
}

/// Scaffolds service `name` from the `language` template in `app_dir/name` and adds it
/// (component, route `/name`, build) to `app_dir/tessera.toml`, creating the manifest if
/// the directory has none. Nothing is left behind when it fails.
pub fn new_service(app_dir: &Path, language: &str, name: &str) -> Result<NewService, DevkitError> {
    let template = template(language)?;
    tessera_manifest::check_name(name).map_err(|reason| DevkitError::InvalidName {
        name: name.to_string(),
        reason,
    })?;
    let spec = template.spec();
    let manifest_path = app_dir.join("tessera.toml");
    let previous = match fs::read_to_string(&manifest_path) {
        Ok(text) => {
            let manifest = tessera_manifest::parse_allowing_no_services(&text, &manifest_path)?;
            if manifest.services.iter().any(|s| s.name == name) {
                return Err(DevkitError::ServiceExists {
                    service: name.to_string(),
                    manifest: manifest_path,
                });
            }
            Some(text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(DevkitError::io(format!(
                "cannot read {}",
                manifest_path.display()
            ))(e));
        }
    };
    let dir = app_dir.join(name);
    if fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(DevkitError::DirectoryExists { dir });
    }

    // A new app ignores what building and serving leave in it, unless it has its own
    // ignore file already.
    let ignore_path = app_dir.join(".gitignore");
    let new_ignore = previous.is_none() && !ignore_path.exists();
    let result = write_service(template, app_dir, &dir, name).and_then(|files| {
        let text = manifest_text(previous.as_deref(), app_dir, name, language, &spec);
        fs::write(&manifest_path, &text).map_err(DevkitError::io(format!(
            "cannot write {}",
            manifest_path.display()
        )))?;
        tessera_manifest::parse(&text, &manifest_path)?;
        if new_ignore {
            fs::write(&ignore_path, APP_GITIGNORE).map_err(DevkitError::io(format!(
                "cannot write {}",
                ignore_path.display()
            )))?;
        }
        Ok(files)
    });
    match result {
        Ok(files) => Ok(NewService {
            dir,
            manifest: manifest_path,
            created_manifest: previous.is_none(),
            route: format!("/{name}"),
            files,
        }),
        Err(error) => {
            let _ = fs::remove_dir_all(&dir);
            if new_ignore {
                let _ = fs::remove_file(&ignore_path);
            }
            let _ = match &previous {
                Some(text) => fs::write(&manifest_path, text),
                None => fs::remove_file(&manifest_path),
            };
            Err(error)
        }
    }
}

/// The `.gitignore` of an app `tessera new` creates: the build and serve state.
const APP_GITIGNORE: &str = "# Left by `tessera build` and `tessera up`.\n/.tessera/\n";

fn write_service(
    template: &Template,
    app_dir: &Path,
    dir: &Path,
    name: &str,
) -> Result<usize, DevkitError> {
    fs::create_dir_all(app_dir).map_err(DevkitError::io(format!(
        "cannot create {}",
        app_dir.display()
    )))?;
    for (rel, bytes) in template.files {
        let path = dir.join(substitute(rel, name));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(DevkitError::io(format!(
                "cannot create {}",
                parent.display()
            )))?;
        }
        let contents = match std::str::from_utf8(bytes) {
            Ok(text) => substitute(&adapt_rust_glue(rel, text), name).into_bytes(),
            Err(_) => bytes.to_vec(),
        };
        fs::write(&path, contents)
            .map_err(DevkitError::io(format!("cannot write {}", path.display())))?;
    }
    Ok(template.files.len())
}

/// The Rust template carries the `tessera-guest` crate beside the service, so its
/// bindings find the WIT one directory up rather than at the workspace root.
fn adapt_rust_glue(rel: &str, text: &str) -> String {
    if rel == "tessera-guest/src/lib.rs" {
        text.replace("path: \"../../wit\"", "path: \"../wit\"")
    } else {
        text.to_string()
    }
}

fn substitute(text: &str, name: &str) -> String {
    text.replace("{{name}}", name)
        .replace("{{ident}}", &name.replace('-', "_"))
}

/// The manifest with the new service appended (or a new manifest holding only it).
fn manifest_text(
    previous: Option<&str>,
    app_dir: &Path,
    name: &str,
    language: &str,
    spec: &Spec,
) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut text = match previous {
        Some(existing) => {
            let mut text = existing.to_string();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text
        }
        None => format!("[app]\nname = {}\n", quote(&app_name(app_dir))),
    };
    let component = format!("{name}/{}", substitute(&spec.component, name));
    let watch: Vec<String> = spec
        .watch
        .iter()
        .map(|g| quote(&substitute(g, name)))
        .collect();
    text.push_str(&format!(
        "\n# Made by `tessera new {language} {name}`; `tessera build` runs its build.\n\
         [services.{name}]\n\
         component = {}\n\
         routes = [{}]\n\
         \n\
         [services.{name}.build]\n\
         command = {}\n\
         workdir = {}\n\
         watch = [{}]\n",
        quote(&component),
        quote(&format!("/{name}")),
        quote(&substitute(&spec.build, name)),
        quote(name),
        watch.join(", "),
    ));
    text
}

/// An app name from the directory's name: lowercase letters, digits and hyphens.
fn app_name(app_dir: &Path) -> String {
    let base = app_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut name: String = base
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name = name.trim_matches('-').to_string();
    if tessera_manifest::check_name(&name).is_ok() {
        name
    } else {
        "app".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_has_a_valid_spec_and_the_service_world() {
        assert!(!TEMPLATES.is_empty());
        for template in TEMPLATES {
            let spec: Spec = toml::from_str(template.spec)
                .unwrap_or_else(|e| panic!("templates/{}/template.toml: {e}", template.language));
            assert!(
                !spec.watch.is_empty(),
                "{}: no watch globs",
                template.language
            );
            for glob in &spec.watch {
                tessera_manifest::check_glob(glob).unwrap();
            }
            let has = |path: &str| template.files.iter().any(|(rel, _)| *rel == path);
            assert!(has("wit/world.wit"), "{}", template.language);
            assert!(has("wit/deps/platform/world.wit"), "{}", template.language);
            assert!(has("wit/deps/sql/sql.wit"), "{}", template.language);
        }
    }

    #[test]
    fn new_service_writes_files_and_a_manifest_that_parses() {
        let app = tempfile::tempdir().unwrap();
        let language = languages()[0];
        let made = new_service(app.path(), language, "price-check").unwrap();
        assert!(made.created_manifest);
        assert_eq!(made.route, "/price-check");
        let manifest = tessera_manifest::load(&made.manifest).unwrap();
        let service = &manifest.services[0];
        assert_eq!(service.name, "price-check");
        let build = service.build.as_ref().unwrap();
        assert_eq!(build.workdir, app.path().join("price-check"));
        assert!(
            app.path()
                .join("price-check/wit/deps/platform/world.wit")
                .is_file()
        );

        // An app with no services yet takes its first one.
        let bare = tempfile::tempdir().unwrap();
        fs::write(bare.path().join("tessera.toml"), "[app]\nname = \"bare\"\n").unwrap();
        new_service(bare.path(), language, "first").unwrap();
        let manifest = tessera_manifest::load(&bare.path().join("tessera.toml")).unwrap();
        assert_eq!(manifest.app, "bare");
        assert_eq!(manifest.services.len(), 1);
        let ignored = fs::read_to_string(app.path().join(".gitignore")).unwrap();
        assert!(ignored.lines().any(|l| l == "/.tessera/"), "{ignored}");

        // A second service goes into the same manifest; a third of the same name is refused.
        new_service(app.path(), language, "cart").unwrap();
        let manifest = tessera_manifest::load(&made.manifest).unwrap();
        assert_eq!(manifest.services.len(), 2);
        let again = new_service(app.path(), language, "cart").unwrap_err();
        assert!(
            matches!(again, DevkitError::ServiceExists { .. }),
            "{again}"
        );
    }

    #[test]
    fn the_rust_template_ignores_its_target_directory_and_names_it_in_its_build() {
        let app = tempfile::tempdir().unwrap();
        new_service(app.path(), "rust", "api").unwrap();
        let ignored = fs::read_to_string(app.path().join("api/.gitignore")).unwrap();
        assert!(ignored.lines().any(|l| l == "/target/"), "{ignored}");
        assert!(ignored.lines().any(|l| l == "/api.wasm"), "{ignored}");
        // A CARGO_TARGET_DIR in the environment must not move what the build copies.
        let manifest = tessera_manifest::load(&app.path().join("tessera.toml")).unwrap();
        let build = manifest.services[0].build.as_ref().unwrap();
        assert!(
            build.command.contains("--target-dir target"),
            "{}",
            build.command
        );
    }

    #[test]
    fn bad_requests_leave_nothing_behind() {
        let app = tempfile::tempdir().unwrap();
        let error = new_service(app.path(), "cobol", "x").unwrap_err();
        assert!(error.to_string().contains("the templates are:"), "{error}");
        let error = new_service(app.path(), languages()[0], "Bad_Name").unwrap_err();
        assert!(matches!(error, DevkitError::InvalidName { .. }), "{error}");
        fs::create_dir_all(app.path().join("taken")).unwrap();
        fs::write(app.path().join("taken/file"), "x").unwrap();
        let error = new_service(app.path(), languages()[0], "taken").unwrap_err();
        assert!(
            matches!(error, DevkitError::DirectoryExists { .. }),
            "{error}"
        );
        assert!(!app.path().join("tessera.toml").exists());
    }

    #[test]
    fn app_names_come_from_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("My Shop_2");
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(app_name(&dir), "my-shop-2");
    }
}

/// The example app vendors each language's glue and WIT as `tessera new` writes them; these
/// copies must not drift from the templates.
#[cfg(test)]
mod shop_copies {
    use super::*;

    /// (language, shop service, the template paths (prefixes) that are glue, not the
    /// service's own code).
    const VENDORED: &[(&str, &str, &[&str])] = &[
        ("python", "catalog", &["tessera.py", "wit/"]),
        ("js", "cart", &["tessera.js", "bundle.config.js", "wit/"]),
        ("go", "orders", &["tessera/", "wit/"]),
        (
            "c",
            "stats",
            &["tessera.c", "tessera.h", "bindings/", "wit/"],
        ),
    ];

    #[test]
    fn the_shop_services_carry_the_templates_glue_and_wit_unchanged() {
        let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop");
        for (language, service, prefixes) in VENDORED {
            let template = template(language).unwrap();
            let mut checked = 0;
            for (rel, bytes) in template.files {
                if !prefixes.iter().any(|p| rel.starts_with(p)) {
                    continue;
                }
                let path = shop.join(service).join(substitute(rel, service));
                let actual = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let expected = match std::str::from_utf8(bytes) {
                    Ok(text) => substitute(text, service).into_bytes(),
                    Err(_) => bytes.to_vec(),
                };
                assert!(
                    actual == expected,
                    "{} differs from templates/{language}/{rel}: copy it again",
                    path.display()
                );
                checked += 1;
            }
            assert!(checked > 3, "{language}: only {checked} files checked");
        }
    }
}
