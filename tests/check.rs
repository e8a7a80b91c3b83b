//! `swr-gate check`: every problem, with its file (and line where there is one).

mod common;

use std::path::Path;
use std::process::Command;

fn check(config: &Path) -> (bool, String) {
    swr_gate(&["check", "--config", config.to_str().unwrap()], &[])
}

/// Run `swr-gate ARGS` with `env` added; success and stdout + stderr.
fn swr_gate(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_swr-gate"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

fn copy_policies(to: &Path) {
    let from = common::policy_dir();
    std::fs::create_dir_all(to.join("schemas")).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    for entry in std::fs::read_dir(from.join("schemas")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join("schemas").join(entry.file_name())).unwrap();
    }
}

#[test]
fn the_shipped_example_configs_pass() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let (ok, output) = check(&shipped.join("sidecar.toml"));
    assert!(ok, "sidecar.toml: {output}");

    // The edge example names certificate files of its host; give it real ones.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::Pki::new(dir.path(), "ca").issue("gate.example", &["gate.example"]);
    let edge = std::fs::read_to_string(shipped.join("edge.toml"))
        .unwrap()
        .replace("/etc/swr-gate/tls/server.crt", &cert.display().to_string())
        .replace("/etc/swr-gate/tls/server.key", &key.display().to_string())
        .replace("/var/log/swr-gate", &dir.path().display().to_string())
        .replace("../policies", &common::policy_dir().display().to_string());
    std::fs::write(dir.path().join("edge.toml"), edge).unwrap();
    let (ok, output) = check(&dir.path().join("edge.toml"));
    assert!(ok, "edge.toml: {output}");
    let (ok, output) = check(&shipped.join("edge.toml"));
    assert!(
        !ok && output.contains("/etc/swr-gate/tls/server.crt"),
        "a missing certificate is reported: {output}"
    );
}

/// The TOML of `gate.toml: |` in the Kubernetes example's ConfigMap: the block's lines,
/// indented by four spaces as the example writes them, less the indentation.
fn configmap_toml(yaml: &str) -> String {
    let block = yaml
        .lines()
        .skip_while(|l| l.trim() != "gate.toml: |")
        .skip(1);
    let mut toml = String::new();
    for line in block.take_while(|l| l.is_empty() || l.starts_with("    ")) {
        toml.push_str(line.get(4..).unwrap_or(""));
        toml.push('\n');
    }
    toml
}

