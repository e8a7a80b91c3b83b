//! The request pipeline, in the order the product sentence says it:
//! route → authenticate → rate-limit → read body → schema → policy → token → forward →
//! audit.
//! Each stage lives in its own module; this file only puts them in order and keeps the
//! account of what happened for the audit record.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use ipnet::IpNet;
use serde_json::Value;
use tracing::Instrument;

use crate::audit::{self, AuditLog, Decision, Record, Stage};
use crate::auth::{self, FailureLimiter, Identity, PeerCertificate, Presented, ReplayGuard};
use crate::body;
use crate::config::{OnFailure, PolicyMode, Unmatched};
use crate::crypto::{hex, random_bytes};
use crate::error::{rate_limit_headers, ErrorKind, GateError};
use crate::iam::{Token, TokenSource};
use crate::metrics::{Metrics, Observation};
use crate::policy;
use crate::route::{Resolved, Target};
use crate::snapshot::Snapshot;
use crate::upstream::{self, BodySent, ClientBody, UpstreamBody};

pub type GateBody = UpstreamBody;

/// The running gateway: the current snapshot and the parts that outlive reloads.
pub struct Gate {
    pub snapshot: ArcSwap<Snapshot>,
    pub tokens: Arc<TokenSource>,
    pub audit: AuditLog,
    pub replay: ReplayGuard,
    pub auth_failures: FailureLimiter,
    pub metrics: Metrics,
    /// Set at SIGTERM, as the listener closes: /readyz says so for as long as in-flight
    /// requests drain, so that a health check does not take the instance for ready.
    pub draining: std::sync::atomic::AtomicBool,
}

/// What the connection tells about the client, before any request is read.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The verified TLS client certificate, when one was presented.
    pub certificate: Option<Arc<PeerCertificate>>,
}

/// Handle one request. Never fails: every refusal is an answer in the contract's shape,
/// and every answer leaves an audit record. Run in a task of its own
/// ([`crate::server`]), so that a client hanging up does not cancel a request SWR may
/// already have: SWR's answer is still awaited (within `[upstream] timeout`) and recorded.
/// `request_id` is [`request_id`]'s, taken before the task starts, so that the 500 of
/// [`failed`] names it too.
pub async fn handle(
    gate: Arc<Gate>,
    peer: Arc<Peer>,
    request: Request<Incoming>,
    request_id: String,
) -> Response<GateBody> {
    let _in_flight = crate::workers::InFlight::start();
    let snapshot = gate.snapshot.load_full();
    let mut account = Account {
        audit: &gate.audit,
        exchange: Exchange::begin(&snapshot, peer.addr, &request, request_id),
        recorded: false,
    };
    let exchange = &mut account.exchange;
    // Every log line about this request carries its id, as the audit record does.
    let span = tracing::info_span!("request", request_id = %exchange.request_id);
    let outcome = process(&gate, &snapshot, &peer, exchange, request)
        .instrument(span.clone())
        .await;
    let mut response = match outcome {
        Ok(response) => response,
        Err(error) => {
            give_back_signature(&gate, exchange, &error);
            exchange.refuse(error)
        }
    };
    if let Ok(id) = HeaderValue::from_str(&exchange.request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
    if let Some((limit, remaining)) = exchange.rate_limit {
        rate_limit_headers(response.headers_mut(), limit, remaining);
    }
    exchange.status = Some(response.status().as_u16());
    let record = exchange.record(Stage::Completed);
    // Sealed on the first poll below, the record is the log's to write from here on.
    account.recorded = true;
    // In the file before the answer leaves, but the answer does not wait for a sync.
    // Failures are counted in the audit log's health.
    if let Err(error) = gate.audit.submit(&record).await {
        span.in_scope(|| crate::throttled!(error!(%error, "audit record could not be written")));
    }
    let observation = account.exchange.observation();
    span.in_scope(|| {
        tracing::debug!(
            operation = observation.operation,
            status = observation.status,
            duration_ms = audit::milliseconds(observation.duration),
            "answered"
        )
    });
    gate.metrics.observe(&observation);
    response
}

/// `host` or `host:port`: no user info, a host, a port of digits only.
fn is_host_and_port(text: &[u8]) -> bool {
    let Ok(authority) = http::uri::Authority::try_from(text) else {
        return false;
    };
    let host = authority.host();
    // `host()` of `[::1]:443` is `[::1]`: what follows it is the port, if any.
    let port = authority.as_str().get(host.len()..).unwrap_or_default();
    !text.contains(&b'@')
        && !host.is_empty()
        && authority.as_str().starts_with(host)
        && (port.is_empty() || (port.len() > 1 && authority.port_u16().is_some()))
}

/// A request refused with 429 or 503 before it left for SWR is to be sent again as it
/// is, which the SDKs' own retry does, signature and all: that copy is no replay. In a
/// task of its own: the answer does not wait on Redis, and the retry comes a second later.
fn give_back_signature(gate: &Arc<Gate>, exchange: &mut Exchange, refusal: &GateError) {
    let retry_invited = matches!(refusal.kind.status().as_u16(), 429 | 503);
    if !retry_invited || exchange.forwarded_at.is_some() {
        return;
    }
    if let Some(spent) = exchange.spent.take() {
        let gate = Arc::clone(gate);
        tokio::spawn(async move { gate.replay.forget(&spent).await });
    }
}

/// The answer to a message that is not a request hyper could read (a malformed head, or
/// one over the size limit), in the contract's shape, with its audit record and metrics.
/// hyper answers those itself, bare; the server puts this answer in place of that one.
pub fn refuse_unreadable(gate: &Gate, peer: SocketAddr, error: GateError) -> Response<Bytes> {
    let mut exchange = Exchange::unread(peer, fresh_request_id());
    exchange.decision = Decision::Deny;
    let response = error.clone().into_response(&exchange.request_id);
    exchange.error = Some(error);
    exchange.status = Some(response.status().as_u16());
    if let Err(error) = gate.audit.write_now(&exchange.record(Stage::Completed)) {
        crate::throttled!(
            error!(request_id = %exchange.request_id, %error, "audit record could not be written")
        );
    }
    gate.metrics.observe(&exchange.observation());
    response
}

/// The answer when a request's task failed (a panic): 500, never a dropped connection.
/// Its audit record is the one the request's account wrote, under the same request id.
pub fn failed(error: tokio::task::JoinError, request_id: &str) -> Response<GateBody> {
    tracing::error!(%error, request_id, "a request's handling failed");
    GateError::new(ErrorKind::Internal, "the request could not be handled")
        .into_response(request_id)
        .map(full)
}

/// One request's account, which leaves a `completed` record however the handling ends:
/// dropped before that record was written (its task dropped when the runtime stopped
/// after the drain grace, or a panic), it writes one with no `status`, saying so.
struct Account<'a> {
    audit: &'a AuditLog,
    exchange: Exchange,
    recorded: bool,
}

