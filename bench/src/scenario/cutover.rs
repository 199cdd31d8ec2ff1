//! `cutover`: the pause that clients see when pgshift cuts over to the new major and rolls
//! back, under pgbench TPC-B-like load and a unique-id writer (the end-to-end test of
//! integration/tests/upgrade.rs, as a measurement).
//!
//! Timeline: the stack (13 → 17, pgbench scale 10), the writer, START UPGRADE with pgbench
//! running in 5 s runs until phase `replicating`; then one pgbench run with per-transaction
//! logs: 11 s on the source, INITIATE CUTOVER, 20 s on the target, ROLLBACK UPGRADE, then
//! what remains of pgbench's `-T` (at least 20 s unless the switches took long).
//!
//! Figures, from the per-transaction logs and the wall-clock span of each admin command:
//! * `tps_before`: transactions completed in the 10 s before the cutover command;
//!   `tps_after`: between the cutover's reply and the rollback command (20 s, on the target).
//! * `cutover_pause_ms` / `rollback_pause_ms`: the longest transaction in progress at any
//!   time within `[command start - 1 s, command end + 1 s]`.
//! * `*_held_*`: the transactions in progress during the server-side pause (located through
//!   the `swapped to` line of pgshift's log): their longest latency, and how long after the
//!   swap the last of them completed (the sessions' move to the other backend).
//! * `failed_transactions`: pgbench's failed transactions plus aborted clients, over every run;
//!   `lost_writes`: acknowledged ids of the writer missing on the serving side at the end.

use anyhow::{bail, Result};
use serde_json::json;
use std::time::Duration;

use super::upgrade::{hold, Session, Switch};
use super::Outcome;
use crate::clock::{self, Span};
use crate::latency::{self, Latencies};
use crate::pgbench::{self, Spec, Txn};
use crate::report::{json_num, num, say, Table};

/// Options of the `cutover` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// pgbench scale of the source's data.
    #[arg(long, default_value_t = 10)]
    pub scale: u32,
    /// pgbench clients (-c).
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// pgbench threads (-j).
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Seconds on the target after the cutover, and again on the source after the rollback.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of synchronised load before the cutover (the window of tps_before).
    #[arg(long, default_value_t = 10)]
    pub hold_before: u64,
    /// Source major.
    #[arg(long, default_value_t = 13)]
    pub source_major: u32,
    /// Target major.
    #[arg(long, default_value_t = 17)]
    pub target_major: u32,
    /// Seconds allowed for the initial copy.
    #[arg(long, default_value_t = 300)]
    pub sync_timeout: u64,
}

/// Seconds of pgbench's run budgeted for the two switch commands themselves.
const SWITCH_ALLOWANCE_S: u64 = 15;

