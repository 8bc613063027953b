//! Calls between services of one app (`http://<service>.internal/...`), served in-process
//! through the callee's `Target` (so its limits and revisions apply), with a circuit
//! breaker per caller and callee: after repeated failures the caller gets `503` at once,
//! saying so, instead of piling more work on a callee that keeps failing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tessera_gateway::Failure;
use tessera_runtime::{CallFuture, Caller, InternalRouter, platform_response};

use crate::events::TargetMap;

/// Consecutive failures (5xx answers, traps, timeouts) that open a circuit.
pub const TRIP_AFTER: u32 = 5;
/// How long an open circuit refuses calls before letting one trial call through.
pub const OPEN_FOR: Duration = Duration::from_secs(5);

/// The node's router for internal calls.
pub(crate) struct Router {
    /// The node's serving targets, kept current by every rebuild.
    targets: Arc<ArcSwap<TargetMap>>,
    breakers: Arc<Mutex<HashMap<BreakerKey, Breaker>>>,
}

/// (app, caller, callee)
type BreakerKey = (Arc<str>, Arc<str>, String);

#[derive(Default)]
struct Breaker {
    failures: u32,
    /// While set and in the future, calls are refused.
    open_until: Option<Instant>,
    /// A trial call is in progress after the open period (half-open).
    trial: bool,
}

/// What the breaker says about a call about to be made.
enum Admission {
    Go,
    Refuse(Duration),
}

impl Router {
    pub(crate) fn new(targets: Arc<ArcSwap<TargetMap>>) -> Router {
        Router {
            targets,
            breakers: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

fn admit(breakers: &Mutex<HashMap<BreakerKey, Breaker>>, key: &BreakerKey) -> Admission {
    let mut breakers = breakers.lock().unwrap_or_else(|e| e.into_inner());
    let Some(breaker) = breakers.get_mut(key) else {
        return Admission::Go;
    };
    match breaker.open_until {
        None => Admission::Go,
        Some(until) => {
            let now = Instant::now();
            if now < until {
                Admission::Refuse(until - now)
            } else if breaker.trial {
                // One trial at a time; the others wait for its verdict.
                Admission::Refuse(Duration::from_secs(1))
            } else {
                breaker.trial = true;
                Admission::Go
            }
        }
    }
}

fn record(breakers: &Mutex<HashMap<BreakerKey, Breaker>>, key: BreakerKey, failed: bool) {
    let mut breakers = breakers.lock().unwrap_or_else(|e| e.into_inner());
    if !failed {
        breakers.remove(&key);
        return;
    }
    let breaker = breakers.entry(key.clone()).or_default();
    breaker.failures += 1;
    let trial_failed = std::mem::take(&mut breaker.trial);
    if trial_failed || breaker.failures >= TRIP_AFTER {
        if breaker.open_until.is_none() || trial_failed {
            tracing::warn!(app = %key.0, caller = %key.1, callee = %key.2, failures = breaker.failures, "circuit opened: internal calls refused for {OPEN_FOR:?}");
        }
        breaker.open_until = Some(Instant::now() + OPEN_FOR);
    }
}

/// The answer to a call refused by an open circuit: 503 `circuit_open`, marked with
/// `x-tessera-circuit: open`, and when to try again.
fn circuit_open(
    caller: &str,
    callee: &str,
    wait: Duration,
) -> http::Response<tessera_runtime::CallBody> {
    let secs = wait.as_secs().max(1);
    let mut response = platform_response(
        503,
        "circuit_open",
        &format!(
            "calls from `{caller}` to `{callee}` are paused after repeated failures; retry in {secs}s"
        ),
    );
    let headers = response.headers_mut();
    headers.insert(
        tessera_runtime::headers::CIRCUIT,
        http::HeaderValue::from_static("open"),
    );
    headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    response
}

impl InternalRouter for Router {
    fn call(
        &self,
        caller: Caller,
        callee: &str,
        request: http::Request<tessera_runtime::ResponseBody>,
    ) -> CallFuture {
        let target = self
            .targets
            .load()
            .get(&(caller.app.to_string(), callee.to_string()))
            .cloned();
        let breakers = self.breakers.clone();
        let key: BreakerKey = (
            caller.app.clone(),
            caller.service.clone(),
            callee.to_string(),
        );
        let callee = callee.to_string();
        Box::pin(async move {
            let Some(target) = target else {
                return Ok(platform_response(
                    404,
                    "no_such_service",
                    &format!("app `{}` has no serving service `{callee}`", caller.app),
                ));
            };
            if let Admission::Refuse(wait) = admit(&breakers, &key) {
                return Ok(circuit_open(&caller.service, &callee, wait));
            }
            let Some(backend) = target.pick() else {
                return Ok(platform_response(
                    503,
                    "no_revision",
                    &format!("service `{callee}` has no revision taking traffic"),
                ));
            };
            let response = match tessera_gateway::dispatch(
                &target,
                backend,
                request,
                &caller.request_id,
            )
            .await
            {
                Ok(response) => {
                    record(&breakers, key, response.status().is_server_error());
                    response
                }
                Err(failure) => {
                    // A busy callee refused the call: that is back-pressure, not a fault.
                    if !matches!(failure, Failure::Rejected(_)) {
                        record(&breakers, key, true);
                    }
                    let (status, code) = failure.status_and_code();
                    let mut response =
                        platform_response(status.as_u16(), code, &failure.to_string());
                    if failure.is_transient() {
                        response.headers_mut().insert(
                            http::header::RETRY_AFTER,
                            http::HeaderValue::from_static("1"),
                        );
                    }
                    response
                }
            };
            Ok(response)
        })
    }
}
