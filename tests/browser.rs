//! The browser-facing protections as headless Chromium enforces them
//! (tests/support/browser: playwright-core driving Debian's chromium;
//! `.ci/browser.sh` installs both). A user logs in to a session route;
//! then:
//! - the same-origin form, with the token the gateway handed the page,
//!   succeeds;
//! - forms from a sibling origin (another port of 127.0.0.1: same site, so
//!   the Lax session cookie goes along, `Sec-Fetch-Site: same-site`),
//!   url-encoded, `text/plain` and multipart, are refused by CSRF and never
//!   reach the app; so are cross-site forms (127.0.0.2), in all three
//!   encodings, on a route whose backend cookie is `SameSite=None`; a
//!   cross-site form to the session route arrives without the Lax session
//!   cookie (Chromium withholds it) and is refused with 401;
//! - the allowed origin reads a credentialed API; a foreign origin's fetch
//!   is blocked by CORS;
//! - the route's CSP blocks an injected inline script;
//! - a page on another origin cannot open the chat WebSocket with the
//!   user's session cookie (cross-site WebSocket hijacking), while the
//!   allowed origin can.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

type Log = Arc<Mutex<Vec<String>>>;

fn html(body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
    r
}

/// The app behind the gateway: server-rendered pages and a JSON API.
async fn app(req: Request<Incoming>, log: Log) -> Result<Response<Full<Bytes>>, Infallible> {
    let (head, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = head.uri.path().to_string();
    log.lock().unwrap().push(format!(
        "{} {path} {}",
        head.method,
        String::from_utf8_lossy(&body)
    ));
    let token = head
        .headers
        .get("x-csrf-token")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Ok(match path.as_str() {
        "/app/form" => html(format!(
            "<form id=\"f\" method=\"post\" action=\"/app/items\">\
             <input type=\"hidden\" name=\"csrf_token\" value=\"{token}\">\
             <input name=\"title\" value=\"same-origin\"><button type=\"submit\">Save</button></form>"
        )),
        "/app/xss" => html(
            "<p id=\"out\">safe</p><script>window.__pwned = 1; \
             document.getElementById('out').textContent = 'pwned';</script>"
                .into(),
        ),
        "/legacy/login" => {
            let mut r = html("<p>legacy session</p>".into());
            r.headers_mut().insert(
                "set-cookie",
                "legacy_sid=s3cr3t; Path=/; SameSite=None; Secure"
                    .parse()
                    .unwrap(),
            );
            r
        }
        "/api/data" => {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"{\"data\":\"for the allowed origin\"}",
            )));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
        _ => html(format!(
            "<p id=\"done\">created {}</p>",
            String::from_utf8_lossy(&body)
        )),
    })
}

/// A page server on another origin: `/` is an empty page; `/form/<enc>`
/// submits a form to `target` on load.
async fn serve_pages(ip: &str, target: String) -> SocketAddr {
    serve_http_on(ip, move |req: Request<Incoming>| {
        let target = target.clone();
        async move {
            if req.uri().path() == "/session-form" {
                let action = target.replace("/legacy/items", "/app/items");
                return Ok::<_, Infallible>(html(format!(
                    "<form id=\"f\" method=\"post\" action=\"{action}\" enctype=\"text/plain\">\
                     <input name=\"title\" value=\"forged\"></form>\
                     <script>document.getElementById('f').submit();</script>"
                )));
            }
            let page = match req.uri().path().strip_prefix("/form/") {
                Some(enctype) => {
                    let enctype = enctype.replace('_', "/");
                    format!(
                        "<form id=\"f\" method=\"post\" action=\"{target}\" enctype=\"{enctype}\">\
                         <input name=\"title\" value=\"forged\"></form>\
                         <script>document.getElementById('f').submit();</script>"
                    )
                }
                None => "<p>page</p>".to_string(),
            };
            Ok::<_, Infallible>(html(page))
        }
    })
    .await
}

/// The config with its public listener on `port` (known before the
/// gateway starts, so pages can name it), the admin one still ephemeral.
fn listen_on(text: &str, port: u16) -> String {
    edit(text, |doc| {
        set(doc, "server", "listen", format!("127.0.0.1:{port}"))
    })
}

