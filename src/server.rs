//! The running gateway: listeners, the per-request handler, reload and
//! graceful shutdown.
//!
//! [`Gateway::start`] compiles the policy, binds both listeners and serves
//! until [`Gateway::shutdown`]. Tests start it in-process on `127.0.0.1:0`;
//! the binary wraps it with signal handling (SIGHUP reloads, SIGTERM and
//! Ctrl-C drain and stop).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::audit::writer::AuditTask;
use crate::audit::{Event, Severity};
use crate::body::GatewayBody;
use crate::config::{ConfigErrors, LoadedConfig, Source, load};
use crate::connection::Connection;
use crate::keys::KeyCache;
use crate::listener::{self, Admission, ConnectionSlots, Plain};
use crate::metrics::Metrics;
use crate::pipeline::{Exchange, LoggedBody};
use crate::policy::{Policy, compile};
use crate::ratelimit::local::LocalLimiter;
use crate::ratelimit::redis::RedisLimiter;
use crate::runtime::Runtime;
use crate::sessions::SessionCache;
use crate::stage::authn::jwt::JwksRegistry;
use crate::store::{Store, StoreError};
use crate::worker::{self, Workers};

/// What every connection and the admin listener share.
pub struct Shared {
    pub policy: ArcSwap<Policy>,
    /// The public listener's TLS, loaded at start; SIGHUP and file changes
    /// reload its certificates.
    pub tls: Option<Arc<crate::tls::Tls>>,
    pub metrics: Arc<Metrics>,
    pub runtime: Runtime,
    source: Source,
    reload_lock: std::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the config has problems:\n{0}")]
    Config(ConfigErrors),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the store is not usable: {0}")]
    Store(#[from] StoreError),
    #[error("Redis is not usable: {0}")]
    Redis(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

pub struct Gateway {
    shared: Arc<Shared>,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    /// The public listener's per-core workers.
    workers: Workers,
    admin_task: JoinHandle<()>,
    audit_task: AuditTask,
    /// Cache upkeep, limiter sweeps, Redis reconnects.
    background: Vec<JoinHandle<()>>,
}

/// What the startup line says is running, as text fields.
struct Summary {
    /// Route ids, the first 50.
    routes: String,
    /// `name(N targets)`.
    upstreams: String,
    /// The authentication kinds routes use.
    auth: String,
    /// Every stage in the pipeline, in order, and the listener's TLS.
    protections: String,
    store: &'static str,
}

impl Summary {
    fn of(policy: &Policy, loaded: &LoadedConfig) -> Summary {
        let mut routes: Vec<&str> = policy.routes.iter().map(|r| &*r.id).take(50).collect();
        if policy.routes.len() > 50 {
            routes.push("…");
        }
        let upstreams: Vec<String> = policy
            .upstreams
            .iter()
            .map(|u| format!("{}({} targets)", u.name, u.target_count()))
            .collect();
        let mut auth: Vec<&str> = Vec::new();
        for kind in loaded.config.routes.iter().flat_map(|r| r.auth.iter().flatten()) {
            if !auth.contains(&kind.as_str()) {
                auth.push(kind);
            }
        }
        let mut protections: Vec<&str> = Vec::new();
        for (_, stages) in policy.pipeline.describe() {
            for stage in stages {
                if !protections.contains(&stage) {
                    protections.push(stage);
                }
            }
        }
        if let Some(tls) = &policy.server.tls {
            protections.push(if tls.client_ca.is_some() {
                "tls+client_certs"
            } else {
                "tls"
            });
        }
        let store = if loaded.config.store.url.starts_with("sqlite:") {
            "sqlite"
        } else {
            "postgres"
        };
        Summary {
            routes: routes.join(", "),
            upstreams: upstreams.join(", "),
            auth: auth.join(", "),
            protections: protections.join(", "),
            store,
        }
    }
}

/// Connects the store (migrating it if asked) and Redis, and starts the
/// audit writer, the key cache and the limiter's background tasks.
async fn start_services(
    loaded: &LoadedConfig,
    metrics: Arc<Metrics>,
) -> Result<(Runtime, AuditTask, Vec<JoinHandle<()>>), StartError> {
    let config = &loaded.config;
    let store = Store::connect(&config.store, &loaded.base_dir).await?;
    if config.store.migrate {
        store.migrate().await?;
    }
    let (audit, audit_task) =
        crate::audit::start(&config.audit, &loaded.base_dir, Some(store.clone()), &metrics);
    let keys = KeyCache::new(
        store.clone(),
        config.api_keys.cache_size,
        config.api_keys.cache_ttl.0,
        &metrics,
    );
    let limiter = Arc::new(LocalLimiter::new(config.rate_limits.max_entries, &metrics));
    let mut background = vec![
        keys.spawn_maintenance(config.api_keys.usage_flush.0),
        limiter.spawn_sweeper(),
    ];
    let redis = match &config.redis {
        Some(redis_config) => {
            let redis = RedisLimiter::start(redis_config, audit.clone(), &metrics)
                .await
                .map_err(|e| StartError::Redis(e.to_string()))?;
            background.push(redis.spawn_reconnector());
            background.push(redis.spawn_key_listener(keys.clone()));
            Some(redis)
        }
        None => None,
    };
    let sessions = SessionCache::new(
        store.clone(),
        config.sessions.clone().unwrap_or_default().cache_size,
    );
    background.push(sessions.spawn_maintenance());
    if let Some(redis) = &redis {
        sessions.use_redis(redis.clone());
        background.push(redis.spawn_session_listener(sessions.clone()));
    }
    let runtime = Runtime {
        jwks: JwksRegistry::new(&metrics, audit.clone()),
        sessions: Some(sessions),
        metrics,
        store: Some(store),
        keys: Some(keys),
        audit,
        limiter,
        redis,
        limit_audit: Arc::new(quick_cache::sync::Cache::new(10_000)),
        websockets: crate::websocket::WebSockets::new(),
        targets: Default::default(),
    };
    Ok((runtime, audit_task, background))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl Gateway {
    /// Compiles the config, binds the listeners and starts serving.
    pub async fn start(loaded: LoadedConfig) -> Result<Gateway, StartError> {
        let metrics = Arc::new(Metrics::new());
        // Report config problems before touching the store.
        compile(&loaded, &Runtime::offline()).map_err(StartError::Config)?;
        let (runtime, audit_task, background) = start_services(&loaded, metrics.clone()).await?;
        let policy = compile(&loaded, &runtime).map_err(StartError::Config)?;
        for warning in &policy.warnings {
            tracing::warn!("{warning}");
        }
        let public = bind(policy.server.listen).await?;
        let admin = bind(policy.server.admin_listen).await?;
        let public_addr = public.local_addr().map_err(|source| StartError::Bind {
            addr: policy.server.listen,
            source,
        })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            addr: policy.server.admin_listen,
            source,
        })?;
        policy.start_background();
        let tls = match &policy.server.tls {
            Some(config) => Some(crate::tls::Tls::load(config)?),
            None => None,
        };
        if let Some(tls) = &tls {
            tls.watch();
        }
        let shared = Arc::new(Shared {
            tls,
            policy: ArcSwap::from_pointee(policy),
            metrics,
            runtime,
            source: loaded.source.clone(),
            reload_lock: std::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&shared);
        shared
            .runtime
            .websockets
            .follow(move || weak.upgrade().map(|shared| shared.policy.load_full()));
        let (shutdown, signal) = watch::channel(false);
        let workers = start_workers(&shared, public, signal.clone())?;
        let admin_task = tokio::spawn(admin::serve(admin, shared.clone(), signal));
        let summary = Summary::of(&shared.policy.load(), &loaded);
        tracing::info!(
            public = %public_addr,
            admin = %admin_addr,
            tls = shared.tls.is_some(),
            environment = shared.policy.load().environment.as_str(),
            routes = summary.routes,
            upstreams = summary.upstreams,
            auth = summary.auth,
            protections = summary.protections,
            store = summary.store,
            redis = loaded.config.redis.is_some(),
            "portcullis is listening"
        );
        Ok(Gateway {
            shared,
            public_addr,
            admin_addr,
            shutdown,
            workers,
            admin_task,
            audit_task,
            background,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Re-reads and re-validates the config; on success the new policy
    /// serves every request that starts afterwards. On failure the old
    /// policy keeps serving and the problems are returned.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        self.shared.reload()
    }

    /// Stops accepting, lets in-flight requests finish for up to the drain
    /// timeout, then returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let drain = self.shared.policy.load().server.public.drain;
        let websockets = self.shared.runtime.websockets.clone();
        let (_, (), admin) = tokio::join!(
            websockets.close_all(drain),
            self.workers.served(),
            &mut self.admin_task
        );
        let _ = admin;
        for task in self.background.drain(..) {
            task.abort();
        }
        if let Some(keys) = &self.shared.runtime.keys {
            keys.flush_usage().await;
        }
        self.audit_task.shutdown().await;
        if let Some(store) = &self.shared.runtime.store {
            store.close().await;
        }
        self.workers.stop().await;
    }
}

/// Starts the public listener's workers (`[server] workers`), each with its
/// own descriptor of `public` and its share of the connection cap.
fn start_workers(
    shared: &Arc<Shared>,
    public: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<Workers, StartError> {
    let server = shared.policy.load().server.clone();
    let failed = |source| StartError::Bind {
        addr: server.listen,
        source,
    };
    let public = public.into_std().map_err(failed)?;
    let slots = ConnectionSlots::new(
        server.public.max_connections,
        shared.metrics.connections_open.clone(),
    );
    let metrics = shared.metrics.clone();
    let shared = shared.clone();
    let serve = move |listener, seat| {
        let admission = Admission {
            slots: slots.clone(),
            parked: Some(shared.metrics.connections_parked.clone()),
            seat: Some(seat),
        };
        serve_public(listener, shared.clone(), admission, shutdown.clone())
    };
    let open = (1..=worker::count(server.workers))
        .map(|w| metrics.worker_connections_open(u16::try_from(w).unwrap_or(u16::MAX)))
        .collect();
    Workers::start(open, public, serve).map_err(failed)
}

impl Shared {
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Certificates are files the config names: reloaded whatever the
        // config's fate, so a renewed certificate never waits on a typo.
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(error) => {
                    tracing::error!(%error, "TLS certificates not reloaded; the previous ones keep serving")
                }
            }
        }
        let env = crate::config::load::config_env_vars();
        let result = load::load(&self.source, &env).and_then(|loaded| compile(&loaded, &self.runtime));
        match result {
            Ok(policy) => {
                let old = self.policy.load();
                let (new, old) = (&policy.server, &old.server);
                if new.listen != old.listen
                    || new.admin_listen != old.admin_listen
                    || new.public.max_connections != old.public.max_connections
                    || new.admin.max_connections != old.admin.max_connections
                    || new.workers != old.workers
                    || new.public.timeouts.header_read != old.public.timeouts.header_read
                    || new.public.timeouts.idle != old.public.timeouts.idle
                    || new.max_head != old.max_head
                    || new.max_headers != old.max_headers
                    || new.tls != old.tls
                {
                    tracing::warn!("listener settings changed; they take effect after a restart");
                }
                for warning in &policy.warnings {
                    tracing::warn!("{warning}");
                }
                policy.start_background();
                self.policy.store(Arc::new(policy));
                self.metrics.config_reloads.with_label_values(&["applied"]).inc();
                self.runtime.audit.emit(
                    Event::new("config.reloaded", Severity::Notice)
                        .detail("routes", self.policy.load().routes.len()),
                );
                tracing::info!("config reloaded");
                Ok(())
            }
            Err(errors) => {
                self.metrics.config_reloads.with_label_values(&["rejected"]).inc();
                for e in &errors.0 {
                    tracing::error!(problem = %e, "config reload rejected; the previous config keeps serving");
                }
                let problems: Vec<String> = errors.0.iter().take(20).map(|e| e.to_string()).collect();
                self.runtime.audit.emit(
                    Event::new("config.rejected", Severity::Warning)
                        .detail("problems", problems)
                        .detail("count", errors.0.len()),
                );
                Err(errors)
            }
        }
    }
}

/// Serves routed traffic until shutdown, then drains.
async fn serve_public(
    listener: TcpListener,
    shared: Arc<Shared>,
    admission: Admission,
    shutdown: watch::Receiver<bool>,
) {
    let server = shared.policy.load().server.clone();
    let builder = listener::http_builder(server.max_head, server.max_headers);
    let unrouted = shared.metrics.unrouted.clone();
    let access_log = shared.policy.load().access_log;
    let refused = move |connection: &Connection, status: u16| {
        unrouted.record(status, std::time::Duration::ZERO);
        if access_log {
            tracing::info!(
                target: "access",
                client_ip = %connection.peer.ip(),
                status,
                refused_by = "http parser",
                "request head refused before it was parsed"
            );
        }
    };
    let tls = shared.tls.clone();
    let service = move |connection: Arc<Connection>| {
        let shared = shared.clone();
        service_fn(move |req| handle(shared.clone(), connection.clone(), req))
    };
    let limits = server.public;
    match tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener { tcp: listener, tls };
            listener::serve(listener, limits, builder, service, refused, shutdown, admission).await
        }
        None => {
            listener::serve(
                Plain(listener),
                limits,
                builder,
                service,
                refused,
                shutdown,
                admission,
            )
            .await
        }
    }
}

