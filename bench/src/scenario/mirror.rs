//! `mirror`: what mirroring with result validation costs the clients, and whether it reports
//! differences where there are none. pgbench TPC-B through pgshift while the target is kept
//! current by replication, with the mirror switched off and on in alternating rounds.
//!
//! Timeline: the stack (13 → 17, pgbench scale 10) with `[mirror] enabled = true`, `level =
//! "all"` (TPC-B is DML: its statements are dry-run on the target in `BEGIN … ROLLBACK` and
//! compared by shape: command tag, rows affected, `RETURNING` columns and row counts),
//! `sample_rate = 1.0`; START UPGRADE with pgbench running until phase `replicating`; `MIRROR
//! OFF` and a drain; a warm-up run (mirror off, not counted); then `rounds` times: one pgbench
//! run (`-M prepared`, per-transaction logs) with `MIRROR OFF`, one with `MIRROR ON`, then
//! `MIRROR OFF` again and a wait until the mirror's queue has drained, so that the backlog's
//! work on the target (the same machine) does not fall into the next OFF round.
//!
//! Figures:
//! * `tps_off` / `tps_on`: the median over the rounds of each mode of pgbench's own `tps`
//!   (without connection time); `overhead_pct` = `(tps_off - tps_on) / tps_off * 100`
//!   (negative: the ON rounds were faster, i.e. noise).
//! * `p99_ms_off` / `p99_ms_on` (and `p50_ms_*`): per round, the quantile of the latencies of
//!   the successful transactions in pgbench's per-transaction logs; the median over the rounds
//!   of each mode.
//! * `compared`, `matched`, `mismatched`, `target_errors`, `source_errors`, `inconclusive`,
//!   `skipped`, `queued`, `shed`, `lag_rechecked`: the growth of the totals row of `SHOW
//!   UPGRADE VALIDATION` from just before each ON round to the end of the drain after it,
//!   summed over the ON rounds. `compared` counts statements (a TPC-B transaction has five
//!   besides BEGIN/END), `queued` and `shed` count units of work (transactions): `shed` are
//!   the ones dropped because the queue was full, `mirrored_share` = `queued / (queued +
//!   shed)` the share of sampled transactions that reached the mirror.
//! * `mismatches` = `mismatched + target_errors` (what the validation error rate counts).
//! * `queued_while_off`: units queued during the OFF rounds (0 unless `MIRROR OFF` leaks).
//! * `drain_s`: per ON round, seconds from `MIRROR OFF` until the counters stopped moving (the
//!   backlog left in the queue); `drain_s_max` the longest.
//! * CPU over each pgbench run, in cores (CPU seconds per second; the machine has what
//!   `nproc` says): `cores_pgshift` (all its threads), `cores_mirror_thread` (the
//!   `pgshift-mirror` thread, part of it), `cores_source` / `cores_target` (the postmaster,
//!   its running children and the ones it reaped), `cores_pgbench`, and `cores_rest`: the
//!   machine's busy time (`/proc/stat`) beyond all those, i.e. other processes. The servers
//!   and pgbench share the machine, so what the mirror makes the target do is taken from the
//!   clients; a round with a large `cores_rest` was disturbed from outside (said as it
//!   happens; `cores_rest_max` is the worst). `pgshift_cpu_us_per_txn_off` / `_on`: pgshift's
//!   CPU per pgbench transaction, median over the rounds of each mode.
//! * `autovacuums_source` / `_target` (per round): autovacuum and autoanalyze runs on the
//!   application tables during the run (`pg_stat_user_tables`), background work of the
//!   servers that lands in some rounds and not in others.
//! * `prom`: pgshift's Prometheus counters at the end (`pgshift_mirror_compared_total` per
//!   verdict, `_queued_total`, `_shed_total`), for comparison with the console's totals
//!   (they also include the mirroring during the initial synchronisation).
//! * `failed_transactions`: pgbench's failed transactions plus aborted clients over every run,
//!   the load during the initial synchronisation included.
//!
//! `ok` (exit status 0): no mismatches, no failed transactions, and something was compared
//! (a run in which the mirror never ran proves nothing). The target (at most 5 % TPS
//! loss) is reported as `within_target`, not enforced: the figure depends on the machine.

