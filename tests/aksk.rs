//! AK/SK signatures as the official SDKs make them: verified over the exact bytes
//! received, fresh, used once, and never passed on to SWR.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use swr_gate::auth::sdk_sign::{self, RequestParts};

const AK: &str = "GWAKTEST000000000001";
const SK: &str = "gateway-issued-secret-key-for-tests-0001";
const CREATE: &str = "/v2/manage/namespaces/team-a/repos/app/access";

fn aksk_gateway(swr: &StandInSwr) -> Gateway {
    aksk_gateway_with(swr, "[[clients]]")
}

/// The gateway with `before_clients` in place of the config's first `[[clients]]`.
fn aksk_gateway_with(swr: &StandInSwr, before_clients: &str) -> Gateway {
    std::env::set_var("SWR_GATE_TEST_SK", SK);
    Gateway::start_with(
        &swr.url(),
        &format!("[[clients]]\nid = \"release-sdk\"\ngroups = [\"release\"]\naccess_key = \"{AK}\"\nsecret_key_env = \"SWR_GATE_TEST_SK\"\n"),
        |c| *c = c.replacen("[[clients]]", before_clients, 1),
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Headers of a request signed the way the Python SDK signs (host, content-type,
/// x-project-id and x-sdk-date signed).
fn signed(method: &str, path: &str, body: &[u8], secret: &str, date: u64) -> Vec<(String, String)> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "content-type",
        "application/json;charset=UTF-8".parse().unwrap(),
    );
    headers.insert(
        "x-project-id",
        "0123456789abcdef0123456789abcdef".parse().unwrap(),
    );
    headers.insert(
        "x-sdk-date",
        sdk_sign::format_sdk_date(date).unwrap().parse().unwrap(),
    );
    let payload = sdk_sign::payload_hash(body, None);
    let parts = RequestParts {
        method,
        raw_path: path,
        raw_query: None,
        host: Some("swr.local"),
        headers: &headers,
        payload_hash: &payload,
    };
    let names: Vec<String> = ["content-type", "host", "x-project-id", "x-sdk-date"]
        .map(String::from)
        .to_vec();
    let authorization =
        sdk_sign::authorization_header(AK, secret.as_bytes(), &parts, &names).unwrap();
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    out.push(("authorization".into(), authorization));
    out
}

fn send(
    gate: &Gateway,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Answer {
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    gate.send(method, path, &refs, body)
}

#[test]
fn a_signed_request_is_forwarded_without_the_sdk_headers() {
    let swr = StandInSwr::start();
    let gate = aksk_gateway(&swr);
    let body = grants(3);
    let path = "/v2/manage/namespaces/team-a/repos/group%24app/access";
    let answer = send(
        &gate,
        "PATCH",
        path,
        &signed("PATCH", path, body.as_bytes(), SK, now()),
        body.as_bytes(),
    );
    assert_eq!(
        answer.status,
        201,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let received = swr.received();
    assert_eq!(
        received[0].path_and_query,
        "/v2/manage/namespaces/team-a/repos/group$app/access"
    );
    assert_eq!(received[0].headers["x-auth-token"], TOKEN);
    for name in [
        "authorization",
        "x-sdk-date",
        "x-sdk-content-sha256",
        "x-security-token",
    ] {
        assert!(
            received[0].headers.get(name).is_none(),
            "{name} reached SWR"
        );
    }
    let record = &gate.audit_records()[0];
    assert_eq!(
        (record["client"].as_str(), record["auth_method"].as_str()),
        (Some("release-sdk"), Some("aksk"))
    );
}

#[test]
fn wrong_key_tampered_body_stale_date_replay_and_garbage_each_have_their_code() {
    let swr = StandInSwr::start();
    let gate = aksk_gateway(&swr);
    let body = grants(1);
    let bytes = body.as_bytes();

    let wrong_sk = signed("POST", CREATE, bytes, "not-the-secret", now());
    assert_eq!(
        send(&gate, "POST", CREATE, &wrong_sk, bytes).code(),
        "SWR.GATE.4010003"
    );

    let good = signed("POST", CREATE, bytes, SK, now());
    let tampered = grants(7);
    assert_eq!(
        send(&gate, "POST", CREATE, &good, tampered.as_bytes()).code(),
        "SWR.GATE.4010003"
    );

    let stale = signed("POST", CREATE, bytes, SK, now() - 16 * 60);
    assert_eq!(
        send(&gate, "POST", CREATE, &stale, bytes).code(),
        "SWR.GATE.4010004"
    );
    let future = signed("POST", CREATE, bytes, SK, now() + 16 * 60);
    assert_eq!(
        send(&gate, "POST", CREATE, &future, bytes).code(),
        "SWR.GATE.4010004"
    );

    let mut unknown = signed("POST", CREATE, bytes, SK, now());
    let auth = unknown
        .iter_mut()
        .find(|(n, _)| n == "authorization")
        .unwrap();
    auth.1 = auth.1.replace(AK, "UNKNOWNAK00000000000");
    assert_eq!(
        send(&gate, "POST", CREATE, &unknown, bytes).code(),
        "SWR.GATE.4010002"
    );

    let mut malformed = signed("POST", CREATE, bytes, SK, now());
    malformed
        .iter_mut()
        .find(|(n, _)| n == "authorization")
        .unwrap()
        .1 = "SDK-HMAC-SHA256 Access=x".into();
    assert_eq!(
        send(&gate, "POST", CREATE, &malformed, bytes).code(),
        "SWR.GATE.4010006"
    );

    let mut unsigned = signed("POST", CREATE, bytes, SK, now());
    unsigned.push(("x-sdk-content-sha256".into(), "UNSIGNED-PAYLOAD".into()));
    assert_eq!(send(&gate, "POST", CREATE, &unsigned, bytes).status, 401);

    assert!(
        swr.received().is_empty(),
        "SWR received {:?}",
        swr.received()
    );

    let fresh = signed("POST", CREATE, bytes, SK, now());
    assert_eq!(send(&gate, "POST", CREATE, &fresh, bytes).status, 201);
    let replayed = send(&gate, "POST", CREATE, &fresh, bytes);
    assert_eq!(
        (replayed.status, replayed.code().as_str()),
        (401, "SWR.GATE.4010005")
    );
    // The signature's hex in upper case is the same signature, not a new one.
    let mut shouted = fresh.clone();
    let auth = shouted
        .iter_mut()
        .find(|(n, _)| n == "authorization")
        .unwrap();
    let (head, hex) = auth.1.rsplit_once('=').unwrap();
    auth.1 = format!("{head}={}", hex.to_ascii_uppercase());
    assert_eq!(
        send(&gate, "POST", CREATE, &shouted, bytes).code(),
        "SWR.GATE.4010005"
    );
    assert_eq!(swr.received().len(), 1);
    // The signature was good: the replay's record names whose it is.
    let records = gate.audit_records();
    let replay = records.last().unwrap();
    assert_eq!(replay["reasons"][0]["code"], "SWR.GATE.4010005", "{replay}");
    assert_eq!(
        (replay["client"].as_str(), replay["auth_method"].as_str()),
        (Some("release-sdk"), Some("aksk")),
        "{replay}"
    );

    gate.audit_records();
    let audit = std::fs::read_to_string(gate.audit_path()).unwrap();
    let signature = fresh
        .iter()
        .find(|(n, _)| n == "authorization")
        .unwrap()
        .1
        .rsplit('=')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        !audit.contains(&signature) && !audit.contains(SK),
        "a secret reached the audit trail"
    );
}

#[test]
fn repeated_failures_from_one_address_are_braked() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", |c| {
        *c = c.replacen(
            "[[clients]]",
            "[auth]\nmax_failures = 3\nfailure_window = \"1m\"\n\n[[clients]]",
            1,
        )
    });
    for _ in 0..3 {
        assert_eq!(
            gate.send("GET", "/x", &[("x-api-key", "guess")], b"")
                .status,
            404
        );
        let answer = gate.json("POST", CREATE, "[]");
        assert_eq!(
            answer.status, 400,
            "a good key still works before the brake"
        );
    }
    for _ in 0..3 {
        let answer = gate.send(
            "POST",
            CREATE,
            &[("x-api-key", "guess"), ("content-type", "application/json")],
            b"[]",
        );
        assert_eq!(answer.status, 401);
    }
    let braked = gate.json("POST", CREATE, &grants(1));
    assert_eq!(
        (braked.status, braked.code().as_str()),
        (429, "SWR.GATE.4290002")
    );
    let wait: u64 = braked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    assert!(swr.received().is_empty());
}

