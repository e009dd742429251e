//! Subcommands. Each parses its flags with clap, calls into the library and
//! turns the result into output and an exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use portcullis::config::load::{config_env_vars, load};
use portcullis::config::{ConfigErrors, Source, secret};
use portcullis::metrics::Metrics;
use portcullis::{Gateway, StartError, demo, logging, policy};

#[derive(Parser)]
#[command(name = "portcullis", version, about = "A self-hosted API security gateway")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// The config file.
    #[arg(long, short, env = "PORTCULLIS_CONFIG", default_value = "portcullis.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate a config and list every problem; exit 1 if there are any.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run a demo: the gateway in development mode in front of a built-in
    /// upstream that echoes what it receives.
    Quickstart {
        /// Public listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener (health, metrics).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
    /// Secret helpers.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Print a new random 256-bit secret, URL-safe base64.
    Generate,
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => serve(Source::File(config.config)).await,
        Command::Check { config } => Ok(check(&config.config)),
        Command::Quickstart { listen, admin_listen } => quickstart(listen, admin_listen).await,
        Command::Secret {
            command: SecretCommand::Generate,
        } => {
            println!("{}", secret::generate());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_problems(errors: &ConfigErrors) {
    for e in &errors.0 {
        eprintln!("error: {e}");
    }
    let n = errors.0.len();
    eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
}

fn check(path: &std::path::Path) -> ExitCode {
    let result = load(&Source::File(path.to_path_buf()), &config_env_vars())
        .and_then(|loaded| policy::compile(&loaded, &Metrics::new()).map(|p| (loaded, p)));
    match result {
        Ok((_, policy)) => {
            for w in &policy.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: OK ({}, {} route{}, {} upstream{})",
                path.display(),
                policy.environment.as_str(),
                policy.routes.len(),
                if policy.routes.len() == 1 { "" } else { "s" },
                policy.upstreams.len(),
                if policy.upstreams.len() == 1 { "" } else { "s" },
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_problems(&errors);
            ExitCode::FAILURE
        }
    }
}

async fn serve(source: Source) -> Result<ExitCode> {
    let loaded = match load(&source, &config_env_vars()) {
        Ok(loaded) => loaded,
        Err(errors) => {
            print_problems(&errors);
            return Ok(ExitCode::FAILURE);
        }
    };
    let _log = logging::init(&loaded.config.log.level);
    let gateway = match Gateway::start(loaded).await {
        Ok(gateway) => gateway,
        Err(StartError::Config(errors)) => {
            print_problems(&errors);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    run_until_stopped(gateway).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP reloads; SIGTERM or Ctrl-C drains and stops.
async fn run_until_stopped(gateway: Gateway) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = gateway.reload();
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping: no new connections; draining in-flight requests");
    gateway.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn quickstart(listen: SocketAddr, admin_listen: SocketAddr) -> Result<ExitCode> {
    let demo_addr = demo::start("127.0.0.1:0".parse().expect("a valid address"))
        .await
        .context("starting the demo upstream")?;
    let text = format!(
        r#"# The quickstart config: development mode, one public route to the demo upstream.
environment = "development"

[server]
listen = "{listen}"
admin_listen = "{admin_listen}"

[[upstreams]]
name = "demo"
targets = ["http://{demo_addr}"]

[[routes]]
id = "public"
path = "/"
upstream = "demo"
auth = ["none"]
"#
    );
    let loaded = load(
        &Source::Text {
            name: "quickstart".into(),
            text,
        },
        &[],
    )
    .map_err(|e| anyhow::anyhow!("the quickstart config is invalid:\n{e}"))?;
    let _log = logging::init("warn,access=info");
    let gateway = Gateway::start(loaded).await?;
    let public = gateway.public_addr();
    let admin = gateway.admin_addr();
    println!(
        r#"
portcullis quickstart: the gateway is on http://{public}, in front of a demo upstream
that answers with JSON describing the request it received. Admin: http://{admin}

Try, in another terminal:
  curl -i http://{public}/hello?name=world          # proxied; note X-Request-Id and X-Forwarded-* in the echo
  curl -i --path-as-is http://{public}/api/../admin  # normalised to /admin before routing
  curl -i http://{public}/files%2fsecret            # encoded slash: 400 problem+json
  curl -i -X TRACE http://{public}/                 # 405 with Allow
  curl -s http://{admin}/readyz
  curl -s http://{admin}/metrics | grep portcullis_requests_total

Access log lines appear below. Ctrl-C stops.
"#
    );
    run_until_stopped(gateway).await?;
    Ok(ExitCode::SUCCESS)
}
