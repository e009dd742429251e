//! API-key authentication through the real server, on SQLite and (when
//! configured) PostgreSQL: every key state, scopes, identity headers,
//! rotation, revocation latency, the cache, batched usage.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ROUTES: &str = r#"
[api_keys]
usage_flush = "1s"

[[routes]]
id = "tasks"
path = "/api/tasks"
upstream = "app"
auth = ["api_key"]
scopes = ["tasks:read"]

[[routes]]
id = "admin-only"
path = "/api/admin"
upstream = "app"
auth = ["api_key"]
scopes = ["tasks:read", "admin"]

[[routes]]
id = "query"
path = "/api/query"
upstream = "app"
auth = ["api_key"]
api_key_query = "api_key"

[[routes]]
id = "public"
path = "/"
upstream = "app"
auth = ["none"]
"#;

async fn gateway(upstream: &TestUpstream, store_url: Option<&str>) -> portcullis::Gateway {
    start_gateway(&config_with_store(
        "production",
        &upstream.url(),
        store_url,
        ROUTES,
    ))
    .await
}

async fn get(gw: &portcullis::Gateway, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = client().get(format!("http://{}{path}", gw.public_addr()));
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    req.send().await.unwrap()
}

async fn unauthorized(resp: reqwest::Response, detail: &str) {
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(
        challenge.starts_with("ApiKey realm=\"portcullis\""),
        "{challenge}"
    );
    let doc = assert_problem(resp, 401).await;
    assert_eq!(doc["detail"], detail, "{doc}");
}

