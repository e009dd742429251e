//! Shared test harness: a recording upstream, the gateway started
//! in-process or as the real binary, and raw-socket helpers.
#![allow(dead_code)]

pub mod browser;
pub mod clamav;
pub mod h2;
pub mod jwt;
pub mod oidc;
pub mod private_pg;
pub mod tls;
pub mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portcullis::Gateway;
use portcullis::config::Source;
use portcullis::config::load::load;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Whether this run is CI's (`CI` set, to any value).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// The value of `var`, which names a service `test` needs (`service`, for
/// the message). When it is not set the test is skipped with a `SKIPPED`
/// line on a developer's machine, but fails under CI: there a skipped test
/// would hide that the service was never there.
pub fn service_url(var: &str, test: &str, service: &str) -> Option<String> {
    if let Ok(url) = std::env::var(var) {
        return Some(url);
    }
    skip_or_fail(test, &format!("it needs {service} and {var} is not set"));
    None
}

/// Skips `test` (a `SKIPPED` line) outside CI; panics under CI, where a
/// test must never skip for want of something the run should provide.
pub fn skip_or_fail(test: &str, reason: &str) {
    assert!(
        !in_ci(),
        "{test} cannot run: {reason}. CI is set, so this fails instead of being skipped"
    );
    eprintln!("SKIPPED {test}: {reason}");
}

/// The Redis URL for a test, from `PORTCULLIS_TEST_REDIS_URL` (see
/// [`service_url`]: skipped outside CI when unset, failed under CI).
pub fn redis_url(test: &str) -> Option<String> {
    service_url("PORTCULLIS_TEST_REDIS_URL", test, "Redis")
}

/// How often the `wait_*` helpers and [`eventually`] look again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Whether `done` holds within `limit`, looking every [`POLL_INTERVAL`]
/// (and once more at the deadline). For callers that assert with their own
/// message.
pub async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    eventually_async(limit, async || done()).await
}

