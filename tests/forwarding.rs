//! Guarded operations go to SWR with the canonical path, the canonical body and the
//! injected token, and nothing of the client's credentials.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const CREATE: &str = "/v2/manage/namespaces/team-a/repos/app/access";
const SHARE: &str = "/v2/manage/namespaces/team-a/repositories/group$app/access-domains/partner";

#[test]
fn each_guarded_operation_is_forwarded_canonically_with_the_injected_token() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let cases = [
        (
            "POST",
            CREATE,
            grants(7),
            "/v2/manage/namespaces/team-a/repos/app/access",
            201,
        ),
        (
            "PATCH",
            "/v2/manage/namespaces/team-a/repos/group%24app/access",
            grants(3),
            "/v2/manage/namespaces/team-a/repos/group$app/access",
            201,
        ),
        (
            "PATCH",
            "/v2/manage/namespaces/team-a/repositories/group%2Fapp/access-domains/partner",
            r#"{"permit":"read","deadline":"2030-01-01T00:00:00.000Z","description":"ci"}"#
                .to_owned(),
            "/v2/manage/namespaces/team-a/repositories/group$app/access-domains/partner",
            201,
        ),
    ];
    for (method, path, body, upstream_path, status) in cases {
        swr.clear();
        let answer = gate.json(method, path, &body);
        assert_eq!(
            answer.status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let received = swr.received();
        assert_eq!(received.len(), 1);
        let got = &received[0];
        assert_eq!(got.method, method);
        assert_eq!(got.path_and_query, upstream_path);
        assert_eq!(got.headers["x-auth-token"], TOKEN);
        assert!(got.headers.get("authorization").is_none());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&got.body).unwrap(),
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        );
        assert_eq!(
            got.headers["x-request-id"],
            answer.header("x-request-id").unwrap()
        );
        assert_eq!(got.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(
            answer.header("x-swr-seen"),
            Some("1"),
            "SWR's answer comes back"
        );
    }
}

#[test]
fn what_swr_receives_is_the_validated_document_re_serialised() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let body =
        format!("[ {{ \"user_id\" : \"{USER}\" ,\n\t\"user_name\":\"user01\",\"auth\": 7.0 }} ]");
    let answer = gate.json("POST", CREATE, &body);
    assert_eq!(answer.status, 201);
    let received = swr.received();
    assert_eq!(
        String::from_utf8(received[0].body.clone()).unwrap(),
        format!(r#"[{{"user_id":"{USER}","user_name":"user01","auth":7}}]"#)
    );
    assert_eq!(
        received[0].headers["content-length"],
        received[0].body.len().to_string()
    );
}

#[test]
fn the_client_request_id_is_kept_and_swr_errors_pass_through() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let answer = gate.send(
        "POST",
        "/v2/manage/namespaces/team-a/repos/unknown/access",
        &[
            ("authorization", &format!("Bearer {API_KEY}")),
            ("content-type", "application/json"),
            ("x-request-id", "trace-42"),
        ],
        grants(1).as_bytes(),
    );
    assert_eq!(
        answer.status, 404,
        "SWR's 404 for an unknown image is passed back"
    );
    assert_eq!(answer.json()["error_code"], "SVCSTG.SWR.4040000");
    assert_eq!(answer.header("x-request-id"), Some("trace-42"));
    assert_eq!(swr.received()[0].headers["x-request-id"], "trace-42");
}

