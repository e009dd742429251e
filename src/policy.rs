//! The compiled policy: what requests read, built once from a [`Config`] by
//! [`compile`], immutable afterwards, and swapped whole on reload.
//!
//! `compile` checks everything it can and collects every problem rather than
//! stopping at the first, so `portcullis check` can list them all. Rules that
//! only apply in production (secrets, public routes) are here too, next to
//! the values they judge.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Method;

use crate::config::{
    Config, ConfigError, ConfigErrors, Environment, LoadedConfig, SecretRef, SecretValue, secret,
};
use crate::config::{RateSpec, RouteConfig};
use crate::metrics::{Metrics, RouteMetrics};
use crate::pipeline::{Pipeline, Stage};
use crate::proxy::Upstream;
use crate::ratelimit::{Limit, RouteLimits, Scope, limit_name};
use crate::runtime::Runtime;
use crate::stage::authn::{AuthMethod, AuthPolicy, AuthnStage};
use crate::stage::authz::AuthzStage;
use crate::stage::client_ip::{ClientIpStage, TrustedProxies};
use crate::stage::cors::{CorsPolicy, CorsStage};
use crate::stage::framing::FramingStage;
use crate::stage::rate_limit::RateLimitStage;
use crate::stage::request_id::RequestIdStage;
use crate::stage::route::{PrefixTree, Route, RouteStage, allow_header, normalise};
use crate::stage::upstream_headers::UpstreamHeadersStage;

/// Listener and connection settings (changes need a restart).
#[derive(Debug, Clone)]
pub struct ServerPolicy {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub trusted_proxies: TrustedProxies,
    pub max_connections: usize,
    pub header_read_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub max_header_size: usize,
    pub drain_timeout: std::time::Duration,
}

/// Resolved secrets.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub admin_token: Option<SecretValue>,
    pub session_key: Option<SecretValue>,
}

pub struct Policy {
    pub environment: Environment,
    pub server: ServerPolicy,
    pub access_log: bool,
    pub log_level: String,
    pub secrets: Secrets,
    pub upstreams: Vec<Arc<Upstream>>,
    pub cors: Option<CorsPolicy>,
    pub routes: Vec<Route>,
    pub tree: PrefixTree,
    pub pipeline: Pipeline,
    /// Metrics for requests that matched no route.
    pub metrics_unrouted: RouteMetrics,
    /// Things worth saying at start that are not errors (generated dev secrets).
    pub warnings: Vec<String>,
}

/// Collects problems while compiling.
struct Problems<'a> {
    loaded: &'a LoadedConfig,
    errors: Vec<ConfigError>,
}

impl Problems<'_> {
    fn at(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(self.loaded.error_at(key, message));
    }
}

/// Compiles a loaded config into a policy, or lists every problem. The
/// runtime supplies the services stages use; [`Runtime::offline`] is enough
/// to check a config.
pub fn compile(loaded: &LoadedConfig, runtime: &Runtime) -> Result<Policy, ConfigErrors> {
    let config = &loaded.config;
    let metrics = &runtime.metrics;
    let mut problems = Problems {
        loaded,
        errors: Vec::new(),
    };
    let mut warnings = Vec::new();

    let server = compile_server(config, &mut problems);
    let secrets = compile_secrets(loaded, &mut problems, &mut warnings);
    let upstreams = compile_upstreams(config, metrics, &mut problems);
    let cors = config.cors.as_ref().and_then(|c| {
        CorsPolicy::compile(c, config.environment.is_production())
            .map_err(|errors| errors.into_iter().for_each(|(key, e)| problems.at(&key, e)))
            .ok()
    });
    let (routes, tree) = compile_routes(config, &upstreams, metrics, &mut problems);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        problems.at("log.level", format!("invalid log filter: {e}"));
    }

    if !problems.errors.is_empty() {
        return Err(ConfigErrors(problems.errors));
    }
    let key_headers = compile_key_headers(config, &mut problems);
    check_rate_limit_settings(config, &mut problems);
    if !(0.0..=1.0).contains(&config.audit.auth_success_sample) {
        problems.at("audit.auth_success_sample", "must be between 0.0 and 1.0");
    }
    if config.audit.queue == 0 || config.audit.queue > 10_000_000 {
        problems.at("audit.queue", "must be between 1 and 10000000");
    }
    if config.store.max_connections == 0 || config.store.max_connections > 1000 {
        problems.at("store.max_connections", "must be between 1 and 1000");
    }
    if !problems.errors.is_empty() {
        return Err(ConfigErrors(problems.errors));
    }
    let server = server.expect("no errors means the server section compiled");
    let pipeline = build_pipeline(&server, runtime, config, key_headers);
    Ok(Policy {
        environment: config.environment,
        access_log: config.log.access_log,
        log_level: config.log.level.clone(),
        server,
        secrets,
        upstreams,
        cors,
        routes,
        tree,
        pipeline,
        metrics_unrouted: metrics.unrouted.clone(),
        warnings,
    })
}

