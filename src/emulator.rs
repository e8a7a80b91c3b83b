//! In-memory stand-ins for SWR's permission API and for IAM, for `swr-gate dev` and for
//! users' own CI. The SWR emulator keeps user permissions and account shares per image,
//! answers the guarded operations and their GET/DELETE siblings with SWR's status codes
//! and error bodies, 404 for an unknown image, and 401 unless `X-Auth-Token` is a token
//! the IAM stand-in issued and that has not expired.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::crypto::{hex, random_bytes};

/// Images that exist from the start, as `namespace/repository`.
pub const DEMO_IMAGES: [&str; 3] = ["team-a/app", "team-a/group/app", "team-b/tool"];

/// Shares that exist from the start, as (`namespace/repository`, account). SWR's
/// update_repo_domains changes an existing share, and create_repo_domains, which makes
/// one, is no guarded operation, so through the gateway there would be none to change.
pub const DEMO_SHARES: [(&str, &str); 1] = [("team-a/group/app", "partner-a")];

/// How long a share made by [`Emulator::with_shares`] lasts.
const SHARE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Default)]
struct Image {
    /// user_id → (user_name, auth)
    users: BTreeMap<String, (String, i64)>,
    /// access_domain → sharing object
    shares: BTreeMap<String, Value>,
}

/// The tokens the IAM stand-in issued, and until when each is good.
#[derive(Default)]
pub struct TokenBook {
    expiry: Mutex<HashMap<String, SystemTime>>,
}

impl TokenBook {
    fn issue(&self, lifetime: Duration) -> (String, SystemTime, SystemTime) {
        let token = format!("dev-{}", hex(&random_bytes::<24>()));
        let issued = SystemTime::now();
        let expires = issued + lifetime;
        let mut expiry = self.expiry.lock().unwrap_or_else(|p| p.into_inner());
        expiry.retain(|_, until| *until > issued);
        expiry.insert(token.clone(), expires);
        (token, issued, expires)
    }

    fn is_valid(&self, token: &[u8]) -> bool {
        let expiry = self.expiry.lock().unwrap_or_else(|p| p.into_inner());
        std::str::from_utf8(token)
            .ok()
            .and_then(|t| expiry.get(t))
            .is_some_and(|until| *until > SystemTime::now())
    }
}

/// IAM's `POST /v3/auth/tokens` for one user and password: project-scoped tokens that
/// expire after `lifetime`, in the `X-Subject-Token` header with `token.expires_at`.
pub struct IamStandIn {
    pub user: String,
    pub domain: String,
    pub password: String,
    pub lifetime: Duration,
    pub tokens: Arc<TokenBook>,
}

impl IamStandIn {
    pub async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let unauthorized = || {
            let body = json!({"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}});
            answer(StatusCode::UNAUTHORIZED, Some(body))
        };
        if request.method() != Method::POST || request.uri().path() != "/v3/auth/tokens" {
            return error(StatusCode::NOT_FOUND, "IAM.0001", "Not found");
        }
        let Ok(body) = Limited::new(request.into_body(), 64 * 1024).collect().await else {
            return unauthorized();
        };
        let document: Value = serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
        let user = &document["auth"]["identity"]["password"]["user"];
        let matches = user["name"] == self.user.as_str()
            && user["password"] == self.password.as_str()
            && user["domain"]["name"] == self.domain.as_str();
        if !matches {
            return unauthorized();
        }
        let (token, issued, expires) = self.tokens.issue(self.lifetime);
        let times = |t: SystemTime| humantime::format_rfc3339_micros(t).to_string();
        let mut response = answer(
            StatusCode::CREATED,
            Some(
                json!({"token": {"methods": ["password"], "issued_at": times(issued), "expires_at": times(expires)}}),
            ),
        );
        if let Ok(value) = http::HeaderValue::from_str(&token) {
            response.headers_mut().insert("x-subject-token", value);
        }
        response
    }
}

pub struct Emulator {
    tokens: Arc<TokenBook>,
    images: Mutex<BTreeMap<String, Image>>,
}

impl Emulator {
    pub fn new(tokens: Arc<TokenBook>, images: &[&str]) -> Emulator {
        let images = images
            .iter()
            .map(|name| (name.to_string(), Image::default()))
            .collect();
        Emulator {
            tokens,
            images: Mutex::new(images),
        }
    }

    /// Share each image with an account for read until 30 days from now, as
    /// create_repo_domains would have; an image not there yet is made.
    pub fn with_shares(mut self, shares: &[(&str, &str)]) -> Emulator {
        let deadline = humantime::format_rfc3339_millis(SystemTime::now() + SHARE_LIFETIME);
        let images = self.images.get_mut().unwrap_or_else(|p| p.into_inner());
        for (image, domain) in shares {
            let share = json!({
                "access_domain": domain,
                "permit": "read",
                "deadline": deadline.to_string(),
                "description": "shared when the emulator started",
            });
            images
                .entry(image.to_string())
                .or_default()
                .shares
                .insert(domain.to_string(), share);
        }
        self
    }

