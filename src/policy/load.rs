//! Reading the policy directory: parse each file, validate every policy against the
//! schema, and work out what each action needs, so that a mistake is a load error
//! naming its file and line, never a silent deny at request time.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::SystemTime;

use cedar_policy::{
    ActionConstraint, Authorizer, Entities, EntityUid, Policy, PolicyId, PolicySet, Schema,
    ValidationMode, Validator,
};
use miette::Diagnostic;
use serde_json::Value;

use super::{key, About, Context, ForAction, Known, Policies, Query, Types, FORWARD, SCHEMA_FILE};
use crate::auth::AuthMethod;
use crate::route::Target;

/// A file's name (as problems should show it) and text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    fn read(path: &Path) -> Result<Source, String> {
        crate::files::read_to_string(path)
            .map(|text| Source {
                name: path.display().to_string(),
                text,
            })
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
        crate::files::line_at(&self.text, offset)
    }

    fn column_of(&self, offset: usize) -> usize {
        self.text.get(..offset).map_or(1, |before| {
            before.len() - before.rfind('\n').map_or(0, |newline| newline + 1) + 1
        })
    }

    /// `file:line: message`, with the diagnostic's help when it has one.
    fn at(&self, offset: Option<usize>, message: &str, help: Option<String>) -> String {
        let place = match offset {
            Some(offset) => format!("{}:{}", self.name, self.line_of(offset)),
            None => self.name.clone(),
        };
        match help {
            Some(help) => format!("{place}: {message} ({help})"),
            None => format!("{place}: {message}"),
        }
    }

    fn diagnostic(&self, diagnostic: &dyn Diagnostic, fallback: Option<usize>) -> String {
        let offset = diagnostic
            .labels()
            .and_then(|mut labels| labels.next())
            .map(|label| label.offset())
            .or(fallback);
        self.at(
            offset,
            &diagnostic.to_string(),
            diagnostic.help().map(|h| h.to_string()),
        )
    }
}

impl Policies {
    /// Load `swr.cedarschema` and every `*.cedar` of `dir`. On failure, every problem
    /// found, each with its file and line.
    pub fn load(dir: &Path, known: &Known) -> Result<Policies, Vec<String>> {
        let schema = Source::read(&dir.join(SCHEMA_FILE)).map_err(|p| vec![p])?;
        let (paths, hidden) = crate::files::with_extension(dir, "cedar")
            .map_err(|e| vec![format!("{}: {e}", dir.display())])?;
        // Said aloud, since a hidden forbid left behind would otherwise stop applying
        // unnoticed; an editor's lock (`.#grants.cedar`) comes and goes with every edit.
        let skipped = hidden
            .iter()
            .filter(|path| {
                !path
                    .file_name()
                    .is_some_and(|n| n.as_encoded_bytes().starts_with(b".#"))
            })
            .map(|path| {
                format!(
                    "{}: a hidden file is no policy, and is not loaded",
                    path.display()
                )
            });
        let mut files = Vec::new();
        let mut problems = Vec::new();
        for path in paths {
            match Source::read(&path) {
                Ok(source) => files.push(source),
                Err(problem) => problems.push(problem),
            }
        }
        let policies = Policies::from_sources(&schema, files, known);
        match policies {
            Ok(mut policies) if problems.is_empty() => {
                policies.warnings.extend(skipped);
                Ok(policies)
            }
            Ok(_) => Err(problems),
            Err(more) => {
                problems.extend(more);
                Err(problems)
            }
        }
    }

    /// Parse, check and validate a schema and policy files given as text.
    pub fn from_sources(
        schema_source: &Source,
        files: Vec<Source>,
        known: &Known,
    ) -> Result<Policies, Vec<String>> {
        let types = Types::new().map_err(|p| vec![p])?;
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let schema = match Schema::from_cedarschema_str(&schema_source.text) {
            Ok((schema, schema_warnings)) => {
                warnings.extend(schema_warnings.map(|w| schema_source.diagnostic(&w, None)));
                Some(schema)
            }
            Err(error) => {
                problems.push(schema_source.diagnostic(&error, None));
                None
            }
        };

        let read = Read::files(&files, &mut problems);
        let Some(schema) = schema else {
            return Err(problems);
        };
        read.validate(&schema, &files, &mut problems, &mut warnings);
        let Read {
            enforced,
            shadow,
            about,
            ..
        } = read;

        let actions = schema.action_entities().unwrap_or_else(|error| {
            problems.push(format!("{}: {error}", schema_source.name));
            Entities::empty()
        });
        let grouped_actions = actions
            .iter()
            .filter(|a| {
                actions
                    .ancestors(&a.uid())
                    .is_some_and(|mut up| up.next().is_some())
            })
            .cloned()
            .collect();
        let by_action = by_action(&types, known, &enforced, &shadow, &actions, &mut problems);
        let policies = Policies {
            enforced,
            shadow,
            by_action,
            grouped_actions,
            ips: Mutex::new(HashMap::new()),
            entity_stores: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
            about,
            files,
            warnings,
            types,
            authorizer: Authorizer::new(),
        };
        problems.extend(policies.check_schema_fits(&schema, schema_source, known));
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut policies = policies;
        let names = policies.warn_about_names(known);
        policies.warnings.extend(names);
        if policies.enforced.is_empty() {
            policies
                .warnings
                .push("no enforced policies: every request is denied".into());
        }
        Ok(policies)
    }

