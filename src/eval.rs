//! `swr-gate eval` and `swr-gate policy test`: one request through route, body, schema
//! and policy, as the gateway would decide it, with no network and no credentials.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use http::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::AuthMethod;
use crate::body;
use crate::config::{Config, PolicyMode, Unmatched};
use crate::error::GateError;
use crate::policy::{self, Context, Decision, Query};
use crate::route::{Param, Resolved, Target};
use crate::snapshot::Rules;

/// What is being asked, by whom.
#[derive(Debug, Clone)]
pub struct Trial {
    pub client: String,
    pub groups: Vec<String>,
    pub auth_method: AuthMethod,
    pub client_ip: IpAddr,
    pub asked: Asked,
    /// The body's bytes as a client sends them, parsed strictly as `serve` does.
    pub body: Option<Vec<u8>>,
    pub now: SystemTime,
}

/// The request: as sent (routed like any other), or an operation and its names directly.
#[derive(Debug, Clone)]
pub enum Asked {
    Path { method: String, path: String },
    Operation { operation: String, target: Target },
}

/// How one request fared.
#[derive(Debug)]
pub struct Outcome {
    /// What `eval` prints, stage by stage.
    pub report: String,
    /// The policy's decision, when the request got that far.
    pub decision: Option<Decision>,
    /// What the client would get instead of SWR's answer; `None`: forwarded.
    pub refusal: Option<GateError>,
}

