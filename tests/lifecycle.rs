//! The real binary: reload on SIGHUP (good and bad files), graceful drain
//! on SIGTERM, the access log, masked errors in the log, quickstart.

mod common;

use std::time::Duration;

use common::*;

fn write_config(
    dir: &std::path::Path,
    upstream: &str,
    routes: &str,
    environment: &str,
) -> std::path::PathBuf {
    let path = dir.join("portcullis.toml");
    let text = format!(
        r#"environment = "{environment}"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_timeout = "5s"

[store]
url = "sqlite://portcullis.db"

[[upstreams]]
name = "app"
targets = ["{upstream}"]
timeout = "5s"
{routes}"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

const ROUTE_A: &str = "\n[[routes]]\npath = \"/a\"\nupstream = \"app\"\nauth = [\"none\"]\n";
const ROUTE_B: &str = "\n[[routes]]\npath = \"/b\"\nupstream = \"app\"\nauth = [\"none\"]\n";

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_good_file_and_keeps_serving_on_a_bad_one() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &upstream.url(), ROUTE_A, "development");
    let bin = Binary::serve(&path, &[]);
    let base = format!("http://{}", bin.public);

    assert_eq!(
        client().get(format!("{base}/a")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client().get(format!("{base}/b")).send().await.unwrap().status(),
        404
    );

    write_config(
        dir.path(),
        &upstream.url(),
        &format!("{ROUTE_A}{ROUTE_B}"),
        "development",
    );
    bin.signal("HUP");
    assert!(
        bin.wait_for_output("config reloaded", Duration::from_secs(10)),
        "{}",
        bin.output()
    );
    assert_eq!(
        client().get(format!("{base}/b")).send().await.unwrap().status(),
        200
    );

    // A broken file: reported, and the previous policy keeps serving.
    std::fs::write(&path, "[server]\nlisen = 1\n[[routes]]\npath = \"/c\"\n").unwrap();
    bin.signal("HUP");
    assert!(
        bin.wait_for_output("config reload rejected", Duration::from_secs(10)),
        "{}",
        bin.output()
    );
    assert!(bin.output().contains("unknown key `lisen`"), "{}", bin.output());
    assert_eq!(
        client().get(format!("{base}/a")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client().get(format!("{base}/b")).send().await.unwrap().status(),
        200
    );

    let metrics = client()
        .get(format!("http://{}/metrics", bin.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("portcullis_config_reloads_total{result=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_config_reloads_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_refuses_new_ones() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &upstream.url(),
        "\n[[routes]]\npath = \"/\"\nupstream = \"app\"\nauth = [\"none\"]\n",
        "development",
    );
    let mut bin = Binary::serve(&path, &[]);
    let url = format!("http://{}/delay/1500", bin.public);

    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    // Let the request reach the upstream, then ask the gateway to stop.
    wait_until(
        "the request to reach the upstream",
        Duration::from_secs(5),
        || upstream.count() > 0,
    )
    .await;
    bin.signal("TERM");
    // The public listener logs this once it has stopped accepting.
    assert!(
        bin.wait_for_output(
            "\"message\":\"draining in-flight requests\"",
            Duration::from_secs(5)
        ),
        "the listener never reported draining:\n{}",
        bin.output()
    );

    // New connections are refused while the old request finishes.
    assert!(
        tokio::net::TcpStream::connect(bin.public).await.is_err(),
        "the listener still accepts"
    );
    let response = in_flight.await.unwrap().expect("the in-flight request completed");
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["path"], "/delay/1500");

    let status = bin
        .wait(Duration::from_secs(10))
        .expect("the process exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(
        bin.output().contains("draining in-flight requests"),
        "{}",
        bin.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_has_one_line_per_request_and_no_secrets() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &upstream.url(), ROUTE_A, "production");
    let bin = Binary::serve(&path, &[]);
    let base = format!("http://{}", bin.public);

    client()
        .get(format!("{base}/a/../a/items?api_key=query-secret-value"))
        .header("authorization", "Bearer bearer-secret-value")
        .header("cookie", "session=cookie-secret-value")
        .header("x-api-key", "header-secret-value")
        .header("x-request-id", "log-test-1")
        .send()
        .await
        .unwrap();
    // A masked upstream failure: the client sees a problem, the log the original.
    let resp = client()
        .get(format!("{base}/a/../status/500"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "normalised to /status/500, which is not routed"
    );
    let resp = client()
        .get(format!("{base}/a/%2e%2e/a/x"))
        .header("x-request-id", "log-test-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    assert!(
        bin.wait_for_output("log-test-2", Duration::from_secs(5)),
        "{}",
        bin.output()
    );
    let output = bin.output();
    for secret in [
        "query-secret-value",
        "bearer-secret-value",
        "cookie-secret-value",
        "header-secret-value",
    ] {
        assert!(!output.contains(secret), "`{secret}` reached the log:\n{output}");
    }
    let line = output
        .lines()
        .find(|l| l.contains("\"log-test-1\""))
        .unwrap_or_else(|| panic!("no access line:\n{output}"));
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["target"], "access");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["route"], "/a");
    assert_eq!(entry["path"], "/a/items");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["client_ip"], "127.0.0.1");
    assert!(entry["timestamp"].is_string());
    assert!(entry["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(entry["upstream_ms"].as_f64().is_some());
    assert!(entry["consumer"].is_null(), "a public route has no consumer");
    assert_eq!(
        output.matches("\"log-test-1\"").count(),
        1,
        "one line per request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn masked_upstream_errors_are_logged_with_their_request_id() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = "\n[[routes]]\npath = \"/status\"\nupstream = \"app\"\nauth = [\"none\"]\n";
    let path = write_config(dir.path(), &upstream.url(), routes, "production");
    let bin = Binary::serve(&path, &[]);
    let resp = client()
        .get(format!("http://{}/status/500", bin.public))
        .header("x-request-id", "masked-1")
        .send()
        .await
        .unwrap();
    let doc = assert_problem(resp, 500).await;
    assert!(!doc.to_string().contains("Traceback"));
    assert!(bin.wait_for_output("masked upstream error response", Duration::from_secs(5)));
    let output = bin.output();
    let line = output
        .lines()
        .find(|l| l.contains("masked upstream error response"))
        .unwrap();
    assert!(line.contains("masked-1") && line.contains("Traceback"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn production_refuses_to_start_with_a_weak_secret() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &upstream.url(), ROUTE_A, "production");
    let text =
        std::fs::read_to_string(&path).unwrap() + "\n[secrets]\nadmin_token = { env = \"T_WEAK_ADMIN\" }\n";
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(binary_path())
        .args(["serve", "--config"])
        .arg(&path)
        .env("T_WEAK_ADMIN", "your-secret-key-here-change-in-production")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secrets.admin_token") && err.contains("placeholder"),
        "{err}"
    );
    assert!(
        !err.contains("your-secret-key-here"),
        "the secret itself is never printed: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_serves_the_demo_with_one_command() {
    let mut cmd = std::process::Command::new(binary_path());
    cmd.args([
        "quickstart",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut text = String::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.contains("Ctrl-C stops") {
                let _ = tx.send(text.clone());
            }
        }
    });
    let banner = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("quickstart printed its banner");
    let public = banner
        .split("the gateway is on http://")
        .nth(1)
        .and_then(|s| s.split(|c: char| c == ',' || c.is_whitespace()).next())
        .unwrap()
        .to_string();
    // Every curl line it prints works as described.
    let resp = client()
        .get(format!("http://{public}/hello?name=world"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let echo = json(resp).await;
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    let answer = raw(
        public.parse().unwrap(),
        b"GET /api/../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.contains("\"path\": \"/admin\""), "{answer}");
    assert_problem(
        client()
            .get(format!("http://{public}/files%2fsecret"))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    let resp = client()
        .request(reqwest::Method::TRACE, format!("http://{public}/"))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 405).await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_never_reach_the_log_through_a_masked_upstream_body() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = r#"
[[routes]]
path = "/api"
upstream = "app"
auth = ["api_key"]
api_key_query = "api_key"
"#;
    let path = write_config(dir.path(), &upstream.url(), routes, "production");
    let key = cli_key(&path, "echo");
    let bin = Binary::serve(&path, &[]);
    // The upstream answers 500 with everything it received: the target
    // (with the key in the query) and every header.
    let resp = client()
        .get(format!("http://{}/api/echo-error?api_key={key}&q=1", bin.public))
        .header("authorization", "Basic YWRtaW46czNjcmV0LXBhc3N3b3Jk") // admin:s3cret-password
        .header("cookie", "session=SESSION-COOKIE-VALUE; theme=dark")
        .header("x-request-id", "redact-1")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 500).await;
    assert!(
        upstream.last().target.contains(&key),
        "the key reached the upstream in the query, as the route allows"
    );
    assert!(bin.wait_for_output("masked upstream error response", Duration::from_secs(5)));
    let output = bin.output();
    let line = output
        .lines()
        .find(|l| l.contains("masked upstream error response"))
        .unwrap();
    assert!(line.contains("redact-1") && line.contains("[REDACTED]"), "{line}");
    for secret in [
        key.as_str(),
        "YWRtaW46czNjcmV0LXBhc3N3b3Jk",
        "s3cret-password",
        "SESSION-COOKIE-VALUE",
    ] {
        assert!(!line.contains(secret), "{secret} in {line}");
        assert!(!output.contains(secret), "{secret} is somewhere in the output");
    }
    assert!(line.contains("q=1"), "the rest of the body is kept: {line}");
}