/// The Kubernetes example passes `check` with the shipped policies, and its app's client
/// may grant and share with them: a sidecar config that only refuses is no example.
#[test]
fn the_kubernetes_example_passes_and_its_app_may_grant_and_share() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kubernetes/sidecar.yaml");
    let toml = configmap_toml(&std::fs::read_to_string(shipped).unwrap());

    // What the pod mounts: the Secret's files, and the image's policies.
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("iam-token"), common::TOKEN).unwrap();
    std::fs::write(secrets.join("release-bot-sk"), "an-sk-from-keygen").unwrap();
    let toml = toml
        .replace("/run/secrets/swr-gate", secrets.to_str().unwrap())
        .replace(
            "/etc/swr-gate/policies",
            common::policy_dir().to_str().unwrap(),
        );
    let config = dir.path().join("gate.toml");
    std::fs::write(&config, toml).unwrap();
    let config = config.to_str().unwrap();
    let env = [("SWR_GATE_AUDIT_KEY", "an-audit-key")];
    let (ok, output) = swr_gate(&["check", "--config", config], &env);
    assert!(ok, "sidecar.yaml's gate.toml: {output}");

    let grant = dir.path().join("grant.json");
    std::fs::write(&grant, common::grants(3)).unwrap();
    let deadline = humantime::format_rfc3339_millis(
        std::time::SystemTime::now() + std::time::Duration::from_secs(30 * 24 * 3600),
    );
    let share = dir.path().join("share.json");
    std::fs::write(
        &share,
        format!(
            r#"{{"permit":"read","deadline":"{deadline}","description":"release candidates"}}"#
        ),
    )
    .unwrap();
    for (method, path, body) in [
        (
            "POST",
            "/v2/manage/namespaces/team-a/repos/app/access",
            &grant,
        ),
        (
            "PATCH",
            "/v2/manage/namespaces/team-a/repositories/group$app/access-domains/partner-a",
            &share,
        ),
    ] {
        let (ok, output) = swr_gate(
            &[
                "eval",
                "--config",
                config,
                "--client",
                "release-bot",
                "--auth-method",
                "aksk",
                "--method",
                method,
                "--path",
                path,
                "--body",
                body.to_str().unwrap(),
            ],
            &env,
        );
        assert!(
            ok && output.contains("forwarded to SWR"),
            "{method} {path}: {output}"
        );
    }
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::config("127.0.0.1:1".parse().unwrap(), "ftp://127.0.0.1:2", "")
        .replace("[audit]\n", "[audit]\nfsnyc = \"always\"\n");
    let path = dir.path().join("gate.toml");
    std::fs::write(&path, text).unwrap();
    let (ok, output) = check(&path);
    assert!(!ok);
    assert!(
        output.contains("gate.toml:21: unknown key `fsnyc` in [audit]"),
        "{output}"
    );
    // A misspelt key is reported with the rest, not instead of it.
    assert!(
        output.contains("[upstream] url must be an http:// or https:// URL"),
        "{output}"
    );
}

/// A secret written into the file by mistake is named by its key and line, never shown:
/// check's output and the reload's log line are read by more people than the file is.
#[test]
fn a_secret_put_in_the_file_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    let config = common::config("127.0.0.1:1".parse().unwrap(), "http://127.0.0.1:2", "");
    for (placed, line) in [
        ("[iam]\n", "password = \"hunter2-secret\"\n"),
        ("[server]\n", "header_timeout = \"hunter2-secret\"\n"),
        ("[iam]\n", "password = \"\"\"\nhunter2-secret\n"),
        ("[server]\n", "listen = 'hunter2\"secret'\n"),
        ("[upstream]\n", "unmatched = \"hunter2-secret\"\n"),
        ("[audit]\n", "hmac_key_env = \"hunter2-secret\"\n"),
    ] {
        std::fs::write(&path, config.replace(placed, &format!("{placed}{line}"))).unwrap();
        let (ok, output) = check(&path);
        assert!(!ok);
        assert!(output.contains("gate.toml"), "{output}");
        assert!(!output.contains("hunter2"), "{output}");
    }
    // A secret pasted where a file's name belongs.
    for setting in ["secret_key_file", "secret_key_env"] {
        let client = format!(
            "\n[[clients]]\nid = \"sdk\"\ngroups = []\naccess_key = \"AK\"\n{setting} = \"hunter2Secret\"\n"
        );
        std::fs::write(&path, format!("{config}{client}")).unwrap();
        let (ok, output) = check(&path);
        assert!(!ok);
        assert!(output.contains(setting), "{output}");
        assert!(!output.contains("hunter2"), "{output}");
    }
}

