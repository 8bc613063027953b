//! The service's own key-value store (`wasi:keyvalue@0.2.0-draft2`): buckets of byte values,
//! atomic counters and compare-and-swap, and batches.
//!
//! `open("default")` always works; other buckets must be declared in the manifest.
//!
//! ```no_run
//! use tessera_guest::kv;
//!
//! let bucket = kv::open("default")?;
//! bucket.set("greeting", b"hello")?;
//! assert_eq!(bucket.get("greeting")?.as_deref(), Some(&b"hello"[..]));
//! let visits = kv::increment(&bucket, "visits", 1)?;
//! # let _ = visits;
//! # Ok::<(), kv::Error>(())
//! ```

pub use crate::bindings::wasi::keyvalue::{atomics, batch, store};
pub use atomics::{Cas, CasError, increment, swap};
pub use batch::{delete_many, get_many, set_many};
pub use store::{Bucket, Error, KeyResponse, open};

impl Error {
    /// The WIT case name: `no-such-store`, `access-denied` or `other`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NoSuchStore => "no-such-store",
            Error::AccessDenied => "access-denied",
            Error::Other(_) => "other",
        }
    }

    /// What went wrong, for humans.
    pub fn message(&self) -> &str {
        match self {
            Error::NoSuchStore => "no such bucket: it is neither `default` nor declared",
            Error::AccessDenied => "access denied",
            Error::Other(message) => message,
        }
    }
}

impl CasError {
    /// The WIT case name of the underlying failure: `cas-failed`, or the store error's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            CasError::StoreError(error) => error.kind(),
            CasError::CasFailed(_) => "cas-failed",
        }
    }

    /// What went wrong, for humans.
    pub fn message(&self) -> &str {
        match self {
            CasError::StoreError(error) => error.message(),
            CasError::CasFailed(_) => "the key changed since the cas was made",
        }
    }
}
