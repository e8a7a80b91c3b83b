//! The audit trail: one JSON line per outcome (contract §5), hash-chained so that an
//! edited, deleted or reordered record is detectable.
//!
//! A record is in the file before the request it is about goes on; syncing the file to
//! disk is left to a thread of its own, so no request thread waits in fsync.
//! [`review`] reads trails back: `audit verify` and `audit query`.

pub mod review;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::auth::AuthMethod;
use crate::config::{Config, Fsync};
use crate::crypto::{constant_time_eq, hex, hmac_sha256, sha256};

/// The `prev` of the first record of a new trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Under `fsync = "batch"`, the least time between two syncs: a record is on disk
/// within about this long plus one sync.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// How often the writer looks whether its file was moved away without a SIGHUP.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Decided,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub user_id: String,
    pub user_name: String,
    pub auth: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sharing {
    pub permit: String,
    pub deadline: String,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// The `@id` of the policy this reason is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// One audit record. It has no field for headers or bodies, so a secret has nowhere to go.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub ts: String,
    pub request_id: String,
    pub stage: Stage,
    pub client: Option<String>,
    pub auth_method: Option<AuthMethod>,
    pub client_ip: String,
    pub method: String,
    pub path: String,
    pub operation: Option<String>,
    pub namespace: Option<String>,
    pub repository: Option<String>,
    pub access_domain: Option<String>,
    pub grants: Option<Vec<Grant>>,
    pub sharing: Option<Sharing>,
    pub decision: Decision,
    pub denied_by: Option<&'static str>,
    pub reasons: Vec<Reason>,
    pub policies: Vec<String>,
    pub dry_run: bool,
    pub status: Option<u16>,
    pub upstream_status: Option<u16>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
}

/// Hashes records into the chain: SHA-256, or HMAC-SHA-256 when a key is configured so
/// that someone who can edit the file cannot also recompute the chain.
#[derive(Clone)]
pub struct Chain {
    key: Option<Vec<u8>>,
}

impl Chain {
    pub fn new(key: Option<Vec<u8>>) -> Chain {
        Chain { key }
    }

    fn digest(&self, bytes: &[u8]) -> String {
        match &self.key {
            Some(key) => hex(&hmac_sha256(key, bytes)),
            None => hex(&sha256(bytes)),
        }
    }

    /// The line (without newline) for a record that follows `prev`, and its hash. The
    /// line is the record's fields, then `prev`, then `hash` over everything before it.
    pub fn seal(&self, record: &Record, prev: &str) -> (Vec<u8>, String) {
        let mut line = Vec::with_capacity(1024);
        // A record is strings, numbers and lists of them: serialising it cannot fail.
        let _ = serde_json::to_writer(&mut line, record);
        line.pop();
        line.extend_from_slice(b",\"prev\":");
        let _ = serde_json::to_writer(&mut line, prev);
        line.push(b'}');
        let hash = self.digest(&line);
        line.pop();
        line.extend_from_slice(b",\"hash\":\"");
        line.extend_from_slice(hash.as_bytes());
        line.extend_from_slice(b"\"}");
        (line, hash)
    }

    /// Check one written line: its `prev` and `hash` when the hash matches, else why not.
    pub fn open(&self, line: &[u8]) -> Result<(String, String), &'static str> {
        const MARK: &[u8] = b",\"hash\":\"";
        const TAIL: usize = MARK.len() + 64 + 2;
        let incomplete = "not a complete record (truncated, or edited)";
        if line.len() < TAIL + 2 || !line.ends_with(b"\"}") {
            return Err(incomplete);
        }
        let (body, tail) = line.split_at(line.len() - TAIL);
        if &tail[..MARK.len()] != MARK {
            return Err(incomplete);
        }
        let hash =
            std::str::from_utf8(&tail[MARK.len()..MARK.len() + 64]).map_err(|_| incomplete)?;
        let mut hashed = body.to_vec();
        hashed.push(b'}');
        if !constant_time_eq(self.digest(&hashed).as_bytes(), hash.as_bytes()) {
            return Err("its hash does not match its content (edited, or another hmac key)");
        }
        let value: serde_json::Value = serde_json::from_slice(line).map_err(|_| incomplete)?;
        let prev = value
            .get("prev")
            .and_then(|p| p.as_str())
            .ok_or(incomplete)?;
        Ok((prev.to_owned(), hash.to_owned()))
    }
}

