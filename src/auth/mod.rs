//! Who is calling: the client registry from `[[clients]]` and the credentials each
//! client may present. The result, an [`Identity`], travels with the request to rate
//! limits, policy and audit.

use std::sync::Arc;

use http::HeaderMap;
use serde::Serialize;

use crate::config::Config;
use crate::crypto::{constant_time_eq, parse_hex32, sha256};
use crate::error::{ErrorKind, GateError};

/// How the client proved who it is; `anonymous` when it did not have to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ApiKey,
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

/// Every configured client and how to recognise it.
#[derive(Debug)]
pub struct Clients {
    api_keys: Vec<([u8; 32], Arc<Client>)>,
    anonymous: Option<Arc<Client>>,
}

impl Clients {
    pub fn from_config(config: &Config) -> Result<Clients, Vec<String>> {
        let mut problems = Vec::new();
        let mut api_keys = Vec::new();
        for spec in &config.clients {
            let client = Arc::new(Client {
                id: spec.id.clone(),
                groups: spec.groups.clone(),
            });
            let mut credentials = 0;
            if let Some(hash) = &spec.api_key_sha256 {
                credentials += 1;
                match parse_hex32(hash) {
                    Some(hash) => api_keys.push((hash, client.clone())),
                    None => problems.push(format!(
                        "[[clients]] {:?}: api_key_sha256 must be 64 hex digits (the SHA-256 of the key; see `swr-gate keygen api-key`)",
                        spec.id
                    )),
                }
            }
            if credentials == 0 {
                problems.push(format!(
                    "[[clients]] {:?} has no credential (api_key_sha256)",
                    spec.id
                ));
            }
        }
        for (i, (hash, client)) in api_keys.iter().enumerate() {
            if let Some((_, other)) = api_keys[..i].iter().find(|(h, _)| h == hash) {
                problems.push(format!(
                    "[[clients]] {:?} and {:?} have the same API key",
                    other.id, client.id
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let anonymous = config.auth.allow_anonymous.then(|| {
            Arc::new(Client {
                id: "anonymous".into(),
                groups: Vec::new(),
            })
        });
        Ok(Clients {
            api_keys,
            anonymous,
        })
    }

    /// Recognise the caller from its headers. Several credentials at once are refused
    /// rather than ranked: a request that says two things about who sent it is suspect.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, GateError> {
        let credential = presented_credential(headers)?;
        match credential {
            Some(Credential::ApiKey(key)) => self.by_api_key(key),
            None => match &self.anonymous {
                Some(client) => Ok(Identity {
                    client: client.clone(),
                    method: AuthMethod::Anonymous,
                }),
                None => Err(GateError::new(
                    ErrorKind::NotAuthenticated,
                    "no credential: send an API key (Authorization: Bearer KEY or X-Api-Key) or sign the request with AK/SK",
                )),
            },
        }
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
            .map(|client| Identity {
                client: client.clone(),
                method: AuthMethod::ApiKey,
            })
            .ok_or_else(|| GateError::new(ErrorKind::UnknownCredential, "unknown API key"))
    }
}

enum Credential<'a> {
    ApiKey(&'a [u8]),
}

fn presented_credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, GateError> {
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
        (None, Some(key)) => {
            let key = key.as_bytes();
            if key.is_empty() {
                return Err(malformed("X-Api-Key is empty"));
            }
            Ok(Some(Credential::ApiKey(key)))
        }
        (Some(value), None) => {
            let value = value.as_bytes();
            let Some(space) = value.iter().position(|b| *b == b' ') else {
                return Err(malformed(
                    "Authorization must be \"Bearer KEY\" or an SDK-HMAC-SHA256 signature",
                ));
            };
            let (scheme, rest) = value.split_at(space);
            let token = rest.trim_ascii();
            if scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty() {
                Ok(Some(Credential::ApiKey(token)))
            } else {
                Err(malformed(
                    "Authorization must be \"Bearer KEY\" or an SDK-HMAC-SHA256 signature",
                ))
            }
        }
    }
}
