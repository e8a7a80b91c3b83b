//! Routing: which SWR operation a request is, decided on one safely decoded path.
//!
//! The checks (schema, policy, audit) and SWR must see the same names, so the path is
//! decoded exactly once here, anything ambiguous is refused, and what goes upstream is
//! rebuilt from the validated names rather than passed through.

use std::path::PathBuf;

use http::Method;
use serde::Deserialize;

use crate::error::{ErrorKind, GateError};

/// Longest request path accepted, in bytes as received. SWR's longest legitimate path
/// (64 + 128 + 64 characters of names plus the literals) stays well under this.
pub const MAX_PATH_BYTES: usize = 1024;

/// A path parameter, each with the SWR naming rule it must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    Namespace,
    Repository,
    AccessDomain,
}

impl Param {
    fn from_name(name: &str) -> Option<Param> {
        match name {
            "namespace" => Some(Param::Namespace),
            "repository" => Some(Param::Repository),
            "access_domain" => Some(Param::AccessDomain),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Param::Namespace => "namespace",
            Param::Repository => "repository",
            Param::AccessDomain => "access_domain",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(Param),
}

/// One route entry as written in `routes.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub operation: String,
    pub method: String,
    pub path: String,
    /// Relative to the policy directory; defaults to `schemas/<operation>.schema.json`.
    pub schema: Option<PathBuf>,
}

/// The operations the product exists to guard (contract §1): a route table without any of
/// them is refused, so that an emptied `routes.toml` cannot turn them into unmatched
/// requests.
pub const ALWAYS_GUARDED: [&str; 3] = [
    "create_user_repository_auth",
    "update_user_repository_auth",
    "update_repo_domains",
];

/// The route file: `sibling_methods` and `[[route]]` entries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// The methods of SWR's unguarded operations on the guarded paths (reading and
    /// deleting what the guarded ones write): left to `unmatched`. Any other method on a
    /// guarded path is refused, since SWR might take it for the guarded operation.
    #[serde(default)]
    pub sibling_methods: Vec<String>,
    #[serde(default)]
    pub route: Vec<RouteSpec>,
}

/// The refusal of a request no guarded route matches, under `unmatched = "reject"`.
pub fn unmatched(method: &Method, path: &str) -> GateError {
    GateError::new(
        ErrorKind::UnmatchedRoute,
        format!("{method} {path} is not an operation this gateway serves"),
    )
}

/// A `sibling_methods` entry. Compared exactly, as HTTP methods are, so it must be
/// written in uppercase like every method SWR serves.
pub fn parse_sibling_method(name: &str) -> Result<Method, String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "sibling method {name:?} must be an uppercase method name such as \"GET\""
        ));
    }
    Method::from_bytes(name.as_bytes()).map_err(|_| format!("invalid method {name:?}"))
}

#[derive(Debug, Clone)]
pub struct Route {
    pub operation: String,
    pub method: Method,
    pub schema: PathBuf,
    segments: Vec<Segment>,
}

