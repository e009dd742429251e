//! The compiled policy: what requests read, built once from a config by
//! [`compile`], immutable afterwards, and swapped whole on reload.
//!
//! This file orders the compile steps, writes the stage order (the one
//! place it is written: [`stage_order`]) and collects every problem; what
//! each step checks lives with the step. Compiling never stops early, so
//! `portcullis check` lists every problem in one pass.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::compile::CompileCx;
use crate::config::{ConfigErrors, Environment, LoadedConfig, SecretRef, SecretValue, secret};
use crate::connection::Timeouts;
use crate::enforce::{protection, reported};
use crate::listener::ConnectionLimits;
use crate::pipeline::{Pipeline, Route, Stage};
use crate::runtime::Runtime;
use crate::stage::{
    access_log, auth_pages, authn, authz, body_limit, client_ip, cors, csrf, forward_auth, framing,
    https_redirect, ip_filter, rate_limit, request_head, request_id, route, security_headers, uploads,
    upstream_headers, validate, websocket,
};
use crate::upstream::Upstream;

/// Listener settings (changes need a restart).
#[derive(Debug, Clone)]
pub struct ServerPolicy {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub public: ConnectionLimits,
    pub admin: ConnectionLimits,
    /// `[server] workers`; `None` leaves it to [`crate::worker::count`].
    pub workers: Option<std::num::NonZeroUsize>,
    /// The largest request head hyper buffers (our limits plus room, so a
    /// head that breaks them reaches the request-head stage).
    pub max_head: usize,
    pub max_headers: usize,
    /// `[server.tls]`, its paths resolved against the config's folder;
    /// its files were read and found valid.
    pub tls: Option<crate::tls::TlsConfig>,
}

/// Resolved secrets.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub admin_token: Option<SecretValue>,
    pub session_key: Option<SecretValue>,
}

pub struct Policy {
    pub environment: Environment,
    /// `[log] access_log` (read by the logging phase, and for heads the
    /// HTTP layer refused).
    pub access_log: bool,
    pub server: ServerPolicy,
    pub secrets: Secrets,
    pub upstreams: Vec<Arc<Upstream>>,
    pub routes: Vec<Arc<Route>>,
    pub pipeline: Arc<Pipeline>,
    /// Things worth saying at start that are not errors (generated dev secrets).
    pub warnings: Vec<String>,
}

impl Policy {
    /// Starts what a serving policy runs in the background (upstream
    /// health checks); it stops when the policy is dropped. Never called
    /// for a policy that is only checked.
    pub fn start_background(&self) {
        for upstream in &self.upstreams {
            upstream.start_health_checks();
        }
    }
}

/// The stages, in their one order; each phase runs the stages that take
/// part in it in this order (see [`crate::pipeline`]). Adding a stage is a
/// line here.
fn stage_order(cx: &mut CompileCx<'_>) -> Vec<Arc<dyn Stage>> {
    [
        request_id::compile(cx),
        // First in the access phase: nothing is served, nor any credential
        // read, on a request that should have used https.
        https_redirect::compile(cx),
        // Then an address the route refuses costs nothing more.
        ip_filter::compile(cx),
        // Before any credential is read: a cross-site handshake is refused
        // on its origin, and a browser's token moves to `Authorization`.
        websocket::compile(cx),
        // Early, so that the gateway's own refusals (framing, head limits,
        // routing) carry CORS headers an allowed page can read.
        cors::compile(cx),
        framing::compile(cx),
        client_ip::compile(cx),
        request_head::compile(cx),
        {
            let stage = rate_limit::pre_auth::compile(cx);
            reported(cx, protection::RATE_LIMIT, stage)
        },
        // After the pre-auth limits, so a login or verify flood is cut off
        // cheaply.
        forward_auth::compile(cx),
        auth_pages::compile(cx),
        // Before authn, which removes the session cookie it looks for.
        csrf::compile(cx),
        {
            let stage = authn::compile(cx);
            reported(cx, protection::AUTHN, stage)
        },
        {
            let stage = authz::compile(cx);
            reported(cx, protection::AUTHZ, stage)
        },
        {
            let stage = rate_limit::compile(cx);
            reported(cx, protection::RATE_LIMIT, stage)
        },
        body_limit::compile(cx),
        // After body_limit, so a body it reads whole is within the route's limit.
        validate::compile(cx),
        uploads::compile(cx),
        upstream_headers::compile(cx),
        security_headers::compile(cx),
        access_log::compile(cx),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Compiles a loaded config into a policy, or lists every problem. The
/// runtime supplies the services stages use; [`Runtime::offline`] is enough
/// to check a config.
pub fn compile(loaded: &LoadedConfig, runtime: &Runtime) -> Result<Policy, ConfigErrors> {
    let config = &loaded.config;
    let mut cx = CompileCx::new(loaded, runtime, route::route_ids(&config.routes));
    let server = compile_server(&mut cx);
    let secrets = compile_secrets(&mut cx);
    cx.session_keys = compile_session_keys(&mut cx, &secrets);
    cx.providers = crate::oidc::providers::compile(&mut cx).map(Arc::new);
    check_services(&mut cx);
    crate::enforce::check_report_only(&mut cx);
    let upstreams = crate::upstream::compile_all(&mut cx);
    let stages = stage_order(&mut cx);
    let (table, routes) = route::compile(&mut cx, &upstreams);
    let mut warnings = std::mem::take(&mut cx.warnings);
    warnings.extend(cx.problems.take_warnings());
    cx.problems.into_result()?;
    Ok(Policy {
        environment: config.environment,
        access_log: config.log.access_log,
        server: server.expect("no problems means the listeners compiled"),
        secrets,
        upstreams,
        routes,
        pipeline: Arc::new(Pipeline::new(stages, Box::new(table))),
        warnings,
    })
}

/// The store, audit, Redis and log settings: checked here so that `check`
/// reports them with everything else, though they take effect at start.
fn check_services(cx: &mut CompileCx<'_>) {
    let config = cx.config;
    let mut problems = crate::store::config_problems(&config.store);
    problems.extend(crate::audit::config_problems(&config.audit));
    if let Some(redis) = &config.redis {
        problems.extend(crate::ratelimit::redis::config_problems(redis));
    }
    for (key, problem) in problems {
        cx.problems.at(key, problem);
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        cx.problems.at("log.level", format!("invalid log filter: {e}"));
    }
}

fn parse_addr(cx: &mut CompileCx<'_>, key: &str, text: &str) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            cx.problems
                .at(key, format!("`{text}` is not an address such as 127.0.0.1:8080"));
            None
        }
    }
}

