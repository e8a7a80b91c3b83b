//! Who is calling: the client registry from `[[clients]]` and the credentials each
//! client may present (API key, AK/SK signature, TLS client certificate). The result, an
//! [`Identity`], travels with the request to rate limits, policy and audit.

mod certificate;
mod failures;
mod replay;
pub mod sdk_sign;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method};
use serde::Serialize;

pub use certificate::{PeerCertificate, San};
pub use failures::{address_block, FailureLimiter};
pub use replay::{ReplayGuard, SignatureUse, Spent};

use crate::config::Config;
use crate::crypto::{constant_time_eq, parse_hex32, sha256};
use crate::error::{ErrorKind, GateError};
use sdk_sign::{RequestParts, SdkAuthorization, SignError};

/// How far `X-Sdk-Date` may be from our clock, either way.
pub const SIGNATURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// How the client proved who it is; `anonymous` when it did not have to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ApiKey,
    Aksk,
    Mtls,
    Anonymous,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub groups: Vec<String>,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Identity {
    pub client: Arc<Client>,
    pub method: AuthMethod,
}

/// Who is calling; for an AK/SK signature, also the signature, still to be spent with
/// the [`ReplayGuard`] (which may have to ask a Redis, so it is not done here).
#[derive(Debug)]
#[must_use = "an AK/SK signature must be spent with the ReplayGuard before the identity is used"]
pub struct Authenticated {
    pub identity: Identity,
    pub signature: Option<SignatureUse>,
}

/// A secret key. `Debug` is redacted so it cannot reach a log by accident.
struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What authentication reads of a request.
pub struct Presented<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Host header, or the HTTP/2 `:authority`.
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub certificate: Option<&'a PeerCertificate>,
    /// The whole body, present whenever [`signs_body`] said so.
    pub body: Option<&'a [u8]>,
    /// Guarded operations must have their body covered by the signature.
    pub guarded: bool,
}

/// Does this request carry an AK/SK signature, whose verification needs the body?
pub fn signs_body(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(sdk_sign::ALGORITHM.as_bytes()))
}

/// Every configured client and how to recognise it.
#[derive(Debug)]
pub struct Clients {
    api_keys: Vec<([u8; 32], Arc<Client>)>,
    access_keys: HashMap<String, (Secret, Arc<Client>)>,
    tls_subjects: HashMap<String, Arc<Client>>,
    tls_sans: HashMap<San, Arc<Client>>,
    anonymous: Option<Arc<Client>>,
    known_ids: Vec<Arc<Client>>,
}

