//! `audit verify|tail|export`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;

use portcullis::audit::{ChainedEvent, Verifier};
use portcullis::store::Store;
use portcullis::store::audit::AuditFilter;

use super::read_config;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exit 1 with the first bad sequence number.
    Verify {
        /// Check this JSON-lines file instead of the store.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Print the newest events.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value = "20")]
        lines: i64,
        /// Keep printing new events as they arrive.
        #[arg(short, long)]
        follow: bool,
    },
    /// Delete events older than `[audit] retention` now (a running gateway
    /// does this hourly); the chain still verifies afterwards.
    Prune,
    /// Print events since a time, oldest first, as JSON lines.
    Export {
        /// RFC 3339 (2026-11-01T00:00:00Z) or an age such as 24h or 30d.
        #[arg(long)]
        since: String,
    },
}

async fn open_store(config: &Path) -> Result<Store> {
    let loaded = read_config(config)?;
    Store::connect(&loaded.config.store, &loaded.base_dir)
        .await
        .with_context(|| {
            format!(
                "connecting to the store {}",
                portcullis::store::redact_url(&loaded.config.store.url)
            )
        })
}

/// `2026-11-01T00:00:00Z` or an age (`24h`) as Unix milliseconds.
pub fn parse_since(text: &str) -> Result<i64> {
    portcullis::audit::parse_time(text).map_err(anyhow::Error::msg)
}

fn print(event: &ChainedEvent) {
    println!("{}", serde_json::to_string(event).expect("events serialise"));
}

pub async fn run(config: &Path, command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify { file: Some(path) } => verify_file(&path),
        AuditCommand::Verify { file: None } => verify_store(&open_store(config).await?).await,
        AuditCommand::Tail { lines, follow } => {
            let store = open_store(config).await?;
            let filter = AuditFilter {
                limit: lines.clamp(1, 10_000),
                ..Default::default()
            };
            let mut newest = store.audit_query(&filter).await?;
            newest.reverse();
            let mut last = newest.last().map(|e| e.seq).unwrap_or(0);
            for e in &newest {
                print(e);
            }
            if follow {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    for e in store.audit_after(last, 1000).await? {
                        last = e.seq;
                        print(&e);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Prune => {
            let loaded = read_config(config)?;
            let keep = loaded
                .config
                .audit
                .retention
                .context("[audit] retention is not set; nothing to prune")?;
            let store = open_store(config).await?;
            let deleted = portcullis::audit::writer::apply_retention(&store, keep.0).await?;
            println!("deleted {deleted} audit events older than {keep}");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { since } => {
            let store = open_store(config).await?;
            let since = parse_since(&since)?;
            let mut after = 0;
            loop {
                let page = store.audit_since(since, after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    print(e);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report(verifier: &Verifier, result: Result<(), portcullis::audit::chain::Broken>) -> ExitCode {
    match result {
        Ok(()) => {
            match verifier.last() {
                Some((seq, _)) => println!(
                    "audit log OK: {} events verified, up to seq {seq}",
                    verifier.checked
                ),
                None => println!("audit log OK: no events"),
            }
            ExitCode::SUCCESS
        }
        Err(broken) => {
            println!("audit log BROKEN at seq {}: {}", broken.seq, broken.reason);
            ExitCode::FAILURE
        }
    }
}

async fn verify_store(store: &Store) -> Result<ExitCode> {
    let (verifier, result) = portcullis::store::backup::verify_audit(store).await?;
    Ok(report(&verifier, result))
}

fn verify_file(path: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut verifier = Verifier::new();
    let mut result = Ok(());
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let event: ChainedEvent = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                println!("audit log BROKEN at line {}: not an audit event ({e})", n + 1);
                return Ok(ExitCode::FAILURE);
            }
        };
        if let Err(broken) = verifier.check(&event) {
            result = Err(broken);
            break;
        }
    }
    // A file may have been rotated, so it may start past seq 1.
    let result = result.and_then(|_| verifier.finish(false));
    Ok(report(&verifier, result))
}