/// The handle requests use to write records.
///
/// A record is appended on the requesting thread, under a lock that keeps the chain in
/// order: a guarded request has to wait for its record to be in the file anyway (contract
/// §3, `fsync`), and handing the write to another thread cost two thread wake-ups per
/// record for a write(2) into the page cache that takes microseconds. What can take
/// milliseconds, the fsync, stays on its own thread.
#[derive(Clone)]
pub struct AuditLog {
    writer: Arc<Mutex<Writer>>,
    syncer: Option<Arc<Syncer>>,
    health: Arc<Health>,
}

/// What the writer tells the rest of the gateway: /readyz and /metrics read it.
#[derive(Debug)]
pub struct Health {
    /// Whether the last write (or sync) succeeded.
    pub writable: AtomicBool,
    /// Records that could not be written since start.
    pub failures: AtomicU64,
}

impl AuditLog {
    /// Open the trail named by `[audit]` and, when it is a file to be synced, start the
    /// thread that syncs it. The chain goes on from the last record already in the file.
    pub fn start(config: &Config) -> Result<AuditLog, String> {
        let path = config.resolve(&config.audit.path);
        let key = match &config.audit.hmac_key_env {
            Some(var) => Some(hmac_key(var)?),
            None => None,
        };
        let chain = Chain::new(key);
        let mut sink = Sink::open(&path)?;
        let prev = sink.last_hash(&chain)?;
        let health = Arc::new(Health {
            writable: AtomicBool::new(true),
            failures: AtomicU64::new(0),
        });
        let is_file = matches!(sink, Sink::File { .. });
        let writer = Arc::new(Mutex::new(Writer {
            sink,
            chain,
            prev,
            appended: 0,
            last_rotation_check: Instant::now(),
        }));
        let syncer = match (config.audit.fsync, is_file) {
            (Fsync::Batch, true) => Some(Syncer::start(&writer, &health, BATCH_WINDOW)?),
            (Fsync::Always, true) => Some(Syncer::start(&writer, &health, Duration::ZERO)?),
            _ => None,
        };
        Ok(AuditLog {
            writer,
            syncer,
            health,
        })
    }

    /// Write one record; returns once it is in the file (and on disk with `fsync = "always"`).
    pub async fn write(&self, record: &Record) -> io::Result<()> {
        let number = self.append(record)?;
        match &self.syncer {
            Some(syncer) if syncer.window.is_zero() => syncer.on_disk(number).await,
            _ => Ok(()),
        }
    }

    /// Write one record without waiting for the disk, whatever `fsync` says: for records
    /// nothing waits on (the `completed` one, once the answer is known).
    pub fn submit(&self, record: &Record) -> io::Result<()> {
        self.append(record).map(|_| ())
    }

