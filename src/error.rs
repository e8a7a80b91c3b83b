//! The errors swr-gate answers itself, in the JSON shape SWR uses so the official SDKs
//! parse them, with `SWR.GATE.*` codes so nobody mistakes them for SWR's own.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

/// Every distinct cause a client can be refused for. The code is part of the contract:
/// scripts match on it, so a variant's code never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    PathRejected,
    SchemaViolation,
    MalformedJson,
    DuplicateKey,
    NestingTooDeep,
    BodyNotUtf8,
    MethodOverride,
    QueryNotAllowed,
    AmbiguousMessage,
    /// A message hyper could not read as a request at all: it answers those itself, and
    /// the server puts this in place of its bare answer.
    MalformedMessage,
    HeadTooLarge,
    TargetTooLong,
    NotAuthenticated,
    UnknownCredential,
    BadSignature,
    StaleDate,
    Replay,
    /// The shared record of used signatures could not be asked.
    ReplayUnavailable,
    MalformedAuthorization,
    AmbiguousCredentials,
    TooManyAuthFailures,
    RateLimited,
    /// The process remembers as many of this client's recent signatures as it can.
    ReplayMemoryFull,
    RateLimitUnavailable,
    PolicyDenied,
    UnmatchedRoute,
    BodyTimeout,
    BodyTooLarge,
    UnsupportedMediaType,
    UpstreamUnreachable,
    NoToken,
    AuditUnavailable,
    UpstreamTimeout,
    /// The gateway stopped before the request was answered: only ever in an audit
    /// record, since no client is left to answer.
    Stopped,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        use ErrorKind::*;
        match self {
            PathRejected | SchemaViolation | MalformedJson | DuplicateKey | NestingTooDeep
            | BodyNotUtf8 | MethodOverride | QueryNotAllowed | AmbiguousMessage
            | MalformedMessage => StatusCode::BAD_REQUEST,
            HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            TargetTooLong => StatusCode::URI_TOO_LONG,
            NotAuthenticated
            | UnknownCredential
            | BadSignature
            | StaleDate
            | Replay
            | MalformedAuthorization
            | AmbiguousCredentials => StatusCode::UNAUTHORIZED,
            PolicyDenied => StatusCode::FORBIDDEN,
            TooManyAuthFailures | RateLimited | ReplayMemoryFull => StatusCode::TOO_MANY_REQUESTS,
            UnmatchedRoute => StatusCode::NOT_FOUND,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            NoToken | AuditUnavailable | RateLimitUnavailable | ReplayUnavailable | Stopped => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// `SWR.GATE.` + HTTP status + a four-digit id, like SWR's `SVCSTG.SWR.4010000`.
    pub fn code(self) -> &'static str {
        use ErrorKind::*;
        match self {
            PathRejected => "SWR.GATE.4000001",
            SchemaViolation => "SWR.GATE.4000002",
            MalformedJson => "SWR.GATE.4000003",
            DuplicateKey => "SWR.GATE.4000004",
            NestingTooDeep => "SWR.GATE.4000005",
            BodyNotUtf8 => "SWR.GATE.4000006",
            MethodOverride => "SWR.GATE.4000007",
            QueryNotAllowed => "SWR.GATE.4000008",
            AmbiguousMessage => "SWR.GATE.4000009",
            MalformedMessage => "SWR.GATE.4000010",
            TargetTooLong => "SWR.GATE.4140001",
            HeadTooLarge => "SWR.GATE.4310001",
            NotAuthenticated => "SWR.GATE.4010001",
            UnknownCredential => "SWR.GATE.4010002",
            BadSignature => "SWR.GATE.4010003",
            StaleDate => "SWR.GATE.4010004",
            Replay => "SWR.GATE.4010005",
            MalformedAuthorization => "SWR.GATE.4010006",
            AmbiguousCredentials => "SWR.GATE.4010007",
            PolicyDenied => "SWR.GATE.4030001",
            UnmatchedRoute => "SWR.GATE.4040001",
            RateLimited => "SWR.GATE.4290001",
            TooManyAuthFailures => "SWR.GATE.4290002",
            ReplayMemoryFull => "SWR.GATE.4290003",
            RateLimitUnavailable => "SWR.GATE.5030003",
            Stopped => "SWR.GATE.5030004",
            ReplayUnavailable => "SWR.GATE.5030005",
            BodyTimeout => "SWR.GATE.4080001",
            BodyTooLarge => "SWR.GATE.4130001",
            UnsupportedMediaType => "SWR.GATE.4150001",
            UpstreamUnreachable => "SWR.GATE.5020001",
            NoToken => "SWR.GATE.5030001",
            AuditUnavailable => "SWR.GATE.5030002",
            UpstreamTimeout => "SWR.GATE.5040001",
            Internal => "SWR.GATE.5000001",
        }
    }

    /// A short name for metrics labels and logs.
    pub fn name(self) -> &'static str {
        use ErrorKind::*;
        match self {
            PathRejected => "path_rejected",
            SchemaViolation => "schema_violation",
            MalformedJson => "malformed_json",
            DuplicateKey => "duplicate_key",
            NestingTooDeep => "nesting_too_deep",
            BodyNotUtf8 => "body_not_utf8",
            MethodOverride => "method_override",
            QueryNotAllowed => "query_not_allowed",
            AmbiguousMessage => "ambiguous_message",
            MalformedMessage => "malformed_message",
            HeadTooLarge => "head_too_large",
            TargetTooLong => "target_too_long",
            NotAuthenticated => "no_credential",
            UnknownCredential => "unknown_credential",
            BadSignature => "bad_signature",
            StaleDate => "stale_date",
            Replay => "replay",
            ReplayUnavailable => "replay_unavailable",
            MalformedAuthorization => "malformed_credential",
            AmbiguousCredentials => "ambiguous_credentials",
            TooManyAuthFailures => "too_many_failures",
            RateLimited => "rate_limited",
            ReplayMemoryFull => "replay_memory_full",
            PolicyDenied => "policy_denied",
            RateLimitUnavailable => "rate_limit_unavailable",
            UnmatchedRoute => "unmatched_route",
            BodyTimeout => "body_timeout",
            BodyTooLarge => "body_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            UpstreamUnreachable => "upstream_unreachable",
            NoToken => "no_token",
            AuditUnavailable => "audit_unavailable",
            UpstreamTimeout => "upstream_timeout",
            Stopped => "stopped",
            Internal => "internal",
        }
    }

    /// Which pipeline stage refused the request, as the audit record's `denied_by` says it.
    /// A new `auth` kind also goes into `metrics::AUTH_REFUSALS`, for its series.
    pub fn stage(self) -> &'static str {
        use ErrorKind::*;
        match self {
            PathRejected | MethodOverride | QueryNotAllowed | AmbiguousMessage | UnmatchedRoute
            | MalformedMessage | HeadTooLarge | TargetTooLong => "route",
            NotAuthenticated
            | UnknownCredential
            | BadSignature
            | StaleDate
            | Replay
            | ReplayUnavailable
            | MalformedAuthorization
            | AmbiguousCredentials
            | TooManyAuthFailures => "auth",
            MalformedJson | DuplicateKey | NestingTooDeep | BodyNotUtf8 | BodyTimeout
            | BodyTooLarge | UnsupportedMediaType => "body",
            RateLimited | RateLimitUnavailable | ReplayMemoryFull => "rate_limit",
            SchemaViolation => "schema",
            PolicyDenied => "policy",
            UpstreamUnreachable | UpstreamTimeout | NoToken | AuditUnavailable | Stopped
            | Internal => "upstream",
        }
    }
}

