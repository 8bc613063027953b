//! `tessera build`: runs each service's build command in its work directory, unless the
//! sources its `watch` globs match are unchanged since the last build of that component;
//! outputs are also kept in a cache addressed by the sources' digest, so a fresh checkout
//! (or a CI run) of unchanged sources reuses them instead of building again.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_manifest::{BuildSpec, Manifest, ServiceSpec};

use crate::DevkitError;

/// Directories never searched for sources: outputs and tool caches.
const SKIP_DIRS: &[&str] = &[
    ".git",
    ".tessera",
    "target",
    "node_modules",
    "__pycache__",
    ".zig-cache",
];

/// How many trailing lines of a failed build's output an error shows.
const FAILURE_LINES: usize = 80;

/// What to build and how.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Only these services (all that have a build when empty).
    pub services: Vec<String>,
    /// Build even when the sources are unchanged.
    pub force: bool,
    /// The content-addressed output cache; `None` disables it.
    pub cache: Option<PathBuf>,
    /// Let the build commands write to this process's stdout and stderr as they run.
    pub verbose: bool,
}

/// The default output cache: `$TESSERA_BUILD_CACHE`, else `~/.cache/tessera/builds`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TESSERA_BUILD_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let cache_home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(cache_home.join("tessera").join("builds"))
}

/// What happened to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutcome {
    /// Its command ran.
    Built { took: Duration, bytes: u64 },
    /// Its sources matched an output in the cache, which was copied into place.
    Cached { bytes: u64 },
    /// Its sources and its component are as the last build left them.
    UpToDate { bytes: u64 },
    /// The manifest declares no build for it.
    NoBuild,
}

/// One service's build.
#[derive(Debug, Clone)]
pub struct ServiceBuild {
    pub service: String,
    pub outcome: BuildOutcome,
}

/// What the last build of a service left: the sources' digest and the output's.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    sources: String,
    component: String,
}

/// Builds the manifest's services in manifest order, stopping at the first failure.
/// `progress` hears about each service as it starts (`None`) and ends (`Some`).
pub fn build(
    manifest: &Manifest,
    options: &BuildOptions,
    progress: &mut dyn FnMut(&str, Option<&BuildOutcome>),
) -> Result<Vec<ServiceBuild>, DevkitError> {
    for wanted in &options.services {
        if !manifest.services.iter().any(|s| &s.name == wanted) {
            return Err(DevkitError::UnknownService {
                service: wanted.clone(),
            });
        }
    }
    let app_dir = manifest
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let state_dir = app_dir.join(".tessera").join("build");
    let mut results = Vec::new();
    for service in &manifest.services {
        if !options.services.is_empty() && !options.services.contains(&service.name) {
            continue;
        }
        let outcome = match &service.build {
            None => BuildOutcome::NoBuild,
            Some(spec) => {
                progress(&service.name, None);
                build_one(service, spec, &state_dir, options)?
            }
        };
        progress(&service.name, Some(&outcome));
        results.push(ServiceBuild {
            service: service.name.clone(),
            outcome,
        });
    }
    Ok(results)
}

fn build_one(
    service: &ServiceSpec,
    spec: &BuildSpec,
    state_dir: &Path,
    options: &BuildOptions,
) -> Result<BuildOutcome, DevkitError> {
    let component = &service.component;
    let stamp_path = state_dir.join(format!("{}.json", service.name));
    let sources = if spec.watch.is_empty() {
        None
    } else {
        Some(sources_digest(spec, component)?)
    };

    if let (Some(sources), false) = (&sources, options.force) {
        if let Some(bytes) = up_to_date(&stamp_path, sources, component) {
            return Ok(BuildOutcome::UpToDate { bytes });
        }
        if let Some(cache) = &options.cache {
            let cached = cache.join(format!("{sources}.wasm"));
            if cached.is_file() {
                let bytes = install(&cached, component)?;
                check_component(service, component)?;
                write_stamp(&stamp_path, sources, component)?;
                return Ok(BuildOutcome::Cached { bytes });
            }
        }
    }

    let started = Instant::now();
    run(service, spec, state_dir, options.verbose)?;
    let took = started.elapsed();
    let bytes = match fs::metadata(component) {
        Ok(meta) => meta.len(),
        Err(_) => {
            return Err(DevkitError::NoOutput {
                service: service.name.clone(),
                component: component.clone(),
            });
        }
    };
    check_component(service, component)?;
    if let Some(sources) = &sources {
        write_stamp(&stamp_path, sources, component)?;
        if let Some(cache) = &options.cache {
            // A cache that cannot be written only costs a later rebuild.
            if fs::create_dir_all(cache).is_ok() {
                let _ = install(component, &cache.join(format!("{sources}.wasm")));
            }
        }
    }
    Ok(BuildOutcome::Built { took, bytes })
}