use anyhow::{bail, Context, Result};
use integration::stack::field;
use integration::{free_port, StackOptions};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

use super::upgrade::Session;
use super::Outcome;
use crate::console::{Console, Row};
use crate::cpu;
use crate::latency::Latencies;
use crate::pgbench::{self, Spec};
use crate::prom;
use crate::report::{json_num, median, num, say, Table};

/// Options of the `mirror` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// pgbench scale of the source's data.
    #[arg(long, default_value_t = 10)]
    pub scale: u32,
    /// pgbench clients (-c).
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// pgbench threads (-j).
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Seconds of each pgbench run (-T).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Rounds of (mirror off, mirror on).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds of a warm-up run (mirror off, not counted) before the rounds; 0 for none.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// `[mirror] level`: reads, dml or all.
    #[arg(long, default_value = "all")]
    pub level: String,
    /// `[mirror] sample_rate` (0-1).
    #[arg(long, default_value_t = 1.0)]
    pub sample_rate: f64,
    /// `[mirror] queue_length`.
    #[arg(long, default_value_t = 1000)]
    pub queue_length: u32,
    /// `[mirror] connections` (mirror workers).
    #[arg(long, default_value_t = 2)]
    pub connections: u32,
    /// Source major.
    #[arg(long, default_value_t = 13)]
    pub source_major: u32,
    /// Target major.
    #[arg(long, default_value_t = 17)]
    pub target_major: u32,
    /// Seconds allowed for the initial copy.
    #[arg(long, default_value_t = 300)]
    pub sync_timeout: u64,
    /// Seconds allowed for the mirror's queue to drain after an ON round.
    #[arg(long, default_value_t = 180)]
    pub drain_timeout: u64,
}

/// The target: at most this TPS loss with mirroring on, in percent.
const TARGET_LOSS_PCT: f64 = 5.0;
/// `cores_rest` above which a round is said to be disturbed from outside.
const REST_WARN_CORES: f64 = 0.25;
/// How often the drain polls the validation totals.
const DRAIN_POLL: Duration = Duration::from_millis(500);
/// Polls without any change after which the queue counts as drained.
const DRAIN_STABLE_POLLS: u32 = 4;

/// The totals row (`*`) of `SHOW UPGRADE VALIDATION`, or the growth of it over a span.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    compared: u64,
    matched: u64,
    mismatched: u64,
    target_errors: u64,
    source_errors: u64,
    inconclusive: u64,
    skipped: u64,
    queued: u64,
    shed: u64,
    lag_rechecked: u64,
}

impl Counters {
    fn of(row: &Row) -> Counters {
        let n = |k: &str| field(row, k).parse().unwrap_or(0);
        Counters {
            compared: n("compared"),
            matched: n("matched"),
            mismatched: n("mismatched"),
            target_errors: n("target_errors"),
            source_errors: n("source_errors"),
            inconclusive: n("inconclusive"),
            skipped: n("skipped"),
            queued: n("queued"),
            shed: n("shed"),
            lag_rechecked: n("lag_rechecked"),
        }
    }

    /// `SHOW UPGRADE VALIDATION`'s totals now.
    async fn read(console: &mut Console) -> Result<Counters> {
        let r = console.run("SHOW UPGRADE VALIDATION").await?;
        let row = r
            .rows
            .iter()
            .find(|row| field(row, "table") == "*")
            .context("SHOW UPGRADE VALIDATION has no totals row (table *)")?;
        Ok(Counters::of(row))
    }

    /// Field by field `f(self, other)`.
    fn zip(&self, o: &Counters, f: impl Fn(u64, u64) -> u64) -> Counters {
        Counters {
            compared: f(self.compared, o.compared),
            matched: f(self.matched, o.matched),
            mismatched: f(self.mismatched, o.mismatched),
            target_errors: f(self.target_errors, o.target_errors),
            source_errors: f(self.source_errors, o.source_errors),
            inconclusive: f(self.inconclusive, o.inconclusive),
            skipped: f(self.skipped, o.skipped),
            queued: f(self.queued, o.queued),
            shed: f(self.shed, o.shed),
            lag_rechecked: f(self.lag_rechecked, o.lag_rechecked),
        }
    }

    /// Growth since `before`.
    fn since(&self, before: &Counters) -> Counters {
        self.zip(before, u64::saturating_sub)
    }

