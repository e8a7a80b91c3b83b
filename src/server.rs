//! Listening: plain TCP or TLS, HTTP/1.1 and HTTP/2 on the same port (h2c by prior
//! knowledge, or ALPN under TLS), slow clients cut off, graceful shutdown on SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::audit::AuditLog;
use crate::auth::{FailureLimiter, PeerCertificate, ReplayGuard};
use crate::config::Config;
use crate::iam::TokenSource;
use crate::pipeline::{self, Gate, Peer};
use crate::snapshot::Snapshot;

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
    let snapshot = Snapshot::load(config).map_err(|problems| problems.join("\n"))?;
    for warning in snapshot.policies.warnings() {
        tracing::warn!("{warning}");
    }
    let config = &snapshot.config;
    let tokens = Arc::new(TokenSource::from_config(config));
    tokens.spawn_watcher();
    let audit = AuditLog::start(config)?;
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
        tokens,
        audit,
        replay: ReplayGuard::default(),
        auth_failures: FailureLimiter::new(auth.max_failures, auth.failure_window),
    });
    if let Some(admin_listener) = admin_listener {
        tracing::info!(listen = %admin_listener.local_addr().map_err(|e| e.to_string())?, "admin endpoints listening");
        tokio::spawn(admin::serve(admin_listener, gate.clone()));
    }
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(listen = %local, tls = gate.snapshot.load().tls.is_some(), "swr-gate listening");
    on_listening(local);

    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
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
                tokio::spawn(async move {
                    serve_connection(stream, peer, tls, gate, limits, watcher).await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(grace = %humantime::format_duration(grace), "shutting down: draining in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the connections still open");
    }
    Ok(())
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
) {
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
    let service = |peer: Arc<Peer>| {
        service_fn(move |request| {
            let (gate, peer) = (gate.clone(), peer.clone());
            async move { Ok::<_, std::convert::Infallible>(pipeline::handle(gate, peer, request).await) }
        })
    };
    let result = match tls {
        None => {
            let peer = Arc::new(Peer {
                addr,
                certificate: None,
            });
            watcher
                .watch(
                    builder
                        .serve_connection(TokioIo::new(stream), service(peer))
                        .into_owned(),
                )
                .await
        }
        Some(acceptor) => {
            let stream =
                match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
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
            let peer = Arc::new(Peer { addr, certificate });
            watcher
                .watch(
                    builder
                        .serve_connection(TokioIo::new(stream), service(peer))
                        .into_owned(),
                )
                .await
        }
    };
    if let Err(error) = result {
        tracing::debug!(peer = %addr, %error, "connection ended with an error");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
