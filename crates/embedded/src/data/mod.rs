//! The embedded backend: one SQLite database per service, `<root>/<app>/<service>.db`,
//! holding both its key-value data and its own tables.
//!
//! Each open service has one writer connection behind a mutex, which runs every write
//! (so SQLite never has to arbitrate between writers of the same file), and a few
//! read-only connections for reads, which WAL mode lets run alongside the writer.

mod authorizer;
mod conn;
mod kv;
pub mod replica;
mod sql;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use conn::{Conn, Readers};

use tessera_data::{DataBackend, DataError, ServiceData, limits};

/// Service data kept in SQLite files under one root directory.
pub struct EmbeddedData {
    root: PathBuf,
    /// Open services by (app, service). Handles are shared, so each file has exactly one
    /// writer connection in this process; when the last handle of a service is dropped
    /// (its code unloaded), its connections and their file descriptors are closed.
    open: Mutex<HashMap<(String, String), Weak<ServiceDb>>>,
    /// The most recently opened services, kept open a while after their code unloads so
    /// that a service scaled to zero and asked again soon does not pay for reopening its
    /// files (about a millisecond); at most `keep_open` beyond the loaded ones.
    recent: Mutex<VecDeque<Arc<ServiceDb>>>,
    keep_open: usize,
}

/// How many services' databases stay open after their last handle is gone: each holds
/// three files (database, WAL, shared memory) and a few connections' caches.
const KEEP_OPEN: usize = 256;

impl std::fmt::Debug for EmbeddedData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedData")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl EmbeddedData {
    /// Service data under `root`; nothing is created until a service is opened.
    pub fn new(root: PathBuf) -> Self {
        EmbeddedData {
            root,
            open: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            keep_open: KEEP_OPEN,
        }
    }

    /// Keeps at most `services` databases open beyond those in use (default 256).
    pub fn keep_open(mut self, services: usize) -> Self {
        self.keep_open = services;
        self
    }

    /// The directory holding the databases of an app's services.
    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.root.join(app)
    }

    /// The database file of a service.
    pub fn database_path(&self, app: &str, service: &str) -> PathBuf {
        self.app_dir(app).join(format!("{service}.db"))
    }
}

impl DataBackend for EmbeddedData {
    fn open_service(&self, app: &str, service: &str) -> Result<ServiceData, DataError> {
        let error = |message: String| DataError::Open {
            app: app.to_owned(),
            service: service.to_owned(),
            message,
        };
        limits::check_name("app", app).map_err(error)?;
        limits::check_name("service", service).map_err(error)?;

        // Held while opening, so two requests for the same new service cannot both open
        // a writer. Opening is rare: once per service while the node runs.
        let mut open = conn::lock(&self.open);
        let key = (app.to_owned(), service.to_owned());
        if let Some(db) = open.get(&key).and_then(Weak::upgrade) {
            self.mark_used(&db);
            return Ok(db.handles());
        }
        // Forget the services closed since: the map holds only the open ones.
        open.retain(|_, db| db.strong_count() > 0);
        let dir = self.app_dir(app);
        std::fs::create_dir_all(&dir)
            .map_err(|e| error(format!("cannot create {}: {e}", dir.display())))?;
        let path = self.database_path(app, service);
        let created = !path.exists();
        let db = ServiceDb::open(path.clone(), app, service)
            .map_err(|e| error(format!("{}: {e}", path.display())))?;
        if created {
            // SQLite syncs the directory entries of its journals but not of the database
            // file itself; without this a power cut could lose a new service's file.
            sync_dir(&dir)
                .and_then(|()| sync_dir(&self.root))
                .map_err(|e| {
                    error(format!(
                        "cannot sync the directory of {}: {e}",
                        path.display()
                    ))
                })?;
        }
        tracing::debug!(app, service, path = %path.display(), "opened service data");
        let db = Arc::new(db);
        open.insert(key, Arc::downgrade(&db));
        self.mark_used(&db);
        Ok(db.handles())
    }

