//! Everything that reloads, loaded and validated together into one immutable value.
//! Requests take the snapshot current when they start and finish on it, whatever
//! reloads happen meanwhile.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::auth::Clients;
use crate::config::{ClientAuth, Config, ServerTls};
use crate::policy::{Known, Policies};
use crate::ratelimit::RateLimits;
use crate::route::{parse_sibling_method, Route, RouteFile, RouteTable, ALWAYS_GUARDED};
use crate::schema::Schema;
use crate::upstream::Upstream;

pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    /// One compiled schema per route, in route-table order.
    pub schemas: Vec<Schema>,
    pub policies: Policies,
    pub clients: Clients,
    pub upstream: Upstream,
    /// Present when `[server.tls]` is configured; new connections use the current one,
    /// so a renewed certificate takes effect on reload.
    pub tls: Option<TlsAcceptor>,
    pub rate_limits: RateLimits,
}

impl Snapshot {
    /// Load everything the config refers to. On failure, every problem found is
    /// returned (not just the first), each naming its file. State worth keeping across
    /// a reload (rate-limit buckets) is carried over from `previous`.
    pub fn load(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, Vec<String>> {
        let mut problems = config.problems();
        let rules = Rules::load(&config).map_err(|p| problems.extend(p)).ok();
        let clients = Clients::from_config(&config)
            .map_err(|p| problems.extend(p))
            .ok();
        let upstream = Upstream::from_config(&config)
            .map_err(|p| problems.push(p))
            .ok();
        let tls = match &config.server.tls {
            Some(tls) => tls_acceptor(&config, tls)
                .map_err(|p| problems.push(p))
                .ok()
                .map(Some),
            None => Some(None),
        };
        // Checked also when a policy or schema is broken, against the route table when it
        // loads, so that fixing one file does not bring up problems it hid. Reading the
        // routes again costs only on this failing path.
        let unruled = rules
            .is_none()
            .then(|| load_routes(&config.resolve(&config.policy.dir)).ok())
            .flatten();
        let routes = rules
            .as_ref()
            .map(|rules| &rules.routes)
            .or(unruled.as_ref());
        let operations: Option<Vec<&str>> = routes.map(|routes| {
            routes
                .routes()
                .iter()
                .map(|r| r.operation.as_str())
                .collect()
        });
        let rate_limits = RateLimits::build(
            &config.rate_limits,
            operations.as_deref(),
            previous.map(|p| &p.rate_limits),
        )
        .map_err(|p| problems.extend(p))
        .ok();
        match (rules, clients, upstream, tls, rate_limits) {
            (Some(rules), Some(clients), Some(upstream), Some(tls), Some(rate_limits))
                if problems.is_empty() =>
            {
                Ok(Snapshot {
                    config,
                    routes: rules.routes,
                    schemas: rules.schemas,
                    policies: rules.policies,
                    clients,
                    upstream,
                    tls,
                    rate_limits,
                })
            }
            _ => Err(problems
                .into_iter()
                .map(|problem| config.locate(problem))
                .collect()),
        }
    }
}

/// What decides a request: the routes, their schemas and the policies. Loading it needs
/// no secret, certificate or network, so `eval` and `policy test` load only this.
pub struct Rules {
    pub routes: RouteTable,
    pub schemas: Vec<Schema>,
    pub policies: Policies,
}

impl Rules {
    pub fn load(config: &Config) -> Result<Rules, Vec<String>> {
        let mut problems = Vec::new();
        let policy_dir = config.resolve(&config.policy.dir);
        let routes = load_routes(&policy_dir).unwrap_or_else(|errors| {
            problems.extend(errors);
            RouteTable::default()
        });
        let schemas = load_schemas(&policy_dir, &routes, &mut problems);
        let mut known = Known {
            clients: config.clients.iter().map(|c| c.id.clone()).collect(),
            groups: config
                .clients
                .iter()
                .flat_map(|c| c.groups.iter().cloned())
                .collect(),
            operations: routes
                .routes()
                .iter()
                .map(|r| r.operation.clone())
                .collect(),
        };
        if config.auth.allow_anonymous {
            known.clients.push("anonymous".into());
        }
        match Policies::load(&policy_dir, &known) {
            Ok(policies) if problems.is_empty() => Ok(Rules {
                routes,
                schemas,
                policies,
            }),
            Ok(_) => Err(problems),
            Err(more) => {
                problems.extend(more);
                Err(problems)
            }
        }
    }
}

/// `routes.toml`, each problem on its own with the line of its `[[route]]`.
fn load_routes(policy_dir: &Path) -> Result<RouteTable, Vec<String>> {
    let path = policy_dir.join("routes.toml");
    let text = crate::files::read_to_string(&path)
        .map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let file: RouteFile =
        toml::from_str(&text).map_err(|e| vec![crate::config::parse_error(&path, &text, &e)])?;
    // The line of each `[[route]]` header, as the TOML parser places it (none for routes
    // written as an inline array); the document is parsed again only for a problem.
    let document = std::cell::OnceCell::new();
    let route_at = |i: usize| {
        let line = document
            .get_or_init(|| toml_edit::ImDocument::parse(text.as_str()).ok())
            .as_ref()
            .and_then(|document| document.get("route")?.as_array_of_tables()?.get(i)?.span())
            .map(|span| crate::files::line_at(&text, span.start));
        match line {
            Some(line) => format!("{}:{line}", path.display()),
            None => path.display().to_string(),
        }
    };
    let mut routes = Vec::new();
    let mut problems = Vec::new();
    for (i, spec) in file.route.iter().enumerate() {
        match Route::parse(spec) {
            Ok(route) => routes.push((i, route)),
            Err(error) => problems.push(format!(
                "{}: [[route]] #{} ({}): {error}",
                route_at(i),
                i + 1,
                spec.operation
            )),
        }
    }
    let mut sibling_methods = Vec::new();
    for name in &file.sibling_methods {
        match parse_sibling_method(name) {
            Ok(method) => sibling_methods.push(method),
            Err(error) => problems.push(format!("{}: {error}", path.display())),
        }
    }
    for operation in ALWAYS_GUARDED {
        if !routes.iter().any(|(_, r)| r.operation == operation) {
            problems.push(format!(
                "{}: no route for {operation}, one of the three operations swr-gate always guards (an emptied or half-written file?)",
                path.display()
            ));
        }
    }
    for (at, (i, route)) in routes.iter().enumerate() {
        if routes[..at]
            .iter()
            .any(|(_, r)| r.operation == route.operation)
        {
            problems.push(format!(
                "{}: operation {} has two routes",
                route_at(*i),
                route.operation
            ));
        }
    }
    if problems.is_empty() {
        let routes = routes.into_iter().map(|(_, route)| route).collect();
        Ok(RouteTable::new(routes, sibling_methods))
    } else {
        Err(problems)
    }
}

fn load_schemas(policy_dir: &Path, routes: &RouteTable, problems: &mut Vec<String>) -> Vec<Schema> {
    let mut schemas = Vec::new();
    for route in routes.routes() {
        let path = policy_dir.join(&route.schema);
        let compiled = crate::files::read_to_string(&path)
            .map_err(|e| format!("{}: schema of {}: {e}", path.display(), route.operation))
            .and_then(|text| Schema::load(&text).map_err(|e| format!("{}: {e}", path.display())));
        match compiled {
            Ok(schema) => schemas.push(schema),
            Err(problem) => problems.push(problem),
        }
    }
    schemas
}

fn tls_acceptor(config: &Config, tls: &ServerTls) -> Result<TlsAcceptor, String> {
    let cert_path = config.resolve(&tls.cert);
    let key_path = config.resolve(&tls.key);
    let pem = |setting: &str, path: &Path| {
        crate::files::read(path)
            .map_err(|e| format!("[server.tls] {setting} {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem("cert", &cert_path)?)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("[server.tls] cert {}: {e}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem("key", &key_path)?)
        .map_err(|e| format!("[server.tls] key {}: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_path = config.resolve(ca);
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem("client_ca", &ca_path)?) {
                let cert =
                    cert.map_err(|e| format!("[server.tls] client_ca {}: {e}", ca_path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("[server.tls] client_ca {}: {e}", ca_path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match tls.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("[server.tls] client_ca {}: {e}", ca_path.display()))?,
            )
        }
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("[server.tls]: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
