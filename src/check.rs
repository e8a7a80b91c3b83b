//! `swr-gate check`: load everything `serve` would and report every problem at once.

use std::path::Path;

use crate::config::{Config, IamMethod};
use crate::snapshot::Snapshot;

/// What `check` found. Only problems stop the gateway; warnings are things that load
/// but are probably not what was meant (a policy naming a group no client is in).
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn check(config_path: &Path) -> Report {
    let (config, unknown_keys) = match Config::read(config_path) {
        Ok(read) => read,
        Err(problems) => {
            return Report {
                problems,
                warnings: Vec::new(),
            }
        }
    };
    let password = crate::iam::read_password(&config)
        .err()
        .map(|problem| config.locate(problem));
    let audit = crate::audit::check(&config)
        .err()
        .map(|problem| config.locate(problem));
    // Not a problem: `serve` starts without it and says so on /readyz, and `check` may
    // run where the secret is not. But it is rarely what was meant.
    let token = match (&config.iam.method, &config.iam.token_env) {
        (IamMethod::TokenEnv, Some(variable))
            if std::env::var(variable).map_or(true, |v| v.trim().is_empty()) =>
        {
            Some(config.locate(format!("[iam] token_env: the environment variable {} is not set or empty here; serve would start but answer 503 SWR.GATE.5030001 (the variable is read at start)", crate::config::variable_shown(variable))))
        }
        _ => None,
    };
    let mut report = match Snapshot::load(config, None) {
        Ok(snapshot) => Report {
            problems: Vec::new(),
            warnings: snapshot.policies.warnings().to_vec(),
        },
        Err(problems) => Report {
            problems,
            warnings: Vec::new(),
        },
    };
    report.problems.splice(0..0, unknown_keys);
    report.problems.extend(password);
    report.problems.extend(audit);
    report.warnings.extend(token);
    report
}