impl Route {
    pub fn parse(spec: &RouteSpec) -> Result<Route, String> {
        let method = Method::from_bytes(spec.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("invalid method {:?}", spec.method))?;
        let Some(rest) = spec.path.strip_prefix('/') else {
            return Err(format!("path {:?} must start with '/'", spec.path));
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            let segment = if let Some(name) =
                raw.strip_prefix('{').and_then(|r| r.strip_suffix('}'))
            {
                let param = Param::from_name(name).ok_or_else(|| {
                    format!("unknown path parameter {{{name}}} (known: namespace, repository, access_domain)")
                })?;
                if segments.contains(&Segment::Param(param)) {
                    return Err(format!("path parameter {{{name}}} appears twice"));
                }
                Segment::Param(param)
            } else if raw.is_empty() || !raw.bytes().all(is_literal_byte) {
                return Err(format!(
                    "path segment {raw:?} must be non-empty and use only a-z, 0-9, '-', '_', '.'"
                ));
            } else {
                Segment::Literal(raw.to_owned())
            };
            segments.push(segment);
        }
        let schema = spec
            .schema
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("schemas/{}.schema.json", spec.operation)));
        Ok(Route {
            operation: spec.operation.clone(),
            method,
            schema,
            segments,
        })
    }

    /// The names this route's path carries, in order: what every request for it names.
    pub fn params(&self) -> impl Iterator<Item = Param> + '_ {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Param(param) => Some(*param),
            Segment::Literal(_) => None,
        })
    }

    /// Do decoded segments match the template? Literals compare case-insensitively so
    /// that a case variant of a guarded path is still that guarded path, never "unmatched".
    fn matches(&self, segments: &[Decoded]) -> bool {
        segments.len() == self.segments.len()
            && self
                .segments
                .iter()
                .zip(segments)
                .all(|(template, segment)| match template {
                    Segment::Literal(literal) => segment.text.eq_ignore_ascii_case(literal),
                    Segment::Param(_) => true,
                })
    }

    /// The names in segments that [`Route::matches`].
    fn target(&self, segments: &[Decoded]) -> Target {
        let mut target = Target::default();
        for (template, segment) in self.segments.iter().zip(segments) {
            if let Segment::Param(param) = template {
                target.set(*param, segment);
            }
        }
        target
    }

    /// Does this route match if its repository parameter may span several segments?
    /// Such a path is one that SWR might route to this operation while we would not.
    fn matches_loosely(&self, segments: &[Decoded]) -> bool {
        let Some(at) = self
            .segments
            .iter()
            .position(|s| *s == Segment::Param(Param::Repository))
        else {
            return false;
        };
        let tail = self.segments.len() - at - 1;
        if segments.len() <= self.segments.len() {
            return false;
        }
        let literal_ok = |template: &Segment, segment: &Decoded| match template {
            Segment::Literal(l) => segment.text.eq_ignore_ascii_case(l),
            Segment::Param(_) => true,
        };
        self.segments[..at]
            .iter()
            .zip(segments)
            .all(|(t, s)| literal_ok(t, s))
            && self.segments[at + 1..]
                .iter()
                .zip(&segments[segments.len() - tail..])
                .all(|(t, s)| literal_ok(t, s))
    }

    fn upstream_path(&self, target: &Target) -> String {
        let mut path = String::new();
        for segment in &self.segments {
            path.push('/');
            match segment {
                Segment::Literal(literal) => path.push_str(literal),
                Segment::Param(Param::Namespace) => {
                    path.push_str(target.namespace.as_deref().unwrap_or_default())
                }
                Segment::Param(Param::Repository) => path.push_str(
                    &target
                        .repository
                        .as_deref()
                        .unwrap_or_default()
                        .replace('/', "$"),
                ),
                Segment::Param(Param::AccessDomain) => {
                    path.push_str(target.access_domain.as_deref().unwrap_or_default())
                }
            }
        }
        path
    }
}

/// The names a guarded request is about, as the checks see them (repository with `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub namespace: Option<String>,
    pub repository: Option<String>,
    pub access_domain: Option<String>,
}

impl Target {
    pub fn get(&self, param: Param) -> Option<&str> {
        match param {
            Param::Namespace => self.namespace.as_deref(),
            Param::Repository => self.repository.as_deref(),
            Param::AccessDomain => self.access_domain.as_deref(),
        }
    }

    fn set(&mut self, param: Param, segment: &Decoded) {
        let value = Some(segment.text.clone());
        match param {
            Param::Namespace => self.namespace = value,
            Param::Repository => self.repository = value,
            Param::AccessDomain => self.access_domain = value,
        }
    }

    /// Check the names against SWR's rules; a repository's `$` is read as the `/` it
    /// stands for.
    pub fn validate(&mut self) -> Result<(), GateError> {
        if let Some(ns) = &self.namespace {
            check_name(Param::Namespace, ns, is_namespace(ns))?;
        }
        if let Some(repo) = &mut self.repository {
            // `$` is SWR's spelling of `/` in a repository name; `%2F` and `%24` arrive
            // here already decoded, so all three spellings become one name.
            *repo = repo.replace('$', "/");
            check_name(Param::Repository, repo, is_repository(repo))?;
        }
        if let Some(domain) = &self.access_domain {
            check_name(Param::AccessDomain, domain, is_access_domain(domain))?;
        }
        Ok(())
    }
}

