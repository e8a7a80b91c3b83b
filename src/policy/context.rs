//! The request as Cedar sees it (contract §6): the names of the route and the
//! validated body, read into the context attributes policies are written against; and
//! the spellings those attributes share with the rest of the gateway (authentication
//! methods, RFC 3339 times).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::{Context as CedarContext, RestrictedExpression};
use serde::Serialize;
use serde_json::Value;

use crate::auth::AuthMethod;
use crate::error::{Detail, ErrorKind, GateError};
use crate::route::Target;

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
                        Some(at) => {
                            context.deadline_days = Some(days_between(now, at.unix_timestamp()))
                        }
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
    /// (see [`super::Policies`]'s `ips`); it is `None` only when it is not wanted.
    pub(super) fn to_cedar(
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

/// An RFC 3339 time such as `2026-12-31T16:00:00.000Z` (or with an offset, `+08:00`);
/// `None` when it is not one.
pub fn parse_rfc3339(text: &str) -> Option<time::OffsetDateTime> {
    // `time` takes any byte between date and time; RFC 3339 allows `T`, `t` or a space.
    if !matches!(text.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(text, rfc3339) {
        Ok(at) => Some(at),
        // RFC 3339 (and JSON Schema's `date-time`) allow a leap second, 23:59:60 UTC, on
        // any day, as they are announced; `time` only at a month's end. Read as the
        // second before.
        Err(_) if text.get(17..19) == Some("60") => {
            let before = format!("{}59{}", &text[..17], &text[19..]);
            time::OffsetDateTime::parse(&before, rfc3339)
                .ok()
                .filter(|at| {
                    let utc = at.to_offset(time::UtcOffset::UTC);
                    (utc.hour(), utc.minute()) == (23, 59)
                })
        }
        Err(_) => None,
    }
}

/// [`parse_rfc3339`] as a `SystemTime`, fractions kept: for a `--since` or a policy
/// test's `now`.
pub fn parse_rfc3339_instant(text: &str) -> Option<SystemTime> {
    let since_epoch = parse_rfc3339(text)? - time::OffsetDateTime::UNIX_EPOCH;
    let magnitude = since_epoch.unsigned_abs();
    match since_epoch.is_negative() {
        false => UNIX_EPOCH.checked_add(magnitude),
        true => UNIX_EPOCH.checked_sub(magnitude),
    }
}