/// Behind a trusted proxy the client is the nearest X-Forwarded-For entry the proxy
/// wrote, with or without a port; what the client wrote beyond it is not read, and an
/// entry of the proxy's that names no address is refused rather than put on the
/// proxy's account (which every client behind it would share).
#[test]
fn a_trusted_proxys_forwarded_for_names_the_client() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", |config| {
        *config = config.replace(
            "[server]\n",
            "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        );
    });
    let send = |forwarded_for: &str| {
        gate.send(
            "POST",
            CREATE,
            &[
                ("x-api-key", API_KEY),
                ("content-type", "application/json"),
                ("x-forwarded-for", forwarded_for),
                ("x-forwarded-proto", "https"),
            ],
            grants(1).as_bytes(),
        )
    };
    for (forwarded_for, client) in [
        ("198.51.100.7", "198.51.100.7"),
        ("junk, 198.51.100.7:52311", "198.51.100.7"),
        ("[2001:db8::7]:443, 127.0.0.1", "2001:db8::7"),
    ] {
        let answer = send(forwarded_for);
        assert_eq!(answer.status, 201, "{forwarded_for}");
        let records = gate.audit_records();
        assert_eq!(
            records.last().unwrap()["client_ip"],
            client,
            "{forwarded_for}"
        );
    }
    let received = swr.received();
    assert_eq!(
        received.last().unwrap().headers["x-forwarded-proto"],
        "https"
    );
    // A line that is not UTF-8 reaches SWR too: it holds the entry the client was read from.
    let body = grants(1);
    let mut raw = format!(
        "POST {CREATE} HTTP/1.1\r\nHost: gate\r\nX-Api-Key: {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nX-Forwarded-For: ",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(b"\xff, 198.51.100.9\r\n\r\n");
    raw.extend_from_slice(body.as_bytes());
    assert_eq!(gate.send_raw(&raw).status, 201);
    assert_eq!(
        gate.audit_records().last().unwrap()["client_ip"],
        "198.51.100.9"
    );
    assert_eq!(
        swr.received().last().unwrap().headers["x-forwarded-for"].as_bytes(),
        b"\xff, 198.51.100.9, 127.0.0.1"
    );
    let forwarded = swr.received().len();
    let answer = send("198.51.100.7, unknown");
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (400, "SWR.GATE.4000009")
    );
    assert_eq!(swr.received().len(), forwarded);
}

#[test]
fn credentials_and_hop_by_hop_headers_are_not_forwarded() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let answer = gate.send(
        "POST",
        CREATE,
        &[
            ("x-api-key", API_KEY),
            ("content-type", "application/json;charset=UTF-8"),
            ("x-auth-token", "client-supplied-token"),
            ("x-security-token", "sts"),
            ("x-sdk-date", "20260101T000000Z"),
            ("connection", "close, x-hop, content-type"),
            ("x-hop", "1"),
            ("x_auth_token", "client-supplied-token"),
            ("x_sdk_date", "20260101T000000Z"),
            ("proxy-status", "x"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "5.5.5.5, 4.4.4.4"),
            ("x-real-ip", "7.7.7.7"),
            ("forwarded", "for=7.7.7.7"),
            (
                "x-original-url",
                "/v2/manage/namespaces/team-b/repos/tool/access",
            ),
            (
                "x-rewrite-url",
                "/v2/manage/namespaces/team-b/repos/tool/access",
            ),
            (
                "x-original-uri",
                "/v2/manage/namespaces/team-b/repos/tool/access",
            ),
            ("x-forwarded-prefix", "/v2/manage/namespaces/team-b"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "gopher"),
        ],
        grants(1).as_bytes(),
    );
    assert_eq!(answer.status, 201);
    let headers = &swr.received()[0].headers;
    assert_eq!(headers["x-auth-token"], TOKEN);
    for name in [
        "x-api-key",
        "x-security-token",
        "x-sdk-date",
        "x-hop",
        "authorization",
        "x-real-ip",
        "forwarded",
        "x-original-url",
        "x-rewrite-url",
        "x-original-uri",
        "x-forwarded-prefix",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x_auth_token",
        "x_sdk_date",
        "proxy-status",
    ] {
        assert!(headers.get(name).is_none(), "{name} reached SWR");
    }
    // The body SWR gets is the gateway's JSON, typed as such whatever Connection named.
    assert_eq!(headers["content-type"], "application/json;charset=UTF-8");
    let forwarded_for: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(forwarded_for, ["6.6.6.6, 5.5.5.5, 4.4.4.4, 127.0.0.1"]);
}

