//! `apply`: how fast the `mirror` replication driver's applier works off the capture queue,
//! per `[replication] apply_batch` (the captured transactions sent per round trip, ended by
//! one flushing commit), and whether it keeps up with unlimited pgbench TPC-B.
//!
//! pgshift reads `apply_batch` at start-up only, so each batch size gets a stack of its own
//! (the same data and load each time): PostgreSQL 13 with `wal_level = replica` (no logical
//! decoding) → 17, pgbench scale 10, `[replication] driver = "mirror"`, `apply_batch = N`.
//! Timeline per stack: START UPGRADE (no load) → phase `replicating` → the applier caught up;
//! pgbench TPC-B through pgshift (`-c 8 -j 2 -T 20 -M prepared`, no rate limit) with a
//! sample every 250 ms; after pgbench ends, the time until the applier has caught up; then
//! the data of both sides compared.
//!
//! Units: pgshift's `seq` numbers queue records, not transactions. A write transaction
//! takes an `OPEN` and a `UNIT` record (a read-only or rolled-back one `OPEN` and `CLOSE`),
//! so a TPC-B transaction is about 2 records. Figures named `records` are seq numbers;
//! figures named `txn` count pgbench transactions, as rows of `pgbench_history` (each TPC-B
//! transaction inserts exactly one) on the source (recorded) and on the target (applied).
//!
//! What is sampled, and from where:
//! * `pgshift_capture_recorded_seq`, `_applied_seq`, `_lag_bytes`, `_apply_failed`
//!   (Prometheus). The applier sets these gauges only when it finds the queue empty or stops
//!   (proxy/src/capture/apply.rs), so while it is behind they keep their last values:
//!   `gauge_updates_during_load` counts the samples in which `applied_seq` moved, and the
//!   gauges are used only where they are current (before the load, and once caught up).
//! * `pgshift_replication_lag_bytes` (Prometheus, from the control plane's collector, which
//!   reads the capture state every `poll_interval_ms`): the live queue lag in bytes.
//! * The applier's own position on the target: `seq` of `pgshift_mirror.applied` (stored
//!   by every applied transaction, visible at its commit): the live applied seq.
//! * `count(*)` of `pgbench_history` on the source and on the target: transactions recorded
//!   and applied; their difference is the backlog in transactions.
//!
//! Figures per batch size:
//! * `pgbench_tps`, `pgbench_transactions`, `failed_transactions` (failed plus aborted
//!   clients): pgbench's summary.
//! * `records_recorded`: growth of `recorded_seq` from before the load to caught up.
//! * `apply_records_per_s_load` / `apply_txn_per_s_load`: growth of the live applied seq /
//!   of the target's history rows over the load, divided by the load's wall-clock seconds.
//! * `apply_records_per_s_catchup` / `apply_txn_per_s_catchup`: the same from the end of the
//!   load to caught up (absent when it caught up within one poll).
//! * `apply_txn_per_s_overall`: pgbench transactions divided by the seconds from the start of
//!   the load to caught up (what the applier sustained end to end).
//! * `backlog_txn_at_load_end`, `backlog_txn_max`: transactions recorded and not applied.
//! * `catchup_s`: from pgbench's exit until every transaction is on the target (history rows
//!   equal), polled every 100 ms; `catchup_gauge_s` until the gauges also say so
//!   (`applied_seq` = `recorded_seq`, current).
//! * `lag_bytes_max` (live collector figure) and `capture_lag_bytes_gauge_max` (the gauge).
//! * `apply_failed`: the largest `pgshift_capture_apply_failed` seen (must be 0).
//! * `keeps_up`: caught up within 1 s of the load's end.
//! * `data_equal`: once caught up, sum(abalance), sum(bbalance), sum(tbalance) and
//!   count(pgbench_history) are equal on both sides, and each side's sums agree with each
//!   other (pgbench's invariant); `history_complete`: the target's new history rows equal
//!   pgbench's transactions.
//! * `lag_bytes_after_caught_up`, `capture_lag_bytes_gauge_after_caught_up`: 2 s later
//!   (both must be back at 0).
//! * `cores_load`, `cores_catchup`: CPU seconds per second over the load and over the
//!   catch-up of the applier's backend on the target (`application_name` `pgshift-apply`,
//!   the connection as pgbench's user, opened by one write before the load),
//!   the target and the source (postmaster and children), pgshift (all threads: during the
//!   catch-up that is the applier), this bench with pgbench, interrupt time, and `rest`:
//!   the machine's busy time beyond those, i.e. other processes. Source, target, pgshift and
//!   pgbench share this machine, so the applier competes with the load for CPU; a phase in
//!   which other processes took more than 0.25 cores is flagged `disturbed`.
//!   `apply_backend_cpu_us_per_txn`: the backend's CPU per applied transaction.
//! * `target_log_warnings` (and the most frequent messages): `WARNING:` lines the target
//!   logged from the load's start to caught up.
//!
//! Note: the harness runs both servers with `fsync = off` and `synchronous_commit = off`
//! (integration/src/server.rs), so the flushing commit that ends each batch costs little
//! here: the batch sizes differ in round trips and per-batch work, not in WAL flushes.
//!
//! `ok` (exit status 0): for every batch size, caught up in time, no apply failure, no
//! failed pgbench transaction, `data_equal` and `history_complete`.

