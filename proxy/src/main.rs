//! `pgshift`: the PostgreSQL proxy with an embedded upgrade control plane.
//!
//! The binary parses the command line and starts the pieces the `proxy` library holds.

use proxy::{capture, http, logfmt, metrics, mirror, routing, server};

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
    /// Show the upgrade's progress, asked of a running pgshift (GET /progress on [http] listen).
    Status {
        #[arg(long, short, default_value = "pgshift.toml")]
        config: PathBuf,
        /// `text` (a table) or `json`.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Bearer token of the HTTP API; default: the configuration's [http] token or
        /// token_file.
        #[arg(long, env = "PGSHIFT_HTTP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// With [http.tls]: PEM file of the CA certificate(s) that sign the HTTP server's
        /// certificate, which must name the host connected to (`[http] listen`, a wildcard
        /// address as 127.0.0.1 / ::1). Given without [http.tls], HTTPS is used anyway.
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
        /// With [http.tls] client_ca: PEM client certificate to show (with --key).
        #[arg(long, value_name = "FILE", requires = "key")]
        cert: Option<PathBuf>,
        /// PEM private key of --cert.
        #[arg(long, value_name = "FILE", requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Like `serve`, with the upgrade started at once (or resumed where it stood; nothing
    /// happens when it is already done). Prints progress lines to stderr.
    Upgrade {
        #[arg(long, short, default_value = "pgshift.toml")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let path = match &cli.cmd {
        Cmd::Serve { config }
        | Cmd::Check { config }
        | Cmd::Status { config, .. }
        | Cmd::Upgrade { config } => config.clone(),
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
    if let Cmd::Status {
        format,
        token,
        cacert,
        cert,
        key,
        ..
    } = cli.cmd
    {
        let client_cert = cert.zip(key);
        return status(&cfg, &path, format, token, cacert, client_cert);
    }
    let start_upgrade = matches!(cli.cmd, Cmd::Upgrade { .. });
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
    // Passwords from AWS Secrets Manager, read before anything connects.
    let mut resolved = (*cfg).clone();
    let cfg = match rt.block_on(control::secrets::resolve(&mut resolved)) {
        Ok(keys) if keys.is_empty() => cfg,
        Ok(keys) => {
            tracing::info!(keys = %keys.join(", "), "passwords read from AWS Secrets Manager");
            Arc::new(resolved)
        }
        Err(e) => {
            eprintln!("pgshift: cannot read the configuration's secrets: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(serve(cfg, start_upgrade)) {
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
    // Colours only on a terminal: log files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.fmt_fields(logfmt::LatestFields).init();
    }
}

/// `pgshift status`: GET /progress from the running pgshift named by the configuration, with
/// `token` (`--token` / `$PGSHIFT_HTTP_TOKEN`) or else the configuration's token; over HTTPS
/// when the configuration has `[http.tls]` (or `cacert` is given), trusting `cacert` and
/// showing `client_cert` (certificate and key files) if given.
fn status(
    cfg: &config::Config,
    path: &std::path::Path,
    format: Format,
    token: Option<String>,
    cacert: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let token = match token.filter(|t| !t.is_empty()) {
        Some(t) => Some(t),
        None => match cfg.http.resolve_token() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("pgshift status: {e} (or pass --token / set PGSHIFT_HTTP_TOKEN)");
                return ExitCode::FAILURE;
            }
        },
    };
    let Some(listen) = cfg.http.listen_addr() else {
        eprintln!(
            "pgshift status: the HTTP server is disabled in {} ([http] listen = \"\"); \
             `pgshift status` reads GET /progress from it (or use SHOW UPGRADE STATUS in the admin console)",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    let addr = match http::connect_addr(listen) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pgshift status: [http] listen in {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let tls_cfg = &cfg.http.tls;
    let https = match &cacert {
        Some(ca) => {
            let client = client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            match tls::HttpsClient::new(ca, client) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("pgshift status: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None if tls_cfg.enabled() => {
            eprintln!(
                "pgshift status: the HTTP server speaks HTTPS ([http.tls] in {}): pass --cacert \
                 <PEM file of the CA that signs [http.tls] cert>",
                path.display()
            );
            return ExitCode::FAILURE;
        }
        None => None,
    };
    if tls_cfg.client_ca.is_some() && client_cert.is_none() {
        eprintln!(
            "pgshift status: [http.tls] client_ca in {} asks for a client certificate: pass \
             --cert and --key",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    let scheme = if https.is_some() { "https" } else { "http" };
    let (code, body) = match http::get_blocking(
        &addr,
        "/progress",
        token.as_deref(),
        https.as_ref(),
        std::time::Duration::from_secs(5),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                    "pgshift status: {e} ([http] listen in {}); is pgshift running with this configuration?",
                    path.display()
                );
            return ExitCode::FAILURE;
        }
    };
    if code == 401 {
        eprintln!(
            "pgshift status: GET {scheme}://{addr}/progress answered 401: {body}\n\
             pass the HTTP token with --token or PGSHIFT_HTTP_TOKEN, or set [http] token or \
             token_file in {}",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    if code != 200 {
        eprintln!("pgshift status: GET {scheme}://{addr}/progress answered {code}: {body}");
        return ExitCode::FAILURE;
    }
    let value: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("pgshift status: GET {scheme}://{addr}/progress is not JSON ({e}): {body}");
            return ExitCode::FAILURE;
        }
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&value).unwrap_or(body)),
        Format::Text => {
            let Some(obj) = value.as_object() else {
                eprintln!(
                    "pgshift status: GET {scheme}://{addr}/progress is not a JSON object: {body}"
                );
                return ExitCode::FAILURE;
            };
            let keys = http::PROGRESS_FIELDS.iter().map(|k| k.to_string()).chain(
                obj.keys()
                    .filter(|k| !http::PROGRESS_FIELDS.contains(&k.as_str()))
                    .cloned(),
            );
            let width = obj.keys().map(String::len).max().unwrap_or(0);
            for k in keys {
                let Some(v) = obj.get(&k) else { continue };
                let text = match v {
                    serde_json::Value::Null => "-".to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => match n.as_f64() {
                        Some(f) if !n.is_i64() && !n.is_u64() => format!("{f:.1}"),
                        _ => n.to_string(),
                    },
                    other => other.to_string(),
                };
                println!("{k:<width$}  {text}");
            }
        }
    }
    ExitCode::SUCCESS
}

/// Starts the HTTP server, the metrics recorder, its upkeep and the control-plane sampler when
/// `[http] listen` is set, with `access` (from [`http_access`]), over HTTPS with `tls`
/// (`[http.tls]`). A listen failure is logged, not fatal: the proxy serves on. Fails when the
/// bound address is not loopback and there is no token (validation refuses such a `listen`;
/// this catches a `localhost` that resolves elsewhere); TLS does not change that.
async fn start_http(
    cfg: &config::Config,
    proxy: &Arc<server::Proxy>,
    access: http::Access,
    tls: Option<Arc<tls::Acceptor>>,
) -> anyhow::Result<()> {
    let Some(listen) = cfg.http.listen_addr() else {
        tracing::info!("HTTP server disabled ([http] listen = \"\")");
        return Ok(());
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                listen,
                "HTTP server not started: cannot listen on {listen} ([http] listen): {e}; \
                 /metrics, /progress and `pgshift status` are unavailable. Set [http] listen to a \
                 free address, or \"\" to disable it"
            );
            return Ok(());
        }
    };
    if let Ok(a) = listener.local_addr() {
        if !a.ip().is_loopback() && !access.has_token() {
            anyhow::bail!(
                "[http] listen = {listen:?} is bound to {a}, not a loopback address, and no token \
                 is set: set [http] token or token_file, or listen on loopback"
            );
        }
    }
    let prometheus = match metrics::install() {
        Ok(h) => {
            tokio::spawn(metrics::upkeep(h.clone()));
            let sampler = metrics::ControlSampler::new(proxy.controller.clone()).await;
            tokio::spawn(sampler.run());
            Some(h)
        }
        Err(e) => {
            tracing::error!("{e}; /metrics answers 503");
            None
        }
    };
    if let Ok(a) = listener.local_addr() {
        tracing::info!(
            listen = %a,
            token = access.has_token(),
            public = ?cfg.http.public,
            tls = tls.is_some(),
            client_ca = tls.is_some() && cfg.http.tls.client_ca.is_some(),
            "HTTP server listening (/metrics, /progress, /health, /clients, /servers, /databases, /upgrade/*)"
        );
    }
    tokio::spawn(http::serve(
        listener,
        http::HttpState {
            proxy: proxy.clone(),
            prometheus,
            access,
        },
        tls,
    ));
    Ok(())
}

/// The HTTP access rules of `cfg`: reads `[http] token_file` (refused when group or others
/// may read it). The error names the file, never the token.
fn http_access(cfg: &config::Config) -> anyhow::Result<http::Access> {
    let token = cfg.http.resolve_token().map_err(anyhow::Error::msg)?;
    Ok(http::Access::new(token.as_deref(), &cfg.http.public))
}

/// `pgshift upgrade`: start (or resume) the upgrade, then print progress lines to stderr: at
/// every change of phase or state, and every 5 s while a step runs.
fn start_upgrade_and_report(controller: Arc<Controller>) {
    tokio::spawn(async move {
        match controller.start_upgrade().await {
            Ok(m) => tracing::info!(phase = %controller.status().phase, "{m}"),
            Err(e) => {
                tracing::info!(phase = %controller.status().phase, "upgrade not started: {e}")
            }
        }
        let mut last: Option<(String, String)> = None;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            let p = http::Progress::of(&controller);
            let now = (p.phase.clone(), p.state.clone());
            if last.as_ref() == Some(&now) && p.state != "running" {
                continue;
            }
            last = Some(now);
            let mut line = format!(
                "pgshift upgrade: phase {} ({}), {}% done",
                p.phase, p.state, p.percent
            );
            if let Some(step) = &p.step {
                line.push_str(&format!(", step {step}"));
            }
            if let (Some(r), Some(t)) = (p.tables_ready, p.tables_total) {
                line.push_str(&format!(", {r}/{t} tables copied"));
            }
            if let Some(b) = p.replication_lag_bytes {
                line.push_str(&format!(", lag {b} bytes"));
            }
            if let Some(s) = p.lag_seconds {
                line.push_str(&format!(" / {s:.3} s"));
            }
            line.push_str(&format!(
                ", weights source {} / target {}, epoch {}",
                p.source_weight, p.target_weight, p.epoch
            ));
            if let Some(h) = &p.health {
                line.push_str(&format!("; health {h}"));
            }
            if let Some(e) = &p.last_error {
                line.push_str(&format!("; last error: {e}"));
            }
            eprintln!("{line}");
        }
    });
}

