//! Prometheus metrics (names prefixed `pgshift_`), served by `GET /metrics` (see `http.rs`).
//!
//! Three sources:
//!
//! * **The data path** calls the `#[inline]` functions [`txn_done`], [`backend_connect_failed`],
//!   [`login_accepted`] and [`login_refused`]. They take no lock and allocate nothing: the
//!   counter handles are registered once (cached in a `OnceLock`) and each call is a few relaxed
//!   atomic adds. Transaction latency goes into a fixed-bucket histogram of plain atomics that
//!   [`render`] writes out itself: the exporter's own histograms queue every sample until the
//!   next upkeep, which allocates on the recording path.
//! * **Scrape time**: client connections per side, busy sessions, routing pause, read from the
//!   proxy's session table and routing table when `/metrics` is rendered.
//! * **The control plane**, sampled every second by [`ControlSampler`] from
//!   [`Controller::status`] and the journal's events (so `control` needs no metrics
//!   dependency): phase and state, plan percent, health check verdict, replication lag,
//!   traffic weights, epoch; upgrades started / completed / rolled back / failed; step
//!   durations; cutover pauses.
//!
//! Counters count from the start of the process, as Prometheus expects.

use control::journal::Event;
use control::{Controller, Side, TrafficControl, UpgradeStatus};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::server::Proxy;

// ----------------------------------------------------------------------------------------
// Names
// ----------------------------------------------------------------------------------------

const TRANSACTIONS: &str = "pgshift_transactions_total";
const TRANSACTION_ERRORS: &str = "pgshift_transaction_errors_total";
const TRANSACTION_DURATION: &str = "pgshift_transaction_duration_seconds";
const BACKEND_CONNECT_ERRORS: &str = "pgshift_backend_connect_errors_total";
/// Read-only units shifted to the other side that failed there before answering and ran again on the serving side.
const SHIFT_REPLAYS: &str = "pgshift_shift_replays_total";
const PINNED_SESSIONS: &str = "pgshift_pinned_sessions";
const PINNED_ENDED: &str = "pgshift_pinned_sessions_ended_total";
const DDL_STATEMENTS: &str = "pgshift_ddl_statements_total";
const LOGINS_ACCEPTED: &str = "pgshift_logins_accepted_total";
const LOGINS_REFUSED: &str = "pgshift_logins_refused_total";
const CLIENT_CONNECTIONS: &str = "pgshift_client_connections";
const BUSY_SESSIONS: &str = "pgshift_busy_sessions";
const SESSION_MEMORY: &str = "pgshift_session_memory_bytes";
const SESSION_MEMORY_LIMIT: &str = "pgshift_session_memory_limit_bytes";
const MEMORY_WAITS: &str = "pgshift_session_memory_waits_total";
const MEMORY_SHED: &str = "pgshift_session_memory_shed_total";
const ROUTING_PAUSED: &str = "pgshift_routing_paused";
const UPGRADE_PHASE: &str = "pgshift_upgrade_phase";
const UPGRADE_STATE: &str = "pgshift_upgrade_state";
const UPGRADE_PERCENT: &str = "pgshift_upgrade_percent";
const HEALTH_OK: &str = "pgshift_health_check_ok";
const LAG_BYTES: &str = "pgshift_replication_lag_bytes";
const LAG_SECONDS: &str = "pgshift_replication_lag_seconds";
/// Mirrored statements compared, by verdict (match, mismatch, target_error, source_error).
const MIRROR_COMPARED: &str = "pgshift_mirror_compared_total";
/// Units queued for the mirror / shed because its queue was full.
const MIRROR_QUEUED: &str = "pgshift_mirror_queued_total";
const MIRROR_SHED: &str = "pgshift_mirror_shed_total";
/// Units waiting in the mirror's queue now.
const MIRROR_QUEUE_DEPTH: &str = "pgshift_mirror_queue_depth";
const CAPTURE_RECORDED: &str = "pgshift_capture_recorded_seq";
const CAPTURE_APPLIED: &str = "pgshift_capture_applied_seq";
const CAPTURE_LAG: &str = "pgshift_capture_lag_bytes";
const CAPTURE_FAILED: &str = "pgshift_capture_apply_failed";
const CAPTURE_SYNCS: &str = "pgshift_capture_fdatasync_total";
/// (mismatches + target-only errors) / compared statements.
const VALIDATION_ERROR_RATE: &str = "pgshift_validation_error_rate";
const TRAFFIC_WEIGHT: &str = "pgshift_traffic_weight_percent";
const ROUTING_EPOCH: &str = "pgshift_routing_epoch";
const UPGRADES_STARTED: &str = "pgshift_upgrades_started_total";
const UPGRADES_COMPLETED: &str = "pgshift_upgrades_completed_total";
const UPGRADES_ROLLED_BACK: &str = "pgshift_upgrades_rolled_back_total";
const UPGRADES_FAILED: &str = "pgshift_upgrades_failed_total";
const STEP_DURATION: &str = "pgshift_upgrade_step_duration_seconds";
const CUTOVER_PAUSE: &str = "pgshift_cutover_pause_ms";

