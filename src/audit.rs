//! The audit trail: one JSON line per outcome (contract §5), hash-chained so that an
//! edited, deleted or reordered record is detectable.
//!
//! Records are written by a dedicated thread so request handling never touches the disk;
//! the channel to it is bounded, so when it falls behind requests wait instead of records
//! being dropped. [`review`] reads trails back: `audit verify` and `audit query`.

pub mod review;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::auth::AuthMethod;
use crate::config::{Config, Fsync};
use crate::crypto::{constant_time_eq, hex, hmac_sha256, sha256};

/// The `prev` of the first record of a new trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Records waiting for the writer before senders have to wait.
const QUEUE: usize = 4096;

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

/// The record as written: its fields, then `prev`, then `hash` over everything before it.
#[derive(Serialize)]
struct Chained<'a> {
    #[serde(flatten)]
    record: &'a Record,
    prev: &'a str,
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

    /// Serialise a record after `prev` and return the line (without newline) and its hash.
    pub fn seal(&self, record: &Record, prev: &str) -> (Vec<u8>, String) {
        let mut line = serde_json::to_vec(&Chained { record, prev }).unwrap_or_default();
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

enum Job {
    /// A record, and whom to tell once it is in the file (nobody for `submit`).
    Record(Box<Record>, Option<oneshot::Sender<io::Result<()>>>),
    /// Sync everything written so far (shutdown).
    Flush(oneshot::Sender<io::Result<()>>),
    /// Open the path anew (SIGHUP after logrotate moved the file away).
    Reopen(oneshot::Sender<io::Result<()>>),
}

/// The handle requests use to write records.
#[derive(Clone)]
pub struct AuditLog {
    jobs: mpsc::Sender<Job>,
    health: Arc<Health>,
}

/// What the writer tells the rest of the gateway: /readyz and /metrics read it.
#[derive(Debug)]
pub struct Health {
    /// Whether the last write succeeded.
    pub writable: AtomicBool,
    /// Records that could not be written since start.
    pub failures: AtomicU64,
}

impl AuditLog {
    /// Open the trail named by `[audit]` and start its writer thread. The chain goes on
    /// from the last record already in the file.
    pub fn start(config: &Config) -> Result<AuditLog, String> {
        let path = config.resolve(&config.audit.path);
        let key = match &config.audit.hmac_key_env {
            Some(var) => Some(hmac_key(var)?),
            None => None,
        };
        let chain = Chain::new(key);
        let mut sink = Sink::open(&path)?;
        let prev = sink.last_hash(&chain)?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        let health = Arc::new(Health {
            writable: AtomicBool::new(true),
            failures: AtomicU64::new(0),
        });
        let syncer = match config.audit.fsync {
            Fsync::Batch => Some(Syncer::start()?),
            Fsync::Always | Fsync::Never => None,
        };
        let writer = Writer {
            sink,
            chain,
            prev,
            fsync: config.audit.fsync,
            syncer,
            health: health.clone(),
            last_rotation_check: Instant::now(),
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(AuditLog { jobs, health })
    }

    /// Write one record; returns once it is in the file (and on disk with `fsync = "always"`).
    pub async fn write(&self, record: Record) -> io::Result<()> {
        self.ask(|done| Job::Record(Box::new(record), Some(done)))
            .await
    }

    /// Queue one record without waiting for the disk: for records nothing depends on
    /// (the `completed` one, after the answer is known). It is written before anything
    /// queued after it, a flush included, so a graceful shutdown loses none.
    pub async fn submit(&self, record: Record) -> io::Result<()> {
        self.jobs
            .send(Job::Record(Box::new(record), None))
            .await
            .map_err(|_| io::Error::other("the audit writer has stopped"))
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Whether the last record could be written.
    pub fn is_writable(&self) -> bool {
        self.health.writable.load(Ordering::Relaxed)
    }

    /// Everything written so far, synced to disk.
    pub async fn flush(&self) -> io::Result<()> {
        self.ask(Job::Flush).await
    }

    /// Reopen the file at the configured path (after rotation); the chain goes on.
    pub async fn reopen(&self) -> io::Result<()> {
        self.ask(Job::Reopen).await
    }

    async fn ask(
        &self,
        job: impl FnOnce(oneshot::Sender<io::Result<()>>) -> Job,
    ) -> io::Result<()> {
        let stopped = || io::Error::other("the audit writer has stopped");
        let (done, answer) = oneshot::channel();
        self.jobs.send(job(done)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
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
    /// Shared with the background syncer under `fsync = "batch"`.
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

/// The writer thread's state.
struct Writer {
    sink: Sink,
    chain: Chain,
    /// Hash of the last record written: the next record's `prev`.
    prev: String,
    fsync: Fsync,
    /// Under `fsync = "batch"`: syncs in the background, so appends never wait for it.
    syncer: Option<Syncer>,
    health: Arc<Health>,
    last_rotation_check: Instant,
}

/// A thread that fsyncs the audit file whenever asked. A request made while a sync is
/// queued but not started is covered by it, so requests coalesce into group commits.
struct Syncer {
    asks: std::sync::mpsc::SyncSender<Arc<File>>,
}

impl Syncer {
    fn start() -> Result<Syncer, String> {
        let (asks, pending) = std::sync::mpsc::sync_channel::<Arc<File>>(1);
        std::thread::Builder::new()
            .name("audit-fsync".into())
            .spawn(move || {
                for file in pending {
                    if let Err(error) = file.sync_data() {
                        tracing::error!(%error, "audit fsync failed");
                    }
                    // At most one sync per window: under load each covers many records
                    // instead of the disk being kept busy with one sync after another.
                    std::thread::sleep(BATCH_WINDOW);
                }
            })
            .map_err(|e| format!("cannot start the audit fsync thread: {e}"))?;
        Ok(Syncer { asks })
    }

    fn ask(&self, sink: &Sink) {
        if let Sink::File { file, .. } = sink {
            // Full means a sync is queued and not started: it covers this write too.
            let _ = self.asks.try_send(file.clone());
        }
    }
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let mut batch = Vec::new();
        while let Some(first) = queue.blocking_recv() {
            // Group commit: everything already queued goes out in one write.
            batch.push(first);
            while batch.len() < 1024 {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.handle(&mut batch);
        }
        let _ = self.sink.sync();
    }

    fn handle(&mut self, batch: &mut Vec<Job>) {
        if self.last_rotation_check.elapsed() >= ROTATION_CHECK && self.sink.rotated() {
            tracing::info!("the audit file was moved away; opening a new one");
            if let Err(error) = self.sink.reopen() {
                tracing::error!(%error, "audit file could not be reopened");
            }
        }
        self.last_rotation_check = Instant::now();
        let mut buffer = Vec::with_capacity(batch.len() * 1024);
        let mut next_prev = self.prev.clone();
        for job in batch.iter() {
            if let Job::Record(record, _) = job {
                let (line, hash) = self.chain.seal(record, &next_prev);
                buffer.extend_from_slice(&line);
                buffer.push(b'\n');
                next_prev = hash;
            }
        }
        let mut written = Ok(());
        if !buffer.is_empty() {
            written = self.sink.append(&buffer);
            if written.is_ok() {
                self.prev = next_prev;
                match (&self.syncer, self.fsync) {
                    (_, Fsync::Always) => written = self.sink.sync(),
                    (Some(syncer), _) => syncer.ask(&self.sink),
                    _ => {}
                }
            }
            self.health
                .writable
                .store(written.is_ok(), Ordering::Relaxed);
            if written.is_err() {
                let records = batch
                    .iter()
                    .filter(|j| matches!(j, Job::Record(..)))
                    .count();
                self.health
                    .failures
                    .fetch_add(records as u64, Ordering::Relaxed);
            }
        }
        for job in batch.drain(..) {
            let copy = |result: &io::Result<()>| match result {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            let _ = match job {
                Job::Record(_, None) => Ok(()),
                Job::Record(_, Some(done)) => done.send(copy(&written)),
                Job::Flush(done) => done.send(self.sink.sync()),
                Job::Reopen(done) => done.send(self.sink.reopen()),
            };
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
    }
}