impl Drop for Account<'_> {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        let exchange = &mut self.exchange;
        if let Some(at) = exchange.forwarded_at {
            exchange.upstream_ms = Some(audit::milliseconds(at.elapsed()));
        }
        exchange.decision = Decision::Error;
        let (status, error) = if std::thread::panicking() {
            // The client gets the 500 of [`failed`].
            let error = GateError::new(ErrorKind::Internal, "the request could not be handled");
            (Some(500), error)
        } else {
            let message = match exchange.forwarded_at {
                Some(_) => "the gateway stopped before SWR answered",
                None => "the gateway stopped before it answered",
            };
            (None, GateError::new(ErrorKind::Stopped, message))
        };
        exchange.status = status;
        exchange.error = Some(error);
        if let Err(error) = self.audit.write_now(&exchange.record(Stage::Completed)) {
            tracing::error!(request_id = %exchange.request_id, %error, "audit record could not be written");
        }
    }
}

async fn process(
    gate: &Gate,
    snapshot: &Snapshot,
    peer: &Peer,
    exchange: &mut Exchange,
    request: Request<Incoming>,
) -> Result<Response<GateBody>, GateError> {
    let (mut parts, body) = request.into_parts();
    let mut body = RequestBody::Streaming(body);
    refuse_method_override(&parts.headers)?;
    refuse_ambiguous_message(&parts)?;
    refuse_too_many_fields(&parts.headers)?;
    if exchange.address_from == AddressFrom::Unreadable {
        return Err(GateError::new(
            ErrorKind::AmbiguousMessage,
            "X-Forwarded-For from a trusted proxy does not name the client's address",
        ));
    }

    let resolved = snapshot
        .routes
        .resolve(&parts.method, parts.uri.path(), parts.uri.query())?;
    exchange.routed(snapshot, &resolved);
    if matches!(resolved, Resolved::Unmatched { .. })
        && snapshot.config.upstream.unmatched == Unmatched::Reject
    {
        return Err(crate::route::unmatched(&parts.method, parts.uri.path()));
    }

    let guarded = matches!(resolved, Resolved::Guarded { .. });
    let identity = authenticate(gate, snapshot, peer, exchange, &parts, &mut body, guarded).await?;
    exchange.identity = Some(identity.clone());

    let operation = exchange.operation.as_deref().unwrap_or(policy::FORWARD);
    let applied = snapshot
        .rate_limits
        .check(&identity, exchange.client_ip, operation)
        .await;
    if let Err(GateError { rate_limit, .. }) = &applied {
        exchange.rate_limit = *rate_limit;
    }
    let applied = applied?;
    exchange.rate_limit = applied.limit;
    exchange.notes.extend(applied.notes);

    match resolved {
        Resolved::Guarded {
            route,
            upstream_path,
            ..
        } => {
            body::check_content_type(&parts.headers)?;
            let bytes = body.read(snapshot, &parts.headers).await?;
            let document = body::parse_strict(&bytes)?;
            exchange.describe(&document);

            let operation = &snapshot.routes.route(route).operation;
            snapshot.schemas[route].check(operation, &document)?;
            decide(snapshot, exchange, operation, Some(&document))?;

            let token = gate.tokens.current().await?;
            let canonical = serde_json::to_vec(&document).map_err(|_| {
                GateError::new(
                    ErrorKind::Internal,
                    "the request body could not be re-encoded",
                )
            })?;
            exchange.decision = Decision::Allow;
            record_decision(gate, exchange).await?;
            let canonical = RequestBody::Buffered(Bytes::from(canonical));
            // The method was checked and signed as sent (`patch`); SWR gets the route's.
            parts.method = snapshot.routes.route(route).method.clone();
            forward(
                gate,
                snapshot,
                exchange,
                &parts,
                canonical,
                &upstream_path,
                token,
            )
            .await
        }
        Resolved::Unmatched { path_and_query, .. } => {
            decide(snapshot, exchange, policy::FORWARD, None)?;
            // A forward has no record before it goes, only after: under on_failure =
            // "reject" it does not go while the trail is known not to take records.
            if gate.audit.on_failure == OnFailure::Reject && !gate.audit.may_forward() {
                return Err(GateError::new(
                    ErrorKind::AuditUnavailable,
                    "the audit log cannot be written",
                ));
            }
            let token = gate.tokens.current().await?;
            exchange.decision = Decision::Allow;
            forward(
                gate,
                snapshot,
                exchange,
                &parts,
                body,
                &path_and_query,
                token,
            )
            .await
        }
    }
}