/// Bucket upper bounds of [`CUTOVER_PAUSE`], in ms.
const PAUSE_BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
    60000.0,
];
/// Bucket upper bounds of [`STEP_DURATION`], in seconds (up to WaitForSync's 24 h).
const STEP_BUCKETS_S: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0,
];
/// Bucket upper bounds of [`TRANSACTION_DURATION`], in µs.
const TXN_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const KNOWN_STATES: &[&str] = &[
    "idle", "running", "waiting", "paused", "alert", "done", "error",
];

// ----------------------------------------------------------------------------------------
// Installation, upkeep, rendering
// ----------------------------------------------------------------------------------------

/// Installs the Prometheus recorder as the process's global `metrics` recorder (once, before
/// any session starts: handles taken before it are no-ops) and returns the handle that
/// renders the text. Explicit buckets for the cutover pause and step durations.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CUTOVER_PAUSE.into()), PAUSE_BUCKETS_MS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STEP_DURATION.into()), STEP_BUCKETS_S))
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("cannot install the Prometheus metrics recorder: {e}"))?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(
        TRANSACTIONS,
        "Client units of work (transactions or single statements) completed, per backend side"
    );
    describe_counter!(
        TRANSACTION_ERRORS,
        "Client units of work that ended with an ErrorResponse from the server, per backend side"
    );
    describe_counter!(
        BACKEND_CONNECT_ERRORS,
        "Failed connections (or authentications) to a backend, per side"
    );
    describe_counter!(
        LOGINS_ACCEPTED,
        "Client logins accepted, by kind (app, admin)"
    );
    describe_counter!(LOGINS_REFUSED, "Client logins refused, by reason");
    describe_counter!(
        MIRROR_COMPARED,
        "Mirrored statements compared with the source's answer, by verdict (match, mismatch, target_error, source_error)"
    );
    describe_counter!(MIRROR_QUEUED, "Units of work queued for the mirror");
    describe_gauge!(
        MIRROR_QUEUE_DEPTH,
        "Units of work waiting in the mirror's queue"
    );
    describe_gauge!(
        CAPTURE_RECORDED,
        "Mirror replication driver: seq of the last record in the capture queue"
    );
    describe_gauge!(
        CAPTURE_APPLIED,
        "Mirror replication driver: seq of the last transaction applied on the other side"
    );
    describe_gauge!(
        CAPTURE_LAG,
        "Mirror replication driver: bytes of the capture queue not applied yet"
    );
    describe_gauge!(
        CAPTURE_FAILED,
        "Mirror replication driver: 1 when applying stopped (SHOW UPGRADE STATUS says why)"
    );
    describe_counter!(
        CAPTURE_SYNCS,
        "Mirror replication driver: fdatasync calls of the capture queue (one covers every commit waiting at that moment)"
    );
    describe_counter!(
        MIRROR_SHED,
        "Units of work the mirror dropped because its queue was full (clients never wait for it)"
    );
    describe_gauge!(
        VALIDATION_ERROR_RATE,
        "Validation error rate: (mismatches + target-only errors) / compared statements"
    );
    describe_counter!(
        SHIFT_REPLAYS,
        "Read-only units shifted to the other side that failed there before any answer and ran again on the serving side (the client saw no error)"
    );
    describe_gauge!(
        PINNED_SESSIONS,
        "Client sessions holding temporary tables, session advisory locks or WITH HOLD cursors, which a backend switch cannot carry"
    );
    describe_counter!(
        PINNED_ENDED,
        "Pinned client sessions ended (FATAL 57P01) because a switch moved traffic to another server"
    );
    describe_counter!(
        DDL_STATEMENTS,
        "DDL statements sent through pgshift while replication ran, by what [upgrade] ddl did with them (refused, allowed)"
    );
    describe_gauge!(CLIENT_CONNECTIONS, "Client sessions, by the backend side they are on (none: not connected yet; admin: admin console)");
    describe_gauge!(
        BUSY_SESSIONS,
        "Client sessions inside a transaction or with a message in flight"
    );
    describe_gauge!(
        ROUTING_PAUSED,
        "1 while new transactions are held in the proxy (cutover, PAUSE)"
    );
    describe_gauge!(
        UPGRADE_PHASE,
        "1 for the current upgrade phase, 0 for the others"
    );
    describe_gauge!(
        UPGRADE_STATE,
        "1 for the current upgrade state, 0 for the others"
    );
    describe_gauge!(
        SESSION_MEMORY,
        Unit::Bytes,
        "Bytes sessions hold from the memory budget ([proxy] session_memory_bytes)"
    );
    describe_gauge!(
        SESSION_MEMORY_LIMIT,
        Unit::Bytes,
        "The sessions' memory budget ([proxy] session_memory_bytes)"
    );
    describe_counter!(
        MEMORY_WAITS,
        "Times a session waited for room in the memory budget"
    );
    describe_counter!(
        MEMORY_SHED,
        "What the memory budget shed: sessions ended with 53200 (what=session), replay or mirroring copies dropped (what=copy)"
    );
    describe_gauge!(UPGRADE_PERCENT, "Progress of the upgrade plan, 0-100");
    describe_gauge!(
        HEALTH_OK,
        "1 while the health checks pass, 0 while they fail, NaN when none run"
    );
    describe_gauge!(LAG_BYTES, Unit::Bytes, "WAL bytes the subscriber of the running replication direction has not confirmed (NaN when unknown)");
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Replay lag of the running replication direction (NaN when unknown)"
    );
    describe_gauge!(
        TRAFFIC_WEIGHT,
        "Percentage of new transactions routed to each side"
    );
    describe_gauge!(
        ROUTING_EPOCH,
        "Routing epoch (1 at the start, +1 per switch)"
    );
    describe_counter!(
        UPGRADES_STARTED,
        "Upgrades started (fresh starts, not resumes)"
    );
    describe_counter!(
        UPGRADES_COMPLETED,
        "Upgrades that reached cut_over with state done"
    );
    describe_counter!(
        UPGRADES_ROLLED_BACK,
        "Rollbacks that finished with traffic on the source"
    );
    describe_counter!(
        UPGRADES_FAILED,
        "Upgrade steps or commands that failed and left the upgrade in state error"
    );
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "Duration of upgrade steps, by step key and outcome (done, failed)"
    );
    describe_histogram!(
        CUTOVER_PAUSE,
        Unit::Milliseconds,
        "Client-visible pause of a switch (cutover to the target, rollback to the source)"
    );
}

