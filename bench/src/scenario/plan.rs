//! `plan`: the unattended upgrade plan under load, then the target-stop fault during a shift
//! step — what an operator gets from `START UPGRADE` with `approve_cutover = false`, measured
//! from outside. Two runs, each on a stack of its own.
//!
//! **Run 1, the whole plan.** PostgreSQL 13 (pgbench data, `--scale`) → a 17 that pgshift
//! provisions itself (local provider), `[upgrade] shift = [25, 25, 50]` with `--hold-ms` per
//! step (health checks every 250 ms), cutover, the hold after it, DetachOld and
//! DecommissionSource (final dump, source stopped). Load through pgshift all along: pgbench
//! TPC-B `-M prepared` (writes: always on the serving side), pgbench `-S -M prepared`
//! (read-only: shifted to the target by weight), both `-c --clients` in back-to-back 8 s runs
//! with per-transaction logs (`-l`), and the unique-id writer. The plan is watched through
//! `SHOW UPGRADE STATUS` and pgshift's `/metrics` every 100 ms.
//! * `failed_transactions`: pgbench's failed transactions plus the error lines of its standard
//!   error (a client aborted, a connection failed; not `Run was aborted` and the run's exit
//!   status, which only follow from those), over both loads, plus the writer's errors. `lost_writes`: acknowledged writer ids missing on the target at the end.
//! * `cutover_pause_ms`: the client-observed pause around the cutover: the longest
//!   transaction (TPC-B or `-S`) in progress at any time within 1 s of the server-side pause.
//!   As nobody times a command here, the pause is located through the `swapped to target` line
//!   of pgshift's log (its time is the end of the pause, its `pause N ms` the length:
//!   `cutover_server_pause_ms`), the way `cutover` locates its held transactions.
//!   `cutover_pause_txn_at_ms`: where that transaction ran, in ms from the pause's start;
//!   `cutover_held_*`: the transactions in progress during the server pause itself (their
//!   longest, and when the last of them completed after the swap).
//! * `shift_error_points`: for each shift step (cumulative weights 25, 50, 100) the share of
//!   read-only transactions that ran on the target during the step's hold, against the
//!   configured weight; the largest absolute gap, in percentage points. The window of a step
//!   runs from the first to the last scrape of `/metrics` that two status polls around it place
//!   inside `health_check:N` at that weight. Both counts come from the proxy's
//!   `pgshift_transactions_total{side=...}` over the window, so that numerator and denominator
//!   are read at the same instants: the target's growth (before the cutover only shifted
//!   read-only work reaches it) over the read-only units of both sides, which are both
//!   counters' growth minus the TPC-B transactions (whole transactions: one unit each) and the
//!   writer's inserts completed in the window (pgbench's per-transaction logs, the writer's
//!   own record). Writes are a small part of the traffic, so the client-side timing of the
//!   window's edges matters little there. `reads_logged` in `shift_steps` is the cross-check:
//!   the `-S` transactions of pgbench's logs in the window, which should agree to within the
//!   edges' timing (a pgbench thread starved of CPU stamps completions late). pgbench's
//!   start-up query of each 8 s run (`select count(*) from pgbench_branches`, read-only)
//!   counts as a read: a few units in thousands.
//!
//! **Run 2, the target-stop fault.** A new 13 → 17 stack whose target the harness runs, the
//! same shift with a hold of 60 s, so that the plan sits in `health_check:1` at weight 25;
//! `-S` load and the writer. Once the hold has lasted a whole health window plus 1 s, the
//! latest verdict is `ok` and at least 200 read-only transactions ran on the target, the target
//! is stopped with `pg_ctl stop -m immediate` (a crash as far as it is concerned). A health
//! reaction before that is no measure of the fault: it is kept in `fault_false_alarms` and the
//! plan resumed (RESUME UPGRADE, at most three times).
//! * `auto_rollback_ms`: from the failing health check to the weight published back to 0 on
//!   the source, as the control plane measures and journals it (the history entry `weight 25 →
//!   0 % published X ms after the failing check (...)` that appeared after the stop).
//! * `target_down_to_source_ms`: wall time from the start of the stop to the first `SHOW
//!   UPGRADE STATUS` (polled every 10 ms) showing `target_weight` 0: detection plus reaction.
//!   `fault_reason_shown`: its `last_error` says `health check failed`.
//! * `fault_failed_transactions`: as `failed_transactions`, for this run (a read-only
//!   transaction that the dying target fails before answering runs again on the source:
//!   `fault_replays` counts them from `pgshift_shift_replays_total`).
//!   `fault_lost_writes`: acknowledged writer ids missing on the source at the end.
//!
//! `ok`: no failed transaction and no lost write in run 1, no lost write in run 2, the plan
//! reached `done`, and the fault moved the traffic back to the source.