    pub async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let token = parts.headers.get("x-auth-token").map(|t| t.as_bytes());
        if !token.is_some_and(|t| self.tokens.is_valid(t)) {
            return error(
                StatusCode::UNAUTHORIZED,
                "SVCSTG.SWR.4010000",
                "Authenticate Error",
            );
        }
        let body = match body.collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return error(StatusCode::BAD_REQUEST, "SVCSTG.SWR.4000000", "Bad request"),
        };
        let document = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(value) => value,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "SVCSTG.SWR.4000001",
                        "Invalid JSON body",
                    )
                }
            }
        };
        let segments: Vec<&str> = parts
            .uri
            .path()
            .trim_start_matches('/')
            .split('/')
            .collect();
        let mut images = self.images.lock().unwrap_or_else(|p| p.into_inner());
        match segments.as_slice() {
            ["v2", "manage", "namespaces", ns, "repos", repo, "access"] => {
                let Some(image) = images.get_mut(&image_name(ns, repo)) else {
                    return error(
                        StatusCode::NOT_FOUND,
                        "SVCSTG.SWR.4040002",
                        "Repository not found",
                    );
                };
                user_permissions(image, &parts.method, &document, repo)
            }
            ["v2", "manage", "namespaces", ns, "repositories", repo, "access-domains", rest @ ..] =>
            {
                let Some(image) = images.get_mut(&image_name(ns, repo)) else {
                    return error(
                        StatusCode::NOT_FOUND,
                        "SVCSTG.SWR.4040002",
                        "Repository not found",
                    );
                };
                shares(image, &parts.method, rest.first().copied(), document)
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "SVCSTG.SWR.4040000",
                "Resource not found",
            ),
        }
    }
}

fn image_name(namespace: &str, repository: &str) -> String {
    format!("{namespace}/{}", repository.replace('$', "/"))
}

fn user_permissions(
    image: &mut Image,
    method: &Method,
    document: &Value,
    repo: &str,
) -> Response<Full<Bytes>> {
    let grants = || -> Option<Vec<(String, String, i64)>> {
        document
            .as_array()?
            .iter()
            .map(|g| {
                Some((
                    g["user_id"].as_str()?.to_owned(),
                    g["user_name"].as_str()?.to_owned(),
                    g["auth"].as_i64()?,
                ))
            })
            .collect()
    };
    match *method {
        Method::POST => {
            let Some(grants) =
                grants().filter(|g| g.iter().all(|(_, _, auth)| matches!(auth, 1 | 3 | 7)))
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "SVCSTG.SWR.4000002",
                    "Invalid request body",
                );
            };
            for (id, name, auth) in grants {
                image.users.insert(id, (name, auth));
            }
            answer(StatusCode::CREATED, Some(json!({})))
        }
        Method::PATCH => {
            let Some(grants) = grants() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "SVCSTG.SWR.4000002",
                    "Invalid request body",
                );
            };
            if grants
                .iter()
                .any(|(id, _, _)| !image.users.contains_key(id))
            {
                return error(
                    StatusCode::NOT_FOUND,
                    "SVCSTG.SWR.4040003",
                    "Permission not found",
                );
            }
            for (id, name, auth) in grants {
                image.users.insert(id, (name, auth));
            }
            answer(StatusCode::CREATED, None)
        }
        Method::GET => {
            let others: Vec<Value> = image
                .users
                .iter()
                .map(|(id, (name, auth))| json!({"user_id": id, "user_name": name, "auth": auth}))
                .collect();
            answer(
                StatusCode::OK,
                Some(json!({"name": repo.replace('$', "/"), "others_auths": others})),
            )
        }
        Method::DELETE => {
            let ids: HashSet<&str> = document
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            image.users.retain(|id, _| !ids.contains(id.as_str()));
            answer(StatusCode::NO_CONTENT, None)
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "SVCSTG.SWR.4050000",
            "Method not allowed",
        ),
    }
}

fn shares(
    image: &mut Image,
    method: &Method,
    domain: Option<&str>,
    document: Value,
) -> Response<Full<Bytes>> {
    match (method.clone(), domain) {
        (Method::POST, None) => {
            let Some(domain) = document["access_domain"].as_str().map(str::to_owned) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "SVCSTG.SWR.4000002",
                    "access_domain is required",
                );
            };
            image.shares.insert(domain, document);
            answer(StatusCode::CREATED, None)
        }
        (Method::PATCH, Some(domain)) => match image.shares.get_mut(domain) {
            Some(share) => {
                if let (Some(share), Some(update)) = (share.as_object_mut(), document.as_object()) {
                    share.extend(update.clone());
                }
                answer(StatusCode::CREATED, None)
            }
            None => error(
                StatusCode::NOT_FOUND,
                "SVCSTG.SWR.4040004",
                "Access domain not found",
            ),
        },
        (Method::GET, None) => answer(
            StatusCode::OK,
            Some(Value::Array(image.shares.values().cloned().collect())),
        ),
        (Method::GET, Some(domain)) => match image.shares.get(domain) {
            Some(share) => answer(StatusCode::OK, Some(share.clone())),
            None => error(
                StatusCode::NOT_FOUND,
                "SVCSTG.SWR.4040004",
                "Access domain not found",
            ),
        },
        (Method::DELETE, Some(domain)) => match image.shares.remove(domain) {
            Some(_) => answer(StatusCode::NO_CONTENT, None),
            None => error(
                StatusCode::NOT_FOUND,
                "SVCSTG.SWR.4040004",
                "Access domain not found",
            ),
        },
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "SVCSTG.SWR.4050000",
            "Method not allowed",
        ),
    }
}

fn answer(status: StatusCode, body: Option<Value>) -> Response<Full<Bytes>> {
    let json = body.is_some();
    let mut response = Response::new(Full::new(
        body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
    ));
    *response.status_mut() = status;
    if json {
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    answer(
        status,
        Some(json!({"error_code": code, "error_msg": message})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emulator_accepts_only_unexpired_tokens_the_stand_in_issued() {
        let book = TokenBook::default();
        let (fresh, _, _) = book.issue(Duration::from_secs(60));
        let (stale, _, _) = book.issue(Duration::ZERO);
        assert!(book.is_valid(fresh.as_bytes()));
        assert!(!book.is_valid(stale.as_bytes()));
        assert!(!book.is_valid(b"dev-made-up"));
    }
}
