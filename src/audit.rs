//! The audit trail: one JSON line per outcome (contract §5), hash-chained so that an
//! edited, deleted or reordered record is detectable.
//!
//! A record is in the file before the request it is about goes on. The records of the
//! requests a runtime thread works on in one turn go to the file in one write(2), and
//! syncing the file to disk is left to a thread of its own, so no request thread waits in
//! fsync.
//! [`review`] reads trails back: `audit verify` and `audit query`.

pub mod review;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::auth::AuthMethod;
use crate::config::{Config, Fsync, OnFailure};
use crate::crypto::{constant_time_eq, hex, sha256};

/// What precedes a record's hash, the last field of every sealed record.
const HASH_MARK: &[u8] = b",\"hash\":\"";

#[derive(Debug, PartialEq, Eq)]
enum Look {
    Writable,
    Unwritable,
    /// Only a write can tell (stdout, a device).
    CannotTell,
}

/// The `prev` of the first record of a new trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Under `fsync = "batch"`, the least time between two syncs: a record is on disk
/// within about this long plus one sync.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// How often the writer looks whether its file was moved away without a SIGHUP.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// How often an unwritable trail is looked at again when nothing tries to write to it.
const WRITABLE_CHECK: Duration = Duration::from_secs(1);

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

/// A grant as the client sent it: a refused body is recorded with the values it had
/// (`"auth":"7"`, a number for a name), not with made-up ones; absent fields are null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub user_id: serde_json::Value,
    pub user_name: serde_json::Value,
    pub auth: serde_json::Value,
}

/// Sharing as the client sent it, like [`Grant`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sharing {
    pub permit: serde_json::Value,
    pub deadline: serde_json::Value,
    pub description: serde_json::Value,
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
/// It borrows from the request's account: it is sealed into its line at once, and two
/// are made per forwarded request, so copying each field into it would be wasted.
#[derive(Debug, Clone, Serialize)]
pub struct Record<'a> {
    #[serde(serialize_with = "as_text")]
    pub ts: humantime::Rfc3339Timestamp,
    pub request_id: &'a str,
    pub stage: Stage,
    pub client: Option<&'a str>,
    pub auth_method: Option<AuthMethod>,
    /// Written as text, `"192.0.2.1"`, as serde writes an address in JSON.
    pub client_ip: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub operation: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub repository: Option<&'a str>,
    pub access_domain: Option<&'a str>,
    pub grants: Option<&'a [Grant]>,
    pub sharing: Option<&'a Sharing>,
    pub decision: Decision,
    pub denied_by: Option<&'static str>,
    pub reasons: Vec<Reason>,
    pub policies: &'a [String],
    pub dry_run: bool,
    pub status: Option<u16>,
    pub upstream_status: Option<u16>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
}

