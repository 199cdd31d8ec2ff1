//! The upgrade controller: runs the plan, the cutover and the rollback, journals every step
//! before it takes effect, resumes after a restart, watches health while traffic is shifted,
//! and keeps the in-memory status that `SHOW UPGRADE STATUS` reads.
//!
//! # The plan
//!
//! `validate_input` → `provision_target` → `configure_params` → `install_extension` →
//! `init_replication` → `wait_for_sync` → (`shift_traffic:n` → `health_check:n`)* → `cutover`
//! → `health_check:cutover` → `detach_old` → `decommission_source` (step keys, as journaled).
//! START UPGRADE (or `upgrade.auto_start`) runs it in the background; with
//! `upgrade.approve_cutover` it stops before `cutover` (phase `replicating`, state `waiting`)
//! until INITIATE CUTOVER, which cuts over and lets the plan go on. Each step:
//!
//! * is journaled `started` before its first effect and `done` after its last, so a restarted
//!   pgshift skips what is done and repeats the step it stood on; every step looks before it
//!   acts, so a repeat does no harm;
//! * runs under its `[upgrade.timeouts]` deadline (retries included) and is retried after a
//!   failure that may pass (lost connection, timeout, an abandoned cutover) up to
//!   `max_attempts`, waiting `backoff_initial_ms` doubled per attempt up to `backoff_max_ms`
//!   with jitter (half fixed, half random); other failures stop the plan in state `error`
//!   with the reason in `last_error` (START UPGRADE / RESUME UPGRADE retries);
//! * is cancelled at a safe point by ROLLBACK UPGRADE, PAUSE UPGRADE or a failing health
//!   check. The cutover itself is never cut short: it is bounded by `drain_timeout_ms` and
//!   `catchup_timeout_ms` instead, and a stop waits for it.
//!
//! What the steps do with the `logical` driver: `validate_input` = preflight (below; only the
//! source and the tools when the target is to be provisioned, plus the provider's checks);
//! `provision_target` = the local provider ([`crate::provider`]) or a recorded skip;
//! `configure_params` and `install_extension` = recorded no-ops (native logical replication
//! needs no server parameter change beyond what preflight checks, and no extension);
//! `init_replication` = preflight of the provisioned target, schema copy, publications, the
//! forward subscription; `wait_for_sync` = the initial copy (heartbeat journaled every 10 s);
//! `shift_traffic:n` = journal then publish the cumulative weight
//! ([`TrafficControl::set_weight`](crate::TrafficControl::set_weight)); `health_check:n` = hold
//! `shift_hold_ms` while the health checks run (passes when none failed); `cutover` = the
//! cutover protocol below; `health_check:cutover` = hold `shift_hold_ms` with the checks
//! guarding the target (a failure rolls back to the source); `detach_old` = remove every
//! replication object (no way back after it); `decommission_source` = optional final
//! `pg_dump`, then `pg_ctl stop` of the source when `decommission_source` and
//! `[source.provision]` say so (never deletes data).
//!
//! # Databases
//!
//! The upgrade carries every database of the source instance, or `[upgrade] databases` (see
//! [`databases`]): ValidateInput resolves and journals the set; every step above runs for
//! each database (its own preflight, schema copy, publications, subscription; a database
//! missing on the target is created like the source's), with sub-step keys `<key>@<db>` for
//! all but the primary one. A switch checks and waits for each database, then pauses once
//! for all: one barrier per database, all caught up, stopped, their sequences and slots made
//! at once (concurrently), then one swap; its abandon and post-swap steps run for each. The
//! lag is the largest of the databases'. The `mirror` driver carries the primary only.
//!
//! # Phases and states
//!
//! Phases: `idle`, `preflight`, `provisioning`, `init_replication` (also for the no-op steps),
//! `schema_copy`, `synchronizing`, `replicating`, `shifting`, `health_check`, `cutting_over`,
//! `cut_over`, `detaching`, `decommissioning`, `done`; `rolling_back` → `rolled_back`.
//! `ROLLBACK UPGRADE` after the cutover (until `detach_old`) moves traffic back with the
//! cutover protocol (`rolled_back`, forward replication running again: INITIATE CUTOVER
//! allowed again; a second ROLLBACK UPGRADE removes replication). Before the cutover it stops
//! the plan, sets the weight to 0, removes every replication object and a target pgshift
//! provisioned (stopped, its data directory deleted: only when pgshift's marker is in it).
//!
//! States: `idle` (nothing started), `running` (the plan is under way), `waiting` (for
//! INITIATE CUTOVER), `paused` (PAUSE UPGRADE, or a failed health check: RESUME UPGRADE goes
//! on), `alert` (replication lag above its limits for longer than `lag_grace_ms`: shifting
//! stopped, nothing rolled back; RESUME UPGRADE goes on), `done` (the plan finished, or rolled
//! back), `error` (a step failed: `last_error` says why and what to do).
//!
//! # Health (see [`crate::health`])
//!
//! A task checks every `health.interval_ms` while traffic is shifted to the target (weight >
//! 0, or phase `shifting`/`health_check`) and during `health_check:cutover`. A failing check
//! stops the plan and, before the cutover, journals and publishes the new weight at once
//! (`on_failure`: the previous step's weight, or 0; always 0 when the target cannot be
//! reached), then pauses the plan (state `paused`, the reason in `last_error`, a `health`
//! history entry with the reaction time: detection → weight published); after the cutover it
//! rolls back to the source. [`Controller::last_health_reaction`] returns the latest.
//!
//! # Preflight
//!
//! Source: reachable; `wal_level = logical`; free `max_replication_slots` and
//! `max_wal_senders` for slot `<p>_fwd` plus the initial-copy workers
//! (`max_sync_workers_per_subscription` of the target); `max_logical_replication_workers >= 1`
//! (reverse subscription); every table has a primary key or a usable replica identity (each
//! offender listed as `schema.table`); sequences listed. Target: reachable; `wal_level = logical`
//! (reverse replication); a free slot and walsender; enough logical replication workers; every
//! role that owns or is granted objects in the source database, and every configured user's
//! `server_user`, exists; major >= source major; not the same database as the source. Tools:
//! `pg_dump` runs and is of the source's major or newer, `psql` runs. All failures are collected.
//!
//! # Cutover (and rollback after cutover, the same protocol the other way)
//!
//! Step keys `cutover.*` (to the target) / `switchback.*` (back to the source):
//! `precatchup` (before the pause, see below), `drain` (pause, wait for busy sessions to reach
//! 0, at most `drain_timeout_ms`), `catchup` (X = barrier on the serving side, see below; wait
//! until the other side has applied X, polling every 2 ms, at most `catchup_timeout_ms`), `stop_apply` (disable the
//! running subscription and end its worker), `sequences` (copy every used sequence),
//! `slot` (create the reverse slot fresh), `swap` (journal side + epoch + weight 0, then
//! [`TrafficControl::set_weight`](crate::TrafficControl::set_weight)`(0)` if needed and
//! [`TrafficControl::switch_to`](crate::TrafficControl::switch_to)), then after the pause
//! `new_sub` (subscription of the other direction on that slot, `copy_data = false`) and
//! `drop_old_sub`. Any failure before `swap` resumes traffic on the side it was on, re-enables
//! the running subscription, drops the new slot, and reports the error.
//!
//! Before the pause, traffic flowing: prepared transactions on the serving side and pinned
//! client sessions are waited for (at most `drain_timeout_ms`; see `wait_no_prepared` and
//! `wait_unpinned`); then `precatchup` waits (at most `catchup_timeout_ms`) until the other
//! side has applied the serving side's current position and is at most `[upgrade]
//! pause_lag_bytes` behind, so the pause covers only the last stretch; then the running
//! subscription is set to `synchronous_commit = on`.
//!
//! The catch-up barrier: X comes from a tiny transaction on the serving side that writes WAL
//! and commits with `synchronous_commit = on` (so every commit record inserted before it,
//! including asynchronously committed ones that `pg_current_wal_lsn()` may not cover yet, is
//! flushed), X = `pg_current_wal_flush_lsn()` after it ([`Logical::barrier_lsn`]). The other
//! side has applied X when the walsender's `pg_stat_replication.replay_lsn` (apply position the
//! subscriber reports) or the slot's `confirmed_flush_lsn` is >= X. The subscriber reports an
//! apply position beyond its last applied transaction only once its own commits are flushed;
//! with the apply worker's default `synchronous_commit = off` that waits for its walwriter
//! (`wal_writer_delay`, 200 ms), hence the switch to `on` for the cutover. The `slot` step
//! flushes the new side's WAL (logical slot creation does), so what was applied is durable
//! before the swap. Measured on 13 <-> 17: about 1-10 ms idle or under write load; a
//! subscription created less than `wal_retrieve_retry_interval` (5 s) earlier may not have an
//! apply worker yet, which `precatchup` waits out before pausing.
//!
//! # Cutover gate
//!
//! The proxy hands the controller its validation results as a [`CutoverGate`]
//! ([`Controller::set_cutover_gate`]). While the gate refuses, `INITIATE CUTOVER` fails with
//! `cutover refused: <reason>` (journaled as an `info` entry; nothing paused or changed), and
//! the unattended plan's Cutover step does not start: the plan waits in phase `replicating`,
//! state `waiting`, step `cutover`, with `cutover waits: <reason>` in `last_error` (one history
//! entry per wait; a changed reason replaces `last_error` in memory), asks again every
//! `poll_interval_ms`, and when the gate passes journals `cutover allowed after ...` and cuts
//! over. PAUSE UPGRADE, ROLLBACK UPGRADE and a health reaction stop the wait; RESUME UPGRADE and
//! a restart wait again. With `approve_cutover` the plan waits for INITIATE CUTOVER as before,
//! and that command is gated. A FORCE RESYNC TABLE under way refuses the cutover the same
//! way, and the cutover itself checks, before its pause, that the forward subscription holds
//! every table of `<p>_pub`, synchronised ([`Logical::forward_problem`]).
//!
//! # FORCE RESYNC TABLE
//!
//! [`Controller::force_resync`] copies one table to the target again while traffic goes on
//! (method: [`Logical::resync_exclude`]). It runs with forward replication and traffic on the
//! source (phases `replicating`, `shifting`, `health_check`, `rolled_back` with forward
//! replication) and weight 0; meanwhile the cutover waits or is refused, and weights above 0
//! wait (plan) or are refused (SHIFT TRAFFIC). Journaled as step `resync:<schema.table>`;
//! one interrupted by a restart runs again when the controller is attached; ROLLBACK UPGRADE
//! stops it and removes `<p>_resync_pub` with the rest.
//!
//! # Resume after a restart
//!
//! [`Controller::attach`] publishes the journaled weight, then: a plan in state `running`
//! goes on from its first step not done; a cutover or rollback interrupted before its swap was
//! journaled is abandoned (running subscription re-enabled, new slot dropped; an unattended
//! plan then retries the cutover, an approved one waits for the next INITIATE CUTOVER); one
//! whose swap was journaled is finished (and the plan goes on after a cutover); states
//! `paused`, `alert`, `waiting` and `error` stay as they are, except `waiting` without
//! `approve_cutover` (the plan waited at the cutover gate), where the plan goes on and waits
//! again.
//!
//! # DDL
//!
//! Logical replication carries no DDL. From the schema copy until the replication is
//! removed (DetachOld, or a rollback before the cutover), every journaled row change
//! publishes to the proxy the gate of `[upgrade] ddl` for the driver
//! ([`TrafficControl::set_ddl`](crate::TrafficControl::set_ddl)): DDL sent through pgshift is
//! refused, run on every node (pgactive), or let through with a warning.
//!
//! # Lag
//!
//! A collector task refreshes, every `poll_interval_ms`, while replication objects exist:
//! `replication_lag_bytes` = `pg_current_wal_lsn() - confirmed_flush_lsn` of the running
//! direction's slot on its publisher; `lag_seconds` = `pg_stat_replication.replay_lag` of the
//! walsender whose `application_name` is the subscription (PostgreSQL docs, "pg_stat_replication";
//! 0 when PostgreSQL shows NULL because an idle subscriber has caught up).

