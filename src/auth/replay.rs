//! Replay protection for AK/SK signatures: a signature is accepted once while its date
//! is inside the window; a copy sent again by someone who captured it is refused.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::crypto::sha256;
use crate::error::{ErrorKind, GateError};

/// Signatures remembered at most. Each is kept only until its date leaves the window,
/// so this bounds memory under a flood of validly signed requests (~60 MiB at the cap).
const CAPACITY: usize = 1_000_000;

#[derive(Default)]
pub struct ReplayGuard {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// SHA-256 of the signature → the Unix second after which it is stale anyway.
    expiry: HashMap<[u8; 32], u64>,
    next_sweep: usize,
}

impl ReplayGuard {
    /// Record `signature`, valid until `expires_at`; refuse it if it was seen before.
    pub fn first_use(&self, signature: &str, expires_at: u64, now: u64) -> Result<(), GateError> {
        let key = sha256(signature.as_bytes());
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.expiry.len() >= seen.next_sweep {
            seen.expiry.retain(|_, expiry| *expiry >= now);
            seen.next_sweep = (seen.expiry.len() * 2).clamp(1024, CAPACITY);
        }
        if seen.expiry.contains_key(&key) {
            return Err(GateError::new(
                ErrorKind::Replay,
                "this AK/SK signature was already used; sign each request anew",
            ));
        }
        if seen.expiry.len() >= CAPACITY {
            return Err(GateError::new(
                ErrorKind::Replay,
                "too many recent signatures to rule out a replay; retry shortly",
            ));
        }
        seen.expiry.insert(key, expires_at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_accepted_once_and_forgotten_after_its_window() {
        let guard = ReplayGuard::default();
        assert!(guard.first_use("abc", 100, 10).is_ok());
        assert_eq!(
            guard.first_use("abc", 100, 20).unwrap_err().kind,
            ErrorKind::Replay
        );
        assert!(guard.first_use("abd", 100, 20).is_ok());
        for i in 0..2000 {
            guard.first_use(&format!("s{i}"), 150, 120).unwrap();
        }
        // Swept once stale: memory does not grow with old signatures.
        for i in 0..100 {
            guard.first_use(&format!("late{i}"), 1000, 200).unwrap();
        }
        assert!(guard.seen.lock().unwrap().expiry.len() < 2000);
    }
}
