//! The admin listener (default `127.0.0.1:9090`): health, readiness and
//! metrics. It serves operators and orchestrators, never routed traffic.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when what the gateway itself needs works (the store;
//!   Redis, when rate limits refuse traffic without it); every upstream is
//!   probed and reported, and makes the answer 503 only if it is configured
//!   with `readiness = "require"`. Each JWT issuer's JWKS is reported
//!   (`ok`, `stale` or `unavailable`) as a warning that does not change the
//!   answer.
//! - `GET /metrics`: Prometheus text format.
//! - `/admin/api/v1/…`: the admin REST API ([`api`]), with its OpenAPI
//!   document at `/admin/api/v1/openapi.json`.
//!
//! The listener has the public listener's header read and idle timeouts and
//! a connection cap of its own (`[server] admin_max_connections`), and every
//! error it answers is an RFC 9457 problem document.

pub mod api;

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service;

use crate::connection::{Connection, InFlightBody};
use crate::listener::{self, Admission, ConnectionSlots, Plain};
use crate::server::Shared;
use crate::upstream::Readiness;

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

pub fn router(shared: Arc<Shared>) -> Router {
    let (api, doc) = api::routes(shared.clone());
    let doc = Arc::new(doc);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/admin/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        )
        .merge(api)
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(errors_as_problems))
        .with_state(shared)
}

/// A response with the request ID header and a problem document body.
fn problem(status: StatusCode, detail: &str) -> Response {
    let id = crate::stage::request_id::generate();
    let mut response = crate::error::problem(status, detail, id.to_str().unwrap_or("-"));
    response
        .headers_mut()
        .insert(crate::stage::request_id::X_REQUEST_ID.clone(), id);
    response.into_response()
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "No such admin endpoint.")
}

/// Turns the framework's own error answers (405 with an empty body, 413 as
/// text, a JSON body that does not parse) into problem documents, keeping
/// their status and headers such as `Allow`.
async fn errors_as_problems(response: Response) -> Response {
    let status = response.status();
    // JSON answers (problem documents, the readiness report) are the
    // endpoints' own; only bare and plain-text errors are the framework's.
    let framework_made = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|t| t.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !framework_made {
        return response;
    }
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => "This method is not allowed on this admin endpoint.".to_string(),
        StatusCode::PAYLOAD_TOO_LARGE => format!("The request body is larger than {MAX_BODY} bytes."),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "Send the request body as application/json.".to_string(),
        other => format!("{}.", other.canonical_reason().unwrap_or("The request failed")),
    };
    let (head, _) = response.into_parts();
    let mut answer = problem(status, &detail);
    for name in [header::ALLOW, header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(value) = head.headers.get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}

/// Serves the admin listener until shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let server = shared.policy.load().server.clone();
    let open = shared.metrics.admin_connections_open.clone();
    let router = router(shared);
    let builder = listener::http_builder(64 * 1024, 100);
    let service = move |connection: Arc<Connection>| {
        let router = router.clone();
        service_fn(move |mut req: Request<Incoming>| {
            // In flight until the response body is done, so the watchdog
            // applies the idle timeout between requests, not the first
            // request's deadline.
            let request = connection.start_request();
            req.extensions_mut().insert(ConnectInfo(connection.peer));
            // A router is always ready; `call` needs no `poll_ready` first.
            let answer = router.clone().call(req);
            async move {
                let response = answer.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| InFlightBody::new(body, request)))
            }
        })
    };
    listener::serve(
        Plain(listener),
        server.admin,
        builder,
        service,
        |_: &Connection, _| {},
        shutdown,
        Admission {
            slots: ConnectionSlots::new(server.admin.max_connections, open),
            parked: None,
            seat: None,
        },
    )
    .await;
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let policy = shared.policy.load_full();
    let probes = policy
        .upstreams
        .iter()
        .map(|u| async move { (u, u.probe().await) });
    let results = futures_util::future::join_all(probes).await;
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    if let Some(store) = &shared.runtime.store {
        let audit = shared.runtime.audit.health();
        let (value, store_ready) = store_check(store.ping(std::time::Duration::from_secs(2)).await, audit);
        ready &= store_ready;
        shared.metrics.set_store_available(value["status"] == "ok");
        checks.insert("store".into(), value);
    }
    if let Some(redis) = &shared.runtime.redis {
        let healthy = redis.is_healthy();
        let mode = format!("{:?}", redis.on_outage).to_lowercase();
        let value = if healthy {
            json!({ "status": "ok" })
        } else {
            json!({ "status": "degraded", "on_outage": mode })
        };
        // Degraded is still ready, unless limited routes now refuse traffic.
        if !healthy && redis.on_outage == crate::config::OnOutage::Closed {
            ready = false;
        }
        checks.insert("redis".into(), value);
    }
    // An issuer whose keys cannot be refreshed is a warning, not a reason
    // to leave the load balancer: every instance shares the issuer, and
    // other routes still work.
    for (issuer, health) in shared.runtime.jwks.health() {
        use crate::stage::authn::jwt::Health;
        let value = match health {
            Health::Ok => json!({ "status": "ok" }),
            Health::Stale { since_ms, error } => json!({
                "status": "stale",
                "warning": "the JWKS cannot be refreshed; the last good keys serve until jwks_max_stale",
                "failing_since_ms": since_ms,
                "detail": error,
            }),
            Health::Unavailable { error } => json!({
                "status": "unavailable",
                "warning": "no usable keys; this issuer's tokens are refused with 503",
                "detail": error,
            }),
        };
        checks.insert(format!("jwks:{issuer}"), value);
    }
    for (upstream, (result, targets)) in results {
        let required = upstream.readiness == Readiness::Require;
        let value = match result {
            Ok(()) => json!({ "status": "ok", "targets": targets }),
            Err(why) => {
                ready &= !required;
                json!({ "status": "unreachable", "detail": why, "required": required, "targets": targets })
            }
        };
        checks.insert(format!("upstream:{}", upstream.name), value);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks });
    (status, axum::Json(body)).into_response()
}

/// The store's `/readyz` entry, and whether it leaves the gateway ready. A
/// store that is down while the audit spill file takes the events is
/// `degraded`, not unready: cached keys and sessions still serve, and
/// every instance shares the store, so leaving the load balancer would
/// not help. Only a spill file that cannot be written (events would be
/// lost) makes the gateway unready.
fn store_check(
    ping: Result<(), String>,
    audit: Option<crate::audit::AuditHealth>,
) -> (serde_json::Value, bool) {
    let spill_pending = audit.map_or(0, |a| a.spill_pending);
    let spill_writable = audit.is_none_or(|a| a.spill_writable);
    match ping {
        Ok(()) if spill_writable => (
            json!({ "status": "ok", "audit_spill_pending": spill_pending }),
            true,
        ),
        Ok(()) => (
            json!({ "status": "unavailable", "detail": "the audit spill file cannot be written", "audit_spill_pending": spill_pending }),
            false,
        ),
        Err(why) if spill_writable => (
            json!({
                "status": "degraded",
                "detail": why,
                "warning": "audit events go to the spill file; cached keys and sessions still serve",
                "audit_spill_pending": spill_pending,
            }),
            true,
        ),
        Err(why) => (
            json!({ "status": "unavailable", "detail": why, "warning": "the audit spill file cannot be written either", "audit_spill_pending": spill_pending }),
            false,
        ),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        shared.metrics.render(),
    )
        .into_response()
}