async fn serve(cfg: Arc<config::Config>, start_upgrade: bool) -> anyhow::Result<()> {
    // Before anything else: a token file or an [http.tls] file that may not be used refuses
    // the start-up (even when [http] listen is "": the configuration is wrong either way).
    let access = http_access(&cfg)?;
    let http_tls = tls::Acceptor::https(&cfg.http.tls)
        .map_err(anyhow::Error::msg)?
        .map(Arc::new);
    let controller = Controller::open(cfg.clone()).map_err(|e| anyhow::anyhow!("journal: {e}"))?;
    let (side, epoch) = controller.serving_side();
    let source_addr = routing::BackendAddr::from_config(&cfg.source)
        .map_err(|e| anyhow::anyhow!("[source] {e}"))?;
    let target_addr = routing::BackendAddr::from_config(&cfg.target)
        .map_err(|e| anyhow::anyhow!("[target] {e}"))?;
    let router = routing::Router::new(side, epoch, source_addr.clone(), target_addr.clone());
    let listener = tokio::net::TcpListener::bind(&cfg.proxy.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.proxy.listen))?;
    tracing::info!(listen = %cfg.proxy.listen, serving = side.as_str(), epoch, "pgshift listening");
    let shards = server::Shards::start(cfg.proxy.workers)
        .map_err(|e| anyhow::anyhow!("cannot start I/O threads: {e}"))?;
    let mirror = mirror::Mirror::start(
        &cfg,
        target_addr.clone(),
        source_addr.clone(),
        controller.clone(),
    )
    .map_err(|e| anyhow::anyhow!("cannot start the mirror thread: {e}"))?;
    if let Some(m) = &mirror {
        controller.set_cutover_gate(m.clone());
        tracing::info!(
            level = ?cfg.mirror.level,
            sample_rate = cfg.mirror.sample_rate,
            "mirroring with result validation is on (while replication keeps the target current)"
        );
    }
    let capture = capture::Engine::start(cfg.clone(), [source_addr, target_addr])
        .map_err(|e| anyhow::anyhow!("mirror replication driver: {e}"))?;
    if let Some(c) = &capture {
        controller.set_capture(c.clone());
    }
    let acceptor = tls::Acceptor::new(&cfg.proxy.tls).map_err(anyhow::Error::msg)?;
    let proxy = server::Proxy::new(
        cfg.clone(),
        router.clone(),
        controller.clone(),
        mirror,
        capture,
        acceptor,
    );
    if proxy.tls.is_some() {
        tracing::info!(mode = ?cfg.proxy.tls.mode, client_ca = cfg.proxy.tls.client_ca.is_some(), "TLS to clients is on");
    }
    if proxy.tls.is_some() || http_tls.is_some() {
        spawn_tls_reload(proxy.clone(), http_tls.clone());
    }
    {
        // Per-second snapshots of the traffic histograms (windowed p99 for health checks).
        let r = router.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                r.traffic.tick();
            }
        });
    }
    start_http(&cfg, &proxy, access, http_tls).await?;
    controller.attach(router);
    if start_upgrade {
        start_upgrade_and_report(controller.clone());
    }
    tokio::select! {
        _ = server::serve(proxy, listener, shards) => Ok(()),
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

/// On SIGHUP, reads the certificate, key and client CA of `[proxy.tls]` (the proxy's) and of
/// `[http.tls]` (`http`) again: new handshakes use them, open sessions and connections keep
/// theirs. A file that does not load keeps that section's previous set-up.
fn spawn_tls_reload(proxy: Arc<server::Proxy>, http: Option<Arc<tls::Acceptor>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP: TLS certificates are not reloaded");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            for t in proxy.tls.iter().chain(http.as_deref()) {
                match t.reload() {
                    Ok(()) => tracing::info!(
                        section = t.section(),
                        "SIGHUP: TLS certificate and key reloaded"
                    ),
                    Err(e) => tracing::error!(
                        section = t.section(),
                        "SIGHUP: TLS reload failed, the previous certificate stays in use: {e}"
                    ),
                }
            }
        }
    });
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
