//! Slow and oversized clients are cut off with an answer, not left to hold a connection;
//! a client resetting its HTTP/2 streams cannot start more requests than a connection may have.

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

/// Read until the gateway closes the connection; panics if it is still open after `limit`.
fn closed_within(mut stream: TcpStream, limit: Duration) -> Duration {
    stream.set_read_timeout(Some(limit)).unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("still open after {:?} ({e})", started.elapsed()),
    }
    started.elapsed()
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[test]
fn connections_that_send_no_request_are_closed() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    // An empty SETTINGS frame: a complete HTTP/2 handshake that never opens a stream.
    let settings = [H2_PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat();
    let openings: [&[u8]; 6] = [b"", b"P", &H2_PREFACE[..23], H2_PREFACE, &settings, b"G"];
    let streams: Vec<TcpStream> = openings
        .iter()
        .map(|opening| {
            let mut stream = TcpStream::connect(gate.addr).unwrap();
            stream.write_all(opening).unwrap();
            stream
        })
        .collect();
    std::thread::scope(|scope| {
        for (stream, opening) in streams.into_iter().zip(openings) {
            scope.spawn(move || {
                // header_timeout is 2 s; HTTP/2 gets as long again to take its GOAWAY.
                let waited = closed_within(stream, Duration::from_secs(15));
                assert!(
                    waited < Duration::from_secs(10),
                    "{opening:?}: closed after {waited:?}"
                );
            });
        }
    });
    assert!(swr.received().is_empty());
}

#[test]
fn an_idle_http1_keep_alive_connection_is_closed() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let mut stream = TcpStream::connect(gate.addr).unwrap();
    stream
        .write_all(
            format!("GET /v2/manage/repos HTTP/1.1\r\nhost: a\r\nx-api-key: {API_KEY}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 404");
    let waited = closed_within(stream, Duration::from_secs(15));
    assert!(waited < Duration::from_secs(10), "closed after {waited:?}");
}

fn h2_request(
    method: &str,
    path: &str,
    body: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://swr.local{path}"))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .unwrap()
}

#[test]
fn an_http2_connection_without_open_streams_is_sent_away() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (mut sender, driver) = h2_connect(gate.addr).await;
        let response = sender
            .send_request(h2_request("GET", "/v2/manage/repos", ""))
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        // The sender is kept: only the gateway can end this connection.
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(15), driver)
            .await
            .expect("the gateway closes an idle HTTP/2 connection")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(sender.is_closed());
    });
}

#[test]
fn a_request_in_progress_is_not_taken_for_idleness() {
    let swr = StandInSwr::start();
    swr.set(Behaviour::Slow(Duration::from_secs(5)));
    // SWR answers well after header_timeout (2 s) has passed on the connection.
    let gate = Gateway::start_with(&swr.url(), "", |config| {
        *config = config.replace("\ntimeout = \"2s\"", "\ntimeout = \"10s\"");
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (mut sender, _driver) = h2_connect(gate.addr).await;
        let response = sender
            .send_request(h2_request("POST", CREATE, &grants(1)))
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    });
    assert_eq!(swr.received().len(), 1);
}