/// A duration in milliseconds, cut to the microsecond: what a record says, in a few digits.
pub fn milliseconds(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

fn as_text<S: serde::Serializer>(
    value: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Hashes records into the chain: SHA-256, or HMAC-SHA-256 when a key is configured so
/// that someone who can edit the file cannot also recompute the chain.
#[derive(Clone)]
pub struct Chain {
    /// Prepared once: preparing an HMAC key hashes it, which every record would repeat.
    key: Option<ring::hmac::Key>,
}

impl Chain {
    pub fn new(key: Option<Vec<u8>>) -> Chain {
        Chain {
            key: key.map(|key| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key)),
        }
    }

    fn digest(&self, bytes: &[u8]) -> String {
        match &self.key {
            Some(key) => hex(ring::hmac::sign(key, bytes).as_ref()),
            None => hex(&sha256(bytes)),
        }
    }

    /// The line (without newline) for a record that follows `prev`, and its hash. The
    /// line is the record's fields, then `prev`, then `hash` over everything before it.
    pub fn seal(&self, record: &Record<'_>, prev: &str) -> (Vec<u8>, String) {
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

    /// Whether a line is what a crash leaves of a record that was never finished: a
    /// beginning of one (its JSON stops short), or zero bytes, which a power loss can
    /// leave where the data had not reached the disk yet, after such a beginning or
    /// alone. Such a line never joined the chain. A whole object without a hash is not
    /// torn: it was written as it is, and breaks the chain.
    pub fn is_torn(line: &[u8]) -> bool {
        const START: &[u8] = b"{\"ts\":\"";
        let written = line
            .iter()
            .rposition(|b| *b != 0)
            .map_or(&[][..], |end| &line[..=end]);
        if written.len() < START.len() {
            return !line.is_empty() && START.starts_with(written);
        }
        written.starts_with(START)
            && serde_json::from_slice::<serde::de::IgnoredAny>(written).is_err_and(|e| e.is_eof())
    }

    /// Where the record's `,"hash":"…"}` starts, if it ends with one.
    fn hash_at_end(line: &[u8]) -> Option<usize> {
        let start = line.len().checked_sub(HASH_MARK.len() + 64 + 2)?;
        (start > 0 && line[start..].starts_with(HASH_MARK) && line.ends_with(b"\"}"))
            .then_some(start)
    }

    /// Check one written line: its `prev` and `hash` when the hash matches, else why not.
    pub fn open(&self, line: &[u8]) -> Result<(String, String), &'static str> {
        let incomplete = "not a complete record (edited, or not a record)";
        let Some(start) = Self::hash_at_end(line) else {
            return Err(incomplete);
        };
        let (body, tail) = line.split_at(start);
        let hash = std::str::from_utf8(&tail[HASH_MARK.len()..HASH_MARK.len() + 64])
            .map_err(|_| incomplete)?;
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
/// A record is sealed into the chain on the requesting thread, under a lock that keeps
/// the chain in order, and waits in a buffer while the other requests that are ready on
/// that thread seal theirs; the first of them to go on writes the buffer out for all, so
/// under load one write(2) carries many records instead of one each. A guarded request has
/// to wait for its record to be in the file anyway (contract §3, `fsync`); what can take
/// milliseconds, the fsync, stays on its own thread.
#[derive(Clone)]
pub struct AuditLog {
    writer: Arc<Mutex<Writer>>,
    syncer: Option<Arc<Syncer>>,
    health: Arc<Health>,
    /// `[audit] on_failure` as the trail was opened with: like the rest of `[audit]`, a
    /// change takes a restart, so a reload cannot quietly let requests go unrecorded.
    pub on_failure: OnFailure,
}

/// What the writer tells the rest of the gateway: /readyz and /metrics read it.
#[derive(Debug)]
pub struct Health {
    /// Whether the last write (or sync) succeeded, or a later look at the file found it
    /// writable again ([`AuditLog::is_writable`]).
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
        let mut prev = sink.last_hash(&chain)?;
        // Read once: after this start it would be stale (a crash writes no new one).
        let head = take_head(&path);
        if let (true, Some(head)) = (prev == GENESIS, head) {
            tracing::info!(path = %path.display(), head, "the audit file has no records: the chain goes on from where the last run left it (rotated while stopped?)");
            prev = head;
        }
        // Not ready over a full disk from the start rather than from the first request
        // refused. Only a full disk: a probe file the directory does not let us create
        // says nothing about the trail, which is open for writing.
        let writable = match sink.probe() {
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) =>
            {
                tracing::warn!(path = %path.display(), %error, "the audit trail cannot be written: not ready until it can");
                false
            }
            _ => true,
        };
        let health = Arc::new(Health {
            writable: AtomicBool::new(writable),
            failures: AtomicU64::new(0),
        });
        let is_file = matches!(sink, Sink::File { .. });
        let writer = Arc::new(Mutex::new(Writer {
            sink,
            chain,
            written_prev: prev.clone(),
            prev,
            pending: Vec::with_capacity(64 * 1024),
            sealed: 0,
            settled: 0,
            lost: Vec::new(),
            last_rotation_check: Instant::now(),
            last_writable_check: Instant::now(),
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
            on_failure: config.audit.on_failure,
        })
    }

    /// Write one record; returns once it is in the file (and on disk with `fsync = "always"`).
    pub async fn write(&self, record: &Record<'_>) -> io::Result<()> {
        let number = self.append(record).await?;
        match &self.syncer {
            Some(syncer) if syncer.window.is_zero() => syncer.on_disk(number).await,
            _ => Ok(()),
        }
    }

    /// Write one record without waiting for the disk, whatever `fsync` says: for records
    /// nothing waits on (the `completed` one, once the answer is known).
    pub async fn submit(&self, record: &Record<'_>) -> io::Result<()> {
        self.append(record).await.map(|_| ())
    }

    /// Write one record here and now, without waiting for the disk: for a request whose
    /// task is being dropped, which can wait for nothing.
    pub fn write_now(&self, record: &Record<'_>) -> io::Result<()> {
        let number = self.lock().seal(record);
        self.settle(number).map(|_| ())
    }

    /// Seal `record` into the chain and return once it is in the file: its number.
    async fn append(&self, record: &Record<'_>) -> io::Result<u64> {
        let sealed = Sealed {
            log: self,
            number: self.lock().seal(record),
            settled: false,
        };
        // The other requests that are ready on this thread seal their records meanwhile,
        // and the first to come back writes them all. Alone, a request writes at once:
        // the turn would cost it a poll of the runtime's driver and coalesce nothing.
        if crate::workers::others_in_flight() {
            tokio::task::yield_now().await;
        }
        sealed.settle()
    }

    /// Have record `number` written (with everything sealed before it, if nobody has yet);
    /// whether it reached the file.
    fn settle(&self, number: u64) -> io::Result<u64> {
        let mut writer = self.lock();
        if writer.settled < number {
            let _ = self.write_out(&mut writer);
        }
        match writer.claim_loss(number) {
            Some(error) => Err(error),
            None => Ok(number),
        }
    }

    /// Write what is pending, keep the health account and have the syncer cover it:
    /// every path that writes records comes through here, so that none leaves a request
    /// under `fsync = "always"` waiting for a sync nobody asked for.
    fn write_out(&self, writer: &mut Writer) -> io::Result<()> {
        let (records, outcome) = writer.write_pending();
        if records == 0 {
            return outcome;
        }
        self.health
            .writable
            .store(outcome.is_ok(), Ordering::Relaxed);
        match &outcome {
            Ok(()) => {
                if let Some(syncer) = &self.syncer {
                    syncer.ask(writer.settled);
                }
            }
            Err(_) => {
                self.health.failures.fetch_add(records, Ordering::Relaxed);
                writer.last_writable_check = Instant::now();
            }
        }
        outcome
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic mid-append cannot leave half a record behind (appends are cut back),
        // so the state behind a poisoned lock is still sound.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Whether records can be written: the last write succeeded, or, after a failure,
    /// a look at the file (at most once a second) finds it writable again. /readyz asks
    /// this: a gateway taken out of service for an unwritable trail gets no request whose
    /// write could tell it that the disk has room again.
    pub fn is_writable(&self) -> bool {
        if self.health.writable.load(Ordering::Relaxed) {
            self.notice_rotation();
        }
        self.health.writable.load(Ordering::Relaxed) || self.look() == Look::Writable
    }

    /// Follow a trail moved away while no record is written, so that a path that can no
    /// longer be opened shows in readiness before a request is refused for it.
    fn notice_rotation(&self) {
        let Ok(mut writer) = self.writer.try_lock() else {
            return;
        };
        writer.follow_rotation();
        if let Sink::Unopened { .. } = writer.sink {
            self.health.writable.store(false, Ordering::Relaxed);
        }
    }

    /// Whether a request recorded only once SWR answered (a forward) may go. While
    /// records fail it waits for the trail to take them again; on a sink no probe can
    /// judge (stdout, a device) one request a second goes, and its record tells.
    pub fn may_forward(&self) -> bool {
        self.health.writable.load(Ordering::Relaxed)
            || matches!(self.look(), Look::Writable | Look::CannotTell)
    }

    /// A look at an unwritable trail, at most once a second, never waiting behind a
    /// write stuck on the disk (busy counts as not yet).
    fn look(&self) -> Look {
        let mut writer = match self.writer.try_lock() {
            Ok(writer) => writer,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Look::Unwritable,
        };
        if writer.last_writable_check.elapsed() < WRITABLE_CHECK {
            return Look::Unwritable;
        }
        writer.last_writable_check = Instant::now();
        match writer.sink.probe() {
            Ok(()) => {
                self.health.writable.store(true, Ordering::Relaxed);
                Look::Writable
            }
            Err(error) if error.kind() == io::ErrorKind::Unsupported => Look::CannotTell,
            Err(_) => Look::Unwritable,
        }
    }

    /// Everything written so far, synced to disk (shutdown), and where the chain ends
    /// noted beside the file, for a start that finds the file rotated away.
    pub async fn flush(&self) -> io::Result<()> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut writer = log.lock();
            let written = log.write_out(&mut writer);
            let synced = writer.sink.sync();
            if let Sink::File { path, .. } = &writer.sink {
                if let Err(error) = write_head(path, &writer.written_prev) {
                    tracing::warn!(%error, "where the audit chain ends could not be noted; a rotation before the next start begins a new chain");
                }
            }
            written.and(synced)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Reopen the file at the configured path (after rotation); the chain goes on.
    pub fn reopen(&self) -> io::Result<()> {
        let mut writer = self.lock();
        // What the old file's chain ends with goes into the old file.
        let _ = self.write_out(&mut writer);
        let reopened = writer.sink.reopen();
        if reopened.is_err() {
            self.health.writable.store(false, Ordering::Relaxed);
        }
        reopened
    }
}

/// The key of the hash chain, from the environment variable `[audit] hmac_key_env` names.
pub fn hmac_key(var: &str) -> Result<Vec<u8>, String> {
    match std::env::var(var) {
        Ok(key) if !key.is_empty() => Ok(key.into_bytes()),
        _ => Err(format!(
            "[audit] hmac_key_env: the environment variable {} is not set, or empty",
            crate::config::variable_shown(var)
        )),
    }
}

/// How a trail file ends: its last record, and what follows it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Ending {
    /// The last line that is no crash's leftover (None: no such line, or not a regular
    /// file). Whether it is a record is for [`continues`] to say.
    last: Option<Vec<u8>>,
    /// Bytes after the last newline: a record a crash cut off, or something else.
    unfinished: Vec<u8>,
    /// An empty line after `last`, which `audit verify` takes for an edit.
    blank_line: bool,
}

impl Ending {
    /// A whole record the crash left without its newline (its line's end was still to
    /// reach the disk), with any zero bytes after it cut off: it is the last record.
    fn unfinished_record(&self, chain: &Chain) -> Option<&[u8]> {
        let end = self.unfinished.iter().rposition(|b| *b != 0)? + 1;
        let written = &self.unfinished[..end];
        chain.open(written).is_ok().then_some(written)
    }

    /// The record the chain goes on from.
    fn record<'a>(&'a self, chain: &Chain) -> Option<&'a [u8]> {
        self.unfinished_record(chain).or(self.last.as_deref())
    }

    /// Refused when the file ends in what `audit verify` takes for an edit: records
    /// written after it would never verify again.
    fn may_be_written_on(&self, chain: &Chain, path: &Path) -> Result<(), String> {
        if self.blank_line {
            return Err(format!(
                "{}: the audit file has an empty line after its last record, which `swr-gate audit verify` reports as an edit; remove it, or move the file aside",
                path.display()
            ));
        }
        if !self.unfinished.is_empty()
            && !Chain::is_torn(&self.unfinished)
            && self.unfinished_record(chain).is_none()
        {
            return Err(format!(
                "{}: the audit file ends in {} bytes that are no record and no record cut off by a crash (an edit?); run `swr-gate audit verify`, then remove them or move the file aside",
                path.display(),
                self.unfinished.len()
            ));
        }
        Ok(())
    }
}

