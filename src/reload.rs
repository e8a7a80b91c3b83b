//! Hot reload: on SIGHUP, and when the config file or anything in the policy directory
//! changes, everything is loaded and validated anew and swapped in atomically. A broken
//! change keeps the running snapshot and is logged; requests in flight finish on the
//! snapshot they started with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::pipeline::Gate;
use crate::snapshot::Snapshot;

/// How often files are looked at for changes.
const POLL: Duration = Duration::from_secs(1);

/// Reloads the config it was started with; remembers what the files looked like at the
/// last reload so that a SIGHUP and the file watcher never load one change twice.
pub struct Reloader {
    config_path: PathBuf,
    seen: Mutex<Option<Stamp>>,
}

type Stamp = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

impl Reloader {
    pub fn new(config_path: &Path) -> Reloader {
        Reloader {
            config_path: config_path.to_path_buf(),
            seen: Mutex::new(None),
        }
    }

    /// Load the config and swap it in, or say why not (and keep the running one).
    pub fn reload(&self, gate: &Gate) -> Result<(), Vec<String>> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.stamp(gate));
        let path = &self.config_path;
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
        gate.metrics.config_reload(result.is_ok());
        match &result {
            Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
            Err(problems) => tracing::error!(
                config = %path.display(),
                problems = %problems.join("; "),
                "reload refused; the running configuration stays in force"
            ),
        }
        result
    }

    /// Reload whenever the config file or a file under the policy directory changes.
    pub async fn watch_files(self: Arc<Self>, gate: Weak<Gate>) {
        if let Some(gate) = gate.upgrade() {
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.stamp(&gate));
        }
        loop {
            tokio::time::sleep(POLL).await;
            let Some(gate) = gate.upgrade() else { return };
            let now = self.stamp(&gate);
            let changed =
                self.seen.lock().unwrap_or_else(|p| p.into_inner()).as_ref() != Some(&now);
            if changed {
                let _ = self.reload(&gate);
            }
        }
    }

    fn stamp(&self, gate: &Gate) -> Stamp {
        let policy_dir = {
            let snapshot = gate.snapshot.load();
            snapshot.config.resolve(&snapshot.config.policy.dir)
        };
        stamp(&[self.config_path.clone(), policy_dir])
    }
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

/// Modification time and size of every file under `roots`, in a stable order.
fn stamp(roots: &[PathBuf]) -> Stamp {
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