/// Runs one request through the pipeline; its log line is written exactly
/// once, however the request ends (see [`Exchange`]).
pub async fn handle(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<LoggedBody>, Infallible> {
    let pipeline = shared.policy.load().pipeline.clone();
    let http2 = req.version() == http::Version::HTTP_2;
    let mut exchange = Exchange::begin(pipeline, connection, &req);
    let (pipeline, cx) = exchange.parts();
    let mut response = pipeline.run(cx, req.map(GatewayBody::Streamed)).await;
    if http2 {
        own_header_values(response.headers_mut());
    }
    Ok(exchange.respond(response))
}

/// Gives every header value storage of its own. A value hyper parsed from
/// an upstream response is a view of that upstream connection's read buffer,
/// and an HTTP/2 client connection keeps the values it indexes in its HPACK
/// table for as long as it lives: each idle HTTP/2 client would hold a whole
/// 8 KiB upstream buffer (docs/benchmarks.md, "Memory per connection").
/// HTTP/1 writes the head out and drops it, so only HTTP/2 pays this copy.
fn own_header_values(headers: &mut http::HeaderMap) {
    for value in headers.values_mut() {
        let sensitive = value.is_sensitive();
        if let Ok(mut owned) = http::HeaderValue::from_bytes(value.as_bytes()) {
            owned.set_sensitive(sensitive);
            *value = owned;
        }
    }
}
