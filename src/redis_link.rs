//! A connection to a Redis shared by the replicas of a deployment: rate limits and the
//! replay guard keep their state there, so every replica sees the same counts and the
//! same used signatures.

use std::future::Future;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::RedisResult;
use tokio::sync::Mutex;

/// How long one call may take before Redis counts as unreachable.
pub const TIMEOUT: Duration = Duration::from_millis(250);

pub struct RedisLink {
    url: String,
    /// Connected on first use, so the gateway starts while Redis is down; the manager
    /// reconnects by itself afterwards.
    connection: Mutex<Option<ConnectionManager>>,
}

impl RedisLink {
    pub fn new(url: String) -> RedisLink {
        RedisLink {
            url,
            connection: Mutex::new(None),
        }
    }

    pub async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(200)))
            .set_response_timeout(Some(Duration::from_millis(200)))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| e.to_string())?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Make one call, and make it again once when the connection it went out on had
    /// been dropped (Redis restarted, or closed it as idle): the manager only finds that
    /// out from a call failing on it, and reconnects as it does, so without the second
    /// try the first request after every idle spell or failover would be refused.
    /// `call` learns whether it is the second try: a call that may have been carried
    /// out before the connection broke has to tell its own earlier write from another's.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, String>
    where
        F: FnMut(ConnectionManager, bool) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let connection = self.connection().await?;
        match call(connection.clone(), false).await {
            Err(error) if error.is_connection_dropped() || error.is_unrecoverable_error() => {
                call(connection, true).await.map_err(|e| e.to_string())
            }
            outcome => outcome.map_err(|e| e.to_string()),
        }
    }
}

/// A Redis URL from the config: `KEY` as written, or `KEY_env`, the environment variable
/// holding it (a URL with a password is a secret, which never stands in the file).
/// `what` names the setting in problems.
pub fn url(
    written: Option<&str>,
    variable: Option<&str>,
    what: &str,
) -> Result<Option<String>, String> {
    let url = match (written, variable) {
        (None, None) => return Ok(None),
        (Some(url), None) => url.to_owned(),
        (None, Some(variable)) => std::env::var(variable)
            .ok()
            .filter(|url| !url.trim().is_empty())
            .ok_or_else(|| {
                format!(
                    "{what}_env: the environment variable {} is not set or empty",
                    crate::config::variable_shown(variable)
                )
            })?,
        (Some(_), Some(_)) => return Err(format!("give {what} or {what}_env, not both")),
    };
    let client = redis::Client::open(url.as_str())
        .map_err(|error| format!("{what} is not a Redis URL: {error}"))?;
    let has_password = client
        .get_connection_info()
        .redis_settings()
        .password()
        .is_some();
    if has_password && written.is_some() {
        return Err(format!(
            "{what} holds a password, which never stands in the file: put the URL in an environment variable named by {what}_env"
        ));
    }
    Ok(Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_comes_from_the_file_or_the_environment_and_must_be_redis() {
        assert_eq!(url(None, None, "redis_url"), Ok(None));
        let written = url(Some("redis://127.0.0.1:6379"), None, "redis_url");
        assert_eq!(written, Ok(Some("redis://127.0.0.1:6379".into())));
        std::env::set_var("SWR_GATE_TEST_REDIS_LINK", "redis://:secret@127.0.0.1:1");
        let from_env = url(None, Some("SWR_GATE_TEST_REDIS_LINK"), "redis_url");
        assert_eq!(from_env, Ok(Some("redis://:secret@127.0.0.1:1".into())));
        for (written, variable) in [
            (Some("ftp://127.0.0.1:1"), None),
            (Some("redis://127.0.0.1:99999"), None),
            (None, Some("SWR_GATE_TEST_REDIS_LINK_UNSET")),
            (Some("redis://a"), Some("SWR_GATE_TEST_REDIS_LINK")),
            (Some("redis://:secret@127.0.0.1:1"), None),
            (Some("redis://user:secret@127.0.0.1:1"), None),
        ] {
            assert!(url(written, variable, "redis_url").is_err(), "{written:?}");
        }
    }
}
