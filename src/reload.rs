//! Hot reload: on SIGHUP, and when the config file or anything in the policy directory
//! changes, everything is loaded and validated anew and swapped in atomically. A broken
//! change keeps the running snapshot and is logged; requests in flight finish on the
//! snapshot they started with.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::pipeline::Gate;
use crate::snapshot::Snapshot;

/// How often files are looked at for changes.
const POLL: Duration = Duration::from_secs(1);

/// Reloads by result, for /metrics.
#[derive(Debug, Default)]
pub struct ReloadCounts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// Load the config at `path` and swap it in, or say why not.
pub fn reload(gate: &Gate, path: &Path) -> Result<(), Vec<String>> {
    let result = Config::load(path).map_err(|e| vec![e]).and_then(|config| {
        let current = gate.snapshot.load_full();
        let next = Snapshot::load(config, Some(&current))?;
        for setting in restart_only_changes(&current.config, &next.config) {
            tracing::warn!(
                setting,
                "changed in the config file, but takes effect only on restart"
            );
        }
        gate.snapshot.store(Arc::new(next));
        Ok(())
    });
    match &result {
        Ok(()) => {
            gate.reloads.ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(config = %path.display(), "configuration reloaded");
        }
        Err(problems) => {
            gate.reloads.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(config = %path.display(), problems = %problems.join("; "), "reload refused; the running configuration stays in force");
        }
    }
    result
}

/// Settings read once at start (listeners, IAM, audit file, brute-force brake).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push("[server] listen");
    }
    if old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
        changed.push("[admin] listen");
    }
    if format!("{:?}", old.iam) != format!("{:?}", new.iam) {
        changed.push("[iam]");
    }
    if format!("{:?}", old.audit) != format!("{:?}", new.audit) {
        changed.push("[audit]");
    }
    if format!("{:?}", old.auth) != format!("{:?}", new.auth) {
        changed.push("[auth]");
    }
    changed
}

/// Reload whenever the config file or a file under the policy directory changes.
pub async fn watch_files(gate: Weak<Gate>, config_path: PathBuf) {
    let mut seen = None;
    loop {
        tokio::time::sleep(POLL).await;
        let Some(gate) = gate.upgrade() else { return };
        let policy_dir = {
            let snapshot = gate.snapshot.load();
            snapshot.config.resolve(&snapshot.config.policy.dir)
        };
        let stamp = stamp(&[config_path.clone(), policy_dir]);
        if seen.is_some() && seen != Some(stamp.clone()) {
            let _ = reload(&gate, &config_path);
        }
        seen = Some(stamp);
    }
}

/// Modification time and size of every file under `roots`, in a stable order.
fn stamp(roots: &[PathBuf]) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
    let mut files = Vec::new();
    let mut pending: Vec<PathBuf> = roots.to_vec();
    while let Some(path) = pending.pop() {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                if let Ok(entries) = std::fs::read_dir(&path) {
                    pending.extend(entries.flatten().map(|e| e.path()));
                }
            }
            Ok(meta) => files.push((path, meta.modified().ok().map(|m| (m, meta.len())))),
            Err(_) => files.push((path, None)),
        }
    }
    files.sort();
    files
}
