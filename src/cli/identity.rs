//! `consumers …` and `keys …`: the same operations as the admin API, run
//! directly against the store (a running gateway notices within a second).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;

use portcullis::config::units::parse_duration;
use portcullis::keys::manage::{self, Actor, CreatedKey, KeyRequest};
use portcullis::store::now_ms;

use super::StoreSession;

#[derive(Subcommand)]
pub enum ConsumerCommand {
    /// Create a consumer.
    Create {
        name: String,
        /// Free-form JSON object stored with it.
        #[arg(long, default_value = "{}")]
        metadata: String,
        #[arg(long)]
        json: bool,
    },
    /// List consumers.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a consumer and all of its keys.
    Delete {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a key; the key is printed once and never again.
    Create {
        #[arg(long)]
        consumer: String,
        /// Comma-separated scopes.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. 90d.
        #[arg(long)]
        expires: Option<String>,
        /// The key's own limit, e.g. "100/minute".
        #[arg(long)]
        rate_limit: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        consumer: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key; every gateway refuses it within about a second.
    Revoke {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Issue a replacement; the old key keeps working for the grace period.
    Rotate {
        id: String,
        #[arg(long)]
        grace: String,
        #[arg(long)]
        json: bool,
    },
}

fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("values serialise")
    );
}

fn print_created(key: &CreatedKey, json: bool) {
    if json {
        print_json(key);
        return;
    }
    println!("key {} for consumer {}", key.id, key.consumer);
    if !key.scopes.is_empty() {
        println!("  scopes:     {}", key.scopes.join(", "));
    }
    if let Some(expires) = &key.expires_at {
        println!("  expires:    {expires}");
    }
    if let Some(limit) = &key.rate_limit {
        println!("  rate limit: {limit}");
    }
    println!(
        "\n{}\n\nStore it now: it is not kept and cannot be shown again.",
        key.key
    );
}

fn duration(text: &str) -> Result<std::time::Duration> {
    parse_duration(text).map_err(anyhow::Error::msg)
}

pub async fn consumers(config: &Path, command: ConsumerCommand) -> Result<ExitCode> {
    let session = StoreSession::open(config).await?;
    let result = match command {
        ConsumerCommand::Create { name, metadata, json } => {
            let metadata: serde_json::Value = serde_json::from_str(&metadata)
                .map_err(|e| anyhow::anyhow!("--metadata is not JSON: {e}"))?;
            manage::create_consumer(&session.store, &session.audit, &name, &metadata, Actor::CLI)
                .await
                .map(|c| {
                    if json {
                        print_json(&c)
                    } else {
                        println!("consumer {} created", c.name)
                    }
                })
        }
        ConsumerCommand::List { json } => session.store.list_consumers().await.map(|list| {
            if json {
                print_json(&list)
            } else {
                for c in list {
                    println!("{}\t{}\t{}", c.name, c.created_at, c.metadata);
                }
            }
        }),
        ConsumerCommand::Delete { name, json } => {
            manage::delete_consumer(&session.store, &session.audit, &name, Actor::CLI)
                .await
                .map(|keys| {
                    if json {
                        print_json(&serde_json::json!({ "deleted": name, "deleted_keys": keys }))
                    } else {
                        println!("consumer {name} deleted with {} key(s)", keys.len())
                    }
                })
        }
    };
    session.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

pub async fn keys(config: &Path, command: KeyCommand) -> Result<ExitCode> {
    let session = StoreSession::open(config).await?;
    let (store, audit) = (&session.store, &session.audit);
    let result: Result<()> = async {
        match command {
            KeyCommand::Create {
                consumer,
                scopes,
                expires,
                rate_limit,
                json,
            } => {
                let request = KeyRequest {
                    consumer,
                    scopes: scopes.into_iter().filter(|s| !s.is_empty()).collect(),
                    expires_in: expires.as_deref().map(duration).transpose()?,
                    rate_limit,
                };
                let created = manage::create_key(store, audit, &request, Actor::CLI).await?;
                print_created(&created, json);
            }
            KeyCommand::List { consumer, json } => {
                let now = now_ms();
                let keys: Vec<_> = store
                    .list_keys(consumer.as_deref())
                    .await?
                    .iter()
                    .map(|k| k.info(now))
                    .collect();
                if json {
                    print_json(&keys);
                } else {
                    for k in keys {
                        println!(
                            "{}\t{}\t{}\tscopes={}\tuses={}\texpires={}",
                            k.id,
                            k.consumer,
                            k.state,
                            k.scopes.join(","),
                            k.usage_count,
                            k.expires_at.as_deref().unwrap_or("never")
                        );
                    }
                }
            }
            KeyCommand::Revoke { id, json } => {
                let info = manage::revoke_key(store, audit, &id, Actor::CLI).await?;
                if json {
                    print_json(&info);
                } else {
                    println!("key {id} revoked");
                }
            }
            KeyCommand::Rotate { id, grace, json } => {
                let created = manage::rotate_key(store, audit, &id, duration(&grace)?, Actor::CLI).await?;
                if !json {
                    println!("key {id} keeps working for {grace}; its replacement:");
                }
                print_created(&created, json);
            }
        }
        Ok(())
    }
    .await;
    session.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}
