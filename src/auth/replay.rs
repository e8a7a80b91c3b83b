//! Replay protection for AK/SK signatures: a signature is accepted once while its date
//! is inside the window; a copy sent again by someone who captured it is refused. Kept
//! in the process, or in a Redis every replica shares, which also outlives a restart.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Mutex;

use crate::crypto::{hex, random_bytes};
use crate::error::{ErrorKind, GateError};
use crate::redis_link::{self, RedisLink};

/// Signatures remembered at most in the process, over all clients (under 100 MiB at
/// the cap). Each is kept only until its date leaves the window. Half is kept for
/// whoever signs, half is shared out among the signing clients, so that one client's
/// flood can neither crowd out the others nor be held to a share of a few hundred
/// signatures because thousands of idle clients are configured.
const CAPACITY: usize = 1_000_000;

/// The first 128 bits of a signature: an HMAC nobody without the key can aim at
/// another, so half of it tells signatures apart as well as all of it, in half the memory.
type Fingerprint = [u8; 16];

pub struct ReplayGuard {
    seen: Mutex<Seen>,
    shared: Option<RedisLink>,
    capacity: usize,
}

/// A verified signature, to be spent once.
#[derive(Debug)]
pub struct SignatureUse {
    pub client: String,
    /// How many clients sign with AK/SK: each has its share of the process's memory.
    pub signing_clients: usize,
    pub signature: [u8; 32],
    /// Unix seconds: when its date leaves the window, and now.
    pub expires_at: u64,
    pub now: u64,
}

#[derive(Default)]
struct Seen {
    signatures: HashSet<Fingerprint>,
    /// Remembered signatures given back ([`ReplayGuard::forget`]): the next use takes
    /// one again without remembering it twice, so giving back never grows the memory.
    given_back: HashSet<Fingerprint>,
    /// Soonest expiry on top: stale signatures leave one by one as time passes, instead
    /// of a sweep over all of them under the lock.
    expiries: BinaryHeap<Reverse<(u64, Fingerprint, u32)>>,
    /// Each client's number in `remembered`.
    clients: HashMap<String, u32>,
    /// Signatures remembered per client: one client's flood fills its own share only.
    remembered: Vec<usize>,
}

impl ReplayGuard {
    /// Kept in this process, or in the Redis at `shared_url`.
    pub fn new(shared_url: Option<String>) -> ReplayGuard {
        ReplayGuard {
            seen: Mutex::default(),
            shared: shared_url.map(RedisLink::new),
            capacity: CAPACITY,
        }
    }

    /// Spend `used`; refuse it if it was spent before. A shared store that cannot be
    /// asked refuses it too (503): a replay must not pass for want of an answer.
    pub async fn first_use(&self, used: &SignatureUse) -> Result<Spent, GateError> {
        let mut spent = Spent {
            fingerprint: fingerprint(&used.signature),
            spender: None,
        };
        match &self.shared {
            Some(link) => spent.spender = Some(first_use_shared(link, used).await?),
            None => self.first_use_here(used)?,
        }
        Ok(spent)
    }

    /// Give a spent signature back: its request was refused with an answer that asks
    /// for the same request again (429, 503) before anything reached SWR, and a client
    /// (the SDKs' own retry) resends it as it was signed. Best effort: a signature that
    /// stays spent only costs that retry a 401.
    pub async fn forget(&self, spent: &Spent) {
        let Some(spender) = &spent.spender else {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if seen.signatures.contains(&spent.fingerprint) {
                seen.given_back.insert(spent.fingerprint);
            }
            return;
        };
        let Some(link) = &self.shared else {
            return;
        };
        // Only the SET this request made: another replica's spending stays.
        let forget = link.call(|mut connection, _| {
            let mut invocation = FORGET.key(shared_key(&spent.fingerprint));
            invocation.arg(spender);
            async move { invocation.invoke_async::<i64>(&mut connection).await }
        });
        if let Ok(Err(error)) = tokio::time::timeout(redis_link::TIMEOUT, forget).await {
            tracing::debug!(%error, "a spent signature could not be given back");
        }
    }