mod databases;
mod plan;
mod replication;
mod resync;
mod switch;
mod watch;

use crate::journal::{
    now_rfc3339, Event, HistoryEntry, Journal, JournalError, StepRow, StepStatus, UpgradeRow,
};
use crate::logical::{Direction, DriverError, Lag, Logical, Preflight, SyncProgress};
use crate::{CutoverGate, Side, Traffic};
use config::Config;
use plan::{Cancel, PlanStep, PlanTask};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use databases::{names_for, DatabaseStatus};
pub use plan::StepKind;

/// What kind of error an upgrade command or step ran into. Each kind is one SQLSTATE on
/// the admin console ([`ControlError::sqlstate`]; PostgreSQL docs, Appendix A "PostgreSQL
/// Error Codes") and one HTTP status on the API ([`ControlError::http_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not possible in the upgrade's current phase or state, or refused by a check (the
    /// validation gate, a missing subscription, a plan already running): nothing changed.
    /// `55000` object_not_in_prerequisite_state, HTTP 409.
    Refused,
    /// A bad argument (a weight out of range, an empty table name). `22023`
    /// invalid_parameter_value, HTTP 400.
    Invalid,
    /// The command ran and did not complete (an abandoned switch, a failed step or
    /// rollback, a server error). `58000` system_error, HTTP 500.
    Failed,
    /// A server could not be reached, or a connection was lost: trying again may work.
    /// `08006` connection_failure, HTTP 503.
    Unavailable,
    /// pgshift's own state (the journal) failed. `XX000` internal_error, HTTP 500.
    Internal,
}

/// An error of an upgrade command or step; the message says what failed and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    /// What kind of error.
    pub kind: ErrorKind,
    /// What failed and what to do (never a password).
    pub message: String,
}

impl ControlError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ControlError {
        ControlError {
            kind,
            message: message.into(),
        }
    }
    /// [`ErrorKind::Refused`].
    pub fn refused(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::Refused, message)
    }
    /// [`ErrorKind::Invalid`].
    pub fn invalid(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::Invalid, message)
    }
    /// [`ErrorKind::Failed`].
    pub fn failed(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::Failed, message)
    }
    /// The SQLSTATE the admin console answers with.
    pub fn sqlstate(&self) -> &'static str {
        match self.kind {
            ErrorKind::Refused => "55000",
            ErrorKind::Invalid => "22023",
            ErrorKind::Failed => "58000",
            ErrorKind::Unavailable => "08006",
            ErrorKind::Internal => "XX000",
        }
    }
    /// The HTTP status the API answers with.
    pub fn http_status(&self) -> u16 {
        match self.kind {
            ErrorKind::Refused => 409,
            ErrorKind::Invalid => 400,
            ErrorKind::Failed | ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
        }
    }
}

impl From<DriverError> for ControlError {
    fn from(e: DriverError) -> Self {
        let kind = if e.transient {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Failed
        };
        ControlError::new(kind, e.message)
    }
}

impl From<JournalError> for ControlError {
    fn from(e: JournalError) -> Self {
        ControlError::new(ErrorKind::Internal, e.to_string())
    }
}

/// What `SHOW UPGRADE STATUS` shows. Read from memory: never waits on I/O.
#[derive(Debug, Clone)]
pub struct UpgradeStatus {
    /// Plan phase (spelled `idle`, `preflight`, ... by [`Phase::as_str`]).
    pub phase: Phase,
    /// State within the phase (spelled `idle`, `running`, ... by [`State::as_str`]).
    pub state: State,
    /// WAL bytes the subscriber of the running direction has not yet confirmed (see module docs).
    pub replication_lag_bytes: Option<i64>,
    /// Replay lag of the running direction in seconds (see module docs).
    pub lag_seconds: Option<f64>,
    /// Percentage of eligible traffic routed to the source (100 - target_weight before the
    /// cutover; 0 after).
    pub source_weight: u32,
    /// Percentage routed to the target (the shift weight before the cutover; 100 after).
    pub target_weight: u32,
    /// Routing epoch (1 at the start, +1 per switch).
    pub epoch: u64,
    /// Last failure, cleared by the next successful command.
    pub last_error: Option<String>,
    /// Last change of phase or state, RFC 3339 UTC.
    pub updated_at: String,
    /// Progress of the plan, 0-100 (100 when done; 0 when idle or rolled back).
    pub percent: u8,
    /// Plan step under way or waited at (e.g. `shift_traffic:2`, `cutover`), if any.
    pub step: Option<String>,
    /// Latest health check verdict (`ok: ...` / `failing (...): ...`), while checks run.
    pub health: Option<String>,
}

/// What a failed health check did (see [`Controller::last_health_reaction`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReaction {
    /// When it was detected (RFC 3339 UTC).
    pub at: String,
    /// Why.
    pub reason: String,
    /// Target weight before and after (before the cutover), in percent.
    pub from_weight: u8,
    /// See `from_weight`.
    pub to_weight: u8,
    /// Milliseconds from the failing verdict to the new weight published (before the
    /// cutover) or to traffic back on the source (after it).
    pub reaction_ms: f64,
    /// `true` after the cutover (a rollback to the source).
    pub rolled_back: bool,
}

