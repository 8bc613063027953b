//! The app manifest (`tessera.toml`): parsing with source positions, validation, and the
//! plain app model the rest of Tessera consumes.
//!
//! Parsing walks the span-carrying TOML tree by hand instead of deriving serde, so every
//! error can name the file, line, column and the full key path (`services.greeter.memory`)
//! a user has to fix.

mod parse;
mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use units::{parse_duration, parse_size};

/// File name of the manifest inside an app directory.
pub const MANIFEST_FILE: &str = "tessera.toml";

pub use tessera_model::{
    CronTrigger, Limits, MissedTicks, Origin, Reuse, RevisionConfig, RoutePrefix, Scaling, Scheme,
    Subscription, bounds::*, check_config_key, check_host, check_name, check_schedule, check_topic,
    split_host_port,
};

/// A validated app manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest file this was read from.
    pub path: PathBuf,
    /// The app's name.
    pub app: String,
    /// The host name every route of the app is bound to, if the manifest gives one.
    pub host: Option<String>,
    /// The services, sorted by name.
    pub services: Vec<ServiceSpec>,
    /// Named environments (`[environments.NAME.SERVICE]`): per-service configuration
    /// values that replace or add to `[services.SERVICE.config]` when the app is deployed
    /// with that environment selected.
    pub environments: Environments,
}

/// Environment name → service name → configuration overrides.
pub type Environments = BTreeMap<String, BTreeMap<String, Vec<(String, String)>>>;

impl Manifest {
    /// The configuration a service sees: its `config` table with the overrides of the
    /// chosen environment applied, sorted by key.
    pub fn config_for(
        &self,
        service: &ServiceSpec,
        environment: Option<&str>,
    ) -> Result<Vec<(String, String)>, String> {
        let mut config: BTreeMap<String, String> =
            service.revision.config.iter().cloned().collect();
        if let Some(name) = environment {
            let Some(overrides) = self.environments.get(name) else {
                let known: Vec<&str> = self.environments.keys().map(String::as_str).collect();
                return Err(if known.is_empty() {
                    format!(
                        "environment `{name}` is not declared: {} has no [environments] table",
                        self.path.display()
                    )
                } else {
                    format!(
                        "environment `{name}` is not declared in {}; declared: {}",
                        self.path.display(),
                        known.join(", ")
                    )
                });
            };
            if let Some(values) = overrides.get(&service.name) {
                config.extend(values.iter().cloned());
            }
        }
        Ok(config.into_iter().collect())
    }
}

/// One service as the manifest declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    /// Path of the component file, resolved against the manifest's directory.
    pub component: PathBuf,
    /// How its revisions run: routes, limits, scaling, grants, configuration, buckets,
    /// schedules and subscriptions. Its `config` is the service's own table (an
    /// environment's overrides are applied by [`ServiceSpec::revision`]); its `migrations`
    /// are empty (a deploy records the ones it ran).
    pub revision: RevisionConfig,
    /// SQL files applied once each, in this order, to the service's database at deploy.
    pub migrations: Vec<PathBuf>,
    /// How `tessera build` makes the component from its sources (`[services.NAME.build]`).
    pub build: Option<BuildSpec>,
}

impl ServiceSpec {
    /// The revision this service deploys as: its settings, with the given configuration
    /// (its own with an environment's overrides, [`Manifest::config_for`]).
    pub fn revision(&self, config: Vec<(String, String)>) -> RevisionConfig {
        RevisionConfig {
            config,
            ..self.revision.clone()
        }
    }
}

/// A service's build: a shell command that writes the component, and the sources it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// Run with `sh -c` in `workdir`.
    pub command: String,
    /// Where the command runs, resolved against the manifest's directory (default: that
    /// directory itself).
    pub workdir: PathBuf,
    /// Globs of the sources, relative to `workdir` (`*`, `?`, and `**` for any depth). When
    /// none of the matched files changed, the build is skipped; without any, it always runs.
    pub watch: Vec<String>,
}

/// Checks a `watch` glob: relative, inside the work directory, `**` only as a whole segment.
pub fn check_glob(glob: &str) -> Result<(), String> {
    if glob.trim().is_empty() {
        return Err("a watch glob is empty".to_string());
    }
    if glob.starts_with('/') || glob.contains('\\') {
        return Err(format!(
            "`{glob}` must be a relative path with `/` separators"
        ));
    }
    for segment in glob.split('/') {
        if segment == ".." {
            return Err(format!("`{glob}` leaves the work directory"));
        }
        if segment.contains("**") && segment != "**" {
            return Err(format!(
                "`{glob}`: `**` must be a whole path segment, as in `src/**/*.py`"
            ));
        }
    }
    Ok(())
}

/// What went wrong reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {}{message}", file.display(), key_prefix(key))]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        /// Dotted key path of the offending entry; empty for syntax errors.
        key: String,
        message: String,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("`{key}`: ")
    }
}

/// Reads and validates the manifest at `path` (a file, or a directory holding
/// `tessera.toml`).
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let file = if path.is_dir() {
        path.join(MANIFEST_FILE)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
        path: file.clone(),
        source,
    })?;
    parse(&text, &file)
}

/// Validates manifest text; `file` names it in errors and anchors relative paths.
pub fn parse(text: &str, file: &Path) -> Result<Manifest, ManifestError> {
    parse::parse(text, file, parse::Services::Required)
}

/// Like [`parse`], but a manifest with an `[app]` and no services yet is valid: the start
/// `tessera new` adds services to.
pub fn parse_allowing_no_services(text: &str, file: &Path) -> Result<Manifest, ManifestError> {
    parse::parse(text, file, parse::Services::MayBeNone)
}

#[cfg(test)]
mod tests;