/// [`eventually`] for a condition that must itself await (an HTTP request,
/// a store query).
pub async fn eventually_async(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until `done` holds, looking every [`POLL_INTERVAL`]; panics with
/// "timed out after `limit` waiting for `what`" if it does not within `limit`.
pub async fn wait_until(what: &str, limit: Duration, done: impl FnMut() -> bool) {
    assert!(
        eventually(limit, done).await,
        "timed out after {limit:?} waiting for {what}"
    );
}

/// [`wait_until`] for a condition that must itself await.
pub async fn wait_until_async(what: &str, limit: Duration, done: impl AsyncFnMut() -> bool) {
    assert!(
        eventually_async(limit, done).await,
        "timed out after {limit:?} waiting for {what}"
    );
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    /// The body bytes that arrived (all of them, or those before the body
    /// broke off).
    pub body: Bytes,
    /// Whether the body arrived whole (false: the sender aborted it).
    pub body_complete: bool,
}

/// A real HTTP server on an ephemeral port that records what it receives.
///
/// Paths it understands:
/// - `/status/<code>`: answers with that status and a body that looks like a
///   stack trace (`Traceback ... SECRET_STACK_DETAIL`);
/// - `/delay/<ms>`: answers after that many milliseconds;
/// - `/hop`: answers with hop-by-hop headers that must not reach the client;
/// - `…/powered`: answers with `Server`, `X-Powered-By` and its own
///   `X-Frame-Options: SAMEORIGIN`;
/// - `/echo-stream`: streams the request body back as it arrives (records
///   the request with an empty body);
/// - `/echo-error`: `500` with everything received in the body: the request
///   line and every header (as a backend with a debug error page would);
/// - `/reflect-origin`: `200` with `Access-Control-Allow-Origin` set to the
///   request's `Origin`, credentials allowed and `X-Internal` exposed (a
///   backend that handles CORS carelessly);
/// - anything else: `200` with JSON `{"path": …, "method": …}`.
pub struct TestUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

/// Serves HTTP/1 and HTTP/2 on an ephemeral loopback port, answering each
/// request with `answer`, until the test's runtime ends.
pub async fn serve_http<F, Fut, B>(answer: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_http_on("127.0.0.1", answer).await
}

/// [`serve_http`] on another loopback address (`127.0.0.2` is another
/// site to a browser).
pub async fn serve_http_on<F, Fut, B>(ip: &str, answer: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
    addr
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let addr = serve_http(move |req| answer(req, log.clone())).await;
        TestUpstream { addr, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn last(&self) -> Received {
        self.received().pop().expect("the upstream received a request")
    }
}

type AnyBody = BoxBody<Bytes, hyper::Error>;

fn full(bytes: impl Into<Bytes>) -> AnyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

async fn answer(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<AnyBody>, Infallible> {
    if req.uri().path() == "/echo-stream" {
        let (head, body) = req.into_parts();
        log.lock().unwrap().push(Received {
            method: head.method.to_string(),
            target: head.uri.to_string(),
            headers: head.headers.clone(),
            body: Bytes::new(),
            body_complete: false,
        });
        return Ok(Response::new(body.boxed()));
    }
    let (head, mut incoming) = req.into_parts();
    // Read frame by frame, so that what arrived before an abort is kept.
    let mut received = Vec::new();
    let body_complete = loop {
        match incoming.frame().await {
            None => break true,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    received.extend_from_slice(data);
                }
            }
            Some(Err(_)) => break false,
        }
    };
    let body = Bytes::from(received);
    let target = head
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    log.lock().unwrap().push(Received {
        method: head.method.to_string(),
        target: target.clone(),
        headers: head.headers.clone(),
        body: body.clone(),
        body_complete,
    });
    let path = head.uri.path().to_string();
    let mut response = Response::new(full(Bytes::new()));
    if let Some((_, code)) = path.split_once("/status/") {
        *response.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        *response.body_mut() = full(Bytes::from_static(
            b"Traceback (most recent call last):\n  File \"app.py\", line 7\nSECRET_STACK_DETAIL db=postgres://admin:hunter2@db\n",
        ));
        response.headers_mut().insert("retry-after", "7".parse().unwrap());
        return Ok(response);
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if path.ends_with("/echo-error") {
        let mut text = format!("{} {}\n", head.method, target);
        for (name, value) in &head.headers {
            text.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        *response.body_mut() = full(text);
        return Ok(response);
    }
    if path.ends_with("/reflect-origin") {
        let h = response.headers_mut();
        if let Some(origin) = head.headers.get("origin") {
            h.insert("access-control-allow-origin", origin.clone());
        }
        h.insert("access-control-allow-credentials", "true".parse().unwrap());
        h.insert("access-control-expose-headers", "x-internal".parse().unwrap());
        h.insert("access-control-allow-private-network", "true".parse().unwrap());
    }
    if path.ends_with("/powered") {
        let h = response.headers_mut();
        h.insert("server", "uvicorn".parse().unwrap());
        h.insert("x-powered-by", "Express".parse().unwrap());
        h.insert("x-frame-options", "SAMEORIGIN".parse().unwrap());
    }
    if path.ends_with("/set-cookies") {
        let h = response.headers_mut();
        h.append("set-cookie", "plain=1; Path=/".parse().unwrap());
        h.append(
            "set-cookie",
            "done=2; Secure; HttpOnly; SameSite=Strict".parse().unwrap(),
        );
        h.append("set-cookie", "XSRF-TOKEN=t; Path=/".parse().unwrap());
    }
    if path == "/hop" {
        let h = response.headers_mut();
        h.insert("connection", "x-upstream-hop".parse().unwrap());
        h.insert("x-upstream-hop", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("x-upstream-kept", "yes".parse().unwrap());
    }
    let doc = serde_json::json!({ "path": path, "method": head.method.as_str(), "body_len": body.len() });
    *response.body_mut() = full(doc.to_string());
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

/// A fresh folder for one test's files (SQLite store, audit file, spill).
pub fn scratch_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("scratch")
        .join(portcullis::keys::random_alnum(12));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `[store]` and `[audit]` tables that keep a test's files in `dir`.
pub fn store_tables(dir: &std::path::Path, store_url: Option<&str>) -> String {
    let url = store_url
        .map(String::from)
        .unwrap_or_else(|| format!("sqlite://{}/portcullis.db", dir.display()));
    format!(
        r#"[store]
url = "{url}"
statement_timeout = "1s"
# Generous: on a loaded 2-core machine opening a fresh SQLite file
# has taken over a second.
connect_timeout = "5s"

[audit]
file = "{dir}/audit.jsonl"
spill_file = "{dir}/audit-spill.jsonl"
"#,
        dir = dir.display()
    )
}

/// Config text with both listeners on ephemeral loopback ports, a SQLite
/// store in a fresh folder, and one upstream named `app`, followed by
/// `extra` (routes and other tables).
pub fn config(environment: &str, upstream: &str, extra: &str) -> String {
    let stores = store_tables(&scratch_dir(), None);
    format!(
        r#"environment = "{environment}"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout = "5s"

[log]
access_log = false

{stores}

[[upstreams]]
name = "app"
targets = ["{upstream}"]
timeout = "2s"
connect_timeout = "1s"

{extra}
"#
    )
}

/// The value at `path` in a parsed config: keys separated by `.`, list
/// entries by their index (`upstreams.0.targets`). Panics if a step of the
/// path is missing, so an edit can never silently do nothing.
pub fn at<'a>(doc: &'a mut toml::Table, path: &str) -> &'a mut toml::Value {
    let mut steps = path.split('.');
    let first = steps.next().expect("a non-empty path");
    let mut value = doc
        .get_mut(first)
        .unwrap_or_else(|| panic!("the config has no `{first}` (in {path})"));
    for step in steps {
        value = match value {
            toml::Value::Table(t) => t
                .get_mut(step)
                .unwrap_or_else(|| panic!("the config has no `{step}` (in {path})")),
            toml::Value::Array(items) => {
                let i: usize = step
                    .parse()
                    .unwrap_or_else(|_| panic!("`{step}` is not an index (in {path})"));
                items
                    .get_mut(i)
                    .unwrap_or_else(|| panic!("the config has no entry {i} (in {path})"))
            }
            other => panic!("`{step}` is inside {other:?}, which is not a table (in {path})"),
        };
    }
    value
}

/// The table at `table_path` (`""` is the top level); panics if it is
/// missing or not a table.
fn table_at<'a>(doc: &'a mut toml::Table, table_path: &str) -> &'a mut toml::Table {
    if table_path.is_empty() {
        return doc;
    }
    match at(doc, table_path) {
        toml::Value::Table(t) => t,
        other => panic!("`{table_path}` is {other:?}, not a table"),
    }
}

/// Sets `key` in the table at `table_path` (which must exist; `""` is the
/// top level) to `value`.
pub fn set(doc: &mut toml::Table, table_path: &str, key: &str, value: impl Into<toml::Value>) {
    table_at(doc, table_path).insert(key.to_string(), value.into());
}

/// Removes `key` from the table at `table_path` (`""` is the top level) and
/// returns its value; panics if the table or the key is missing.
pub fn unset(doc: &mut toml::Table, table_path: &str, key: &str) -> toml::Value {
    table_at(doc, table_path)
        .remove(key)
        .unwrap_or_else(|| panic!("the config has no `{key}` in `{table_path}`"))
}

/// The value at `path` (as for [`at`]) in config text.
pub fn value_at(text: &str, path: &str) -> toml::Value {
    let mut doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"));
    at(&mut doc, path).clone()
}

/// The string at `path` (as for [`at`]) in config text.
pub fn string_at(text: &str, path: &str) -> String {
    match value_at(text, path) {
        toml::Value::String(s) => s,
        other => panic!("`{path}` is {other:?}, not a string"),
    }
}

/// Config text changed by editing its parsed TOML (never by replacing
/// strings, which silently does nothing when the text differs).
pub fn edit(text: &str, change: impl FnOnce(&mut toml::Table)) -> String {
    let mut doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"));
    change(&mut doc);
    toml::to_string(&doc).expect("a table serialises")
}

/// A public catch-all route to `app`.
/// A route at `/api` to the upstream `app` that needs an API key.
pub const KEY_ROUTE: &str = r#"
[[routes]]
path = "/api"
upstream = "app"
auth = ["api_key"]
"#;

pub const PUBLIC_ROOT: &str = r#"
[[routes]]
path = "/"
upstream = "app"
auth = ["none"]
"#;

/// Config text compiled as `portcullis check` does (no store, no
/// fetching): the policy, or every problem as text.
pub fn compile_offline(text: &str) -> Result<portcullis::policy::Policy, String> {
    let loaded = load(
        &Source::Text {
            name: "t.toml".into(),
            text: text.into(),
        },
        &[],
    )
    .map_err(|e| e.to_string())?;
    portcullis::policy::compile(&loaded, &portcullis::runtime::Runtime::offline()).map_err(|e| e.to_string())
}

/// Starts the gateway in this process.
pub async fn start_gateway(text: &str) -> Gateway {
    let loaded = load(
        &Source::Text {
            name: "test.toml".into(),
            text: text.into(),
        },
        &[],
    )
    .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    Gateway::start(loaded)
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

/// A plain-HTTP client. It trusts no certificate authority: loading the
/// system's roots costs ~10 ms per client, and tests make many clients.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only(std::iter::empty())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client that speaks HTTP/2 with prior knowledge (h2c).
pub fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only(std::iter::empty())
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn json(response: reqwest::Response) -> serde_json::Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Asserts a response is an RFC 9457 problem document with this status and
/// a request ID matching the `X-Request-Id` header; returns the document.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let doc = json(response).await;
    assert_eq!(doc["status"], status, "{doc}");
    assert!(doc["title"].as_str().is_some_and(|t| !t.is_empty()), "{doc}");
    assert!(doc["detail"].as_str().is_some_and(|t| !t.is_empty()), "{doc}");
    assert_eq!(doc["request_id"], request_id.as_str(), "{doc}");
    doc
}

/// A problem document as text without its random request ID, for checks
/// that nothing leaked into it: a hex ID can contain any short digit or
/// `a`-`f` string by chance.
pub fn problem_text_without_id(doc: &serde_json::Value) -> String {
    let mut doc = doc.clone();
    if let Some(fields) = doc.as_object_mut() {
        fields.remove("request_id");
    }
    doc.to_string()
}

/// Sends raw bytes and returns everything the server sends back until it
/// closes the connection or goes quiet for a second.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_until_quiet(&mut stream).await
}

