//! The rules of the control state that need no storage: a deploy request validated on its
//! own, a traffic split checked against a service, the revision a rollback goes to, and
//! the route check run over the state a change would leave. Every backend applies these
//! same functions inside its own transaction, so their answers cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};

use crate::{AppState, DEFAULT_KEEP, DeployOptions, ServiceDeploy, ServiceState, StoreError};

/// A deploy request, validated as far as it can be without the stored state.
pub struct DeployPlan<'a> {
    pub app: &'a str,
    /// The services to deploy, sorted by name.
    pub selected: Vec<&'a ServiceDeploy>,
    /// Whether the app's services that the deploy does not name are removed.
    pub whole_app: bool,
    /// The canary share of each new revision, when the deploy is a canary.
    pub traffic: Option<u8>,
    /// How many revisions each deployed service keeps (never 0).
    pub keep: usize,
    pub if_generation: Option<u64>,
}

impl<'a> DeployPlan<'a> {
    pub fn new(
        app: &'a str,
        services: &'a [ServiceDeploy],
        options: &DeployOptions,
    ) -> Result<Self, StoreError> {
        // An app without services cannot serve anything; removing one is `remove_app`.
        if services.is_empty() {
            return Err(StoreError::EmptyDeploy(app.to_owned()));
        }
        let mut by_name = BTreeMap::new();
        for service in services {
            if by_name.insert(service.name.as_str(), service).is_some() {
                return Err(StoreError::DuplicateService {
                    app: app.to_owned(),
                    service: service.name.clone(),
                });
            }
        }
        if let Some(share) = options.traffic
            && !(1..=99).contains(&share)
        {
            return Err(StoreError::InvalidTraffic(format!(
                "canary share for app `{app}` must be between 1 and 99 percent, not {share}"
            )));
        }
        let selected = if options.only.is_empty() {
            by_name.into_values().collect()
        } else {
            let only: BTreeSet<&str> = options.only.iter().map(String::as_str).collect();
            only.into_iter()
                .map(|name| {
                    by_name
                        .get(name)
                        .copied()
                        .ok_or_else(|| StoreError::NotInDeploy {
                            app: app.to_owned(),
                            service: name.to_owned(),
                        })
                })
                .collect::<Result<_, _>>()?
        };
        Ok(DeployPlan {
            app,
            selected,
            whole_app: options.only.is_empty(),
            traffic: options.traffic,
            if_generation: options.if_generation,
            keep: if options.keep == 0 {
                DEFAULT_KEEP
            } else {
                options.keep
            },
        })
    }

    /// Refuses the deploy if the app is no longer at the generation it was prepared
    /// against (`current` is the app's generation now, 0 when absent).
    pub fn check_generation(&self, current: u64) -> Result<(), StoreError> {
        match self.if_generation {
            Some(expected) if expected != current => Err(StoreError::Conflict {
                app: self.app.to_owned(),
                expected,
                found: current,
            }),
            _ => Ok(()),
        }
    }
}

/// Checks a traffic split for a service: known revisions, each once, shares that add up to
/// 100.
pub fn validate_weights(
    app: &str,
    state: &ServiceState,
    weights: &[(u32, u8)],
) -> Result<(), StoreError> {
    let invalid = |what: String| {
        StoreError::InvalidTraffic(format!("service `{}` of app `{app}`: {what}", state.name))
    };
    let mut seen = BTreeSet::new();
    let mut sum = 0u32;
    for &(id, percent) in weights {
        if state.revision(id).is_none() {
            return Err(invalid(format!("there is no revision {id}")));
        }
        if !seen.insert(id) {
            return Err(invalid(format!("revision {id} is given more than once")));
        }
        if percent > 100 {
            return Err(invalid(format!(
                "revision {id} cannot have {percent} percent of the traffic"
            )));
        }
        sum += u32::from(percent);
    }
    if sum != 100 {
        return Err(invalid(format!(
            "the shares add up to {sum} percent, not 100"
        )));
    }
    Ok(())
}

/// The revision a rollback sends all traffic to: `to` if the service has it, else the
/// newest revision older than the primary.
pub fn rollback_target(
    app: &str,
    state: &ServiceState,
    to: Option<u32>,
) -> Result<u32, StoreError> {
    match to {
        Some(id) => state
            .revision(id)
            .map(|r| r.id)
            .ok_or_else(|| StoreError::NoSuchRevision {
                app: app.to_owned(),
                service: state.name.clone(),
                revision: id,
            }),
        None => {
            // Every service has a primary revision; were one ever without traffic,
            // rolling back to its newest revision is the repair that makes sense.
            let primary = state.primary().map_or(u32::MAX, |r| r.id);
            state
                .revisions
                .iter()
                .rev()
                .map(|r| r.id)
                .find(|id| *id < primary)
                .ok_or_else(|| StoreError::NoEarlierRevision {
                    app: app.to_owned(),
                    service: state.name.clone(),
                    primary,
                })
        }
    }
}

/// Refuses a change if a route of a claimant (a service of `app` whose primary revision
/// may have changed) is also a current route of any other service. `apps` is every app as
/// the change would leave it; current routes are those of each service's primary revision.
pub fn check_routes(apps: &[&AppState], app: &str, claimants: &[&str]) -> Result<(), StoreError> {
    if claimants.is_empty() {
        return Ok(());
    }
    let mut owners: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for a in apps {
        for s in &a.services {
            if let Some(primary) = s.primary() {
                for route in &primary.config.routes {
                    owners
                        .entry(route.as_str())
                        .or_default()
                        .push((a.name.as_str(), s.name.as_str()));
                }
            }
        }
    }
    let is_claimant = |a: &str, s: &str| a == app && claimants.contains(&s);
    for &service in claimants {
        let primary = apps
            .iter()
            .find(|a| a.name == app)
            .and_then(|a| a.services.iter().find(|s| s.name == service))
            .and_then(ServiceState::primary);
        let Some(primary) = primary else { continue };
        for route in &primary.config.routes {
            let others: Vec<(&str, &str)> = owners[route.as_str()]
                .iter()
                .copied()
                .filter(|&(a, s)| (a, s) != (app, service))
                .collect();
            // Blame a service this change did not touch if there is one: it is the one
            // that held the route before.
            let holder = others
                .iter()
                .find(|&&(a, s)| !is_claimant(a, s))
                .or(others.first());
            if let Some(&(holder_app, holder_service)) = holder {
                return Err(StoreError::RouteConflict {
                    route: route.to_string(),
                    app: holder_app.to_owned(),
                    service: holder_service.to_owned(),
                });
            }
        }
    }
    Ok(())
}