#[test]
fn unmatched_routes_are_refused_by_default_and_forwarded_when_configured() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let answer = gate.send(
        "GET",
        "/v2/manage/namespaces/team-a/repos/app/access",
        &[("x-api-key", API_KEY)],
        b"",
    );
    assert_eq!(answer.status, 404);
    assert_eq!(answer.code(), "SWR.GATE.4040001");
    assert!(swr.received().is_empty());

    let forwarding = Gateway::start_with(&swr.url(), "", forward_unmatched);
    let answer = forwarding.send(
        "GET",
        "/v2/manage/namespaces/team-a/repos/app/access?filter=x",
        &[("x-api-key", API_KEY), ("x-auth-token", "client-token")],
        b"",
    );
    assert_eq!(answer.status, 201);
    let received = swr.received();
    assert_eq!(
        received[0].path_and_query,
        "/v2/manage/namespaces/team-a/repos/app/access?filter=x"
    );
    assert_eq!(received[0].headers["x-auth-token"], TOKEN);
    let record = forwarding.audit_records().pop().unwrap();
    assert_eq!(
        (&record["namespace"], &record["repository"]),
        (&"team-a".into(), &"app".into())
    );

    // SWR's own revocation on a guarded path is recorded with its names, so that
    // `audit query --repository` finds it beside the grants.
    let revoke = "/v2/manage/namespaces/team-a/repos/group%2Fapp/access?user_ids=u1";
    let answer = forwarding.send("DELETE", revoke, &[("x-api-key", API_KEY)], b"");
    assert_eq!(answer.status, 201);
    assert_eq!(
        swr.received()[1].path_and_query,
        "/v2/manage/namespaces/team-a/repos/group$app/access?user_ids=u1"
    );
    let record = forwarding.audit_records().pop().unwrap();
    assert_eq!(record["repository"], "group/app", "{record}");
    assert_eq!(record["operation"], serde_json::Value::Null, "{record}");
}

#[test]
fn upstream_down_slow_and_resetting_give_contract_errors() {
    let swr = StandInSwr::start();
    let down = format!("http://127.0.0.1:{}", free_port());
    let gate = Gateway::start(&down);
    let answer = gate.json("POST", CREATE, &grants(1));
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (502, "SWR.GATE.5020001")
    );

    let gate = Gateway::start(&swr.url());
    swr.set(Behaviour::Slow(Duration::from_secs(4)));
    let answer = gate.json("POST", CREATE, &grants(1));
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (504, "SWR.GATE.5040001")
    );

    swr.set(Behaviour::Reset);
    let answer = gate.json("POST", CREATE, &grants(1));
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (502, "SWR.GATE.5020001")
    );
    assert!(answer.header("x-request-id").is_some());

    // An interim status for an answer: no request the gateway sends asks to switch.
    let interim = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", interim.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in interim.incoming() {
            let mut stream = stream.unwrap();
            let _ = stream.read(&mut [0; 8192]);
            let _ = stream.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            );
        }
    });
    let gate = Gateway::start(&url);
    let answer = gate.json("POST", CREATE, &grants(1));
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (502, "SWR.GATE.5020001")
    );
    let records = gate.audit_records();
    assert_eq!(
        records.last().unwrap()["upstream_status"],
        101,
        "{records:?}"
    );
}

#[test]
fn sigterm_lets_a_request_in_flight_finish_and_refuses_new_connections() {
    let swr = StandInSwr::start();
    let (admin, admin_section) = with_admin();
    let mut gate = Gateway::start_with(&swr.url(), &admin_section, |_| {});
    swr.set(Behaviour::Slow(Duration::from_millis(1500)));
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| gate.json("POST", CREATE, &grants(1)));
        std::thread::sleep(Duration::from_millis(400));
        signal(gate.pid(), "TERM");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            std::net::TcpStream::connect(gate.addr).is_err(),
            "no new connection is accepted once SIGTERM came"
        );
        assert_eq!(readyz(admin), "not ready: shutting down\n");
        assert_eq!(in_flight.join().unwrap().status, 201);
    });
    assert!(gate.stop().success(), "exit 0 after draining");
    assert_eq!(swr.received().len(), 1);
}

#[test]
fn no_token_means_503_and_nothing_forwarded() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", |c| {
        *c = c.replace("SWR_GATE_TEST_TOKEN", "SWR_GATE_UNSET_TOKEN")
    });
    let answer = gate.json("POST", CREATE, &grants(1));
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (503, "SWR.GATE.5030001")
    );
    assert!(swr.received().is_empty());
}

#[test]
fn http2_prior_knowledge_is_served_and_forwarded() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let request = http::Request::builder()
            .method("PATCH")
            .uri(format!("http://{}{SHARE}", gate.addr))
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                r#"{"permit":"read","deadline":"forever"}"#,
            )))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        response.status().as_u16()
    });
    assert_eq!(status, 201);
    assert_eq!(
        swr.received()[0].path_and_query,
        "/v2/manage/namespaces/team-a/repositories/group$app/access-domains/partner"
    );
}

