//! Subcommands. Each parses its flags with clap, calls into the library and
//! turns the result into output and an exit code. `anyhow` stops here.

mod audit;
mod backup;
mod gateway;
mod identity;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use portcullis::audit::Audit;
use portcullis::audit::writer::AuditTask;
use portcullis::config::load::{config_env_vars, load};
use portcullis::config::{LoadedConfig, Source};
use portcullis::metrics::Metrics;
use portcullis::store::Store;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "A self-hosted API security gateway")]
pub struct Cli {
    /// The config file.
    #[arg(
        long,
        short,
        global = true,
        env = "PORTCULLIS_CONFIG",
        default_value = "portcullis.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Validate a config and list every problem; exit 1 if there are any.
    Check,
    /// Run a demo: the gateway in development mode in front of a built-in
    /// upstream that echoes what it receives, with a demo API key.
    Quickstart(gateway::QuickstartArgs),
    /// Secret helpers.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Apply pending store migrations.
    Migrate,
    /// Manage consumers (the clients that own keys).
    Consumers {
        #[command(subcommand)]
        command: identity::ConsumerCommand,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: identity::KeyCommand,
    },
    /// Manage local users (who log in to session routes with a password).
    Users {
        #[command(subcommand)]
        command: users::UserCommand,
    },
    /// Read and check the audit log.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Write a consistent copy of the SQLite store to FILE (which must not
    /// exist), while the gateway keeps serving.
    Backup { file: PathBuf },
    /// Replace the SQLite store's contents with a backup's, after checking
    /// it (integrity, audit chain); restart running gateways afterwards.
    Restore { file: PathBuf },
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Print a new random 256-bit secret, URL-safe base64.
    Generate,
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let config = cli.config;
    match cli.command {
        Command::Serve => gateway::serve(Source::File(config)).await,
        Command::Check => Ok(gateway::check(&config)),
        Command::Quickstart(args) => gateway::quickstart(args).await,
        Command::Secret {
            command: SecretCommand::Generate,
        } => {
            println!("{}", portcullis::config::secret::generate());
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let loaded = read_config(&config)?;
            let store = Store::connect(&loaded.config.store, &loaded.base_dir)
                .await
                .context("connecting to the store")?;
            store.migrate().await.context("migrating the store")?;
            println!(
                "store is up to date ({})",
                portcullis::store::redact_url(&loaded.config.store.url)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Consumers { command } => identity::consumers(&config, command).await,
        Command::Keys { command } => identity::keys(&config, command).await,
        Command::Users { command } => users::run(&config, command).await,
        Command::Audit { command } => audit::run(&config, command).await,
        Command::Backup { file } => backup::run(&config, &file, backup::Direction::Backup).await,
        Command::Restore { file } => backup::run(&config, &file, backup::Direction::Restore).await,
    }
}

/// Reads and parses the config without compiling routes or resolving
/// secrets: store commands need only `[store]` and `[audit]`.
fn read_config(path: &std::path::Path) -> Result<LoadedConfig> {
    load(&Source::File(path.to_path_buf()), &config_env_vars())
        .map_err(|errors| anyhow::anyhow!("{}: the config has problems:\n{errors}", path.display()))
}

/// The store (migrated unless `[store] migrate = false`) and an audit
/// writer, for commands that change things.
struct StoreSession {
    store: Store,
    /// `[redis]`, to announce revocations at once.
    redis: Option<portcullis::config::RedisConfig>,
    audit: Audit,
    audit_task: AuditTask,
}

impl StoreSession {
    async fn open(path: &std::path::Path) -> Result<StoreSession> {
        let loaded = read_config(path)?;
        let store = Store::connect(&loaded.config.store, &loaded.base_dir)
            .await
            .with_context(|| {
                format!(
                    "connecting to the store {}",
                    portcullis::store::redact_url(&loaded.config.store.url)
                )
            })?;
        if loaded.config.store.migrate {
            store.migrate().await.context("migrating the store")?;
        }
        let (audit, audit_task) = portcullis::audit::start(
            &loaded.config.audit,
            &loaded.base_dir,
            Some(store.clone()),
            &Metrics::new(),
        );
        Ok(StoreSession {
            redis: loaded.config.redis.clone(),
            store,
            audit,
            audit_task,
        })
    }

    /// Writes the audit events this command made, then closes the store.
    async fn close(self) {
        self.audit.flush().await;
        self.audit_task.shutdown().await;
        self.store.close().await;
    }
}
