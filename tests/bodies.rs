//! Guarded bodies: media type, size however framed, strict JSON, schema; each refusal has
//! its own code and SWR receives nothing.

mod common;

use std::io::{Read, Write};

use common::*;

const CREATE: &str = "/v2/manage/namespaces/team-a/repos/app/access";

fn refused(
    gate: &Gateway,
    swr: &StandInSwr,
    answer: Answer,
    status: u16,
    code: &str,
) -> serde_json::Value {
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (status, code),
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(
        swr.received().is_empty(),
        "SWR received {:?}",
        swr.received()
    );
    let _ = gate;
    answer.json()
}

#[test]
fn each_malformed_body_gets_its_own_code() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let cases: [(&[u8], &str); 6] = [
        (br#"[{"user_id":"fb3f175c1fd146ab8cdae3272be6107b","user_name":"a","auth":1,"auth":7}]"#, "SWR.GATE.4000004"),
        (b"[{\"user_id\":\"x\"", "SWR.GATE.4000003"),
        (b"", "SWR.GATE.4000003"),
        (b"[1] [2]", "SWR.GATE.4000003"),
        (b"[\"\xff\"]", "SWR.GATE.4000006"),
        (&[b'['; 100], "SWR.GATE.4000005"),
    ];
    for (body, code) in cases {
        let answer = gate.send(
            "POST",
            CREATE,
            &[("x-api-key", API_KEY), ("content-type", "application/json")],
            body,
        );
        refused(&gate, &swr, answer, 400, code);
    }
}

#[test]
fn the_schema_answer_lists_every_violation_with_its_pointer() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let body = format!(
        r#"[{{"user_id":"{USER}","user_name":"a","auth":2}},{{"user_id":"nothex","user_name":"b","auth":1,"admin":true}}]"#
    );
    let answer = gate.json("POST", CREATE, &body);
    let json = refused(&gate, &swr, answer, 400, "SWR.GATE.4000002");
    assert_eq!(
        json["error_msg"],
        "request body does not match the schema of create_user_repository_auth"
    );
    let details = json["details"].as_array().unwrap();
    let found: Vec<(&str, &str)> = details
        .iter()
        .map(|d| {
            (
                d["pointer"].as_str().unwrap(),
                d["reason"].as_str().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("/0/auth", "enum"),
        ("/1/user_id", "pattern"),
        ("/1", "additionalProperties"),
    ] {
        assert!(found.contains(&expected), "{expected:?} not in {found:?}");
    }
    assert!(json["request_id"].is_string());
}

#[test]
fn duplicate_users_empty_lists_and_bad_sharing_fail_the_schema() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let twice = format!(
        r#"[{{"user_id":"{USER}","user_name":"a","auth":1}},{{"user_id":"{USER}","user_name":"a","auth":7}}]"#
    );
    for body in [twice.as_str(), "[]", "{}"] {
        let answer = gate.json("POST", CREATE, body);
        refused(&gate, &swr, answer, 400, "SWR.GATE.4000002");
    }
    let share = "/v2/manage/namespaces/team-a/repositories/app/access-domains/partner";
    for body in [
        r#"{"permit":"write","deadline":"forever"}"#,
        r#"{"permit":"read","deadline":"2026-13-01T00:00:00Z"}"#,
        r#"{"permit":"read","deadline":"forever","extra":1}"#,
    ] {
        let answer = gate.json("PATCH", share, body);
        refused(&gate, &swr, answer, 400, "SWR.GATE.4000002");
    }

    // The record keeps what a refused sharing asked for, also without its `permit`.
    let answer = gate.json(
        "PATCH",
        share,
        r#"{"deadline":"forever","description":"x"}"#,
    );
    refused(&gate, &swr, answer, 400, "SWR.GATE.4000002");
    let records = gate.audit_records();
    let sharing = &records.last().unwrap()["sharing"];
    assert_eq!(
        sharing,
        &serde_json::json!({"permit": null, "deadline": "forever", "description": "x"})
    );
}

#[test]
fn content_type_must_be_json() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut headers = vec![("x-api-key", API_KEY)];
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        let answer = gate.send("POST", CREATE, &headers, grants(1).as_bytes());
        refused(&gate, &swr, answer, 415, "SWR.GATE.4150001");
    }
    let encoded = [
        ("x-api-key", API_KEY),
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let answer = gate.send("POST", CREATE, &encoded, grants(1).as_bytes());
    refused(&gate, &swr, answer, 415, "SWR.GATE.4150001");
}

#[test]
fn oversized_bodies_are_refused_with_content_length_or_chunked() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let big = format!(
        r#"[{{"user_id":"{USER}","user_name":"{}","auth":1}}]"#,
        "a".repeat(5000)
    );
    let answer = gate.json("POST", CREATE, &big);
    refused(&gate, &swr, answer, 413, "SWR.GATE.4130001");

    let mut raw = format!(
        "POST {CREATE} HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in big.as_bytes().chunks(1000) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let answer = gate.send_raw(&raw);
    refused(&gate, &swr, answer, 413, "SWR.GATE.4130001");
}

