//! The control log's documents and the projection every node applies them to.
//!
//! Each log message carries the whole new document of one subject: an app (its services,
//! retained revisions, traffic, and the last revision id of every service it ever had) or
//! an app's secrets. So the newest message of each subject alone rebuilds the state, and
//! older versions may be dropped by the stream's per-subject limit without losing
//! anything. A transaction is computed here, against the projection, into the document it
//! writes; the log's expected-last-sequence check makes sure the projection was current.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use tessera_model::wire::RevisionJson;
use tessera_store::rules::{self, DeployPlan};
use tessera_store::{
    AppState, Change, ChangeBatch, ChangeKind, DEFAULT_CHANGE_HISTORY, DeployOutcome, Revision,
    ServiceState, StoreError,
};

use crate::encode_token;

/// One log message: which operation wrote it (for retries), from which node, and the
/// document.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub op: String,
    pub node: String,
    #[serde(flatten)]
    pub doc: Doc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Doc {
    /// An app as it now is; `removed` apps keep only their revision counters.
    App {
        app: String,
        removed: bool,
        services: Vec<ServiceDoc>,
        /// The last revision id each service of the app ever had, so ids are never reused
        /// (not after pruning, nor after the app is removed and deployed again).
        last_ids: BTreeMap<String, u32>,
    },
    /// Every secret of an app, after a change to those of `changed` (`None`: all purged).
    Secrets {
        app: String,
        changed: Option<String>,
        services: BTreeMap<String, BTreeMap<String, SecretDoc>>,
    },
}

