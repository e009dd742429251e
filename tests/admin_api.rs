//! The admin REST API: token checks, consumers, keys, audit queries, and
//! the generated OpenAPI document.

mod common;

use common::*;

fn admin(gw: &portcullis::Gateway, path: &str) -> String {
    format!("http://{}/admin/api/v1{path}", gw.admin_addr())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_is_required_and_refusals_are_audited() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config_with_store(
        "production",
        &upstream.url(),
        None,
        PUBLIC_ROOT,
    ))
    .await;
    let resp = client().get(admin(&gw, "/consumers")).send().await.unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"portcullis-admin\""
    );
    assert_problem(resp, 401).await;
    let resp = client()
        .get(admin(&gw, "/consumers"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 401).await;
    let resp = client()
        .get(admin(&gw, "/consumers"))
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 401).await;
    let resp = client()
        .get(admin(&gw, "/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    gw.shared().runtime.audit.flush().await;
    let resp = client()
        .get(admin(&gw, "/audit?type=admin.auth_failure"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let page = json(resp).await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{page}");
    assert!(
        !page.to_string().contains("wrong-token"),
        "a presented token reached the audit log"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_admin_token_the_api_is_off() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let resp = client()
        .get(admin(&gw, "/consumers"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    let doc = assert_problem(resp, 503).await;
    assert!(doc["detail"].as_str().unwrap().contains("secrets.admin_token"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_keys_and_audit_through_the_api() {
    let upstream = TestUpstream::start().await;
    let routes = r#"
[[routes]]
path = "/api"
upstream = "app"
auth = ["api_key"]
"#;
    let gw = start_gateway(&config_with_store("production", &upstream.url(), None, routes)).await;
    let c = client();

    let resp = c
        .post(admin(&gw, "/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "name": "billing", "metadata": { "team": "payments" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(json(resp).await["metadata"]["team"], "payments");
    let resp = c
        .post(admin(&gw, "/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "name": "billing" }))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 409).await;
    let resp = c
        .post(admin(&gw, "/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "name": "bad name!" }))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400).await;
    let resp = c
        .post(admin(&gw, "/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400).await;

    let resp = c
        .post(admin(&gw, "/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "consumer": "billing", "scopes": ["invoices:read"], "expires_in": "90d", "rate_limit": "100/minute" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created = json(resp).await;
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with(&format!("pc_{id}_")));
    assert!(created["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        c.get(format!("http://{}/api/x", gw.public_addr()))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    for body in [
        serde_json::json!({ "consumer": "nobody" }),
        serde_json::json!({ "consumer": "billing", "expires_in": "soon" }),
        serde_json::json!({ "consumer": "billing", "rate_limit": "lots" }),
        serde_json::json!({ "consumer": "billing", "scopes": ["bad scope"] }),
        serde_json::json!({ "consumer": "billing", "unknown_field": 1 }),
    ] {
        let resp = c
            .post(admin(&gw, "/keys"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(status == 400 || status == 404, "{body}: {status}");
        assert_problem(resp, status).await;
    }

    // Listing never shows a key or its hash.
    let resp = c
        .get(admin(&gw, "/keys?consumer=billing"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["state"], "active");
    assert_eq!(list[0]["rate_limit"], "100/minute");
    assert!(!text.contains(key.rsplit('_').next().unwrap()));
    assert!(!text.contains("secret_hash"));

    let resp = c
        .post(admin(&gw, &format!("/keys/{id}/rotate")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "grace": "1h" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let rotated = json(resp).await;
    assert_eq!(rotated["rate_limit"], "100/minute");
    let resp = c
        .post(admin(&gw, &format!("/keys/{id}/revoke")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp).await["state"], "revoked");
    let resp = c
        .post(admin(&gw, "/keys/nosuchkey000/revoke"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 404).await;

    let resp = c
        .delete(admin(&gw, "/consumers/billing"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp).await["deleted_keys"].as_array().unwrap().len(), 2);
    // Deleting a consumer takes its keys with it at once.
    let resp = c
        .get(format!("http://{}/api/x", gw.public_addr()))
        .header("x-api-key", rotated["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_problem(resp, 401).await;

    // The audit log saw every change, filterable and paged.
    gw.shared().runtime.audit.flush().await;
    let resp = c
        .get(admin(&gw, "/audit?consumer=billing&limit=2"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let page = json(resp).await;
    let first: Vec<String> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(first, ["consumer.deleted", "key.revoked"]);
    let cursor = page["next_cursor"].as_i64().unwrap();
    let resp = c
        .get(admin(
            &gw,
            &format!("/audit?consumer=billing&limit=10&cursor={cursor}"),
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let page = json(resp).await;
    let rest: Vec<String> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        // Successful key checks are audited at random (1 in 100 by default).
        .filter(|t| t != "auth.success")
        .collect();
    assert_eq!(rest, ["key.rotated", "key.created", "consumer.created"]);
    assert!(page["next_cursor"].is_null());
    let e = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "key.rotated")
        .unwrap();
    assert_eq!(e["details"]["via"], "admin_api");
    assert_eq!(e["client_ip"], "127.0.0.1");
    let resp = c
        .get(admin(&gw, "/audit?since=1h&type=key.created"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp).await["events"].as_array().unwrap().len(), 1);
    let resp = c
        .get(admin(&gw, "/audit?since=yesterday"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400).await;
    let resp = c
        .get(admin(&gw, "/nothing-here"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 404).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_is_generated_from_the_handlers() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config_with_store(
        "production",
        &upstream.url(),
        None,
        PUBLIC_ROOT,
    ))
    .await;
    let doc = json(client().get(admin(&gw, "/openapi.json")).send().await.unwrap()).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/admin/api/v1/consumers", "get"),
        ("/admin/api/v1/consumers", "post"),
        ("/admin/api/v1/consumers/{name}", "delete"),
        ("/admin/api/v1/keys", "get"),
        ("/admin/api/v1/keys", "post"),
        ("/admin/api/v1/keys/{id}/revoke", "post"),
        ("/admin/api/v1/keys/{id}/rotate", "post"),
        ("/admin/api/v1/audit", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"],
        "bearer"
    );
    for schema in [
        "CreatedKey",
        "KeyInfo",
        "Consumer",
        "ChainedEvent",
        "Problem",
        "AuditPage",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "schema {schema} missing"
        );
    }
    gw.shutdown().await;
}
