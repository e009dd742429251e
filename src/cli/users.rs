//! `users …`: local users who log in to session routes with a password.
//! Passwords are read from stdin (`--password-stdin`), never from the
//! command line, where other users of the machine could read them.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use portcullis::audit::{Event, Severity};
use portcullis::users;

use super::StoreSession;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from stdin.
    Create {
        username: String,
        /// Comma-separated roles (for routes' `roles`).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Read the password from the first line of stdin (required).
        #[arg(long)]
        password_stdin: bool,
        #[arg(long)]
        json: bool,
    },
    /// Set a user's password (read from stdin); their sessions end.
    Passwd {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user: they cannot log in, and their sessions end now.
    Disable { username: String },
    /// Enable a disabled user again.
    Enable { username: String },
    /// List users (never their hashes).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Import users with existing bcrypt (or argon2id) hashes: one
    /// `username:hash[:role,role]` per line. Bcrypt hashes are upgraded to
    /// argon2id at each user's next login.
    Import { file: PathBuf },
}

fn read_password(password_stdin: bool) -> Result<String> {
    if !password_stdin {
        bail!("pass --password-stdin and write the password to stdin (never on the command line)");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    users::hash_password(&password).map_err(anyhow::Error::msg)?;
    Ok(password)
}

fn audit(session: &StoreSession, kind: &str, user: &str, detail: Option<(&str, serde_json::Value)>) {
    let mut event = Event::new(kind, Severity::Notice)
        .consumer(user)
        .detail("via", "cli");
    if let Some((k, v)) = detail {
        event = event.detail(k, v);
    }
    session.audit.emit(event);
}

/// Ends a user's sessions (every instance notices within a second).
async fn end_sessions(session: &StoreSession, username: &str) -> Result<usize> {
    // Only the local user's: a provider login may carry the same name.
    let ended = session
        .store
        .revoke_user_sessions(username, Some("local"))
        .await?;
    if !ended.is_empty() {
        audit(
            session,
            "session.revoked",
            username,
            Some(("sessions", ended.len().into())),
        );
        if let Some(redis) = &session.redis
            && let Err(error) =
                portcullis::ratelimit::redis::publish_sessions_revoked_once(redis, &ended).await
        {
            eprintln!(
                "note: could not announce the revocation through Redis ({error}); gateways notice within a second anyway"
            );
        }
    }
    Ok(ended.len())
}

pub async fn run(config: &Path, command: UserCommand) -> Result<ExitCode> {
    let session = StoreSession::open(config).await?;
    let result = run_with(&session, command).await;
    session.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn run_with(session: &StoreSession, command: UserCommand) -> Result<()> {
    let store = &session.store;
    match command {
        UserCommand::Create {
            username,
            roles,
            password_stdin,
            json,
        } => {
            let password = read_password(password_stdin)?;
            let hash = users::hash_password(&password).map_err(anyhow::Error::msg)?;
            let roles: Vec<String> = roles.into_iter().filter(|r| !r.is_empty()).collect();
            let user = store.create_user(&username, &hash, &roles).await?;
            audit(session, "user.created", &username, Some(("roles", roles.into())));
            if json {
                println!("{}", serde_json::to_string_pretty(&user)?);
            } else {
                println!("user {username} created");
            }
        }
        UserCommand::Passwd {
            username,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            let hash = users::hash_password(&password).map_err(anyhow::Error::msg)?;
            store.set_password_hash(&username, &hash).await?;
            audit(session, "user.password_changed", &username, None);
            let ended = end_sessions(session, &username).await?;
            println!("password of {username} changed; {ended} session(s) ended");
        }
        UserCommand::Disable { username } => {
            store.set_user_disabled(&username, true).await?;
            audit(session, "user.disabled", &username, None);
            let ended = end_sessions(session, &username).await?;
            println!("user {username} disabled; {ended} session(s) ended");
        }
        UserCommand::Enable { username } => {
            store.set_user_disabled(&username, false).await?;
            audit(session, "user.enabled", &username, None);
            println!("user {username} enabled");
        }
        UserCommand::List { json } => {
            let list = store.list_users().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for u in list {
                    println!(
                        "{}\t{}\troles={}\thash={}\tlast_login={}",
                        u.username,
                        if u.disabled_at.is_some() {
                            "disabled"
                        } else {
                            "active"
                        },
                        u.roles.join(","),
                        u.hash_kind,
                        u.last_login_at.as_deref().unwrap_or("never"),
                    );
                }
            }
        }
        UserCommand::Import { file } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut imported = 0;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut parts = line.splitn(3, ':');
                let (Some(username), Some(hash)) = (parts.next(), parts.next()) else {
                    bail!("{}:{}: expected username:hash[:roles]", file.display(), n + 1);
                };
                users::check_hash(hash).map_err(|e| anyhow::anyhow!("{}:{}: {e}", file.display(), n + 1))?;
                let roles: Vec<String> = parts
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(str::to_string)
                    .collect();
                store
                    .create_user(username, hash, &roles)
                    .await
                    .with_context(|| format!("{}:{}", file.display(), n + 1))?;
                audit(session, "user.created", username, Some(("imported", true.into())));
                imported += 1;
            }
            println!("{imported} user(s) imported");
        }
    }
    Ok(())
}
