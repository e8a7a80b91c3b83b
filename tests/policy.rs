//! Local policy (Cedar) through the running gateway: who may do what, forbids over
//! permits, denials that name their policy, dry-run, shadow policies, the context at its
//! edges; and the `policy test`, `eval` and `check` commands on the shipped set.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;

const CREATE: &str = "/v2/manage/namespaces/team-a/repos/app/access";
const SHARE: &str = "/v2/manage/namespaces/team-a/repositories/app/access-domains/partner-a";
const ADMIN_KEY: &str = "swrg_test_key_admin";
const OTHER_USER: &str = "0c5a8e1e0a9b4c4d8e1f2a3b4c5d6e7f";

/// The clients of the shipped policies: ci-bot is team A's CI, release-tool releases,
/// ops-admin is the platform team.
fn shipped_clients(config: &mut String) {
    *config = config
        .replace(
            &allow_all_policy_dir().display().to_string(),
            &policy_dir().display().to_string(),
        )
        .replace("groups = [\"ci\"]", "groups = [\"team-a-ci\"]");
}

fn admin_client() -> String {
    format!(
        "[[clients]]\nid = \"ops-admin\"\ngroups = [\"admins\"]\napi_key_sha256 = \"{}\"\n",
        sha256_hex(ADMIN_KEY.as_bytes())
    )
}

/// A policy directory with the shipped routes and schemas and the given policy files.
fn policy_dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = policy_dir();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    for name in ["routes.toml", "swr.cedarschema"] {
        std::fs::copy(shipped.join(name), dir.path().join(name)).unwrap();
    }
    for entry in std::fs::read_dir(shipped.join("schemas")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            dir.path().join("schemas").join(entry.file_name()),
        )
        .unwrap();
    }
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn use_policy_dir(dir: &Path) -> impl FnOnce(&mut String) + '_ {
    move |config: &mut String| {
        *config = config.replace(
            &allow_all_policy_dir().display().to_string(),
            &dir.display().to_string(),
        )
    }
}