/// Authenticate, behind the brute-force brake: an address that keeps failing is refused
/// before its credentials are looked at. AK/SK signatures cover the body, so for them
/// the body is read (within `max_body_bytes`) as part of authenticating.
async fn authenticate(
    gate: &Gate,
    snapshot: &Snapshot,
    peer: &Peer,
    exchange: &mut Exchange,
    parts: &http::request::Parts,
    body: &mut RequestBody,
    guarded: bool,
) -> Result<Identity, GateError> {
    let brake = || match gate
        .auth_failures
        .blocked(exchange.client_ip, Instant::now())
    {
        Some(wait) => Err(GateError::new(
            ErrorKind::TooManyAuthFailures,
            "too many failed authentications from this address",
        )
        .with_retry_after(crate::error::retry_seconds(wait))),
        None => Ok(()),
    };
    brake()?;
    let bytes = match auth::signs_body(&parts.headers) {
        true => Some(body.read(snapshot, &parts.headers).await?),
        false => None,
    };
    // Again: failures counted while the body came in must stop the signatures that were
    // sent alongside them, or a guesser would send many at once.
    brake()?;
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let presented = Presented {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        host,
        headers: &parts.headers,
        certificate: peer.certificate.as_deref(),
        body: bytes.as_deref(),
        guarded,
    };
    let result = snapshot.clients.authenticate(&presented, SystemTime::now());
    if let Err(failure) = &result {
        gate.auth_failures
            .record(exchange.client_ip, failure, Instant::now());
    }
    let authenticated = result?;
    if let Some(signature) = &authenticated.signature {
        // The signature is good: a replay's record names whose it is.
        exchange.identity = Some(authenticated.identity.clone());
        exchange.spent = Some(gate.replay.first_use(signature).await?);
    }
    Ok(authenticated.identity)
}

/// Ask the policy. A denial is the answer, unless `mode = "dry-run"`: then the request
/// goes on and its audit record says what would have happened.
fn decide(
    snapshot: &Snapshot,
    exchange: &mut Exchange,
    action: &str,
    body: Option<&Value>,
) -> Result<(), GateError> {
    let Some(identity) = exchange.identity.clone() else {
        return Err(GateError::new(
            ErrorKind::Internal,
            "the policy was asked before authentication",
        ));
    };
    // A forwarded request's context has no names (swr.cedarschema), also when its
    // record has them.
    let no_names = Target::default();
    let target = match action == policy::FORWARD {
        true => &no_names,
        false => &exchange.target,
    };
    let context = policy::Context::new(
        target,
        body,
        exchange.client_ip,
        identity.method,
        SystemTime::now(),
    )?;
    let query = policy::Query {
        client: &identity.client.id,
        groups: &identity.client.groups,
        action,
        context: &context,
    };
    let decision = snapshot.policies.decide(&query)?;
    exchange.policies = decision.audit_ids();
    for error in &decision.errors {
        tracing::warn!(request_id = %exchange.request_id, policy = %error.id, error = %error.message, "policy could not be evaluated");
    }
    if !decision.shadow.is_empty() {
        let shadow: Vec<&str> = decision.shadow.iter().map(|s| s.id.as_str()).collect();
        tracing::info!(
            request_id = %exchange.request_id,
            client = %identity.client.id,
            action,
            shadow = ?shadow,
            allowed = decision.allowed,
            allowed_with_shadow = decision.allowed_with_shadow(),
            "shadow policies matched"
        );
    }
    if decision.allowed {
        return Ok(());
    }
    let refusal = snapshot.policies.refusal(&query, &decision);
    match snapshot.config.policy.mode {
        PolicyMode::Enforce => Err(refusal),
        PolicyMode::DryRun => {
            tracing::warn!(request_id = %exchange.request_id, client = %identity.client.id, action, "{}; forwarded anyway (policy mode dry-run)", refusal.message);
            exchange.dry_run = true;
            exchange.would_deny = Some(refusal);
            Ok(())
        }
    }
}

