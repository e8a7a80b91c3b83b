//! The connection to SWR: a pooled HTTP/1.1 client over rustls, and the header hygiene
//! that decides what SWR sees of the client's request and what the client sees back.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::config::Config;
use crate::error::{ErrorKind, GateError};

/// Boxed, so that the gateway's own body wrappers can end a stream with an error of
/// their own (a stall, a client's body arriving too slowly).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type UpstreamBody = BoxBody<Bytes, BoxError>;

pub struct Upstream {
    /// A pool per request thread, so that a request never waits on a connection that
    /// another thread's runtime drives.
    clients: Vec<Client<HttpsConnector<HttpConnector>, UpstreamBody>>,
    scheme_authority: String,
    authority: HeaderValue,
    base_path: String,
    timeout: Duration,
}

/// A rustls client config trusting the webpki roots plus an optional extra CA file.
pub fn tls_client_config(
    extra_ca: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let pem = crate::files::read(path)
            .map_err(|e| format!("{}: cannot read CA certificates: {e}", path.display()))?;
        let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: cannot read CA certificates: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate found", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
        }
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// The HTTP/1.1 connector for SWR, and for IAM: the same trust roots (`[upstream]
/// ca_file` included) and connect timeout for both.
pub fn connector(config: &Config) -> Result<HttpsConnector<HttpConnector>, String> {
    let extra_ca = config.upstream.ca_file.as_ref().map(|p| config.resolve(p));
    https_connector(extra_ca.as_deref(), config.upstream.connect_timeout)
}

/// An HTTP/1.1 connector speaking plain HTTP or TLS (webpki roots plus `extra_ca`).
pub fn https_connector(
    extra_ca: Option<&std::path::Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let tls = tls_client_config(extra_ca)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// A connection pool to SWR; each request thread has its own.
pub fn pool(
    connector: HttpsConnector<HttpConnector>,
) -> Client<HttpsConnector<HttpConnector>, UpstreamBody> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

impl Upstream {
    pub fn from_config(config: &Config) -> Result<Upstream, String> {
        let url = &config.upstream.url;
        let connector = connector(config)?;
        let clients = (0..crate::workers::count())
            .map(|_| pool(connector.clone()))
            .collect();
        let authority = url
            .authority()
            .ok_or("[upstream] url has no host")?
            .as_str();
        Ok(Upstream {
            clients,
            scheme_authority: format!("{}://{authority}", url.scheme_str().unwrap_or("https")),
            authority: HeaderValue::from_str(authority).map_err(|e| e.to_string())?,
            base_path: url.path().trim_end_matches('/').to_owned(),
            timeout: config.upstream.timeout,
        })
    }

    /// Send one request to SWR at `path_and_query` and have its answer: the head, and a
    /// small body whole. Connection failures are 502; no answer within the timeout is
    /// 504, the clock starting once SWR has the whole request (`sent`, for a body
    /// streamed from the client), so a slow client is not counted against SWR. A client
    /// body that fails is the client's error, never SWR's. Nothing here hangs the client.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
        path_and_query: &str,
        sent: Option<BodySent>,
    ) -> Result<Response<UpstreamBody>, GateError> {
        let uri: Uri = format!(
            "{}{}{}",
            self.scheme_authority, self.base_path, path_and_query
        )
        .parse()
        .map_err(|_| GateError::new(ErrorKind::Internal, "could not build the upstream URL"))?;
        *request.uri_mut() = uri;
        *request.version_mut() = http::Version::HTTP_11;
        request
            .headers_mut()
            .insert(header::HOST, self.authority.clone());
        let client = &self.clients[crate::workers::index() % self.clients.len()];
        // SWR's status once its head is in: when the rest of the answer then fails, the
        // error still says what SWR did.
        let head = AtomicU16::new(0);
        let answer = async {
            let response = client.request(request).await.map_err(refusal)?;
            head.store(response.status().as_u16(), Ordering::Relaxed);
            // hyper hands on a 101 as the answer. No request sent here asks to switch
            // protocols (`Upgrade` is dropped), and passed on, it would end the
            // client's connection as if it had.
            if response.status().is_informational() {
                crate::throttled!(
                    warn!(status = %response.status(), "SWR answered with an interim status as its final answer")
                );
                return Err(GateError::new(
                    ErrorKind::UpstreamUnreachable,
                    format!(
                        "SWR answered {}, which is no answer to this request",
                        response.status()
                    ),
                ));
            }
            let (parts, body) = response.into_parts();
            let body = relay_body(body, self.timeout).await?;
            Ok(Response::from_parts(parts, body))
        };
        tokio::pin!(answer);
        let answered = async {
            if let Some(sent) = sent {
                tokio::select! {
                    answered = &mut answer => return answered,
                    () = sent.wait() => {}
                }
            }
            tokio::time::timeout(self.timeout, &mut answer)
                .await
                .unwrap_or_else(|_| {
                    Err(GateError::new(
                        ErrorKind::UpstreamTimeout,
                        format!(
                            "SWR did not answer within {}",
                            humantime::format_duration(self.timeout)
                        ),
                    ))
                })
        };
        answered.await.map_err(|mut error| {
            error.upstream_status = Some(head.load(Ordering::Relaxed)).filter(|s| *s != 0);
            error
        })
    }
}

