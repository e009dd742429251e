//! Upstream resilience: balancing, passive health (circuit breakers),
//! active health checks, retries and their budget, per-target connection
//! caps. Every backend is a real HTTP server on a loopback port; "killing"
//! one closes its listener and every connection it holds.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A backend whose answers a test can change while it runs, and kill.
struct Backend {
    addr: SocketAddr,
    /// Requests other than the health check.
    hits: Arc<AtomicUsize>,
    /// The status answered to them.
    status: Arc<AtomicU16>,
    /// The status `/healthz` answers.
    health: Arc<AtomicU16>,
    /// How long each answer takes.
    delay_ms: Arc<AtomicU64>,
    server: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let health = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (h, s, hc, d) = (hits.clone(), status.clone(), health.clone(), delay_ms.clone());
        let server = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every
            // connection: the backend is gone, as a killed process would be.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, s, hc, d) = (h.clone(), s.clone(), hc.clone(), d.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (h, s, hc, d) = (h.clone(), s.clone(), hc.clone(), d.clone());
                        async move {
                            let status = if req.uri().path() == "/healthz" {
                                hc.load(Ordering::SeqCst)
                            } else {
                                h.fetch_add(1, Ordering::SeqCst);
                                s.load(Ordering::SeqCst)
                            };
                            let _ = req.into_body().collect().await;
                            let delay = d.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            let mut response = http::Response::new(Full::new(Bytes::from_static(b"ok")));
                            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Backend {
            addr,
            hits,
            status,
            health,
            delay_ms,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Closes the listener and every open connection, at once.
    async fn kill(&self) {
        self.server.abort();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Config for upstream `app` over `targets`, with `upstream_extra` keys in
/// the upstream's table (TOML inline) and a public catch-all route.
fn config_for(targets: &[String], upstream_extra: &str, route_extra: &str) -> String {
    let base = config("development", "http://127.0.0.1:9", "");
    let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    let extra: toml::Table = upstream_extra.parse().unwrap();
    let route: toml::Table = format!("path = \"/\"\nupstream = \"app\"\nauth = [\"none\"]\n{route_extra}")
        .parse()
        .unwrap();
    edit(&base, |doc| {
        let list: toml::Value = format!("t = [{}]", targets.join(", "))
            .parse::<toml::Table>()
            .unwrap()
            .remove("t")
            .unwrap();
        *at(doc, "upstreams.0.targets") = list;
        for (k, v) in extra {
            set(doc, "upstreams.0", &k, v);
        }
        doc.insert("routes".into(), toml::Value::Array(vec![route.into()]));
    })
}

async fn get(base: &str, path: &str) -> reqwest::Response {
    client().get(format!("{base}{path}")).send().await.unwrap()
}

/// `n` concurrent `GET /slow`s, each giving its status.
fn spawn_gets(base: &str, n: usize) -> Vec<tokio::task::JoinHandle<reqwest::StatusCode>> {
    (0..n)
        .map(|_| {
            let base = base.to_string();
            tokio::spawn(async move { get(&base, "/slow").await.status() })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_one_of_two_targets_under_load_fails_no_idempotent_request_after_the_ejection() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let dir = scratch_dir();
    let path = dir.join("portcullis.toml");
    let text = config_for(
        &[a.url(), b.url()],
        "passive_health = { max_failures = 3, ejection = \"30s\" }",
        "",
    );
    std::fs::write(&path, text).unwrap();
    let bin = Binary::serve(&path, &[]);
    let base = format!("http://{}", bin.public);
    let admin = bin.admin;

    // The moment the first ejection shows in the metrics.
    let ejected_at: Arc<std::sync::Mutex<Option<Instant>>> = Default::default();
    let watcher = {
        let ejected_at = ejected_at.clone();
        tokio::spawn(async move {
            loop {
                let text = metrics_text(admin).await;
                let ejections: f64 = text
                    .lines()
                    .filter(|l| l.starts_with("portcullis_upstream_ejections_total{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                if ejections > 0.0 {
                    *ejected_at.lock().unwrap() = Some(Instant::now());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // A bounded load: 8 clients for 3 s, one target killed after 1 s.
    let start = Instant::now();
    let deadline = start + Duration::from_secs(3);
    let mut load = JoinSet::new();
    for _ in 0..8 {
        let base = base.clone();
        load.spawn(async move {
            let c = client();
            let mut results = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let status = match c.get(format!("{base}/item")).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                results.push((sent, status));
            }
            results
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b_before_kill = b.hits();
    let killed_at = Instant::now();
    b.kill().await;
    let mut results = Vec::new();
    while let Some(r) = load.join_next().await {
        results.extend(r.unwrap());
    }
    let ejected_at = tokio::time::timeout(Duration::from_secs(2), watcher)
        .await
        .ok()
        .and_then(|_| *ejected_at.lock().unwrap())
        .expect("the dead target was ejected");
    assert!(
        ejected_at >= killed_at,
        "ejected before the kill:\n{}",
        bin.output()
    );

    let after_ejection: Vec<_> = results.iter().filter(|(sent, _)| *sent > ejected_at).collect();
    let failed: Vec<_> = after_ejection.iter().filter(|(_, s)| *s != 200).collect();
    assert!(
        after_ejection.len() > 100,
        "the load went on: {}",
        after_ejection.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed after the ejection",
        failed.len(),
        after_ejection.len()
    );
    // Retries on the live target hide even the requests in flight at the kill.
    let total_failed = results.iter().filter(|(_, s)| *s != 200).count();
    assert!(b_before_kill > 50, "both targets served before the kill");
    assert!(a.hits() > b_before_kill, "the live target took the rest");

    let text = metrics_text(admin).await;
    let b_label = b.addr.to_string();
    assert_eq!(
        metric(
            &text,
            &format!("portcullis_upstream_breaker_state{{target=\"{b_label}\",upstream=\"app\"}}")
        ),
        1.0,
        "{text}"
    );
    let ready = json(get(&format!("http://{admin}"), "/readyz").await).await;
    let targets = ready["checks"]["upstream:app"]["targets"]
        .as_array()
        .unwrap()
        .clone();
    let dead = targets.iter().find(|t| t["target"] == b_label.as_str()).unwrap();
    assert_eq!(dead["breaker"], "open", "{ready}");
    assert_eq!(
        ready["checks"]["upstream:app"]["status"], "ok",
        "one target is enough"
    );
    eprintln!(
        "{} requests, {} failed in all ({} after the ejection, {} ms after the kill)",
        results.len(),
        total_failed,
        failed.len(),
        (ejected_at - killed_at).as_millis()
    );
}

/// Accepts connections, reads whatever request arrives, and closes the
/// connection without answering; counts the requests by method.
async fn hangs_up_after_reading() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&got);
                log.lock()
                    .unwrap()
                    .push(text.split(' ').next().unwrap_or("").to_string());
                // Dropped: the connection closes with no response.
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_idempotent_request_is_never_retried_and_an_idempotent_one_is() {
    let (one, seen_one) = hangs_up_after_reading().await;
    let (two, seen_two) = hangs_up_after_reading().await;
    let targets = [format!("http://{one}"), format!("http://{two}")];
    let gw = start_gateway(&config_for(
        &targets,
        "passive_health = { max_failures = 0 }\nretries = { attempts = 1 }",
        "",
    ))
    .await;
    let base = format!("http://{}", gw.public_addr());
    let seen = || {
        let mut all = seen_one.lock().unwrap().clone();
        all.extend(seen_two.lock().unwrap().iter().cloned());
        all
    };

    let resp = client()
        .post(format!("{base}/pay"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 502).await;
    assert_eq!(
        seen(),
        ["POST"],
        "a POST the upstream may have acted on is sent once"
    );
    let resp = client()
        .patch(format!("{base}/pay"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 502).await;
    assert_eq!(seen().iter().filter(|m| *m == "PATCH").count(), 1);

    let resp = get(&base, "/read").await;
    assert_problem(resp, 502).await;
    let gets = seen().iter().filter(|m| *m == "GET").count();
    assert_eq!(gets, 2, "a GET is tried again once");
    assert_eq!(
        (
            seen_one.lock().unwrap().iter().filter(|m| *m == "GET").count(),
            seen_two.lock().unwrap().iter().filter(|m| *m == "GET").count()
        ),
        (1, 1),
        "on the other target"
    );
    let resp = client().delete(format!("{base}/doc")).send().await.unwrap();
    assert_problem(resp, 502).await;
    assert_eq!(
        seen().iter().filter(|m| *m == "DELETE").count(),
        2,
        "DELETE is idempotent"
    );
    // A streamed body is gone once sent: even a PUT's is not sent twice.
    let resp = client()
        .put(format!("{base}/doc"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 502).await;
    assert_eq!(seen().iter().filter(|m| *m == "PUT").count(), 1);
    gw.shutdown().await;

    // A route that opts in retries a POST too (one without a body, or
    // with one already in memory: a streamed body is not sent twice).
    let gw = start_gateway(&config_for(
        &targets,
        "passive_health = { max_failures = 0 }",
        "retry_non_idempotent = true",
    ))
    .await;
    let resp = client()
        .post(format!("http://{}/pay", gw.public_addr()))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 502).await;
    assert_eq!(seen().iter().filter(|m| *m == "POST").count(), 3);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connection_sends_any_method_to_the_other_target() {
    let live = Backend::start().await;
    let (_refusing, port) = refusing_port();
    let targets = [format!("http://127.0.0.1:{port}"), live.url()];
    let gw = start_gateway(&config_for(&targets, "passive_health = { max_failures = 0 }", "")).await;
    let base = format!("http://{}", gw.public_addr());
    for _ in 0..6 {
        let resp = client()
            .post(format!("{base}/pay"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the refused target never saw the request");
    }
    assert_eq!(live.hits(), 6);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opens_fails_fast_half_opens_and_closes() {
    let backend = Backend::start().await;
    backend.answer(503);
    let gw = start_gateway(&config_for(
        &[backend.url()],
        "passive_health = { max_failures = 3, ejection = \"400ms\" }\nretries = { attempts = 0 }",
        "",
    ))
    .await;
    let base = format!("http://{}", gw.public_addr());
    let admin = format!("http://{}", gw.admin_addr());
    let state = |text: &str| {
        metric(
            text,
            &format!(
                "portcullis_upstream_breaker_state{{target=\"{}\",upstream=\"app\"}}",
                backend.addr
            ),
        )
    };
    for _ in 0..3 {
        assert_eq!(get(&base, "/x").await.status(), 503);
    }
    assert_eq!(backend.hits(), 3);
    // Open: the gateway answers at once, without asking the target.
    let started = Instant::now();
    let resp = get(&base, "/x").await;
    let fast = started.elapsed();
    assert_eq!(resp.headers()["retry-after"], "1");
    let doc = assert_problem(resp, 503).await;
    assert!(doc["detail"].as_str().unwrap().contains("unavailable"), "{doc}");
    assert_eq!(backend.hits(), 3, "an open breaker sends nothing");
    assert_eq!(state(&metrics_text(gw.admin_addr()).await), 1.0);
    let ready = json(get(&admin, "/readyz").await).await;
    assert_eq!(ready["checks"]["upstream:app"]["targets"][0]["breaker"], "open");
    eprintln!("answered with the breaker open in {fast:?}");

    // The cool-down passes; the trial fails: open again, for twice as long.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(get(&base, "/x").await.status(), 503);
    assert_eq!(backend.hits(), 4, "one trial went through");
    assert_eq!(state(&metrics_text(gw.admin_addr()).await), 1.0);
    tokio::time::sleep(Duration::from_millis(450)).await;
    get(&base, "/x").await;
    assert_eq!(backend.hits(), 4, "800 ms this time");

    // The target recovers; the next trial closes the breaker.
    backend.answer(200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(&base, "/x").await.status(), 200);
    assert_eq!(state(&metrics_text(gw.admin_addr()).await), 0.0);
    for _ in 0..5 {
        assert_eq!(get(&base, "/x").await.status(), 200);
    }
    let text = metrics_text(gw.admin_addr()).await;
    assert_eq!(
        metric(
            &text,
            &format!(
                "portcullis_upstream_ejections_total{{target=\"{}\",upstream=\"app\"}}",
                backend.addr
            )
        ),
        2.0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retry_budget_holds_under_a_full_outage() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    a.answer(503);
    b.answer(503);
    // No ejection, so every request reaches a target: only the budget
    // stands between an outage and retries multiplying it.
    let gw = start_gateway(&config_for(
        &[a.url(), b.url()],
        "passive_health = { max_failures = 0 }\nretries = { attempts = 3, budget = 0.2, min_retries = 5 }",
        "",
    ))
    .await;
    let base = format!("http://{}", gw.public_addr());
    let requests = 300;
    let mut load = JoinSet::new();
    for _ in 0..4 {
        let base = base.clone();
        load.spawn(async move {
            let c = client();
            for _ in 0..requests / 4 {
                let status = c.get(format!("{base}/x")).send().await.unwrap().status();
                assert_eq!(status, 503);
            }
        });
    }
    while let Some(r) = load.join_next().await {
        r.unwrap();
    }
    let reached = a.hits() + b.hits();
    let bound = requests + requests / 5 + 5;
    assert!(reached > requests, "some retries were sent: {reached}");
    assert!(
        reached <= bound,
        "{reached} upstream requests for {requests}: more than {bound}"
    );
    let text = metrics_text(gw.admin_addr()).await;
    let refused = metric(
        &text,
        "portcullis_upstream_retries_total{outcome=\"budget_exhausted\",upstream=\"app\"}",
    );
    assert!(refused > 0.0, "{text}");
    eprintln!("{requests} requests reached the targets {reached} times (bound {bound})");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_target_answers_503_with_retry_after_and_the_queue_is_served_in_time() {
    let slow = Backend::start().await;
    slow.delay_ms.store(600, Ordering::SeqCst);
    let gw = start_gateway(&config_for(
        &[slow.url()],
        "max_connections = 2\nqueue_timeout = \"100ms\"",
        "",
    ))
    .await;
    let base = format!("http://{}", gw.public_addr());
    let in_flight = spawn_gets(&base, 2);
    wait_until(
        "both slow requests to be in flight",
        Duration::from_secs(2),
        || slow.hits() == 2,
    )
    .await;
    let resp = get(&base, "/third").await;
    assert!(
        in_flight.iter().all(|t| !t.is_finished()),
        "refused after the queue timeout, not once a connection was free"
    );
    assert_eq!(resp.headers()["retry-after"], "1");
    let doc = assert_problem(resp, 503).await;
    assert!(doc["detail"].as_str().unwrap().contains("busy"), "{doc}");
    assert_eq!(slow.hits(), 2, "the third request never reached the target");
    for task in in_flight {
        assert_eq!(task.await.unwrap(), 200);
    }
    gw.shutdown().await;

    // With a queue timeout longer than the wait, the third is served.
    let gw = start_gateway(&config_for(
        &[slow.url()],
        "max_connections = 1\nqueue_timeout = \"3s\"",
        "",
    ))
    .await;
    let base = format!("http://{}", gw.public_addr());
    for task in spawn_gets(&base, 3) {
        assert_eq!(task.await.unwrap(), 200, "waited for the one connection");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_and_least_outstanding_share_the_load() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let weighted = format!(
        "[[upstreams]]\nname = \"w\"\ntargets = [{{ url = \"{}\", weight = 3 }}, {{ url = \"{}\", weight = 1 }}]\nbalance = \"weighted\"",
        a.url(),
        b.url()
    );
    let text = config_for(&[a.url(), b.url()], "", "");
    let text = edit(&text, |doc| {
        let extra: toml::Table = weighted.parse().unwrap();
        let upstream = extra["upstreams"].as_array().unwrap()[0].clone();
        at(doc, "upstreams").as_array_mut().unwrap().push(upstream);
        let route: toml::Table = "path = \"/w\"\nupstream = \"w\"\nauth = [\"none\"]"
            .parse()
            .unwrap();
        at(doc, "routes").as_array_mut().unwrap().push(route.into());
    });
    let gw = start_gateway(&text).await;
    let base = format!("http://{}", gw.public_addr());
    for _ in 0..40 {
        assert_eq!(get(&base, "/w/x").await.status(), 200);
    }
    assert_eq!((a.hits(), b.hits()), (30, 10), "weights 3 and 1");
    gw.shutdown().await;

    // Least outstanding: a slow target holds its requests, so the fast one
    // takes most of them; round robin would split them evenly.
    let (slow, fast) = (Backend::start().await, Backend::start().await);
    slow.delay_ms.store(400, Ordering::SeqCst);
    let gw = start_gateway(&config_for(
        &[slow.url(), fast.url()],
        "balance = \"least_outstanding\"",
        "",
    ))
    .await;
    let base = format!("http://{}", gw.public_addr());
    let mut load = JoinSet::new();
    for _ in 0..20 {
        let base = base.clone();
        load.spawn(async move { get(&base, "/x").await.status() });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while let Some(status) = load.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert!(fast.hits() >= 15, "slow {} fast {}", slow.hits(), fast.hits());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn active_health_checks_take_a_target_out_and_bring_it_back() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let gw = start_gateway(&config_for(
        &[a.url(), b.url()],
        "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"500ms\", healthy_threshold = 2, unhealthy_threshold = 2 }",
        "",
    ))
    .await;
    let base = format!("http://{}", gw.public_addr());
    let admin = format!("http://{}", gw.admin_addr());
    let check_state = async |label: &str| -> String {
        let ready = json(get(&admin, "/readyz").await).await;
        let targets = ready["checks"]["upstream:app"]["targets"]
            .as_array()
            .unwrap()
            .clone();
        let t = targets.iter().find(|t| t["target"] == label).unwrap();
        t["health_check"].as_str().unwrap().to_string()
    };
    let b_label = b.addr.to_string();
    wait_until_async("the first checks", Duration::from_secs(3), async || {
        check_state(&b_label).await == "healthy"
    })
    .await;

    b.health.store(503, Ordering::SeqCst);
    wait_until_async("b to fail its checks", Duration::from_secs(3), async || {
        check_state(&b_label).await == "unhealthy"
    })
    .await;
    let before = b.hits();
    for _ in 0..20 {
        let resp = get(&base, "/x").await;
        let status = resp.status();
        let body = resp.text().await.unwrap();
        let ready = get(&admin, "/readyz").await.text().await.unwrap();
        assert_eq!(status, 200, "{body} {ready}");
    }
    assert_eq!(b.hits(), before, "an unhealthy target gets no requests");
    let text = metrics_text(gw.admin_addr()).await;
    assert_eq!(
        metric(
            &text,
            &format!("portcullis_upstream_healthy{{target=\"{b_label}\",upstream=\"app\"}}")
        ),
        0.0
    );

    b.health.store(200, Ordering::SeqCst);
    wait_until_async("b to pass again", Duration::from_secs(3), async || {
        check_state(&b_label).await == "healthy"
    })
    .await;
    for _ in 0..20 {
        get(&base, "/x").await;
    }
    assert!(b.hits() >= before + 8, "back in rotation");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_settings_out_of_bounds_are_config_problems() {
    for (keys, needle) in [
        ("max_connections = 0", "max_connections"),
        ("retries = { attempts = 9 }", "retries.attempts"),
        ("retries = { budget = 2.0 }", "retries.budget"),
        ("retries = { statuses = [404] }", "retries.statuses"),
        ("passive_health = { ejection = \"0s\" }", "passive_health"),
        ("health_check = { path = \"healthz\" }", "health_check.path"),
        ("balance = \"random\"", "balance"),
    ] {
        let text = config_for(&["http://127.0.0.1:9".to_string()], keys, "");
        let problems = compile_offline(&text)
            .err()
            .unwrap_or_else(|| panic!("{keys} was accepted"));
        assert!(problems.contains(needle), "{keys}: {problems}");
    }
    let text = config_for(&["http://127.0.0.1:9".to_string()], "", "");
    let weighted = edit(&text, |doc| {
        let t: toml::Table = "t = [{ url = \"http://127.0.0.1:9\", weight = 500 }]"
            .parse()
            .unwrap();
        *at(doc, "upstreams.0.targets") = t["t"].clone();
    });
    assert!(compile_offline(&weighted).err().unwrap().contains("weight"));
}
