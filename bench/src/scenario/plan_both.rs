//! `plan --driver bidirectional|pgactive`: the unattended plan with a driver that replicates
//! both ways, so that whole sessions (writes included) move by weight. Two runs, each on a
//! stack of its own.
//!
//! **Run 1, the whole plan.** `bidirectional`: PostgreSQL 16 → 17 started by the harness
//! (the schema made on both: the harness's `pg_dump` 15 cannot dump a 16); `pgactive`:
//! 15 → 15 from `PGSHIFT_PGACTIVE_BINDIR`, the target provisioned by pgshift (ConfigureParams
//! sets pgactive's settings and restarts it). `[upgrade] shift = [25, 25, 50]` with
//! `--hold-ms` per step, cutover, DetachOld; `halt_on_conflict = false` (pgbench's random
//! account updates from sessions on both servers conflict now and then, by the nature of
//! active-active: counted, not halted). Load through pgshift all along: pgbench `-N`
//! (simple update: no updates of the shared branch and teller rows) `-c --clients` in 8 s
//! runs, the unique-id writer, one "pinger" session inserting a row of `items` (a
//! `bigserial`, drawn on whichever server the session is on) back to back, and
//! `--sessions` (default 1,000) probe sessions that each insert one row per round (both
//! servers get `max_connections` of that plus 100).
//! * `failed_transactions`: pgbench's failed transactions plus its error lines, the writer's
//!   and the pinger's errors. `lost_writes`: acknowledged writer ids missing on the target.
//! * `duplicate_ids`: ids of `items` handed out twice (over every acknowledged insert of
//!   the pinger and the probes, plus `count(*) - count(DISTINCT id)` on the target).
//! * `shift_error_points` (sessions): in each step's hold one round over the probe
//!   sessions; the share that ran on the target against the weight, largest gap in points.
//! * `cutover_pause_ms`: the pinger's longest insert within 1 s of the cutover (client
//!   side); `cutover_server_pause_ms` from the journal's swap entry;
//!   `ping_max_elsewhere_ms`, the pinger's longest insert in the rest of the plan, for scale.
//! * `conflicts`: conflicts or apply errors the health probes counted during the plan.
//!
//! **Run 2, a conflict.** A new stack, `approve_cutover = true`, weight 25, the same key
//! inserted on both servers at once: `conflict_halt_ms` from the writes to the status
//! showing the plan paused with weight 0, `conflict_reason` its `last_error`.
//!
//! `ok`: no failed transaction, lost write or duplicate id, the plan reached `done`, every
//! step measured within 5 points, and the conflict halted the shift.

use anyhow::{bail, Context, Result};
use integration::load::{missing_ids, Writer};
use integration::stack::{db_error, field};
use integration::{PgBinaries, Stack, StackOptions};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::plan::Opts;
use super::Outcome;
use crate::report::{json_num, num, say, Table};

/// Probe sessions that insert at once in a round.
const PROBE_BATCH: usize = 100;

/// The configured shift steps and their cumulative weights.
const SHIFT: [u32; 3] = [25, 25, 50];
const WEIGHTS: [u32; 3] = [25, 50, 100];

/// Which both-ways driver, with the servers it runs on.
#[derive(Clone)]
enum Both {
    Bidirectional { source: u32, target: u32 },
    Pgactive(PgBinaries),
}

impl Both {
    fn name(&self) -> &'static str {
        match self {
            Both::Bidirectional { .. } => "bidirectional",
            Both::Pgactive(_) => "pgactive",
        }
    }
}

