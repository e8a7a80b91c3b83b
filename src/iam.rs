//! Where the injected `X-Auth-Token` comes from. Clients never hold IAM credentials;
//! the gateway alone does, behind this one interface.
//!
//! One token is shared by every request. Tokens from IAM (`password`, `agency`) are
//! renewed in the background before they expire; a file token is re-read when the file
//! changes. Every renewal, whether scheduled or because SWR refused the token, goes
//! through one lock (single flight), so IAM sees one call however many requests wait.

mod login;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::{watch, Mutex};

use crate::config::{Config, IamMethod};
use crate::error::{ErrorKind, GateError};
use crate::reload::FileStamp;

pub use login::{read_password, Password};

/// How long a request that finds no token waits for a fetch already in flight (at
/// startup, say) before it gets 503. Requests never start a fetch themselves.
const WAIT_FOR_FETCH: Duration = Duration::from_secs(5);
/// SWR refusing the token renews it at most this often, so an SWR that refuses every
/// token cannot turn each request into an IAM call.
const REJECTION_RENEWAL_INTERVAL: Duration = Duration::from_secs(5);
/// Failed fetches are retried after 1 s, 2 s, 4 s… up to 60 s, each randomly shortened
/// by up to half so that many gateways do not retry in step.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A token is not used in its last 5 s (or last tenth, if it lives under 50 s): IAM
/// rounds times to the second, and SWR must still accept it when the request arrives.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// An IAM token. Its `Debug` is redacted so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(HeaderValue);

