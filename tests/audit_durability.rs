//! Audit durability through the real binary: a store outage under steady
//! load, then SIGKILL before the store is back, loses at most the events of
//! the last moments before the kill (docs/audit.md states the bound), on
//! PostgreSQL (a private server, stopped outright) and on SQLite (the file
//! locked by another process); a full queue sends events to the spill
//! file, and what is still lost is reported by an `audit.dropped` event.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::private_pg::PrivatePostgres;
use common::*;

/// What the docs promise (a 20 ms batch window, a 200 ms store deadline and
/// one fsync), with room for a debug build on a loaded 2-core machine.
const LOSS_BOUND: Duration = Duration::from_secs(1);

/// A config file for the binary with a store at `store_url` (SQLite in a
/// fresh folder for `None`) and every successful authentication audited;
/// `audit` keys (inline TOML) are added to `[audit]`.
fn write_config(upstream: &TestUpstream, store_url: Option<&str>, audit: &str) -> PathBuf {
    let text = edit(
        &config_with_store("development", &upstream.url(), store_url, KEY_ROUTE),
        |doc| {
            set(doc, "audit", "auth_success_sample", 1.0);
            let extra: toml::Table = audit.parse().unwrap();
            for (key, value) in extra {
                set(doc, "audit", &key, value);
            }
        },
    );
    let path = scratch_dir().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spill_file(config: &Path) -> PathBuf {
    PathBuf::from(string_at(
        &std::fs::read_to_string(config).unwrap(),
        "audit.spill_file",
    ))
}

fn spilled(config: &Path) -> usize {
    std::fs::read_to_string(spill_file(config))
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

/// The request IDs of the stored events of `kind` (`audit export`).
fn stored_request_ids(config: &Path, kind: &str) -> Vec<String> {
    run_cli(config, &["audit", "export", "--since", "1h"])
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == kind)
        .filter_map(|e| e["request_id"].as_str().map(String::from))
        .collect()
}

/// Steady load: `clients` loops of keyed requests, each with its own
/// request ID; records when each 200 arrived.
struct Load {
    answered: Arc<Mutex<Vec<(String, Instant)>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    fn start(addr: SocketAddr, key: &str, clients: usize) -> Load {
        let answered = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let (answered, key) = (answered.clone(), key.to_string());
            tasks.spawn(async move {
                let http = client();
                for n in 0.. {
                    let id = format!("load-{c}-{n}");
                    let sent = http
                        .get(format!("http://{addr}/api/x"))
                        .header("x-api-key", &key)
                        .header("x-request-id", &id)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status() == 200 => {
                            answered.lock().unwrap().push((id, Instant::now()));
                        }
                        Ok(_) => {}
                        // The gateway was killed.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            });
        }
        Load { answered, tasks }
    }

    fn answered_since(&self, since: Instant) -> usize {
        self.answered
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, at)| *at >= since)
            .count()
    }

    fn stop(mut self) -> Vec<(String, Instant)> {
        self.tasks.abort_all();
        std::mem::take(&mut *self.answered.lock().unwrap())
    }
}

/// Serves under load, runs `outage_begins`, keeps serving for 3 s, kills
/// the binary with SIGKILL, runs `outage_ends`, starts the binary again on
/// the same config and spill file, and checks that every answered request
/// has its `auth.success` event in the store, but for those answered
/// within [`LOSS_BOUND`] of the kill.
async fn outage_then_sigkill<B, E>(config: &Path, outage_begins: B, outage_ends: E)
where
    B: AsyncFnOnce(),
    E: AsyncFnOnce(),
{
    let key = cli_key(config, "loader");
    let mut bin = Binary::serve(config, &[]);
    let load = Load::start(bin.public, &key, 4);
    wait_until("the load to be answered", Duration::from_secs(10), || {
        load.answered_since(Instant::now() - Duration::from_secs(60)) > 50
    })
    .await;

    outage_begins().await;
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = Instant::now();
    bin.child.kill().unwrap();
    bin.child.wait().unwrap();
    let during = load.answered_since(outage);
    let answered = load.stop();
    assert!(
        during > 50,
        "the gateway kept answering during the outage ({during})"
    );
    outage_ends().await;

    let _restarted = Binary::serve(config, &[]);
    wait_until("the spill to replay", Duration::from_secs(30), || {
        spilled(config) == 0
    })
    .await;
    let stored: HashSet<String> = stored_request_ids(config, "auth.success").into_iter().collect();
    let lost: Vec<&(String, Instant)> = answered.iter().filter(|(id, _)| !stored.contains(id)).collect();
    eprintln!(
        "answered {} ({during} during the outage), lost {}: {:?}",
        answered.len(),
        lost.len(),
        lost.iter()
            .map(|(id, at)| format!(
                "{id} {} ms before the kill",
                killed_at.saturating_duration_since(*at).as_millis()
            ))
            .collect::<Vec<_>>()
    );
    for (id, at) in &lost {
        assert!(
            *at + LOSS_BOUND >= killed_at,
            "{id} was answered {} ms before the kill and its event is lost",
            killed_at.duration_since(*at).as_millis()
        );
    }
    let (code, out) = {
        let out = std::process::Command::new(binary_path())
            .args(["audit", "verify", "--config"])
            .arg(config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "the chain verifies: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_outage_then_sigkill_loses_only_the_last_moments() {
    let Some(pg) = PrivatePostgres::start("a_postgres_outage_then_sigkill") else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let config = write_config(&upstream, Some(&pg.url()), "");
    let pg = Mutex::new(pg);
    outage_then_sigkill(
        &config,
        async || pg.lock().unwrap().stop(),
        async || pg.lock().unwrap().resume(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_sqlite_then_sigkill_loses_only_the_last_moments() {
    use sqlx::Connection;
    let upstream = TestUpstream::start().await;
    let config = write_config(&upstream, None, "");
    let db_url = string_at(&std::fs::read_to_string(&config).unwrap(), "store.url");
    let locker = tokio::sync::Mutex::new(None);
    outage_then_sigkill(
        &config,
        async || {
            // Another process takes the write lock and holds it.
            let mut conn = sqlx::SqliteConnection::connect(&db_url).await.unwrap();
            sqlx::query("BEGIN EXCLUSIVE").execute(&mut conn).await.unwrap();
            *locker.lock().await = Some(conn);
        },
        async || {
            let mut conn = locker.lock().await.take().unwrap();
            sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_spills_and_what_is_lost_is_reported() {
    let upstream = TestUpstream::start().await;
    // A queue of one event (and an overflow of one): a burst overruns both.
    let config = write_config(&upstream, None, "queue = 1");
    let key = cli_key(&config, "burst");
    let bin = Binary::serve(&config, &[]);
    let mut burst = tokio::task::JoinSet::new();
    for n in 0..200 {
        let (addr, key) = (bin.public, key.clone());
        burst.spawn(async move {
            let resp = client()
                .get(format!("http://{addr}/api/x"))
                .header("x-api-key", key)
                .header("x-request-id", format!("burst-{n}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        });
    }
    while let Some(done) = burst.join_next().await {
        done.unwrap();
    }
    // Every event is stored, or counted in an `audit.dropped` event.
    let mut accounted = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let events: Vec<serde_json::Value> = run_cli(&config, &["audit", "export", "--since", "1h"])
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let stored = events
            .iter()
            .filter(|e| {
                e["type"] == "auth.success"
                    && e["request_id"].as_str().is_some_and(|r| r.starts_with("burst-"))
            })
            .count() as u64;
        let lost: u64 = events
            .iter()
            .filter(|e| e["type"] == "audit.dropped")
            .filter_map(|e| e["details"]["lost"].as_u64())
            .sum();
        accounted = stored + lost;
        if accounted == 200 {
            assert!(lost > 0, "a queue of one cannot take a burst of 200");
            assert!(stored > 0, "{stored} stored");
            let text = metrics_text(bin.admin).await;
            assert_eq!(metric(&text, "portcullis_audit_dropped_total"), lost as f64);
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{accounted} of 200 events stored or reported lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_events_are_written_before_the_refusal_is_answered() {
    let upstream = TestUpstream::start().await;
    let config = write_config(&upstream, None, "");
    let mut bin = Binary::serve(&config, &[]);
    let mut ids = Vec::new();
    for n in 0..20 {
        let id = format!("refused-{n}");
        let resp = client()
            .get(format!("http://{}/api/x", bin.public))
            .header("x-api-key", "pk_not_a_key_at_all")
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        ids.push(id);
    }
    // Killed the moment the last refusal is answered: `auth.failure` is a
    // sync kind by default, so every event is in the store already.
    bin.child.kill().unwrap();
    bin.child.wait().unwrap();
    // (A batch slower than the store deadline went to the spill file.)
    let _restarted = Binary::serve(&config, &[]);
    wait_until("the spill to replay", Duration::from_secs(30), || {
        spilled(&config) == 0
    })
    .await;
    let stored: HashSet<String> = stored_request_ids(&config, "auth.failure").into_iter().collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(missing.is_empty(), "lost sync events: {missing:?}");
}
