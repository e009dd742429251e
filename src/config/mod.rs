//! What the config file says: plain serde structs, one per table, with
//! `deny_unknown_fields` so a typo is an error rather than a silent default.
//!
//! Nothing here is used per request. [`crate::policy::compile`] turns a
//! [`Config`] into the immutable [`crate::policy::Policy`] that requests read.
//! The file and environment loading lives in [`load`].

pub mod load;
pub mod rate;
pub mod secret;
pub mod units;

use serde::Deserialize;

pub use load::{ConfigError, ConfigErrors, LoadedConfig, Source};
pub use rate::{LimitKey, RateSpec};
pub use secret::{SecretRef, SecretValue};
pub use units::{ByteSize, ConfigDuration};

fn default_true() -> bool {
    true
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `production` (the default when omitted) or `development`.
    #[serde(default)]
    pub environment: Environment,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub api_keys: ApiKeysConfig,
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    pub redis: Option<RedisConfig>,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    pub cors: Option<CorsConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Production,
    Development,
}

impl Environment {
    pub fn is_production(self) -> bool {
        self == Environment::Production
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Development => "development",
        }
    }
}

/// `[server]`: listeners and connection-level limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Public listener for routed traffic.
    #[serde(default = "ServerConfig::default_listen")]
    pub listen: String,
    /// Health, readiness, metrics and the admin API. Keep it on loopback or a
    /// private network.
    #[serde(default = "ServerConfig::default_admin_listen")]
    pub admin_listen: String,
    /// Peers (IPs or CIDRs) whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Open connections on the public listener; further connections wait in
    /// the kernel's backlog until one closes.
    #[serde(default = "ServerConfig::default_max_connections")]
    pub max_connections: usize,
    /// How long a client may take to send a request head, counted from the
    /// connection's opening for its first request (slowloris guard).
    #[serde(default = "ServerConfig::default_header_read_timeout")]
    pub header_read_timeout: ConfigDuration,
    /// A keep-alive connection with no request in flight is closed after
    /// this long (HTTP/1 and HTTP/2).
    #[serde(default = "ServerConfig::default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Largest request head (request line plus headers) accepted.
    #[serde(default = "ServerConfig::default_max_header_size")]
    pub max_header_size: ByteSize,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(default = "ServerConfig::default_drain_timeout")]
    pub drain_timeout: ConfigDuration,
}

impl ServerConfig {
    fn default_listen() -> String {
        "0.0.0.0:8080".into()
    }
    fn default_admin_listen() -> String {
        "127.0.0.1:9090".into()
    }
    fn default_max_connections() -> usize {
        10_000
    }
    fn default_header_read_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(10))
    }
    fn default_idle_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(60))
    }
    fn default_max_header_size() -> ByteSize {
        ByteSize(64 * 1024)
    }
    fn default_drain_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(30))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: Self::default_listen(),
            admin_listen: Self::default_admin_listen(),
            trusted_proxies: Vec::new(),
            max_connections: Self::default_max_connections(),
            header_read_timeout: Self::default_header_read_timeout(),
            idle_timeout: Self::default_idle_timeout(),
            max_header_size: Self::default_max_header_size(),
            drain_timeout: Self::default_drain_timeout(),
        }
    }
}

/// `[log]`: the process log and the access log, both JSON lines on stdout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `portcullis=debug`.
    #[serde(default = "LogConfig::default_level")]
    pub level: String,
    /// One JSON line per request.
    #[serde(default = "default_true")]
    pub access_log: bool,
}

impl LogConfig {
    fn default_level() -> String {
        "info".into()
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: Self::default_level(),
            access_log: true,
        }
    }
}

/// `[secrets]`: every secret the gateway uses, each `{ env = … }` or `{ file = … }`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Bearer token for `/admin/api/v1/…` on the admin listener.
    pub admin_token: Option<SecretRef>,
    /// Key for signing session cookies.
    pub session_key: Option<SecretRef>,
}

/// `[[upstreams]]`: a named group of backend targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `http://host:port` base URLs, used round-robin.
    pub targets: Vec<String>,
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
    /// Send the client's `Host` upstream instead of the target's authority.
    #[serde(default)]
    pub preserve_host: bool,
}

impl UpstreamConfig {
    fn default_connect_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(5))
    }
    fn default_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(30))
    }
    fn default_idle_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(90))
    }
    fn default_max_idle() -> usize {
        256
    }
}