impl Token {
    /// A token read from the environment, a file or a header; surrounding whitespace is
    /// dropped. IAM's are a few KiB: one of over 64 KiB is a wrong file, which would make
    /// every request's head too large for SWR.
    pub fn parse(text: &str) -> Option<Token> {
        const MAX_BYTES: usize = 64 * 1024;
        let text = text.trim();
        if text.is_empty() || text.len() > MAX_BYTES {
            return None;
        }
        let mut value = HeaderValue::from_str(text).ok()?;
        value.set_sensitive(true);
        Some(Token(value))
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What `/metrics` reports about the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenStats {
    /// Tokens obtained: fetched from IAM, or read from the file or variable.
    pub refreshes_ok: u64,
    /// Attempts that got no token (IAM down or refusing, file missing…).
    pub refreshes_failed: u64,
    /// How long the held token stays usable (zero once expired); `None` when no token
    /// is held or it carries no expiry (`token_env`, `token_file`).
    pub expires_in: Option<Duration>,
}

#[derive(Default)]
struct Refreshes {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// The token in use, and when it stops being usable and is renewed.
struct Held {
    token: Token,
    /// `None` for tokens without a known lifetime (`token_env`, `token_file`).
    usable_until: Option<Instant>,
    renew_at: Option<Instant>,
}

impl Held {
    fn usable(&self, now: Instant) -> bool {
        self.usable_until.is_none_or(|until| now < until)
    }
}

/// What the last attempt to get a token did, for the waiting requests and for `/readyz`.
#[derive(Clone, Default)]
struct Status {
    fetching: bool,
    failure: Option<String>,
    /// When the refresher tries again after its last failure: set by that failure itself,
    /// so no request sees the failure without it, and left alone by renewals outside the
    /// schedule (SWR's 401), so the `Retry-After` stays known.
    retry_at: Option<Instant>,
}

enum Origin {
    Local(Local),
    Iam(Box<login::Login>),
}

enum Local {
    Env(String),
    File(PathBuf),
}

impl Local {
    fn read(&self) -> Result<Token, String> {
        match self {
            Local::Env(var) => std::env::var(var)
                .ok()
                .and_then(|t| Token::parse(&t))
                .ok_or_else(|| {
                    format!("the environment variable {} is not set, empty, over 64 KiB, or not a token a header can carry", crate::config::variable_shown(var))
                }),
            Local::File(path) => {
                let text = crate::files::read_to_string(path)
                    .map_err(|e| format!("[iam] token_file: {}", crate::config::file_problem(&e)))?;
                Token::parse(&text).ok_or_else(|| {
                    "[iam] token_file: the file is empty, over 64 KiB, or holds characters a header cannot carry"
                        .to_owned()
                })
            }
        }
    }
}

/// The token sources. `current` is on every request's path, so it only reads what the
/// background task and the renewals keep up to date.
pub struct TokenSource {
    origin: Origin,
    current: ArcSwapOption<Held>,
    /// Held while a token is being obtained: the single flight. Inside, when SWR's
    /// refusal last caused a renewal.
    flight: Mutex<Option<Instant>>,
    status: watch::Sender<Status>,
    refreshes: Refreshes,
    refresh_before: Duration,
}

impl TokenSource {
    /// The source the config names. An IAM source starts without a token (the
    /// background task fetches it), so IAM being down does not stop the gateway.
    pub fn from_config(config: &Config) -> Result<TokenSource, String> {
        let iam = &config.iam;
        let origin = match iam.method {
            IamMethod::TokenEnv => Origin::Local(Local::Env(
                iam.token_env
                    .clone()
                    .ok_or("[iam] method = \"token_env\" needs token_env")?,
            )),
            IamMethod::TokenFile => Origin::Local(Local::File(
                config.resolve(
                    iam.token_file
                        .as_deref()
                        .ok_or("[iam] method = \"token_file\" needs token_file")?,
                ),
            )),
            IamMethod::Password | IamMethod::Agency => {
                Origin::Iam(Box::new(login::Login::from_config(config)?))
            }
        };
        let source = TokenSource {
            status: watch::Sender::new(Status {
                fetching: matches!(origin, Origin::Iam(_)),
                ..Status::default()
            }),
            origin,
            current: ArcSwapOption::empty(),
            flight: Mutex::new(None),
            refreshes: Refreshes::default(),
            refresh_before: iam.refresh_before,
        };
        if let Origin::Local(local) = &source.origin {
            let _ = source.keep(local.read().map(Held::lasting), None);
        }
        Ok(source)
    }

    /// The token to inject. With none held, waits (up to 5 s) for a fetch in flight,
    /// then answers 503 with the reason.
    pub async fn current(&self) -> Result<Token, GateError> {
        if let Some(token) = self.usable() {
            return Ok(token);
        }
        let mut status = self.status.subscribe();
        let _ = tokio::time::timeout(WAIT_FOR_FETCH, status.wait_for(|s| !s.fetching)).await;
        if let Some(token) = self.usable() {
            return Ok(token);
        }
        // The reason (IAM's address, its error) is for operators: it goes to /readyz and
        // the log, not to clients.
        crate::throttled!(warn!(reason = %self.why_not(), "no IAM token to inject"));
        // A variable is read at start only: nothing changes until the gateway restarts.
        let advice = match self.origin {
            Origin::Local(Local::Env(_)) => "it takes a restart to get one",
            _ => "retry shortly",
        };
        let mut error =
            GateError::new(ErrorKind::NoToken, format!("{}; {advice}", self.headline()));
        let state = self.status.borrow();
        if let Some(retry_at) = state.retry_at {
            let wait = retry_at.saturating_duration_since(Instant::now());
            error = error.with_retry_after(wait.as_secs() + 1);
        } else if state.fetching || matches!(self.origin, Origin::Local(Local::File(_))) {
            // A fetch still under way (a slow IAM) ends any moment; the file is read
            // again within a second of changing (`watch_file`).
            error = error.with_retry_after(1);
        }
        Err(error)
    }

    pub fn is_ready(&self) -> Result<(), String> {
        match self.usable() {
            Some(_) => Ok(()),
            None => Err(self.why_not()),
        }
    }

    pub fn stats(&self) -> TokenStats {
        let now = Instant::now();
        TokenStats {
            refreshes_ok: self.refreshes.ok.load(Ordering::Relaxed),
            refreshes_failed: self.refreshes.failed.load(Ordering::Relaxed),
            expires_in: self
                .current
                .load()
                .as_ref()
                .and_then(|held| held.usable_until)
                .map(|until| until.saturating_duration_since(now)),
        }
    }

    /// A token to retry with after SWR refused `rejected` (401): the one another request
    /// already got, or a new one. `None` when there is nothing different to retry with.
    pub async fn renew_rejected(&self, rejected: &Token) -> Option<Token> {
        if matches!(self.origin, Origin::Local(Local::Env(_))) {
            return None;
        }
        let mut flight = self.flight.lock().await;
        if let Some(token) = self.usable().filter(|token| token != rejected) {
            return Some(token);
        }
        if flight.is_some_and(|last| last.elapsed() < REJECTION_RENEWAL_INTERVAL) {
            return None;
        }
        *flight = Some(Instant::now());
        tracing::info!("SWR refused the IAM token; renewing it");
        let held = self.obtain(&mut flight, None).await.ok()?;
        Some(held.token.clone()).filter(|token| token != rejected)
    }

    /// Start what keeps the token current: the IAM refresher, or the file watcher.
    pub fn spawn_refresher(self: &Arc<Self>) {
        let source = Arc::downgrade(self);
        match &self.origin {
            Origin::Iam(_) => {
                tokio::spawn(refresh(source));
            }
            Origin::Local(Local::File(path)) => {
                tokio::spawn(watch_file(source, path.clone()));
            }
            Origin::Local(Local::Env(_)) => {}
        }
    }

    fn usable(&self) -> Option<Token> {
        let held = self.current.load();
        let held = held.as_ref()?;
        held.usable(Instant::now()).then(|| held.token.clone())
    }

    /// What is wrong, without why: enough for a client.
    fn headline(&self) -> &'static str {
        match self.current.load().is_some() {
            true => "the gateway's IAM token has expired",
            false => "the gateway holds no IAM token",
        }
    }

    fn why_not(&self) -> String {
        let status = self.status.borrow().clone();
        let what = self.headline();
        match (status.fetching, status.failure, status.retry_at) {
            (true, _, _) => format!("{what}: a request to IAM is in flight"),
            (false, Some(failure), Some(retry_at)) => format!(
                "{what}: {failure}; next attempt in {}s",
                retry_at.saturating_duration_since(Instant::now()).as_secs() + 1
            ),
            (false, Some(failure), None) => format!("{what}: {failure}"),
            (false, None, _) => format!("{what} yet"),
        }
    }

    /// Renew unless the token seen when this was scheduled has been replaced meanwhile;
    /// after a failure, the next attempt is `retry_in` away.
    async fn renew(&self, seen: Option<&Arc<Held>>, retry_in: Duration) -> Result<(), String> {
        let mut flight = self.flight.lock().await;
        let replaced = match (seen, &*self.current.load()) {
            (Some(seen), Some(now)) => !Arc::ptr_eq(seen, now),
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if replaced {
            return Ok(());
        }
        self.obtain(&mut flight, Some(retry_in)).await.map(drop)
    }

    /// Get a token from the origin. `_flight` proves the caller holds the single-flight
    /// lock; `retry_in` is for [`TokenSource::keep`].
    async fn obtain(
        &self,
        _flight: &mut Option<Instant>,
        retry_in: Option<Duration>,
    ) -> Result<Arc<Held>, String> {
        self.status.send_modify(|s| s.fetching = true);
        let fresh = match &self.origin {
            Origin::Local(local) => local.read().map(Held::lasting),
            Origin::Iam(login) => login
                .issue()
                .await
                .map(|issued| Held::expiring(issued, self.refresh_before)),
        };
        self.keep(fresh, retry_in)
    }

    /// Put what an attempt got in use and in the status. A failed attempt of the
    /// refresher's gives `retry_in`, when it tries again; others leave that time as it is.
    fn keep(
        &self,
        fresh: Result<Held, String>,
        retry_in: Option<Duration>,
    ) -> Result<Arc<Held>, String> {
        let result = match fresh {
            Ok(held) => {
                let held = Arc::new(held);
                self.current.store(Some(held.clone()));
                self.refreshes.ok.fetch_add(1, Ordering::Relaxed);
                if let Some(until) = held.usable_until {
                    let expires_at =
                        SystemTime::now() + until.saturating_duration_since(Instant::now());
                    tracing::info!(
                        usable_until = %humantime::format_rfc3339_seconds(expires_at),
                        "IAM token obtained"
                    );
                }
                Ok(held)
            }
            Err(reason) => {
                // A file's content is the truth: a token removed from it is no longer used.
                if matches!(self.origin, Origin::Local(Local::File(_))) {
                    self.current.store(None);
                }
                self.refreshes.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%reason, "no IAM token obtained");
                Err(reason)
            }
        };
        self.status.send_modify(|s| {
            s.fetching = false;
            match &result {
                Ok(_) => {
                    s.failure = None;
                    s.retry_at = None;
                }
                Err(reason) => {
                    s.failure = Some(reason.clone());
                    if let Some(wait) = retry_in {
                        s.retry_at = Some(Instant::now() + wait);
                    }
                }
            }
        });
        result
    }
}

impl Held {
    fn lasting(token: Token) -> Held {
        Held {
            token,
            usable_until: None,
            renew_at: None,
        }
    }

    fn expiring(issued: login::Issued, refresh_before: Duration) -> Held {
        let usable = issued.remaining - EXPIRY_MARGIN.min(issued.remaining / 10);
        Held {
            token: issued.token,
            usable_until: Some(issued.requested + usable),
            renew_at: Some(issued.requested + renew_after(usable, refresh_before)),
        }
    }
}

/// When a token that is usable for `usable` is renewed: `refresh_before` ahead of the
/// end, but never before two thirds of its life, so that a short-lived token (or a
/// `refresh_before` close to the lifetime) does not make the gateway fetch in a loop.
fn renew_after(usable: Duration, refresh_before: Duration) -> Duration {
    usable.saturating_sub(refresh_before).max(usable * 2 / 3)
}

/// The wait before retry number `failures` (1 for the first).
fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_FIRST
        .saturating_mul(1 << failures.clamp(1, 16).saturating_sub(1))
        .min(BACKOFF_MAX);
    let random = u32::from_le_bytes(crate::crypto::random_bytes::<4>());
    ceiling / 2 + (ceiling / 2).mul_f64(f64::from(random) / f64::from(u32::MAX))
}

/// The IAM refresher: fetch at once, then before each token's end; after a failure,
/// again with backoff. The token held stays in use meanwhile, until it expires.
async fn refresh(source: Weak<TokenSource>) {
    let mut failures: u32 = 0;
    loop {
        let Some(strong) = source.upgrade() else {
            return;
        };
        let seen = strong.current.load_full();
        let renew_at = seen.as_ref().and_then(|held| held.renew_at);
        let due = match failures {
            0 => renew_at,
            // As the failure told requests; gone if a renewal on SWR's 401 got a token since.
            _ => strong.status.borrow().retry_at.or(renew_at),
        };
        drop(strong);
        tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()).await;
        let Some(strong) = source.upgrade() else {
            return;
        };
        let retry_in = backoff(failures.saturating_add(1));
        failures = match strong.renew(seen.as_ref(), retry_in).await {
            Ok(()) => 0,
            Err(_) => failures.saturating_add(1),
        };
    }
}

