//! The on-disk cache of compiled components, keyed by the component's sha256 and the
//! engine's compatibility hash, so a restart maps code instead of compiling it again.
//!
//! Compiled code is mapped and executed as it is, so a damaged entry would crash the
//! process (an altered instruction is a SIGILL, not an error). Every entry therefore has a
//! sidecar holding the sha256 of its bytes, and an entry is mapped only after its bytes
//! were hashed and matched: once per process and file (the file's identity and size are
//! remembered), so loading a revision again after it was unloaded costs no rehash.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Hex sha256 of component bytes: the identity of a component everywhere in Tessera.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(crate) struct CompileCache {
    dir: PathBuf,
    engine: Engine,
    /// Entries whose bytes matched their digest in this process, by component hash.
    verified: Mutex<HashMap<String, FileIdentity>>,
}

/// What identifies one version of a file on disk without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileIdentity {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> std::io::Result<FileIdentity> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(FileIdentity {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }
}

/// Why a cache entry was not used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("its digest file is missing or unreadable")]
    NoDigest,
    #[error("its bytes do not match their digest (damaged on disk)")]
    Mismatch,
    #[error("{0}")]
    Deserialize(String),
}

impl CompileCache {
    /// Entries live under a directory named after the engine's settings, so code compiled
    /// by another Wasmtime version or configuration is never even looked at.
    pub(crate) fn new(root: &Path, engine: &Engine) -> Self {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = root.join(format!("{:016x}", hasher.finish()));
        CompileCache {
            dir,
            engine: engine.clone(),
            verified: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.cwasm"))
    }

    fn digest_path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.cwasm.sha256"))
    }

    /// Maps a cached component. A missing entry is a miss; an unreadable, damaged or
    /// incompatible one is logged and treated as a miss, so a damaged cache costs a
    /// compile, never a failure and never a crash.
    pub(crate) fn load(&self, hash: &str) -> Option<Component> {
        let path = self.path(hash);
        if !path.exists() {
            return None;
        }
        match self.try_load(hash, &path) {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compiled-code cache entry");
                self.forget(hash);
                None
            }
        }
    }

    fn try_load(&self, hash: &str, path: &Path) -> Result<Component, Unusable> {
        let identity = FileIdentity::of(path).map_err(Unusable::Read)?;
        let known = self.lock().get(hash) == Some(&identity);
        if !known {
            let expected =
                std::fs::read_to_string(self.digest_path(hash)).map_err(|_| Unusable::NoDigest)?;
            let bytes = std::fs::read(path).map_err(Unusable::Read)?;
            if content_hash(&bytes) != expected.trim() {
                return Err(Unusable::Mismatch);
            }
            self.lock().insert(hash.to_string(), identity);
        }
        // SAFETY: the file's bytes are those `store` wrote (their sha256 matches the
        // digest written with them), which came from `Engine::precompile_component` for
        // the same engine settings and were renamed into place only once complete.
        unsafe { Component::deserialize_file(&self.engine, path) }
            .map_err(|e| Unusable::Deserialize(format!("{e:#}")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FileIdentity>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, hash: &str) {
        self.lock().remove(hash);
    }

    /// Writes an entry atomically (temp file, fsync, rename). Failures only cost speed
    /// later, so they are logged, not returned.
    pub(crate) fn store(&self, hash: &str, compiled: &[u8]) {
        if let Err(e) = self.try_store(hash, compiled) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write compiled-code cache entry");
        }
    }

    /// The digest goes in first: an entry whose code was written but whose digest was not
    /// (a crash in between) has a stale or missing digest and is simply a miss.
    fn try_store(&self, hash: &str, compiled: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        self.forget(hash);
        self.write_atomically(&self.digest_path(hash), content_hash(compiled).as_bytes())?;
        self.write_atomically(&self.path(hash), compiled)
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let written = std::fs::File::create(&tmp).and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
        let result = written.and_then(|()| std::fs::rename(&tmp, path));
        if result.is_err() {
            // A full disk must not leave half-written entries behind to pile up.
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}
