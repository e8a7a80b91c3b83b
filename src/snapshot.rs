//! Everything that reloads, loaded and validated together into one immutable value.
//! Requests take the snapshot current when they start and finish on it, whatever
//! reloads happen meanwhile.

use std::path::Path;

use crate::auth::Clients;
use crate::config::Config;
use crate::route::{Route, RouteFile, RouteTable};
use crate::schema::Schema;
use crate::upstream::Upstream;

pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    /// One compiled schema per route, in route-table order.
    pub schemas: Vec<Schema>,
    pub clients: Clients,
    pub upstream: Upstream,
}

impl Snapshot {
    /// Load everything the config refers to. On failure, every problem found is
    /// returned (not just the first), each naming its file.
    pub fn load(config: Config) -> Result<Snapshot, Vec<String>> {
        let mut problems = config.problems();
        let policy_dir = config.resolve(&config.policy.dir);
        let (routes, schemas) = match load_routes(&policy_dir) {
            Ok(routes) => {
                let schemas = load_schemas(&policy_dir, &routes, &mut problems);
                (routes, schemas)
            }
            Err(error) => {
                problems.push(error);
                (RouteTable::default(), Vec::new())
            }
        };
        let clients = Clients::from_config(&config)
            .map_err(|p| problems.extend(p))
            .ok();
        let upstream = Upstream::from_config(&config)
            .map_err(|p| problems.push(p))
            .ok();
        match (clients, upstream) {
            (Some(clients), Some(upstream)) if problems.is_empty() => Ok(Snapshot {
                config,
                routes,
                schemas,
                clients,
                upstream,
            }),
            _ => Err(problems),
        }
    }
}

fn load_routes(policy_dir: &Path) -> Result<RouteTable, String> {
    let path = policy_dir.join("routes.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: RouteFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut routes = Vec::new();
    let mut problems = Vec::new();
    for (i, spec) in file.route.iter().enumerate() {
        match Route::parse(spec) {
            Ok(route) => routes.push(route),
            Err(error) => problems.push(format!(
                "{}: [[route]] #{} ({}): {error}",
                path.display(),
                i + 1,
                spec.operation
            )),
        }
    }
    for (i, route) in routes.iter().enumerate() {
        if routes[..i].iter().any(|r| r.operation == route.operation) {
            problems.push(format!(
                "{}: operation {} has two routes",
                path.display(),
                route.operation
            ));
        }
    }
    if problems.is_empty() {
        Ok(RouteTable::new(routes))
    } else {
        Err(problems.join("\n"))
    }
}

fn load_schemas(policy_dir: &Path, routes: &RouteTable, problems: &mut Vec<String>) -> Vec<Schema> {
    let mut schemas = Vec::new();
    for route in routes.routes() {
        let path = policy_dir.join(&route.schema);
        let compiled = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: schema of {}: {e}", path.display(), route.operation))
            .and_then(|text| {
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
            })
            .and_then(|value| {
                Schema::compile(&value).map_err(|e| format!("{}: {e}", path.display()))
            });
        match compiled {
            Ok(schema) => schemas.push(schema),
            Err(problem) => problems.push(problem),
        }
    }
    schemas
}
