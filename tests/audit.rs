//! The audit trail: a record for every outcome, a chain that catches tampering, nothing
//! lost under load, at shutdown, on rotation or when the disk is full.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

const CREATE: &str = "/v2/manage/namespaces/team-a/repos/app/access";

fn swr_gate(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_swr-gate"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn verify(files: &[&Path]) -> (bool, String) {
    let mut args = vec!["audit", "verify"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    swr_gate(&args)
}

/// One of four outcomes, by number: forwarded (2 records), schema, auth, unmatched route.
fn mixed(gate: &Gateway, i: usize) -> Option<Answer> {
    match i % 4 {
        0 => gate.try_json("POST", CREATE, &grants(1)),
        1 => gate.try_json("POST", CREATE, &grants(2)),
        2 => gate.try_send_raw(&request_bytes(
            "swr.local",
            "POST",
            CREATE,
            &[("x-api-key", "wrong")],
            b"[]",
        )),
        _ => gate.try_json("GET", "/v2/unknown", ""),
    }
}

fn records_for(status: u16) -> usize {
    if status == 201 {
        2
    } else {
        1
    }
}

#[test]
fn every_request_under_concurrent_load_has_its_records_and_the_chain_verifies() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", |c| {
        *c = c.replacen(
            "[[clients]]",
            "[auth]\nmax_failures = 100000\n\n[[clients]]",
            1,
        )
    });
    let next = AtomicUsize::new(0);
    let expected = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= 2000 {
                    return;
                }
                let answer = mixed(&gate, i).expect("an answer");
                expected.fetch_add(records_for(answer.status), Ordering::Relaxed);
            });
        }
    });
    let records = gate.audit_records();
    assert_eq!(records.len(), expected.load(Ordering::Relaxed));
    let completed = records.iter().filter(|r| r["stage"] == "completed").count();
    assert_eq!(completed, 2000);
    for denied_by in ["schema", "auth", "route"] {
        assert_eq!(
            records
                .iter()
                .filter(|r| r["denied_by"] == denied_by)
                .count(),
            500,
            "{denied_by}"
        );
    }
    let (ok, output) = verify(&[&gate.audit_path()]);
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!("{} records", records.len())),
        "{output}"
    );
}

#[test]
fn sigterm_under_load_loses_no_record_of_an_answered_request() {
    let swr = StandInSwr::start();
    let mut gate = Gateway::start(&swr.url());
    let answered = AtomicUsize::new(0);
    let expected = AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for t in 0..6 {
            let (answered, expected, stop, gate) = (&answered, &expected, &stop, &gate);
            scope.spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    match gate.try_json("POST", CREATE, &grants(if i % 2 == 0 { 1 } else { 2 })) {
                        Some(answer) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            expected.fetch_add(records_for(answer.status), Ordering::Relaxed);
                        }
                        None => return,
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(400));
        signal(gate.pid(), "TERM");
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
    });
    let status = gate.stop();
    assert!(status.success(), "exit code 0 after SIGTERM: {status}");
    assert!(answered.load(Ordering::Relaxed) > 10);
    let records = gate.audit_records();
    let completed = records.iter().filter(|r| r["stage"] == "completed").count();
    assert_eq!(
        completed,
        answered.load(Ordering::Relaxed),
        "one completed record per answered request"
    );
    assert_eq!(records.len(), expected.load(Ordering::Relaxed));
    let (ok, output) = verify(&[&gate.audit_path()]);
    assert!(ok, "{output}");
}