fn compile_server(cx: &mut CompileCx<'_>) -> Option<ServerPolicy> {
    let s = &cx.config.server;
    let listen = parse_addr(cx, "server.listen", &s.listen);
    let admin_listen = parse_addr(cx, "server.admin_listen", &s.admin_listen);
    for (key, value) in [
        ("server.max_connections", s.max_connections),
        ("server.admin_max_connections", s.admin_max_connections),
    ] {
        if value == 0 || value > 1_000_000 {
            cx.problems.at(key, "must be between 1 and 1000000");
        }
    }
    if s.header_read_timeout.0.is_zero() {
        cx.problems
            .at("server.header_read_timeout", "must be more than zero");
    }
    if s.idle_timeout.0.is_zero() {
        cx.problems.at("server.idle_timeout", "must be more than zero");
    }
    if let Some(workers) = s.workers
        && workers.get() > crate::worker::MAX_WORKERS
    {
        cx.problems.at(
            "server.workers",
            format!("must be at most {}", crate::worker::MAX_WORKERS),
        );
    }
    if let (Some(a), Some(b)) = (listen, admin_listen)
        && a == b
        && a.port() != 0
    {
        cx.problems
            .at("server.admin_listen", "must differ from server.listen");
    }
    // A request waiting for a slow upstream moves no bytes; it is answered
    // (with a 504 at worst) before the stall timeout cuts it.
    let slowest_upstream = cx
        .config
        .upstreams
        .iter()
        .map(|u| u.timeout.0)
        .max()
        .unwrap_or_default();
    let timeouts = Timeouts {
        header_read: s.header_read_timeout.0,
        idle: s.idle_timeout.0,
        stall: s.idle_timeout.0.max(slowest_upstream + Duration::from_secs(1)),
    };
    let limits = |max_connections, framing_records| ConnectionLimits {
        max_connections,
        timeouts,
        drain: s.drain_timeout.0,
        framing_records,
    };
    // Room for a request line and header section just past the limits, so
    // that they are refused with a problem document rather than by hyper.
    let max_head = (s.max_uri_length.0 + s.max_header_size.0).min(4 << 20) as usize + 4096;
    let tls = s.tls.as_ref().map(|t| t.resolved(&cx.loaded.base_dir));
    if let Some(tls) = &tls {
        let problems = tls.problems();
        for problem in &problems {
            cx.problems.at("server.tls", problem);
        }
        // Read every file now, so that `check` and a reload report a bad
        // certificate before it could serve.
        if problems.is_empty()
            && let Err(error) = crate::tls::Tls::load(tls)
        {
            cx.problems.at("server.tls", error.to_string());
        }
    }
    Some(ServerPolicy {
        listen: listen?,
        admin_listen: admin_listen?,
        public: limits(s.max_connections, true),
        admin: limits(s.admin_max_connections, false),
        workers: s.workers,
        max_head,
        max_headers: (s.max_header_count * 2).max(100),
        tls,
    })
}

/// Resolves one secret. In production a missing, short, weak or inline
/// secret is an error; in development a missing one is generated for this
/// run, with a warning.
pub(crate) fn resolve_secret(
    cx: &mut CompileCx<'_>,
    key: &str,
    reference: Option<&SecretRef>,
) -> Option<SecretValue> {
    let key = key.to_string();
    let production = cx.production();
    let reference = reference?;
    if production && matches!(reference, SecretRef::Inline(_)) {
        cx.problems.at(
            &key,
            "secrets must not be written in the config in production; use { env = \"NAME\" } or { file = \"PATH\" }",
        );
        return None;
    }
    match reference.resolve(&cx.loaded.base_dir) {
        Ok(value) => {
            if production && let Some(why) = secret::weakness(value.expose()) {
                cx.problems.at(&key, format!("the secret {why}"));
                return None;
            }
            Some(value)
        }
        Err(e) if production => {
            cx.problems
                .at(&key, format!("{e}; production needs every referenced secret"));
            None
        }
        Err(e) => {
            cx.warnings.push(format!(
                "{key}: {e}; generated a random value for this run (development only; set it before production)"
            ));
            Some(SecretValue::new(secret::generate().into_bytes()))
        }
    }
}

