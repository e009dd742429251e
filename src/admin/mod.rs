//! The admin listener (default `127.0.0.1:9090`): health, readiness and
//! metrics. It serves operators and orchestrators, never routed traffic.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when every upstream has a reachable target, else 503
//!   with the failing parts.
//! - `GET /metrics`: Prometheus text format.

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
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let app = router(shared);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
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
