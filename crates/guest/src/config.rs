//! The service's configuration (`wasi:config/store@0.2.0-draft`): the manifest's
//! `[services.NAME.config]` values with the environment's overrides, and its secrets.
//!
//! ```no_run
//! let greeting = tessera_guest::config::get("greeting")?.unwrap_or_else(|| "Hello".into());
//! # Ok::<(), tessera_guest::config::Error>(())
//! ```

pub use crate::bindings::wasi::config::store::{Error, get, get_all};

impl Error {
    /// The WIT case name: `upstream` or `io`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Upstream(_) => "upstream",
            Error::Io(_) => "io",
        }
    }

    /// What went wrong, for humans.
    pub fn message(&self) -> &str {
        match self {
            Error::Upstream(message) | Error::Io(message) => message,
        }
    }
}
