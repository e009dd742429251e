//! Audit events in the store: chained appends under a lock, queries,
//! retention.

use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};

use super::{Backend, Store, StoreError};
use crate::audit::chain::{ChainedEvent, chain};
use crate::audit::{Event, Severity};

const COLUMNS: &str =
    "seq, id, time, type, severity, request_id, client_ip, consumer, route, details, prev_hash, hash";

/// Rows per INSERT: 12 parameters each, well under both backends' limits.
const ROWS_PER_INSERT: usize = 64;

/// Any PostgreSQL advisory lock number works as long as it is the same in
/// every instance; this one spells "audit".
const AUDIT_LOCK: i64 = 0x0061_7564_6974;

fn from_row(row: &sqlx::any::AnyRow) -> Result<ChainedEvent, StoreError> {
    let details: String = row.try_get("details")?;
    let severity: String = row.try_get("severity")?;
    Ok(ChainedEvent {
        seq: row.try_get("seq")?,
        event: Event {
            id: row.try_get("id")?,
            time: row.try_get("time")?,
            kind: row.try_get("type")?,
            severity: Severity::parse(&severity),
            request_id: row.try_get("request_id")?,
            client_ip: row.try_get("client_ip")?,
            consumer: row.try_get("consumer")?,
            route: row.try_get("route")?,
            details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        },
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Filters for the audit query API.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub kind: Option<String>,
    pub consumer: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Only events with a lower sequence number (paging backwards).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

impl Store {
    /// Serialises writers across processes: one transaction at a time
    /// appends, so sequence numbers and hashes stay one chain.
    async fn begin_exclusive(&self) -> Result<PoolConnection<Any>, StoreError> {
        let mut conn = self.pool().acquire().await?;
        match self.backend() {
            Backend::Sqlite => {
                sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            }
            Backend::Postgres => {
                sqlx::query("BEGIN").execute(&mut *conn).await?;
                if let Err(e) = sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(AUDIT_LOCK)
                    .execute(&mut *conn)
                    .await
                {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    return Err(e.into());
                }
            }
        }
        Ok(conn)
    }

    /// Appends events to the chain, in order, in one transaction.
    pub async fn append_audit(&self, events: Vec<Event>) -> Result<Vec<ChainedEvent>, StoreError> {
        let mut conn = self.begin_exclusive().await?;
        let result = Self::append_locked(&mut conn, events).await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = sqlx::query(end).execute(&mut *conn).await;
        match (result, ended) {
            (Ok(chained), Ok(_)) => Ok(chained),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e.into()),
        }
    }

    async fn append_locked(
        conn: &mut PoolConnection<Any>,
        events: Vec<Event>,
    ) -> Result<Vec<ChainedEvent>, StoreError> {
        let last = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **conn)
            .await?
            .map(|row| -> Result<(i64, String), sqlx::Error> {
                Ok((row.try_get("seq")?, row.try_get("hash")?))
            })
            .transpose()?;
        let chained = chain(last, events);
        // Several rows per statement: one round trip per chunk, not per event.
        for chunk in chained.chunks(ROWS_PER_INSERT) {
            let placeholders: Vec<String> = (0..chunk.len())
                .map(|row| {
                    let first = row * 12;
                    let params: Vec<String> = (1..=12).map(|i| format!("${}", first + i)).collect();
                    format!("({})", params.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO audit_events ({COLUMNS}) VALUES {}",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for e in chunk {
                query = query
                    .bind(e.seq)
                    .bind(&e.event.id)
                    .bind(e.event.time)
                    .bind(&e.event.kind)
                    .bind(e.event.severity.as_str())
                    .bind(e.event.request_id.as_deref())
                    .bind(e.event.client_ip.as_deref())
                    .bind(e.event.consumer.as_deref())
                    .bind(e.event.route.as_deref())
                    .bind(e.event.details.to_string())
                    .bind(&e.prev_hash)
                    .bind(&e.hash);
            }
            query.execute(&mut **conn).await?;
        }
        Ok(chained)
    }

    /// Which of these event IDs are stored already (spill replay), by the
    /// index on `id`: one query per [`ROWS_PER_INSERT`] IDs.
    pub async fn audit_existing_ids(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut found = std::collections::HashSet::new();
        for chunk in ids.chunks(ROWS_PER_INSERT) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id FROM audit_events WHERE id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(self.pool()).await? {
                found.insert(row.try_get::<String, _>("id")?);
            }
        }
        Ok(found)
    }

    /// Events after `seq`, oldest first.
    pub async fn audit_after(&self, seq: i64, limit: i64) -> Result<Vec<ChainedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(seq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Events at or after `time`, oldest first, after `seq`.
    pub async fn audit_since(
        &self,
        time: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<ChainedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE time >= $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(time)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// The newest events matching a filter, newest first.
    pub async fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<ChainedEvent>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if filter.kind.is_some() {
            sql += &format!(" AND type = {}", next());
        }
        if filter.consumer.is_some() {
            sql += &format!(" AND consumer = {}", next());
        }
        if filter.since.is_some() {
            sql += &format!(" AND time >= {}", next());
        }
        if filter.until.is_some() {
            sql += &format!(" AND time < {}", next());
        }
        if filter.before_seq.is_some() {
            sql += &format!(" AND seq < {}", next());
        }
        sql += &format!(" ORDER BY seq DESC LIMIT {}", next());
        let mut query = sqlx::query(&sql);
        if let Some(kind) = &filter.kind {
            query = query.bind(kind);
        }
        if let Some(consumer) = &filter.consumer {
            query = query.bind(consumer);
        }
        if let Some(since) = filter.since {
            query = query.bind(since);
        }
        if let Some(until) = filter.until {
            query = query.bind(until);
        }
        if let Some(before) = filter.before_seq {
            query = query.bind(before);
        }
        let rows = query.bind(filter.limit).fetch_all(self.pool()).await?;
        rows.iter().map(from_row).collect()
    }

    /// The newest sequence number older than `time`, if any.
    pub async fn audit_last_seq_before(&self, time: i64) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT seq FROM audit_events WHERE time < $1 ORDER BY seq DESC LIMIT 1")
            .bind(time)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.try_get("seq")).transpose()?)
    }

    /// Deletes events up to and including `seq`; returns how many.
    pub async fn audit_delete_through(&self, seq: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
            .bind(seq)
            .execute(self.pool())
            .await?
            .rows_affected())
    }
}