use anyhow::{bail, Context, Result};
use integration::stack::{APP_USER, DB};
use integration::{free_port, StackOptions};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::upgrade::Session;
use super::Outcome;
use crate::cpu;
use crate::pgbench::{self, Spec};
use crate::prom::{self, Metrics};
use crate::report::{json_num, num, say, Table};

/// Options of the `apply` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// `[replication] apply_batch` values to compare, comma-separated (1 to 1024); one
    /// stack each.
    #[arg(long, default_value = "1,64")]
    pub batches: String,
    /// pgbench scale of the source's data.
    #[arg(long, default_value_t = 10)]
    pub scale: u32,
    /// pgbench clients (-c).
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// pgbench threads (-j).
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Seconds of the pgbench run (-T).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Milliseconds between two samples during the load.
    #[arg(long, default_value_t = 250)]
    pub sample_ms: u64,
    /// Source major.
    #[arg(long, default_value_t = 13)]
    pub source_major: u32,
    /// Target major.
    #[arg(long, default_value_t = 17)]
    pub target_major: u32,
    /// Seconds allowed for the initial copy (START UPGRADE to phase `replicating`, applier
    /// caught up).
    #[arg(long, default_value_t = 180)]
    pub sync_timeout: u64,
    /// Seconds allowed for the applier to catch up after the load.
    #[arg(long, default_value_t = 180)]
    pub catchup_timeout: u64,
}

const RECORDED: &str = "pgshift_capture_recorded_seq";
const APPLIED: &str = "pgshift_capture_applied_seq";
const CAPTURE_LAG: &str = "pgshift_capture_lag_bytes";
const APPLY_FAILED: &str = "pgshift_capture_apply_failed";
/// The control plane's lag figure (the collector reads the capture state every
/// `[upgrade] poll_interval_ms`): current while the applier is busy.
const REPLICATION_LAG: &str = "pgshift_replication_lag_bytes";
/// Poll interval of the catch-up after the load.
const CATCHUP_POLL: Duration = Duration::from_millis(100);
/// Cores used by other processes above which a phase counts as disturbed from outside.
const REST_WARN_CORES: f64 = 0.25;
/// Caught up within this many seconds of the load's end: the applier kept up.
const KEEPS_UP_S: f64 = 1.0;
/// The applier's position on the target (see `proxy/src/capture/apply.rs`, `state_table`):
/// the seq of the last transaction applied, in the newest capture generation.
const APPLIED_SEQ_SQL: &str =
    "SELECT coalesce((SELECT seq FROM pgshift_mirror.applied ORDER BY gen DESC LIMIT 1), 0)";
const HISTORY_SQL: &str = "SELECT count(*) FROM pgbench_history";
const SUMS_SQL: &str = "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT count(*) FROM pgbench_history)";

/// One sample.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    /// Seconds since the load started.
    t: f64,
    recorded: f64,
    applied: f64,
    capture_lag: f64,
    failed: f64,
    lag: f64,
    /// The applier's seq on the target (live).
    seq_live: i64,
    /// pgbench_history rows on the source and the target.
    src_hist: i64,
    tgt_hist: i64,
}

impl Sample {
    fn backlog(&self) -> i64 {
        self.src_hist - self.tgt_hist
    }
}

/// The processes whose CPU time is measured.
#[derive(Debug, Clone, Copy)]
struct Pids {
    /// The applier's backend on the target (`application_name` `pgshift-apply`).
    backend: u32,
    pgshift: u32,
    /// Postmasters: with their children, running and reaped.
    source: u32,
    target: u32,
}

/// Cumulative CPU time (user + system), in microseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    backend_us: u64,
    /// pgshift, all threads (the applier, and the relay of the load while it runs).
    pgshift_us: u64,
    /// Each server: postmaster and children (the applier's backend is in the target's).
    source_us: u64,
    target_us: u64,
    /// This process and its reaped children (pgbench, psql).
    bench_us: u64,
    /// The whole machine, all CPUs: user, nice, system and steal time (`/proc/stat`).
    machine_us: u64,
    /// Interrupt time of all CPUs (irq, softirq), part of no process.
    irq_us: u64,
    at: Option<Instant>,
}

