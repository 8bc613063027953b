//! The control-state operations on the SQLite connection: reading apps, and each change
//! (deploy, traffic, rollback, removal) as one transaction.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use tessera_model::wire::RevisionJson;
use tessera_store::{
    AppState, Change, ChangeBatch, ChangeKind, DEFAULT_CHANGE_HISTORY, DeployOutcome, Revision,
    RevisionConfig, ServiceState, StoreError, rules,
};

/// An error inside an operation. Database failures are given their context (which
/// operation, on what app or service) once, at the public boundary, instead of at every
/// statement.
enum Failure {
    Db(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Db(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

fn finish<T>(result: Result<T, Failure>, action: impl FnOnce() -> String) -> Result<T, StoreError> {
    result.map_err(|failure| match failure {
        Failure::Db(source) => StoreError::Database {
            action: action(),
            source: Box::new(source),
        },
        Failure::Store(e) => e,
    })
}

/// Runs `change` in a write transaction and commits only if it succeeds; on any error
/// the transaction is dropped, which rolls every step back. The transaction takes the
/// write lock when it begins, so what `change` reads is still true when it writes, even
/// if another process shares the database.
fn write<T>(
    conn: &mut Connection,
    change: impl FnOnce(&Transaction<'_>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = change(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// The current time in seconds since the Unix epoch; a clock before 1970 reads as 0.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How a `RevisionConfig` is stored: as JSON text in `revisions.config`, in the model's
/// one JSON form with the names of the migrations its deploy ran beside it.
#[derive(Serialize, Deserialize)]
struct StoredConfig {
    #[serde(flatten)]
    config: RevisionJson,
    // Added after the first release: absent in older rows.
    #[serde(default)]
    migrations: Vec<String>,
}

fn config_json(config: &RevisionConfig) -> String {
    let stored = StoredConfig {
        config: RevisionJson::from(config),
        migrations: config.migrations.clone(),
    };
    let mut value =
        serde_json::to_value(&stored).expect("strings and integers always serialise to JSON");
    // Stored under the name every earlier release reads.
    if let Some(map) = value.as_object_mut()
        && let Some(subs) = map.remove("subscribe")
    {
        map.insert(tessera_model::wire::STORED_SUBSCRIPTIONS.into(), subs);
    }
    value.to_string()
}

fn parse_config(
    json: &str,
    app: &str,
    service: &str,
    revision: u32,
) -> Result<RevisionConfig, StoreError> {
    let corrupt = |message: String| StoreError::CorruptConfig {
        app: app.to_owned(),
        service: service.to_owned(),
        revision,
        message,
    };
    let stored: StoredConfig = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
    stored
        .config
        .into_config(stored.migrations)
        .map_err(|e| corrupt(e.to_string()))
}

/// Reads every app, or just `only`, with services, revisions and traffic.
// Long because it assembles apps from four queries (apps, services, revisions, traffic)
// in one pass each, without a query per service.
fn load(conn: &Connection, only: Option<&str>) -> Result<Vec<AppState>, Failure> {
    let mut apps: BTreeMap<String, BTreeMap<String, ServiceState>> = BTreeMap::new();
    let mut generations = BTreeMap::new();

    let mut stmt =
        conn.prepare("SELECT name, generation FROM apps WHERE ?1 IS NULL OR name = ?1")?;
    let rows = stmt.query_map([only], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (name, generation) = row?;
        generations.insert(name.clone(), generation.max(0) as u64);
        apps.insert(name, BTreeMap::new());
    }

    let mut stmt = conn.prepare("SELECT app, name FROM services WHERE ?1 IS NULL OR app = ?1")?;
    let rows = stmt.query_map([only], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    for row in rows {
        let (app, name) = row?;
        if let Some(services) = apps.get_mut(&app) {
            let state = ServiceState {
                name: name.clone(),
                revisions: Vec::new(),
                traffic: Vec::new(),
            };
            services.insert(name, state);
        }
    }

    let mut stmt = conn.prepare(
        "SELECT app, service, id, sha256, config, created_at FROM revisions
         WHERE ?1 IS NULL OR app = ?1 ORDER BY app, service, id",
    )?;
    let rows = stmt.query_map([only], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, u32>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, String>(4)?,
            row.get::<_, i64>(5)?,
        ))
    })?;
    for row in rows {
        let (app, service, id, sha256, config, created_at) = row?;
        let config = parse_config(&config, &app, &service, id)?;
        if let Some(state) = apps.get_mut(&app).and_then(|s| s.get_mut(&service)) {
            state.revisions.push(Revision {
                id,
                sha256,
                config,
                created_at: u64::try_from(created_at).unwrap_or(0),
            });
        }
    }

    let mut stmt = conn.prepare(
        "SELECT app, service, revision, percent FROM traffic
         WHERE ?1 IS NULL OR app = ?1 ORDER BY app, service, revision",
    )?;
    let rows = stmt.query_map([only], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, u32>(2)?,
            row.get::<_, u8>(3)?,
        ))
    })?;
    for row in rows {
        let (app, service, revision, percent) = row?;
        if let Some(state) = apps.get_mut(&app).and_then(|s| s.get_mut(&service)) {
            state.traffic.push((revision, percent));
        }
    }