/// Run the scenario for `driver` (`bidirectional` or `pgactive`).
pub async fn run(o: Opts, driver: &str) -> Result<Outcome> {
    let both = match driver {
        "bidirectional" => Both::Bidirectional {
            source: if o.source_major < 16 { 16 } else { o.source_major },
            target: o.target_major.max(16),
        },
        "pgactive" => match integration::pgactive_binaries()? {
            Some(b) => Both::Pgactive(b),
            None => bail!(
                "bench plan --driver pgactive needs {} (a PostgreSQL bindir whose server has the pgactive extension; see the README)",
                integration::PGACTIVE_BINDIR_ENV
            ),
        },
        other => bail!("--driver {other}: one of logical, bidirectional, pgactive"),
    };
    let p = plan_run(&o, &both).await?;
    let c = conflict_run(&both).await?;

    let gaps: Vec<f64> = p
        .steps
        .iter()
        .map(|(w, on, n)| (*on as f64 * 100.0 / (*n).max(1) as f64 - *w as f64).abs())
        .collect();
    let shift_error_points = gaps
        .iter()
        .cloned()
        .fold(None, |m: Option<f64>, g| Some(m.map_or(g, |m| m.max(g))));
    let failed = p.failed();
    let ok = failed == 0
        && p.lost_writes == 0
        && p.duplicate_ids == 0
        && p.done
        && p.steps.len() >= WEIGHTS.len()
        && shift_error_points.is_some_and(|g| g <= 5.0)
        && c.halt_ms.is_some();

    let mut t = Table::new(&["figure", "value"]);
    let mut add = |k: &str, v: String| t.row(vec![k.to_string(), v]);
    let opt = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| num(v, d));
    add("driver", both.name().into());
    add("plan: versions", p.versions.clone());
    add(
        "plan: end",
        format!("{} after {} s", p.end, num(p.seconds, 1)),
    );
    for (w, on, n) in &p.steps {
        add(
            &format!("shift {w}: sessions on the target"),
            format!(
                "{on} of {n} ({} %)",
                num(*on as f64 * 100.0 / (*n).max(1) as f64, 1)
            ),
        );
    }
    add("shift error (points)", opt(shift_error_points, 2));
    add("cutover: client pause (ms)", opt(p.cutover_pause_ms, 1));
    add(
        "pinger: longest insert outside the cutover (ms)",
        opt(p.ping_max_elsewhere_ms, 1),
    );
    add("cutover: server pause (ms)", opt(p.server_pause_ms, 1));
    add("pgbench -N transactions", p.tpcn.to_string());
    add("failed transactions", failed.to_string());
    add(
        "writer: acknowledged / lost",
        format!("{} / {}", p.writer_acked, p.lost_writes),
    );
    add(
        "items inserts (pinger + probes) / duplicate ids",
        format!("{} / {}", p.inserts, p.duplicate_ids),
    );
    add("conflicts counted during the plan", p.conflicts.to_string());
    add("conflict: halted after (ms)", opt(c.halt_ms, 0));
    print!("{}", t.render());
    for e in p.errors.iter().take(10) {
        println!("error: {e}");
    }
    if let Some(r) = &c.reason {
        println!("conflict reason: {r}");
    }
    let json = json!({
        "scenario": "plan",
        "driver": both.name(),
        "versions": p.versions,
        "scale": o.scale,
        "clients": o.clients,
        "sessions": p.steps.first().map(|s| s.2),
        "shift": SHIFT,
        "shift_hold_ms": o.hold_ms,
        "plan_done": p.done,
        "plan_end": p.end,
        "plan_seconds": json_num(p.seconds, 1),
        "failed_transactions": failed,
        "lost_writes": p.lost_writes,
        "duplicate_ids": p.duplicate_ids,
        "writer_acked": p.writer_acked,
        "items_inserts": p.inserts,
        "tpcn_transactions": p.tpcn,
        "shift_error_points": shift_error_points.map(|v| json_num(v, 2)),
        "shift_steps": p.steps.iter().map(|(w, on, n)| json!({"weight": w, "on_target": on, "sessions": n})).collect::<Vec<_>>(),
        "cutover_pause_ms": p.cutover_pause_ms.map(|v| json_num(v, 1)),
        "ping_max_elsewhere_ms": p.ping_max_elsewhere_ms.map(|v| json_num(v, 1)),
        "cutover_server_pause_ms": p.server_pause_ms.map(|v| json_num(v, 1)),
        "conflicts": p.conflicts,
        "conflict_halt_ms": c.halt_ms.map(|v| json_num(v, 0)),
        "conflict_reason": c.reason,
        "ok": ok,
    });
    Ok(Outcome { json, ok })
}

