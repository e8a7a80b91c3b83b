//! IAM stand-ins for the fault tests: a fake IAM whose answers a test chooses and whose
//! calls it counts, and a switch that cuts the way to a real one (Keystone).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::Validator;

/// Put in every error body the fake sends: it must never show up anywhere else.
pub const BODY_MARKER: &str = "iam-body-must-not-leak";

/// How the fake IAM answers `POST /v3/auth/tokens`. Its answers carry hyper's `Date`
/// header, as Keystone's and Huawei IAM's do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IamMode {
    /// 201, a new token in `X-Subject-Token`, its times in the body.
    Issue,
    /// This status, with a JSON error body.
    Status(u16),
    /// 201 and a good body, but no `X-Subject-Token`.
    NoToken,
    /// 201 and a token, but a body that is not the token JSON.
    Garbage,
    /// 201 and a token whose `expires_at` is before its `issued_at`.
    Expired,
    /// 201 and a token issued this long ago (by `issued_at`), living the fake's lifetime
    /// from then, as an IAM behind a cache that replays old answers would hand out.
    IssuedAgo(Duration),
}

/// One `POST /v3/auth/tokens` the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub body: serde_json::Value,
    pub auth_token: Option<String>,
}

struct FakeState {
    mode: Mutex<IamMode>,
    delay: Mutex<Duration>,
    lifetime: Duration,
    calls: Mutex<Vec<Call>>,
    issued: Mutex<HashMap<String, SystemTime>>,
    count: AtomicUsize,
}

pub struct FakeIam {
    pub addr: SocketAddr,
    /// The same fake over TLS, when started with a certificate.
    pub tls_addr: Option<SocketAddr>,
    state: Arc<FakeState>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeIam {
    /// A fake issuing tokens that live `lifetime`; validation (`GET`) says 200 while they do.
    pub fn start(lifetime: Duration) -> FakeIam {
        FakeIam::start_with(lifetime, None)
    }

    /// Also listening for TLS with this certificate and key.
    pub fn start_tls(lifetime: Duration, cert: &Path, key: &Path) -> FakeIam {
        FakeIam::start_with(lifetime, Some((cert, key)))
    }

    fn start_with(lifetime: Duration, tls: Option<(&Path, &Path)>) -> FakeIam {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(FakeState {
            mode: Mutex::new(IamMode::Issue),
            delay: Mutex::new(Duration::ZERO),
            lifetime,
            calls: Mutex::new(Vec::new()),
            issued: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
        });
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(serve(listener, None, state.clone()));
        let tls_addr = tls.map(|(cert, key)| {
            let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
            let addr = listener.local_addr().unwrap();
            runtime.spawn(serve(listener, Some(acceptor(cert, key)), state.clone()));
            addr
        });
        FakeIam {
            addr,
            tls_addr,
            state,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn tls_url(&self) -> String {
        format!("https://localhost:{}", self.tls_addr.unwrap().port())
    }

    pub fn set(&self, mode: IamMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Answer every `POST` this much later.
    pub fn delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// For a stand-in SWR that asks this fake whether tokens are valid.
    pub fn validator(&self) -> Validator {
        Validator::new(&self.url(), None)
    }
}

fn acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<FakeState>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (tls, state) = (tls.clone(), state.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&state, request).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            }
        });
    }
}

fn respond(status: u16, token: Option<&str>, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if let Some(token) = token {
        response
            .headers_mut()
            .insert("x-subject-token", token.parse().unwrap());
    }
    response
}

async fn answer(state: &FakeState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    if parts.uri.path() != "/v3/auth/tokens" {
        return respond(404, None, "{}".into());
    }
    if parts.method == "GET" {
        let subject = parts
            .headers
            .get("x-subject-token")
            .and_then(|t| t.to_str().ok())
            .unwrap_or_default();
        let expires = state.issued.lock().unwrap().get(subject).copied();
        return match expires {
            Some(expires) if SystemTime::now() < expires => respond(200, None, "{}".into()),
            _ => respond(404, None, "{}".into()),
        };
    }
    let body = body.collect().await.unwrap().to_bytes();
    state.calls.lock().unwrap().push(Call {
        body: serde_json::from_slice(&body).unwrap_or_default(),
        auth_token: parts
            .headers
            .get("x-auth-token")
            .map(|t| t.to_str().unwrap().to_owned()),
    });
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let mode = *state.mode.lock().unwrap();
    let n = state.count.fetch_add(1, Ordering::SeqCst);
    let token = format!(
        "fake-{n}-{}",
        swr_gate::crypto::hex(&swr_gate::crypto::random_bytes::<24>())
    );
    let issued_at = match mode {
        IamMode::IssuedAgo(ago) => SystemTime::now() - ago,
        _ => SystemTime::now(),
    };
    let expires_at = match mode {
        IamMode::Expired => issued_at - Duration::from_secs(1),
        _ => issued_at + state.lifetime,
    };
    let times = format!(
        r#"{{"token":{{"methods":["password"],"expires_at":"{}","issued_at":"{}","note":"{BODY_MARKER}"}}}}"#,
        humantime::format_rfc3339_micros(expires_at),
        humantime::format_rfc3339_micros(issued_at),
    );
    match mode {
        IamMode::Issue | IamMode::Expired | IamMode::IssuedAgo(_) => {
            state
                .issued
                .lock()
                .unwrap()
                .insert(token.clone(), expires_at);
            respond(201, Some(&token), times)
        }
        IamMode::NoToken => respond(201, None, times),
        IamMode::Garbage => respond(201, Some(&token), format!("<html>{BODY_MARKER}</html>")),
        IamMode::Status(status) => respond(
            status,
            None,
            format!(r#"{{"error":{{"code":{status},"message":"{BODY_MARKER}"}}}}"#),
        ),
    }
}

/// A TCP relay to `target` that a test turns off (connections are then accepted and
/// closed at once, as a dead IAM behind a load balancer looks) and on again.
pub struct Switch {
    pub addr: SocketAddr,
    on: Arc<AtomicBool>,
    cut: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Switch {
    pub fn start(target: SocketAddr, on: bool) -> Switch {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let on = Arc::new(AtomicBool::new(on));
        let cut = Arc::new(AtomicUsize::new(0));
        let (is_on, cuts) = (on.clone(), cut.clone());
        runtime.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                if !is_on.load(Ordering::SeqCst) {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                    }
                });
            }
        });
        Switch {
            addr,
            on,
            cut,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    /// Connections closed because the switch was off.
    pub fn cut(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}