/// Everything the server sends on `stream` until it closes the connection
/// or goes quiet for a second.
pub async fn read_until_quiet(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends a GET for `path` on `stream` and reads its whole response
/// (Content-Length framed); `None` if the server closed the connection
/// first.
pub async fn get_on(stream: &mut TcpStream, path: &str) -> Option<String> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n\r\n").as_bytes())
        .await
        .ok()?;
    read_response(stream).await
}

/// Reads one Content-Length framed response; `None` if the connection
/// closed (or failed) before it was complete.
pub async fn read_response(stream: &mut TcpStream) -> Option<String> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer or a close within 10 s")
            .ok()?;
        if n == 0 {
            return None;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Some(text);
            }
        }
    }
}

/// The status code of the first response in a raw answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// Runs a CLI command of the real binary against `config`; returns its
/// stdout, failing the test if the command fails.
pub fn run_cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(binary_path())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A new consumer with one key, made with the CLI; returns the key.
pub fn cli_key(config: &Path, consumer: &str) -> String {
    run_cli(config, &["consumers", "create", consumer]);
    let created: serde_json::Value = serde_json::from_str(&run_cli(
        config,
        &["keys", "create", "--consumer", consumer, "--json"],
    ))
    .unwrap();
    created["key"].as_str().unwrap().to_string()
}