fn check_name(param: Param, value: &str, ok: bool) -> Result<(), GateError> {
    if ok {
        return Ok(());
    }
    let rule = match param {
        Param::Namespace => "1-64 characters: lowercase letters, digits, '.', '_', '-', starting with a letter, ending with a letter or digit, no two separators together (but '__')",
        Param::Repository => "1-128 characters: lowercase letters, digits, '.', '/', '_', '-', starting and ending with a letter or digit, no two separators together (but '__')",
        Param::AccessDomain => "1-64 characters: letters, digits, '.', '_', '-', starting with a letter or digit",
    };
    Err(GateError::new(
        ErrorKind::PathRejected,
        format!(
            "{} {:?} is not a valid name ({rule})",
            param.name(),
            truncate(value, 80)
        ),
    ))
}

/// Where a request goes after routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A guarded operation: validate, decide, then send `upstream_path` (no query).
    Guarded {
        route: usize,
        target: Target,
        upstream_path: String,
    },
    /// Not a guarded operation; `path_and_query` passed every safety check. `target`:
    /// the names of SWR's own show or delete on a guarded path (a sibling method),
    /// checked as the guarded operation's are; none elsewhere.
    Unmatched {
        path_and_query: String,
        target: Target,
    },
}

/// The route table: data, so that guarding one more SWR operation is an entry and a schema.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    sibling_methods: Vec<Method>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>, sibling_methods: Vec<Method>) -> RouteTable {
        RouteTable {
            routes,
            sibling_methods,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn route(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    /// Decide what a request is. Every ambiguity is an error, never a fall-through to
    /// "unmatched", so that nothing SWR could take for a guarded operation slips past.
    pub fn resolve(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Result<Resolved, GateError> {
        let decoded = decode_path(path)?;
        let mut guarded_path_of = None;
        for (index, route) in self.routes.iter().enumerate() {
            // Whatever the method: a guarded path with a '/' in a name is ambiguous for
            // every operation SWR has on it, not only the guarded one.
            if route.matches_loosely(&decoded.segments) {
                return Err(GateError::new(
                    ErrorKind::PathRejected,
                    format!(
                        "path looks like {} with a '/' in a name; send '/' in a repository name as '$'",
                        route.operation
                    ),
                ));
            }
            if !route.matches(&decoded.segments) {
                continue;
            }
            // A server may read methods case-insensitively: `patch` is the guarded PATCH.
            if !route.method.as_str().eq_ignore_ascii_case(method.as_str()) {
                guarded_path_of.get_or_insert(index);
                continue;
            }
            let mut target = route.target(&decoded.segments);
            target.validate()?;
            if query.is_some() {
                return Err(GateError::new(
                    ErrorKind::QueryNotAllowed,
                    format!("{} takes no query string", route.operation),
                ));
            }
            let upstream_path = route.upstream_path(&target);
            return Ok(Resolved::Guarded {
                route: index,
                target,
                upstream_path,
            });
        }
        let mut target = Target::default();
        let mut path_and_query = match guarded_path_of {
            Some(_) if !self.sibling_methods.contains(method) => {
                return Err(self.method_refused(method, &decoded.segments));
            }
            // SWR's own show and delete on a guarded path: unmatched, but sent with the
            // names checked and spelled as for the guarded operation (`group$app`, also
            // when the SDK sent `group%2Fapp`).
            Some(index) => {
                let route = &self.routes[index];
                target = route.target(&decoded.segments);
                target.validate()?;
                route.upstream_path(&target)
            }
            None if decoded.has_encoded_separator => {
                return Err(GateError::new(
                    ErrorKind::PathRejected,
                    "encoded '/' is only accepted inside a repository name on a guarded path",
                ));
            }
            None => path.to_owned(),
        };
        if let Some(query) = query {
            check_query(query)?;
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        Ok(Resolved::Unmatched {
            path_and_query,
            target,
        })
    }

    /// The refusal of a method that is neither a guarded operation's nor a sibling's on
    /// a guarded path, naming the methods that are accepted there.
    fn method_refused(&self, method: &Method, segments: &[Decoded]) -> GateError {
        let mut accepted: Vec<String> = self
            .routes
            .iter()
            .filter(|route| route.matches(segments))
            .map(|route| format!("{} ({})", route.method, route.operation))
            .collect();
        accepted.extend(self.sibling_methods.iter().map(Method::to_string));
        GateError::new(
            ErrorKind::PathRejected,
            format!(
                "method {:?} is refused on a guarded path; accepted there: {}",
                truncate(method.as_str(), 20),
                accepted.join(", ")
            ),
        )
    }
}

/// One path segment, percent-decoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decoded {
    text: String,
}

struct DecodedPath {
    segments: Vec<Decoded>,
    has_encoded_separator: bool,
}

fn reject(message: impl Into<String>) -> GateError {
    GateError::new(ErrorKind::PathRejected, message)
}

/// Split on the raw `/` first, then decode each segment once: an encoded `%2F` stays
/// inside its segment and can never create or remove a path level.
fn decode_path(path: &str) -> Result<DecodedPath, GateError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(reject(format!(
            "path is longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(reject("path must start with '/'"));
    };
    if let Some(bad) = path.bytes().find(|b| !is_path_byte(*b)) {
        return Err(reject(format!(
            "path contains the byte 0x{bad:02x}, which is not allowed"
        )));
    }
    // One trailing slash names the same resource; matching ignores it.
    let rest = match rest.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => rest,
    };
    let mut segments = Vec::new();
    let mut has_encoded_separator = false;
    if rest.is_empty() {
        return Ok(DecodedPath {
            segments,
            has_encoded_separator,
        });
    }
    for raw in rest.split('/') {
        if raw.is_empty() {
            return Err(reject("path contains an empty segment ('//')"));
        }
        let bytes =
            percent_decode(raw).ok_or_else(|| reject("path contains an invalid percent-escape"))?;
        let text =
            String::from_utf8(bytes).map_err(|_| reject("path is not valid UTF-8 once decoded"))?;
        if text == "." || text == ".." {
            return Err(reject("path contains a '.' or '..' segment"));
        }
        if let Some(c) = text
            .chars()
            .find(|c| c.is_control() || *c == '\\' || *c == ';')
        {
            return Err(reject(format!(
                "path contains the character {:?}, which is not allowed",
                c
            )));
        }
        has_encoded_separator |= text.contains('/');
        segments.push(Decoded { text });
    }
    Ok(DecodedPath {
        segments,
        has_encoded_separator,
    })
}

fn check_query(query: &str) -> Result<(), GateError> {
    if query.len() > MAX_PATH_BYTES {
        return Err(reject(format!(
            "query is longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    if let Some(bad) = query.bytes().find(|b| !is_path_byte(*b) && *b != b'?') {
        return Err(reject(format!(
            "query contains the byte 0x{bad:02x}, which is not allowed"
        )));
    }
    Ok(())
}

/// Visible ASCII except `\` (which some servers read as `/`); raw `;` is refused too,
/// since servlet-style backends strip `;params` from segments.
fn is_path_byte(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && b != b'\\' && b != b';' && b != b'#'
}

fn is_literal_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
}

/// Decode `%XX` escapes once; `None` for a malformed escape.
pub(crate) fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// SWR's naming rule: lowercase alphanumerics joined by single separators (`__` allowed).
fn is_swr_name(
    name: &str,
    max_len: usize,
    separators: &[u8],
    must_start_with_letter: bool,
) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > max_len {
        return false;
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if must_start_with_letter && !bytes[0].is_ascii_lowercase() {
        return false;
    }
    let mut run: &[u8] = &[];
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if alnum(b) {
            if !(run.is_empty() || run.len() == 1 || run == b"__") {
                return false;
            }
            run = &[];
        } else if separators.contains(&b) {
            if i == 0 {
                return false;
            }
            if run.is_empty() {
                run_start = i;
            }
            run = &bytes[run_start..=i];
        } else {
            return false;
        }
    }
    run.is_empty()
}

pub fn is_namespace(name: &str) -> bool {
    is_swr_name(name, 64, b"._-", true)
}

pub fn is_repository(name: &str) -> bool {
    is_swr_name(name, 128, b"./_-", false)
}

pub fn is_access_domain(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn truncate(value: &str, max_chars: usize) -> String {
    value.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let specs: RouteFile = toml::from_str(include_str!("../policies/routes.toml")).unwrap();
        RouteTable::new(
            specs
                .route
                .iter()
                .map(|s| Route::parse(s).unwrap())
                .collect(),
            specs
                .sibling_methods
                .iter()
                .map(|m| parse_sibling_method(m).unwrap())
                .collect(),
        )
    }

    fn resolve(method: &str, path: &str) -> Result<Resolved, GateError> {
        table().resolve(&Method::from_bytes(method.as_bytes()).unwrap(), path, None)
    }

    fn guarded(method: &str, path: &str) -> (String, Target) {
        match resolve(method, path) {
            Ok(Resolved::Guarded {
                upstream_path,
                target,
                ..
            }) => (upstream_path, target),
            other => panic!("{method} {path}: expected guarded, got {other:?}"),
        }
    }

    #[test]
    fn names_follow_swr_rules() {
        for ok in ["a", "team-a", "a.b_c", "a__b", "a1", "abc9"] {
            assert!(is_namespace(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "A",
            "a-",
            "a..b",
            "a___b",
            "a-.b",
            "a_",
            "_a",
            &"a".repeat(65),
        ] {
            assert!(!is_namespace(bad), "{bad}");
        }
        for ok in ["1", "group/a/b", "a__b", "nginx", "x.y-z"] {
            assert!(is_repository(ok), "{ok}");
        }
        for bad in ["/a", "a/", "a//b", "a/.b", "A", "a$b", &"a".repeat(129)] {
            assert!(!is_repository(bad), "{bad}");
        }
    }

    #[test]
    fn the_three_repository_spellings_are_one_name() {
        for path in [
            "/v2/manage/namespaces/ns/repos/group$app/access",
            "/v2/manage/namespaces/ns/repos/group%24app/access",
            "/v2/manage/namespaces/ns/repos/group%2Fapp/access",
            "/v2/manage/namespaces/ns/repos/group%2fapp/access",
        ] {
            let (upstream, target) = guarded("POST", path);
            assert_eq!(upstream, "/v2/manage/namespaces/ns/repos/group$app/access");
            assert_eq!(target.repository.as_deref(), Some("group/app"));
        }
    }

    #[test]
    fn case_and_trailing_slash_variants_stay_guarded() {
        for path in [
            "/V2/MANAGE/namespaces/ns/repos/app/access",
            "/v2/manage/namespaces/ns/repos/app/access/",
            "/v2/m%61nage/namespaces/ns/repos/app/access",
        ] {
            let (upstream, _) = guarded("POST", path);
            assert_eq!(upstream, "/v2/manage/namespaces/ns/repos/app/access");
        }
        let (upstream, target) = guarded(
            "PATCH",
            "/v2/manage/namespaces/ns/repositories/app/access-domains/Partner_1",
        );
        assert_eq!(
            upstream,
            "/v2/manage/namespaces/ns/repositories/app/access-domains/Partner_1"
        );
        assert_eq!(target.access_domain.as_deref(), Some("Partner_1"));
    }

    #[test]
    fn hostile_paths_are_rejected() {
        for path in [
            "/v2/manage/namespaces/ns/repos/../repos/app/access",
            "/v2/manage/namespaces/ns/repos/%2e%2e/app/access",
            "/v2/manage/namespaces/ns/repos/./app/access",
            "/v2/manage/namespaces//ns/repos/app/access",
            "//v2/manage/namespaces/ns/repos/app/access",
            "/v2/manage/namespaces/ns/repos/a\\b/access",
            "/v2/manage/namespaces/ns/repos/a%5Cb/access",
            "/v2/manage/namespaces/ns/repos/a%00b/access",
            "/v2/manage/namespaces/ns/repos/a%0ab/access",
            "/v2/manage/namespaces/ns/repos/a%ffb/access",
            "/v2/manage/namespaces/ns/repos/a%zzb/access",
            "/v2/manage/namespaces/ns/repos/a%2/access",
            "/v2/manage/namespaces/ns/repos/app;x=1/access",
            "/v2/manage/namespaces/ns/repos/app/access;x",
            "/v2/manage/namespaces/NS/repos/app/access",
            "/v2/manage/namespaces/ns/repos/App/access",
            "/v2/manage/namespaces/ns/repos/a/b/access",
            "/v2/manage/namespaces/ns/repos/a%252Fb/access",
            "/v2/manage/namespaces/ns/repos/a$$b/access",
            "/v2/other/x%2Fy",
            "relative",
        ] {
            let err = resolve("POST", path).expect_err(path);
            assert_eq!(err.kind, ErrorKind::PathRejected, "{path}: {err}");
        }
        let long = format!("/v2/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(resolve("GET", &long).is_err());
    }

    #[test]
    fn a_multi_segment_repository_is_refused_for_every_guarded_operation() {
        let err = resolve(
            "PATCH",
            "/v2/manage/namespaces/ns/repositories/a/b/access-domains/d",
        )
        .unwrap_err();
        assert!(err.message.contains("update_repo_domains"), "{err}");
    }

    #[test]
    fn siblings_and_other_paths_are_unmatched() {
        assert_eq!(
            resolve("GET", "/v2/manage/namespaces/ns/repos/app/access").unwrap(),
            Resolved::Unmatched {
                path_and_query: "/v2/manage/namespaces/ns/repos/app/access".into(),
                target: Target {
                    namespace: Some("ns".into()),
                    repository: Some("app".into()),
                    access_domain: None,
                },
            }
        );
        assert!(matches!(
            resolve(
                "DELETE",
                "/v2/manage/namespaces/ns/repositories/app/access-domains/d"
            )
            .unwrap(),
            Resolved::Unmatched { .. }
        ));
        assert!(matches!(
            resolve("GET", "/v2/manage/repos").unwrap(),
            Resolved::Unmatched { .. }
        ));
    }

    #[test]
    fn siblings_go_to_swr_with_the_names_spelled_canonically() {
        for path in [
            "/v2/manage/namespaces/ns/repositories/group%2Fapp/access-domains/d",
            "/v2/manage/namespaces/ns/repositories/group%24app/access-domains/d/",
            "/v2/manage/namespaces/ns/repositories/group$app/access-domains/d",
        ] {
            assert_eq!(
                resolve("DELETE", path).unwrap(),
                Resolved::Unmatched {
                    path_and_query:
                        "/v2/manage/namespaces/ns/repositories/group$app/access-domains/d".into(),
                    target: Target {
                        namespace: Some("ns".into()),
                        repository: Some("group/app".into()),
                        access_domain: Some("d".into()),
                    },
                },
                "{path}"
            );
        }
        let bad_name = resolve("GET", "/v2/manage/namespaces/NS/repos/app/access");
        assert_eq!(bad_name.unwrap_err().kind, ErrorKind::PathRejected);
    }

    #[test]
    fn a_method_in_any_case_is_the_guarded_operation() {
        for method in ["post", "Post", "pOST"] {
            guarded(method, "/v2/manage/namespaces/ns/repos/app/access");
        }
        for method in ["patch", "Patch"] {
            guarded(method, "/v2/manage/namespaces/ns/repos/app/access");
            guarded(
                method,
                "/v2/manage/namespaces/ns/repositories/app/access-domains/d/",
            );
        }
    }

    #[test]
    fn other_methods_on_a_guarded_path_are_refused() {
        for (method, path) in [
            ("PUT", "/v2/manage/namespaces/ns/repos/app/access"),
            ("OPTIONS", "/v2/manage/namespaces/ns/repos/app/access"),
            ("get", "/v2/manage/namespaces/ns/repos/app/access"),
            ("Delete", "/V2/manage/namespaces/ns/repos/app/access/"),
            ("FOO", "/v2/manage/namespaces/ns/repos/app/access"),
            (
                "POST",
                "/v2/manage/namespaces/ns/repositories/app/access-domains/d",
            ),
            (
                "PUT",
                "/v2/manage/namespaces/ns/repositories/app/access-domains/d",
            ),
        ] {
            let err = resolve(method, path).expect_err(method);
            assert_eq!(err.kind, ErrorKind::PathRejected, "{method} {path}: {err}");
        }
        let err = resolve("PUT", "/v2/manage/namespaces/ns/repos/app/access").unwrap_err();
        assert!(
            err.message.contains("POST (create_user_repository_auth)")
                && err.message.contains("DELETE"),
            "{err}"
        );
    }

    #[test]
    fn sibling_methods_must_be_uppercase() {
        assert_eq!(parse_sibling_method("GET").unwrap(), Method::GET);
        for bad in ["get", "", "G-T"] {
            assert!(parse_sibling_method(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn guarded_operations_take_no_query() {
        let err = table()
            .resolve(
                &Method::POST,
                "/v2/manage/namespaces/ns/repos/app/access",
                Some("x=1"),
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::QueryNotAllowed);
    }
}
