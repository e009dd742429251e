//! Forward-auth through real proxies: nginx (`auth_request`, from
//! Debian), Traefik (ForwardAuth) and Envoy (`ext_authz` over HTTP), both
//! from their PyPI wheels (`.ci/forward-auth-tools.sh`), each in front of a
//! test upstream with portcullis deciding through `/.auth/verify`. The
//! proxies run from the configs in tests/support/forward-auth, the same
//! ones docs/forward-auth.md shows.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::oidc::free_port;
use common::*;

const ROUTES: &str = r#"
[sessions]
local_users = true

[[routes]]
id = "api"
path = "/api"
upstream = "app"
auth = ["api_key"]

[[routes]]
id = "admin"
path = "/admin"
upstream = "app"
auth = ["api_key"]
scopes = ["admin"]

[[routes]]
id = "limited"
path = "/limited"
upstream = "app"
auth = ["none"]
rate_limit = ["2 per minute per route"]

[[routes]]
id = "portal"
path = "/portal"
upstream = "app"
auth = ["session"]

[[routes]]
id = "public"
path = "/"
upstream = "app"
auth = ["none"]
"#;

fn tool(kind: &str) -> Option<PathBuf> {
    let tools = std::env::var("PORTCULLIS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/portcullis-tools"));
    let path = match kind {
        "nginx" => PathBuf::from("/usr/sbin/nginx"),
        "traefik" => tools.join("venv/bin/traefik"),
        _ => tools.join("venv/bin/envoy"),
    };
    if path.exists() {
        Some(path)
    } else {
        skip_or_fail(
            kind,
            &format!("{} is missing (bash .ci/forward-auth-tools.sh)", path.display()),
        );
        None
    }
}

/// One proxy process from its template, killed (with its workers) on drop.
struct Proxy {
    port: u16,
    child: Child,
    dir: PathBuf,
}