/// CPU seconds per second over an interval.
#[derive(Debug, Clone, Copy, Default)]
struct Cores {
    backend: f64,
    pgshift: f64,
    source: f64,
    target: f64,
    bench: f64,
    machine: f64,
    irq: f64,
}

impl Cores {
    /// The machine's busy time beyond pgshift, both servers and the bench with pgbench:
    /// other processes (another build, say) that took CPU from this run.
    fn rest(&self) -> f64 {
        (self.machine - self.pgshift - self.source - self.target - self.bench).max(0.0)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "apply_backend": json_num(self.backend, 3),
            "pgshift": json_num(self.pgshift, 3),
            "source": json_num(self.source, 3),
            "target": json_num(self.target, 3),
            "bench_and_pgbench": json_num(self.bench, 3),
            "machine_without_irq": json_num(self.machine, 3),
            "irq_softirq": json_num(self.irq, 3),
            "rest": json_num(self.rest(), 3),
        })
    }
}

impl Cpu {
    fn take(p: &Pids) -> Result<Cpu> {
        let tick_us = 1_000_000 / cpu::clock_ticks_per_second()?;
        let (machine_ticks, irq_ticks) = cpu::machine_busy_ticks()?;
        let (machine_us, irq_us) = (machine_ticks * tick_us, irq_ticks * tick_us);
        Ok(Cpu {
            backend_us: cpu::process_cpu_us(p.backend)
                .context("the applier's backend on the target (did it reconnect?)")?,
            pgshift_us: cpu::process_cpu_us(p.pgshift)?,
            source_us: cpu::server_ticks(p.source)? * tick_us,
            target_us: cpu::server_ticks(p.target)? * tick_us,
            bench_us: cpu::rusage_us(libc::RUSAGE_SELF) + cpu::rusage_us(libc::RUSAGE_CHILDREN),
            machine_us,
            irq_us,
            at: Some(Instant::now()),
        })
    }

    /// Cores used since `before`.
    fn cores_since(&self, before: &Cpu) -> Cores {
        let wall = match (self.at, before.at) {
            (Some(a), Some(b)) => a.duration_since(b).as_secs_f64().max(1e-9),
            _ => return Cores::default(),
        };
        let c = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e6 / wall;
        Cores {
            backend: c(self.backend_us, before.backend_us),
            pgshift: c(self.pgshift_us, before.pgshift_us),
            source: c(self.source_us, before.source_us),
            target: c(self.target_us, before.target_us),
            bench: c(self.bench_us, before.bench_us),
            machine: c(self.machine_us, before.machine_us),
            irq: c(self.irq_us, before.irq_us),
        }
    }
}

/// The `WARNING:` lines of a server log from byte `from` on: their count, the distinct
/// messages with their counts (most frequent first, at most 5), and the log's length.
fn warnings_in(path: &std::path::Path, from: u64) -> (u64, Vec<(String, u64)>, u64) {
    let bytes = std::fs::read(path).unwrap_or_default();
    let len = bytes.len() as u64;
    let text = String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default());
    let mut by_message: std::collections::HashMap<String, u64> = Default::default();
    let mut n = 0;
    for l in text.lines() {
        if let Some(at) = l.find("WARNING:") {
            n += 1;
            *by_message
                .entry(l[at + "WARNING:".len()..].trim().to_string())
                .or_default() += 1;
        }
    }
    let mut top: Vec<(String, u64)> = by_message.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(5);
    (n, top, len)
}

/// Connections to both servers (superuser, application database) for the samples.
struct Probe {
    source: Client,
    target: Client,
    http_port: u16,
}

impl Probe {
    async fn one(c: &Client, sql: &str) -> Result<i64> {
        let msgs = c
            .simple_query(sql)
            .await
            .with_context(|| format!("running {sql}"))?;
        msgs.iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no number from {sql}"))
    }

    async fn metrics(&self) -> Result<Metrics> {
        prom::scrape(self.http_port).await
    }

    /// Everything at once, `t` seconds after the load started.
    async fn sample(&self, t: f64) -> Result<Sample> {
        let (m, seq, src, tgt) = tokio::join!(
            self.metrics(),
            Probe::one(&self.target, APPLIED_SEQ_SQL),
            Probe::one(&self.source, HISTORY_SQL),
            Probe::one(&self.target, HISTORY_SQL),
        );
        let m = m?;
        Ok(Sample {
            t,
            recorded: m.value(RECORDED, ""),
            applied: m.value(APPLIED, ""),
            capture_lag: m.value(CAPTURE_LAG, ""),
            failed: m.value(APPLY_FAILED, ""),
            lag: m.value(REPLICATION_LAG, ""),
            seq_live: seq?,
            src_hist: src?,
            tgt_hist: tgt?,
        })
    }