use anyhow::{anyhow, bail, Context, Result};
use integration::load::{PgbenchLoop, PgbenchTotals};
use integration::{free_port, StackOptions};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::upgrade::{hold, Session, WriterCheck};
use super::Outcome;
use crate::clock::{self, Span};
use crate::console::{Console, Status};
use crate::latency;
use crate::pgbench::{self, Spec, Txn};
use crate::pgshift_log;
use crate::prom;
use crate::report::{json_num, num, say, Table};
use crate::scene::WorkDir;

/// Options of the `plan` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// pgbench scale of the source's data in the plan run.
    #[arg(long, default_value_t = 10)]
    pub scale: u32,
    /// pgbench clients (-c) of each load (TPC-B and select-only).
    #[arg(long, default_value_t = 4)]
    pub clients: u32,
    /// Hold of each shift step, and after the cutover, in ms (`shift_hold_ms`).
    #[arg(long, default_value_t = 5000)]
    pub hold_ms: u64,
    /// Source major.
    #[arg(long, default_value_t = 13)]
    pub source_major: u32,
    /// Target major.
    #[arg(long, default_value_t = 17)]
    pub target_major: u32,
    /// Seconds allowed for the whole plan (and, in the fault run, to reach the first hold).
    #[arg(long, default_value_t = 600)]
    pub plan_timeout: u64,
    /// pgbench scale of the source's data in the fault run.
    #[arg(long, default_value_t = 1)]
    pub fault_scale: u32,
    /// Replication driver: `logical` (this module's runs), `bidirectional` (16 → 17 at
    /// least) or `pgactive` (servers from `PGSHIFT_PGACTIVE_BINDIR`): whole sessions shifted
    /// both ways, then a conflict (see `plan_both.rs`).
    #[arg(long, default_value = "logical")]
    pub driver: String,
    /// Probe sessions of the session-level shift (`--driver bidirectional|pgactive`); both
    /// servers get `max_connections` of this plus 100.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
}

/// The configured shift steps and their cumulative weights.
const SHIFT: [u32; 3] = [25, 25, 50];
const WEIGHTS: [u32; 3] = [25, 50, 100];
/// Length of one pgbench run of the background loads.
const CHUNK_S: u64 = 8;
/// Read-only transactions on the target before the fault is injected.
const FAULT_MIN_TARGET_TXNS: f64 = 200.0;

