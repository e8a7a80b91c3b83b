//! The TOML config file (contract §3). Unknown keys are errors, durations are strings
//! like `"250ms"`, and secrets never stand in the file: `*_env` names an environment
//! variable, `*_file` a file. Relative paths are relative to the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::ratelimit::RateLimitSpec;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub server: Server,
    pub admin: Option<Admin>,
    pub upstream: Upstream,
    pub iam: Iam,
    #[serde(default)]
    pub policy: Policy,
    pub audit: Audit,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub clients: Vec<ClientSpec>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSpec>,
    /// The directory of the config file; relative paths in it start here.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The config file, and its text, so that a problem found after parsing can still
    /// name its line.
    #[serde(skip)]
    source: Option<(PathBuf, Arc<str>)>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    pub listen: SocketAddr,
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default = "defaults::header_timeout", deserialize_with = "duration")]
    pub header_timeout: Duration,
    #[serde(default = "defaults::request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// Client connections held at once; derived from the open files limit when unset.
    pub max_connections: Option<std::num::NonZeroUsize>,
    /// Connections one client address (an IPv6 /64) may hold at once; unset: no limit.
    pub max_connections_per_address: Option<std::num::NonZeroUsize>,
    pub tls: Option<ServerTls>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Optional,
    Required,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Admin {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Upstream {
    #[serde(deserialize_with = "uri")]
    pub url: http::Uri,
    pub ca_file: Option<PathBuf>,
    #[serde(default = "defaults::connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "defaults::upstream_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub unmatched: Unmatched,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    #[default]
    Reject,
    Forward,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Iam {
    pub method: IamMethod,
    #[serde(default, deserialize_with = "optional_uri")]
    pub endpoint: Option<http::Uri>,
    pub user: Option<String>,
    pub domain: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub project: Option<String>,
    pub project_id: Option<String>,
    pub project_domain: Option<String>,
    #[serde(default = "defaults::refresh_before", deserialize_with = "duration")]
    pub refresh_before: Duration,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    pub agency_name: Option<String>,
    pub agency_domain: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IamMethod {
    Password,
    Agency,
    TokenFile,
    TokenEnv,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Policy {
    #[serde(default = "defaults::policy_dir")]
    pub dir: PathBuf,
    #[serde(default)]
    pub mode: PolicyMode,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            dir: defaults::policy_dir(),
            mode: PolicyMode::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyMode {
    #[default]
    Enforce,
    DryRun,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Audit {
    pub path: PathBuf,
    #[serde(default)]
    pub fsync: Fsync,
    #[serde(default)]
    pub on_failure: OnFailure,
    pub hmac_key_env: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Always,
    #[default]
    Batch,
    Never,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    #[default]
    Reject,
    Continue,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Auth {
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Failed authentications one client address may have per `failure_window` before
    /// it is refused outright (429) until the window ends.
    #[serde(default = "defaults::max_failures")]
    pub max_failures: u32,
    #[serde(default = "defaults::failure_window", deserialize_with = "duration")]
    pub failure_window: Duration,
    /// A Redis that keeps the AK/SK signatures already used, for every replica and
    /// across restarts (else each process keeps its own).
    pub replay_redis_url: Option<String>,
    pub replay_redis_url_env: Option<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            allow_anonymous: false,
            max_failures: defaults::max_failures(),
            failure_window: defaults::failure_window(),
            replay_redis_url: None,
            replay_redis_url_env: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClientSpec {
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub api_key_sha256: Option<String>,
    pub access_key: Option<String>,
    pub secret_key_env: Option<String>,
    pub secret_key_file: Option<PathBuf>,
    pub tls_subject: Option<String>,
    pub tls_san: Option<String>,
}

mod defaults {
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn max_body_bytes() -> usize {
        64 * 1024
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub fn upstream_timeout() -> Duration {
        Duration::from_secs(15)
    }
    pub fn refresh_before() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn max_failures() -> u32 {
        20
    }
    pub fn failure_window() -> Duration {
        Duration::from_secs(60)
    }
    pub fn policy_dir() -> PathBuf {
        PathBuf::from("policies")
    }
}

/// The largest `max_body_bytes`.
const MAX_BODY_BYTES: usize = 16 << 20;

/// The longest duration a setting takes, humantime's `1y` (365.25 days). No timeout or
/// window needs more, and one of billions of years overflows the clock when a timer is
/// set.
const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

pub(crate) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    // The value is not repeated: errors name no value from the file.
    let duration = humantime::parse_duration(&text)
        .map_err(|_| serde::de::Error::custom("not a duration like 250ms, 10s or 1h"))?;
    if duration > MAX_DURATION {
        return Err(serde::de::Error::custom(
            "a duration longer than a year (1y); no setting takes one",
        ));
    }
    Ok(duration)
}

fn uri<'de, D: Deserializer<'de>>(deserializer: D) -> Result<http::Uri, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse()
        .map_err(|e| serde::de::Error::custom(format!("not a URL: {e}")))
}

fn optional_uri<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<http::Uri>, D::Error> {
    uri(deserializer).map(Some)
}

impl Iam {
    /// What `password` and `agency` need to log in to IAM.
    fn login_problems(&self) -> Vec<String> {
        let method = match self.method {
            IamMethod::Agency => "agency",
            _ => "password",
        };
        let given = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
        let mut problems = Vec::new();
        let mut need = |present: bool, what: &str| {
            if !present {
                problems.push(format!("[iam] method = \"{method}\" needs {what}"));
            }
        };
        need(
            self.endpoint.is_some(),
            "endpoint = \"https://iam.REGION.myhuaweicloud.com\"",
        );
        need(given(&self.user), "user (the IAM user name)");
        need(given(&self.domain), "domain (the account name)");
        need(
            given(&self.password_env) || self.password_file.is_some(),
            "password_env = \"VARIABLE\" or password_file = \"PATH\"",
        );

        need(
            given(&self.project) || given(&self.project_id),
            "project (a name like \"cn-north-4\") or project_id",
        );
        if self.method == IamMethod::Agency {
            need(given(&self.agency_name), "agency_name");
            need(
                given(&self.agency_domain),
                "agency_domain (the account that made the agency)",
            );
        }
        if self.project.is_some() && self.project_id.is_some() {
            problems.push("[iam] give project or project_id, not both".into());
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            problems.push("[iam] give password_env or password_file, not both".into());
        }
        if self.project_domain.is_some() && self.project.is_none() {
            problems.push("[iam] project_domain qualifies a project name: it needs project".into());
        }
        if let Some(endpoint) = &self.endpoint {
            let host = endpoint.host().unwrap_or_default();
            let loopback = host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            match endpoint.scheme_str() {
                Some("https") if !host.is_empty() => {}
                Some("http") if loopback => {}
                _ => problems.push(
                    "[iam] endpoint must be an https:// URL with a host (http:// only to a loopback address): the password goes there".into(),
                ),
            }
        }
        problems
    }
}

/// toml's error without any value from the file, since the value may be a secret put
/// where it does not belong (`password = "…"` under `[iam]`), and `check`'s output and
/// the reload's log line are read by more people than the file is: the line is shown up
/// to its `=` (a table header up to its `]`), a syntax error in toml's words, which
/// quote no value, and a wrong value by what was expected, not by what was found.
pub(crate) fn parse_error(path: &Path, text: &str, error: &toml::de::Error) -> String {
    let (message, span) = match toml_edit::ImDocument::parse(text) {
        Err(syntax) => (syntax.message().trim_end().to_owned(), syntax.span()),
        Ok(_) => (without_value(error.message().trim_end()), error.span()),
    };
    let Some(span) = span else {
        return format!("{}: {message}", path.display());
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = crate::files::line_at(text, span.start);
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    let source = text.lines().nth(line - 1).unwrap_or_default();
    let shown = match (source.trim_start().starts_with('['), source.split_once('=')) {
        (true, _) => {
            let end = if source.trim_start().starts_with("[[") {
                "]]"
            } else {
                "]"
            };
            match source.split_once(end) {
                Some((header, _)) => format!("{header}{end}"),
                None => source.to_owned(),
            }
        }
        (false, Some((key, _))) => format!("{key}= …"),
        (false, None) => "…".to_owned(),
    };
    format!(
        "{}: TOML parse error at line {line}, column {column}\n  |\n{line} | {shown}\n  |\n{message}",
        path.display()
    )
}

/// The config, refused when it has an unknown key: a misspelt setting may be one the
/// user believes is on.
fn without_unknown_keys((config, unknown): (Config, Vec<String>)) -> Result<Config, Vec<String>> {
    if unknown.is_empty() {
        Ok(config)
    } else {
        Err(unknown)
    }
}

/// serde's `invalid type: string "…", expected a string` as `invalid type, expected a
/// string`. The value stands between the two, so what follows the last `, expected ` is
/// the setting's own words.
fn without_value(message: &str) -> String {
    for kind in [
        "invalid type",
        "invalid value",
        "unknown variant",
        "invalid length",
    ] {
        if message.starts_with(kind) {
            return match message.rsplit_once(", expected ") {
                Some((_, expected)) => format!("{kind}, expected {expected}"),
                None => kind.to_owned(),
            };
        }
    }
    message.to_owned()
}

/// Why a file a `*_file` setting names could not be read, without its path: what stands
/// there may be the secret itself, pasted in place of a path. The setting's line shows it.
pub fn file_problem(error: &std::io::Error) -> String {
    format!("the file it names cannot be read ({error}; a relative path is relative to the config file)")
}

/// How a message names the environment variable of a `*_env` setting: as written when it
/// looks like one (`SWR_GATE_IAM_PASSWORD`: upper case, digits and `_`), else not at all,
/// since what stands there may be the secret itself, pasted in place of its name.
pub fn variable_shown(name: &str) -> String {
    let looks_like_a_name = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    match looks_like_a_name {
        true => name.to_owned(),
        false => "named there (not shown: it is not an upper-case variable name)".to_owned(),
    }
}

/// The keys from the top of the file down to an ignored one, `["clients", "1", "foo"]`.
fn key_path(path: &serde_ignored::Path, keys: &mut Vec<String>) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            key_path(parent, keys);
            keys.push(index.to_string());
        }
        Path::Map { parent, key } => {
            key_path(parent, keys);
            keys.push(key.clone());
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent, keys),
    }
}

/// A key no setting has, named by its table and line.
fn unknown_key(path: &Path, text: &str, keys: &[String]) -> String {
    let (key, table) = keys
        .split_last()
        .map_or(("", &[][..]), |(k, t)| (k.as_str(), t));
    let place = match table {
        [] => "at the top level".to_owned(),
        [array, index] if index.parse::<usize>().is_ok() => {
            let entry = index.parse::<usize>().unwrap_or_default() + 1;
            format!("in [[{array}]] entry {entry}")
        }
        table => format!("in [{}]", table.join(".")),
    };
    match key_line(text, keys) {
        Some(line) => format!("{}:{line}: unknown key `{key}` {place}", path.display()),
        None => format!("{}: unknown key `{key}` {place}", path.display()),
    }
}

/// The line on which the key at `keys` is written.
fn key_line(text: &str, keys: &[String]) -> Option<usize> {
    let document = toml_edit::ImDocument::parse(text).ok()?;
    let (last, parents) = keys.split_last()?;
    let mut item = document.as_item();
    for key in parents {
        item = match key.parse::<usize>() {
            Ok(index) => item.get(index)?,
            Err(_) => item.get(key.as_str())?,
        };
    }
    let (key, _) = item.as_table_like()?.get_key_value(last)?;
    Some(crate::files::line_at(text, key.span()?.start))
}

impl Config {
    /// Read and parse a config file; each problem names the file and, where it can, the
    /// line.
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        Config::read(path).and_then(without_unknown_keys)
    }

    /// Every unknown key is a problem, each with its line; a value of the wrong type stops
    /// the reading, as toml reports it.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Vec<String>> {
        Config::parse_with_unknown_keys(text, path).and_then(without_unknown_keys)
    }

    /// The config, when it parses, and a problem for each unknown key: for `check`, which
    /// reports a misspelt key together with everything else, not instead of it.
    pub fn read(path: &Path) -> Result<(Config, Vec<String>), Vec<String>> {
        let text = crate::files::read_to_string(path)
            .map_err(|e| vec![format!("{}: {e}", path.display())])?;
        Config::parse_with_unknown_keys(&text, path)
    }

    fn parse_with_unknown_keys(
        text: &str,
        path: &Path,
    ) -> Result<(Config, Vec<String>), Vec<String>> {
        let mut unknown = Vec::new();
        let parsed: Result<Config, _> =
            serde_ignored::deserialize(toml::Deserializer::new(text), |ignored| {
                let mut key = Vec::new();
                key_path(&ignored, &mut key);
                unknown.push(key);
            });
        let mut problems: Vec<String> = unknown
            .iter()
            .map(|key| unknown_key(path, text, key))
            .collect();
        let mut config = match parsed {
            Ok(config) => config,
            Err(error) => {
                problems.push(parse_error(path, text, &error));
                return Err(problems);
            }
        };
        config.source = Some((path.to_path_buf(), text.into()));
        config.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok((config, problems))
    }

    /// A path from the config, made absolute against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || path.as_os_str() == "-" {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// `problem` with the place in the config file it is about, when it names one by its
    /// table and key (`[upstream] url …`, `[[clients]] "ci": api_key_sha256 …`), as toml
    /// names the place of a parse error: `FILE:LINE: problem`, or `FILE: problem`.
    pub fn locate(&self, problem: String) -> String {
        let Some((path, text)) = &self.source else {
            return problem;
        };
        if !problem.starts_with('[') && !problem.contains("[[clients]]") {
            return problem;
        }
        match line_of(text, &problem) {
            Some(line) => format!("{}:{line}: {problem}", path.display()),
            None => format!("{}: {problem}", path.display()),
        }
    }

    /// Problems that parse but make no sense together, each as a sentence for `check`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let scheme = self.upstream.url.scheme_str();
        if !matches!(scheme, Some("http") | Some("https")) || self.upstream.url.host().is_none() {
            problems.push("[upstream] url must be an http:// or https:// URL with a host".into());
        }
        // `user:password@` would stand in the file, in /readyz's and the logs' account
        // of the URL, and in the Host header SWR gets.
        let with_credentials = [
            ("[upstream] url", Some(&self.upstream.url)),
            ("[iam] endpoint", self.iam.endpoint.as_ref()),
        ];
        for (setting, url) in with_credentials {
            if url
                .and_then(http::Uri::authority)
                .is_some_and(|a| a.as_str().contains('@'))
            {
                problems.push(format!(
                    "{setting} holds credentials (user:password@): a secret never stands in the file, and neither SWR nor IAM takes them from a URL"
                ));
            }
        }
        // Every request in flight may hold this much, an AK/SK one before its signature is
        // checked; the guarded bodies are a few KiB.
        if !(1..=MAX_BODY_BYTES).contains(&self.server.max_body_bytes) {
            problems.push(format!(
                "[server] max_body_bytes must be at least 1 and at most {MAX_BODY_BYTES} (16 MiB)"
            ));
        }
        // A zero limit would cut off every client that sends in two writes.
        for (setting, limit) in [
            ("[server] header_timeout", self.server.header_timeout),
            ("[server] request_timeout", self.server.request_timeout),
            ("[upstream] connect_timeout", self.upstream.connect_timeout),
            ("[upstream] timeout", self.upstream.timeout),
            ("[auth] failure_window", self.auth.failure_window),
        ] {
            if limit.is_zero() {
                problems.push(format!("{setting} must be longer than 0s"));
            }
        }
        match self.iam.method {
            IamMethod::TokenEnv if self.iam.token_env.is_none() => {
                problems.push("[iam] method = \"token_env\" needs token_env = \"VARIABLE\"".into())
            }
            IamMethod::TokenFile if self.iam.token_file.is_none() => {
                problems.push("[iam] method = \"token_file\" needs token_file = \"PATH\"".into())
            }
            IamMethod::Password | IamMethod::Agency => problems.extend(self.iam.login_problems()),
            _ => {}
        }
        if self.clients.is_empty() && !self.auth.allow_anonymous {
            problems.push(
                "no [[clients]] are configured and [auth] allow_anonymous is false: nobody could use the gateway".into(),
            );
        }
        if let Err(problem) = crate::redis_link::url(
            self.auth.replay_redis_url.as_deref(),
            self.auth.replay_redis_url_env.as_deref(),
            "[auth] replay_redis_url",
        ) {
            problems.push(problem);
        }
        let mut ids = std::collections::HashSet::new();
        for client in &self.clients {
            if !ids.insert(client.id.as_str()) {
                problems.push(format!("[[clients]] id {:?} appears twice", client.id));
            }
            if client.id.is_empty() || client.id.chars().any(char::is_control) {
                problems.push(format!(
                    "[[clients]] id {:?} must be a name: not empty, no control characters",
                    client.id
                ));
            }
            if client.id == "anonymous" {
                problems.push(
                    "[[clients]] id \"anonymous\" is reserved for unauthenticated requests".into(),
                );
            }
        }
        problems
    }
}

/// The line (from 1) of the key a problem names, or of its table when the key is not
/// written there (a default). Tables are found by their header lines, which is how
/// configs are written; a table written inline is not found, and the problem goes
/// without a line.
fn line_of(text: &str, problem: &str) -> Option<usize> {
    let (header, rest) = match problem.strip_prefix("[[") {
        Some(rest) => {
            let (table, rest) = rest.split_once("]]")?;
            (format!("[[{table}]]"), rest)
        }
        None => {
            let (table, rest) = problem.strip_prefix('[')?.split_once(']')?;
            (format!("[{table}]"), rest)
        }
    };
    let rest = rest.trim_start();
    // `[[clients]] "ci": …` names its entry by id.
    let (id, rest) = match rest.strip_prefix('"') {
        Some(quoted) => {
            let (id, rest) = quoted.split_once('"')?;
            (Some(id), rest)
        }
        None => (None, rest),
    };
    let key: String = rest
        .trim_start_matches([':', ' '])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    // `key = value # comment`: what the value's quotes hold, or its first word.
    let key_of = |line: &str| {
        let (k, v) = line.split_once('=')?;
        let v = v.trim();
        let value = match v.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next().unwrap_or_default(),
            None => v.split([' ', '#']).next().unwrap_or_default(),
        };
        Some((k.trim().to_owned(), value.to_owned()))
    };
    let mut block: Option<(usize, bool)> = None;
    let mut found = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            if let Some((start, true)) = block {
                return Some(found.unwrap_or(start));
            }
            let this = line.strip_prefix(header.as_str()).is_some_and(|rest| {
                let rest = rest.trim_start();
                rest.is_empty() || rest.starts_with('#')
            });
            block = this.then_some((n + 1, id.is_none()));
            found = None;
            continue;
        }
        let (Some((start, _)), Some((k, v))) = (block, key_of(line)) else {
            continue;
        };
        if let Some(id) = id {
            if k == "id" && v == id {
                block = Some((start, true));
            }
        }
        if k == key && found.is_none() {
            found = Some(n + 1);
        }
    }
    match block {
        Some((start, true)) => Some(found.unwrap_or(start)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_placed_on_the_line_of_its_key_or_table() {
        let text = "[server]\nlisten = \"x\"\n\n[upstream]\n# the SWR endpoint\nurl = \"ftp://x\"\n\n[[clients]]\nid = \"a\"\n\n[[clients]]   # the CI\nid = \"ci\" # runner\ngroups = []\napi_key_sha256 = \"zz\"\n[audit]\npath = \"-\"\n";
        let line = |problem: &str| line_of(text, problem);
        assert_eq!(line("[upstream] url \"ftp://x\" must be …"), Some(6));
        assert_eq!(
            line("[[clients]] \"ci\": api_key_sha256 must be …"),
            Some(14)
        );
        assert_eq!(
            line("[[clients]] \"a\": api_key_sha256 must be …"),
            Some(8),
            "not written: the entry"
        );
        assert_eq!(
            line("[server] max_body_bytes must be at least 1 and at most 16777216 (16 MiB)"),
            Some(1)
        );
        assert_eq!(line("[audit] path /x: …"), Some(16));
        assert_eq!(line("[iam] method needs …"), None, "no such table");
        assert_eq!(line("no [[clients]] are configured"), None);
    }

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"
[upstream]
url = "http://127.0.0.1:9000"
[iam]
method = "token_env"
token_env = "SWR_GATE_TOKEN"
[audit]
path = "audit.jsonl"
[[clients]]
id = "ci"
api_key_sha256 = "00"
"#;

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = Config::parse(MINIMAL, Path::new("/etc/swr-gate/gate.toml")).unwrap();
        assert_eq!(config.server.max_body_bytes, 65536);
        assert_eq!(config.server.header_timeout, Duration::from_secs(5));
        assert_eq!(config.upstream.unmatched, Unmatched::Reject);
        assert_eq!(
            config.resolve(Path::new("audit.jsonl")),
            Path::new("/etc/swr-gate/audit.jsonl")
        );
        assert!(!config.auth.allow_anonymous);
        assert!(config.problems().is_empty(), "{:?}", config.problems());
    }

    #[test]
    fn unknown_keys_are_all_named_with_their_lines() {
        let text = MINIMAL
            .replace("[audit]", "[audit]\nfsnyc = \"always\"")
            .replace("[server]", "[server]\nlisten_on = 1")
            + "\n[[clients]]\nid = \"a\"\ngroup = [\"x\"]\n\n[admn]\nlisten = \"x\"\n";
        let problems = Config::parse(&text, Path::new("gate.toml")).unwrap_err();
        let line = |n: usize| text.lines().nth(n - 1).unwrap_or_default();
        assert_eq!(problems.len(), 4, "{problems:?}");
        for (problem, (key, place)) in problems.iter().zip([
            ("listen_on", "in [server]"),
            ("fsnyc", "in [audit]"),
            ("group", "in [[clients]] entry 2"),
            ("admn", "at the top level"),
        ]) {
            let (at, rest) = problem
                .strip_prefix("gate.toml:")
                .and_then(|p| p.split_once(": "))
                .unwrap_or_else(|| panic!("{problem}"));
            assert_eq!(rest, format!("unknown key `{key}` {place}"));
            assert!(line(at.parse().unwrap()).contains(key), "{problem}");
        }

        // A wrong value stops the reading; the unknown keys before it are still named.
        let text = MINIMAL
            .replace("[server]", "[server]\nlisten_on = 1")
            .replace("[audit]", "[audit]\nfsync = 5");
        let problems = Config::parse(&text, Path::new("gate.toml")).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("listen_on"), "{problems:?}");
        assert!(problems[1].contains("fsync"), "{problems:?}");
    }

    #[test]
    fn password_and_agency_need_what_logging_in_takes() {
        let with_iam = |iam: &str| {
            let text = MINIMAL.replace(
                "method = \"token_env\"\ntoken_env = \"SWR_GATE_TOKEN\"",
                iam,
            );
            Config::parse(&text, Path::new("gate.toml"))
                .unwrap()
                .problems()
        };
        let complete = r#"method = "password"
endpoint = "https://iam.cn-north-4.myhuaweicloud.com"
user = "swr-gate"
domain = "acme"
password_env = "SWR_GATE_IAM_PASSWORD"
project = "cn-north-4""#;
        assert!(with_iam(complete).is_empty(), "{:?}", with_iam(complete));
        let agency = complete.replace("\"password\"", "\"agency\"");
        assert_eq!(
            with_iam(&agency),
            [
                "[iam] method = \"agency\" needs agency_name",
                "[iam] method = \"agency\" needs agency_domain (the account that made the agency)"
            ]
        );
        let problems = with_iam("method = \"password\"");
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems.iter().all(|p| p.contains("needs")), "{problems:?}");

        let clear = complete.replace(
            "https://iam.cn-north-4.myhuaweicloud.com",
            "http://iam.example",
        );
        assert!(with_iam(&clear)[0].contains("must be an https:// URL"));
        let loopback = complete.replace(
            "https://iam.cn-north-4.myhuaweicloud.com",
            "http://127.0.0.1:5000",
        );
        assert!(with_iam(&loopback).is_empty());
        let credentials = complete.replace("https://", "https://admin:secret@");
        assert_eq!(with_iam(&credentials).len(), 1);
        assert!(with_iam(&credentials)[0].starts_with("[iam] endpoint holds credentials"));
        let upstream = MINIMAL.replace(
            "http://127.0.0.1:9000",
            "http://admin:secret@127.0.0.1:9000",
        );
        let problems = Config::parse(&upstream, Path::new("gate.toml"))
            .unwrap()
            .problems();
        assert!(
            problems[0].starts_with("[upstream] url holds credentials"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("admin:secret"), "{problems:?}");
        let both = format!("{complete}\nproject_id = \"0123\"\nproject_domain = \"acme\"");
        assert_eq!(
            with_iam(&both),
            ["[iam] give project or project_id, not both"]
        );
        let by_id = both.replace("project = \"cn-north-4\"\n", "");
        assert!(with_iam(&by_id)[0].contains("project_domain qualifies a project name"));
    }

    #[test]
    fn only_what_looks_like_a_variable_name_is_shown() {
        assert_eq!(
            variable_shown("SWR_GATE_IAM_PASSWORD"),
            "SWR_GATE_IAM_PASSWORD"
        );
        for pasted in [
            "hunter2",
            "1GXYZJw68LCPpuRlFQeaaH",
            "0123ABC",
            "",
            "A B",
            "Pa$$",
        ] {
            assert!(
                !variable_shown(pasted).contains(pasted) || pasted.is_empty(),
                "{pasted}"
            );
        }
    }

    #[test]
    fn bad_durations_say_what_is_expected() {
        let text = MINIMAL.replace("[upstream]", "[upstream]\ntimeout = \"soon\"");
        let problems = Config::parse(&text, Path::new("gate.toml")).unwrap_err();
        assert!(problems[0].contains("not a duration"), "{problems:?}");
        let text = MINIMAL.replace("[upstream]", "[upstream]\ntimeout = \"500000000000y\"");
        let problems = Config::parse(&text, Path::new("gate.toml")).unwrap_err();
        assert!(problems[0].contains("longer than a year"), "{problems:?}");
        let text = MINIMAL.replace("[upstream]", "[upstream]\ntimeout = \"1y\"");
        assert!(Config::parse(&text, Path::new("gate.toml")).is_ok());
    }
}