    /// The sums and the history count of one side, as text.
    async fn sums(c: &Client) -> Result<Vec<String>> {
        let msgs = c.simple_query(SUMS_SQL).await.context("reading the sums")?;
        msgs.iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..4).map(|i| r.get(i).unwrap_or("").to_string()).collect())
                }
                _ => None,
            })
            .context("no row of sums")
    }
}

/// The figures of one batch size.
struct Figures {
    batch: u32,
    versions: String,
    stack_s: f64,
    sync_s: f64,
    load_s: f64,
    tps: f64,
    transactions: u64,
    failed: u64,
    records_recorded: f64,
    records_applied_load: i64,
    txn_applied_load: i64,
    records_applied_catchup: i64,
    txn_applied_catchup: i64,
    backlog_at_end: i64,
    backlog_max: i64,
    catchup_s: Option<f64>,
    catchup_gauge_s: Option<f64>,
    lag_max: f64,
    capture_lag_gauge_max: f64,
    gauge_updates_during_load: u32,
    samples_during_load: u32,
    apply_failed: f64,
    last_error: Option<String>,
    source_sums: Vec<String>,
    target_sums: Vec<String>,
    data_equal: bool,
    history_complete: bool,
    /// pgshift_replication_lag_bytes and the capture gauges 2 s after caught up.
    lag_after: f64,
    capture_lag_after: f64,
    /// Cores (CPU seconds per second) during the load and during the catch-up.
    cores_load: Cores,
    cores_catchup: Cores,
    /// The applier backend's CPU microseconds per transaction it applied, load start to
    /// caught up.
    backend_us_per_txn: f64,
    /// `WARNING:` lines the target logged from the load's start to caught up.
    target_warnings: u64,
    /// The most frequent of them, with their counts.
    target_warning_messages: Vec<(String, u64)>,
}

impl Figures {
    fn rate(n: f64, s: Option<f64>) -> Option<f64> {
        s.filter(|s| *s > 0.0).map(|s| n / s)
    }

    fn apply_records_per_s_load(&self) -> f64 {
        self.records_applied_load as f64 / self.load_s.max(1e-9)
    }

    fn apply_txn_per_s_load(&self) -> f64 {
        self.txn_applied_load as f64 / self.load_s.max(1e-9)
    }

    /// Per second of the catch-up; none when it caught up within one poll.
    fn catchup_span(&self) -> Option<f64> {
        self.catchup_s
            .filter(|s| *s > CATCHUP_POLL.as_secs_f64() * 1.5)
    }

    fn apply_records_per_s_catchup(&self) -> Option<f64> {
        Figures::rate(self.records_applied_catchup as f64, self.catchup_span())
    }

    fn apply_txn_per_s_catchup(&self) -> Option<f64> {
        Figures::rate(self.txn_applied_catchup as f64, self.catchup_span())
    }

    fn apply_txn_per_s_overall(&self) -> Option<f64> {
        self.catchup_s
            .map(|c| self.transactions as f64 / (self.load_s + c))
    }

    fn caught_up(&self) -> bool {
        self.catchup_s.is_some()
    }

    fn keeps_up(&self) -> bool {
        self.catchup_s.is_some_and(|c| c <= KEEPS_UP_S)
    }

    /// Other processes took a share of the machine during the load or the catch-up.
    fn disturbed(&self) -> bool {
        self.cores_load.rest().max(self.cores_catchup.rest()) > REST_WARN_CORES
    }

    fn ok(&self) -> bool {
        self.caught_up()
            && self.apply_failed == 0.0
            && self.failed == 0
            && self.transactions > 0
            && self.data_equal
            && self.history_complete
    }