/// Run a trial through the same stages as the pipeline. `Err` when the trial itself is
/// wrong (an operation the route table does not have).
pub fn run(config: &Config, rules: &Rules, trial: &Trial) -> Result<Outcome, String> {
    let mut report = String::new();
    let _ = match &trial.asked {
        Asked::Path { method, path } => writeln!(report, "request   {method} {path}"),
        Asked::Operation { operation, .. } => writeln!(report, "request   {operation}"),
    };
    let _ = writeln!(
        report,
        "client    {}  groups [{}]  auth_method {}  client_ip {}",
        trial.client,
        trial.groups.join(", "),
        policy::auth_method_name(trial.auth_method),
        trial.client_ip
    );
    let refused = |mut report: String, error: GateError| {
        let _ = writeln!(report, "answer    {}", answer_line(&error));
        Ok(Outcome {
            report,
            decision: None,
            refusal: Some(error),
        })
    };

    let (action, route, target) = match &trial.asked {
        Asked::Path { method, path } => {
            // As sent, like serve reads it: a lowercase `get` on a guarded path is not GET.
            let method = Method::from_bytes(method.as_bytes())
                .map_err(|_| format!("{method:?} is not an HTTP method"))?;
            let (path, query) = match path.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (path.as_str(), None),
            };
            match rules.routes.resolve(&method, path, query) {
                Err(error) => {
                    let _ = writeln!(report, "route     refused");
                    return refused(report, error);
                }
                Ok(Resolved::Guarded { route, target, .. }) => {
                    let operation = rules.routes.route(route).operation.clone();
                    (operation, Some(route), target)
                }
                Ok(Resolved::Unmatched { .. })
                    if config.upstream.unmatched == Unmatched::Reject =>
                {
                    let _ = writeln!(
                        report,
                        "route     no guarded route; [upstream] unmatched = \"reject\""
                    );
                    return refused(report, crate::route::unmatched(&method, path));
                }
                Ok(Resolved::Unmatched { .. }) => {
                    (policy::FORWARD.to_owned(), None, Target::default())
                }
            }
        }
        Asked::Operation { operation, target } if operation == policy::FORWARD => {
            // As serve asks: a forwarded request's context has no names.
            if *target != Target::default() {
                return Err(format!(
                    "{operation} takes no namespace, repository or access_domain"
                ));
            }
            (operation.clone(), None, Target::default())
        }
        Asked::Operation { operation, target } => {
            let route = rules
                .routes
                .routes()
                .iter()
                .position(|r| &r.operation == operation)
                .ok_or_else(|| format!("routes.toml has no operation {operation:?}"))?;
            // The names its path carries, no more and no fewer: a request for it has them.
            for param in [Param::Namespace, Param::Repository, Param::AccessDomain] {
                let carried = rules.routes.route(route).params().any(|p| p == param);
                match (carried, target.get(param).is_some()) {
                    (true, false) => return Err(format!("{operation} needs {}", param.name())),
                    (false, true) => return Err(format!("{operation} takes no {}", param.name())),
                    _ => {}
                }
            }
            // The names SWR's rules allow, as serve checks them in the path.
            let mut target = target.clone();
            if let Err(error) = target.validate() {
                let _ = writeln!(report, "route     {operation}: names refused");
                return refused(report, error);
            }
            (operation.clone(), Some(route), target)
        }
    };
    let _ = writeln!(report, "route     {action}{}", names(&target));

    let document = match route {
        None => None,
        Some(route) => {
            let document = match &trial.body {
                // As `serve` reads it: past `max_body_bytes` it is never parsed.
                Some(bytes) if bytes.len() > config.server.max_body_bytes => {
                    Err(body::too_large(config.server.max_body_bytes))
                }
                Some(bytes) => body::parse_strict(bytes),
                None => body::parse_strict(b""),
            };
            let document = match document {
                Ok(document) => document,
                Err(error) => {
                    let _ = writeln!(report, "body      refused");
                    return refused(report, error);
                }
            };
            if let Err(error) = rules.schemas[route].check(&action, &document) {
                let _ = writeln!(report, "schema    {} violation(s)", error.details.len());
                for v in &error.details {
                    let _ = writeln!(
                        report,
                        "  {:<10} {:<10} {}",
                        display_pointer(&v.pointer),
                        v.reason,
                        v.message
                    );
                }
                return refused(report, error);
            }
            let _ = writeln!(report, "schema    ok");
            Some(document)
        }
    };

    let context = match Context::new(
        &target,
        document.as_ref(),
        trial.client_ip,
        trial.auth_method,
        trial.now,
    ) {
        Ok(context) => context,
        Err(error) => {
            let _ = writeln!(report, "policy    cannot read the body");
            return refused(report, error);
        }
    };
    let query = Query {
        client: &trial.client,
        groups: &trial.groups,
        action: &action,
        context: &context,
    };
    let decision = match rules.policies.decide(&query) {
        Ok(decision) => decision,
        Err(error) => return refused(report, error),
    };
    let mode = match config.policy.mode {
        PolicyMode::Enforce => "enforce",
        PolicyMode::DryRun => "dry-run",
    };
    let verdict = if decision.allowed { "allow" } else { "deny" };
    let _ = writeln!(report, "policy    {verdict} (mode {mode})");
    let deciding = match decision.deciding.is_empty() {
        true if decision.allowed => vec!["(none)".to_owned()],
        true => vec!["(none: no permit matched)".to_owned()],
        false => decision
            .deciding
            .iter()
            .map(|id| about(rules, id))
            .collect(),
    };
    let _ = writeln!(report, "  deciding  {}", deciding.join("\n            "));
    let shadow: Vec<String> = decision
        .shadow
        .iter()
        .map(|s| {
            format!(
                "{} ({})",
                about(rules, &s.id),
                if s.forbid { "forbid" } else { "permit" }
            )
        })
        .collect();
    match shadow.is_empty() {
        true => {
            let _ = writeln!(report, "  shadow    (none matched)");
        }
        false => {
            let _ = writeln!(report, "  shadow    {}", shadow.join("\n            "));
            let with = if decision.allowed_with_shadow() {
                "allow"
            } else {
                "deny"
            };
            let _ = writeln!(
                report,
                "            with the shadow policies enforced: {with}"
            );
        }
    }
    for error in &decision.errors {
        let _ = writeln!(report, "  error     {}: {}", error.id, error.message);
    }
    let _ = writeln!(report, "  context");
    if let Ok(Value::Object(fields)) = serde_json::to_value(&context) {
        for (name, value) in fields {
            let value = match value {
                Value::Null => "absent".to_owned(),
                other => other.to_string(),
            };
            let _ = writeln!(report, "    {name:<17} {value}");
        }
    }

    let mut refusal = None;
    if decision.allowed {
        let _ = writeln!(report, "answer    forwarded to SWR");
    } else {
        let error = rules.policies.refusal(&query, &decision);
        match config.policy.mode {
            PolicyMode::Enforce => {
                let _ = writeln!(report, "answer    {}", answer_line(&error));
                refusal = Some(error);
            }
            PolicyMode::DryRun => {
                let _ = writeln!(
                    report,
                    "answer    forwarded to SWR (dry-run; enforced, it would be {})",
                    answer_line(&error)
                );
            }
        }
    }
    Ok(Outcome {
        report,
        decision: Some(decision),
        refusal,
    })
}

fn names(target: &Target) -> String {
    let mut text = String::new();
    for (name, value) in [
        ("namespace", &target.namespace),
        ("repository", &target.repository),
        ("access_domain", &target.access_domain),
    ] {
        if let Some(value) = value {
            let _ = write!(text, "  {name} {value}");
        }
    }
    text
}

fn display_pointer(pointer: &str) -> &str {
    if pointer.is_empty() {
        "/"
    } else {
        pointer
    }
}

fn about(rules: &Rules, id: &str) -> String {
    match rules.policies.describe(id) {
        Some((place, Some(message))) => format!("{id}  {place}  {message}"),
        Some((place, None)) => format!("{id}  {place}"),
        None => id.to_owned(),
    }
}