fn compile_key_headers(config: &Config, problems: &mut Problems) -> Vec<http::HeaderName> {
    let mut names = Vec::new();
    for name in &config.api_keys.headers {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if h == http::header::AUTHORIZATION || h == http::header::COOKIE => problems.at(
                "api_keys.headers",
                format!("`{name}` cannot carry keys; use `bearer = true` for Authorization"),
            ),
            Ok(h) => names.push(h),
            Err(_) => problems.at("api_keys.headers", format!("`{name}` is not a header name")),
        }
    }
    if names.is_empty() && !config.api_keys.bearer {
        problems.at("api_keys", "keys need a header or `bearer = true`");
    }
    names
}

/// The `WWW-Authenticate` challenge for API-key routes.
fn key_challenge(config: &Config) -> http::HeaderValue {
    let header = config
        .api_keys
        .headers
        .first()
        .map(String::as_str)
        .unwrap_or("Authorization");
    let mut text = format!("ApiKey realm=\"portcullis\", header=\"{header}\"");
    if config.api_keys.bearer {
        text.push_str(", Bearer realm=\"portcullis\"");
    }
    http::HeaderValue::try_from(text)
        .unwrap_or_else(|_| http::HeaderValue::from_static("ApiKey realm=\"portcullis\""))
}

/// The stages, in order. This is the one place the order is decided.
fn build_pipeline(
    server: &ServerPolicy,
    runtime: &Runtime,
    config: &Config,
    key_headers: Vec<http::HeaderName>,
) -> Pipeline {
    let stages: Vec<Box<dyn Stage>> = vec![
        Box::new(RequestIdStage),
        Box::new(FramingStage),
        Box::new(ClientIpStage {
            trusted: server.trusted_proxies.clone(),
        }),
        // CORS before routing: its policy is global, and a page must be able
        // to read a 404 or 405 as well as a 200.
        Box::new(CorsStage {
            audit: runtime.audit.clone(),
        }),
        Box::new(RouteStage),
        Box::new(AuthnStage {
            keys: runtime.keys.clone(),
            audit: runtime.audit.clone(),
            key_headers,
            bearer: config.api_keys.bearer,
            challenge: key_challenge(config),
            forward_key: config.api_keys.forward_key,
        }),
        Box::new(AuthzStage {
            audit: runtime.audit.clone(),
        }),
        Box::new(RateLimitStage {
            local: runtime.limiter.clone(),
            redis: runtime.redis.clone(),
            ipv6_prefix: config.rate_limits.ipv6_prefix,
            key_default: config
                .api_keys
                .default_rate_limit
                .clone()
                .map(|spec| Arc::new(Limit::key_quota(spec))),
            audit: runtime.audit.clone(),
            audit_interval: config.rate_limits.audit_interval.0,
            last_audited: runtime.limit_audit.clone(),
        }),
        Box::new(UpstreamHeadersStage),
    ];
    Pipeline::new(stages)
}

