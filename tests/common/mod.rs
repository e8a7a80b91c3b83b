//! Test harness: the real `swr-gate` binary, a stand-in SWR that records what it gets,
//! and a raw HTTP/1.1 client that sends exactly the bytes a test writes.
#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod fake_iam;
pub mod keystone;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

pub const TOKEN: &str = "gAAAAABtest-iam-token-0123456789";
pub const API_KEY: &str = "swrg_test_key_ci";
pub const OTHER_API_KEY: &str = "swrg_test_key_release";
pub const USER: &str = "fb3f175c1fd146ab8cdae3272be6107b";

pub fn sha256_hex(data: &[u8]) -> String {
    swr_gate::crypto::hex(&swr_gate::crypto::sha256(data))
}

/// What the stand-in SWR received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// How the stand-in answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    Slow(Duration),
    Reset,
    /// Start a 201 answer of `Content-Length: 10` (or a chunked one), send `{`, then
    /// send nothing more for 100 s.
    StallMidAnswer {
        chunked: bool,
    },
    /// Start a chunked 201 answer, send `{`, then close the connection.
    CutMidStream,
    /// Answer requests for paths that are no image with this many bytes.
    Large(usize),
    /// Answer requests for paths that are no image with these bytes.
    Verbatim(&'static str),
}

/// How the stand-in SWR decides whether a token is good, and what it refused.
struct SwrAuth {
    check: TokenCheck,
    refuse_next: AtomicUsize,
    revoked: Mutex<HashSet<String>>,
    refused: AtomicUsize,
}

enum TokenCheck {
    /// Only [`TOKEN`] is good.
    Static,
    /// Asked of IAM, as SWR does: `GET /v3/auth/tokens` with `X-Subject-Token`.
    Iam(Box<Validator>),
}

impl SwrAuth {
    async fn accepts(&self, token: Option<&http::HeaderValue>) -> bool {
        let refuse_now = self
            .refuse_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let token = token.and_then(|t| t.to_str().ok()).unwrap_or_default();
        let good = !refuse_now
            && !self.revoked.lock().unwrap().contains(token)
            && match &self.check {
                TokenCheck::Static => token == TOKEN,
                TokenCheck::Iam(validator) => validator.accepts(token).await,
            };
        if !good {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        good
    }
}

/// Validates tokens against an IAM (Keystone, or the fake): with an admin token when
/// `admin_login` is given (renewed every 10 s, since the test Keystone's tokens are short-lived).
pub struct Validator {
    url: String,
    admin_login: Option<String>,
    admin: tokio::sync::Mutex<Option<(String, Instant)>>,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Validator {
    pub fn new(url: &str, admin_login: Option<String>) -> Validator {
        Validator {
            url: url.trim_end_matches('/').to_owned(),
            admin_login,
            admin: tokio::sync::Mutex::new(None),
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
        }
    }

    async fn admin_token(&self) -> String {
        let Some(login) = &self.admin_login else {
            return "unused".into();
        };
        let mut admin = self.admin.lock().await;
        if let Some((token, at)) = &*admin {
            if at.elapsed() < Duration::from_secs(10) {
                return token.clone();
            }
        }
        let request = Request::post(format!("{}/v3/auth/tokens", self.url))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(login.clone())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let token = response.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_owned();
        *admin = Some((token.clone(), Instant::now()));
        token
    }

    async fn accepts(&self, token: &str) -> bool {
        let admin = self.admin_token().await;
        let request = Request::get(format!("{}/v3/auth/tokens", self.url))
            .header("x-auth-token", admin)
            .header("x-subject-token", token)
            .body(Full::new(Bytes::new()))
            .unwrap();
        matches!(self.client.request(request).await, Ok(r) if r.status() == StatusCode::OK)
    }
}

/// A stand-in for SWR's permission API: it checks the token, knows which images exist
/// (404 otherwise, like SWR), checks bodies are JSON, and records everything.
pub struct StandInSwr {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    auth: Arc<SwrAuth>,
    _runtime: tokio::runtime::Runtime,
}

impl StandInSwr {
    /// Accepting only [`TOKEN`].
    pub fn start() -> StandInSwr {
        StandInSwr::start_checking(TokenCheck::Static)
    }