/// How a trail file ends. Read from the end, further back until the last line is whole,
/// however long a record is. Whole lines a crash left (a record cut off, then closed by
/// a start) are passed over, as the chain was continued from the record before them.
fn last_record(file: &File, path: &Path) -> Result<Ending, String> {
    let mut file: &File = file;
    let metadata = file.metadata().map_err(|e| e.to_string())?;
    if !metadata.is_file() {
        return Ok(Ending::default());
    }
    let mut window = 64 * 1024;
    loop {
        let start = metadata.len().saturating_sub(window);
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_to_end(&mut tail))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut ending = Ending {
            unfinished: tail[complete..].to_vec(),
            ..Ending::default()
        };
        let whole = tail[..complete].strip_suffix(b"\n").unwrap_or_default();
        let mut lines = whole.rsplit(|b| *b == b'\n').peekable();
        while let Some(line) = lines.next() {
            // The window's first line may be the end of a longer one.
            let cut_by_window = lines.peek().is_none() && start > 0;
            if cut_by_window {
                break;
            }
            if line.is_empty() {
                ending.blank_line |= complete > 0;
            } else if !Chain::is_torn(line) {
                ending.last = Some(line.to_vec());
                return Ok(ending);
            }
        }
        if start == 0 {
            return Ok(ending);
        }
        window *= 4;
    }
}