/// Drains the exporter's histogram queues every 5 s (the recorder installed by [`install`]
/// does not do it by itself). Runs until the runtime ends.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// The Prometheus text of `GET /metrics`: refreshes the scrape-time gauges from `proxy`, then
/// the exporter's text, then the transaction latency histograms.
pub fn render(handle: &PrometheusHandle, proxy: &Proxy) -> String {
    let mut by_side = [0u64; 4]; // source, target, none, admin
    for s in proxy.session_list() {
        let i = if s.admin {
            3
        } else {
            match s.side() {
                Some(Side::Source) => 0,
                Some(Side::Target) => 1,
                None => 2,
            }
        };
        by_side[i] += 1;
    }
    for (label, n) in ["source", "target", "none", "admin"].iter().zip(by_side) {
        gauge!(CLIENT_CONNECTIONS, "side" => *label).set(n as f64);
    }
    gauge!(BUSY_SESSIONS).set(proxy.router.busy_sessions() as f64);
    let m = &proxy.memory;
    gauge!(SESSION_MEMORY).set(m.used() as f64);
    gauge!(SESSION_MEMORY_LIMIT).set(m.limit() as f64);
    counter!(MEMORY_WAITS).absolute(m.waits.load(std::sync::atomic::Ordering::Relaxed));
    counter!(MEMORY_SHED, "what" => "session")
        .absolute(m.shed_sessions.load(std::sync::atomic::Ordering::Relaxed));
    counter!(MEMORY_SHED, "what" => "copy")
        .absolute(m.shed_copies.load(std::sync::atomic::Ordering::Relaxed));
    gauge!(ROUTING_PAUSED).set(if proxy.router.load().paused { 1.0 } else { 0.0 });
    let mut out = handle.render();
    render_latency(&mut out);
    out
}

// ----------------------------------------------------------------------------------------
// Data path
// ----------------------------------------------------------------------------------------

// Until the session calls them (session.rs is wired separately), the data-path items are
// used by the tests only: hence the `allow(dead_code)` outside tests below.

fn side_index(side: Side) -> usize {
    match side {
        Side::Source => 0,
        Side::Target => 1,
    }
}

const SIDES: [Side; 2] = [Side::Source, Side::Target];

struct SideCounters {
    txns: Counter,
    errors: Counter,
    connect_errors: Counter,
}

fn side_counters() -> &'static [SideCounters; 2] {
    static C: OnceLock<[SideCounters; 2]> = OnceLock::new();
    C.get_or_init(|| {
        SIDES.map(|s| SideCounters {
            txns: counter!(TRANSACTIONS, "side" => s.as_str()),
            errors: counter!(TRANSACTION_ERRORS, "side" => s.as_str()),
            connect_errors: counter!(BACKEND_CONNECT_ERRORS, "side" => s.as_str()),
        })
    })
}

