//! The one retry policy of the three clients (ThreatQ, the Lookups API, the relay): how many tries, full-jitter
//! backoff between them, and the server's `Retry-After` honoured up to a cap. Each client says which of its
//! failures deserve another try through a [`RetryLogic`], as Vector's sinks do.

use std::time::Duration;

/// How failed requests are retried: at most `max_attempts` tries in all, sleeping a random time in
/// `0..=min(max_delay, base_delay * 2^retry)` between them ("full jitter"), or the server's `Retry-After`
/// (at most `retry_after_cap`) when it sends one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is not waited out whole, so a confused server cannot park the run.
    pub retry_after_cap: Duration,
}

impl RetryPolicy {
    /// Whether `tries` tries (1 for the first) used the policy up.
    pub fn spent(&self, tries: u32) -> bool {
        tries >= self.max_attempts.max(1)
    }

    /// How long to sleep before retry number `retry` (0 for the first retry): the server's `Retry-After`, cut to
    /// `retry_after_cap`, when it sent one; else the full-jitter backoff.
    pub fn wait(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(asked) => asked.min(self.retry_after_cap),
            None => {
                let ceiling = self.base_delay.saturating_mul(2u32.saturating_pow(retry)).min(self.max_delay);
                Duration::from_millis(rand::random_range(0..=ceiling.as_millis() as u64))
            }
        }
    }
}

/// What a client knows about its own failures: which are worth another try, and how long the server asked to
/// be left alone.
pub trait RetryLogic {
    /// A failure to get any answer (transport, I/O).
    type Error;
    /// An answer the server gave.
    type Response;

    /// Whether trying again could mend `error` (a certificate the trust refuses will not pass on a retry).
    fn is_retriable_error(&self, error: &Self::Error) -> bool;

    /// Whether `response` is a refusal worth another try (overload, a server error).
    fn should_retry_response(&self, response: &Self::Response) -> bool;

    /// The `Retry-After` of `response`, if it has a readable one.
    fn retry_after(&self, _response: &Self::Response) -> Option<Duration> {
        None
    }
}

/// The `Retry-After` of HTTP headers: delay-seconds or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, chrono::Utc::now())
}

fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
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
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            retry_after_cap: Duration::from_secs(120),
        }
    }

    #[test]
    fn the_jitter_stays_under_an_exponential_ceiling_capped_by_max_delay() {
        for _ in 0..200 {
            assert!(policy().wait(0, None) <= Duration::from_millis(100));
            assert!(policy().wait(2, None) <= Duration::from_millis(400));
            assert!(policy().wait(30, None) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap() {
        assert_eq!(policy().wait(0, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(policy().wait(0, Some(Duration::from_secs(86_400))), Duration::from_secs(120));
    }

    #[test]
    fn attempts_count_the_first_try() {
        assert!(!policy().spent(4));
        assert!(policy().spent(5));
        assert!(RetryPolicy { max_attempts: 0, ..policy() }.spent(1));
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
