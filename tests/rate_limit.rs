//! Rate limiting through the real server: exact counts under concurrency,
//! both backends, two gateways sharing one Redis, Retry-After, each key
//! kind (and attempts to dodge it), headers, audit sampling, and Redis
//! killed and restarted under each `on_outage` mode.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A `[redis]` table with a prefix of its own, so tests never share counters.
fn redis_table(url: &str, on_outage: &str) -> String {
    format!(
        "[redis]\nurl = \"{url}\"\non_outage = \"{on_outage}\"\nprefix = \"t{}\"\ntimeout = \"200ms\"\n",
        portcullis::keys::random_alnum(10)
    )
}

async fn start(upstream: &TestUpstream, extra: &str) -> portcullis::Gateway {
    start_gateway(&config_with_store("development", &upstream.url(), None, extra)).await
}

/// Fires `total` GETs with `concurrency` clients; returns the status counts.
async fn flood(
    addrs: &[SocketAddr],
    path: &str,
    total: usize,
    concurrency: usize,
    headers: &[(&str, &str)],
) -> (usize, usize, usize) {
    let client = client();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = next.clone();
        let addrs = addrs.to_vec();
        let path = path.to_string();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut counts = (0, 0, 0);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return counts;
                }
                let mut req = client.get(format!("http://{}{path}", addrs[i % addrs.len()]));
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                match req.send().await.unwrap().status().as_u16() {
                    200 => counts.0 += 1,
                    429 => counts.1 += 1,
                    _ => counts.2 += 1,
                }
            }
        }));
    }
    let mut sum = (0, 0, 0);
    for t in tasks {
        let c = t.await.unwrap();
        sum = (sum.0 + c.0, sum.1 + c.1, sum.2 + c.2);
    }
    sum
}