    Ok(apps
        .into_iter()
        .map(|(name, services)| AppState {
            generation: generations.get(&name).copied().unwrap_or(0),
            name,
            services: services.into_values().collect(),
        })
        .collect())
}

fn load_service(conn: &Connection, app: &str, service: &str) -> Result<ServiceState, Failure> {
    let Some(state) = load(conn, Some(app))?.pop() else {
        return Err(StoreError::NoSuchApp(app.to_owned()).into());
    };
    state
        .services
        .into_iter()
        .find(|s| s.name == service)
        .ok_or_else(|| {
            StoreError::NoSuchService {
                app: app.to_owned(),
                service: service.to_owned(),
            }
            .into()
        })
}

pub(crate) fn apps(conn: &mut Connection) -> Result<Vec<AppState>, StoreError> {
    // One read transaction, so the four queries see a single snapshot even if another
    // process writes in between.
    let result = (|| {
        let tx = conn.transaction()?;
        load(&tx, None)
    })();
    finish(result, || "list apps".to_owned())
}

pub(crate) fn app(conn: &mut Connection, name: &str) -> Result<Option<AppState>, StoreError> {
    let result = (|| {
        let tx = conn.transaction()?;
        Ok(load(&tx, Some(name))?.pop())
    })();
    finish(result, || format!("read app `{name}`"))
}

// Long because a deploy is one transaction whose steps read what the previous ones wrote
// (generation, revisions created, canary split, pruning, route check, change record).
pub(crate) fn deploy(
    conn: &mut Connection,
    plan: &rules::DeployPlan<'_>,
    now: u64,
) -> Result<DeployOutcome, StoreError> {
    let app = plan.app;
    let result = write(conn, |tx| {
        let current = load(tx, Some(app))?.pop();
        plan.check_generation(current.as_ref().map_or(0, |a| a.generation))?;
        let current = current.map_or_else(Vec::new, |a| a.services);
        let changes_before = tx.total_changes();
        tx.execute("INSERT OR IGNORE INTO apps (name) VALUES (?1)", [app])?;
        let mut outcome = DeployOutcome {
            app: app.to_owned(),
            created: Vec::new(),
            unchanged: Vec::new(),
            removed: Vec::new(),
        };
        for service in &plan.selected {
            let name = service.name.as_str();
            let primary = current
                .iter()
                .find(|s| s.name == name)
                .and_then(ServiceState::primary);
            if let Some(primary) = primary
                && primary.sha256 == service.sha256
                && primary.config == service.config
            {
                outcome.unchanged.push(name.to_owned());
                continue;
            }
            tx.execute(
                "INSERT OR IGNORE INTO services (app, name) VALUES (?1, ?2)",
                [app, name],
            )?;
            let id = next_revision_id(tx, app, name)?;
            tx.execute(
                "INSERT INTO revisions (app, service, id, sha256, config, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    app,
                    name,
                    id,
                    service.sha256,
                    config_json(&service.config),
                    i64::try_from(now).unwrap_or(i64::MAX)
                ],
            )?;
            // Only the new revision and the old primary share traffic: an earlier canary
            // that is neither is superseded by this one.
            let weights = match (plan.traffic, primary) {
                (Some(share), Some(primary)) => vec![(primary.id, 100 - share), (id, share)],
                _ => vec![(id, 100)],
            };
            replace_traffic(tx, app, name, &weights)?;
            outcome.created.push((name.to_owned(), id));
        }
        if plan.whole_app {
            for service in &current {
                if !plan.selected.iter().any(|s| s.name == service.name) {
                    delete_service(tx, app, &service.name)?;
                    outcome.removed.push(service.name.clone());
                }
            }
        }
        // Checked after every change is applied, so a route moving from one service to
        // another (or away from a removed one) within a deploy is not a conflict.
        let claimants: Vec<&str> = outcome.created.iter().map(|(s, _)| s.as_str()).collect();
        check_routes(tx, app, &claimants)?;
        for service in &plan.selected {
            prune(tx, app, &service.name, plan.keep)?;
        }
        // A deploy that changed nothing (every service unchanged, nothing pruned) is not a
        // change: other nodes have nothing to catch up on.
        if tx.total_changes() != changes_before {
            record(tx, app, &ChangeKind::App)?;
        }
        Ok(outcome)
    });
    finish(result, || format!("deploy app `{app}`"))
}

