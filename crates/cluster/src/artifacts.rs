//! [`ObjectArtifacts`]: components in the JetStream object store, named by sha256, with a
//! local cache so the runtime maps compiled code from local files.

use std::path::{Path, PathBuf};

use async_nats::jetstream::object_store::{self, ObjectStore};
use sha2::{Digest, Sha256};
use tessera_embedded::{ArtifactDir, is_digest};
use tessera_store::{ArtifactStore, StoreError};
use tokio::io::AsyncReadExt;

use crate::setup::ARTIFACTS_BUCKET;
use crate::{Cluster, REQUEST_TIMEOUT, unavailable};

/// Longest an artifact transfer may take, whatever its size.
const TRANSFER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Artifacts shared by every node: stored in the object store before a deploy can name
/// them, fetched (and verified against their name) into `cache` on first use.
pub struct ObjectArtifacts {
    cluster: Cluster,
    store: ObjectStore,
    cache: ArtifactDir,
    staging: PathBuf,
}

impl ObjectArtifacts {
    /// The shared artifacts, cached in `cache` (created if needed).
    pub fn open(cluster: &Cluster, cache: PathBuf) -> Result<ObjectArtifacts, StoreError> {
        let staging = cache.join("staging");
        std::fs::create_dir_all(&staging).map_err(|source| StoreError::Io {
            action: "create the artifact staging directory",
            path: staging.clone(),
            source,
        })?;
        let js = cluster.js();
        let store = cluster
            .bridge()
            .run(async move { js.get_object_store(ARTIFACTS_BUCKET).await })
            .map_err(|e| unavailable("open the artifact store", e))?;
        Ok(ObjectArtifacts {
            cluster: cluster.clone(),
            store,
            cache: ArtifactDir::create(cache)?,
            staging,
        })
    }

    /// Whether the object store holds `sha256`.
    fn stored(&self, sha256: &str) -> Result<bool, StoreError> {
        if !self.cluster.connected() {
            return Err(unavailable(
                "look up an artifact",
                "this node is not connected to NATS",
            ));
        }
        let store = self.store.clone();
        let name = sha256.to_owned();
        self.cluster.bridge().run(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, store.info(&name)).await {
                Err(_) => Err(unavailable("look up an artifact", "timed out")),
                Ok(Ok(info)) => Ok(!info.deleted),
                Ok(Err(e)) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
                Ok(Err(e)) => Err(unavailable("look up an artifact", e)),
            }
        })
    }

    /// Uploads `bytes` under `sha256` unless the store has them already; durable when it
    /// returns (every chunk acknowledged).
    fn upload(&self, sha256: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        if self.stored(sha256)? {
            return Ok(());
        }
        let store = self.store.clone();
        let name = sha256.to_owned();
        self.cluster
            .bridge()
            .run(async move {
                let mut reader = std::io::Cursor::new(bytes);
                tokio::time::timeout(TRANSFER_TIMEOUT, store.put(name.as_str(), &mut reader))
                    .await
                    .map_err(|_| "timed out".to_owned())?
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| unavailable("store an artifact in the cluster", e))
    }

    /// Fetches an artifact into the local cache, verifying its digest.
    fn fetch(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        let store = self.store.clone();
        let name = sha256.to_owned();
        let bytes = self.cluster.bridge().run(async move {
            let read = async {
                let mut object = match store.get(&name).await {
                    Ok(object) => object,
                    Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                        return Ok(None);
                    }
                    Err(e) => return Err(e.to_string()),
                };
                let mut bytes = Vec::new();
                object
                    .read_to_end(&mut bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Some(bytes))
            };
            tokio::time::timeout(TRANSFER_TIMEOUT, read)
                .await
                .map_err(|_| "timed out".to_owned())?
        });
        let bytes = match bytes {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(StoreError::NoSuchArtifact(sha256.to_owned())),
            Err(message) => {
                return Err(unavailable("fetch an artifact from the cluster", message));
            }
        };
        let found = hex::encode(Sha256::digest(&bytes));
        if found != sha256 {
            return Err(StoreError::Unavailable {
                action: format!("fetch artifact {sha256}"),
                message: format!("the cluster returned bytes whose sha256 is {found}"),
            });
        }
        self.cache.put(&bytes)?;
        self.cache.path(sha256)
    }
}

impl ArtifactStore for ObjectArtifacts {
    fn has_artifact(&self, sha256: &str) -> bool {
        is_digest(sha256) && (self.cache.contains(sha256) || self.stored(sha256).unwrap_or(false))
    }

    fn put_artifact(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        self.upload(&sha256, bytes.to_vec())?;
        self.cache.put(bytes)?;
        Ok(sha256)
    }

    fn artifact_path(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        match self.cache.path(sha256) {
            Ok(path) => Ok(path),
            Err(StoreError::NoSuchArtifact(_)) => self.fetch(sha256),
            Err(e) => Err(e),
        }
    }

    fn staging_dir(&self) -> PathBuf {
        self.staging.clone()
    }

    fn put_artifact_file(&self, path: &Path, sha256: &str) -> Result<(), StoreError> {
        if !is_digest(sha256) {
            return Err(StoreError::InvalidDigest(sha256.to_owned()));
        }
        let bytes = std::fs::read(path).map_err(|source| StoreError::Io {
            action: "read the uploaded artifact",
            path: path.to_owned(),
            source,
        })?;
        self.upload(sha256, bytes)?;
        self.cache.put_file(path, sha256)
    }
}