impl Clients {
    pub fn from_config(config: &Config) -> Result<Clients, Vec<String>> {
        let mut problems = Vec::new();
        // Each secret key by its digest, with the client holding it: two clients with one
        // SK could each sign as the other.
        let mut secret_holders: HashMap<[u8; 32], Arc<Client>> = HashMap::new();
        let mut clients = Clients {
            api_keys: Vec::new(),
            access_keys: HashMap::new(),
            tls_subjects: HashMap::new(),
            tls_sans: HashMap::new(),
            anonymous: None,
            known_ids: Vec::new(),
        };
        for spec in &config.clients {
            let client = Arc::new(Client {
                id: spec.id.clone(),
                groups: spec.groups.clone(),
            });
            clients.known_ids.push(client.clone());
            let name = &spec.id;
            let mut credentials = 0;
            if let Some(hash) = &spec.api_key_sha256 {
                credentials += 1;
                match parse_hex32(hash) {
                    Some(hash) if clients.api_keys.iter().any(|(h, _)| *h == hash) => {
                        problems.push(format!("[[clients]] {name:?}: another client has the same API key"))
                    }
                    Some(hash) => clients.api_keys.push((hash, client.clone())),
                    None => problems.push(format!(
                        "[[clients]] {name:?}: api_key_sha256 must be 64 hex digits (the SHA-256 of the key; see `swr-gate keygen api-key`)"
                    )),
                }
            }
            if let Some(access_key) = &spec.access_key {
                credentials += 1;
                match load_secret(config, spec) {
                    Ok(secret) => {
                        if let Some(other) =
                            secret_holders.insert(sha256(&secret.0), client.clone())
                        {
                            problems.push(format!(
                                "[[clients]] {name:?}: client {:?} has the same secret key; each needs its own, or either could sign as the other",
                                other.id
                            ));
                        }
                        if clients
                            .access_keys
                            .insert(access_key.clone(), (secret, client.clone()))
                            .is_some()
                        {
                            problems.push(format!("[[clients]] {name:?}: another client has the access key {access_key:?}"));
                        }
                    }
                    Err(problem) => problems.push(format!("[[clients]] {name:?}: {problem}")),
                }
            } else if spec.secret_key_env.is_some() || spec.secret_key_file.is_some() {
                problems.push(format!(
                    "[[clients]] {name:?}: a secret key without access_key"
                ));
            }
            if let Some(subject) = &spec.tls_subject {
                credentials += 1;
                match certificate::configured_subject(subject) {
                    Ok(canonical) => {
                        if clients
                            .tls_subjects
                            .insert(canonical, client.clone())
                            .is_some()
                        {
                            problems.push(format!(
                                "[[clients]] {name:?}: another client has tls_subject {subject:?}"
                            ));
                        }
                    }
                    Err(problem) => problems.push(format!("[[clients]] {name:?}: {problem}")),
                }
            }
            if let Some(san) = &spec.tls_san {
                credentials += 1;
                if clients
                    .tls_sans
                    .insert(San::configured(san), client.clone())
                    .is_some()
                {
                    problems.push(format!(
                        "[[clients]] {name:?}: another client has tls_san {san:?}"
                    ));
                }
            }
            if credentials == 0 {
                problems.push(format!(
                    "[[clients]] {name:?} has no credential (api_key_sha256, access_key, tls_subject or tls_san)"
                ));
            }
            if (spec.tls_subject.is_some() || spec.tls_san.is_some())
                && config
                    .server
                    .tls
                    .as_ref()
                    .is_none_or(|tls| tls.client_ca.is_none())
            {
                problems.push(format!(
                    "[[clients]] {name:?} is identified by client certificate, but [server.tls] has no client_ca"
                ));
            }
        }
        if config.auth.allow_anonymous {
            clients.anonymous = Some(Arc::new(Client {
                id: "anonymous".into(),
                groups: Vec::new(),
            }));
        }
        if problems.is_empty() {
            Ok(clients)
        } else {
            Err(problems)
        }
    }

    /// Recognise the caller. Several credentials at once are refused rather than ranked:
    /// a request that says two things about who sent it is suspect.
    pub fn authenticate(
        &self,
        request: &Presented,
        now: SystemTime,
    ) -> Result<Authenticated, GateError> {
        let credential = header_credential(request.headers)?;
        let identity = match (credential, request.certificate) {
            (Some(_), Some(_)) => Err(GateError::new(
                ErrorKind::AmbiguousCredentials,
                "the connection has a client certificate and the request another credential; send exactly one",
            )),
            (None, Some(certificate)) => self.by_certificate(certificate),
            (Some(HeaderCredential::ApiKey(key)), None) => self.by_api_key(key),
            (Some(HeaderCredential::Signature(signature)), None) => {
                return self.by_signature(request, &signature, now)
            }
            (None, None) => match &self.anonymous {
                Some(client) => Ok(identity(client, AuthMethod::Anonymous)),
                None => Err(GateError::new(
                    ErrorKind::NotAuthenticated,
                    "no credential: send an API key (Authorization: Bearer KEY or X-Api-Key), sign the request with AK/SK, or present a client certificate",
                )),
            },
        }?;
        Ok(Authenticated {
            identity,
            signature: None,
        })
    }