pub(crate) fn set_traffic(
    conn: &mut Connection,
    app: &str,
    service: &str,
    weights: &[(u32, u8)],
) -> Result<ServiceState, StoreError> {
    let result = write(conn, |tx| {
        let state = load_service(tx, app, service)?;
        rules::validate_weights(app, &state, weights)?;
        replace_traffic(tx, app, service, weights)?;
        // The primary revision may change, and with it the service's routes.
        check_routes(tx, app, &[service])?;
        record(tx, app, &ChangeKind::App)?;
        load_service(tx, app, service)
    });
    finish(result, || {
        format!("set the traffic of service `{service}` of app `{app}`")
    })
}

pub(crate) fn rollback(
    conn: &mut Connection,
    app: &str,
    service: &str,
    to: Option<u32>,
) -> Result<ServiceState, StoreError> {
    let result = write(conn, |tx| {
        let state = load_service(tx, app, service)?;
        let target = rules::rollback_target(app, &state, to)?;
        replace_traffic(tx, app, service, &[(target, 100)])?;
        check_routes(tx, app, &[service])?;
        record(tx, app, &ChangeKind::App)?;
        load_service(tx, app, service)
    });
    finish(result, || {
        format!("roll back service `{service}` of app `{app}`")
    })
}

pub(crate) fn remove_app(conn: &mut Connection, app: &str) -> Result<bool, StoreError> {
    let result = write(conn, |tx| {
        // Children first, because foreign keys do not cascade; `revision_counters` stays
        // so that a redeployed app continues its revision numbering.
        tx.execute("DELETE FROM traffic WHERE app = ?1", [app])?;
        tx.execute("DELETE FROM revisions WHERE app = ?1", [app])?;
        tx.execute("DELETE FROM services WHERE app = ?1", [app])?;
        let existed = tx.execute("DELETE FROM apps WHERE name = ?1", [app])? > 0;
        if existed {
            record(tx, app, &ChangeKind::App)?;
        }
        Ok(existed)
    });
    finish(result, || format!("remove app `{app}`"))
}

/// Reserves the next revision id of a service. The counter row outlives the service, so
/// ids are never reused, not even after pruning or removal.
fn next_revision_id(tx: &Transaction<'_>, app: &str, service: &str) -> Result<u32, Failure> {
    Ok(tx.query_row(
        "INSERT INTO revision_counters (app, service, last_id) VALUES (?1, ?2, 1)
         ON CONFLICT (app, service) DO UPDATE SET last_id = last_id + 1
         RETURNING last_id",
        [app, service],
        |row| row.get(0),
    )?)
}

