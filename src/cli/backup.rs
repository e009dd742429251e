//! `backup FILE` and `restore FILE`: the SQLite store's contents, copied
//! out while the gateway runs, and back in after a check.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use portcullis::audit::{Event, Severity};
use portcullis::store::backup::{self, Summary};

use super::StoreSession;

/// Which way the store's contents go.
#[derive(Clone, Copy)]
pub enum Direction {
    Backup,
    Restore,
}

/// `backup FILE` or `restore FILE`: the copy, its summary, and an audit
/// event (for a restore, appended to the restored chain, which verified).
pub async fn run(config: &Path, file: &Path, direction: Direction) -> Result<ExitCode> {
    let session = StoreSession::open(config).await?;
    let (result, doing, done, kind) = match direction {
        Direction::Backup => (
            backup::backup(&session.store, file).await,
            "backing the store up to",
            "backed up to",
            "store.backed_up",
        ),
        Direction::Restore => (
            backup::restore(&session.store, file).await,
            "restoring the store from",
            "restored from",
            "store.restored",
        ),
    };
    let result = result.with_context(|| format!("{doing} {}", file.display()));
    if let Ok(summary) = &result {
        print(&format!("{done} {}", file.display()), summary);
        if matches!(direction, Direction::Restore) {
            println!("restart running gateways: their caches still hold what the store held before");
        }
        session.audit.emit(
            Event::new(kind, Severity::Notice)
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
