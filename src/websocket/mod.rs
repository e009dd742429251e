//! The proxy step of a WebSocket route, after every request phase passed:
//!
//! 1. the connection caps ([`registry`]): 429 and `ws.rejected` when full;
//! 2. the upstream's handshake, on a connection of its own (never pooled),
//!    with the request as the upstream_headers stage left it (identity and
//!    forwarding headers set, the client's credentials removed) and the
//!    subprotocols the client offered, bearer token taken out; a refusal
//!    becomes a problem document with the upstream's 4xx status (else 502);
//! 3. the client's `101 Switching Protocols`, with the subprotocol the
//!    upstream chose (or `bearer` when the client offered it and the
//!    upstream chose none: a browser fails a handshake answered with none);
//! 4. a task of its own that relays messages ([`relay`]) once hyper hands
//!    over the client's socket.
//!
//! The gateway terminates WebSocket on both sides (tungstenite parses every
//! frame) rather than copying bytes as nginx does: message limits,
//! validation and closing with a code all need whole messages. No
//! extension is negotiated (`permessage-deflate` would let a small frame
//! inflate past every limit, and costs memory per connection), so
//! `Sec-WebSocket-Extensions` never reaches the upstream.

pub mod registry;
pub mod relay;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING, UPGRADE,
};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::audit::{Event, Severity};
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::pipeline::{Pipeline, RequestCx, Route};
use crate::stage::websocket::{Handshake, WebSocketPolicy, rejected};
pub use registry::WebSockets;

/// The services a WebSocket route's connections use, handed to its policy.
#[derive(Clone)]
pub struct Services {
    pub registry: Arc<WebSockets>,
    pub audit: crate::audit::Audit,
    pub limiters: crate::ratelimit::Limiters,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// tungstenite's settings for both sides of a connection. The read buffer
/// is allocated up front on each side of every connection, so it is small:
/// 2 KiB rather than 4 KiB took an idle connection from about 17 to 13 KiB
/// of resident memory (bench/websocket.py), at the price of more reads for
/// a large message. The write buffer is flushed after every message, which
/// is also what bounds it.
fn tungstenite_config(policy: &WebSocketPolicy) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 2048;
    config.write_buffer_size = 0;
    config.max_write_buffer_size = policy.max_message + 64 * 1024;
    config.max_message_size = Some(policy.max_message);
    config.max_frame_size = Some(policy.max_message);
    config
}

/// The request the upstream's handshake is made of.
fn upstream_request(
    req: Request<GatewayBody>,
    hs: &Handshake,
    key: &str,
) -> Result<Request<Empty<Bytes>>, GatewayError> {
    let (mut parts, _) = req.into_parts();
    let headers = &mut parts.headers;
    for name in [
        SEC_WEBSOCKET_KEY,
        SEC_WEBSOCKET_EXTENSIONS,
        SEC_WEBSOCKET_PROTOCOL,
        SEC_WEBSOCKET_ACCEPT,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if hs.moved_token {
        // The browser's token is the gateway's to check, whichever method
        // admitted the handshake.
        headers.remove(http::header::AUTHORIZATION);
    }
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    headers.insert(
        SEC_WEBSOCKET_KEY,
        HeaderValue::try_from(key).map_err(|_| GatewayError::Internal)?,
    );
    if !hs.protocols.is_empty() {
        let offered = HeaderValue::try_from(hs.protocols.join(", "))
            .map_err(|_| GatewayError::bad_request("Sec-WebSocket-Protocol is not valid."))?;
        headers.insert(SEC_WEBSOCKET_PROTOCOL, offered);
    }
    parts.extensions = http::Extensions::new();
    Ok(Request::from_parts(parts, Empty::new()))
}

/// Sends the handshake upstream; returns the subprotocol it chose and the
/// upgraded connection.
async fn upstream_handshake(
    route: &Route,
    request: Request<Empty<Bytes>>,
    stream: crate::upstream::connect::UpstreamStream,
    key: &str,
    offered: &[String],
) -> Result<(Option<HeaderValue>, hyper::upgrade::Upgraded), GatewayError> {
    let upstream = &route.upstream;
    let protocol_error = || {
        upstream.record_protocol_error();
        GatewayError::UpstreamProtocol {
            upstream: upstream.name.clone(),
        }
    };
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| protocol_error())?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream WebSocket handshake connection failed");
            }
        });
        let response = sender.send_request(request).await.map_err(|_| protocol_error())?;
        Ok::<_, GatewayError>(response)
    };
    let deadline = upstream.timeout;
    let mut response =
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| GatewayError::UpstreamTimeout {
                upstream: upstream.name.clone(),
                timeout_ms: deadline.as_millis(),
            })??;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        tracing::info!(upstream = %upstream.name, status = status.as_u16(), "the upstream refused a WebSocket handshake");
        return Err(if status.is_client_error() {
            GatewayError::UpstreamRefused {
                upstream: upstream.name.clone(),
                status,
            }
        } else {
            protocol_error()
        });
    }
    let accept = response
        .headers()
        .get(SEC_WEBSOCKET_ACCEPT)
        .map(HeaderValue::as_bytes);
    if accept != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
        return Err(protocol_error());
    }
    let chosen = response.headers().get(SEC_WEBSOCKET_PROTOCOL).cloned();
    if let Some(chosen) = &chosen
        && !offered.iter().any(|p| p.as_bytes() == chosen.as_bytes())
    {
        return Err(protocol_error());
    }
    let upgraded = hyper::upgrade::on(&mut response)
        .await
        .map_err(|_| protocol_error())?;
    Ok((chosen, upgraded))
}

