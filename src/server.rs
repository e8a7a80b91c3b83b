//! Listening: plain TCP or TLS, HTTP/1.1 and HTTP/2 on the same port (h2c by prior
//! knowledge, or ALPN under TLS), slow and idle clients cut off, graceful shutdown on SIGTERM.
//! Connections are accepted and served on the request threads of [`crate::workers`];
//! this module's main loop only answers signals.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::audit::AuditLog;
use crate::auth::{FailureLimiter, PeerCertificate, ReplayGuard};
use crate::config::Config;
use crate::iam::TokenSource;
use crate::metrics::{ConnectionPlaces, Metrics};
use crate::pipeline::{self, Gate, GateBody, Peer};
use crate::redis_link;
use crate::reload::Reloader;
use crate::snapshot::Snapshot;
use crate::upstream::BoxError;
use crate::workers::Workers;

mod client_socket;
mod malformed;
mod per_address;

use client_socket::{ClientSocket, GiveUp};
use malformed::{Handback, MalformedAnswers};
use per_address::{AddressLimit, AddressPlace, Admission, OpenByAddress};

/// Largest request head (request line plus headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Requests one connection may have in progress: HTTP/2's concurrent streams, and the
/// requests still running after their client reset their streams.
const MAX_REQUESTS_PER_CONNECTION: usize = 256;

/// Run the gateway until SIGTERM or SIGINT, then drain and return.
pub async fn serve(config_path: &Path) -> Result<(), String> {
    serve_then(config_path, |_| {}).await
}