const HUNDRED_AN_HOUR: &str = r#"
[[routes]]
path = "/api"
upstream = "app"
auth = ["none"]
rate_limit = ["100/hour per ip"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn exactly_the_limit_passes_under_concurrency_in_process() {
    let upstream = TestUpstream::start().await;
    let gw = start(&upstream, HUNDRED_AN_HOUR).await;
    let counts = flood(&[gw.public_addr()], "/api/x", 300, 50, &[]).await;
    assert_eq!(counts, (100, 200, 0));
    assert_eq!(upstream.count(), 100);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_the_limit_passes_under_concurrency_with_redis() {
    let Some(url) = redis_url("exactly_the_limit_passes_under_concurrency_with_redis") else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let gw = start(
        &upstream,
        &format!("{}\n{HUNDRED_AN_HOUR}", redis_table(&url, "closed")),
    )
    .await;
    let counts = flood(&[gw.public_addr()], "/api/x", 300, 50, &[]).await;
    assert_eq!(counts, (100, 200, 0));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_sharing_redis_enforce_one_limit() {
    let Some(url) = redis_url("two_gateways_sharing_redis_enforce_one_limit") else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let redis = redis_table(&url, "closed");
    let a = start(&upstream, &format!("{redis}\n{HUNDRED_AN_HOUR}")).await;
    let b = start(&upstream, &format!("{redis}\n{HUNDRED_AN_HOUR}")).await;
    let counts = flood(&[a.public_addr(), b.public_addr()], "/api/x", 300, 50, &[]).await;
    assert_eq!(
        counts,
        (100, 200, 0),
        "the two gateways together admit the limit once"
    );
    a.shutdown().await;
    b.shutdown().await;
}

async fn retry_after_is_honest(extra: &str) {
    let upstream = TestUpstream::start().await;
    let gw = start(
        &upstream,
        &format!("{extra}\n[[routes]]\npath = \"/slow\"\nupstream = \"app\"\nauth = [\"none\"]\nrate_limit = [\"1 per 2 seconds\"]\n"),
    )
    .await;
    let url = format!("http://{}/slow", gw.public_addr());
    let first = client().get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-remaining"], "0");
    let refused = client().get(&url).send().await.unwrap();
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(
        refused.headers()["ratelimit"],
        format!("\"ip-2s\";r=0;t={retry_after}").as_str()
    );
    let doc = assert_problem(refused, 429).await;
    assert_eq!(doc["title"], "Too Many Requests");
    // Waiting what Retry-After says is enough (a real sleep: the window
    // must pass).
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honest_in_process() {
    retry_after_is_honest("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honest_with_redis() {
    let Some(url) = redis_url("retry_after_is_honest_with_redis") else {
        return;
    };
    retry_after_is_honest(&redis_table(&url, "closed")).await;
}

const KINDS: &str = r#"
[api_keys]
default_rate_limit = "50/hour"

[[routes]]
id = "by-ip"
path = "/ip"
upstream = "app"
auth = ["none"]
rate_limit = ["3/hour per ip"]

[[routes]]
id = "by-route"
path = "/route"
upstream = "app"
auth = ["none"]
rate_limit = ["3/hour per route"]

[[routes]]
id = "by-key"
path = "/key"
upstream = "app"
auth = ["api_key"]
rate_limit = ["3/hour per key"]

[[routes]]
id = "by-consumer"
path = "/consumer"
upstream = "app"
auth = ["api_key"]
rate_limit = ["3/hour per consumer"]

[[routes]]
id = "by-header"
path = "/tenant"
upstream = "app"
auth = ["none"]
rate_limit = ["3/hour per header:X-Tenant"]

[[routes]]
id = "defaults"
path = "/defaults"
upstream = "app"
auth = ["none"]

[[routes]]
id = "unlimited"
path = "/unlimited"
upstream = "app"
auth = ["none"]
rate_limit = []

[rate_limits]
default = ["4/hour per ip", "1000/day per ip"]
"#;

async fn passes(gw: &portcullis::Gateway, path: &str, headers: &[(&str, &str)]) -> usize {
    flood(&[gw.public_addr()], path, 10, 1, headers).await.0
}

async fn each_key_kind(extra: &str) {
    let upstream = TestUpstream::start().await;
    let gw = start(&upstream, &format!("{extra}\n{KINDS}")).await;

    // ip: a spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let mut passed = 0;
    for i in 0..6 {
        let resp = client()
            .get(format!("http://{}/ip", gw.public_addr()))
            .header("x-forwarded-for", format!("10.9.8.{i}"))
            .send()
            .await
            .unwrap();
        passed += (resp.status() == 200) as usize;
    }
    assert_eq!(passed, 3, "per ip");

    // route: every spelling of one route is one counter.
    let mut passed = 0;
    for path in [
        "/route/a",
        "//route/a",
        "/route/./a",
        "/x/../route/a",
        "/route/%61",
        "/route/a?b=c",
    ] {
        let answer = raw(
            gw.public_addr(),
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        passed += (raw_status(&answer) == 200) as usize;
    }
    assert_eq!(passed, 3, "per route, across path variants");

    // key: each key counts alone.
    let k1 = make_key(&gw, "c1", &[], None).await.key;
    let k2 = make_key(&gw, "c1", &[], None).await.key;
    assert_eq!(passes(&gw, "/key", &[("x-api-key", &k1)]).await, 3);
    assert_eq!(passes(&gw, "/key", &[("x-api-key", &k2)]).await, 3);

    // consumer: two keys of one consumer share one counter.
    let k3 = make_key(&gw, "c2", &[], None).await.key;
    let k4 = make_key(&gw, "c2", &[], None).await.key;
    assert_eq!(passes(&gw, "/consumer", &[("x-api-key", &k3)]).await, 3);
    assert_eq!(passes(&gw, "/consumer", &[("x-api-key", &k4)]).await, 0);

    // header: per tenant; without the header, per client IP.
    assert_eq!(passes(&gw, "/tenant", &[("x-tenant", "acme")]).await, 3);
    assert_eq!(passes(&gw, "/tenant", &[("x-tenant", "globex")]).await, 3);
    assert_eq!(passes(&gw, "/tenant", &[]).await, 3);

    // Defaults apply where a route sets none; `rate_limit = []` opts out.
    assert_eq!(passes(&gw, "/defaults", &[]).await, 4);
    assert_eq!(passes(&gw, "/unlimited", &[]).await, 10);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_key_kind_in_process() {
    each_key_kind("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_key_kind_with_redis() {
    let Some(url) = redis_url("each_key_kind_with_redis") else {
        return;
    };
    each_key_kind(&redis_table(&url, "closed")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_client_counts_alone() {
    let upstream = TestUpstream::start().await;
    let text = config_with_store(
        "development",
        &upstream.url(),
        None,
        "[[routes]]\npath = \"/\"\nupstream = \"app\"\nauth = [\"none\"]\nrate_limit = [\"2/hour per ip\"]\n",
    );
    let text = edit(&text, |doc| {
        set(doc, "server", "trusted_proxies", vec!["127.0.0.1"])
    });
    let gw = start_gateway(&text).await;
    assert_eq!(passes(&gw, "/", &[("x-forwarded-for", "203.0.113.1")]).await, 2);
    assert_eq!(passes(&gw, "/", &[("x-forwarded-for", "203.0.113.2")]).await, 2);
    // IPv6 clients in one /64 share a counter.
    assert_eq!(
        passes(&gw, "/", &[("x-forwarded-for", "2001:db8:0:1::1")]).await,
        2
    );
    assert_eq!(
        passes(&gw, "/", &[("x-forwarded-for", "2001:db8:0:1::2")]).await,
        0
    );
    assert_eq!(
        passes(&gw, "/", &[("x-forwarded-for", "2001:db8:0:2::1")]).await,
        2
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keys_own_limit_overrides_the_routes_per_key_limit() {
    let upstream = TestUpstream::start().await;
    let gw = start(&upstream, KINDS).await;
    let store = store_of(&gw);
    let audit = gw.shared().runtime.audit.clone();
    use portcullis::keys::manage::{self, Actor, KeyRequest};
    manage::create_consumer(&store, &audit, "premium", &serde_json::json!({}), Actor::CLI)
        .await
        .unwrap();
    let request = |limit: &str| KeyRequest {
        consumer: "premium".into(),
        rate_limit: Some(limit.into()),
        ..Default::default()
    };
    let generous = manage::create_key(&store, &audit, &request("5/hour"), Actor::CLI)
        .await
        .unwrap();
    let stingy = manage::create_key(&store, &audit, &request("1/hour"), Actor::CLI)
        .await
        .unwrap();
    // The route says 3 per key; these keys' own limits say 5 and 1.
    assert_eq!(passes(&gw, "/key", &[("x-api-key", &generous.key)]).await, 5);
    assert_eq!(passes(&gw, "/key", &[("x-api-key", &stingy.key)]).await, 1);
    // A key's own limit counts across routes: the 1/hour key is spent.
    let resp = client()
        .get(format!("http://{}/consumer", gw.public_addr()))
        .header("x-api-key", &stingy.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_on_allowed_and_refused_responses_and_sampled_audit() {
    let upstream = TestUpstream::start().await;
    let gw = start(&upstream, KINDS).await;
    let url = format!("http://{}/defaults", gw.public_addr());
    let resp = client().get(&url).send().await.unwrap();
    let h = resp.headers();
    assert_eq!(
        h["ratelimit-policy"],
        "\"ip-3600s\";q=4;w=3600, \"ip-86400s\";q=1000;w=86400"
    );
    assert_eq!(h["ratelimit"], "\"ip-3600s\";r=3;t=900");
    assert_eq!(h["x-ratelimit-limit"], "4");
    assert_eq!(h["x-ratelimit-remaining"], "3");
    assert_eq!(h["x-ratelimit-reset"], "900");
    for _ in 0..53 {
        client().get(&url).send().await.unwrap();
    }
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp.headers().contains_key("ratelimit-policy"));

    gw.shared().runtime.audit.flush().await;
    let events = store_of(&gw)
        .audit_query(&portcullis::store::audit::AuditFilter {
            kind: Some("ratelimit.exceeded".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "51 refusals of one counter make one audit event");
    assert_eq!(events[0].event.details["limit"], "4/hour per ip");
    assert_eq!(events[0].event.details["subject"], "127.0.0.1");
    let metrics = metrics_text(gw.admin_addr()).await;
    assert_eq!(
        metric(
            &metrics,
            "portcullis_ratelimit_decisions_total{result=\"limited\",route=\"defaults\"}"
        ),
        51.0,
        "{metrics}"
    );
    gw.shutdown().await;
}

/// A Redis server of the test's own, on a free port, so it can be killed.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> Option<OwnRedis> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(OwnRedis { child, port })
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn readyz(gw: &portcullis::Gateway) -> (u16, serde_json::Value) {
    let resp = client()
        .get(format!("http://{}/readyz", gw.admin_addr()))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, json(resp).await)
}

async fn outage(mode: &str) {
    if redis_url(&format!("redis_outage_{mode}")).is_none() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(redis) = OwnRedis::start(port) else {
        skip_or_fail(
            &format!("redis_outage_{mode}"),
            "redis-server could not be started",
        );
        return;
    };
    let upstream = TestUpstream::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let routes = "[[routes]]\npath = \"/api\"\nupstream = \"app\"\nauth = [\"none\"]\nrate_limit = [\"20/hour per ip\"]\n";
    let gw = start(&upstream, &format!("{}\n{routes}", redis_table(&url, mode))).await;
    let addrs = [gw.public_addr()];
    assert_eq!(flood(&addrs, "/api", 10, 5, &[]).await, (10, 0, 0));
    assert_eq!(readyz(&gw).await.1["checks"]["redis"]["status"], "ok");

    // Redis dies mid-load: once the load has begun to pass.
    let load = tokio::spawn(async move { flood(&addrs, "/api", 100, 5, &[]).await });
    wait_until("the load to reach the upstream", Duration::from_secs(5), || {
        upstream.count() > 10
    })
    .await;
    redis.kill();
    let during = load.await.unwrap();
    let after = flood(&[gw.public_addr()], "/api", 30, 5, &[]).await;
    let (status, ready) = readyz(&gw).await;
    assert_eq!(ready["checks"]["redis"]["status"], "degraded", "{ready}");
    match mode {
        // Each instance enforces the full limit on its own: the local
        // counter starts fresh, so at most 20 more pass.
        "local" => {
            assert_eq!(status, 200);
            assert!(after.0 <= 20 && after.1 >= 10 && after.2 == 0, "{after:?}");
            assert!(during.0 + after.0 <= 10 + 20 + 20, "{during:?} {after:?}");
        }
        "open" => {
            assert_eq!(status, 200);
            assert_eq!(after, (30, 0, 0));
        }
        "closed" => {
            assert_eq!(status, 503);
            assert_eq!(after, (0, 0, 30));
        }
        _ => unreachable!(),
    }

    // Redis comes back: the gateway switches back on its own, quickly.
    let back = OwnRedis::start(port).expect("redis restarts on the same port");
    let restarted = Instant::now();
    loop {
        let (status, ready) = readyz(&gw).await;
        if ready["checks"]["redis"]["status"] == "ok" {
            assert_eq!(status, 200);
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "Redis was not used again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{mode}: Redis in use again {:?} after it returned",
        restarted.elapsed()
    );
    // A fresh Redis has no counters: 20 pass again, then the limit holds.
    assert_eq!(flood(&[gw.public_addr()], "/api", 30, 5, &[]).await, (20, 10, 0));

    gw.shared().runtime.audit.flush().await;
    let events = store_of(&gw).audit_after(0, 1000).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.kind.as_str()).collect();
    assert!(
        kinds.contains(&"ratelimit.degraded") && kinds.contains(&"ratelimit.restored"),
        "{kinds:?}"
    );
    let metrics = metrics_text(gw.admin_addr()).await;
    assert_eq!(
        metric(
            &metrics,
            "portcullis_ratelimit_backend_switches_total{direction=\"degraded\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "portcullis_ratelimit_backend_switches_total{direction=\"restored\"}"
        ),
        1.0
    );
    gw.shutdown().await;
    back.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_falls_back_to_local_limits() {
    outage("local").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_opens_when_asked() {
    outage("open").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_closes_when_asked() {
    outage("closed").await;
}
