//! WebSocket routes through the real server, a real tokio-tungstenite echo
//! upstream (tests/common/ws.rs) and real clients: echo, subprotocols and
//! close codes both ways; the origin check; JWT at the handshake (header,
//! `bearer` subprotocol, query parameter) and its expiry; session cookies
//! and their revocation; connection caps, message rates (shared by two
//! instances through Redis), sizes, idle and duration limits; message
//! validation; metrics and audit events; and Python's `websockets` as a
//! second, independent client.

mod common;

use std::time::Duration;

use common::jwt::{claims, now, sign_hmac};
use common::ws::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const ISSUER: &str = "https://issuer.test/";
const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";
const ORIGIN: &str = "https://chat.example.com";

/// A gateway with a `chat` upstream and the given routes, JWT issuer and
/// local-user sessions.
fn ws_config(upstream: &WsUpstream, routes: &str) -> String {
    let dir = scratch_dir();
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let text = config_with_store(
        "development",
        &upstream.url(),
        None,
        &format!(
            r#"
[sessions]
local_users = true

[[auth.jwt]]
name = "chat"
issuer = "{ISSUER}"
audiences = ["chat"]
algorithms = ["HS256"]
secret = {{ file = "{secret}" }}
leeway = "0s"

{routes}
"#,
            secret = secret.display()
        ),
    );
    with_session_key(&text, "k7PzQ2vL9xW4mN8bR3tY6uI1oA5sD0fGhJ2kL4zX")
}

/// A `[[routes]]` entry to the `app` upstream with this `websocket` table
/// (`ORIGIN` in it stands for the chat's origin).
fn ws_route(id: &str, path: &str, auth: &str, websocket: &str) -> String {
    let table = websocket.replace("ORIGIN", &format!("\"{ORIGIN}\""));
    format!(
        "[[routes]]\nid = \"{id}\"\npath = \"{path}\"\nupstream = \"app\"\nauth = [\"{auth}\"]\nwebsocket = {{ {table} }}\n\n"
    )
}

