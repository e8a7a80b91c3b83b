//! `swr-gate dev` as a newcomer meets it: start it, paste the printed examples.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};

/// A running `swr-gate dev` and the banner it printed, up to the end of its SDK example.
struct Dev {
    child: Child,
    /// Held open: `dev` would die of a closed stdout on its next print.
    _stdout: BufReader<ChildStdout>,
    banner: String,
    port: u16,
    admin: u16,
}

impl Dev {
    fn start() -> Dev {
        let (port, admin) = (common::free_port(), common::free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_swr-gate"))
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
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        for line in (&mut stdout).lines() {
            let line = line.unwrap();
            banner.push_str(&line);
            banner.push('\n');
            if line == "PY" {
                break;
            }
        }
        Dev {
            child,
            _stdout: stdout,
            banner,
            port,
            admin,
        }
    }

    /// The value printed after `label` on its line.
    fn printed(&self, label: &str) -> &str {
        let line = self.banner.lines().map(str::trim_start);
        let value = line.filter_map(|l| l.strip_prefix(label)).next();
        value
            .unwrap_or_else(|| panic!("{label} in {}", self.banner))
            .trim()
    }

    /// The audit trail's records so far.
    fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.printed("Audit trail:"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn stop(mut self) {
        assert_eq!(common::readyz(self.admin), "ready\n");
        let status = self.terminate().unwrap();
        assert!(status.success(), "dev exits 0 on SIGTERM");
    }

    /// SIGTERM, as Ctrl-C would: `dev` removes its directory on the way out.
    fn terminate(&mut self) -> std::io::Result<ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()
    }
}

/// A test that fails midway leaves no `dev` running.
impl Drop for Dev {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|status| status.is_none()) {
            let _ = self.terminate();
        }
    }
}

/// The completed record of the one `update_repo_domains` in the trail.
fn completed_share(dev: &Dev) -> serde_json::Value {
    let shares: Vec<_> = dev
        .audit_records()
        .into_iter()
        .filter(|r| r["operation"] == "update_repo_domains" && r["stage"] == "completed")
        .collect();
    assert_eq!(shares.len(), 1, "{shares:?}");
    shares[0].clone()
}

#[test]
fn the_printed_curl_and_sdk_examples_work_as_printed() {
    let python = common::sdk_python();
    let dev = Dev::start();
    let banner = &dev.banner;
    let curl_start = banner.find("curl ").expect("a curl example");
    let curl = &banner[curl_start..curl_start + banner[curl_start..].find("\n\n").unwrap()];
    let output = Command::new("bash")
        .args(["-c", &format!("{curl} -s -o /dev/null -w '%{{http_code}}'")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "201", "{curl}");

    let sdk_start = banner.find("python3 - <<'PY'").expect("an SDK example");
    let sdk = banner[sdk_start..].replacen("python3", &python.display().to_string(), 1);
    assert!(
        sdk.contains("update_repo_domains"),
        "a sharing example: {sdk}"
    );
    let output = Command::new("bash").args(["-c", &sdk]).output().unwrap();
    assert!(
        output.status.success(),
        "{sdk}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let share = completed_share(&dev);
    assert_eq!(
        (
            &share["decision"],
            &share["upstream_status"],
            &share["client"]
        ),
        (&"allow".into(), &201.into(), &"demo-sdk".into()),
        "{share}"
    );
    dev.stop();
}

/// The README's AK/SK example updates a share the emulator starts with, so pasted with
/// `dev`'s demo AK/SK and endpoint it succeeds rather than meeting SWR's 404.
#[test]
fn the_readme_sharing_example_works_against_dev_with_the_printed_aksk() {
    let python = common::sdk_python();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = readme
        .split("```python\n")
        .skip(1)
        .filter_map(|block| block.split("\n```").next())
        .find(|block| block.contains("update_repo_domains("))
        .expect("the README's AK/SK example");
    let dev = Dev::start();
    let (access_key, secret_key) = dev
        .printed("AK/SK   (client demo-sdk):")
        .split_once(" / ")
        .unwrap();
    let script = example
        .replace("GATEWAY-ISSUED-AK", access_key)
        .replace("GATEWAY-ISSUED-SK", secret_key)
        .replace(
            "https://swr-gate.example.internal:8443",
            &format!("http://127.0.0.1:{}", dev.port),
        );
    let output = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(
        output.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let share = completed_share(&dev);
    assert_eq!(
        (&share["decision"], &share["upstream_status"]),
        (&"allow".into(), &201.into()),
        "{share}"
    );
    assert_eq!(
        (
            &share["namespace"],
            &share["repository"],
            &share["access_domain"]
        ),
        (&"team-a".into(), &"group/app".into(), &"partner-a".into()),
    );
    dev.stop();
}