/// Runs the command with `sh -c` in the work directory; its output goes to a log file
/// (or, verbose, to this process's own), and a failure shows its last lines.
fn run(
    service: &ServiceSpec,
    spec: &BuildSpec,
    state_dir: &Path,
    verbose: bool,
) -> Result<(), DevkitError> {
    fs::create_dir_all(state_dir).map_err(DevkitError::io(format!(
        "cannot create {}",
        state_dir.display()
    )))?;
    let log = state_dir.join(format!("{}.log", service.name));
    let adapter = write_adapter(state_dir)?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.workdir)
        .env(ADAPTER_ENV, &adapter)
        .stdin(Stdio::null());
    if !verbose {
        let file = fs::File::create(&log)
            .map_err(DevkitError::io(format!("cannot create {}", log.display())))?;
        let copy = file
            .try_clone()
            .map_err(DevkitError::io(format!("cannot write {}", log.display())))?;
        command.stdout(file).stderr(copy);
    }
    let status = command.status().map_err(DevkitError::io(format!(
        "cannot run the build of service `{}` in {}",
        service.name,
        spec.workdir.display()
    )))?;
    if status.success() {
        return Ok(());
    }
    let mut output = String::new();
    if verbose {
        output.push_str("(shown above)");
    } else if let Ok(mut file) = fs::File::open(&log) {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(FAILURE_LINES);
        if skip > 0 {
            output.push_str(&format!("[… {skip} earlier lines]\n"));
        }
        output.push_str(&lines[skip..].join("\n"));
    }
    Err(DevkitError::BuildFailed {
        service: service.name.clone(),
        status: match status.code() {
            Some(code) => format!("`{}` exited with {code}", spec.command),
            None => format!("`{}` was killed by a signal", spec.command),
        },
        output,
        log,
    })
}

/// The variable naming the WASI preview1 adapter for `wasi:http/proxy` components, for
/// toolchains that emit preview1 core modules (C, Go): `wasm-tools component new
/// core.wasm --adapt wasi_snapshot_preview1="$TESSERA_WASI_PROXY_ADAPTER"`.
pub const ADAPTER_ENV: &str = "TESSERA_WASI_PROXY_ADAPTER";

/// Writes the adapter matching this platform's Wasmtime into the build state directory
/// (unless it is already there) and returns its path.
fn write_adapter(state_dir: &Path) -> Result<PathBuf, DevkitError> {
    let bytes = wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER;
    let path = state_dir.join("wasi_snapshot_preview1.proxy.wasm");
    if fs::read(&path).ok().as_deref() != Some(bytes) {
        fs::write(&path, bytes)
            .map_err(DevkitError::io(format!("cannot write {}", path.display())))?;
    }
    // The command runs in its own work directory.
    std::path::absolute(&path).map_err(DevkitError::io(format!(
        "cannot resolve {}",
        path.display()
    )))
}

/// The digest of the build: its command, where it runs, and every watched file's path and
/// content (outputs excluded, so a glob that also matches the component is harmless).
fn sources_digest(spec: &BuildSpec, component: &Path) -> Result<String, DevkitError> {
    let mut files = Vec::new();
    collect(
        &spec.workdir,
        &spec.workdir,
        &spec.watch,
        component,
        &mut files,
    )?;
    files.sort();
    let mut hasher = Sha256::new();
    hasher.update(b"tessera-build 1\0");
    hasher.update(spec.command.as_bytes());
    hasher.update(b"\0");
    for (rel, path) in &files {
        let bytes =
            fs::read(path).map_err(DevkitError::io(format!("cannot read {}", path.display())))?;
        hasher.update(rel.as_bytes());
        hasher.update(b"\0");
        hasher.update(Sha256::digest(&bytes));
    }
    Ok(hex::encode(hasher.finalize()))
}