fn send_as(gate: &Gateway, key: &str, method: &str, path: &str, body: &str) -> Answer {
    gate.send(
        method,
        path,
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
}

fn mixed_grants(auths: &[u8]) -> String {
    let users = [USER, OTHER_USER, "00000000000000000000000000000003"];
    let items: Vec<String> = auths
        .iter()
        .zip(users)
        .enumerate()
        .map(|(i, (auth, user))| {
            format!(r#"{{"user_id":"{user}","user_name":"user{i}","auth":{auth}}}"#)
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn sharing(deadline: &str, description: Option<&str>) -> String {
    match description {
        Some(d) => format!(r#"{{"permit":"read","deadline":"{deadline}","description":"{d}"}}"#),
        None => format!(r#"{{"permit":"read","deadline":"{deadline}"}}"#),
    }
}

fn in_hours(hours: i64) -> String {
    let now = SystemTime::now();
    let at = if hours >= 0 {
        now + Duration::from_secs(hours as u64 * 3600)
    } else {
        now - Duration::from_secs((-hours) as u64 * 3600)
    };
    humantime::format_rfc3339_millis(at).to_string()
}

fn completed(gate: &Gateway) -> Vec<serde_json::Value> {
    gate.audit_records()
        .into_iter()
        .filter(|r| r["stage"] == "completed")
        .collect()
}

#[test]
fn the_same_request_is_allowed_for_one_client_and_denied_for_another() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", shipped_clients);
    let allowed = send_as(&gate, API_KEY, "POST", CREATE, &grants(3));
    assert_eq!(
        allowed.status,
        201,
        "{}",
        String::from_utf8_lossy(&allowed.body)
    );
    let denied = send_as(&gate, OTHER_API_KEY, "POST", CREATE, &grants(3));
    assert_eq!(denied.status, 403);
    let body = denied.json();
    assert_eq!(body["error_code"], "SWR.GATE.4030001");
    assert_eq!(
        body["error_msg"],
        "no policy permits create_user_repository_auth on team-a/app for client release-tool"
    );
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(
        swr.received().len(),
        1,
        "the denied request never reached SWR"
    );

    let records = completed(&gate);
    assert_eq!(records[0]["decision"], "allow");
    assert_eq!(
        records[0]["policies"],
        serde_json::json!(["team-a-ci-grants-read-write"])
    );
    assert_eq!(records[1]["decision"], "deny");
    assert_eq!(records[1]["denied_by"], "policy");
    assert_eq!(records[1]["status"], 403);
    assert_eq!(records[1]["policies"], serde_json::json!([]));
    assert_eq!(records[1]["dry_run"], false);
    assert_eq!(records[1]["reasons"][0]["code"], "SWR.GATE.4030001");
}

#[test]
fn a_forbid_overrides_every_permit_and_the_denial_names_it() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), &admin_client(), shipped_clients);
    // team-a-ci may grant read and write here, but one manage grant among them is forbidden.
    let answer = send_as(&gate, API_KEY, "PATCH", CREATE, &mixed_grants(&[1, 7, 3]));
    assert_eq!(answer.status, 403);
    let body = answer.json();
    assert_eq!(
        body["error_msg"],
        "denied by policy only-admins-grant-manage: only the admins group grants manage (auth 7)"
    );
    assert_eq!(body["details"][0]["policy"], "only-admins-grant-manage");
    assert_eq!(body["details"][0]["reason"], "forbid");
    let record = completed(&gate).pop().unwrap();
    assert_eq!(record["denied_by"], "policy");
    assert_eq!(
        record["policies"],
        serde_json::json!(["only-admins-grant-manage"])
    );
    assert_eq!(record["reasons"][1]["policy"], "only-admins-grant-manage");
    assert!(swr.received().is_empty());

    let admin = send_as(&gate, ADMIN_KEY, "PATCH", CREATE, &mixed_grants(&[1, 7, 3]));
    assert_eq!(admin.status, 201);

    // Sharing forbids bind admins too, and every one that matched is named.
    let forever = send_as(&gate, ADMIN_KEY, "PATCH", SHARE, &sharing("forever", None));
    assert_eq!(forever.status, 403);
    let body = forever.json();
    assert_eq!(
        body["error_msg"],
        "denied by policies no-permanent-sharing, sharing-needs-description"
    );
    let named: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["policy"].as_str().unwrap())
        .collect();
    assert_eq!(named, ["no-permanent-sharing", "sharing-needs-description"]);
}

#[test]
fn forwarded_requests_are_decided_as_the_forward_action() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), &admin_client(), |c| {
        shipped_clients(c);
        forward_unmatched(c);
    });
    let denied = gate.send("GET", "/v2/manage/repos", &[("x-api-key", API_KEY)], b"");
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.json()["error_msg"],
        "no policy permits forward for client ci-bot"
    );
    let allowed = gate.send("GET", "/v2/manage/repos", &[("x-api-key", ADMIN_KEY)], b"");
    assert_eq!(allowed.status, 200);
    assert_eq!(swr.received().len(), 1);
    let record = completed(&gate).pop().unwrap();
    assert_eq!(record["policies"], serde_json::json!(["admins-forward"]));
}

#[test]
fn dry_run_forwards_would_be_denials_and_audits_them() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", |c| {
        shipped_clients(c);
        *c = c.replace("[policy]\n", "[policy]\nmode = \"dry-run\"\n");
    });
    let answer = send_as(&gate, API_KEY, "POST", CREATE, &grants(7));
    assert_eq!(answer.status, 201, "forwarded although the policy says no");
    let allowed = send_as(&gate, API_KEY, "POST", CREATE, &grants(1));
    assert_eq!(allowed.status, 201);
    assert_eq!(swr.received().len(), 2);

    let records = gate.audit_records();
    let would_deny: Vec<_> = records.iter().filter(|r| r["dry_run"] == true).collect();
    assert_eq!(
        would_deny.len(),
        2,
        "the decided and completed records: {records:?}"
    );
    for record in would_deny {
        assert_eq!(record["decision"], "allow");
        assert_eq!(record["denied_by"], serde_json::Value::Null);
        assert_eq!(
            record["policies"],
            serde_json::json!(["only-admins-grant-manage"])
        );
        assert_eq!(record["reasons"][1]["policy"], "only-admins-grant-manage");
    }
    let last = completed(&gate).pop().unwrap();
    assert_eq!(last["dry_run"], false);
    assert_eq!(
        last["policies"],
        serde_json::json!(["team-a-ci-grants-read-write"])
    );
}

