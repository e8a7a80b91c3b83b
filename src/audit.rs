//! The audit trail: one JSON line per outcome (contract §5), hash-chained so that an
//! edited, deleted or reordered record is detectable.
//!
//! Records are written by a dedicated thread so request handling never touches the disk;
//! the channel to it is bounded, so when it falls behind requests wait instead of records
//! being dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::auth::AuthMethod;
use crate::config::{Config, Fsync};
use crate::crypto::{hex, hmac_sha256, sha256};

/// The `prev` of the first record of a new trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Records waiting for the writer before senders have to wait.
const QUEUE: usize = 4096;

/// How long a record may sit written but not fsync'd under `fsync = "batch"`.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

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

    /// Check one written line: returns its `prev` and `hash` when the hash matches.
    pub fn open(&self, line: &[u8]) -> Option<(String, String)> {
        const TAIL: usize = ",\"hash\":\"".len() + 64 + 2;
        if line.len() < TAIL + 2 || !line.ends_with(b"\"}") {
            return None;
        }
        let (body, tail) = line.split_at(line.len() - TAIL);
        let hash = std::str::from_utf8(&tail[9..9 + 64]).ok()?;
        if &tail[..9] != b",\"hash\":\"" {
            return None;
        }
        let mut hashed = body.to_vec();
        hashed.push(b'}');
        if self.digest(&hashed) != hash {
            return None;
        }
        let value: serde_json::Value = serde_json::from_slice(line).ok()?;
        let prev = value.get("prev")?.as_str()?.to_owned();
        Some((prev, hash.to_owned()))
    }
}

struct Job {
    record: Record,
    done: oneshot::Sender<io::Result<()>>,
}

/// The handle requests use to write records.
#[derive(Clone)]
pub struct AuditLog {
    jobs: mpsc::Sender<Job>,
}

impl AuditLog {
    /// Open the trail named by `[audit]` and start its writer thread. The chain goes on
    /// from the last record already in the file.
    pub fn start(config: &Config) -> Result<AuditLog, String> {
        let path = config.resolve(&config.audit.path);
        let key = match &config.audit.hmac_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| {
                        format!("[audit] hmac_key_env: the environment variable {var} is not set")
                    })?
                    .into_bytes(),
            ),
            None => None,
        };
        let chain = Chain::new(key);
        let mut sink = Sink::open(&path)?;
        let prev = sink.last_hash(&chain)?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        let fsync = config.audit.fsync;
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(queue, sink, chain, prev, fsync))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(AuditLog { jobs })
    }

    /// Write one record; returns once it is in the file (and on disk with `fsync = "always"`).
    pub async fn write(&self, record: Record) -> io::Result<()> {
        let (done, written) = oneshot::channel();
        self.jobs
            .send(Job { record, done })
            .await
            .map_err(|_| io::Error::other("the audit writer has stopped"))?;
        written
            .await
            .map_err(|_| io::Error::other("the audit writer has stopped"))?
    }
}

enum Sink {
    Stdout,
    File { file: File, path: PathBuf },
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
            file,
            path: path.to_path_buf(),
        })
    }

    /// The hash of the last record in the file, so a restart continues the chain.
    fn last_hash(&mut self, chain: &Chain) -> Result<String, String> {
        let Sink::File { file, path } = self else {
            return Ok(GENESIS.into());
        };
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let start = len.saturating_sub(64 * 1024);
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_to_end(&mut tail))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(last) = tail.split(|b| *b == b'\n').rev().find(|l| !l.is_empty()) else {
            return Ok(GENESIS.into());
        };
        match chain.open(last) {
            Some((_, hash)) => Ok(hash),
            None => Err(format!(
                "{}: the last record does not verify (edited, truncated, or another hmac key); move the file aside or run `swr-gate audit verify`",
                path.display()
            )),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File { file, .. } => file.write_all(bytes),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout => Ok(()),
            Sink::File { file, .. } => file.sync_data(),
        }
    }
}

fn write_loop(
    mut queue: mpsc::Receiver<Job>,
    mut sink: Sink,
    chain: Chain,
    mut prev: String,
    fsync: Fsync,
) {
    let mut unsynced_since: Option<Instant> = None;
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut waiting = Vec::new();
    loop {
        let first = match unsynced_since {
            // Something is written but not yet on disk: wait for more only until the
            // batch window closes, then sync.
            Some(since) => match queue.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Empty) => {
                    let left = BATCH_WINDOW.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        if let Err(error) = sink.sync() {
                            tracing::error!(%error, "audit fsync failed");
                        }
                        unsynced_since = None;
                    } else {
                        std::thread::sleep(left.min(Duration::from_millis(1)));
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            },
            None => queue.blocking_recv(),
        };
        let Some(first) = first else {
            let _ = sink.sync();
            return;
        };
        // Group commit: everything already queued goes out in one write.
        waiting.push(first);
        while waiting.len() < 1024 {
            match queue.try_recv() {
                Ok(job) => waiting.push(job),
                Err(_) => break,
            }
        }
        buffer.clear();
        let mut next_prev = prev.clone();
        for job in &waiting {
            let (line, hash) = chain.seal(&job.record, &next_prev);
            buffer.extend_from_slice(&line);
            buffer.push(b'\n');
            next_prev = hash;
        }
        let mut result = sink.write_all(&buffer);
        if result.is_ok() {
            prev = next_prev;
            match fsync {
                Fsync::Always => result = sink.sync(),
                Fsync::Batch => {
                    unsynced_since.get_or_insert_with(Instant::now);
                }
                Fsync::Never => {}
            }
        }
        for job in waiting.drain(..) {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            let _ = job.done.send(outcome);
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
            assert_eq!(chain.open(&line), Some((GENESIS.to_owned(), hash)));
            let edited = String::from_utf8(line).unwrap().replace("\"ci\"", "\"cj\"");
            assert_eq!(chain.open(edited.as_bytes()), None);
        }
        let (line, _) = Chain::new(Some(b"k".to_vec())).seal(&record(), GENESIS);
        assert_eq!(Chain::new(None).open(&line), None);
    }
}
