//! What the config file says: plain serde structs, one per table, with
//! `deny_unknown_fields` so a typo is an error rather than a silent default.
//!
//! The shape of the whole file is declared here, so that serde reports
//! every unknown key with its line and the nearest valid one (its
//! `deny_unknown_fields` cannot be combined with `flatten`). The types of
//! a stage's tables and keys belong to the stage (`CorsConfig` to
//! [`crate::stage::cors`], `[api_keys]` and `[auth]` to
//! [`crate::stage::authn`], `[rate_limits]` to [`crate::stage::rate_limit`],
//! `[[upstreams]]` to [`crate::upstream`]); this file names them.
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

pub use crate::sessions::SessionsConfig;
pub use crate::stage::authn::{ApiKeysConfig, AuthConfig};
pub use crate::stage::cors::CorsConfig;
pub use crate::stage::csrf::CsrfConfig;
pub use crate::stage::rate_limit::RateLimitsConfig;
pub use crate::stage::security_headers::SecurityHeadersConfig;
pub use crate::upstream::UpstreamConfig;

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
    pub auth: AuthConfig,
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    pub redis: Option<RedisConfig>,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    pub cors: Option<CorsConfig>,
    /// `[sessions]`: login sessions (routes with auth = ["session"]).
    pub sessions: Option<SessionsConfig>,
    /// `[csrf]`: cross-site request forgery protection for cookie-carrying routes.
    pub csrf: Option<CsrfConfig>,
    /// `[clamav]`: the malware scanner uploads are sent to.
    pub clamav: Option<crate::stage::uploads::ClamavConfig>,
    /// `[security_headers]`: the headers added to every answer.
    pub security_headers: Option<SecurityHeadersConfig>,
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
    /// Threads serving the public listener, each with its own runtime;
    /// unset: one per CPU.
    #[serde(default)]
    pub workers: Option<std::num::NonZeroUsize>,
    /// Open connections on the admin listener.
    #[serde(default = "ServerConfig::default_admin_max_connections")]
    pub admin_max_connections: usize,
    /// How long a client may take to send a request head, counted from its
    /// first byte (and for a connection's first request, from the
    /// connection's opening): the slowloris guard.
    #[serde(default = "ServerConfig::default_header_read_timeout")]
    pub header_read_timeout: ConfigDuration,
    /// A keep-alive connection with no request in flight is closed after
    /// this long (HTTP/1 and HTTP/2).
    #[serde(default = "ServerConfig::default_idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Longest request target (path and query); longer is 414.
    #[serde(default = "ServerConfig::default_max_uri_length")]
    pub max_uri_length: ByteSize,
    /// Largest header section (names and values); larger is 431.
    #[serde(default = "ServerConfig::default_max_header_size")]
    pub max_header_size: ByteSize,
    /// Largest single header field; larger is 431.
    #[serde(default = "ServerConfig::default_max_header_field_size")]
    pub max_header_field_size: ByteSize,
    /// Most header fields in one request; more is 431.
    #[serde(default = "ServerConfig::default_max_header_count")]
    pub max_header_count: usize,
    /// Host names this listener serves (`api.example.com`,
    /// `*.example.com`); empty serves any valid `Host`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// A request body must arrive within this of its first read, plus a
    /// second per `min_upload_rate` bytes received (slow-POST guard);
    /// `0s` turns the pace off.
    #[serde(default = "ServerConfig::default_body_read_timeout")]
    pub body_read_timeout: ConfigDuration,
    /// Bytes per second a body must keep up, past `body_read_timeout`.
    #[serde(default = "ServerConfig::default_min_upload_rate")]
    pub min_upload_rate: ByteSize,
    /// Largest request body of a route without `max_body`.
    #[serde(default = "ServerConfig::default_max_body")]
    pub max_body: ByteSize,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(default = "ServerConfig::default_drain_timeout")]
    pub drain_timeout: ConfigDuration,
    /// TLS on the public listener.
    pub tls: Option<crate::tls::TlsConfig>,
}