#[test]
fn shadow_policies_are_reported_but_never_decide() {
    let mut files: Vec<(&str, String)> = ["grants.cedar", "sharing.cedar", "forward.cedar"]
        .iter()
        .map(|name| {
            (
                *name,
                std::fs::read_to_string(policy_dir().join(name)).unwrap(),
            )
        })
        .collect();
    files.push((
        "watch.cedar",
        "@id(\"watch-writes\") @shadow\n\
         forbid (principal, action, resource) when { context.max_auth >= 3 };\n\
         @id(\"maybe-release-grants-read\") @shadow\n\
         permit (principal in Swr::Group::\"release\", action == Swr::Action::\"create_user_repository_auth\", resource)\n\
         when { context.max_auth == 1 };\n"
            .to_owned(),
    ));
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let dir = policy_dir_with(&files);
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", |c| {
        use_policy_dir(dir.path())(c);
        *c = c.replace("groups = [\"ci\"]", "groups = [\"team-a-ci\"]");
    });
    let watched = send_as(&gate, API_KEY, "POST", CREATE, &grants(3));
    assert_eq!(watched.status, 201, "a shadow forbid does not deny");
    let still_denied = send_as(&gate, OTHER_API_KEY, "POST", CREATE, &grants(1));
    assert_eq!(still_denied.status, 403, "a shadow permit does not allow");
    let records = completed(&gate);
    assert_eq!(
        records[0]["policies"],
        serde_json::json!(["team-a-ci-grants-read-write", "shadow:watch-writes"])
    );
    assert_eq!(
        records[1]["policies"],
        serde_json::json!(["shadow:maybe-release-grants-read"])
    );
}