/// Run the scenario.
pub async fn run(o: Opts) -> Result<Outcome> {
    say(format!(
        "cutover: PostgreSQL {} -> {}, pgbench scale {}, -c {} -j {} -M prepared",
        o.source_major, o.target_major, o.scale, o.clients, o.threads
    ));
    let mut s = Session::start(o.source_major, o.target_major, o.scale, "cutover").await?;
    say(format!(
        "stack up: {}; pgshift on {}:{}",
        s.versions(),
        s.stack.pgshift.host,
        s.stack.pgshift.port
    ));
    s.start_writer().await?;
    let load = Spec::tpcb(o.clients, o.threads, 5);
    let sync = s
        .start_upgrade_under_load(&load, false, Duration::from_secs(o.sync_timeout))
        .await?;

    // One pgbench run from here to the end, logging every transaction.
    let prefix = s.work.join("pgbench");
    let main_spec = Spec {
        seconds: 1 + o.hold_before + 2 * o.duration + SWITCH_ALLOWANCE_S,
        progress: Some(5),
        log_prefix: Some(prefix.clone()),
        ..load.clone()
    };
    say(format!(
        "pgbench -T {} with per-transaction logs in {}",
        main_spec.seconds,
        s.work.path.display()
    ));
    let mut bench = pgbench::spawn(&s.endpoint, &main_spec, true)?;
    hold(1 + o.hold_before, "on the source (tps_before)").await;

    let cut = s.switch("INITIATE CUTOVER").await?;
    let version_after_cut = s.app_server_version().await?;
    say(format!(
        "the application now talks to PostgreSQL {version_after_cut}"
    ));
    hold(o.duration, "on the target").await;
    if bench.has_exited() {
        bail!("pgbench ended before the rollback; raise its budget");
    }
    let rollback = s.switch("ROLLBACK UPGRADE").await?;
    let version_after_rollback = s.app_server_version().await?;
    say(format!(
        "the application talks to PostgreSQL {version_after_rollback} again"
    ));
    let left = bench.seconds_left();
    if left < o.duration as f64 {
        say(format!(
            "note: only {left:.1} s of pgbench remain after the rollback (wanted {} s)",
            o.duration
        ));
    }
    say(format!("waiting for pgbench to end ({left:.0} s)"));
    let started_us = bench.started_us;
    let out = bench.finish().await?;
    let writer = s.check_writer().await?;

    let txns = pgbench::read_logs(&prefix)?;
    let m = Measures::compute(&txns, started_us, &cut, &rollback)?;
    // Transactions held by each server-side pause, located through pgshift's log.
    let held = |sw: &Switch| {
        s.swap_of(sw)
            .and_then(|e| latency::held_by(&txns, e.pause_span()))
    };
    let (cut_held, rb_held) = (held(&cut), held(&rollback));
    let failed_transactions = out.summary.failures() + sync.load.failures;
    let lost_writes = writer.missing.len() as u64;
    let writer_errors = writer.report.errors.len() as u64;

    let mut t = Table::new(&["figure", "value"]);
    let mut add = |k: &str, v: String| t.row(vec![k.to_string(), v]);
    add("versions", s.versions());
    add("synchronised after (s)", num(sync.seconds, 1));
    add("tps before cutover (source)", num(m.tps_before, 1));
    add("tps after cutover (target)", num(m.tps_after, 1));
    add("tps after rollback (source)", num(m.tps_after_rollback, 1));
    add("cutover: client pause (ms)", num(m.cutover_pause_ms, 1));
    add(
        "cutover: server pause (ms)",
        cut.server_pause_ms.map_or("-".into(), |v| num(v, 1)),
    );
    add("cutover: command (ms)", num(cut.reply.span.ms(), 1));
    add(
        "cutover: longest txn, from command start",
        Offsets::text(&m.cutover_longest),
    );
    add(
        "cutover: held txns, max / done after swap (ms)",
        held_text(&cut_held),
    );
    add("rollback: client pause (ms)", num(m.rollback_pause_ms, 1));
    add(
        "rollback: server pause (ms)",
        rollback.server_pause_ms.map_or("-".into(), |v| num(v, 1)),
    );
    add("rollback: command (ms)", num(rollback.reply.span.ms(), 1));
    add(
        "rollback: longest txn, from command start",
        Offsets::text(&m.rollback_longest),
    );
    add(
        "rollback: held txns, max / done after swap (ms)",
        held_text(&rb_held),
    );
    add(
        "latency p50 / p99 / max (ms)",
        format!(
            "{} / {} / {}",
            num(m.all.quantile_ms(0.5), 2),
            num(m.all.quantile_ms(0.99), 2),
            num(m.all.max_ms(), 1)
        ),
    );
    add("transactions (logged)", m.all.count().to_string());
    add("failed transactions", failed_transactions.to_string());
    add(
        "writer: acknowledged / errors",
        format!("{} / {writer_errors}", writer.report.acked.len()),
    );
    add(
        "lost writes",
        format!("{lost_writes} (serving side: {})", writer.serving_side),
    );
    print!("{}", t.render());
    println!("cutover reply:  {}", cut.reply.message());
    println!("rollback reply: {}", rollback.reply.message());
    if failed_transactions > 0 {
        println!(
            "pgbench output:\n{}\n{}",
            out.stdout.trim(),
            out.stderr.trim()
        );
    }
    for e in writer.report.errors.iter().take(10) {
        println!("writer error: {e}");
    }

    let json = json!({
        "scenario": "cutover",
        "source_major": o.source_major,
        "target_major": o.target_major,
        "source_version": s.stack.source.binaries.version,
        "target_version": s.stack.target.binaries.version,
        "scale": o.scale,
        "clients": o.clients,
        "sync_seconds": json_num(sync.seconds, 1),
        "tps_before": json_num(m.tps_before, 1),
        "tps_after": json_num(m.tps_after, 1),
        "tps_after_rollback": json_num(m.tps_after_rollback, 1),
        "failed_transactions": failed_transactions,
        "lost_writes": lost_writes,
        "writer_acked": writer.report.acked.len(),
        "writer_errors": writer_errors,
        "cutover_pause_ms": json_num(m.cutover_pause_ms, 1),
        "rollback_pause_ms": json_num(m.rollback_pause_ms, 1),
        "server_pause_ms": cut.server_pause_ms,
        "server_pause_split": cut.server_split,
        "rollback_server_pause_ms": rollback.server_pause_ms,
        "rollback_server_pause_split": rollback.server_split,
        "cutover_command_ms": json_num(cut.reply.span.ms(), 1),
        "rollback_command_ms": json_num(rollback.reply.span.ms(), 1),
        "writer_cutover_max_ms": writer.report.longest_overlapping_ms(cut.reply.span.widened(latency::SWITCH_MARGIN_US)).map(|v| json_num(v, 1)),
        "writer_rollback_max_ms": writer.report.longest_overlapping_ms(rollback.reply.span.widened(latency::SWITCH_MARGIN_US)).map(|v| json_num(v, 1)),
        "cutover_pause_txn_at_ms": Offsets::json(&m.cutover_longest),
        "rollback_pause_txn_at_ms": Offsets::json(&m.rollback_longest),
        "cutover_held_max_ms": cut_held.as_ref().map(|h| json_num(h.max_ms, 1)),
        "cutover_held_done_after_swap_ms": cut_held.as_ref().map(|h| json_num(h.done_after_ms, 1)),
        "rollback_held_max_ms": rb_held.as_ref().map(|h| json_num(h.max_ms, 1)),
        "rollback_held_done_after_swap_ms": rb_held.as_ref().map(|h| json_num(h.done_after_ms, 1)),
        "p50_ms": json_num(m.all.quantile_ms(0.5), 2),
        "p99_ms": json_num(m.all.quantile_ms(0.99), 2),
        "max_ms": json_num(m.all.max_ms(), 1),
        "transactions": m.all.count(),
        "version_after_cutover": version_after_cut,
        "version_after_rollback": version_after_rollback,
    });
    Ok(Outcome {
        json,
        ok: failed_transactions == 0 && lost_writes == 0 && writer_errors == 0,
    })
}

