//! Backoff between retried requests: full jitter, and Devo's `Retry-After` when it asks for longer.

use std::time::Duration;

use super::RetryPolicy;

/// How long to sleep before retry number `retry` (0 for the first retry).
pub(super) fn backoff(policy: &RetryPolicy, retry: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = policy.base_delay.saturating_mul(2u32.saturating_pow(retry)).min(policy.max_delay);
    let jitter = Duration::from_millis(rand::random_range(0..=ceiling.as_millis() as u64));
    jitter.max(retry_after.unwrap_or_default())
}

/// A `Retry-After` header: delay-seconds or an HTTP date.
pub(super) fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.to_utc() - now).to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 5, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) }
    }

    #[test]
    fn the_jitter_stays_under_an_exponential_ceiling_capped_by_max_delay() {
        for _ in 0..200 {
            assert!(backoff(&policy(), 0, None) <= Duration::from_millis(100));
            assert!(backoff(&policy(), 2, None) <= Duration::from_millis(400));
            assert!(backoff(&policy(), 30, None) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        for _ in 0..50 {
            assert!(backoff(&policy(), 0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:27:50Z").unwrap().to_utc();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