/// Latency histogram of one side: non-cumulative bucket counts (the last is +Inf) and the sum.
/// Aligned so that the two sides do not share a cache line.
#[repr(align(128))]
struct Latency {
    buckets: [AtomicU64; TXN_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

static LATENCY: [Latency; 2] = [const {
    Latency {
        buckets: [const { AtomicU64::new(0) }; TXN_BOUNDS_US.len() + 1],
        sum_us: AtomicU64::new(0),
    }
}; 2];

/// One mirrored statement compared (`verdict`: match, mismatch, target_error, source_error).
pub fn mirror_compared(verdict: &'static str) {
    counter!(MIRROR_COMPARED, "verdict" => verdict).increment(1);
}

/// The mirror's queue depth (units waiting), cumulative queued and shed units and the
/// validation error rate (0-1), set
/// every 200 ms by the mirror.
pub fn mirror_state(depth: usize, queued: u64, shed: u64, error_rate: f64) {
    gauge!(MIRROR_QUEUE_DEPTH).set(depth as f64);
    counter!(MIRROR_QUEUED).absolute(queued);
    counter!(MIRROR_SHED).absolute(shed);
    gauge!(VALIDATION_ERROR_RATE).set(error_rate);
}

/// The mirror replication driver's capture queue and applier (set by the applier as it goes
/// and when it stops).
pub fn capture_state(e: &crate::capture::Engine) {
    let st = control::Capture::state(e);
    gauge!(CAPTURE_RECORDED).set(st.captured as f64);
    gauge!(CAPTURE_APPLIED).set(st.applied as f64);
    gauge!(CAPTURE_LAG).set(st.lag_bytes as f64);
    gauge!(CAPTURE_FAILED).set(if st.failed.is_some() { 1.0 } else { 0.0 });
}

/// One group-commit `fdatasync` of the capture queue finished.
pub fn capture_synced() {
    counter!(CAPTURE_SYNCS).increment(1);
}

/// Number of pinned sessions (see `session::pins`), set when it changes.
pub fn pinned_sessions(n: usize) {
    gauge!(PINNED_SESSIONS).set(n as f64);
}

/// A pinned session ended at a switch.
pub fn pinned_ended() {
    counter!(PINNED_ENDED).increment(1);
}

/// A DDL statement met the DDL gate (`action`: Block = refused, Warn = allowed).
pub fn ddl_statement(action: control::DdlAction) {
    let what = match action {
        control::DdlAction::Block => "refused",
        _ => "allowed",
    };
    counter!(DDL_STATEMENTS, "action" => what).increment(1);
}

/// A shifted read-only unit failed on the other side before answering and runs again on the
/// serving side (relay's replay).
pub fn shift_replayed() {
    counter!(SHIFT_REPLAYS).increment(1);
}

/// A unit of work (transaction, or statement outside one) ended on `side` with ReadyForQuery
/// `I`; `error` when the server sent an ErrorResponse in it; `latency_us` from its first
/// message to that ReadyForQuery. Lock-free, allocation-free: 3 or 4 relaxed atomic adds.
#[inline]
pub fn txn_done(side: Side, error: bool, latency_us: u64) {
    let i = side_index(side);
    let c = &side_counters()[i];
    c.txns.increment(1);
    if error {
        c.errors.increment(1);
    }
    let l = &LATENCY[i];
    let b = TXN_BOUNDS_US.partition_point(|&bound| bound < latency_us);
    l.buckets[b].fetch_add(1, Relaxed);
    l.sum_us.fetch_add(latency_us, Relaxed);
}

/// Connecting or authenticating to the backend of `side` failed (after retries).
#[inline]
pub fn backend_connect_failed(side: Side) {
    side_counters()[side_index(side)]
        .connect_errors
        .increment(1);
}

/// Why a login was refused: the `reason` label of `pgshift_logins_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong password or unknown user (28P01).
    Password,
    /// Not allowed: no user name, admin rules, failed SCRAM exchange (28000).
    NotAllowed,
    /// A database pgshift does not serve (3D000).
    Database,
    /// Something pgshift does not do, e.g. a replication connection (0A000).
    Unsupported,
    /// The client did not finish its login within `client_login_timeout_ms`.
    Timeout,
    /// Malformed startup or anything else.
    Protocol,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::Password,
        Refusal::NotAllowed,
        Refusal::Database,
        Refusal::Unsupported,
        Refusal::Timeout,
        Refusal::Protocol,
    ];