#[test]
fn a_chunked_body_within_the_limit_is_forwarded_with_a_length() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let body = grants(3);
    let (a, b) = body.split_at(10);
    let raw = format!(
        "POST {CREATE} HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    assert_eq!(gate.send_raw(raw.as_bytes()).status, 201);
    let received = swr.received();
    assert!(received[0].headers.get("transfer-encoding").is_none());
    assert_eq!(
        received[0].headers["content-length"],
        received[0].body.len().to_string()
    );
}

/// hyper follows RFC 9112 §6.3: Transfer-Encoding wins over Content-Length, and two
/// different Content-Lengths are a 400. Since the gateway re-frames everything it sends,
/// whatever trails the body can only be the gateway's own next request, never SWR's.
#[test]
fn smuggling_framing_never_reaches_swr() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let body = grants(1);
    let both = format!(
        "POST {CREATE} HTTP/1.1\r\nhost: a\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let answer = gate.send_raw(both.as_bytes());
    assert_eq!(answer.status, 201);
    let received = swr.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].body, body.as_bytes());

    let twice = format!(
        "POST {CREATE} HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncontent-length: 5\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(gate.send_raw(twice.as_bytes()).status, 400);
    assert_eq!(swr.received().len(), 1);
}

/// What cannot be read as a request at all (hyper refuses it before the pipeline sees
/// it) still gets the contract's answer and an audit record, also after an answered
/// request on the same connection.
#[test]
fn unreadable_messages_get_the_contracts_answer_and_a_record() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let body = grants(1);
    let cases = [
        (
            format!("POST {CREATE} HTTP/1.1\r\nhost: a\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncontent-length: 5\r\n\r\n{body}", body.len()),
            400,
            "SWR.GATE.4000010",
        ),
        (
            format!("POST {CREATE} HTTP/1.1\r\nhost: a\r\nx-api\x01key: {API_KEY}\r\n\r\n"),
            400,
            "SWR.GATE.4000010",
        ),
        (
            format!("GET {CREATE} HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n", "a".repeat(70_000)),
            431,
            "SWR.GATE.4310001",
        ),
    ];
    for (raw, status, code) in cases {
        let answer = gate.send_raw(raw.as_bytes());
        let id = answer
            .header("x-request-id")
            .expect("x-request-id")
            .to_owned();
        assert_eq!(answer.header("connection"), Some("close"));
        let json = refused(&gate, &swr, answer, status, code);
        assert_eq!(json["request_id"], id.as_str());
        let id = id.as_str();
        let records = gate.audit_records();
        let record = records
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no record of {id}: {records:?}"));
        assert_eq!(record["status"], status);
        assert_eq!(record["denied_by"], "route");
        assert_eq!(record["reasons"][0]["code"], code);
    }

    // A target over the limit after an answered request: hyper may have read the head
    // whole, and then refuses the target rather than the head.
    let first = format!("GET /v2/elsewhere HTTP/1.1\r\nhost: a\r\nx-api-key: {API_KEY}\r\n\r\n");
    let long = format!("GET /{} HTTP/1.1\r\nhost: a\r\n\r\n", "a".repeat(70_000));
    let answers = exchange(&gate, format!("{first}{long}").as_bytes());
    let codes: Vec<_> = answers.iter().map(|a| (a.status, a.code())).collect();
    assert!(
        matches!(
            &codes[..],
            [(404, _), (414, c)] if c == "SWR.GATE.4140001"
        ) || matches!(&codes[..], [(404, _), (431, c)] if c == "SWR.GATE.4310001"),
        "{codes:?}"
    );

    // After an answered request on the same connection, also one in HTTP/1.0.
    for (version, keep_alive) in [("HTTP/1.1", ""), ("HTTP/1.0", "connection: keep-alive\r\n")] {
        let first = format!(
            "GET /v2/elsewhere {version}\r\nhost: a\r\n{keep_alive}x-api-key: {API_KEY}\r\n\r\n"
        );
        let answers = exchange(&gate, format!("{first}NOT HTTP\r\n\r\n").as_bytes());
        let codes: Vec<_> = answers.iter().map(|a| (a.status, a.code())).collect();
        assert_eq!(
            codes,
            [
                (404, "SWR.GATE.4040001".to_owned()),
                (400, "SWR.GATE.4000010".to_owned())
            ]
        );
    }
    assert!(swr.received().is_empty());
}