/// The SDK signs with a date in whole seconds, so a retry within the second is a
/// replay: refused, but not a guess at a key that should lock the address out.
#[test]
fn replays_do_not_count_as_failed_guesses() {
    let swr = StandInSwr::start();
    let gate = aksk_gateway_with(&swr, "[auth]\nmax_failures = 1\n\n[[clients]]");
    let body = grants(1);
    let bytes = body.as_bytes();
    let once = signed("POST", CREATE, bytes, SK, now());
    assert_eq!(send(&gate, "POST", CREATE, &once, bytes).status, 201);
    for _ in 0..3 {
        assert_eq!(
            send(&gate, "POST", CREATE, &once, bytes).code(),
            "SWR.GATE.4010005"
        );
    }
    let next = signed("POST", CREATE, bytes, SK, now() + 1);
    assert_eq!(send(&gate, "POST", CREATE, &next, bytes).status, 201);
    assert_eq!(swr.received().len(), 2);
}

/// Signatures whose bodies are still coming in when the address uses up its failures
/// are braked too: sending many at once buys no extra guesses.
#[test]
fn guesses_sent_together_are_braked_as_their_bodies_arrive() {
    use std::io::{Read, Write};
    let swr = StandInSwr::start();
    let gate = aksk_gateway_with(&swr, "[auth]\nmax_failures = 2\n\n[[clients]]");
    let body = grants(1);
    let mut pending: Vec<std::net::TcpStream> = (0..5)
        .map(|_| {
            let guess = signed("POST", CREATE, body.as_bytes(), "a-guess", now());
            let headers: Vec<(&str, &str)> = guess
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let head = request_bytes("swr.local", "POST", CREATE, &headers, b"");
            let head = String::from_utf8(head).unwrap().replace(
                "content-length: 0",
                &format!("content-length: {}", body.len()),
            );
            let mut stream = std::net::TcpStream::connect(gate.addr).unwrap();
            stream.write_all(head.as_bytes()).unwrap();
            stream
        })
        .collect();
    // Every head is in before the first body.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let codes: Vec<String> = pending
        .iter_mut()
        .map(|stream| {
            stream.write_all(body.as_bytes()).unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).unwrap();
            parse_answer(&raw).code()
        })
        .collect();
    assert_eq!(
        codes,
        [
            "SWR.GATE.4010003",
            "SWR.GATE.4010003",
            "SWR.GATE.4290002",
            "SWR.GATE.4290002",
            "SWR.GATE.4290002"
        ]
    );
    assert!(swr.received().is_empty());
}

