//! Each service's quotas on async invocations, which outside clients can create at will and
//! which the node stores until they run: a rate (a token bucket holding one second's
//! worth) and the bytes its queued invocations hold in the journal (dead letters are
//! bounded by the journal's own retention, so failing invocations cannot lock a service
//! out of new ones).
//!
//! The stored bytes are measured in the journal at most every [`MEASURE_EVERY`]. The
//! estimate is that measurement, plus what was stored since it, plus what is admitted and
//! still being stored (a measurement may or may not see those, so they are always added):
//! it errs towards refusing, never towards admitting more than fits.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::StatusCode;
use tessera_events::EventError;
use tessera_gateway::AsyncRefusal;

/// How long a measurement of the stored bytes is trusted.
const MEASURE_EVERY: Duration = Duration::from_millis(250);

/// The settings a quota was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaSettings {
    /// Invocations accepted per second.
    pub(crate) rate: u32,
    /// Bytes of queued invocations.
    pub(crate) stored: u64,
}

pub(crate) struct AsyncQuota {
    settings: QuotaSettings,
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    refilled: Instant,
    /// The journal's count and when it was taken.
    measured: Option<(Instant, u64)>,
    /// Bytes stored (committed) since the measurement.
    stored_since: u64,
    /// Bytes admitted and not yet stored or given back.
    in_flight: u64,
}

/// Why an invocation was not admitted.
#[derive(Debug)]
pub(crate) enum QuotaRefusal {
    Rate { rate: u32, retry_after: Duration },
    Stored { used: u64, size: u64, limit: u64 },
    Journal(EventError),
}

impl QuotaRefusal {
    pub(crate) fn into_async_refusal(self, service: &str) -> AsyncRefusal {
        match self {
            QuotaRefusal::Rate { rate, retry_after } => AsyncRefusal {
                retry_after: Some(retry_after),
                ..AsyncRefusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate_limited",
                    format!(
                        "service `{service}` accepts at most {rate} async invocations a second (its `async.rate`)"
                    ),
                )
            },
            QuotaRefusal::Stored { used, size, limit } => AsyncRefusal::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "quota_exceeded",
                format!(
                    "service `{service}`'s queued async invocations hold {used} bytes; \
                     {size} more would pass its `async.stored` quota of {limit} bytes"
                ),
            ),
            QuotaRefusal::Journal(e) => AsyncRefusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "async_unavailable",
                e.to_string(),
            ),
        }
    }
}

impl AsyncQuota {
    pub(crate) fn new(settings: QuotaSettings) -> AsyncQuota {
        AsyncQuota {
            settings,
            state: Mutex::new(State {
                tokens: f64::from(settings.rate),
                refilled: Instant::now(),
                measured: None,
                stored_since: 0,
                in_flight: 0,
            }),
        }
    }

    pub(crate) fn settings(&self) -> QuotaSettings {
        self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits an invocation of `size` bytes, or says why not. `measure` reads the bytes
    /// the journal holds for the service. The reservation is given back unless committed.
    pub(crate) fn admit(
        self: &Arc<Self>,
        size: u64,
        measure: impl FnOnce() -> Result<u64, EventError>,
    ) -> Result<Reservation, QuotaRefusal> {
        let mut state = self.lock();
        let now = Instant::now();
        let fresh = state
            .measured
            .filter(|(at, _)| now.duration_since(*at) < MEASURE_EVERY);
        let measured = match fresh {
            Some((_, bytes)) => bytes,
            None => {
                let bytes = measure().map_err(QuotaRefusal::Journal)?;
                state.measured = Some((now, bytes));
                state.stored_since = 0;
                bytes
            }
        };
        let used = measured
            .saturating_add(state.stored_since)
            .saturating_add(state.in_flight);
        if used.saturating_add(size) > self.settings.stored {
            return Err(QuotaRefusal::Stored {
                used,
                size,
                limit: self.settings.stored,
            });
        }
        let rate = f64::from(self.settings.rate);
        let elapsed = now.duration_since(state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * rate).min(rate);
        state.refilled = now;
        if state.tokens < 1.0 {
            return Err(QuotaRefusal::Rate {
                rate: self.settings.rate,
                retry_after: Duration::from_secs_f64((1.0 - state.tokens) / rate),
            });
        }
        state.tokens -= 1.0;
        state.in_flight = state.in_flight.saturating_add(size);
        Ok(Reservation {
            quota: self.clone(),
            size,
            committed: false,
        })
    }
}

/// Bytes counted against a quota for an invocation being stored; given back if it never is.
pub(crate) struct Reservation {
    quota: Arc<AsyncQuota>,
    size: u64,
    committed: bool,
}

impl Reservation {
    /// The invocation is stored: its bytes count as stored until the next measurement.
    pub(crate) fn commit(mut self) {
        self.committed = true;
        let mut state = self.quota.lock();
        state.stored_since = state.stored_since.saturating_add(self.size);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.quota.lock();
        state.in_flight = state.in_flight.saturating_sub(self.size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(rate: u32, stored: u64) -> Arc<AsyncQuota> {
        Arc::new(AsyncQuota::new(QuotaSettings { rate, stored }))
    }

    #[test]
    fn the_rate_allows_a_seconds_burst_then_refuses_with_a_retry_time() {
        let q = quota(3, 1 << 30);
        for _ in 0..3 {
            q.admit(10, || Ok(0)).unwrap().commit();
        }
        match q.admit(10, || Ok(0)) {
            Err(QuotaRefusal::Rate { rate, retry_after }) => {
                assert_eq!(rate, 3);
                assert!(retry_after <= Duration::from_millis(334), "{retry_after:?}");
            }
            other => panic!("expected a rate refusal, got {:?}", other.err()),
        }
    }

    #[test]
    fn stored_bytes_count_what_was_admitted_since_the_last_measurement() {
        let q = quota(1000, 100);
        q.admit(40, || Ok(30)).unwrap().commit();
        // Measured 30 a moment ago, 40 stored since: 31 more do not fit.
        assert!(matches!(
            q.admit(31, || panic!("measured again too soon")),
            Err(QuotaRefusal::Stored {
                used: 70,
                size: 31,
                limit: 100
            })
        ));
        // An invocation that was never stored gives its bytes back.
        drop(q.admit(30, || Ok(0)).unwrap());
        q.admit(30, || Ok(0)).unwrap().commit();
    }

    #[test]
    fn invocations_still_being_stored_count_across_a_new_measurement() {
        let q = quota(1000, 100);
        let pending = q.admit(60, || Ok(0)).unwrap();
        // A fresh measurement that cannot see the pending 60 yet.
        q.lock().measured = None;
        assert!(matches!(
            q.admit(50, || Ok(0)),
            Err(QuotaRefusal::Stored { used: 60, .. })
        ));
        drop(pending);
        q.admit(50, || Ok(0)).unwrap().commit();
    }

    #[test]
    fn a_failed_measurement_refuses_rather_than_admits() {
        let q = quota(10, 100);
        assert!(matches!(
            q.admit(1, || Err(EventError::Closed)),
            Err(QuotaRefusal::Journal(_))
        ));
    }
}