fn full(bytes: Bytes) -> GateBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A request body, read at most once: streamed on, or buffered when a stage needed it.
enum RequestBody {
    Streaming(Incoming),
    Buffered(Bytes),
}

impl RequestBody {
    /// The whole body, within `max_body_bytes` and `request_timeout`.
    async fn read(&mut self, snapshot: &Snapshot, headers: &HeaderMap) -> Result<Bytes, GateError> {
        let body = match std::mem::replace(self, RequestBody::Buffered(Bytes::new())) {
            RequestBody::Buffered(bytes) => {
                *self = RequestBody::Buffered(bytes.clone());
                return Ok(bytes);
            }
            RequestBody::Streaming(body) => body,
        };
        let server = &snapshot.config.server;
        let bytes = tokio::time::timeout(
            server.request_timeout,
            body::read_limited(headers, body, server.max_body_bytes),
        )
        .await
        .map_err(|_| {
            GateError::new(
                ErrorKind::BodyTimeout,
                "the request body did not arrive in time",
            )
        })??;
        *self = RequestBody::Buffered(bytes.clone());
        Ok(bytes)
    }
}

/// `X-HTTP-Method-Override` and friends let a POST be read as a PATCH by some backends:
/// the method checked would not be the method executed.
fn refuse_method_override(headers: &HeaderMap) -> Result<(), GateError> {
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        if headers.contains_key(name) {
            return Err(GateError::new(
                ErrorKind::MethodOverride,
                format!("the {name} header is refused: send the real method"),
            ));
        }
    }
    Ok(())
}

/// HTTP/1.1's head parser stops at this many header fields; HTTP/2's header block has a
/// size limit only, and is held to the same count here.
const MAX_HEADER_FIELDS: usize = 100;

fn refuse_too_many_fields(headers: &HeaderMap) -> Result<(), GateError> {
    if headers.len() > MAX_HEADER_FIELDS {
        return Err(GateError::new(
            ErrorKind::HeadTooLarge,
            format!("the request has more than {MAX_HEADER_FIELDS} header fields"),
        ));
    }
    Ok(())
}

/// Headers that HTTP lets a receiver read more than one way, refused before anything
/// reads them: the message swr-gate checks has to be the one SWR gets. hyper already
/// refuses a `Transfer-Encoding` that does not end in `chunked`; a coding before it
/// (`gzip, chunked`) would be dropped by the gateway's re-framing, so the body SWR got
/// would not be the one the client sent.
fn refuse_ambiguous_message(parts: &http::request::Parts) -> Result<(), GateError> {
    let refuse = |message: &str| Err(GateError::new(ErrorKind::AmbiguousMessage, message));
    let hosts = parts.headers.get_all(http::header::HOST).iter().count();
    if hosts > 1 {
        return refuse("the request has more than one Host header");
    }
    // `Host` and HTTP/2's `:authority` are a host and an optional port (RFC 9112 §3.2),
    // nothing a front end could read another way (`a@evil`, `127.0.0.1/x y`, `host:abc`);
    // a signature is checked over them.
    if let Some(host) = parts.headers.get(http::header::HOST) {
        if !host.is_empty() && !is_host_and_port(host.as_bytes()) {
            return refuse("the Host header is not a host with an optional port");
        }
    }
    if let Some(authority) = parts.uri.authority() {
        if !is_host_and_port(authority.as_str().as_bytes()) {
            return refuse("the request's authority is not a host with an optional port");
        }
    }
    // An absolute-form target names its host itself (what hyper's own client sends).
    if hosts == 0 && parts.version == http::Version::HTTP_11 && parts.uri.authority().is_none() {
        return refuse("an HTTP/1.1 request needs a Host header");
    }
    // HTTP/2's `:authority` (or an absolute-form target) and `Host` naming different hosts
    // is malformed (RFC 9113 §8.3.1): a signature is checked against one of them.
    if let (Some(authority), Some(host)) =
        (parts.uri.authority(), parts.headers.get(http::header::HOST))
    {
        if !same_host(authority, host, parts.uri.scheme_str()) {
            return refuse("the Host header and the request's authority name different hosts");
        }
    }
    let mut codings = parts
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter();
    if let Some(first) = codings.next() {
        let only_chunked = first.as_bytes().eq_ignore_ascii_case(b"chunked");
        if !only_chunked || codings.next().is_some() {
            return refuse("Transfer-Encoding may only be chunked");
        }
    }
    Ok(())
}