fn render(template: &str, dest: &Path, values: &[(&str, String)]) {
    let source = format!(
        "{}/tests/support/forward-auth/{template}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut text = std::fs::read_to_string(source).unwrap();
    for (k, v) in values {
        text = text.replace(&format!("{{{{{k}}}}}"), v);
    }
    assert!(!text.contains("{{"), "unfilled placeholder in {template}");
    std::fs::write(dest, text).unwrap();
}

impl Proxy {
    fn start(kind: &str, exe: &Path, auth_port: u16, upstream_port: u16) -> Proxy {
        let dir = scratch_dir();
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let port = free_port();
        let values = [
            ("LISTEN_PORT", port.to_string()),
            ("AUTH_PORT", auth_port.to_string()),
            ("UPSTREAM_PORT", upstream_port.to_string()),
            ("TMP", dir.display().to_string()),
        ];
        let mut cmd = Command::new(exe);
        match kind {
            "nginx" => {
                render("nginx.conf", &dir.join("nginx.conf"), &values);
                cmd.arg("-p").arg(&dir).arg("-c").arg(dir.join("nginx.conf"));
                cmd.arg("-e").arg(dir.join("nginx-error.log"));
            }
            "traefik" => {
                render("traefik-dynamic.yml", &dir.join("traefik-dynamic.yml"), &values);
                render("traefik.yml", &dir.join("traefik.yml"), &values);
                cmd.arg(format!("--configFile={}", dir.join("traefik.yml").display()));
            }
            _ => {
                render("envoy.yaml", &dir.join("envoy.yaml"), &values);
                cmd.arg("-c")
                    .arg(dir.join("envoy.yaml"))
                    .arg("--disable-hot-restart");
                cmd.arg("--log-path").arg(dir.join("envoy.log"));
            }
        }
        let child = cmd
            .current_dir(&dir)
            .env("HOME", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{kind} does not start: {e}"));
        Proxy { port, child, dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }
}

impl Drop for Proxy {
    /// SIGTERM to the proxy itself (nginx's master then stops its workers),
    /// SIGKILL if it lingers. Never a process-group signal: a mistaken
    /// group ID would reach far more than the proxy.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only(std::iter::empty())
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn through(kind: &str) {
    let Some(exe) = tool(kind) else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let text = with_session_key(
        &config_with_store("production", &upstream.url(), None, ROUTES),
        "k7PzQ2vL9xW4mN8bR3tY6uI1oA5sD0fGhJ2kL4zX",
    );
    let gw = start_gateway(&text).await;
    let key = make_key(&gw, "svc", &[], None).await.key;
    let proxy = Proxy::start(kind, &exe, gw.public_addr().port(), upstream.addr.port());
    let client = no_redirects();
    wait_until_async(&format!("{kind} serves"), Duration::from_secs(20), async || {
        client
            .get(proxy.url("/.auth/login"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let get = |path: &str| client.get(proxy.url(path));

    // No credential: refused by portcullis, and the upstream never asked.
    let before = upstream.count();
    let refused = get("/api/x").send().await.unwrap();
    assert_eq!(refused.status(), 401, "{kind}\n{}", proxy.logs());
    assert!(
        refused.headers().contains_key("www-authenticate"),
        "{kind}: {:?}",
        refused.headers()
    );
    assert_eq!(
        upstream.count(),
        before,
        "{kind}: a refused request reached the upstream"
    );

    // A good key: allowed, with the identity headers, and a client's forged
    // identity header does not get through.
    let allowed = get("/api/x?q=1")
        .header("x-api-key", &key)
        .header("x-portcullis-user", "mallory")
        .header("x-portcullis-consumer", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200, "{kind}\n{}", proxy.logs());
    if kind != "traefik" {
        assert_eq!(
            allowed.headers()["server"],
            kind,
            "the answer came through {kind}"
        );
    }
    let seen = upstream.last();
    assert_eq!(seen.target, "/api/x?q=1", "{kind}");
    assert_eq!(seen.headers["x-portcullis-consumer"], "svc", "{kind}");
    assert!(
        seen.headers
            .get("x-portcullis-user")
            .is_none_or(|v| v != "mallory"),
        "{kind}: a forged identity header reached the upstream"
    );
    // The method is the one judged.
    let posted = client
        .post(proxy.url("/api/items"))
        .header("x-api-key", &key)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200, "{kind}");
    assert_eq!(upstream.last().method, "POST", "{kind}");

    // A key without the route's scope: 403.
    assert_eq!(
        get("/admin")
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        403,
        "{kind}"
    );

    // A browser without a session on a session route is sent to log in.
    let browser = get("/portal/reports")
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 302, "{kind}\n{}", proxy.logs());
    let location = browser.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("/.auth/login?rd=%2Fportal%2Freports"),
        "{kind}: {location}"
    );
    // ...and an API client gets 401.
    assert_eq!(
        get("/portal")
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Rate limits: 429 with Retry-After reaches the client.
    let mut last = None;
    for _ in 0..3 {
        last = Some(get("/limited").send().await.unwrap());
    }
    let limited = last.unwrap();
    assert_eq!(limited.status(), 429, "{kind}\n{}", proxy.logs());
    assert!(
        limited.headers().contains_key("retry-after"),
        "{kind}: {:?}",
        limited.headers()
    );

    // The verify endpoint itself is not reachable through the proxy.
    let direct = get("/.auth/verify")
        .header("x-forwarded-uri", "/api/x")
        .send()
        .await
        .unwrap();
    assert_ne!(direct.status(), 200, "{kind}: /.auth/verify must stay internal");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn portcullis_decides_for_nginx_auth_request() {
    through("nginx").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn portcullis_decides_for_traefik_forward_auth() {
    through("traefik").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn portcullis_decides_for_envoy_ext_authz() {
    through("envoy").await;
}

/// Without any proxy: the verify endpoint judges the path the request will
/// really reach, so `/.auth/…` spellings of a protected path are not waved
/// through as the gateway's own pages.
#[tokio::test(flavor = "multi_thread")]
async fn the_verify_endpoint_judges_the_normalised_path() {
    let upstream = TestUpstream::start().await;
    let text = with_session_key(
        &config_with_store("production", &upstream.url(), None, ROUTES),
        "k7PzQ2vL9xW4mN8bR3tY6uI1oA5sD0fGhJ2kL4zX",
    );
    let gw = start_gateway(&text).await;
    let verify = |header: &'static str, target: &'static str| {
        let addr = gw.public_addr();
        async move {
            let request = format!(
                "GET /.auth/verify HTTP/1.1\r\nHost: a\r\n{header}: {target}\r\nConnection: close\r\n\r\n"
            );
            raw_status(&raw(addr, request.as_bytes()).await)
        }
    };
    assert_eq!(
        verify("X-Original-URI", "/.auth/login").await,
        200,
        "the login page is public"
    );
    for target in [
        "/.auth/../admin/x",
        "/.auth/%2e%2e/admin/x",
        "/.auth/verify/../../admin",
    ] {
        for header in ["X-Original-URI", "X-Forwarded-Uri"] {
            let status = verify(header, target).await;
            // Refused either way: by the route's policy or as a disguised
            // path of the gateway's own.
            assert!(
                [400, 401, 404].contains(&status),
                "{header}: {target} answered {status}: it must be refused"
            );
        }
    }
    let envoy = raw(
        gw.public_addr(),
        b"GET /.auth/verify/.auth/x/../../admin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(raw_status(&envoy), 200, "{envoy}");
    // A CORS preflight is judged like any request, not answered as one.
    let preflight = client()
        .get(format!("http://{}/.auth/verify/api/x", gw.public_addr()))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 401);
    gw.shutdown().await;
}