/// Where a trail's chain ended at the last shutdown: `.NAME.head` beside the file (a
/// dot file, which logrotate's patterns for the trail leave alone).
fn head_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.head"))
}

fn write_head(path: &Path, hash: &str) -> io::Result<()> {
    let head = head_path(path);
    let fresh = head.with_extension("head.new");
    std::fs::write(&fresh, format!("{hash}\n"))?;
    File::open(&fresh)?.sync_all()?;
    std::fs::rename(&fresh, &head)
}

/// The hash the last clean shutdown left, removing its file.
fn take_head(path: &Path) -> Option<String> {
    let head = head_path(path);
    let text = std::fs::read_to_string(&head).ok()?;
    let _ = std::fs::remove_file(&head);
    let hash = text.trim();
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && hash != GENESIS)
        .then(|| hash.to_owned())
}

/// The hash a new record chains to after `last`, if `last` verifies.
fn continues(chain: &Chain, last: Option<&[u8]>, path: &Path) -> Result<String, String> {
    let Some(last) = last else {
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

/// What `swr-gate check` can tell about `[audit]` without writing anything: the key is
/// set, the file opens for appending (or its directory exists to create it in), and the
/// chain in it can be continued: everything `serve` would refuse to start over.
pub fn check(config: &Config) -> Result<(), String> {
    let key = match &config.audit.hmac_key_env {
        Some(var) => Some(hmac_key(var)?),
        None => None,
    };
    let path = config.resolve(&config.audit.path);
    if path.as_os_str() == "-" {
        return Ok(());
    }
    let unusable = |e: &dyn std::fmt::Display| format!("[audit] path {}: {e}", path.display());
    match OpenOptions::new().read(true).append(true).open(&path) {
        Ok(file) => {
            let chain = Chain::new(key);
            let ending = last_record(&file, &path)?;
            ending.may_be_written_on(&chain, &path)?;
            continues(&chain, ending.record(&chain), &path).map(|_| ())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let directory = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            match std::fs::metadata(directory) {
                Ok(metadata) if metadata.is_dir() => Ok(()),
                Ok(_) => Err(unusable(&"its directory is not a directory")),
                Err(error) => Err(unusable(&format!("its directory: {error}"))),
            }
        }
        Err(error) => Err(unusable(&error)),
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
    /// The path could not be opened again after the file was moved away: records are
    /// refused rather than written into the moved file, which logrotate may compress
    /// and delete. Opening is tried again at most once a second, at a write or a look
    /// from /readyz.
    Unopened {
        path: PathBuf,
        error: String,
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
        let ending = last_record(file, path)?;
        ending.may_be_written_on(chain, path)?;
        let failed = |e: io::Error| format!("{}: {e}", path.display());
        if let Some(record) = ending.unfinished_record(chain) {
            let zeros = (ending.unfinished.len() - record.len()) as u64;
            if zeros > 0 {
                let length = file.metadata().map_err(failed)?.len();
                file.set_len(length - zeros).map_err(failed)?;
            }
            tracing::warn!(path = %path.display(), "the audit file's last record had no line end (a crash); it is ended and the chain continues from it");
        } else if !ending.unfinished.is_empty() {
            tracing::warn!(path = %path.display(), "the audit file ends in a torn record; it is closed and the chain continues from the last complete one");
        }
        if !ending.unfinished.is_empty() {
            let mut file: &File = file;
            file.write_all(b"\n").map_err(failed)?;
        }
        continues(chain, ending.record(chain), path)
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
            Sink::Unopened { path, error } => Err(io::Error::other(format!(
                "the audit file {} cannot be opened: {error}",
                path.display()
            ))),
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
            Sink::Stdout | Sink::Unopened { .. } => Ok(()),
            Sink::File { file, .. } => file.sync_data(),
        }
    }

    /// Whether a record written now would land: the path opens, and, for a regular file,
    /// its file system takes a block (a probe file beside it, removed at once). Nothing
    /// is written to the trail itself, and a device or pipe is left to the next write.
    fn probe(&mut self) -> io::Result<()> {
        if let Sink::Unopened { .. } = self {
            self.reopen()?;
        }
        let only_a_write_can_tell =
            || io::Error::new(io::ErrorKind::Unsupported, "only a write can tell");
        let Sink::File { file, path } = self else {
            return Err(only_a_write_can_tell());
        };
        if !file.metadata()?.is_file() {
            return Err(only_a_write_can_tell());
        }
        let mut name = std::ffi::OsString::from(".");
        name.push(path.file_name().unwrap_or_default());
        name.push(format!(".{}.probe", std::process::id()));
        let probe = path.with_file_name(name);
        // A new file only: never through a link someone left under that name.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)?;
        let written = file.write_all(&[0; 4096]);
        let _ = std::fs::remove_file(&probe);
        written
    }

    /// Has the path been moved away or replaced since we opened it (logrotate without
    /// SIGHUP)?
    fn rotated(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (file, path) = match self {
            Sink::File { file, path } => (file, path),
            Sink::Unopened { .. } => return true,
            Sink::Stdout => return false,
        };
        match (std::fs::metadata(path), file.metadata()) {
            (Ok(at_path), Ok(open)) => at_path.ino() != open.ino() || at_path.dev() != open.dev(),
            (Err(_), _) => true,
            (_, Err(_)) => false,
        }
    }

    /// Open the path again; when that fails the sink is [`Sink::Unopened`], so that no
    /// record goes into the file that was moved away.
    fn reopen(&mut self) -> io::Result<()> {
        let path = match self {
            Sink::Stdout => return Ok(()),
            Sink::File { file, path } => {
                let _ = file.sync_data();
                path.clone()
            }
            Sink::Unopened { path, .. } => path.clone(),
        };
        match Sink::open(&path) {
            Ok(sink) => {
                *self = sink;
                Ok(())
            }
            Err(error) => {
                *self = Sink::Unopened {
                    path,
                    error: error.clone(),
                };
                Err(io::Error::other(error))
            }
        }
    }
}

/// A record sealed into the chain whose request waits for it to be in the file. Dropped
/// unsettled (the request was cancelled), it still has its record written, so a sealed
/// record never lingers in the buffer.
struct Sealed<'a> {
    log: &'a AuditLog,
    number: u64,
    settled: bool,
}

impl Sealed<'_> {
    fn settle(mut self) -> io::Result<u64> {
        self.settled = true;
        self.log.settle(self.number)
    }
}