/// Whether `Host` names the host and port the request's authority does: letters in either
/// case, and a port left out the same as the scheme's default (`gate` is `gate:443` over
/// https), as a client that writes its own Host may leave it out.
fn same_host(authority: &http::uri::Authority, host: &HeaderValue, scheme: Option<&str>) -> bool {
    let Some(host) = host
        .to_str()
        .ok()
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
    else {
        return false;
    };
    let default = if scheme == Some("https") { 443 } else { 80 };
    authority.host().eq_ignore_ascii_case(host.host())
        && authority.port_u16().unwrap_or(default) == host.port_u16().unwrap_or(default)
}

/// The `decided` record goes out before the request leaves for SWR, so a crash between
/// the two still leaves a trace of what was allowed.
async fn record_decision(gate: &Gate, exchange: &Exchange) -> Result<(), GateError> {
    match gate.audit.write(&exchange.record(Stage::Decided)).await {
        Ok(()) => Ok(()),
        Err(error) if gate.audit.on_failure == OnFailure::Continue => {
            crate::throttled!(
                error!(%error, "audit record could not be written; forwarding anyway (on_failure = \"continue\")")
            );
            Ok(())
        }
        Err(error) => {
            crate::throttled!(error!(%error, "audit record could not be written; refusing"));
            Err(GateError::new(
                ErrorKind::AuditUnavailable,
                "the audit log cannot be written",
            ))
        }
    }
}

/// Send the request to SWR with the token. When SWR refuses the token (401) and the body
/// is buffered, so that sending it again is safe, retry once with a renewed token; the
/// client gets the second answer, whatever it is.
async fn forward(
    gate: &Gate,
    snapshot: &Snapshot,
    exchange: &mut Exchange,
    parts: &http::request::Parts,
    body: RequestBody,
    path_and_query: &str,
    token: Token,
) -> Result<Response<GateBody>, GateError> {
    let started = Instant::now();
    exchange.forwarded_at = Some(started);
    let send = |body: GateBody, sent: Option<BodySent>, token: &Token| {
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.headers_mut() = upstream_headers(exchange, &parts.headers, token);
        snapshot.upstream.send(request, path_and_query, sent)
    };
    let (body, sent, replay) = match body {
        // No body (a GET, a DELETE) can be sent again as well as a buffered one.
        RequestBody::Streaming(body) if hyper::body::Body::is_end_stream(&body) => {
            (full(Bytes::new()), None, Some(Bytes::new()))
        }
        RequestBody::Streaming(body) => {
            let (body, sent) = ClientBody::relay(body, snapshot.config.server.request_timeout);
            (body, sent, None)
        }
        RequestBody::Buffered(bytes) => (full(bytes.clone()), None, Some(bytes)),
    };

    let mut result = send(body, sent, &token).await;
    let refused = matches!(&result, Ok(response) if response.status() == StatusCode::UNAUTHORIZED);
    match (refused, replay) {
        (true, Some(bytes)) => {
            if let Some(renewed) = gate.tokens.renew_rejected(&token).await {
                tracing::info!(request_id = %exchange.request_id, "SWR refused the IAM token; retrying once with a renewed one");
                result = send(full(bytes), None, &renewed).await;
            }
        }
        // A streamed body is gone: this answer stands, but the next request need not
        // meet the same refusal (renewals are at most one per few seconds).
        (true, None) => {
            let tokens = gate.tokens.clone();
            tokio::spawn(async move { tokens.renew_rejected(&token).await });
        }
        (false, _) => {}
    }
    exchange.upstream_ms = Some(audit::milliseconds(started.elapsed()));
    let mut response =
        result.inspect_err(|error| exchange.upstream_status = error.upstream_status)?;
    exchange.upstream_status = Some(response.status().as_u16());
    upstream::response_headers_for_client(response.headers_mut());
    Ok(response)
}