/// What the client hears when the exchange with SWR failed: the client's own error when
/// its body was the cause, else 502.
fn refusal(error: hyper_util::client::legacy::Error) -> GateError {
    let mut cause = std::error::Error::source(&error);
    let mut out_of_files = false;
    while let Some(error) = cause {
        if let Some(failed) = error.downcast_ref::<ClientBodyError>() {
            tracing::debug!(error = %failed, "the client's body failed on its way to SWR");
            return failed.refusal();
        }
        out_of_files |= error
            .downcast_ref::<std::io::Error>()
            .is_some_and(crate::error::out_of_files);
        cause = error.source();
    }
    crate::throttled!(warn!(error = %error_chain(&error), "upstream request failed"));
    let message = if out_of_files {
        "SWR could not be reached: the gateway has no file descriptor left (the open files limit)"
    } else if error.is_connect() {
        "SWR could not be reached"
    } else {
        "the connection to SWR failed before it answered"
    };
    GateError::new(ErrorKind::UpstreamUnreachable, message)
}

/// An error and its causes on one line, for logs (hyper's own message alone says little).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and
/// `Expect`, which the gateway has already answered for the client (hyper sends the
/// `100 Continue` when the body is first read).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "connection" | "expect" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// The headers a `Connection` header names: hop-by-hop for this message too.
fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// A credential of the client's (the SDK's signature headers included), or framing and
/// addressing that the gateway sets itself. The client's address reaches SWR only in the
/// gateway's `X-Forwarded-For`, so `X-Real-IP` and `Forwarded`, which a client can
/// write anything into, do not pass. Nor do the headers some front ends take as the
/// request's real path or its prefix (`X-Original-URL`, `X-Forwarded-Prefix`): SWR must
/// act on the path that was checked.
fn is_client_credential(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "authorization"
            | "x-auth-token"
            | "x-security-token"
            | "x-api-key"
            | "cookie"
            | "host"
            | "content-length"
            | "x-real-ip"
            | "forwarded"
            | "x-original-url"
            | "x-original-uri"
            | "x-rewrite-url"
            | "x-forwarded-uri"
            | "x-forwarded-path"
            | "x-forwarded-prefix"
            | "x-envoy-original-path"
    ) || name.starts_with("x-sdk-")
}

