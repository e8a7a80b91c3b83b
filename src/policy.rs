//! Local policy in Cedar (contract §6): may this client make this request?
//!
//! Policies are `policies/*.cedar`, validated in strict mode against
//! `policies/swr.cedarschema` when they are loaded, so a misspelt attribute or action is
//! a load error naming its file and line, not a silent deny at request time. A policy
//! annotated `@shadow` is evaluated and reported but never changes a decision: enforced
//! and shadow policies are two sets, each evaluated on its own.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::hash::Hash;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::{
    ActionConstraint, AuthorizationError, Authorizer, Context as CedarContext,
    Decision as CedarDecision, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    Policy, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::Serialize;
use serde_json::Value;

use crate::auth::AuthMethod;
use crate::error::{Detail, ErrorKind, GateError};
use crate::route::Target;

/// The action of requests forwarded without a guarded route (`unmatched = "forward"`).
pub const FORWARD: &str = "forward";

/// Marks a shadow policy in the audit record's `policies`: `shadow:<id>`.
pub const SHADOW_MARKER: &str = "shadow:";

/// The policy schema, in the policy directory.
pub const SCHEMA_FILE: &str = "swr.cedarschema";

/// The id of the resource of requests that name no repository: `Swr::Api::"swr"`.
const API: &str = "swr";

/// Entries each cache (addresses, entity stores, decisions) keeps before starting over.
const CACHE: usize = 4096;

/// Names the rest of the configuration defines, to warn about policies that name others
/// and so can never apply to them.
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub clients: Vec<String>,
    pub groups: Vec<String>,
    /// The route table's operations; `forward` is always known.
    pub operations: Vec<String>,
}

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

    fn line_of(&self, offset: usize) -> usize {
        self.text
            .get(..offset)
            .map_or(1, |before| before.matches('\n').count() + 1)
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

/// Where a policy was written and what it says, for denials and `eval`.
#[derive(Debug, Clone)]
struct About {
    file: usize,
    offset: usize,
    effect: Effect,
    /// The `@message("...")` annotation: what a denial tells the client.
    message: Option<String>,
}

/// The entity types of the schema, parsed once.
#[derive(Debug, Clone)]
struct Types {
    client: EntityTypeName,
    group: EntityTypeName,
    namespace: EntityTypeName,
    repository: EntityTypeName,
    api: EntityTypeName,
    action: EntityTypeName,
}

impl Types {
    fn new() -> Result<Types, String> {
        let name = |text: &str| {
            EntityTypeName::from_str(text).map_err(|e| format!("entity type {text}: {e}"))
        };
        Ok(Types {
            client: name("Swr::Client")?,
            group: name("Swr::Group")?,
            namespace: name("Swr::Namespace")?,
            repository: name("Swr::Repository")?,
            api: name("Swr::Api")?,
            action: name("Swr::Action")?,
        })
    }

    fn uid(kind: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
    }
}

/// The loaded, validated policy set.
#[derive(Debug)]
pub struct Policies {
    enforced: PolicySet,
    shadow: PolicySet,
    /// What each action the gateway asks about needs, worked out once.
    by_action: HashMap<String, ForAction>,
    /// The action entities that are in an action group, for `action in <group>`; the
    /// others need no entity.
    grouped_actions: Vec<Entity>,
    /// `ip("...")` by client address: making one parses the function's name, which
    /// costs more than the whole rest of the context.
    ips: Mutex<HashMap<IpAddr, RestrictedExpression>>,
    /// The entities of a request by client, groups and repository: Cedar computes their
    /// transitive closure when they are stored, which costs more than deciding, and a
    /// client keeps asking about the same repositories.
    entity_stores: Mutex<HashMap<String, Arc<Entities>>>,
    /// Decisions by everything they depend on ([`DecisionInput`]): the same client
    /// sending the same kind of grant again is the common case, and Cedar re-evaluating
    /// it costs more than everything else the gateway does for a request.
    decisions: Mutex<HashMap<String, Decision>>,
    about: HashMap<String, About>,
    files: Vec<Source>,
    warnings: Vec<String>,
    types: Types,
    authorizer: Authorizer,
}

/// The policies that can apply to one action, and what of the context they read.
/// Cedar evaluates every policy of a set it is given, and building the context costs in
/// proportion to its size, while most rules are about one action and a few attributes.
#[derive(Debug)]
struct ForAction {
    enforced: PolicySet,
    shadow: PolicySet,
    /// The context attributes these policies read; `None`: all of them.
    reads: Option<BTreeSet<String>>,
}

/// One request as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub client: &'a str,
    pub groups: &'a [String],
    /// An operation of the route table, or [`FORWARD`].
    pub action: &'a str,
    pub context: &'a Context,
}

/// A shadow policy that matched: what it would have done, had it been enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowMatch {
    pub id: String,
    pub forbid: bool,
}

/// A policy that could not be evaluated for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub id: String,
    pub message: String,
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The enforced policies that decided, sorted: the permits that matched when allowed;
    /// when denied, the forbids that matched (empty when no permit matched).
    pub deciding: Vec<String>,
    pub shadow: Vec<ShadowMatch>,
    pub errors: Vec<PolicyError>,
}