/// The client's headers as SWR may see them, with the request id, the client's address
/// appended to `X-Forwarded-For` and the gateway's token.
fn upstream_headers(exchange: &Exchange, client_headers: &HeaderMap, token: &Token) -> HeaderMap {
    let mut headers = upstream::request_headers_for_upstream(
        client_headers,
        exchange.address_from == AddressFrom::TrustedProxy,
    );
    if let Ok(id) = HeaderValue::from_str(&exchange.request_id) {
        headers.insert("x-request-id", id);
    }
    // Every X-Forwarded-For line the client sent, in order, as one list (RFC 9110 §5.3),
    // then the peer as policies see it (an IPv4 client of a dual-stack listener as IPv4).
    // As bytes: a line that is not UTF-8 may still hold the entry the client's address
    // was read from, and SWR is to get the account the gateway read.
    let peer = exchange.peer.ip().to_canonical().to_string();
    let forwarded_for = client_headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty())
        .chain([peer.as_bytes()])
        .collect::<Vec<_>>()
        .join(b", ".as_slice());
    if let Ok(value) = HeaderValue::from_bytes(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-auth-token", token.header_value());
    // A guarded operation's body is the gateway's own encoding of the validated
    // document, whatever the client's header said of its own (or its `Connection` took).
    if exchange.operation.is_some() {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
    }
    headers
}

/// The running account of one request, from which its audit records are made.
struct Exchange {
    started: Instant,
    peer: SocketAddr,
    request_id: String,
    client_ip: IpAddr,
    address_from: AddressFrom,
    method: String,
    path: String,
    operation: Option<String>,
    /// An unmatched route that `unmatched = "forward"` lets through: counted in metrics as
    /// the `forward` operation, refused or not, as limits and policies name it.
    forwarding: bool,
    target: Target,
    identity: Option<Identity>,
    grants: Option<Vec<audit::Grant>>,
    sharing: Option<audit::Sharing>,
    decision: Decision,
    error: Option<GateError>,
    /// The policies that decided, and `shadow:<id>` for shadow policies that matched.
    policies: Vec<String>,
    /// Set when `mode = "dry-run"` let through a request the policy denies.
    dry_run: bool,
    would_deny: Option<GateError>,
    status: Option<u16>,
    upstream_status: Option<u16>,
    upstream_ms: Option<f64>,
    /// When the request left for SWR.
    forwarded_at: Option<Instant>,
    /// The tightest rate limit that applied: (requests per period, remaining).
    rate_limit: Option<(u32, u32)>,
    /// The AK/SK signature this request spent, given back if it is refused with an
    /// answer that asks for it again.
    spent: Option<auth::Spent>,
    /// Things the audit record should say beyond the outcome.
    notes: Vec<audit::Reason>,
}

impl Exchange {
    fn begin(
        snapshot: &Snapshot,
        peer: SocketAddr,
        request: &Request<Incoming>,
        request_id: String,
    ) -> Exchange {
        let (client_ip, address_from) = client_ip(
            peer.ip(),
            request.headers(),
            &snapshot.config.server.trusted_proxies,
        );
        Exchange {
            client_ip,
            address_from,
            method: request.method().to_string(),
            path: crate::error::at_most_chars(request.uri().path(), crate::route::MAX_PATH_BYTES)
                .to_owned(),
            ..Exchange::unread(peer, request_id)
        }
    }

    /// The account of a message that was never read as a request: no method, no path,
    /// and the peer is the client, since no header of it can be believed.
    fn unread(peer: SocketAddr, request_id: String) -> Exchange {
        Exchange {
            started: Instant::now(),
            peer,
            request_id,
            client_ip: peer.ip().to_canonical(),
            address_from: AddressFrom::Peer,
            method: String::new(),
            path: String::new(),
            operation: None,
            forwarding: false,
            target: Target::default(),
            identity: None,
            grants: None,
            sharing: None,
            decision: Decision::Error,
            error: None,
            policies: Vec::new(),
            dry_run: false,
            would_deny: None,
            status: None,
            upstream_status: None,
            upstream_ms: None,
            forwarded_at: None,
            rate_limit: None,
            spent: None,
            notes: Vec::new(),
        }
    }

    fn routed(&mut self, snapshot: &Snapshot, resolved: &Resolved) {
        match resolved {
            Resolved::Guarded { route, target, .. } => {
                self.operation = Some(snapshot.routes.route(*route).operation.clone());
                self.target = target.clone();
            }
            Resolved::Unmatched { target, .. } => {
                self.forwarding = snapshot.config.upstream.unmatched == Unmatched::Forward;
                // Recorded, so that a revocation is found by its repository like a grant.
                self.target = target.clone();
            }
        }
    }

