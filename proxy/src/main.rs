//! `pgshift`: the PostgreSQL proxy with an embedded upgrade control plane.

mod admin;
mod backend;
mod routing;
mod server;
mod session;

use clap::{Parser, Subcommand};
use control::Controller;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "pgshift",
    version,
    about = "Zero-downtime PostgreSQL major upgrades through a wire-protocol proxy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy, the admin console and the control plane.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "pgshift.toml")]
        config: PathBuf,
    },
    /// Load and validate a configuration file, then exit.
    Check {
        #[arg(long, short, default_value = "pgshift.toml")]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let path = match &cli.cmd {
        Cmd::Serve { config } | Cmd::Check { config } => config.clone(),
    };
    let cfg = match config::load_file(&path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("pgshift: invalid configuration\n{e}");
            return std::process::ExitCode::from(2);
        }
    };
    if matches!(cli.cmd, Cmd::Check { .. }) {
        println!("{}: configuration is valid", path.display());
        return std::process::ExitCode::SUCCESS;
    }
    // The control plane, accept loop and journal run on a small runtime of their own; client
    // sessions on the I/O threads (server::Shards).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pgshift-control")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgshift: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgshift: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PGSHIFT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("PGSHIFT_LOG_FORMAT").is_ok_and(|v| v == "json");
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

async fn serve(cfg: Arc<config::Config>) -> anyhow::Result<()> {
    let controller = Controller::open(cfg.clone()).map_err(|e| anyhow::anyhow!("journal: {e}"))?;
    let (side, epoch) = controller.serving_side();
    let router = routing::Router::new(
        side,
        epoch,
        routing::BackendAddr::from_config(&cfg.source),
        routing::BackendAddr::from_config(&cfg.target),
    );
    let listener = tokio::net::TcpListener::bind(&cfg.proxy.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.proxy.listen))?;
    tracing::info!(listen = %cfg.proxy.listen, serving = side.as_str(), epoch, "pgshift listening");
    let shards = server::Shards::start(cfg.proxy.workers)
        .map_err(|e| anyhow::anyhow!("cannot start I/O threads: {e}"))?;
    let proxy = server::Proxy::new(cfg.clone(), router.clone(), controller.clone());
    controller.attach(router);
    tokio::select! {
        _ = server::serve(proxy, listener, shards) => Ok(()),
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
