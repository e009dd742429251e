//! The admin listener (default `127.0.0.1:9090`): health, readiness and
//! metrics. It serves operators and orchestrators, never routed traffic.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when the store answers and every upstream has a
//!   reachable target, else 503 with the failing parts.
//! - `GET /metrics`: Prometheus text format.
//! - `/admin/api/v1/…`: the admin REST API ([`api`]), with its OpenAPI
//!   document at `/admin/api/v1/openapi.json`.

pub mod api;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::Shared;

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
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(shared)
}

async fn not_found() -> Response {
    let id = crate::stage::request_id::generate();
    let mut response = crate::error::problem(
        StatusCode::NOT_FOUND,
        "No such admin endpoint.",
        id.to_str().unwrap_or("-"),
    );
    response
        .headers_mut()
        .insert(crate::stage::request_id::X_REQUEST_ID.clone(), id);
    response.into_response()
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let app = router(shared);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::error!(%error, "admin listener failed");
    }
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let policy = shared.policy.load_full();
    let probes = policy
        .upstreams
        .iter()
        .map(|u| async move { (u.name.clone(), u.probe().await) });
    let results = futures_util::future::join_all(probes).await;
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    if let Some(store) = &shared.runtime.store {
        let value = match store.ping(std::time::Duration::from_secs(2)).await {
            Ok(()) => json!({ "status": "ok" }),
            Err(why) => {
                ready = false;
                json!({ "status": "unavailable", "detail": why })
            }
        };
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
    for (name, result) in results {
        let value = match result {
            Ok(()) => json!({ "status": "ok" }),
            Err(why) => {
                ready = false;
                json!({ "status": "unreachable", "detail": why })
            }
        };
        checks.insert(format!("upstream:{name}"), value);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks });
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        shared.metrics.render(),
    )
        .into_response()
}