    /// Keep what the body says in the record's terms: grants or a sharing.
    fn describe(&mut self, document: &Value) {
        const SHARING_FIELDS: [&str; 3] = ["permit", "deadline", "description"];
        match document {
            Value::Array(items) => {
                self.grants = Some(
                    items
                        .iter()
                        .take(RECORDED_GRANTS)
                        .map(|item| audit::Grant {
                            user_id: sent(item, "user_id"),
                            user_name: sent(item, "user_name"),
                            auth: sent(item, "auth"),
                        })
                        .collect(),
                )
            }
            // Any one of its fields: a refused body missing `permit` still records the
            // deadline it asked for.
            Value::Object(fields) if SHARING_FIELDS.iter().any(|f| fields.contains_key(*f)) => {
                self.sharing = Some(audit::Sharing {
                    permit: sent(document, "permit"),
                    deadline: sent(document, "deadline"),
                    description: sent(document, "description"),
                })
            }
            _ => {}
        }
    }

    fn refuse(&mut self, error: GateError) -> Response<GateBody> {
        self.decision = match error.kind.status().as_u16() {
            500.. => Decision::Error,
            _ => Decision::Deny,
        };
        let response = error.clone().into_response(&self.request_id);
        self.error = Some(error);
        response.map(full)
    }

    fn observation(&self) -> Observation<'_> {
        let operation = match (&self.operation, self.forwarding) {
            (Some(operation), _) => operation.as_str(),
            (None, true) => policy::FORWARD,
            (None, false) => "unmatched",
        };
        Observation {
            operation,
            decision: self.decision,
            status: self.status.unwrap_or_default(),
            duration: self.started.elapsed(),
            upstream: self
                .upstream_ms
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
            refusal: self.error.as_ref().map(|e| (e.kind.stage(), e.kind.name())),
        }
    }

    fn record(&self, stage: Stage) -> Record<'_> {
        let (denied_by, mut reasons) = match (&self.error, &self.would_deny) {
            (Some(error), _) => (Some(error.kind.stage()), reasons(error)),
            (None, Some(would_deny)) => (None, reasons(would_deny)),
            (None, None) => (None, Vec::new()),
        };
        reasons.extend(self.notes.iter().cloned());
        Record {
            ts: humantime::format_rfc3339_millis(SystemTime::now()),
            request_id: &self.request_id,
            stage,
            client: self.identity.as_ref().map(|i| i.client.id.as_str()),
            auth_method: self.identity.as_ref().map(|i| i.method),
            client_ip: self.client_ip,
            method: &self.method,
            path: &self.path,
            operation: self.operation.as_deref(),
            namespace: self.target.namespace.as_deref(),
            repository: self.target.repository.as_deref(),
            access_domain: self.target.access_domain.as_deref(),
            grants: self.grants.as_deref(),
            sharing: self.sharing.as_ref(),
            decision: self.decision,
            denied_by,
            reasons,
            policies: &self.policies,
            dry_run: self.dry_run,
            status: self.status,
            upstream_status: self.upstream_status,
            duration_ms: audit::milliseconds(self.started.elapsed()),
            upstream_ms: self.upstream_ms,
        }
    }
}

/// An error as audit reasons: its message, then each detail.
fn reasons(error: &GateError) -> Vec<audit::Reason> {
    let first = audit::Reason {
        code: error.kind.code(),
        message: error.message.clone(),
        pointer: None,
        policy: None,
    };
    std::iter::once(first)
        .chain(error.details.iter().map(|d| audit::Reason {
            code: error.kind.code(),
            message: d.message.clone(),
            pointer: Some(d.pointer.clone()),
            policy: d.policy.clone(),
        }))
        .collect()
}

/// How many grants of a body an audit record holds: every grant of a body the shipped
/// schema accepts (at most 50), and no more of a refused one, so that a body of 30 000
/// empty items makes a record of its first grants, not of megabytes.
const RECORDED_GRANTS: usize = 100;

/// The value the client sent under `key`; null when there is none.
fn sent(value: &Value, key: &str) -> Value {
    value.get(key).cloned().unwrap_or_default()
}

/// A new request id: a counter keyed with a random per-process secret, unique without a
/// system call per request, and unguessable, so that no client can send the id the
/// gateway will give someone else's request and make two requests' records look like one.
fn fresh_request_id() -> String {
    static KEY: std::sync::OnceLock<ring::hmac::Key> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let key =
        KEY.get_or_init(|| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &random_bytes::<32>()));
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    hex(&ring::hmac::sign(key, &n.to_le_bytes()).as_ref()[..16])
}

/// The client's own `X-Request-Id` when it is a sane token, else a fresh one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_owned)
        .unwrap_or_else(fresh_request_id)
}

/// The peer, unless the peer is a trusted proxy: then the nearest X-Forwarded-For entry
/// that is not itself a trusted proxy. An untrusted client's header is never believed.
/// IPv4 clients of a dual-stack listener (`::ffff:10.0.0.7`) are IPv4 addresses here, as
/// policies, `trusted_proxies` and per-address limits write them.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> (IpAddr, AddressFrom) {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return (peer, AddressFrom::Peer);
    }
    // Nearest entry first: what lies beyond the first that no trusted proxy wrote is the
    // client's own writing, and is not even read.
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        // An empty entry (an empty header, a doubled comma) names nobody.
        let entries = value.as_bytes().rsplit(|&b| b == b',');
        for entry in entries.filter(|entry| !entry.trim_ascii().is_empty()) {
            let Some(ip) = std::str::from_utf8(entry).ok().and_then(forwarded_address) else {
                return (peer, AddressFrom::Unreadable);
            };
            let ip = ip.to_canonical();
            if !is_trusted(&ip) {
                return (ip, AddressFrom::TrustedProxy);
            }
        }
    }
    (peer, AddressFrom::TrustedProxy)
}

