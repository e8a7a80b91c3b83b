//! `/metrics` (contract §7): Prometheus/OpenMetrics text through `prometheus-client`.
//! Label values come only from fixed sets (operation ids, decisions, status codes,
//! reason names), never from what a client sends, so no secret and no unbounded label
//! can reach a scrape.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use tokio::sync::Semaphore;

use crate::audit::{Decision, Health};
use crate::error::ErrorKind;
use crate::iam::TokenSource;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    decision: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Every metric swr-gate exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<OperationLabel, Histogram>,
    upstream_duration: Family<OperationLabel, Histogram>,
    rate_limited: Family<OperationLabel, Counter>,
    auth_failures: Family<ReasonLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    connections_refused: Counter,
}

/// What one finished request contributes.
pub struct Observation<'a> {
    pub operation: &'a str,
    pub decision: Decision,
    pub status: u16,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    /// Stage and error name when the request was refused (`("auth", "replay")`).
    pub refusal: Option<(&'static str, &'static str)>,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to ~8 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

/// The IAM token's figures, read from the token source at each scrape.
struct TokenCollector(Arc<TokenSource>);

impl std::fmt::Debug for TokenCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCollector")
    }
}

impl Collector for TokenCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let mut refreshes = encoder.encode_descriptor(
            "iam_token_refreshes",
            "IAM token fetches (or file/variable reads) by result",
            None,
            MetricType::Counter,
        )?;
        for (result, count) in [
            ("ok", stats.refreshes_ok),
            ("error", stats.refreshes_failed),
        ] {
            ConstCounter::new(count).encode(refreshes.encode_family(&ResultLabel { result })?)?;
        }
        if let Some(expires_in) = stats.expires_in {
            let gauge = ConstGauge::new(expires_in.as_secs_f64());
            gauge.encode(encoder.encode_descriptor(
                "iam_token_expires_in_seconds",
                "How long the held IAM token stays usable",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The client connections holding a place among `max_connections`, read at each scrape:
/// what to alert on before new connections start to wait.
#[derive(Debug)]
pub struct ConnectionPlaces {
    pub places: Arc<Semaphore>,
    pub max: usize,
}

impl Collector for ConnectionPlaces {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let held = self.max.saturating_sub(self.places.available_permits());
        let open = ConstGauge::new(held as i64);
        open.encode(encoder.encode_descriptor(
            "connections",
            "Client connections holding a place among [server] max_connections (with those whose requests still run after the client left)",
            None,
            open.metric_type(),
        )?)?;
        let max = ConstGauge::new(self.max as i64);
        max.encode(encoder.encode_descriptor(
            "connections_max",
            "[server] max_connections: past it, new connections wait",
            None,
            max.metric_type(),
        )?)
    }
}

/// The audit writer's failure count, read at each scrape.
#[derive(Debug)]
struct AuditCollector(Arc<Health>);

impl Collector for AuditCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let failures = ConstCounter::new(self.0.failures.load(Ordering::Relaxed));
        failures.encode(encoder.encode_descriptor(
            "audit_write_errors",
            "Audit records that could not be written",
            None,
            failures.metric_type(),
        )?)
    }
}

/// The refusals counted as failed authentications: every error kind of the `auth` stage.
const AUTH_REFUSALS: [ErrorKind; 9] = [
    ErrorKind::NotAuthenticated,
    ErrorKind::UnknownCredential,
    ErrorKind::BadSignature,
    ErrorKind::StaleDate,
    ErrorKind::Replay,
    ErrorKind::ReplayUnavailable,
    ErrorKind::MalformedAuthorization,
    ErrorKind::AmbiguousCredentials,
    ErrorKind::TooManyAuthFailures,
];

impl Metrics {
    /// `operations`: the route table's and `forward`, each with a `rate_limited` series
    /// from the start (as every `auth_failures` reason and `config_reloads` result), so
    /// that an alert on them has a series before the first refusal.
    pub fn new(
        tokens: Arc<TokenSource>,
        audit: Arc<Health>,
        connections: ConnectionPlaces,
        operations: &[String],
    ) -> Self {
        let mut registry = Registry::with_prefix("swr_gate");
        registry.register_collector(Box::new(TokenCollector(tokens)));
        registry.register_collector(Box::new(AuditCollector(audit)));
        registry.register_collector(Box::new(connections));
        let requests = Family::default();
        let duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let upstream_duration =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let rate_limited: Family<OperationLabel, Counter> = Family::default();
        let auth_failures: Family<ReasonLabel, Counter> = Family::default();
        let config_reloads: Family<ResultLabel, Counter> = Family::default();
        // Both series from the start, so an alert on errors has a series before the
        // first reload.
        for result in ["ok", "error"] {
            let _ = config_reloads.get_or_create(&ResultLabel { result });
        }
        for operation in operations {
            let _ = rate_limited.get_or_create(&OperationLabel {
                operation: operation.clone(),
            });
        }
        for refusal in AUTH_REFUSALS {
            let _ = auth_failures.get_or_create(&ReasonLabel {
                reason: refusal.name(),
            });
        }
        registry.register(
            "requests",
            "Requests by operation, decision and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to answer",
            duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time SWR took to answer",
            upstream_duration.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit",
            rate_limited.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed authentications by reason",
            auth_failures.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            config_reloads.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections reset unserved: their address held its share ([server] max_connections_per_address)",
            connections_refused.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            upstream_duration,
            rate_limited,
            auth_failures,
            config_reloads,
            connections_refused,
        }
    }

    pub fn observe(&self, seen: &Observation) {
        let operation = OperationLabel {
            operation: seen.operation.to_owned(),
        };
        let decision = match seen.decision {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Error => "error",
        };
        self.requests
            .get_or_create(&RequestLabels {
                operation: seen.operation.to_owned(),
                decision,
                status: seen.status,
            })
            .inc();
        self.duration
            .get_or_create(&operation)
            .observe(seen.duration.as_secs_f64());
        if let Some(upstream) = seen.upstream {
            self.upstream_duration
                .get_or_create(&operation)
                .observe(upstream.as_secs_f64());
        }
        match seen.refusal {
            Some(("auth", reason)) => {
                self.auth_failures
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
            }
            // A limit that could not be checked (Redis away) refused nobody for rate; a
            // client past its share of the replay memory was refused for it.
            Some(("rate_limit", "rate_limited" | "replay_memory_full")) => {
                self.rate_limited.get_or_create(&operation).inc();
            }
            _ => {}
        }
    }

    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_refusals_are_the_auth_stage_s_with_distinct_reasons() {
        let reasons: std::collections::HashSet<_> =
            AUTH_REFUSALS.iter().map(|kind| kind.name()).collect();
        assert_eq!(reasons.len(), AUTH_REFUSALS.len());
        assert!(AUTH_REFUSALS.iter().all(|kind| kind.stage() == "auth"));
    }
}