impl Doc {
    /// The log subject this document is the newest version of.
    pub(crate) fn subject(&self) -> String {
        match self {
            Doc::App { app, .. } => format!("tessera.control.app.{}", encode_token(app.as_bytes())),
            Doc::Secrets { app, .. } => {
                format!("tessera.control.secrets.{}", encode_token(app.as_bytes()))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ServiceDoc {
    name: String,
    revisions: Vec<RevisionDoc>,
    traffic: Vec<(u32, u8)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RevisionDoc {
    id: u32,
    sha256: String,
    created_at: u64,
    config: RevisionJson,
    #[serde(default)]
    migrations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SecretDoc {
    value: String,
    updated_at: u64,
}

type Secrets = BTreeMap<String, BTreeMap<String, SecretDoc>>;

/// What a transaction computed: the document to write (none when nothing changes) and
/// the answer to give once it is written.
pub(crate) struct Planned<T> {
    pub doc: Option<Doc>,
    pub value: T,
}

/// The control state as the log has it up to `last`.
#[derive(Default)]
pub(crate) struct Projection {
    /// The stream sequence of the last message applied.
    pub last: u64,
    apps: BTreeMap<String, AppState>,
    last_ids: BTreeMap<String, BTreeMap<String, u32>>,
    secrets: BTreeMap<String, Secrets>,
    /// The most recent changes, oldest first.
    history: VecDeque<Change>,
    /// Changes at or before this sequence may be missing from `history`.
    pub floor: u64,
    /// Recent operation ids with the sequence that committed them.
    ops: VecDeque<(String, u64)>,
}

/// How many operation ids the projection remembers for callers retrying after a lost
/// acknowledgement.
const RECENT_OPS: usize = 1024;

impl Projection {
    /// Applies the log message at `seq`. A message this release cannot read is skipped
    /// (every node skips it alike) and reported.
    pub(crate) fn apply(&mut self, seq: u64, payload: &[u8]) -> Result<(), String> {
        if seq <= self.last {
            return Ok(());
        }
        self.last = seq;
        let entry: Entry = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        self.ops.push_back((entry.op, seq));
        if self.ops.len() > RECENT_OPS {
            self.ops.pop_front();
        }
        let change = match entry.doc {
            Doc::App {
                app,
                removed,
                services,
                last_ids,
            } => {
                self.last_ids.insert(app.clone(), last_ids);
                if removed {
                    self.apps.remove(&app);
                } else {
                    let services = services
                        .into_iter()
                        .map(|s| service_state(&app, s))
                        .collect::<Result<_, _>>()?;
                    self.apps.insert(
                        app.clone(),
                        AppState {
                            name: app.clone(),
                            generation: seq,
                            services,
                        },
                    );
                }
                Change {
                    seq,
                    app,
                    kind: ChangeKind::App,
                }
            }
            Doc::Secrets {
                app,
                changed,
                services,
            } => {
                if services.is_empty() {
                    self.secrets.remove(&app);
                } else {
                    self.secrets.insert(app.clone(), services);
                }
                Change {
                    seq,
                    app,
                    kind: ChangeKind::Secrets(changed),
                }
            }
        };
        self.history.push_back(change);
        while self.history.len() as u64 > DEFAULT_CHANGE_HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.floor = self.floor.max(old.seq);
            }
        }
        Ok(())
    }

    /// The sequence that committed operation `op`, if it is among the recent ones.
    pub(crate) fn committed(&self, op: &str) -> Option<u64> {
        self.ops
            .iter()
            .find(|(id, _)| id == op)
            .map(|(_, seq)| *seq)
    }

    pub(crate) fn changes(&self, after: u64) -> ChangeBatch {
        let changes: Vec<Change> = self
            .history
            .iter()
            .filter(|c| c.seq > after)
            .cloned()
            .collect();
        let gap = after < self.floor;
        ChangeBatch {
            last: changes
                .last()
                .map_or(if gap { self.last } else { after }, |c| c.seq),
            gap,
            changes,
        }
    }

    pub(crate) fn apps(&self) -> Vec<AppState> {
        self.apps.values().cloned().collect()
    }

    pub(crate) fn app(&self, name: &str) -> Option<AppState> {
        self.apps.get(name).cloned()
    }

    fn service(&self, app: &str, service: &str) -> Result<&ServiceState, StoreError> {
        let state = self
            .apps
            .get(app)
            .ok_or_else(|| StoreError::NoSuchApp(app.to_owned()))?;
        state
            .services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| StoreError::NoSuchService {
                app: app.to_owned(),
                service: service.to_owned(),
            })
    }

    // --- Transactions ---

    // Long because a deploy is one transaction whose steps read what the previous ones
    // wrote (revisions created, canary split, removals, route check, pruning).
    pub(crate) fn deploy(
        &self,
        plan: &DeployPlan<'_>,
        now: u64,
    ) -> Result<Planned<DeployOutcome>, StoreError> {
        let app = plan.app;
        let current = self.apps.get(app);
        plan.check_generation(current.map_or(0, |a| a.generation))?;
        let before = current.map(|a| a.services.clone());
        let mut services = before.clone().unwrap_or_default();
        let mut last_ids = self.last_ids.get(app).cloned().unwrap_or_default();
        let mut outcome = DeployOutcome {
            app: app.to_owned(),
            created: Vec::new(),
            unchanged: Vec::new(),
            removed: Vec::new(),
        };
        for deploy in &plan.selected {
            let name = deploy.name.as_str();
            let index = match services.iter().position(|s| s.name == name) {
                Some(index) => index,
                None => {
                    services.push(ServiceState {
                        name: name.to_owned(),
                        revisions: Vec::new(),
                        traffic: Vec::new(),
                    });
                    services.len() - 1
                }
            };
            let service = &mut services[index];
            let primary = service.primary().cloned();
            if let Some(primary) = &primary
                && primary.sha256 == deploy.sha256
                && primary.config == deploy.config
            {
                outcome.unchanged.push(name.to_owned());
                continue;
            }
            let id = last_ids.get(name).copied().unwrap_or(0) + 1;
            last_ids.insert(name.to_owned(), id);
            service.revisions.push(Revision {
                id,
                sha256: deploy.sha256.clone(),
                config: deploy.config.clone(),
                created_at: now,
            });
            // Only the new revision and the old primary share traffic: an earlier canary
            // that is neither is superseded by this one.
            service.traffic = match (plan.traffic, &primary) {
                (Some(share), Some(primary)) => vec![(primary.id, 100 - share), (id, share)],
                _ => vec![(id, 100)],
            };
            outcome.created.push((name.to_owned(), id));
        }
        if plan.whole_app {
            services.retain(|s| {
                let keep = plan.selected.iter().any(|d| d.name == s.name);
                if !keep {
                    outcome.removed.push(s.name.clone());
                }
                keep
            });
        }
        outcome.removed.sort();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let claimants: Vec<&str> = outcome.created.iter().map(|(s, _)| s.as_str()).collect();
        self.check_routes(app, &services, &claimants)?;
        for deploy in &plan.selected {
            if let Some(service) = services.iter_mut().find(|s| s.name == deploy.name) {
                prune(service, plan.keep);
            }
        }
        let changed = before.as_ref() != Some(&services);
        Ok(Planned {
            doc: changed.then(|| app_doc(app, &services, last_ids)),
            value: outcome,
        })
    }

    pub(crate) fn set_traffic(
        &self,
        app: &str,
        service: &str,
        weights: &[(u32, u8)],
    ) -> Result<Planned<ServiceState>, StoreError> {
        let state = self.service(app, service)?;
        rules::validate_weights(app, state, weights)?;
        let mut weights: Vec<(u32, u8)> = weights.iter().copied().filter(|(_, p)| *p > 0).collect();
        weights.sort();
        self.with_traffic(app, service, weights)
    }

    pub(crate) fn rollback(
        &self,
        app: &str,
        service: &str,
        to: Option<u32>,
    ) -> Result<Planned<ServiceState>, StoreError> {
        let state = self.service(app, service)?;
        let target = rules::rollback_target(app, state, to)?;
        self.with_traffic(app, service, vec![(target, 100)])
    }

    /// The app with one service's traffic replaced, checked for route conflicts.
    fn with_traffic(
        &self,
        app: &str,
        service: &str,
        weights: Vec<(u32, u8)>,
    ) -> Result<Planned<ServiceState>, StoreError> {
        let mut services = self.apps[app].services.clone();
        let state = services
            .iter_mut()
            .find(|s| s.name == service)
            .expect("the service was found above");
        state.traffic = weights;
        let value = state.clone();
        // The primary revision may change, and with it the service's routes.
        self.check_routes(app, &services, &[service])?;
        let last_ids = self.last_ids.get(app).cloned().unwrap_or_default();
        Ok(Planned {
            doc: Some(app_doc(app, &services, last_ids)),
            value,
        })
    }

    pub(crate) fn remove_app(&self, app: &str) -> Planned<bool> {
        let existed = self.apps.contains_key(app);
        Planned {
            doc: existed.then(|| Doc::App {
                app: app.to_owned(),
                removed: true,
                services: Vec::new(),
                last_ids: self.last_ids.get(app).cloned().unwrap_or_default(),
            }),
            value: existed,
        }
    }

    /// Checks routes over every app as it would be with `app`'s services replaced.
    fn check_routes(
        &self,
        app: &str,
        services: &[ServiceState],
        claimants: &[&str],
    ) -> Result<(), StoreError> {
        if claimants.is_empty() {
            return Ok(());
        }
        let changed = AppState {
            name: app.to_owned(),
            generation: 0,
            services: services.to_vec(),
        };
        let apps: Vec<&AppState> = self
            .apps
            .values()
            .filter(|a| a.name != app)
            .chain(std::iter::once(&changed))
            .collect();
        rules::check_routes(&apps, app, claimants)
    }

    // --- Secrets ---

    pub(crate) fn set_secret(
        &self,
        app: &str,
        service: &str,
        name: &str,
        value: &str,
        now: u64,
    ) -> Planned<()> {
        let mut all = self.secrets.get(app).cloned().unwrap_or_default();
        all.entry(service.to_owned()).or_default().insert(
            name.to_owned(),
            SecretDoc {
                value: value.to_owned(),
                updated_at: now,
            },
        );
        Planned {
            doc: Some(secrets_doc(app, Some(service), all)),
            value: (),
        }
    }

    pub(crate) fn delete_secret(&self, app: &str, service: &str, name: &str) -> Planned<bool> {
        let mut all = self.secrets.get(app).cloned().unwrap_or_default();
        let existed = all
            .get_mut(service)
            .is_some_and(|names| names.remove(name).is_some());
        all.retain(|_, names| !names.is_empty());
        Planned {
            doc: existed.then(|| secrets_doc(app, Some(service), all)),
            value: existed,
        }
    }

    pub(crate) fn purge_secrets(&self, app: &str) -> Planned<()> {
        Planned {
            doc: self
                .secrets
                .contains_key(app)
                .then(|| secrets_doc(app, None, BTreeMap::new())),
            value: (),
        }
    }

    pub(crate) fn secrets(&self, app: &str, service: &str) -> Vec<(String, String, u64)> {
        self.secrets
            .get(app)
            .and_then(|all| all.get(service))
            .map(|names| {
                names
                    .iter()
                    .map(|(name, s)| (name.clone(), s.value.clone(), s.updated_at))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Deletes the oldest revisions beyond `keep`, skipping any that carry traffic.
fn prune(service: &mut ServiceState, keep: usize) {
    let mut excess = service.revisions.len().saturating_sub(keep);
    let traffic = service.traffic.clone();
    service.revisions.retain(|r| {
        if excess > 0 && !traffic.iter().any(|(id, _)| *id == r.id) {
            excess -= 1;
            false
        } else {
            true
        }
    });
}

fn app_doc(app: &str, services: &[ServiceState], last_ids: BTreeMap<String, u32>) -> Doc {
    Doc::App {
        app: app.to_owned(),
        removed: false,
        services: services
            .iter()
            .map(|s| ServiceDoc {
                name: s.name.clone(),
                revisions: s
                    .revisions
                    .iter()
                    .map(|r| RevisionDoc {
                        id: r.id,
                        sha256: r.sha256.clone(),
                        created_at: r.created_at,
                        config: RevisionJson::from(&r.config),
                        migrations: r.config.migrations.clone(),
                    })
                    .collect(),
                traffic: s.traffic.clone(),
            })
            .collect(),
        last_ids,
    }
}

fn secrets_doc(app: &str, changed: Option<&str>, services: Secrets) -> Doc {
    Doc::Secrets {
        app: app.to_owned(),
        changed: changed.map(str::to_owned),
        services,
    }
}

fn service_state(app: &str, doc: ServiceDoc) -> Result<ServiceState, String> {
    let revisions = doc
        .revisions
        .into_iter()
        .map(|r| {
            let config = r.config.into_config(r.migrations).map_err(|e| {
                format!(
                    "app `{app}`, service `{}`, revision {}: {e}",
                    doc.name, r.id
                )
            })?;
            Ok(Revision {
                id: r.id,
                sha256: r.sha256,
                config,
                created_at: r.created_at,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(ServiceState {
        name: doc.name,
        revisions,
        traffic: doc.traffic,
    })
}
