//! Where the injected `X-Auth-Token` comes from. Clients never hold IAM credentials;
//! the gateway alone does, behind this one interface.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::HeaderValue;

use crate::config::{Config, IamMethod};
use crate::error::{ErrorKind, GateError};

/// An IAM token. Its `Debug` is redacted so it cannot reach a log by accident.
#[derive(Clone)]
pub struct Token(HeaderValue);

impl Token {
    /// A token read from the environment or a file; surrounding whitespace is dropped.
    pub fn parse(text: &str) -> Option<Token> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let mut value = HeaderValue::from_str(text).ok()?;
        value.set_sensitive(true);
        Some(Token(value))
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The token sources. `current` is on every guarded request's path, so it only reads
/// what a background task keeps up to date.
pub struct TokenSource {
    current: ArcSwapOption<Token>,
    origin: Origin,
}

enum Origin {
    Env(String),
    File(PathBuf),
}

impl TokenSource {
    pub fn from_config(config: &Config) -> TokenSource {
        let origin = match config.iam.method {
            IamMethod::TokenFile => Origin::File(
                config.resolve(config.iam.token_file.as_deref().unwrap_or("token".as_ref())),
            ),
            _ => Origin::Env(config.iam.token_env.clone().unwrap_or_default()),
        };
        let source = TokenSource {
            current: ArcSwapOption::empty(),
            origin,
        };
        source.reload();
        source
    }

    /// The token to inject, or 503 while none is held.
    pub fn current(&self) -> Result<Token, GateError> {
        match &*self.current.load() {
            Some(token) => Ok(Token::clone(token)),
            None => Err(GateError::new(ErrorKind::NoToken, self.why_not())),
        }
    }

    pub fn is_ready(&self) -> Result<(), String> {
        match &*self.current.load() {
            Some(_) => Ok(()),
            None => Err(self.why_not()),
        }
    }

    fn why_not(&self) -> String {
        match &self.origin {
            Origin::Env(var) => {
                format!("no IAM token: the environment variable {var} is not set or empty")
            }
            Origin::File(path) => format!(
                "no IAM token: {} is missing, unreadable or empty",
                path.display()
            ),
        }
    }

    fn reload(&self) {
        let token = match &self.origin {
            Origin::Env(var) => std::env::var(var).ok().and_then(|t| Token::parse(&t)),
            Origin::File(path) => std::fs::read_to_string(path)
                .ok()
                .and_then(|t| Token::parse(&t)),
        };
        self.current.store(token.map(Arc::new));
    }

    /// Keep a file token current: a secret rotated by another process (a Kubernetes
    /// Secret update, a renewal job) takes effect within a second, no restart needed.
    pub fn spawn_watcher(self: &Arc<Self>) {
        let Origin::File(path) = &self.origin else {
            return;
        };
        let path = path.clone();
        let source = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen: Option<(SystemTime, u64)> = None;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(source) = source.upgrade() else {
                    return;
                };
                let stamp = std::fs::metadata(&path)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())));
                if stamp != seen {
                    seen = stamp;
                    source.reload();
                    tracing::info!(path = %path.display(), held = source.is_ready().is_ok(), "IAM token file re-read");
                }
            }
        });
    }
}