/// Run the scenario.
pub async fn run(o: Opts) -> Result<Outcome> {
    if o.driver != "logical" {
        let driver = o.driver.clone();
        return super::plan_both::run(o, &driver).await;
    }
    let p = plan_run(&o).await?;
    let f = fault_run(&o).await?;

    let shift_error_points = p
        .steps
        .iter()
        .flatten()
        .map(|s| s.gap_points())
        .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g))));
    let all_steps = p.steps.iter().all(Option::is_some);
    let rolled_back = f.back_at_us.is_some() && f.auto_rollback_ms.is_some();
    let ok = p.failed_transactions() == 0
        && p.lost_writes == 0
        && f.lost_writes == 0
        && p.done
        && rolled_back;

    let mut t = Table::new(&["figure", "value"]);
    let mut add = |k: &str, v: String| t.row(vec![k.to_string(), v]);
    let opt = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| num(v, d));
    add("plan: versions", p.versions.clone());
    add(
        "plan: end",
        format!(
            "{} / {} after {} s",
            p.end.phase,
            p.end.state,
            num(p.seconds, 1)
        ),
    );
    add(
        "plan: target weights",
        p.weights
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" → "),
    );
    for (i, s) in p.steps.iter().enumerate() {
        add(
            &format!("shift {}: target share of reads (%)", WEIGHTS[i]),
            s.as_ref().map_or("- (no window)".into(), |s| {
                format!(
                    "{} ({} of {} in {} s; -S logged {})",
                    num(s.observed_pct(), 2),
                    s.on_target,
                    s.reads,
                    num(s.window.ms() / 1000.0, 1),
                    s.reads_logged
                )
            }),
        );
    }
    add("shift error (points)", opt(shift_error_points, 2));
    add("cutover: client pause (ms)", opt(p.cutover_pause_ms, 1));
    add(
        "cutover: longest txn, from pause start",
        p.cutover_longest_at_ms
            .map_or("-".into(), |(a, b)| format!("{a:+.0} .. {b:+.0} ms")),
    );
    add(
        "cutover: server pause (ms)",
        opt(p.swap.as_ref().map(|e| e.pause_ms), 1),
    );
    add(
        "cutover: held txns, max / done after swap (ms)",
        p.held.as_ref().map_or("-".into(), |h| {
            format!(
                "{} txns: {} / {}",
                h.count,
                num(h.max_ms, 1),
                num(h.done_after_ms, 1)
            )
        }),
    );
    add(
        "TPC-B / -S transactions",
        format!("{} / {}", p.tpcb.transactions, p.reads.transactions),
    );
    add("failed transactions", p.failed_transactions().to_string());
    add(
        "writer: acknowledged / errors / lost",
        format!(
            "{} / {} / {}",
            p.writer_acked,
            p.writer_errors.len(),
            p.lost_writes
        ),
    );
    add(
        "final dump (bytes) / source stopped",
        format!(
            "{} / {}",
            p.final_dump_bytes.map_or("-".into(), |b| b.to_string()),
            p.source_stopped
        ),
    );
    add("fault: auto rollback (ms)", opt(f.auto_rollback_ms, 2));
    add(
        "fault: stop → target_weight 0 (ms)",
        opt(f.down_to_source_ms(), 1),
    );
    add(
        "fault: pg_ctl stop -m immediate took (ms)",
        num(f.kill.ms(), 1),
    );
    add(
        "fault: reason shown (last_error)",
        f.reason_shown().to_string(),
    );
    add(
        "fault: false alarms before the stop",
        f.false_alarms.len().to_string(),
    );
    add(
        "fault: -S transactions / replays / failed",
        format!(
            "{} / {} / {}",
            f.reads.transactions,
            f.replays,
            f.failed_transactions()
        ),
    );
    add(
        "fault: writer acknowledged / errors / lost",
        format!(
            "{} / {} / {}",
            f.writer_acked,
            f.writer_errors.len(),
            f.lost_writes
        ),
    );
    add(
        "fault: plan after",
        format!("{} / {}", f.end.phase, f.end.state),
    );
    print!("{}", t.render());
    println!("plan phases: {}", p.phases.join(" → "));
    println!("plan end: {}", p.end.line());
    if let Some(why) = &p.stop {
        println!("plan stopped: {why}");
    }
    println!(
        "fault: health before the stop: {}",
        f.health_before.as_deref().unwrap_or("-")
    );
    println!(
        "fault: last_error: {}",
        f.last_error.as_deref().unwrap_or("-")
    );
    for a in &f.false_alarms {
        println!("fault: false alarm before the stop: {a}");
    }
    for (what, totals) in [
        ("plan TPC-B", &p.tpcb),
        ("plan -S", &p.reads),
        ("fault -S", &f.reads),
    ] {
        for e in totals.errors.iter().take(10) {
            println!("{what}: {e}");
        }
    }
    for e in p.writer_errors.iter().chain(&f.writer_errors).take(10) {
        println!("writer error: {e}");
    }
    if let Some(m) = &f.reaction {
        println!("fault reaction: {m}");
    }

    let mut json = json!({
        "scenario": "plan",
        "source_major": o.source_major,
        "target_major": o.target_major,
        "versions": p.versions,
        "scale": o.scale,
        "clients": o.clients,
        "shift": SHIFT,
        "shift_hold_ms": o.hold_ms,
        "plan_done": p.done,
        "plan_seconds": json_num(p.seconds, 1),
        "plan_stop": p.stop,
        "phases": p.phases,
        "target_weights": p.weights,
        "failed_transactions": p.failed_transactions(),
        "lost_writes": p.lost_writes,
        "writer_acked": p.writer_acked,
        "writer_errors": p.writer_errors.len(),
        "tpcb_transactions": p.tpcb.transactions,
        "reads_transactions": p.reads.transactions,
        "cutover_pause_ms": p.cutover_pause_ms.map(|v| json_num(v, 1)),
        "cutover_pause_txn_at_ms": p.cutover_longest_at_ms.map(|(a, b)| json!([json_num(a, 1), json_num(b, 1)])),
        "cutover_server_pause_ms": p.swap.as_ref().map(|e| json_num(e.pause_ms, 1)),
        "cutover_held_max_ms": p.held.as_ref().map(|h| json_num(h.max_ms, 1)),
        "cutover_held_done_after_swap_ms": p.held.as_ref().map(|h| json_num(h.done_after_ms, 1)),
        "writer_cutover_max_ms": p.writer_cutover_max_ms.map(|v| json_num(v, 1)),
        "shift_error_points": shift_error_points.map(|v| json_num(v, 2)),
        "shift_all_steps_measured": all_steps,
        "shift_steps": p.steps.iter().enumerate().map(|(i, s)| match s {
            None => json!({"weight": WEIGHTS[i]}),
            Some(s) => json!({
                "weight": s.weight,
                "window_ms": json_num(s.window.ms(), 0),
                "reads": s.reads,
                "on_target": s.on_target,
                "reads_logged": s.reads_logged,
                "observed_pct": json_num(s.observed_pct(), 2),
                "gap_points": json_num(s.gap_points(), 2),
            }),
        }).collect::<Vec<_>>(),
        "final_dump_bytes": p.final_dump_bytes,
        "source_stopped": p.source_stopped,
    });
    let fault = json!({
        "auto_rollback_ms": f.auto_rollback_ms.map(|v| json_num(v, 2)),
        "target_down_to_source_ms": f.down_to_source_ms().map(|v| json_num(v, 1)),
        "fault_kill_ms": json_num(f.kill.ms(), 1),
        "fault_reason_shown": f.reason_shown(),
        "fault_last_error": f.last_error,
        "fault_reaction": f.reaction,
        "fault_health_before": f.health_before,
        "fault_false_alarms": f.false_alarms,
        "fault_state": f.end.state,
        "fault_failed_transactions": f.failed_transactions(),
        "fault_replays": f.replays,
        "fault_target_connect_errors": f.connect_errors,
        "fault_reads_transactions": f.reads.transactions,
        "fault_reads_on_target_before": f.target_before,
        "fault_lost_writes": f.lost_writes,
        "fault_writer_acked": f.writer_acked,
        "fault_writer_errors": f.writer_errors.len(),
        "rolled_back": rolled_back,
        "ok": ok,
    });
    if let (Some(j), serde_json::Value::Object(f)) = (json.as_object_mut(), fault) {
        j.extend(f);
    }
    Ok(Outcome { json, ok })
}