#[test]
fn editing_deleting_swapping_or_truncating_records_is_caught() {
    let swr = StandInSwr::start();
    let mut gate = Gateway::start(&swr.url());
    for i in 0..6 {
        mixed(&gate, i).unwrap();
    }
    gate.stop();
    let original = std::fs::read_to_string(gate.audit_path()).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), 8);
    let dir = tempfile::tempdir().unwrap();
    let tampered = dir.path().join("audit.jsonl");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "edit",
            original.replacen("\"status\":201", "\"status\":200", 1),
            ":2: its hash does not match",
        ),
        (
            "delete",
            lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 3)
                .map(|(_, l)| format!("{l}\n"))
                .collect(),
            ":4: its prev is not",
        ),
        (
            "swap",
            {
                let mut swapped = lines.clone();
                swapped.swap(4, 5);
                swapped.iter().map(|l| format!("{l}\n")).collect()
            },
            ":5: its prev is not",
        ),
        (
            "cut a record short in the middle",
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| match i {
                    3 => format!("{}\n", &l[..l.len() - 40]),
                    _ => format!("{l}\n"),
                })
                .collect(),
            ":5: its prev is not the previous record's hash; line 4 before it is cut short",
        ),
        (
            "insert a whole record without a hash",
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| match i {
                    3 => format!(
                        "{{\"ts\":\"2026-11-23T18:00:00.000Z\",\"client\":\"forged\"}}\n{l}\n"
                    ),
                    _ => format!("{l}\n"),
                })
                .collect(),
            ":4: not a complete record",
        ),
    ];
    for (what, text, expected) in cases {
        std::fs::write(&tampered, text).unwrap();
        let (ok, output) = verify(&[&tampered]);
        assert!(!ok, "{what} went unnoticed");
        assert!(output.contains(expected), "{what}: {output}");
    }
    std::fs::write(&tampered, &original).unwrap();
    assert!(verify(&[&tampered]).0);

    // A crash mid-write tears the last record; the gateway closes it on restart and
    // goes on from the record before it, and verify says what it skipped.
    let torn = &original[..original.len() - 40];
    std::fs::write(gate.audit_path(), torn).unwrap();
    let (ok, output) = verify(&[&gate.audit_path()]);
    assert!(ok && output.contains(":8: a torn record"), "{output}");
    let mut again = Gateway::start_with(&swr.url(), "", |c| {
        *c = c.replace(
            "path = \"audit.jsonl\"",
            &format!("path = {:?}", gate.audit_path().display().to_string()),
        )
    });
    mixed(&again, 7).unwrap();
    again.stop();
    let (ok, output) = verify(&[&gate.audit_path()]);
    assert!(ok && output.contains(":8: a torn record"), "{output}");

    // A power loss may leave zero bytes where a record was going: the same, also when
    // the gateway dies again before it writes a record after closing them.
    let mut trail = std::fs::OpenOptions::new()
        .append(true)
        .open(gate.audit_path())
        .unwrap();
    std::io::Write::write_all(&mut trail, &[0; 512]).unwrap();
    let on_the_trail = || {
        Gateway::start_with(&swr.url(), "", |c| {
            *c = c.replace(
                "path = \"audit.jsonl\"",
                &format!("path = {:?}", gate.audit_path().display().to_string()),
            )
        })
    };
    on_the_trail().stop();
    let mut again = on_the_trail();
    mixed(&again, 7).unwrap();
    again.stop();
    let (ok, output) = verify(&[&gate.audit_path()]);
    assert!(ok && output.contains("a torn record"), "{output}");

    // A whole last record whose line end a crash kept from the disk, zero bytes after it.
    let text = std::fs::read(gate.audit_path()).unwrap();
    let mut cut = text[..text.len() - 1].to_vec();
    cut.extend_from_slice(&[0; 100]);
    std::fs::write(gate.audit_path(), &cut).unwrap();
    let mut again = on_the_trail();
    mixed(&again, 7).unwrap();
    again.stop();
    let (ok, output) = verify(&[&gate.audit_path()]);
    assert!(ok, "{output}");
    let records = std::fs::read(gate.audit_path()).unwrap();
    assert!(
        records.starts_with(&text),
        "the zero bytes were cut off, the line ended"
    );

    // An empty line is an edit: written on, the chain would never verify again.
    let mut trail = std::fs::OpenOptions::new()
        .append(true)
        .open(gate.audit_path())
        .unwrap();
    std::io::Write::write_all(&mut trail, b"\n").unwrap();
    let config = gate.audit_path().with_file_name("gate.toml");
    let (ok, output) = swr_gate(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        !ok && output.contains("an empty line after its last record"),
        "{output}"
    );
}