impl Drop for Sealed<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let _ = self.log.settle(self.number);
        }
    }
}

/// The trail's end: what the next record chains to, and the records sealed but not yet
/// written.
struct Writer {
    sink: Sink,
    chain: Chain,
    /// Hash of the last record sealed: the next record's `prev`.
    prev: String,
    /// Hash of the last record in the file: where the chain goes on if the pending
    /// records cannot be written.
    written_prev: String,
    /// Sealed lines, newline-terminated, waiting for one write.
    pending: Vec<u8>,
    /// Records sealed since start; a record's number is its place in this count.
    sealed: u64,
    /// Records up to this number have been written or lost.
    settled: u64,
    /// Records that could not be written and whose requests have not been told yet.
    lost: Vec<Loss>,
    last_rotation_check: Instant,
    last_writable_check: Instant,
}

/// Records `first..=last` failed to be written; `untold` of them still have a request
/// waiting to hear it.
struct Loss {
    first: u64,
    last: u64,
    untold: u64,
    error: io::ErrorKind,
    message: String,
}

impl Writer {
    /// Chain `record` on and put its line in the buffer; its number.
    fn seal(&mut self, record: &Record<'_>) -> u64 {
        let (line, hash) = self.chain.seal(record, &self.prev);
        self.pending.extend_from_slice(&line);
        self.pending.push(b'\n');
        self.prev = hash;
        self.sealed += 1;
        self.sealed
    }

