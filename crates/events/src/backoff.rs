//! Retry delays: exponential backoff, capped, with jitter.

use std::time::Duration;

/// The delay after failed attempt `attempt` (counted from 1), before jitter:
/// `min(max_backoff, backoff * 2^(attempt-1))`.
pub fn retry_delay(attempt: u32, backoff: Duration, max_backoff: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(63);
    let delay = backoff
        .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
        .unwrap_or(Duration::MAX);
    delay.min(max_backoff)
}

/// A delay drawn uniformly from `[delay/2, delay]`, so consumers that failed together do
/// not all retry at the same moment.
pub fn jitter(delay: Duration) -> Duration {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(ms / 2..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_per_attempt_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(retry_delay(1, s(1), s(60)), s(1));
        assert_eq!(retry_delay(2, s(1), s(60)), s(2));
        assert_eq!(retry_delay(3, s(1), s(60)), s(4));
        assert_eq!(retry_delay(7, s(1), s(60)), s(60));
        assert_eq!(retry_delay(1000, s(1), s(60)), s(60));
        assert_eq!(retry_delay(0, s(1), s(60)), s(1));
    }

    #[test]
    fn jitter_stays_between_half_and_full_delay() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(1000));
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_millis(1000),
                "{d:?}"
            );
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