/// `[[routes]]`: a path prefix and what protects it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Names the route in metrics, logs and rate-limit keys; defaults to `path`.
    pub id: Option<String>,
    /// Prefix matched, segment by segment, against the normalised path.
    pub path: String,
    /// Allowed methods; all when omitted.
    pub methods: Option<Vec<String>>,
    /// Name of an `[[upstreams]]` entry.
    pub upstream: String,
    /// Authentication methods, any of which admits a request; `["none"]`
    /// marks a public route. Required in production.
    pub auth: Option<Vec<String>>,
    /// Scopes a key must hold, all of them, to use this route.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A query parameter that may carry the API key on this route (off by
    /// default: URLs end up in logs and browser history).
    pub api_key_query: Option<String>,
    /// Limits every request must pass; `[rate_limits] default` when omitted,
    /// none when `[]`.
    pub rate_limit: Option<Vec<RateSpec>>,
}

/// `[cors]`: the browser origins allowed to call routed APIs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), or `["*"]` for any origin
    /// (never together with `credentials`).
    pub origins: Vec<String>,
    /// Allow cookies and `Authorization` on cross-origin calls.
    #[serde(default)]
    pub credentials: bool,
    /// Methods a cross-origin call may use.
    #[serde(default = "CorsConfig::default_methods")]
    pub methods: Vec<String>,
    /// Request headers a cross-origin call may send.
    #[serde(default = "CorsConfig::default_headers")]
    pub headers: Vec<String>,
    /// Response headers the calling page may read.
    #[serde(default = "CorsConfig::default_expose")]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    #[serde(default = "CorsConfig::default_max_age")]
    pub max_age: ConfigDuration,
}

impl CorsConfig {
    fn default_methods() -> Vec<String> {
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            .map(String::from)
            .to_vec()
    }
    fn default_headers() -> Vec<String> {
        [
            "Content-Type",
            "Authorization",
            "X-API-Key",
            "X-Request-Id",
            "X-CSRF-Token",
        ]
        .map(String::from)
        .to_vec()
    }
    fn default_expose() -> Vec<String> {
        ["X-Request-Id", "Retry-After", "RateLimit", "RateLimit-Policy"]
            .map(String::from)
            .to_vec()
    }
    fn default_max_age() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(600))
    }
}

/// `[store]`: where consumers, keys and the audit log live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (relative paths resolve against the config file's
    /// folder; the file is created on first start) or `postgres://…`.
    #[serde(default = "StoreConfig::default_url")]
    pub url: String,
    /// The size of the process's one connection pool.
    #[serde(default = "StoreConfig::default_max_connections")]
    pub max_connections: u32,
    /// How long to wait for a pooled connection.
    #[serde(default = "StoreConfig::default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// The longest a statement may wait or run (SQLite's busy timeout,
    /// PostgreSQL's `statement_timeout`), so an unavailable store is noticed.
    #[serde(default = "StoreConfig::default_statement_timeout")]
    pub statement_timeout: ConfigDuration,
    /// Apply pending migrations when `serve` starts.
    #[serde(default = "default_true")]
    pub migrate: bool,
}

impl StoreConfig {
    fn default_url() -> String {
        "sqlite://portcullis.db".into()
    }
    fn default_max_connections() -> u32 {
        10
    }
    fn default_connect_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(5))
    }
    fn default_statement_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(10))
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: Self::default_url(),
            max_connections: Self::default_max_connections(),
            connect_timeout: Self::default_connect_timeout(),
            statement_timeout: Self::default_statement_timeout(),
            migrate: true,
        }
    }
}

/// `[audit]`: the one audit log, in the store and optionally a JSON-lines file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A JSON-lines copy of every event, hash-chained on its own.
    pub file: Option<std::path::PathBuf>,
    /// Events older than this are deleted from the store (hourly).
    pub retention: Option<ConfigDuration>,
    /// Where events wait while the store is unavailable.
    #[serde(default = "AuditConfig::default_spill_file")]
    pub spill_file: std::path::PathBuf,
    /// Events that may wait in memory for the writer.
    #[serde(default = "AuditConfig::default_queue")]
    pub queue: usize,
    /// Fraction of successful authentications recorded (0.0 to 1.0).
    #[serde(default = "AuditConfig::default_sample")]
    pub auth_success_sample: f64,
}

