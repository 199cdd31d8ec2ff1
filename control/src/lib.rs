//! The upgrade control plane: the plan, its journal, and the replication drivers.
//!
//! `control` never sees the proxy's types. It steers traffic only through
//! [`TrafficControl`], which the proxy implements over its routing table.
//!
//! * [`controller`]: [`Controller`], the plan (ValidateInput → ProvisionTarget →
//!   ConfigureParams → InstallExtension → InitReplication → WaitForSync → (ShiftTraffic n →
//!   HealthCheck n)* → Cutover → DetachOld → DecommissionSource), the cutover and rollback
//!   protocol, pause / resume, resume after restart, the in-memory status and progress.
//! * [`health`]: the checks that guard the weighted shift and the time after the cutover.
//! * [`journal`]: the SQLite journal every step transition is written to before it takes
//!   effect, and the upgrade history.
//! * [`logical`]: the native logical replication driver (publications, subscriptions, slots,
//!   schema copy, sequences, lag).
//! * [`provider`]: the `local` provider (initdb / pg_ctl): ProvisionTarget, the rollback's
//!   removal of what it made, DecommissionSource, the final dump.
//!
//! Use from the proxy: [`Controller::open`] at start-up, build the routing table from
//! [`Controller::serving_side`], start accepting clients, then [`Controller::attach`] the
//! proxy's [`TrafficControl`] (inside the tokio runtime). With mirroring on, hand the
//! controller the validation results as a [`CutoverGate`] ([`Controller::set_cutover_gate`],
//! before `attach`); the mirror's lag-aware re-check reads [`Controller::source_current_lsn`]
//! and [`Controller::wait_target_applied`]; `FORCE RESYNC TABLE` is
//! [`Controller::force_resync`].

use std::sync::Arc;

/// Which server traffic goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The old major.
    Source,
    /// The new major.
    Target,
}

impl Side {
    /// `source` / `target` (the journal's and the status's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Target,
            Side::Target => Side::Source,
        }
    }
    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "source" => Some(Side::Source),
            "target" => Some(Side::Target),
            _ => None,
        }
    }
}

/// A snapshot of the proxy's routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteState {
    /// Side that new transactions go to.
    pub side: Side,
    /// Incremented by every published change of `side`.
    pub epoch: u64,
    /// While true, sessions hold new transactions in the proxy (they are not refused).
    pub paused: bool,
}

