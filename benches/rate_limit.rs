//! The cost of one rate-limit check: in process (governor), and through Redis when
//! `REDIS_URL` names a running server (`redis-server --port 6390 &` then
//! `REDIS_URL=redis://127.0.0.1:6390 cargo bench --bench rate_limit`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use swr_gate::auth::{AuthMethod, Client, Identity};
use swr_gate::ratelimit::{RateLimitSpec, RateLimits};

fn limits(extra: &str) -> RateLimits {
    let spec: RateLimitSpec = toml::from_str(&format!(
        "id = \"bench\"\nkey = \"client\"\nrate = 1000000000\nper = \"1s\"\n{extra}"
    ))
    .unwrap();
    RateLimits::build(&[spec], Some(&[]), None).unwrap()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let identity = Identity {
        client: Arc::new(Client {
            id: "ci-bot".into(),
            groups: vec![],
        }),
        method: AuthMethod::ApiKey,
    };
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let local = limits("");
    c.bench_function("rate limit check/local", |b| {
        b.iter(|| {
            runtime
                .block_on(local.check(&identity, ip, "create_user_repository_auth"))
                .unwrap()
        })
    });
    if let Ok(url) = std::env::var("REDIS_URL") {
        let redis = limits(&format!("backend = \"redis\"\nredis_url = \"{url}\""));
        c.bench_function("rate limit check/redis", |b| {
            b.iter(|| {
                runtime
                    .block_on(redis.check(&identity, ip, "create_user_repository_auth"))
                    .unwrap()
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