    /// Statements the mirror has finished with, whatever the outcome.
    fn processed(&self) -> u64 {
        self.compared + self.inconclusive + self.skipped
    }

    /// What the validation error rate counts as problems.
    fn mismatches(&self) -> u64 {
        self.mismatched + self.target_errors
    }

    /// Share of the sampled units that reached the queue.
    fn mirrored_share(&self) -> Option<f64> {
        let offered = self.queued + self.shed;
        (offered > 0).then(|| self.queued as f64 / offered as f64)
    }
}

/// One pgbench round.
struct Round {
    round: u32,
    /// `off` / `on`.
    mode: &'static str,
    tps: f64,
    latency_avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    transactions: u64,
    failures: u64,
    /// Growth of the validation totals over the round (and its drain, for ON rounds).
    mirror: Counters,
    /// ON rounds: seconds until the queue drained after `MIRROR OFF`.
    drain_s: Option<f64>,
    /// CPU time over the pgbench run.
    cpu: CpuSample,
    /// Wall-clock seconds of the pgbench run.
    wall_s: f64,
    /// Autovacuum and autoanalyze runs over the pgbench run, on the source and the target.
    vacuums: [u64; 2],
}

impl Round {
    /// CPU time of `us` microseconds over the run, in cores (CPU seconds per second).
    fn cores(&self, us: u64) -> f64 {
        us as f64 / 1e6 / self.wall_s.max(1e-9)
    }

    /// pgshift's CPU microseconds per transaction.
    fn pgshift_us_per_txn(&self) -> f64 {
        self.cpu.pgshift_us as f64 / self.transactions.max(1) as f64
    }
}

impl Round {
    fn json(&self) -> serde_json::Value {
        json!({
            "round": self.round,
            "mirror": self.mode,
            "tps": json_num(self.tps, 1),
            "lat_avg_ms": json_num(self.latency_avg_ms, 3),
            "p50_ms": json_num(self.p50_ms, 3),
            "p99_ms": json_num(self.p99_ms, 3),
            "transactions": self.transactions,
            "failed": self.failures,
            "queued": self.mirror.queued,
            "shed": self.mirror.shed,
            "compared": self.mirror.compared,
            "mismatches": self.mirror.mismatches(),
            "skipped": self.mirror.skipped,
            "inconclusive": self.mirror.inconclusive,
            "drain_s": self.drain_s.map(|d| json_num(d, 1)),
            "pgshift_cpu_us_per_txn": json_num(self.pgshift_us_per_txn(), 1),
            "cores_pgshift": json_num(self.cores(self.cpu.pgshift_us), 3),
            "cores_mirror_thread": json_num(self.cores(self.cpu.mirror_us), 3),
            "cores_source": json_num(self.cores(self.cpu.source_us), 3),
            "cores_target": json_num(self.cores(self.cpu.target_us), 3),
            "cores_pgbench": json_num(self.cores(self.cpu.pgbench_us), 3),
            "cores_rest": json_num(self.cores(self.cpu.rest_us()), 3),
            "autovacuums_source": self.vacuums[0],
            "autovacuums_target": self.vacuums[1],
        })
    }
}

