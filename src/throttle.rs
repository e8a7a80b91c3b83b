//! Log lines about failures that hit every request (SWR down, a full disk, no IAM
//! token): at most one a second from each place in the code, saying how many it held
//! back. Every request still has its audit record and its metrics; the log says what is
//! wrong without a line per request, on a disk that may be the one filling up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `tracing`'s `warn!` or `error!`, at most once a second from this call site, with the
/// field `held_back`: how many lines it held back since the last one.
#[macro_export]
macro_rules! throttled {
    ($level:ident!($($arg:tt)+)) => {{
        static THROTTLE: $crate::throttle::Throttle = $crate::throttle::Throttle::new();
        if let Some(held_back) = THROTTLE.admit() {
            tracing::$level!(held_back, $($arg)+);
        }
    }};
}

/// One call site's allowance of a line a second.
pub struct Throttle {
    /// The second (since the Unix epoch) of the last line let through.
    second: AtomicU64,
    held_back: AtomicU64,
}

impl Throttle {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Throttle {
        Throttle {
            second: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// Whether a line may go now, and how many were held back before it.
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.admit_at(now)
    }

    fn admit_at(&self, second: u64) -> Option<u64> {
        let last = self.second.load(Ordering::Relaxed);
        if last != second
            && self
                .second
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_counting_the_rest() {
        let throttle = Throttle::new();
        assert_eq!(throttle.admit_at(100), Some(0));
        assert_eq!(throttle.admit_at(100), None);
        assert_eq!(throttle.admit_at(100), None);
        assert_eq!(throttle.admit_at(101), Some(2));
        assert_eq!(throttle.admit_at(101), None);
        assert_eq!(throttle.admit_at(105), Some(1));
    }
}