/// The stack options and the `[replication]` lines of `both`.
fn stack_opts(both: &Both, scale: u32, sessions: usize, extra: &str) -> Result<StackOptions> {
    // Each probe session may hold a connection on both servers while it moves.
    let conns = vec![("max_connections".to_string(), (sessions + 100).to_string())];
    let gap = 10_000_000_000i64;
    let base = |replication: &str| {
        format!(
            "[replication]\n{replication}sequence_gap = {gap}\nhalt_on_conflict = false\n\n\
             [upgrade]\ndrain_timeout_ms = 5000\ncatchup_timeout_ms = 20000\npoll_interval_ms = 100\nbackoff_initial_ms = 200\ndatabases = [\"app\"]\n{extra}\n\n\
             [health]\ninterval_ms = 250\nmax_p99_ratio = 100.0\n"
        )
    };
    Ok(match both {
        Both::Bidirectional { source, target } => StackOptions {
            source_major: *source,
            target_major: *target,
            pgbench_scale: scale,
            extra_config: base("driver = \"bidirectional\"\ncopy_schema = false\n"),
            source_settings: conns.clone(),
            target_settings: conns,
            ..Default::default()
        },
        Both::Pgactive(b) => StackOptions {
            source_major: b.major,
            target_major: b.major,
            pgbench_scale: scale,
            provision_target: true,
            binaries: Some(b.clone()),
            source_settings: integration::pgactive_settings(b)?
                .into_iter()
                .chain(conns.clone())
                .collect(),
            target_settings: conns,
            extra_config: base("driver = \"pgactive\"\n"),
            ..Default::default()
        },
    })
}

/// The schema the runs use: pgbench_history with a key (pgactive updates only keyed rows),
/// the writer's table, `items` and `kv`; on both servers for `bidirectional`.
fn prepare(stack: &Stack, both: &Both) -> Result<()> {
    let sql = format!(
        "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY; {}; \
         CREATE TABLE items (id bigserial PRIMARY KEY, side text); ALTER TABLE items OWNER TO app; \
         CREATE TABLE kv (k int PRIMARY KEY, v text); ALTER TABLE kv OWNER TO app",
        integration::stack::ACKED_TABLE_SQL
    );
    stack.source.psql("app", &sql).context("source schema")?;
    if let Both::Bidirectional { .. } = both {
        let out = integration::pgbench(&["-i", "-q", "-I", "dtp"])
            .args([
                "-h",
                &stack.target.host,
                "-p",
                &stack.target.port.to_string(),
                "-U",
                "app",
                "app",
            ])
            .env("PGPASSWORD", integration::stack::APP_PASSWORD)
            .output()
            .context("pgbench -i on the target")?;
        if !out.status.success() {
            bail!(
                "pgbench -i -I dtp on the target: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        stack.target.psql("app", &sql).context("target schema")?;
    }
    Ok(())
}

async fn start_stack(opts: StackOptions, both: &Both) -> Result<Arc<Stack>> {
    let both = both.clone();
    let stack = tokio::task::spawn_blocking(move || -> Result<Stack> {
        let s = Stack::start(opts)?;
        prepare(&s, &both)?;
        Ok(s)
    })
    .await??;
    Ok(Arc::new(stack))
}

/// What run 1 measured.
struct PlanRun {
    versions: String,
    done: bool,
    end: String,
    seconds: f64,
    /// (weight, sessions on the target, sessions) per step.
    steps: Vec<(u32, usize, usize)>,
    cutover_pause_ms: Option<f64>,
    /// The pinger's longest insert outside the cutover's window, in ms.
    ping_max_elsewhere_ms: Option<f64>,
    server_pause_ms: Option<f64>,
    tpcn: u64,
    pgbench_failed: u64,
    errors: Vec<String>,
    writer_acked: usize,
    lost_writes: usize,
    inserts: usize,
    duplicate_ids: usize,
    conflicts: u64,
}

impl PlanRun {
    fn failed(&self) -> u64 {
        self.pgbench_failed + self.errors.len() as u64
    }
}

/// One insert into `items` through `c`: (id, the server's port).
async fn insert_item(c: &tokio_postgres::Client) -> Result<(i64, i32), String> {
    c.query_one(
        "INSERT INTO items (side) VALUES (inet_server_port()::text) RETURNING id, inet_server_port()",
        &[],
    )
    .await
    .map(|r| (r.get(0), r.get(1)))
    .map_err(|e| db_error(&e))
}

/// One insert by every probe session, [`PROBE_BATCH`] at a time (so that a round of 1,000,
/// a quarter or more of them moving and opening a connection on the other server, fits in
/// a hold); returns how many ran on the server at `tgt_port`, the ids going to `ids` and
/// the errors to `errors`.
async fn probe_round(
    probes: &[Arc<tokio_postgres::Client>],
    tgt_port: i32,
    ids: &mut Vec<i64>,
    errors: &mut Vec<String>,
) -> usize {
    let mut on = 0;
    for chunk in probes.chunks(PROBE_BATCH) {
        let mut set = tokio::task::JoinSet::new();
        for c in chunk {
            let c = c.clone();
            set.spawn(async move { insert_item(&c).await });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok((id, port))) => {
                    ids.push(id);
                    on += usize::from(port == tgt_port);
                }
                Ok(Err(e)) => errors.push(format!("probe session: {e}")),
                Err(e) => errors.push(format!("probe task: {e}")),
            }
        }
    }
    on
}