/// Run the scenario.
pub async fn run(o: Opts) -> Result<Outcome> {
    say(format!(
        "mirror: PostgreSQL {} -> {}, pgbench scale {}, -c {} -j {} -T {} -M prepared, {} rounds of mirror off/on; [mirror] level {}, sample_rate {}, queue_length {}, connections {}",
        o.source_major, o.target_major, o.scale, o.clients, o.threads, o.duration, o.rounds,
        o.level, o.sample_rate, o.queue_length, o.connections
    ));
    let http_port = free_port();
    let extra_config = format!(
        "[mirror]\nenabled = true\nlevel = \"{}\"\nsample_rate = {}\nqueue_length = {}\nconnections = {}\n\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n",
        o.level, o.sample_rate, o.queue_length, o.connections
    );
    let mut s = Session::start_with(
        StackOptions {
            source_major: o.source_major,
            target_major: o.target_major,
            pgbench_scale: o.scale,
            extra_config,
            ..Default::default()
        },
        "mirror",
    )
    .await?;
    say(format!(
        "stack up: {}; pgshift on {}:{}, metrics on port {http_port}",
        s.versions(),
        s.stack.pgshift.host,
        s.stack.pgshift.port
    ));
    let load = Spec::tpcb(o.clients, o.threads, 5);
    let sync = s
        .start_upgrade_under_load(&load, false, Duration::from_secs(o.sync_timeout))
        .await?;
    let drain_timeout = Duration::from_secs(o.drain_timeout);
    s.console.run("MIRROR OFF").await?;
    let d = drain(&mut s.console, drain_timeout).await?;
    say(format!(
        "mirror queue drained after the synchronisation ({d:.1} s)"
    ));
    if o.warmup > 0 {
        say(format!("warm-up: {} s, mirror off", o.warmup));
        let out = pgbench::spawn(
            &s.endpoint,
            &Spec {
                seconds: o.warmup,
                ..load.clone()
            },
            false,
        )?
        .finish()
        .await?;
        if out.summary.failures() > 0 {
            bail!(
                "the warm-up run failed transactions:\n{}",
                out.stderr.trim()
            );
        }
    }

    let pids = Pids {
        pgshift: s.stack.pgshift.pid().context("pgshift's pid")?,
        source: cpu::postmaster_pid(&s.stack.source.datadir)?,
        target: cpu::postmaster_pid(&s.stack.target.datadir)?,
    };
    let mut rounds = Vec::new();
    let mut failure_output = Vec::new();
    for round in 1..=o.rounds {
        for mode in ["off", "on"] {
            let on = mode == "on";
            let before = Counters::read(&mut s.console).await?;
            s.console
                .run(if on { "MIRROR ON" } else { "MIRROR OFF" })
                .await?;
            let prefix = s.work.join(&format!("r{round}-{mode}"));
            let spec = Spec {
                seconds: o.duration,
                log_prefix: Some(prefix.clone()),
                ..load.clone()
            };
            let vacuums_before = autovacuums(&s).await?;
            let cpu_before = CpuSample::take(&pids)?;
            let wall = Instant::now();
            let out = pgbench::spawn(&s.endpoint, &spec, false)?.finish().await?;
            let (cpu, wall_s) = (
                CpuSample::take(&pids)?.since(&cpu_before),
                wall.elapsed().as_secs_f64(),
            );
            let vacuums = autovacuums(&s).await?;
            let vacuums = [
                vacuums[0].saturating_sub(vacuums_before[0]),
                vacuums[1].saturating_sub(vacuums_before[1]),
            ];
            let drain_s = if on {
                s.console.run("MIRROR OFF").await?;
                Some(drain(&mut s.console, drain_timeout).await?)
            } else {
                None
            };
            let mirror = Counters::read(&mut s.console).await?.since(&before);
            let txns = pgbench::read_logs(&prefix)?;
            pgbench::remove_logs(&prefix)?;
            let lat = Latencies::of(&txns)?;
            let sm = &out.summary;
            if sm.failures() > 0 {
                failure_output.push(format!(
                    "round {round} mirror {mode}:\n{}",
                    out.stderr.trim()
                ));
            }
            let r = Round {
                round,
                mode,
                tps: sm.tps,
                latency_avg_ms: sm.latency_avg_ms.unwrap_or_else(|| lat.mean_ms()),
                p50_ms: lat.quantile_ms(0.5),
                p99_ms: lat.quantile_ms(0.99),
                transactions: sm.transactions,
                failures: sm.failures(),
                mirror,
                drain_s,
                cpu,
                wall_s,
                vacuums,
            };
            say(format!(
                "round {round} mirror {mode:<3}: {} tps, p50 {} ms, p99 {} ms, {} failed; cores: pgshift {} (mirror thread {}), source {}, target {}, pgbench {}, rest of the machine {}; autovacuum/analyze runs: source {}, target {}; mirror: {} queued, {} shed, {} compared, {} mismatches{}",
                num(r.tps, 0),
                num(r.p50_ms, 2),
                num(r.p99_ms, 2),
                r.failures,
                num(r.cores(cpu.pgshift_us), 2),
                num(r.cores(cpu.mirror_us), 2),
                num(r.cores(cpu.source_us), 2),
                num(r.cores(cpu.target_us), 2),
                num(r.cores(cpu.pgbench_us), 2),
                num(r.cores(cpu.rest_us()), 2),
                vacuums[0],
                vacuums[1],
                mirror.queued,
                mirror.shed,
                mirror.compared,
                mirror.mismatches(),
                drain_s.map_or(String::new(), |d| format!(", drained in {d:.1} s"))
            ));
            let rest = r.cores(cpu.rest_us());
            if rest > REST_WARN_CORES {
                say(format!(
                    "note: other processes used {rest:.2} cores during round {round} ({mode}): its figures are disturbed"
                ));
            }
            rounds.push(r);
        }
    }
    let status = s.console.status().await?;
    say(format!("status at the end: {}", status.line()));
    let metrics = prom::scrape(http_port).await?;
    let errors = s.console.run("SHOW UPGRADE ERRORS").await?;

    let mut on = Counters::default();
    for r in rounds.iter().filter(|r| r.mode == "on") {
        on = on.zip(&r.mirror, |a, b| a + b);
    }
    let queued_while_off: u64 = rounds
        .iter()
        .filter(|r| r.mode == "off")
        .map(|r| r.mirror.queued)
        .sum();
    let med = |mode: &str, f: fn(&Round) -> f64| {
        median(
            &rounds
                .iter()
                .filter(|r| r.mode == mode)
                .map(f)
                .collect::<Vec<_>>(),
        )
        .unwrap_or(0.0)
    };
    let (tps_off, tps_on) = (med("off", |r| r.tps), med("on", |r| r.tps));
    let overhead_pct = if tps_off > 0.0 {
        (tps_off - tps_on) / tps_off * 100.0
    } else {
        0.0
    };
    let drain_max = rounds.iter().filter_map(|r| r.drain_s).fold(0.0, f64::max);
    let round_failures: u64 = rounds.iter().map(|r| r.failures).sum();
    let failed_transactions = round_failures + sync.load.failures;

    let mut t = Table::new(&[
        "round",
        "mirror",
        "txns",
        "tps",
        "lat avg ms",
        "p50 ms",
        "p99 ms",
        "failed",
        "queued",
        "shed",
        "compared",
        "mismatches",
        "skipped",
        "drain s",
        "pgshift us/txn",
        "cores src",
        "cores tgt",
        "cores rest",
    ]);
    for r in &rounds {
        let m = &r.mirror;
        t.row(vec![
            r.round.to_string(),
            r.mode.to_string(),
            r.transactions.to_string(),
            num(r.tps, 0),
            num(r.latency_avg_ms, 3),
            num(r.p50_ms, 3),
            num(r.p99_ms, 3),
            r.failures.to_string(),
            m.queued.to_string(),
            m.shed.to_string(),
            m.compared.to_string(),
            m.mismatches().to_string(),
            m.skipped.to_string(),
            r.drain_s.map_or("-".into(), |d| num(d, 1)),
            num(r.pgshift_us_per_txn(), 1),
            num(r.cores(r.cpu.source_us), 2),
            num(r.cores(r.cpu.target_us), 2),
            num(r.cores(r.cpu.rest_us()), 2),
        ]);
    }
    for mode in ["off", "on"] {
        t.row(vec![
            "median".into(),
            mode.to_string(),
            String::new(),
            num(med(mode, |r| r.tps), 0),
            num(med(mode, |r| r.latency_avg_ms), 3),
            num(med(mode, |r| r.p50_ms), 3),
            num(med(mode, |r| r.p99_ms), 3),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            num(med(mode, Round::pgshift_us_per_txn), 1),
            num(med(mode, |r| r.cores(r.cpu.source_us)), 2),
            num(med(mode, |r| r.cores(r.cpu.target_us)), 2),
            num(med(mode, |r| r.cores(r.cpu.rest_us())), 2),
        ]);
    }
    print!("{}", t.render());
    println!(
        "TPS loss with mirroring on: {} % (target: at most {TARGET_LOSS_PCT} %); ON rounds: {} compared, {} matched, {} mismatched, {} target errors, {} source errors, {} inconclusive, {} skipped, {} lag re-checks; {} queued, {} shed ({} % mirrored)",
        num(overhead_pct, 1),
        on.compared,
        on.matched,
        on.mismatched,
        on.target_errors,
        on.source_errors,
        on.inconclusive,
        on.skipped,
        on.lag_rechecked,
        on.queued,
        on.shed,
        on.mirrored_share().map_or("-".into(), |v| num(v * 100.0, 1)),
    );
    for e in errors.rows.iter().take(10) {
        println!(
            "validation error: [{}] x{} {} | source: {} | target: {}",
            field(e, "kind"),
            field(e, "count"),
            field(e, "statement"),
            field(e, "source"),
            field(e, "target")
        );
    }
    for f in failure_output.iter().chain(&sync.load.failure_output) {
        println!("pgbench failures: {f}");
    }
    let verdict =
        |v: &str| metrics.value("pgshift_mirror_compared_total", &format!("verdict=\"{v}\""));

    let prom = json!({
        "compared_match": verdict("match"),
        "compared_mismatch": verdict("mismatch"),
        "compared_target_error": verdict("target_error"),
        "compared_source_error": verdict("source_error"),
        "queued": metrics.value("pgshift_mirror_queued_total", ""),
        "shed": metrics.value("pgshift_mirror_shed_total", ""),
    });
    let per_round: Vec<serde_json::Value> = rounds.iter().map(Round::json).collect();
    let mut json = json!({
        "scenario": "mirror",
        "source_major": o.source_major,
        "target_major": o.target_major,
        "source_version": s.stack.source.binaries.version,
        "target_version": s.stack.target.binaries.version,
        "scale": o.scale,
        "clients": o.clients,
        "threads": o.threads,
        "duration_s": o.duration,
        "rounds": o.rounds,
        "level": o.level,
        "sample_rate": o.sample_rate,
        "queue_length": o.queue_length,
        "connections": o.connections,
        "sync_seconds": json_num(sync.seconds, 1),
        "failed_transactions": failed_transactions,
        "sync_failed_transactions": sync.load.failures,
        "phase_at_end": status.phase,
        "prom": prom,
        "per_round": per_round,
    });
    let figures = json!({
        "tps_off": json_num(tps_off, 1),
        "tps_on": json_num(tps_on, 1),
        "overhead_pct": json_num(overhead_pct, 2),
        "within_target": overhead_pct <= TARGET_LOSS_PCT,
        "p50_ms_off": json_num(med("off", |r| r.p50_ms), 3),
        "p50_ms_on": json_num(med("on", |r| r.p50_ms), 3),
        "p99_ms_off": json_num(med("off", |r| r.p99_ms), 3),
        "p99_ms_on": json_num(med("on", |r| r.p99_ms), 3),
        "compared": on.compared,
        "matched": on.matched,
        "mismatched": on.mismatched,
        "target_errors": on.target_errors,
        "mismatches": on.mismatches(),
        "source_errors": on.source_errors,
        "inconclusive": on.inconclusive,
        "skipped": on.skipped,
        "lag_rechecked": on.lag_rechecked,
        "queued": on.queued,
        "shed": on.shed,
        "mirrored_share": on.mirrored_share().map(|v| json_num(v, 4)),
        "queued_while_off": queued_while_off,
        "drain_s_max": json_num(drain_max, 1),
        "pgshift_cpu_us_per_txn_off": json_num(med("off", Round::pgshift_us_per_txn), 1),
        "pgshift_cpu_us_per_txn_on": json_num(med("on", Round::pgshift_us_per_txn), 1),
        "cores_target_off": json_num(med("off", |r| r.cores(r.cpu.target_us)), 3),
        "cores_target_on": json_num(med("on", |r| r.cores(r.cpu.target_us)), 3),
        "cores_mirror_thread_on": json_num(med("on", |r| r.cores(r.cpu.mirror_us)), 3),
        "cores_rest_max": json_num(rounds.iter().map(|r| r.cores(r.cpu.rest_us())).fold(0.0, f64::max), 3),
        "validation_errors_listed": errors.rows.len(),
    });
    if let (Some(all), serde_json::Value::Object(f)) = (json.as_object_mut(), figures) {
        all.extend(f);
    }
    Ok(Outcome {
        json,
        ok: on.mismatches() == 0 && failed_transactions == 0 && on.compared > 0,
    })
}