    fn append(&self, record: &Record) -> io::Result<u64> {
        let appended = self.lock().append(record);
        self.health
            .writable
            .store(appended.is_ok(), Ordering::Relaxed);
        match appended {
            Ok(number) => {
                if let Some(syncer) = &self.syncer {
                    syncer.ask(number);
                }
                Ok(number)
            }
            Err(error) => {
                self.health.failures.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic mid-append cannot leave half a record behind (appends are cut back),
        // so the state behind a poisoned lock is still sound.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Whether the last record could be written.
    pub fn is_writable(&self) -> bool {
        self.health.writable.load(Ordering::Relaxed)
    }

    /// Everything written so far, synced to disk (shutdown).
    pub async fn flush(&self) -> io::Result<()> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sink
                .sync()
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Reopen the file at the configured path (after rotation); the chain goes on.
    pub fn reopen(&self) -> io::Result<()> {
        self.lock().sink.reopen()
    }
}

/// The key of the hash chain, from the environment variable `[audit] hmac_key_env` names.
pub fn hmac_key(var: &str) -> Result<Vec<u8>, String> {
    match std::env::var(var) {
        Ok(key) if !key.is_empty() => Ok(key.into_bytes()),
        _ => Err(format!(
            "[audit] hmac_key_env: the environment variable {var} is not set"
        )),
    }
}

/// Remove the `written` bytes a failed append left at the end of the file (we are its
/// only writer, and it is opened for appending).
fn cut_back(file: &File, written: usize, error: io::Error) -> io::Error {
    if written > 0 {
        if let Ok(metadata) = file.metadata() {
            let _ = file.set_len(metadata.len().saturating_sub(written as u64));
        }
    }
    error
}

enum Sink {
    Stdout,
    /// Shared with the syncer thread.
    File {
        file: Arc<File>,
        path: PathBuf,
    },
}

impl Sink {
    fn open(path: &Path) -> Result<Sink, String> {
        if path.as_os_str() == "-" {
            return Ok(Sink::Stdout);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| format!("[audit] path {}: {e}", path.display()))?;
        Ok(Sink::File {
            file: Arc::new(file),
            path: path.to_path_buf(),
        })
    }

    /// The hash of the last record in the file, so a restart continues the chain. A torn
    /// last line (a crash mid-write) is closed with a newline and left for `audit verify`
    /// to report; a complete last line that does not verify stops the start.
    fn last_hash(&mut self, chain: &Chain) -> Result<String, String> {
        let Sink::File { file, path } = self else {
            return Ok(GENESIS.into());
        };
        let mut file: &File = file;
        let metadata = file.metadata().map_err(|e| e.to_string())?;
        if !metadata.is_file() {
            return Ok(GENESIS.into());
        }
        let start = metadata.len().saturating_sub(64 * 1024);
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_to_end(&mut tail))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !tail.is_empty() && !tail.ends_with(b"\n") {
            tracing::warn!(path = %path.display(), "the audit file ends in a torn record; it is closed and the chain continues from the last complete one");
            file.write_all(b"\n")
                .map_err(|e| format!("{}: {e}", path.display()))?;
            tail.truncate(tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1));
        }
        let Some(last) = tail.split(|b| *b == b'\n').rev().find(|l| !l.is_empty()) else {
            return Ok(GENESIS.into());
        };
        match chain.open(last) {
            Ok((_, hash)) => Ok(hash),
            Err(_) => Err(format!(
                "{}: the last record does not verify (edited, or another hmac key); run `swr-gate audit verify` and move the file aside",
                path.display()
            )),
        }
    }

    /// Append `bytes` whole or not at all: a failed write is cut back off, so a full disk
    /// never leaves half a record in the chain.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File { file, .. } => {
                let mut file: &File = file;
                let mut written = 0;
                while written < bytes.len() {
                    match file.write(&bytes[written..]) {
                        Ok(0) => {
                            return Err(cut_back(file, written, io::ErrorKind::WriteZero.into()))
                        }
                        Ok(n) => written += n,
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => return Err(cut_back(file, written, error)),
                    }
                }
                Ok(())
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout => Ok(()),
            Sink::File { file, .. } => file.sync_data(),
        }
    }

    /// Has the path been moved away or replaced since we opened it (logrotate without
    /// SIGHUP)?
    fn rotated(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Sink::File { file, path } = self else {
            return false;
        };
        match (std::fs::metadata(path), file.metadata()) {
            (Ok(at_path), Ok(open)) => at_path.ino() != open.ino() || at_path.dev() != open.dev(),
            (Err(_), _) => true,
            (_, Err(_)) => false,
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        if let Sink::File { file, path } = self {
            let _ = file.sync_data();
            let path = path.clone();
            *self = Sink::open(&path).map_err(io::Error::other)?;
        }
        Ok(())
    }
}

/// The trail's end: where the next record goes and what it chains to.
struct Writer {
    sink: Sink,
    chain: Chain,
    /// Hash of the last record written: the next record's `prev`.
    prev: String,
    /// Records appended since start: the syncer is told how far it has to sync.
    appended: u64,
    last_rotation_check: Instant,
}

impl Writer {
    /// Append one record; its number, for waiting until it is on disk.
    fn append(&mut self, record: &Record) -> io::Result<u64> {
        if self.last_rotation_check.elapsed() >= ROTATION_CHECK {
            self.last_rotation_check = Instant::now();
            if self.sink.rotated() {
                tracing::info!("the audit file was moved away; opening a new one");
                if let Err(error) = self.sink.reopen() {
                    tracing::error!(%error, "audit file could not be reopened");
                }
            }
        }
        let (mut line, hash) = self.chain.seal(record, &self.prev);
        line.push(b'\n');
        self.sink.append(&line)?;
        self.prev = hash;
        self.appended += 1;
        Ok(self.appended)
    }
}

/// A thread that fsyncs the audit file, so that no request thread ever waits in fsync.
/// Records appended while a sync runs are covered by the next one: requests coalesce
/// into group commits.
struct Syncer {
    /// The highest record number appended, to be covered by the next sync.
    wanted: AtomicU64,
    /// How far the disk has the file; requests under `fsync = "always"` wait on it.
    synced: watch::Sender<Synced>,
    /// The least time between two syncs: zero under `fsync = "always"`.
    window: Duration,
    thread: OnceLock<std::thread::Thread>,
}

