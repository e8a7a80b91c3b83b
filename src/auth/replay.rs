//! Replay protection for AK/SK signatures: a signature is accepted once while its date
//! is inside the window; a copy sent again by someone who captured it is refused.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Mutex;

use crate::error::{ErrorKind, GateError};

/// Signatures remembered at most, over all clients (under 100 MiB at the cap). Each is
/// kept only until its date leaves the window.
const CAPACITY: usize = 1_000_000;

/// The first 128 bits of a signature: an HMAC nobody without the key can aim at
/// another, so half of it tells signatures apart as well as all of it, in half the memory.
type Fingerprint = [u8; 16];

#[derive(Default)]
pub struct ReplayGuard {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    signatures: HashSet<Fingerprint>,
    /// Soonest expiry on top: stale signatures leave one by one as time passes, instead
    /// of a sweep over all of them under the lock.
    expiries: BinaryHeap<Reverse<(u64, Fingerprint, u32)>>,
    /// Each client's number in `remembered`.
    clients: HashMap<String, u32>,
    /// Signatures remembered per client: one client's flood fills its own share only.
    remembered: Vec<usize>,
}

impl ReplayGuard {
    /// Record `client`'s `signature`, valid until `expires_at`; refuse it if it was seen
    /// before. `signing_clients` (how many clients sign with AK/SK) sets each one's share.
    pub fn first_use(
        &self,
        client: &str,
        signing_clients: usize,
        signature: &[u8; 32],
        expires_at: u64,
        now: u64,
    ) -> Result<(), GateError> {
        let mut fingerprint = Fingerprint::default();
        fingerprint.copy_from_slice(&signature[..16]);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.forget_stale(now);
        if seen.signatures.contains(&fingerprint) {
            return Err(GateError::new(
                ErrorKind::Replay,
                "this AK/SK signature was already used; sign each request anew (the SDK's X-Sdk-Date has whole seconds: two identical requests in one second carry one signature)",
            ));
        }
        let number = seen.number_of(client);
        if seen.remembered[number as usize] >= CAPACITY / signing_clients.max(1) {
            return Err(GateError::new(
                ErrorKind::Replay,
                "this client signed too many requests in the last 15 minutes to rule out a replay; retry shortly",
            ));
        }
        seen.signatures.insert(fingerprint);
        seen.expiries
            .push(Reverse((expires_at, fingerprint, number)));
        seen.remembered[number as usize] += 1;
        Ok(())
    }
}

impl Seen {
    fn forget_stale(&mut self, now: u64) {
        while let Some(Reverse((expiry, fingerprint, client))) = self.expiries.peek().copied() {
            if expiry >= now {
                break;
            }
            self.expiries.pop();
            self.signatures.remove(&fingerprint);
            self.remembered[client as usize] -= 1;
        }
    }

    fn number_of(&mut self, client: &str) -> u32 {
        if let Some(number) = self.clients.get(client) {
            return *number;
        }
        let number = self.remembered.len() as u32;
        self.clients.insert(client.to_owned(), number);
        self.remembered.push(0);
        number
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signature(n: u32) -> [u8; 32] {
        let mut signature = [0; 32];
        signature[..4].copy_from_slice(&n.to_be_bytes());
        signature
    }

    #[test]
    fn a_signature_is_accepted_once_and_forgotten_after_its_window() {
        let guard = ReplayGuard::default();
        assert!(guard.first_use("a", 1, &signature(1), 100, 10).is_ok());
        assert_eq!(
            guard
                .first_use("a", 1, &signature(1), 100, 20)
                .unwrap_err()
                .kind,
            ErrorKind::Replay
        );
        assert!(guard.first_use("a", 1, &signature(2), 100, 20).is_ok());
        for i in 10..2010 {
            guard.first_use("a", 1, &signature(i), 150, 120).unwrap();
        }
        // Stale ones leave as time passes: memory does not grow with old signatures.
        guard
            .first_use("a", 1, &signature(5000), 1000, 200)
            .unwrap();
        let seen = guard.seen.lock().unwrap();
        assert_eq!(seen.signatures.len(), 1);
        assert_eq!(seen.remembered, vec![1]);
    }

    #[test]
    fn one_client_fills_only_its_own_share() {
        let guard = ReplayGuard::default();
        let share = CAPACITY / 4;
        {
            let mut seen = guard.seen.lock().unwrap();
            let number = seen.number_of("flood");
            seen.remembered[number as usize] = share;
        }
        let refused = guard.first_use("flood", 4, &signature(1), 100, 10);
        assert_eq!(refused.unwrap_err().kind, ErrorKind::Replay);
        assert!(guard.first_use("other", 4, &signature(2), 100, 10).is_ok());
    }
}
