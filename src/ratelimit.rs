//! Rate limits (`[[rate_limits]]`): GCRA per key, in process with `governor` or shared by
//! several replicas through one Redis script call per check. Checked after
//! authentication and before the body is parsed, so a flood costs no JSON parsing,
//! schema or policy; the body of an AK/SK request is read before, since its signature
//! covers it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;

use crate::audit::Reason;
use crate::auth::Identity;
use crate::error::{ErrorKind, GateError};
use crate::redis_link;

/// A `[[rate_limits]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RateLimitSpec {
    pub id: String,
    pub key: LimitKey,
    /// Operation ids, `forward` for unmatched forwarded requests, or `*` for all.
    #[serde(default = "all_operations")]
    pub operations: Vec<String>,
    /// Requests let through per `per` once the burst is spent.
    pub rate: u32,
    #[serde(deserialize_with = "crate::config::duration")]
    pub per: Duration,
    /// Requests that may come at once after a quiet spell (the bucket size); default `rate`.
    pub burst: Option<u32>,
    #[serde(default)]
    pub backend: Backend,
    pub redis_url: Option<String>,
    /// The environment variable holding `redis_url`, for a URL with a password.
    pub redis_url_env: Option<String>,
    /// What a Redis-backed limit does while Redis is unreachable: `reject` (503) or `allow`.
    #[serde(default)]
    pub on_redis_error: OnRedisError,
}

fn all_operations() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    Client,
    ClientOperation,
    ClientIp,
    Global,
}

const LONGEST_REFILL: Duration = Duration::from_secs(100 * 365 * 86_400);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    #[default]
    Reject,
    Allow,
}

impl RateLimitSpec {
    fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.rate)
    }

    /// Time between two requests at the steady rate.
    fn interval(&self) -> Duration {
        self.per / self.rate.max(1)
    }

    fn applies_to(&self, operation: &str) -> bool {
        self.operations.iter().any(|o| o == "*" || o == operation)
    }

    fn problems(&self, known_operations: Option<&[&str]>) -> Vec<String> {
        let mut problems = Vec::new();
        let name = format!("[[rate_limits]] {:?}", self.id);
        if self.rate == 0 || self.burst() == 0 {
            problems.push(format!("{name}: rate and burst must be at least 1"));
        }
        if self.interval().is_zero() {
            problems.push(format!("{name}: per is too short for the rate"));
        }
        // The time a whole burst takes to refill; the in-process limiter counts it in
        // nanoseconds, which run out at 584 years.
        let refill = self.interval().checked_mul(self.burst());
        if refill.is_none_or(|refill| refill > LONGEST_REFILL) {
            problems.push(format!(
                "{name}: per / rate x burst, the time a whole burst takes to come back, must be under 100 years"
            ));
        }
        let url = redis_link::url(
            self.redis_url.as_deref(),
            self.redis_url_env.as_deref(),
            "redis_url",
        );
        match (self.backend, url) {
            (_, Err(problem)) => problems.push(format!("{name}: {problem}")),
            (Backend::Redis, Ok(None)) => problems.push(format!(
                "{name}: backend = \"redis\" needs redis_url or redis_url_env"
            )),
            (Backend::Local, Ok(Some(_))) => problems.push(format!(
                "{name}: redis_url is set but backend is not \"redis\""
            )),
            _ => {}
        }
        for operation in &self.operations {
            if operation != "*"
                && operation != "forward"
                && known_operations.is_some_and(|known| !known.contains(&operation.as_str()))
            {
                problems.push(format!("{name}: unknown operation {operation:?}"));
            }
        }
        problems
    }
}

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One configured limit with its buckets.
struct Limit {
    spec: RateLimitSpec,
    store: Store,
}

enum Store {
    Local(Keyed),
    Redis(redis_gcra::RedisGcra),
}

/// All limits of one config. Buckets of a limit whose definition did not change are
/// carried over on reload, so a reload never hands out a fresh burst.
#[derive(Default)]
pub struct RateLimits {
    limits: Vec<Arc<Limit>>,
}

/// The tightest limit that applied to a request, for the `X-RateLimit-*` headers, and
/// anything the audit record should know (a limit that could not be checked).
#[derive(Debug, Default, Clone)]
pub struct Applied {
    pub limit: Option<(u32, u32)>,
    pub notes: Vec<Reason>,
}