#[test]
fn context_values_are_right_at_the_edges() {
    let probes = r#"
@id("allow") permit (principal, action, resource);
@id("max-auth-7-of-3") forbid (principal, action, resource)
    when { context.max_auth == 7 && context.grant_count == 3 && context.user_ids.contains("0c5a8e1e0a9b4c4d8e1f2a3b4c5d6e7f") };
@id("no-grants-no-auth") forbid (principal, action == Swr::Action::"update_repo_domains", resource)
    unless { context.max_auth == 0 && context.grant_count == 0 && context.access_domain == "partner-a" };
@id("deadline-today") forbid (principal, action, resource)
    when { context has deadline_days && context.deadline_days == 0 };
@id("deadline-past") forbid (principal, action, resource)
    when { context has deadline_days && context.deadline_days < 0 };
@id("deadline-far") forbid (principal, action, resource)
    when { context has deadline_days && context.deadline_days > 3000 };
@id("forever") forbid (principal, action, resource)
    when { context.deadline_forever && !(context has deadline_days) };
@id("no-description") forbid (principal, action == Swr::Action::"update_repo_domains", resource)
    unless { context.has_description };
@id("forward-context") forbid (principal, action == Swr::Action::"forward", resource)
    unless { resource == Swr::Api::"swr" && context.namespace == "" && context.max_auth == 0
             && context.auth_method == "api_key" && context.client_ip.isLoopback() };
"#;
    let dir = policy_dir_with(&[("probes.cedar", probes)]);
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", |c| {
        use_policy_dir(dir.path())(c);
        forward_unmatched(c);
    });
    let decided_by = |method: &str, path: &str, body: &str| -> Vec<String> {
        let answer = send_as(&gate, API_KEY, method, path, body);
        match answer.status {
            403 => answer.json()["details"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["policy"].as_str().unwrap().to_owned())
                .collect(),
            201 | 200 => Vec::new(),
            other => panic!(
                "{method} {path} {body}: {other} {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    };
    assert_eq!(
        decided_by("POST", CREATE, &mixed_grants(&[1, 7, 3])),
        ["max-auth-7-of-3"]
    );
    assert!(decided_by("POST", CREATE, &mixed_grants(&[1, 3, 3])).is_empty());
    assert!(decided_by("POST", CREATE, &mixed_grants(&[7, 1])).is_empty());
    let share = |deadline: &str, description: Option<&str>| {
        decided_by("PATCH", SHARE, &sharing(deadline, description))
    };
    assert_eq!(share(&in_hours(2), Some("x")), ["deadline-today"]);
    assert_eq!(share(&in_hours(-2), Some("x")), ["deadline-past"]);
    assert!(share(&in_hours(24 * 30), Some("x")).is_empty());
    assert_eq!(
        share("2040-01-01T00:00:00.000Z", Some("x")),
        ["deadline-far"]
    );
    assert_eq!(share("forever", Some("x")), ["forever"]);
    assert_eq!(share(&in_hours(48), None), ["no-description"]);
    assert_eq!(share(&in_hours(48), Some("  ")), ["no-description"]);
    assert!(decided_by("GET", "/v2/manage/repos", "").is_empty());
}

fn policy_command(args: &[&str], config: &Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_swr-gate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// `eval` of ci-bot's grant with the body in `body`.
fn eval_grant(config: &Path, body: &Path) -> (i32, String) {
    let body = body.to_str().unwrap();
    let args = [
        "eval", "--client", "ci-bot", "--method", "POST", "--path", CREATE, "--body", body,
    ];
    policy_command(&args, config)
}

fn write_config(dir: &Path, policies: &Path) -> PathBuf {
    let text = config("127.0.0.1:1".parse().unwrap(), "http://127.0.0.1:2", "").replace(
        &allow_all_policy_dir().display().to_string(),
        &policies.display().to_string(),
    );
    let path = dir.join("gate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_shipped_policy_cases_pass_and_a_wrong_expectation_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &policy_dir());
    let (code, output) = policy_command(&["policy", "test"], &config);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains(" passed, 0 failed"), "{output}");
    for file in ["grants.toml", "sharing.toml", "forward.toml"] {
        assert!(output.contains(&format!("pass  {file}: ")), "{output}");
    }

    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        "[[case]]\nname = \"release grants\"\nclient = \"release-tool\"\n\
         operation = \"create_user_repository_auth\"\nnamespace = \"team-a\"\nrepository = \"app\"\n\
         body = [{ user_id = \"fb3f175c1fd146ab8cdae3272be6107b\", user_name = \"u\", auth = 1 }]\n\
         expect = \"allow\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_swr-gate"))
        .args(["policy", "test", "--config"])
        .arg(&config)
        .arg(&wrong)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  wrong.toml: release grants: expected allow, got deny by no policy"),
        "{stdout}"
    );
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");

    // A case that cannot run as written is the file's mistake (2), not a failing policy.
    let case = std::fs::read_to_string(&wrong).unwrap();
    std::fs::write(&wrong, format!("now = \"garbage\"\n{case}")).unwrap();
    let (code, output) = policy_command(&["policy", "test", wrong.to_str().unwrap()], &config);
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("case \"release grants\": now = \"garbage\""),
        "{output}"
    );
    let unrouted = case.replace("create_user_repository_auth", "delete_everything");
    std::fs::write(&wrong, unrouted).unwrap();
    let (code, output) = policy_command(&["policy", "test", wrong.to_str().unwrap()], &config);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("delete_everything"), "{output}");
    // A body the schema refuses never asks the policy anything.
    std::fs::write(&wrong, case.replace("auth = 1", "auth = 2")).unwrap();
    let (code, output) = policy_command(&["policy", "test", wrong.to_str().unwrap()], &config);
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("refused before the policy: 400 SWR.GATE.4000002"),
        "{output}"
    );
    // Nor can a grant be about no repository, as no request for it can.
    std::fs::write(&wrong, case.replace("repository = \"app\"\n", "")).unwrap();
    let (code, output) = policy_command(&["policy", "test", wrong.to_str().unwrap()], &config);
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("create_user_repository_auth needs repository"),
        "{output}"
    );
    // A TOML float that is a whole number is that number, as it is in a client's JSON.
    std::fs::write(&wrong, case.replace("auth = 1", "auth = 1.0")).unwrap();
    let (code, output) = policy_command(&["policy", "test", wrong.to_str().unwrap()], &config);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("got deny by no policy"), "{output}");

    // A config serve would refuse is refused here too, not tested on a guess.
    let text = std::fs::read_to_string(&config).unwrap();
    let client = &text[text.find("[[clients]]").unwrap()..];
    let client = &client[..client[1..].find("[[").map_or(client.len(), |end| end + 1)];
    std::fs::write(&config, format!("{text}\n{client}")).unwrap();
    let (code, output) = policy_command(&["policy", "test"], &config);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("appears twice"), "{output}");
}