    fn purge_app(&self, app: &str) -> Result<(), DataError> {
        let error = |message: String| DataError::Purge {
            app: app.to_owned(),
            message,
        };
        limits::check_name("app", app).map_err(error)?;
        let mut open = conn::lock(&self.open);
        conn::lock(&self.recent).retain(|db| db.app != app);
        for (_, db) in open.extract_if(|(open_app, _), _| open_app == app) {
            if let Some(db) = db.upgrade() {
                db.close();
            }
        }
        let dir = self.app_dir(app);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(error(format!("cannot remove {}: {e}", dir.display()))),
        }
        // Without this a power cut could bring the deleted files back.
        sync_dir(&self.root).map_err(|e| {
            error(format!(
                "cannot sync {} after removing the app's directory: {e}",
                self.root.display()
            ))
        })?;
        tracing::info!(app, "deleted the data of all services of the app");
        Ok(())
    }
}

impl EmbeddedData {
    /// Marks `db` the most recently used of the services kept open.
    fn mark_used(&self, db: &Arc<ServiceDb>) {
        let mut recent = conn::lock(&self.recent);
        if let Some(at) = recent.iter().position(|kept| Arc::ptr_eq(kept, db)) {
            recent.remove(at);
        }
        recent.push_front(db.clone());
        recent.truncate(self.keep_open);
    }
}

/// One open service database: the writer and the readers. It implements both
/// [`tessera_data::KvStore`] (`kv.rs`) and [`tessera_data::SqlDatabase`] (`sql.rs`).
pub(crate) struct ServiceDb {
    app: String,
    service: String,
    /// `None` once closed.
    writer: Mutex<Option<Conn>>,
    readers: Readers,
    /// Where write transactions go before they commit, for a replicated database.
    replication: Option<Arc<dyn replica::ReplicationLog>>,
}

impl ServiceDb {
    fn open(path: PathBuf, app: &str, service: &str) -> rusqlite::Result<ServiceDb> {
        let writer = Conn::open_writer(&path)?;
        Ok(ServiceDb {
            app: app.to_owned(),
            service: service.to_owned(),
            writer: Mutex::new(Some(writer)),
            readers: Readers::new(path),
            replication: None,
        })
    }

    fn open_replicated(
        path: PathBuf,
        app: &str,
        service: &str,
        log: Arc<dyn replica::ReplicationLog>,
    ) -> rusqlite::Result<ServiceDb> {
        Ok(ServiceDb {
            replication: Some(log),
            ..ServiceDb::open(path, app, service)?
        })
    }

    fn handles(self: &Arc<Self>) -> ServiceData {
        ServiceData {
            kv: self.clone(),
            sql: self.clone(),
        }
    }

    /// The writer, once the write running on it (if any) has finished.
    fn writer(&self) -> Result<Writer<'_>, Closed> {
        let mut guard = conn::lock(&self.writer);
        let conn = guard.as_mut().ok_or(Closed)?;
        // A panic in the middle of a transaction leaves it open; finish it here so the next
        // caller does not write inside someone else's half-done transaction.
        if !conn.guest().is_autocommit() {
            tracing::warn!(app = %self.app, service = %self.service, "rolling back a transaction left open");
            let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
        }
        Ok(Writer(guard))
    }

    /// Closes the connections: the writer once its current write ends, readers as they
    /// come back. Calls afterwards fail with [`Closed`].
    fn close(&self) {
        conn::lock(&self.writer).take();
        self.readers.close();
    }

    /// The message of every call on a closed database.
    fn closed_message(&self) -> String {
        format!(
            "the data of service `{}` of app `{}` was deleted; this handle is closed",
            self.service, self.app
        )
    }
}

/// The service's data was closed.
struct Closed;

/// Exclusive use of the writer connection.
struct Writer<'a>(MutexGuard<'a, Option<Conn>>);

impl std::ops::Deref for Writer<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.0.as_ref().expect("checked open when locked")
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.0.as_mut().expect("checked open when locked")
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    // Directories cannot be opened for syncing on Windows, and NTFS journals their
    // entries anyway.
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