    /// Every client id, for checks that want to know whether an id exists.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.known_ids.iter().map(|c| c.id.as_str())
    }

    /// Compare against every stored hash, in constant time, without stopping early.
    fn by_api_key(&self, key: &[u8]) -> Result<Identity, GateError> {
        let presented = sha256(key);
        let mut found = None;
        for (hash, client) in &self.api_keys {
            if constant_time_eq(hash, &presented) {
                found = Some(client);
            }
        }
        found
            .map(|client| identity(client, AuthMethod::ApiKey))
            .ok_or_else(|| GateError::new(ErrorKind::UnknownCredential, "unknown API key"))
    }

    /// The one client the certificate's subject and names point to. A certificate whose
    /// names point to two clients is refused, not settled by an order of precedence.
    fn by_certificate(&self, certificate: &PeerCertificate) -> Result<Identity, GateError> {
        let mut matches = certificate
            .subject
            .as_ref()
            .and_then(|subject| self.tls_subjects.get(subject))
            .into_iter()
            .chain(
                certificate
                    .sans
                    .iter()
                    .filter_map(|san| self.tls_sans.get(san)),
            );
        let client = matches.next();
        if let Some(one) = client {
            if let Some(other) = matches.find(|other| other.id != one.id) {
                // Which clients is for operators; an unauthenticated caller learns no id.
                crate::throttled!(warn!(
                    first = %one.id,
                    second = %other.id,
                    "a client certificate's names match more than one client; refused"
                ));
                return Err(GateError::new(
                    ErrorKind::AmbiguousCredentials,
                    "the client certificate's names match more than one client; it must name one",
                ));
            }
        }
        client
            .map(|client| identity(client, AuthMethod::Mtls))
            .ok_or_else(|| {
                GateError::new(
                    ErrorKind::UnknownCredential,
                    format!(
                        "the client certificate ({}) matches no configured client",
                        certificate
                            .subject
                            .as_deref()
                            .unwrap_or("a subject with a non-string attribute")
                    ),
                )
            })
    }

    fn by_signature(
        &self,
        request: &Presented,
        signature: &SdkAuthorization,
        now: SystemTime,
    ) -> Result<Authenticated, GateError> {
        let Some((secret, client)) = self.access_keys.get(&signature.access_key) else {
            return Err(GateError::new(
                ErrorKind::UnknownCredential,
                "unknown access key",
            ));
        };
        let body = request.body.unwrap_or_default();
        let declared = request
            .headers
            .get("x-sdk-content-sha256")
            .map(|v| v.to_str().unwrap_or_default());
        let payload_hash = sdk_sign::payload_hash(body, declared);
        if payload_hash == "UNSIGNED-PAYLOAD" && request.guarded {
            return Err(malformed(
                "UNSIGNED-PAYLOAD is not accepted for guarded operations: the body must be signed",
            ));
        }
        if payload_hash != "UNSIGNED-PAYLOAD" && payload_hash != sdk_sign::sha256_hex(body) {
            return Err(GateError::new(
                ErrorKind::BadSignature,
                "X-Sdk-Content-Sha256 does not match the body",
            ));
        }
        let parts = RequestParts {
            method: request.method.as_str(),
            raw_path: request.path,
            raw_query: request.query,
            host: request.host,
            headers: request.headers,
            payload_hash: &payload_hash,
        };
        let date = sdk_sign::verify(&secret.0, &parts, signature).map_err(|error| match error {
            SignError::BadSignature => GateError::new(
                ErrorKind::BadSignature,
                "the AK/SK signature does not match the request",
            ),
            SignError::Malformed(why) => malformed(why),
        })?;
        let signed_at = sdk_sign::parse_sdk_date(&date)
            .map_err(|_| malformed("x-sdk-date is not YYYYMMDDTHHMMSSZ"))?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now.abs_diff(signed_at) > SIGNATURE_WINDOW.as_secs() {
            return Err(GateError::new(
                ErrorKind::StaleDate,
                format!(
                    "X-Sdk-Date {date} is more than {} minutes from the gateway's clock",
                    SIGNATURE_WINDOW.as_secs() / 60
                ),
            ));
        }
        Ok(Authenticated {
            identity: identity(client, AuthMethod::Aksk),
            signature: Some(SignatureUse {
                client: client.id.clone(),
                signing_clients: self.access_keys.len(),
                signature: signature.signature,
                expires_at: signed_at + SIGNATURE_WINDOW.as_secs(),
                now,
            }),
        })
    }
}