    /// The reason matching the SQLSTATE of the FATAL error the client was sent (a login
    /// timeout has no SQLSTATE of its own: use [`Refusal::Timeout`]).
    pub fn from_sqlstate(sqlstate: &str) -> Refusal {
        match sqlstate {
            "28P01" => Refusal::Password,
            "28000" => Refusal::NotAllowed,
            "3D000" => Refusal::Database,
            "0A000" => Refusal::Unsupported,
            _ => Refusal::Protocol,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Password => "password",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Database => "database",
            Refusal::Unsupported => "unsupported",
            Refusal::Timeout => "timeout",
            Refusal::Protocol => "protocol",
        }
    }
}

struct LoginCounters {
    /// app, admin.
    accepted: [Counter; 2],
    /// In the order of [`Refusal::ALL`].
    refused: [Counter; 6],
}

fn login_counters() -> &'static LoginCounters {
    static C: OnceLock<LoginCounters> = OnceLock::new();
    C.get_or_init(|| LoginCounters {
        accepted: ["app", "admin"].map(|k| counter!(LOGINS_ACCEPTED, "kind" => k)),
        refused: Refusal::ALL.map(|r| counter!(LOGINS_REFUSED, "reason" => r.as_str())),
    })
}

/// A client logged in (to the admin console when `admin`).
#[inline]
pub fn login_accepted(admin: bool) {
    login_counters().accepted[usize::from(admin)].increment(1);
}

/// A client's login was refused.
#[inline]
pub fn login_refused(reason: Refusal) {
    login_counters().refused[reason as usize].increment(1);
}
/// Appends [`TRANSACTION_DURATION`] (a Prometheus histogram per side) to `out`.
fn render_latency(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "# HELP {TRANSACTION_DURATION} Duration of client units of work, from the first message to ReadyForQuery, per backend side"
    );
    let _ = writeln!(out, "# TYPE {TRANSACTION_DURATION} histogram");
    for side in SIDES {
        let l = &LATENCY[side_index(side)];
        let s = side.as_str();
        let mut cumulative = 0u64;
        for (i, b) in l.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            match TXN_BOUNDS_US.get(i) {
                Some(&us) => {
                    let _ = writeln!(
                        out,
                        "{TRANSACTION_DURATION}_bucket{{side=\"{s}\",le=\"{}\"}} {cumulative}",
                        us as f64 / 1e6
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{TRANSACTION_DURATION}_bucket{{side=\"{s}\",le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let sum = l.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{TRANSACTION_DURATION}_sum{{side=\"{s}\"}} {sum}");
        let _ = writeln!(
            out,
            "{TRANSACTION_DURATION}_count{{side=\"{s}\"}} {cumulative}"
        );
    }
}

// ----------------------------------------------------------------------------------------
// Control plane sampler
// ----------------------------------------------------------------------------------------

/// Samples the control plane into the metrics: see [`ControlSampler::run`].
pub struct ControlSampler {
    controller: Arc<Controller>,
    s: Sampler,
}

impl ControlSampler {
    /// Takes the baseline now (the journal's newest event, the current phase and state), so
    /// that what happens after this call is counted even if the sampler's first tick comes
    /// later (e.g. `pgshift upgrade` starting the upgrade at once).
    pub async fn new(controller: Arc<Controller>) -> ControlSampler {
        let mut s = Sampler::default();
        let st = controller.status();
        s.status(&Sample::new(&st));
        s.last_updated = Some(st.updated_at.clone());
        match controller.events(1).await {
            Ok(events) => s.events(&events),
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the journal's events"),
        }
        ControlSampler { controller, s }
    }

    /// Every second: exports the controller's status, and the journal events since the last
    /// read (upgrades started / failed, step durations, cutover pauses). The events are read
    /// only when something may have happened (a step running, or the status changed), and
    /// not while a switch is under way, so that the journal thread is all the cutover's.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let st = self.controller.status();
            let s = &mut self.s;
            s.status(&Sample::new(&st));
            let quiet = st.state != control::State::Running
                && s.last_updated.as_deref() == Some(&st.updated_at);
            let switching = matches!(
                st.phase,
                control::Phase::CuttingOver | control::Phase::RollingBack
            );
            if s.last_event.is_some() && (quiet || switching) {
                continue;
            }
            match self.controller.events(EVENTS_PER_TICK).await {
                Ok(events) => {
                    s.events(&events);
                    s.last_updated = Some(st.updated_at);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: cannot read the journal's events")
                }
            }
        }
    }
}

/// Events read per tick; more than this between two reads and the oldest are not counted.
const EVENTS_PER_TICK: usize = 200;

/// What the sampler exports of [`UpgradeStatus`] (its own type, so that fields added to
/// `UpgradeStatus` need no change here).
struct Sample<'a> {
    phase: &'a str,
    state: &'a str,
    percent: u8,
    /// The health check verdict: `Some(true)` ok, `Some(false)` failing, `None` no checks.
    health_ok: Option<bool>,
    lag_bytes: Option<i64>,
    lag_seconds: Option<f64>,
    source_weight: u32,
    target_weight: u32,
    epoch: u64,
}