fn parse_addr(problems: &mut Problems, key: &str, text: &str) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.at(key, format!("`{text}` is not an address such as 127.0.0.1:8080"));
            None
        }
    }
}

fn compile_server(config: &Config, problems: &mut Problems) -> Option<ServerPolicy> {
    let s = &config.server;
    let listen = parse_addr(problems, "server.listen", &s.listen);
    let admin_listen = parse_addr(problems, "server.admin_listen", &s.admin_listen);
    let trusted_proxies = match TrustedProxies::parse(&s.trusted_proxies) {
        Ok(t) => t,
        Err(bad) => {
            problems.at(
                "server.trusted_proxies",
                format!("not IP addresses or CIDR ranges: {}", bad.join(", ")),
            );
            TrustedProxies::default()
        }
    };
    if s.max_connections == 0 || s.max_connections > 1_000_000 {
        problems.at("server.max_connections", "must be between 1 and 1000000");
    }
    let max_header_size = s.max_header_size.0;
    if !(8 * 1024..=1024 * 1024).contains(&max_header_size) {
        problems.at("server.max_header_size", "must be between 8KiB and 1MiB");
    }
    if s.header_read_timeout.0.is_zero() {
        problems.at("server.header_read_timeout", "must be more than zero");
    }
    if s.idle_timeout.0.is_zero() {
        problems.at("server.idle_timeout", "must be more than zero");
    }
    if let (Some(a), Some(b)) = (listen, admin_listen)
        && a == b
        && a.port() != 0
    {
        problems.at("server.admin_listen", "must differ from server.listen");
    }
    Some(ServerPolicy {
        listen: listen?,
        admin_listen: admin_listen?,
        trusted_proxies,
        max_connections: s.max_connections,
        header_read_timeout: s.header_read_timeout.0,
        idle_timeout: s.idle_timeout.0,
        max_header_size: max_header_size as usize,
        drain_timeout: s.drain_timeout.0,
    })
}

/// Resolves one secret. In production a missing, short, weak or inline
/// secret is an error; in development a missing one is generated for this
/// run, with a warning.
fn resolve_secret(
    loaded: &LoadedConfig,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
    name: &str,
    reference: Option<&SecretRef>,
) -> Option<SecretValue> {
    let key = format!("secrets.{name}");
    let production = loaded.config.environment.is_production();
    let reference = reference?;
    if production && matches!(reference, SecretRef::Inline(_)) {
        problems.at(
            &key,
            "secrets must not be written in the config in production; use { env = \"NAME\" } or { file = \"PATH\" }",
        );
        return None;
    }
    match reference.resolve(&loaded.base_dir) {
        Ok(value) => {
            if production && let Some(why) = secret::weakness(value.expose()) {
                problems.at(&key, format!("the secret {why}"));
                return None;
            }
            Some(value)
        }
        Err(e) if production => {
            problems.at(&key, format!("{e}; production needs every referenced secret"));
            None
        }
        Err(e) => {
            warnings.push(format!(
                "{key}: {e}; generated a random value for this run (development only; set it before production)"
            ));
            Some(SecretValue::new(secret::generate().into_bytes()))
        }
    }
}

fn compile_secrets(loaded: &LoadedConfig, problems: &mut Problems, warnings: &mut Vec<String>) -> Secrets {
    let s = &loaded.config.secrets;
    Secrets {
        admin_token: resolve_secret(loaded, problems, warnings, "admin_token", s.admin_token.as_ref()),
        session_key: resolve_secret(loaded, problems, warnings, "session_key", s.session_key.as_ref()),
    }
}

