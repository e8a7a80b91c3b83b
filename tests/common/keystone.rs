//! OpenStack Keystone as the IAM of the tests: the same `/v3/auth/tokens` API Huawei IAM
//! serves, with a short token lifetime so renewals happen within a test. Set up once per
//! test binary (a virtualenv cached under `target/`, a fresh database each run) and
//! shared; see `../shared/reference/keystone-notes.md` for what it takes.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{free_port, http_request, python_env, Answer, Validator};

pub const KEYSTONE_VERSION: &str = "30.0.0";
pub const GUNICORN_VERSION: &str = "27.0.1";
/// `[token] expiration`: long enough for a request or two, short enough to see renewals.
pub const TOKEN_SECONDS: u64 = 30;
pub const DOMAIN: &str = "acme";
pub const PROJECT: &str = "cn-north-4";
pub const USER: &str = "swr-gate";
pub const PASSWORD: &str = "swr-gate-iam-password-for-tests";
const ADMIN_PASSWORD: &str = "keystone-admin-password-for-tests";

pub struct Keystone {
    pub addr: SocketAddr,
    pub project_id: String,
    _gunicorn: Child,
}

impl Keystone {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The body that logs the bootstrap admin in with a system scope (what user and
    /// project management, and validating others' tokens, want).
    pub fn admin_login() -> String {
        format!(
            r#"{{"auth":{{"identity":{{"methods":["password"],"password":{{"user":{{"name":"admin","password":"{ADMIN_PASSWORD}","domain":{{"id":"default"}}}}}}}},"scope":{{"system":{{"all":true}}}}}}}}"#
        )
    }

    pub fn validator(&self) -> Validator {
        Validator::new(&self.url(), Some(Keystone::admin_login()))
    }

    /// `GET /v3/auth/tokens` for `token`: 200 while it is valid.
    pub fn validate(&self, token: &str) -> u16 {
        let admin = self.admin_token();
        self.call(
            "GET",
            "/v3/auth/tokens",
            &[("x-auth-token", &admin), ("x-subject-token", token)],
            "",
        )
        .status
    }

    /// Revoke `token`, as a password change or an administrator would.
    pub fn revoke(&self, token: &str) {
        let admin = self.admin_token();
        let answer = self.call(
            "DELETE",
            "/v3/auth/tokens",
            &[("x-auth-token", &admin), ("x-subject-token", token)],
            "",
        );
        assert_eq!(answer.status, 204, "revoking a token");
    }

    fn admin_token(&self) -> String {
        login(self.addr, &Keystone::admin_login())
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        call(self.addr, method, path, headers, body)
    }
}

/// The test binary's Keystone, started on first use.
pub fn keystone() -> &'static Keystone {
    static KEYSTONE: OnceLock<Keystone> = OnceLock::new();
    KEYSTONE.get_or_init(start)
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    http_request(addr, &addr.to_string(), method, path, &all, body.as_bytes())
}

fn login(addr: SocketAddr, body: &str) -> String {
    let answer = call(addr, "POST", "/v3/auth/tokens", &[], body);
    assert_eq!(
        answer.status,
        201,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.header("x-subject-token").unwrap().to_owned()
}

/// The WSGI entry point. oslo.config would parse gunicorn's flags, so `sys.argv` is
/// cut first. gunicorn's master (which imports this with `--preload`) stops itself and
/// removes the data directory once the test process that started it is gone.
const WSGI: &str = r#"import os, shutil, signal, sys, threading, time
sys.argv = sys.argv[:1]
from keystone.server.wsgi import initialize_public_application
application = initialize_public_application()

def _follow_the_test_process(parent=os.getppid(), data=os.environ["KEYSTONE_TEST_DATA"]):
    while os.getppid() == parent:
        time.sleep(0.5)
    shutil.rmtree(data, ignore_errors=True)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=_follow_the_test_process, daemon=True).start()
"#;

