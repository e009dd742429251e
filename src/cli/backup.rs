//! `backup FILE` and `restore FILE`: the SQLite store's contents, copied
//! out while the gateway runs, and back in after a check.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use portcullis::audit::{Event, Severity};
use portcullis::store::backup::{self, Summary};

use super::StoreSession;

pub async fn backup(config: &Path, file: &Path) -> Result<ExitCode> {
    let session = StoreSession::open(config).await?;
    let result = backup::backup(&session.store, file)
        .await
        .with_context(|| format!("backing the store up to {}", file.display()));
    if let Ok(summary) = &result {
        print(&format!("backed up to {}", file.display()), summary);
        session.audit.emit(
            Event::new("store.backed_up", Severity::Notice)
                .detail("file", file.display().to_string())
                .detail("via", "cli"),
        );
    }
    session.close().await;
    result.map(|_| ExitCode::SUCCESS)
}

pub async fn restore(config: &Path, file: &Path) -> Result<ExitCode> {
    let session = StoreSession::open(config).await?;
    let result = backup::restore(&session.store, file)
        .await
        .with_context(|| format!("restoring the store from {}", file.display()));
    if let Ok(summary) = &result {
        print(&format!("restored from {}", file.display()), summary);
        println!("restart running gateways: their caches still hold what the store held before");
        // Appended to the restored chain, which verified.
        session.audit.emit(
            Event::new("store.restored", Severity::Notice)
                .detail("file", file.display().to_string())
                .detail("via", "cli"),
        );
    }
    session.close().await;
    result.map(|_| ExitCode::SUCCESS)
}

fn print(what: &str, summary: &Summary) {
    println!("{what}; audit chain verified ({} events)", summary.audit_events);
    for (table, rows) in &summary.tables {
        println!("  {table}: {rows} rows");
    }
}