/// One violation inside a request body, located by JSON pointer (`""`: the whole
/// request), or one policy that denied it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Detail {
    pub pointer: String,
    pub reason: String,
    pub message: String,
    /// The `@id` of the policy this detail is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// A refusal: what went wrong, said so that a person understands it, and where.
#[derive(Debug, Clone)]
pub struct GateError {
    pub kind: ErrorKind,
    pub message: String,
    pub details: Vec<Detail>,
    /// Seconds the client should wait before trying again (429, 503).
    pub retry_after: Option<u64>,
    /// The rate limit that refused the request: (requests per period, remaining).
    pub rate_limit: Option<(u32, u32)>,
    /// SWR's status when its answer's head came but the rest failed: SWR did act.
    pub upstream_status: Option<u16>,
}

impl GateError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GateError {
            kind,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
            rate_limit: None,
            upstream_status: None,
        }
    }

    pub fn with_rate_limit(mut self, limit: u32, remaining: u32) -> Self {
        self.rate_limit = Some((limit, remaining));
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_details(mut self, details: Vec<Detail>) -> Self {
        self.details = details;
        self
    }

    /// The JSON body SWR's SDKs understand: `error_code`, `error_msg`, plus ours.
    pub fn body(&self, request_id: &str) -> Bytes {
        #[derive(Serialize)]
        struct Body<'a> {
            error_code: &'a str,
            error_msg: &'a str,
            request_id: &'a str,
            #[serde(skip_serializing_if = "<[Detail]>::is_empty")]
            details: &'a [Detail],
        }
        let body = Body {
            error_code: self.kind.code(),
            error_msg: &self.message,
            request_id,
            details: &self.details,
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    pub fn into_response(self, request_id: &str) -> Response<Bytes> {
        let mut response = Response::new(self.body(request_id));
        *response.status_mut() = self.kind.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(value) = HeaderValue::from_str(request_id) {
            headers.insert("x-request-id", value);
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.kind.status() == StatusCode::UNAUTHORIZED {
            // RFC 9110 §15.5.2: a 401 names the schemes that would be accepted.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"swr-gate\", SDK-HMAC-SHA256"),
            );
        }
        if let Some((limit, remaining)) = self.rate_limit {
            rate_limit_headers(headers, limit, remaining);
        }
        response
    }
}

/// `X-RateLimit-Limit` (requests per period) and `X-RateLimit-Remaining` (burst left).
pub fn rate_limit_headers(headers: &mut http::HeaderMap, limit: u32, remaining: u32) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
}

impl std::fmt::Display for GateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl std::error::Error for GateError {}

/// Whether an I/O error is the process or the system out of file descriptors (EMFILE,
/// ENFILE: the same numbers on every Unix swr-gate runs on), a passing state of the
/// gateway rather than a fault of what it tried to open.
pub fn out_of_files(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// The first `limit` characters of `text`: as much of a client's text (a path, a key
/// name in a message) as an answer or a record may quote.
pub fn at_most_chars(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    match text.char_indices().nth(limit) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// A wait as `Retry-After` seconds: rounded up, at least 1, so that a client that waits
/// what it is told is not refused again for the fraction left.
pub fn retry_seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}