async fn plan_run(o: &Opts, both: &Both) -> Result<PlanRun> {
    say(format!(
        "run 1: the whole plan with the {} driver",
        both.name()
    ));
    let stack = start_stack(
        stack_opts(
            both,
            o.scale,
            o.sessions,
            &format!("shift = [25, 25, 50]\nshift_hold_ms = {}", o.hold_ms),
        )?,
        both,
    )
    .await?;
    let versions = format!(
        "PostgreSQL {} → {}",
        stack.source.binaries.version, stack.target.binaries.version
    );
    say(format!("stack up: {versions}"));
    let tgt_port = stack.target.port as i32;
    let mut probes = Vec::with_capacity(o.sessions);
    for _ in 0..o.sessions {
        probes.push(Arc::new(stack.app_client().await?));
    }
    let writer = Writer::start(stack.app_conninfo(), "acked", Duration::from_millis(2));
    let clients = o.clients.to_string();
    let load = stack.pgbench_loop(&["-T", "8", "-c", &clients, "-n", "-N"]);
    // The pinger: inserts back to back, each with its completion time and latency.
    let stop = Arc::new(AtomicBool::new(false));
    let pings: Arc<Mutex<Vec<(Instant, f64, i64)>>> = Arc::default();
    let pinger = {
        let (stop, pings) = (stop.clone(), pings.clone());
        let c = stack.app_client().await?;
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match insert_item(&c).await {
                    Ok((id, _)) => pings.lock().unwrap_or_else(|e| e.into_inner()).push((
                        Instant::now(),
                        t.elapsed().as_secs_f64() * 1000.0,
                        id,
                    )),
                    Err(e) => errors.push(format!("pinger: {e}")),
                }
            }
            errors
        })
    };

    let mut steps = Vec::new();
    let mut probe_ids = Vec::new();
    let mut errors = Vec::new();
    // The probes are sessions of the application before the upgrade: one unit each, on
    // the source.
    let warm = probe_round(&probes, tgt_port, &mut probe_ids, &mut errors).await;
    if warm > 0 {
        errors.push(format!(
            "{warm} probe sessions on the target before any shift"
        ));
    }
    let t0 = Instant::now();
    stack.admin("START UPGRADE").await?;
    let mut seen_steps = std::collections::HashSet::new();
    let mut swap_at = None;
    let deadline = Instant::now() + Duration::from_secs(o.plan_timeout);
    let end = loop {
        let s = stack.status().await?;
        let (phase, state, step) = (field(&s, "phase"), field(&s, "state"), field(&s, "step"));
        if phase == "done" || state == "error" || state == "paused" {
            break format!(
                "{phase} / {state}{}",
                match field(&s, "last_error").as_str() {
                    "" => String::new(),
                    e => format!(": {e}"),
                }
            );
        }
        if swap_at.is_none() && matches!(phase.as_str(), "cut_over" | "detaching") {
            swap_at = Some(Instant::now());
        }
        // The holds of the shift steps (not the one after the cutover, step `cutover`).
        if phase == "health_check"
            && step.starts_with("health_check:")
            && seen_steps.insert(step.clone())
        {
            let w: u32 = field(&s, "target_weight").parse().unwrap_or(0);
            let round = Instant::now();
            let on = probe_round(&probes, tgt_port, &mut probe_ids, &mut errors).await;
            let after = stack.status().await?;
            let round_ms = round.elapsed().as_millis();
            if field(&after, "target_weight") != w.to_string() {
                say(format!(
                    "{step}: weight {w}: the weight changed during the {round_ms} ms round ({on} of {} on the target); not counted (raise --hold-ms)",
                    o.sessions
                ));
            } else {
                say(format!(
                    "{step}: weight {w}: {on} of {} sessions on the target (round {round_ms} ms)",
                    o.sessions
                ));
                steps.push((w, on, o.sessions));
            }
        }
        if Instant::now() > deadline {
            break format!("timeout after {} s in {phase} / {state}", o.plan_timeout);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seconds = t0.elapsed().as_secs_f64();
    let done = end.starts_with("done");
    say(format!("plan ended: {end} after {seconds:.1} s"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    errors.extend(
        pinger
            .await
            .unwrap_or_else(|e| vec![format!("pinger task: {e}")]),
    );
    let totals = tokio::task::spawn_blocking(move || load.stop()).await?;
    let written = writer.stop().await;
    errors.extend(totals.errors.iter().cloned());
    errors.extend(written.errors.iter().cloned());

    let pings = std::mem::take(&mut *pings.lock().unwrap_or_else(|e| e.into_inner()));
    // The cutover: the first status poll that showed it, at most 100 ms after the swap.
    let cutover_pause_ms = swap_at.and_then(|at| {
        pings
            .iter()
            .filter(|(done_at, ms, _)| {
                let started = *done_at - Duration::from_secs_f64(ms / 1000.0);
                started <= at + Duration::from_millis(1000)
                    && *done_at + Duration::from_millis(1000) >= at
            })
            .map(|(_, ms, _)| *ms)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    });
    // For scale: the pinger's worst insert in the rest of the plan (outside that window).
    let ping_max_elsewhere_ms = pings
        .iter()
        .filter(|(done_at, ms, _)| {
            swap_at.is_none_or(|at| {
                let started = *done_at - Duration::from_secs_f64(ms / 1000.0);
                started > at + Duration::from_millis(1000)
                    || *done_at + Duration::from_millis(1000) < at
            })
        })
        .map(|(_, ms, _)| *ms)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let hist = stack.history_lines().await?;
    let server_pause_ms = hist
        .iter()
        .find(|l| l.contains("swapped to target"))
        .and_then(|l| l.split("pause ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok());
    let conflicts = conflicts_logged(&stack);

    let mut all_ids: Vec<i64> = pings.iter().map(|p| p.2).chain(probe_ids).collect();
    let inserts = all_ids.len();
    all_ids.sort_unstable();
    let mut duplicate_ids = all_ids.windows(2).filter(|w| w[0] == w[1]).count();
    let st = stack.clone();
    let acked = written.acked.clone();
    let (lost, dup_rows) = tokio::task::spawn_blocking(move || -> Result<(usize, usize)> {
        let lost = missing_ids(&st.target, "app", "acked", &acked)?.len();
        let d = st
            .target
            .psql("app", "SELECT count(*) - count(DISTINCT id) FROM items")?;
        Ok((lost, d.trim().parse().unwrap_or(0)))
    })
    .await??;
    duplicate_ids += dup_rows;
    Ok(PlanRun {
        versions,
        done,
        end,
        seconds,
        steps,
        cutover_pause_ms,
        ping_max_elsewhere_ms,
        server_pause_ms,
        tpcn: totals.transactions,
        pgbench_failed: totals.failed,
        errors,
        writer_acked: written.acked.len(),
        lost_writes: lost,
        inserts,
        duplicate_ids,
        conflicts,
    })
}

/// The conflicts pgshift logged and let pass (`halt_on_conflict = false`): the sum of the
/// `errors=N` of those log lines.
fn conflicts_logged(stack: &Stack) -> u64 {
    std::fs::read_to_string(stack.pgshift.log_path())
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("halt_on_conflict = false"))
                .filter_map(|l| l.split("errors=").nth(1))
                .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// What run 2 measured.
struct ConflictRun {
    halt_ms: Option<f64>,
    reason: Option<String>,
}

async fn conflict_run(both: &Both) -> Result<ConflictRun> {
    say(format!("run 2: a conflict with the {} driver", both.name()));
    let mut opts = stack_opts(both, 1, 10, "approve_cutover = true")?;
    opts.extra_config = opts
        .extra_config
        .replace("halt_on_conflict = false", "halt_on_conflict = true");
    let stack = start_stack(opts, both).await?;
    stack.admin("START UPGRADE").await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = stack.status().await?;
        if field(&s, "state") == "waiting" {
            break;
        }
        if field(&s, "state") == "error" || Instant::now() > deadline {
            bail!("the conflict run did not synchronise: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.admin("SHIFT TRAFFIC 25").await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let direct = |s: &integration::PgServer| {
        format!(
            "host={} port={} dbname=app user=app password={}",
            s.host,
            s.port,
            integration::stack::APP_PASSWORD
        )
    };
    let a = integration::stack::connect(&direct(&stack.source)).await?;
    let b = integration::stack::connect(&direct(&stack.target)).await?;
    // Both rows inserted before either commits (a commit replicates within milliseconds,
    // so two autocommit inserts may not meet), then both committed at once.
    a.batch_execute("BEGIN; INSERT INTO kv VALUES (1, 'source')")
        .await
        .map_err(|e| anyhow::anyhow!(db_error(&e)))?;
    b.batch_execute("BEGIN; INSERT INTO kv VALUES (1, 'target')")
        .await
        .map_err(|e| anyhow::anyhow!(db_error(&e)))?;
    let written = Instant::now();
    let (x, y) = tokio::join!(a.batch_execute("COMMIT"), b.batch_execute("COMMIT"));
    x.map_err(|e| anyhow::anyhow!(db_error(&e)))?;
    y.map_err(|e| anyhow::anyhow!(db_error(&e)))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last: HashMap<String, Option<String>> = HashMap::new();
    while Instant::now() < deadline {
        last = stack.status().await?;
        if field(&last, "state") == "paused" && field(&last, "target_weight") == "0" {
            let ms = written.elapsed().as_secs_f64() * 1000.0;
            say(format!("conflict halted the shift after {ms:.0} ms"));
            return Ok(ConflictRun {
                halt_ms: Some(ms),
                reason: Some(field(&last, "last_error")),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    say(format!(
        "the conflict did not halt the shift within 30 s: {last:?}"
    ));
    Ok(ConflictRun {
        halt_ms: None,
        reason: Some(field(&last, "last_error")),
    })
}