#[derive(Debug, Default)]
struct Synced {
    /// Every record up to this number has been through a sync.
    through: u64,
    /// The last record number a failed sync was meant to cover, and why it failed.
    failed: Option<(u64, String)>,
}

impl Syncer {
    fn start(
        writer: &Arc<Mutex<Writer>>,
        health: &Arc<Health>,
        window: Duration,
    ) -> Result<Arc<Syncer>, String> {
        let syncer = Arc::new(Syncer {
            wanted: AtomicU64::new(0),
            synced: watch::Sender::new(Synced::default()),
            window,
            thread: OnceLock::new(),
        });
        let (me, writer, health) = (syncer.clone(), writer.clone(), health.clone());
        let thread = std::thread::Builder::new()
            .name("audit-fsync".into())
            .spawn(move || me.run(&writer, &health))
            .map_err(|e| format!("cannot start the audit fsync thread: {e}"))?;
        let _ = syncer.thread.set(thread.thread().clone());
        Ok(syncer)
    }

    /// Record `number` is in the file: have it synced. No system call unless the
    /// syncer is asleep.
    fn ask(&self, number: u64) {
        self.wanted.fetch_max(number, Ordering::AcqRel);
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    async fn on_disk(&self, number: u64) -> io::Result<()> {
        let mut synced = self.synced.subscribe();
        let synced = synced
            .wait_for(|synced| synced.through >= number)
            .await
            .map_err(|_| io::Error::other("the audit fsync thread has stopped"))?;
        match &synced.failed {
            Some((through, error)) if number <= *through => Err(io::Error::other(error.clone())),
            _ => Ok(()),
        }
    }

    fn run(&self, writer: &Mutex<Writer>, health: &Health) {
        loop {
            let wanted = self.wanted.load(Ordering::Acquire);
            if wanted <= self.synced.borrow().through {
                std::thread::park();
                continue;
            }
            // Only the handle is taken under the lock: appends go on during the sync.
            let file = match &writer.lock().unwrap_or_else(PoisonError::into_inner).sink {
                Sink::File { file, .. } => file.clone(),
                Sink::Stdout => return,
            };
            let result = file.sync_data();
            if let Err(error) = &result {
                tracing::error!(%error, "audit fsync failed");
                health.writable.store(false, Ordering::Relaxed);
            }
            self.synced.send_modify(|synced| {
                synced.through = wanted;
                if let Err(error) = result {
                    synced.failed = Some((wanted, error.to_string()));
                }
            });
            // At most one sync per window: under load each covers many records instead
            // of the disk being kept busy with one sync after another.
            if !self.window.is_zero() {
                std::thread::sleep(self.window);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            ts: "2026-11-23T18:00:00.000Z".into(),
            request_id: "r1".into(),
            stage: Stage::Completed,
            client: Some("ci".into()),
            auth_method: Some(AuthMethod::ApiKey),
            client_ip: "127.0.0.1".into(),
            method: "POST".into(),
            path: "/v2".into(),
            operation: None,
            namespace: None,
            repository: None,
            access_domain: None,
            grants: None,
            sharing: None,
            decision: Decision::Deny,
            denied_by: Some("route"),
            reasons: vec![],
            policies: vec![],
            dry_run: false,
            status: Some(404),
            upstream_status: None,
            duration_ms: 0.1,
            upstream_ms: None,
        }
    }

    #[test]
    fn a_sealed_line_opens_and_an_edited_one_does_not() {
        for chain in [Chain::new(None), Chain::new(Some(b"k".to_vec()))] {
            let (line, hash) = chain.seal(&record(), GENESIS);
            assert_eq!(chain.open(&line), Ok((GENESIS.to_owned(), hash)));
            let edited = String::from_utf8(line).unwrap().replace("\"ci\"", "\"cj\"");
            assert!(chain.open(edited.as_bytes()).is_err());
        }
        let (line, _) = Chain::new(Some(b"k".to_vec())).seal(&record(), GENESIS);
        assert!(Chain::new(None).open(&line).is_err());
        let fields: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let names: Vec<&str> = fields
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(names[..2], ["ts", "request_id"]);
        assert_eq!(names[names.len() - 2..], ["prev", "hash"]);
        assert_eq!(fields["prev"], GENESIS);
    }
}