impl<'a> Sample<'a> {
    fn new(st: &'a UpgradeStatus) -> Sample<'a> {
        Sample {
            phase: st.phase.as_str(),
            state: st.state.as_str(),
            percent: st.percent,
            health_ok: st.health.as_deref().map(|h| h.starts_with("ok")),
            lag_bytes: st.replication_lag_bytes,
            lag_seconds: st.lag_seconds,
            source_weight: st.source_weight,
            target_weight: st.target_weight,
            epoch: st.epoch,
        }
    }
}

/// What the sampler remembers between ticks.
#[derive(Default)]
struct Sampler {
    phase: Option<String>,
    state: Option<String>,
    phases: HashSet<String>,
    states: HashSet<String>,
    /// Id of the newest event seen; `None` until the first read, which only sets it.
    last_event: Option<i64>,
    /// Step key -> start of its running attempt (unix ms), from `key: started` events.
    step_starts: HashMap<String, i64>,
    /// The current upgrade was counted as completed.
    completed: bool,
    /// The newest upgrade id counted as started.
    started: Option<i64>,
    /// `updated_at` of the status when the events were last read.
    last_updated: Option<String>,
}

impl Sampler {
    fn status(&mut self, st: &Sample<'_>) {
        if self.phases.is_empty() {
            // Every phase exported at 0 before it is first seen, so that
            // `pgshift_upgrade_phase` has every series from the start.
            self.phases.extend(
                control::controller::Phase::ALL
                    .iter()
                    .map(|p| p.as_str().to_string()),
            );
            self.states
                .extend(KNOWN_STATES.iter().map(|p| p.to_string()));
        }
        if !self.phases.contains(st.phase) {
            self.phases.insert(st.phase.to_string());
        }
        if !self.states.contains(st.state) {
            self.states.insert(st.state.to_string());
        }
        for p in &self.phases {
            gauge!(UPGRADE_PHASE, "phase" => p.clone()).set(if *p == st.phase { 1.0 } else { 0.0 });
        }
        for s in &self.states {
            gauge!(UPGRADE_STATE, "state" => s.clone()).set(if *s == st.state { 1.0 } else { 0.0 });
        }
        gauge!(UPGRADE_PERCENT).set(f64::from(st.percent));
        gauge!(HEALTH_OK).set(
            st.health_ok
                .map_or(f64::NAN, |ok| if ok { 1.0 } else { 0.0 }),
        );
        gauge!(LAG_BYTES).set(st.lag_bytes.map_or(f64::NAN, |b| b as f64));
        gauge!(LAG_SECONDS).set(st.lag_seconds.unwrap_or(f64::NAN));
        gauge!(TRAFFIC_WEIGHT, "side" => "source").set(f64::from(st.source_weight));
        gauge!(TRAFFIC_WEIGHT, "side" => "target").set(f64::from(st.target_weight));
        gauge!(ROUTING_EPOCH).set(st.epoch as f64);
        // Make the counters visible at 0 before their first event.
        for name in [
            UPGRADES_STARTED,
            UPGRADES_COMPLETED,
            UPGRADES_ROLLED_BACK,
            UPGRADES_FAILED,
        ] {
            counter!(name).increment(0);
        }

        let changed =
            self.phase.as_deref() != Some(st.phase) || self.state.as_deref() != Some(st.state);
        // The first sample only sets the baseline: a restart does not count an old completion.
        let first = self.phase.is_none();
        let after_cutover = control::controller::Phase::parse(st.phase).after_cutover();
        if st.state == "done" && after_cutover {
            // Once per upgrade, whether it stops at cut_over or goes on to detach and
            // decommission.
            if changed && !first && !self.completed {
                counter!(UPGRADES_COMPLETED).increment(1);
            }
            self.completed = true;
        } else if !after_cutover {
            self.completed = false;
        }
        if changed && !first && st.state == "done" && st.phase == "rolled_back" {
            counter!(UPGRADES_ROLLED_BACK).increment(1);
        }
        self.phase = Some(st.phase.to_string());
        self.state = Some(st.state.to_string());
    }

    /// `events`: the latest journal events, oldest first.
    fn events(&mut self, events: &[Event]) {
        let Some(last) = self.last_event else {
            self.last_event = Some(events.last().map_or(0, |e| e.id));
            self.started = events.iter().filter_map(|e| e.upgrade_id).max();
            return;
        };
        for e in events.iter().filter(|e| e.id > last) {
            self.event(e);
        }
        if let Some(e) = events.last() {
            self.last_event = Some(e.id.max(last));
        }
    }

