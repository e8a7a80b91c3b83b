//! Rate limits: exact under concurrency, per client and operation, shared through Redis.

mod common;

use common::*;

const CREATE: &str = "/v2/manage/namespaces/team-a/repos/app/access";

fn limit(id: &str, key: &str, operations: &str, rate: u32, extra: &str) -> String {
    format!("[[rate_limits]]\nid = \"{id}\"\nkey = \"{key}\"\noperations = {operations}\nrate = {rate}\nper = \"1h\"\nburst = {rate}\n{extra}\n")
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

#[test]
fn exactly_the_burst_passes_under_concurrency_and_the_rest_get_429() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(
        &swr.url(),
        &limit("per-client", "client", "[\"*\"]", 5, ""),
        |_| {},
    );
    let answers = burst(40, || gate.json("POST", CREATE, &grants(1)));
    assert_eq!(count(&answers, 201), 5);
    assert_eq!(count(&answers, 429), 35);
    let refused = answers.iter().find(|a| a.status == 429).unwrap();
    assert_eq!(refused.code(), "SWR.GATE.4290001");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=720).contains(&wait), "{wait}");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    let allowed = answers.iter().find(|a| a.status == 201).unwrap();
    assert_eq!(allowed.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(swr.received().len(), 5);
    let denied = gate
        .audit_records()
        .into_iter()
        .filter(|r| r["denied_by"] == "rate_limit")
        .count();
    assert_eq!(denied, 35);

    // Another client has its own bucket.
    let other = gate.send(
        "POST",
        CREATE,
        &[
            ("x-api-key", OTHER_API_KEY),
            ("content-type", "application/json"),
        ],
        grants(1).as_bytes(),
    );
    assert_eq!(other.status, 201);
}

#[test]
fn per_operation_limits_are_separate_and_a_flood_is_refused_before_the_body_is_read() {
    let swr = StandInSwr::start();
    let limits = limit(
        "per-op",
        "client_operation",
        "[\"create_user_repository_auth\", \"update_user_repository_auth\"]",
        1,
        "",
    );
    let gate = Gateway::start_with(&swr.url(), &limits, |_| {});
    assert_eq!(gate.json("POST", CREATE, &grants(1)).status, 201);
    assert_eq!(gate.json("PATCH", CREATE, &grants(1)).status, 201);
    // Refused by the limit, not by the (invalid) body: the body was never parsed.
    assert_eq!(
        gate.json("POST", CREATE, "not json").code(),
        "SWR.GATE.4290001"
    );
    let share = "/v2/manage/namespaces/team-a/repositories/app/access-domains/partner";
    let answer = gate.json("PATCH", share, r#"{"permit":"read","deadline":"forever"}"#);
    assert_eq!(answer.status, 201);
    assert_eq!(
        answer.header("x-ratelimit-limit"),
        None,
        "no limit applied to this operation"
    );
}

#[test]
fn redis_limits_are_exact_and_shared_by_two_gateways() {
    let redis = RedisServer::start();
    let swr = StandInSwr::start();
    let shared = limit(
        "shared",
        "client",
        "[\"*\"]",
        6,
        &format!("backend = \"redis\"\nredis_url = \"{}\"", redis.url()),
    );
    let one = Gateway::start_with(&swr.url(), &shared, |_| {});
    let two = Gateway::start_with(&swr.url(), &shared, |_| {});
    let gateways = [&one, &two];
    let next = std::sync::atomic::AtomicUsize::new(0);
    let answers = burst(40, || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        gateways[i % 2].json("POST", CREATE, &grants(1))
    });
    assert_eq!(
        count(&answers, 201),
        6,
        "two replicas together let through exactly the limit"
    );
    assert_eq!(count(&answers, 429), 34);
    assert_eq!(swr.received().len(), 6);
}

#[test]
fn redis_down_fails_open_or_closed_as_configured_and_says_so() {
    let mut redis = RedisServer::start();
    let swr = StandInSwr::start();
    let backend = format!("backend = \"redis\"\nredis_url = \"{}\"", redis.url());
    let open = Gateway::start_with(
        &swr.url(),
        &limit(
            "open",
            "client",
            "[\"*\"]",
            100,
            &format!("{backend}\non_redis_error = \"allow\""),
        ),
        |_| {},
    );
    let closed = Gateway::start_with(
        &swr.url(),
        &limit(
            "closed",
            "client",
            "[\"*\"]",
            100,
            &format!("{backend}\non_redis_error = \"reject\""),
        ),
        |_| {},
    );
    assert_eq!(open.json("POST", CREATE, &grants(1)).status, 201);
    assert_eq!(closed.json("POST", CREATE, &grants(1)).status, 201);

    redis.stop();
    assert_eq!(open.json("POST", CREATE, &grants(1)).status, 201);
    let refused = closed.json("POST", CREATE, &grants(1));
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (503, "SWR.GATE.5030003")
    );
    let note = open.audit_records().into_iter().last().unwrap();
    assert!(
        note["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["code"] == "SWR.GATE.5030003"),
        "the skipped limit is in the audit record: {note}"
    );
}

/// Redis closes idle connections (its `timeout`), restarts and fails over: the next
/// check is made on a new connection, not refused.
#[test]
fn a_dropped_redis_connection_is_replaced_without_refusing_a_request() {
    let redis = RedisServer::start();
    let swr = StandInSwr::start();
    let backend = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\non_redis_error = \"reject\"",
        redis.url()
    );
    let gate = Gateway::start_with(
        &swr.url(),
        &limit("shared", "client", "[\"*\"]", 100, &backend),
        |_| {},
    );
    for _ in 0..3 {
        assert_eq!(gate.json("POST", CREATE, &grants(1)).status, 201);
        assert_eq!(redis.command(&["CLIENT", "KILL", "TYPE", "normal"]), ":1");
        // The kill reaches the gateway's side of the connection.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let answer = gate.json("POST", CREATE, &grants(1));
    assert_eq!(
        (answer.status, answer.code()),
        (201, String::new()),
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}
