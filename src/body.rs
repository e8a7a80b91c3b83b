//! Reading a guarded request's body: the media type, a size bound however the body is
//! framed, and strict JSON (UTF-8, no duplicate keys, bounded nesting).
//!
//! Duplicate keys matter because parsers disagree on them: one keeps the first value,
//! another the last. We refuse them, and forward the document we validated re-serialised,
//! so the gateway and SWR can never read two different requests out of one body.

use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::{ErrorKind, GateError};

/// Deepest nesting of arrays and objects accepted; the guarded bodies need three.
pub const MAX_DEPTH: usize = 16;

/// `application/json`, optionally with a UTF-8 charset (the SDK sends `;charset=UTF-8`),
/// and no content coding.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), GateError> {
    let refuse = |what: &str| {
        GateError::new(
            ErrorKind::UnsupportedMediaType,
            format!("{what}; send Content-Type: application/json"),
        )
    };
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return Err(refuse("the request has no Content-Type"));
    };
    if headers.get_all(http::header::CONTENT_TYPE).iter().count() > 1 {
        return Err(refuse("the request has more than one Content-Type"));
    }
    let value = value
        .to_str()
        .map_err(|_| refuse("the Content-Type is not readable"))?;
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(refuse(&format!("Content-Type {essence:?} is not JSON")));
    }
    for param in parts {
        let (name, val) = param.split_once('=').unwrap_or((param, ""));
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = val.trim().trim_matches('"');
            if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(refuse(&format!("charset {charset:?} is not UTF-8")));
            }
        }
    }
    // The body checked is the body as sent: an encoded one would be read one way here
    // and another way by SWR (RFC 9110 §15.5.16: 415 for a content coding).
    for coding in headers.get_all(http::header::CONTENT_ENCODING) {
        if !coding.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(GateError::new(
                ErrorKind::UnsupportedMediaType,
                "a Content-Encoding is not accepted; send the JSON body unencoded",
            ));
        }
    }
    Ok(())
}

/// Read the whole body, refusing it as soon as it is known to exceed `max_bytes`: up
/// front from Content-Length, or while reading a chunked body.
pub async fn read_limited<B>(
    headers: &HeaderMap,
    body: B,
    max_bytes: usize,
) -> Result<Bytes, GateError>
where
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || too_large(max_bytes);
    if let Some(length) = headers.get(http::header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                GateError::new(ErrorKind::MalformedJson, "Content-Length is not a number")
            })?;
        if length > max_bytes as u64 {
            return Err(too_large());
        }
    }
    match Limited::new(body, max_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(GateError::new(
            ErrorKind::MalformedJson,
            "the request body ended before it was complete",
        )),
    }
}

/// The refusal of a body over `max_bytes` (`[server] max_body_bytes`).
pub fn too_large(max_bytes: usize) -> GateError {
    GateError::new(
        ErrorKind::BodyTooLarge,
        format!("request body is larger than {max_bytes} bytes"),
    )
}

/// Parse a body strictly into a JSON value; see the module doc for why.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, GateError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        GateError::new(
            ErrorKind::BodyNotUtf8,
            format!(
                "request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    let violation = Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let seed = Strict {
        depth: 0,
        violation: &violation,
    };
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    parsed.map_err(|error| match violation.take() {
        Some(StrictViolation::Duplicate(key)) => GateError::new(
            ErrorKind::DuplicateKey,
            format!("request body has the key {key:?} twice in one object"),
        ),
        Some(StrictViolation::TooDeep) => GateError::new(
            ErrorKind::NestingTooDeep,
            format!("request body nests deeper than {MAX_DEPTH} levels"),
        ),
        None => GateError::new(
            ErrorKind::MalformedJson,
            format!("request body is not valid JSON: {error}"),
        ),
    })
}

enum StrictViolation {
    Duplicate(String),
    TooDeep,
}

/// A serde seed that builds a `Value` while counting depth and refusing duplicate keys;
/// serde_json's own `Value` silently keeps the last duplicate.
#[derive(Clone, Copy)]
struct Strict<'a> {
    depth: usize,
    violation: &'a Cell<Option<StrictViolation>>,
}

impl Strict<'_> {
    fn nested<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            self.violation.set(Some(StrictViolation::TooDeep));
            return Err(E::custom("nesting too deep"));
        }
        Ok(Strict {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    /// A whole number written as `7.0` or `7e0` is forwarded as `7`: the schema already
    /// reads it as the integer 7, and SWR must read the same.
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is exact
        if v.fract() == 0.0 && v.abs() < EXACT {
            return Ok(Value::Number((v as i64).into()));
        }
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                self.violation.set(Some(StrictViolation::Duplicate(key)));
                return Err(A::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(inner)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(body: &str) -> ErrorKind {
        parse_strict(body.as_bytes()).unwrap_err().kind
    }

    #[test]
    fn strict_parsing_refuses_each_ambiguity_with_its_own_code() {
        assert_eq!(kind(r#"[{"auth":1,"auth":7}]"#), ErrorKind::DuplicateKey);
        assert_eq!(kind(r#"{"a":{"b":1,"b":2}}"#), ErrorKind::DuplicateKey);
        assert_eq!(kind(&"[".repeat(MAX_DEPTH + 1)), ErrorKind::NestingTooDeep);
        assert_eq!(kind("[1,]"), ErrorKind::MalformedJson);
        assert_eq!(kind("[1] [2]"), ErrorKind::MalformedJson);
        assert_eq!(kind(r#""\ud800""#), ErrorKind::MalformedJson);
        assert_eq!(kind(""), ErrorKind::MalformedJson);
        assert_eq!(
            parse_strict(b"[\xff]").unwrap_err().kind,
            ErrorKind::BodyNotUtf8
        );
    }

    #[test]
    fn whole_numbers_are_canonical_integers() {
        let value = parse_strict(br#"[{"auth":7.0},{"auth":3e0},{"auth":1.5}]"#).unwrap();
        assert_eq!(value.to_string(), r#"[{"auth":7},{"auth":3},{"auth":1.5}]"#);
    }

    #[test]
    fn nesting_up_to_the_limit_is_fine() {
        let body = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_strict(body.as_bytes()).is_ok());
    }

    #[test]
    fn content_type_must_be_json_in_utf8() {
        let mut headers = HeaderMap::new();
        assert!(check_content_type(&headers).is_err());
        for ok in [
            "application/json",
            "application/json;charset=UTF-8",
            "Application/JSON; charset=utf8",
        ] {
            headers.insert("content-type", ok.parse().unwrap());
            assert!(check_content_type(&headers).is_ok(), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/json-patch+json",
            "application/json; charset=latin1",
            "application/x-www-form-urlencoded",
        ] {
            headers.insert("content-type", bad.parse().unwrap());
            assert_eq!(
                check_content_type(&headers).unwrap_err().kind,
                ErrorKind::UnsupportedMediaType,
                "{bad}"
            );
        }
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("content-encoding", "identity".parse().unwrap());
        assert!(check_content_type(&headers).is_ok());
        headers.append("content-encoding", "gzip".parse().unwrap());
        assert_eq!(
            check_content_type(&headers).unwrap_err().kind,
            ErrorKind::UnsupportedMediaType
        );
    }
}
