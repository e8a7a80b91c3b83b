//! Running it as a service: metrics a Prometheus parser reads and that match the traffic,
//! and hot reload under load with no failed request.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

const CREATE: &str = "/v2/manage/namespaces/team-a/repos/app/access";

fn get(url: &str) -> String {
    let output = Command::new("curl").args(["-s", url]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// `swr_gate_config_reloads_total{result}` on the admin port.
fn reloads(admin: u16, result: &str) -> f64 {
    let line = format!("swr_gate_config_reloads_total{{result=\"{result}\"}} ");
    let text = get(&format!("http://127.0.0.1:{admin}/metrics"));
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// `(name, labels, value)` of every sample, as the official Python client parses them.
fn parse_metrics(text: &str) -> Vec<(String, serde_json::Value, f64)> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps([s.name, s.labels, s.value]))
"#;
    let mut child = Command::new(sdk_python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "not parseable: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str::<(String, serde_json::Value, f64)>(l).unwrap())
        .collect()
}

fn sample(
    samples: &[(String, serde_json::Value, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, v)| v)
        .sum()
}

#[test]
fn metrics_parse_and_count_the_traffic_sent() {
    let swr = StandInSwr::start();
    let (admin, section) = with_admin();
    let limit = "[[rate_limits]]\nid = \"tight\"\nkey = \"client\"\noperations = [\"update_repo_domains\"]\nrate = 1\nper = \"1h\"\n";
    let gate = Gateway::start_with(&swr.url(), &format!("{section}{limit}"), |_| {});
    for _ in 0..3 {
        assert_eq!(gate.json("POST", CREATE, &grants(1)).status, 201);
    }
    for _ in 0..2 {
        assert_eq!(gate.json("POST", CREATE, &grants(2)).status, 400);
    }
    assert_eq!(
        gate.send("POST", CREATE, &[("x-api-key", "nope")], b"[]")
            .status,
        401
    );
    let share = "/v2/manage/namespaces/team-a/repositories/app/access-domains/partner";
    let body = r#"{"permit":"read","deadline":"forever"}"#;
    assert_eq!(gate.json("PATCH", share, body).status, 201);
    assert_eq!(gate.json("PATCH", share, body).status, 429);

    let samples = parse_metrics(&get(&format!("http://127.0.0.1:{admin}/metrics")));
    let requests = |labels: &[(&str, &str)]| sample(&samples, "swr_gate_requests_total", labels);
    assert_eq!(
        requests(&[
            ("operation", "create_user_repository_auth"),
            ("decision", "allow"),
            ("status", "201")
        ]),
        3.0
    );
    assert_eq!(
        requests(&[
            ("operation", "create_user_repository_auth"),
            ("decision", "deny"),
            ("status", "400")
        ]),
        2.0
    );
    assert_eq!(requests(&[("status", "401")]), 1.0);
    assert_eq!(requests(&[]), 8.0);
    assert_eq!(
        sample(
            &samples,
            "swr_gate_auth_failures_total",
            &[("reason", "unknown_credential")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "swr_gate_rate_limited_total",
            &[("operation", "update_repo_domains")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "swr_gate_request_duration_seconds_count",
            &[("operation", "create_user_repository_auth")]
        ),
        6.0
    );
    assert_eq!(
        sample(&samples, "swr_gate_upstream_duration_seconds_count", &[]),
        4.0
    );
    assert_eq!(
        sample(&samples, "swr_gate_audit_write_errors_total", &[]),
        0.0
    );
    // Series an alert would watch are there, at 0, before anything happened to them.
    let present = |name: &str, label: &str, value: &str| {
        samples
            .iter()
            .any(|(n, l, v)| n == name && l[label] == value && *v == 0.0)
    };
    assert!(present("swr_gate_auth_failures_total", "reason", "replay"));
    assert!(present(
        "swr_gate_rate_limited_total",
        "operation",
        "forward"
    ));
    assert_eq!(get(&format!("http://127.0.0.1:{admin}/healthz")), "ok\n");
}

#[test]
fn twenty_reloads_under_load_half_broken_fail_no_request() {
    let swr = StandInSwr::start();
    let (admin, section) = with_admin();
    let gate = Gateway::start_with(&swr.url(), &section, |_| {});
    let config_path = gate.dir.path().join("gate.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let stop = AtomicBool::new(false);
    let (sent, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let reloads = |result: &str| reloads(admin, result);
    std::thread::scope(|scope| {
        // Stops the load however the reloading below ends, a failed assertion included.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        for _ in 0..4 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                    sent.fetch_add(1, Ordering::Relaxed);
                    match gate.try_json("POST", CREATE, &grants(1)) {
                        Some(answer) if answer.status == 201 => {}
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        let mut text = original.clone();
        for round in 0..20 {
            let key = format!("reload-key-{round}");
            let broken = round % 2 == 1;
            let next = if broken {
                format!("{text}\n[[clients]]\nid = \"broken-{round}\"\napi_key_sha256 = 42\n")
            } else {
                format!(
                    "{text}\n[[clients]]\nid = \"reload-{round}\"\napi_key_sha256 = \"{}\"\n",
                    sha256_hex(key.as_bytes())
                )
            };
            let (ok_before, err_before) = (reloads("ok"), reloads("error"));
            std::fs::write(&config_path, &next).unwrap();
            signal(gate.pid(), "HUP");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (ok, err) = (reloads("ok"), reloads("error"));
                if (!broken && ok > ok_before) || (broken && err > err_before) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: the reload was not reported"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            if broken {
                let ok_before = reloads("ok");
                std::fs::write(&config_path, &text).unwrap();
                signal(gate.pid(), "HUP");
                while reloads("ok") <= ok_before {
                    std::thread::sleep(Duration::from_millis(50));
                }
            } else {
                text = next;
                let answer = gate.send(
                    "POST",
                    CREATE,
                    &[("x-api-key", &key), ("content-type", "application/json")],
                    grants(1).as_bytes(),
                );
                assert_eq!(
                    answer.status, 201,
                    "round {round}: the new client works after the reload"
                );
            }
        }
    });
    assert!(sent.load(Ordering::Relaxed) > 50);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the reloads"
    );
    assert!(reloads("error") >= 10.0);
    assert!(reloads("ok") >= 10.0);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The watcher reads what loading reads, never a walk of the tree: a symlink loop in
/// the policy directory leaves the gateway answering and stoppable. An emptied
/// `routes.toml` is refused, and the guarded operations stay guarded.
#[test]
fn a_symlink_loop_or_an_emptied_routes_file_changes_nothing() {
    let swr = StandInSwr::start();
    let (admin, section) = with_admin();
    let policies = tempfile::tempdir().unwrap();
    copy_dir(&allow_all_policy_dir(), policies.path());
    let dir = policies.path().display().to_string();
    let mut gate = Gateway::start_with(&swr.url(), &section, |c| {
        forward_unmatched(c);
        *c = c.replace(&allow_all_policy_dir().display().to_string(), &dir);
    });
    std::os::unix::fs::symlink(".", policies.path().join("loop1")).unwrap();
    std::os::unix::fs::symlink(".", policies.path().join("loop2")).unwrap();
    std::fs::write(policies.path().join("routes.toml"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(admin, "error") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the emptied routes.toml was not noticed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gate.log()
            .contains("no route for create_user_repository_auth"),
        "{}",
        gate.log()
    );
    assert_eq!(readyz(admin), "ready\n");
    let invalid = gate.json("POST", CREATE, r#"[{"user_id":"x","auth":"7"}]"#);
    assert_eq!(invalid.status, 400, "still validated: {}", invalid.json());
    assert!(swr.received().is_empty());
    assert!(gate.stop().success(), "SIGTERM still stops it");
}

#[test]
fn a_gateway_whose_log_reader_has_gone_answers_and_stops_cleanly() {
    use std::io::BufRead;
    use std::process::Stdio;

    let swr = StandInSwr::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    // Retried on another port when the one picked was taken before the gateway bound it.
    let (mut gateway, addr) = (0..5)
        .find_map(|_| {
            let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            std::fs::write(&path, config(addr, &swr.url(), "")).unwrap();
            let mut gateway = Command::new(env!("CARGO_BIN_EXE_swr-gate"))
                .args(["serve", "--config"])
                .arg(&path)
                .env("SWR_GATE_TEST_TOKEN", TOKEN)
                .env("RUST_LOG", "debug")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let log = std::io::BufReader::new(gateway.stderr.take().unwrap());
            // The log's reader goes away once the gateway listens: every later line
            // (a debug line per request) meets a closed pipe.
            let listening = log
                .lines()
                .map_while(Result::ok)
                .any(|line| line.contains("swr-gate listening"));
            if listening {
                Some((gateway, addr))
            } else {
                let _ = gateway.wait();
                None
            }
        })
        .expect("the gateway listens");

    let forwarded = http_request(
        addr,
        "127.0.0.1",
        "POST",
        CREATE,
        &[("x-api-key", API_KEY), ("content-type", "application/json")],
        grants(3).as_bytes(),
    );
    assert_eq!(forwarded.status, 201);
    let refused = http_request(
        addr,
        "127.0.0.1",
        "GET",
        "/v2/unknown",
        &[("x-api-key", API_KEY)],
        b"",
    );
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (404, "SWR.GATE.4040001")
    );

    signal(gateway.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = gateway.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "a panic exits with 101");
}

/// Ctrl-C twice: the second signal ends the drain at once instead of waiting out
/// `request_timeout` for a request SWR is slow to answer.
#[test]
fn a_second_signal_stops_the_drain_at_once() {
    let swr = StandInSwr::start();
    swr.set(Behaviour::Slow(Duration::from_secs(30)));
    let gate = Gateway::start_with(&swr.url(), "", |c| {
        *c = c
            .replace("request_timeout = \"3s\"", "request_timeout = \"30s\"")
            .replace("\ntimeout = \"2s\"\n", "\ntimeout = \"30s\"\n");
    });
    std::thread::scope(|scope| {
        scope.spawn(|| gate.try_json("POST", CREATE, &grants(1)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while swr.received().is_empty() {
            assert!(Instant::now() < deadline, "the request did not reach SWR");
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(gate.pid(), "TERM");
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        signal(gate.pid(), "INT");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gate.exited() {
            assert!(Instant::now() < deadline, "still draining: {}", gate.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(gate.log().contains("stopped draining"), "{}", gate.log());
    });
}
