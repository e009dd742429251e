//! `serve`, `check` and `quickstart`: the gateway itself.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};

use portcullis::config::load::{config_env_vars, load};
use portcullis::config::{ConfigErrors, Source};
use portcullis::runtime::Runtime;
use portcullis::{Gateway, StartError, demo, logging, policy};

#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Public listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listener (health, metrics, admin API).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
}

fn print_problems(errors: &ConfigErrors) {
    for e in &errors.0 {
        eprintln!("error: {e}");
    }
    let n = errors.0.len();
    eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
}

pub fn check(path: &std::path::Path) -> ExitCode {
    let offline = Runtime::offline();
    let result = load(&Source::File(path.to_path_buf()), &config_env_vars())
        .and_then(|loaded| policy::compile(&loaded, &offline).map(|p| (loaded, p)));
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

pub async fn serve(source: Source) -> Result<ExitCode> {
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

pub async fn quickstart(args: QuickstartArgs) -> Result<ExitCode> {
    let QuickstartArgs { listen, admin_listen } = args;
    let demo_addr = demo::start("127.0.0.1:0".parse().expect("a valid address"))
        .await
        .context("starting the demo upstream")?;
    // A fresh embedded store for this run, removed on exit.
    let dir = std::env::temp_dir().join(format!("portcullis-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the quickstart folder")?;
    let admin_token = portcullis::config::secret::generate();
    let text = format!(
        r#"# The quickstart config: development mode, a public route and an API-key
# route to the demo upstream, an embedded SQLite store in a temporary folder.
environment = "development"

[server]
listen = "{listen}"
admin_listen = "{admin_listen}"

[store]
url = "sqlite://{dir}/quickstart.db"

[audit]
file = "{dir}/audit.jsonl"
spill_file = "{dir}/audit-spill.jsonl"
auth_success_sample = 1.0

[secrets]
admin_token = "{admin_token}"

[[upstreams]]
name = "demo"
targets = ["http://{demo_addr}"]

[[routes]]
id = "api"
path = "/api"
upstream = "demo"
auth = ["api_key"]
scopes = ["demo:read"]

[[routes]]
id = "public"
path = "/"
upstream = "demo"
auth = ["none"]
"#,
        dir = dir.display()
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
    let runtime = &gateway.shared().runtime;
    let store = runtime.store.as_ref().context("the quickstart store")?;
    let actor = portcullis::keys::manage::Actor::CLI;
    portcullis::keys::manage::create_consumer(store, &runtime.audit, "demo", &serde_json::json!({}), actor)
        .await?;
    let request = portcullis::keys::manage::KeyRequest {
        consumer: "demo".into(),
        scopes: vec!["demo:read".into()],
        ..Default::default()
    };
    let key = portcullis::keys::manage::create_key(store, &runtime.audit, &request, actor).await?;
    let public = gateway.public_addr();
    let admin = gateway.admin_addr();
    println!(
        r#"
portcullis quickstart: the gateway is on http://{public}, in front of a demo upstream
that answers with JSON describing the request it received. Admin: http://{admin}

A demo consumer `demo` has the API key (scope demo:read):
  {key}

Try, in another terminal:
  curl -i http://{public}/hello?name=world          # public route; note X-Request-Id and X-Forwarded-* in the echo
  curl -i http://{public}/api/tasks                 # API-key route without a key: 401 problem+json
  curl -i -H 'X-API-Key: {key}' http://{public}/api/tasks
                                                    # with the key: 200, and X-Portcullis-Consumer in the echo
  curl -i --path-as-is http://{public}/api/../admin  # normalised to /admin (the public route) before routing
  curl -i http://{public}/files%2fsecret            # encoded slash: 400 problem+json
  curl -i -X TRACE http://{public}/                 # 405 with Allow
  curl -s http://{admin}/readyz
  curl -s http://{admin}/metrics | grep portcullis_requests_total
  curl -s -H 'Authorization: Bearer {admin_token}' http://{admin}/admin/api/v1/audit
                                                    # the audit log, via the admin API

Access log lines appear below. Ctrl-C stops.
"#,
        key = key.key,
    );
    let result = run_until_stopped(gateway).await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(ExitCode::SUCCESS)
}
