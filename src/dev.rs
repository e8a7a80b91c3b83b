//! `swr-gate dev`: the whole thing on loopback with no config file. The gateway runs
//! on embedded defaults in front of the built-in SWR emulator, with demo credentials and
//! examples printed ready to paste.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::crypto::{hex, random_bytes, sha256};
use crate::emulator::{Emulator, IamStandIn, TokenBook, DEMO_IMAGES, DEMO_SHARES};

/// The shipped policy directory, built into the binary so `dev` needs no checkout.
const POLICY_FILES: [(&str, &str); 8] = [
    ("routes.toml", include_str!("../policies/routes.toml")),
    (
        "swr.cedarschema",
        include_str!("../policies/swr.cedarschema"),
    ),
    ("grants.cedar", include_str!("../policies/grants.cedar")),
    ("sharing.cedar", include_str!("../policies/sharing.cedar")),
    ("forward.cedar", include_str!("../policies/forward.cedar")),
    (
        "schemas/create_user_repository_auth.schema.json",
        include_str!("../policies/schemas/create_user_repository_auth.schema.json"),
    ),
    (
        "schemas/update_user_repository_auth.schema.json",
        include_str!("../policies/schemas/update_user_repository_auth.schema.json"),
    ),
    (
        "schemas/update_repo_domains.schema.json",
        include_str!("../policies/schemas/update_repo_domains.schema.json"),
    ),
];

/// A project id in the shape the SDK wants; the emulator does not check it.
const DEMO_PROJECT: &str = "0123456789abcdef0123456789abcdef";
const DEMO_USER: &str = "fb3f175c1fd146ab8cdae3272be6107b";

/// Tokens from the IAM stand-in live this long, so renewal is seen in a dev session.
const IAM_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Start a stand-in on a free loopback port; returns its address.
async fn spawn_stand_in<A, F>(what: &str, answer: A) -> Result<SocketAddr, String>
where
    A: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(crate::server::serve_simple(listener, answer, None));
    Ok(addr)
}

pub async fn run(listen: SocketAddr, admin: SocketAddr) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("swr-gate-dev-{}", std::process::id()));
    let result = run_in(&dir, listen, admin).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, listen: SocketAddr, admin: SocketAddr) -> Result<(), String> {
    let write = |path: PathBuf, text: &str| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    for (name, text) in POLICY_FILES {
        write(dir.join("policies").join(name), text)?;
    }

    // IAM issues tokens that expire; the SWR emulator accepts only those, so the gateway
    // fetches, renews and injects them exactly as it does against Huawei Cloud.
    let tokens = Arc::new(TokenBook::default());
    let iam_password = hex(&random_bytes::<16>());
    let iam = Arc::new(IamStandIn {
        user: "swr-gate".into(),
        domain: "demo".into(),
        password: iam_password.clone(),
        lifetime: IAM_TOKEN_LIFETIME,
        tokens: tokens.clone(),
    });
    let iam_addr = spawn_stand_in("the IAM stand-in", move |request| {
        let iam = iam.clone();
        async move { iam.answer(request).await }
    })
    .await?;
    let emulator = Arc::new(Emulator::new(tokens, &DEMO_IMAGES).with_shares(&DEMO_SHARES));
    let emulator_addr = spawn_stand_in("the SWR emulator", move |request| {
        let emulator = emulator.clone();
        async move { emulator.answer(request).await }
    })
    .await?;

    let api_key = format!("swrg_{}", hex(&random_bytes::<24>()));
    let access_key = "DEVGATEWAYACCESSKEY1";
    let secret_key = hex(&random_bytes::<20>());
    write(dir.join("iam-password"), &iam_password)?;
    write(dir.join("demo-sk"), &secret_key)?;
    let config = format!(
        r#"[server]
listen = "{listen}"

[admin]
listen = "{admin}"

[upstream]
url = "http://{emulator_addr}"

[iam]
method = "password"
endpoint = "http://{iam_addr}"
user = "swr-gate"
domain = "demo"
password_file = "iam-password"
project = "cn-north-4"
refresh_before = "5m"

[policy]
dir = "policies"

[audit]
path = "audit.jsonl"

[[clients]]
id = "demo-ci"
groups = ["team-a-ci"]
api_key_sha256 = "{api_key_hash}"

[[clients]]
id = "demo-sdk"
groups = ["release", "team-a-ci"]
access_key = "{access_key}"
secret_key_file = "demo-sk"
"#,
        api_key_hash = hex(&sha256(api_key.as_bytes())),
    );
    let config_path = dir.join("gate.toml");
    write(config_path.clone(), &config)?;

    let audit = dir.join("audit.jsonl");
    crate::server::serve_then(&config_path, |addr| {
        println!(
            "{}",
            banner(
                addr,
                emulator_addr,
                &api_key,
                access_key,
                &secret_key,
                &audit
            )
        );
    })
    .await
}