    /// Open the path anew when the file was moved away or replaced since it was opened
    /// (logrotate without SIGHUP), looking at most once a second.
    fn follow_rotation(&mut self) {
        if self.last_rotation_check.elapsed() < ROTATION_CHECK {
            return;
        }
        self.last_rotation_check = Instant::now();
        if self.sink.rotated() {
            tracing::info!("the audit file was moved away; opening a new one");
            if let Err(error) = self.sink.reopen() {
                tracing::error!(%error, "audit file could not be reopened");
            }
        }
    }

    /// Write the buffer out in one append: how many records it held, and whether they are
    /// in the file. Records that could not be written leave the chain, which goes on from
    /// the last record in the file.
    fn write_pending(&mut self) -> (u64, io::Result<()>) {
        let records = self.sealed - self.settled;
        if records == 0 {
            return (0, Ok(()));
        }
        self.follow_rotation();
        let outcome = self.sink.append(&self.pending);
        self.pending.clear();
        match &outcome {
            Ok(()) => self.written_prev.clone_from(&self.prev),
            Err(error) => {
                self.prev.clone_from(&self.written_prev);
                self.lost.push(Loss {
                    first: self.settled + 1,
                    last: self.sealed,
                    untold: records,
                    error: error.kind(),
                    message: error.to_string(),
                });
            }
        }
        self.settled = self.sealed;
        (records, outcome)
    }