    fn json(&self) -> serde_json::Value {
        let opt = |v: Option<f64>, d: i32| v.map(|v| json_num(v, d));
        let mut base = json!({
            "apply_batch": self.batch,
            "versions": self.versions,
            "stack_s": json_num(self.stack_s, 1),
            "sync_s": json_num(self.sync_s, 1),
            "load_s": json_num(self.load_s, 2),
            "pgbench_tps": json_num(self.tps, 1),
            "pgbench_transactions": self.transactions,
            "failed_transactions": self.failed,
            "records_recorded": self.records_recorded,
            "records_applied_during_load": self.records_applied_load,
            "txn_applied_during_load": self.txn_applied_load,
            "apply_records_per_s_load": json_num(self.apply_records_per_s_load(), 1),
            "apply_txn_per_s_load": json_num(self.apply_txn_per_s_load(), 1),
            "apply_records_per_s_catchup": opt(self.apply_records_per_s_catchup(), 1),
            "apply_txn_per_s_catchup": opt(self.apply_txn_per_s_catchup(), 1),
            "apply_txn_per_s_overall": opt(self.apply_txn_per_s_overall(), 1),
            "backlog_txn_at_load_end": self.backlog_at_end,
            "backlog_txn_max": self.backlog_max,
            "catchup_s": opt(self.catchup_s, 2),
            "catchup_gauge_s": opt(self.catchup_gauge_s, 2),
            "keeps_up": self.keeps_up(),
            "lag_bytes_max": self.lag_max,
            "capture_lag_bytes_gauge_max": self.capture_lag_gauge_max,
            "gauge_updates_during_load": self.gauge_updates_during_load,
            "samples_during_load": self.samples_during_load,
            "apply_failed": self.apply_failed,
            "last_error": self.last_error,
            "source_sums": self.source_sums,
            "target_sums": self.target_sums,
            "data_equal": self.data_equal,
            "history_complete": self.history_complete,
            "ok": self.ok(),
        });
        let messages: Vec<serde_json::Value> = self
            .target_warning_messages
            .iter()
            .map(|(m, n)| json!({ "message": m, "count": n }))
            .collect();
        let more = json!({
            "lag_bytes_after_caught_up": self.lag_after,
            "capture_lag_bytes_gauge_after_caught_up": self.capture_lag_after,
            "disturbed": self.disturbed(),
            "cores_load": self.cores_load.json(),
            "cores_catchup": self.cores_catchup.json(),
            "apply_backend_cpu_us_per_txn": json_num(self.backend_us_per_txn, 1),
            "target_log_warnings": self.target_warnings,
            "target_log_warning_messages": messages,
        });
        if let (Some(all), serde_json::Value::Object(more)) = (base.as_object_mut(), more) {
            all.extend(more);
        }
        base
    }
}

/// `"1,64"` → `[1, 64]`, each 1 to 1024.
fn parse_batches(s: &str) -> Result<Vec<u32>> {
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n: u32 = part
            .parse()
            .with_context(|| format!("--batches: {part:?} is not a number"))?;
        if !(1..=1024).contains(&n) {
            bail!("--batches: {n} is out of range (1 to 1024)");
        }
        v.push(n);
    }
    if v.is_empty() {
        bail!("--batches: no batch size given");
    }
    Ok(v)
}

