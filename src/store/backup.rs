//! `portcullis backup FILE` and `restore FILE` for the embedded SQLite
//! store (PostgreSQL has `pg_dump`; docs/deployment.md).
//!
//! A backup is `VACUUM INTO`: one consistent snapshot, taken while the
//! gateway keeps serving (WAL lets it read beside the writer), written as a
//! fresh compact file. A restore checks the file first (SQLite's integrity
//! check, the audit chain), brings a copy of it to the current schema, then
//! replaces every table's rows in the configured store in one transaction,
//! and verifies the audit chain of the result.

use std::path::{Path, PathBuf};

use sqlx::{Executor, Row};

use super::{Backend, Store, StoreError};
use crate::audit::chain::{Broken, Verifier};
use crate::config::StoreConfig;

/// What a backup or restore holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rows per table, by table name.
    pub tables: Vec<(String, i64)>,
    /// Audit events whose chain verified.
    pub audit_events: u64,
}

fn sqlite_only(store: &Store) -> Result<(), StoreError> {
    match store.backend() {
        Backend::Sqlite => Ok(()),
        Backend::Postgres => Err(StoreError::Invalid(
            "backup and restore are for the SQLite store; back PostgreSQL up with pg_dump (docs/deployment.md)"
                .into(),
        )),
    }
}

/// A path as an SQL string literal.
fn literal(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

/// Writes a consistent copy of the live store to `file`, which must not
/// exist yet.
pub async fn backup(store: &Store, file: &Path) -> Result<Summary, StoreError> {
    sqlite_only(store)?;
    let file = &absolute(file)?;
    if file.exists() {
        return Err(StoreError::Conflict(format!(
            "{} exists; a backup never overwrites a file",
            file.display()
        )));
    }
    store
        .pool
        .execute(format!("VACUUM INTO {}", literal(file)).as_str())
        .await?;
    let copy = open_file(file).await?;
    let summary = check(&copy).await;
    copy.close().await;
    summary
}

fn absolute(file: &Path) -> Result<PathBuf, StoreError> {
    std::path::absolute(file).map_err(|e| StoreError::Invalid(format!("{}: {e}", file.display())))
}

/// Opens a backup file as a store of its own, without creating one.
async fn open_file(file: &Path) -> Result<Store, StoreError> {
    if !file.is_file() {
        return Err(StoreError::NotFound(format!("backup {}", file.display())));
    }
    let config = StoreConfig {
        url: format!("sqlite://{}?mode=rw", file.display()),
        max_connections: 1,
        ..StoreConfig::default()
    };
    Store::connect(&config, Path::new("/")).await
}

/// SQLite's integrity check, the audit chain and the row counts.
async fn check(store: &Store) -> Result<Summary, StoreError> {
    let verdict: String = sqlx::query("PRAGMA integrity_check")
        .fetch_one(&store.pool)
        .await?
        .try_get(0)?;
    if verdict != "ok" {
        return Err(StoreError::Invalid(format!("the database is damaged: {verdict}")));
    }
    let (verifier, verified) = verify_audit(store).await?;
    verified.map_err(|b| {
        StoreError::Invalid(format!(
            "the audit chain is broken at seq {}: {}",
            b.seq, b.reason
        ))
    })?;
    let audit_events = verifier.checked;
    let mut tables = Vec::new();
    for table in table_names(store, "main").await? {
        let count: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM \"{table}\""))
            .fetch_one(&store.pool)
            .await?
            .try_get(0)?;
        tables.push((table, count));
    }
    Ok(Summary { tables, audit_events })
}

/// The store's audit chain, checked page by page: the verifier (what it
/// saw) and whether the chain holds.
pub async fn verify_audit(store: &Store) -> Result<(Verifier, Result<(), Broken>), StoreError> {
    let mut verifier = Verifier::new();
    let mut after = i64::MIN;
    loop {
        let page = store.audit_after(after, 1000).await?;
        let Some(last) = page.last() else {
            let result = verifier.finish(true);
            return Ok((verifier, result));
        };
        after = last.seq;
        if let Err(broken) = page.iter().try_for_each(|e| verifier.check(e)) {
            return Ok((verifier, Err(broken)));
        }
    }
}