/// keygen's lines for clients whose ids differ only in case or punctuation, pasted
/// together, pass as they are; two clients with one secret key never do, since either
/// could then sign as the other.
#[test]
fn keygen_clients_get_their_own_secrets_and_a_shared_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    let mut config = common::config("127.0.0.1:1".parse().unwrap(), "http://127.0.0.1:2", "");
    let mut env = Vec::new();
    for id in ["a.b", "a-b", "A-B"] {
        let printed = Command::new(env!("CARGO_BIN_EXE_swr-gate"))
            .args(["keygen", "aksk", "--client", id])
            .output()
            .unwrap();
        assert!(printed.status.success());
        let (lines, shown) = (
            String::from_utf8(printed.stdout).unwrap(),
            String::from_utf8(printed.stderr).unwrap(),
        );
        let export = shown
            .lines()
            .find_map(|l| l.strip_prefix("#   export "))
            .unwrap();
        let (variable, secret) = export.split_once('=').unwrap();
        let secret = secret.trim_matches('\'');
        // `keygen ... >> gate.toml` takes the config lines only.
        assert!(!lines.contains(secret), "{lines}");
        env.push((variable.to_owned(), secret.to_owned()));
        config.push('\n');
        config.push_str(&lines);
    }
    std::fs::write(&path, &config).unwrap();
    let env: Vec<(&str, &str)> = env.iter().map(|(v, s)| (v.as_str(), s.as_str())).collect();
    let (ok, output) = swr_gate(&["check", "--config", path.to_str().unwrap()], &env);
    assert!(ok, "{output}");

    let (_, shared_secret) = env[0];
    let shared = [(env[0].0, shared_secret), (env[1].0, shared_secret), env[2]];
    let (ok, output) = swr_gate(&["check", "--config", path.to_str().unwrap()], &shared);
    assert!(!ok);
    assert!(
        output.contains("\"a.b\" has the same secret key"),
        "{output}"
    );
    assert!(!output.contains(shared_secret), "{output}");
}

#[test]
fn missing_and_broken_schemas_and_routes_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    copy_policies(&policies);
    std::fs::remove_file(policies.join("schemas/update_repo_domains.schema.json")).unwrap();
    std::fs::write(
        policies.join("schemas/create_user_repository_auth.schema.json"),
        "{\n  \"type\": 12\n}",
    )
    .unwrap();
    std::fs::write(
        policies.join("schemas/update_user_repository_auth.schema.json"),
        "{\n  \"type\": \n",
    )
    .unwrap();
    // A limit's problems are reported beside the broken schemas, not after they are fixed.
    let limit = "[[rate_limits]]\nid = \"l\"\nkey = \"client\"\noperations = [\"no_such_op\"]\nrate = 0\nper = \"1m\"\n";
    let text = common::config("127.0.0.1:1".parse().unwrap(), "http://127.0.0.1:2", limit).replace(
        &common::allow_all_policy_dir().display().to_string(),
        "policies",
    );
    let path = dir.path().join("gate.toml");
    std::fs::write(&path, text).unwrap();
    let (ok, output) = check(&path);
    assert!(!ok);
    assert!(
        output.contains("update_repo_domains.schema.json"),
        "{output}"
    );
    assert!(
        output.contains("rate and burst must be at least 1")
            && output.contains("unknown operation \"no_such_op\""),
        "{output}"
    );
    assert!(
        output.contains("create_user_repository_auth.schema.json: line 2: ")
            && output.contains("at /type of the schema"),
        "{output}"
    );
    assert!(
        output.contains("update_user_repository_auth.schema.json") && output.contains("line 3"),
        "{output}"
    );

    std::fs::write(
        policies.join("routes.toml"),
        "[[route]]\noperation = \"x\"\nmethod = \"POST\"\npath = \"/v2/{nope}\"\n",
    )
    .unwrap();
    let (ok, output) = check(&path);
    assert!(!ok);
    assert!(
        output.contains("routes.toml:1: [[route]] #1 (x): ") && output.contains("{nope}"),
        "{output}"
    );
    assert!(
        output
            .lines()
            .all(|line| line.starts_with("error: ") || line.starts_with("warning: ")),
        "one problem a line: {output}"
    );
    assert!(
        output.contains("no route for update_repo_domains"),
        "the three guarded operations cannot be dropped: {output}"
    );
    // With no route table to check them against, operation names go unchecked.
    assert!(
        output.contains("rate and burst must be at least 1") && !output.contains("no_such_op"),
        "{output}"
    );
    // Each problem at its own [[route]]'s line, after the shipped routes.
    let shipped = std::fs::read_to_string(common::policy_dir().join("routes.toml")).unwrap();
    let text = format!(
        "{shipped}\n[[route]]\noperation = \"x\"\nmethod = \"POST\"\npath = \"/v2/{{nope}}\"\n\n[[route]]\noperation = \"update_repo_domains\"\nmethod = \"PUT\"\npath = \"/v2/other\"\n"
    );
    let line_of = |marker: &str| text[..text.find(marker).unwrap()].matches('\n').count() + 1;
    let (bad, twice) = (
        line_of("[[route]]\noperation = \"x\""),
        line_of("[[route]]\noperation = \"update_repo_domains\"\nmethod = \"PUT\""),
    );
    std::fs::write(policies.join("routes.toml"), &text).unwrap();
    let (ok, output) = check(&path);
    assert!(!ok);
    assert!(
        output.contains(&format!("routes.toml:{bad}: [[route]] #4 (x): "))
            && output.contains(&format!(
                "routes.toml:{twice}: operation update_repo_domains has two routes"
            )),
        "{output}"
    );
}