/// Run the scenario.
pub async fn run(o: Opts) -> Result<Outcome> {
    let batches = parse_batches(&o.batches)?;
    say(format!(
        "apply: mirror driver, PostgreSQL {} (wal_level = replica) -> {}, pgbench scale {}, -c {} -j {} -T {} -M prepared unlimited; apply_batch {:?}, one stack each",
        o.source_major, o.target_major, o.scale, o.clients, o.threads, o.duration, batches
    ));
    let mut all = Vec::new();
    for &batch in &batches {
        all.push(one_batch(&o, batch).await?);
    }

    let mut headers = vec!["apply_batch".to_string()];
    headers.extend(all.iter().map(|f| f.batch.to_string()));
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut t = Table::new(&headers);
    let opt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| num(v, d));
    let mut line = |name: &str, cell: &dyn Fn(&Figures) -> String| {
        let mut r = vec![name.to_string()];
        r.extend(all.iter().map(cell));
        t.row(r);
    };
    line("pgbench tps", &|f| num(f.tps, 0));
    line("pgbench transactions", &|f| f.transactions.to_string());
    line("failed transactions", &|f| f.failed.to_string());
    line("records recorded (seq)", &|f| num(f.records_recorded, 0));
    line("apply records/s, load", &|f| {
        num(f.apply_records_per_s_load(), 0)
    });
    line("apply txn/s, load", &|f| num(f.apply_txn_per_s_load(), 0));
    line("apply records/s, catch-up", &|f| {
        opt(f.apply_records_per_s_catchup(), 0)
    });
    line("apply txn/s, catch-up", &|f| {
        opt(f.apply_txn_per_s_catchup(), 0)
    });
    line("txn/s, load start to caught up", &|f| {
        opt(f.apply_txn_per_s_overall(), 0)
    });
    line("backlog txn at load end", &|f| f.backlog_at_end.to_string());
    line("backlog txn max", &|f| f.backlog_max.to_string());
    line("catch-up s after load", &|f| opt(f.catchup_s, 2));
    line("catch-up s (gauges)", &|f| opt(f.catchup_gauge_s, 2));
    line("lag bytes max (collector)", &|f| num(f.lag_max, 0));
    line("lag bytes max (capture gauge)", &|f| {
        num(f.capture_lag_gauge_max, 0)
    });
    line("gauge updates / samples, load", &|f| {
        format!("{}/{}", f.gauge_updates_during_load, f.samples_during_load)
    });
    line("lag bytes 2 s after caught up", &|f| {
        format!("{} / {}", f.lag_after, f.capture_lag_after)
    });
    for (phase, load) in [("load", true), ("catch-up", false)] {
        let c = move |f: &Figures| if load { f.cores_load } else { f.cores_catchup };
        line(&format!("cores apply backend, {phase}"), &|f| {
            num(c(f).backend, 2)
        });
        line(&format!("cores target (all), {phase}"), &|f| {
            num(c(f).target, 2)
        });
        line(&format!("cores source, {phase}"), &|f| num(c(f).source, 2));
        line(&format!("cores pgshift, {phase}"), &|f| {
            num(c(f).pgshift, 2)
        });
        line(&format!("cores bench+pgbench, {phase}"), &|f| {
            num(c(f).bench, 2)
        });
        line(&format!("cores other processes, {phase}"), &|f| {
            num(c(f).rest(), 2)
        });
        line(&format!("cores irq+softirq, {phase}"), &|f| {
            num(c(f).irq, 2)
        });
    }
    line("apply backend CPU us/txn", &|f| {
        num(f.backend_us_per_txn, 0)
    });
    line("target log WARNING lines", &|f| {
        f.target_warnings.to_string()
    });
    line("apply failed", &|f| num(f.apply_failed, 0));
    line("keeps up", &|f| f.keeps_up().to_string());
    line("disturbed by other processes", &|f| {
        f.disturbed().to_string()
    });
    line("data equal source = target", &|f| f.data_equal.to_string());
    line("history complete", &|f| f.history_complete.to_string());
    line("ok", &|f| f.ok().to_string());
    print!("{}", t.render());
    println!("records: queue seq numbers (OPEN, UNIT and CLOSE records each take one; a TPC-B transaction is about 2); txn: pgbench transactions (pgbench_history rows).");
    for f in &all {
        if let Some(e) = &f.last_error {
            println!("apply_batch {}: last error: {e}", f.batch);
        }
        if !f.data_equal {
            println!(
                "apply_batch {}: data differ: source {:?} / target {:?} (abalance, bbalance, tbalance sums, history rows)",
                f.batch, f.source_sums, f.target_sums
            );
        }
    }
    for f in all.iter().filter(|f| f.disturbed()) {
        println!(
            "apply_batch {}: other processes used {} cores during the load and {} during the catch-up (the machine has {}): its figures are disturbed",
            f.batch,
            num(f.cores_load.rest(), 2),
            num(f.cores_catchup.rest(), 2),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    let ok = all.iter().all(Figures::ok);
    let json = json!({
        "scenario": "apply",
        "source_major": o.source_major,
        "target_major": o.target_major,
        "scale": o.scale,
        "clients": o.clients,
        "threads": o.threads,
        "duration_s": o.duration,
        "sample_ms": o.sample_ms,
        "batches": batches,
        "units": "records = capture queue seq numbers (OPEN/UNIT/CLOSE each one); txn = pgbench transactions",
        "per_batch": all.iter().map(Figures::json).collect::<Vec<_>>(),
        "ok": ok,
    });
    Ok(Outcome { json, ok })
}

/// One stack with `apply_batch = batch`: sync, load, catch-up, compare.
async fn one_batch(o: &Opts, batch: u32) -> Result<Figures> {
    let started = Instant::now();
    let http_port = free_port();
    let extra_config = format!(
        "[replication]\ndriver = \"mirror\"\napply_batch = {batch}\n\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n"
    );
    let mut s = Session::start_with(
        StackOptions {
            source_major: o.source_major,
            target_major: o.target_major,
            pgbench_scale: o.scale,
            source_settings: vec![("wal_level".into(), "replica".into())],
            extra_config,
            ..Default::default()
        },
        &format!("apply-{batch}"),
    )
    .await?;
    let stack_s = started.elapsed().as_secs_f64();
    say(format!(
        "apply_batch {batch}: stack up in {stack_s:.1} s: {}; pgshift on {}:{}, metrics on port {http_port}",
        s.versions(),
        s.stack.pgshift.host,
        s.stack.pgshift.port
    ));
    s.fix_replica_identity().await?;
    let sync_start = Instant::now();
    say("admin> START UPGRADE");
    let r = s.console.run("START UPGRADE").await?;
    if !r.notices.is_empty() {
        say(format!("console: {}", r.message()));
    }
    let sync_timeout = Duration::from_secs(o.sync_timeout);
    s.console.wait_phase("replicating", sync_timeout).await?;
    let probe = Probe {
        source: s.stack.source.connect(DB).await?,
        target: s.stack.target.connect(DB).await?,
        http_port,
    };
    // Caught up before the load: history equal, the gauges equal (current: nothing runs).
    loop {
        let x = probe.sample(0.0).await;
        if let Ok(x) = &x {
            if x.failed > 0.0 {
                bail!(
                    "apply_batch {batch}: applying stopped during the initial synchronisation: {}",
                    s.console.status().await?.line()
                );
            }
            if x.src_hist == x.tgt_hist && x.applied >= x.recorded {
                break;
            }
        }
        if sync_start.elapsed() > sync_timeout {
            bail!(
                "apply_batch {batch}: the applier did not catch up within {sync_timeout:?} after START UPGRADE: {x:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sync_s = sync_start.elapsed().as_secs_f64();
    say(format!(
        "replicating and caught up {sync_s:.1} s after START UPGRADE; load: pgbench -c {} -j {} -T {} -M prepared",
        o.clients, o.threads, o.duration
    ));

    // The applier logs in as each transaction's own user; its connection as the
    // application's user opens with the first write, so one write goes through first and
    // that connection's backend is the one watched.
    s.stack
        .app_client()
        .await?
        .batch_execute("UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1")
        .await
        .context("a first write through pgshift")?;
    let applier = format!(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgshift-apply' AND usename = '{APP_USER}' ORDER BY backend_start DESC LIMIT 1"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let backend = loop {
        match Probe::one(&probe.target, &applier).await {
            Ok(pid) => break pid as u32,
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("the applier's backend on the target"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let pgshift_pid = s.stack.pgshift.pid().context("pgshift's pid")?;
    let target_log = s.stack.target.log_path();
    let (_, _, log_from) = warnings_in(&target_log, u64::MAX);
    let before = probe.sample(0.0).await?;
    let pids = Pids {
        backend,
        pgshift: pgshift_pid,
        source: cpu::postmaster_pid(&s.stack.source.datadir)?,
        target: cpu::postmaster_pid(&s.stack.target.datadir)?,
    };
    let cpu0 = Cpu::take(&pids)?;
    let spec = Spec::tpcb(o.clients, o.threads, o.duration);
    let mut run = pgbench::spawn(&s.endpoint, &spec, false)?;
    let t0 = Instant::now();
    let tick = Duration::from_millis(o.sample_ms.max(10));
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_say = 2.0;
    while !run.has_exited() {
        let x = probe.sample(t0.elapsed().as_secs_f64()).await?;
        if x.t >= next_say {
            next_say += 2.0;
            say(format!(
                "  t={:>5.1}s  source {:>7} txn  target {:>7} txn  backlog {:>6} txn  lag {:>10} B  gauges: applied {} / recorded {}",
                x.t,
                x.src_hist - before.src_hist,
                x.tgt_hist - before.tgt_hist,
                x.backlog(),
                x.lag,
                x.applied,
                x.recorded
            ));
        }
        samples.push(x);
        let next = tick.mul_f64(samples.len() as f64 + 1.0);
        if let Some(wait) = next.checked_sub(t0.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    let load_s = t0.elapsed().as_secs_f64();
    let cpu1 = Cpu::take(&pids)?;
    let at_end = probe.sample(load_s).await?;
    let out = run.finish().await?;
    let sum = &out.summary;
    say(format!(
        "pgbench done: {} transactions, {:.0} tps, {} failed; backlog {} txn",
        sum.transactions,
        sum.tps,
        sum.failures(),
        at_end.backlog()
    ));

    // Catch-up: every transaction on the target (history rows equal; the source's count is
    // final now), and the gauges current and equal.
    let catchup_timeout = Duration::from_secs(o.catchup_timeout);
    let mut catchup_s = None;
    let mut catchup_gauge_s = None;
    let mut last = at_end;
    let mut catchup_samples = vec![at_end];
    let mut cpu2 = Cpu::default();
    loop {
        let x = probe.sample(t0.elapsed().as_secs_f64()).await?;
        let after = x.t - load_s;
        if catchup_s.is_none() && x.tgt_hist >= x.src_hist {
            catchup_s = Some(after);
            cpu2 = Cpu::take(&pids)?;
            last = x;
        }
        if catchup_gauge_s.is_none()
            && x.applied >= x.recorded
            && x.recorded >= x.seq_live as f64
            && x.recorded > before.recorded
        {
            catchup_gauge_s = Some(after);
        }
        catchup_samples.push(x);
        if x.failed > 0.0 || (catchup_s.is_some() && catchup_gauge_s.is_some()) {
            break;
        }
        if after > catchup_timeout.as_secs_f64() {
            say(format!(
                "apply_batch {batch}: not caught up {} s after the load: {x:?}",
                o.catchup_timeout
            ));
            break;
        }
        tokio::time::sleep(CATCHUP_POLL).await;
    }
    let fin = *catchup_samples.last().unwrap_or(&at_end);
    let (target_warnings, target_warning_messages, _) = warnings_in(&target_log, log_from);
    for (m, n) in &target_warning_messages {
        say(format!("target log: {n} x WARNING: {m}"));
    }
    // The lag figures once the collector (every poll_interval_ms) and the metrics sampler
    // (every second) have seen the caught-up state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = probe.metrics().await?;
    let status = s.console.status().await?;
    say(format!(
        "caught up {} s after the load (gauges: {} s); {}",
        catchup_s.map_or("-".into(), |c| num(c, 2)),
        catchup_gauge_s.map_or("-".into(), |c| num(c, 2)),
        status.line()
    ));

    let (source_sums, target_sums) = (
        Probe::sums(&probe.source).await?,
        Probe::sums(&probe.target).await?,
    );
    // pgbench's invariant: every transaction adds its delta to one account, teller and branch.
    let invariant = |v: &[String]| v.len() == 4 && v[0] == v[1] && v[1] == v[2];
    let data_equal = catchup_s.is_some()
        && source_sums == target_sums
        && invariant(&source_sums)
        && invariant(&target_sums);

    let max = |f: fn(&Sample) -> f64| {
        samples
            .iter()
            .chain(&catchup_samples)
            .map(f)
            .fold(0.0, f64::max)
    };
    let gauge_updates_during_load = samples
        .windows(2)
        .filter(|w| w[1].applied != w[0].applied)
        .count() as u32;
    let fig = Figures {
        batch,
        versions: s.versions(),
        stack_s,
        sync_s,
        load_s,
        tps: sum.tps,
        transactions: sum.transactions,
        failed: sum.failures(),
        records_recorded: fin.recorded - before.recorded,
        records_applied_load: at_end.seq_live - before.seq_live,
        txn_applied_load: at_end.tgt_hist - before.tgt_hist,
        records_applied_catchup: last.seq_live - at_end.seq_live,
        txn_applied_catchup: last.tgt_hist - at_end.tgt_hist,
        backlog_at_end: at_end.backlog(),
        backlog_max: samples
            .iter()
            .chain([&at_end])
            .map(Sample::backlog)
            .max()
            .unwrap_or(0),
        catchup_s,
        catchup_gauge_s,
        lag_max: max(|x| x.lag),
        capture_lag_gauge_max: max(|x| x.capture_lag),
        gauge_updates_during_load,
        samples_during_load: samples.len() as u32,
        apply_failed: max(|x| x.failed),
        last_error: status.last_error.clone(),
        history_complete: catchup_s.is_some()
            && (fin.tgt_hist - before.tgt_hist) as u64 == sum.transactions,
        source_sums,
        target_sums,
        data_equal,
        lag_after: settled.value(REPLICATION_LAG, ""),
        capture_lag_after: settled.value(CAPTURE_LAG, ""),
        cores_load: cpu1.cores_since(&cpu0),
        cores_catchup: cpu2.cores_since(&cpu1),
        backend_us_per_txn: cpu2.backend_us.saturating_sub(cpu0.backend_us) as f64
            / (last.tgt_hist - before.tgt_hist).max(1) as f64,
        target_warnings,
        target_warning_messages,
    };
    for f in out.stderr.lines().filter(|l| l.contains("aborted")).take(5) {
        say(format!("pgbench: {f}"));
    }
    say(format!(
        "apply_batch {batch}: {:.0} txn/s applied during the load for {:.0} tps; {}",
        fig.apply_txn_per_s_load(),
        fig.tps,
        if fig.ok() { "ok" } else { "NOT ok" }
    ));
    drop(probe);
    drop(s);
    Ok(fig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_batches() {
        assert_eq!(parse_batches("1,64").unwrap(), vec![1, 64]);
        assert_eq!(parse_batches(" 8 , 256,").unwrap(), vec![8, 256]);
        assert!(parse_batches("0").is_err());
        assert!(parse_batches("1025").is_err());
        assert!(parse_batches("x").is_err());
        assert!(parse_batches("").is_err());
    }
}