    /// Why record `number` could not be written, if it could not; each request hears it
    /// once, so the account of losses stays as small as the requests still waiting.
    fn claim_loss(&mut self, number: u64) -> Option<io::Error> {
        let at = self
            .lost
            .iter()
            .position(|loss| (loss.first..=loss.last).contains(&number))?;
        let loss = &mut self.lost[at];
        let error = io::Error::new(loss.error, loss.message.clone());
        loss.untold -= 1;
        if loss.untold == 0 {
            self.lost.swap_remove(at);
        }
        Some(error)
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
                Sink::Unopened { .. } => {
                    self.synced.send_modify(|synced| synced.through = wanted);
                    continue;
                }
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
    use std::time::SystemTime;

    fn record() -> Record<'static> {
        Record {
            ts: humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH),
            request_id: "r1",
            stage: Stage::Completed,
            client: Some("ci"),
            auth_method: Some(AuthMethod::ApiKey),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            method: "POST",
            path: "/v2",
            operation: None,
            namespace: None,
            repository: None,
            access_domain: None,
            grants: None,
            sharing: None,
            decision: Decision::Deny,
            denied_by: Some("route"),
            reasons: vec![],
            policies: &[],
            dry_run: false,
            status: Some(404),
            upstream_status: None,
            duration_ms: 0.1,
            upstream_ms: None,
        }
    }

    fn writer_at(path: &str) -> Writer {
        Writer {
            sink: Sink::open(Path::new(path)).unwrap(),
            chain: Chain::new(None),
            prev: GENESIS.into(),
            written_prev: GENESIS.into(),
            pending: Vec::new(),
            sealed: 0,
            settled: 0,
            lost: Vec::new(),
            last_rotation_check: Instant::now(),
            last_writable_check: Instant::now(),
        }
    }

    #[test]
    fn records_that_cannot_be_written_leave_the_chain_and_each_request_hears_it_once() {
        let mut writer = writer_at("/dev/full");
        let (first, second) = (writer.seal(&record()), writer.seal(&record()));
        assert_ne!(writer.prev, GENESIS);
        let (records, outcome) = writer.write_pending();
        assert_eq!(records, 2);
        assert!(outcome.is_err());
        assert_eq!(
            writer.prev, GENESIS,
            "the chain goes on from the last written record"
        );
        assert!(writer.pending.is_empty());
        assert!(writer.claim_loss(second).is_some());
        assert!(writer.claim_loss(first).is_some());
        assert!(writer.lost.is_empty(), "told once, forgotten");
        assert!(writer.claim_loss(first).is_none());
    }

    #[test]
    fn one_write_carries_every_record_sealed_before_it() {
        let mut writer = writer_at("/dev/null");
        for _ in 0..3 {
            writer.seal(&record());
        }
        assert_eq!(writer.write_pending().0, 3);
        assert_eq!(
            (writer.settled, writer.written_prev.clone()),
            (3, writer.prev.clone())
        );
        assert_eq!(writer.write_pending().0, 0, "nothing left to write");
    }

    #[test]
    fn the_last_record_is_found_however_long_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trail");
        let long = "x".repeat(300 * 1024);
        let cut = "{\"ts\":\"2026";
        for (text, last, unfinished, blank_line) in [
            (format!("first\n{long}\n"), Some(long.as_str()), "", false),
            (
                format!("first\n{long}\ntorn"),
                Some(long.as_str()),
                "torn",
                false,
            ),
            (format!("{long}\n\n"), Some(long.as_str()), "", true),
            ("only\n".to_owned(), Some("only"), "", false),
            (String::new(), None, "", false),
            // A record cut off and closed by an earlier start is passed over.
            (format!("first\n{cut}\n"), Some("first"), "", false),
            (
                format!("first\n{cut}\n\0\0\0"),
                Some("first"),
                "\0\0\0",
                false,
            ),
            (format!("{cut}\n"), None, "", false),
        ] {
            std::fs::write(&path, &text).unwrap();
            let file = File::open(&path).unwrap();
            let ending = last_record(&file, &path).unwrap();
            assert_eq!(
                ending.last.as_deref(),
                last.map(str::as_bytes),
                "{text:.20}"
            );
            assert_eq!(ending.unfinished, unfinished.as_bytes(), "{text:.20}");
            assert_eq!(ending.blank_line, blank_line, "{text:.20}");
        }
    }

    #[test]
    fn what_a_crash_leaves_is_told_from_an_edit() {
        for torn in [
            &b"{\"ts\":\"2026-11-30T01:00:00.000Z\",\"req"[..],
            b"{\"t",
            b"{",
            b"\0\0\0\0",
            b"{\"ts\":\"2026\0\0",
        ] {
            assert!(Chain::is_torn(torn), "{}", String::from_utf8_lossy(torn));
        }
        for edit in [
            &b""[..],
            b"garbage",
            b"{\"ts\":\"2026\"}",
            b"{\"ts\":\"2026\"}\0",
            b"\0x",
            b"{\"x",
        ] {
            assert!(!Chain::is_torn(edit), "{}", String::from_utf8_lossy(edit));
        }
    }

    #[test]
    fn durations_are_written_cut_to_the_microsecond() {
        let written = |nanos| serde_json::to_string(&milliseconds(Duration::from_nanos(nanos)));
        assert_eq!(written(94_124_615).unwrap(), "94.124");
        assert_eq!(written(1_000_000).unwrap(), "1.0");
        assert_eq!(written(999).unwrap(), "0.0");
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