/// What the control plane may do to client traffic. Implemented by the proxy.
///
/// All methods are cheap and non-blocking: they publish a new routing table or read
/// counters. Waiting (drain, catch-up) is the control plane's job.
///
/// The drain is only sound if a session that is about to start a transaction is counted by
/// [`busy_sessions`](Self::busy_sessions) *before* it reads the routing table for it (or both
/// happen under the lock that [`pause`](Self::pause) takes): the control plane calls `pause()`
/// and then reads `busy_sessions()`, so either it sees the session busy and waits for it, or
/// the session sees `paused` and holds. A session that read "not paused, source" and became
/// busy only afterwards could commit on the source after the catch-up barrier, and that write
/// would not reach the target. (With sequentially consistent atomics: increment the busy
/// counter, then load the table; decrement when the transaction ends, i.e. at
/// `ReadyForQuery` `I`.)
pub trait TrafficControl: Send + Sync + 'static {
    /// The routing table in force.
    fn route(&self) -> RouteState;
    /// Publish `paused = true`: sessions that are idle (ReadyForQuery status `I`, nothing in
    /// flight) keep their next message in the proxy until [`resume`](Self::resume) or
    /// [`switch_to`](Self::switch_to). Transactions already open run on.
    fn pause(&self);
    /// [`pause`](Self::pause) for a switch to `to`: the same pause, and a hint that sessions
    /// held meanwhile may open and authenticate their connection to `to` (with their state
    /// replayed) before the swap, so that they go on the moment [`switch_to`](Self::switch_to)
    /// publishes `to`. The default is a plain pause.
    fn pause_for_switch(&self, to: Side) {
        let _ = to;
        self.pause();
    }
    /// Publish `paused = false` with the same side and epoch.
    fn resume(&self);
    /// Publish a new table: `side`, epoch `epoch`, not paused. `epoch` is the new table's epoch
    /// (the control plane passes the current epoch + 1, after journaling it). Each session moves
    /// to `side` at its next transaction boundary, replaying its startup parameters, SETs and
    /// prepared statements there.
    fn switch_to(&self, side: Side, epoch: u64);
    /// Number of client sessions inside a transaction or with a message in flight to a backend.
    /// After `pause`, the cutover waits for this to reach 0.
    fn busy_sessions(&self) -> usize;
    /// Percentage (0..=100) of eligible traffic to send to the side that is *not* serving,
    /// ahead of a cutover (DESIGN.md "Weighted shift"). With one-way replication only
    /// transactions the classifier proves read-only are eligible; with bidirectional
    /// replication whole sessions are. 0 (the default) = everything on the serving side.
    ///
    /// Publishes a table with the same side, epoch and `paused` flag. The control plane
    /// journals every weight before it publishes it, publishes the journaled weight in
    /// [`Controller::attach`] (a restarted proxy starts at 0), lowers it within a second of a
    /// failed health check, and sets it to 0 inside the cutover pause just before
    /// [`switch_to`](Self::switch_to) (and after a rollback), so the new serving side starts
    /// with everything.
    fn set_weight(&self, _percent: u8) {}
    /// The weight in force (see [`set_weight`](Self::set_weight)).
    fn weight(&self) -> u8 {
        0
    }
    /// Cumulative client traffic counters per side, for health checks (which take deltas
    /// over `[health] window_ms`; counters that go backwards restart the window). Called
    /// every `[health] interval_ms` while traffic is shifted or right after a cutover: keep it
    /// cheap (atomics, a recent-window p99).
    fn stats(&self) -> TrafficStats {
        TrafficStats::default()
    }
    /// Client sessions holding state that cannot move to another server (temporary tables,
    /// session-level advisory locks, `WITH HOLD` cursors): a switch waits for them (up to
    /// `[upgrade] drain_timeout_ms`), then refuses or ends them (`[upgrade] pinned`). Cheap:
    /// read from memory.
    fn pinned(&self) -> Vec<PinnedSession> {
        Vec::new()
    }
    /// Ends every pinned session with a FATAL ErrorResponse (SQLSTATE 57P01) whose message
    /// is `message`, and closes its backend connection; returns how many were ended. Used by
    /// a switch under `[upgrade] pinned = "terminate"` once the drain deadline has passed.
    fn end_pinned(&self, message: &str) -> usize {
        let _ = message;
        0
    }
    /// What sessions do with DDL they send from now on (see [`DdlGate`]). The controller
    /// publishes it whenever the journaled phase or direction changes it (and at
    /// [`Controller::attach`]). Cheap: one atomic store.
    fn set_ddl(&self, gate: DdlGate) {
        let _ = gate;
    }
}

/// What the proxy does with a DDL statement a client sends: published by the controller
/// from `[upgrade] ddl` and the replication driver while replication runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DdlGate {
    pub action: DdlAction,
    /// `TRUNCATE` counts as DDL (pgactive replicates it only through its DDL replication).
    pub truncate: bool,
}

/// [`DdlGate::action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DdlAction {
    /// Nothing replicates (or the driver replays DDL itself): forwarded unlooked-at.
    #[default]
    Off,
    /// Refused with SQLSTATE 55000 (`object_not_in_prerequisite_state`) and the reason.
    Block,
    /// Forwarded; a warning is logged with the statement's first words.
    Warn,
}

impl DdlGate {
    /// The gate in one byte (for an atomic): action in the low bits, `truncate` in bit 3.
    pub fn to_bits(self) -> u8 {
        let a = match self.action {
            DdlAction::Off => 0,
            DdlAction::Block => 1,
            DdlAction::Warn => 2,
        };
        a | if self.truncate { 8 } else { 0 }
    }

    /// The inverse of [`to_bits`](Self::to_bits); an unknown action reads as `Off`.
    pub fn from_bits(b: u8) -> DdlGate {
        let action = match b & 7 {
            1 => DdlAction::Block,
            2 => DdlAction::Warn,
            _ => DdlAction::Off,
        };
        DdlGate {
            action,
            truncate: b & 8 != 0,
        }
    }
}

