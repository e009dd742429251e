//! The admin REST API under `/admin/api/v1/`, on the admin listener,
//! authenticated by the `admin_token` secret as a Bearer token. Its OpenAPI
//! document (`/admin/api/v1/openapi.json`) is generated from these handlers
//! by utoipa, so it cannot drift from the code.
//!
//! Every error is a problem document. Every change is an audit event, as is
//! every refused token (`admin.auth_failure`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{ChainedEvent, Event, Severity, parse_time};
use crate::config::units::parse_duration;
use crate::keys::manage::{self, Actor, CreatedKey, KeyRequest};
use crate::server::Shared;
use crate::stage::request_id;
use crate::store::audit::AuditFilter;
use crate::store::consumers::Consumer;
use crate::store::keys::KeyInfo;
use crate::store::{Store, StoreError, now_ms};

/// An RFC 9457 problem document.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    request_id: String,
}

/// What a handler can fail with.
pub struct ApiError {
    status: StatusCode,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            detail: detail.into(),
        }
    }

    fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, detail)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::NotFound(what) => ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found")),
            StoreError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, why),
            StoreError::Invalid(why) => ApiError::bad_request(why),
            other => {
                tracing::error!(error = %other, "admin API store error");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "The store is not available.")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let id = request_id::generate();
        let mut response = crate::error::problem(self.status, &self.detail, id.to_str().unwrap_or("-"));
        response
            .headers_mut()
            .insert(request_id::X_REQUEST_ID.clone(), id);
        response.into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn store(shared: &Shared) -> ApiResult<&Store> {
    shared
        .runtime
        .store
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "The store is not available."))
}

/// Drops a changed key from this instance's cache at once, and from every
/// other instance's through Redis when configured (otherwise they notice
/// within about a second by polling the store).
async fn announce_key_change(shared: &Shared, id: &str) {
    if let Some(cache) = &shared.runtime.keys {
        cache.invalidate(id);
    }
    if let Some(redis) = &shared.runtime.redis {
        redis.publish_key_change(id).await;
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid: {e}")))
}

fn actor(peer: SocketAddr) -> Actor {
    Actor {
        via: "admin_api",
        client_ip: Some(peer.ip()),
    }
}

/// Refuses requests without the admin token.
pub async fn require_admin_token(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let policy = shared.policy.load();
    let Some(token) = &policy.secrets.admin_token else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The admin API is off: set secrets.admin_token to enable it.",
        )
        .into_response();
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let reason = match presented {
        None => "missing",
        Some(p) if token.matches(p.as_bytes()) => return next.run(request).await,
        Some(_) => "invalid",
    };
    shared
        .runtime
        .audit
        .record(
            Event::new("admin.auth_failure", Severity::Warning)
                .client_ip(peer.ip())
                .detail("reason", reason)
                .detail("path", request.uri().path()),
        )
        .await;
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "A valid admin token is required.").into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
    );
    response
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConsumer {
    /// 1 to 64 characters from A-Z a-z 0-9 - _ . @
    name: String,
    /// A JSON object stored with the consumer.
    #[serde(default)]
    #[schema(value_type = Object)]
    metadata: Option<serde_json::Value>,
}

#[utoipa::path(get, path = "/admin/api/v1/consumers", tag = "consumers",
    security(("admin_token" = [])),
    responses((status = 200, body = [Consumer]), (status = 401, body = Problem)))]
async fn list_consumers(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Vec<Consumer>>> {
    Ok(Json(store(&shared)?.list_consumers().await?))
}

#[utoipa::path(post, path = "/admin/api/v1/consumers", tag = "consumers",
    security(("admin_token" = [])), request_body = NewConsumer,
    responses((status = 201, body = Consumer), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 409, body = Problem)))]
async fn create_consumer(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Consumer>)> {
    let new: NewConsumer = parse_json(&body)?;
    let metadata = new.metadata.unwrap_or_else(|| serde_json::json!({}));
    let consumer = manage::create_consumer(
        store(&shared)?,
        &shared.runtime.audit,
        &new.name,
        &metadata,
        actor(peer),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(consumer)))
}

#[derive(Serialize, ToSchema)]
pub struct DeletedConsumer {
    deleted: String,
    deleted_keys: Vec<String>,
}