/// The real binary, started with `args`, stdout and stderr captured.
pub struct Binary {
    pub child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    stdout: Arc<Mutex<String>>,
}

pub fn binary_path() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

impl Binary {
    /// Starts `portcullis serve --config <path>` and waits for its
    /// "listening" log line to learn the ephemeral ports.
    pub fn serve(config: &Path, envs: &[(&str, &str)]) -> Binary {
        let mut cmd = Command::new(binary_path());
        cmd.arg("serve").arg("--config").arg(config);
        Self::spawn(cmd, envs)
    }

    pub fn spawn(mut cmd: Command, envs: &[(&str, &str)]) -> Binary {
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the binary starts");
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = stdout.clone();
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    {
                        let mut s = sink.lock().unwrap();
                        s.push_str(&line);
                        s.push('\n');
                    }
                    // After the line is in the output, which a test may
                    // read as soon as `spawn` returns.
                    if line.contains("portcullis is listening") {
                        let _ = tx.send(line.clone());
                    }
                }
            }));
        }
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                // Once the process is gone its pipes close: the readers
                // finish with everything it wrote.
                let _ = child.kill();
                let _ = child.wait();
                for reader in readers {
                    let _ = reader.join();
                }
                panic!(
                    "the binary did not start listening; output:\n{}",
                    stdout.lock().unwrap()
                );
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("the listening line is JSON");
        Binary {
            child,
            public: v["public"].as_str().unwrap().parse().unwrap(),
            admin: v["admin"].as_str().unwrap().parse().unwrap(),
            stdout,
        }
    }

    pub fn output(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (up to `limit`) and returns its status.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for_output(&self, needle: &str, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.output().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A strong admin token for tests.
pub const ADMIN_TOKEN: &str = "Jq3vX9rT0pLm4WcZ8yHs2NbF6gKd1QaE5uRiO7tVxYw";

/// A fresh PostgreSQL schema owned by a fresh role, for one test. The role
/// can be locked out and let back in to simulate a store outage.
pub struct PgDatabase {
    pub url: String,
    base: String,
    role: String,
}

async fn pg_admin(base: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(base)
        .await
        .expect("PostgreSQL is reachable")
}

impl PgDatabase {
    /// `None` (and a `SKIPPED` line) when `PORTCULLIS_TEST_DATABASE_URL` is
    /// not set; under CI (`CI` set) that panics instead (see [`service_url`]).
    pub async fn create(test: &str) -> Option<PgDatabase> {
        use sqlx::Row;
        let base = service_url("PORTCULLIS_TEST_DATABASE_URL", test, "PostgreSQL")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!("t_{now}_{}", portcullis::keys::random_alnum(8));
        let mut conn = pg_admin(&base).await;
        // Schemas and roles from earlier runs (t_<unix seconds>_…) go after an hour.
        let old = sqlx::query("SELECT rolname FROM pg_roles WHERE rolname LIKE 't\\_%'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        for row in old {
            let old: String = row.get(0);
            let born: u64 = old.split('_').nth(1).and_then(|t| t.parse().ok()).unwrap_or(now);
            if now.saturating_sub(born) > 3600 {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {old} CASCADE"))
                    .execute(&mut conn)
                    .await;
                let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {old}"))
                    .execute(&mut conn)
                    .await;
            }
        }
        sqlx::query(&format!("CREATE ROLE {name} LOGIN"))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE SCHEMA {name} AUTHORIZATION {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let (_, rest) = base.split_once("://").expect("a postgres:// URL");
        let host_and_db = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
        let sep = if host_and_db.contains('?') { '&' } else { '?' };
        let url = format!("postgres://{name}@{host_and_db}{sep}options=-c%20search_path%3D{name}");
        Some(PgDatabase {
            url,
            base,
            role: name,
        })
    }

    /// Locks the role out and ends its sessions: the store is unavailable.
    pub async fn stop(&self) {
        let mut conn = pg_admin(&self.base).await;
        sqlx::query(&format!("ALTER ROLE {} NOLOGIN", self.role))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
            .bind(&self.role)
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// Lets the role back in.
    pub async fn start(&self) {
        let mut conn = pg_admin(&self.base).await;
        sqlx::query(&format!("ALTER ROLE {} LOGIN", self.role))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// The PostgreSQL URL for a test (see [`PgDatabase`]).
pub async fn postgres_url(test: &str) -> Option<String> {
    PgDatabase::create(test).await.map(|db| db.url)
}

/// Gateway config with a store at `store_url` (SQLite in a scratch folder
/// when `None`), the admin token set, and `extra` tables.
pub fn config_with_store(environment: &str, upstream: &str, store_url: Option<&str>, extra: &str) -> String {
    let dir = scratch_dir();
    let stores = store_tables(&dir, store_url);
    let token_file = dir.join("admin_token");
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    format!(
        r#"environment = "{environment}"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout = "5s"

[log]
access_log = false

{stores}
[secrets]
admin_token = {{ file = "{token}" }}

[[upstreams]]
name = "app"
targets = ["{upstream}"]
timeout = "2s"
connect_timeout = "1s"

{extra}
"#,
        token = token_file.display()
    )
}

/// The audit events of `kind` (every kind for `None`) an in-process gateway
/// has written so far, oldest first (after flushing its queue).
pub async fn audit_events(
    gw: &portcullis::Gateway,
    kind: Option<&str>,
) -> Vec<portcullis::audit::chain::ChainedEvent> {
    gw.shared().runtime.audit.flush().await;
    store_of(gw)
        .audit_query(&portcullis::store::audit::AuditFilter {
            kind: kind.map(String::from),
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// A config from [`config_with_store`] whose `[secrets]` also reads
/// `session_key` from a fresh file holding `key`.
pub fn with_session_key(text: &str, key: &str) -> String {
    let file = scratch_dir().join("session.key");
    std::fs::write(&file, key).unwrap();
    text.replacen(
        "[secrets]\n",
        &format!("[secrets]\nsession_key = {{ file = \"{}\" }}\n", file.display()),
        1,
    )
}

/// The store a running in-process gateway uses.
pub fn store_of(gw: &portcullis::Gateway) -> portcullis::store::Store {
    gw.shared()
        .runtime
        .store
        .clone()
        .expect("the gateway has a store")
}

/// Creates a consumer (if needed) and a key through the library.
pub async fn make_key(
    gw: &portcullis::Gateway,
    consumer: &str,
    scopes: &[&str],
    expires_in: Option<Duration>,
) -> portcullis::keys::manage::CreatedKey {
    use portcullis::keys::manage::{self, Actor, KeyRequest};
    let store = store_of(gw);
    let audit = gw.shared().runtime.audit.clone();
    if store.find_consumer(consumer).await.unwrap().is_none() {
        manage::create_consumer(&store, &audit, consumer, &serde_json::json!({}), Actor::CLI)
            .await
            .unwrap();
    }
    let request = KeyRequest {
        consumer: consumer.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_in,
        rate_limit: None,
    };
    manage::create_key(&store, &audit, &request, Actor::CLI)
        .await
        .unwrap()
}

/// The value of one sample in a Prometheus text page.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A loopback port that refuses connections for as long as the returned
/// socket lives: bound (so no other test can take it) but not listening.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// The Prometheus page of an admin listener.
pub async fn metrics_text(admin: SocketAddr) -> String {
    client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