fn compile_upstreams(config: &Config, metrics: &Metrics, problems: &mut Problems) -> Vec<Arc<Upstream>> {
    let mut out: Vec<Arc<Upstream>> = Vec::new();
    for (i, u) in config.upstreams.iter().enumerate() {
        let key = format!("upstreams[{i}]");
        if u.name.is_empty() {
            problems.at(&format!("{key}.name"), "an upstream needs a name");
        }
        if out.iter().any(|o| o.name == u.name) {
            problems.at(
                &format!("{key}.name"),
                format!("another upstream is already named `{}`", u.name),
            );
        }
        if u.timeout.0.is_zero() || u.connect_timeout.0.is_zero() {
            problems.at(&key, "timeouts must be more than zero");
        }
        match Upstream::new(u, metrics.for_upstream(&u.name)) {
            Ok(upstream) => out.push(Arc::new(upstream)),
            Err(why) => {
                for w in why {
                    problems.at(&format!("{key}.targets"), w);
                }
            }
        }
    }
    out
}

fn compile_methods(problems: &mut Problems, key: &str, names: &Option<Vec<String>>) -> Option<Vec<Method>> {
    let names = names.as_ref()?;
    if names.is_empty() {
        problems.at(
            key,
            "list at least one method, or leave `methods` out to allow all",
        );
    }
    let mut methods = Vec::new();
    for name in names {
        let upper = name.to_ascii_uppercase();
        match Method::from_bytes(upper.as_bytes()) {
            Ok(m) if m == Method::CONNECT || m == Method::TRACE => {
                problems.at(key, format!("{upper} cannot be proxied"));
            }
            Ok(m) => methods.push(m),
            Err(_) => problems.at(key, format!("`{name}` is not an HTTP method")),
        }
    }
    Some(methods)
}

fn compile_auth(problems: &mut Problems, key: &str, route: &RouteConfig, production: bool) -> AuthPolicy {
    let auth_key = format!("{key}.auth");
    let mut policy = AuthPolicy {
        methods: Vec::new(),
        scopes: route.scopes.clone(),
        key_query: route.api_key_query.clone(),
    };
    match &route.auth {
        None => {
            if production {
                problems.at(
                    key,
                    "the route has no `auth`; production requires one (write auth = [\"none\"] for a public route)",
                );
            }
            policy.methods.push(AuthMethod::None);
        }
        Some(names) => {
            if names.is_empty() {
                problems.at(
                    &auth_key,
                    "list at least one method, e.g. [\"api_key\"] or [\"none\"]",
                );
            }
            for name in names {
                match AuthMethod::parse(name) {
                    Some(m) => policy.methods.push(m),
                    None => {
                        let hint = crate::config::load::nearest(name, AuthMethod::NAMES)
                            .map(|n| format!("; did you mean `{n}`?"))
                            .unwrap_or_default();
                        problems.at(
                            &auth_key,
                            format!(
                                "`{name}` is not an authentication method this version offers ({}){hint}",
                                AuthMethod::NAMES.join(", ")
                            ),
                        );
                    }
                }
            }
        }
    }
    if policy.methods.contains(&AuthMethod::None) && policy.methods.len() > 1 {
        problems.at(
            &auth_key,
            "\"none\" makes a route public; it cannot be combined with other methods",
        );
    }
    let authenticated = policy.methods.iter().any(|m| *m != AuthMethod::None);
    if !policy.scopes.is_empty() && !authenticated {
        problems.at(
            &format!("{key}.scopes"),
            "scopes need an authenticated route (auth = [\"api_key\"])",
        );
    }
    for scope in &policy.scopes {
        if crate::keys::manage::validate_scope(scope).is_err() {
            problems.at(
                &format!("{key}.scopes"),
                format!("`{scope}` is not a valid scope"),
            );
        }
    }
    if policy.key_query.is_some() && !policy.methods.contains(&AuthMethod::ApiKey) {
        problems.at(
            &format!("{key}.api_key_query"),
            "only routes with auth = [\"api_key\"] read keys",
        );
    }
    policy
}

