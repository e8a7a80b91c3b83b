//! JSON Schema validation of guarded bodies. Schemas are compiled once at load, so a
//! broken schema is a load error naming its file, never a 500 at request time.

use std::borrow::Cow;
use std::collections::HashSet;

use jsonschema::paths::{LazyLocation, Location};
use jsonschema::{Keyword, ValidationError, Validator};
use serde_json::{Map, Value};

use crate::error::{at_most_chars, Detail, ErrorKind, GateError};

/// Most violations listed in one answer; a hostile body could otherwise make thousands.
const MAX_DETAILS: usize = 50;

/// A compiled schema for one operation.
pub struct Schema {
    validator: Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// Read and compile a schema file's text: what is wrong, with the line it is on.
    pub fn load(text: &str) -> Result<Schema, String> {
        let schema: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Schema::compile(&schema)
            .and_then(|compiled| match unique_by_misnamed(&schema, &schema, "") {
                Some(problem) => Err(problem),
                None => Ok(compiled),
            })
            .map_err(|(pointer, message)| {
                // Some errors (a `$ref` that leads nowhere) come without a location.
                let line = line_of(text, &pointer).filter(|_| !pointer.is_empty());
                match line {
                    Some(line) => format!("line {line}: {message} (at {pointer} of the schema)"),
                    None => message,
                }
            })
    }

    /// Compile a draft 2020-12 schema with `format` asserted (2020-12 only annotates it by
    /// default, which would let `"deadline":"yesterday"` through). A schema that breaks
    /// the rules of JSON Schema gives the pointer to the offending part, and why.
    fn compile(schema: &Value) -> Result<Schema, (String, String)> {
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            // A misspelt format (`datetime`) would otherwise assert nothing, silently.
            .should_ignore_unknown_formats(false)
            .with_keyword("x-unique-by", unique_by_factory)
            .build(schema)
            .map(|validator| Schema { validator })
            .map_err(|e| (e.instance_path.to_string(), e.to_string()))
    }

    /// The refusal of a body that breaks the schema of `operation`, listing every
    /// violation: what the gateway answers and what `eval` reports.
    pub fn check(&self, operation: &str, instance: &Value) -> Result<(), GateError> {
        let violations = self.validate(instance);
        if violations.is_empty() {
            return Ok(());
        }
        Err(GateError::new(
            ErrorKind::SchemaViolation,
            format!("request body does not match the schema of {operation}"),
        )
        .with_details(violations))
    }

    /// Every violation, each with the JSON pointer of the offending value.
    pub fn validate(&self, instance: &Value) -> Vec<Detail> {
        // Most bodies are valid, and `is_valid` stops at nothing to report: several times
        // cheaper than walking the error iterator to its empty end.
        if self.validator.is_valid(instance) {
            return Vec::new();
        }
        let mut details: Vec<Detail> = self
            .validator
            .iter_errors(instance)
            .take(MAX_DETAILS + 1)
            .map(|error| Detail {
                pointer: error.instance_path.to_string(),
                reason: keyword(&error.schema_path),
                message: message(&error),
                policy: None,
            })
            .collect();
        if details.len() > MAX_DETAILS {
            details.truncate(MAX_DETAILS);
            details.push(Detail {
                pointer: String::new(),
                reason: "truncated".to_owned(),
                message: format!("more violations than the {MAX_DETAILS} listed"),
                policy: None,
            });
        }
        details
    }
}

/// The violation in words. A message quotes the offending value (`2 is not one of
/// [1,3,7]`); a long value (a whole grant list) is named `value` instead, so an answer or
/// audit record does not echo the body back. Some messages quote the body's keys even
/// so (`additionalProperties` names every unexpected key): those are cut.
fn message(error: &jsonschema::ValidationError) -> String {
    const QUOTED_UP_TO: usize = 200;
    let message = error.to_string();
    if message.len() <= QUOTED_UP_TO {
        return message;
    }
    let masked = error.masked().to_string();
    let quoted = at_most_chars(&masked, QUOTED_UP_TO);
    match quoted.len() == masked.len() {
        true => masked,
        false => format!("{quoted}…"),
    }
}

