//! Content-addressed component artifacts: `artifacts/<sha256>.wasm`, written atomically
//! and durably, named only by validated digests.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use tessera_store::StoreError;

/// Lowercase hex sha256 of `bytes`: the identity of a component everywhere in Tessera.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `sha256` is exactly 64 lowercase hex digits. Anything else is refused before
/// it can become part of a path, so a digest from the network can never name `..` or a
/// file outside the artifact directory.
pub fn is_digest(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A directory of content-addressed artifacts, `<sha256>.wasm`: the embedded store's
/// artifacts, and a cluster node's local cache of the shared ones.
#[derive(Debug)]
pub struct ArtifactDir {
    dir: PathBuf,
}

impl ArtifactDir {
    pub fn new(dir: PathBuf) -> Self {
        ArtifactDir { dir }
    }

    /// The directory `dir`, created if needed.
    pub fn create(dir: PathBuf) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            action: "create the artifact directory",
            path: dir.clone(),
            source,
        })?;
        Ok(ArtifactDir { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves a complete staged file into place under `sha256` (which the caller checked),
    /// durably: file synced, renamed, directory synced.
    pub fn put_file(&self, staged: &Path, sha256: &str) -> Result<(), StoreError> {
        if !is_digest(sha256) {
            return Err(StoreError::InvalidDigest(sha256.to_owned()));
        }
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        let path = self.file(sha256);
        if path.is_file() {
            let _ = std::fs::remove_file(staged);
            return Ok(());
        }
        File::open(staged)
            .and_then(|f| f.sync_all())
            .map_err(io("sync staged artifact", staged))?;
        std::fs::rename(staged, &path).map_err(io("rename artifact into place at", &path))?;
        sync_dir(&self.dir)
    }

    /// Where the artifact would live; the digest must already be validated.
    fn file(&self, sha256: &str) -> PathBuf {
        debug_assert!(is_digest(sha256));
        self.dir.join(format!("{sha256}.wasm"))
    }

    pub fn contains(&self, sha256: &str) -> bool {
        is_digest(sha256) && self.file(sha256).is_file()
    }

    pub fn path(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        if !is_digest(sha256) {
            return Err(StoreError::InvalidDigest(sha256.to_owned()));
        }
        let path = self.file(sha256);
        if path.is_file() {
            Ok(path)
        } else {
            Err(StoreError::NoSuchArtifact(sha256.to_owned()))
        }
    }

    /// Stores `bytes` under their digest. The file is written under a temporary name,
    /// synced, renamed into place and the directory synced, so a file under its final
    /// name is always complete and survives a power cut. That ordering is what lets a
    /// deploy, committed after this returns, trust that its artifacts exist.
    pub fn put(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let sha256 = digest(bytes);
        let path = self.file(&sha256);
        // Content addressing makes an existing file the same bytes, and it is complete
        // because only a finished, synced file is ever renamed into place.
        if path.is_file() {
            return Ok(sha256);
        }
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        // The temporary file lives in the same directory so the rename is atomic; it is
        // removed again if anything below fails.
        let mut tmp = tempfile::Builder::new()
            .prefix(".incoming-")
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(io("create a temporary artifact in", &self.dir))?;
        tmp.write_all(bytes)
            .map_err(io("write temporary artifact", tmp.path()))?;
        tmp.as_file()
            .sync_all()
            .map_err(io("sync temporary artifact", tmp.path()))?;
        tmp.persist(&path)
            .map_err(|e| io("rename artifact into place at", &path)(e.error))?;
        sync_dir(&self.dir)?;
        Ok(sha256)
    }
}

/// Makes a directory's entries (a rename, a new file or subdirectory) durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        action: "sync directory",
        path: dir.to_owned(),
        source,
    };
    // Only Unix lets a directory be opened and synced; elsewhere the rename itself is the
    // best durability on offer.
    if cfg!(unix) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}