/// Where the client's address was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddressFrom {
    /// The TCP peer: the client itself, or a proxy that is not trusted.
    Peer,
    /// A trusted proxy's `X-Forwarded-For`, or the trusted proxy itself.
    TrustedProxy,
    /// A trusted proxy's `X-Forwarded-For` whose entry for the client names no address:
    /// the request is refused, not put on the proxy's account.
    Unreadable,
}

/// An `X-Forwarded-For` entry's address, with or without the port some load balancers
/// add: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]:443`.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse()
        .or_else(|_| entry.parse::<SocketAddr>().map(|address| address.ip()))
        .ok()
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_host_is_a_host_and_an_optional_port() {
        for good in [
            "swr-api.cn-north-4.myhuaweicloud.com",
            "127.0.0.1:8080",
            "[::1]:443",
            "[::1]",
            "Gate_1.local",
        ] {
            assert!(is_host_and_port(good.as_bytes()), "{good}");
        }
        for bad in [
            "a@evil",
            "127.0.0.1/x y",
            "host:abc",
            ":443",
            "host:",
            "host:99999",
            "",
        ] {
            assert!(!is_host_and_port(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn host_and_authority_agree_up_to_case_and_default_ports() {
        let agree = |authority: &str, host: &str, scheme| {
            same_host(
                &authority.parse().unwrap(),
                &HeaderValue::from_str(host).unwrap(),
                scheme,
            )
        };
        assert!(agree("gate:8080", "GATE:8080", Some("http")));
        assert!(agree("gate:80", "gate", Some("http")));
        assert!(agree("gate", "gate:443", Some("https")));
        assert!(agree("gate:", "gate", Some("http")));
        assert!(agree("[::1]:8080", "[::1]:8080", Some("http")));
        assert!(!agree("gate:443", "gate", Some("http")));
        assert!(!agree("gate:8080", "gate:8081", Some("http")));
        assert!(!agree("gate", "swr.example.com", Some("https")));
        assert!(!agree("gate", "gate/../x", Some("https")));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "1.1.1.1, 2.2.2.2, 10.0.0.7".parse().unwrap(),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let outsider: IpAddr = "3.3.3.3".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            (ip("2.2.2.2"), AddressFrom::TrustedProxy)
        );
        assert_eq!(
            client_ip(outsider, &headers, &trusted),
            (outsider, AddressFrom::Peer)
        );
        headers.insert("x-forwarded-for", "junk".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            (proxy, AddressFrom::Unreadable)
        );
        // Only the entries trusted proxies wrote are read; ports are passed over.
        for (forwarded, client) in [
            ("junk, 2.2.2.2", "2.2.2.2"),
            ("1.1.1.1, 2.2.2.2:5555, 10.0.0.7:443", "2.2.2.2"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
        ] {
            headers.insert("x-forwarded-for", forwarded.parse().unwrap());
            assert_eq!(
                client_ip(proxy, &headers, &trusted),
                (ip(client), AddressFrom::TrustedProxy),
                "{forwarded}"
            );
        }
        headers.insert("x-forwarded-for", "1.1.1.1, junk".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            (proxy, AddressFrom::Unreadable)
        );
        headers.insert("x-forwarded-for", "2.2.2.2,, ".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            (ip("2.2.2.2"), AddressFrom::TrustedProxy)
        );
        headers.insert("x-forwarded-for", "10.0.0.3".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            (proxy, AddressFrom::TrustedProxy)
        );
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_listener_are_ipv4() {
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "::ffff:1.1.1.1".parse().unwrap());
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(client_ip(mapped, &headers, &trusted).0, ip("1.1.1.1"));
        assert_eq!(
            client_ip(mapped, &HeaderMap::new(), &[]),
            (ip("127.0.0.1"), AddressFrom::Peer)
        );
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert("x-request-id", "a b\"c".parse().unwrap());
        assert_eq!(request_id(&headers).len(), 32);
    }

    #[test]
    fn fresh_request_ids_share_no_prefix_a_client_could_count_on() {
        let (a, b) = (fresh_request_id(), fresh_request_id());
        assert_eq!((a.len(), b.len()), (32, 32));
        assert_ne!(a[..16], b[..16]);
        assert_ne!(a[16..], b[16..]);
    }
}