impl RateLimits {
    /// `known_operations`: the route table's; `None` when it could not be read, and the
    /// limits' operation names cannot be checked.
    pub fn build(
        specs: &[RateLimitSpec],
        known_operations: Option<&[&str]>,
        previous: Option<&RateLimits>,
    ) -> Result<RateLimits, Vec<String>> {
        let mut problems: Vec<String> = specs
            .iter()
            .flat_map(|s| s.problems(known_operations))
            .collect();
        for (i, spec) in specs.iter().enumerate() {
            if specs[..i].iter().any(|s| s.id == spec.id) {
                problems.push(format!("[[rate_limits]] id {:?} appears twice", spec.id));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let limits = specs
            .iter()
            .map(|spec| {
                let kept = previous
                    .and_then(|p| p.limits.iter().find(|l| l.spec == *spec))
                    .cloned();
                kept.unwrap_or_else(|| Arc::new(Limit::new(spec.clone())))
            })
            .collect();
        Ok(RateLimits { limits })
    }

    /// Check every limit that applies; all must pass.
    pub async fn check(
        &self,
        identity: &Identity,
        client_ip: IpAddr,
        operation: &str,
    ) -> Result<Applied, GateError> {
        let mut applied = Applied::default();
        for limit in self.limits.iter().filter(|l| l.spec.applies_to(operation)) {
            let key = limit.key(identity, client_ip, operation);
            match limit.check(&key).await {
                Ok(remaining) => {
                    let tighter = applied.limit.is_none_or(|(_, r)| remaining < r);
                    if tighter {
                        applied.limit = Some((limit.spec.rate, remaining));
                    }
                }
                Err(Refusal::Exhausted(wait)) => {
                    // At most one cell's time, whatever a shared store answered.
                    let wait = wait.min(limit.spec.interval());
                    let seconds = crate::error::retry_seconds(wait);
                    return Err(GateError::new(
                        ErrorKind::RateLimited,
                        format!(
                            "rate limit {} exceeded: {} requests per {}; retry in {seconds} s",
                            limit.spec.id,
                            limit.spec.rate,
                            humantime::format_duration(limit.spec.per)
                        ),
                    )
                    .with_retry_after(seconds)
                    .with_rate_limit(limit.spec.rate, 0));
                }
                Err(Refusal::Unreachable(why)) => {
                    crate::throttled!(
                        warn!(limit = %limit.spec.id, error = %why, "rate limit backend unreachable")
                    );
                    if limit.spec.on_redis_error == OnRedisError::Reject {
                        return Err(GateError::new(
                            ErrorKind::RateLimitUnavailable,
                            format!("rate limit {} cannot be checked right now", limit.spec.id),
                        )
                        .with_retry_after(1));
                    }
                    applied.notes.push(Reason {
                        code: ErrorKind::RateLimitUnavailable.code(),
                        message: format!(
                            "rate limit {} could not be checked (Redis unreachable) and was skipped: on_redis_error = \"allow\"",
                            limit.spec.id
                        ),
                        pointer: None,
                        policy: None,
                    });
                }
            }
        }
        Ok(applied)
    }

    /// Drop the buckets of keys idle long enough to be full again: memory stays bounded
    /// by the keys active within one refill time, and no active key gets a free reset.
    pub fn sweep(&self) {
        for limit in &self.limits {
            if let Store::Local(keyed) = &limit.store {
                keyed.retain_recent();
                keyed.shrink_to_fit();
            }
        }
    }
}

enum Refusal {
    Exhausted(Duration),
    Unreachable(String),
}

impl Limit {
    fn new(spec: RateLimitSpec) -> Limit {
        let store = match spec.backend {
            Backend::Local => {
                let burst = NonZeroU32::new(spec.burst()).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::with_period(spec.interval())
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(burst);
                Store::Local(
                    RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
                )
            }
            Backend::Redis => Store::Redis(redis_gcra::RedisGcra::new(
                redis_link::url(
                    spec.redis_url.as_deref(),
                    spec.redis_url_env.as_deref(),
                    "redis_url",
                )
                .ok()
                .flatten()
                .unwrap_or_default(),
            )),
        };
        Limit { spec, store }
    }

    fn key(&self, identity: &Identity, client_ip: IpAddr, operation: &str) -> String {
        let client = identity.client.id.as_str();
        match self.spec.key {
            LimitKey::Client => client.to_owned(),
            LimitKey::ClientOperation => format!("{client}\u{0}{operation}"),
            LimitKey::ClientIp => crate::auth::address_block(client_ip).to_string(),
            LimitKey::Global => String::new(),
        }
    }

    /// `Ok(remaining burst)` when let through.
    async fn check(&self, key: &str) -> Result<u32, Refusal> {
        match &self.store {
            Store::Local(keyed) => keyed
                .check_key(&key.to_owned())
                .map(|state| state.remaining_burst_capacity())
                .map_err(|not_until| {
                    Refusal::Exhausted(not_until.wait_time_from(DefaultClock::default().now()))
                }),
            Store::Redis(redis) => {
                let name = format!("swr-gate:rl:{}:{key}", self.spec.id);
                let interval_us = self.spec.interval().as_micros().max(1) as u64;
                match tokio::time::timeout(
                    redis_link::TIMEOUT,
                    redis.check(&name, interval_us, self.spec.burst()),
                )
                .await
                {
                    Err(_) => Err(Refusal::Unreachable("Redis did not answer in time".into())),
                    Ok(Err(error)) => Err(Refusal::Unreachable(error)),
                    Ok(Ok(redis_gcra::Outcome::Allowed { remaining })) => Ok(remaining),
                    Ok(Ok(redis_gcra::Outcome::Denied { wait })) => Err(Refusal::Exhausted(wait)),
                }
            }
        }
    }
}

mod redis_gcra {
    //! GCRA done atomically in Redis: one script call per check, the clock is Redis's
    //! own `TIME`, so every replica agrees on it.

    use std::time::Duration;

    use crate::redis_link::RedisLink;

    const SCRIPT: &str = r#"
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local window = interval * capacity
if new_tat - now > window then
  return {0, new_tat - now - window}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((window - (new_tat - now)) / interval)}
"#;

    pub enum Outcome {
        Allowed { remaining: u32 },
        Denied { wait: Duration },
    }

    pub struct RedisGcra {
        link: RedisLink,
        script: redis::Script,
    }

    impl RedisGcra {
        pub fn new(url: String) -> RedisGcra {
            RedisGcra {
                link: RedisLink::new(url),
                script: redis::Script::new(SCRIPT),
            }
        }

        pub async fn check(
            &self,
            key: &str,
            interval_us: u64,
            capacity: u32,
        ) -> Result<Outcome, String> {
            // A second try after a dropped connection may charge a cell twice, when the
            // first had run before the connection broke: a limit errs on the strict side.
            let (allowed, value): (i64, i64) = self
                .link
                .call(|mut connection, _| {
                    let mut invocation = self.script.key(key);
                    invocation.arg(interval_us).arg(capacity);
                    async move { invocation.invoke_async(&mut connection).await }
                })
                .await?;
            Ok(if allowed == 1 {
                Outcome::Allowed {
                    remaining: u32::try_from(value).unwrap_or(0),
                }
            } else {
                Outcome::Denied {
                    wait: Duration::from_micros(u64::try_from(value).unwrap_or(0)),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, Client};

    fn spec(text: &str) -> RateLimitSpec {
        toml::from_str(text).unwrap()
    }

    fn identity(id: &str) -> Identity {
        Identity {
            client: Arc::new(Client {
                id: id.into(),
                groups: vec![],
            }),
            method: AuthMethod::ApiKey,
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn a_client_gets_its_burst_and_then_a_retry_after() {
        let limits = RateLimits::build(
            &[spec(
                "id = \"l\"\nkey = \"client\"\nrate = 2\nper = \"1h\"\nburst = 3",
            )],
            Some(&[]),
            None,
        )
        .unwrap();
        for remaining in [2, 1, 0] {
            assert_eq!(
                limits.check(&identity("a"), IP, "op").await.unwrap().limit,
                Some((2, remaining))
            );
        }
        let refused = limits.check(&identity("a"), IP, "op").await.unwrap_err();
        assert_eq!(refused.kind, ErrorKind::RateLimited);
        assert!(
            refused.retry_after.unwrap() > 1000,
            "about half an hour: {:?}",
            refused.retry_after
        );
        assert!(
            limits.check(&identity("b"), IP, "op").await.is_ok(),
            "another client has its own bucket"
        );
    }

    #[tokio::test]
    async fn operations_select_limits_and_client_operation_keys_separate_them() {
        let limits = RateLimits::build(
            &[spec("id = \"l\"\nkey = \"client_operation\"\noperations = [\"a\", \"b\"]\nrate = 1\nper = \"1h\"")],
            Some(&["a", "b"]),
            None,
        )
        .unwrap();
        assert!(limits.check(&identity("x"), IP, "a").await.is_ok());
        assert!(limits.check(&identity("x"), IP, "a").await.is_err());
        assert!(limits.check(&identity("x"), IP, "b").await.is_ok());
        assert_eq!(
            limits.check(&identity("x"), IP, "c").await.unwrap().limit,
            None
        );
    }

    #[tokio::test]
    async fn unchanged_limits_keep_their_buckets_across_a_rebuild() {
        let one = spec("id = \"l\"\nkey = \"global\"\nrate = 1\nper = \"1h\"");
        let before = RateLimits::build(std::slice::from_ref(&one), Some(&[]), None).unwrap();
        assert!(before.check(&identity("x"), IP, "op").await.is_ok());
        let after =
            RateLimits::build(std::slice::from_ref(&one), Some(&[]), Some(&before)).unwrap();
        assert!(
            after.check(&identity("x"), IP, "op").await.is_err(),
            "no fresh burst on reload"
        );
        let changed = RateLimits::build(
            &[spec("id = \"l\"\nkey = \"global\"\nrate = 2\nper = \"1h\"")],
            Some(&[]),
            Some(&after),
        )
        .unwrap();
        assert!(
            changed.check(&identity("x"), IP, "op").await.is_ok(),
            "a changed limit starts anew"
        );
    }

    #[tokio::test]
    async fn sweeping_drops_idle_keys_but_never_refills_an_active_one() {
        let limits = RateLimits::build(
            &[spec(
                "id = \"l\"\nkey = \"client_ip\"\nrate = 10\nper = \"1s\"\nburst = 1",
            )],
            Some(&[]),
            None,
        )
        .unwrap();
        let busy: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..5000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            limits.check(&identity("x"), ip, "op").await.unwrap();
        }
        let Store::Local(keyed) = &limits.limits[0].store else {
            unreachable!()
        };
        assert_eq!(keyed.len(), 5000);
        tokio::time::sleep(Duration::from_millis(300)).await;
        limits.check(&identity("x"), busy, "op").await.unwrap();
        limits.sweep();
        assert_eq!(
            keyed.len(),
            1,
            "only the key still inside its refill time is kept"
        );
        assert!(
            limits.check(&identity("x"), busy, "op").await.is_err(),
            "the active key was not reset"
        );
    }

    #[test]
    fn nonsense_is_refused_at_load() {
        let problems = RateLimits::build(
            &[
                spec("id = \"a\"\nkey = \"client\"\nrate = 0\nper = \"1m\""),
                spec("id = \"b\"\nkey = \"client\"\nrate = 1\nper = \"1m\"\nbackend = \"redis\""),
                spec(
                    "id = \"b\"\nkey = \"client\"\nrate = 1\nper = \"1m\"\noperations = [\"nope\"]",
                ),
                spec("id = \"c\"\nkey = \"client\"\nrate = 1\nper = \"30days\"\nburst = 8000"),
                spec("id = \"d\"\nkey = \"client\"\nrate = 1\nper = \"1y\"\nburst = 200"),
                spec("id = \"e\"\nkey = \"client\"\nrate = 1\nper = \"1m\"\nbackend = \"redis\"\nredis_url = \"ftp://127.0.0.1:1\""),
            ],
            Some(&["create_user_repository_auth"]),
            None,
        )
        .err()
        .unwrap();
        assert_eq!(problems.len(), 7, "{problems:?}");
    }
}