async fn key_states(store_url: Option<&str>) {
    let upstream = TestUpstream::start().await;
    let gw = gateway(&upstream, store_url).await;
    let key = make_key(&gw, "agent-7", &["tasks:read"], None).await;

    // A valid key: through, with identity headers the upstream can trust.
    let resp = get(&gw, "/api/tasks/1", Some(&key.key)).await;
    assert_eq!(resp.status(), 200);
    let got = upstream.last();
    assert_eq!(got.headers["x-portcullis-consumer"], "agent-7");
    assert_eq!(got.headers["x-portcullis-key-id"], key.id.as_str());
    assert_eq!(got.headers["x-portcullis-scopes"], "tasks:read");
    assert!(
        !got.headers.contains_key("x-api-key"),
        "the key is not passed on to the upstream"
    );

    // As a Bearer token too.
    let resp = client()
        .get(format!("http://{}/api/tasks", gw.public_addr()))
        .bearer_auth(&key.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!upstream.last().headers.contains_key("authorization"));

    let before = upstream.count();
    unauthorized(get(&gw, "/api/tasks", None).await, "This route needs an API key.").await;
    unauthorized(
        get(&gw, "/api/tasks", Some("not-a-key")).await,
        "The API key is malformed.",
    )
    .await;
    let unknown = portcullis::keys::generate().key;
    unauthorized(
        get(&gw, "/api/tasks", Some(&unknown)).await,
        "The API key is not valid.",
    )
    .await;
    let wrong_secret = format!("pc_{}_{}", key.id, "A".repeat(44));
    unauthorized(
        get(&gw, "/api/tasks", Some(&wrong_secret)).await,
        "The API key is not valid.",
    )
    .await;
    // Two different keys at once are refused rather than guessed between.
    let resp = client()
        .get(format!("http://{}/api/tasks", gw.public_addr()))
        .header("x-api-key", &key.key)
        .bearer_auth(&unknown)
        .send()
        .await
        .unwrap();
    unauthorized(resp, "More than one API key was sent.").await;
    // A key in the query string only counts where the route allows it.
    unauthorized(
        get(&gw, &format!("/api/tasks?api_key={}", key.key), None).await,
        "This route needs an API key.",
    )
    .await;
    assert_eq!(
        upstream.count(),
        before,
        "refused requests never reach the upstream"
    );
    assert_eq!(
        get(&gw, &format!("/api/query?api_key={}", key.key), None)
            .await
            .status(),
        200
    );

    // Expired.
    let short = make_key(&gw, "agent-7", &["tasks:read"], Some(Duration::from_millis(300))).await;
    assert_eq!(get(&gw, "/api/tasks", Some(&short.key)).await.status(), 200);
    // A real sleep: the key's 300 ms lifetime must run out.
    tokio::time::sleep(Duration::from_millis(400)).await;
    unauthorized(
        get(&gw, "/api/tasks", Some(&short.key)).await,
        "The API key has expired.",
    )
    .await;

    // Revoked (through the admin API: effective at once on this instance).
    let resp = client()
        .post(format!(
            "http://{}/admin/api/v1/keys/{}/revoke",
            gw.admin_addr(),
            key.id
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    unauthorized(
        get(&gw, "/api/tasks", Some(&key.key)).await,
        "The API key has been revoked.",
    )
    .await;

    // Scopes: a key without `admin` is authenticated but forbidden there.
    let limited = make_key(&gw, "agent-7", &["tasks:read"], None).await;
    let doc = assert_problem(get(&gw, "/api/admin", Some(&limited.key)).await, 403).await;
    assert_eq!(
        doc["detail"],
        "The API key lacks the scope this route requires: admin."
    );
    let full = make_key(&gw, "agent-7", &["tasks:read", "admin"], None).await;
    assert_eq!(get(&gw, "/api/admin", Some(&full.key)).await.status(), 200);
    let none = make_key(&gw, "agent-7", &[], None).await;
    let doc = assert_problem(get(&gw, "/api/admin", Some(&none.key)).await, 403).await;
    assert_eq!(
        doc["detail"],
        "The API key lacks the scopes this route requires: tasks:read, admin."
    );

    // Every decision is in the audit log, never with a key.
    gw.shared().runtime.audit.flush().await;
    let store = store_of(&gw);
    let events = store
        .audit_query(&portcullis::store::audit::AuditFilter {
            kind: Some("auth.failure".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let reasons: Vec<String> = events
        .iter()
        .map(|e| e.event.details["reason"].as_str().unwrap().to_string())
        .collect();
    for reason in [
        "missing",
        "malformed",
        "invalid",
        "ambiguous",
        "expired",
        "revoked",
        "missing_scope",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no auth.failure with reason {reason}: {reasons:?}"
        );
    }
    let all = serde_json::to_string(&events).unwrap();
    for secret in [&key.key, &short.key, &wrong_secret, &unknown] {
        let secret_part = secret.rsplit('_').next().unwrap();
        assert!(!all.contains(secret_part), "a key secret reached the audit log");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_state_on_sqlite() {
    key_states(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_state_on_postgres() {
    let Some(url) = postgres_url("every_key_state_on_postgres").await else {
        return;
    };
    key_states(Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_headers_from_clients_are_always_stripped() {
    let upstream = TestUpstream::start().await;
    let gw = gateway(&upstream, None).await;
    let key = make_key(&gw, "real", &["tasks:read"], None).await;
    for (path, with_key) in [("/public", false), ("/api/tasks", true)] {
        let mut req = client()
            .get(format!("http://{}{path}", gw.public_addr()))
            .header("x-portcullis-consumer", "admin")
            .header("x-portcullis-key-id", "forged")
            .header("x-portcullis-scopes", "admin tasks:write")
            .header("x-portcullis-user", "root");
        if with_key {
            req = req.header("x-api-key", &key.key);
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
        let got = upstream.last();
        assert!(!got.headers.contains_key("x-portcullis-user"));
        if with_key {
            assert_eq!(got.headers["x-portcullis-consumer"], "real");
            assert_eq!(got.headers["x-portcullis-key-id"], key.id.as_str());
            assert_eq!(got.headers["x-portcullis-scopes"], "tasks:read");
        } else {
            for name in [
                "x-portcullis-consumer",
                "x-portcullis-key-id",
                "x-portcullis-scopes",
            ] {
                assert!(!got.headers.contains_key(name), "{name} reached the upstream");
            }
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_keeps_the_old_key_for_the_grace_period() {
    let upstream = TestUpstream::start().await;
    let gw = gateway(&upstream, None).await;
    let old = make_key(&gw, "svc", &["tasks:read"], None).await;
    assert_eq!(get(&gw, "/api/tasks", Some(&old.key)).await.status(), 200);
    let resp = client()
        .post(format!(
            "http://{}/admin/api/v1/keys/{}/rotate",
            gw.admin_addr(),
            old.id
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "grace": "1s" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let new = json(resp).await;
    let new_key = new["key"].as_str().unwrap().to_string();
    assert_eq!(new["scopes"], serde_json::json!(["tasks:read"]));
    // Both work during the grace period.
    assert_eq!(get(&gw, "/api/tasks", Some(&old.key)).await.status(), 200);
    assert_eq!(get(&gw, "/api/tasks", Some(&new_key)).await.status(), 200);
    // A real sleep: the 1 s grace period must run out.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    unauthorized(
        get(&gw, "/api/tasks", Some(&old.key)).await,
        "The API key has expired.",
    )
    .await;
    assert_eq!(get(&gw, "/api/tasks", Some(&new_key)).await.status(), 200);
    let info = store_of(&gw).find_key(&old.id).await.unwrap().unwrap();
    assert_eq!(info.rotated_to.as_deref(), new["id"].as_str());
    gw.shutdown().await;
}

async fn revocation_elsewhere(store_url: Option<&str>) {
    // A revocation written straight to the store (as the CLI or another
    // instance does) reaches this instance's cache within about a second.
    let upstream = TestUpstream::start().await;
    let gw = gateway(&upstream, store_url).await;
    let key = make_key(&gw, "svc", &["tasks:read"], None).await;
    assert_eq!(get(&gw, "/api/tasks", Some(&key.key)).await.status(), 200);
    store_of(&gw).revoke_key(&key.id).await.unwrap();
    let revoked_at = Instant::now();
    loop {
        let status = get(&gw, "/api/tasks", Some(&key.key)).await.status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(3),
            "the revocation did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = revoked_at.elapsed();
    eprintln!("revocation took effect after {took:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_from_elsewhere_arrives_within_about_a_second_on_sqlite() {
    revocation_elsewhere(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_from_elsewhere_arrives_within_about_a_second_on_postgres() {
    let Some(url) = postgres_url("revocation_from_elsewhere_on_postgres").await else {
        return;
    };
    revocation_elsewhere(Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_keeps_the_store_off_the_request_path_and_usage_is_batched() {
    let upstream = TestUpstream::start().await;
    let gw = gateway(&upstream, None).await;
    let key = make_key(&gw, "svc", &["tasks:read"], None).await;
    let unknown = portcullis::keys::generate().key;
    for _ in 0..50 {
        assert_eq!(get(&gw, "/api/tasks", Some(&key.key)).await.status(), 200);
        assert_eq!(get(&gw, "/api/tasks", Some(&unknown)).await.status(), 401);
    }
    let metrics = metrics_text(gw.admin_addr()).await;
    // One store read for the good key and one for the unknown one; the
    // other 98 lookups were answered from memory (negative entries too).
    assert_eq!(
        metric(&metrics, "portcullis_key_cache_lookups_total{result=\"miss\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "portcullis_key_cache_lookups_total{result=\"hit\"}"),
        98.0,
        "{metrics}"
    );

    // Usage reaches the store in a batch, within the flush interval.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let record = store_of(&gw).find_key(&key.id).await.unwrap().unwrap();
        if record.usage_count == 50 {
            assert!(record.last_used_at.is_some());
            break;
        }
        assert!(Instant::now() < deadline, "usage count is {}", record.usage_count);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.shutdown().await;
}