    /// Every action the gateway can ask about must be declared, and the request it builds
    /// must fit the schema: a mismatch found here would otherwise be a policy that
    /// silently never matches.
    fn check_schema_fits(&self, schema: &Schema, source: &Source, known: &Known) -> Vec<String> {
        let mut problems = Vec::new();
        let target = Target {
            namespace: Some("team-a".into()),
            repository: Some("group/app".into()),
            access_domain: Some("partner".into()),
        };
        let now = SystemTime::now();
        let sharing = serde_json::json!({"permit": "read", "deadline": "2030-01-01T00:00:00Z"});
        let samples = [
            Context::new(
                &target,
                None,
                [127, 0, 0, 1].into(),
                AuthMethod::ApiKey,
                now,
            ),
            Context::new(
                &target,
                Some(&sharing),
                [127, 0, 0, 1].into(),
                AuthMethod::ApiKey,
                now,
            ),
        ];
        let forward = Context::new(
            &Target::default(),
            None,
            [127, 0, 0, 1].into(),
            AuthMethod::ApiKey,
            now,
        );
        let operations = known
            .operations
            .iter()
            .map(|op| (op.as_str(), &samples[..]));
        let forwards = std::iter::once((FORWARD, std::slice::from_ref(&forward)));
        for (action, contexts) in operations.chain(forwards) {
            let declared = schema
                .actions()
                .any(|a| a.type_name() == &self.types.action && a.id().unescaped() == action);
            if !declared {
                problems.push(format!(
                    "{}: no action Swr::Action::{action:?} is declared, but swr-gate asks about it{}",
                    source.name,
                    if action == FORWARD { "" } else { " (routes.toml)" }
                ));
                continue;
            }
            for context in contexts.iter().flatten() {
                let query = Query {
                    client: "sample",
                    groups: &[],
                    action,
                    context,
                };
                if let Err(error) = self.request(&query, None, Some(schema)) {
                    problems.push(format!(
                        "{}: the request swr-gate builds for {action} does not fit the schema: {error}",
                        source.name
                    ));
                    break;
                }
            }
        }
        problems
    }

    /// Policies naming a group, client or action that nothing in the config has.
    fn warn_about_names(&self, known: &Known) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut policies: Vec<_> = self
            .enforced
            .policies()
            .chain(self.shadow.policies())
            .collect();
        policies.sort_by_key(|p| self.about.get(key(p.id())).map(|a| (a.file, a.offset)));
        for policy in policies {
            let id = policy.id().to_string();
            let Some(about) = self.about.get(&id) else {
                continue;
            };
            let source = &self.files[about.file];
            let mut seen = HashSet::new();
            for uid in policy.entity_literals() {
                let name = uid.id().unescaped().to_owned();
                let kind = uid.type_name();
                let unknown = if kind == &self.types.group {
                    (!known.groups.contains(&name))
                        .then_some("no [[clients]] entry is in that group")
                } else if kind == &self.types.client {
                    (!known.clients.contains(&name)).then_some("[[clients]] has no such client")
                } else if kind == &self.types.action {
                    (name != FORWARD && !known.operations.contains(&name))
                        .then_some("routes.toml has no such operation")
                } else {
                    None
                };
                if let Some(what) = unknown {
                    if seen.insert(uid.to_string()) {
                        warnings.push(source.at(
                            Some(about.offset),
                            &format!("policy {id} names {uid}, but {what}: that part of the policy can never apply"),
                            None,
                        ));
                    }
                }
            }
        }
        warnings
    }
}

/// The policy files read: what is enforced, what is shadow, and, to validate, every
/// policy that parses, also one refused for its @id.
struct Read {
    enforced: PolicySet,
    shadow: PolicySet,
    checked: PolicySet,
    /// File and offset of each policy of `checked`, by the id it is checked under.
    places: HashMap<String, (usize, usize)>,
    about: HashMap<String, About>,
}