#[test]
fn a_config_nobody_could_use_is_refused_by_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::config("127.0.0.1:1".parse().unwrap(), "http://127.0.0.1:2", "");
    let text = text[..text.find("[[clients]]").unwrap()].to_owned();
    let path = dir.path().join("gate.toml");
    std::fs::write(&path, text).unwrap();
    let (ok, output) = check(&path);
    assert!(!ok);
    assert!(output.contains("allow_anonymous"), "{output}");
    let serve = Command::new(env!("CARGO_BIN_EXE_swr-gate"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!serve.status.success());
}

/// What `serve` would refuse to start over is a problem for `check` too: an audit key
/// that is not in the environment, an audit path that cannot be opened or created.
#[test]
fn an_audit_trail_serve_could_not_open_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::config("127.0.0.1:1".parse().unwrap(), "http://127.0.0.1:2", "");
    let path = dir.path().join("gate.toml");
    let with_audit = |audit: &str| {
        std::fs::write(&path, base.replace("path = \"audit.jsonl\"", audit)).unwrap();
        check(&path)
    };
    assert!(with_audit("path = \"audit.jsonl\"").0);
    std::fs::create_dir(dir.path().join("a-directory")).unwrap();
    for (audit, named) in [
        (
            "path = \"audit.jsonl\"\nhmac_key_env = \"SWR_GATE_TEST_UNSET_KEY\"",
            "SWR_GATE_TEST_UNSET_KEY",
        ),
        ("path = \"no-such-dir/audit.jsonl\"", "no-such-dir"),
        ("path = \"a-directory\"", "a-directory"),
    ] {
        let (ok, output) = with_audit(audit);
        assert!(!ok && output.contains(named), "{audit}: {output}");
    }
}

/// A problem found after parsing names its file and line, as a parse error does.
#[test]
fn a_value_that_parses_but_is_wrong_is_placed_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::config("127.0.0.1:1".parse().unwrap(), "ftp://127.0.0.1:2", "");
    let text = text
        .replacen("api_key_sha256 = \"", "api_key_sha256 = \"zz", 1)
        .replacen("header_timeout = \"2s\"", "header_timeout = \"0s\"", 1);
    let path = dir.path().join("gate.toml");
    std::fs::write(&path, &text).unwrap();
    let line_of = |needle: &str| 1 + text.lines().position(|l| l.contains(needle)).unwrap();
    let (ok, output) = check(&path);
    assert!(!ok);
    for (problem, needle) in [
        ("[upstream] url", "ftp://"),
        ("api_key_sha256 must be", "\"zz"),
        ("header_timeout must be longer than 0s", "header_timeout"),
    ] {
        let placed = format!("{}:{}: ", path.display(), line_of(needle));
        assert!(
            output
                .lines()
                .any(|l| l.contains(&placed) && l.contains(problem)),
            "{problem} at {placed}: {output}"
        );
    }
}
