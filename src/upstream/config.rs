//! `[[upstreams]]`: the config of a named group of targets, how they are
//! balanced, when one is ejected, and when a request is tried again.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigDuration;

/// Targets per upstream: the balancer keeps the targets a request already
/// tried in a 64-bit mask.
pub const MAX_TARGETS: usize = 64;
/// The largest `weight`: the weighted schedule has one slot per unit of
/// weight, so this bounds it to 64 × 100 slots.
pub const MAX_WEIGHT: u32 = 100;
/// The most tries after the first one.
pub const MAX_RETRY_ATTEMPTS: u32 = 5;

/// Whether a failing upstream makes the gateway unready.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// Reported in `/readyz` and in metrics; the gateway stays ready (its
    /// other routes still work).
    #[default]
    Report,
    /// `/readyz` answers 503 while no target of this upstream is reachable.
    Require,
}

/// How a request's target is chosen.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn, each target as often as its weight says (nginx's smooth
    /// weighted round robin; with equal weights, plain round robin).
    #[default]
    RoundRobin,
    /// The same schedule as `round_robin`, named for configs that set weights.
    Weighted,
    /// The target with the fewest requests in flight per unit of weight.
    LeastOutstanding,
}

/// Which HTTP version requests to the targets use.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// `https://` targets offer `h2` and `http/1.1` by ALPN and speak what
    /// the target picks; `http://` targets speak HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only (ALPN offers only `http/1.1`).
    Http1,
    /// HTTP/2 only: `h2` by ALPN over TLS (a target that does not pick it
    /// is a connect failure), prior-knowledge h2c over plain TCP.
    H2,
}

/// One target: a base URL, or a table with its weight.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TargetConfig {
    Url(String),
    Weighted {
        url: String,
        #[serde(default = "TargetConfig::default_weight")]
        weight: u32,
    },
}

impl TargetConfig {
    fn default_weight() -> u32 {
        1
    }

    pub fn url(&self) -> &str {
        match self {
            TargetConfig::Url(url) | TargetConfig::Weighted { url, .. } => url,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            TargetConfig::Url(_) => 1,
            TargetConfig::Weighted { weight, .. } => *weight,
        }
    }
}

impl From<&str> for TargetConfig {
    fn from(url: &str) -> Self {
        TargetConfig::Url(url.to_string())
    }
}

impl PartialEq<&str> for TargetConfig {
    fn eq(&self, other: &&str) -> bool {
        self.url() == *other
    }
}

/// `[upstreams.passive_health]`: consecutive failures open a target's
/// circuit breaker (the target is ejected) for a cool-down that doubles
/// with every ejection in a row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthConfig {
    /// Consecutive failures that eject a target; 0 turns ejection off.
    #[serde(default = "PassiveHealthConfig::default_max_failures")]
    pub max_failures: u32,
    /// The first cool-down.
    #[serde(default = "PassiveHealthConfig::default_ejection")]
    pub ejection: ConfigDuration,
    /// The longest cool-down.
    #[serde(default = "PassiveHealthConfig::default_max_ejection")]
    pub max_ejection: ConfigDuration,
    /// Response statuses that count as a failure of the target.
    #[serde(default = "gateway_errors")]
    pub failure_statuses: Vec<u16>,
}

impl PassiveHealthConfig {
    fn default_max_failures() -> u32 {
        5
    }
    fn default_ejection() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(5))
    }
    fn default_max_ejection() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(300))
    }
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            max_failures: Self::default_max_failures(),
            ejection: Self::default_ejection(),
            max_ejection: Self::default_max_ejection(),
            failure_statuses: gateway_errors(),
        }
    }
}

/// 502, 503 and 504: a target's own proxy or server saying it cannot serve.
fn gateway_errors() -> Vec<u16> {
    vec![502, 503, 504]
}