fn identity(client: &Arc<Client>, method: AuthMethod) -> Identity {
    Identity {
        client: client.clone(),
        method,
    }
}

fn malformed(why: &str) -> GateError {
    GateError::new(
        ErrorKind::MalformedAuthorization,
        format!("malformed AK/SK signature: {why}"),
    )
}

fn load_secret(config: &Config, spec: &crate::config::ClientSpec) -> Result<Secret, String> {
    let text = match (&spec.secret_key_env, &spec.secret_key_file) {
        (Some(var), None) => std::env::var(var).map_err(|_| {
            format!(
                "secret_key_env: the environment variable {} is not set",
                crate::config::variable_shown(var)
            )
        })?,
        (None, Some(path)) => crate::files::read_to_string(&config.resolve(path))
            .map_err(|e| format!("secret_key_file: {}", crate::config::file_problem(&e)))?,
        (None, None) => return Err("access_key needs secret_key_env or secret_key_file".into()),
        (Some(_), Some(_)) => return Err("give secret_key_env or secret_key_file, not both".into()),
    };
    let text = text.trim();
    if text.is_empty() {
        return Err("the secret key is empty".into());
    }
    Ok(Secret(text.as_bytes().to_vec()))
}

enum HeaderCredential<'a> {
    ApiKey(&'a [u8]),
    Signature(SdkAuthorization),
}

fn header_credential(headers: &HeaderMap) -> Result<Option<HeaderCredential<'_>>, GateError> {
    let ambiguous = |what: &str| {
        GateError::new(
            ErrorKind::AmbiguousCredentials,
            format!("{what}; send exactly one credential"),
        )
    };
    let authorization: Vec<_> = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .collect();
    let api_key: Vec<_> = headers.get_all("x-api-key").iter().collect();
    if authorization.len() > 1 || api_key.len() > 1 {
        return Err(ambiguous("a credential header appears more than once"));
    }
    let malformed = |what: &str| GateError::new(ErrorKind::MalformedAuthorization, what.to_owned());
    match (authorization.first(), api_key.first()) {
        (Some(_), Some(_)) => Err(ambiguous("both Authorization and X-Api-Key are present")),
        (None, None) => Ok(None),
        (None, Some(key)) => match key.as_bytes() {
            b"" => Err(malformed("X-Api-Key is empty")),
            key => Ok(Some(HeaderCredential::ApiKey(key))),
        },
        (Some(value), None) => {
            let value = value.as_bytes();
            let unknown = || {
                malformed("Authorization must be \"Bearer KEY\" or an SDK-HMAC-SHA256 signature")
            };
            let space = value
                .iter()
                .position(|b| matches!(b, b' ' | b'\t'))
                .ok_or_else(unknown)?;
            let (scheme, rest) = value.split_at(space);
            if scheme == sdk_sign::ALGORITHM.as_bytes() {
                let text = std::str::from_utf8(value).map_err(|_| unknown())?;
                let parsed = sdk_sign::parse_authorization(text).map_err(|error| match error {
                    SignError::Malformed(why) => self::malformed(why),
                    SignError::BadSignature => unknown(),
                })?;
                return Ok(Some(HeaderCredential::Signature(parsed)));
            }
            let token = rest.trim_ascii();
            if scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty() {
                Ok(Some(HeaderCredential::ApiKey(token)))
            } else {
                Err(unknown())
            }
        }
    }
}
