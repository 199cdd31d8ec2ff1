//! The upgrade controller: runs the plan, the cutover and the rollback, journals every step
//! before it takes effect, resumes after a restart, and keeps the in-memory status that
//! `SHOW UPGRADE STATUS` reads.
//!
//! # Phases
//!
//! `idle` → `preflight` → `schema_copy` → `init_replication` → `synchronizing` → `replicating`
//! → (`INITIATE CUTOVER`) `cutting_over` → `cut_over` → (`ROLLBACK UPGRADE`) `rolling_back` →
//! `rolled_back` (forward replication running again: `INITIATE CUTOVER` allowed again; a second
//! `ROLLBACK UPGRADE` removes replication). `ROLLBACK UPGRADE` before the cutover stops the plan
//! and removes every replication object (`rolled_back`, nothing running; `START UPGRADE` then
//! starts afresh, emptying the target's copies of the tables before the new initial copy).
//!
//! States: `idle` (nothing started), `running` (a step is under way), `waiting` (for the operator:
//! replication synchronised, ready for cutover), `done` (cut over, or rolled back), `error` (the
//! last step failed: `last_error` says why and what to do).
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
//! `slot` (create the reverse slot fresh), `swap` (journal side + epoch, then
//! [`TrafficControl::switch_to`](crate::TrafficControl::switch_to)), then after the pause
//! `new_sub` (subscription of the other direction on that slot, `copy_data = false`) and
//! `drop_old_sub`. Any failure before `swap` resumes traffic on the side it was on, re-enables
//! the running subscription, drops the new slot, and reports the error.
//!
//! Before the pause, `precatchup` waits (at most `catchup_timeout_ms`, traffic flowing) until
//! the other side has applied the serving side's current position, so the pause covers only
//! the last stretch; then the running subscription is set to `synchronous_commit = on`.
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
//! # Lag
//!
//! A collector task refreshes, every `poll_interval_ms`, while replication objects exist:
//! `replication_lag_bytes` = `pg_current_wal_lsn() - confirmed_flush_lsn` of the running
//! direction's slot on its publisher; `lag_seconds` = `pg_stat_replication.replay_lag` of the
//! walsender whose `application_name` is the subscription (PostgreSQL docs, "pg_stat_replication";
//! 0 when PostgreSQL shows NULL because an idle subscriber has caught up).

use crate::journal::{
    now_rfc3339, Durability, Event, Journal, JournalError, StepRow, StepStatus, UpgradeRow,
};
use crate::logical::{fmt_lsn, Direction, DriverError, Lag, Logical, Preflight, SyncProgress};
use crate::{Side, Traffic};
use config::Config;
use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// An error of an upgrade command or step; the message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ControlError(pub String);

impl From<DriverError> for ControlError {
    fn from(e: DriverError) -> Self {
        ControlError(e.message)
    }
}

impl From<JournalError> for ControlError {
    fn from(e: JournalError) -> Self {
        ControlError(e.to_string())
    }
}

/// What `SHOW UPGRADE STATUS` shows. Read from memory: never waits on I/O.
#[derive(Debug, Clone)]
pub struct UpgradeStatus {
    /// Plan phase: `idle`, `preflight`, `schema_copy`, `init_replication`, `synchronizing`,
    /// `replicating`, `cutting_over`, `cut_over`, `rolling_back`, `rolled_back`.
    pub phase: String,
    /// `idle`, `running`, `waiting`, `done` or `error`.
    pub state: String,
    /// WAL bytes the subscriber of the running direction has not yet confirmed (see module docs).
    pub replication_lag_bytes: Option<i64>,
    /// Replay lag of the running direction in seconds (see module docs).
    pub lag_seconds: Option<f64>,
    /// Percentage of new transactions routed to the source (100 or 0 with the logical driver).
    pub source_weight: u32,
    /// Percentage routed to the target.
    pub target_weight: u32,
    /// Routing epoch (1 at the start, +1 per switch).
    pub epoch: u64,
    /// Last failure, cleared by the next successful command.
    pub last_error: Option<String>,
    /// Last change of phase or state, RFC 3339 UTC.
    pub updated_at: String,
}

/// Plan phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No upgrade started.
    Idle,
    /// Checking both servers.
    Preflight,
    /// `pg_dump | psql` of the schema.
    SchemaCopy,
    /// Creating publications and the subscription.
    InitReplication,
    /// Initial table copy under way.
    Synchronizing,
    /// Every table synchronised; forward replication streaming; ready for cutover.
    Replicating,
    /// Cutover under way (or its post-swap steps unfinished).
    CuttingOver,
    /// Traffic on the target; reverse replication target → source running.
    CutOver,
    /// Rollback under way.
    RollingBack,
    /// Traffic on the source (after a cutover: forward replication running again;
    /// before: replication objects removed).
    RolledBack,
}

impl Phase {
    /// The status/journal spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Preflight => "preflight",
            Phase::SchemaCopy => "schema_copy",
            Phase::InitReplication => "init_replication",
            Phase::Synchronizing => "synchronizing",
            Phase::Replicating => "replicating",
            Phase::CuttingOver => "cutting_over",
            Phase::CutOver => "cut_over",
            Phase::RollingBack => "rolling_back",
            Phase::RolledBack => "rolled_back",
        }
    }
    /// Parses [`as_str`](Self::as_str); unknown text gives `Idle`.
    pub fn parse(s: &str) -> Phase {
        match s {
            "preflight" => Phase::Preflight,
            "schema_copy" => Phase::SchemaCopy,
            "init_replication" => Phase::InitReplication,
            "synchronizing" => Phase::Synchronizing,
            "replicating" => Phase::Replicating,
            "cutting_over" => Phase::CuttingOver,
            "cut_over" => Phase::CutOver,
            "rolling_back" => Phase::RollingBack,
            "rolled_back" => Phase::RolledBack,
            _ => Phase::Idle,
        }
    }
    fn is_plan(self) -> bool {
        matches!(
            self,
            Phase::Preflight | Phase::SchemaCopy | Phase::InitReplication | Phase::Synchronizing
        )
    }
}