/// The data tables of schema `schema` (not SQLite's own, not the
/// migrations' record).
async fn table_names(store: &Store, schema: &str) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT name FROM {schema}.sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name != '_sqlx_migrations' ORDER BY name"
    ))
    .fetch_all(&store.pool)
    .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
        .collect()
}

/// Replaces the store's contents with `file`'s, after checking it.
pub async fn restore(store: &Store, file: &Path) -> Result<Summary, StoreError> {
    sqlite_only(store)?;
    // Work on a copy: the backup itself is never written to.
    let copy_path = scratch_copy(file)?;
    let result = restore_from_copy(store, &copy_path).await;
    let _ = std::fs::remove_file(&copy_path);
    result
}

fn scratch_copy(file: &Path) -> Result<PathBuf, StoreError> {
    if !file.is_file() {
        return Err(StoreError::NotFound(format!("backup {}", file.display())));
    }
    let copy = std::env::temp_dir().join(format!("portcullis-restore-{}.db", crate::keys::random_alnum(12)));
    std::fs::copy(file, &copy)
        .map_err(|e| StoreError::Invalid(format!("cannot copy {}: {e}", file.display())))?;
    Ok(copy)
}

async fn restore_from_copy(store: &Store, copy_path: &Path) -> Result<Summary, StoreError> {
    let copy = open_file(copy_path).await?;
    let checked = async {
        check(&copy).await?;
        // A backup from an older version gains the newer tables and columns.
        copy.migrate().await?;
        Ok::<_, StoreError>(())
    }
    .await;
    copy.close().await;
    checked?;

    let mut conn = store.pool.acquire().await?;
    conn.execute(format!("ATTACH DATABASE {} AS backup", literal(copy_path)).as_str())
        .await?;
    let copied = copy_tables(store, &mut conn).await;
    let _ = conn.execute("DETACH DATABASE backup").await;
    drop(conn);
    copied?;
    let summary = check(store).await?;
    Ok(summary)
}

/// Every table's rows from `backup` into `main`, in one transaction.
async fn copy_tables(
    store: &Store,
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
) -> Result<(), StoreError> {
    let ours = table_names(store, "main").await?;
    let rows = sqlx::query(
        "SELECT name FROM backup.sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name != '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(&mut **conn)
    .await?;
    let theirs: Vec<String> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
    if theirs != ours {
        return Err(StoreError::Invalid(format!(
            "the backup's tables ({}) are not this store's ({}); restore with the version that made it",
            theirs.join(", "),
            ours.join(", ")
        )));
    }
    // Enforcement off for the copy (it cannot change inside a
    // transaction), then the whole result checked before it commits.
    conn.execute("PRAGMA foreign_keys = OFF").await?;
    conn.execute("BEGIN IMMEDIATE").await?;
    let copied = async {
        // Every table emptied before any is filled: a cascading delete
        // would otherwise remove rows already copied.
        for table in &ours {
            conn.execute(format!("DELETE FROM main.\"{table}\"").as_str())
                .await?;
        }
        for table in &ours {
            conn.execute(format!("INSERT INTO main.\"{table}\" SELECT * FROM backup.\"{table}\"").as_str())
                .await?;
        }
        let dangling = sqlx::query("PRAGMA main.foreign_key_check")
            .fetch_all(&mut **conn)
            .await?;
        if !dangling.is_empty() {
            return Err(StoreError::Invalid(format!(
                "the backup has {} rows whose references are missing",
                dangling.len()
            )));
        }
        Ok::<_, StoreError>(())
    }
    .await;
    let finished = match copied {
        Ok(()) => conn.execute("COMMIT").await.map(|_| ()).map_err(StoreError::from),
        Err(error) => {
            let _ = conn.execute("ROLLBACK").await;
            Err(error)
        }
    };
    conn.execute("PRAGMA foreign_keys = ON").await?;
    finished
}