fn drive(scenario: serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/browser/drive.mjs");
    let mut child = std::process::Command::new("node")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node runs the browser driver (run .ci/browser.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scenario.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "the driver printed no result:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(result["ok"], true, "the scenario failed: {result:#}");
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_enforces_cors_csrf_and_csp_as_configured() {
    let log: Log = Arc::default();
    let app_log = log.clone();
    let backend = serve_http(move |req| app(req, app_log.clone())).await;
    // The allowed origin's port must be in the config before the gateway
    // starts, and the gateway's in the pages' forms: bind the page servers
    // first, on addresses the forms can reach later.
    let gw_port = common::oidc::free_port();
    let gw_url = format!("http://127.0.0.1:{gw_port}");
    let allowed = serve_pages("127.0.0.1", String::new()).await;
    let sibling = serve_pages("127.0.0.1", format!("{gw_url}/app/items")).await;
    let foreign = serve_pages("127.0.0.2", format!("{gw_url}/legacy/items")).await;
    let routes = format!(
        r#"
[secrets]

[sessions]
local_users = true

[cors]
origins = ["http://127.0.0.1:{allowed_port}"]
credentials = true

[[routes]]
id = "app"
path = "/app"
upstream = "app"
auth = ["session"]
security_headers = {{ content_security_policy = "script-src 'self'; frame-ancestors 'none'" }}

[[routes]]
id = "api"
path = "/api"
upstream = "app"
auth = ["session"]

[[routes]]
id = "legacy"
path = "/legacy"
upstream = "app"
auth = ["none"]
csrf = {{ cookies = ["legacy_sid"] }}
"#,
        allowed_port = allowed.port()
    );
    let text = with_session_key(
        &config("development", &format!("http://{backend}"), &routes),
        "q7Vx9Lm2Pz4Rt8Wk3Ns6Yb1Hc5Jd0FgA",
    );
    let text = listen_on(&text, gw_port);
    let gw = start_gateway(&text).await;
    assert_eq!(gw.public_addr().port(), gw_port);
    let hash = portcullis::users::hash_password("correct horse battery").unwrap();
    store_of(&gw).create_user("ada", &hash, &[]).await.unwrap();

    let sibling_url = format!("http://{sibling}");
    let foreign_url = format!("http://{foreign}");
    let allowed_url = format!("http://{allowed}");
    let fetch_api = format!(
        "fetch('{gw_url}/api/data', {{credentials: 'include'}}).then(r => r.text()).catch(e => 'blocked: ' + e)"
    );
    let result = drive(serde_json::json!({
        "steps": [
            {"goto": format!("{gw_url}/.auth/login?rd=/app/form")},
            {"fill": "input[name=username]", "value": "ada"},
            {"fill": "input[name=password]", "value": "correct horse battery"},
            {"click": "button[type=submit]"},
            {"waitForURL": format!("{gw_url}/app/form")},
            // 5: the same-origin form, with the gateway's token, succeeds.
            {"click": "button[type=submit]"},
            {"waitForSelector": "#done"},
            {"content": true},
            // 8: forms from a sibling origin, with the session cookie.
            {"goto": format!("{sibling_url}/form/application_x-www-form-urlencoded")},
            {"waitForURL": format!("{gw_url}/app/items")},
            {"content": true},
            {"goto": format!("{sibling_url}/form/text_plain")},
            {"waitForURL": format!("{gw_url}/app/items")},
            {"content": true},
            {"goto": format!("{sibling_url}/form/multipart_form-data")},
            {"waitForURL": format!("{gw_url}/app/items")},
            {"content": true},
            // 17: a backend cookie sent cross-site (SameSite=None).
            {"goto": format!("{gw_url}/legacy/login")},
            {"goto": format!("{foreign_url}/form/text_plain")},
            {"waitForURL": format!("{gw_url}/legacy/items")},
            {"content": true},
            // 21: CORS, as the page sees it.
            {"goto": format!("{allowed_url}/")},
            {"eval": fetch_api},
            {"goto": format!("{foreign_url}/")},
            {"eval": fetch_api},
            // 25: the CSP blocks the inline script.
            {"goto": format!("{gw_url}/app/xss")},
            {"eval": "[typeof window.__pwned, document.getElementById('out').textContent]"},
            // 27: cross-site url-encoded and multipart forms with the
            // SameSite=None backend cookie.
            {"goto": format!("{foreign_url}/form/application_x-www-form-urlencoded")},
            {"waitForURL": format!("{gw_url}/legacy/items")},
            {"content": true},
            {"goto": format!("{foreign_url}/form/multipart_form-data")},
            {"waitForURL": format!("{gw_url}/legacy/items")},
            {"content": true},
            // 33: a cross-site form to the session route: Chromium does not
            // send the Lax session cookie, so it arrives without a session
            // and gets 401 (a POST is not sent to log in); the app never
            // sees it.
            {"goto": format!("{foreign_url}/session-form")},
            {"waitForURL": format!("{gw_url}/app/items")},
            {"content": true},
        ],
        "stepTimeoutMs": 8000,
    }));
    let r = &result["results"];
    let content = |i: usize| r[i]["value"].as_str().unwrap_or_default().to_string();
    assert!(
        content(7).contains("created csrf_token="),
        "same-origin form: {}",
        content(7)
    );
    for i in [10, 13, 16] {
        assert!(
            content(i).contains("Cross-site request refused"),
            "step {i}: {}",
            content(i)
        );
    }
    assert!(
        content(35).contains("\"status\":401"),
        "session route, cross-site: {}",
        content(35)
    );
    for i in [20, 29, 32] {
        assert!(
            content(i).contains("Cross-site request refused"),
            "cross-site step {i}: {}",
            content(i)
        );
    }
    assert_eq!(
        r[22]["value"], "{\"data\":\"for the allowed origin\"}",
        "{result:#}"
    );
    assert!(
        r[24]["value"].as_str().unwrap().starts_with("blocked: TypeError"),
        "{result:#}"
    );
    assert_eq!(
        r[26]["value"],
        serde_json::json!(["undefined", "safe"]),
        "{result:#}"
    );
    assert!(
        result["cspViolations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["effectiveDirective"] == "script-src-elem"
                || v["violatedDirective"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("script-src")),
        "{result:#}"
    );
    let seen = log.lock().unwrap().clone();
    let posts: Vec<&String> = seen.iter().filter(|l| l.starts_with("POST")).collect();
    assert_eq!(
        posts.len(),
        1,
        "only the same-origin form reached the app: {seen:?}"
    );
    assert!(!seen.iter().any(|l| l.contains("forged")), "{seen:?}");
    let rejected = audit_events(&gw, Some("csrf.rejected")).await;
    assert_eq!(rejected.len(), 6, "{rejected:?}");
    gw.shutdown().await;
}

/// The page script that opens the gateway's WebSocket with the visitor's
/// cookies and says what happened.
fn open_socket_js(ws_url: &str) -> String {
    format!(
        "new Promise((resolve) => {{\
           const ws = new WebSocket('{ws_url}');\
           const t = setTimeout(() => resolve('timeout'), 8000);\
           ws.onopen = () => ws.send('hello from ' + location.origin);\
           ws.onmessage = (e) => {{ clearTimeout(t); ws.close(1000); resolve('message:' + e.data); }};\
           ws.onclose = (e) => {{ clearTimeout(t); resolve('closed:' + e.code); }};\
         }})"
    )
}

/// Cross-site WebSocket hijacking: a logged-in user visits a page on
/// another origin of the same site (so Chromium sends the Lax session
/// cookie with the handshake) that opens the chat socket. The origin check
/// refuses it before the upgrade; the same script on the allowed origin
/// gets its echo.
#[tokio::test(flavor = "multi_thread")]
async fn chromium_cannot_hijack_a_websocket_from_another_origin() {
    let chat = common::ws::WsUpstream::start().await;
    let gw_port = common::oidc::free_port();
    let gw_url = format!("http://127.0.0.1:{gw_port}");
    let allowed = serve_pages("127.0.0.1", String::new()).await;
    let foreign = serve_pages("127.0.0.1", String::new()).await;
    let routes = format!(
        r#"
[secrets]

[sessions]
local_users = true

[[routes]]
id = "chat"
path = "/ws"
upstream = "app"
auth = ["session"]
websocket = {{ origins = ["http://127.0.0.1:{allowed_port}"] }}
"#,
        allowed_port = allowed.port()
    );
    let text = with_session_key(
        &config("development", &chat.url(), &routes),
        "q7Vx9Lm2Pz4Rt8Wk3Ns6Yb1Hc5Jd0FgA",
    );
    let text = listen_on(&text, gw_port);
    let gw = start_gateway(&text).await;
    let hash = portcullis::users::hash_password("correct horse battery").unwrap();
    store_of(&gw).create_user("ada", &hash, &[]).await.unwrap();
    let socket = open_socket_js(&format!("ws://127.0.0.1:{gw_port}/ws"));
    let result = drive(serde_json::json!({
        "steps": [
            {"goto": format!("{gw_url}/.auth/login?rd=/ws")},
            {"fill": "input[name=username]", "value": "ada"},
            {"fill": "input[name=password]", "value": "correct horse battery"},
            {"click": "button[type=submit]"},
            {"waitForURL": format!("{gw_url}/ws")},
            // 5: the hijacking page.
            {"goto": format!("http://{foreign}/")},
            {"eval": socket},
            // 7: the chat's own page.
            {"goto": format!("http://{allowed}/")},
            {"eval": socket},
        ],
        "stepTimeoutMs": 10000,
    }));
    let r = &result["results"];
    assert_eq!(r[6]["value"], "closed:1006", "the foreign page: {result:#}");
    assert_eq!(
        r[8]["value"],
        format!("message:hello from http://{allowed}"),
        "the allowed page: {result:#}"
    );
    let handshakes = chat.handshakes();
    assert_eq!(handshakes.len(), 1, "only the allowed page reached the chat");
    assert_eq!(handshakes[0].headers["x-portcullis-user"], "ada");
    let rejected = audit_events(&gw, Some("ws.rejected")).await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].event.details["origin"], format!("http://{foreign}"));
    gw.shutdown().await;
}