#[utoipa::path(delete, path = "/admin/api/v1/consumers/{name}", tag = "consumers",
    security(("admin_token" = [])), params(("name" = String, Path, description = "Consumer name")),
    responses((status = 200, body = DeletedConsumer), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn delete_consumer(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeletedConsumer>> {
    let keys = manage::delete_consumer(store(&shared)?, &shared.runtime.audit, &name, actor(peer)).await?;
    for id in &keys {
        announce_key_change(&shared, id).await;
    }
    Ok(Json(DeletedConsumer {
        deleted: name,
        deleted_keys: keys,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    consumer: String,
    #[serde(default)]
    scopes: Vec<String>,
    /// Lifetime such as "90d"; omitted for a key that does not expire.
    expires_in: Option<String>,
    /// The key's own limit, such as "100/minute".
    rate_limit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyListQuery {
    consumer: Option<String>,
}

#[utoipa::path(get, path = "/admin/api/v1/keys", tag = "keys",
    security(("admin_token" = [])), params(("consumer" = Option<String>, Query, description = "Only this consumer's keys")),
    responses((status = 200, body = [KeyInfo]), (status = 401, body = Problem)))]
async fn list_keys(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Vec<KeyInfo>>> {
    let query: KeyListQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("Invalid query: {e}")))?;
    let now = now_ms();
    let keys = store(&shared)?.list_keys(query.consumer.as_deref()).await?;
    Ok(Json(keys.iter().map(|k| k.info(now)).collect()))
}

#[utoipa::path(post, path = "/admin/api/v1/keys", tag = "keys",
    security(("admin_token" = [])), request_body = NewKey,
    responses((status = 201, body = CreatedKey, description = "The key is in the answer once and never again"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn create_key(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let new: NewKey = parse_json(&body)?;
    let expires_in = new
        .expires_in
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let request = KeyRequest {
        consumer: new.consumer,
        scopes: new.scopes,
        expires_in,
        rate_limit: new.rate_limit,
    };
    let created = manage::create_key(store(&shared)?, &shared.runtime.audit, &request, actor(peer)).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(post, path = "/admin/api/v1/keys/{id}/revoke", tag = "keys",
    security(("admin_token" = [])), params(("id" = String, Path, description = "Key ID")),
    responses((status = 200, body = KeyInfo), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn revoke_key(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyInfo>> {
    let info = manage::revoke_key(store(&shared)?, &shared.runtime.audit, &id, actor(peer)).await?;
    announce_key_change(&shared, &id).await;
    Ok(Json(info))
}

/// Sessions ended by a revocation.
#[derive(Serialize, ToSchema)]
pub struct RevokedSessions {
    pub user: String,
    pub sessions: usize,
}

#[utoipa::path(post, path = "/admin/api/v1/users/{username}/sessions/revoke", tag = "sessions",
    security(("admin_token" = [])), params(("username" = String, Path, description = "User name (local user or provider login)")),
    responses((status = 200, body = RevokedSessions), (status = 401, body = Problem)))]
/// Ends every session of a user: at once here and, with Redis, everywhere;
/// within a second on every instance regardless (store poll).
async fn revoke_sessions(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(username): Path<String>,
) -> ApiResult<Json<RevokedSessions>> {
    let hashes = store(&shared)?.revoke_user_sessions(&username, None).await?;
    if let Some(cache) = &shared.runtime.sessions {
        for hash in &hashes {
            cache.invalidate_hash(hash);
        }
    }
    if let Some(redis) = &shared.runtime.redis {
        for hash in &hashes {
            redis.publish_session_revoked(hash).await;
        }
    }
    shared
        .runtime
        .audit
        .record(
            crate::audit::Event::new("session.revoked", crate::audit::Severity::Notice)
                .consumer(username.as_str())
                .detail("via", "admin_api")
                .detail("client_ip", peer.ip().to_string())
                .detail("sessions", hashes.len()),
        )
        .await;
    Ok(Json(RevokedSessions {
        user: username,
        sessions: hashes.len(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// How long the old key keeps working, such as "24h".
    grace: String,
}

#[utoipa::path(post, path = "/admin/api/v1/keys/{id}/rotate", tag = "keys",
    security(("admin_token" = [])), params(("id" = String, Path, description = "Key ID")), request_body = Rotation,
    responses((status = 201, body = CreatedKey), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn rotate_key(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let rotation: Rotation = parse_json(&body)?;
    let grace = parse_duration(&rotation.grace).map_err(ApiError::bad_request)?;
    let created = manage::rotate_key(store(&shared)?, &shared.runtime.audit, &id, grace, actor(peer)).await?;
    announce_key_change(&shared, &id).await;
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    consumer: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
    cursor: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    events: Vec<ChainedEvent>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: Option<i64>,
}

#[utoipa::path(get, path = "/admin/api/v1/audit", tag = "audit",
    security(("admin_token" = [])),
    params(
        ("type" = Option<String>, Query, description = "Event type, e.g. auth.failure"),
        ("consumer" = Option<String>, Query, description = "Consumer name"),
        ("since" = Option<String>, Query, description = "RFC 3339 time or an age such as 24h"),
        ("until" = Option<String>, Query, description = "RFC 3339 time or an age such as 1h"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 100)"),
        ("cursor" = Option<i64>, Query, description = "next_cursor of the previous page"),
    ),
    responses((status = 200, body = AuditPage), (status = 400, body = Problem), (status = 401, body = Problem)))]
async fn query_audit(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<AuditPage>> {
    let q: AuditQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("Invalid query: {e}")))?;
    let time = |t: Option<String>| {
        t.as_deref()
            .map(parse_time)
            .transpose()
            .map_err(ApiError::bad_request)
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let filter = AuditFilter {
        kind: q.kind,
        consumer: q.consumer,
        since: time(q.since)?,
        until: time(q.until)?,
        before_seq: q.cursor,
        limit,
    };
    let events = store(&shared)?.audit_query(&filter).await?;
    let next_cursor = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditPage { events, next_cursor }))
}

struct AdminTokenScheme;

impl Modify for AdminTokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "portcullis admin API", description = "Consumers, API keys and the audit log."),
    modifiers(&AdminTokenScheme),
    components(schemas(Problem)),
    tags((name = "consumers"), (name = "keys"), (name = "audit"))
)]
struct ApiDoc;

/// The API routes (behind the token) and the OpenAPI document they make.
pub fn routes(shared: Arc<Shared>) -> (axum::Router<Arc<Shared>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_consumers, create_consumer))
        .routes(routes!(delete_consumer))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
        .routes(routes!(rotate_key))
        .routes(routes!(revoke_sessions))
        .routes(routes!(query_audit))
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let router = router.layer(axum::middleware::from_fn_with_state(shared, require_admin_token));
    (router, doc)
}