/// An `x-unique-by` naming a property its items do not have, which would compare nothing
/// and let every repeat through: its pointer and why. Items whose properties are not
/// listed (or behind a reference that is no local pointer) are not judged.
fn unique_by_misnamed(root: &Value, value: &Value, at: &str) -> Option<(String, String)> {
    match value {
        Value::Object(members) => {
            let property = members.get("x-unique-by").and_then(Value::as_str);
            let items = members.get("items").and_then(|items| {
                match items.get("$ref").and_then(Value::as_str) {
                    Some(reference) => root.pointer(reference.strip_prefix('#')?),
                    None => Some(items),
                }
            });
            let listed = items.and_then(|items| items.get("properties"));
            if let (Some(property), Some(Value::Object(listed))) = (property, listed) {
                if !listed.contains_key(property) {
                    return Some((
                        format!("{at}/x-unique-by"),
                        format!("x-unique-by names {property:?}, which its items' properties do not have"),
                    ));
                }
            }
            members.iter().find_map(|(key, child)| {
                let key = key.replace('~', "~0").replace('/', "~1");
                unique_by_misnamed(root, child, &format!("{at}/{key}"))
            })
        }
        Value::Array(elements) => elements
            .iter()
            .enumerate()
            .find_map(|(i, child)| unique_by_misnamed(root, child, &format!("{at}/{i}"))),
        _ => None,
    }
}

/// The line on which the value at JSON `pointer` starts in `text`, a valid JSON document.
/// A `$ref` step (jsonschema's paths go through references: `/items/$ref/properties/x`)
/// goes on from where a local reference (`#/$defs/grant`) points.
fn line_of(text: &str, pointer: &str) -> Option<usize> {
    Some(crate::files::line_at(text, offset_of(text, pointer, 0)?))
}

