//! `swr-gate check`: load everything `serve` would and report every problem at once.

use std::path::Path;

use crate::config::Config;
use crate::snapshot::Snapshot;

/// Returns the problems found; empty means the config would start.
pub fn check(config_path: &Path) -> Vec<String> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(problem) => return vec![problem],
    };
    let password = crate::iam::read_password(&config).err();
    let mut problems = match Snapshot::load(config, None) {
        Ok(_) => Vec::new(),
        Err(problems) => problems,
    };
    problems.extend(password);
    problems
}
