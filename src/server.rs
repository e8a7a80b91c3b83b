//! Listening: plain TCP or TLS, HTTP/1.1 and HTTP/2 on the same port (h2c by prior
//! knowledge, or ALPN under TLS), slow clients cut off, graceful shutdown on SIGTERM.
//! Connections are accepted and served on the request threads of [`crate::workers`];
//! this module's main loop only answers signals.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::audit::AuditLog;
use crate::auth::{FailureLimiter, PeerCertificate, ReplayGuard};
use crate::config::Config;
use crate::iam::TokenSource;
use crate::metrics::Metrics;
use crate::pipeline::{self, Gate, Peer};
use crate::reload::Reloader;
use crate::snapshot::Snapshot;
use crate::workers::Workers;

/// Largest request head (request line plus headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Run the gateway until SIGTERM or SIGINT, then drain and return.
pub async fn serve(config_path: &Path) -> Result<(), String> {
    serve_then(config_path, |_| {}).await
}

/// [`serve`], calling `on_listening` with the bound address once connections are accepted.
pub async fn serve_then(
    config_path: &Path,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let config = Config::load(config_path)?;
    let snapshot = Snapshot::load(config, None).map_err(|problems| problems.join("\n"))?;
    for warning in snapshot.policies.warnings() {
        tracing::warn!("{warning}");
    }
    let config = &snapshot.config;
    let tokens = Arc::new(TokenSource::from_config(config)?);
    tokens.spawn_refresher();
    let audit = AuditLog::start(config)?;
    let audit_health = audit.health().clone();
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let admin_listener = match &config.admin {
        Some(admin) => Some(
            TcpListener::bind(admin.listen)
                .await
                .map_err(|e| format!("cannot listen on {} ([admin]): {e}", admin.listen))?,
        ),
        None => None,
    };
    let grace = config.server.request_timeout;
    let auth = config.auth.clone();
    let limits = ConnectionLimits {
        header_timeout: config.server.header_timeout,
    };
    let gate = Arc::new(Gate {
        snapshot: ArcSwap::from_pointee(snapshot),
        audit,
        replay: ReplayGuard::default(),
        auth_failures: FailureLimiter::new(auth.max_failures, auth.failure_window),
        metrics: Metrics::new(tokens.clone(), audit_health),
        tokens,
        draining: Default::default(),
    });
    let reloader = Arc::new(Reloader::new(config_path));
    tokio::spawn(reloader.clone().watch_files(Arc::downgrade(&gate)));
    tokio::spawn(sweep_rate_limits(Arc::downgrade(&gate)));
    if let Some(admin_listener) = admin_listener {
        tracing::info!(listen = %admin_listener.local_addr().map_err(|e| e.to_string())?, "admin endpoints listening");
        tokio::spawn(admin::serve(admin_listener, gate.clone()));
    }
    // Signal handlers go in before anyone can be told we listen: SIGHUP's and SIGTERM's
    // default actions would kill the process.
    let mut hangup =
        signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let listener = listener.into_std().map_err(|e| e.to_string())?;
    let workers = Workers::start(|stop| {
        let listener = listener
            .try_clone()
            .and_then(TcpListener::from_std)
            .map_err(|e| format!("cannot share the listening socket: {e}"))?;
        Ok(accept(listener, gate.clone(), limits, grace, stop))
    })?;
    drop(listener);
    tracing::info!(listen = %local, tls = gate.snapshot.load().tls.is_some(), threads = crate::workers::count(), "swr-gate listening");
    on_listening(local);

    loop {
        tokio::select! {
            _ = hangup.recv() => {
                // logrotate's postrotate signal, and the operator's "reload now".
                if let Err(error) = gate.audit.reopen() {
                    tracing::error!(%error, "the audit file could not be reopened");
                }
                let _ = reloader.reload(&gate);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    gate.draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(grace = %humantime::format_duration(grace), "shutting down: draining in-flight requests");
    if !workers.stop().await? {
        tracing::warn!("grace period over; closed the connections still open");
    }
    gate.audit
        .flush()
        .await
        .map_err(|e| format!("the audit trail could not be flushed: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// One request thread's work: accept and serve connections until `stop`, then let the
/// open ones finish within `grace`. Whether they did.
async fn accept(
    listener: TcpListener,
    gate: Arc<Gate>,
    limits: ConnectionLimits,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let graceful = GracefulShutdown::new();
    // Held by every request's task: the drain also waits for requests whose client left.
    let in_flight = watch::Sender::new(());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gate = gate.clone();
                let tls = gate.snapshot.load().tls.clone();
                let watcher = graceful.watcher();
                let requests = in_flight.subscribe();
                tokio::spawn(async move {
                    serve_connection(stream, peer, tls, gate, limits, watcher, requests).await;
                });
            }
            // A closed channel (the main thread gone) stops too.
            _ = async { drop(stop.wait_for(|stop| *stop).await) } => break,
        }
    }
    drop(listener);
    let drained = async {
        graceful.shutdown().await;
        in_flight.closed().await;
    };
    tokio::time::timeout(grace, drained).await.is_ok()
}

#[derive(Clone, Copy)]
struct ConnectionLimits {
    header_timeout: Duration,
}

async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    gate: Arc<Gate>,
    limits: ConnectionLimits,
    watcher: hyper_util::server::graceful::Watcher,
    requests: watch::Receiver<()>,
) {
    let result = match tls {
        None => {
            let peer = Peer {
                addr,
                certificate: None,
            };
            serve_http(TokioIo::new(stream), peer, gate, limits, watcher, requests).await
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(peer = %addr, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            // The verifier already checked the chain against client_ca; here we only
            // read the names the policy maps to a client.
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| PeerCertificate::from_der(leaf))
                .map(Arc::new);
            let peer = Peer { addr, certificate };
            serve_http(TokioIo::new(stream), peer, gate, limits, watcher, requests).await
        }
    };
    if let Err(error) = result {
        tracing::debug!(peer = %addr, %error, "connection ended with an error");
    }
}

/// HTTP/1.1 or HTTP/2 (whichever the client speaks) on one connection, every request
/// through the pipeline, until the client leaves or shutdown asks the connection to end.
async fn serve_http<I>(
    io: I,
    peer: Peer,
    gate: Arc<Gate>,
    limits: ConnectionLimits,
    watcher: hyper_util::server::graceful::Watcher,
    requests: watch::Receiver<()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(256);
    let peer = Arc::new(peer);
    let service = service_fn(move |request| {
        let (gate, peer, held) = (gate.clone(), peer.clone(), requests.clone());
        // A task of its own, which the client hanging up does not cancel.
        let handling = tokio::spawn(async move {
            let _in_flight = held;
            pipeline::handle(gate, peer, request).await
        });
        async move { Ok::<_, std::convert::Infallible>(handling.await.unwrap_or_else(pipeline::failed)) }
    });
    watcher
        .watch(builder.serve_connection(io, service).into_owned())
        .await
}

/// A small plain-HTTP server for the admin endpoints and the dev stand-ins: every
/// connection on its own task, every request answered by `answer`, until dropped.
pub async fn serve_simple<A, F>(listener: TcpListener, answer: A)
where
    A: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let reply = answer(request);
                async move { Ok::<_, std::convert::Infallible>(reply.await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Evict idle rate-limit buckets now and then, so memory stays bounded however many
/// distinct keys (client addresses) arrive.
async fn sweep_rate_limits(gate: std::sync::Weak<Gate>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Some(gate) = gate.upgrade() else { return };
        gate.snapshot.load().rate_limits.sweep();
    }
}
