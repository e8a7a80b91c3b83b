//! The connection to SWR: a pooled HTTP/1.1 client over rustls, and the header hygiene
//! that decides what SWR sees of the client's request and what the client sees back.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::Config;
use crate::error::{ErrorKind, GateError};

pub type UpstreamBody = BoxBody<Bytes, hyper::Error>;

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
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect())
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

    /// Send one request to SWR at `path_and_query`. Connection failures are 502, no
    /// answer within the timeout is 504; neither ever hangs the client.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
        path_and_query: &str,
    ) -> Result<Response<Incoming>, GateError> {
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
        match tokio::time::timeout(self.timeout, client.request(request)).await {
            Err(_) => Err(GateError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "SWR did not answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            )),
            Ok(Err(error)) => {
                tracing::warn!(error = %error_chain(&error), "upstream request failed");
                let message = if error.is_connect() {
                    "SWR could not be reached"
                } else {
                    "the connection to SWR failed before it answered"
                };
                Err(GateError::new(ErrorKind::UpstreamUnreachable, message))
            }
            Ok(Ok(response)) => Ok(response),
        }
    }
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

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
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
/// write anything into, do not pass.
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
    ) || name.starts_with("x-sdk-")
}

/// What SWR may see of the client's headers: no credential of the client's, no
/// hop-by-hop header, no framing we did not choose. Built by copying what may pass
/// rather than removing what may not, so an unforeseen header costs nothing extra.
pub fn request_headers_for_upstream(client_headers: &HeaderMap) -> HeaderMap {
    let connection_named = named_by_connection(client_headers);
    let mut headers = HeaderMap::with_capacity(client_headers.len());
    for (name, value) in client_headers {
        if !is_hop_by_hop(name) && !is_client_credential(name) && !connection_named.contains(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// SWR's answers to permission calls are a few bytes: those are read whole and sent on
/// with their head in one write, instead of head and body in separate writes and
/// packets. Anything larger, or of unknown length, is streamed as it arrives.
pub async fn relay_body(body: Incoming) -> Result<UpstreamBody, GateError> {
    const WHOLE_UP_TO: u64 = 64 * 1024;
    if body.size_hint().exact().is_none_or(|n| n > WHOLE_UP_TO) {
        return Ok(body.boxed());
    }
    match body.collect().await {
        Ok(collected) => Ok(Full::new(collected.to_bytes())
            .map_err(|never| match never {})
            .boxed()),
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "upstream answer cut off");
            Err(GateError::new(
                ErrorKind::UpstreamUnreachable,
                "the connection to SWR failed while it answered",
            ))
        }
    }
}

/// What the client may see of SWR's answer: everything but hop-by-hop headers.
pub fn response_headers_for_client(headers: &mut HeaderMap) {
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
            ("forwarded", "for=6.6.6.6"),
            ("content-type", "application/json"),
            ("x-project-id", "p1"),
        ] {
            headers.append(name, value.parse().unwrap());
        }
        let forwarded = request_headers_for_upstream(&headers);
        let mut names: Vec<&str> = forwarded.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-project-id"]);
    }
}