fn start() -> Keystone {
    let began = Instant::now();
    let bin = python_env(
        "keystone-venv",
        &[
            &format!("keystone=={KEYSTONE_VERSION}"),
            &format!("gunicorn=={GUNICORN_VERSION}"),
        ],
    );
    let data = tempfile::Builder::new()
        .prefix("swr-gate-keystone-")
        .tempdir()
        .unwrap()
        .keep();
    let conf = data.join("keystone.conf");
    let d = data.display();
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nuse_stderr = true\n\
             [database]\nconnection = sqlite:///{d}/keystone.db\n\
             [token]\nprovider = fernet\nexpiration = {TOKEN_SECONDS}\n\
             [fernet_tokens]\nkey_repository = {d}/fernet-keys\n\
             [fernet_receipts]\nkey_repository = {d}/fernet-receipts\n\
             [credential]\nkey_repository = {d}/credential-keys\n\
             [oslo_concurrency]\nlock_path = {d}/lock\n\
             [identity]\npassword_hash_rounds = 4\n"
        ),
    )
    .unwrap();
    std::fs::write(data.join("keystone_wsgi.py"), WSGI).unwrap();

    let log = |name: &str| std::fs::File::create(data.join(name)).unwrap();
    let manage = |args: &[&str], name: &str| {
        Command::new(bin.join("keystone-manage"))
            .arg("--config-file")
            .arg(&conf)
            .args(args)
            .stdout(log(name))
            .stderr(log(name))
            .spawn()
            .unwrap()
    };
    let whoami = |flag: &str| {
        let out = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (user, group) = (whoami("-un"), whoami("-gn"));
    let owned = |step: &'static str| [step, "--keystone-user", &user, "--keystone-group", &group];
    // Independent steps run side by side; bootstrap needs the database.
    let steps = [
        manage(&["db_sync"], "db_sync.log"),
        manage(&owned("fernet_setup"), "fernet_setup.log"),
        manage(&owned("credential_setup"), "credential_setup.log"),
    ];
    for mut step in steps {
        assert!(
            step.wait().unwrap().success(),
            "keystone-manage failed: see {d}"
        );
    }
    let bootstrap = [
        "bootstrap",
        "--bootstrap-password",
        ADMIN_PASSWORD,
        "--bootstrap-region-id",
        PROJECT,
    ];
    assert!(
        manage(&bootstrap, "bootstrap.log")
            .wait()
            .unwrap()
            .success(),
        "keystone-manage bootstrap failed: see {d}"
    );

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut gunicorn = Command::new(bin.join("gunicorn"))
        .args([
            "--preload",
            "--no-control-socket",
            "--workers",
            "2",
            "--chdir",
        ])
        .arg(&data)
        .args(["--bind", &addr.to_string(), "keystone_wsgi:application"])
        .env("OS_KEYSTONE_CONFIG_DIR", &data)
        .env("KEYSTONE_TEST_DATA", &data)
        .stdin(Stdio::null())
        .stdout(log("gunicorn.log"))
        .stderr(log("gunicorn.log"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err()
        || call(addr, "GET", "/v3", &[], "").status != 200
    {
        if let Ok(Some(status)) = gunicorn.try_wait() {
            panic!("gunicorn exited with {status}: see {d}/gunicorn.log");
        }
        assert!(
            Instant::now() < deadline,
            "Keystone did not start: see {d}/gunicorn.log"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let admin = login(addr, &Keystone::admin_login());
    let create = |path: &str, body: String, kind: &str| -> String {
        let answer = call(addr, "POST", path, &[("x-auth-token", &admin)], &body);
        assert_eq!(
            answer.status,
            201,
            "{path}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        answer.json()[kind]["id"].as_str().unwrap().to_owned()
    };
    let domain = create(
        "/v3/domains",
        format!(r#"{{"domain":{{"name":"{DOMAIN}"}}}}"#),
        "domain",
    );
    let project_id = create(
        "/v3/projects",
        format!(r#"{{"project":{{"name":"{PROJECT}","domain_id":"{domain}"}}}}"#),
        "project",
    );
    let user = create(
        "/v3/users",
        format!(r#"{{"user":{{"name":"{USER}","domain_id":"{domain}","password":"{PASSWORD}"}}}}"#),
        "user",
    );
    let roles = call(
        addr,
        "GET",
        "/v3/roles?name=member",
        &[("x-auth-token", &admin)],
        "",
    );
    let member = roles.json()["roles"][0]["id"].as_str().unwrap().to_owned();
    let grant = call(
        addr,
        "PUT",
        &format!("/v3/projects/{project_id}/users/{user}/roles/{member}"),
        &[("x-auth-token", &admin)],
        "",
    );
    assert_eq!(grant.status, 204, "granting member");
    let setup = began.elapsed();
    eprintln!("Keystone on {addr}, set up in {setup:.1?} (data in {d})");
    Keystone {
        addr,
        project_id,
        _gunicorn: gunicorn,
    }
}
