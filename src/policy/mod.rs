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
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use cedar_policy::{
    AuthorizationError, Authorizer, Decision as CedarDecision, Effect, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema,
};
use serde::Serialize;

use crate::error::{Detail, ErrorKind, GateError};

mod context;
mod load;

pub use context::{
    auth_method_from_name, auth_method_name, parse_rfc3339, parse_rfc3339_instant, Context, Grant,
};
pub use load::Source;

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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde_json::Value;

    use super::*;
    use crate::auth::AuthMethod;
    use crate::route::Target;

    const SCHEMA: &str = include_str!("../../policies/swr.cedarschema");
    const SHIPPED: [(&str, &str); 3] = [
        (
            "policies/forward.cedar",
            include_str!("../../policies/forward.cedar"),
        ),
        (
            "policies/grants.cedar",
            include_str!("../../policies/grants.cedar"),
        ),
        (
            "policies/sharing.cedar",
            include_str!("../../policies/sharing.cedar"),
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
        let seconds = |text| parse_rfc3339(text).map(time::OffsetDateTime::unix_timestamp);
        assert_eq!(seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(seconds("1970-01-01T08:00:00+08:00"), Some(0));
        assert_eq!(seconds("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(seconds("2030-01-01T00:00:00.000Z"), Some(1_893_456_000));
        assert_eq!(seconds("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        assert_eq!(seconds("2030-01-01t00:00:00z"), Some(1_893_456_000));
        // RFC 3339 lets applications write a space for the `T` (§5.6, note).
        assert_eq!(seconds("2030-01-01 00:00:00Z"), Some(1_893_456_000));
        // A leap second, on any day, is read as the second before it.
        assert_eq!(seconds("2029-12-30T23:59:60Z"), Some(1_893_369_599));
        assert_eq!(seconds("2029-12-31T23:59:60.5Z"), Some(1_893_455_999));
        assert_eq!(seconds("2029-12-31T07:59:60+08:00"), Some(1_893_369_599));
        for bad in [
            "2030-01-01T12:34:60Z",
            "2030-01-01T23:59:60+08:00",
            "2030-01-01T00:00:61Z",
            "2030-01-01T00:00:6",
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
            assert_eq!(seconds(bad), None, "{bad}");
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
        for id in ["shadow:same", "a, b", "a\\nb", " a"] {
            let text = format!("@id(\"{id}\")\nforbid (principal, action, resource);\n");
            let problems = load(&[("a.cedar", first), ("c.cedar", &text)]).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].starts_with("c.cedar:1: @id("), "{problems:?}");
        }
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