#[test]
fn a_keyed_chain_needs_its_key_and_a_restart_continues_the_chain() {
    let swr = StandInSwr::start();
    std::env::set_var("SWR_GATE_TEST_AUDIT_KEY", "audit-key-for-tests");
    let keyed = |c: &mut String| {
        *c = c.replace(
            "path = \"audit.jsonl\"",
            "path = \"audit.jsonl\"\nhmac_key_env = \"SWR_GATE_TEST_AUDIT_KEY\"",
        )
    };
    let mut gate = Gateway::start_with(&swr.url(), "", keyed);
    mixed(&gate, 0).unwrap();
    gate.stop();
    let path = gate.audit_path();
    let absolute = path.display().to_string();
    let mut again = Gateway::start_with(&swr.url(), "", |c| {
        keyed(c);
        *c = c.replace("path = \"audit.jsonl\"", &format!("path = \"{absolute}\""));
    });
    mixed(&again, 0).unwrap();
    again.stop();
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 4);
    let (ok, output) = verify(&[&path]);
    assert!(
        !ok && output.contains(":1: its hash does not match"),
        "without the key: {output}"
    );
    let (ok, output) = swr_gate(&[
        "audit",
        "verify",
        &absolute,
        "--hmac-key-env",
        "SWR_GATE_TEST_AUDIT_KEY",
    ]);
    assert!(ok, "{output}");
}

#[test]
fn rotation_by_move_and_sighup_keeps_the_chain_and_loses_nothing() {
    let swr = StandInSwr::start();
    let mut gate = Gateway::start(&swr.url());
    let path = gate.audit_path();
    let rotated = [
        path.with_extension("jsonl.2"),
        path.with_extension("jsonl.1"),
    ];
    for (round, rotated_to) in rotated.iter().enumerate() {
        for i in 0..4 {
            mixed(&gate, i).unwrap();
        }
        std::fs::rename(&path, rotated_to).unwrap();
        if round == 0 {
            signal(gate.pid(), "HUP");
            std::thread::sleep(Duration::from_millis(300));
        } else {
            // No signal: the writer notices the file was moved away by itself.
            std::thread::sleep(Duration::from_millis(1200));
        }
    }
    for i in 0..4 {
        mixed(&gate, i).unwrap();
    }
    gate.stop();
    let count = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!(count(&rotated[0]) + count(&rotated[1]) + count(&path), 15);
    assert!(count(&rotated[1]) > 0 && count(&path) > 0);
    let (ok, output) = verify(&[&rotated[0], &rotated[1], &path]);
    assert!(ok && !output.contains("note:"), "{output}");
    let (ok, output) = verify(&[&rotated[1], &path]);
    assert!(
        ok && output.contains("note: the first record is not the trail's first"),
        "a trail verified without its oldest file says so: {output}"
    );
    let (ok, _) = verify(&[&rotated[1], &rotated[0], &path]);
    assert!(!ok, "files out of order break the chain");
}

/// A gateway whose trail, after one record, was moved away and a directory put in its
/// place, so that the path cannot be opened again.
struct Blocked {
    swr: StandInSwr,
    admin: u16,
    gate: Gateway,
    path: std::path::PathBuf,
    rotated: std::path::PathBuf,
}