fn answer_line(error: &GateError) -> String {
    format!(
        "{} {} {}",
        error.kind.status().as_u16(),
        error.kind.code(),
        error.message
    )
}

/// Load the config and what decides requests, never the secrets or certificates.
/// The config and rules as `serve` would load them: a config `serve` refuses (a client id
/// twice, say) is refused here too, so that a green `policy test` means a gateway that
/// starts. The clients' secrets are not read: deciding needs only their groups.
fn load(config_path: &Path) -> Result<(Config, Rules), String> {
    let config = Config::load(config_path).map_err(|problems| problems.join("\n"))?;
    let mut problems: Vec<String> = config
        .problems()
        .into_iter()
        .map(|problem| config.locate(problem))
        .collect();
    match Rules::load(&config) {
        Ok(rules) if problems.is_empty() => Ok((config, rules)),
        Ok(_) => Err(problems.join("\n")),
        Err(more) => {
            problems.extend(more);
            Err(problems.join("\n"))
        }
    }
}

/// The groups of a configured client (`anonymous`: none, when anonymous access is on).
fn configured_groups(config: &Config, client: &str) -> Option<Vec<String>> {
    if client == "anonymous" && config.auth.allow_anonymous {
        return Some(Vec::new());
    }
    config
        .clients
        .iter()
        .find(|c| c.id == client)
        .map(|c| c.groups.clone())
}

/// `swr-gate eval`'s arguments, parsed by clap straight into this.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// The id of a client of the config (or "anonymous" when allow_anonymous is on).
    #[arg(long)]
    pub client: String,
    #[arg(long)]
    pub method: String,
    /// The request path, as a client sends it (with a query, if any).
    #[arg(long)]
    pub path: String,
    /// A file holding the request body.
    #[arg(long)]
    pub body: Option<PathBuf>,
    /// api_key, aksk, mtls or anonymous (default: api_key, or anonymous for "anonymous").
    #[arg(long, value_parser = parse_auth_method)]
    pub auth_method: Option<AuthMethod>,
    #[arg(long, default_value = "127.0.0.1")]
    pub client_ip: IpAddr,
}

fn parse_auth_method(name: &str) -> Result<AuthMethod, String> {
    policy::auth_method_from_name(name)
        .ok_or_else(|| format!("{name:?} is not api_key, aksk, mtls or anonymous"))
}