fn collect(
    root: &Path,
    dir: &Path,
    globs: &[String],
    component: &Path,
    found: &mut Vec<(String, PathBuf)>,
) -> Result<(), DevkitError> {
    let entries =
        fs::read_dir(dir).map_err(DevkitError::io(format!("cannot read {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(DevkitError::io(format!("cannot read {}", dir.display())))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(DevkitError::io(format!("cannot read {}", path.display())))?;
        if file_type.is_dir() {
            if !SKIP_DIRS.contains(&entry.file_name().to_string_lossy().as_ref()) {
                collect(root, &path, globs, component, found)?;
            }
            continue;
        }
        if path == component {
            continue;
        }
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let rel = rel.to_string_lossy().replace('\\', "/");
        if globs.iter().any(|g| crate::glob::matches(g, &rel)) {
            found.push((rel, path));
        }
    }
    Ok(())
}

/// The component's size if the last build's stamp names these sources and this output.
fn up_to_date(stamp_path: &Path, sources: &str, component: &Path) -> Option<u64> {
    let stamp: Stamp = serde_json::from_slice(&fs::read(stamp_path).ok()?).ok()?;
    if stamp.sources != sources {
        return None;
    }
    let bytes = fs::read(component).ok()?;
    (hex::encode(Sha256::digest(&bytes)) == stamp.component).then_some(bytes.len() as u64)
}

fn write_stamp(stamp_path: &Path, sources: &str, component: &Path) -> Result<(), DevkitError> {
    let bytes = fs::read(component).map_err(DevkitError::io(format!(
        "cannot read {}",
        component.display()
    )))?;
    let stamp = Stamp {
        sources: sources.to_string(),
        component: hex::encode(Sha256::digest(&bytes)),
    };
    if let Some(parent) = stamp_path.parent() {
        fs::create_dir_all(parent).map_err(DevkitError::io(format!(
            "cannot create {}",
            parent.display()
        )))?;
    }
    let text = serde_json::to_vec(&stamp).expect("a stamp serializes");
    fs::write(stamp_path, text).map_err(DevkitError::io(format!(
        "cannot write {}",
        stamp_path.display()
    )))
}

/// Copies `from` to `to` through a temporary file and a rename, so a reader never sees
/// half a component. Returns the size.
fn install(from: &Path, to: &Path) -> Result<u64, DevkitError> {
    let tmp = to.with_extension(format!("wasm.tmp{}", std::process::id()));
    let bytes = fs::copy(from, &tmp).map_err(DevkitError::io(format!(
        "cannot copy {} to {}",
        from.display(),
        tmp.display()
    )))?;
    fs::rename(&tmp, to).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DevkitError::io(format!("cannot move {} into place", to.display()))(e)
    })?;
    Ok(bytes)
}