/// [`serve`], calling `on_listening` with the bound address once connections are accepted.
pub async fn serve_then(
    config_path: &Path,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let config = Config::load(config_path).map_err(|problems| problems.join("\n"))?;
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
    let auth = config.auth.clone();
    let max = max_connections(&config.server);
    let room = Room {
        places: Arc::new(Semaphore::new(max)),
        by_address: Default::default(),
    };
    let operations: Vec<String> = snapshot
        .routes
        .routes()
        .iter()
        .map(|route| route.operation.clone())
        .chain([crate::policy::FORWARD.to_owned()])
        .collect();
    let gate = Arc::new(Gate {
        snapshot: ArcSwap::from_pointee(snapshot),
        audit,
        replay: ReplayGuard::new(redis_link::url(
            auth.replay_redis_url.as_deref(),
            auth.replay_redis_url_env.as_deref(),
            "[auth] replay_redis_url",
        )?),
        auth_failures: FailureLimiter::new(auth.max_failures, auth.failure_window),
        metrics: Metrics::new(
            tokens.clone(),
            audit_health,
            ConnectionPlaces {
                places: room.places.clone(),
                max,
            },
            &operations,
        ),
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
        Ok(accept(listener, gate.clone(), room.clone(), stop))
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
    let grace = gate.snapshot.load().config.server.request_timeout;
    tracing::info!(grace = %humantime::format_duration(grace), "shutting down: draining in-flight requests (a second SIGTERM or SIGINT stops at once)");
    // A second signal is the operator not willing to wait (Ctrl-C twice): requests still
    // in flight end with the process, without their `completed` records.
    let drained = tokio::select! {
        drained = workers.stop() => drained?,
        _ = terminate.recv() => false,
        _ = interrupt.recv() => false,
    };
    if !drained {
        tracing::warn!("stopped draining (grace period over, or a second signal); closed the connections still open");
    }
    gate.audit
        .flush()
        .await
        .map_err(|e| format!("the audit trail could not be flushed: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// Reserved from the open files limit for what is not a connection: the listeners, the
/// audit trail, Redis, IAM, the files a reload reads.
const RESERVED_FILES: u64 = 128;

/// How many client connections to hold at once: `[server] max_connections`, or half of
/// what the open files limit leaves, so that every client connection can have one to
/// SWR. Past it, new connections wait in the listen backlog: a gateway that accepted
/// them all would have no descriptor left to reach SWR and answer 502 to everyone.
/// Raises the soft limit on open files to the hard one first, as Go programs do at
/// start: the common soft limit of 1024 would stop the gateway at about 450 clients.
fn max_connections(server: &crate::config::Server) -> usize {
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "the open files limit could not be read or raised");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let derived = (open_files.saturating_sub(RESERVED_FILES) / 2).max(1);
    let max = server.max_connections.map_or_else(
        || usize::try_from(derived).unwrap_or(usize::MAX),
        |configured| configured.get(),
    );
    let max = max.min(Semaphore::MAX_PERMITS);
    tracing::info!(open_files, max_connections = max, "connection limit");
    max
}

/// One request thread's work: accept and serve connections until `stop`, then let the
/// open ones finish within the drain period. Whether they did.
async fn accept(
    listener: TcpListener,
    gate: Arc<Gate>,
    room: Room,
    stop: watch::Receiver<bool>,
) -> bool {
    // Every connection's task, and every request's, holds a receiver; `closed` resolves
    // once all are gone, so the drain also waits for requests whose client left.
    let open = watch::Sender::new(());
    let mut warned = Warned::default();
    loop {
        tokio::select! {
            accepted = next_connection(&listener, &room, &gate, &mut warned) => {
                let (stream, peer, places) = match accepted {
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
                let snapshot = gate.snapshot.load();
                let (tls, limits) = (snapshot.tls.clone(), ConnectionLimits::of(&snapshot.config.server));
                let hold = Hold {
                    _open: open.subscribe(),
                    _places: Arc::new(places),
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    serve_connection(stream, peer, tls, gate, limits, stop, hold).await;
                });
            }
            _ = stopped(stop.clone()) => break,
        }
    }
    drop(listener);
    let grace = gate.snapshot.load().config.server.request_timeout;
    tokio::time::timeout(grace, open.closed()).await.is_ok()
}

/// The places client connections take, shared by the request threads so that each limit
/// holds for the process, whichever thread accepts.
#[derive(Clone)]
struct Room {
    /// `[server] max_connections`.
    places: Arc<Semaphore>,
    /// `[server] max_connections_per_address`.
    by_address: Arc<OpenByAddress>,
}

/// A connection's places, among all connections and among its address's, given back
/// when the last of its tasks drops them.
struct Places {
    _place: Option<OwnedSemaphorePermit>,
    _address: Option<AddressPlace>,
}

/// When each limit was last logged as reached: at most once per 10 s each.
#[derive(Default)]
struct Warned {
    at_limit: Option<Instant>,
    per_address: Option<Instant>,
}

fn time_to_warn(last: &mut Option<Instant>) -> bool {
    let due = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// The next connection, once there is room for it, and its places: past the limit, each
/// request thread holds one accepted connection while it waits, and the rest wait in the
/// listen backlog. A connection from an address that already holds its share is reset
/// at once, unread: waiting would hold up everyone behind it in the backlog, and reading
/// its request to answer it would spend on it what the limit is there to save.
async fn next_connection(
    listener: &TcpListener,
    room: &Room,
    gate: &Gate,
    warned: &mut Warned,
) -> std::io::Result<(TcpStream, SocketAddr, Places)> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let admission = {
            let snapshot = gate.snapshot.load();
            let server = &snapshot.config.server;
            let limit = AddressLimit {
                max: server.max_connections_per_address.map(NonZeroUsize::get),
                exempt: &server.trusted_proxies,
            };
            room.by_address.admit(peer.ip(), &limit)
        };
        let address = match admission {
            Admission::Counted(place) => Some(place),
            Admission::Unlimited => None,
            Admission::Refused => {
                // A reset rather than a close: nothing of a flood lingers in TIME_WAIT.
                let _ = stream.set_zero_linger();
                drop(stream);
                gate.metrics.connection_refused();
                if time_to_warn(&mut warned.per_address) {
                    tracing::warn!(
                        address = %crate::auth::address_block(peer.ip().to_canonical()),
                        "an address holds its share of connections ([server] max_connections_per_address): its new ones are reset (logged at most every 10 s)"
                    );
                }
                continue;
            }
        };
        let place = match room.places.clone().try_acquire_owned() {
            Ok(place) => Some(place),
            Err(_) => {
                if time_to_warn(&mut warned.at_limit) {
                    tracing::warn!(
                        "at the connection limit ([server] max_connections): new connections wait"
                    );
                }
                // The semaphore is never closed.
                room.places.clone().acquire_owned().await.ok()
            }
        };
        let places = Places {
            _place: place,
            _address: address,
        };
        return Ok((stream, peer, places));
    }
}

/// Held by a connection's task and by each of its requests' tasks. The drain at shutdown
/// waits for all of them, and the connection's places (among `max_connections`, and
/// among its address's) free only once all are done: requests a client left running (an
/// HTTP/1.1 connection closed mid-request, HTTP/2 streams reset) count against the
/// limits until they end, so reconnecting starts no more of them.
#[derive(Clone)]
struct Hold {
    _open: watch::Receiver<()>,
    _places: Arc<Places>,
}

/// Resolves once `stop` turns true, or its sender (the main thread) is gone.
async fn stopped(mut stop: watch::Receiver<bool>) {
    drop(stop.wait_for(|stop| *stop).await);
}

/// Read from the snapshot as each connection is accepted, so a reload applies to new ones.
#[derive(Clone, Copy)]
struct ConnectionLimits {
    /// Also how long a connection may stay open with no request in progress.
    header_timeout: Duration,
    /// How long a client may take no part of an answer before it is disconnected.
    answer_timeout: Duration,
}

impl ConnectionLimits {
    fn of(server: &crate::config::Server) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: server.header_timeout,
            answer_timeout: server.request_timeout,
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    gate: Arc<Gate>,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
    hold: Hold,
) {
    let (stream, give_up) = ClientSocket::new(stream);
    let result = match tls {
        None => {
            let peer = Peer {
                addr,
                certificate: None,
            };
            let link = Link {
                peer,
                protocol: None,
                give_up,
            };
            serve_http(TokioIo::new(stream), link, gate, limits, stop, hold).await
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
            let protocol = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Some(Protocol::Http2),
                Some(b"http/1.1") => Some(Protocol::Http1),
                _ => None,
            };
            let link = Link {
                peer: Peer { addr, certificate },
                protocol,
                give_up,
            };
            serve_http(TokioIo::new(stream), link, gate, limits, stop, hold).await
        }
    };
    if let Err(error) = result {
        tracing::debug!(peer = %addr, %error, "connection ended with an error");
    }
}

/// A connection's client, as far as serving it needs to know.
struct Link {
    peer: Peer,
    protocol: Option<Protocol>,
    give_up: GiveUp,
}

/// The protocol ALPN settled on under TLS. Without one (plain TCP, or a TLS client that
/// offered none), the client's first bytes tell: the HTTP/2 preface or not.
#[derive(Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
}

/// HTTP/1.1 or HTTP/2 (whichever the client speaks, or ALPN settled) on one connection,
/// every request through the pipeline, until the client leaves, shutdown asks the
/// connection to end, or it has had no request in progress for `header_timeout`, or its
/// client has taken no part of its answers for `answer_timeout`.
///
/// hyper's `header_read_timeout` covers HTTP/1.1 only once the auto builder has seen a
/// byte that is not the HTTP/2 preface, and HTTP/2 has no idle limit at all (its PINGs
/// find dead peers, not idle ones), so silent, preface-only and stream-less connections
/// would be held forever. One timer per connection closes them: the first request must
/// arrive within `header_timeout`, and a connection idle that long is shut down
/// gracefully (GOAWAY on HTTP/2), then dropped if it is still idle `header_timeout` later.
///
/// A request is in progress until its answer has been sent, so a client that does not
/// read (an HTTP/2 flow-control window left at zero, or HTTP/1.1 requests pipelined
/// while the answers fill the socket) would hold the connection forever; the same timer
/// resets the connection once no answer has moved for `answer_timeout`. The clock is the
/// connection's, not each stream's: hyper does not show which stream waits.
async fn serve_http<I>(
    io: I,
    link: Link,
    gate: Arc<Gate>,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
    hold: Hold,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let Link {
        peer,
        protocol,
        give_up,
    } = link;
    let mut builder = match protocol {
        None => auto::Builder::new(TokioExecutor::new()),
        Some(Protocol::Http1) => auto::Builder::new(TokioExecutor::new()).http1_only(),
        Some(Protocol::Http2) => auto::Builder::new(TokioExecutor::new()).http2_only(),
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(MAX_REQUESTS_PER_CONNECTION as u32);
    let client = peer.addr;
    let (handback, mut handed_back) = oneshot::channel();
    let io = MalformedAnswers::new(io, handback);
    let refusing = gate.clone();
    // The connection keeps its place, and a stop waits for it, until a held write is out.
    let _until_finished = hold.clone();
    let peer = Arc::new(peer);
    let activity = Arc::new(Activity::new());
    // A request runs on a task of its own, which the client hanging up does not cancel,
    // so that what reached SWR is seen through and recorded. A reset stream frees its
    // place among HTTP/2's concurrent streams while its task runs on; without this
    // count, a client that resets every stream it opens (CVE-2023-44487, "rapid reset")
    // could have any number of requests going to SWR over one connection.
    let in_progress = Arc::new(Semaphore::new(MAX_REQUESTS_PER_CONNECTION));
    let service = {
        let activity = activity.clone();
        service_fn(move |request| {
            let (gate, peer, held) = (gate.clone(), peer.clone(), hold.clone());
            let in_progress = in_progress.clone();
            let busy = Busy::start(activity.clone());
            // HTTP/1.1: hyper does not begin on a request while the client has not taken
            // the answer before it.
            let waiting = Unread::new(activity.clone());
            async move {
                drop(waiting);
                // The semaphore is never closed. A stream reset while it waits here has
                // started nothing.
                let place = in_progress.acquire_owned().await.ok();
                let activity = busy.0.clone();
                let request_id = pipeline::request_id(request.headers());
                let id = request_id.clone();
                let handling = tokio::spawn(async move {
                    let _place = place;
                    let _in_flight = held;
                    let response = pipeline::handle(gate, peer, request, id).await;
                    // Hyper takes it once the client has taken what went before.
                    (response, Unread::new(activity))
                });
                let (response, unread) = handling.await.unwrap_or_else(|error| {
                    (
                        pipeline::failed(error, &request_id),
                        Unread::new(busy.0.clone()),
                    )
                });
                Ok::<_, std::convert::Infallible>(response.map(|body| Tracked {
                    body,
                    unread: Some(unread),
                    busy,
                    rest: Bytes::new(),
                }))
            }
        })
    };
    let idle_limit = limits.header_timeout;
    // The connection, and with it the socket, is dropped when this block ends: with
    // hyper's result, or cut off (`None`), its client having stopped taking answers.
    let ended = async {
        let mut connection = pin!(builder.serve_connection(io, service));
        let mut stopping = pin!(stopped(stop));
        let mut deadline = Instant::now() + idle_limit;
        let mut closing = false;
        loop {
            let stall = activity.stalled_at(limits.answer_timeout);
            tokio::select! {
                result = connection.as_mut() => return Some(result),
                _ = stopping.as_mut(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    deadline = Instant::now() + idle_limit;
                }
                _ = tokio::time::sleep_until(stall.map_or(deadline, |stall| stall.min(deadline))) => {
                    let now = Instant::now();
                    if activity.stalled_at(limits.answer_timeout).is_some_and(|at| at <= now) {
                        tracing::debug!(peer = %client, "the client took no part of its answers in time; disconnected");
                        give_up.now();
                        return None;
                    }
                    match activity.idle_until(idle_limit) {
                        Some(until) if until <= now && closing => return None,
                        Some(until) if until <= now => {
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                            deadline = now + idle_limit;
                        }
                        Some(until) => deadline = until,
                        None => deadline = now + idle_limit,
                    }
                }
            }
        }
    }
    .await;
    let Some(result) = ended else {
        return Ok(());
    };
    if let Ok(Handback { io, held }) = handed_back.try_recv() {
        let answer = malformed::ended_on_refusal(&result)
            .then(|| pipeline::refuse_unreadable(&refusing, client, held.error()));
        let _ = tokio::time::timeout(idle_limit, malformed::finish(io, held, answer)).await;
    }
    result
}

/// Whether a connection has a request in progress, and since when it has had none; and
/// whether its client is taking its answers. Read only by the connection's timer.
struct Activity {
    opened: Instant,
    in_progress: AtomicUsize,
    /// Milliseconds after `opened` when the last request finished.
    idle_since: AtomicU64,
    /// Answers ready that hyper has not taken, or not asked for more of since their last
    /// frame: they wait for the client to take what went before.
    unread: AtomicUsize,
    /// Milliseconds after `opened` when an answer last became ready, or hyper took one
    /// or asked one for more.
    answered_at: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            in_progress: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            unread: AtomicUsize::new(0),
            answered_at: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// When the client will have taken no part of its answers for `limit`; `None` while
    /// none is waiting for it.
    fn stalled_at(&self, limit: Duration) -> Option<Instant> {
        if self.unread.load(Ordering::Acquire) == 0 {
            return None;
        }
        let since = Duration::from_millis(self.answered_at.load(Ordering::Acquire));
        Some(self.opened + since + limit)
    }

    /// When the connection will have been idle for `limit`; `None` while a request is in progress.
    fn idle_until(&self, limit: Duration) -> Option<Instant> {
        if self.in_progress.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        Some(self.opened + since + limit)
    }
}

/// An answer, or part of one, that waits for the client to take what went before it.
struct Unread(Arc<Activity>);

impl Unread {
    fn new(activity: Arc<Activity>) -> Unread {
        activity
            .answered_at
            .store(activity.now_ms(), Ordering::Release);
        activity.unread.fetch_add(1, Ordering::AcqRel);
        Unread(activity)
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        self.0.answered_at.store(self.0.now_ms(), Ordering::Release);
        self.0.unread.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request in progress, from its head until its answer has been sent (or dropped).
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Busy {
        activity.in_progress.fetch_add(1, Ordering::AcqRel);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now_ms(), Ordering::Release);
        self.0.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that keeps its request counted as in progress until hyper is done
/// with it, so a slow download is not taken for an idle connection; and that tells the
/// connection when it waits for the client to take what it gave.
struct Tracked {
    body: GateBody,
    busy: Busy,
    /// Set while hyper has not asked for more since the answer was ready or last gave it
    /// a frame.
    unread: Option<Unread>,
    /// What is left of a data frame larger than [`PIECE`].
    rest: Bytes,
}

/// The most an answer gives hyper at a time. hyper asks for more once it has sent most
/// of what it has, so the unread clock runs for one piece: a client reading 1 KB/s gets
/// 16 KiB through in well under `request_timeout`. A frame as SWR's answer arrives can
/// be hundreds of KiB, exactly when the client is slow and the answer backs up.
const PIECE: usize = 16 * 1024;

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.unread = None;
        let frame = if this.rest.is_empty() {
            ready!(Pin::new(&mut this.body).poll_frame(cx))
        } else {
            Some(Ok(Frame::data(std::mem::take(&mut this.rest))))
        };
        let frame = frame.map(|frame| {
            frame.map(|frame| match frame.into_data() {
                Ok(mut data) => {
                    if data.len() > PIECE {
                        this.rest = data.split_off(PIECE);
                    }
                    Frame::data(data)
                }
                Err(frame) => frame,
            })
        });
        if let Some(Ok(_)) = frame {
            this.unread = Some(Unread::new(this.busy.0.clone()));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let body = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        if let Some(upper) = body.upper() {
            hint.set_upper(upper + rest);
        }
        hint.set_lower(body.lower() + rest);
        hint
    }
}

/// How a [`serve_simple`] listener guards itself against callers that hold connections.
#[derive(Clone, Copy)]
pub struct SimpleLimits {
    /// Connections held at once; more are closed as they arrive.
    max_connections: usize,
    /// Time to send a request head, and to stay idle between requests.
    head_timeout: Duration,
    /// Time any one connection is kept: a client that keeps sending requests, or
    /// trickles one, does not keep its place for ever.
    lifetime: Duration,
}

impl SimpleLimits {
    /// The admin listener's: probes and scrapers need a few connections and answers take
    /// milliseconds, and a flood of connections must not take the descriptors the client
    /// listener, IAM and the audit trail need.
    pub const ADMIN: SimpleLimits = SimpleLimits {
        max_connections: 256,
        head_timeout: Duration::from_secs(5),
        lifetime: Duration::from_secs(30),
    };
}

/// A small plain-HTTP server for the admin endpoints and the dev stand-ins: every
/// connection on its own task, every request answered by `answer`, until dropped.
/// Without `limits` connections are kept as long as their client wants (the dev
/// stand-ins, whose client is the gateway's pool).
pub async fn serve_simple<A, F>(listener: TcpListener, answer: A, limits: Option<SimpleLimits>)
where
    A: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let places = limits.map(|limits| Arc::new(Semaphore::new(limits.max_connections)));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                crate::throttled!(warn!(%error, "accept failed on a simple listener"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let place = match &places {
            Some(places) => match places.clone().try_acquire_owned() {
                Ok(place) => Some(place),
                Err(_) => {
                    crate::throttled!(warn!(
                        listener = ?listener.local_addr().ok(),
                        "connections at their limit; closing a new one"
                    ));
                    continue;
                }
            },
            None => None,
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let reply = answer(request);
                async move { Ok::<_, std::convert::Infallible>(reply.await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            let Some(limits) = limits else {
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                return;
            };
            // HTTP/1 only (probes and scrapers speak it): hyper's head timer then starts at
            // the accept, so a connection that sends nothing ends after `head_timeout`
            // too, not only after `lifetime`.
            builder = builder.http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.head_timeout)
                .max_buf_size(MAX_HEAD_BYTES);
            let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
            if tokio::time::timeout(limits.lifetime, connection.as_mut())
                .await
                .is_err()
            {
                // Let an answer being written finish, but not for long.
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.head_timeout, connection).await;
            }
            drop(place);
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