fn banner(
    addr: SocketAddr,
    emulator: SocketAddr,
    api_key: &str,
    access_key: &str,
    secret_key: &str,
    audit: &Path,
) -> String {
    let images = DEMO_IMAGES.join(", ");
    let shares: Vec<String> = DEMO_SHARES
        .iter()
        .map(|(image, account)| format!("{image} shared with {account}"))
        .collect();
    let shares = shares.join(", ");
    let deadline = share_deadline();
    let audit = audit.display();
    format!(
        r#"swr-gate dev: the gateway on http://{addr}, in front of a built-in SWR emulator on http://{emulator}
(images {images}; {shares}; permissions and shares kept in memory)
that accepts only tokens from a built-in IAM stand-in, which the gateway logs in to and
renews. Ctrl-C stops it.

Demo credentials
  API key (client demo-ci):        {api_key}
  AK/SK   (client demo-sdk):       {access_key} / {secret_key}
Audit trail: {audit}

Grant user01 write access to team-a/app with curl:

curl -i -X POST http://{addr}/v2/manage/namespaces/team-a/repos/app/access \
  -H 'X-Api-Key: {api_key}' -H 'Content-Type: application/json' \
  -d '[{{"user_id":"{DEMO_USER}","user_name":"user01","auth":3}}]'

Grant user01 read access to team-a/group/app, then update its share with partner-a, with
the official Python SDK (pip install huaweicloudsdkswr):

python3 - <<'PY'
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkswr.v2 import (SwrClient, CreateUserRepositoryAuthRequest, UserAuth,
                                  UpdateRepoDomainsRequest, UpdateRepoDomainsRequestBody)
client = SwrClient.new_builder() \
    .with_credentials(BasicCredentials("{access_key}", "{secret_key}", "{DEMO_PROJECT}")) \
    .with_endpoints(["http://{addr}"]).build()
print(client.create_user_repository_auth(CreateUserRepositoryAuthRequest(
    namespace="team-a", repository="group/app",
    body=[UserAuth(user_id="{DEMO_USER}", user_name="user01", auth=1)])))
print(client.update_repo_domains(UpdateRepoDomainsRequest(
    namespace="team-a", repository="group/app", access_domain="partner-a",
    body=UpdateRepoDomainsRequestBody(permit="read", deadline="{deadline}",
                                      description="release candidates for the partner"))))
PY

The shipped policies decide (policies/*.cedar): demo-ci and demo-sdk are in group
team-a-ci, which grants read (1) and write (3) on team-a; demo-sdk is also in release,
which shares images with the listed partner accounts for at most 90 days. Send the curl
example with "auth":7, or share with deadline="forever", to see a policy refusal naming
the rule that decided it.
"#
    )
}

/// The printed share's deadline: midnight UTC 30 days ahead, well inside the 90 days the
/// shipped policies allow.
fn share_deadline() -> String {
    const DAY: u64 = 24 * 3600;
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / DAY;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs((today + 30) * DAY))
        .to_string()
}
