//! Report-only rollout through the real server: on a route in
//! `mode = "report"` (or listing a protection in `report_only`), what
//! authentication, authorisation and rate limits would refuse goes through
//! to the upstream, audited (`would_refuse`) and counted
//! (`portcullis_would_refuse_total{protection,route}`); other routes still
//! enforce; production `check` warns about every protection left reporting.

mod common;

use common::*;
use std::time::Duration;

const ROUTES: &str = r#"
[[routes]]
id = "watched"
path = "/watched"
upstream = "app"
auth = ["api_key"]
scopes = ["orders:write"]
rate_limit = ["2 per minute per ip"]
mode = "report"

[[routes]]
id = "limits-only"
path = "/limits-only"
upstream = "app"
auth = ["none"]
rate_limit = ["1 per minute per ip"]
report_only = ["rate_limit"]

[[routes]]
id = "enforced"
path = "/enforced"
upstream = "app"
auth = ["api_key"]
rate_limit = ["1 per minute per ip"]
"#;

async fn would_refuse(admin: std::net::SocketAddr, protection: &str, route: &str) -> f64 {
    metric(
        &metrics_text(admin).await,
        &format!("portcullis_would_refuse_total{{protection=\"{protection}\",route=\"{route}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_on_reporting_routes_go_through_counted_and_audited() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), ROUTES)).await;
    let addr = gw.public_addr();
    let key = make_key(&gw, "reader", &["orders:read"], None).await.key;
    // No key, a key without the scope, then past the rate limit: each
    // reaches the upstream, each refusal is counted under its protection.
    let get = |key: Option<&str>| {
        let mut req = client().get(format!("http://{addr}/watched/x"));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.send()
    };
    assert_eq!(get(None).await.unwrap().status(), 200);
    assert_eq!(get(Some(&key)).await.unwrap().status(), 200);
    assert_eq!(get(Some(&key)).await.unwrap().status(), 200);
    assert_eq!(upstream.count(), 3);
    assert!(
        upstream.last().headers.get("x-portcullis-consumer").is_some(),
        "a valid key still identifies the caller"
    );
    let admin = gw.admin_addr();
    wait_until_async("the counts", Duration::from_secs(5), async || {
        would_refuse(admin, "authn", "watched").await == 1.0
            && would_refuse(admin, "authz", "watched").await == 3.0
            && would_refuse(admin, "rate_limit", "watched").await == 1.0
    })
    .await;
    let events = audit_events(&gw, Some("would_refuse")).await;
    let statuses: Vec<u64> = events
        .iter()
        .map(|e| e.event.details["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 1, "{statuses:?}");
    // Authorisation refuses all three: the first had no identity at all.
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 1, "{statuses:?}");
    let all = serde_json::to_string(&events.iter().map(|e| &e.event).collect::<Vec<_>>()).unwrap();
    assert!(!all.contains(&key), "no key in the audit events");

    // report_only names one protection; the others on the route enforce.
    for _ in 0..3 {
        let r = client()
            .get(format!("http://{addr}/limits-only"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // An enforcing route is untouched by its neighbours' modes.
    assert_problem(
        client()
            .get(format!("http://{addr}/enforced"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    wait_until_async("the rate-limit count", Duration::from_secs(5), async || {
        would_refuse(admin, "rate_limit", "limits-only").await == 2.0
    })
    .await;
    gw.shutdown().await;
}

#[test]
fn production_check_warns_about_protections_left_reporting_and_knows_their_names() {
    let dir = scratch_dir();
    let path = dir.join("p.toml");
    let text = config("production", "http://127.0.0.1:9", ROUTES);
    std::fs::write(&path, &text).unwrap();
    let out = std::process::Command::new(binary_path())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for protection in ["authn", "authz", "rate_limit"] {
        assert!(
            stderr.contains(&format!(
                "warning: route `watched`: {protection} runs in report mode"
            )),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains("warning: route `limits-only`: rate_limit runs in report mode"),
        "{stderr}"
    );
    assert!(!stderr.contains("`enforced`"), "{stderr}");

    std::fs::write(
        &path,
        text.replace("report_only = [\"rate_limit\"]", "report_only = [\"ratelimit\"]"),
    )
    .unwrap();
    let out = std::process::Command::new(binary_path())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("`ratelimit` is not a protection"), "{text}");
}