impl Decision {
    /// The audit record's `policies`: the deciding ids, then `shadow:<id>` for each shadow
    /// policy that matched.
    pub fn audit_ids(&self) -> Vec<String> {
        self.deciding
            .iter()
            .cloned()
            .chain(
                self.shadow
                    .iter()
                    .map(|s| format!("{SHADOW_MARKER}{}", s.id)),
            )
            .collect()
    }

    /// What the decision would be were the shadow policies enforced too.
    pub fn allowed_with_shadow(&self) -> bool {
        if self.shadow.iter().any(|s| s.forbid) {
            return false;
        }
        // Denied with deciding policies means a forbid matched: no permit undoes that.
        self.allowed || (self.deciding.is_empty() && self.shadow.iter().any(|s| !s.forbid))
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

    /// Problems that do not stop loading: policies that can never apply, an empty set.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// `file:line` of a policy, and its `@message`.
    pub fn describe(&self, id: &str) -> Option<(String, Option<&str>)> {
        self.about.get(id).map(|about| {
            let source = &self.files[about.file];
            (
                format!("{}:{}", source.name, source.line_of(about.offset)),
                about.message.as_deref(),
            )
        })
    }

    /// Decide one request: the enforced set decides, the shadow set is only reported.
    pub fn decide(&self, query: &Query) -> Result<Decision, GateError> {
        let (enforced, shadow, reads) = match self.by_action.get(query.action) {
            Some(sets) => (&sets.enforced, &sets.shadow, sets.reads.as_ref()),
            None => (&self.enforced, &self.shadow, None),
        };
        let input = DecisionInput { query, reads };
        let decided = match serde_json::to_string(&input) {
            Ok(key) => cached(&self.decisions, key, || {
                self.evaluate(query, reads, enforced, shadow)
            }),
            Err(error) => Err(error.to_string()),
        };
        decided.map_err(|e| {
            GateError::new(
                ErrorKind::Internal,
                format!("the policy request could not be built: {e}"),
            )
        })
    }

    fn evaluate(
        &self,
        query: &Query,
        reads: Option<&BTreeSet<String>>,
        enforced: &PolicySet,
        shadow: &PolicySet,
    ) -> Result<Decision, String> {
        let request = self.request(query, reads, None)?;
        let entities = self.entities(query)?;

        let response = self.authorizer.is_authorized(&request, enforced, &entities);
        let mut allowed = response.decision() == CedarDecision::Allow;
        let mut deciding: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| key(id).to_owned())
            .collect();
        let mut errors = policy_errors(response.diagnostics().errors());
        // Cedar skips a policy it cannot evaluate; a forbid that cannot say no still does.
        let failed_forbids: Vec<String> = errors
            .iter()
            .filter(|e| {
                self.about
                    .get(&e.id)
                    .is_some_and(|a| a.effect == Effect::Forbid)
            })
            .map(|e| e.id.clone())
            .collect();
        if !failed_forbids.is_empty() {
            if allowed {
                deciding.clear();
                allowed = false;
            }
            deciding.extend(failed_forbids);
        }
        deciding.sort();
        deciding.dedup();

        let mut matched = Vec::new();
        if !shadow.is_empty() {
            let response = self.authorizer.is_authorized(&request, shadow, &entities);
            matched = response
                .diagnostics()
                .reason()
                .map(|id| ShadowMatch {
                    id: key(id).to_owned(),
                    forbid: self
                        .about
                        .get(key(id))
                        .is_some_and(|a| a.effect == Effect::Forbid),
                })
                .collect();
            matched.sort_by(|a, b| a.id.cmp(&b.id));
            errors.extend(policy_errors(response.diagnostics().errors()));
        }
        Ok(Decision {
            allowed,
            deciding,
            shadow: matched,
            errors,
        })
    }

    /// The 403 for a denial, naming the policies that decided it.
    pub fn refusal(&self, query: &Query, decision: &Decision) -> GateError {
        let details: Vec<Detail> = decision
            .deciding
            .iter()
            .map(|id| {
                let error = decision.errors.iter().find(|e| &e.id == id);
                let message = match (error, self.message(id)) {
                    (Some(error), _) => format!("could not be evaluated: {}", error.message),
                    (None, Some(message)) => message.to_owned(),
                    (None, None) => format!("forbidden by policy {id}"),
                };
                Detail {
                    pointer: String::new(),
                    reason: if error.is_some() { "error" } else { "forbid" }.into(),
                    message,
                    policy: Some(id.clone()),
                }
            })
            .collect();
        let message = match decision.deciding.as_slice() {
            [] => {
                let on = match query.context.names() {
                    Some(name) => format!(" on {name}"),
                    None => String::new(),
                };
                format!(
                    "no policy permits {}{on} for client {}",
                    query.action, query.client
                )
            }
            [id] => match details.first() {
                Some(detail) if self.message(id).is_some() => {
                    format!("denied by policy {id}: {}", detail.message)
                }
                _ => format!("denied by policy {id}"),
            },
            ids => format!("denied by policies {}", ids.join(", ")),
        };
        GateError::new(ErrorKind::PolicyDenied, message).with_details(details)
    }

