//! The IAM calls behind `method = "password"` and `"agency"`: `POST {endpoint}/v3/auth/tokens`
//! with the password identity, and for an agency a second call that assumes it with the
//! first token. Neither the password nor anything IAM answers reaches a log or an error
//! message: errors say what went wrong in the gateway's own words.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Token;
use crate::config::{Config, IamMethod};
use crate::upstream::{connector, error_chain};

/// The token answer is a few KiB without the catalog; anything far larger is not one.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// A token living less than this is refused like a failed fetch (and retried with
/// backoff): renewing it in time would mean calling IAM in a loop.
const MIN_LIFETIME: Duration = Duration::from_secs(10);

/// The IAM password, read from the variable `password_env` names or the file
/// `password_file` names. Redacted in `Debug`.
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The password of a `password` or `agency` config, `None` for the other methods or when
/// `password_env` is missing (which `Config::problems` reports).
pub fn read_password(config: &Config) -> Result<Option<Password>, String> {
    if !matches!(config.iam.method, IamMethod::Password | IamMethod::Agency) {
        return Ok(None);
    }
    if let Some(path) = &config.iam.password_file {
        let path = config.resolve(path);
        return match std::fs::read_to_string(&path) {
            Ok(password) if !password.trim().is_empty() => Ok(Some(Password(
                password.trim_end_matches(['\r', '\n']).to_owned(),
            ))),
            Ok(_) => Err(format!("[iam] password_file {} is empty", path.display())),
            Err(error) => Err(format!("[iam] password_file {}: {error}", path.display())),
        };
    }
    let Some(var) = &config.iam.password_env else {
        return Ok(None);
    };
    match std::env::var(var) {
        Ok(password) if !password.is_empty() => Ok(Some(Password(password))),
        _ => Err(format!(
            "[iam] password_env: the environment variable {var} is not set or empty"
        )),
    }
}

/// A request body that holds the password. Redacted in `Debug`.
struct SecretBody(Bytes);

impl std::fmt::Debug for SecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBody(<redacted>)")
    }
}

/// A token as IAM issued it.
pub struct Issued {
    pub token: Token,
    /// When the request that got it was sent: its lifetime is counted from here.
    pub requested: Instant,
    pub lifetime: Duration,
}

pub struct Login {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    endpoint: String,
    password: SecretBody,
    /// The assume-role body, for `method = "agency"`.
    agency: Option<Bytes>,
    timeout: Duration,
}

impl Login {
    pub fn from_config(config: &Config) -> Result<Login, String> {
        let iam = &config.iam;
        let missing = |key: &str| format!("[iam] needs {key} for method password or agency");
        let endpoint = iam.endpoint.as_ref().ok_or_else(|| missing("endpoint"))?;
        let user = iam.user.as_deref().ok_or_else(|| missing("user"))?;
        let domain = iam.domain.as_deref().ok_or_else(|| missing("domain"))?;
        let password =
            read_password(config)?.ok_or_else(|| missing("password_env or password_file"))?;
        let project = match (&iam.project_id, &iam.project) {
            (Some(id), _) => json!({ "id": id }),
            (None, Some(name)) => match &iam.project_domain {
                Some(project_domain) => {
                    json!({ "name": name, "domain": { "name": project_domain } })
                }
                None => json!({ "name": name }),
            },
            (None, None) => return Err(missing("project or project_id")),
        };
        let (password, agency) = match iam.method {
            IamMethod::Agency => {
                let agency_name = iam
                    .agency_name
                    .as_deref()
                    .ok_or_else(|| missing("agency_name"))?;
                let agency_domain = iam
                    .agency_domain
                    .as_deref()
                    .ok_or_else(|| missing("agency_domain"))?;
                // The user's own token only serves to assume the agency, so it is scoped
                // to the user's account, where the configured project may not exist.
                let own = password_body(
                    user,
                    domain,
                    &password,
                    json!({ "domain": { "name": domain } }),
                );
                let assume = json!({ "auth": {
                    "identity": {
                        "methods": ["assume_role"],
                        "assume_role": { "domain_name": agency_domain, "agency_name": agency_name },
                    },
                    "scope": { "project": project },
                }});
                (own, Some(Bytes::from(assume.to_string())))
            }
            _ => (
                password_body(user, domain, &password, json!({ "project": project })),
                None,
            ),
        };
        let authority = endpoint
            .authority()
            .ok_or("[iam] endpoint has no host")?
            .as_str();
        let scheme = endpoint.scheme_str().unwrap_or("https");
        let base_path = endpoint.path().trim_end_matches('/');
        let url = format!("{scheme}://{authority}{base_path}/v3/auth/tokens?nocatalog=true")
            .parse()
            .map_err(|_| "[iam] endpoint does not make a URL".to_owned())?;
        Ok(Login {
            client: Client::builder(TokioExecutor::new()).build(connector(config)?),
            url,
            endpoint: format!("{scheme}://{authority}{base_path}"),
            password,
            agency,
            timeout: config.upstream.timeout,
        })
    }

