//! Records per second the audit writer sustains with `fsync = "batch"`, 64 requests
//! writing at once (each waits for its record to be in the file, as requests do).
//! Run: `cargo bench --bench audit_writer`; throughput is printed as elements/s.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use swr_gate::audit::{AuditLog, Decision, Record, Stage};
use swr_gate::auth::AuthMethod;
use swr_gate::config::Config;

fn record(request_id: &str) -> Record<'_> {
    Record {
        ts: humantime::format_rfc3339_millis(SystemTime::now()),
        request_id,
        stage: Stage::Completed,
        client: Some("ci-bot"),
        auth_method: Some(AuthMethod::ApiKey),
        client_ip: IpAddr::from([10, 1, 2, 3]),
        method: "POST",
        path: "/v2/manage/namespaces/team-a/repos/app/access",
        operation: Some("create_user_repository_auth"),
        namespace: Some("team-a"),
        repository: Some("app"),
        access_domain: None,
        grants: None,
        sharing: None,
        decision: Decision::Allow,
        denied_by: None,
        reasons: vec![],
        policies: &[],
        dry_run: false,
        status: Some(201),
        upstream_status: Some(201),
        duration_ms: 1.25,
        upstream_ms: Some(0.9),
    }
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("swr-gate-audit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = "[server]\nlisten = \"127.0.0.1:1\"\n[upstream]\nurl = \"http://127.0.0.1:2\"\n[iam]\nmethod = \"token_env\"\ntoken_env = \"X\"\n[audit]\npath = \"audit.jsonl\"\nfsync = \"batch\"\n";
    let config = Config::parse(text, &dir.join("gate.toml")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let audit = Arc::new(runtime.block_on(async { AuditLog::start(&config).unwrap() }));
    let mut group = c.benchmark_group("audit writer");
    group.throughput(Throughput::Elements(1));
    group.bench_function("fsync=batch, 64 writers", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                let tasks: Vec<_> = (0..64)
                    .map(|w| {
                        let audit = audit.clone();
                        tokio::spawn(async move {
                            for i in (w..iters as usize).step_by(64) {
                                let request_id = format!("{i:032x}");
                                audit.write(&record(&request_id)).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                started.elapsed()
            })
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

criterion_group!(benches, bench);
criterion_main!(benches);