/// pgbench runs of `CHUNK_S` back to back through pgshift until stopped.
fn load_spec(o: &Opts, select_only: bool, log_prefix: Option<&Path>) -> Spec {
    Spec {
        clients: o.clients,
        threads: 1,
        seconds: CHUNK_S,
        prepared: true,
        select_only,
        progress: None,
        log_prefix: log_prefix.map(Path::to_path_buf),
    }
}

fn start_loop(s: &Session, spec: &Spec) -> PgbenchLoop {
    let args = spec.args();
    s.stack
        .pgbench_loop(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Stop a background load (its current run ends first).
async fn stop_loop(l: PgbenchLoop) -> Result<PgbenchTotals> {
    tokio::task::spawn_blocking(move || l.stop())
        .await
        .map_err(|e| anyhow!("stopping pgbench: {e}"))
}

/// pgbench's failed transactions plus its error lines (a client aborted, could not connect...)
/// other than the two that only follow from those (`Run was aborted`, the run's exit status).
fn load_failures(t: &PgbenchTotals) -> u64 {
    let lines = t
        .errors
        .iter()
        .filter(|l| {
            let consequence = l.contains("Run was aborted")
                || (l.starts_with("pgbench run ") && l.contains(" exited "));
            !consequence
        })
        .count();
    t.failed + lines as u64
}

/// `writer: N acknowledged, E errors, M missing on the SIDE`.
fn writer_text(w: &WriterCheck) -> String {
    format!(
        "writer: {} acknowledged, {} errors, {} missing on the {}",
        w.report.acked.len(),
        w.report.errors.len(),
        w.missing.len(),
        w.serving_side
    )
}

/// The `[http]` table: on a free port (the default 9187 may be taken by another pgshift).
fn http_config(port: u16) -> String {
    format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n")
}

/// `[health]`: checks every 250 ms over 3 s windows (as integration/tests/plan.rs).
const HEALTH_CONFIG: &str =
    "\n[health]\ninterval_ms = 250\nwindow_ms = 3000\nmin_transactions = 20\n";
/// Its `window_ms`.
const HEALTH_WINDOW_MS: u64 = 3000;

/// A session on a new stack with pgbench data of `scale` (a target that pgshift provisions if
/// `provision`), the `upgrade` table plus [`HEALTH_CONFIG`] and the HTTP listener on a free
/// port (returned), pgbench_history's replica identity set and the writer started.
async fn start_session(
    o: &Opts,
    scale: u32,
    provision: bool,
    upgrade: &str,
    what: &str,
) -> Result<(Session, u16)> {
    let http_port = free_port();
    let mut s = Session::start_with(
        StackOptions {
            source_major: o.source_major,
            target_major: o.target_major,
            pgbench_scale: scale,
            provision_target: provision,
            extra_config: format!("{upgrade}{HEALTH_CONFIG}{}", http_config(http_port)),
            ..Default::default()
        },
        what,
    )
    .await?;
    prom::scrape(http_port)
        .await
        .context("pgshift's metrics (the per-side transaction counters)")?;
    say(format!(
        "stack up: {}; pgshift on {}:{}, metrics on port {http_port}",
        s.versions(),
        s.stack.pgshift.host,
        s.stack.pgshift.port
    ));
    s.fix_replica_identity().await?;
    s.start_writer().await?;
    Ok((s, http_port))
}

fn shift_list() -> String {
    SHIFT
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Run 1: the whole plan.

/// One scrape of `/metrics` with the plan step around it.
struct Sample {
    /// The middle of the scrape, µs since the epoch.
    at_us: i64,
    /// `(step, target weight)` when the status polls before and after the scrape agree.
    step: Option<(String, u32)>,
    source: f64,
    target: f64,
}

/// The target's share of the read-only load during one shift step's hold.
struct ShiftStep {
    weight: u32,
    window: Span,
    /// Read-only units of both sides: both counters' growth minus the TPC-B transactions and
    /// writer inserts of the window.
    reads: i64,
    /// Growth of the target's transaction counter over the window.
    on_target: u64,
    /// `-S` transactions completed in the window (pgbench's logs).
    reads_logged: u64,
}

impl ShiftStep {
    fn observed_pct(&self) -> f64 {
        if self.reads <= 0 {
            return 0.0;
        }
        100.0 * self.on_target as f64 / self.reads as f64
    }

    fn gap_points(&self) -> f64 {
        (self.observed_pct() - f64::from(self.weight)).abs()
    }
}

struct PlanRun {
    versions: String,
    done: bool,
    /// Why the watch ended before `done`.
    stop: Option<String>,
    seconds: f64,
    end: Status,
    phases: Vec<String>,
    weights: Vec<u32>,
    steps: Vec<Option<ShiftStep>>,
    swap: Option<pgshift_log::SwapEvent>,
    cutover_pause_ms: Option<f64>,
    /// Start and end of that longest transaction, in ms from the start of the server pause.
    cutover_longest_at_ms: Option<(f64, f64)>,
    held: Option<latency::Held>,
    writer_cutover_max_ms: Option<f64>,
    tpcb: PgbenchTotals,
    reads: PgbenchTotals,
    writer_acked: usize,
    writer_errors: Vec<String>,
    lost_writes: u64,
    final_dump_bytes: Option<u64>,
    source_stopped: bool,
}

impl PlanRun {
    fn failed_transactions(&self) -> u64 {
        load_failures(&self.tpcb) + load_failures(&self.reads) + self.writer_errors.len() as u64
    }
}

/// What watching the plan saw.
struct Watch {
    samples: Vec<Sample>,
    phases: Vec<String>,
    weights: Vec<u32>,
    end: Status,
    done: bool,
    stop: Option<String>,
}

async fn plan_run(o: &Opts) -> Result<PlanRun> {
    say(format!(
        "plan, run 1: PostgreSQL {} -> a {} that pgshift provisions; shift [{}] with holds of {} ms, \
         cutover, detach, decommission; pgbench scale {}, TPC-B and -S (-c {} each, -M prepared) \
         and the id writer through pgshift",
        o.source_major, o.target_major, shift_list(), o.hold_ms, o.scale, o.clients
    ));
    let dumps = WorkDir::create("plan-dump")?;
    let dump = dumps.join("source-final.dump");
    let upgrade = format!(
        "[upgrade]\nshift = [{}]\nshift_hold_ms = {}\ndrain_timeout_ms = 5000\n\
         catchup_timeout_ms = 20000\npoll_interval_ms = 200\ndecommission_source = true\n\
         final_dump = \"{}\"\n",
        shift_list(),
        o.hold_ms,
        dump.display(),
    );
    let (mut s, http_port) = start_session(o, o.scale, true, &upgrade, "plan").await?;
    let (tpcb_prefix, reads_prefix) = (s.work.join("tpcb"), s.work.join("reads"));
    let tpcb = start_loop(&s, &load_spec(o, false, Some(&tpcb_prefix)));
    let reads = start_loop(&s, &load_spec(o, true, Some(&reads_prefix)));

    say("admin> START UPGRADE");
    let started = Instant::now();
    s.console.run("START UPGRADE").await?;
    let w = watch_plan(
        &mut s.console,
        http_port,
        Duration::from_secs(o.plan_timeout),
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    match &w.stop {
        None => say(format!("plan done after {seconds:.1} s: {}", w.end.line())),
        Some(why) => say(format!("plan stopped after {seconds:.1} s: {why}")),
    }
    if w.done {
        hold(
            2,
            "with the application on the target and the source decommissioned",
        )
        .await;
    }
    say("stopping the load (the current pgbench runs end first)");
    let tpcb = stop_loop(tpcb).await?;
    let reads = stop_loop(reads).await?;
    let writer = s.check_writer().await?;
    say(format!(
        "TPC-B: {} transactions, {} failed; -S: {} transactions, {} failed; {}",
        tpcb.transactions,
        load_failures(&tpcb),
        reads.transactions,
        load_failures(&reads),
        writer_text(&writer)
    ));

    let read_logs = |prefix: &Path| {
        pgbench::read_logs(prefix).unwrap_or_else(|e| {
            say(format!("no per-transaction logs: {e:#}"));
            Vec::new()
        })
    };
    let tpcb_txns = read_logs(&tpcb_prefix);
    let reads_txns = read_logs(&reads_prefix);
    let writes: Vec<i64> = writer.report.writes.iter().map(|(end, _)| *end).collect();
    let steps: Vec<Option<ShiftStep>> = WEIGHTS
        .iter()
        .enumerate()
        .map(|(i, &weight)| shift_step(&w.samples, i + 1, weight, &reads_txns, &tpcb_txns, &writes))
        .collect();

    // The cutover: located through pgshift's log, measured on both loads' logs.
    let swap = pgshift_log::swaps(&s.stack.pgshift.log())
        .into_iter()
        .find(|e| e.to == "target");
    let mut all: Vec<Txn> = tpcb_txns;
    all.extend(reads_txns);
    all.sort_by_key(|t| t.end_us);
    let (cutover_pause_ms, cutover_longest_at_ms, held, writer_cutover_max_ms) = match &swap {
        Some(e) => {
            let pause = e.pause_span();
            let around = pause.widened(latency::SWITCH_MARGIN_US);
            let longest = latency::longest_overlapping(&all, around);
            let rel = |us: i64| (us - pause.start_us) as f64 / 1000.0;
            (
                Some(longest.map_or(0.0, |(ms, _)| ms)),
                longest.map(|(_, t)| (rel(t.start_us), rel(t.end_us))),
                latency::held_by(&all, pause),
                writer.report.longest_overlapping_ms(around),
            )
        }
        None => {
            say("no `swapped to target` line in pgshift's log: no cutover pause");
            (None, None, None, None)
        }
    };
    let final_dump_bytes = std::fs::metadata(&dump).map(|m| m.len()).ok();
    let source_stopped = s
        .blocking(|st| Ok(st.source.psql("postgres", "SELECT 1").is_err()))
        .await?;
    Ok(PlanRun {
        versions: s.versions(),
        done: w.done,
        stop: w.stop,
        seconds,
        end: w.end,
        phases: w.phases,
        weights: w.weights,
        steps,
        swap,
        cutover_pause_ms,
        cutover_longest_at_ms,
        held,
        writer_cutover_max_ms,
        tpcb,
        reads,
        writer_acked: writer.report.acked.len(),
        writer_errors: writer.report.errors,
        lost_writes: writer.missing.len() as u64,
        final_dump_bytes,
        source_stopped,
    })
}

/// Poll the status and scrape the metrics every 100 ms until the plan is done, stops (state
/// `error`, `paused`, `alert`) or `timeout` passes.
async fn watch_plan(console: &mut Console, http_port: u16, timeout: Duration) -> Result<Watch> {
    let deadline = Instant::now() + timeout;
    let mut samples = Vec::new();
    let (mut phases, mut weights): (Vec<String>, Vec<u32>) = (vec![], vec![]);
    let mut prev = console.status().await?;
    let mut last_step: Option<String> = None;
    loop {
        let t0 = clock::now_us();
        let m = prom::scrape(http_port).await;
        let t1 = clock::now_us();
        let st = console.status().await?;
        if let Ok(m) = m {
            let same = prev.step == st.step && prev.target_weight == st.target_weight;
            samples.push(Sample {
                at_us: (t0 + t1) / 2,
                step: match (same, &st.step, st.target_weight) {
                    (true, Some(step), Some(w)) => Some((step.clone(), w)),
                    _ => None,
                },
                source: m.transactions("source"),
                target: m.transactions("target"),
            });
        }
        let w = st.target_weight.unwrap_or(0);
        if st.phase != "done" && weights.last() != Some(&w) {
            weights.push(w);
        }
        if phases.last() != Some(&st.phase) {
            say(format!(
                "phase {} ({}), target weight {w}",
                st.phase, st.state
            ));
            phases.push(st.phase.clone());
        }
        if st.step != last_step {
            if let Some(step) = &st.step {
                say(format!("  step {step} (target weight {w})"));
            }
            last_step = st.step.clone();
        }
        let stop = if st.phase == "done" {
            Some(None)
        } else if matches!(st.state.as_str(), "error" | "paused" | "alert") {
            Some(Some(format!(
                "state {} in phase {}: {}",
                st.state,
                st.phase,
                st.last_error.as_deref().unwrap_or("(no message)")
            )))
        } else if Instant::now() > deadline {
            Some(Some(format!("not done within {timeout:?}: {}", st.line())))
        } else {
            None
        };
        if let Some(stop) = stop {
            return Ok(Watch {
                samples,
                phases,
                weights,
                done: stop.is_none() && st.state == "done",
                stop,
                end: st,
            });
        }
        prev = st;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The figures of shift step `n` (1-based, cumulative weight `weight`), from the samples that
/// lie inside its hold; `None` without two of them.
fn shift_step(
    samples: &[Sample],
    n: usize,
    weight: u32,
    reads: &[Txn],
    tpcb: &[Txn],
    writes: &[i64],
) -> Option<ShiftStep> {
    let key = format!("health_check:{n}");
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.step
                .as_ref()
                .is_some_and(|(k, w)| *k == key && *w == weight)
        })
        .collect();
    let (first, last) = (inside.first()?, inside.last()?);
    if last.at_us <= first.at_us {
        return None;
    }
    let window = Span {
        start_us: first.at_us,
        end_us: last.at_us,
    };
    let on_target = (last.target - first.target).max(0.0) as u64;
    let on_source = (last.source - first.source).max(0.0) as i64;
    let written = writes
        .iter()
        .filter(|&&end| end >= window.start_us && end < window.end_us)
        .count();
    Some(ShiftStep {
        weight,
        window,
        reads: on_target as i64 + on_source
            - latency::count_in(tpcb, window) as i64
            - written as i64,
        on_target,
        reads_logged: latency::count_in(reads, window) as u64,
    })
}

// ---------------------------------------------------------------------------------------------
// Run 2: the target stops during the first shift step.

struct FaultRun {
    /// `pg_ctl stop -m immediate` of the target.
    kill: Span,
    /// When the status first showed target weight 0.
    back_at_us: Option<i64>,
    /// From the journaled reaction.
    auto_rollback_ms: Option<f64>,
    /// The history message of the reaction.
    reaction: Option<String>,
    last_error: Option<String>,
    /// Read-only transactions that ran on the target before the stop.
    target_before: u64,
    /// The health verdict just before the stop.
    health_before: Option<String>,
    /// Health reactions before any fault (each followed by RESUME UPGRADE).
    false_alarms: Vec<String>,
    replays: u64,
    connect_errors: u64,
    end: Status,
    reads: PgbenchTotals,
    writer_acked: usize,
    writer_errors: Vec<String>,
    lost_writes: u64,
}

impl FaultRun {
    fn failed_transactions(&self) -> u64 {
        load_failures(&self.reads) + self.writer_errors.len() as u64
    }

    fn down_to_source_ms(&self) -> Option<f64> {
        self.back_at_us
            .map(|t| (t - self.kill.start_us) as f64 / 1000.0)
    }

    fn reason_shown(&self) -> bool {
        self.last_error
            .as_deref()
            .is_some_and(|e| e.contains("health check failed"))
    }
}

async fn fault_run(o: &Opts) -> Result<FaultRun> {
    say(format!(
        "plan, run 2: PostgreSQL {} -> {} (the harness's target), shift [{}] holding 60 s per step; \
         pgbench -S (-c {}, -M prepared) and the id writer; the target is stopped during the first step",
        o.source_major, o.target_major, shift_list(), o.clients
    ));
    let upgrade = format!(
        "[upgrade]\nshift = [{}]\nshift_hold_ms = 60000\npoll_interval_ms = 200\n",
        shift_list()
    );
    let (mut s, http_port) = start_session(o, o.fault_scale, false, &upgrade, "plan-fault").await?;
    let reads = start_loop(&s, &load_spec(o, true, None));

    say("admin> START UPGRADE");
    s.console.run("START UPGRADE").await?;
    // Into the first hold, long enough for a whole health window of checks at weight 25 that
    // pass, with read-only traffic on the target. A health reaction before any fault is a
    // false alarm: recorded, then RESUME UPGRADE.
    let deadline = Instant::now() + Duration::from_secs(o.plan_timeout);
    let settle = Duration::from_millis(HEALTH_WINDOW_MS + 1000);
    let mut false_alarms: Vec<String> = Vec::new();
    let mut in_hold_since: Option<(Instant, f64)> = None;
    let (health_before, target_before) = loop {
        let st = s.console.status().await?;
        let on_target = prom::scrape(http_port).await?.transactions("target");
        let in_hold = st.step.as_deref() == Some("health_check:1")
            && st.target_weight == Some(SHIFT[0])
            && st.state == "running";
        if in_hold {
            let (since, base) = *in_hold_since.get_or_insert_with(|| {
                say(format!("first shift step: {}", st.line()));
                (Instant::now(), on_target)
            });
            if since.elapsed() >= settle
                && on_target - base >= FAULT_MIN_TARGET_TXNS
                && st.health.as_deref().is_some_and(|h| h.starts_with("ok"))
            {
                break (st.health, (on_target - base) as u64);
            }
        } else {
            in_hold_since = None;
        }
        let failed_check = st
            .last_error
            .as_deref()
            .filter(|e| st.state == "paused" && e.contains("health check failed"));
        if let Some(e) = failed_check {
            if false_alarms.len() >= 3 {
                bail!(
                    "{} health reactions before any fault; the last: {e}",
                    false_alarms.len()
                );
            }
            say(format!(
                "false alarm: the plan fell back before any fault: {e}"
            ));
            false_alarms.push(e.to_string());
            say("admin> RESUME UPGRADE");
            s.console.run("RESUME UPGRADE").await?;
        } else if matches!(st.state.as_str(), "error" | "paused" | "alert")
            || Instant::now() > deadline
        {
            bail!("the plan did not settle in its first hold: {}", st.line());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let before = prom::scrape(http_port).await?;
    let reactions_before: Vec<i64> = reactions(&mut s.console)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    say(format!(
        "{target_before} read-only transactions ran on the target in the hold; health {}; \
         stopping the target (pg_ctl stop -m immediate)",
        health_before.as_deref().unwrap_or("-")
    ));

    // Watch for the weight back to 0 from another console, every 10 ms, while the target stops.
    let mut watcher_console = Console::connect(&s.stack.pgshift).await?;
    let watcher = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = watcher_console.status().await?;
            if st.target_weight == Some(0) {
                return Ok::<_, anyhow::Error>((clock::now_us(), st));
            }
            if Instant::now() > deadline {
                bail!(
                    "target weight still not 0 60 s after the stop: {}",
                    st.line()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let stack =
        Arc::get_mut(&mut s.stack).context("the stack is shared: cannot stop its target")?;
    let start_us = clock::now_us();
    tokio::task::block_in_place(|| stack.target.kill());
    let kill = Span {
        start_us,
        end_us: clock::now_us(),
    };
    let (back_at_us, seen) = match watcher.await.map_err(|e| anyhow!("status watcher: {e}"))? {
        Ok((at, st)) => {
            say(format!(
                "target weight 0 {:.1} ms after the stop began: {}",
                (at - kill.start_us) as f64 / 1000.0,
                st.line()
            ));
            (Some(at), Some(st))
        }
        Err(e) => {
            say(format!("no rollback to the source: {e:#}"));
            (None, None)
        }
    };

    // The control plane's own figure, journaled just after the weight was published: the
    // reaction that is not one of the false alarms'.
    let mut reaction = None;
    for _ in 0..50 {
        reaction = reactions(&mut s.console)
            .await?
            .into_iter()
            .find(|(id, _)| !reactions_before.contains(id))
            .map(|(_, m)| m);
        if reaction.is_some() || back_at_us.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let auto_rollback_ms = reaction.as_deref().and_then(published_after_ms);
    let last_error = match seen {
        Some(st) if st.last_error.is_some() => st.last_error,
        _ => s.console.status().await?.last_error,
    };
    hold(3, "with the application on the source after the fault").await;
    let reads = stop_loop(reads).await?;
    let writer = s.check_writer().await?;
    let after = prom::scrape(http_port).await?;
    let end = s.console.status().await?;
    let delta = |name: &str, labels: &str| {
        (after.value(name, labels) - before.value(name, labels)).max(0.0) as u64
    };
    let replays = delta(prom::SHIFT_REPLAYS, "");
    let connect_errors = delta(prom::CONNECT_ERRORS, "side=\"target\"");
    say(format!(
        "-S: {} transactions, {} failed, {replays} replayed on the source; {}",
        reads.transactions,
        load_failures(&reads),
        writer_text(&writer)
    ));
    Ok(FaultRun {
        kill,
        back_at_us,
        auto_rollback_ms,
        reaction,
        last_error,
        target_before,
        health_before,
        false_alarms,
        replays,
        connect_errors,
        end,
        reads,
        writer_acked: writer.report.acked.len(),
        writer_errors: writer.report.errors,
        lost_writes: writer.missing.len() as u64,
    })
}

/// The health reactions of the history (`weight A → B % published X ms after the failing
/// check (...)`): (id, message).
async fn reactions(console: &mut Console) -> Result<Vec<(i64, String)>> {
    let h = console.run("SHOW UPGRADE HISTORY").await?;
    Ok(h.rows
        .iter()
        .filter_map(|r| {
            let id = r.get("id").cloned().flatten()?.parse().ok()?;
            let m = r.get("message").cloned().flatten()?;
            (m.contains("% published") && m.contains("after the failing check")).then_some((id, m))
        })
        .collect())
}

/// `weight 25 → 0 % published 12.34 ms after the failing check (...)` → 12.34.
fn published_after_ms(message: &str) -> Option<f64> {
    let rest = &message[message.find("published ")? + "published ".len()..];
    let n: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    rest[n.len()..]
        .trim_start()
        .starts_with("ms")
        .then(|| n.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_reaction_time() {
        assert_eq!(
            published_after_ms(
                "weight 25 → 0 % published 3.61 ms after the failing check (target unreachable)"
            ),
            Some(3.61)
        );
        assert_eq!(published_after_ms("weight 25 → 50 % published"), None);
    }

    fn sample(at_us: i64, step: Option<(&str, u32)>, source: f64, target: f64) -> Sample {
        Sample {
            at_us,
            step: step.map(|(k, w)| (k.to_string(), w)),
            source,
            target,
        }
    }

    fn txn(end_us: i64) -> Txn {
        Txn {
            client: 0,
            end_us,
            latency_us: Some(100),
        }
    }

    #[test]
    fn shift_share_of_a_window() {
        let samples = vec![
            sample(0, Some(("shift_traffic:1", 25)), 0.0, 0.0),
            sample(1_000, Some(("health_check:1", 25)), 100.0, 10.0),
            sample(2_000, None, 150.0, 20.0),
            sample(3_000, Some(("health_check:1", 25)), 250.0, 35.0),
            sample(4_000, Some(("shift_traffic:2", 50)), 250.0, 60.0),
        ];
        // 100 reads in [1000, 3000), 25 of them on the target; 60 TPC-B and 15 writes on the
        // source.
        let reads: Vec<Txn> = (0..100).map(|i| txn(1_000 + i * 20)).collect();
        let tpcb: Vec<Txn> = (0..60).map(|i| txn(1_000 + i * 30)).collect();
        let writes: Vec<i64> = (0..15).map(|i| 1_000 + i * 100).collect();
        let s = shift_step(&samples, 1, 25, &reads, &tpcb, &writes).unwrap();
        assert_eq!((s.reads, s.on_target, s.reads_logged), (100, 25, 100));
        assert_eq!(s.observed_pct(), 25.0);
        assert_eq!(s.gap_points(), 0.0);
        assert!(shift_step(&samples, 2, 50, &reads, &tpcb, &writes).is_none());
    }
}
