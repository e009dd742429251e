//! OpenAPI-driven validation through the real server: the document is
//! fetched from the backend's own `/openapi.json` (as FastAPI serves it)
//! at start and again on reload, or read from a file named on the
//! upstream; path, query and header parameters and JSON bodies are checked
//! per operation (`$ref`s into components resolved; 3.0's `nullable`), and
//! undeclared operations are refused.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

const ITEMS: &str = include_str!("fixtures/openapi/items-3.1.json");

/// A backend that serves its OpenAPI document and answers 200 elsewhere,
/// counting the requests that reach it.
async fn backend(doc: Arc<Mutex<String>>, hits: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    serve_http(move |req: Request<Incoming>| {
        let (doc, hits) = (doc.clone(), hits.clone());
        async move {
            let path = req.uri().path().to_string();
            let body = if path == "/openapi.json" {
                doc.lock().unwrap().clone()
            } else {
                hits.lock()
                    .unwrap()
                    .push(format!("{} {}", req.method(), req.uri()));
                "{\"ok\":true}".to_string()
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok::<_, Infallible>(r)
        }
    })
    .await
}

fn pointers(doc: &serde_json::Value) -> Vec<String> {
    doc["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors: {doc}"))
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_checked_against_the_backends_own_document_fetched_at_start_and_reload() {
    let doc = Arc::new(Mutex::new(ITEMS.to_string()));
    let hits: Arc<Mutex<Vec<String>>> = Arc::default();
    let addr = backend(doc.clone(), hits.clone()).await;
    let routes = format!(
        r#"
[[routes]]
id = "api"
path = "/items"
upstream = "app"
auth = ["none"]
validate = {{ openapi = {{ url = "http://{addr}/openapi.json" }} }}
"#
    );
    let dir = scratch_dir();
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, config("production", &format!("http://{addr}"), &routes)).unwrap();
    let loaded =
        portcullis::config::load::load(&portcullis::config::Source::File(path.clone()), &[]).unwrap();
    let gw = portcullis::Gateway::start(loaded).await.unwrap();
    let base = format!("http://{}", gw.public_addr());
    let c = client();

    assert_eq!(
        c.get(format!("{base}/items/7?verbose=true"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for (url, header, pointer) in [
        ("/items/0", None, "#/path/item_id"),
        ("/items/abc", None, "#/path/item_id"),
        ("/items/7?verbose=maybe", None, "#/query/verbose"),
        // Every value of a repeated scalar is checked (Starlette reads the last).
        ("/items/7?verbose=true&verbose=maybe", None, "#/query/verbose"),
        ("/items/7", Some("not-hex!"), "#/header/x-trace"),
    ] {
        let mut req = c.get(format!("{base}{url}"));
        if let Some(h) = header {
            req = req.header("x-trace", h);
        }
        let problem = assert_problem(req.send().await.unwrap(), 422).await;
        assert_eq!(pointers(&problem), [pointer], "{url}: {problem}");
    }
    let post = |body: &'static str, content_type: &'static str| {
        c.post(format!("{base}/items"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    assert_eq!(
        post(
            r#"{"name": "lamp", "price": 12.5, "tags": ["new"]}"#,
            "application/json"
        )
        .await
        .unwrap()
        .status(),
        200
    );
    let problem = assert_problem(
        post(
            r#"{"name": "lamp", "price": 0, "tags": ["old"]}"#,
            "application/json",
        )
        .await
        .unwrap(),
        422,
    )
    .await;
    let mut found = pointers(&problem);
    found.sort();
    assert_eq!(found, ["/price", "/tags/0"], "{problem}");
    assert_problem(post(r#"{"name": "lamp"}"#, "text/plain").await.unwrap(), 415).await;
    // A body without a declared type is not passed unchecked.
    let r = c
        .post(format!("{base}/items"))
        .body(r#"{"name": "lamp"}"#)
        .send()
        .await
        .unwrap();
    assert_problem(r, 415).await;
    let r = c.post(format!("{base}/items")).send().await.unwrap();
    assert_problem(r, 422).await;
    // Operations the document does not declare.
    assert_problem(c.get(format!("{base}/items/7/secret")).send().await.unwrap(), 404).await;
    let r = c.delete(format!("{base}/items/7")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "GET");
    assert_problem(r, 405).await;
    assert_eq!(hits.lock().unwrap().len(), 2, "{:?}", hits.lock().unwrap());

    // The backend ships a DELETE; a reload fetches the document again.
    let mut updated: serde_json::Value = serde_json::from_str(ITEMS).unwrap();
    updated["paths"]["/items/{item_id}"]["delete"] = serde_json::json!({
        "parameters": [{"name": "item_id", "in": "path", "required": true, "schema": {"type": "integer"}}],
        "responses": {"204": {"description": "gone"}}
    });
    *doc.lock().unwrap() = updated.to_string();
    gw.reload().unwrap();
    assert_eq!(
        c.delete(format!("{base}/items/7")).send().await.unwrap().status(),
        200
    );
    gw.shutdown().await;

    // A document that cannot be fetched is a config problem, named.
    let gone = format!("http://127.0.0.1:{}/openapi.json", refusing_port().1);
    let text = config(
        "production",
        &format!("http://{addr}"),
        &routes.replace(&format!("http://{addr}/openapi.json"), &gone),
    );
    let errors = compile_offline(&text).err().unwrap();
    assert!(
        errors.contains("validate.openapi") && errors.contains("fetching"),
        "{errors}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstreams_3_0_document_from_a_file_covers_its_routes() {
    let hits: Arc<Mutex<Vec<String>>> = Arc::default();
    let addr = backend(Arc::default(), hits.clone()).await;
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/openapi/orders-3.0.json"
    );
    let routes = r#"
[[routes]]
id = "orders"
path = "/orders"
upstream = "app"
auth = ["none"]
"#;
    let text = config("production", &format!("http://{addr}"), routes).replacen(
        "[[upstreams]]\nname = \"app\"\n",
        &format!("[[upstreams]]\nname = \"app\"\nopenapi = {{ file = \"{file}\" }}\n"),
        1,
    );
    let gw = start_gateway(&text).await;
    let base = format!("http://{}", gw.public_addr());
    let post = |body: &'static str| {
        client()
            .post(format!("{base}/orders"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(post(r#"{"qty": 3, "note": null}"#).await.unwrap().status(), 200);
    let problem = assert_problem(post(r#"{"qty": 100}"#).await.unwrap(), 422).await;
    assert_eq!(
        pointers(&problem),
        ["/qty"],
        "draft 4's boolean exclusiveMaximum: {problem}"
    );
    assert_problem(client().get(format!("{base}/orders")).send().await.unwrap(), 405).await;
    assert_eq!(hits.lock().unwrap().len(), 1);
    gw.shutdown().await;
}
