//! The HTTP stack swr-gate is built on, with none of its checks: a reverse proxy that
//! reads the request body whole and forwards it, as swr-gate does, with the same server
//! and pooled client (hyper-util, hyper-rustls) and the same request threads. `bench/load.sh`
//! runs it next to swr-gate, so that a run shows how much of the distance to nginx is the
//! stack and how much is the gateway's own work.
//!
//! Usage: `bare_proxy LISTEN_ADDR UPSTREAM_URL`, e.g. `bare_proxy 127.0.0.1:8081
//! http://127.0.0.1:8080`. For benchmarks only: it checks nothing and forwards everything.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{header, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use swr_gate::upstream;
use swr_gate::workers::Workers;
use tokio::net::TcpListener;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type ProxyBody = upstream::UpstreamBody;
type Upstream = Client<HttpsConnector<HttpConnector>, ProxyBody>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream] = args.as_slice() else {
        return Err("usage: bare_proxy LISTEN_ADDR UPSTREAM_URL".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: Uri = upstream.parse()?;
    let authority = upstream
        .authority()
        .ok_or("UPSTREAM_URL has no host")?
        .clone();
    let base = format!("{}://{authority}", upstream.scheme_str().unwrap_or("http"));
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;

    // Request threads as swr-gate runs them, each with its own pool.
    let _workers = Workers::start(|_stop| {
        let listener = TcpListener::from_std(listener.try_clone().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        Ok(serve(listener, client()?, base.clone(), authority.clone()))
    })?;
    loop {
        std::thread::park();
    }
}

/// swr-gate's own connector and pool, with its default 3 s connect timeout.
fn client() -> Result<Upstream, String> {
    let connector = upstream::https_connector(None, Duration::from_secs(3))?;
    Ok(upstream::pool(connector))
}

async fn serve(
    listener: TcpListener,
    client: Upstream,
    base: String,
    authority: Authority,
) -> bool {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, base, authority) = (client.clone(), base.clone(), authority.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                forward(client.clone(), base.clone(), authority.clone(), request)
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: Upstream,
    base: String,
    authority: Authority,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|collected| collected.to_bytes()) else {
        return Ok(answer(400));
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{base}{path}").parse() else {
        return Ok(answer(400));
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    parts.headers.remove(header::CONNECTION);
    if let Ok(host) = authority.as_str().parse() {
        parts.headers.insert(header::HOST, host);
    }
    let body = Full::new(body).map_err(|never| match never {}).boxed();
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => Ok(response.map(|body| body.map_err(Into::into).boxed())),
        Err(_) => Ok(answer(502)),
    }
}

fn answer(status: u16) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed());
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    response
}