/// `max / done-after` of the transactions a pause held, or `-`.
fn held_text(h: &Option<latency::Held>) -> String {
    h.as_ref().map_or("-".into(), |h| {
        format!(
            "{} txns: {} / {}",
            h.count,
            num(h.max_ms, 1),
            num(h.done_after_ms, 1)
        )
    })
}

/// The figures computed from the per-transaction logs.
struct Measures {
    tps_before: f64,
    tps_after: f64,
    tps_after_rollback: f64,
    cutover_pause_ms: f64,
    rollback_pause_ms: f64,
    /// The longest transaction around each switch, relative to the command's start.
    cutover_longest: Option<Offsets>,
    rollback_longest: Option<Offsets>,
    all: Latencies,
}

/// Where a transaction ran, in milliseconds relative to a switch command's start.
struct Offsets {
    start_ms: f64,
    end_ms: f64,
}

impl Offsets {
    fn of(txns: &[Txn], command: Span) -> Option<Offsets> {
        let (_, t) =
            latency::longest_overlapping(txns, command.widened(latency::SWITCH_MARGIN_US))?;
        Some(Offsets {
            start_ms: (t.start_us - command.start_us) as f64 / 1000.0,
            end_ms: (t.end_us - command.start_us) as f64 / 1000.0,
        })
    }

    fn text(o: &Option<Offsets>) -> String {
        o.as_ref().map_or("-".into(), |o| {
            format!("{:+.0} .. {:+.0} ms", o.start_ms, o.end_ms)
        })
    }

    fn json(o: &Option<Offsets>) -> serde_json::Value {
        o.as_ref().map_or(serde_json::Value::Null, |o| {
            json!([json_num(o.start_ms, 1), json_num(o.end_ms, 1)])
        })
    }
}

impl Measures {
    fn compute(txns: &[Txn], started_us: i64, cut: &Switch, rollback: &Switch) -> Result<Measures> {
        let cut_span = cut.reply.span;
        let rb_span = rollback.reply.span;
        let last_end = txns.last().map_or(clock::now_us(), |t| t.end_us);
        // The hold before the cutover: its last 10 s, or what there is after pgbench's first second.
        let before = Span {
            start_us: (cut_span.start_us - 10_000_000).max(started_us + 1_000_000),
            end_us: cut_span.start_us,
        };
        Ok(Measures {
            tps_before: latency::tps_in(txns, before),
            tps_after: latency::tps_in(
                txns,
                Span {
                    start_us: cut_span.end_us,
                    end_us: rb_span.start_us,
                },
            ),
            tps_after_rollback: latency::tps_in(
                txns,
                Span {
                    start_us: rb_span.end_us,
                    end_us: last_end,
                },
            ),
            cutover_pause_ms: latency::switch_pause_ms(txns, cut_span),
            rollback_pause_ms: latency::switch_pause_ms(txns, rb_span),
            cutover_longest: Offsets::of(txns, cut_span),
            rollback_longest: Offsets::of(txns, rb_span),
            all: Latencies::of(txns)?,
        })
    }
}
