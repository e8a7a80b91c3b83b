//! Slow and oversized clients are cut off with an answer, not left to hold a connection.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const CREATE: &str = "/v2/manage/namespaces/team-a/repos/app/access";

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let mut stream = TcpStream::connect(gate.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"POST /v2/manage/namespaces/team-a/repos/app/access HTTP/1.1\r\nhost: a\r\n")
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(6),
        "closed after the 2 s header timeout, not {waited:?}"
    );
    assert!(swr.received().is_empty());
}

#[test]
fn a_body_that_never_arrives_gets_408_and_nothing_is_forwarded() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let mut stream = TcpStream::connect(gate.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST {CREATE} HTTP/1.1\r\nhost: a\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n[{{\"user_id\""
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let answer = parse_answer(&raw);
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (408, "SWR.GATE.4080001")
    );
    assert!(swr.received().is_empty());
}

#[test]
fn oversized_headers_are_refused() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let huge = "x".repeat(70 * 1024);
    let answer =
        gate.try_send_raw(format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {huge}\r\n\r\n").as_bytes());
    assert!(
        answer
            .as_ref()
            .is_none_or(|a| a.status == 431 || a.status == 400),
        "{answer:?}"
    );
    assert!(swr.received().is_empty());
}