/// The session keys: the current `session_key`, and the previous ones that
/// still open cookies and decrypt stored tokens.
fn compile_session_keys(
    cx: &mut CompileCx<'_>,
    secrets: &Secrets,
) -> Option<Arc<crate::sessions::SessionKeys>> {
    let current = secrets.session_key.as_ref()?;
    let previous: Vec<SecretValue> = cx
        .config
        .secrets
        .previous_session_keys
        .iter()
        .enumerate()
        .filter_map(|(i, r)| resolve_secret(cx, &format!("secrets.previous_session_keys[{i}]"), Some(r)))
        .collect();
    let previous: Vec<&[u8]> = previous.iter().map(|v| v.expose()).collect();
    Some(Arc::new(crate::sessions::SessionKeys::new(
        current.expose(),
        &previous,
    )))
}

fn compile_secrets(cx: &mut CompileCx<'_>) -> Secrets {
    let s = &cx.config.secrets;
    Secrets {
        admin_token: resolve_secret(cx, "secrets.admin_token", s.admin_token.as_ref()),
        session_key: resolve_secret(cx, "secrets.session_key", s.session_key.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;
    use crate::config::load::load;

    fn problems(text: &str) -> Vec<String> {
        let loaded = load(
            &Source::Text {
                name: "t.toml".into(),
                text: text.into(),
            },
            &[],
        )
        .expect("the file parses");
        match compile(&loaded, &Runtime::offline()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn every_section_reports_its_problems_in_one_pass() {
        let found = problems(
            r#"environment = "production"
[server]
max_connections = 0
[store]
url = "mysql://db/x"
max_connections = 0
[audit]
queue = 0
[redis]
url = "not a url"
prefix = "a b"
[api_keys]
headers = ["Cookie"]
[rate_limits]
ipv6_prefix = 0
pre_auth = ["1 per second per key"]
[cors]
origins = ["http://localhost:3000"]
[[upstreams]]
name = "app"
targets = ["ftp://x"]
[[routes]]
id = "api"
path = "/api"
upstream = "ap"
auth = ["apikey"]
[[routes]]
path = "/public"
upstream = "app"
max_body = "2000GiB"
"#,
        );
        let want = [
            "t.toml:3: server.max_connections:",
            "t.toml:5: store.url:",
            "t.toml:6: store.max_connections:",
            "t.toml:8: audit.queue:",
            "t.toml:10: redis.url:",
            "t.toml:11: redis.prefix:",
            "t.toml:13: api_keys.headers:",
            "t.toml:15: rate_limits.ipv6_prefix:",
            "t.toml:16: rate_limits.pre_auth:",
            "t.toml:18: cors.origins:",
            "t.toml:21: upstreams[0].targets:",
            "t.toml:25: routes[0].upstream (route `api`): no upstream is named `ap`; did you mean `app`?",
            "t.toml:26: routes[0].auth (route `api`):",
            "t.toml:27: routes[1] (route `/public`): the route has no `auth`",
            "t.toml:30: routes[1].max_body (route `/public`):",
        ];
        for w in want {
            assert!(
                found.iter().any(|f| f.starts_with(w)),
                "missing {w:?} in\n{}",
                found.join("\n")
            );
        }
        assert_eq!(found.len(), want.len(), "{}", found.join("\n"));
    }

    #[test]
    fn the_pipeline_puts_each_stage_in_its_phases() {
        let loaded = load(
            &Source::Text {
                name: "t.toml".into(),
                text: "environment = \"development\"\n[cors]\norigins = [\"*\"]\n".into(),
            },
            &[],
        )
        .unwrap();
        let policy = compile(&loaded, &Runtime::offline()).unwrap();
        let phases = policy.pipeline.describe();
        assert_eq!(
            phases[0],
            (
                "early",
                vec![
                    "request_id",
                    "cors",
                    "framing",
                    "client_ip",
                    "request_head",
                    "forward_auth"
                ]
            )
        );
        assert_eq!(
            phases[2],
            ("access", vec!["cors", "authn", "authz", "rate_limit"])
        );
        assert_eq!(phases[3], ("body", vec!["body_limit"]));
        assert_eq!(phases[4], ("upstream_request", vec!["upstream_headers"]));
        assert_eq!(
            phases[5],
            (
                "response",
                vec![
                    "request_id",
                    "cors",
                    "forward_auth",
                    "rate_limit",
                    "security_headers"
                ]
            )
        );
        assert_eq!(phases[6], ("logging", vec!["access_log"]));
    }
}