/// Replaces a service's traffic split; shares of 0 are not stored.
fn replace_traffic(
    tx: &Transaction<'_>,
    app: &str,
    service: &str,
    weights: &[(u32, u8)],
) -> Result<(), Failure> {
    tx.execute(
        "DELETE FROM traffic WHERE app = ?1 AND service = ?2",
        [app, service],
    )?;
    let mut insert = tx
        .prepare("INSERT INTO traffic (app, service, revision, percent) VALUES (?1, ?2, ?3, ?4)")?;
    for &(revision, percent) in weights.iter().filter(|(_, p)| *p > 0) {
        insert.execute(params![app, service, revision, percent])?;
    }
    Ok(())
}

fn delete_service(tx: &Transaction<'_>, app: &str, service: &str) -> Result<(), Failure> {
    tx.execute(
        "DELETE FROM traffic WHERE app = ?1 AND service = ?2",
        [app, service],
    )?;
    tx.execute(
        "DELETE FROM revisions WHERE app = ?1 AND service = ?2",
        [app, service],
    )?;
    tx.execute(
        "DELETE FROM services WHERE app = ?1 AND name = ?2",
        [app, service],
    )?;
    Ok(())
}

/// Deletes the oldest revisions of a service beyond `keep`, skipping any that carry
/// traffic: a revision serving requests is never pulled from under them.
fn prune(tx: &Transaction<'_>, app: &str, service: &str, keep: usize) -> Result<(), Failure> {
    let count: i64 = tx.query_row(
        "SELECT COUNT(*) FROM revisions WHERE app = ?1 AND service = ?2",
        [app, service],
        |row| row.get(0),
    )?;
    let excess = count.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX));
    if excess <= 0 {
        return Ok(());
    }
    tx.execute(
        "DELETE FROM revisions WHERE app = ?1 AND service = ?2 AND id IN (
             SELECT r.id FROM revisions r
             WHERE r.app = ?1 AND r.service = ?2 AND NOT EXISTS (
                 SELECT 1 FROM traffic t
                 WHERE t.app = ?1 AND t.service = ?2 AND t.revision = r.id
             )
             ORDER BY r.id LIMIT ?3
         )",
        params![app, service, excess],
    )?;
    Ok(())
}

/// Refuses the change if a route of a claimant (a service of `app` whose primary revision
/// may have changed) is also a current route of any other service on the node, read after
/// the change is applied.
fn check_routes(tx: &Transaction<'_>, app: &str, claimants: &[&str]) -> Result<(), Failure> {
    if claimants.is_empty() {
        return Ok(());
    }
    let apps = load(tx, None)?;
    let apps: Vec<&AppState> = apps.iter().collect();
    Ok(rules::check_routes(&apps, app, claimants)?)
}

pub(crate) fn set_secret(
    conn: &mut Connection,
    app: &str,
    service: &str,
    name: &str,
    value: &str,
) -> Result<(), StoreError> {
    let result = write(conn, |tx| {
        tx.execute(
            "INSERT INTO secrets (app, service, name, value, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (app, service, name) DO UPDATE SET value = ?4, updated_at = ?5",
            rusqlite::params![app, service, name, value, now() as i64],
        )?;
        record(tx, app, &ChangeKind::Secrets(Some(service.to_owned())))?;
        Ok(())
    });
    finish(result, || {
        format!("set a secret of service `{service}` of app `{app}`")
    })
}

pub(crate) fn delete_secret(
    conn: &mut Connection,
    app: &str,
    service: &str,
    name: &str,
) -> Result<bool, StoreError> {
    let result = write(conn, |tx| {
        let existed = tx.execute(
            "DELETE FROM secrets WHERE app = ?1 AND service = ?2 AND name = ?3",
            [app, service, name],
        )? > 0;
        if existed {
            record(tx, app, &ChangeKind::Secrets(Some(service.to_owned())))?;
        }
        Ok(existed)
    });
    finish(result, || {
        format!("remove a secret of service `{service}` of app `{app}`")
    })
}