/// Wait until the mirror has worked off its queue (with `MIRROR OFF`, no new units come):
/// the validation totals unchanged over [`DRAIN_STABLE_POLLS`] polls. Seconds from the call
/// until the last change seen.
async fn drain(console: &mut Console, timeout: Duration) -> Result<f64> {
    let started = Instant::now();
    let mut last = Counters::read(console).await?.processed();
    let mut last_change = 0.0;
    let mut stable = 0;
    while stable < DRAIN_STABLE_POLLS {
        if started.elapsed() > timeout {
            bail!(
                "the mirror's queue did not drain within {timeout:?} (still processing after MIRROR OFF)"
            );
        }
        tokio::time::sleep(DRAIN_POLL).await;
        let now = Counters::read(console).await?.processed();
        if now == last {
            stable += 1;
        } else {
            (last, stable) = (now, 0);
            last_change = started.elapsed().as_secs_f64();
        }
    }
    Ok(last_change)
}

/// Autovacuum plus autoanalyze runs so far on the application tables of the source and the
/// target (`pg_stat_user_tables`): background work of the servers that falls into some
/// rounds and not others.
async fn autovacuums(s: &Session) -> Result<[u64; 2]> {
    s.blocking(|st| {
        let count = |server: &integration::PgServer| -> Result<u64> {
            let out = server.psql(
                integration::stack::DB,
                "SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0) FROM pg_stat_user_tables",
            )?;
            out.trim()
                .parse()
                .with_context(|| format!("autovacuum count {out:?}"))
        };
        Ok([count(&st.source)?, count(&st.target)?])
    })
    .await
}