#[test]
fn eval_prints_the_whole_decision_and_exits_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &policy_dir());
    let body = dir.path().join("body.json");
    let eval = |client: &str, method: &str, path: &str, text: &str| {
        std::fs::write(&body, text).unwrap();
        let body = body.to_str().unwrap();
        let args = [
            "eval", "--client", client, "--method", method, "--path", path, "--body", body,
        ];
        policy_command(&args, &config)
    };
    let (code, output) = eval(
        "release-tool",
        "PATCH",
        SHARE,
        &sharing("forever", Some("partner build")),
    );
    assert_eq!(code, 1, "{output}");
    for expected in [
        "route     update_repo_domains  namespace team-a  repository app  access_domain partner-a",
        "schema    ok",
        "policy    deny (mode enforce)",
        "deciding  no-permanent-sharing",
        "sharing.cedar:",
        "deadline_forever  true",
        "deadline_days     absent",
        "answer    403 SWR.GATE.4030001 denied by policy no-permanent-sharing",
    ] {
        assert!(output.contains(expected), "{expected:?} in\n{output}");
    }

    let (code, output) = eval(
        "release-tool",
        "PATCH",
        SHARE,
        &sharing("2020-01-01T00:00:00Z", Some("old")),
    );
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("answer    forwarded to SWR"), "{output}");

    let (code, output) = eval(
        "ci-bot",
        "POST",
        CREATE,
        r#"[{"user_id":"nope","user_name":"u","auth":2}]"#,
    );
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("schema    2 violation(s)"), "{output}");
    assert!(output.contains("/0/auth"), "{output}");

    // A valid body past max_body_bytes is refused as serve refuses it.
    let padded = format!("{}{}", " ".repeat(70_000), grants(1));
    let (code, output) = eval("ci-bot", "POST", CREATE, &padded);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("SWR.GATE.4130001"), "{output}");
    // Only what could be too large is read: not a body without end.
    let (code, output) = eval_grant(&config, Path::new("/dev/zero"));
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("SWR.GATE.4130001"), "{output}");

    let (code, output) = policy_command(
        &[
            "eval", "--client", "ghost", "--method", "GET", "--path", "/v2/x",
        ],
        &config,
    );
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("no [[clients]] entry has id \"ghost\""),
        "{output}"
    );
}

/// An editor's hidden files beside the policies (its lock, a swap file, a backup) are no
/// policies, and a FIFO named like one is refused at once rather than holding the
/// loader, and with it reloads and signals, until something writes to it.
#[test]
fn hidden_files_are_not_policies_and_a_fifo_is_refused() {
    let forward_only = "@id(\"forward-only\")\npermit (principal, action == Swr::Action::\"forward\", resource);\n";
    let allow_all = "@id(\"hidden-allow-all\")\npermit (principal, action, resource);\n";
    let dir = policy_dir_with(&[
        ("forward.cedar", forward_only),
        (".hidden.cedar", allow_all),
    ]);
    std::os::unix::fs::symlink("someone@host.4242", dir.path().join(".#forward.cedar")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), dir.path());
    let (code, output) = policy_command(&["check"], &config);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains(".hidden.cedar: a hidden file is no policy, and is not loaded"),
        "{output}"
    );
    assert!(!output.contains(".#forward.cedar"), "{output}");
    let body = work.path().join("body.json");
    std::fs::write(&body, grants(1)).unwrap();
    let (code, output) = eval_grant(&config, &body);
    assert_eq!(code, 1, "{output}");
    assert!(!output.contains("hidden-allow-all"), "{output}");

    let fifo = dir.path().join("stuck.cedar");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (code, output) = policy_command(&["check"], &config);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("stuck.cedar: not a regular file"),
        "{output}"
    );
}

#[test]
fn a_broken_policy_set_is_refused_with_file_and_line_and_the_gateway_does_not_start() {
    let typo = "// the CI of team A\n@id(\"typo\")\npermit (principal, action, resource)\nwhen { context.max_auht <= 3 };\n";
    let dir = policy_dir_with(&[("typo.cedar", typo)]);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), dir.path());
    let (code, output) = policy_command(&["check"], &config);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("typo.cedar:4: ")
            && output.contains("max_auht")
            && output.contains("max_auth"),
        "{output}"
    );
    let serve = Command::new(env!("CARGO_BIN_EXE_swr-gate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("SWR_GATE_TEST_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!serve.status.success());
    assert!(String::from_utf8_lossy(&serve.stderr).contains("typo.cedar:4"));

    let unnamed = policy_dir_with(&[(
        "a.cedar",
        "@id(\"ok\")\npermit (principal, action, resource);\n\nforbid (principal, action, resource);\n",
    )]);
    let config = write_config(work.path(), unnamed.path());
    let (code, output) = policy_command(&["check"], &config);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("a.cedar:4: policy has no @id"), "{output}");
}

#[test]
fn check_warns_about_names_the_config_does_not_have_but_passes() {
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &policy_dir());
    let (code, output) = policy_command(&["check"], &config);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("warning: ")
            && output.contains("grants.cedar:")
            && output
                .contains("Swr::Group::\"team-a-ci\", but no [[clients]] entry is in that group"),
        "{output}"
    );
    assert!(output.contains(": ok"), "{output}");
}