const IDLE: &str = "idle";
const RUNNING: &str = "running";
const WAITING: &str = "waiting";
const DONE: &str = "done";
const ERROR: &str = "error";

struct Inner {
    row: UpgradeRow,
    lag: Option<Lag>,
    progress: Option<SyncProgress>,
}

/// The upgrade controller. One per pgshift process; see the module docs.
pub struct Controller {
    cfg: Arc<Config>,
    journal: Journal,
    driver: Logical,
    inner: Mutex<Inner>,
    /// Serialises commands (start, cutover, rollback, resume).
    op: tokio::sync::Mutex<()>,
    traffic: OnceLock<Traffic>,
    plan: Mutex<Option<JoinHandle<()>>>,
    background: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Outcome of a switch attempt before the swap.
struct Abandon {
    reason: String,
    resumed: bool,
}

impl Controller {
    /// Opens (or creates, with its parent directory) the journal at `cfg.journal.path` and
    /// loads the current upgrade from it. Starts nothing: call [`attach`](Self::attach).
    pub fn open(cfg: Arc<Config>) -> Result<Arc<Controller>, ControlError> {
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
            started_at: now.clone(),
            updated_at: now,
        });
        tracing::info!(journal = %cfg.journal.path.display(), phase = %row.phase, state = %row.state,
            side = %row.serving_side, epoch = row.epoch, "upgrade journal opened");
        let driver = Logical::new(&cfg);
        Ok(Arc::new(Controller {
            cfg,
            journal,
            driver,
            inner: Mutex::new(Inner {
                row,
                lag: None,
                progress: None,
            }),
            op: tokio::sync::Mutex::new(()),
            traffic: OnceLock::new(),
            plan: Mutex::new(None),
            background: Mutex::new(Vec::new()),
        }))
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

