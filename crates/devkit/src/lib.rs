//! Working on an app's sources rather than running it: `tessera new` scaffolds a service
//! from a language template ([`new_service`]) and `tessera build` turns every service's
//! sources into its component ([`build`]), skipping the ones whose sources did not change
//! and reusing earlier outputs from a cache addressed by the sources' content.

mod builder;
mod glob;
mod scaffold;

use std::path::PathBuf;

pub use builder::{
    ADAPTER_ENV, BuildOptions, BuildOutcome, ServiceBuild, build, default_cache_dir,
};
pub use glob::matches as glob_matches;
pub use scaffold::{NewService, Template, languages, new_service, template};

/// What can go wrong while scaffolding or building.
#[derive(Debug, thiserror::Error)]
pub enum DevkitError {
    #[error("there is no `{language}` template; the templates are: {available}")]
    UnknownTemplate { language: String, available: String },
    #[error("`{name}` cannot name a service: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{} already has a service `{service}`", manifest.display())]
    ServiceExists { service: String, manifest: PathBuf },
    #[error("{} already exists and is not empty; choose another name", dir.display())]
    DirectoryExists { dir: PathBuf },
    #[error("the manifest has no service `{service}`")]
    UnknownService { service: String },
    #[error(transparent)]
    Manifest(#[from] tessera_manifest::ManifestError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "service `{service}` failed to build ({status}); its build output (all of it in {}):\n{output}",
        log.display()
    )]
    BuildFailed {
        service: String,
        status: String,
        output: String,
        log: PathBuf,
    },
    #[error("service `{service}`: the build succeeded but did not write {}", component.display())]
    NoOutput { service: String, component: PathBuf },
    #[error("service `{service}`: {} is {what}, not a WebAssembly component", component.display())]
    NotAComponent {
        service: String,
        component: PathBuf,
        what: &'static str,
    },
}

impl DevkitError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevkitError {
        let context = context.into();
        move |source| DevkitError::Io { context, source }
    }
}
