//! Brute-force brake: an address that keeps failing authentication is refused for a
//! while before its credentials are even looked at.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
        let (start, count) = failures.get(&ip)?;
        let ends = *start + self.window;
        (*count >= self.max_failures && now < ends).then(|| ends - now)
    }

    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
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
}
