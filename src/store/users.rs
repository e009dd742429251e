//! Local users: people who log in to session routes with a password.
//! Only the password's hash is stored (argon2id, or a legacy bcrypt hash
//! until its owner's next login re-hashes it).

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};

/// A user as listed (never with the hash).
#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub roles: Vec<String>,
    /// RFC 3339, when disabled.
    pub disabled_at: Option<String>,
    pub created_at: String,
    pub last_login_at: Option<String>,
    /// `argon2id` or `bcrypt` (awaiting its upgrade).
    pub hash_kind: &'static str,
}

/// A user with the stored hash, for checking a password.
#[derive(Clone, Debug)]
pub struct UserRecord {
    pub user: User,
    pub password_hash: String,
    pub disabled: bool,
}

/// User names travel in headers and logs: short and plain.
pub fn validate_username(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "user name `{name}` must be 1 to 64 characters from A-Z a-z 0-9 - _ . @ +"
        )))
    }
}

fn hash_kind(hash: &str) -> &'static str {
    if hash.starts_with("$argon2id$") {
        "argon2id"
    } else {
        "bcrypt"
    }
}

const COLUMNS: &str = "id, username, password_hash, roles, disabled_at, created_at, last_login_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<UserRecord, StoreError> {
    let rfc = crate::keys::manage::rfc3339;
    let hash: String = row.try_get("password_hash")?;
    let roles: String = row.try_get("roles")?;
    let disabled_at: Option<i64> = row.try_get("disabled_at")?;
    let last_login_at: Option<i64> = row.try_get("last_login_at")?;
    Ok(UserRecord {
        user: User {
            id: row.try_get("id")?,
            username: row.try_get("username")?,
            roles: roles.split_whitespace().map(str::to_string).collect(),
            disabled_at: disabled_at.map(rfc),
            created_at: rfc(row.try_get("created_at")?),
            last_login_at: last_login_at.map(rfc),
            hash_kind: hash_kind(&hash),
        },
        disabled: disabled_at.is_some(),
        password_hash: hash,
    })
}

impl Store {
    /// Adds a user with an already computed hash (argon2id, or bcrypt from
    /// `users import`).
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        roles: &[String],
    ) -> Result<User, StoreError> {
        validate_username(username)?;
        for role in roles {
            crate::keys::manage::validate_scope(role)
                .map_err(|_| StoreError::Invalid(format!("`{role}` is not a valid role name")))?;
        }
        if self.find_user(username).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "a user named `{username}` already exists"
            )));
        }
        let now = now_ms();
        let id = format!("usr_{}", crate::keys::random_alnum(16));
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, roles, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&id)
        .bind(username)
        .bind(password_hash)
        .bind(roles.join(" "))
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(self.find_user(username).await?.expect("just inserted").user)
    }

    pub async fn find_user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE username = $1"))
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM users ORDER BY username"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| from_row(r).map(|u| u.user)).collect()
    }

    /// Replaces a user's password hash (a new password, or a bcrypt hash
    /// upgraded to argon2id).
    pub async fn set_password_hash(&self, username: &str, password_hash: &str) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE username = $3")
            .bind(password_hash)
            .bind(now_ms())
            .bind(username)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user `{username}`")));
        }
        Ok(())
    }

    /// Disables (or enables again) a user; a disabled user cannot log in,
    /// and their sessions are revoked by the caller.
    pub async fn set_user_disabled(&self, username: &str, disabled: bool) -> Result<(), StoreError> {
        let now = now_ms();
        let done = sqlx::query("UPDATE users SET disabled_at = $1, updated_at = $2 WHERE username = $3")
            .bind(disabled.then_some(now))
            .bind(now)
            .bind(username)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user `{username}`")));
        }
        Ok(())
    }

    /// Replaces a hash only if it is still `old` (an upgrade at login must
    /// not undo a password change made meanwhile).
    pub async fn upgrade_password_hash(
        &self,
        username: &str,
        old: &str,
        new: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE users SET password_hash = $1, updated_at = $2 WHERE username = $3 AND password_hash = $4",
        )
        .bind(new)
        .bind(now_ms())
        .bind(username)
        .bind(old)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn record_login(&self, username: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET last_login_at = $1 WHERE username = $2")
            .bind(now_ms())
            .bind(username)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
