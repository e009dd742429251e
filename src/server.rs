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
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::access_log::{Completion, CompletionBody};
use crate::audit::writer::AuditTask;
use crate::audit::{Event, Severity};
use crate::body::GatewayBody;
use crate::config::{ConfigErrors, LoadedConfig, Source, load};
use crate::error::{GatewayError, problem_response};
use crate::keys::KeyCache;
use crate::metrics::Metrics;
use crate::pipeline::{Connection, Outcome, RequestCx};
use crate::policy::{Policy, compile};
use crate::ratelimit::local::LocalLimiter;
use crate::ratelimit::redis::RedisLimiter;
use crate::runtime::Runtime;
use crate::stage::framing::inspect::Tapped;
use crate::store::{Store, StoreError};
use crate::{admin, proxy};

/// What every connection and the admin listener share.
pub struct Shared {
    pub policy: ArcSwap<Policy>,
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
}

pub struct Gateway {
    shared: Arc<Shared>,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    public_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    audit_task: AuditTask,
    /// Cache upkeep, limiter sweeps, Redis reconnects.
    background: Vec<JoinHandle<()>>,
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
    let runtime = Runtime {
        metrics,
        store: Some(store),
        keys: Some(keys),
        audit,
        limiter,
        redis,
        limit_audit: Arc::new(quick_cache::sync::Cache::new(10_000)),
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
        let shared = Arc::new(Shared {
            policy: ArcSwap::from_pointee(policy),
            metrics,
            runtime,
            source: loaded.source.clone(),
            reload_lock: std::sync::Mutex::new(()),
        });
        let (shutdown, signal) = watch::channel(false);
        let public_task = tokio::spawn(serve_public(public, shared.clone(), signal.clone()));
        let admin_task = tokio::spawn(admin::serve(admin, shared.clone(), signal));
        tracing::info!(
            public = %public_addr,
            admin = %admin_addr,
            environment = shared.policy.load().environment.as_str(),
            "portcullis is listening"
        );
        Ok(Gateway {
            shared,
            public_addr,
            admin_addr,
            shutdown,
            public_task,
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
        let _ = self.public_task.await;
        let _ = self.admin_task.await;
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
    }
}

impl Shared {
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let env = crate::config::load::config_env_vars();
        let result = load::load(&self.source, &env).and_then(|loaded| compile(&loaded, &self.runtime));
        match result {
            Ok(policy) => {
                let old = self.policy.load();
                if policy.server.listen != old.server.listen
                    || policy.server.admin_listen != old.server.admin_listen
                    || policy.server.max_connections != old.server.max_connections
                {
                    tracing::warn!("listener settings changed; they take effect after a restart");
                }
                for warning in &policy.warnings {
                    tracing::warn!("{warning}");
                }
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

/// Accepts connections until shutdown, then drains.
async fn serve_public(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let server = shared.policy.load().server.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // One buffer per write: hyper's default hands a response's head and its
    // body to the kernel as separate iovecs, which costs more in the kernel
    // than copying a typical API response into the head's buffer (about
    // 3% of throughput on the benchmark; docs/benchmarks.md).
    builder
        .http1()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_size.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(server.max_header_size as u32)
        .max_concurrent_streams(256);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(server.max_connections));

    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Usually out of file descriptors: pause instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn_shared = shared.clone();
        let conn = Arc::new(Connection::new(peer, false));
        let io = TokioIo::new(Tapped::new(stream, conn.heads.clone()));
        let watched = conn.clone();
        let service = service_fn(move |req| handle(conn_shared.clone(), conn.clone(), req));
        let connection = builder.serve_connection(io, service).into_owned();
        let connection = graceful.watch(connection);
        let open = shared.metrics.connections_open.clone();
        open.inc();
        let (first, idle) = (server.header_read_timeout, server.idle_timeout);
        tokio::spawn(async move {
            close_when_idle(connection, &watched, first, idle).await;
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    let drain = shared.policy.load().server.drain_timeout;
    let open = graceful.count();
    if open > 0 {
        tracing::info!(connections = open, "draining in-flight requests");
    }
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(drain) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Drives a client connection until it ends, or until it has been idle too
/// long: no first request within `first` (the header read timeout, which
/// hyper itself applies only once it knows the protocol), or no request for
/// `idle` since the last one finished. Dropping the connection closes it.
/// Without this, silent or idle connections (HTTP/2 ones especially) could
/// hold every `max_connections` slot.
async fn close_when_idle(
    connection: impl std::future::Future,
    watched: &Connection,
    first: Duration,
    idle: Duration,
) {
    tokio::pin!(connection);
    let mut check_at = tokio::time::Instant::now() + first;
    loop {
        tokio::select! {
            _ = &mut connection => return,
            _ = tokio::time::sleep_until(check_at) => match watched.idleness(first, idle) {
                crate::pipeline::Idleness::Expired => return,
                crate::pipeline::Idleness::CheckAt(at) => check_at = at.into(),
            },
        }
    }
}

/// Runs one request through the pipeline and the proxy.
pub async fn handle(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<CompletionBody>, Infallible> {
    connection.request_started();
    let policy = shared.policy.load_full();
    let mut cx = RequestCx::new(policy.clone(), connection);
    let method = req.method().clone();
    let uri = req.uri().clone();
    let mut req = req.map(GatewayBody::Streamed);

    let (outcome, ran) = policy.pipeline.request(&mut cx, &mut req).await;
    let mut response = match outcome {
        Outcome::Forward => match cx.route.map(|i| &policy.routes[i]) {
            Some(route) => proxy::forward(&mut cx, req, &route.upstream)
                .await
                .unwrap_or_else(|error| render(&cx, &error)),
            None => render(&cx, &GatewayError::Internal),
        },
        Outcome::Answered(response) => response,
        Outcome::Failed(error) => render(&cx, &error),
    };
    policy.pipeline.respond(ran, &cx, &mut response);

    let status = response.status();
    Ok(response.map(|body| {
        CompletionBody::new(
            body,
            Completion {
                cx,
                method,
                uri,
                status,
            },
        )
    }))
}

fn render(cx: &RequestCx, error: &GatewayError) -> Response<GatewayBody> {
    if error.side() == crate::error::ErrorSide::Internal {
        tracing::error!(request_id = cx.request_id(), %error, "request failed inside the gateway");
    }
    problem_response(error, cx.request_id())
}