/// The processes whose CPU time is measured.
struct Pids {
    pgshift: u32,
    /// Postmasters: their CPU time and their children's.
    source: u32,
    target: u32,
}

/// Cumulative CPU time (user + system), in microseconds.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSample {
    /// pgshift, all threads.
    pgshift_us: u64,
    /// pgshift's mirror thread ([`MIRROR_THREAD`]), part of `pgshift_us`.
    mirror_us: u64,
    /// Each server: its postmaster, the children running now (backends, replication
    /// workers, the mirror's connections) and the children it has reaped (`cutime`,
    /// `cstime`), so that backends of short connections count too.
    source_us: u64,
    target_us: u64,
    /// The bench's own reaped children: the pgbench runs.
    pgbench_us: u64,
    /// The whole machine, all CPUs (`/proc/stat`), for what the rest of it did meanwhile.
    machine_us: u64,
}

/// The name of the thread pgshift runs its mirror workers on.
const MIRROR_THREAD: &str = "pgshift-mirror";

impl CpuSample {
    fn take(p: &Pids) -> Result<CpuSample> {
        let tick_us = 1_000_000 / cpu::clock_ticks_per_second()?;
        let mirror = Path::new("/proc")
            .join(p.pgshift.to_string())
            .join("task")
            .read_dir()
            .context("listing pgshift's threads")?
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == MIRROR_THREAD)
            });
        let mirror_ticks = match mirror {
            Some(t) => cpu::stat_ticks(&t.path().join("stat"), false)?,
            None => 0,
        };
        Ok(CpuSample {
            pgshift_us: cpu::process_cpu_us(p.pgshift)?,
            mirror_us: mirror_ticks * tick_us,
            source_us: cpu::server_ticks(p.source)? * tick_us,
            target_us: cpu::server_ticks(p.target)? * tick_us,
            pgbench_us: cpu::rusage_us(libc::RUSAGE_CHILDREN),
            machine_us: {
                let (busy, irq) = cpu::machine_busy_ticks()?;
                (busy + irq) * tick_us
            },
        })
    }

    fn since(&self, b: &CpuSample) -> CpuSample {
        CpuSample {
            pgshift_us: self.pgshift_us.saturating_sub(b.pgshift_us),
            mirror_us: self.mirror_us.saturating_sub(b.mirror_us),
            source_us: self.source_us.saturating_sub(b.source_us),
            target_us: self.target_us.saturating_sub(b.target_us),
            pgbench_us: self.pgbench_us.saturating_sub(b.pgbench_us),
            machine_us: self.machine_us.saturating_sub(b.machine_us),
        }
    }

    /// What the machine spent beyond pgshift, the servers and pgbench (other processes, the
    /// bench itself, the kernel's own work).
    fn rest_us(&self) -> u64 {
        self.machine_us
            .saturating_sub(self.pgshift_us + self.source_us + self.target_us + self.pgbench_us)
    }
}