    fn event(&mut self, e: &Event) {
        use control::EventData;
        match (e.kind.as_str(), &e.data) {
            ("error", _) => counter!(UPGRADES_FAILED).increment(1),
            // A fresh start writes the row in phase `preflight` under a new upgrade id.
            ("phase", Some(EventData::Row { phase, .. }))
                if phase == "preflight"
                    && e.upgrade_id.is_some()
                    && e.upgrade_id > self.started =>
            {
                self.started = e.upgrade_id;
                counter!(UPGRADES_STARTED).increment(1);
            }
            ("swap", Some(EventData::Swap { to, pause_ms, .. })) => {
                let direction = if to == "source" {
                    "rollback"
                } else {
                    "cutover"
                };
                histogram!(CUTOVER_PAUSE, "direction" => direction).record(*pause_ms);
            }
            ("step", Some(EventData::Step { key, status })) => {
                let Some(at) = parse_rfc3339_ms(&e.ts) else {
                    return;
                };
                match status.as_str() {
                    "started" => {
                        self.step_starts.insert(key.clone(), at);
                    }
                    "done" | "failed" => {
                        let outcome = if status == "done" { "done" } else { "failed" };
                        if let Some(start) = self.step_starts.remove(key) {
                            let secs = (at - start).max(0) as f64 / 1000.0;
                            histogram!(STEP_DURATION, "step" => key.clone(), "outcome" => outcome)
                                .record(secs);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// `2026-11-18T11:06:40.123Z` (the journal's format; fraction optional) -> unix ms.
fn parse_rfc3339_ms(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { ts.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = ts.get(19..)?;
    let rest = rest.strip_suffix('Z')?;
    let ms = match rest.strip_prefix('.') {
        Some(frac) if !frac.is_empty() && frac.bytes().all(|c| c.is_ascii_digit()) => {
            let digits: String = frac.chars().chain("000".chars()).take(3).collect();
            digits.parse::<i64>().ok()?
        }
        None if rest.is_empty() => 0,
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prometheus() -> (
        metrics_exporter_prometheus::PrometheusRecorder,
        PrometheusHandle,
    ) {
        let rec = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(CUTOVER_PAUSE.into()), PAUSE_BUCKETS_MS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(STEP_DURATION.into()), STEP_BUCKETS_S)
            })
            .expect("buckets")
            .build_recorder();
        let h = rec.handle();
        (rec, h)
    }

    fn status<'a>(phase: &'a str, state: &'a str, percent: u8) -> Sample<'a> {
        Sample {
            phase,
            state,
            percent,
            health_ok: (phase == "shifting").then_some(false),
            lag_bytes: Some(4096),
            lag_seconds: None,
            source_weight: 100,
            target_weight: 0,
            epoch: 1,
        }
    }

    fn ev(id: i64, ts: &str, kind: &str, message: &str) -> Event {
        use control::EventData;
        // What the controller journals with these messages.
        let (upgrade_id, data) = if let Some(n) = message
            .strip_prefix("upgrade ")
            .and_then(|r| r.strip_suffix(" started"))
        {
            let row = EventData::Row {
                phase: "preflight".into(),
                state: "running".into(),
                weight: 0,
                epoch: 1,
            };
            (n.parse().ok(), Some(row))
        } else if let Some((key, rest)) = message.split_once(": ").filter(|_| kind == "step") {
            let status = rest.split(' ').next().unwrap_or_default();
            (
                Some(2),
                Some(EventData::Step {
                    key: key.into(),
                    status: status.into(),
                }),
            )
        } else if kind == "swap" {
            let to = if message.starts_with("swapped to source") {
                "source"
            } else {
                "target"
            };
            let pause_ms = message
                .split("pause ")
                .nth(1)
                .and_then(|r| r.split(" ms").next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            (
                Some(2),
                Some(EventData::Swap {
                    to: to.into(),
                    epoch: 2,
                    pause_ms,
                }),
            )
        } else {
            (Some(2), None)
        };
        Event {
            id,
            ts: ts.into(),
            actor: "plan".into(),
            kind: kind.into(),
            message: message.into(),
            upgrade_id,
            data,
        }
    }

    /// The line of `text` starting with `prefix`, parsed as the sample value.
    fn value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn rfc3339_round_trips_with_the_journal() {
        for ms in [
            0i64,
            1_795_000_000_123,
            951_782_400_000, /* 2000-02-29 */
            1_709_164_800_999,
        ] {
            let s = control::journal::rfc3339_from_unix_millis(ms);
            assert_eq!(parse_rfc3339_ms(&s), Some(ms), "{s}");
        }
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00.000Z",
            "2026-01-01 00:00:00.000Z",
            "2026-01-01T00:00:00.000",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn refusal_labels() {
        assert_eq!(Refusal::from_sqlstate("28P01"), Refusal::Password);
        assert_eq!(Refusal::from_sqlstate("08P01"), Refusal::Protocol);
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL must follow the declaration order");
        }
    }

    #[test]
    fn sampler_exports_status_and_events() {
        let (rec, h) = prometheus();
        metrics::with_local_recorder(&rec, || {
            let mut s = Sampler::default();
            s.status(&status("idle", "idle", 0));
            // The first read sets the baseline: old events are not counted.
            s.events(&[ev(
                1,
                "2026-01-01T00:00:00.000Z",
                "phase",
                "upgrade 1 started",
            )]);
            s.events(&[
                ev(1, "2026-01-01T00:00:00.000Z", "phase", "upgrade 1 started"),
                ev(2, "2026-01-01T00:00:01.000Z", "phase", "upgrade 2 started"),
                ev(3, "2026-01-01T00:00:01.000Z", "step", "preflight: started"),
                ev(
                    4,
                    "2026-01-01T00:00:03.500Z",
                    "step",
                    "preflight: done (passed: ok)",
                ),
                ev(
                    5,
                    "2026-01-01T00:00:04.000Z",
                    "swap",
                    "swapped to target, epoch 2: pause 7.5 ms (drain 1.0)",
                ),
                ev(
                    6,
                    "2026-01-01T00:00:05.000Z",
                    "error",
                    "step x failed: boom",
                ),
            ]);
            s.status(&status("synchronizing", "running", 50));
            s.status(&status("cut_over", "done", 100));
            // Detach and decommission after the cutover: still one completed upgrade.
            s.status(&status("decommissioning", "running", 100));
            s.status(&status("done", "done", 100));
            s.status(&status("rolling_back", "running", 100));
            s.status(&status("rolled_back", "done", 100));
            s.status(&status("cut_over", "done", 100));
        });
        let text = h.render();
        assert_eq!(
            value(&text, "pgshift_upgrades_started_total "),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_upgrades_failed_total "),
            Some(1.0),
            "{text}"
        );
        // cut_over → done: one; rollback, then cut_over again: a second.
        assert_eq!(
            value(&text, "pgshift_upgrades_completed_total "),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_upgrades_rolled_back_total "),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_upgrade_phase{phase=\"cut_over\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_upgrade_phase{phase=\"synchronizing\"}"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_upgrade_state{state=\"done\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_replication_lag_bytes "),
            Some(4096.0),
            "{text}"
        );
        assert!(
            text.contains("pgshift_replication_lag_seconds NaN"),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_upgrade_percent "),
            Some(100.0),
            "{text}"
        );
        assert!(text.contains("pgshift_health_check_ok NaN"), "{text}");
        assert_eq!(
            value(&text, "pgshift_traffic_weight_percent{side=\"source\"}"),
            Some(100.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "pgshift_upgrade_step_duration_seconds_sum{step=\"preflight\",outcome=\"done\"}"
            ),
            Some(2.5),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_upgrade_step_duration_seconds_bucket{step=\"preflight\",outcome=\"done\",le=\"5\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_cutover_pause_ms_sum{direction=\"cutover\"}"),
            Some(7.5),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "pgshift_cutover_pause_ms_bucket{direction=\"cutover\",le=\"10\"}"
            ),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn data_path_counters_and_latency_histogram() {
        let (rec, h) = prometheus();
        // The cached handles belong to whichever recorder is current at their first use: take
        // them under this test's recorder. (Other tests do not call the data-path functions.)
        metrics::with_local_recorder(&rec, || {
            txn_done(Side::Target, false, 80);
            txn_done(Side::Target, true, 3_000);
            txn_done(Side::Target, false, 20_000_000);
            login_accepted(false);
            login_refused(Refusal::Password);
            backend_connect_failed(Side::Source);
        });
        let mut text = h.render();
        render_latency(&mut text);
        assert_eq!(
            value(&text, "pgshift_transactions_total{side=\"target\"}"),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_transaction_errors_total{side=\"target\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_logins_accepted_total{kind=\"app\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "pgshift_logins_refused_total{reason=\"password\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "pgshift_backend_connect_errors_total{side=\"source\"}"
            ),
            Some(1.0),
            "{text}"
        );
        let b = |le: &str| {
            value(
                &text,
                &format!(
                    "pgshift_transaction_duration_seconds_bucket{{side=\"target\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!(b("0.0001"), Some(1.0), "{text}");
        assert_eq!(b("0.0025"), Some(1.0), "{text}");
        assert_eq!(b("0.005"), Some(2.0), "{text}");
        assert_eq!(b("10"), Some(2.0), "{text}");
        assert_eq!(b("+Inf"), Some(3.0), "{text}");
        assert_eq!(
            value(
                &text,
                "pgshift_transaction_duration_seconds_count{side=\"target\"}"
            ),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "pgshift_transaction_duration_seconds_sum{side=\"target\"}"
            ),
            Some(20.00308),
            "{text}"
        );
    }
}
