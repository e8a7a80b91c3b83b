//! An in-memory stand-in for SWR's permission API, for `swr-gate dev` and for users'
//! own CI: it keeps user permissions and account shares per image, answers the guarded
//! operations and their GET/DELETE siblings with SWR's status codes and error bodies,
//! 404 for an unknown image, and 401 unless `X-Auth-Token` is the token it was given.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Images that exist from the start, as `namespace/repository`.
pub const DEMO_IMAGES: [&str; 3] = ["team-a/app", "team-a/group/app", "team-b/tool"];

#[derive(Default)]
struct Image {
    /// user_id → (user_name, auth)
    users: BTreeMap<String, (String, i64)>,
    /// access_domain → sharing object
    shares: BTreeMap<String, Value>,
}

pub struct Emulator {
    token: String,
    images: Mutex<BTreeMap<String, Image>>,
}

impl Emulator {
    pub fn new(token: String, images: &[&str]) -> Arc<Emulator> {
        let images = images
            .iter()
            .map(|name| (name.to_string(), Image::default()))
            .collect();
        Arc::new(Emulator {
            token,
            images: Mutex::new(images),
        })
    }

    /// Serve on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let emulator = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let emulator = emulator.clone();
                    async move { Ok::<_, Infallible>(emulator.answer(request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        if parts.headers.get("x-auth-token").map(|t| t.as_bytes()) != Some(self.token.as_bytes()) {
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