/// The first audit record with `request_id` and `stage`, waiting up to 10 s for it.
fn record_of(gate: &Gateway, request_id: &str, stage: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = gate
            .audit_records()
            .into_iter()
            .find(|r| r["request_id"] == request_id && r["stage"] == stage);
        if let Some(record) = found {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "no {stage} record for {request_id}: {:?}",
            gate.audit_records()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A guarded request with the CI bot's key and the given request id.
fn guarded_request(request_id: &str) -> Vec<u8> {
    request_bytes(
        "swr.local",
        "POST",
        CREATE,
        &[
            ("x-api-key", API_KEY),
            ("content-type", "application/json"),
            ("x-request-id", request_id),
        ],
        grants(1).as_bytes(),
    )
}

#[test]
fn swr_stalling_mid_answer_is_504_within_the_upstream_timeout() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    swr.set(Behaviour::StallMidAnswer { chunked: false });
    let started = Instant::now();
    let answer = gate.send_raw(&guarded_request("stalled-answer"));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (504, "SWR.GATE.5040001")
    );
    assert_eq!(answer.json()["request_id"], "stalled-answer");
    let completed = record_of(&gate, "stalled-answer", "completed");
    assert_eq!(completed["status"], 504);
    assert_eq!(completed["denied_by"], "upstream");
    assert_eq!(
        completed["upstream_status"], 201,
        "SWR's head came: it acted on the request"
    );
    let upstream_ms = completed["upstream_ms"].as_f64().unwrap();
    assert!(
        upstream_ms >= 1000.0,
        "upstream_ms {upstream_ms} covers the wait for the body, not only the head"
    );
}

#[test]
fn swr_stalling_mid_stream_cuts_the_client_off_after_the_idle_timeout() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    swr.set(Behaviour::StallMidAnswer { chunked: true });
    let started = Instant::now();
    let answer = gate.send_raw(&guarded_request("stalled-stream"));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the connection was still open after {:?}",
        started.elapsed()
    );
    assert_eq!(answer.status, 201, "the head had been sent on");
    assert_eq!(answer.body, b"{");
    assert!(
        gate.log().contains("SWR sent nothing of its answer for 2s"),
        "{}",
        gate.log()
    );

    // SWR closing the connection midway: cut off too, and said so in the log.
    swr.set(Behaviour::CutMidStream);
    let answer = gate.send_raw(&guarded_request("cut-stream"));
    assert_eq!((answer.status, answer.body.as_slice()), (201, &b"{"[..]));
    assert!(gate.log().contains("broke off midway"), "{}", gate.log());
}

#[test]
fn a_client_that_hangs_up_still_has_its_request_completed_and_recorded_through_sigterm() {
    let swr = StandInSwr::start();
    let mut gate = Gateway::start(&swr.url());
    swr.set(Behaviour::Slow(Duration::from_millis(1500)));
    let mut client = TcpStream::connect(gate.addr).unwrap();
    client.write_all(&guarded_request("hung-up")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(client);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        gate.stop().success(),
        "the drain waits for the request SWR has, though its client left"
    );
    let completed = record_of(&gate, "hung-up", "completed");
    assert_eq!(completed["decision"], "allow");
    assert_eq!(completed["upstream_status"], 201);
    assert_eq!(completed["status"], 201, "the answer the gateway gave");
    assert!(completed["upstream_ms"].as_f64().unwrap() >= 1000.0);
    record_of(&gate, "hung-up", "decided");
    assert_eq!(swr.received().len(), 1);
}

#[test]
fn a_request_swr_has_when_the_drain_grace_ends_gets_a_completed_record() {
    let swr = StandInSwr::start();
    let mut gate = Gateway::start_with(&swr.url(), "", |c| {
        *c = c
            .replace("request_timeout = \"3s\"", "request_timeout = \"1s\"")
            .replace("\ntimeout = \"2s\"", "\ntimeout = \"10s\"")
    });
    swr.set(Behaviour::Slow(Duration::from_secs(5)));
    let in_flight = std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| gate.try_send_raw(&guarded_request("drained")));
        std::thread::sleep(Duration::from_millis(500));
        signal(gate.pid(), "TERM");
        in_flight.join().unwrap()
    });
    assert!(in_flight.is_none(), "cut off at the end of the grace");
    assert!(gate.stop().success());
    let completed = record_of(&gate, "drained", "completed");
    assert_eq!(completed["decision"], "error");
    assert_eq!(completed["status"], Value::Null);
    assert_eq!(completed["upstream_status"], Value::Null);
    assert_eq!(completed["reasons"][0]["code"], "SWR.GATE.5030004");
    assert_eq!(
        completed["reasons"][0]["message"],
        "the gateway stopped before SWR answered"
    );
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_swr-gate"))
        .args(["audit", "verify"])
        .arg(gate.audit_path())
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
}

