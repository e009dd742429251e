//! `portcullis backup FILE` and `restore FILE` through the binary: a backup
//! taken while the gateway serves, then restored over a changed store,
//! gives back consumers, keys, users, sessions and a verifying audit chain.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn cli(config: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(binary_path())
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn session(id: &str, user: &str) -> portcullis::store::sessions::SessionRecord {
    let now = portcullis::store::now_ms();
    portcullis::store::sessions::SessionRecord {
        id_hash: id.into(),
        username: user.into(),
        provider: "local".into(),
        email: None,
        name: None,
        roles: vec!["ops".into()],
        tokens: None,
        created_at: now,
        last_seen_at: now,
        expires_at: now + 3_600_000,
        revoked_at: None,
    }
}

/// The store `config` names, opened directly.
async fn open_store(config: &std::path::Path) -> portcullis::store::Store {
    let text = std::fs::read_to_string(config).unwrap();
    let store = portcullis::config::StoreConfig {
        url: string_at(&text, "store.url"),
        ..Default::default()
    };
    portcullis::store::Store::connect(&store, config.parent().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_then_restore_reproduces_the_store_and_its_audit_chain() {
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let routes = r#"
[[routes]]
path = "/"
upstream = "app"
auth = ["api_key"]
"#;
    let config = dir.join("portcullis.toml");
    std::fs::write(&config, common::config("development", &upstream.url(), routes)).unwrap();
    let key = cli_key(&config, "alice");
    let made = cli(
        &config,
        &["users", "create", "bob", "--password-stdin"],
        "correct horse battery\n",
    );
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let store = open_store(&config).await;
    store.create_session(&session("s-before", "bob")).await.unwrap();
    store.close().await;

    // Backed up while the gateway serves the key.
    let bin = Binary::serve(&config, &[]);
    let base = format!("http://{}", bin.public);
    let with_key = || {
        client()
            .get(format!("{base}/x"))
            .header("x-api-key", key.clone())
            .send()
    };
    assert_eq!(with_key().await.unwrap().status(), 200);
    let file = dir.join("backup.db");
    let out = run_cli(&config, &["backup", file.to_str().unwrap()]);
    assert!(out.contains("audit chain verified"), "{out}");
    assert!(out.contains("consumers: 1 rows"), "{out}");
    let again = cli(&config, &["backup", file.to_str().unwrap()], "");
    assert!(!again.status.success(), "a backup never overwrites a file");
    drop(bin);

    // The store changes after the backup: alice goes, mallory and a session come.
    run_cli(&config, &["consumers", "delete", "alice"]);
    run_cli(&config, &["consumers", "create", "mallory"]);
    let store = open_store(&config).await;
    store.create_session(&session("s-after", "bob")).await.unwrap();
    store.close().await;

    let out = run_cli(&config, &["restore", file.to_str().unwrap()]);
    assert!(
        out.contains("restored from") && out.contains("audit chain verified"),
        "{out}"
    );

    let store = open_store(&config).await;
    let consumers: Vec<String> = store
        .list_consumers()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(consumers, ["alice"]);
    assert!(store.find_user("bob").await.unwrap().is_some());
    assert!(store.find_session("s-before").await.unwrap().is_some());
    assert!(store.find_session("s-after").await.unwrap().is_none());
    store.close().await;
    let verify = run_cli(&config, &["audit", "verify"]);
    assert!(verify.contains("audit log OK"), "{verify}");
    let log = run_cli(&config, &["audit", "tail", "-n", "3"]);
    assert!(log.contains("store.restored"), "{log}");

    // The restored key works again through the binary.
    let bin = Binary::serve(&config, &[]);
    let resp = client()
        .get(format!("http://{}/x", bin.public))
        .header("x-api-key", key.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A damaged backup is refused and the store is left as it was.
    let broken = dir.join("broken.db");
    std::fs::write(&broken, b"SQLite format 3\0 but not really").unwrap();
    let refused = cli(&config, &["restore", broken.to_str().unwrap()], "");
    assert!(!refused.status.success());
    let store = open_store(&config).await;
    assert_eq!(store.list_consumers().await.unwrap().len(), 1);
    store.close().await;
}