impl AuditConfig {
    fn default_spill_file() -> std::path::PathBuf {
        "audit-spill.jsonl".into()
    }
    fn default_queue() -> usize {
        10_000
    }
    fn default_sample() -> f64 {
        0.01
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            file: None,
            retention: None,
            spill_file: Self::default_spill_file(),
            queue: Self::default_queue(),
            auth_success_sample: Self::default_sample(),
        }
    }
}

/// `[api_keys]`: how keys are presented and cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Headers a key may arrive in.
    #[serde(default = "ApiKeysConfig::default_headers")]
    pub headers: Vec<String>,
    /// Also accept `Authorization: Bearer <key>`.
    #[serde(default = "default_true")]
    pub bearer: bool,
    /// Pass the key itself on to the upstream (off: the upstream gets the
    /// `X-Portcullis-*` identity headers instead, and cannot leak the key).
    #[serde(default)]
    pub forward_key: bool,
    /// Keys (found or not) kept in memory.
    #[serde(default = "ApiKeysConfig::default_cache_size")]
    pub cache_size: usize,
    /// How long a cached key is trusted before it is read again. Changes made
    /// anywhere reach every instance within about a second regardless.
    #[serde(default = "ApiKeysConfig::default_cache_ttl")]
    pub cache_ttl: ConfigDuration,
    /// How often batched usage counts are written.
    #[serde(default = "ApiKeysConfig::default_usage_flush")]
    pub usage_flush: ConfigDuration,
    /// The limit of a key that has none of its own, e.g. "100 per hour".
    pub default_rate_limit: Option<RateSpec>,
}

impl ApiKeysConfig {
    fn default_headers() -> Vec<String> {
        vec!["X-API-Key".into()]
    }
    fn default_cache_size() -> usize {
        100_000
    }
    fn default_cache_ttl() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(300))
    }
    fn default_usage_flush() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(5))
    }
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        ApiKeysConfig {
            headers: Self::default_headers(),
            bearer: true,
            forward_key: false,
            cache_size: Self::default_cache_size(),
            cache_ttl: Self::default_cache_ttl(),
            usage_flush: Self::default_usage_flush(),
            default_rate_limit: None,
        }
    }
}

/// `[rate_limits]`: defaults and the in-process limiter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Limits for every route that does not set `rate_limit` (each route
    /// counts its own).
    #[serde(default)]
    pub default: Vec<RateSpec>,
    /// IPv6 clients are counted by this prefix length (a /64 is one site).
    #[serde(default = "RateLimitsConfig::default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Counters the in-process limiter keeps; when full, the counter
    /// closest to expiring is dropped to make room.
    #[serde(default = "RateLimitsConfig::default_max_entries")]
    pub max_entries: usize,
    /// At most one `ratelimit.exceeded` audit event per counter per interval.
    #[serde(default = "RateLimitsConfig::default_audit_interval")]
    pub audit_interval: ConfigDuration,
}

impl RateLimitsConfig {
    fn default_ipv6_prefix() -> u8 {
        64
    }
    fn default_max_entries() -> usize {
        1_000_000
    }
    fn default_audit_interval() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(60))
    }
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            default: Vec::new(),
            ipv6_prefix: Self::default_ipv6_prefix(),
            max_entries: Self::default_max_entries(),
            audit_interval: Self::default_audit_interval(),
        }
    }
}

/// What the gateway does with rate limits while Redis is unreachable.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnOutage {
    /// Each instance enforces the full limit on its own.
    #[default]
    Local,
    /// Requests pass unlimited.
    Open,
    /// Requests on limited routes get 503.
    Closed,
}

/// `[redis]`: shared rate-limit counters and key-change notices for many
/// instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` (a password belongs in `url` from the environment:
    /// `PORTCULLIS_REDIS__URL`).
    pub url: String,
    #[serde(default)]
    pub on_outage: OnOutage,
    /// Prefix of every key and channel.
    #[serde(default = "RedisConfig::default_prefix")]
    pub prefix: String,
    /// The longest a limit check may wait for Redis before counting as an outage.
    #[serde(default = "RedisConfig::default_timeout")]
    pub timeout: ConfigDuration,
}

impl RedisConfig {
    fn default_prefix() -> String {
        "portcullis".into()
    }
    fn default_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_millis(250))
    }
}