/// With `[auth] replay_redis_url` the used signatures are in a Redis every replica
/// shares: a request captured at one replica is a replay at another, and after a
/// restart. With the Redis away, signed requests get 503, never a pass.
#[test]
fn replicas_sharing_a_redis_accept_a_signature_once_between_them() {
    let mut redis = RedisServer::start();
    let swr = StandInSwr::start();
    std::env::set_var("SWR_GATE_TEST_REPLAY_REDIS", redis.url());
    let shared = "[auth]\nreplay_redis_url_env = \"SWR_GATE_TEST_REPLAY_REDIS\"\n\n[[clients]]";
    let one = aksk_gateway_with(&swr, shared);
    let mut two = aksk_gateway_with(&swr, shared);
    let body = grants(1);
    let bytes = body.as_bytes();
    let captured = signed("POST", CREATE, bytes, SK, now());
    assert_eq!(send(&one, "POST", CREATE, &captured, bytes).status, 201);
    assert_eq!(
        send(&two, "POST", CREATE, &captured, bytes).code(),
        "SWR.GATE.4010005"
    );
    two.stop();
    let three = aksk_gateway_with(&swr, shared);
    assert_eq!(
        send(&three, "POST", CREATE, &captured, bytes).code(),
        "SWR.GATE.4010005",
        "a restart forgets nothing"
    );
    assert_eq!(swr.received().len(), 1);

    // A connection Redis dropped (idle timeout, failover) is replaced, not a 503.
    assert_eq!(
        redis
            .command(&["CLIENT", "KILL", "TYPE", "normal"])
            .get(..1),
        Some(":")
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    let after_drop = signed("POST", CREATE, bytes, SK, now() + 2);
    assert_eq!(send(&one, "POST", CREATE, &after_drop, bytes).status, 201);
    assert_eq!(
        send(&three, "POST", CREATE, &after_drop, bytes).code(),
        "SWR.GATE.4010005"
    );
    assert_eq!(swr.received().len(), 2);

    redis.stop();
    let fresh = signed("POST", CREATE, bytes, SK, now() + 1);
    let answer = send(&one, "POST", CREATE, &fresh, bytes);
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (503, "SWR.GATE.5030005")
    );
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(swr.received().len(), 2);
}