impl Blocked {
    fn start() -> Blocked {
        let swr = StandInSwr::start();
        let (admin, admin_section) = with_admin();
        let gate = Gateway::start_with(&swr.url(), &admin_section, |_| {});
        let path = gate.audit_path();
        let rotated = path.with_extension("jsonl.1");
        assert_eq!(gate.json("POST", CREATE, &grants(1)).status, 201);
        assert_eq!(readyz(admin), "ready\n");
        std::fs::rename(&path, &rotated).unwrap();
        std::fs::create_dir(&path).unwrap();
        Blocked {
            swr,
            admin,
            gate,
            path,
            rotated,
        }
    }

    /// Clear the path: ready again by itself, a request recorded, the chain whole
    /// across both files.
    fn unblock(mut self) -> Blocked {
        std::fs::remove_dir(&self.path).unwrap();
        wait_for_readyz(self.admin, Duration::from_secs(10), |body| {
            body == "ready\n"
        });
        assert_eq!(self.gate.json("POST", CREATE, &grants(1)).status, 201);
        self.gate.stop();
        let (ok, output) = verify(&[&self.rotated, &self.path]);
        assert!(ok, "{output}");
        self
    }
}

/// After a rotation whose path cannot be opened again, records are refused rather than
/// written into the moved file (logrotate may delete it); /readyz says so, and says
/// ready again by itself once the path opens, without a request having to try.
#[test]
fn a_trail_that_cannot_be_reopened_refuses_until_it_can_and_readyz_follows() {
    let blocked = Blocked::start();
    signal(blocked.gate.pid(), "HUP");
    std::thread::sleep(Duration::from_millis(300));

    let answer = blocked.gate.json("POST", CREATE, &grants(1));
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (503, "SWR.GATE.5030002")
    );
    assert_eq!(
        blocked.swr.received().len(),
        1,
        "nothing unaudited reaches SWR"
    );
    let admin = blocked.admin;
    assert!(readyz(admin).contains("audit"), "{}", readyz(admin));

    let blocked = blocked.unblock();
    assert_eq!(
        std::fs::read_to_string(&blocked.rotated)
            .unwrap()
            .lines()
            .count(),
        2
    );
}

/// A trail moved away with no SIGHUP and no traffic: /readyz looks at the path by
/// itself, so a path that cannot be opened takes the gateway out of service before a
/// request is refused for it.
#[test]
fn readyz_notices_a_trail_moved_away_without_a_request() {
    let blocked = Blocked::start();
    wait_for_readyz(blocked.admin, Duration::from_secs(5), |body| {
        body.contains("audit")
    });
    blocked.unblock();
}

#[test]
fn a_full_disk_refuses_guarded_requests_or_forwards_them_as_configured() {
    let swr = StandInSwr::start();
    let full = |on_failure: &'static str| {
        move |c: &mut String| {
            *c = c.replace(
                "path = \"audit.jsonl\"",
                &format!("path = \"/dev/full\"\non_failure = \"{on_failure}\""),
            )
        }
    };
    let (admin, admin_section) = with_admin();
    let reject = Gateway::start_with(&swr.url(), &admin_section, |c| {
        full("reject")(c);
        forward_unmatched(c);
    });
    let answer = reject.json("POST", CREATE, &grants(1));
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (503, "SWR.GATE.5030002")
    );
    // A forward is recorded only once SWR answered: it does not go while records fail.
    let forward = reject.json(
        "DELETE",
        "/v2/manage/namespaces/team-a/repos/app/access",
        "",
    );
    assert_eq!(
        (forward.status, forward.code().as_str()),
        (503, "SWR.GATE.5030002")
    );
    assert!(swr.received().is_empty());
    assert!(
        readyz(admin).contains("audit"),
        "readyz names the audit log"
    );
    // Like the rest of [audit], on_failure takes a restart: a reload that says so must
    // not let requests through unrecorded all the same.
    let config = reject.audit_path().with_file_name("gate.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"reject\"", "\"continue\"")).unwrap();
    signal(reject.pid(), "HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reject.log().contains("takes effect only on restart") {
        assert!(std::time::Instant::now() < deadline, "{}", reject.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = reject.json("POST", CREATE, &grants(1));
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (503, "SWR.GATE.5030002")
    );
    assert!(swr.received().is_empty());

    let carry_on = Gateway::start_with(&swr.url(), "", full("continue"));
    assert_eq!(carry_on.json("POST", CREATE, &grants(1)).status, 201);
    assert_eq!(swr.received().len(), 1);
}

