//! One policy decision on the shipped policy set, as the gateway makes it per request:
//! the context computed from the validated body, then the enforced (and shadow) policies
//! evaluated. Target: under 10 µs. Run: `cargo bench --bench policy_decision`.
//!
//! Each case runs twice: the same client and repository every time, as a CI job granting
//! on its images does (the decision is remembered, so this measures the context and the
//! cache), and a new repository every time (the entities are built and the policies
//! evaluated for each decision).

use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion};
use swr_gate::auth::AuthMethod;
use swr_gate::policy::{Context, Known, Policies, Query};
use swr_gate::route::Target;

fn shipped() -> Policies {
    let known = Known {
        clients: vec!["ci-bot".into(), "release-tool".into()],
        groups: ["team-a-ci", "release", "admins"]
            .map(String::from)
            .to_vec(),
        operations: [
            "create_user_repository_auth",
            "update_user_repository_auth",
            "update_repo_domains",
        ]
        .map(String::from)
        .to_vec(),
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    Policies::load(&dir, &known).unwrap()
}

fn bench(c: &mut Criterion) {
    let policies = shipped();
    let cases = [
        (
            "create_user_repository_auth, 2 grants: allowed",
            "create_user_repository_auth",
            vec!["team-a-ci".to_owned()],
            serde_json::json!([
                {"user_id": "fb3f175c1fd146ab8cdae3272be6107b", "user_name": "user01", "auth": 1},
                {"user_id": "0c5a8e1e0a9b4c4d8e1f2a3b4c5d6e7f", "user_name": "user02", "auth": 3},
            ]),
            true,
        ),
        (
            "update_repo_domains, forever: denied by 2 forbids",
            "update_repo_domains",
            vec!["release".to_owned()],
            serde_json::json!({"permit": "read", "deadline": "forever"}),
            false,
        ),
    ];
    for (name, action, groups, body, allowed) in cases {
        for new_repository in [false, true] {
            let label = match new_repository {
                false => name.to_owned(),
                true => format!("{name} (a new repository each time)"),
            };
            let mut count = 0u64;
            c.bench_function(&label, |b| {
                b.iter(|| {
                    count += u64::from(new_repository);
                    let target = Target {
                        namespace: Some("team-a".into()),
                        repository: Some(format!("group/app{count}")),
                        access_domain: Some("partner-a".into()),
                    };
                    let context = Context::new(
                        &target,
                        Some(std::hint::black_box(&body)),
                        [10, 1, 2, 3].into(),
                        AuthMethod::ApiKey,
                        SystemTime::now(),
                    )
                    .unwrap();
                    let decision = policies
                        .decide(&Query {
                            client: "ci-bot",
                            groups: &groups,
                            action,
                            context: &context,
                        })
                        .unwrap();
                    assert_eq!(decision.allowed, allowed);
                })
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