    fn message(&self, id: &str) -> Option<&str> {
        self.about.get(id).and_then(|a| a.message.as_deref())
    }

    /// The Cedar request, its context cut down to `reads` (all of it for `None`).
    fn request(
        &self,
        query: &Query,
        reads: Option<&BTreeSet<String>>,
        schema: Option<&Schema>,
    ) -> Result<Request, String> {
        let principal = Types::uid(&self.types.client, query.client);
        let action = Types::uid(&self.types.action, query.action);
        let resource = match query.context.names() {
            Some(name) => Types::uid(&self.types.repository, &name),
            None => Types::uid(&self.types.api, API),
        };
        let wanted = |name: &str| reads.is_none_or(|reads| reads.contains(name));
        let ip = wanted("client_ip").then(|| self.ip(query.context.client_ip));
        let context = query.context.to_cedar(ip, wanted)?;
        Request::new(principal, action, resource, context, schema).map_err(|e| e.to_string())
    }

    fn ip(&self, ip: IpAddr) -> RestrictedExpression {
        let Ok(expression) = cached(&self.ips, ip, || {
            Ok::<_, Infallible>(RestrictedExpression::new_ip(ip.to_string()))
        });
        expression
    }

    /// Shared, not copied: a store is a map of entities that a clone would rebuild.
    fn entities(&self, query: &Query) -> Result<Arc<Entities>, String> {
        let mut key = query.client.to_owned();
        let names = [&query.context.namespace, &query.context.repository];
        for part in query.groups.iter().chain(names) {
            key.push('\0');
            key.push_str(part);
        }
        cached(&self.entity_stores, key, || self.make_entities(query))
    }

    /// Only the entities with parents: `in` reads the ancestors of the entity on its
    /// left, and an entity without parents is only `in` itself, stored or not.
    fn make_entities(&self, query: &Query) -> Result<Arc<Entities>, String> {
        let groups: HashSet<EntityUid> = query
            .groups
            .iter()
            .map(|g| Types::uid(&self.types.group, g))
            .collect();
        let mut entities = Vec::with_capacity(self.grouped_actions.len() + 2);
        entities.push(Entity::new_no_attrs(
            Types::uid(&self.types.client, query.client),
            groups,
        ));
        if let Some(name) = query.context.names() {
            entities.push(Entity::new_no_attrs(
                Types::uid(&self.types.repository, &name),
                HashSet::from([Types::uid(&self.types.namespace, &query.context.namespace)]),
            ));
        }
        entities.extend(self.grouped_actions.iter().cloned());
        Entities::from_entities(entities, None)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }
}

/// What a decision depends on, as the key of the decision cache: the principal with its
/// groups, the action, the resource, and the context attributes the action's policies
/// read. Nothing else reaches Cedar, which has no clock and no randomness, and the
/// entities come from the snapshot the cache lives in; so equal keys, equal decisions.
struct DecisionInput<'a> {
    query: &'a Query<'a>,
    reads: Option<&'a BTreeSet<String>>,
}

impl Serialize for DecisionInput<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (query, context) = (self.query, self.query.context);
        let wanted = |name: &str| self.reads.is_none_or(|reads| reads.contains(name));
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("client", query.client)?;
        map.serialize_entry("groups", query.groups)?;
        map.serialize_entry("action", query.action)?;
        // They name the resource, read or not.
        map.serialize_entry("namespace", &context.namespace)?;
        map.serialize_entry("repository", &context.repository)?;
        macro_rules! attribute {
            ($($name:ident),*) => {$(
                if wanted(stringify!($name)) {
                    map.serialize_entry(stringify!($name), &context.$name)?;
                }
            )*};
        }
        attribute!(
            grants,
            max_auth,
            grant_count,
            user_ids,
            user_names,
            access_domain,
            permit,
            deadline_forever,
            deadline_days,
            has_description,
            client_ip,
            auth_method
        );
        map.end()
    }
}

/// The value for `key`, made and kept when it is not there yet (made outside the lock,
/// so a slow miss does not hold up hits). A full cache starts over rather than tracking
/// use: it only saves work, its contents never change an answer.
fn cached<K: Hash + Eq, V: Clone, E>(
    cache: &Mutex<HashMap<K, V>>,
    key: K,
    make: impl FnOnce() -> Result<V, E>,
) -> Result<V, E> {
    let lock = || {
        cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some(value) = lock().get(&key) {
        return Ok(value.clone());
    }
    let value = make()?;
    let mut cache = lock();
    if cache.len() >= CACHE {
        cache.clear();
    }
    cache.insert(key, value.clone());
    Ok(value)
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

fn policy_errors<'a>(errors: impl Iterator<Item = &'a AuthorizationError>) -> Vec<PolicyError> {
    errors
        .map(|error| match error {
            AuthorizationError::PolicyEvaluationError(e) => PolicyError {
                id: key(e.policy_id()).to_owned(),
                message: e.inner().to_string(),
            },
        })
        .collect()
}

fn key(id: &PolicyId) -> &str {
    id.as_ref()
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

/// One grant of a user-permission body, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub user_id: String,
    pub user_name: String,
    pub auth: i64,
}

/// The context of contract §6, computed from the route's names and the validated body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Context {
    pub namespace: String,
    pub repository: String,
    pub grants: Vec<Grant>,
    /// The highest `auth` among the grants; 0 when there are none.
    pub max_auth: i64,
    pub grant_count: i64,
    pub user_ids: BTreeSet<String>,
    pub user_names: BTreeSet<String>,
    pub access_domain: String,
    pub permit: String,
    pub deadline_forever: bool,
    /// Whole days from now to the deadline, rounded down; `None` for `forever` or no deadline.
    pub deadline_days: Option<i64>,
    pub has_description: bool,
    pub client_ip: IpAddr,
    pub auth_method: AuthMethod,
}