/// State of the upgrade within its phase (journal spelling: [`State::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing started.
    Idle,
    /// The plan is under way.
    Running,
    /// Waiting for INITIATE CUTOVER (or at the cutover gate).
    Waiting,
    /// PAUSE UPGRADE, or a failed health check: RESUME UPGRADE goes on.
    Paused,
    /// Replication lag above its limits for longer than `lag_grace_ms`.
    Alert,
    /// The plan finished, or rolled back.
    Done,
    /// A step failed: `last_error` says why and what to do.
    Error,
}

impl State {
    /// Every state, in declaration order.
    pub const ALL: [State; 7] = [
        State::Idle,
        State::Running,
        State::Waiting,
        State::Paused,
        State::Alert,
        State::Done,
        State::Error,
    ];

    /// The journal's and the console's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Running => RUNNING,
            State::Waiting => WAITING,
            State::Paused => PAUSED,
            State::Alert => ALERT,
            State::Done => DONE,
            State::Error => ERROR,
        }
    }

    /// From the journal's spelling; an unknown one reads as `Error` (a journal written by a
    /// newer pgshift: nothing is assumed to run).
    pub fn parse(s: &str) -> State {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .unwrap_or(State::Error)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the journal's spelling (`status.state == "running"`).
impl PartialEq<&str> for State {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Compares with the journal's spelling (`status.phase == "cut_over"`).
impl PartialEq<&str> for Phase {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Plan phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No upgrade started.
    Idle,
    /// ValidateInput: checking both servers (or the source and the provider).
    Preflight,
    /// ProvisionTarget: making the target server.
    Provisioning,
    /// `pg_dump | psql` of the schema.
    SchemaCopy,
    /// ConfigureParams, InstallExtension, InitReplication: publications, subscription.
    InitReplication,
    /// Initial table copy under way.
    Synchronizing,
    /// Every table synchronised; forward replication streaming.
    Replicating,
    /// ShiftTraffic n: publishing a weight.
    Shifting,
    /// HealthCheck n: holding a weight while the checks run.
    HealthCheck,
    /// Cutover under way (or its post-swap steps unfinished).
    CuttingOver,
    /// Traffic on the target; reverse replication target → source running.
    CutOver,
    /// DetachOld: removing replication (no way back afterwards).
    Detaching,
    /// DecommissionSource.
    Decommissioning,
    /// The plan finished: traffic on the target, the source detached.
    Done,
    /// Rollback under way.
    RollingBack,
    /// Traffic on the source (after a cutover: forward replication running again;
    /// before: replication objects removed).
    RolledBack,
}

impl Phase {
    /// Every phase, in plan order (`Idle` first, the rollback phases last).
    pub const ALL: [Phase; 16] = [
        Phase::Idle,
        Phase::Preflight,
        Phase::Provisioning,
        Phase::SchemaCopy,
        Phase::InitReplication,
        Phase::Synchronizing,
        Phase::Replicating,
        Phase::Shifting,
        Phase::HealthCheck,
        Phase::CuttingOver,
        Phase::CutOver,
        Phase::Detaching,
        Phase::Decommissioning,
        Phase::Done,
        Phase::RollingBack,
        Phase::RolledBack,
    ];

    /// From the cutover on: an upgrade that reached state `done` in one of these is complete.
    pub fn after_cutover(self) -> bool {
        matches!(
            self,
            Phase::CutOver | Phase::Detaching | Phase::Decommissioning | Phase::Done
        )
    }

    /// The status/journal spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Preflight => "preflight",
            Phase::Provisioning => "provisioning",
            Phase::SchemaCopy => "schema_copy",
            Phase::InitReplication => "init_replication",
            Phase::Synchronizing => "synchronizing",
            Phase::Replicating => "replicating",
            Phase::Shifting => "shifting",
            Phase::HealthCheck => "health_check",
            Phase::CuttingOver => "cutting_over",
            Phase::CutOver => "cut_over",
            Phase::Detaching => "detaching",
            Phase::Decommissioning => "decommissioning",
            Phase::Done => "done",
            Phase::RollingBack => "rolling_back",
            Phase::RolledBack => "rolled_back",
        }
    }
    /// Parses [`as_str`](Self::as_str); unknown text gives `Idle`.
    pub fn parse(s: &str) -> Phase {
        match s {
            "preflight" => Phase::Preflight,
            "provisioning" => Phase::Provisioning,
            "schema_copy" => Phase::SchemaCopy,
            "init_replication" => Phase::InitReplication,
            "synchronizing" => Phase::Synchronizing,
            "replicating" => Phase::Replicating,
            "shifting" => Phase::Shifting,
            "health_check" => Phase::HealthCheck,
            "cutting_over" => Phase::CuttingOver,
            "cut_over" => Phase::CutOver,
            "detaching" => Phase::Detaching,
            "decommissioning" => Phase::Decommissioning,
            "done" => Phase::Done,
            "rolling_back" => Phase::RollingBack,
            "rolled_back" => Phase::RolledBack,
            _ => Phase::Idle,
        }
    }
    /// Before the target has everything (the cutover is refused).
    fn before_sync(self) -> bool {
        matches!(
            self,
            Phase::Preflight
                | Phase::Provisioning
                | Phase::SchemaCopy
                | Phase::InitReplication
                | Phase::Synchronizing
        )
    }
    /// A phase the plan can go on from (RESUME UPGRADE, or a restart in state `running`).
    fn continues(self) -> bool {
        self.before_sync()
            || matches!(
                self,
                Phase::Replicating
                    | Phase::Shifting
                    | Phase::HealthCheck
                    | Phase::CutOver
                    | Phase::Detaching
                    | Phase::Decommissioning
            )
    }
}

const IDLE: &str = "idle";
const RUNNING: &str = "running";
const WAITING: &str = "waiting";
const PAUSED: &str = "paused";
const ALERT: &str = "alert";
const DONE: &str = "done";
const ERROR: &str = "error";

/// Health figures the plan's holds read.
#[derive(Default)]
struct HealthView {
    /// Latest verdict summary, while checks run.
    summary: Option<String>,
    /// Rounds of checks run, and rounds that failed, since start.
    checks: u64,
    failed: u64,
    /// The latest reaction.
    reaction: Option<HealthReaction>,
}

struct Inner {
    row: UpgradeRow,
    lag: Option<Lag>,
    progress: Option<SyncProgress>,
    /// Plan steps done in the current upgrade.
    done: HashSet<String>,
    /// Plan step under way (or waited at), and how far it is (0-1).
    current: Option<(String, f64)>,
    /// The post-cutover hold is on: health checks guard the target.
    post_watch: bool,
    /// When the latest switch published its new side.
    swapped_at: Option<Instant>,
    health: HealthView,
}

/// The upgrade controller. One per pgshift process; see the module docs.
pub struct Controller {
    cfg: Arc<Config>,
    journal: Journal,
    /// The primary database's driver (`[source] dbname` → `[target] dbname`).
    driver: Logical,
    /// The drivers of every carried database, the primary first (see [`databases`]).
    carried: std::sync::RwLock<Arc<Vec<Logical>>>,
    /// Per-database progress and lag.
    live: Mutex<databases::Live>,
    plan_steps: Vec<PlanStep>,
    inner: Mutex<Inner>,
    /// Serialises commands (start, cutover, rollback, pause, resume) and the plan's cutover.
    op: tokio::sync::Mutex<()>,
    /// Serialises read-modify-write of the upgrade row (journal, then memory) and the weight
    /// published with it.
    row_write: tokio::sync::Mutex<()>,
    traffic: OnceLock<Traffic>,
    /// A switch under way will be retried by the plan (an abandon is not an `error`).
    retrying_switch: AtomicBool,
    plan: Mutex<Option<PlanTask>>,
    background: Mutex<Vec<JoinHandle<()>>>,
    /// `upgrade{id, phase}`: the tracing span that the control plane's tasks and commands run
    /// in, so that every log line they write (JSON: the `span`/`spans` objects) carries the
    /// upgrade id and the phase; both are recorded again with each journaled row.
    span: tracing::Span,
    /// The proxy's validation gate of the cutover ([`Controller::set_cutover_gate`]).
    gate: OnceLock<Arc<dyn CutoverGate>>,
    /// The FORCE RESYNC TABLE under way: its table, and what stops it (a rollback).
    resync: Mutex<Option<(String, Arc<Cancel>)>>,
    /// Held by the FORCE RESYNC TABLE under way (one at a time); a rollback waits for it.
    resync_lock: Arc<tokio::sync::Mutex<()>>,
    /// The source connection of [`Controller::source_current_lsn`] and
    /// [`Controller::wait_target_applied`], kept between calls.
    lsn_client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    /// The furthest forward position seen applied: (upgrade id, epoch, LSN).
    applied_seen: Mutex<(i64, i64, u64)>,
    /// The proxy's capture, for the `mirror` driver ([`Controller::set_capture`]).
    capture: OnceLock<Arc<dyn crate::Capture>>,
    /// The configured replication driver's part of every step (see [`replication`]).
    replication: Box<dyn replication::ReplicationDriver>,
}