/// The answers the gateway sends on one connection for `bytes`, until it closes it.
fn exchange(gate: &Gateway, bytes: &[u8]) -> Vec<Answer> {
    let mut stream = std::net::TcpStream::connect(gate.addr).unwrap();
    stream.write_all(bytes).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    // Each answer starts with a status line: `HTTP/1.x NNN `.
    let starts: Vec<usize> = (0..raw.len())
        .filter(|&i| {
            let line = &raw[i..];
            line.len() > 13
                && (line.starts_with(b"HTTP/1.1 ") || line.starts_with(b"HTTP/1.0 "))
                && line[9..12].iter().all(u8::is_ascii_digit)
                && line[12] == b' '
        })
        .collect();
    let ends = starts.iter().skip(1).copied().chain([raw.len()]);
    starts
        .iter()
        .zip(ends)
        .map(|(&start, end)| parse_answer(&raw[start..end]))
        .collect()
}

/// SWR's answers pass through unparsed: one that ends with the very bytes of hyper's
/// bare refusal reaches the client as it was, and the connection serves on.
#[test]
fn an_answer_from_swr_that_ends_like_a_refusal_is_passed_on_whole() {
    const BODY: &str = "text\r\nHTTP/1.1 400 Bad Request\r\nconnection: close\r\n\
                        content-length: 0\r\ndate: Sun, 29 Nov 2026 11:32:42 GMT\r\n\r\n";
    let swr = StandInSwr::start();
    swr.set(Behaviour::Verbatim(BODY));
    let gate = Gateway::start_with(&swr.url(), "", forward_unmatched);
    let get = |connection: &str| {
        format!("GET /v2/manage/elsewhere HTTP/1.1\r\nhost: a\r\nx-api-key: {API_KEY}\r\n{connection}\r\n")
    };
    let mut stream = std::net::TcpStream::connect(gate.addr).unwrap();
    stream.write_all(get("").as_bytes()).unwrap();
    // The first answer whole before the second request, so that hyper is idle between.
    let mut raw = Vec::new();
    let mut chunk = [0; 4096];
    while !String::from_utf8_lossy(&raw).ends_with(BODY) {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&chunk[..n]);
    }
    stream
        .write_all(get("connection: close\r\n").as_bytes())
        .unwrap();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert_eq!(raw.matches(BODY).count(), 2, "{raw}");
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert_eq!(raw.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{raw}");
    assert!(!raw.contains("SWR.GATE"), "{raw}");
    let records = gate.audit_records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| r["status"] == 200), "{records:?}");
}

/// What hyper lets through but could be read two ways is refused in the contract's
/// shape: a coding before `chunked` (the gateway's re-framing would drop it), a missing,
/// repeated or malformed Host.
#[test]
fn ambiguous_framing_and_hosts_are_refused() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let body = grants(1);
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let head = format!("POST {CREATE} HTTP/1.1\r\nconnection: close\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\n");
    for (extra, framed) in [
        ("host: a\r\ntransfer-encoding: gzip, chunked\r\n", &chunked),
        (
            "host: a\r\ntransfer-encoding: identity\r\ntransfer-encoding: chunked\r\n",
            &chunked,
        ),
        (
            "host: a\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
            &chunked,
        ),
        (&format!("content-length: {}\r\n", body.len()), &body),
        (
            &format!("host: a\r\nhost: b\r\ncontent-length: {}\r\n", body.len()),
            &body,
        ),
        (
            &format!("host: a@evil\r\ncontent-length: {}\r\n", body.len()),
            &body,
        ),
        (
            &format!("host: 127.0.0.1/x y\r\ncontent-length: {}\r\n", body.len()),
            &body,
        ),
    ] {
        let answer = gate.send_raw(format!("{head}{extra}\r\n{framed}").as_bytes());
        refused(&gate, &swr, answer, 400, "SWR.GATE.4000009");
    }
    let http10 = format!(
        "POST {CREATE} HTTP/1.0\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(
        gate.send_raw(http10.as_bytes()).status,
        201,
        "HTTP/1.0 needs no Host"
    );
    let absolute = format!(
        "POST http://gate.example{CREATE} HTTP/1.1\r\nconnection: close\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(
        gate.send_raw(absolute.as_bytes()).status,
        201,
        "an absolute-form target names its host"
    );
}

/// A refused body is audited with what it held, so a search for attempted manage
/// grants finds `"auth":"7"` too; nothing is made up for what was missing.
#[test]
fn a_refused_body_is_audited_as_sent() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let body =
        r#"[{"user_id":"fb3f175c1fd146ab8cdae3272be6107b","user_name":12345,"auth":"7"},[1]]"#;
    let answer = gate.json("POST", CREATE, body);
    refused(&gate, &swr, answer, 400, "SWR.GATE.4000002");
    let records = gate.audit_records();
    assert_eq!(
        records.last().unwrap()["grants"],
        serde_json::json!([
            {"user_id": "fb3f175c1fd146ab8cdae3272be6107b", "user_name": 12345, "auth": "7"},
            {"user_id": null, "user_name": null, "auth": null}
        ])
    );
}