    /// Hands the controller the proxy's traffic control. Then (in tokio tasks; call inside a
    /// runtime) it starts the lag collector and resumes whatever the journal shows in progress:
    /// a plan keeps going from the step it stood on; a cutover or rollback interrupted before
    /// its swap was journaled is abandoned (the running subscription is re-enabled, the new slot
    /// dropped, `last_error` says so); one whose swap was journaled is finished. With
    /// `upgrade.auto_start` and no upgrade yet, the upgrade starts. A second call is ignored.
    pub fn attach(self: &Arc<Self>, traffic: Traffic) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                "Controller::attach called outside a tokio runtime; upgrade control not started"
            );
            return;
        };
        let route = traffic.route();
        if self.traffic.set(traffic).is_err() {
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
        let collector = rt.spawn(collect(Arc::downgrade(self)));
        let this = self.clone();
        let resume = rt.spawn(async move { this.resume().await });
        lock(&self.background).extend([collector, resume]);
    }

    /// START UPGRADE: starts the plan in the background and returns at once. Allowed with no
    /// upgrade, after a rollback that removed replication (starts afresh), or to retry a plan
    /// step that failed (resumes there).
    pub async fn start_upgrade(self: &Arc<Self>) -> Result<String, ControlError> {
        let _g = self.op.lock().await;
        self.start_locked("operator").await
    }

    async fn start_locked(self: &Arc<Self>, actor: &str) -> Result<String, ControlError> {
        let row = self.row();
        let phase = Phase::parse(&row.phase);
        if self.plan_running() {
            return Err(ControlError(format!(
                "an upgrade is already running (phase {})",
                phase.as_str()
            )));
        }
        let fresh = match phase {
            Phase::Idle => true,
            Phase::RolledBack if row.direction == "none" => true,
            p if p.is_plan() => false,
            Phase::Replicating => {
                return Err(ControlError(
                    "the upgrade is already replicating and synchronised; INITIATE CUTOVER, or ROLLBACK UPGRADE".into(),
                ))
            }
            Phase::CutOver => {
                return Err(ControlError(
                    "the upgrade is done: traffic is on the target; ROLLBACK UPGRADE to go back to the source".into(),
                ))
            }
            Phase::RolledBack => {
                return Err(ControlError(
                    "forward replication is running again after a rollback; INITIATE CUTOVER, or ROLLBACK UPGRADE \
                     once more to remove replication before starting afresh"
                        .into(),
                ))
            }
            _ => {
                return Err(ControlError(format!(
                    "a {} is unfinished (last error: {}); INITIATE CUTOVER or ROLLBACK UPGRADE to finish it",
                    phase.as_str(),
                    row.last_error.as_deref().unwrap_or("none")
                )))
            }
        };
        if fresh && row.serving_side != Side::Source.as_str() {
            return Err(ControlError(
                "traffic is on the target; an upgrade starts only from the source".into(),
            ));
        }
        if fresh {
            // Check before anything is made, so the operator gets every problem at once,
            // as the answer to START UPGRADE.
            let pf = self.driver.preflight().await;
            if !pf.failures.is_empty() {
                let list: Vec<String> = pf
                    .failures
                    .iter()
                    .enumerate()
                    .map(|(i, f)| format!("{}) {f}", i + 1))
                    .collect();
                return Err(ControlError(format!(
                    "preflight found {} problem(s); nothing was changed:\n{}",
                    list.len(),
                    list.join("\n")
                )));
            }
        }
        let msg = if fresh {
            let now = now_rfc3339();
            let id = row.id + 1;
            self.save_row(
                UpgradeRow {
                    id,
                    phase: Phase::Preflight.as_str().into(),
                    state: RUNNING.into(),
                    serving_side: row.serving_side.clone(),
                    epoch: row.epoch,
                    direction: "none".into(),
                    last_error: None,
                    started_at: now.clone(),
                    updated_at: now,
                },
                actor,
                "phase",
                &format!("upgrade {id} started"),
            )
            .await?;
            format!("upgrade started (upgrade {id})")
        } else {
            self.save(
                actor,
                "phase",
                &format!("upgrade resumed at phase {}", phase.as_str()),
                |r| {
                    r.state = RUNNING.into();
                    r.last_error = None;
                },
            )
            .await?;
            format!("upgrade resumed at phase {}", phase.as_str())
        };
        self.spawn_plan(actor);
        Ok(msg)
    }

    /// INITIATE CUTOVER: runs the cutover protocol (module docs) and returns when traffic is on
    /// the target, with the pause in ms, or with the error (traffic then stays on the source).
    /// Allowed in phase `replicating`, or `rolled_back` after a rollback from the target; in
    /// `cutting_over` after the swap it finishes the post-swap steps.
    pub async fn initiate_cutover(self: &Arc<Self>) -> Result<String, ControlError> {
        let _g = self.op.lock().await;
        let row = self.row();
        let phase = Phase::parse(&row.phase);
        let side = Side::parse(&row.serving_side).unwrap_or(Side::Source);
        let dir = Direction::parse(&row.direction);
        match phase {
            Phase::Replicating | Phase::RolledBack | Phase::CuttingOver
                if side == Side::Source && dir == Some(Direction::Forward) =>
            {
                self.switch(Direction::Forward, "operator").await
            }
            Phase::CuttingOver if side == Side::Target => {
                self.finish_switch(Direction::Forward, "operator").await
            }
            Phase::CutOver => Err(ControlError(format!(
                "already cut over: traffic is on the target (epoch {})",
                row.epoch
            ))),
            Phase::Idle => Err(ControlError(
                "no upgrade in progress; START UPGRADE first".into(),
            )),
            Phase::RolledBack => Err(ControlError(
                "replication was removed by the rollback; START UPGRADE again before a cutover"
                    .into(),
            )),
            p if p.is_plan() => {
                let progress = lock(&self.inner).progress.clone();
                let extra = match (p, progress) {
                    (Phase::Synchronizing, Some(pr)) => {
                        format!(" ({}/{} tables synchronised)", pr.ready, pr.total)
                    }
                    _ => String::new(),
                };
                Err(ControlError(format!(
                    "cutover needs phase replicating; the upgrade is in phase {}{extra} (state {})",
                    p.as_str(),
                    row.state
                )))
            }
            p => Err(ControlError(format!(
                "cutover not possible in phase {} (state {})",
                p.as_str(),
                row.state
            ))),
        }
    }

    /// ROLLBACK UPGRADE, at any phase; returns when done. After the cutover: the cutover protocol
    /// the other way (traffic back on the source, nothing written on the target lost, forward
    /// replication running again). Before it: stops the plan and removes every replication
    /// object (publications, subscriptions, slots). In `rolled_back` with forward replication
    /// running: removes it.
    pub async fn rollback(self: &Arc<Self>) -> Result<String, ControlError> {
        let _g = self.op.lock().await;
        let row = self.row();
        let phase = Phase::parse(&row.phase);
        let side = Side::parse(&row.serving_side).unwrap_or(Side::Source);
        let dir = Direction::parse(&row.direction);
        match phase {
            Phase::Idle => Err(ControlError("no upgrade to roll back".into())),
            Phase::RolledBack if dir.is_none() => Ok("already rolled back; nothing to do".into()),
            Phase::CutOver => self.switch(Direction::Reverse, "operator").await,
            Phase::CuttingOver if side == Side::Target => {
                self.finish_switch(Direction::Forward, "operator").await?;
                self.switch(Direction::Reverse, "operator").await
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

    /// Status from memory; never blocks on I/O.
    pub fn status(&self) -> UpgradeStatus {
        let g = lock(&self.inner);
        let on_target = g.row.serving_side == Side::Target.as_str();
        UpgradeStatus {
            phase: g.row.phase.clone(),
            state: g.row.state.clone(),
            replication_lag_bytes: g.lag.and_then(|l| l.bytes),
            lag_seconds: g.lag.and_then(|l| l.seconds),
            source_weight: if on_target { 0 } else { 100 },
            target_weight: if on_target { 100 } else { 0 },
            epoch: u64::try_from(g.row.epoch).unwrap_or(1),
            last_error: g.row.last_error.clone(),
            updated_at: g.row.updated_at.clone(),
        }
    }

    /// Initial-copy progress while `synchronizing`: (tables synchronised, tables). From memory.
    pub fn sync_progress(&self) -> Option<(u64, u64)> {
        lock(&self.inner)
            .progress
            .as_ref()
            .map(|p| (p.ready, p.total))
    }

    /// The latest `limit` journal events, oldest first (for an admin `SHOW UPGRADE EVENTS`).
    pub async fn events(&self, limit: usize) -> Result<Vec<Event>, ControlError> {
        Ok(self.journal.events(limit).await?)
    }

    /// The journaled steps of the current upgrade, in the order they first started.
    pub async fn steps(&self) -> Result<Vec<StepRow>, ControlError> {
        let id = self.row().id;
        Ok(self.journal.steps(id).await?)
    }

    /// Runs the preflight checks now, without starting anything (for an admin `CHECK UPGRADE`).
    pub async fn preflight(&self) -> Preflight {
        self.driver.preflight().await
    }

    /// Stops the controller's background tasks (plan, collector, resume) without touching the
    /// journal or the servers, as a process exit would. For a graceful shutdown, and for tests
    /// that simulate a crash. A new [`Controller::open`] on the same journal resumes.
    pub fn shutdown(&self) {
        if let Some(h) = lock(&self.plan).take() {
            h.abort();
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
            ControlError(
                "the controller is not attached to the proxy yet; try again in a moment".into(),
            )
        })
    }

    fn plan_running(&self) -> bool {
        lock(&self.plan).as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Journals `row` (with an event), then makes it the in-memory state.
    async fn save_row(
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
        if row.state == ERROR {
            tracing::error!(actor, phase = %row.phase, side = %row.serving_side, epoch = row.epoch, "{message}");
        } else {
            tracing::info!(actor, phase = %row.phase, state = %row.state, side = %row.serving_side, epoch = row.epoch, "{message}");
        }
        lock(&self.inner).row = row.clone();
        Ok(row)
    }

    /// Changes the current row with `f`, journals it, then updates memory.
    async fn save(
        &self,
        actor: &str,
        kind: &str,
        message: &str,
        f: impl FnOnce(&mut UpgradeRow),
    ) -> Result<UpgradeRow, ControlError> {
        let mut row = self.row();
        f(&mut row);
        self.save_row(row, actor, kind, message).await
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

    /// Runs one plan step: journals `started`, runs it, journals `done`/`failed`. Transient
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
                    return Err(ControlError(format!("step {key} failed: {}", e.message)));
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // The plan
    // ------------------------------------------------------------------------------------

    fn spawn_plan(self: &Arc<Self>, actor: &str) {
        let mut slot = lock(&self.plan);
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let this = self.clone();
        let actor = actor.to_string();
        let h = tokio::spawn(async move {
            if let Err(e) = this.plan_steps(&actor).await {
                this.fail(&actor, None, &e.0).await;
            }
        });
        *slot = Some(h);
    }

    async fn plan_steps(&self, actor: &str) -> Result<(), ControlError> {
        let id = self.row().id;
        let done: HashSet<String> = self
            .journal
            .steps(id)
            .await?
            .into_iter()
            .filter(|s| s.status == StepStatus::Done)
            .map(|s| s.key)
            .collect();
        let d = &self.driver;
        let names = d.names().clone();

        if !done.contains("preflight") {
            self.set_phase(actor, Phase::Preflight, RUNNING, "preflight")
                .await?;
            let report = self
                .step(actor, "preflight", || async {
                    let p = d.preflight().await;
                    if p.failures.is_empty() {
                        Ok((p.notes.clone(), format!("passed: {}", p.notes.join("; "))))
                    } else {
                        let list: Vec<String> = p
                            .failures
                            .iter()
                            .enumerate()
                            .map(|(i, f)| format!("{}) {f}", i + 1))
                            .collect();
                        Err(DriverError::new(format!(
                            "{} problem(s): {}",
                            p.failures.len(),
                            list.join(" ")
                        )))
                    }
                })
                .await?;
            for n in report {
                self.journal.event(actor, "info", &n).await?;
            }
        }

        if d.copy_schema_enabled() && !done.contains("schema_copy") {
            self.set_phase(actor, Phase::SchemaCopy, RUNNING, "copying the schema")
                .await?;
            self.step(actor, "schema_copy", || async {
                d.copy_schema().await.map(|m| ((), m))
            })
            .await?;
        }

        if !done.contains("subscription") {
            self.set_phase(
                actor,
                Phase::InitReplication,
                RUNNING,
                "creating publications and the subscription",
            )
            .await?;
            self.step(actor, "publication", || async {
                let created = d
                    .ensure_publication(Side::Source, &names.publication)
                    .await?;
                Ok((
                    (),
                    format!(
                        "publication {} on source {}",
                        names.publication,
                        if created { "created" } else { "exists" }
                    ),
                ))
            })
            .await?;
            self.step(actor, "reverse_publication", || async {
                let created = d
                    .ensure_publication(Side::Target, &names.reverse_publication)
                    .await?;
                Ok((
                    (),
                    format!(
                        "publication {} on target {}",
                        names.reverse_publication,
                        if created { "created" } else { "exists" }
                    ),
                ))
            })
            .await?;
            self.step(actor, "subscription", || async {
                d.ensure_forward_subscription().await.map(|m| ((), m))
            })
            .await?;
        }

        self.save(actor, "phase", "initial copy of the tables", |r| {
            r.phase = Phase::Synchronizing.as_str().into();
            r.state = RUNNING.into();
            r.direction = Direction::Forward.as_str().into();
        })
        .await?;
        let total = self.step(actor, "sync", || self.wait_sync(actor)).await?;
        lock(&self.inner).progress = None;
        self.save(
            actor,
            "phase",
            &format!("synchronised: all {total} tables replicating; ready for INITIATE CUTOVER"),
            |r| {
                r.phase = Phase::Replicating.as_str().into();
                r.state = WAITING.into();
                r.last_error = None;
            },
        )
        .await?;
        Ok(())
    }

    /// Waits until every table of the forward subscription is synchronised. Transient errors
    /// are logged and the wait goes on; it has no deadline (ROLLBACK UPGRADE stops it).
    async fn wait_sync(&self, actor: &str) -> Result<(u64, String), DriverError> {
        let d = &self.driver;
        let interval = Duration::from_millis(self.cfg.upgrade.poll_interval_ms.max(10));
        let mut client = None;
        let mut last_ready = None;
        let mut failures = 0u32;
        loop {
            if client
                .as_ref()
                .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
            {
                client = match d.connect(Side::Target).await {
                    Ok(c) => Some(c),
                    Err(e) if e.transient => {
                        failures += 1;
                        if failures % 20 == 1 {
                            tracing::warn!(error = %e.message, "waiting for the initial copy: cannot reach the target; retrying");
                        }
                        tokio::time::sleep(interval).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
            }
            let Some(c) = client.as_ref() else { continue };
            match d.sync_progress(c).await {
                Ok(p) => {
                    failures = 0;
                    if last_ready != Some(p.ready) {
                        let msg = if p.pending.is_empty() {
                            format!("initial copy: {}/{} tables synchronised", p.ready, p.total)
                        } else {
                            format!(
                                "initial copy: {}/{} tables synchronised; copying {}",
                                p.ready,
                                p.total,
                                p.pending.join(", ")
                            )
                        };
                        tracing::info!("{msg}");
                        let _ = self.journal.event(actor, "info", &msg).await;
                        last_ready = Some(p.ready);
                    }
                    let done = p.done();
                    let (ready, total) = (p.ready, p.total);
                    lock(&self.inner).progress = Some(p);
                    if done {
                        return Ok((total, format!("{ready}/{total} tables synchronised")));
                    }
                }
                Err(e) if e.transient => {
                    failures += 1;
                    if failures % 20 == 1 {
                        tracing::warn!(error = %e.message, "waiting for the initial copy; retrying");
                    }
                    client = None;
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(interval).await;
        }
    }

    // ------------------------------------------------------------------------------------
    // Cutover / switch-back
    // ------------------------------------------------------------------------------------

    /// Moves traffic from `dir`'s publisher to its subscriber (forward: source → target =
    /// cutover; reverse: target → source = rollback after cutover). See the module docs.
    async fn switch(&self, dir: Direction, actor: &str) -> Result<String, ControlError> {
        let traffic = self.traffic()?;
        let d = &self.driver;
        let from = dir.publisher();
        let to = dir.subscriber();
        let (kp, what, busy_phase) = match dir {
            Direction::Forward => ("cutover", "cutover", Phase::CuttingOver),
            Direction::Reverse => ("switchback", "rollback", Phase::RollingBack),
        };
        let prev = self.row();
        let prev_phase = Phase::parse(&prev.phase);
        let id = prev.id;
        let sub = d.names().subscription(dir).to_string();
        let new_slot = d.names().subscription(dir.reverse()).to_string();
        let key = |k: &str| format!("{kp}.{k}");

        // Connections and checks before the pause. Every statement inside the pause is bounded
        // by statement_timeout (= catchup_timeout_ms): e.g. creating the slot waits for every
        // transaction running on that server, including ones opened outside pgshift.
        let pub_c = d.connect(from).await?;
        let sub_c = d.connect(to).await?;
        let bound = format!(
            "SET statement_timeout = {}",
            self.cfg.upgrade.catchup_timeout_ms.max(1000)
        );
        for (c, side) in [(&pub_c, from), (&sub_c, to)] {
            c.batch_execute(&bound).await.map_err(|e| {
                crate::logical::pg_error(&format!("{}: SET statement_timeout", d.label(side)), &e)
            })?;
        }
        match d.subscription_state(&sub_c, to, &sub).await? {
            None => {
                let msg = format!(
                    "{what} not possible: subscription {sub} is missing on the {}; traffic stays on the {}",
                    to.as_str(),
                    from.as_str()
                );
                self.fail(actor, None, &msg).await;
                return Err(ControlError(msg));
            }
            Some(false) => {
                d.enable_subscription(&sub_c, to, &sub).await?;
                tracing::warn!(subscription = %sub, "subscription was disabled; enabled it before the {what}");
            }
            Some(true) => {}
        }
        self.set_phase(
            actor,
            busy_phase,
            RUNNING,
            &format!(
                "{what} started: traffic {} → {}",
                from.as_str(),
                to.as_str()
            ),
        )
        .await?;

        let drain_timeout = Duration::from_millis(self.cfg.upgrade.drain_timeout_ms);
        let catchup_timeout = Duration::from_millis(self.cfg.upgrade.catchup_timeout_ms);

        // Before the pause: let the subscriber apply the publisher's current position, so the
        // pause covers only what is written meanwhile. This also waits out an apply worker that
        // has not started yet (the launcher starts at most one per wal_retrieve_retry_interval,
        // 5 s by default, e.g. right after the previous switch created the subscription).
        self.journal
            .step(id, &key("precatchup"), StepStatus::Started, None, actor)
            .await?;
        let pre: Result<String, DriverError> = async {
            let x0 = d.current_lsn(&pub_c, from).await?;
            let started = Instant::now();
            loop {
                let a = d.applied(&pub_c, dir).await?;
                if a.position().is_some_and(|p| p >= x0) {
                    return Ok(format!(
                        "{} applied {} in {} ms (before the pause)",
                        to.as_str(),
                        fmt_lsn(x0),
                        started.elapsed().as_millis()
                    ));
                }
                if started.elapsed() >= catchup_timeout {
                    let at = a.position();
                    return Err(DriverError::new(format!(
                        "the {} has not applied the {}'s position {} within {} ms (applied up to {}, {} bytes behind); \
                         {what} not started, traffic stays on the {}; check replication (SHOW UPGRADE STATUS, the servers' logs)",
                        to.as_str(),
                        from.as_str(),
                        fmt_lsn(x0),
                        catchup_timeout.as_millis(),
                        at.map(fmt_lsn).unwrap_or_else(|| "nothing".into()),
                        at.map(|p| x0.saturating_sub(p).to_string()).unwrap_or_else(|| "?".into()),
                        from.as_str()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        .await;
        match pre {
            Ok(detail) => {
                self.journal
                    .step(
                        id,
                        &key("precatchup"),
                        StepStatus::Done,
                        Some(detail),
                        actor,
                    )
                    .await?
            }
            Err(e) => {
                let _ = self
                    .journal
                    .step(
                        id,
                        &key("precatchup"),
                        StepStatus::Failed,
                        Some(e.message.clone()),
                        actor,
                    )
                    .await;
                let msg = self
                    .abandon_switch(dir, actor, prev_phase, &e.message)
                    .await;
                return Err(ControlError(msg));
            }
        }
        let new_epoch = i64::try_from(traffic.route().epoch)
            .unwrap_or(0)
            .max(prev.epoch)
            + 1;
        // Where the pause goes, in ms: each protocol step, and the journal writes.
        let mut laps = Laps::default();

        self.journal
            .step(id, &key("drain"), StepStatus::Started, None, actor)
            .await?;
        // Apply synchronously from now on, so the subscriber reports its position at once.
        if let Err(e) = d.set_subscription_sync_commit(&sub_c, to, &sub, true).await {
            let msg = self
                .abandon_switch(dir, actor, prev_phase, &e.message)
                .await;
            return Err(ControlError(msg));
        }
        let paused_at = Instant::now();
        laps.start(paused_at);
        traffic.pause();
        let pre_swap: Result<(), Abandon> = async {
            // a. drain
            loop {
                let busy = traffic.busy_sessions();
                if busy == 0 {
                    break;
                }
                if paused_at.elapsed() >= drain_timeout {
                    traffic.resume();
                    return Err(Abandon {
                        reason: format!(
                            "drain deadline passed: {busy} sessions still in a transaction; {what} abandoned, traffic stays on the {}",
                            from.as_str()
                        ),
                        resumed: true,
                    });
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let drained = laps.lap("drain");
            self.transition(id, actor, &key("drain"), format!("drained in {drained:.1} ms"), &key("catchup"))
                .await?;
            laps.lap("journal");

            // b. catch-up
            let x = d.barrier_lsn(&pub_c, from).await.map_err(abandon)?;
            let started = Instant::now();
            loop {
                let a = d.applied(&pub_c, dir).await.map_err(abandon)?;
                if a.position().is_some_and(|p| p >= x) {
                    break;
                }
                if started.elapsed() >= catchup_timeout {
                    traffic.resume();
                    let at = a.position();
                    return Err(Abandon {
                        reason: format!(
                            "catch-up deadline passed after {} ms: the {} applied up to {}, the {} is at {} ({} bytes behind); \
                             {what} abandoned, traffic stays on the {}",
                            started.elapsed().as_millis(),
                            to.as_str(),
                            at.map(fmt_lsn).unwrap_or_else(|| "nothing".into()),
                            from.as_str(),
                            fmt_lsn(x),
                            at.map(|p| x.saturating_sub(p).to_string()).unwrap_or_else(|| "?".into()),
                            from.as_str()
                        ),
                        resumed: true,
                    });
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let caught = laps.lap("catch-up");
            self.transition(
                id,
                actor,
                &key("catchup"),
                format!("{} applied {} in {caught:.1} ms", to.as_str(), fmt_lsn(x)),
                &key("stop_apply"),
            )
            .await?;
            laps.lap("journal");

            // c. stop the running direction's apply
            d.stop_subscription(&sub_c, to, &sub, Duration::from_secs(5)).await.map_err(abandon)?;
            laps.lap("stop apply");
            self.transition(id, actor, &key("stop_apply"), format!("subscription {sub} disabled"), &key("sequences"))
                .await?;
            laps.lap("journal");

            // d. sequences
            let n = d.sync_sequences(&pub_c, from, &sub_c, to).await.map_err(abandon)?;
            laps.lap("sequences");
            self.transition(id, actor, &key("sequences"), format!("{n} sequences set"), &key("slot")).await?;
            laps.lap("journal");

            // e. the reverse slot, fresh
            let lsn = d.recreate_slot(&sub_c, to, &new_slot).await.map_err(abandon)?;
            laps.lap("slot");
            // f. journal the swap (slot done + swap started + new side/epoch in one transaction) ...
            let mut row = self.row();
            row.serving_side = to.as_str().into();
            row.epoch = new_epoch;
            row.direction = dir.reverse().as_str().into();
            row.updated_at = now_rfc3339();
            self.journal
                .transitions(
                    id,
                    vec![
                        (key("slot"), StepStatus::Done, Some(format!("slot {new_slot} created at {}", fmt_lsn(lsn)))),
                        (key("swap"), StepStatus::Started, Some(format!("to {}, epoch {new_epoch}", to.as_str()))),
                    ],
                    Some(row.clone()),
                    actor,
                    Durability::Full,
                )
                .await
                .map_err(|e| Abandon { reason: format!("journal: {e}"), resumed: false })?;
            lock(&self.inner).row = row;
            laps.lap("journal");
            Ok(())
        }
        .await;

        if let Err(ab) = pre_swap {
            if !ab.resumed {
                traffic.resume();
            }
            let msg = self
                .abandon_switch(dir, actor, prev_phase, &ab.reason)
                .await;
            return Err(ControlError(msg));
        }

        // ... then switch (this also unpauses).
        traffic.switch_to(to, u64::try_from(new_epoch).unwrap_or(1));
        let pause_ms = paused_at.elapsed().as_secs_f64() * 1000.0;
        let breakdown = laps.summary();
        let swap_msg = format!(
            "swapped to {}, epoch {new_epoch}: pause {pause_ms:.1} ms ({breakdown})",
            to.as_str()
        );
        tracing::info!("{swap_msg}");
        let _ = self
            .journal
            .step(
                id,
                &key("swap"),
                StepStatus::Done,
                Some(swap_msg.clone()),
                actor,
            )
            .await;
        let _ = self.journal.event(actor, "swap", &swap_msg).await;
        drop((pub_c, sub_c));

        let fin = self.finish_switch(dir, actor).await?;
        Ok(format!(
            "{what} done: traffic on the {} at epoch {new_epoch}; pause {pause_ms:.1} ms ({breakdown}); {fin}",
            to.as_str()
        ))
    }

    async fn transition(
        &self,
        id: i64,
        actor: &str,
        done: &str,
        detail: String,
        next: &str,
    ) -> Result<(), Abandon> {
        self.journal
            .transitions(
                id,
                vec![
                    (done.to_string(), StepStatus::Done, Some(detail)),
                    (next.to_string(), StepStatus::Started, None),
                ],
                None,
                actor,
                Durability::Process,
            )
            .await
            .map_err(|e| Abandon {
                reason: format!("journal: {e}"),
                resumed: false,
            })
    }

    /// After a failure before the swap (traffic already resumed): re-enable the running
    /// subscription, drop the new slot, return to `prev_phase` with state `error`.
    async fn abandon_switch(
        &self,
        dir: Direction,
        actor: &str,
        prev_phase: Phase,
        reason: &str,
    ) -> String {
        let d = &self.driver;
        let to = dir.subscriber();
        let sub = d.names().subscription(dir).to_string();
        let new_slot = d.names().subscription(dir.reverse()).to_string();
        let mut msg = reason.to_string();
        let cleanup: Result<(), DriverError> = async {
            let c = d.connect(to).await?;
            d.set_subscription_sync_commit(&c, to, &sub, false).await?;
            d.enable_subscription(&c, to, &sub).await?;
            // No subscription of the other direction exists before the swap: the slot is unused.
            if d.subscription_state(
                &d.connect(dir.publisher()).await?,
                dir.publisher(),
                &new_slot,
            )
            .await?
            .is_none()
            {
                d.drop_slot(&c, to, &new_slot).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = cleanup {
            msg.push_str(&format!(
                "; cleanup incomplete ({}): subscription {sub} on the {} may still be disabled, retry the command",
                e.message,
                to.as_str()
            ));
        }
        let row = self.row();
        let _ = self
            .journal
            .step(
                row.id,
                "abandon",
                StepStatus::Done,
                Some(msg.clone()),
                actor,
            )
            .await;
        self.fail(actor, Some(prev_phase), &msg).await;
        msg
    }

    /// Post-swap steps of a switch of direction `dir` (the direction that ran before it):
    /// subscription of the other direction on the new slot, then drop the old subscription.
    async fn finish_switch(&self, dir: Direction, actor: &str) -> Result<String, ControlError> {
        let d = &self.driver;
        let (kp, done_phase) = match dir {
            Direction::Forward => ("cutover", Phase::CutOver),
            Direction::Reverse => ("switchback", Phase::RolledBack),
        };
        let new_dir = dir.reverse();
        let res: Result<(String, String), ControlError> = async {
            let a = self
                .step(actor, &format!("{kp}.new_sub"), || async {
                    d.ensure_subscription_on_slot(new_dir)
                        .await
                        .map(|m| (m.clone(), m))
                })
                .await?;
            let b = self
                .step(actor, &format!("{kp}.drop_old_sub"), || async {
                    d.drop_subscription(dir).await.map(|m| (m.clone(), m))
                })
                .await?;
            Ok((a, b))
        }
        .await;
        match res {
            Ok((a, b)) => {
                let msg = format!(
                    "{} replication {} → {} running ({a}; {b})",
                    new_dir.as_str(),
                    new_dir.publisher().as_str(),
                    new_dir.subscriber().as_str()
                );
                self.save(actor, "phase", &msg, |r| {
                    r.phase = done_phase.as_str().into();
                    r.state = DONE.into();
                    r.last_error = None;
                    r.direction = new_dir.as_str().into();
                })
                .await?;
                Ok(msg)
            }
            Err(e) => {
                let side = new_dir.publisher();
                let msg = format!(
                    "traffic is on the {} but a step after the swap failed: {}; run the command again to finish",
                    side.as_str(),
                    e.0
                );
                self.fail(actor, None, &msg).await;
                Err(ControlError(msg))
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // Rollback before cutover
    // ------------------------------------------------------------------------------------

    async fn teardown(&self, actor: &str) -> Result<String, ControlError> {
        let row = self.row();
        if row.serving_side != Side::Source.as_str() {
            return Err(ControlError(
                "traffic is on the target; removing replication now would lose the way back".into(),
            ));
        }
        let plan = lock(&self.plan).take();
        if let Some(h) = plan {
            h.abort();
            let _ = h.await;
        }
        // direction 'none' first: "no replication should run" (a restart continues the teardown).
        self.save(
            actor,
            "phase",
            "rollback: removing replication objects",
            |r| {
                r.phase = Phase::RollingBack.as_str().into();
                r.state = RUNNING.into();
                r.direction = "none".into();
            },
        )
        .await?;
        lock(&self.inner).progress = None;
        let d = &self.driver;
        let res = self
            .step(actor, "teardown", || async {
                d.teardown().await.map(|v| ((), v.join("; ")))
            })
            .await;
        match res {
            Ok(()) => {
                self.save(
                    actor,
                    "phase",
                    "rolled back: replication objects removed; traffic on the source",
                    |r| {
                        r.phase = Phase::RolledBack.as_str().into();
                        r.state = DONE.into();
                        r.last_error = None;
                    },
                )
                .await?;
                lock(&self.inner).lag = None;
                Ok("rolled back: replication objects removed; traffic stays on the source".into())
            }
            Err(e) => {
                let msg = format!("rollback incomplete: {}; run ROLLBACK UPGRADE again", e.0);
                self.fail(actor, None, &msg).await;
                Err(ControlError(msg))
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // Resume after restart
    // ------------------------------------------------------------------------------------

    async fn resume(self: Arc<Self>) {
        let _g = self.op.lock().await;
        let row = self.row();
        let phase = Phase::parse(&row.phase);
        let side = Side::parse(&row.serving_side).unwrap_or(Side::Source);
        let dir = Direction::parse(&row.direction);
        let actor = "resume";
        let r: Result<(), ControlError> = async {
            match phase {
                p if p.is_plan() && row.state == RUNNING && !self.plan_running() => {
                    let _ = self.journal.event(actor, "info", &format!("resuming the plan at phase {}", p.as_str())).await;
                    self.spawn_plan(actor);
                }
                Phase::CuttingOver | Phase::RollingBack if row.state == RUNNING || row.state == ERROR => {
                    match (phase, side, dir) {
                        // Swap journaled: finish the post-swap steps.
                        (Phase::CuttingOver, Side::Target, _) => {
                            self.finish_switch(Direction::Forward, actor).await?;
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
                            self.abandon_switch(
                                Direction::Forward,
                                actor,
                                Phase::Replicating,
                                "cutover interrupted by a restart before the swap; cutover abandoned, traffic stays on the source",
                            )
                            .await;
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
    }
}

/// Splits the cutover pause into named laps (ms); repeated names add up.
#[derive(Default)]
struct Laps {
    last: Option<Instant>,
    laps: Vec<(&'static str, f64)>,
}

impl Laps {
    /// Ends the current lap under `name` and returns its length in ms.
    fn lap(&mut self, name: &'static str) -> f64 {
        let now = Instant::now();
        let ms = self
            .last
            .map(|t| (now - t).as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        self.last = Some(now);
        match self.laps.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v += ms,
            None => self.laps.push((name, ms)),
        }
        ms
    }
    fn start(&mut self, at: Instant) {
        self.last = Some(at);
    }
    fn summary(&self) -> String {
        let parts: Vec<String> = self
            .laps
            .iter()
            .map(|(n, v)| format!("{n} {v:.1}"))
            .collect();
        format!("{} ms", parts.join(", "))
    }
}

fn abandon(e: DriverError) -> Abandon {
    Abandon {
        reason: e.message,
        resumed: false,
    }
}

impl From<JournalError> for Abandon {
    fn from(e: JournalError) -> Self {
        Abandon {
            reason: format!("journal: {e}"),
            resumed: false,
        }
    }
}

/// The lag collector: every `poll_interval_ms`, while a direction of replication should run,
/// reads its lag on its publisher into the in-memory status. Ends when the controller is dropped.
async fn collect(weak: Weak<Controller>) {
    let mut clients: [Option<tokio_postgres::Client>; 2] = [None, None];
    let mut failures = 0u32;
    loop {
        let Some(this) = weak.upgrade() else { return };
        let interval = Duration::from_millis(this.cfg.upgrade.poll_interval_ms.max(10));
        let dir = Direction::parse(&this.row().direction);
        let lag = match dir {
            None => None,
            Some(d) => {
                let side = d.publisher();
                let i = match side {
                    Side::Source => 0,
                    Side::Target => 1,
                };
                if clients[i].as_ref().is_none_or(|c| c.is_closed()) {
                    clients[i] = this.driver.connect(side).await.ok();
                }
                match clients[i].as_ref() {
                    None => None,
                    Some(c) => match this.driver.lag(c, d).await {
                        Ok(l) => {
                            failures = 0;
                            l
                        }
                        Err(e) => {
                            failures += 1;
                            if failures % 60 == 1 {
                                tracing::warn!(error = %e.message, "lag collector");
                            }
                            clients[i] = None;
                            None
                        }
                    },
                }
            }
        };
        lock(&this.inner).lag = lag;
        drop(this);
        tokio::time::sleep(interval).await;
    }
}
