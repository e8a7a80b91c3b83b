//! `swr-gate dev` as a newcomer meets it: start it, paste the printed examples.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn the_printed_curl_and_sdk_examples_work_as_printed() {
    let python = common::sdk_python();
    let (port, admin) = (common::free_port(), common::free_port());
    let mut dev = Command::new(env!("CARGO_BIN_EXE_swr-gate"))
        .args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line == "PY" {
            break;
        }
    }
    let curl_start = banner.find("curl ").expect("a curl example");
    let curl = &banner[curl_start..curl_start + banner[curl_start..].find("\n\n").unwrap()];
    let output = Command::new("bash")
        .args(["-c", &format!("{curl} -s -o /dev/null -w '%{{http_code}}'")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "201", "{curl}");

    let sdk_start = banner.find("python3 - <<'PY'").expect("an SDK example");
    let sdk = banner[sdk_start..].replacen("python3", &python.display().to_string(), 1);
    let output = Command::new("bash").args(["-c", &sdk]).output().unwrap();
    assert!(
        output.status.success(),
        "{sdk}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    assert_eq!(common::readyz(admin), "ready\n");
    let _ = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status();
    assert!(dev.wait().unwrap().success(), "dev exits 0 on SIGTERM");
}