/// `[upstreams.health_check]`: a request to every target on an interval.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// The path asked for with `GET`.
    pub path: String,
    #[serde(default = "HealthCheckConfig::default_interval")]
    pub interval: ConfigDuration,
    /// For the connection and the response head together.
    #[serde(default = "HealthCheckConfig::default_timeout")]
    pub timeout: ConfigDuration,
    /// Passing checks in a row that bring a target back.
    #[serde(default = "HealthCheckConfig::default_threshold")]
    pub healthy_threshold: u32,
    /// Failing checks in a row that take a target out.
    #[serde(default = "HealthCheckConfig::default_threshold")]
    pub unhealthy_threshold: u32,
    /// Statuses that pass; any 2xx by default.
    #[serde(default)]
    pub expected_status: Vec<u16>,
    /// The `Host` sent; the target's authority by default.
    pub host: Option<String>,
}

impl HealthCheckConfig {
    fn default_interval() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(5))
    }
    fn default_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(2))
    }
    fn default_threshold() -> u32 {
        2
    }

    pub fn passes(&self, status: u16) -> bool {
        if self.expected_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expected_status.contains(&status)
        }
    }
}

/// `[upstreams.retries]`: trying a failed request again, on another target
/// when there is one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries after the first; 0 turns retries off.
    #[serde(default = "RetryConfig::default_attempts")]
    pub attempts: u32,
    /// Retries may add at most this share of the upstream's requests.
    #[serde(default = "RetryConfig::default_budget")]
    pub budget: f64,
    /// Retries allowed beyond the share, so that a quiet upstream can
    /// still retry (the budget's bucket holds at most this many).
    #[serde(default = "RetryConfig::default_min_retries")]
    pub min_retries: u32,
    /// Response statuses that are tried again (idempotent requests only).
    #[serde(default = "gateway_errors")]
    pub statuses: Vec<u16>,
    /// Also retry an idempotent request whose response head did not come
    /// within `timeout` (each try waits the whole timeout).
    #[serde(default)]
    pub on_timeout: bool,
}

impl RetryConfig {
    fn default_attempts() -> u32 {
        1
    }
    fn default_budget() -> f64 {
        0.2
    }
    fn default_min_retries() -> u32 {
        10
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: Self::default_attempts(),
            budget: Self::default_budget(),
            min_retries: Self::default_min_retries(),
            statuses: gateway_errors(),
            on_timeout: false,
        }
    }
}

/// `[[upstreams]]`: a named group of backend targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// The backend's OpenAPI document: every route to this upstream
    /// validates requests by it (a route's `validate.openapi` wins).
    pub openapi: Option<crate::stage::validate::openapi::OpenApiConfig>,
    /// `http://host:port` base URLs, or `{ url, weight }` tables.
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub balance: Balance,
    /// HTTP/1.1, HTTP/2, or what ALPN says (`https://` targets).
    #[serde(default)]
    pub protocol: Protocol,
    /// Time to establish a TCP connection to a target.
    #[serde(default = "UpstreamConfig::default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// Time from sending the request until the response head arrives.
    #[serde(default = "UpstreamConfig::default_timeout")]
    pub timeout: ConfigDuration,
    /// How long an idle pooled connection is kept.
    #[serde(default = "UpstreamConfig::default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Idle pooled connections kept per target.
    #[serde(default = "UpstreamConfig::default_max_idle")]
    pub max_idle_connections: usize,
    /// Requests in flight (so connections open) per target at most.
    #[serde(default = "UpstreamConfig::default_max_connections")]
    pub max_connections: usize,
    /// How long a request waits for a free connection when every target
    /// is at `max_connections`; then 503 with `Retry-After`.
    #[serde(default = "UpstreamConfig::default_queue_timeout")]
    pub queue_timeout: ConfigDuration,
    /// Send the client's `Host` upstream instead of the target's authority.
    #[serde(default)]
    pub preserve_host: bool,
    /// Whether this upstream being unreachable makes the gateway unready.
    #[serde(default)]
    pub readiness: Readiness,
    #[serde(default)]
    pub passive_health: PassiveHealthConfig,
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub retries: RetryConfig,
    /// For `https://` targets: the CA, SNI name, client certificate.
    #[serde(default)]
    pub tls: super::connect::UpstreamTlsConfig,
}

