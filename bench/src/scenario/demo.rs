//! `demo`: the main job end to end, narrated for an operator. PostgreSQL 13 with pgbench data,
//! an empty 17, pgbench through pgshift all along; START UPGRADE (preflight, replica identity),
//! synchronisation, INITIATE CUTOVER, some time on 17, ROLLBACK UPGRADE, some time on 13,
//! INITIATE CUTOVER again: the application ends on 17 without a failed transaction.

use anyhow::{anyhow, Result};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

use super::upgrade::{hold, Session, Switch};
use super::Outcome;
use crate::console::{self, Console};
use crate::latency;
use crate::pgbench::{self, Spec, Txn};
use crate::report::{json_num, num, say, Table};
use crate::scene;

/// Options of the `demo` scenario.
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
    /// Seconds on 17 after the first cutover.
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// Seconds back on 13 after the rollback.
    #[arg(long, default_value_t = 10)]
    pub hold_after_rollback: u64,
    /// Seconds of load on 17 after the final cutover (at least).
    #[arg(long, default_value_t = 10)]
    pub final_hold: u64,
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

/// Seconds of pgbench's run budgeted for the three switch commands themselves.
const SWITCH_ALLOWANCE_S: u64 = 10;

/// Run the demo.
pub async fn run(o: Opts) -> Result<Outcome> {
    say(format!(
        "pgshift demo: a live major upgrade PostgreSQL {} -> {} under pgbench load\n\
         plan: start both servers and pgshift; load through pgshift; START UPGRADE; wait until\n\
         the target is synchronised; INITIATE CUTOVER; {} s on {}; ROLLBACK UPGRADE; {} s on {};\n\
         INITIATE CUTOVER again (final state: on {}). Status every second, pgbench progress every 5 s.",
        o.source_major,
        o.target_major,
        o.duration,
        o.target_major,
        o.hold_after_rollback,
        o.source_major,
        o.target_major
    ));
    say(format!(
        "starting PostgreSQL {} (source, pgbench scale {}) and {} (target, empty), then pgshift",
        o.source_major, o.scale, o.target_major
    ));
    let mut s = Session::start(o.source_major, o.target_major, o.scale, "demo").await?;
    let psql = console::psql_command(&s.stack.pgshift);
    say(format!(
        "up: {}; applications connect to pgshift at {}:{} (database app)\n\
         watch the admin console yourself while this runs:\n    {psql}\n\
         then: SHOW UPGRADE STATUS; SHOW CLIENTS; SHOW SERVERS;\n\
         pgshift log: {}",
        s.versions(),
        s.stack.pgshift.host,
        s.stack.pgshift.port,
        s.stack.pgshift.log_path().display()
    ));
    let ticker = StatusTicker::start(&s.stack.pgshift).await?;
    s.start_writer().await?;
    say("a writer inserts unique ids through pgshift and remembers each acknowledged one");
    let load = Spec::tpcb(o.clients, o.threads, 5);
    say(format!(
        "load: pgbench -c {} -j {} -M prepared through pgshift (5 s runs during the copy)",
        o.clients, o.threads
    ));
    let sync = s
        .start_upgrade_under_load(&load, true, Duration::from_secs(o.sync_timeout))
        .await?;

    let prefix = s.work.join("pgbench");
    let spec = Spec {
        seconds: 2 + o.duration + o.hold_after_rollback + o.final_hold + SWITCH_ALLOWANCE_S,
        progress: Some(5),
        log_prefix: Some(prefix.clone()),
        ..load
    };
    say(format!(
        "load: one pgbench -T {} from here to the end, progress every 5 s",
        spec.seconds
    ));
    let bench = pgbench::spawn(&s.endpoint, &spec, true)?;
    hold(2, &format!("on {} with the target in sync", o.source_major)).await;

    let mut switches = Vec::new();
    switches.push(switch_and_show(&mut s, "INITIATE CUTOVER").await?);
    hold(o.duration, &format!("on {}", o.target_major)).await;
    switches.push(switch_and_show(&mut s, "ROLLBACK UPGRADE").await?);
    hold(
        o.hold_after_rollback,
        &format!(
            "back on {} (17 keeps receiving every change)",
            o.source_major
        ),
    )
    .await;
    switches.push(switch_and_show(&mut s, "INITIATE CUTOVER").await?);
    say(format!(
        "final state: on {}; pgbench runs {:.0} s more",
        o.target_major,
        bench.seconds_left().max(0.0)
    ));
    let out = bench.finish().await?;
    ticker.stop().await?;
    let writer = s.check_writer().await?;
    let final_status = s.console.status().await?;
    let final_version = s.app_server_version().await?;
    let txns = pgbench::read_logs(&prefix)?;
    let kept_log = scene::keep_copy(
        &s.stack.pgshift.log_path(),
        &format!("demo-{}-pgshift.log", scene::stamp()),
    )?;

    let failed = out.summary.failures() + sync.load.failures;
    let lost = writer.missing.len() as u64;
    println!("=== pgbench through pgshift, from synchronised to the end ===");
    println!("{}", out.stdout.trim());
    println!(
        "(during the initial copy: {} pgbench runs, {} transactions, {} failed)",
        sync.load.runs, sync.load.transactions, sync.load.failures
    );
    println!();
    println!("=== switches ===");
    println!(
        "client pause: longest pgbench transaction within 1 s of the command; held: the ones in\n\
         progress during the server-side pause (max latency; last one done this long after the swap)"
    );
    let held: Vec<Option<latency::Held>> = switches
        .iter()
        .map(|sw| {
            s.swap_of(sw)
                .and_then(|e| latency::held_by(&txns, e.pause_span()))
        })
        .collect();
    print!("{}", switch_table(&switches, &held, &txns).render());
    println!();
    println!("=== result ===");
    println!("failed transactions: {failed}");
    println!(
        "writer: {} acknowledged inserts, {} errors, {lost} missing on the {} side",
        writer.report.acked.len(),
        writer.report.errors.len(),
        writer.serving_side
    );
    println!(
        "now serving: {} (PostgreSQL {final_version}); {}",
        writer.serving_side,
        final_status.line()
    );
    println!(
        "pgshift log: {} (removed when the demo stops; copy kept at {})",
        s.stack.pgshift.log_path().display(),
        kept_log.display()
    );
    println!("admin console while the demo runs: {psql}");
    say("stopping pgshift and both servers");

    let pauses: Vec<_> = switches
        .iter()
        .zip(&held)
        .map(|(sw, h)| {
            json!({
                "command": sw.command,
                "client_pause_ms": json_num(latency::switch_pause_ms(&txns, sw.reply.span), 1),
                "held_max_ms": h.as_ref().map(|h| json_num(h.max_ms, 1)),
                "held_done_after_swap_ms": h.as_ref().map(|h| json_num(h.done_after_ms, 1)),
                "server_pause_ms": sw.server_pause_ms,
                "command_ms": json_num(sw.reply.span.ms(), 1),
            })
        })
        .collect();
    let json = json!({
        "scenario": "demo",
        "source_version": s.stack.source.binaries.version,
        "target_version": s.stack.target.binaries.version,
        "sync_seconds": json_num(sync.seconds, 1),
        "tps": json_num(out.summary.tps, 1),
        "failed_transactions": failed,
        "lost_writes": lost,
        "writer_acked": writer.report.acked.len(),
        "writer_errors": writer.report.errors.len(),
        "switches": pauses,
        "final_side": writer.serving_side,
        "final_version": final_version,
        "pgshift_log": kept_log.display().to_string(),
    });
    Ok(Outcome {
        json,
        ok: failed == 0 && lost == 0 && writer.report.errors.is_empty(),
    })
}

