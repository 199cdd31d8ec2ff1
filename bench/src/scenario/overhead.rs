//! `overhead`: what a proxy costs. pgbench select-only directly against one server, through
//! pgshift and through pgbouncer (session pooling), alternating, over several rounds: TPS,
//! latency (average and p50) and the proxy's CPU time per transaction.

use anyhow::Result;
use integration::{PgServer, Pgshift};
use serde_json::json;
use std::path::Path;

use super::Outcome;
use crate::cpu::CpuMeter;
use crate::latency::Latencies;
use crate::pgbench::{self, Endpoint, Spec};
use crate::pgbouncer::Pgbouncer;
use crate::report::{json_num, median, num, say, Table};
use crate::scene::{self, WorkDir};

/// Options of the `overhead` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Seconds of each pgbench run (-T).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// pgbench scale of the data.
    #[arg(long, default_value_t = 10)]
    pub scale: u32,
    /// pgbench clients (-c).
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// pgbench threads (-j).
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Rounds of (direct, pgshift, pgbouncer).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Server major; default 15 when Debian's PostgreSQL 15 is installed, else 13.
    #[arg(long)]
    pub major: Option<u32>,
    /// Seconds of a warm-up run (direct) before the rounds; 0 for none.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Another pgshift binary (an earlier build) to run as a fourth path, `baseline`, in
    /// the same rounds: before/after figures of a change measured side by side.
    #[arg(long)]
    pub baseline_bin: Option<std::path::PathBuf>,
    /// TLS both ways on every path: the server with `ssl = on`; pgbench with
    /// `sslmode=require` to the server, pgshift (`[proxy.tls] mode = "require"`) and
    /// pgbouncer (`client_tls_sslmode = require`); pgshift and pgbouncer to the server with
    /// `sslmode = require`. A test CA's certificate is made for the run.
    #[arg(long)]
    pub tls: bool,
}

/// The ways to the server, in the order of the first round (`baseline` only with
/// `--baseline-bin`).
const PATHS: [&str; 4] = ["direct", "pgshift", "pgbouncer", "baseline"];

/// One pgbench run's figures.
struct RunFigures {
    round: u32,
    path: &'static str,
    tps: f64,
    latency_avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    transactions: u64,
    failures: u64,
    /// The proxy's CPU microseconds per transaction (none for direct runs).
    cpu_us_per_txn: Option<f64>,
}