/// What SWR may see of the client's headers: all but a credential of the client's, a
/// hop-by-hop header or framing we did not choose. SWR's API takes headers of its own
/// (`X-Project-Id`, `X-Language`) that a list of what may pass would have to follow.
/// `from_trusted_proxy`: the peer is in `trusted_proxies`, whose account of what the client
/// asked for by name, port and scheme (`X-Forwarded-Host`, `-Port`, `-Proto`, ...) is
/// passed on; anyone else's is made up.
pub fn request_headers_for_upstream(
    client_headers: &HeaderMap,
    from_trusted_proxy: bool,
) -> HeaderMap {
    let connection_named = named_by_connection(client_headers);
    let mut headers = HeaderMap::with_capacity(client_headers.len());
    for (name, value) in client_headers {
        // A name with `_` is none SWR's API has, and CGI-style servers and some front
        // ends read it as `-` (`X_Auth_Token` beside the injected token, `X_HTTP_Method_
        // Override`): dropped, as nginx drops them by default (`underscores_in_headers`).
        if !name.as_str().contains('_')
            && !is_hop_by_hop(name)
            && !is_client_credential(name)
            && !connection_named.contains(name)
            && (from_trusted_proxy || !is_proxy_account(name))
        {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// What a proxy in front says the client asked for, beyond its address.
fn is_proxy_account(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "x-forwarded-host"
            | "x-forwarded-port"
            | "x-forwarded-proto"
            | "x-forwarded-scheme"
            | "x-forwarded-ssl"
    )
}

/// SWR's answers to permission calls are a few bytes: those are read whole and sent on
/// with their head in one write, instead of head and body in separate writes and
/// packets. Anything larger, or of unknown length, is streamed as it arrives, and cut
/// off when SWR sends nothing for `idle`.
async fn relay_body(body: Incoming, idle: Duration) -> Result<UpstreamBody, GateError> {
    const WHOLE_UP_TO: u64 = 64 * 1024;
    if body.size_hint().exact().is_none_or(|n| n > WHOLE_UP_TO) {
        return Ok(IdleTimeout::new(body, idle).boxed());
    }
    match body.collect().await {
        Ok(collected) => Ok(Full::new(collected.to_bytes())
            .map_err(|never| match never {})
            .boxed()),
        Err(error) => {
            crate::throttled!(warn!(error = %error_chain(&error), "upstream answer cut off"));
            Err(GateError::new(
                ErrorKind::UpstreamUnreachable,
                "the connection to SWR failed while it answered",
            ))
        }
    }
}

/// SWR's streamed answer, ended with an error once SWR has sent nothing for `idle` while
/// the client waited for more: hyper then cuts the client's connection (HTTP/1.1) or
/// stream (HTTP/2), which tells the client the answer is incomplete. Time the client
/// itself takes to read does not count.
struct IdleTimeout {
    body: Incoming,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Whether `sleep` runs: SWR owes the next frame.
    waiting: bool,
    /// The request's span, for the warning.
    span: tracing::Span,
}

impl IdleTimeout {
    fn new(body: Incoming, idle: Duration) -> IdleTimeout {
        IdleTimeout {
            body,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            span: tracing::Span::current(),
        }
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.waiting = false;
            if let Some(Err(error)) = &frame {
                // The client sees its answer cut; the record has the head's status.
                this.span.in_scope(|| {
                    crate::throttled!(warn!(error = %error_chain(error), "SWR's answer broke off midway; cutting it off"))
                });
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if !this.waiting {
            this.waiting = true;
            this.sleep.as_mut().reset(Instant::now() + this.idle);
        }
        ready!(this.sleep.as_mut().poll(cx));
        let stalled = UpstreamStalled(this.idle);
        this.span
            .in_scope(|| tracing::warn!(error = %stalled, "cutting the answer off"));
        Poll::Ready(Some(Err(stalled.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// SWR stopped sending its answer midway.
#[derive(Debug)]
struct UpstreamStalled(Duration);

impl std::fmt::Display for UpstreamStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SWR sent nothing of its answer for {}",
            humantime::format_duration(self.0)
        )
    }
}

impl std::error::Error for UpstreamStalled {}

/// The client's request body streamed on to SWR (forwarded unmatched routes): it fails
/// with a [`ClientBodyError`] when it has not arrived whole within `request_timeout` or
/// the client cut it off, so that the exchange's error says whose fault it was.
pub struct ClientBody {
    body: Incoming,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
    /// Dropped once the body has been sent whole or has failed; see [`BodySent`].
    sending: Option<oneshot::Sender<()>>,
    /// Bytes of the declared `Content-Length` not received yet.
    declared_left: Option<u64>,
    /// The frame that completes the declared length, held back until the client's body
    /// is seen to end there. SWR counts by `Content-Length`: given the frame at once, it
    /// would take the request as whole even when HTTP/2 DATA past the length follows,
    /// which makes the request malformed and the client's stream reset.
    last: Option<Frame<Bytes>>,
}

impl ClientBody {
    /// The body to send, and when it has been sent; `None` for an empty body, which is
    /// sent with the head.
    pub fn relay(body: Incoming, limit: Duration) -> (UpstreamBody, Option<BodySent>) {
        if body.is_end_stream() {
            return (body.map_err(Into::into).boxed(), None);
        }
        let (sending, done) = oneshot::channel();
        let deadline = tokio::time::sleep(limit);
        let by = deadline.deadline();
        let body = ClientBody {
            declared_left: body.size_hint().exact(),
            body,
            deadline: Box::pin(deadline),
            limit,
            sending: Some(sending),
            last: None,
        };
        (body.boxed(), Some(BodySent { done, by }))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = loop {
            let frame = match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(error))) => {
                    break Some(Err(ClientBodyError::Cut(error).into()))
                }
                Poll::Ready(None) => break this.last.take().map(Ok),
                Poll::Pending => {
                    ready!(this.deadline.as_mut().poll(cx));
                    break Some(Err(ClientBodyError::TimedOut(this.limit).into()));
                }
            };
            let data = frame.data_ref().map_or(0, |data| data.len() as u64);
            if this.last.is_some() {
                if data > 0 {
                    break Some(Err(ClientBodyError::Overlong.into()));
                }
                continue;
            }
            if let Some(left) = &mut this.declared_left {
                *left = left.saturating_sub(data);
                if *left == 0 && data > 0 && !this.body.is_end_stream() {
                    this.last = Some(frame);
                    continue;
                }
            }
            break Some(Ok(frame));
        };
        if !matches!(frame, Some(Ok(_))) || self.is_end_stream() {
            self.sending = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.last.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// When a [`ClientBody`] has been sent whole (or failed): SWR's time to answer starts
/// then, and at the latest at the body's deadline, when it fails if it is not through.
pub struct BodySent {
    done: oneshot::Receiver<()>,
    by: Instant,
}

impl BodySent {
    async fn wait(self) {
        let _ = tokio::time::timeout_at(self.by, self.done).await;
    }
}

/// How the client's own streamed body failed: found in the exchange's error causes, it
/// makes the answer the client's error instead of SWR's.
#[derive(Debug)]
pub enum ClientBodyError {
    TimedOut(Duration),
    Cut(hyper::Error),
    /// More than its `Content-Length`.
    Overlong,
}

impl ClientBodyError {
    fn refusal(&self) -> GateError {
        match self {
            ClientBodyError::TimedOut(_) => GateError::new(
                ErrorKind::BodyTimeout,
                "the request body did not arrive in time",
            ),
            ClientBodyError::Cut(_) => GateError::new(
                ErrorKind::MalformedJson,
                "the request body ended before it was complete",
            ),
            ClientBodyError::Overlong => GateError::new(
                ErrorKind::MalformedJson,
                "the request body is longer than its Content-Length",
            ),
        }
    }
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientBodyError::TimedOut(limit) => write!(
                f,
                "the request body did not arrive within {}",
                humantime::format_duration(*limit)
            ),
            ClientBodyError::Cut(_) => f.write_str("the client cut its request body off"),
            ClientBodyError::Overlong => {
                f.write_str("the client sent more body than its Content-Length")
            }
        }
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientBodyError::TimedOut(_) | ClientBodyError::Overlong => None,
            ClientBodyError::Cut(error) => Some(error),
        }
    }
}

/// What the client may see of SWR's answer: everything but hop-by-hop headers.
pub fn response_headers_for_client(headers: &mut HeaderMap) {
    // A length beside chunked framing describes the message before it was decoded
    // (RFC 9112 §6.3): passed on with the decoded body, it would cut the answer short.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let mut hop_by_hop = named_by_connection(headers);
    hop_by_hop.extend(headers.keys().filter(|n| is_hop_by_hop(n)).cloned());
    for name in hop_by_hop {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_hop_by_hop_and_address_headers_never_reach_swr() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "SDK-HMAC-SHA256 Access=x"),
            ("x-auth-token", "client-token"),
            ("x-security-token", "sts"),
            ("x-sdk-date", "20260101T000000Z"),
            ("x-sdk-content-sha256", "UNSIGNED-PAYLOAD"),
            ("x-api-key", "key"),
            ("connection", "x-custom-hop"),
            ("x-custom-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("x-real-ip", "6.6.6.6"),
            ("expect", "100-continue"),
            ("forwarded", "for=6.6.6.6"),
            ("content-type", "application/json"),
            ("x-project-id", "p1"),
            ("x-forwarded-proto", "https"),
            ("x_auth_token", "client-token"),
            ("x_sdk_date", "20260101T000000Z"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x_http_method_override", "DELETE"),
            ("proxy-status", "x"),
        ] {
            headers.append(name, value.parse().unwrap());
        }
        let names = |from_trusted_proxy| {
            let forwarded = request_headers_for_upstream(&headers, from_trusted_proxy);
            let mut names: Vec<String> = forwarded.keys().map(|n| n.to_string()).collect();
            names.sort_unstable();
            names
        };
        assert_eq!(names(false), ["content-type", "x-project-id"]);
        assert_eq!(
            names(true),
            ["content-type", "x-forwarded-proto", "x-project-id"]
        );
    }

    #[test]
    fn swr_answers_lose_hop_by_hop_headers_and_a_length_beside_chunked() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("proxy-foo", "1"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("content-type", "application/json"),
        ] {
            headers.append(name, value.parse().unwrap());
        }
        response_headers_for_client(&mut headers);
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }
}