    fn first_use_here(&self, used: &SignatureUse) -> Result<(), GateError> {
        let fingerprint = fingerprint(&used.signature);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.forget_stale(used.now);
        if seen.signatures.contains(&fingerprint) {
            return match seen.given_back.remove(&fingerprint) {
                true => Ok(()),
                false => Err(replayed()),
            };
        }
        let number = seen.number_of(&used.client);
        let open_to_all = seen.signatures.len() < self.capacity / 2;
        let share = self.capacity / 2 / used.signing_clients.max(1);
        if !open_to_all && seen.remembered[number as usize] >= share {
            return Err(GateError::new(
                ErrorKind::ReplayMemoryFull,
                "this client signed more requests in the last 15 minutes than can be remembered to rule out replays; retry later",
            )
            .with_retry_after(60));
        }
        seen.signatures.insert(fingerprint);
        seen.expiries
            .push(Reverse((used.expires_at, fingerprint, number)));
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
            self.given_back.remove(&fingerprint);
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

/// Past a signature's window, how much longer Redis keeps it: the second the window's
/// end is counted in, and replicas whose clocks run behind the one that spent it.
const SHARED_MARGIN_SECS: u64 = 60;

/// A signature this gateway spent, to give back with [`ReplayGuard::forget`].
#[derive(Debug)]
pub struct Spent {
    fingerprint: Fingerprint,
    /// The value this gateway's SET wrote, when the store is Redis.
    spender: Option<String>,
}

/// Deletes a spent signature's key only when it holds this spender's value.
static FORGET: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

fn shared_key(fingerprint: &Fingerprint) -> String {
    format!("swr-gate:replay:{}", hex(fingerprint))
}

/// `SET NX` with the signature's remaining time: the one replica whose SET lands
/// spends it, and Redis forgets it when no replica could accept it any more. The value
/// written, which tells this spending from another's.
async fn first_use_shared(link: &RedisLink, used: &SignatureUse) -> Result<String, GateError> {
    let key = shared_key(&fingerprint(&used.signature));
    let ttl_ms = (used.expires_at.saturating_sub(used.now) + 1 + SHARED_MARGIN_SECS) * 1000;
    // Which replica spent it, so that a second try after a dropped connection knows its
    // own first SET, which may have landed, from another replica's.
    let spender = hex(&random_bytes::<16>());
    let spend = link.call(|mut connection, again| {
        let (key, spender) = (key.clone(), spender.clone());
        async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&spender)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut connection)
                .await?;
            if set.is_some() || !again {
                return Ok(set.is_some());
            }
            let holder: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await?;
            Ok(holder.as_deref() == Some(spender.as_str()))
        }
    });
    match tokio::time::timeout(redis_link::TIMEOUT, spend).await {
        Ok(Ok(true)) => Ok(spender),
        Ok(Ok(false)) => Err(replayed()),
        Ok(Err(error)) => Err(unavailable(&error)),
        Err(_) => Err(unavailable("Redis did not answer in time")),
    }
}

fn fingerprint(signature: &[u8; 32]) -> Fingerprint {
    let mut fingerprint = Fingerprint::default();
    fingerprint.copy_from_slice(&signature[..16]);
    fingerprint
}

fn replayed() -> GateError {
    GateError::new(
        ErrorKind::Replay,
        "this AK/SK signature was already used; sign each request anew (the SDK's X-Sdk-Date has whole seconds: two identical requests in one second carry one signature)",
    )
}

fn unavailable(why: &str) -> GateError {
    crate::throttled!(warn!(
        error = why,
        "the shared record of used signatures cannot be asked"
    ));
    GateError::new(
        ErrorKind::ReplayUnavailable,
        "the record of used AK/SK signatures cannot be checked right now",
    )
    .with_retry_after(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(client: &str, clients: usize, n: u32, expires_at: u64, now: u64) -> SignatureUse {
        let mut signature = [0; 32];
        signature[..4].copy_from_slice(&n.to_be_bytes());
        SignatureUse {
            client: client.into(),
            signing_clients: clients,
            signature,
            expires_at,
            now,
        }
    }

    #[tokio::test]
    async fn a_signature_given_back_may_be_spent_once_more() {
        let guard = ReplayGuard::new(None);
        let spent = guard.first_use(&spend("a", 1, 1, 100, 10)).await.unwrap();
        guard.forget(&spent).await;
        guard.forget(&spent).await;
        let again = guard.first_use(&spend("a", 1, 1, 100, 20)).await;
        assert!(again.is_ok());
        let replay = guard.first_use(&spend("a", 1, 1, 100, 30)).await;
        assert_eq!(replay.unwrap_err().kind, ErrorKind::Replay);
        // Given back and spent again, it is remembered once, and leaves once.
        {
            let seen = guard.seen.lock().unwrap();
            assert_eq!((seen.expiries.len(), seen.remembered[0]), (1, 1));
            assert!(seen.given_back.is_empty());
        }
        guard.first_use_here(&spend("a", 1, 2, 1000, 200)).unwrap();
        let seen = guard.seen.lock().unwrap();
        assert_eq!((seen.signatures.len(), seen.remembered[0]), (1, 1));
    }

    #[test]
    fn a_signature_is_accepted_once_and_forgotten_after_its_window() {
        let guard = ReplayGuard::new(None);
        let first = |used: SignatureUse| guard.first_use_here(&used);
        assert!(first(spend("a", 1, 1, 100, 10)).is_ok());
        assert_eq!(
            first(spend("a", 1, 1, 100, 20)).unwrap_err().kind,
            ErrorKind::Replay
        );
        assert!(first(spend("a", 1, 2, 100, 20)).is_ok());
        for i in 10..2010 {
            first(spend("a", 1, i, 150, 120)).unwrap();
        }
        // Stale ones leave as time passes: memory does not grow with old signatures.
        first(spend("a", 1, 5000, 1000, 200)).unwrap();
        let seen = guard.seen.lock().unwrap();
        assert_eq!(seen.signatures.len(), 1);
        assert_eq!(seen.remembered, vec![1]);
    }

    #[test]
    fn a_flood_takes_the_open_half_and_every_other_client_keeps_its_share() {
        let guard = ReplayGuard {
            capacity: 100,
            ..ReplayGuard::new(None)
        };
        let first = |client, n| guard.first_use_here(&spend(client, 4, n, 100, 10));
        // One client of four, alone: the open half, not only a quarter.
        for n in 0..50 {
            first("flood", n).unwrap();
        }
        assert_eq!(
            first("flood", 50).unwrap_err().kind,
            ErrorKind::ReplayMemoryFull
        );
        // Each of the others still has its share of the other half (100 / 2 / 4).
        for n in 100..112 {
            first("other", n).unwrap();
        }
        assert_eq!(
            first("other", 112).unwrap_err().kind,
            ErrorKind::ReplayMemoryFull
        );
        assert!(first("third", 200).is_ok());
    }
}
