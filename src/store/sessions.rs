//! Login sessions, found by the SHA-256 of their ID (the store never holds
//! an ID a cookie could be made from).

use sqlx::Row;

use super::{Store, StoreError, now_ms};

/// One session as stored.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SessionRecord {
    pub id_hash: String,
    pub username: String,
    /// `local`, or the name of an `[[auth.oidc]]` provider.
    pub provider: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    /// Provider tokens, encrypted (see `crate::sessions::crypto`).
    pub tokens: Option<String>,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

const COLUMNS: &str = "id_hash, username, provider, email, name, roles, tokens, created_at, \
                       last_seen_at, expires_at, revoked_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<SessionRecord, StoreError> {
    let roles: String = row.try_get("roles")?;
    Ok(SessionRecord {
        id_hash: row.try_get("id_hash")?,
        username: row.try_get("username")?,
        provider: row.try_get("provider")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        roles: roles.split_whitespace().map(str::to_string).collect(),
        tokens: row.try_get("tokens")?,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    pub async fn create_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, username, provider, email, name, roles, tokens, created_at, \
             last_seen_at, expires_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&s.id_hash)
        .bind(&s.username)
        .bind(&s.provider)
        .bind(&s.email)
        .bind(&s.name)
        .bind(s.roles.join(" "))
        .bind(&s.tokens)
        .bind(s.created_at)
        .bind(s.last_seen_at)
        .bind(s.expires_at)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn find_session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM sessions WHERE id_hash = $1"))
            .bind(id_hash)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Revokes one session; returns whether it existed and was live.
    pub async fn revoke_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = $1, tokens = NULL, updated_at = $2 \
             WHERE id_hash = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(now)
        .bind(id_hash)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Revokes every live session of a user name, of one provider
    /// (`local` for local users) or of all; returns their hashes.
    pub async fn revoke_user_sessions(
        &self,
        username: &str,
        provider: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let provider = provider.unwrap_or("");
        let hashes: Vec<String> = sqlx::query(
            "SELECT id_hash FROM sessions WHERE username = $1 AND revoked_at IS NULL \
             AND ($2 = '' OR provider = $3)",
        )
        .bind(username)
        .bind(provider)
        .bind(provider)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| r.try_get("id_hash"))
        .collect::<Result<_, _>>()?;
        let now = now_ms();
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1, tokens = NULL, updated_at = $2 \
             WHERE username = $3 AND revoked_at IS NULL AND ($4 = '' OR provider = $5)",
        )
        .bind(now)
        .bind(now)
        .bind(username)
        .bind(provider)
        .bind(provider)
        .execute(self.pool())
        .await?;
        Ok(hashes)
    }

    /// Replaces a session's (encrypted) provider tokens after a refresh.
    pub async fn set_session_tokens(&self, id_hash: &str, tokens: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET tokens = $1 WHERE id_hash = $2 AND revoked_at IS NULL")
            .bind(tokens)
            .bind(id_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records when sessions were last used (batched by the cache).
    pub async fn touch_session(&self, id_hash: &str, last_seen_at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2 AND last_seen_at < $3")
            .bind(last_seen_at)
            .bind(id_hash)
            .bind(last_seen_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Hashes of sessions revoked after `since`, and the latest change
    /// time. (Only revocations: dropping a live session from a cache would
    /// lose its in-memory last use.)
    pub async fn sessions_changed_since(&self, since: i64) -> Result<(Vec<String>, i64), StoreError> {
        let rows =
            sqlx::query("SELECT id_hash, updated_at FROM sessions WHERE updated_at > $1 AND revoked_at IS NOT NULL ORDER BY updated_at")
                .bind(since)
                .fetch_all(self.pool())
                .await?;
        let mut latest = since;
        let mut hashes = Vec::with_capacity(rows.len());
        for row in &rows {
            hashes.push(row.try_get::<String, _>("id_hash")?);
            latest = latest.max(row.try_get::<i64, _>("updated_at")?);
        }
        Ok((hashes, latest))
    }

    /// Deletes sessions that ended before `before` (expired or revoked);
    /// returns how many.
    pub async fn prune_sessions(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at < $1 OR revoked_at < $2")
            .bind(before)
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Live sessions, newest first.
    pub async fn list_sessions(&self, username: Option<&str>) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM sessions WHERE revoked_at IS NULL AND expires_at > $1 \
             AND ($2 = '' OR username = $3) ORDER BY created_at DESC"
        ))
        .bind(now_ms())
        .bind(username.unwrap_or(""))
        .bind(username.unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }
}