/// A route's limits: its own `rate_limit`, or else the defaults, each
/// counted per route.
fn compile_limits(config: &Config, route_id: &Arc<str>, own: Option<&[RateSpec]>) -> RouteLimits {
    let specs = own.unwrap_or(&config.rate_limits.default);
    let mut names: Vec<String> = Vec::new();
    let mut limits = Vec::new();
    for spec in specs {
        let name = limit_name(spec, &names);
        names.push(name.clone());
        limits.push(Limit::new(spec.clone(), Scope::Route(route_id.clone()), name));
    }
    RouteLimits::new(limits)
}

/// `[rate_limits]`, `[redis]` and the keys' default limit.
fn check_rate_limit_settings(config: &Config, problems: &mut Problems) {
    let r = &config.rate_limits;
    if r.ipv6_prefix == 0 || r.ipv6_prefix > 128 {
        problems.at("rate_limits.ipv6_prefix", "must be between 1 and 128");
    }
    if r.max_entries < 1024 || r.max_entries > 100_000_000 {
        problems.at("rate_limits.max_entries", "must be between 1024 and 100000000");
    }
    if let Some(spec) = &config.api_keys.default_rate_limit
        && !matches!(
            spec.key,
            crate::config::LimitKey::Ip | crate::config::LimitKey::Key
        )
    {
        problems.at(
            "api_keys.default_rate_limit",
            "a key's limit always counts per key; leave out `per …`",
        );
    }
    if let Some(redis) = &config.redis {
        if redis::Client::open(redis.url.as_str()).is_err() {
            problems.at("redis.url", "not a Redis URL such as redis://127.0.0.1:6379");
        }
        if redis.timeout.0.is_zero() || redis.timeout.0 > std::time::Duration::from_secs(10) {
            problems.at("redis.timeout", "must be between 1ms and 10s");
        }
        if redis.prefix.is_empty() || redis.prefix.contains(['{', '}', ' ']) {
            problems.at("redis.prefix", "must be non-empty, without braces or spaces");
        }
    }
}

fn compile_routes(
    config: &Config,
    upstreams: &[Arc<Upstream>],
    metrics: &Metrics,
    problems: &mut Problems,
) -> (Vec<Route>, PrefixTree) {
    let production = config.environment.is_production();
    let mut routes: Vec<Route> = Vec::new();
    let mut tree = PrefixTree::default();
    for (i, r) in config.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let path = match normalise(&r.path) {
            Ok(p) => p.decoded.trim_end_matches('/').to_string(),
            Err(e) => {
                problems.at(&format!("{key}.path"), format!("`{}`: {e}", r.path));
                continue;
            }
        };
        let path = if path.is_empty() { "/".to_string() } else { path };
        if path.contains(';') {
            problems.at(
                &format!("{key}.path"),
                "a route path cannot contain `;` (requests match without their `;parameters`)",
            );
            continue;
        }
        let id: Arc<str> = r.id.clone().unwrap_or_else(|| path.clone()).into();
        if routes.iter().any(|other| other.id == id) {
            problems.at(
                &format!("{key}.path"),
                format!("another route has the id `{id}`; give one of them an `id`"),
            );
        }
        let methods = compile_methods(problems, &format!("{key}.methods"), &r.methods);
        let auth = compile_auth(problems, &key, r, production);
        let Some(upstream) = upstreams.iter().find(|u| u.name == r.upstream).cloned() else {
            let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
            let hint = crate::config::load::nearest(&r.upstream, &names)
                .map(|n| format!("; did you mean `{n}`?"))
                .unwrap_or_default();
            if config.upstreams.iter().all(|u| u.name != r.upstream) {
                problems.at(
                    &format!("{key}.upstream"),
                    format!("no upstream is named `{}`{hint}", r.upstream),
                );
            }
            continue;
        };
        let limits = compile_limits(config, &id, r.rate_limit.as_deref());
        let mut route = Route {
            metrics: metrics.for_route(&id),
            id,
            path: path.clone(),
            methods,
            allow: http::HeaderValue::from_static(""),
            upstream,
            auth,
            limits,
        };
        route.allow = allow_header(&route.allowed_methods());
        tree.insert(&path, routes.len());
        routes.push(route);
    }
    (routes, tree)
}