impl Read {
    /// Parse every file; a policy that cannot be taken (no @id, an @id used before, a
    /// template) is a problem and is left out of the sets.
    fn files(files: &[Source], problems: &mut Vec<String>) -> Read {
        let mut enforced = PolicySet::new();
        let mut shadow = PolicySet::new();
        // Every policy that parses is validated, also one refused for its @id, so that one
        // problem does not hide another: each under an id of its own, placed by file and
        // offset.
        let mut checked = PolicySet::new();
        let mut places: HashMap<String, (usize, usize)> = HashMap::new();
        let mut about: HashMap<String, About> = HashMap::new();
        for (file, source) in files.iter().enumerate() {
            let set = match PolicySet::from_str(&source.text) {
                Ok(set) => set,
                Err(errors) => {
                    problems.extend(errors.iter().map(|e| source.diagnostic(e, None)));
                    continue;
                }
            };
            for template in set.templates() {
                let offset = source.text.find(&template.to_cedar()).unwrap_or(0);
                problems.push(source.at(
                    Some(offset),
                    "templates (?principal, ?resource) are not supported: write static policies",
                    None,
                ));
            }
            // The parser numbers policies in file order (policy0, policy1, ...); each text
            // is looked for after the previous one, so two identical policies get their
            // own lines.
            let mut parsed: Vec<_> = set.policies().collect();
            parsed.sort_by_key(|p| {
                key(p.id())
                    .trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(usize::MAX)
            });
            let mut cursor = 0;
            for policy in parsed {
                let offset = policy
                    .to_cedar()
                    .and_then(|text| {
                        let found = source.text.get(cursor..)?.find(&text)? + cursor;
                        cursor = found + text.len();
                        Some(found)
                    })
                    .unwrap_or(cursor);
                let named = policy.annotation("id").filter(|id| !id.trim().is_empty());
                let checked_as = match named {
                    Some(id) if !about.contains_key(id) => id.to_owned(),
                    // Validation messages name the policy by this id, so it says where
                    // the policy is; a real @id spelled the same is past believing.
                    _ => format!(
                        "{}:{}:{} (without a usable @id)",
                        source.name,
                        source.line_of(offset),
                        source.column_of(offset)
                    ),
                };
                if checked
                    .add(policy.new_id(PolicyId::new(&checked_as)))
                    .is_ok()
                {
                    places.insert(checked_as, (file, offset));
                }
                let id = match named {
                    Some(id) => id.to_owned(),
                    _ => {
                        problems.push(source.at(
                            Some(offset),
                            "policy has no @id(\"...\"): every policy needs one, denials and audit records name it",
                            None,
                        ));
                        continue;
                    }
                };
                if let Some(why) = unusable_id(&id) {
                    problems.push(source.at(Some(offset), &format!("@id({id:?}) {why}"), None));
                    continue;
                }
                if let Some(first) = about.get(&id) {
                    let file = &files[first.file];
                    let line = file.line_of(first.offset);
                    problems.push(source.at(
                        Some(offset),
                        &format!("@id({id:?}) is already used at {}:{line}", file.name),
                        None,
                    ));
                    continue;
                }
                let is_shadow = policy.annotation("shadow").is_some();
                let policy = policy.new_id(PolicyId::new(&id));
                let set = if is_shadow {
                    &mut shadow
                } else {
                    &mut enforced
                };
                if let Err(error) = set.add(policy.clone()) {
                    problems.push(source.at(Some(offset), &error.to_string(), None));
                    continue;
                }
                about.insert(
                    id,
                    About {
                        file,
                        offset,
                        effect: policy.effect(),
                        message: policy.annotation("message").map(str::to_owned),
                    },
                );
            }
        }
        Read {
            enforced,
            shadow,
            checked,
            places,
            about,
        }
    }

    /// Validate every policy against the schema; each mistake once, placed by file and line.
    fn validate(
        &self,
        schema: &Schema,
        files: &[Source],
        problems: &mut Vec<String>,
        warnings: &mut Vec<String>,
    ) {
        let place = |id: &PolicyId| {
            let &(file, offset) = self.places.get(key(id))?;
            Some((&files[file], offset))
        };
        let validation =
            Validator::new(schema.clone()).validate(&self.checked, ValidationMode::Strict);
        // The validator reports a mistake once per action it applies to; once is enough.
        let mut seen = HashSet::new();
        for error in validation.validation_errors() {
            if let Some((source, offset)) = place(error.policy_id()) {
                let problem = source.diagnostic(error, Some(offset));
                if seen.insert(dedup_key(error, &problem)) {
                    problems.push(problem);
                }
            }
        }
        for warning in validation.validation_warnings() {
            if let Some((source, offset)) = place(warning.policy_id()) {
                let text = source.diagnostic(warning, Some(offset));
                if seen.insert(dedup_key(warning, &text)) {
                    warnings.push(text);
                }
            }
        }
    }
}