impl UpstreamConfig {
    pub(super) fn default_connect_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(5))
    }
    pub(super) fn default_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(30))
    }
    pub(super) fn default_idle_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(90))
    }
    fn default_max_idle() -> usize {
        256
    }
    fn default_max_connections() -> usize {
        1024
    }
    fn default_queue_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(1))
    }

    /// An upstream named `name` with these targets and every default.
    pub fn with_targets(name: &str, targets: &[&str]) -> Self {
        UpstreamConfig {
            name: name.into(),
            openapi: None,
            targets: targets.iter().map(|t| TargetConfig::from(*t)).collect(),
            balance: Balance::default(),
            protocol: Protocol::default(),
            connect_timeout: Self::default_connect_timeout(),
            timeout: Self::default_timeout(),
            idle_timeout: Self::default_idle_timeout(),
            max_idle_connections: Self::default_max_idle(),
            max_connections: Self::default_max_connections(),
            queue_timeout: Self::default_queue_timeout(),
            preserve_host: false,
            readiness: Readiness::Report,
            passive_health: PassiveHealthConfig::default(),
            health_check: None,
            retries: RetryConfig::default(),
            tls: Default::default(),
        }
    }

    /// What is wrong with the settings beyond their types, as
    /// `(key, problem)` pairs relative to the upstream.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.timeout.0.is_zero() || self.connect_timeout.0.is_zero() {
            out.push(("timeout", "timeouts must be more than zero".to_string()));
        }
        if self.targets.len() > MAX_TARGETS {
            out.push(("targets", format!("at most {MAX_TARGETS} targets per upstream")));
        }
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| !(1..=MAX_WEIGHT).contains(&t.weight()))
        {
            out.push((
                "targets",
                format!("target `{}`: weight must be 1 to {MAX_WEIGHT}", t.url()),
            ));
        }
        if self.max_connections == 0 {
            out.push(("max_connections", "must be at least 1".to_string()));
        }
        if self.queue_timeout.0 > Duration::from_secs(60) {
            out.push(("queue_timeout", "must be 60s or less".to_string()));
        }
        let p = &self.passive_health;
        if p.ejection.0.is_zero() || p.max_ejection.0 < p.ejection.0 {
            out.push((
                "passive_health",
                "ejection must be more than zero and max_ejection at least as long".to_string(),
            ));
        }
        if let Some(s) = p.failure_statuses.iter().find(|s| !(100..=999).contains(*s)) {
            out.push((
                "passive_health.failure_statuses",
                format!("{s} is not an HTTP status"),
            ));
        }
        let r = &self.retries;
        if r.attempts > MAX_RETRY_ATTEMPTS {
            out.push(("retries.attempts", format!("at most {MAX_RETRY_ATTEMPTS}")));
        }
        if !(0.0..=1.0).contains(&r.budget) {
            out.push(("retries.budget", "a share from 0.0 to 1.0".to_string()));
        }
        if r.min_retries > 1000 {
            out.push(("retries.min_retries", "at most 1000".to_string()));
        }
        if let Some(s) = r.statuses.iter().find(|s| !(500..=599).contains(*s)) {
            out.push(("retries.statuses", format!("{s}: only 5xx statuses are retried")));
        }
        if let Some(h) = &self.health_check {
            if !h.path.starts_with('/') || h.path.parse::<http::uri::PathAndQuery>().is_err() {
                out.push((
                    "health_check.path",
                    "an absolute path such as /healthz".to_string(),
                ));
            }
            if h.interval.0 < Duration::from_millis(100) || h.timeout.0.is_zero() {
                out.push((
                    "health_check",
                    "interval must be at least 100ms and timeout more than zero".to_string(),
                ));
            }
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                out.push(("health_check", "thresholds must be at least 1".to_string()));
            }
            if let Some(host) = &h.host
                && http::HeaderValue::try_from(host.as_str()).is_err()
            {
                out.push(("health_check.host", "not a valid Host value".to_string()));
            }
        }
        out
    }
}