fn token(sub: &str, ttl: u64) -> String {
    let mut c = claims(ISSUER, "chat", sub);
    c["exp"] = (now() + ttl).into();
    sign_hmac(SECRET, &c)
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_subprotocols_and_close_codes_pass_through() {
    let upstream = WsUpstream::start().await;
    let gw = start_gateway(&ws_config(
        &upstream,
        &[ws_route("chat", "/ws", "none", r#"origins = [ORIGIN]"#)].concat(),
    ))
    .await;
    let (mut ws, response) = connect(
        gw.public_addr(),
        "/ws/room?x=1",
        &[
            ("origin", ORIGIN),
            ("sec-websocket-protocol", "chat.v1, chat.v0"),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1");
    assert!(response.headers().get("sec-websocket-extensions").is_none());
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hello");
    ws.send(Message::binary(vec![0u8, 159, 146, 150])).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[0u8, 159, 146, 150]),
        other => panic!("binary echo: {other:?}"),
    }
    // Many messages both ways, in order.
    ws.send(Message::text("flood:200")).await.unwrap();
    for i in 0..200 {
        assert_eq!(next_text(&mut ws).await, format!("m{i}"));
    }
    let seen = upstream.handshakes().pop().unwrap();
    assert_eq!(seen.target, "/ws/room?x=1");
    assert_eq!(seen.headers["sec-websocket-protocol"], "chat.v1, chat.v0");
    assert!(
        seen.headers.get("sec-websocket-extensions").is_none(),
        "no compression upstream"
    );
    assert!(seen.headers.get("x-request-id").is_some());
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");

    // The upstream's close code reaches the client.
    ws.send(Message::text("close:4001")).await.unwrap();
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some((4001, "bye".into()))
    );

    // The client's close code reaches the upstream.
    let (mut ws, _) = connect(gw.public_addr(), "/ws", &[("origin", ORIGIN)])
        .await
        .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "ping");
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4002),
        reason: "done".into(),
    }))
    .await
    .unwrap();
    wait_until(
        "the upstream gets the client's close",
        Duration::from_secs(5),
        || upstream.closes().contains(&Some((4002, "done".into()))),
    )
    .await;

    let metrics = metrics_text(gw.admin_addr()).await;
    assert_eq!(
        metric(
            &metrics,
            "portcullis_websocket_messages_total{direction=\"upstream\",route=\"chat\"}"
        ),
        5.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "portcullis_websocket_messages_total{direction=\"client\",route=\"chat\"}"
        ) >= 203.0
    );
    wait_until_async("both closes are counted", Duration::from_secs(5), async || {
        let m = metrics_text(gw.admin_addr()).await;
        metric(
            &m,
            "portcullis_websocket_closes_total{reason=\"client\",route=\"chat\"}",
        ) == 1.0
            && metric(
                &m,
                "portcullis_websocket_closes_total{reason=\"upstream\",route=\"chat\"}",
            ) == 1.0
            && metric(&m, "portcullis_websocket_connections{route=\"chat\"}") == 0.0
            // The listener's slots come back when the sockets close.
            && metric(&m, "portcullis_connections_open") == 0.0
    })
    .await;
    let opened = audit_events(&gw, Some("ws.opened")).await;
    assert_eq!(opened.len(), 2);
    assert!(opened.iter().any(|e| e.event.details["subprotocol"] == "chat.v1"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn handshakes_from_other_origins_are_refused_before_the_upgrade() {
    let upstream = WsUpstream::start().await;
    let gw = start_gateway(&ws_config(
        &upstream,
        &[
            ws_route(
                "listed",
                "/ws",
                "none",
                r#"origins = [ORIGIN, "https://*.partner.example"]"#,
            ),
            ws_route("same-origin", "/own", "none", r#""#),
            ws_route(
                "tools",
                "/tools",
                "none",
                r#"origins = [ORIGIN], allow_missing_origin = true"#,
            ),
        ]
        .concat(),
    ))
    .await;
    let addr = gw.public_addr();
    for origin in [
        "https://evil.example",
        "https://chat.example.com.evil.net",
        "http://chat.example.com",
        "null",
        "https://partner.example",
    ] {
        assert_eq!(
            refused_status(connect(addr, "/ws", &[("origin", origin)]).await),
            403,
            "{origin}"
        );
    }
    assert_eq!(refused_status(connect(addr, "/ws", &[]).await), 403, "no Origin");
    assert!(
        connect(addr, "/ws", &[("origin", "https://app.partner.example")])
            .await
            .is_ok()
    );
    // Without a list, only the request's own host.
    let own = format!("http://{addr}");
    assert!(connect(addr, "/own", &[("origin", &own)]).await.is_ok());
    assert_eq!(
        refused_status(connect(addr, "/own", &[("origin", ORIGIN)]).await),
        403
    );
    // Non-browser clients where the route allows them.
    assert!(connect(addr, "/tools", &[]).await.is_ok());
    assert_eq!(
        refused_status(connect(addr, "/tools", &[("origin", "https://evil.example")]).await),
        403
    );
    // A plain request to a WebSocket route: 426, as a problem document.
    let response = client().get(format!("http://{addr}/ws")).send().await.unwrap();
    assert_eq!(response.headers()["sec-websocket-version"], "13");
    let doc = assert_problem(response, 426).await;
    assert!(doc["request_id"].is_string());
    let rejected = audit_events(&gw, Some("ws.rejected")).await;
    assert_eq!(rejected.len(), 8, "{rejected:?}");
    assert!(
        rejected
            .iter()
            .any(|e| e.event.details["origin"] == "https://evil.example")
    );
    assert!(
        rejected
            .iter()
            .any(|e| e.event.details["reason"] == "origin missing")
    );
    // Only accepted handshakes reached the upstream.
    assert_eq!(upstream.handshakes().len(), 3);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jwts_are_checked_at_the_handshake_and_expiry_closes_the_connection() {
    let upstream = WsUpstream::start().await;
    let gw = start_gateway(&ws_config(
        &upstream,
        &[
            ws_route(
                "chat",
                "/ws",
                "jwt",
                r#"origins = [ORIGIN], allow_missing_origin = true"#,
            ),
            ws_route(
                "legacy",
                "/legacy",
                "jwt",
                r#"origins = [ORIGIN], query_token = "token""#,
            ),
        ]
        .concat(),
    ))
    .await;
    let addr = gw.public_addr();
    let good = token("ada", 300);
    assert_eq!(
        refused_status(connect(addr, "/ws", &[("origin", ORIGIN)]).await),
        401
    );
    let forged = sign_hmac(
        b"another-secret-of-at-least-32-bytes!",
        &claims(ISSUER, "chat", "eve"),
    );
    let bad = format!("Bearer {forged}");
    assert_eq!(
        refused_status(connect(addr, "/ws", &[("origin", ORIGIN), ("authorization", &bad)]).await),
        401
    );
    assert_eq!(
        refused_status(
            connect(
                addr,
                "/ws",
                &[
                    ("origin", ORIGIN),
                    ("sec-websocket-protocol", &format!("bearer, {forged}"))
                ]
            )
            .await
        ),
        401
    );
    // Authorization, from a client that is not a browser.
    let auth = format!("Bearer {good}");
    let (mut ws, _) = connect(addr, "/ws", &[("authorization", &auth)]).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hi");
    let seen = upstream.handshakes().pop().unwrap();
    assert_eq!(seen.headers["x-portcullis-user"], "ada");
    assert!(
        seen.headers.get("authorization").is_none(),
        "the token stays at the gateway"
    );

    // A browser's token in the subprotocol list: taken out, `bearer` answered.
    let offer = format!("bearer, {good}, chat.v1");
    let (mut ws, response) = connect(
        addr,
        "/ws",
        &[("origin", ORIGIN), ("sec-websocket-protocol", &offer)],
    )
    .await
    .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1");
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hi");
    let seen = upstream.handshakes().pop().unwrap();
    assert_eq!(seen.headers["sec-websocket-protocol"], "chat.v1");
    assert!(seen.headers.get("authorization").is_none());
    assert!(!format!("{:?}", seen.headers).contains(&good));
    let only = format!("bearer, {good}");
    let (_ws, response) = connect(
        addr,
        "/ws",
        &[("origin", ORIGIN), ("sec-websocket-protocol", &only)],
    )
    .await
    .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "bearer");
    assert!(
        upstream
            .handshakes()
            .pop()
            .unwrap()
            .headers
            .get("sec-websocket-protocol")
            .is_none()
    );

    // `?token=` only where the route allows it; the upstream never sees it.
    let query = format!("/ws?token={good}");
    assert_eq!(
        refused_status(connect(addr, &query, &[("origin", ORIGIN)]).await),
        401
    );
    let query = format!("/legacy/feed?room=7&token={good}");
    let (mut ws, _) = connect(addr, &query, &[("origin", ORIGIN)]).await.unwrap();
    ws.send(Message::text("q")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "q");
    assert_eq!(upstream.handshakes().pop().unwrap().target, "/legacy/feed?room=7");

    // A token that expires during the connection closes it with 1008.
    let short = format!("Bearer {}", token("bo", 2));
    let (mut ws, _) = connect(addr, "/ws", &[("authorization", &short)]).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "before");
    // Within 6 s of a 2 s token: the 30 s recheck would come far later.
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(6)).await,
        Some((1008, "credential expired".into()))
    );
    wait_until("the upstream is told", Duration::from_secs(5), || {
        upstream
            .closes()
            .iter()
            .any(|c| c.as_ref().is_some_and(|(code, _)| *code == 1001))
    })
    .await;
    let opened = audit_events(&gw, Some("ws.opened")).await;
    assert!(opened.iter().any(|e| e.event.consumer.as_deref() == Some("ada")));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn session_cookies_need_the_origin_and_revocation_closes_the_connection() {
    let upstream = WsUpstream::start().await;
    let gw = start_gateway(&ws_config(
        &upstream,
        &[ws_route(
            "chat",
            "/ws",
            "session",
            r#"origins = [ORIGIN], recheck_interval = "300ms""#,
        )]
        .concat(),
    ))
    .await;
    let hash = portcullis::users::hash_password("correct horse battery").unwrap();
    store_of(&gw).create_user("gail", &hash, &[]).await.unwrap();
    let browser = common::browser::Browser::new(gw.public_addr());
    let login = common::browser::log_in(&browser, "/ws", "gail", "correct horse battery").await;
    assert_eq!(login.status(), 303);
    let cookie = format!(
        "__Host-portcullis={}",
        browser.cookie("__Host-portcullis").expect("a session")
    );
    let addr = gw.public_addr();
    assert_eq!(
        refused_status(
            connect(
                addr,
                "/ws",
                &[("cookie", &cookie), ("origin", "https://evil.example")]
            )
            .await
        ),
        403
    );
    assert_eq!(
        refused_status(connect(addr, "/ws", &[("cookie", &cookie)]).await),
        403
    );
    let (mut ws, _) = connect(addr, "/ws", &[("cookie", &cookie), ("origin", ORIGIN)])
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hi");
    let seen = upstream.handshakes().pop().unwrap();
    assert_eq!(seen.headers["x-portcullis-user"], "gail");
    assert!(
        !seen
            .headers
            .get("cookie")
            .is_some_and(|c| c.to_str().unwrap().contains("__Host-portcullis")),
        "the session cookie stays at the gateway"
    );
    let revoked = client()
        .post(format!(
            "http://{}/admin/api/v1/users/gail/sessions/revoke",
            gw.admin_addr()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some((1008, "credential no longer valid".into()))
    );
    wait_until_async("the close is audited", Duration::from_secs(5), async || {
        !audit_events(&gw, Some("ws.closed")).await.is_empty()
    })
    .await;
    let closed = audit_events(&gw, Some("ws.closed")).await;
    assert_eq!(closed[0].event.details["reason"], "credential_revoked");
    assert_eq!(closed[0].event.consumer.as_deref(), Some("gail"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_message_size_idle_and_duration_limits_close_with_their_codes() {
    let upstream = WsUpstream::start().await;
    let gw = start_gateway(&ws_config(
        &upstream,
        &[
            ws_route(
                "capped",
                "/capped",
                "none",
                r#"origins = [ORIGIN], max_connections_per_ip = 2, messages = "3/minute per ip", max_message = "1KiB""#,
            ),
            ws_route(
                "dropping",
                "/dropping",
                "none",
                r#"origins = [ORIGIN], messages = ["2/minute per ip"], on_violation = "drop""#,
            ),
            ws_route(
                "idle",
                "/idle",
                "none",
                r#"origins = [ORIGIN], idle_timeout = "1s", ping_interval = "300ms""#,
            ),
            ws_route("short", "/short", "none", r#"origins = [ORIGIN], max_duration = "1s""#),
            ws_route(
                "shaped",
                "/shaped",
                "none",
                r#"origins = [ORIGIN], validate = { schema = { type = "object", required = ["text"], properties = { text = { type = "string", maxLength = 20 } } }, rules = [{ name = "no-shell", field = "/text", deny = ['\$\('] }] }"#,
            ),
        ]
        .concat(),
    ))
    .await;
    let addr = gw.public_addr();
    let origin = [("origin", ORIGIN)];
    // Two connections per address; the third is refused with 429.
    let (mut a, _) = connect(addr, "/capped", &origin).await.unwrap();
    let (b, _) = connect(addr, "/capped", &origin).await.unwrap();
    assert_eq!(refused_status(connect(addr, "/capped", &origin).await), 429);
    drop(b);
    wait_until_async(
        "a closed connection frees its place",
        Duration::from_secs(5),
        async || connect(addr, "/capped", &origin).await.is_ok(),
    )
    .await;
    let rejected = audit_events(&gw, Some("ws.rejected")).await;
    assert!(
        rejected
            .iter()
            .any(|e| e.event.details["reason"] == "Too many WebSocket connections from this address.")
    );
    // A message larger than max_message: 1009.
    a.send(Message::text("x".repeat(2048))).await.unwrap();
    assert_eq!(
        close_code(&mut a, Duration::from_secs(5)).await.map(|c| c.0),
        Some(1009)
    );
    // Three messages a minute per address (the message too big above was
    // never counted); the fourth closes with 1008.
    let (mut c, _) = connect(addr, "/capped", &origin).await.unwrap();
    for i in 0..3 {
        c.send(Message::text(format!("n{i}"))).await.unwrap();
        assert_eq!(next_text(&mut c).await, format!("n{i}"));
    }
    let before = upstream.messages();
    c.send(Message::text("n3")).await.unwrap();
    assert_eq!(
        close_code(&mut c, Duration::from_secs(5)).await,
        Some((1008, "message rate limit exceeded".into()))
    );
    assert_eq!(
        upstream.messages(),
        before,
        "the message over the limit never reached the upstream"
    );

    // on_violation = "drop": a warning frame, and the connection stays.
    let (mut d, _) = connect(addr, "/dropping", &origin).await.unwrap();
    for i in 0..2 {
        d.send(Message::text(format!("d{i}"))).await.unwrap();
        assert_eq!(next_text(&mut d).await, format!("d{i}"));
    }
    d.send(Message::text("d2")).await.unwrap();
    let warning: serde_json::Value = serde_json::from_str(&next_text(&mut d).await).unwrap();
    assert_eq!(warning["portcullis"], "message_dropped");
    assert_eq!(warning["reason"], "rate_limited");

    // Idle: pings arrive, but only messages count; 1001 after a second.
    let (mut idle, _) = connect(addr, "/idle", &origin).await.unwrap();
    let started = std::time::Instant::now();
    let mut pings = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), idle.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    assert!(pings >= 2, "pings: {pings}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // max_duration: 1008 with its reason, however busy the connection.
    let (mut short, _) = connect(addr, "/short", &origin).await.unwrap();
    let reason = loop {
        if short.send(Message::text("busy")).await.is_err() {
            break None;
        }
        match tokio::time::timeout(Duration::from_secs(5), short.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(_))) => tokio::time::sleep(Duration::from_millis(50)).await,
            Some(Ok(Message::Close(frame))) => {
                break frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        reason,
        Some((1008, "the connection reached its maximum duration".into()))
    );

    // Validation: JSON of the schema's shape passes; anything else closes.
    let (mut v, _) = connect(addr, "/shaped", &origin).await.unwrap();
    v.send(Message::text(r#"{"text":"hello"}"#)).await.unwrap();
    assert_eq!(next_text(&mut v).await, r#"{"text":"hello"}"#);
    v.send(Message::text(r#"{"text":"$(rm -rf /)"}"#)).await.unwrap();
    assert_eq!(
        close_code(&mut v, Duration::from_secs(5)).await,
        Some((1008, "message refused by validation".into()))
    );
    let (mut v, _) = connect(addr, "/shaped", &origin).await.unwrap();
    v.send(Message::text("not json")).await.unwrap();
    assert_eq!(
        close_code(&mut v, Duration::from_secs(5)).await.map(|c| c.0),
        Some(1008)
    );

    // Counted when each connection has finished closing.
    wait_until_async(
        "every close is counted by its reason",
        Duration::from_secs(8),
        async || {
            let metrics = metrics_text(gw.admin_addr()).await;
            [
                ("capped", "message_too_big"),
                ("capped", "rate_limit"),
                ("idle", "idle"),
                ("short", "max_duration"),
                ("shaped", "invalid_message"),
            ]
            .iter()
            .all(|(route, reason)| {
                let series =
                    format!("portcullis_websocket_closes_total{{reason=\"{reason}\",route=\"{route}\"}}");
                metric(&metrics, &series) >= 1.0
            })
        },
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_sharing_redis_enforce_one_message_budget() {
    let Some(redis) = redis_url("two_instances_sharing_redis_enforce_one_message_budget") else {
        return;
    };
    let upstream = WsUpstream::start().await;
    let routes = format!(
        r#"
[redis]
url = "{redis}"
prefix = "ws{prefix}"

{route}"#,
        prefix = portcullis::keys::random_alnum(8),
        route = ws_route(
            "chat",
            "/ws",
            "jwt",
            r#"origins = [ORIGIN], messages = ["4/minute per user", "100/minute per ip"]"#
        )
    );
    let text = ws_config(&upstream, &routes);
    let a = start_gateway(&text).await;
    let b = start_gateway(&text).await;
    let auth = format!("Bearer {}", token("ada", 300));
    let headers = [("origin", ORIGIN), ("authorization", auth.as_str())];
    let (mut on_a, _) = connect(a.public_addr(), "/ws", &headers).await.unwrap();
    let (mut on_b, _) = connect(b.public_addr(), "/ws", &headers).await.unwrap();
    for i in 0..2 {
        on_a.send(Message::text(format!("a{i}"))).await.unwrap();
        assert_eq!(next_text(&mut on_a).await, format!("a{i}"));
        on_b.send(Message::text(format!("b{i}"))).await.unwrap();
        assert_eq!(next_text(&mut on_b).await, format!("b{i}"));
    }
    // Four messages between the two instances: the user's fifth, on
    // either, is over the shared budget.
    on_b.send(Message::text("b2")).await.unwrap();
    assert_eq!(
        close_code(&mut on_b, Duration::from_secs(5)).await.map(|c| c.0),
        Some(1008)
    );
    on_a.send(Message::text("a2")).await.unwrap();
    assert_eq!(
        close_code(&mut on_a, Duration::from_secs(5)).await.map(|c| c.0),
        Some(1008)
    );
    // Another user has a budget of their own.
    let other = format!("Bearer {}", token("bo", 300));
    let (mut bo, _) = connect(
        a.public_addr(),
        "/ws",
        &[("origin", ORIGIN), ("authorization", &other)],
    )
    .await
    .unwrap();
    bo.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_text(&mut bo).await, "hi");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_refusal_is_a_problem_document_and_shutdown_closes_with_1001() {
    let upstream = WsUpstream::start().await;
    let gw = start_gateway(&ws_config(
        &upstream,
        &[ws_route("chat", "/ws", "none", r#"origins = [ORIGIN]"#)].concat(),
    ))
    .await;
    let addr = gw.public_addr();
    assert_eq!(
        refused_status(connect(addr, "/ws/refuse", &[("origin", ORIGIN)]).await),
        403
    );
    let (mut ws, _) = connect(addr, "/ws", &[("origin", ORIGIN)]).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hi");
    let stopping = tokio::spawn(gw.shutdown());
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some((1001, "gateway shutting down".into()))
    );
    stopping.await.unwrap();
}

/// Python's `websockets` package: an implementation of its own, through
/// the real binary, with the browser-style bearer subprotocol.
#[tokio::test(flavor = "multi_thread")]
async fn pythons_websockets_client_talks_through_the_binary() {
    let python = std::env::var("PORTCULLIS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_websockets = std::process::Command::new(&python)
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_websockets {
        skip_or_fail(
            "pythons_websockets_client_talks_through_the_binary",
            "the websockets package is not installed (pip install websockets)",
        );
        return;
    }
    let upstream = WsUpstream::start().await;
    let dir = scratch_dir();
    let file = dir.join("portcullis.toml");
    let text = ws_config(
        &upstream,
        &[ws_route(
            "chat",
            "/ws",
            "jwt",
            r#"origins = [ORIGIN], messages = "50/minute per user""#,
        )]
        .concat(),
    );
    let text = edit(&text, |doc| set(doc, "log", "access_log", true));
    std::fs::write(&file, &text).unwrap();
    let gw = Binary::serve(&file, &[]);
    let addr = gw.public;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/websocket/client.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(format!("ws://{addr}/ws"))
        .arg(ORIGIN)
        .arg(token("ada", 300))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["subprotocol"], "bearer");
    assert_eq!(result["echo"], "hello from python");
    assert_eq!(result["close_code"], 4003);
    assert_eq!(result["refused_status"], 403);
    assert!(
        !upstream
            .handshakes()
            .iter()
            .any(|h| format!("{:?}", h.headers).contains("eyJ"))
    );
    assert!(!gw.output().contains("eyJ"), "no token in the gateway's logs");
}

/// Review findings, each shown through the server: a pong flood cannot
/// starve the deadlines; a forward-auth question about a WebSocket route
/// still meets the origin check; a token moved out of the subprotocol
/// never reaches the upstream when another method admitted the handshake;
/// a rotated JWT secret closes connections opened with the old one at the
/// next recheck; `null` and report mode are refused in the config.
#[tokio::test(flavor = "multi_thread")]
async fn deadlines_forward_auth_moved_tokens_and_reloads_hold() {
    let upstream = WsUpstream::start().await;
    let text = ws_config(
        &upstream,
        &[
            ws_route(
                "short",
                "/short",
                "none",
                r#"origins = [ORIGIN], max_duration = "1s""#,
            ),
            ws_route(
                "both",
                "/both",
                "session\", \"jwt",
                r#"origins = [ORIGIN], recheck_interval = "300ms""#,
            ),
        ]
        .concat(),
    );
    let gw = start_gateway(&text).await;
    let addr = gw.public_addr();

    // A client that never stops sending pongs still meets max_duration.
    let (ws, _) = connect(addr, "/short", &[("origin", ORIGIN)]).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let flood = tokio::spawn(async move {
        while sink
            .send(Message::Pong(bytes::Bytes::from_static(b"x")))
            .await
            .is_ok()
        {}
    });
    // Within 5 s: a starved timer would never have closed it.
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    flood.abort();
    assert_eq!(code, Some(1008));

    // Forward-auth: the proxy asking does the upgrade, the origin is still checked.
    let ask = |origin: &'static str| {
        client()
            .get(format!("http://{addr}/.auth/verify"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/short")
            .header("origin", origin)
            .send()
    };
    assert_eq!(ask("https://evil.example").await.unwrap().status(), 403);
    assert_eq!(ask(ORIGIN).await.unwrap().status(), 200);

    // A session admits the handshake; the token in the subprotocol still
    // never reaches the upstream.
    let hash = portcullis::users::hash_password("correct horse battery").unwrap();
    store_of(&gw).create_user("gail", &hash, &[]).await.unwrap();
    let browser = common::browser::Browser::new(addr);
    let login = common::browser::log_in(&browser, "/both", "gail", "correct horse battery").await;
    assert_eq!(login.status(), 303);
    let cookie = format!(
        "__Host-portcullis={}",
        browser.cookie("__Host-portcullis").unwrap()
    );
    let jwt = token("ada", 300);
    let offer = format!("bearer, {jwt}");
    let (_session_ws, _) = connect(
        addr,
        "/both",
        &[
            ("origin", ORIGIN),
            ("cookie", &cookie),
            ("sec-websocket-protocol", &offer),
        ],
    )
    .await
    .unwrap();
    let seen = upstream.handshakes().pop().unwrap();
    assert_eq!(seen.headers["x-portcullis-user"], "gail", "the session decided");
    assert!(seen.headers.get("authorization").is_none());
    assert!(!format!("{:?}", seen.headers).contains(&jwt));

    // A reload that rotates the JWT secret ends the old token's connections.
    let (mut jwt_ws, _) = connect(
        addr,
        "/both",
        &[("origin", ORIGIN), ("sec-websocket-protocol", &offer)],
    )
    .await
    .unwrap();
    jwt_ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next_text(&mut jwt_ws).await, "before");
    let secret_file = string_at(&text, "auth.jwt.0.secret.file");
    std::fs::write(&secret_file, b"a-rotated-secret-of-at-least-32-bytes!").unwrap();
    gw.reload().unwrap();
    assert_eq!(
        close_code(&mut jwt_ws, Duration::from_secs(5)).await,
        Some((1008, "credential no longer valid".into()))
    );
    gw.shutdown().await;

    // `null`, and report mode, are refused on WebSocket routes.
    for (route, problem) in [
        (
            ws_route("n", "/n", "none", r#"origins = ["null"]"#),
            "`null` is any sandboxed page's origin",
        ),
        (
            ws_route("r", "/r", "none", r#"origins = [ORIGIN]"#)
                .replace("auth = [\"none\"]", "auth = [\"none\"]\nmode = \"report\""),
            "WebSocket routes have no report mode",
        ),
    ] {
        let error = compile_offline(&ws_config(&upstream, &route))
            .err()
            .expect("refused");
        assert!(error.contains(problem), "{error}");
    }
}

/// An API key at the handshake (a service, not a browser): admitted with
/// the consumer's identity headers, and closed with 1008 once the key is
/// revoked, at the next recheck.
#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_admits_a_handshake_until_it_is_revoked() {
    let upstream = WsUpstream::start().await;
    let gw = start_gateway(&ws_config(
        &upstream,
        &ws_route(
            "feed",
            "/feed",
            "api_key",
            r#"origins = [ORIGIN], allow_missing_origin = true, recheck_interval = "300ms""#,
        ),
    ))
    .await;
    let addr = gw.public_addr();
    let key = make_key(&gw, "billing", &[], None).await;
    assert_eq!(
        refused_status(connect(addr, "/feed", &[("x-api-key", "pk_wrong")]).await),
        401
    );
    let (mut ws, _) = connect(addr, "/feed", &[("x-api-key", &key.key)]).await.unwrap();
    ws.send(Message::text("tick")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "tick");
    let seen = upstream.handshakes().pop().unwrap();
    assert_eq!(seen.headers["x-portcullis-consumer"], "billing");
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "the key stays at the gateway"
    );
    portcullis::keys::manage::revoke_key(
        &store_of(&gw),
        &gw.shared().runtime.audit,
        &key.id,
        portcullis::keys::manage::Actor::CLI,
    )
    .await
    .unwrap();
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(6)).await,
        Some((1008, "credential no longer valid".into()))
    );
    gw.shutdown().await;
}