    /// Accepting the tokens `validator`'s IAM says are valid.
    pub fn validating(validator: Validator) -> StandInSwr {
        StandInSwr::start_checking(TokenCheck::Iam(Box::new(validator)))
    }

    fn start_checking(check: TokenCheck) -> StandInSwr {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(Behaviour::Normal));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let images: Arc<HashSet<&'static str>> = Arc::new(
            ["team-a/app", "team-a/group/app", "team-b/tool"]
                .into_iter()
                .collect(),
        );
        let auth = Arc::new(SwrAuth {
            check,
            refuse_next: AtomicUsize::new(0),
            revoked: Mutex::new(HashSet::new()),
            refused: AtomicUsize::new(0),
        });
        let (rec, beh, aut) = (received.clone(), behaviour.clone(), auth.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (rec, beh, images, aut) =
                    (rec.clone(), beh.clone(), images.clone(), aut.clone());
                tokio::spawn(async move {
                    let behaviour = *beh.lock().unwrap();
                    if behaviour == Behaviour::Reset {
                        drop(stream);
                        return;
                    }
                    if let Behaviour::StallMidAnswer { chunked } = behaviour {
                        stall_mid_answer(stream, chunked, Duration::from_secs(100)).await;
                        return;
                    }
                    if behaviour == Behaviour::CutMidStream {
                        stall_mid_answer(stream, true, Duration::ZERO).await;
                        return;
                    }
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (rec, beh, images, aut) =
                            (rec.clone(), beh.clone(), images.clone(), aut.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                swr_answer(req, &rec, &beh, &images, &aut).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StandInSwr {
            addr,
            received,
            behaviour,
            auth,
            _runtime: runtime,
        }
    }

    /// Answer 401 to the next `n` requests, whatever their token.
    pub fn refuse_next(&self, n: usize) {
        self.auth.refuse_next.store(n, Ordering::SeqCst);
    }

    /// Answer 401 to every request carrying `token` from now on.
    pub fn revoke(&self, token: &str) {
        self.auth.revoked.lock().unwrap().insert(token.to_owned());
    }

    /// How many requests were answered 401.
    pub fn refused(&self) -> usize {
        self.auth.refused.load(Ordering::SeqCst)
    }

    /// The distinct `X-Auth-Token`s received, in order of first use.
    pub fn tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = Vec::new();
        for received in self.received() {
            if let Some(token) = received.headers.get("x-auth-token") {
                let token = token.to_str().unwrap().to_owned();
                if !tokens.contains(&token) {
                    tokens.push(token);
                }
            }
        }
        tokens
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.received.lock().unwrap().clear();
    }
}

/// Read (some of) the request, then begin an answer and stall in its body.
async fn stall_mid_answer(mut stream: tokio::net::TcpStream, chunked: bool, stall: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = [0u8; 8192];
    let _ = stream.read(&mut request).await;
    let answer: &[u8] = match chunked {
        false => b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{",
        true => b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{\r\n",
    };
    let _ = stream.write_all(answer).await;
    tokio::time::sleep(stall).await;
}

fn swr_error(status: StatusCode, code: &str, msg: &str) -> Response<Full<Bytes>> {
    let body = format!(r#"{{"error_code":"{code}","error_msg":"{msg}"}}"#);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

async fn swr_answer(
    req: Request<Incoming>,
    received: &Mutex<Vec<Received>>,
    behaviour: &Mutex<Behaviour>,
    images: &HashSet<&str>,
    auth: &SwrAuth,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    received.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let wait = match *behaviour.lock().unwrap() {
        Behaviour::Slow(wait) => Some(wait),
        _ => None,
    };
    if let Some(wait) = wait {
        tokio::time::sleep(wait).await;
    }
    if !auth.accepts(parts.headers.get("x-auth-token")).await {
        return swr_error(
            StatusCode::UNAUTHORIZED,
            "SVCSTG.SWR.4010000",
            "Authenticate Error",
        );
    }
    let segments: Vec<&str> = parts.uri.path().split('/').collect();
    // ["", "v2", "manage", "namespaces", ns, "repos"|"repositories", repo, ...]
    if segments.len() >= 7 && segments[1..4] == ["v2", "manage", "namespaces"] {
        let image = format!("{}/{}", segments[4], segments[6].replace('$', "/"));
        if !images.contains(image.as_str()) {
            return swr_error(
                StatusCode::NOT_FOUND,
                "SVCSTG.SWR.4040000",
                "image not found",
            );
        }
        if !body.is_empty() && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
            return swr_error(StatusCode::BAD_REQUEST, "SVCSTG.SWR.4000000", "bad body");
        }
        let mut response =
            Response::new(Full::new(Bytes::from_static(if parts.method == "POST" {
                b"{}"
            } else {
                b""
            })));
        *response.status_mut() = StatusCode::CREATED;
        response
            .headers_mut()
            .insert("x-swr-seen", "1".parse().unwrap());
        return response;
    }
    match *behaviour.lock().unwrap() {
        Behaviour::Large(size) => return Response::new(Full::new(Bytes::from(vec![b' '; size]))),
        Behaviour::Verbatim(body) => {
            return Response::new(Full::new(Bytes::from_static(body.as_bytes())))
        }
        _ => {}
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"{\"other\":true}")));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

/// A free port for `[admin]`, and the config section that listens on it.
pub fn with_admin() -> (u16, String) {
    let port = free_port();
    (port, format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"))
}

/// The body of `GET /readyz` on the admin port.
pub fn readyz(admin: u16) -> String {
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{admin}/readyz")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `GET /readyz` until `done` holds for its body; a panic with the last body after
/// `limit`.
pub fn wait_for_readyz(admin: u16, limit: Duration, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let body = readyz(admin);
        if done(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "readyz stayed: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether process `pid` holds the socket that listens on `port` (Linux: the listening
/// socket's inode in /proc/net/tcp among the process's descriptors).
fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    let suffix = format!(":{port:04X}");
    let sockets: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            (local.ends_with(&suffix) && *state == "0A").then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(descriptors) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    descriptors.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
    })
}

/// Put a new file with `contents` in place of `path`, as Kubernetes updates a mounted
/// Secret, keeping the old file's modification time (as `cp -p` does): with contents of
/// the same length, only which file the path names tells the change.
pub fn swap_in_keeping_time(path: &Path, contents: &str) {
    let staged = path.with_extension("swapped-in");
    std::fs::write(&staged, contents).unwrap();
    let modified = std::fs::metadata(path).unwrap().modified().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    std::fs::rename(&staged, path).unwrap();
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shipped policy directory.
pub fn policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// The shipped routes and schemas with a policy that allows everything: the directory
/// of the tests that are not about policy.
pub fn allow_all_policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policies")
}

/// A running `swr-gate serve`, killed when dropped.
pub struct Gateway {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// The config the tests start from; `extra` is appended (more sections, clients).
pub fn config(listen: SocketAddr, upstream: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
max_body_bytes = 4096
header_timeout = "2s"
request_timeout = "3s"

[upstream]
url = "{upstream}"
connect_timeout = "1s"
timeout = "2s"

[iam]
method = "token_env"
token_env = "SWR_GATE_TEST_TOKEN"

[policy]
dir = "{policies}"

[audit]
path = "audit.jsonl"

[[clients]]
id = "ci-bot"
groups = ["ci"]
api_key_sha256 = "{ci}"

[[clients]]
id = "release-tool"
groups = ["release"]
api_key_sha256 = "{release}"
{extra}
"#,
        policies = allow_all_policy_dir().display(),
        ci = sha256_hex(API_KEY.as_bytes()),
        release = sha256_hex(OTHER_API_KEY.as_bytes()),
    )
}

impl Gateway {
    pub fn start(upstream: &str) -> Gateway {
        Gateway::start_with(upstream, "", |_| {})
    }

    /// Start with `extra` config appended and `edit` applied to the whole text.
    pub fn start_with(upstream: &str, extra: &str, edit: impl FnOnce(&mut String)) -> Gateway {
        Gateway::start_env(upstream, extra, edit, &[])
    }

    /// [`Gateway::start_with`], with more environment variables (`RUST_LOG` among them).
    pub fn start_env(
        upstream: &str,
        extra: &str,
        edit: impl FnOnce(&mut String),
        env: &[(&str, &str)],
    ) -> Gateway {
        let mut dir = tempfile::tempdir().unwrap();
        let mut addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut text = config(addr, upstream, extra);
        edit(&mut text);
        let config_path = dir.path().join("gate.toml");
        // A port picked free can be taken by another test before the gateway binds it:
        // then the gateway exits, and another port is tried.
        for _ in 0..5 {
            std::fs::write(&config_path, &text).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_swr-gate"))
                .args(["serve", "--config"])
                .arg(&config_path)
                .env("SWR_GATE_TEST_TOKEN", TOKEN)
                .env("RUST_LOG", "warn")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("gateway.log")).unwrap())
                .spawn()
                .unwrap();
            let mut gateway = Gateway { addr, dir, child };
            if gateway.wait_until_listening() {
                return gateway;
            }
            let next: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            text = text.replace(&addr.to_string(), &next.to_string());
            addr = next;
            dir = gateway.into_dir();
        }
        panic!("swr-gate found no free port to listen on");
    }

    /// Wait until this gateway (not another test's, on a port both picked) listens;
    /// false when it could not bind its port.
    fn wait_until_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(self.addr).is_ok() && listens(self.child.id(), self.addr.port()) {
                return true;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                if self.log().contains("cannot listen on") {
                    return false;
                }
                panic!("swr-gate exited with {status}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("swr-gate did not start listening on {}", self.addr);
    }

    /// The temp dir of a gateway that did not start, for the next try.
    fn into_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// What the gateway wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// The audit records so far. A `completed` record is queued before its answer goes
    /// out but written just after, so this waits until the file stops growing.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        let read = || std::fs::read_to_string(self.audit_path()).unwrap_or_default();
        let mut text = read();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            std::thread::sleep(Duration::from_millis(30));
            let again = read();
            if again == text || Instant::now() > deadline {
                break;
            }
            text = again;
        }
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a request (raw bytes are built from the parts) and read the whole answer.
    pub fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        http_request(self.addr, "swr.local", method, target, headers, body)
    }

    /// A guarded-style JSON request with the CI bot's API key.
    pub fn json(&self, method: &str, target: &str, body: &str) -> Answer {
        self.try_json(method, target, body).expect("an answer")
    }

    /// Like [`Gateway::json`], but `None` when no complete answer came back.
    pub fn try_json(&self, method: &str, target: &str, body: &str) -> Option<Answer> {
        let key = format!("Bearer {API_KEY}");
        let headers = [
            ("authorization", key.as_str()),
            ("content-type", "application/json"),
        ];
        self.try_send_raw(&request_bytes(
            "swr.local",
            method,
            target,
            &headers,
            body.as_bytes(),
        ))
    }

    pub fn send_raw(&self, bytes: &[u8]) -> Answer {
        send_bytes(self.addr, bytes)
    }

    /// Like [`Gateway::send_raw`], but `None` when no complete answer came back.
    pub fn try_send_raw(&self, bytes: &[u8]) -> Option<Answer> {
        try_send_bytes(self.addr, bytes)
    }

    /// SIGTERM, as an orchestrator stops it; the audit file stays readable afterwards.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }

    /// Whether the process has ended (not reaped: [`Gateway::stop`] still works).
    pub fn exited(&self) -> bool {
        !Path::new(&format!("/proc/{}", self.child.id())).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .is_ok_and(|stat| stat.contains(") Z "))
    }
}

pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP/1.1 answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn code(&self) -> String {
        self.json()["error_code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Send one HTTP/1.1 request to `addr` and read the whole answer.
pub fn http_request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    send_bytes(addr, &request_bytes(host, method, target, headers, body))
}

/// The bytes of a one-shot HTTP/1.1 request.
pub fn request_bytes(
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Send exactly `bytes` to `addr` and read the whole answer.
pub fn send_bytes(addr: SocketAddr, bytes: &[u8]) -> Answer {
    try_send_bytes(addr, bytes).expect("an answer")
}

/// Like [`send_bytes`], but `None` when no complete answer came back.
pub fn try_send_bytes(addr: SocketAddr, bytes: &[u8]) -> Option<Answer> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream.write_all(bytes).ok()?;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    raw.windows(4)
        .any(|w| w == b"\r\n\r\n")
        .then(|| parse_answer(&raw))
}

pub fn parse_answer(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete answer: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// Config edit: forward requests that match no guarded route.
pub fn forward_unmatched(config: &mut String) {
    *config = config.replace("[upstream]\n", "[upstream]\nunmatched = \"forward\"\n");
}

pub fn grants(auth: u8) -> String {
    format!(r#"[{{"user_id":"{USER}","user_name":"user01","auth":{auth}}}]"#)
}

/// A throw-away PKI: one CA, certificates it signs, written as PEM files.
pub struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    pub ca_file: PathBuf,
    dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_file = dir.join(format!("{name}.crt"));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            ca,
            ca_key,
            ca_file,
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for `common_name` with the given SANs; returns (cert, key) paths.
    pub fn issue(&self, common_name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        self.issue_named(
            common_name,
            &[(rcgen::DnType::CommonName, common_name)],
            sans,
        )
    }

    /// A certificate with `subject` (attributes in order) and SANs, each of the kind its
    /// shape says (`spiffe://…` a URI, `a@b` an e-mail address, an IP, else a DNS name)
    /// or its prefix (`email:`, `dns:`), saved as `FILE_STEM.crt`/`.key`.
    pub fn issue_named(
        &self,
        file_stem: &str,
        subject: &[(rcgen::DnType, &str)],
        sans: &[&str],
    ) -> (PathBuf, PathBuf) {
        use rcgen::SanType;
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.subject_alt_names = sans
            .iter()
            .map(|san| {
                let text = || san.to_string().try_into().unwrap();
                if let Some(email) = san.strip_prefix("email:") {
                    SanType::Rfc822Name(email.to_string().try_into().unwrap())
                } else if let Some(dns) = san.strip_prefix("dns:") {
                    SanType::DnsName(dns.to_string().try_into().unwrap())
                } else if let Ok(ip) = san.parse() {
                    SanType::IpAddress(ip)
                } else if san.contains("://") {
                    SanType::URI(text())
                } else if san.contains('@') {
                    SanType::Rfc822Name(text())
                } else {
                    SanType::DnsName(text())
                }
            })
            .collect();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_path = self.dir.join(format!("{file_stem}.crt"));
        let key_path = self.dir.join(format!("{file_stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// What the tests' Python needs: the official SWR SDK, and a Prometheus parser.
pub const PYTHON_PACKAGES: [&str; 2] = ["huaweicloudsdkswr==3.1.219", "prometheus-client==0.26.0"];

/// A virtualenv under `target/test-env/NAME` with `packages` from PyPI, made once and
/// reused, so a plain `cargo test` fetches what it needs by itself. Returns its `bin/`.
pub fn python_env(name: &str, packages: &[&str]) -> PathBuf {
    static MAKING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-env")
        .join(name);
    let bin = venv.join("bin");
    let ready = venv.join(format!("ready-{}", packages.join("-")));
    if ready.exists() {
        return bin;
    }
    let status = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .expect("python3 is needed");
    assert!(status.success(), "could not create {}", venv.display());
    let status = Command::new(bin.join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages)
        .status()
        .unwrap();
    assert!(status.success(), "pip could not install {packages:?}");
    std::fs::write(&ready, "").unwrap();
    bin
}

/// The Python of a virtualenv with [`PYTHON_PACKAGES`].
pub fn sdk_python() -> PathBuf {
    python_env("sdk-venv", &PYTHON_PACKAGES).join("python")
}

/// A `redis-server` of the test's own on a free loopback port, stopped when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is needed for these tests (apt-get install redis-server; .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Send one command, as redis-cli would; the first line of the answer.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut answer).unwrap();
        answer.trim_end().to_owned()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Send `count` requests at once from as many threads; returns the answers.
pub fn burst(count: usize, send: impl Fn() -> Answer + Sync) -> Vec<Answer> {
    let barrier = std::sync::Barrier::new(count);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    send()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// An HTTP/2 (prior knowledge) connection to the gateway at `addr`, and the task driving
/// it (done once it closed). Call it inside a tokio runtime.
pub async fn h2_connect<B>(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<()>,
)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driver)
}
