//! The admin listener (contract §7): liveness, readiness and metrics, kept off the
//! client port so probes and scrapers never need credentials and clients never see them.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::pipeline::Gate;
use crate::server::SimpleLimits;

pub async fn serve(listener: TcpListener, gate: Arc<Gate>) {
    let answer = move |request| {
        let gate = gate.clone();
        async move { answer(&gate, &request) }
    };
    crate::server::serve_simple(listener, answer, Some(SimpleLimits::ADMIN)).await
}

/// Ready when an IAM token is held and the audit trail takes records (the config is
/// loaded whenever the process serves at all).
fn readiness(gate: &Gate) -> Result<(), String> {
    if gate.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err("shutting down".into());
    }
    gate.tokens.is_ready()?;
    if !gate.audit.is_writable() {
        return Err("the audit log cannot be written".into());
    }
    Ok(())
}

const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn answer(gate: &Gate, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut content_type = TEXT;
    let (status, body) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match readiness(gate) {
            Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        "/metrics" => {
            content_type = OPENMETRICS;
            (StatusCode::OK, gate.metrics.render())
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