/// An unmatched request, forwarded with its body streamed: a head announcing 100 bytes
/// and the first 10 of them.
fn partial_forwarded_request(request_id: &str) -> Vec<u8> {
    let mut bytes = format!(
        "POST /v2/fwd-stall HTTP/1.1\r\nhost: swr.local\r\nx-api-key: {API_KEY}\r\n\
         x-request-id: {request_id}\r\ncontent-length: 100\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(b"0123456789");
    bytes
}

#[test]
fn a_forwarded_body_is_the_clients_fault_when_it_stalls_or_is_cut_off() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", |c| {
        forward_unmatched(c);
        *c = c.replace("\ntimeout = \"2s\"", "\ntimeout = \"5s\"");
    });

    let mut client = TcpStream::connect(gate.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .write_all(&partial_forwarded_request("body-stalled"))
        .unwrap();
    let mut raw = Vec::new();
    let _ = client.read_to_end(&mut raw);
    let answer = parse_answer(&raw);
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (408, "SWR.GATE.4080001")
    );
    let completed = record_of(&gate, "body-stalled", "completed");
    assert_eq!(completed["denied_by"], "body");
    assert_eq!(completed["decision"], "deny");

    let mut client = TcpStream::connect(gate.addr).unwrap();
    client
        .write_all(&partial_forwarded_request("body-cut"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(client);
    let completed = record_of(&gate, "body-cut", "completed");
    assert_eq!(completed["status"], 400);
    assert_eq!(completed["denied_by"], "body");
    assert_eq!(completed["reasons"][0]["code"], "SWR.GATE.4000003");
}

/// A request body sent as the given DATA frames, whatever its headers declare.
struct Frames(std::collections::VecDeque<bytes::Bytes>);

impl hyper::body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop_front()
                .map(|data| Ok(hyper::body::Frame::data(data))),
        )
    }
}

#[test]
fn an_http2_body_longer_than_its_content_length_is_not_forwarded_whole() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", forward_unmatched);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (mut sender, _driver) = h2_connect(gate.addr).await;
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/v2/manage/namespaces", gate.addr))
            .header("x-api-key", API_KEY)
            .header("x-request-id", "overlong")
            .header("content-length", "3")
            .body(Frames(["abc", "def"].map(bytes::Bytes::from).into()))
            .unwrap();
        let _ = sender.send_request(request).await;
    });
    let completed = record_of(&gate, "overlong", "completed");
    assert_eq!(completed["denied_by"], "body", "{completed}");
    assert!(
        swr.received().iter().all(|request| request.body.is_empty()),
        "SWR took the first 3 bytes as the whole request"
    );
}

/// HTTP/2 names the host twice when a client sends `Host` beside `:authority`: if they
/// differ, the request is malformed (RFC 9113 §8.3.1), as two Host headers are in HTTP/1.1.
#[test]
fn an_http2_authority_that_disagrees_with_host_or_too_many_fields_are_refused() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let send = |host: &'static str, extra_fields: usize| {
        runtime.block_on(async {
            let (mut sender, _driver) = h2_connect(gate.addr).await;
            let mut request = http::Request::builder()
                .method("POST")
                .uri(format!("http://{}{CREATE}", gate.addr))
                .header("host", host.replace("GATE", &gate.addr.to_string()))
                .header("x-api-key", API_KEY)
                .header("content-type", "application/json");
            for n in 0..extra_fields {
                request = request.header(format!("x-extra-{n}"), "1");
            }
            let request = request
                .body(Frames([bytes::Bytes::from(grants(1))].into()))
                .unwrap();
            let answer = sender.send_request(request).await.unwrap();
            let status = answer.status().as_u16();
            let body = http_body_util::BodyExt::collect(answer.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or_default(),
            )
        })
    };
    let (status, body) = send("swr.example.com", 0);
    assert_eq!(status, 400);
    assert_eq!(body["error_code"], "SWR.GATE.4000009", "{body}");
    // HTTP/1.1's head parser takes 100 fields at most; HTTP/2 is held to the same.
    let (status, body) = send("GATE", 150);
    assert_eq!(status, 431);
    assert_eq!(body["error_code"], "SWR.GATE.4310001", "{body}");
    assert!(swr.received().is_empty());
    assert_eq!(send("GATE", 0).0, 201);
}