impl ServerConfig {
    fn default_body_read_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(20))
    }
    fn default_min_upload_rate() -> ByteSize {
        ByteSize(500)
    }
    fn default_listen() -> String {
        "0.0.0.0:8080".into()
    }
    fn default_admin_listen() -> String {
        "127.0.0.1:9090".into()
    }
    fn default_max_connections() -> usize {
        10_000
    }
    fn default_admin_max_connections() -> usize {
        256
    }
    fn default_max_uri_length() -> ByteSize {
        ByteSize(8 * 1024)
    }
    fn default_max_header_field_size() -> ByteSize {
        ByteSize(8 * 1024)
    }
    fn default_max_header_count() -> usize {
        100
    }
    fn default_max_body() -> ByteSize {
        ByteSize(10 * 1024 * 1024)
    }
    fn default_header_read_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(10))
    }
    fn default_idle_timeout() -> ConfigDuration {
        ConfigDuration(std::time::Duration::from_secs(60))
    }
    fn default_max_header_size() -> ByteSize {
        ByteSize(32 * 1024)
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
            admin_max_connections: Self::default_admin_max_connections(),
            workers: None,
            header_read_timeout: Self::default_header_read_timeout(),
            idle_timeout: Self::default_idle_timeout(),
            max_uri_length: Self::default_max_uri_length(),
            max_header_size: Self::default_max_header_size(),
            max_header_field_size: Self::default_max_header_field_size(),
            max_header_count: Self::default_max_header_count(),
            hosts: Vec::new(),
            max_body: Self::default_max_body(),
            drain_timeout: Self::default_drain_timeout(),
            body_read_timeout: Self::default_body_read_timeout(),
            min_upload_rate: Self::default_min_upload_rate(),
            tls: None,
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
    /// Key for session cookies, form tokens and provider tokens at rest.
    pub session_key: Option<SecretRef>,
    /// Earlier session keys: cookies and stored tokens made with them stay
    /// valid (rotate by moving the old key here).
    #[serde(default)]
    pub previous_session_keys: Vec<SecretRef>,
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
    /// Let the upstream's retries try non-idempotent requests (POST,
    /// PATCH) again too, for a backend whose handlers are idempotent.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Authentication methods, any of which admits a request; `["none"]`
    /// marks a public route. Required in production.
    pub auth: Option<Vec<String>>,
    /// Scopes the caller must hold, all of them, to use this route.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Roles of which the caller must hold at least one (people only: JWTs
    /// and login sessions; API keys hold no roles).
    #[serde(default)]
    pub roles: Vec<String>,
    /// The `[[auth.jwt]]` issuers (by name) whose tokens this route accepts;
    /// all when omitted.
    pub jwt_issuers: Option<Vec<String>>,
    /// A cookie that may carry the token on this route.
    pub jwt_cookie: Option<String>,
    /// A header that may carry the token on this route (besides
    /// `Authorization: Bearer`).
    pub jwt_header: Option<String>,
    /// Session routes: send the login provider's access token upstream as
    /// `Authorization: Bearer …`, refreshed before it expires.
    #[serde(default)]
    pub forward_provider_token: bool,
    /// This route's CORS: any `[cors]` key, over `[cors]`'s.
    pub cors: Option<CorsConfig>,
    /// Client IP allow and deny lists for this route.
    pub ip_filter: Option<crate::stage::ip_filter::IpFilterConfig>,
    /// Limits (and malware scanning) for this route's multipart uploads.
    pub uploads: Option<crate::stage::uploads::UploadsConfig>,
    /// A WebSocket route: origins, handshake tokens, connection and
    /// message limits.
    pub websocket: Option<crate::stage::websocket::WebSocketConfig>,
    /// Input validation of this route's request bodies.
    pub validate: Option<crate::stage::validate::ValidateConfig>,
    /// This route's CSRF protection: any `[csrf]` key.
    pub csrf: Option<CsrfConfig>,
    /// This route's security headers: any `[security_headers]` key.
    pub security_headers: Option<SecurityHeadersConfig>,
    /// A query parameter that may carry the API key on this route (off by
    /// default: URLs end up in logs and browser history).
    pub api_key_query: Option<String>,
    /// Limits every request must pass; `[rate_limits] default` when omitted,
    /// none when `[]`.
    pub rate_limit: Option<Vec<RateSpec>>,
    /// Limits checked before authentication (so a flood costs no key or
    /// store lookup), counted per `ip`, `route` or `header:NAME`.
    pub pre_auth_rate_limit: Option<Vec<RateSpec>>,
    /// Largest request body; `[server] max_body` when omitted.
    pub max_body: Option<ByteSize>,
    /// `report`: every protection on this route lets through what it would
    /// refuse, auditing and counting it (a protection's own `mode` wins).
    pub mode: Option<crate::enforce::Mode>,
    /// Protections that only report on this route (`authn`, `authz`,
    /// `rate_limit`, `csrf`, `cors`, `validation`, `content_rules`,
    /// `ip_filter`, `uploads`, `https_redirect`).
    #[serde(default)]
    pub report_only: Vec<String>,
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
    /// Event kinds (`auth.failure`, or `key.*` for a prefix) whose request
    /// or command waits until the event is in the store or the spill file.
    #[serde(default = "AuditConfig::default_sync")]
    pub sync: Vec<String>,
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
    fn default_sync() -> Vec<String> {
        [
            "auth.failure",
            "login.failure",
            "admin.auth_failure",
            "key.*",
            "consumer.*",
            "session.revoked",
        ]
        .map(String::from)
        .to_vec()
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
            sync: Self::default_sync(),
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
