//! The audit log: hash-chain verification after tampering with the store
//! table and with the JSON-lines file, spill and replay while the store is
//! unavailable, retention, concurrent writers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Starts a gateway with its config also written to disk, for the CLI.
async fn gateway(store_url: Option<&str>, extra: &str) -> (TestUpstream, portcullis::Gateway, PathBuf) {
    let upstream = TestUpstream::start().await;
    let text = config_with_store(
        "production",
        &upstream.url(),
        store_url,
        &format!("{extra}\n{KEY_ROUTE}"),
    );
    let dir = scratch_dir();
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, &text).unwrap();
    let gw = start_gateway(&text).await;
    (upstream, gw, path)
}

/// A string from the config file at `config` (`audit.file`, `store.url`…).
fn config_string(config: &Path, path: &str) -> String {
    string_at(&std::fs::read_to_string(config).unwrap(), path)
}

fn audit_file(config: &Path) -> PathBuf {
    PathBuf::from(config_string(config, "audit.file"))
}

fn cli(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(binary_path())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Some events: a consumer, a key, a few refused requests.
async fn make_events(gw: &portcullis::Gateway) {
    make_key(gw, "auditee", &[], None).await;
    for _ in 0..3 {
        client()
            .get(format!("http://{}/api/x", gw.public_addr()))
            .header("x-api-key", "pc_wrong")
            .send()
            .await
            .unwrap();
    }
    gw.shared().runtime.audit.flush().await;
}

async fn tamper_with_the_table(store_url: Option<&str>) {
    let (_upstream, gw, config) = gateway(store_url, "").await;
    make_events(&gw).await;
    let (code, out) = cli(&config, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("audit log OK: 5 events verified, up to seq 5"),
        "{out}"
    );

    let pool = store_of(&gw).pool().clone();
    // Edit: a row's details change.
    sqlx::query("UPDATE audit_events SET details = '{\"via\":\"nobody\"}' WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    let (code, out) = cli(&config, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN at seq 2") && out.contains("edited"), "{out}");

    // Deletion: a row in the middle goes (after restoring the edit's effect
    // does not matter: the first break is still reported).
    sqlx::query("DELETE FROM audit_events WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    let (code, out) = cli(&config, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN at seq 3") && out.contains("missing"),
        "{out}"
    );

    // Reordering: two events swap places.
    sqlx::query("UPDATE audit_events SET seq = -4 WHERE seq = 4")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET seq = 4 WHERE seq = 5")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET seq = 5 WHERE seq = -4")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE seq < 3")
        .execute(&pool)
        .await
        .unwrap();
    let (code, out) = cli(&config, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN at seq"), "{out}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tampering_with_the_sqlite_table_is_detected() {
    tamper_with_the_table(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tampering_with_the_postgres_table_is_detected() {
    let Some(url) = postgres_url("tampering_with_the_postgres_table_is_detected").await else {
        return;
    };
    tamper_with_the_table(Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tampering_with_the_file_is_detected() {
    let (_upstream, gw, config) = gateway(None, "").await;
    make_events(&gw).await;
    let file = audit_file(&config);
    let file_arg = file.to_str().unwrap();
    let (code, out) = cli(&config, &["audit", "verify", "--file", file_arg]);
    assert_eq!(code, 0, "{out}");
    let original = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), 5);

    let edited = original.replacen("\"reason\":\"malformed\"", "\"reason\":\"fine\"", 1);
    assert_ne!(edited, original);
    std::fs::write(&file, &edited).unwrap();
    let (code, out) = cli(&config, &["audit", "verify", "--file", file_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN at seq 3"), "{out}");

    let mut without_second = lines.clone();
    without_second.remove(1);
    std::fs::write(&file, without_second.join("\n") + "\n").unwrap();
    let (code, out) = cli(&config, &["audit", "verify", "--file", file_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN at seq 3"), "{out}");

    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    std::fs::write(&file, swapped.join("\n") + "\n").unwrap();
    let (code, out) = cli(&config, &["audit", "verify", "--file", file_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN at seq 5"), "{out}");
    gw.shutdown().await;
}

/// Refuses `n` requests and returns their request IDs, in order.
async fn refused(gw: &portcullis::Gateway, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{tag}-{i}");
        let resp = client()
            .get(format!("http://{}/api/x", gw.public_addr()))
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        ids.push(id);
    }
    ids
}

/// How many events wait in the spill file of the gateway configured at
/// `config`.
fn spilled(config: &Path) -> usize {
    std::fs::read_to_string(config_string(config, "audit.spill_file"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Checks the store holds the events of `ids`, in that order, and verifies.
async fn assert_in_order(gw: &portcullis::Gateway, config: &Path, ids: &[String]) {
    let events = store_of(gw).audit_after(0, 10_000).await.unwrap();
    let seen: Vec<String> = events
        .iter()
        .filter_map(|e| e.event.request_id.clone())
        .filter(|r| ids.contains(r))
        .collect();
    assert_eq!(seen, ids, "events missing or out of order");
    let (code, out) = cli(config, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_spill_while_sqlite_is_locked_and_replay_in_order() {
    use sqlx::Connection;
    let (_upstream, gw, config) = gateway(None, "").await;
    let before = refused(&gw, 3, "before").await;
    gw.shared().runtime.audit.flush().await;

    // Another process takes the write lock and holds it: writes fail.
    let db_url = config_string(&config, "store.url");
    let mut locker = sqlx::SqliteConnection::connect(&db_url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut locker).await.unwrap();

    let during = refused(&gw, 5, "during").await;
    wait_until("events to spill", Duration::from_secs(15), || {
        spilled(&config) >= 5
    })
    .await;
    let more = refused(&gw, 2, "more").await;
    gw.shared().runtime.audit.flush().await;
    assert!(
        spilled(&config) >= 7,
        "later events queue behind the spilled ones"
    );

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    wait_until("the spill to replay", Duration::from_secs(15), || {
        spilled(&config) == 0
    })
    .await;
    let mut all = before;
    all.extend(during);
    all.extend(more);
    assert_in_order(&gw, &config, &all).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_spill_while_postgres_is_down_and_replay_in_order() {
    let Some(db) = PgDatabase::create("events_spill_while_postgres_is_down").await else {
        return;
    };
    let (_upstream, gw, config) = gateway(Some(&db.url), "").await;
    let before = refused(&gw, 3, "before").await;
    gw.shared().runtime.audit.flush().await;

    db.stop().await;
    let readyz = |gw: &portcullis::Gateway| format!("http://{}/readyz", gw.admin_addr());
    let during = refused(&gw, 5, "during").await;
    wait_until("events to spill", Duration::from_secs(15), || {
        spilled(&config) >= 5
    })
    .await;
    // Degraded, not unready: the spill takes the events and cached keys serve.
    let resp = client().get(readyz(&gw)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let store = json(resp).await["checks"]["store"].clone();
    assert_eq!(store["status"], "degraded", "{store}");
    assert!(store["audit_spill_pending"].as_u64().unwrap() >= 5, "{store}");
    let text = metrics_text(gw.admin_addr()).await;
    assert_eq!(metric(&text, "portcullis_store_available"), 0.0);

    db.start().await;
    wait_until("the spill to replay", Duration::from_secs(15), || {
        spilled(&config) == 0
    })
    .await;
    let resp = client().get(readyz(&gw)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["checks"]["store"]["status"], "ok");
    let text = metrics_text(gw.admin_addr()).await;
    assert_eq!(metric(&text, "portcullis_store_available"), 1.0);
    let mut all = before;
    all.extend(during);
    assert_in_order(&gw, &config, &all).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spill_left_by_a_stopped_gateway_is_replayed_at_the_next_start() {
    let upstream = TestUpstream::start().await;
    let text = config_with_store("production", &upstream.url(), None, KEY_ROUTE);
    let dir = scratch_dir();
    let config = dir.join("portcullis.toml");
    std::fs::write(&config, &text).unwrap();
    // A spill file as an earlier outage would leave it.
    let spill = PathBuf::from(string_at(&text, "audit.spill_file"));
    let events: Vec<String> = (0..3)
        .map(|i| {
            let mut e = portcullis::audit::Event::new("test.spilled", portcullis::audit::Severity::Info);
            e.request_id = Some(format!("spilled-{i}"));
            serde_json::to_string(&e).unwrap()
        })
        .collect();
    std::fs::write(&spill, events.join("\n") + "\n").unwrap();
    let gw = start_gateway(&text).await;
    wait_until("the spill to replay", Duration::from_secs(10), || {
        std::fs::read_to_string(&spill)
            .map(|t| t.trim().is_empty())
            .unwrap_or(true)
    })
    .await;
    let ids: Vec<String> = (0..3).map(|i| format!("spilled-{i}")).collect();
    assert_in_order(&gw, &config, &ids).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_old_events_and_the_rest_still_verifies() {
    let (_upstream, gw, config) = gateway(None, "").await;
    let text = edit(&std::fs::read_to_string(&config).unwrap(), |doc| {
        set(doc, "audit", "retention", "1s")
    });
    std::fs::write(&config, text).unwrap();
    make_events(&gw).await;
    // A real sleep: the events must grow older than the 1 s retention.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = refused(&gw, 2, "fresh").await;
    gw.shared().runtime.audit.flush().await;

    let (code, out) = cli(&config, &["audit", "prune"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deleted 5 audit events"), "{out}");
    let (code, out) = cli(&config, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    let remaining = store_of(&gw).audit_after(0, 100).await.unwrap();
    assert_eq!(remaining.first().unwrap().seq, 6);
    assert_eq!(remaining.last().unwrap().event.kind, "audit.retention");
    assert_in_order(&gw, &config, &fresh).await;

    // Deleting one more event than retention did is detected.
    sqlx::query("DELETE FROM audit_events WHERE seq = 6")
        .execute(store_of(&gw).pool())
        .await
        .unwrap();
    let (code, out) = cli(&config, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN at seq 7") && out.contains("events deleted"),
        "{out}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_and_the_cli_write_one_chain_together() {
    let (_upstream, gw, config) = gateway(None, "").await;
    let load = {
        let addr = gw.public_addr();
        tokio::spawn(async move {
            for _ in 0..60 {
                let _ = client().get(format!("http://{addr}/api/x")).send().await;
            }
        })
    };
    for i in 0..5 {
        let (code, out) = cli(&config, &["consumers", "create", &format!("team-{i}")]);
        assert_eq!(code, 0, "{out}");
    }
    load.await.unwrap();
    gw.shared().runtime.audit.flush().await;
    let (code, out) = cli(&config, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("65 events verified"), "{out}");
    let file = audit_file(&config);
    let (code, out) = cli(&config, &["audit", "verify", "--file", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("65 events verified"), "{out}");
    let (code, out) = cli(&config, &["audit", "export", "--since", "1h"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 65);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_goes_unready_only_when_the_spill_file_fails_too() {
    use sqlx::Connection;
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let text = edit(
        &config_with_store("production", &upstream.url(), None, KEY_ROUTE),
        |doc| {
            let spill = dir.join("no-such-folder").join("spill.jsonl");
            set(doc, "audit", "spill_file", spill.display().to_string());
        },
    );
    let gw = start_gateway(&text).await;
    let readyz = format!("http://{}/readyz", gw.admin_addr());
    assert_eq!(client().get(&readyz).send().await.unwrap().status(), 200);

    let db_url = string_at(&text, "store.url");
    let mut locker = sqlx::SqliteConnection::connect(&db_url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut locker).await.unwrap();
    refused(&gw, 3, "unspillable").await;
    let resp = client().get(&readyz).send().await.unwrap();
    assert_eq!(resp.status(), 503, "events can be neither stored nor spilled");
    let store = json(resp).await["checks"]["store"].clone();
    assert_eq!(store["status"], "unavailable", "{store}");
    let text = metrics_text(gw.admin_addr()).await;
    assert!(metric(&text, "portcullis_audit_dropped_total") >= 3.0, "{text}");

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    // The next events reach the store, and the drop is reported there.
    refused(&gw, 1, "after").await;
    wait_until_async(
        "the store to take events again",
        Duration::from_secs(10),
        async || {
            client().get(&readyz).send().await.unwrap().status() == 200
                && !audit_events(&gw, Some("audit.dropped")).await.is_empty()
        },
    )
    .await;
    gw.shutdown().await;
}