/// A request refused with 429 before it reached SWR is sent again as it was signed (the
/// SDKs' own retry honours Retry-After): that copy is no replay, whichever store keeps
/// the signatures. Once it went through, it is.
#[test]
fn a_signed_request_refused_by_a_rate_limit_may_be_sent_again() {
    let swr = StandInSwr::start();
    let redis = RedisServer::start();
    std::env::set_var("SWR_GATE_TEST_RETRY_REDIS", redis.url());
    let limit = "[[rate_limits]]\nid = \"slow\"\nkey = \"client\"\noperations = [\"*\"]\nrate = 1\nper = \"1s\"\nburst = 1\n\n";
    for store in [
        "",
        "[auth]\nreplay_redis_url_env = \"SWR_GATE_TEST_RETRY_REDIS\"\n\n",
    ] {
        let gate = aksk_gateway_with(&swr, &format!("{store}{limit}[[clients]]"));
        let body = grants(1);
        let bytes = body.as_bytes();
        let first = signed("POST", CREATE, bytes, SK, now());
        assert_eq!(send(&gate, "POST", CREATE, &first, bytes).status, 201);
        let second = signed("POST", CREATE, bytes, SK, now() + 1);
        let refused = send(&gate, "POST", CREATE, &second, bytes);
        assert_eq!(refused.status, 429, "{store}");
        let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(wait));
        assert_eq!(
            send(&gate, "POST", CREATE, &second, bytes).status,
            201,
            "{store}"
        );
        assert_eq!(
            send(&gate, "POST", CREATE, &second, bytes).code(),
            "SWR.GATE.4010005"
        );
    }
}

#[test]
fn a_secret_key_file_rotated_in_place_takes_effect_without_a_signal() {
    let swr = StandInSwr::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("sk");
    std::fs::write(&secret, SK).unwrap();
    let client = format!(
        "[[clients]]\nid = \"release-sdk\"\ngroups = [\"release\"]\naccess_key = \"{AK}\"\nsecret_key_file = \"{}\"\n",
        secret.display()
    );
    let gate = Gateway::start_with(&swr.url(), &client, |_| {});
    let body = grants(1);
    let bytes = body.as_bytes();
    let signed_with = |secret: &str| {
        send(
            &gate,
            "POST",
            CREATE,
            &signed("POST", CREATE, bytes, secret, now()),
            bytes,
        )
    };
    assert_eq!(signed_with(SK).status, 201);

    // As Kubernetes updates a mounted Secret, with the same length and time.
    let rotated = "gateway-issued-secret-key-for-tests-0002";
    swap_in_keeping_time(&secret, rotated);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        // A second apart, so that no signature repeats and is taken for a replay.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let answer = signed_with(rotated);
        if answer.status == 201 {
            break;
        }
        assert_eq!(answer.code(), "SWR.GATE.4010003");
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated secret was never taken up"
        );
    }
    assert_eq!(signed_with(SK).code(), "SWR.GATE.4010003");
}
