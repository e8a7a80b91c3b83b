//! The IAM calls behind `method = "password"` and `"agency"`: `POST {endpoint}/v3/auth/tokens`
//! with the password identity, and for an agency a second call that assumes it with the
//! first token. Neither the password nor anything IAM answers reaches a log or an error
//! message: errors say what went wrong in the gateway's own words.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
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
/// A token with less than this left to live is refused like a failed fetch (and retried
/// with backoff): renewing it in time would mean calling IAM in a loop.
const MIN_REMAINING: Duration = Duration::from_secs(10);

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
        return match crate::files::read_to_string(&config.resolve(path)) {
            Ok(password) if !password.trim().is_empty() => Ok(Some(Password(
                password.trim_end_matches(['\r', '\n']).to_owned(),
            ))),
            Ok(_) => Err("[iam] password_file: the file is empty".into()),
            Err(error) => Err(format!(
                "[iam] password_file: {}",
                crate::config::file_problem(&error)
            )),
        };
    }
    let Some(var) = &config.iam.password_env else {
        return Ok(None);
    };
    match std::env::var(var) {
        Ok(password) if !password.is_empty() => Ok(Some(Password(password))),
        _ => Err(format!(
            "[iam] password_env: the environment variable {} is not set or empty",
            crate::config::variable_shown(var)
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
    /// When the request that got it was sent: its remaining life is counted from here.
    pub requested: Instant,
    /// How long it had left to live when IAM answered, on IAM's clock.
    pub remaining: Duration,
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
        let date = date(response.headers());
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
        let remaining = remaining(&body, date, SystemTime::now())?;
        Ok(Issued {
            token,
            requested,
            remaining,
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

/// When IAM answered, by its own clock: the `Date` header (RFC 9110 §6.6.1), which
/// Keystone and Huawei IAM send. `None` when it is missing or unreadable.
fn date(headers: &HeaderMap) -> Option<SystemTime> {
    let value = headers.get(header::DATE)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok()
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

/// How long the token has left to live: `expires_at` less the time IAM answered, by its
/// `Date` header, so that a token IAM hands out already old or expired is seen as such;
/// `expires_at - issued_at` without a usable `Date`. Either way IAM's own clock, so the
/// gateway's clock being off does not matter; `expires_at - now` only when IAM gives
/// neither. `Date` is whole seconds, so the remaining life is never taken to be longer
/// than `expires_at - issued_at`. At least [`MIN_REMAINING`].
fn remaining(
    body: &[u8],
    date: Option<SystemTime>,
    now: SystemTime,
) -> Result<Duration, &'static str> {
    let unreadable = "IAM's answer has no readable token.expires_at";
    let times = serde_json::from_slice::<Answer>(body)
        .map_err(|_| unreadable)?
        .token;
    // Any RFC 3339 time: IAM writes `Z`, a proxy or another Keystone may write an offset.
    let read = crate::policy::parse_rfc3339_instant;
    let expires = read(&times.expires_at).ok_or(unreadable)?;
    let issued = times.issued_at.and_then(|t| read(&t));
    let answered = match (date, issued) {
        (Some(date), Some(issued)) => date.max(issued),
        (Some(at), None) | (None, Some(at)) => at,
        (None, None) => now,
    };
    match expires.duration_since(answered) {
        Err(_) => Err("IAM issued a token that had already expired"),
        Ok(left) if left < MIN_REMAINING => Err("IAM issued a token with under 10 s to live"),
        Ok(left) => Ok(left),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(time: &str) -> SystemTime {
        humantime::parse_rfc3339(time).unwrap()
    }

    #[test]
    fn the_date_header_is_read_or_left_out() {
        let mut headers = HeaderMap::new();
        assert_eq!(date(&headers), None);
        headers.insert(
            header::DATE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(date(&headers), Some(at("1994-11-06T08:49:37Z")));
        for unreadable in ["yesterday", "Mon, 06 Nov 1994 08:49:37 GMT", ""] {
            headers.insert(header::DATE, HeaderValue::from_static(unreadable));
            assert_eq!(date(&headers), None, "{unreadable}");
        }
    }

    #[test]
    fn the_remaining_life_is_counted_on_iams_clock() {
        let body = br#"{"token":{"expires_at":"2020-01-04T09:05:22.701000Z","issued_at":"2020-01-03T09:05:22.701000Z","methods":["password"]}}"#;
        let far_off = SystemTime::UNIX_EPOCH;
        let day = Duration::from_secs(86400);
        // IAM's Date, however far the gateway's clock is from it.
        let date = at("2020-01-03T21:05:22.701Z");
        assert_eq!(remaining(body, Some(date), far_off), Ok(day / 2));
        // Without a Date, from issued_at.
        assert_eq!(remaining(body, None, far_off), Ok(day));
        // Date is whole seconds: a token is never taken to outlive its lifetime.
        let date = at("2020-01-03T09:05:22Z");
        assert_eq!(remaining(body, Some(date), far_off), Ok(day));
        // Neither: from the gateway's clock.
        let body = br#"{"token":{"expires_at":"2026-11-23T19:00:12.000000Z"}}"#;
        let now = at("2026-11-23T19:00:02Z");
        assert_eq!(remaining(body, None, now), Ok(Duration::from_secs(10)));
        // A Date without issued_at.
        let date = at("2026-11-23T18:00:12Z");
        assert_eq!(
            remaining(body, Some(date), now),
            Ok(Duration::from_secs(3600))
        );
    }

    #[test]
    fn a_token_issued_old_is_refused_on_iams_clock() {
        // Issued two hours ago, expired an hour ago: its lifetime alone says one hour.
        let body = br#"{"token":{"expires_at":"2020-01-01T11:00:00Z","issued_at":"2020-01-01T10:00:00Z"}}"#;
        let date = at("2020-01-01T12:00:00Z");
        assert_eq!(
            remaining(body, Some(date), SystemTime::UNIX_EPOCH),
            Err("IAM issued a token that had already expired")
        );
        let date = at("2020-01-01T10:59:51Z");
        assert_eq!(
            remaining(body, Some(date), SystemTime::UNIX_EPOCH),
            Err("IAM issued a token with under 10 s to live")
        );
        let date = at("2020-01-01T10:59:50Z");
        assert_eq!(
            remaining(body, Some(date), SystemTime::UNIX_EPOCH),
            Ok(Duration::from_secs(10))
        );
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
            let error = remaining(body, None, now).unwrap_err();
            assert!(!error.contains("secret"), "{error}");
        }
        let offset = r#"{"token":{"expires_at":"2020-01-01T09:00:00+08:00","issued_at":"2020-01-01T00:00:00Z"}}"#;
        assert_eq!(
            remaining(offset.as_bytes(), None, now),
            Ok(Duration::from_secs(3600))
        );
        for (expires_at, error) in [
            (
                "2020-01-01T00:00:09Z",
                "IAM issued a token with under 10 s to live",
            ),
            (
                "2019-12-31T23:00:00Z",
                "IAM issued a token that had already expired",
            ),
        ] {
            let body = format!(
                r#"{{"token":{{"expires_at":"{expires_at}","issued_at":"2020-01-01T00:00:00Z"}}}}"#
            );
            assert_eq!(remaining(body.as_bytes(), None, now), Err(error));
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
