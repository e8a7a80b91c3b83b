//! Parse + schema validation of the guarded bodies, as the gateway does per request.
//! Target: under 10 µs each. Run: `cargo bench --bench body_validation`.

use criterion::{criterion_group, criterion_main, Criterion};
use swr_gate::body::parse_strict;
use swr_gate::schema::Schema;

/// The allocator the binary runs with: parsing a body allocates for every key and value.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn schema(operation: &str) -> Schema {
    let path = format!(
        "{}/policies/schemas/{operation}.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    Schema::load(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let cases = [
        (
            "create_user_repository_auth",
            r#"[{"user_id":"fb3f175c1fd146ab8cdae3272be6107b","user_name":"user01","auth":7}]"#.to_owned(),
        ),
        (
            "update_user_repository_auth",
            format!(
                "[{}]",
                (0..10)
                    .map(|i| format!(r#"{{"user_id":"fb3f175c1fd146ab8cdae3272be610{i:02}","user_name":"user{i}","auth":3}}"#))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        (
            "update_repo_domains",
            r#"{"permit":"read","deadline":"2026-12-31T16:00:00.000Z","description":"shared with the partner build"}"#.to_owned(),
        ),
    ];
    for (operation, body) in cases {
        let schema = schema(operation);
        let name = if body.matches("user_id").count() > 1 {
            format!("{operation}/10 grants")
        } else {
            operation.to_owned()
        };
        c.bench_function(&name, |b| {
            b.iter(|| {
                let document = parse_strict(std::hint::black_box(body.as_bytes())).unwrap();
                assert!(schema.validate(&document).is_empty());
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