/// A client session that holds state a backend switch would lose ([`TrafficControl::pinned`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedSession {
    /// pgshift's pid of the session (the `BackendKeyData` pid its client was given).
    pub pid: i32,
    /// Login name and database of the session.
    pub user: String,
    pub database: String,
    /// What pins it, e.g. `temporary tables, session advisory locks`.
    pub reason: String,
}

/// Client traffic through the proxy to one side, counted since start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SideStats {
    /// Units of work completed (ReadyForQuery with nothing in flight).
    pub transactions: u64,
    /// Units that ended with an ErrorResponse from the server.
    pub errors: u64,
    /// 99th percentile of unit latency over the recent window, in ms (0 when no traffic).
    pub p99_ms: f64,
}

/// [`SideStats`] of both sides.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrafficStats {
    pub source: SideStats,
    pub target: SideStats,
}

/// The proxy's traffic control, as handed to [`Controller::attach`].
pub type Traffic = Arc<dyn TrafficControl>;

/// Says whether a cutover may start now: the proxy's validation results (mirroring with result
/// comparison, `[validation]`), handed to [`Controller::set_cutover_gate`].
///
/// `INITIATE CUTOVER` is refused while [`check`](Self::check) returns `Err(reason)`, with the
/// error `cutover refused: <reason>`; the unattended plan's Cutover step waits instead (state
/// `waiting`, `cutover waits: <reason>` in the status's `last_error` and once in the history),
/// asks again every `[upgrade] poll_interval_ms`, and cuts over by itself once it returns
/// `Ok(())`. PAUSE UPGRADE and ROLLBACK UPGRADE work while it waits. A rollback back to the
/// source is never gated.
///
/// Called from the control plane's tasks, at most every `poll_interval_ms` while the plan
/// waits and once per `INITIATE CUTOVER`: it must not block (read counters, no I/O). The
/// reason is shown to the operator as is: say what is wrong and what the limit is, e.g.
/// `validation error rate 0.8 % is above [validation] error_threshold 0.1 %`.
pub trait CutoverGate: Send + Sync {
    /// `Ok(())` when a cutover may start now, else `Err(reason)`.
    fn check(&self) -> Result<(), String>;
}

pub mod connect;
pub mod controller;
pub mod files;
pub mod health;
pub mod journal;
pub mod logical;
pub mod provider;
pub mod secrets;

pub use controller::{
    ControlError, Controller, ErrorKind, HealthReaction, Phase, State, StepKind, UpgradeStatus,
};
pub use journal::{Event, EventData, HistoryEntry};

/// Where the proxy's capture for the `mirror` replication driver stands
/// ([`Capture::state`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureState {
    /// Generation of the queue in use (0: none yet). Each initial copy starts a new one.
    pub gen: u64,
    /// The side whose committed write transactions are recorded (`None`: not capturing).
    pub from: Option<Side>,
    /// Whether the recorded transactions are being applied on the other side.
    pub applying: bool,
    /// Seq of the last transaction recorded in the queue (0: none).
    pub captured: u64,
    /// Seq of the last transaction applied on the other side (exactly once: kept in a table
    /// on that side, in the same transaction as the applied one).
    pub applied: u64,
    /// Bytes recorded and not applied yet (queue positions).
    pub lag_bytes: u64,
    /// Why applying stopped (a transaction failed on the other side though it committed
    /// on the capturing side, or transactions were in flight when pgshift stopped), if it did.
    pub failed: Option<String>,
}

/// The proxy's capture of committed write transactions, for the `mirror` replication driver
/// (`[replication] driver = "mirror"`; handed over with
/// [`Controller::set_capture`](controller::Controller::set_capture)). The proxy records every
/// transaction committed through it on the capturing side into an on-disk queue, and applies
/// them on the other side in commit order. Errors are messages for the operator.
pub trait Capture: Send + Sync {
    /// Starts recording generation `gen` on side `from` (a new, empty queue). Called while
    /// traffic is paused and drained, so that no transaction straddles the start.
    fn start(&self, gen: u64, from: Side) -> Result<(), String>;
    /// Starts applying generation `gen` on the other side (after its initial copy), from the
    /// seq recorded there as applied.
    fn apply(&self, gen: u64) -> Result<(), String>;
    /// Stops recording and applying; `remove` deletes the queue's files too.
    fn stop(&self, remove: bool);
    /// Where capture and apply stand (from memory).
    fn state(&self) -> CaptureState;
}