impl Context {
    /// Read the body's grants or sharing. The schema has already checked the body; a
    /// field the policy needs but cannot read (a loosened schema) refuses the request
    /// rather than being guessed at.
    pub fn new(
        target: &Target,
        body: Option<&Value>,
        client_ip: IpAddr,
        auth_method: AuthMethod,
        now: SystemTime,
    ) -> Result<Context, GateError> {
        let mut context = Context {
            namespace: target.namespace.clone().unwrap_or_default(),
            repository: target.repository.clone().unwrap_or_default(),
            grants: Vec::new(),
            max_auth: 0,
            grant_count: 0,
            user_ids: BTreeSet::new(),
            user_names: BTreeSet::new(),
            access_domain: target.access_domain.clone().unwrap_or_default(),
            permit: String::new(),
            deadline_forever: false,
            deadline_days: None,
            has_description: false,
            client_ip,
            auth_method,
        };
        let mut problems = Vec::new();
        match body {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let user_id = string_at(item, "user_id", &format!("/{i}"), &mut problems);
                    let user_name = string_at(item, "user_name", &format!("/{i}"), &mut problems);
                    let auth = match item.get("auth").and_then(Value::as_i64) {
                        Some(auth) => auth,
                        None => {
                            problems.push(unreadable(&format!("/{i}/auth"), "an integer"));
                            0
                        }
                    };
                    context.user_ids.insert(user_id.clone());
                    context.user_names.insert(user_name.clone());
                    context.max_auth = context.max_auth.max(auth);
                    context.grants.push(Grant {
                        user_id,
                        user_name,
                        auth,
                    });
                }
                context.grant_count = context.grants.len() as i64;
            }
            Some(object @ Value::Object(map))
                if map.contains_key("permit") || map.contains_key("deadline") =>
            {
                context.permit = string_at(object, "permit", "", &mut problems);
                let deadline = string_at(object, "deadline", "", &mut problems);
                if deadline == "forever" {
                    context.deadline_forever = true;
                } else if !deadline.is_empty() {
                    match parse_rfc3339(&deadline) {
                        Some(at) => context.deadline_days = Some(days_between(now, at)),
                        None => problems
                            .push(unreadable("/deadline", "\"forever\" or an RFC 3339 time")),
                    }
                }
                context.has_description = match map.get("description") {
                    None | Some(Value::Null) => false,
                    Some(Value::String(text)) => text.chars().any(is_visible),
                    Some(_) => {
                        problems.push(unreadable("/description", "a string"));
                        false
                    }
                };
            }
            _ => {}
        }
        if problems.is_empty() {
            Ok(context)
        } else {
            Err(GateError::new(
                ErrorKind::SchemaViolation,
                "request body cannot be read for the policy decision",
            )
            .with_details(problems))
        }
    }

    /// `namespace/repository` when the request names a repository.
    pub fn names(&self) -> Option<String> {
        (!self.namespace.is_empty() && !self.repository.is_empty())
            .then(|| format!("{}/{}", self.namespace, self.repository))
    }

    /// The attributes `wanted` says, as Cedar values. `client_ip` comes ready made
    /// (see [`Policies`]'s `ips`); it is `None` only when it is not wanted.
    fn to_cedar(
        &self,
        client_ip: Option<RestrictedExpression>,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<CedarContext, String> {
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let strings =
            |set: &BTreeSet<String>| RestrictedExpression::new_set(set.iter().map(|s| string(s)));
        let long = RestrictedExpression::new_long;
        let bool = RestrictedExpression::new_bool;
        let mut pairs: Vec<(&str, RestrictedExpression)> = Vec::new();
        let mut add = |name: &'static str, make: &dyn Fn() -> RestrictedExpression| {
            if wanted(name) {
                pairs.push((name, make()));
            }
        };
        add("namespace", &|| string(&self.namespace));
        add("repository", &|| string(&self.repository));
        add("max_auth", &|| long(self.max_auth));
        add("grant_count", &|| long(self.grant_count));
        add("user_ids", &|| strings(&self.user_ids));
        add("user_names", &|| strings(&self.user_names));
        add("access_domain", &|| string(&self.access_domain));
        add("permit", &|| string(&self.permit));
        add("deadline_forever", &|| bool(self.deadline_forever));
        add("has_description", &|| bool(self.has_description));
        add("auth_method", &|| {
            string(auth_method_name(self.auth_method))
        });
        if let Some(days) = self.deadline_days {
            add("deadline_days", &|| long(days));
        }
        if let Some(client_ip) = client_ip {
            pairs.push(("client_ip", client_ip));
        }
        if wanted("grants") {
            let grants = self
                .grants
                .iter()
                .map(|g| {
                    RestrictedExpression::new_record([
                        ("user_id".to_owned(), string(&g.user_id)),
                        ("user_name".to_owned(), string(&g.user_name)),
                        ("auth".to_owned(), long(g.auth)),
                    ])
                    .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, String>>()?;
            pairs.push(("grants", RestrictedExpression::new_set(grants)));
        }
        CedarContext::from_pairs(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)))
            .map_err(|e| e.to_string())
    }
}