/// Run the scenario.
pub async fn run(o: Opts) -> Result<Outcome> {
    let major = o.major.unwrap_or_else(|| {
        if Path::new("/usr/lib/postgresql/15/bin/initdb").exists() {
            15
        } else {
            13
        }
    });
    say(format!(
        "overhead: PostgreSQL {major}, pgbench -S -c {} -j {} -T {}, {} rounds{}",
        o.clients,
        o.threads,
        o.duration,
        o.rounds,
        if o.tls { ", TLS both ways" } else { "" }
    ));
    let scale = o.scale;
    let baseline_bin = o.baseline_bin.clone();
    let certs = if o.tls {
        let dir = integration::new_run_dir("bench-certs")?;
        let ca = integration::certs::TestCa::new(&dir, "ca")?;
        Some(ca.server("server", &["localhost", "127.0.0.1"])?)
    } else {
        None
    };
    let tls = certs.clone();
    let (server, target, pgshift, baseline) = tokio::task::spawn_blocking(move || -> Result<_> {
        let opts = integration::ServerOptions {
            ssl: tls.clone(),
            ..Default::default()
        };
        let server = scene::app_server(major, scale, opts.clone())?;
        // pgshift wants a target too; an idle second server of the same major will do.
        let target = PgServer::start_with(major, opts)?;
        target.psql("postgres", "CREATE DATABASE app")?;
        let config = |port| {
            let c = integration::stack::stack_config(&server, &target, port, "");
            match &tls {
                None => c,
                Some(t) => format!(
                    "{}\n[proxy.tls]\nmode = \"require\"\ncert = \"{}\"\nkey = \"{}\"\n",
                    c.replace("[source]\n", "[source]\nsslmode = \"require\"\n")
                        .replace("[target]\n", "[target]\nsslmode = \"require\"\n"),
                    t.cert.display(),
                    t.key.display()
                ),
            }
        };
        let pgshift = Pgshift::start(&config(integration::free_port()))?;
        let baseline = match &baseline_bin {
            Some(bin) => Some(Pgshift::start_binary(
                bin,
                &config(integration::free_port()),
            )?),
            None => None,
        };
        Ok((server, target, pgshift, baseline))
    })
    .await??;
    let work = WorkDir::create("overhead")?;
    let direct = Endpoint::direct(&server);
    let bouncer = Pgbouncer::start(&direct, &work.join("pgbouncer"), certs.as_ref())?;
    if o.tls {
        // Every pgbench run below (over TCP) uses TLS; the set-up above is done.
        std::env::set_var("PGSSLMODE", "require");
    }
    say(format!(
        "PostgreSQL {} on :{}, pgshift on :{} (pid {}), pgbouncer on :{} (pid {})",
        server.binaries.version,
        server.port,
        pgshift.port,
        pgshift.pid().map_or("?".into(), |p| p.to_string()),
        bouncer.port,
        bouncer.pid().map_or("?".into(), |p| p.to_string())
    ));
    let mut endpoints = vec![
        (direct.clone(), None),
        (Endpoint::pgshift(&pgshift), pgshift.pid()),
        (bouncer.endpoint(), bouncer.pid()),
    ];
    if let Some(b) = &baseline {
        say(format!(
            "baseline pgshift {} on :{}",
            o.baseline_bin
                .as_deref()
                .map_or("?".into(), |p| p.display().to_string()),
            b.port
        ));
        endpoints.push((Endpoint::pgshift(b), b.pid()));
    }
    let paths = &PATHS[..endpoints.len()];
    let spec = |prefix: Option<std::path::PathBuf>, seconds: u64| Spec {
        clients: o.clients,
        threads: o.threads,
        seconds,
        prepared: false,
        select_only: true,
        progress: None,
        log_prefix: prefix,
    };
    if o.warmup > 0 {
        say(format!("warm-up: {} s direct", o.warmup));
        pgbench::spawn(&direct, &spec(None, o.warmup), false)?
            .finish()
            .await?;
    }

    let mut runs = Vec::new();
    for round in 1..=o.rounds {
        for k in 0..paths.len() {
            // Rotate the order each round so that no path always runs first.
            let i = (k + round as usize - 1) % paths.len();
            let (endpoint, pid) = &endpoints[i];
            let prefix = work.join(&format!("r{round}-{}", PATHS[i]));
            let meter = pid.map(CpuMeter::start).transpose()?;
            let out = pgbench::spawn(endpoint, &spec(Some(prefix.clone()), o.duration), false)?
                .finish()
                .await?;
            let cpu_us = meter.map(|m| m.stop()).transpose()?;
            let txns = pgbench::read_logs(&prefix)?;
            let lat = Latencies::of(&txns)?;
            pgbench::remove_logs(&prefix)?;
            let s = &out.summary;
            let f = RunFigures {
                round,
                path: PATHS[i],
                tps: s.tps,
                latency_avg_ms: s.latency_avg_ms.unwrap_or_else(|| lat.mean_ms()),
                p50_ms: lat.quantile_ms(0.5),
                p99_ms: lat.quantile_ms(0.99),
                transactions: s.transactions,
                failures: s.failures(),
                cpu_us_per_txn: cpu_us.map(|us| us as f64 / s.transactions.max(1) as f64),
            };
            say(format!(
                "round {round} {:<9}: {} tps, avg {} ms, p50 {} ms{}",
                f.path,
                num(f.tps, 0),
                num(f.latency_avg_ms, 3),
                num(f.p50_ms, 3),
                f.cpu_us_per_txn.map_or(String::new(), |c| format!(
                    ", proxy CPU {} us/txn",
                    num(c, 1)
                ))
            ));
            runs.push(f);
        }
    }
    drop((bouncer, pgshift, baseline, target, server));

    let mut t = Table::new(&[
        "round",
        "path",
        "txns",
        "tps",
        "lat avg ms",
        "p50 ms",
        "p99 ms",
        "proxy CPU us/txn",
        "failed",
    ]);
    for r in &runs {
        t.row(vec![
            r.round.to_string(),
            r.path.to_string(),
            r.transactions.to_string(),
            num(r.tps, 0),
            num(r.latency_avg_ms, 3),
            num(r.p50_ms, 3),
            num(r.p99_ms, 3),
            r.cpu_us_per_txn.map_or("-".into(), |c| num(c, 1)),
            r.failures.to_string(),
        ]);
    }
    let med = |path: &str, f: fn(&RunFigures) -> Option<f64>| {
        median(
            &runs
                .iter()
                .filter(|r| r.path == path)
                .filter_map(f)
                .collect::<Vec<_>>(),
        )
    };
    for path in paths {
        t.row(vec![
            "median".into(),
            path.to_string(),
            String::new(),
            med(path, |r| Some(r.tps)).map_or("-".into(), |v| num(v, 0)),
            med(path, |r| Some(r.latency_avg_ms)).map_or("-".into(), |v| num(v, 3)),
            med(path, |r| Some(r.p50_ms)).map_or("-".into(), |v| num(v, 3)),
            med(path, |r| Some(r.p99_ms)).map_or("-".into(), |v| num(v, 3)),
            med(path, |r| r.cpu_us_per_txn).map_or("-".into(), |v| num(v, 1)),
            String::new(),
        ]);
    }
    print!("{}", t.render());
    let failures: u64 = runs.iter().map(|r| r.failures).sum();
    let val = |path: &str, f: fn(&RunFigures) -> Option<f64>, digits: i32| {
        med(path, f).map(|v| json_num(v, digits))
    };
    let json = json!({
        "scenario": "overhead",
        "major": major,
        "server_version": server_version_string(major),
        "clients": o.clients,
        "duration_s": o.duration,
        "rounds": o.rounds,
        "tps_direct": val("direct", |r| Some(r.tps), 1),
        "tps_pgshift": val("pgshift", |r| Some(r.tps), 1),
        "tps_pgbouncer": val("pgbouncer", |r| Some(r.tps), 1),
        "p50_ms_direct": val("direct", |r| Some(r.p50_ms), 3),
        "p50_ms_pgshift": val("pgshift", |r| Some(r.p50_ms), 3),
        "p50_ms_pgbouncer": val("pgbouncer", |r| Some(r.p50_ms), 3),
        "lat_avg_ms_direct": val("direct", |r| Some(r.latency_avg_ms), 3),
        "lat_avg_ms_pgshift": val("pgshift", |r| Some(r.latency_avg_ms), 3),
        "lat_avg_ms_pgbouncer": val("pgbouncer", |r| Some(r.latency_avg_ms), 3),
        "p99_ms_direct": val("direct", |r| Some(r.p99_ms), 3),
        "p99_ms_pgshift": val("pgshift", |r| Some(r.p99_ms), 3),
        "p99_ms_pgbouncer": val("pgbouncer", |r| Some(r.p99_ms), 3),
        "cpu_us_per_txn_pgshift": val("pgshift", |r| r.cpu_us_per_txn, 2),
        "cpu_us_per_txn_pgbouncer": val("pgbouncer", |r| r.cpu_us_per_txn, 2),
        "tps_baseline": val("baseline", |r| Some(r.tps), 1),
        "cpu_us_per_txn_baseline": val("baseline", |r| r.cpu_us_per_txn, 2),
        "failed_transactions": failures,
    });
    Ok(Outcome {
        json,
        ok: failures == 0,
    })
}

/// The version string of the server binaries of `major` (for the record).
fn server_version_string(major: u32) -> Option<String> {
    integration::binaries(major).ok().map(|b| b.version)
}
