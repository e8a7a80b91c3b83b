//! Reading audit trails back: `swr-gate audit verify` checks the hash chain across one or
//! several (rotated) files in order; `swr-gate audit query` filters records for a person
//! at a terminal or, as JSON lines, for tools.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::Value;

use super::{Chain, GENESIS};

/// A chain that holds: how many records, where it starts and where it ends.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub records: usize,
    /// `prev` of the first record: [`GENESIS`] for a trail's first file, else the hash
    /// the file before it ended with.
    pub first_prev: String,
    pub last_hash: String,
    /// Torn records the chain goes on past, each as `FILE:LINE: …`.
    pub torn: Vec<String>,
}

/// The first record that breaks the chain.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// Check every record of `files`, in the order given (oldest first).
pub fn verify(files: &[PathBuf], chain: &Chain) -> Result<Verified, Broken> {
    let mut expected_prev: Option<String> = None;
    let mut verified = Verified {
        records: 0,
        first_prev: GENESIS.into(),
        last_hash: GENESIS.into(),
        torn: Vec::new(),
    };
    for file in files {
        let broken = |line: usize, reason: String| Broken {
            file: file.clone(),
            line,
            reason,
        };
        let reader = std::fs::File::open(file).map_err(|e| broken(0, e.to_string()))?;
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        let mut number = 0;
        let mut torn_line = None;
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| broken(number + 1, e.to_string()))?;
            if read == 0 {
                break;
            }
            number += 1;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            // A record cut off mid-write (a crash) never joined the chain: the gateway
            // goes on from the record before it, which the next record's prev shows.
            // Anything else that does not open breaks the chain.
            if Chain::is_torn(text) {
                verified.torn.push(format!(
                    "{}:{number}: a torn record (cut off mid-write, as by a crash); the chain goes on past it",
                    file.display()
                ));
                torn_line = Some(number);
                continue;
            }
            let after_torn = torn_line.take().filter(|torn| *torn == number - 1);
            let (prev, hash) = chain
                .open(text)
                .map_err(|reason| broken(number, reason.into()))?;
            match &expected_prev {
                None => verified.first_prev = prev,
                Some(expected) if *expected != prev => {
                    // A crash's torn record is never built upon: the gateway goes on from
                    // the whole record before it. So a torn line just before a record that
                    // does not follow that one most likely lost its end later.
                    let why = match after_torn {
                        Some(torn) => format!("its prev is not the previous record's hash; line {torn} before it is cut short: a record that was whole when this one was written and lost its end later (a crash's torn record is never built upon)"),
                        None => "its prev is not the previous record's hash (a record before it was deleted, or records were reordered)".into(),
                    };
                    return Err(broken(number, why));
                }
                Some(_) => {}
            }
            verified.records += 1;
            verified.last_hash = hash.clone();
            expected_prev = Some(hash);
        }
    }
    Ok(verified)
}

/// A `--since`/`--until` time: RFC 3339 in UTC (`2026-11-23T18:00:00Z`, fractions
/// allowed, `T` or a space) or with an offset (`2026-11-24T02:00:00+08:00`). A time
/// without either is refused: read as UTC, a local time would select the wrong hours.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    crate::policy::parse_rfc3339_instant(text).ok_or_else(|| {
        "not an RFC 3339 time with Z or an offset, such as 2026-11-23T18:00:00Z or 2026-11-24T02:00:00+08:00".into()
    })
}

/// What `audit query` keeps.
#[derive(Debug, Default)]
pub struct Filter {
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub client: Option<String>,
    pub decision: Option<String>,
    pub operation: Option<String>,
    pub namespace: Option<String>,
    pub repository: Option<String>,
}

impl Filter {
    pub fn matches(&self, record: &Value) -> bool {
        let field = |name: &str, wanted: &Option<String>| {
            wanted
                .as_deref()
                .is_none_or(|w| record.get(name).and_then(Value::as_str) == Some(w))
        };
        let ts = record
            .get("ts")
            .and_then(Value::as_str)
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        let in_time = match ts {
            Some(ts) => self.since.is_none_or(|s| ts >= s) && self.until.is_none_or(|u| ts < u),
            None => self.since.is_none() && self.until.is_none(),
        };
        in_time
            && field("client", &self.client)
            && field("decision", &self.decision)
            && field("operation", &self.operation)
            && field("namespace", &self.namespace)
            && field("repository", &self.repository)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, as written.
    Json,
    /// One aligned line per record for reading.
    Text,
}

/// Print the matching records of `files`; returns how many matched.
pub fn query(
    files: &[PathBuf],
    filter: &Filter,
    format: Format,
    out: &mut impl Write,
) -> Result<usize, String> {
    let mut matched = 0;
    for file in files {
        let reader = BufReader::new(
            std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?,
        );
        // Lines as bytes: one that is not UTF-8 (a torn or damaged record) is skipped like
        // any other that is not a record, and the records after it are still read.
        for (number, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|e| format!("{}: {e}", file.display()))?;
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            let Some((line, record)) = std::str::from_utf8(line)
                .ok()
                .and_then(|line| Some((line, serde_json::from_str::<Value>(line).ok()?)))
            else {
                eprintln!(
                    "warning: {}:{}: not a JSON record, skipped",
                    file.display(),
                    number + 1
                );
                continue;
            };
            if !filter.matches(&record) {
                continue;
            }
            matched += 1;
            let written = match format {
                Format::Json => writeln!(out, "{line}"),
                Format::Text => writeln!(out, "{}", text_line(&record)),
            };
            if written.is_err() {
                return Ok(matched);
            }
        }
    }
    Ok(matched)
}

fn text_line(record: &Value) -> String {
    let s = |name: &str| record.get(name).and_then(Value::as_str).unwrap_or("-");
    let status = record
        .get("status")
        .and_then(Value::as_u64)
        .map_or("-".into(), |s| s.to_string());
    let target = match (
        record.get("namespace").and_then(Value::as_str),
        record.get("repository").and_then(Value::as_str),
    ) {
        (Some(ns), Some(repo)) => format!("{ns}/{repo}"),
        _ => s("path").to_owned(),
    };
    let why = record
        .get("reasons")
        .and_then(Value::as_array)
        .and_then(|r| r.first())
        .and_then(|r| r.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    format!(
        "{}  {:<9} {:<5} {:>3}  {:<16} {:<28} {}  {}",
        s("ts"),
        s("stage"),
        s("decision"),
        status,
        s("client"),
        s("operation"),
        target,
        why
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_in_utc_or_with_an_offset() {
        let utc = parse_time("2026-11-23T18:00:00Z").unwrap();
        assert_eq!(parse_time("2026-11-24T02:00:00+08:00"), Ok(utc));
        assert_eq!(parse_time("2026-11-23 18:00:00Z"), Ok(utc));
        assert!(parse_time("2026-11-23T18:00:00").is_err());
        assert!(parse_time("2026-11-23 18:00:00").is_err());
        assert!(parse_time("2026-11-23T18:00:00.5Z").unwrap() > utc);
        assert!(parse_time("2026-11-24T02:00:00.5+08:00").unwrap() > utc);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2999-01-01T00:00:00Z").unwrap() > utc);
        assert!(parse_time("1969-12-31T23:59:59.5Z").unwrap() < SystemTime::UNIX_EPOCH);
    }
}