/// When the credential that admitted the handshake expires: a JWT's `exp`,
/// read from the token the authn stage verified (the one in
/// `Authorization`; a token from a cookie or another header is caught by
/// the next recheck instead).
fn token_expiry(cx: &RequestCx, hs: &Handshake) -> Option<u64> {
    if cx.principal.as_ref()?.method() != crate::principal::Method::Jwt {
        return None;
    }
    let (_, headers) = hs.recheck.as_ref()?;
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    crate::stage::websocket::handshake::jwt_expiry(token.trim())
}

/// The client's `101 Switching Protocols`.
fn switching(hs: &Handshake, chosen: Option<HeaderValue>) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::Empty);
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    let accept = derive_accept_key(hs.key.as_bytes());
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::try_from(accept).expect("base64 is header text"),
    );
    match chosen {
        Some(protocol) => {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        None => {
            if let Some(bearer) = hs.bearer.as_deref().and_then(|b| HeaderValue::try_from(b).ok()) {
                headers.insert(SEC_WEBSOCKET_PROTOCOL, bearer);
            }
        }
    }
    response
}

/// Opens the upstream's WebSocket and answers the client's handshake; the
/// messages are relayed by a task of their own.
pub async fn open(
    pipeline: &Arc<Pipeline>,
    cx: &mut RequestCx,
    route: &Arc<Route>,
    mut req: Request<GatewayBody>,
    hs: Box<Handshake>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let policy = hs.policy.clone();
    let services = &policy.services;
    let user = cx.principal.as_ref().map(|p| p.name()).filter(|n| !n.is_empty());
    let place = services
        .registry
        .open(registry::Caps {
            route: &route.id,
            ip: match crate::ratelimit::Subject::ip(cx.client_ip, policy.ipv6_prefix) {
                crate::ratelimit::Subject::Ip(ip, _) => ip,
                _ => cx.client_ip,
            },
            per_ip: policy.max_connections_per_ip,
            user,
            per_user: policy.max_connections_per_user,
        })
        .map_err(|cap| {
            rejected(&services.audit, cx, cap.reason(), hs.origin.as_ref());
            GatewayError::TooManyConnections(cap.reason())
        })?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let stream = route
        .upstream
        .connect_for_upgrade(&mut req, cx.rewritten_path.as_deref())
        .await?;
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let request = upstream_request(req, &hs, &key)?;
    let (chosen, upstream_io) = upstream_handshake(route, request, stream, &key, &hs.protocols).await?;
    let mut event = Event::new("ws.opened", Severity::Info).for_request(cx).detail(
        "subprotocol",
        chosen.as_ref().and_then(|p| p.to_str().ok()).unwrap_or(""),
    );
    if let Some(p) = &cx.principal {
        event = event.consumer(p.name()).detail("method", p.method().as_str());
    }
    services.audit.emit(event);
    let response = switching(&hs, chosen);
    let expiry = token_expiry(cx, &hs);
    let session = relay::Session::new(pipeline.clone(), route.clone(), cx, hs, place, expiry);
    let config = tungstenite_config(&policy);
    cx.connection.mark_upgraded();
    tokio::spawn(async move {
        let Ok(client_io) = on_upgrade.await else {
            session.never_opened();
            return;
        };
        session.run(client_io, upstream_io, config).await;
    });
    Ok(response)
}