pub fn auth_method_name(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::ApiKey => "api_key",
        AuthMethod::Aksk => "aksk",
        AuthMethod::Mtls => "mtls",
        AuthMethod::Anonymous => "anonymous",
    }
}

pub fn auth_method_from_name(name: &str) -> Option<AuthMethod> {
    [
        AuthMethod::ApiKey,
        AuthMethod::Aksk,
        AuthMethod::Mtls,
        AuthMethod::Anonymous,
    ]
    .into_iter()
    .find(|method| auth_method_name(*method) == name)
}

fn string_at(value: &Value, key: &str, pointer: &str, problems: &mut Vec<Detail>) -> String {
    match value.get(key) {
        Some(Value::String(text)) => text.clone(),
        None => String::new(),
        Some(_) => {
            problems.push(unreadable(&format!("{pointer}/{key}"), "a string"));
            String::new()
        }
    }
}

fn unreadable(pointer: &str, expected: &str) -> Detail {
    Detail {
        pointer: pointer.to_owned(),
        reason: "policy".into(),
        message: format!("the policy needs {expected} here"),
        policy: None,
    }
}

/// Whole days from `now` to `at` (seconds since the epoch), rounded down: a deadline
/// within the next 24 hours is 0, one up to 24 hours past is -1.
fn days_between(now: SystemTime, at: i64) -> i64 {
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    };
    at.saturating_sub(now).div_euclid(86_400)
}

/// Whether a character shows: not white space or a control character, and not one
/// that renders as nothing: Unicode's default-ignorable code points (zero-width space,
/// BOM, word joiner, variation selectors, tag characters, Hangul fillers and the like)
/// a few more format characters (interlinear annotation, Egyptian format controls,
/// braille blank), combining marks with nothing to combine with, and private use.
fn is_visible(c: char) -> bool {
    !c.is_whitespace()
        && !c.is_control()
        && !matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
            | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}'
            | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
            // Combining marks, which show only on a character before them.
            | '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}'
            // Private use: no font is bound to show anything.
            | '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..='\u{10FFFF}')
}