/// Keep a file token current: a secret rotated by another process (a Kubernetes
/// Secret update, a renewal job) takes effect within a second, no restart needed, even
/// when the new file has the old one's length and modification time.
async fn watch_file(source: Weak<TokenSource>, path: PathBuf) {
    // None until the first look, which always reads the file again: what it was when
    // the start read it is not known, and a file removed since looks like no file then.
    let mut seen: Option<Option<FileStamp>> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(source) = source.upgrade() else {
            return;
        };
        let stamp = std::fs::metadata(&path).ok().map(|m| FileStamp::of(&m));
        if seen.as_ref() != Some(&stamp) {
            seen = Some(stamp);
            let mut flight = source.flight.lock().await;
            let held = source.obtain(&mut flight, None).await.is_ok();
            tracing::info!(path = %path.display(), held, "IAM token file re-read");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_one_header_value_of_sane_size() {
        assert!(Token::parse(" gAAAA-token\n").is_some());
        assert_eq!(Token::parse(" gAAAA-token\n"), Token::parse("gAAAA-token"));
        for bad in ["", " \n", "a\nb", &"x".repeat(64 * 1024 + 1)] {
            assert!(Token::parse(bad).is_none(), "{bad:.10}");
        }
        assert!(Token::parse(&"x".repeat(64 * 1024)).is_some());
    }

    #[test]
    fn tokens_are_renewed_refresh_before_their_end_but_not_in_their_first_two_thirds() {
        let hour = Duration::from_secs(3600);
        assert_eq!(renew_after(24 * hour, hour), 23 * hour);
        assert_eq!(renew_after(24 * hour, 12 * hour), 16 * hour);
        assert_eq!(
            renew_after(Duration::from_secs(18), hour),
            Duration::from_secs(12)
        );
        assert_eq!(
            renew_after(Duration::from_secs(3601), hour),
            Duration::from_secs(3601) * 2 / 3
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_minute_with_jitter() {
        for (failures, ceiling) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let ceiling = Duration::from_secs(ceiling);
            for _ in 0..20 {
                let wait = backoff(failures);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "{failures}: {wait:?}"
                );
            }
        }
    }

    fn source(origin: Origin) -> TokenSource {
        TokenSource {
            origin,
            current: ArcSwapOption::empty(),
            flight: Mutex::new(None),
            status: watch::Sender::new(Status::default()),
            refreshes: Refreshes::default(),
            refresh_before: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn an_expired_token_is_not_used_and_stats_say_so() {
        let source = source(Origin::Local(Local::Env("SWR_GATE_UNIT_UNSET".into())));
        let issued = login::Issued {
            token: Token::parse("t1").unwrap(),
            requested: Instant::now(),
            remaining: Duration::from_secs(100),
        };
        source
            .keep(Ok(Held::expiring(issued, Duration::from_secs(3600))), None)
            .unwrap();
        let stats = source.stats();
        assert_eq!((stats.refreshes_ok, stats.refreshes_failed), (1, 0));
        let left = stats.expires_in.unwrap();
        assert!(left > Duration::from_secs(90) && left <= Duration::from_secs(95));
        assert!(source.is_ready().is_ok());

        let issued = login::Issued {
            token: Token::parse("t2").unwrap(),
            requested: Instant::now() - Duration::from_secs(60),
            remaining: Duration::from_secs(60),
        };
        source
            .keep(Ok(Held::expiring(issued, Duration::from_secs(3600))), None)
            .unwrap();
        assert_eq!(source.stats().expires_in, Some(Duration::ZERO));
        let error = source.current().await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::NoToken);
        assert!(error.message.contains("expired"), "{}", error.message);
        assert!(!error.message.contains("t2"));
        assert!(source.is_ready().is_err());
    }

    #[tokio::test]
    async fn an_environment_token_is_never_renewed_on_rejection() {
        std::env::set_var("SWR_GATE_UNIT_TOKEN", "env-token");
        let source = source(Origin::Local(Local::Env("SWR_GATE_UNIT_TOKEN".into())));
        source
            .keep(
                Local::Env("SWR_GATE_UNIT_TOKEN".into())
                    .read()
                    .map(Held::lasting),
                None,
            )
            .unwrap();
        let token = source.current().await.unwrap();
        assert_eq!(source.renew_rejected(&token).await, None);
        assert_eq!(source.stats().expires_in, None);
    }

    #[tokio::test]
    async fn a_renewal_failing_on_swrs_401_leaves_the_next_attempt_known() {
        let source = source(Origin::Local(Local::File(
            "/nonexistent/swr-gate-unit-token".into(),
        )));
        let _ = source.keep(
            Err("IAM answered HTTP 500".into()),
            Some(Duration::from_secs(30)),
        );
        let rejected = Token::parse("t1").unwrap();
        assert_eq!(source.renew_rejected(&rejected).await, None);
        assert_eq!(source.stats().refreshes_failed, 2);

        let error = source.current().await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::NoToken);
        assert!(
            matches!(error.retry_after, Some(29..=30)),
            "{:?}",
            error.retry_after
        );
        let reason = source.is_ready().unwrap_err();
        assert!(reason.contains("next attempt in"), "{reason}");
    }
}