/// The full decision for one request, as text. `Ok((report, forwarded))`; `Err` for a
/// config that does not load or arguments that make no sense.
pub fn eval(args: &EvalArgs) -> Result<(String, bool), String> {
    let (config, rules) = load(&args.config)?;
    let groups = configured_groups(&config, &args.client).ok_or_else(|| {
        format!(
            "{}: no [[clients]] entry has id {:?}",
            args.config.display(),
            args.client
        )
    })?;
    let body = match &args.body {
        Some(path) => Some(
            read_body(path, config.server.max_body_bytes)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let anonymous = args.client == "anonymous";
    let trial = Trial {
        client: args.client.clone(),
        groups,
        auth_method: match (args.auth_method, anonymous) {
            (Some(method), _) => method,
            (None, true) => AuthMethod::Anonymous,
            (None, false) => AuthMethod::ApiKey,
        },
        client_ip: args.client_ip.to_canonical(),
        asked: Asked::Path {
            method: args.method.clone(),
            path: args.path.clone(),
        },
        body,
        now: SystemTime::now(),
    };
    let outcome = run(&config, &rules, &trial)?;
    Ok((outcome.report, outcome.refusal.is_none()))
}

/// A file of policy test cases (`policies/tests/*.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// The time every case of the file is decided at (RFC 3339), so deadlines are fixed.
    now: Option<String>,
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    client: String,
    /// The client's groups; without it, those of the [[clients]] entry.
    groups: Option<Vec<String>>,
    auth_method: Option<String>,
    client_ip: Option<IpAddr>,
    now: Option<String>,
    operation: Option<String>,
    namespace: Option<String>,
    repository: Option<String>,
    access_domain: Option<String>,
    method: Option<String>,
    path: Option<String>,
    /// A JSON document as TOML (table or array), or JSON text in a string.
    body: Option<toml::Value>,
    expect: Expect,
    /// The deciding policies, exactly (in any order).
    policies: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// A body file, up to one byte past `max_body_bytes`: enough to tell it is too large,
/// as `serve` does, without reading a huge file (or `/dev/zero`) whole. `/dev/stdin` works.
fn read_body(path: &Path, max_body_bytes: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max_body_bytes as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Run test cases: the files given, or every `tests/*.toml` of the policy directory.
/// `Ok((report, all passed))`; `Err` when the config, the policies or a case file do not load.
pub fn policy_test(config_path: &Path, files: &[PathBuf]) -> Result<(String, bool), String> {
    let (config, rules) = load(config_path)?;
    let files = match files {
        [] => {
            let dir = config.resolve(&config.policy.dir).join("tests");
            let (found, _hidden) = crate::files::with_extension(&dir, "toml")
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            found
        }
        given => given.to_vec(),
    };
    let mut report = String::new();
    let (mut passed, mut failed) = (0, 0);
    for path in &files {
        let text =
            crate::files::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: CaseFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        for case in &file.case {
            // A case that cannot be run (a time that is none, a client with no groups, an
            // operation no route has, a request refused before the policy is asked) is a
            // mistake in the file, not a policy failing it.
            let decision = trial_of(&config, file.now.as_deref(), case)
                .and_then(|trial| run(&config, &rules, &trial))
                .and_then(decided)
                .map_err(|why| format!("{}: case {:?}: {why}", path.display(), case.name))?;
            match judge(&decision, case) {
                Ok(()) => {
                    passed += 1;
                    let _ = writeln!(report, "pass  {name}: {}", case.name);
                }
                Err(why) => {
                    failed += 1;
                    let _ = writeln!(report, "FAIL  {name}: {}: {why}", case.name);
                }
            }
        }
    }
    let _ = writeln!(report, "{passed} passed, {failed} failed");
    Ok((report, failed == 0 && passed > 0))
}

/// The policy's decision on a case's request; a request refused before the policy (its
/// path, its body or the schema) tests no policy.
fn decided(outcome: Outcome) -> Result<Decision, String> {
    outcome.decision.ok_or_else(|| {
        let refusal = outcome
            .refusal
            .as_ref()
            .map(answer_line)
            .unwrap_or_default();
        format!("refused before the policy: {refusal}")
    })
}

/// Whether the policy's decision on a case is what the case expects.
fn judge(decision: &Decision, case: &Case) -> Result<(), String> {
    let got = if decision.allowed {
        Expect::Allow
    } else {
        Expect::Deny
    };
    let ids = |ids: &[String]| match ids {
        [] => "no policy".to_owned(),
        ids => ids.join(", "),
    };
    if got != case.expect {
        return Err(format!(
            "expected {}, got {} by {}",
            verdict(case.expect),
            verdict(got),
            ids(&decision.deciding)
        ));
    }
    if let Some(expected) = &case.policies {
        let mut expected = expected.clone();
        expected.sort();
        if expected != decision.deciding {
            return Err(format!(
                "{} as expected, but by {} rather than {}",
                verdict(got),
                ids(&decision.deciding),
                ids(&expected)
            ));
        }
    }
    Ok(())
}

fn verdict(expect: Expect) -> &'static str {
    match expect {
        Expect::Allow => "allow",
        Expect::Deny => "deny",
    }
}

fn trial_of(config: &Config, file_now: Option<&str>, case: &Case) -> Result<Trial, String> {
    let groups = match &case.groups {
        Some(groups) => groups.clone(),
        None => configured_groups(config, &case.client).ok_or_else(|| {
            format!(
                "client {:?} is not in [[clients]]: give its groups",
                case.client
            )
        })?,
    };
    let auth_method = match case.auth_method.as_deref() {
        Some(name) => policy::auth_method_from_name(name).ok_or_else(|| {
            format!("auth_method {name:?} is not api_key, aksk, mtls or anonymous")
        })?,
        None if case.client == "anonymous" => AuthMethod::Anonymous,
        None => AuthMethod::ApiKey,
    };
    let now = match case.now.as_deref().or(file_now) {
        Some(text) => policy::parse_rfc3339_instant(text)
            .ok_or_else(|| format!("now = {text:?} is not an RFC 3339 time"))?,
        None => SystemTime::now(),
    };
    let asked = match (&case.operation, &case.method, &case.path) {
        (Some(operation), None, None) => Asked::Operation {
            operation: operation.clone(),
            target: Target {
                namespace: case.namespace.clone(),
                repository: case.repository.clone(),
                access_domain: case.access_domain.clone(),
            },
        },
        (None, Some(method), Some(path)) => Asked::Path {
            method: method.clone(),
            path: path.clone(),
        },
        _ => return Err(
            "give either operation (with namespace, repository, access_domain) or method and path"
                .into(),
        ),
    };
    let body = match &case.body {
        None => None,
        Some(toml::Value::String(json)) => Some(json.clone().into_bytes()),
        // Written out as JSON and read back as `serve` reads a body, so that `auth = 7.0`
        // is the 7 it is for a client.
        Some(value) => Some(serde_json::to_vec(value).map_err(|e| format!("body: {e}"))?),
    };
    Ok(Trial {
        client: case.client.clone(),
        groups,
        auth_method,
        client_ip: case
            .client_ip
            .map_or([127, 0, 0, 1].into(), |ip| ip.to_canonical()),
        asked,
        body,
        now,
    })
}
