//! Brute-force brake: an address that keeps failing authentication is refused for a
//! while before its credentials are even looked at.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{ErrorKind, GateError};

/// Addresses tracked at most; past it, windows that ended are swept first.
const CAPACITY: usize = 100_000;

pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window: Duration) -> FailureLimiter {
        FailureLimiter {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` must wait, when it has used up its failures in the current window.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count) = failures.get(&address_block(ip))?;
        let ends = *start + self.window;
        (*count >= self.max_failures && now < ends).then(|| ends - now)
    }

    /// Count `failure` against `ip` if it is a guess at a credential. A replayed or stale
    /// signature was made with the right key, and a request with no credential guesses
    /// nothing: braking those would lock out a client that retries, not slow a guesser.
    pub fn record(&self, ip: IpAddr, failure: &GateError, now: Instant) {
        if matches!(
            failure.kind,
            ErrorKind::UnknownCredential
                | ErrorKind::BadSignature
                | ErrorKind::MalformedAuthorization
        ) {
            self.record_failure(ip, now);
        }
    }

    fn record_failure(&self, ip: IpAddr, now: Instant) {
        let ip = address_block(ip);
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= CAPACITY {
            failures.retain(|_, (start, _)| now < *start + self.window);
        }
        if failures.len() >= CAPACITY && !failures.contains_key(&ip) {
            return;
        }
        let entry = failures.entry(ip).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// Whom a failure or a per-address limit is counted against: an IPv4 address, or an
/// IPv6 /64, the block one subscriber gets and can pick addresses from at will.
pub fn address_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_failures_until_the_window_ends() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.blocked(ip, t0), None);
            limiter.record_failure(ip, t0);
        }
        assert_eq!(
            limiter.blocked(ip, t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(50))
        );
        assert_eq!(limiter.blocked(other, t0), None);
        assert_eq!(limiter.blocked(ip, t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn an_ipv6_subscriber_block_counts_as_one_address() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        limiter.record_failure("2001:db8:1:2::1".parse().unwrap(), t0);
        limiter.record_failure("2001:db8:1:2:ffff::9".parse().unwrap(), t0);
        assert!(limiter
            .blocked("2001:db8:1:2::77".parse().unwrap(), t0)
            .is_some());
        assert_eq!(
            limiter.blocked("2001:db8:1:3::1".parse().unwrap(), t0),
            None
        );
    }

    #[test]
    fn only_guesses_at_a_credential_count() {
        let limiter = FailureLimiter::new(1, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for kind in [
            ErrorKind::Replay,
            ErrorKind::StaleDate,
            ErrorKind::NotAuthenticated,
        ] {
            limiter.record(ip, &GateError::new(kind, "x"), t0);
        }
        assert_eq!(limiter.blocked(ip, t0), None);
        limiter.record(ip, &GateError::new(ErrorKind::BadSignature, "x"), t0);
        assert!(limiter.blocked(ip, t0).is_some());
    }
}