/// Seconds since the epoch of an RFC 3339 time such as `2026-12-31T16:00:00.000Z` (or
/// with an offset, `+08:00`); `None` when it is not one.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    // `time` takes any byte between date and time; RFC 3339 allows `T`, `t` or a space.
    if !matches!(text.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SCHEMA: &str = include_str!("../policies/swr.cedarschema");
    const SHIPPED: [(&str, &str); 3] = [
        (
            "policies/forward.cedar",
            include_str!("../policies/forward.cedar"),
        ),
        (
            "policies/grants.cedar",
            include_str!("../policies/grants.cedar"),
        ),
        (
            "policies/sharing.cedar",
            include_str!("../policies/sharing.cedar"),
        ),
    ];
    const USER: &str = "fb3f175c1fd146ab8cdae3272be6107b";

    fn known() -> Known {
        Known {
            clients: vec!["ci-bot".into(), "ops".into()],
            groups: ["team-a-ci", "release", "admins"]
                .map(String::from)
                .to_vec(),
            operations: [
                "create_user_repository_auth",
                "update_user_repository_auth",
                "update_repo_domains",
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    fn source(name: &str, text: &str) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    fn load(files: &[(&str, &str)]) -> Result<Policies, Vec<String>> {
        let files = files.iter().map(|(n, t)| source(n, t)).collect();
        Policies::from_sources(&source("swr.cedarschema", SCHEMA), files, &known())
    }

    fn shipped() -> Policies {
        load(&SHIPPED).unwrap()
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    fn target(domain: Option<&str>) -> Target {
        Target {
            namespace: Some("team-a".into()),
            repository: Some("group/app".into()),
            access_domain: domain.map(str::to_owned),
        }
    }

    fn context(body: &Value) -> Context {
        Context::new(
            &target(Some("partner-a")),
            Some(body),
            [10, 0, 0, 1].into(),
            AuthMethod::ApiKey,
            now(),
        )
        .unwrap()
    }

    fn grants(auths: &[i64]) -> Value {
        Value::Array(
            auths
                .iter()
                .enumerate()
                .map(|(i, auth)| {
                    serde_json::json!({"user_id": format!("{i:032}"), "user_name": format!("user{i}"), "auth": auth})
                })
                .collect(),
        )
    }

    fn at(offset_seconds: i64) -> String {
        let secs = 1_790_000_000 + offset_seconds;
        humantime::format_rfc3339(UNIX_EPOCH + Duration::from_secs(secs as u64)).to_string()
    }

    fn sharing(deadline: &str, description: Option<&str>) -> Value {
        let mut body = serde_json::json!({"permit": "read", "deadline": deadline});
        if let Some(d) = description {
            body["description"] = d.into();
        }
        body
    }

    fn decide(policies: &Policies, groups: &[&str], action: &str, context: &Context) -> Decision {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        policies
            .decide(&Query {
                client: "ci-bot",
                groups: &groups,
                action,
                context,
            })
            .unwrap()
    }

    #[test]
    fn max_auth_is_the_highest_grant_and_zero_without_grants() {
        let mixed = context(&grants(&[1, 7, 3]));
        assert_eq!((mixed.max_auth, mixed.grant_count), (7, 3));
        assert_eq!(mixed.user_ids.len(), 3);
        assert!(mixed.user_names.contains("user1"));
        let sharing = context(&sharing("forever", None));
        assert_eq!((sharing.max_auth, sharing.grant_count), (0, 0));
        let forward = Context::new(
            &Target::default(),
            None,
            [127, 0, 0, 1].into(),
            AuthMethod::Mtls,
            now(),
        )
        .unwrap();
        assert_eq!(forward.names(), None);
        assert_eq!((forward.max_auth, forward.deadline_days), (0, None));
    }

    #[test]
    fn deadline_days_are_whole_days_rounded_down_and_absent_for_forever() {
        let days = |offset: i64| context(&sharing(&at(offset), Some("x"))).deadline_days;
        assert_eq!(days(3600), Some(0), "within the next 24 hours");
        assert_eq!(days(0), Some(0), "now");
        assert_eq!(days(-1), Some(-1), "a second ago");
        assert_eq!(days(-86_400 * 3), Some(-3));
        assert_eq!(days(86_400 * 90 + 86_399), Some(90));
        assert_eq!(days(86_400 * 91), Some(91));
        assert_eq!(days(86_400 * 365 * 10), Some(3650));
        let forever = context(&sharing("forever", None));
        assert!(forever.deadline_forever);
        assert_eq!(forever.deadline_days, None);
        assert!(!context(&sharing(&at(0), None)).deadline_forever);
    }

    #[test]
    fn a_description_counts_only_when_it_says_something() {
        let has = |d: Option<&str>| context(&sharing("forever", d)).has_description;
        assert!(!has(None));
        assert!(!has(Some("")));
        assert!(!has(Some(" \t ")));
        assert!(!has(Some("\u{200B}\u{FEFF}\u{180E}\u{3000}\u{2060}")));
        // Tag characters, variation selectors, musical and shorthand format controls,
        // interlinear annotation, C1 controls.
        assert!(!has(Some(
            "\u{E0001}\u{E0041}\u{E007F}\u{E0100}\u{1D173}\u{1BCA0}\u{FFF9}\u{13430}\u{0085}\u{0090}\u{0301}\u{E000}"
        )));
        assert!(has(Some("release candidates")));
        assert!(has(Some("\u{200B}ok")));
    }

    #[test]
    fn a_body_the_policy_cannot_read_is_refused_not_guessed() {
        for body in [
            serde_json::json!([{"user_id": USER, "user_name": "u", "auth": "7"}]),
            serde_json::json!([{"user_id": 1, "user_name": "u", "auth": 7}]),
            serde_json::json!({"permit": "read", "deadline": "next week"}),
            serde_json::json!({"permit": "read", "deadline": "forever", "description": 3}),
        ] {
            let error = Context::new(
                &target(None),
                Some(&body),
                [127, 0, 0, 1].into(),
                AuthMethod::ApiKey,
                now(),
            )
            .unwrap_err();
            assert_eq!(error.kind, ErrorKind::SchemaViolation, "{body}");
            assert!(!error.details.is_empty());
        }
    }

    #[test]
    fn rfc3339_times_are_read_exactly() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T08:00:00+08:00"), Some(0));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(
            parse_rfc3339("2030-01-01T00:00:00.000Z"),
            Some(1_893_456_000)
        );
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        assert_eq!(parse_rfc3339("2030-01-01t00:00:00z"), Some(1_893_456_000));
        // RFC 3339 lets applications write a space for the `T` (§5.6, note).
        assert_eq!(parse_rfc3339("2030-01-01 00:00:00Z"), Some(1_893_456_000));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2030-13-01T00:00:00Z",
            "2030-01-01T24:00:00Z",
            "2030-01-01T00:00:00",
            "2030-01-01T00:00:00.Z",
            "2030-01-01X00:00:00Z",
            "2030-01-01\u{0}00:00:00Z",
            "2030-01-01T00:00:00+0800",
            "2030-01-01T00:00:00+24:00",
            "30-01-01T00:00:00Z",
            "forever",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_shipped_policies_load_without_warnings() {
        let policies = shipped();
        assert!(policies.warnings().is_empty(), "{:?}", policies.warnings());
        let (place, message) = policies.describe("no-permanent-sharing").unwrap();
        assert!(place.starts_with("policies/sharing.cedar:"), "{place}");
        assert!(message.unwrap().contains("forever"));
    }

    #[test]
    fn the_same_grant_is_allowed_for_one_group_and_denied_for_another() {
        let policies = shipped();
        let write = context(&grants(&[1, 3]));
        let allowed = decide(
            &policies,
            &["team-a-ci"],
            "create_user_repository_auth",
            &write,
        );
        assert!(allowed.allowed);
        assert_eq!(allowed.deciding, ["team-a-ci-grants-read-write"]);
        let denied = decide(
            &policies,
            &["release"],
            "create_user_repository_auth",
            &write,
        );
        assert!(!denied.allowed);
        assert!(denied.deciding.is_empty());
        let query = Query {
            client: "ci-bot",
            groups: &[],
            action: "create_user_repository_auth",
            context: &write,
        };
        let refusal = policies.refusal(&query, &denied);
        assert_eq!(refusal.kind.code(), "SWR.GATE.4030001");
        assert_eq!(
            refusal.message,
            "no policy permits create_user_repository_auth on team-a/group/app for client ci-bot"
        );
    }

    #[test]
    fn a_remembered_decision_is_the_one_a_fresh_evaluation_makes() {
        let remembering = shipped();
        let bodies = [
            grants(&[1]),
            grants(&[1, 3]),
            grants(&[3, 7]),
            grants(&[7]),
            sharing(&at(86_400 * 10), Some("release")),
            sharing(&at(86_400 * 100), Some("release")),
            sharing("forever", Some("release")),
            sharing(&at(86_400 * 10), None),
        ];
        let actions = [
            "create_user_repository_auth",
            "update_user_repository_auth",
            "update_repo_domains",
            FORWARD,
        ];
        let groups: [&[&str]; 4] = [&["team-a-ci"], &["admins"], &["release"], &[]];
        // Twice over, so that the second round is answered from the cache.
        for _ in 0..2 {
            for body in &bodies {
                let context = context(body);
                for action in actions {
                    for groups in groups {
                        assert_eq!(
                            decide(&remembering, groups, action, &context),
                            decide(&shipped(), groups, action, &context),
                            "{action} by {groups:?} with {body}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_forbid_overrides_every_permit_and_is_named() {
        let policies = shipped();
        let manage = context(&grants(&[1, 7]));
        let decision = decide(
            &policies,
            &["team-a-ci"],
            "update_user_repository_auth",
            &manage,
        );
        assert!(!decision.allowed);
        assert_eq!(decision.deciding, ["only-admins-grant-manage"]);
        let admins = decide(
            &policies,
            &["admins"],
            "update_user_repository_auth",
            &manage,
        );
        assert!(admins.allowed);

        let forever = context(&sharing("forever", None));
        let decision = decide(&policies, &["admins"], "update_repo_domains", &forever);
        assert_eq!(
            decision.deciding,
            ["no-permanent-sharing", "sharing-needs-description"]
        );
        let query = Query {
            client: "ci-bot",
            groups: &[],
            action: "update_repo_domains",
            context: &forever,
        };
        let refusal = policies.refusal(&query, &decision);
        assert_eq!(
            refusal.message,
            "denied by policies no-permanent-sharing, sharing-needs-description"
        );
        assert_eq!(
            refusal.details[0].policy.as_deref(),
            Some("no-permanent-sharing")
        );
        let one = Decision {
            deciding: vec!["no-permanent-sharing".into()],
            ..decision
        };
        assert_eq!(
            policies.refusal(&query, &one).message,
            "denied by policy no-permanent-sharing: a share must have a deadline: \"forever\" is not allowed"
        );
    }

    #[test]
    fn shadow_policies_are_reported_but_never_decide() {
        let watched = "@id(\"watch-writes\") @shadow\nforbid (principal, action, resource) when { context.max_auth >= 3 };\n\
                       @id(\"would-let-release-read\") @shadow\npermit (principal in Swr::Group::\"release\", action, resource) when { context.max_auth == 1 };\n";
        let mut files = SHIPPED.to_vec();
        files.push(("policies/watch.cedar", watched));
        let policies = load(&files).unwrap();
        let write = context(&grants(&[3]));
        let decision = decide(
            &policies,
            &["team-a-ci"],
            "create_user_repository_auth",
            &write,
        );
        assert!(decision.allowed);
        assert!(!decision.allowed_with_shadow());
        assert_eq!(
            decision.audit_ids(),
            ["team-a-ci-grants-read-write", "shadow:watch-writes"]
        );
        let read = context(&grants(&[1]));
        let decision = decide(
            &policies,
            &["release"],
            "create_user_repository_auth",
            &read,
        );
        assert!(!decision.allowed);
        assert!(decision.allowed_with_shadow());
        assert_eq!(decision.audit_ids(), ["shadow:would-let-release-read"]);
    }

    #[test]
    fn mistakes_are_load_errors_with_file_and_line() {
        let typo = "// a comment\n@id(\"typo\")\npermit (principal, action, resource)\nwhen { context.max_auht <= 3 };\n";
        let problems = load(&[("policies/typo.cedar", typo)]).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("policies/typo.cedar:4: ") && problems[0].contains("max_auth"),
            "{problems:?}"
        );

        let unknown_action =
            "@id(\"a\")\npermit (principal, action == Swr::Action::\"delete_repo\", resource);\n";
        let problems = load(&[("x.cedar", unknown_action)]).unwrap_err();
        assert!(problems[0].starts_with("x.cedar:2: "), "{problems:?}");

        let no_id = "@id(\"a\")\npermit (principal, action, resource);\n\npermit (principal, action, resource);\n";
        let problems = load(&[("x.cedar", no_id)]).unwrap_err();
        assert!(
            problems[0].starts_with("x.cedar:4: policy has no @id"),
            "{problems:?}"
        );

        let first = "@id(\"same\")\npermit (principal, action, resource);\n";
        let second = "\n@id(\"same\")\nforbid (principal, action, resource);\n";
        let problems = load(&[("a.cedar", first), ("b.cedar", second)]).unwrap_err();
        assert_eq!(
            problems,
            ["b.cedar:2: @id(\"same\") is already used at a.cedar:1"]
        );
        // A policy refused for its @id is still checked: one problem hides no other.
        let second = "\n@id(\"same\")\nforbid (principal, action, resource)\nwhen { context.max_auht <= 3 };\n";
        let problems = load(&[("a.cedar", first), ("b.cedar", second)]).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("b.cedar:2: @id"), "{problems:?}");
        assert!(
            problems[1].starts_with("b.cedar:4: ") && problems[1].contains("max_auth"),
            "{problems:?}"
        );
        let no_id = "@id(\"a\")\npermit (principal, action, resource);\n\npermit (principal, action, resource)\nwhen { context.max_auht <= 3 };\n";
        let problems = load(&[("x.cedar", no_id)]).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");

        let syntax =
            "@id(\"a\")\npermit (principal, action, resource)\nwhen { context.max_auth <= };\n";
        let problems = load(&[("x.cedar", syntax)]).unwrap_err();
        assert!(problems[0].starts_with("x.cedar:3: "), "{problems:?}");

        let files = [("x.cedar", first)];
        let files: Vec<Source> = files.iter().map(|(n, t)| source(n, t)).collect();
        let schema = source(
            "swr.cedarschema",
            &SCHEMA.replace("max_auth: Long,", "max_auth: String,"),
        );
        let problems = Policies::from_sources(&schema, files, &known()).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("does not fit the schema")),
            "{problems:?}"
        );
    }

    #[test]
    fn only_the_context_the_policies_read_is_sent() {
        let policies = shipped();
        let reads = |action: &str| policies.by_action[action].reads.clone();
        assert_eq!(
            reads("create_user_repository_auth"),
            Some(BTreeSet::from(["max_auth".to_owned()]))
        );
        assert_eq!(
            reads("update_repo_domains"),
            Some(
                [
                    "access_domain",
                    "deadline_days",
                    "deadline_forever",
                    "has_description"
                ]
                .map(String::from)
                .into()
            )
        );
        assert_eq!(reads("forward"), Some(BTreeSet::new()));

        let whole = "@id(\"whole\")\npermit (principal, action, resource)\n\
                     when { context == context && context.grants.contains({user_id: \"00000000000000000000000000000000\", user_name: \"user0\", auth: 1}) };\n";
        let policies = load(&[("whole.cedar", whole)]).unwrap();
        assert_eq!(
            policies.by_action["create_user_repository_auth"].reads,
            None
        );
        let decision = decide(
            &policies,
            &[],
            "create_user_repository_auth",
            &context(&grants(&[1, 3])),
        );
        assert_eq!(decision.deciding, ["whole"]);
    }

    #[test]
    fn names_nothing_in_the_config_has_are_warned_about() {
        let text = "@id(\"w\")\npermit (principal in Swr::Group::\"nobody\", action, resource)\n\
                    when { principal == Swr::Client::\"ghost\" || action == Swr::Action::\"forward\" };\n";
        let policies = load(&[("w.cedar", text)]).unwrap();
        let warnings = policies.warnings().join("\n");
        assert!(
            warnings.contains("w.cedar:1: policy w names Swr::Group::\"nobody\""),
            "{warnings}"
        );
        assert!(warnings.contains("Swr::Client::\"ghost\""), "{warnings}");
        assert!(!warnings.contains("forward"), "{warnings}");
        let mut known = known();
        known.operations.pop();
        let files = SHIPPED.iter().map(|(n, t)| source(n, t)).collect();
        let policies =
            Policies::from_sources(&source("swr.cedarschema", SCHEMA), files, &known).unwrap();
        assert!(
            policies
                .warnings()
                .iter()
                .any(|w| w.contains("update_repo_domains")),
            "{:?}",
            policies.warnings()
        );
    }
}