/// Records the row's upgrade id and phase on the controller's span.
fn note_row(span: &tracing::Span, row: &UpgradeRow) {
    span.record("id", row.id);
    span.record("phase", row.phase.as_str());
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controller {
    /// Opens (or creates, with its parent directory) the journal at `cfg.journal.path` and
    /// loads the current upgrade from it. Starts nothing: call [`attach`](Self::attach).
    pub fn open(cfg: Arc<Config>) -> Result<Arc<Controller>, ControlError> {
        let replication = replication::for_config(&cfg);
        let (journal, row) = Journal::open(&cfg.journal.path)?;
        let now = now_rfc3339();
        let row = row.unwrap_or(UpgradeRow {
            id: 0,
            phase: Phase::Idle.as_str().into(),
            state: IDLE.into(),
            serving_side: Side::Source.as_str().into(),
            epoch: 1,
            direction: "none".into(),
            last_error: None,
            weight: 0,
            started_at: now.clone(),
            updated_at: now,
        });
        tracing::info!(journal = %cfg.journal.path.display(), phase = %row.phase, state = %row.state,
            side = %row.serving_side, epoch = row.epoch, weight = row.weight, "upgrade journal opened");
        let driver = Logical::new(&cfg);
        // The carried set of the current upgrade, as ValidateInput journaled it.
        let dbs: Vec<String> = journal
            .done_step_detail(row.id, databases::DATABASES_STEP)
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or_else(|| vec![cfg.source.dbname.clone()]);
        let carried = databases::drivers_for(&driver, &cfg.replication.object_prefix, &dbs);
        if carried.len() > 1 {
            tracing::info!(databases = %dbs.join(","), "the upgrade carries {} databases", carried.len());
        }
        let plan_steps = plan::plan_of(&cfg);
        let span = tracing::info_span!(
            parent: None,
            "upgrade",
            id = tracing::field::Empty,
            phase = tracing::field::Empty
        );
        note_row(&span, &row);
        Ok(Arc::new(Controller {
            cfg,
            journal,
            driver,
            carried: std::sync::RwLock::new(Arc::new(carried)),
            live: Mutex::new(databases::Live::default()),
            plan_steps,
            inner: Mutex::new(Inner {
                row,
                lag: None,
                progress: None,
                done: HashSet::new(),
                current: None,
                post_watch: false,
                swapped_at: None,
                health: HealthView::default(),
            }),
            op: tokio::sync::Mutex::new(()),
            row_write: tokio::sync::Mutex::new(()),
            traffic: OnceLock::new(),
            retrying_switch: AtomicBool::new(false),
            plan: Mutex::new(None),
            background: Mutex::new(Vec::new()),
            span,
            gate: OnceLock::new(),
            resync: Mutex::new(None),
            resync_lock: Arc::new(tokio::sync::Mutex::new(())),
            lsn_client: tokio::sync::Mutex::new(None),
            applied_seen: Mutex::new((0, 0, 0)),
            capture: OnceLock::new(),
            replication,
        }))
    }

    /// Hands the controller the proxy's validation gate of the cutover (see [`CutoverGate`]):
    /// from then on `INITIATE CUTOVER` is refused while the gate refuses, and the unattended
    /// plan's Cutover step waits for it. Call it once, before or after
    /// [`attach`](Self::attach) (before, so that a plan resumed by `attach` already sees it);
    /// a second call is ignored (logged). Without a gate nothing is gated.
    pub fn set_cutover_gate(&self, gate: Arc<dyn CutoverGate>) {
        if self.gate.set(gate).is_err() {
            tracing::warn!("Controller::set_cutover_gate called twice; the first gate stays");
        }
    }

    /// Why a cutover may not start now, if it may not: a FORCE RESYNC TABLE under way (the
    /// target's copy of that table is being made again), or the cutover gate's reason.
    fn cutover_refusal(&self) -> Option<String> {
        if let Some((t, _)) = lock(&self.resync).as_ref() {
            return Some(format!(
                "FORCE RESYNC TABLE {t} is under way (the target's copy of that table is being made again)"
            ));
        }
        self.gate.get().and_then(|g| g.check().err())
    }

    /// The side serving traffic and the routing epoch, as journaled. The proxy builds its
    /// initial routing table from this before accepting clients.
    pub fn serving_side(&self) -> (Side, u64) {
        let g = lock(&self.inner);
        (
            Side::parse(&g.row.serving_side).unwrap_or(Side::Source),
            u64::try_from(g.row.epoch).unwrap_or(1),
        )
    }

    /// Whether the upgrade carries database `db` of the source (the client's database name):
    /// sessions of a carried database follow the serving side and may be shifted; sessions of
    /// any other database stay on the source. Cheap (memory only); the proxy asks at each
    /// switch of a session.
    ///
    /// The carried set is resolved by ValidateInput (see [`databases`]); before it, only
    /// `[source] dbname`.
    pub fn carries(&self, db: &str) -> bool {
        db == self.cfg.source.dbname
            || self
                .carried()
                .iter()
                .any(|d| d.database(Side::Source) == db)
    }

    /// The weighted share of eligible traffic for the side that is not serving, as journaled
    /// (0-100). [`attach`](Self::attach) publishes it with
    /// [`TrafficControl::set_weight`](crate::TrafficControl::set_weight).
    pub fn journaled_weight(&self) -> u8 {
        lock(&self.inner).row.weight.clamp(0, 100) as u8
    }

    /// Hands the controller the proxy's traffic control. Publishes the journaled weight, then
    /// (in tokio tasks; call inside a runtime) starts the lag collector and the health checks
    /// and resumes whatever the journal shows in progress (module docs, "Resume after a
    /// restart"). With `upgrade.auto_start` and no upgrade yet, the upgrade starts. A second
    /// call is ignored.
    pub fn attach(self: &Arc<Self>, traffic: Traffic) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                "Controller::attach called outside a tokio runtime; upgrade control not started"
            );
            return;
        };
        let route = traffic.route();
        if self.traffic.set(traffic.clone()).is_err() {
            tracing::warn!("Controller::attach called twice; ignored");
            return;
        }
        let (side, epoch) = self.serving_side();
        if route.side != side || route.epoch < epoch {
            tracing::warn!(
                journal_side = side.as_str(),
                journal_epoch = epoch,
                proxy_side = route.side.as_str(),
                proxy_epoch = route.epoch,
                "the proxy's routing table differs from the journal; build it from serving_side()"
            );
        }
        traffic.set_ddl(self.ddl_gate(&self.row()));
        let w = self.journaled_weight();
        if traffic.weight() != w {
            traffic.set_weight(w);
            tracing::info!(weight = w, "published the journaled traffic weight");
        }
        let collector = rt.spawn(collect(Arc::downgrade(self)).instrument(self.span.clone()));
        let health =
            rt.spawn(watch::health_loop(Arc::downgrade(self)).instrument(self.span.clone()));
        let this = self.clone();
        let span = self.span.clone();
        let resume = rt.spawn(async move { this.resume().await }.instrument(span));
        lock(&self.background).extend([collector, health, resume]);
    }

    /// START UPGRADE: starts the plan in the background and returns at once. Allowed with no
    /// upgrade, after a rollback that removed replication (starts afresh: preflight problems
    /// are the answer, and nothing is changed), or to go on with a plan that stopped (state
    /// `error`, `paused` or `alert`: as RESUME UPGRADE).
    #[tracing::instrument(parent = &self.span, skip_all)]
    pub async fn start_upgrade(self: &Arc<Self>) -> Result<String, ControlError> {
        let _g = self.op.lock().await;
        self.start_locked("operator").await
    }

    async fn start_locked(self: &Arc<Self>, actor: &str) -> Result<String, ControlError> {
        let row = self.row();
        let phase = Phase::parse(&row.phase);
        if self.plan_running() {
            return Err(ControlError::refused(format!(
                "an upgrade is already running (phase {})",
                phase.as_str()
            )));
        }
        let fresh = match phase {
            Phase::Idle => true,
            Phase::RolledBack if row.direction == "none" => true,
            p if p.continues() && row.state != WAITING && row.state != DONE => false,
            Phase::Replicating | Phase::Shifting | Phase::HealthCheck => {
                return Err(ControlError::refused(
                    "the upgrade is replicating and waits for INITIATE CUTOVER (or ROLLBACK UPGRADE)",
                ))
            }
            Phase::CutOver => {
                return Err(ControlError::refused(
                    "traffic is on the target; ROLLBACK UPGRADE to go back to the source",
                ))
            }
            Phase::Done => {
                return Err(ControlError::refused(format!(
                    "upgrade {} is done: traffic is on the target and the source was detached",
                    row.id
                )))
            }
            Phase::RolledBack => {
                return Err(ControlError::refused(
                    "forward replication is running again after a rollback; INITIATE CUTOVER, or ROLLBACK UPGRADE \
                     once more to remove replication before starting afresh",
                ))
            }
            _ => {
                return Err(ControlError::refused(format!(
                    "a {} is unfinished (last error: {}); INITIATE CUTOVER or ROLLBACK UPGRADE to finish it",
                    phase.as_str(),
                    row.last_error.as_deref().unwrap_or("none")
                )))
            }
        };
        if fresh && row.serving_side != Side::Source.as_str() {
            return Err(ControlError::refused(
                "traffic is on the target; an upgrade starts only from the source",
            ));
        }
        if !fresh {
            return self.resume_locked(actor, "START UPGRADE").await;
        }
        // Check before anything is made, so the operator gets every problem at once, as the
        // answer to START UPGRADE.
        let t0 = Instant::now();
        let (failures, notes) = self.validate().await;
        if !failures.is_empty() {
            let list: Vec<String> = failures
                .iter()
                .enumerate()
                .map(|(i, f)| format!("{}) {f}", i + 1))
                .collect();
            return Err(ControlError::refused(format!(
                "preflight found {} problem(s); nothing was changed:\n{}",
                list.len(),
                list.join("\n")
            )));
        }
        let now = now_rfc3339();
        let id = row.id + 1;
        if let Ok(n) = self
            .journal
            .prune(self.cfg.upgrade.history_retention_days)
            .await
        {
            if n > 0 {
                tracing::info!(entries = n, "pruned the upgrade history");
            }
        }
        self.save_row(
            UpgradeRow {
                id,
                phase: Phase::Preflight.as_str().into(),
                state: RUNNING.into(),
                serving_side: row.serving_side.clone(),
                epoch: row.epoch,
                direction: "none".into(),
                last_error: None,
                weight: 0,
                started_at: now.clone(),
                updated_at: now,
            },
            actor,
            "phase",
            &format!("upgrade {id} started"),
        )
        .await?;
        {
            let mut g = lock(&self.inner);
            g.done.clear();
            g.current = None;
            g.progress = None;
        }
        self.journal_databases(actor).await?;
        let key = StepKind::ValidateInput.key();
        self.journal
            .step(id, &key, StepStatus::Started, None, actor)
            .await?;
        self.journal
            .step(
                id,
                &key,
                StepStatus::Done,
                Some(format!(
                    "passed in {} ms: {}",
                    t0.elapsed().as_millis(),
                    notes.join("; ")
                )),
                actor,
            )
            .await?;
        lock(&self.inner).done.insert(key);
        self.spawn_plan(actor);
        let mode = if self.cfg.upgrade.approve_cutover {
            "it stops before the cutover until INITIATE CUTOVER"
        } else {
            "it runs to the end unattended"
        };
        Ok(format!("upgrade started (upgrade {id}); {mode}"))
    }

    /// INITIATE CUTOVER: runs the cutover protocol (module docs) and returns when traffic is on
    /// the target, with the pause in ms, or with the error (traffic then stays on the source).
    /// Allowed once the initial copy is done (phases `replicating`, `shifting`,
    /// `health_check`: a running plan is stopped first and remaining shift steps are
    /// skipped), in `rolled_back` after a rollback from the target, and in `cutting_over`
    /// after the swap (finishes the post-swap steps). After it the plan goes on
    /// (`health_check:cutover`, `detach_old`, `decommission_source`).
    #[tracing::instrument(parent = &self.span, skip_all)]
    pub async fn initiate_cutover(self: &Arc<Self>) -> Result<String, ControlError> {
        let _g = self.op.lock().await;
        let row = self.row();
        let phase = Phase::parse(&row.phase);
        let side = Side::parse(&row.serving_side).unwrap_or(Side::Source);
        let dir = Direction::parse(&row.direction);
        let r =
            match phase {
                Phase::Replicating
                | Phase::Shifting
                | Phase::HealthCheck
                | Phase::RolledBack
                | Phase::CuttingOver
                    if side == Side::Source && dir == Some(Direction::Forward) =>
                {
                    let _ = self
                        .journal
                        .step_event(row.id, "cutover", "operator", "signal", "INITIATE CUTOVER")
                        .await;
                    if let Some(why) = self.cutover_refusal() {
                        let msg = format!("cutover refused: {why}");
                        tracing::warn!("INITIATE CUTOVER: {msg}");
                        let _ = self
                            .journal
                            .step_event(row.id, "cutover", "operator", "info", &msg)
                            .await;
                        return Err(ControlError::refused(msg));
                    }
                    self.stop_plan().await;
                    self.switch(Direction::Forward, "operator").await
                }
                Phase::CuttingOver if side == Side::Target => {
                    self.finish_switch(Direction::Forward, "operator").await
                }
                Phase::CutOver => {
                    return Err(ControlError::refused(format!(
                        "already cut over: traffic is on the target (epoch {})",
                        row.epoch
                    )))
                }
                Phase::Detaching | Phase::Decommissioning | Phase::Done => {
                    return Err(ControlError::refused(format!(
                        "already cut over: traffic is on the target (epoch {}; phase {})",
                        row.epoch,
                        phase.as_str()
                    )))
                }
                Phase::Idle => {
                    return Err(ControlError::refused(
                        "no upgrade in progress; START UPGRADE first",
                    ))
                }
                Phase::RolledBack => return Err(ControlError::refused(
                    "replication was removed by the rollback; START UPGRADE again before a cutover",
                )),
                p if p.before_sync() => {
                    let progress = lock(&self.inner).progress.clone();
                    let extra = match (p, progress) {
                        (Phase::Synchronizing, Some(pr)) => {
                            format!(" ({}/{} tables synchronised)", pr.ready, pr.total)
                        }
                        _ => String::new(),
                    };
                    return Err(ControlError::refused(format!(
                    "cutover needs phase replicating; the upgrade is in phase {}{extra} (state {})",
                    p.as_str(),
                    row.state
                )));
                }
                p => {
                    return Err(ControlError::refused(format!(
                        "cutover not possible in phase {} (state {})",
                        p.as_str(),
                        row.state
                    )))
                }
            };
        if r.is_ok() && self.row().serving_side == Side::Target.as_str() {
            // The plan goes on after the cutover.
            self.spawn_plan("operator");
        }
        r
    }

    /// ROLLBACK UPGRADE, at any phase before `detach_old`; returns when done. After the
    /// cutover: the cutover protocol the other way (traffic back on the source, nothing
    /// written on the target lost, forward replication running again). Before it: stops the
    /// plan, sets the weight to 0, removes every replication object and, when pgshift
    /// provisioned the target, stops it and deletes its data directory. In `rolled_back` with
    /// forward replication running: removes it.
    #[tracing::instrument(parent = &self.span, skip_all)]
    pub async fn rollback(self: &Arc<Self>) -> Result<String, ControlError> {
        let _g = self.op.lock().await;
        let row = self.row();
        let phase = Phase::parse(&row.phase);
        let side = Side::parse(&row.serving_side).unwrap_or(Side::Source);
        let dir = Direction::parse(&row.direction);
        if phase != Phase::Idle {
            let _ = self
                .journal
                .step_event(row.id, "rollback", "operator", "signal", "ROLLBACK UPGRADE")
                .await;
        }
        match phase {
            Phase::Idle => Err(ControlError::refused("no upgrade to roll back")),
            Phase::RolledBack if dir.is_none() => Ok("already rolled back; nothing to do".into()),
            Phase::Detaching | Phase::Decommissioning | Phase::Done => Err(ControlError::refused(format!(
                "rollback is no longer possible: DetachOld removed (or is removing) the replication back to the source \
                 (phase {}); the source does not have what was written on the target since",
                phase.as_str()
            ))),
            Phase::CutOver if side == Side::Target && dir == Some(Direction::Reverse) => {
                self.stop_plan().await;
                lock(&self.inner).post_watch = false;
                let r = self.switch(Direction::Reverse, "operator").await;
                if r.is_ok() {
                    self.forget_cutover().await;
                }
                r
            }
            Phase::CutOver if side == Side::Target => Err(ControlError::refused(
                "traffic is on the target and reverse replication is gone; rollback is not possible",
            )),
            Phase::CuttingOver if side == Side::Target => {
                self.finish_switch(Direction::Forward, "operator").await?;
                let r = self.switch(Direction::Reverse, "operator").await;
                if r.is_ok() {
                    self.forget_cutover().await;
                }
                r
            }
            Phase::RollingBack if side == Side::Target => {
                self.switch(Direction::Reverse, "operator").await
            }
            Phase::RollingBack if dir == Some(Direction::Forward) => {
                self.finish_switch(Direction::Reverse, "operator").await
            }
            _ => self.teardown("operator").await,
        }
    }

    /// PAUSE UPGRADE: stops the running plan at its next safe point (a cutover under way
    /// finishes first) and sets state `paused`; traffic weights stay as they are and the
    /// health checks keep guarding them. RESUME UPGRADE goes on.
    #[tracing::instrument(parent = &self.span, skip_all)]
    pub async fn pause_upgrade(self: &Arc<Self>) -> Result<String, ControlError> {
        let _g = self.op.lock().await;
        let row = self.row();
        if !self.plan_running() {
            return match row.state.as_str() {
                PAUSED | ALERT => Ok(format!("the plan is already stopped (state {})", row.state)),
                WAITING => Err(ControlError::refused(
                    "the plan waits for INITIATE CUTOVER; there is nothing to pause",
                )),
                s => Err(ControlError::refused(format!(
                    "no plan is running (phase {}, state {s})",
                    row.phase
                ))),
            };
        }
        let _ = self
            .journal
            .step_event(row.id, "pause", "operator", "signal", "PAUSE UPGRADE")
            .await;
        self.stop_plan().await;
        let row = self.row();
        let at = lock(&self.inner).current.as_ref().map(|c| c.0.clone());
        let msg = format!(
            "paused at {} (phase {}, weight {} %); RESUME UPGRADE goes on",
            at.as_deref().unwrap_or("a step boundary"),
            row.phase,
            row.weight
        );
        // WAITING with a plan running: the unattended plan waits at the cutover gate.
        if row.state == RUNNING || row.state == WAITING {
            self.save("operator", "phase", &msg, |r| r.state = PAUSED.into())
                .await?;
        }
        Ok(msg)
    }

    /// SHIFT TRAFFIC: the operator sets the weighted share (0-100 %) of eligible traffic on
    /// the side that is not serving, as a shift step of the plan does: journaled with the
    /// upgrade row, then published, so that a restart keeps it and the health checks guard
    /// it (a failing check takes it back, as during the plan's steps). Allowed while
    /// replication keeps the other side current (phases `replicating`, `shifting`,
    /// `health_check`); 0 is always allowed. A running plan's next shift step overrides it.
    ///
    /// Errors: a percentage above 100; another phase; the journal write failing.
    #[tracing::instrument(parent = &self.span, skip_all)]
    pub async fn shift_traffic(self: &Arc<Self>, percent: u8) -> Result<String, ControlError> {
        if percent > 100 {
            return Err(ControlError::invalid(format!(
                "SHIFT TRAFFIC takes a percentage from 0 to 100, not {percent}"
            )));
        }
        let _g = self.op.lock().await;
        let traffic = self.traffic()?;
        let row = self.row();
        let phase = Phase::parse(&row.phase);
        if percent > 0
            && !matches!(
                phase,
                Phase::Replicating | Phase::Shifting | Phase::HealthCheck
            )
        {
            return Err(ControlError::refused(format!(
                "cannot shift traffic in phase {}: the other side is not kept current by replication; START UPGRADE and wait for phase replicating",
                row.phase
            )));
        }
        if percent > 0 {
            if let Some((t, _)) = lock(&self.resync).as_ref() {
                return Err(ControlError::refused(format!(
                    "cannot shift traffic while FORCE RESYNC TABLE {t} is under way: shifted reads would see that table half copied on the target; try again when it is done"
                )));
            }
        }
        let other = Side::parse(&row.serving_side)
            .unwrap_or(Side::Source)
            .other();
        let before = row.weight;
        let msg = format!(
            "SHIFT TRAFFIC: traffic weight {before} → {percent} % on the {}",
            other.as_str()
        );
        {
            let _w = self.row_write.lock().await;
            let mut row = self.row();
            row.weight = i64::from(percent);
            self.write_row_locked(row, "operator", "signal", &msg)
                .await?;
            traffic.set_weight(percent);
        }
        Ok(format!(
            "{percent}% of read-only transactions now go to the {}",
            other.as_str()
        ))
    }

    /// RESUME UPGRADE: goes on with a plan in state `paused`, `alert` or `error` from its
    /// first step not done (a step a health check failed in runs again).
    #[tracing::instrument(parent = &self.span, skip_all)]
    pub async fn resume_upgrade(self: &Arc<Self>) -> Result<String, ControlError> {
        let _g = self.op.lock().await;
        self.resume_locked("operator", "RESUME UPGRADE").await
    }

    async fn resume_locked(
        self: &Arc<Self>,
        actor: &str,
        signal: &str,
    ) -> Result<String, ControlError> {
        let row = self.row();
        let phase = Phase::parse(&row.phase);
        if self.plan_running() {
            return Err(ControlError::refused(format!(
                "the plan is already running (phase {})",
                phase.as_str()
            )));
        }
        if !(phase.continues() && matches!(row.state.as_str(), PAUSED | ALERT | ERROR | RUNNING)) {
            return Err(ControlError::refused(format!(
                "nothing to resume: phase {}, state {}{}",
                phase.as_str(),
                row.state,
                if row.state == WAITING {
                    " (the plan waits for INITIATE CUTOVER)"
                } else {
                    ""
                }
            )));
        }
        let _ = self
            .journal
            .step_event(row.id, "resume", actor, "signal", signal)
            .await;
        let msg = format!("upgrade resumed at phase {}", phase.as_str());
        self.save(actor, "phase", &msg, |r| {
            r.state = RUNNING.into();
            r.last_error = None;
        })
        .await?;
        self.spawn_plan(actor);
        Ok(msg)
    }

    /// Status from memory; never blocks on I/O.
    pub fn status(&self) -> UpgradeStatus {
        let g = lock(&self.inner);
        let on_target = g.row.serving_side == Side::Target.as_str();
        let w = g.row.weight.clamp(0, 100) as u32;
        let phase = Phase::parse(&g.row.phase);
        let checking = matches!(phase, Phase::Shifting | Phase::HealthCheck)
            || (!on_target && w > 0)
            || g.post_watch;
        UpgradeStatus {
            phase,
            state: State::parse(&g.row.state),
            replication_lag_bytes: g.lag.and_then(|l| l.bytes),
            lag_seconds: g.lag.and_then(|l| l.seconds),
            source_weight: if on_target { 0 } else { 100 - w },
            target_weight: if on_target { 100 } else { w },
            epoch: u64::try_from(g.row.epoch).unwrap_or(1),
            last_error: g.row.last_error.clone(),
            updated_at: g.row.updated_at.clone(),
            percent: plan::percent(&self.plan_steps, phase, &g),
            step: g.current.as_ref().map(|c| c.0.clone()),
            health: if checking {
                g.health.summary.clone()
            } else {
                None
            },
        }
    }

    /// Initial-copy progress while `synchronizing`: (tables synchronised, tables). From memory.
    pub fn sync_progress(&self) -> Option<(u64, u64)> {
        lock(&self.inner)
            .progress
            .as_ref()
            .map(|p| (p.ready, p.total))
    }

    /// The latest health check reaction (weight moved back, or rollback after the cutover),
    /// with its reaction time. From memory; `None` before the first in this process.
    pub fn last_health_reaction(&self) -> Option<HealthReaction> {
        lock(&self.inner).health.reaction.clone()
    }

    /// The latest `limit` journal events, oldest first (for an admin `SHOW UPGRADE EVENTS`).
    pub async fn events(&self, limit: usize) -> Result<Vec<Event>, ControlError> {
        Ok(self.journal.events(limit).await?)
    }

    /// `SHOW UPGRADE HISTORY`: the latest `limit` history entries (step start / end / retry /
    /// error, signals, health reactions, phases), oldest first, each with time, upgrade,
    /// actor, kind and step. Kept `upgrade.history_retention_days`.
    pub async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, ControlError> {
        Ok(self.journal.history(limit).await?)
    }

    /// The journaled steps of the current upgrade, in the order they first started.
    pub async fn steps(&self) -> Result<Vec<StepRow>, ControlError> {
        let id = self.row().id;
        Ok(self.journal.steps(id).await?)
    }

    /// The plan of this configuration, in order: (step key, step kind).
    pub fn plan(&self) -> Vec<(String, StepKind)> {
        self.plan_steps
            .iter()
            .map(|s| (s.kind.key(), s.kind))
            .collect()
    }

    /// Runs the preflight checks now, without starting anything (for an admin `CHECK UPGRADE`).
    /// Every database the upgrade would carry is checked (see [`databases`]).
    pub async fn preflight(&self) -> Preflight {
        let (dbs, refused) = match self.resolve_databases().await {
            Ok(dbs) => (dbs, None),
            Err(e) => (vec![self.cfg.source.dbname.clone()], Some(e)),
        };
        let drivers =
            databases::drivers_for(&self.driver, &self.cfg.replication.object_prefix, &dbs);
        let mut pf = self.preflight_carried(&drivers, true).await;
        if let Some(e) = refused {
            pf.failures.insert(0, e);
        }
        pf
    }

    /// Waits until the plan is not running any more (done, waiting for INITIATE CUTOVER,
    /// paused, alert, error or rolled back) and returns the status: for `pgshift upgrade`,
    /// which runs the plan to its end. Call after [`start_upgrade`](Self::start_upgrade).
    pub async fn wait_settled(&self) -> UpgradeStatus {
        loop {
            let st = self.status();
            let busy = st.state == State::Running || self.plan_running();
            if !busy {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the controller's background tasks (plan, collector, health checks, resume)
    /// without touching the journal or the servers, as a process exit would. For a graceful
    /// shutdown, and for tests that simulate a crash. A new [`Controller::open`] on the same
    /// journal resumes.
    pub fn shutdown(&self) {
        if let Some(p) = lock(&self.plan).take() {
            p.handle.abort();
        }
        for h in lock(&self.background).drain(..) {
            h.abort();
        }
    }

    // ------------------------------------------------------------------------------------
    // State helpers
    // ------------------------------------------------------------------------------------

    fn row(&self) -> UpgradeRow {
        lock(&self.inner).row.clone()
    }

    fn traffic(&self) -> Result<Traffic, ControlError> {
        self.traffic.get().cloned().ok_or_else(|| {
            ControlError::refused(
                "the controller is not attached to the proxy yet; try again in a moment",
            )
        })
    }

    fn plan_running(&self) -> bool {
        lock(&self.plan)
            .as_ref()
            .is_some_and(|p| !p.handle.is_finished())
    }

    /// Journals `row` (with an event), then makes it the in-memory state.
    async fn save_row(
        &self,
        row: UpgradeRow,
        actor: &str,
        kind: &str,
        message: &str,
    ) -> Result<UpgradeRow, ControlError> {
        let _w = self.row_write.lock().await;
        self.write_row_locked(row, actor, kind, message).await
    }

    async fn write_row_locked(
        &self,
        mut row: UpgradeRow,
        actor: &str,
        kind: &str,
        message: &str,
    ) -> Result<UpgradeRow, ControlError> {
        row.updated_at = now_rfc3339();
        self.journal
            .save_upgrade(
                row.clone(),
                Some((actor.to_string(), kind.to_string(), message.to_string())),
            )
            .await?;
        note_row(&self.span, &row);
        if let Some(t) = self.traffic.get() {
            t.set_ddl(self.ddl_gate(&row));
        }
        if row.state == ERROR {
            tracing::error!(actor, upgrade = row.id, phase = %row.phase, side = %row.serving_side, epoch = row.epoch, "{message}");
        } else {
            tracing::info!(actor, upgrade = row.id, phase = %row.phase, state = %row.state, side = %row.serving_side, epoch = row.epoch, weight = row.weight, "{message}");
        }
        lock(&self.inner).row = row.clone();
        Ok(row)
    }

    /// The DDL gate for the journaled `row` (module docs, "DDL"): on from the schema copy
    /// while replication objects may exist, off otherwise.
    fn ddl_gate(&self, row: &UpgradeRow) -> crate::DdlGate {
        let phase = Phase::parse(&row.phase);
        let dir = Direction::parse(&row.direction);
        let setting_up = matches!(phase, Phase::SchemaCopy | Phase::InitReplication);
        let replicating = dir.is_some() && !matches!(phase, Phase::Idle | Phase::Done);
        if !setting_up && !replicating {
            return crate::DdlGate::default();
        }
        let ready = dir.is_some() && !setting_up && phase != Phase::Synchronizing;
        self.replication.ddl_gate(self.cfg.upgrade.ddl, ready)
    }

    /// Changes the current row with `f`, journals it, then updates memory.
    async fn save(
        &self,
        actor: &str,
        kind: &str,
        message: &str,
        f: impl FnOnce(&mut UpgradeRow),
    ) -> Result<UpgradeRow, ControlError> {
        let _w = self.row_write.lock().await;
        let mut row = self.row();
        f(&mut row);
        self.write_row_locked(row, actor, kind, message).await
    }

    /// As [`save`](Self::save) for the plan: nothing is written once `cancel` is set
    /// (`Ok(None)`), so a stopped plan never overwrites what stopped it. `publish` runs after
    /// the journal write, before the row lock is released (the weight).
    async fn plan_save(
        &self,
        cancel: &Cancel,
        actor: &str,
        kind: &str,
        message: &str,
        f: impl FnOnce(&mut UpgradeRow),
        publish: impl FnOnce(&UpgradeRow),
    ) -> Result<Option<UpgradeRow>, ControlError> {
        let _w = self.row_write.lock().await;
        if cancel.is_set() {
            return Ok(None);
        }
        let mut row = self.row();
        f(&mut row);
        let row = self.write_row_locked(row, actor, kind, message).await?;
        publish(&row);
        Ok(Some(row))
    }

    async fn set_phase(
        &self,
        actor: &str,
        phase: Phase,
        state: &str,
        message: &str,
    ) -> Result<UpgradeRow, ControlError> {
        self.save(actor, "phase", message, |r| {
            r.phase = phase.as_str().into();
            r.state = state.into();
        })
        .await
    }

    /// Records a failure: state `error`, `last_error`, optionally a phase to return to.
    async fn fail(&self, actor: &str, phase: Option<Phase>, message: &str) {
        let res = self
            .save(actor, "error", message, |r| {
                if let Some(p) = phase {
                    r.phase = p.as_str().into();
                }
                r.state = ERROR.into();
                r.last_error = Some(message.to_string());
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "could not journal the failure");
            let mut g = lock(&self.inner);
            g.row.state = ERROR.into();
            g.row.last_error = Some(format!("{message} (and the journal failed: {e})"));
            g.row.updated_at = now_rfc3339();
        }
    }

    /// Runs one sub-step: journals `started`, runs it, journals `done`/`failed`. Transient
    /// failures (lost connections, objects briefly in use) are retried with exponential backoff
    /// (0.5, 1, 2, 4 s).
    async fn step<T, F, Fut>(&self, actor: &str, key: &str, mut f: F) -> Result<T, ControlError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(T, String), DriverError>>,
    {
        let id = self.row().id;
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            self.journal
                .step(id, key, StepStatus::Started, None, actor)
                .await?;
            match f().await {
                Ok((v, detail)) => {
                    tracing::info!(step = key, "{detail}");
                    self.journal
                        .step(id, key, StepStatus::Done, Some(detail), actor)
                        .await?;
                    return Ok(v);
                }
                Err(e) => {
                    self.journal
                        .step(id, key, StepStatus::Failed, Some(e.message.clone()), actor)
                        .await?;
                    if e.transient && attempt < 5 {
                        tracing::warn!(step = key, attempt, error = %e.message, "step failed; retrying in {} ms", backoff.as_millis());
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                        attempt += 1;
                        continue;
                    }
                    return Err(ControlError::failed(format!(
                        "step {key} failed: {}",
                        e.message
                    )));
                }
            }
        }
    }

    /// After a rollback from the target: the cutover and its hold run again next time.
    async fn forget_cutover(&self) {
        let id = self.row().id;
        let keys = vec![StepKind::Cutover.key(), StepKind::WatchCutover.key()];
        {
            let mut g = lock(&self.inner);
            for k in &keys {
                g.done.remove(k);
            }
            g.current = None;
        }
        let _ = self.journal.reset_steps(id, keys).await;
    }

    // ------------------------------------------------------------------------------------
    // Cutover / switch-back
    // ------------------------------------------------------------------------------------

    // ------------------------------------------------------------------------------------
    // Rollback before cutover
    // ------------------------------------------------------------------------------------

    async fn teardown(&self, actor: &str) -> Result<String, ControlError> {
        let row = self.row();
        if row.serving_side != Side::Source.as_str() {
            return Err(ControlError::refused(
                "traffic is on the target; removing replication now would lose the way back",
            ));
        }
        self.stop_plan().await;
        self.stop_resync().await;
        // Weight 0 and direction 'none' first: "no replication should run, nothing on the
        // target" (a restart continues the teardown).
        let traffic = self.traffic.get().cloned();
        {
            let _w = self.row_write.lock().await;
            let mut r = self.row();
            r.phase = Phase::RollingBack.as_str().into();
            r.state = RUNNING.into();
            r.direction = "none".into();
            r.weight = 0;
            self.write_row_locked(
                r,
                actor,
                "phase",
                "rollback: traffic weight 0, removing replication objects",
            )
            .await?;
            if let Some(t) = &traffic {
                if t.weight() != 0 {
                    t.set_weight(0);
                }
            }
        }
        {
            let mut g = lock(&self.inner);
            g.progress = None;
            g.current = None;
            g.post_watch = false;
        }
        let local = crate::provider::Target::of(&self.cfg);
        let res: Result<Vec<String>, ControlError> = async {
            let mut done = Vec::new();
            // A target pgshift provisions but has not made yet: only the source has objects.
            let target_absent = match &local {
                Some(l) => !l.made_by_pgshift().await?,
                None => false,
            };
            self.replication
                .teardown(self, actor, target_absent, local.is_some())
                .await?;
            done.push("replication objects removed".to_string());
            if let Some(l) = &local {
                let msg = self
                    .step(actor, "deprovision_target", || async {
                        l.remove().await.map(|m| (m.clone(), m))
                    })
                    .await?;
                done.push(msg);
            }
            Ok(done)
        }
        .await;
        match res {
            Ok(done) => {
                let msg = format!("rolled back: {}; traffic on the source", done.join("; "));
                self.save(actor, "phase", &msg, |r| {
                    r.phase = Phase::RolledBack.as_str().into();
                    r.state = DONE.into();
                    r.last_error = None;
                })
                .await?;
                lock(&self.inner).lag = None;
                Ok(msg)
            }
            Err(e) => {
                let msg = format!(
                    "rollback incomplete: {}; run ROLLBACK UPGRADE again",
                    e.message
                );
                self.fail(actor, None, &msg).await;
                Err(ControlError::failed(msg))
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // Resume after restart
    // ------------------------------------------------------------------------------------

    async fn resume(self: Arc<Self>) {
        match self
            .journal
            .prune(self.cfg.upgrade.history_retention_days)
            .await
        {
            Ok(n) if n > 0 => tracing::info!(entries = n, "pruned the upgrade history"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not prune the upgrade history"),
        }
        let id = self.row().id;
        if let Ok(steps) = self.journal.steps(id).await {
            let mut g = lock(&self.inner);
            g.done = steps
                .into_iter()
                .filter(|s| s.status == StepStatus::Done)
                .map(|s| s.key)
                .collect();
        }
        let _g = self.op.lock().await;
        let row = self.row();
        let phase = Phase::parse(&row.phase);
        let side = Side::parse(&row.serving_side).unwrap_or(Side::Source);
        let dir = Direction::parse(&row.direction);
        let actor = "resume";
        let r: Result<(), ControlError> = async {
            match phase {
                Phase::CuttingOver | Phase::RollingBack if row.state == RUNNING || row.state == ERROR => {
                    match (phase, side, dir) {
                        // Swap journaled: finish the post-swap steps; the plan goes on.
                        (Phase::CuttingOver, Side::Target, _) => {
                            self.finish_switch(Direction::Forward, actor).await?;
                            self.spawn_plan(actor);
                        }
                        (Phase::RollingBack, Side::Source, Some(Direction::Forward)) => {
                            self.finish_switch(Direction::Reverse, actor).await?;
                        }
                        // Teardown in progress.
                        (Phase::RollingBack, Side::Source, None) => {
                            self.teardown(actor).await?;
                        }
                        // Interrupted before the swap: abandon.
                        (Phase::CuttingOver, _, _) => {
                            let prev = if self.row().weight > 0 {
                                Phase::HealthCheck
                            } else {
                                Phase::Replicating
                            };
                            // Unattended: the plan tries again (no `error` in between).
                            let retry = !self.cfg.upgrade.approve_cutover;
                            self.retrying_switch.store(retry, Ordering::SeqCst);
                            self.abandon_switch(
                                Direction::Forward,
                                actor,
                                prev,
                                "cutover interrupted by a restart before the swap; cutover abandoned, traffic stays on the source",
                            )
                            .await;
                            self.retrying_switch.store(false, Ordering::SeqCst);
                            if retry {
                                self.spawn_plan(actor);
                            }
                        }
                        (Phase::RollingBack, _, _) => {
                            self.abandon_switch(
                                Direction::Reverse,
                                actor,
                                Phase::CutOver,
                                "rollback interrupted by a restart before the swap; rollback abandoned, traffic stays on the target",
                            )
                            .await;
                        }
                        _ => {}
                    }
                }
                // WAITING without approve_cutover: the plan waited at the cutover gate.
                p if p.continues()
                    && (row.state == RUNNING
                        || (row.state == WAITING && !self.cfg.upgrade.approve_cutover))
                    && !self.plan_running() =>
                {
                    let _ = self.journal.event(actor, "info", &format!("resuming the plan at phase {}", p.as_str())).await;
                    self.spawn_plan(actor);
                }
                Phase::Idle if self.cfg.upgrade.auto_start => {
                    self.start_locked("auto_start").await?;
                }
                _ => {}
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "resuming the upgrade failed");
        }
        drop(_g);
        self.resume_resyncs().await;
    }
}

/// The larger of two optional values (`None` only when both are).
fn max_opt<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b > a { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The lag collector: every `poll_interval_ms`, while a direction of replication should run,
/// reads its lag on its publisher into the in-memory status. Ends when the controller is dropped.
async fn collect(weak: Weak<Controller>) {
    // Connections by (carried database, publisher side).
    let mut clients: std::collections::HashMap<(String, Side), tokio_postgres::Client> =
        std::collections::HashMap::new();
    let mut failures = 0u32;
    loop {
        let Some(this) = weak.upgrade() else { return };
        let interval = Duration::from_millis(this.cfg.upgrade.poll_interval_ms.max(10));
        let dir = Direction::parse(&this.row().direction);
        let lag = match dir {
            None => {
                lock(&this.live).lag.clear();
                None
            }
            Some(d) => match this.replication.lag_probe(&this) {
                // The driver knows (the mirror driver: bytes recorded and not applied yet).
                replication::LagProbe::Known(l) => l,
                replication::LagProbe::Slots => {
                    // Every carried database; the upgrade's lag is the largest of theirs.
                    let side = d.publisher();
                    let mut worst: Option<Lag> = None;
                    for drv in this.carried().iter() {
                        let k = (drv.database(Side::Source).to_string(), side);
                        if clients.get(&k).is_none_or(|c| c.is_closed()) {
                            match drv.connect(side).await {
                                Ok(c) => {
                                    clients.insert(k.clone(), c);
                                }
                                Err(_) => {
                                    clients.remove(&k);
                                }
                            }
                        }
                        let l = match clients.get(&k) {
                            None => None,
                            Some(c) => match drv.lag(c, d).await {
                                Ok(l) => {
                                    failures = 0;
                                    l
                                }
                                Err(e) => {
                                    failures += 1;
                                    if failures % 60 == 1 {
                                        tracing::warn!(error = %e.message, database = %k.0, "lag collector");
                                    }
                                    clients.remove(&k);
                                    None
                                }
                            },
                        };
                        if let Some(l) = l {
                            worst = Some(match worst {
                                None => l,
                                Some(w) => Lag {
                                    bytes: max_opt(w.bytes, l.bytes),
                                    seconds: max_opt(w.seconds, l.seconds),
                                },
                            });
                        }
                        lock(&this.live).lag.insert(k.0, l);
                    }
                    worst
                }
            },
        };
        lock(&this.inner).lag = lag;
        drop(this);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod phase_tests {
    use super::Phase;

    #[test]
    fn every_phase_round_trips_through_its_spelling() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), p, "{}", p.as_str());
        }
    }

    #[test]
    fn every_error_kind_has_one_sqlstate_and_one_http_status() {
        use super::{ControlError, ErrorKind};
        let all = [
            (ErrorKind::Refused, "55000", 409),
            (ErrorKind::Invalid, "22023", 400),
            (ErrorKind::Failed, "58000", 500),
            (ErrorKind::Unavailable, "08006", 503),
            (ErrorKind::Internal, "XX000", 500),
        ];
        for (kind, sqlstate, http) in all {
            let e = ControlError::new(kind, "x");
            assert_eq!(
                (e.sqlstate(), e.http_status()),
                (sqlstate, http),
                "{kind:?}"
            );
        }
        let lost = crate::logical::DriverError::temporary("connection lost");
        assert_eq!(ControlError::from(lost).kind, ErrorKind::Unavailable);
    }

    #[test]
    fn every_state_round_trips_through_its_spelling() {
        for st in super::State::ALL {
            assert_eq!(super::State::parse(st.as_str()), st, "{st}");
        }
        assert_eq!(super::State::parse("from the future"), super::State::Error);
    }
}
