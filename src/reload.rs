//! Hot reload: on SIGHUP, and when the config file or anything in the policy directory
//! changes, everything is loaded and validated anew and swapped in atomically. A broken
//! change keeps the running snapshot and is logged; requests in flight finish on the
//! snapshot they started with.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use crate::config::{Config, IamMethod};
use crate::error::out_of_files;
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

type Stamp = Vec<(PathBuf, Option<FileStamp>)>;

/// What tells a file changed: its modification time and length, and which file the path
/// names, since a file put in its place (Kubernetes' swap of a mounted Secret, `cp -p`)
/// can keep both.
#[derive(PartialEq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    file: (u64, u64),
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            file: (meta.dev(), meta.ino()),
        }
    }
}

impl Reloader {
    pub fn new(config_path: &Path) -> Reloader {
        Reloader {
            config_path: config_path.to_path_buf(),
            seen: Mutex::new(None),
        }
    }

    /// Load the config and swap it in, or say why not (and keep the running one).
    pub fn reload(&self, gate: &Gate) -> Result<(), Vec<String>> {
        if let Some(stamp) = self.stamp(gate) {
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(stamp);
        }
        let path = &self.config_path;
        let result = Config::load(path).and_then(|config| {
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

    /// Reload whenever the config file or a file the policy directory's loading reads
    /// changes, once the files have held still for a poll: a file caught mid-write (an
    /// editor truncating it, then writing) is not loaded half-written.
    pub async fn watch_files(self: Arc<Self>, gate: Weak<Gate>) {
        if let Some(gate) = gate.upgrade() {
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = self.stamp(&gate);
        }
        let mut changing = None;
        loop {
            tokio::time::sleep(POLL).await;
            let Some(gate) = gate.upgrade() else { return };
            // Out of file descriptors, the files could not be looked at: no change.
            let Some(now) = self.stamp(&gate) else {
                continue;
            };
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.is_none() {
                // The look at start failed: this is the first, not a change.
                *seen = Some(now);
                continue;
            }
            let unchanged = seen.as_ref() == Some(&now);
            drop(seen);
            if unchanged {
                changing = None;
            } else if changing.as_ref() == Some(&now) {
                changing = None;
                let _ = self.reload(&gate);
            } else {
                changing = Some(now);
            }
        }
    }

    /// The config file, the policy directory's own entries (among them `routes.toml`,
    /// `*.cedar`, `swr.cedarschema`), the schema files its routes name and the files the
    /// config names that a reload reads anew: what loading reads, and no deeper. Never a
    /// walk of the tree, which a symlink loop makes endless.
    fn stamp(&self, gate: &Gate) -> Option<Stamp> {
        let snapshot = gate.snapshot.load();
        let policy_dir = snapshot.config.resolve(&snapshot.config.policy.dir);
        let mut paths = vec![self.config_path.clone(), policy_dir.clone()];
        match std::fs::read_dir(&policy_dir) {
            Ok(entries) => {
                for entry in entries {
                    match entry {
                        Ok(entry) => paths.push(entry.path()),
                        Err(error) if out_of_files(&error) => return None,
                        Err(_) => {}
                    }
                }
            }
            Err(error) if out_of_files(&error) => return None,
            Err(_) => {}
        }
        paths.extend(
            snapshot
                .routes
                .routes()
                .iter()
                .map(|route| policy_dir.join(&route.schema)),
        );
        paths.extend(named_files(&snapshot.config));
        stamp(paths)
    }
}

/// The TLS certificate, key and client CA, SWR's extra CA and the secret keys kept in
/// files: a certificate renewed in place (cert-manager) or a Secret rotated in Kubernetes
/// takes effect without a SIGHUP.
fn named_files(config: &Config) -> Vec<PathBuf> {
    let tls = config.server.tls.iter().flat_map(|tls| {
        [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
            .into_iter()
            .flatten()
    });
    let secrets = config
        .clients
        .iter()
        .filter_map(|client| client.secret_key_file.as_ref());
    tls.chain(config.upstream.ca_file.as_ref())
        .chain(secrets)
        .map(|path| config.resolve(path))
        .collect()
}

/// Settings read once at start (listeners, IAM, audit file, brute-force brake).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push("[server] listen");
    }
    if old.server.max_connections != new.server.max_connections {
        changed.push("[server] max_connections");
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
    // IAM is called with the `[upstream]` timeouts and trust it started with; SWR gets
    // the new ones at once.
    let for_iam = |c: &Config| {
        let u = &c.upstream;
        (u.ca_file.clone(), u.connect_timeout, u.timeout)
    };
    if for_iam(old) != for_iam(new)
        && !matches!(new.iam.method, IamMethod::TokenEnv | IamMethod::TokenFile)
    {
        changed.push("[upstream] ca_file, connect_timeout and timeout, for calls to IAM");
    }
    // `allow_anonymous` is read per request; only the brake's settings are kept.
    let brake = |c: &Config| (c.auth.max_failures, c.auth.failure_window);
    if brake(old) != brake(new) {
        changed.push("[auth] max_failures and failure_window");
    }
    let replay_store = |c: &Config| {
        let auth = &c.auth;
        (
            auth.replay_redis_url.clone(),
            auth.replay_redis_url_env.clone(),
        )
    };
    if replay_store(old) != replay_store(new) {
        changed.push("[auth] replay_redis_url");
    }
    changed
}

/// Modification time and size of each path (through symlinks, as loading reads them:
/// a Kubernetes ConfigMap's `..data` swap shows), in a stable order; `None` for a path
/// that cannot be looked at. `None` when the gateway is out of file descriptors, which
/// says nothing about the files.
fn stamp(mut paths: Vec<PathBuf>) -> Option<Stamp> {
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .map(|path| {
            let seen = match std::fs::metadata(&path) {
                Ok(meta) => Some(FileStamp::of(&meta)),
                Err(error) if out_of_files(&error) => return None,
                Err(_) => None,
            };
            Some((path, seen))
        })
        .collect()
}