#[test]
fn reset_http2_streams_still_count_against_the_connection_limit() {
    let swr = StandInSwr::start();
    swr.set(Behaviour::Slow(Duration::from_secs(5)));
    let gate = Gateway::start_with(&swr.url(), "", |config| {
        *config = config.replace("\ntimeout = \"2s\"", "\ntimeout = \"10s\"");
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (sender, _driver) = h2_connect(gate.addr).await;
        // Rapid reset: open streams, give the gateway time to start on them, cancel them
        // (RST_STREAM), and open more in their place.
        for round in 0..3 {
            let batch: Vec<_> = (0..200)
                .map(|_| {
                    let mut sender = sender.clone();
                    tokio::spawn(async move {
                        let _ = sender
                            .send_request(h2_request("POST", CREATE, &grants(1)))
                            .await;
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(500)).await;
            // The first round is all under the limit: wait until SWR has it all.
            let started = Instant::now();
            while round == 0 && swr.received().len() < 200 {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the first round never reached SWR"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            batch.iter().for_each(|request| request.abort());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let reached = swr.received().len();
    assert!(
        reached <= 256,
        "{reached} requests reached SWR over one connection that allows 256"
    );
}

#[test]
fn a_client_that_takes_none_of_its_answer_is_disconnected() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
        // A flow-control window of zero: no byte of an answer's body can be sent.
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(0)
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        let driver = tokio::spawn(connection);
        let started = Instant::now();
        let response = sender
            .send_request(h2_request("POST", CREATE, &grants(1)))
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        // The answer's body is never read; request_timeout is 3 s.
        let closed = tokio::time::timeout(Duration::from_secs(15), driver).await;
        assert!(closed.is_ok(), "the connection is still open");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        drop(response);
    });
}

#[test]
fn a_client_that_stops_reading_a_large_answer_is_reset() {
    const SIZE: usize = 16 << 20;
    let swr = StandInSwr::start();
    swr.set(Behaviour::Large(SIZE));
    let gate = Gateway::start_with(&swr.url(), "", forward_unmatched);
    let mut stream = small_buffered(gate.addr);
    write!(
        stream,
        "GET /v2/manage/repos HTTP/1.1\r\nhost: a\r\nx-api-key: {API_KEY}\r\n\r\n"
    )
    .unwrap();
    // Not reading: request_timeout (3 s) passes with the answer stuck in the socket.
    std::thread::sleep(Duration::from_secs(6));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut received = 0;
    let mut buffer = vec![0; 1 << 16];
    let ended = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break None,
            Ok(n) => received += n,
            Err(error) => break Some(error.kind()),
        }
    };
    assert_eq!(ended, Some(std::io::ErrorKind::ConnectionReset));
    assert!(received < SIZE, "the whole answer came through");
}

#[test]
fn connections_over_max_connections_wait_for_a_place() {
    let swr = StandInSwr::start();
    // Idle keep-alive connections stay open for header_timeout: long enough here that
    // only dropping them frees a place, however slow the machine.
    let gate = Gateway::start_with(&swr.url(), "", |config| {
        *config = config
            .replace("[server]\n", "[server]\nmax_connections = 2\n")
            .replace("header_timeout = \"2s\"", "header_timeout = \"30s\"");
    });
    // Each held connection has had an answer, so it has a place: the start-up probe's
    // connection may still hold one for a moment, and the connection waiting behind it
    // need not be the first to get it.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| answered_connection(gate.addr).expect("a held connection was closed"))
        .collect();
    let mut waiting = TcpStream::connect(gate.addr).unwrap();
    let request = format!(
        "POST {CREATE} HTTP/1.1\r\nhost: a\r\nx-api-key: {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        grants(1).len(),
        grants(1)
    );
    waiting.write_all(request.as_bytes()).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let mut first = [0u8; 1];
    assert!(waiting.read(&mut first).is_err(), "answered past the limit");
    assert!(swr.received().is_empty());
    drop(held);
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut raw = Vec::new();
    waiting.read_to_end(&mut raw).unwrap();
    assert_eq!(parse_answer(&raw).status, 201);
}

/// A keep-alive connection that has had an answer (404 to an unmatched GET), so the
/// gateway counts it; None when the gateway closed it unanswered.
fn answered_connection(addr: std::net::SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request =
        format!("GET /v2/manage/repos HTTP/1.1\r\nhost: a\r\nx-api-key: {API_KEY}\r\n\r\n");
    // Closed at once, the connection may refuse the write, or reset the read.
    stream.write_all(request.as_bytes()).ok()?;
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).ok()?;
    assert_eq!(&status, b"HTTP/1.1 404");
    Some(stream)
}

#[test]
fn an_address_holding_its_share_of_connections_gets_no_more() {
    let swr = StandInSwr::start();
    let (admin, admin_config) = with_admin();
    let gate = Gateway::start_with(&swr.url(), &admin_config, |config| {
        *config = config
            .replace("[server]\n", "[server]\nmax_connections_per_address = 2\n")
            .replace("header_timeout = \"2s\"", "header_timeout = \"30s\"");
    });
    // The start-up probe's connection may count for a moment: retry until two are held.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = Vec::new();
    while held.len() < 2 {
        assert!(Instant::now() < deadline, "two connections were never held");
        match answered_connection(gate.addr) {
            Some(stream) => held.push(stream),
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    assert!(
        answered_connection(gate.addr).is_none(),
        "a third connection from the address was served"
    );
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let metrics = http_request(admin, "127.0.0.1", "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics.body);
    let sample = |name: &str| {
        metrics.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    assert!(
        sample("swr_gate_connections_refused_total") >= Some(1.0),
        "{metrics}"
    );
    // The refused connections never held a place.
    assert_eq!(sample("swr_gate_connections"), Some(2.0), "{metrics}");
    assert!(sample("swr_gate_connections_max") > Some(2.0), "{metrics}");

    // A held connection closed gives its address a place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered_connection(gate.addr).is_none() {
        assert!(
            Instant::now() < deadline,
            "the freed place was never given back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A connection whose receive buffer is small, so that an answer backs up in the
/// gateway rather than in the kernel however the host's TCP buffers are set.
fn small_buffered(addr: std::net::SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap().into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}

#[test]
fn the_admin_listener_cuts_off_stalled_connections_and_holds_a_bounded_number() {
    let swr = StandInSwr::start();
    let (admin, admin_config) = with_admin();
    let _gate = Gateway::start_with(&swr.url(), &admin_config, |_| {});
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin));

    let silent = TcpStream::connect(admin).unwrap();
    let mut stalled = TcpStream::connect(admin).unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n")
        .unwrap();
    for connection in [stalled, silent] {
        let waited = closed_within(connection, Duration::from_secs(15));
        assert!(waited < Duration::from_secs(8), "closed after {waited:?}");
    }

    // 256 connections that send nothing take every place; the next is closed at once.
    let held: Vec<TcpStream> = (0..256)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    // Accepted in the order they came, so this one after all of them.
    let waited = closed_within(TcpStream::connect(admin).unwrap(), Duration::from_secs(10));
    assert!(waited < Duration::from_secs(1), "closed after {waited:?}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let healthz = request_bytes("127.0.0.1", "GET", "/healthz", &[], b"");
    while try_send_bytes(admin, &healthz).map(|a| a.status) != Some(200) {
        assert!(Instant::now() < deadline, "places were not given back");
        std::thread::sleep(Duration::from_millis(100));
    }
}