/// For each action the gateway asks about, the policies that may apply to it and what of
/// the context they read.
fn by_action(
    types: &Types,
    known: &Known,
    enforced: &PolicySet,
    shadow: &PolicySet,
    actions: &Entities,
    problems: &mut Vec<String>,
) -> HashMap<String, ForAction> {
    let mut by_action = HashMap::new();
    for action in known.operations.iter().map(String::as_str).chain([FORWARD]) {
        let uid = Types::uid(&types.action, action);
        let sets = subset(enforced, &uid, actions)
            .and_then(|enforced| subset(shadow, &uid, actions).map(|shadow| (enforced, shadow)));
        match sets {
            Ok((enforced, shadow)) => {
                let reads = context_reads(enforced.policies().chain(shadow.policies()));
                let sets = ForAction {
                    enforced,
                    shadow,
                    reads,
                };
                by_action.insert(action.to_owned(), sets);
            }
            Err(error) => problems.push(error),
        }
    }
    by_action
}

/// The context attributes `policies` read (`context.x`, `context has x`), or `None` when
/// one of them uses `context` some other way, or cannot be read as JSON: then all are sent.
fn context_reads<'a>(policies: impl Iterator<Item = &'a Policy>) -> Option<BTreeSet<String>> {
    let mut reads = BTreeSet::new();
    for policy in policies {
        let json = policy.to_json().ok()?;
        if !collect_reads(&json, &mut reads) {
            return None;
        }
    }
    Some(reads)
}

/// Walk a policy's JSON form; false on a use of `context` that is not an attribute.
fn collect_reads(node: &Value, reads: &mut BTreeSet<String>) -> bool {
    match node {
        Value::Object(map) => map.iter().all(|(key, child)| {
            if key == "Var" && child == "context" {
                return false;
            }
            let of_context = matches!(key.as_str(), "." | "has")
                && child.get("left") == Some(&serde_json::json!({"Var": "context"}));
            if !of_context {
                return collect_reads(child, reads);
            }
            let attr = match child.get("attr") {
                Some(Value::String(attr)) => Some(attr.as_str()),
                Some(Value::Array(path)) => path.first().and_then(Value::as_str),
                _ => None,
            };
            attr.map(|attr| reads.insert(attr.to_owned())).is_some()
        }),
        Value::Array(items) => items.iter().all(|item| collect_reads(item, reads)),
        _ => true,
    }
}

/// The policies of `set` whose action scope can match `action`.
fn subset(set: &PolicySet, action: &EntityUid, actions: &Entities) -> Result<PolicySet, String> {
    let mut subset = PolicySet::new();
    for policy in set.policies().filter(|p| may_apply(p, action, actions)) {
        subset.add(policy.clone()).map_err(|e| e.to_string())?;
    }
    Ok(subset)
}

fn may_apply(policy: &Policy, action: &EntityUid, actions: &Entities) -> bool {
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => &uid == action,
        ActionConstraint::In(uids) => uids
            .iter()
            .any(|uid| uid == action || actions.is_ancestor_of(uid, action)),
    }
}

/// The key that makes a diagnostic repeated per action count once: its place and help.
fn dedup_key(diagnostic: &dyn Diagnostic, rendered: &str) -> String {
    let place = rendered.split(": ").next().unwrap_or_default();
    format!(
        "{place}|{}",
        diagnostic
            .help()
            .map(|h| h.to_string())
            .unwrap_or_else(|| diagnostic.to_string())
    )
}

/// Why an @id cannot name a policy in denials and audit records, which list ids joined by
/// ", " and mark shadow matches `shadow:<id>`: an id that reads as two, or as a shadow
/// match, would make a record say another policy decided.
fn unusable_id(id: &str) -> Option<&'static str> {
    if id.starts_with(super::SHADOW_MARKER) {
        Some("starts with \"shadow:\", which marks shadow matches in audit records")
    } else if id.contains(',') || id.chars().any(char::is_control) {
        Some("holds a comma or a control character: denials list ids separated by commas")
    } else if id.trim() != id {
        Some("starts or ends with white space")
    } else {
        None
    }
}
