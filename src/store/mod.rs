//! The store: consumers, API keys and the audit log, in SQLite (the embedded
//! default) or PostgreSQL (for many instances), through one sqlx `Any` pool
//! per process and the same schema, migrated from `migrations/`.
//!
//! All SQL lives in this module's files; callers get typed records and
//! [`StoreError`]. Times are Unix milliseconds (`BIGINT`), which both
//! backends and the `Any` driver handle identically.

pub mod audit;
pub mod backup;
pub mod consumers;
pub mod keys;
pub mod sessions;
pub mod users;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

use crate::config::StoreConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL `{0}` is not supported; use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

/// The one connection pool of a process.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// One schema for both backends: it sticks to types and statements they
/// share (TEXT, BIGINT, plain indexes). A migration that needs a dialect of
/// its own would split this folder per backend.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A URL fit to print: any password in it replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// What is wrong with `[store]`, as `(key, problem)` pairs; checked without
/// connecting, so `check` can report it with everything else.
pub fn config_problems(config: &StoreConfig) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let url = &config.url;
    let sqlite = url.starts_with("sqlite:");
    let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !sqlite && !postgres {
        problems.push((
            "store.url",
            StoreError::UnsupportedUrl(redact_url(url)).to_string(),
        ));
    }
    if sqlite
        && url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:")
            .is_empty()
    {
        problems.push((
            "store.url",
            "a SQLite store needs a file: sqlite://PATH".to_string(),
        ));
    }
    if config.max_connections == 0 || config.max_connections > 1000 {
        problems.push(("store.max_connections", "must be between 1 and 1000".to_string()));
    }
    if config.connect_timeout.0.is_zero() {
        problems.push(("store.connect_timeout", "must be more than zero".to_string()));
    }
    if config.statement_timeout.0.is_zero() {
        problems.push(("store.statement_timeout", "must be more than zero".to_string()));
    }
    problems
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A SQLite URL with its relative path resolved against `base_dir` and
/// `mode=rwc`, so the file is created on first start.
fn sqlite_url(url: &str, base_dir: &Path) -> String {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path == ":memory:" {
        return url.to_string();
    }
    let full = if Path::new(path).is_absolute() {
        path.to_string()
    } else {
        base_dir.join(path).display().to_string()
    };
    let query = if query.contains("mode=") {
        query.to_string()
    } else if query.is_empty() {
        "mode=rwc".to_string()
    } else {
        format!("{query}&mode=rwc")
    };
    format!("sqlite://{full}?{query}")
}

impl Store {
    /// Opens the pool (creating a SQLite file if needed). Does not migrate.
    pub async fn connect(config: &StoreConfig, base_dir: &Path) -> Result<Store, StoreError> {
        install_default_drivers();
        let (backend, url) = if config.url.starts_with("sqlite:") {
            (Backend::Sqlite, sqlite_url(&config.url, base_dir))
        } else if config.url.starts_with("postgres://") || config.url.starts_with("postgresql://") {
            (Backend::Postgres, config.url.clone())
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(&config.url)));
        };
        let timeout_ms = config.statement_timeout.0.as_millis().max(1);
        let options = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout.0)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    match backend {
                        Backend::Sqlite => {
                            // Writers wait for each other, up to the statement
                            // timeout; WAL lets readers run beside the writer.
                            conn.execute(format!("PRAGMA busy_timeout = {timeout_ms}").as_str())
                                .await?;
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                        }
                        Backend::Postgres => {
                            conn.execute(format!("SET statement_timeout = {timeout_ms}").as_str())
                                .await?;
                        }
                    }
                    Ok(())
                })
            });
        let pool = options.connect(&url).await?;
        Ok(Store { pool, backend })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATIONS.run(&self.pool).await?;
        Ok(())
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self, limit: Duration) -> Result<(), String> {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(limit, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" => Ok(Backend::Postgres),
            other => Err(format!("unknown backend {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_printed_urls() {
        assert_eq!(
            redact_url("postgres://u:pw@db:5432/x?sslmode=require"),
            "postgres://u:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_url("redis://:secret@r:6379/0"), "redis://:***@r:6379/0");
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact_url("sqlite://p.db"), "sqlite://p.db");
        assert_eq!(redact_url("mysql://u:p@w@h/db"), "mysql://u:***@h/db");
    }

    #[test]
    fn sqlite_paths_resolve_against_the_config_folder() {
        let base = Path::new("/etc/portcullis");
        assert_eq!(
            sqlite_url("sqlite://portcullis.db", base),
            "sqlite:///etc/portcullis/portcullis.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite:///var/lib/p.db", base),
            "sqlite:///var/lib/p.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite://p.db?mode=ro", base),
            "sqlite:///etc/portcullis/p.db?mode=ro"
        );
    }
}
