//! The on-disk cache of compiled components, keyed by the component's sha256 and the
//! engine's compatibility hash, so a restart maps code instead of compiling it again.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

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
        }
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.cwasm"))
    }

    /// Maps a cached component. A missing entry is a miss; an unreadable or incompatible
    /// one is logged and treated as a miss, so a damaged cache costs a compile, never a
    /// failure.
    pub(crate) fn load(&self, hash: &str) -> Option<Component> {
        let path = self.path(hash);
        if !path.exists() {
            return None;
        }
        // SAFETY: files in this directory are written only by `store` below, from the
        // output of `Engine::precompile_component` for the same engine settings, and are
        // renamed into place only once complete.
        match unsafe { Component::deserialize_file(&self.engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "ignoring unusable compiled-code cache entry");
                None
            }
        }
    }

    /// Writes an entry atomically (temp file, fsync, rename). Failures only cost speed
    /// later, so they are logged, not returned.
    pub(crate) fn store(&self, hash: &str, compiled: &[u8]) {
        if let Err(e) = self.try_store(hash, compiled) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write compiled-code cache entry");
        }
    }

    fn try_store(&self, hash: &str, compiled: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{hash}.{}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(compiled)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.path(hash))
    }
}