pub(crate) fn secret_names(
    conn: &Connection,
    app: &str,
    service: &str,
) -> Result<Vec<(String, u64)>, StoreError> {
    let result = (|| {
        let mut stmt = conn.prepare_cached(
            "SELECT name, updated_at FROM secrets WHERE app = ?1 AND service = ?2 ORDER BY name",
        )?;
        let rows = stmt.query_map([app, service], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?.max(0) as u64,
            ))
        })?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Failure::Db)
    })();
    finish(result, || {
        format!("list the secrets of service `{service}` of app `{app}`")
    })
}

pub(crate) fn secrets(
    conn: &Connection,
    app: &str,
    service: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let result = (|| {
        let mut stmt = conn.prepare_cached(
            "SELECT name, value FROM secrets WHERE app = ?1 AND service = ?2 ORDER BY name",
        )?;
        let rows = stmt.query_map([app, service], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Failure::Db)
    })();
    finish(result, || {
        format!("read the secrets of service `{service}` of app `{app}`")
    })
}

pub(crate) fn purge_secrets(conn: &mut Connection, app: &str) -> Result<(), StoreError> {
    let result = write(conn, |tx| {
        if tx.execute("DELETE FROM secrets WHERE app = ?1", [app])? > 0 {
            record(tx, app, &ChangeKind::Secrets(None))?;
        }
        Ok(())
    });
    finish(result, || format!("remove the secrets of app `{app}`"))
}

/// Records a change inside the transaction making it; an app change becomes the app's
/// generation. Only the newest [`DEFAULT_CHANGE_HISTORY`] changes are kept.
fn record(tx: &Transaction<'_>, app: &str, kind: &ChangeKind) -> Result<u64, Failure> {
    let (kind_text, service) = match kind {
        ChangeKind::App => ("app", None),
        ChangeKind::Secrets(service) => ("secrets", service.as_deref()),
    };
    tx.prepare_cached("INSERT INTO changes (app, kind, service) VALUES (?1, ?2, ?3)")?
        .execute(params![app, kind_text, service])?;
    let seq = tx.last_insert_rowid();
    tx.prepare_cached("DELETE FROM changes WHERE seq <= ?1")?
        .execute([seq - DEFAULT_CHANGE_HISTORY as i64])?;
    if *kind == ChangeKind::App {
        tx.prepare_cached("UPDATE apps SET generation = ?2 WHERE name = ?1")?
            .execute(params![app, seq])?;
    }
    Ok(seq.max(0) as u64)
}

/// The sequence number of the latest change, 0 before the first.
pub(crate) fn latest_change(conn: &Connection) -> Result<u64, StoreError> {
    let result = conn
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |row| {
            row.get::<_, i64>(0)
        })
        .map_err(Failure::Db);
    finish(result.map(|seq| seq.max(0) as u64), || {
        "read the latest change".to_owned()
    })
}

/// The changes after `after`, oldest first.
pub(crate) fn changes(conn: &mut Connection, after: u64) -> Result<ChangeBatch, StoreError> {
    let result = (|| {
        // One snapshot, so the oldest kept change and the rows agree.
        let tx = conn.transaction()?;
        let oldest: Option<i64> =
            tx.query_row("SELECT MIN(seq) FROM changes", [], |row| row.get(0))?;
        let after_sql = i64::try_from(after).unwrap_or(i64::MAX);
        let mut stmt = tx.prepare_cached(
            "SELECT seq, app, kind, service FROM changes WHERE seq > ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([after_sql], |row| {
            let kind: String = row.get(2)?;
            let service: Option<String> = row.get(3)?;
            Ok(Change {
                seq: row.get::<_, i64>(0)?.max(0) as u64,
                app: row.get(1)?,
                kind: if kind == "app" {
                    ChangeKind::App
                } else {
                    ChangeKind::Secrets(service)
                },
            })
        })?;
        let changes = rows.collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        tx.finish()?;
        Ok(ChangeBatch {
            last: changes.last().map_or(after, |c| c.seq),
            // The change right after `after` is gone: some were forgotten.
            gap: oldest.is_some_and(|oldest| oldest > after_sql.saturating_add(1)),
            changes,
        })
    })();
    finish(result, || "read the changes".to_owned())
}