#[test]
fn query_filters_records_for_people_and_tools() {
    let swr = StandInSwr::start();
    let mut gate = Gateway::start(&swr.url());
    for i in 0..8 {
        mixed(&gate, i).unwrap();
    }
    grant_as_release_tool(&gate);
    gate.stop();
    let path = gate.audit_path().display().to_string();
    let (ok, out) = swr_gate(&[
        "audit",
        "query",
        &path,
        "--decision",
        "deny",
        "--format",
        "json",
    ]);
    assert!(ok);
    let denied: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(denied.len(), 6);
    assert!(denied.iter().all(|r| r["decision"] == "deny"));
    let (_, out) = swr_gate(&[
        "audit",
        "query",
        &path,
        "--client",
        "release-tool",
        "--operation",
        "create_user_repository_auth",
        "--format",
        "json",
    ]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let (_, out) = swr_gate(&["audit", "query", &path, "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(out.lines().count(), 0);
    let (_, out) = swr_gate(&[
        "audit",
        "query",
        &path,
        "--namespace",
        "team-a",
        "--format",
        "text",
    ]);
    assert!(out.lines().all(|l| l.contains("team-a/app")), "{out}");

    // A damaged line, not UTF-8 or not JSON, is skipped with a warning: the records after
    // it, in this file and the next, are all still found.
    let every = |files: &[&str]| {
        let (ok, out) = swr_gate(&[&["audit", "query", "--format", "json"][..], files].concat());
        assert!(ok, "{out}");
        (out.lines().filter(|l| l.starts_with('{')).count(), out)
    };
    let (records, _) = every(&[&path]);
    let mut damaged = std::fs::read(&path).unwrap();
    let second_line = damaged.iter().position(|&b| b == b'\n').unwrap() + 1;
    damaged.splice(
        second_line..second_line,
        b"\xff\xfe{torn\r\nnot json\n".to_vec(),
    );
    let damaged_path = gate.audit_path().with_extension("damaged");
    std::fs::write(&damaged_path, damaged).unwrap();
    let damaged_path = damaged_path.display().to_string();
    let (found, out) = every(&[&damaged_path, &path]);
    assert_eq!(found, 2 * records, "{out}");
    assert_eq!(
        out.matches("not a JSON record, skipped").count(),
        2,
        "{out}"
    );
}

fn grant_as_release_tool(gate: &Gateway) {
    let answer = gate.send(
        "POST",
        CREATE,
        &[
            ("x-api-key", OTHER_API_KEY),
            ("content-type", "application/json"),
        ],
        grants(3).as_bytes(),
    );
    assert_eq!(answer.status, 201);
}

/// logrotate may move the trail while the gateway is stopped (a deploy at midnight):
/// the next start finds no records and goes on from where the last run's chain ended.
#[test]
fn a_rotation_while_stopped_continues_the_chain() {
    let swr = StandInSwr::start();
    let mut gate = Gateway::start(&swr.url());
    mixed(&gate, 0).unwrap();
    gate.stop();
    let rotated = gate.audit_path().with_extension("jsonl.1");
    std::fs::rename(gate.audit_path(), &rotated).unwrap();
    let path = gate.audit_path().display().to_string();
    let mut again = Gateway::start_with(&swr.url(), "", |c| {
        *c = c.replace("path = \"audit.jsonl\"", &format!("path = {path:?}"))
    });
    mixed(&again, 0).unwrap();
    again.stop();
    let (ok, output) = verify(&[&rotated, &gate.audit_path()]);
    assert!(ok && output.contains("ok: 4 records"), "{output}");
}