/// Where the value at `pointer` starts in `text`; `hops` counts the references followed,
/// so that references in a loop end.
fn offset_of(text: &str, pointer: &str, hops: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut at = skip_space(bytes, 0);
    let mut tokens = pointer.split('/').skip(1);
    while let Some(token) = tokens.next() {
        let token = token.replace("~1", "/").replace("~0", "~");
        if token == "$ref" && hops < 8 && bytes.get(at) == Some(&b'{') {
            let reference = member(text, at, "$ref")?;
            let end = skip_value(bytes, reference)?;
            let reference: String = serde_json::from_str(&text[reference..end]).ok()?;
            let rest: Vec<&str> = tokens.collect();
            // A pointer (`#/$defs/grant`); an anchor (`#grant`) or another file is not
            // followed.
            let target = reference
                .strip_prefix('#')
                .filter(|t| t.is_empty() || t.starts_with('/'))?;
            let pointer = match rest.is_empty() {
                true => target.to_owned(),
                false => format!("{target}/{}", rest.join("/")),
            };
            return offset_of(text, &pointer, hops + 1);
        }
        at = match bytes.get(at)? {
            b'{' => member(text, at, &token)?,
            b'[' => element(bytes, at, token.parse().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// Where the value of `key` starts in the object at `at`: its last, as serde_json keeps
/// the last of repeated keys.
fn member(text: &str, mut at: usize, key: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut found = None;
    loop {
        at = skip_space(bytes, at + 1);
        if bytes.get(at)? != &b'"' {
            return None;
        }
        let end = skip_value(bytes, at)?;
        let name: String = serde_json::from_str(&text[at..end]).ok()?;
        at = skip_space(bytes, end);
        if bytes.get(at)? != &b':' {
            return None;
        }
        let value = skip_space(bytes, at + 1);
        if name == key {
            found = Some(value);
        }
        at = skip_space(bytes, skip_value(bytes, value)?);
        if bytes.get(at)? != &b',' {
            return found;
        }
    }
}

/// Where item `index` starts in the array at `at`.
fn element(bytes: &[u8], mut at: usize, index: usize) -> Option<usize> {
    for _ in 0..index {
        at = skip_space(bytes, skip_value(bytes, skip_space(bytes, at + 1))?);
        if bytes.get(at)? != &b',' {
            return None;
        }
    }
    Some(skip_space(bytes, at + 1))
}

/// Where the value that starts at `at` ends.
fn skip_value(bytes: &[u8], at: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = at;
    loop {
        match bytes.get(i)? {
            b'"' => {
                i += 1;
                while bytes.get(i)? != &b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n' if depth == 0 => return Some(i),
            _ => {}
        }
        i += 1;
        if depth == 0 && matches!(bytes[i - 1], b'"' | b'}' | b']') {
            return Some(i);
        }
    }
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// The schema keyword that failed: the last part of the schema path (`enum`, `required`).
fn keyword(schema_path: &Location) -> String {
    schema_path
        .as_str()
        .rsplit('/')
        .next()
        .filter(|k| !k.is_empty())
        .unwrap_or("schema")
        .to_owned()
}

/// `"x-unique-by": "user_id"`: no two array items may share that property's value.
/// JSON Schema's `uniqueItems` compares whole items, so two grants for one user with
/// different `auth` would pass it, and which one SWR applies would be anybody's guess.
struct UniqueBy {
    property: String,
}

// The signature is the one jsonschema's `with_keyword` requires.
#[allow(clippy::result_large_err)]
fn unique_by_factory<'a>(
    _parent: &'a Map<String, Value>,
    value: &'a Value,
    path: Location,
) -> Result<Box<dyn Keyword>, ValidationError<'a>> {
    match value.as_str() {
        Some(property) => Ok(Box::new(UniqueBy {
            property: property.to_owned(),
        })),
        None => Err(ValidationError::custom(
            Location::new(),
            path,
            value,
            "x-unique-by must name a property",
        )),
    }
}

impl UniqueBy {
    /// Indices of the items whose property repeats an earlier item's.
    fn repeats(&self, instance: &Value) -> Vec<usize> {
        let Some(items) = instance.as_array() else {
            return Vec::new();
        };
        let mut seen = HashSet::with_capacity(items.len());
        (0..items.len())
            .filter(|&index| {
                items[index].get(&self.property).is_some_and(|v| {
                    // Strings (the usual ids) as they are; anything else by its JSON text,
                    // so that "1" and 1 stay different.
                    let key = match v {
                        Value::String(text) => (true, Cow::Borrowed(text.as_str())),
                        other => (false, Cow::Owned(other.to_string())),
                    };
                    !seen.insert(key)
                })
            })
            .collect()
    }
}

impl Keyword for UniqueBy {
    /// One violation, at the first repeat, whose message names every repeat: a keyword
    /// of jsonschema's reports one error.
    fn validate<'i>(
        &self,
        instance: &'i Value,
        location: &LazyLocation,
    ) -> Result<(), ValidationError<'i>> {
        let repeats = self.repeats(instance);
        let Some(&first) = repeats.first() else {
            return Ok(());
        };
        let property = &self.property;
        let message = match repeats.len() {
            1 => format!("two items have the same {property}"),
            n => {
                const NAMED_UP_TO: usize = 10;
                let mut named: Vec<String> = repeats
                    .iter()
                    .take(NAMED_UP_TO)
                    .map(usize::to_string)
                    .collect();
                if n > NAMED_UP_TO {
                    named.push("…".to_owned());
                }
                format!(
                    "{n} items repeat an earlier item's {property}: items {}",
                    named.join(", ")
                )
            }
        };
        Err(ValidationError::custom(
            Location::new().join("x-unique-by"),
            Location::from(location).join(first),
            instance,
            message,
        ))
    }

    fn is_valid(&self, instance: &Value) -> bool {
        self.repeats(instance).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(name: &str) -> Schema {
        let path = format!(
            "{}/policies/schemas/{name}.schema.json",
            env!("CARGO_MANIFEST_DIR")
        );
        Schema::load(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    const USER: &str = "fb3f175c1fd146ab8cdae3272be6107b";

    #[test]
    fn a_schema_that_breaks_json_schema_is_reported_with_its_line() {
        let text = "{\n  \"type\": \"array\",\n  \"prefixItems\": [\n    {\"x\": \"a,}\\\"\"},\n    {\"type\": 5}\n  ]\n}";
        let error = Schema::load(text).err().unwrap();
        assert!(error.starts_with("line 5: "), "{error}");
        assert!(error.contains("/prefixItems/1/type"), "{error}");
        assert_eq!(line_of(text, ""), Some(1));
        assert_eq!(line_of(text, "/prefixItems"), Some(3));
        assert_eq!(line_of(text, "/prefixItems/0/x"), Some(4));
        assert_eq!(line_of(text, "/nope"), None);
        assert_eq!(line_of("{\"a\": 1,\n\"a\": {}}", "/a"), Some(2));
        let referring =
            "{\"items\": {\"$ref\": \"#/$defs/grant\"},\n\"$defs\": {\"grant\":\n{\n\"p\": 1}}}";
        assert_eq!(line_of(referring, "/items/$ref"), Some(3));
        assert_eq!(line_of(referring, "/items/$ref/p"), Some(4));
        let anchored = "{\"a\": {\"$ref\": \"#grant\"},\n\"x\": 1}";
        assert_eq!(line_of(anchored, "/a/$ref/x"), None);
        let looping = "{\"a\": {\"$ref\": \"#/a\"}}";
        assert_eq!(
            line_of(looping, "/a/$ref/$ref/$ref/$ref/$ref/$ref/$ref/$ref/$ref/x"),
            None
        );

        // A bad regex behind a reference, as in the shipped grant schema.
        let text = "{\"items\": {\"$ref\": \"#/$defs/grant\"},\n\"$defs\": {\"grant\": {\n\"properties\": {\"user_id\":\n{\"pattern\": \"^[0-9a-f]{32$\"}}}}}";
        let error = Schema::load(text).err().unwrap();
        assert!(error.starts_with("line 4: "), "{error}");

        let error = Schema::load(r##"{"$ref": "#/$defs/missing"}"##)
            .err()
            .unwrap();
        assert!(!error.starts_with("line"), "{error}");
    }

    #[test]
    fn grants_accept_the_documented_example() {
        let grants = schema("create_user_repository_auth");
        assert!(grants
            .validate(&json!([{"user_id": USER, "user_name": "user01", "auth": 7}]))
            .is_empty());
    }

    #[test]
    fn grants_list_every_violation_with_its_pointer() {
        let grants = schema("update_user_repository_auth");
        let details = grants.validate(&json!([
            {"user_id": USER, "user_name": "user01", "auth": 2},
            {"user_id": "NOT-HEX", "user_name": "u", "auth": 1, "extra": true}
        ]));
        let pointers: Vec<(&str, &str)> = details
            .iter()
            .map(|d| (d.pointer.as_str(), d.reason.as_str()))
            .collect();
        assert!(pointers.contains(&("/0/auth", "enum")), "{pointers:?}");
        assert!(
            pointers.contains(&("/1/user_id", "pattern")),
            "{pointers:?}"
        );
        assert!(
            pointers.contains(&("/1", "additionalProperties")),
            "{pointers:?}"
        );
    }

    #[test]
    fn a_long_offending_value_is_named_not_echoed() {
        let grants = schema("create_user_repository_auth");
        let many: Vec<_> = (0..51)
            .map(|i| json!({"user_id": format!("{i:032x}"), "user_name": "u", "auth": 1}))
            .collect();
        let details = grants.validate(&Value::Array(many));
        assert_eq!(details[0].reason, "maxItems");
        assert!(details[0].message.len() < 200, "{}", details[0].message);
        let short = grants.validate(&json!([{"user_id": USER, "user_name": "u", "auth": 2}]));
        assert!(short[0].message.starts_with('2'), "{}", short[0].message);

        // additionalProperties names the unexpected keys even in its masked message.
        let mut grant = json!({"user_id": USER, "user_name": "u", "auth": 1});
        grant["k".repeat(20_000)] = json!(1);
        let details = grants.validate(&json!([grant]));
        assert_eq!(details[0].reason, "additionalProperties");
        assert!(
            details[0].message.chars().count() <= 201,
            "{}",
            details[0].message
        );
    }

    #[test]
    fn an_answer_says_when_violations_were_left_out() {
        let grants = schema("create_user_repository_auth");
        let bad = json!({"user_id": "x", "user_name": "", "auth": 2});
        let details = grants.validate(&Value::Array(vec![bad; 40]));
        assert_eq!(details.len(), MAX_DETAILS + 1);
        let last = details.last().unwrap();
        assert_eq!(
            (last.pointer.as_str(), last.reason.as_str()),
            ("", "truncated")
        );
        let few = grants.validate(&json!([{"user_id": "x", "user_name": "u", "auth": 1}]));
        assert!(few.iter().all(|d| d.reason != "truncated"), "{few:?}");
    }

    #[test]
    fn grants_refuse_empty_and_repeated_users() {
        let grants = schema("create_user_repository_auth");
        assert_eq!(grants.validate(&json!([]))[0].reason, "minItems");
        let twice = grants.validate(&json!([
            {"user_id": USER, "user_name": "a", "auth": 1},
            {"user_id": USER, "user_name": "a", "auth": 7}
        ]));
        assert_eq!(twice.len(), 1, "{twice:?}");
        assert_eq!(twice[0].pointer, "/1");
        assert_eq!(twice[0].reason, "x-unique-by");

        let other = "0".repeat(32);
        let grant = |user: &str, auth: u8| json!({"user_id": user, "user_name": "a", "auth": auth});
        let thrice = grants.validate(&json!([
            grant(USER, 1),
            grant(USER, 3),
            grant(USER, 7),
            grant(&other, 1),
            grant(&other, 1)
        ]));
        assert_eq!(thrice.len(), 1, "{thrice:?}");
        assert_eq!(thrice[0].pointer, "/1");
        assert!(
            thrice[0].message.ends_with("items 1, 2, 4"),
            "{}",
            thrice[0].message
        );
    }

    #[test]
    fn unique_by_must_name_a_property_of_its_items() {
        let text = "{\"type\": \"array\",\n\"x-unique-by\": \"userid\",\n\"items\": {\"$ref\": \"#/$defs/grant\"},\n\"$defs\": {\"grant\": {\"properties\": {\"user_id\": {}}}}}";
        let error = Schema::load(text).err().unwrap();
        assert!(
            error.starts_with("line 2: x-unique-by names \"userid\""),
            "{error}"
        );
        assert!(Schema::load(&text.replace("userid", "user_id")).is_ok());
        // Unlisted properties are not judged.
        assert!(Schema::load(r#"{"x-unique-by": "id", "items": {}}"#).is_ok());
    }

    #[test]
    fn an_unknown_format_is_a_load_error() {
        let error = Schema::load(r#"{"type": "string", "format": "datetime"}"#)
            .err()
            .unwrap();
        assert!(error.contains("datetime"), "{error}");
    }

    #[test]
    fn unique_by_tells_a_string_from_the_number_it_spells() {
        let unique = UniqueBy {
            property: "id".into(),
        };
        assert_eq!(
            unique.repeats(&json!([{"id": "1"}, {"id": 1}])),
            [0usize; 0]
        );
        assert_eq!(unique.repeats(&json!([{"id": 1}, {"id": 1}])), [1]);
        assert_eq!(unique.repeats(&json!([{"id": "a"}, {}, {"id": "a"}])), [2]);
    }

    #[test]
    fn sharing_needs_read_and_a_real_deadline() {
        let sharing = schema("update_repo_domains");
        for ok in [
            json!({"permit": "read", "deadline": "forever"}),
            json!({"permit": "read", "deadline": "2026-12-31T16:00:00.000Z", "description": "partner"}),
            json!({"permit": "read", "deadline": "forever", "description": "für 合作伙伴 🚀"}),
        ] {
            assert!(sharing.validate(&ok).is_empty(), "{ok}");
        }
        for bad in [
            json!({"permit": "write", "deadline": "forever"}),
            json!({"permit": "read", "deadline": "2026-02-30T16:00:00Z"}),
            json!({"permit": "read", "deadline": "2026-12-31T16:00:00+08:00"}),
            json!({"permit": "read", "deadline": "tomorrow"}),
            json!({"permit": "read"}),
            json!({"permit": "read", "deadline": "forever", "description": "x".repeat(513)}),
            json!({"permit": "read", "deadline": "forever", "owner": "me"}),
            json!({"permit": "read", "deadline": "forever", "description": "a\u{9b}b"}),
            json!({"permit": "read", "deadline": "forever", "description": "a\u{2028}b"}),
            json!({"permit": "read", "deadline": "forever", "description": "a\u{202e}b"}),
            json!({"permit": "read", "deadline": "forever", "description": "a\u{2067}b"}),
        ] {
            assert!(!sharing.validate(&bad).is_empty(), "{bad}");
        }
    }
}