/// A component starts with `\0asm` and layer 1; a core module has layer 0.
fn check_component(service: &ServiceSpec, component: &Path) -> Result<(), DevkitError> {
    let mut header = [0u8; 8];
    let read = fs::File::open(component)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok();
    let what = if !read || &header[..4] != b"\0asm" {
        "not WebAssembly"
    } else if header[6..8] == [1, 0] {
        return Ok(());
    } else {
        "a core WebAssembly module (it needs `wasm-tools component new`)"
    };
    Err(DevkitError::NotAComponent {
        service: service.name.clone(),
        component: component.to_path_buf(),
        what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app whose one service "builds" by copying a component header plus its source.
    fn app(command: &str) -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("svc/src")).unwrap();
        fs::write(dir.path().join("svc/src/main.txt"), "one").unwrap();
        let text = format!(
            "[app]\nname = \"t\"\n[services.svc]\ncomponent = \"svc/out.wasm\"\nroutes = [\"/svc\"]\n\
             [services.svc.build]\ncommand = {}\nworkdir = \"svc\"\nwatch = [\"src/**/*.txt\", \"*.wasm\"]\n",
            toml::Value::String(command.to_string())
        );
        fs::write(dir.path().join("tessera.toml"), text).unwrap();
        let manifest = tessera_manifest::load(&dir.path().join("tessera.toml")).unwrap();
        (dir, manifest)
    }

    const COMPONENT: &str =
        "printf '\\000asm\\015\\000\\001\\000' > out.wasm && cat src/main.txt >> out.wasm";

    fn outcome(manifest: &Manifest, options: &BuildOptions) -> Result<BuildOutcome, DevkitError> {
        let mut builds = build(manifest, options, &mut |_, _| {})?;
        Ok(builds.remove(0).outcome)
    }

    #[test]
    fn unchanged_sources_skip_and_changed_ones_rebuild() {
        let (dir, manifest) = app(COMPONENT);
        let options = BuildOptions::default();
        assert!(matches!(
            outcome(&manifest, &options).unwrap(),
            BuildOutcome::Built { bytes: 11, .. }
        ));
        assert_eq!(
            outcome(&manifest, &options).unwrap(),
            BuildOutcome::UpToDate { bytes: 11 }
        );
        fs::write(dir.path().join("svc/src/main.txt"), "two!").unwrap();
        assert!(matches!(
            outcome(&manifest, &options).unwrap(),
            BuildOutcome::Built { bytes: 12, .. }
        ));
        // An output changed by hand is rebuilt; --force always builds.
        fs::write(dir.path().join("svc/out.wasm"), "junk").unwrap();
        assert!(matches!(
            outcome(&manifest, &options).unwrap(),
            BuildOutcome::Built { .. }
        ));
        let force = BuildOptions {
            force: true,
            ..BuildOptions::default()
        };
        assert!(matches!(
            outcome(&manifest, &force).unwrap(),
            BuildOutcome::Built { .. }
        ));
    }

    #[test]
    fn a_fresh_checkout_of_the_same_sources_comes_from_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let options = BuildOptions {
            cache: Some(cache.path().to_path_buf()),
            ..BuildOptions::default()
        };
        let (first, manifest) = app(COMPONENT);
        assert!(matches!(
            outcome(&manifest, &options).unwrap(),
            BuildOutcome::Built { .. }
        ));
        let built = fs::read(first.path().join("svc/out.wasm")).unwrap();

        // Same sources elsewhere, with a command that would fail: the cache answers.
        let (second, manifest) = app(COMPONENT);
        assert_eq!(
            outcome(&manifest, &options).unwrap(),
            BuildOutcome::Cached { bytes: 11 }
        );
        assert_eq!(fs::read(second.path().join("svc/out.wasm")).unwrap(), built);
        assert_eq!(
            outcome(&manifest, &options).unwrap(),
            BuildOutcome::UpToDate { bytes: 11 }
        );

        // Other sources miss the cache.
        fs::write(second.path().join("svc/src/main.txt"), "changed").unwrap();
        assert!(matches!(
            outcome(&manifest, &options).unwrap(),
            BuildOutcome::Built { .. }
        ));
    }

    #[test]
    fn build_commands_are_given_the_preview1_adapter() {
        let (dir, manifest) = app(&format!(
            "cmp \"${ADAPTER_ENV}\" adapter.expected && {COMPONENT}"
        ));
        fs::write(
            dir.path().join("svc/adapter.expected"),
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
        )
        .unwrap();
        assert!(matches!(
            outcome(&manifest, &BuildOptions::default()).unwrap(),
            BuildOutcome::Built { .. }
        ));
    }

    #[test]
    fn failures_name_the_service_and_show_the_output() {
        let (_dir, manifest) = app("echo 'syntax error at line 3' >&2; exit 7");
        let error = outcome(&manifest, &BuildOptions::default()).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("service `svc` failed to build"), "{text}");
        assert!(text.contains("exited with 7"), "{text}");
        assert!(text.contains("syntax error at line 3"), "{text}");

        let (_dir, manifest) = app("true");
        let error = outcome(&manifest, &BuildOptions::default()).unwrap_err();
        assert!(matches!(error, DevkitError::NoOutput { .. }), "{error}");

        let (_dir, manifest) = app("printf '\\000asm\\001\\000\\000\\000' > out.wasm");
        let error = outcome(&manifest, &BuildOptions::default()).unwrap_err();
        assert!(
            error.to_string().contains("core WebAssembly module"),
            "{error}"
        );

        let (_dir, manifest) = app(COMPONENT);
        let options = BuildOptions {
            services: vec!["nope".into()],
            ..BuildOptions::default()
        };
        let error = outcome(&manifest, &options).unwrap_err();
        assert!(
            matches!(error, DevkitError::UnknownService { .. }),
            "{error}"
        );
    }
}