/// A switch, then which major the application talks to.
async fn switch_and_show(s: &mut Session, command: &str) -> Result<Switch> {
    let sw = s.switch(command).await?;
    let v = s.app_server_version().await?;
    say(format!("the application now talks to PostgreSQL {v}"));
    Ok(sw)
}

/// Per switch: the command's duration, the longest transaction around it, the transactions its
/// pause held (the longest, and when the last of them completed after the swap), and the
/// server's own account of the pause.
fn switch_table(switches: &[Switch], held: &[Option<latency::Held>], txns: &[Txn]) -> Table {
    let mut t = Table::new(&[
        "command",
        "command ms",
        "client pause ms",
        "held max ms",
        "held done ms",
        "server pause ms",
        "server pause split",
    ]);
    for (sw, held) in switches.iter().zip(held) {
        t.row(vec![
            sw.command.clone(),
            num(sw.reply.span.ms(), 0),
            num(latency::switch_pause_ms(txns, sw.reply.span), 1),
            held.as_ref().map_or("-".into(), |h| num(h.max_ms, 1)),
            held.as_ref()
                .map_or("-".into(), |h| num(h.done_after_ms, 1)),
            sw.server_pause_ms.map_or("-".into(), |v| num(v, 1)),
            sw.server_split.clone().unwrap_or_default(),
        ]);
    }
    t
}

/// Prints `SHOW UPGRADE STATUS` every second on its own console connection.
struct StatusTicker {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<()>>,
}

impl StatusTicker {
    async fn start(p: &integration::Pgshift) -> Result<StatusTicker> {
        let mut c = Console::connect(p).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                say(format!("status  {}", c.status().await?.line()));
            }
            Ok(())
        });
        Ok(StatusTicker { stop, handle })
    }

    async fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .await
            .map_err(|e| anyhow!("status ticker: {e}"))?
    }
}