    /// A new token: the password identity's, or the agency's assumed with it.
    pub async fn issue(&self) -> Result<Issued, String> {
        let own = self.post(self.password.0.clone(), None).await?;
        match &self.agency {
            None => Ok(own),
            Some(assume) => self
                .post(assume.clone(), Some(&own.token))
                .await
                .map_err(|reason| format!("assuming the agency: {reason}")),
        }
    }

    async fn post(&self, body: Bytes, auth: Option<&Token>) -> Result<Issued, String> {
        tokio::time::timeout(self.timeout, self.exchange(body, auth))
            .await
            .map_err(|_| {
                format!(
                    "IAM at {} did not answer within {}",
                    self.endpoint,
                    humantime::format_duration(self.timeout)
                )
            })?
    }

    async fn exchange(&self, body: Bytes, auth: Option<&Token>) -> Result<Issued, String> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.url.clone();
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=utf8"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(token) = auth {
            headers.insert("x-auth-token", token.header_value());
        }
        let requested = Instant::now();
        let response = self.client.request(request).await.map_err(|error| {
            format!(
                "IAM at {} could not be reached: {}",
                self.endpoint,
                error_chain(&error)
            )
        })?;
        let status = response.status();
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(refusal(status));
        }
        let token = response
            .headers()
            .get("x-subject-token")
            .and_then(|value| value.to_str().ok())
            .and_then(Token::parse)
            .ok_or("IAM's answer has no usable X-Subject-Token header")?;
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|_| "IAM's answer could not be read, or is over 1 MiB")?
            .to_bytes();
        let lifetime = lifetime(&body, SystemTime::now())?;
        Ok(Issued {
            token,
            requested,
            lifetime,
        })
    }
}

fn password_body(user: &str, domain: &str, password: &Password, scope: Value) -> SecretBody {
    let body = json!({ "auth": {
        "identity": {
            "methods": ["password"],
            "password": { "user": { "name": user, "password": password.0, "domain": { "name": domain } } },
        },
        "scope": scope,
    }});
    SecretBody(Bytes::from(body.to_string()))
}

/// Why IAM said no, with what to check; its body is never quoted.
fn refusal(status: StatusCode) -> String {
    match status {
        StatusCode::UNAUTHORIZED => {
            "IAM refused the credentials (HTTP 401): check [iam] user, domain, project and the password".into()
        }
        StatusCode::BAD_REQUEST => {
            "IAM refused the request (HTTP 400): check [iam] domain and project (Keystone also wants project_domain)".into()
        }
        status => format!("IAM answered HTTP {}", status.as_u16()),
    }
}

#[derive(Deserialize)]
struct Answer {
    token: Times,
}

#[derive(Deserialize)]
struct Times {
    expires_at: String,
    issued_at: Option<String>,
}

/// How long the token lives: `expires_at - issued_at`, both IAM's own clock, so the
/// gateway's clock being off does not matter; `expires_at - now` when `issued_at` is absent.
/// At least [`MIN_LIFETIME`].
fn lifetime(body: &[u8], now: SystemTime) -> Result<Duration, &'static str> {
    let unreadable = "IAM's answer has no readable token.expires_at";
    let times = serde_json::from_slice::<Answer>(body)
        .map_err(|_| unreadable)?
        .token;
    let expires = humantime::parse_rfc3339(&times.expires_at).map_err(|_| unreadable)?;
    let issued = times
        .issued_at
        .and_then(|t| humantime::parse_rfc3339(&t).ok())
        .unwrap_or(now);
    expires
        .duration_since(issued)
        .ok()
        .filter(|lifetime| *lifetime >= MIN_LIFETIME)
        .ok_or("IAM issued a token that lives under 10 s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_is_counted_on_iams_clock() {
        let body = br#"{"token":{"expires_at":"2020-01-04T09:05:22.701000Z","issued_at":"2020-01-03T09:05:22.701000Z","methods":["password"]}}"#;
        let far_off = SystemTime::UNIX_EPOCH;
        assert_eq!(lifetime(body, far_off), Ok(Duration::from_secs(86400)));
        let body = br#"{"token":{"expires_at":"2026-11-23T19:00:12.000000Z"}}"#;
        let now = humantime::parse_rfc3339("2026-11-23T19:00:02Z").unwrap();
        assert_eq!(lifetime(body, now), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn unreadable_or_dead_tokens_are_refused_without_quoting_the_answer() {
        let now = SystemTime::now();
        for body in [
            &b"<html>secret-looking</html>"[..],
            br#"{"token":{}}"#,
            br#"{"token":{"expires_at":"tomorrow secret-looking"}}"#,
            br#"{"token":{"expires_at":5}}"#,
        ] {
            let error = lifetime(body, now).unwrap_err();
            assert!(!error.contains("secret"), "{error}");
        }
        for expires_at in ["2020-01-01T00:00:09Z", "2019-12-31T23:00:00Z"] {
            let body = format!(
                r#"{{"token":{{"expires_at":"{expires_at}","issued_at":"2020-01-01T00:00:00Z"}}}}"#
            );
            assert_eq!(
                lifetime(body.as_bytes(), now),
                Err("IAM issued a token that lives under 10 s")
            );
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let password = Password("hunter2".into());
        let body = password_body("u", "d", &password, json!({}));
        let shown = format!("{password:?} {body:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(String::from_utf8_lossy(&body.0).contains("hunter2"));
    }
}
