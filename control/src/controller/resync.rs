//! FORCE RESYNC TABLE, and the source / target positions the mirror's lag-aware re-check
//! reads. See [`Controller::force_resync`], [`Controller::source_current_lsn`] and
//! [`Controller::wait_target_applied`].

use super::plan::Cancel;
use super::{lock, ControlError, Controller, Phase};
use crate::journal::StepStatus;
use crate::logical::{fmt_lsn, Direction, DriverError};
use crate::Side;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clears the controller's "resync under way" mark when the resync ends, however it ends
/// (error, or its future dropped).
struct Running<'a>(&'a Controller);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *lock(&self.0.resync) = None;
    }
}

/// The step key a resync of `table` is journaled under.
fn key(table: &str) -> String {
    format!("resync:{table}")
}

impl Controller {
    /// `FORCE RESYNC TABLE 'name'`: copies one table to the target again, consistently, while
    /// client traffic and replication of the other tables go on; returns when the target's
    /// copy has caught up with the source, with what was done.
    ///
    /// `table` is `schema.table` or `table` (SQL identifier syntax, quotes for mixed case:
    /// `public."Mixed Case"`; a plain name that matches one table exactly is taken too).
    ///
    /// Method (native logical replication, publication `<p>_pub` FOR ALL TABLES, which cannot
    /// drop a single table): the forward subscription is pointed at `<p>_resync_pub`, a
    /// publication of every other table, so that the table leaves it (`ALTER SUBSCRIPTION ..
    /// SET PUBLICATION .. WITH (refresh = true, copy_data = false)`); once the apply worker
    /// has restarted on it and applied the source's current position, the table is emptied on
    /// the target (`TRUNCATE`, or `DELETE` under `session_replication_role = replica` when
    /// other tables' foreign keys reference it); the subscription is pointed back at
    /// `<p>_pub` with `copy_data = true`, which adds the table again: its table
    /// synchronisation worker copies it from a consistent snapshot of the source and then
    /// applies, from its own slot, what was committed after that snapshot, until it hands over
    /// to the apply worker (PostgreSQL docs, "Logical Replication › Architecture › Initial
    /// Snapshot"; `pg_subscription_rel.srsubstate` `i` → `d` → `f` → `s` → `r`). Rows written
    /// meanwhile are in the snapshot or in what follows it: nothing is lost. pgshift waits for
    /// state `s`/`r` and for the target to apply the source's position, then drops
    /// `<p>_resync_pub`. Details: [`Logical::resync_exclude`](crate::logical::Logical::resync_exclude).
    ///
    /// Allowed while forward replication runs and the source serves, after the initial copy:
    /// phases `replicating` (state `waiting` included), `shifting`, `health_check`, and
    /// `rolled_back` with forward replication running again; with no traffic shifted to the
    /// target (weight 0: shifted reads would see the table half copied). While it runs, a
    /// cutover is refused (`INITIATE CUTOVER`) or waits (the plan), and weights above 0 wait
    /// (the plan) or are refused (`SHIFT TRAFFIC`). ROLLBACK UPGRADE stops it.
    ///
    /// Journaled as step `resync:<schema.table>` (history: started, done with what was done,
    /// failed with the error). Idempotent: running it again after a failure or a restart
    /// starts over from whatever state the servers are in; tables of the publication that
    /// the subscription does not hold (an earlier resync that did not finish) are copied
    /// again with it. A resync interrupted by a restart runs again by itself when the
    /// controller is attached.
    ///
    /// Errors: an empty or unknown name, a view, a partitioned table (resync its
    /// partitions), a table that is not in the publication (unlogged, temporary) or that the
    /// target lacks, the wrong phase, a weight above 0, another resync under way, and
    /// failures on the servers (the message says whether the table is left out of replication
    /// until a retry succeeds).
    #[tracing::instrument(parent = &self.span, skip_all, fields(table = %table))]
    pub async fn force_resync(self: &Arc<Self>, table: &str) -> Result<String, ControlError> {
        self.resync_as("operator", table).await
    }

    async fn resync_as(&self, actor: &str, table: &str) -> Result<String, ControlError> {
        let name = table.trim();
        let row_id = self.row().id;
        let refuse = |msg: String| async move {
            if row_id > 0 {
                let _ = self
                    .journal
                    .step_event(row_id, "resync", actor, "info", &msg)
                    .await;
            }
            tracing::warn!("{msg}");
            Err(ControlError::refused(msg))
        };
        if name.is_empty() {
            return refuse("FORCE RESYNC TABLE needs a table name, e.g. 'public.accounts'".into())
                .await;
        }
        if let Some(why) = self.replication.resync_refusal(name) {
            return refuse(why).await;
        }
        // Admission, under the command lock (a cutover or rollback is not under way) and the
        // row lock (the plan publishes weights under it).
        let cancel = Cancel::new();
        let (_held, _running) = {
            let _g = self.op.lock().await;
            let _w = self.row_write.lock().await;
            let row = self.row();
            let phase = Phase::parse(&row.phase);
            let side = Side::parse(&row.serving_side).unwrap_or(Side::Source);
            let dir = Direction::parse(&row.direction);
            let phase_ok = matches!(
                phase,
                Phase::Replicating | Phase::Shifting | Phase::HealthCheck | Phase::RolledBack
            );
            if !(phase_ok && side == Side::Source && dir == Some(Direction::Forward)) {
                let why = match phase {
                    Phase::Idle => "no upgrade in progress; START UPGRADE first".to_string(),
                    p if p.before_sync() => format!(
                        "the initial copy is not done (phase {}); every table is being copied anyway",
                        p.as_str()
                    ),
                    _ => format!(
                        "it needs forward replication running with traffic on the source (phases replicating, shifting, health_check); the upgrade is in phase {}, state {}, traffic on the {}",
                        phase.as_str(),
                        row.state,
                        side.as_str()
                    ),
                };
                drop(_w);
                drop(_g);
                return refuse(format!("FORCE RESYNC TABLE {name} not possible: {why}")).await;
            }
            if row.weight > 0 {
                drop(_w);
                drop(_g);
                return refuse(format!(
                    "FORCE RESYNC TABLE {name} not possible while {} % of read-only transactions go to the target: they would read the table half copied; SHIFT TRAFFIC 0 first (PAUSE UPGRADE keeps the plan from shifting again)",
                    row.weight
                ))
                .await;
            }
            let Ok(held) = self.resync_lock.clone().try_lock_owned() else {
                let other = lock(&self.resync)
                    .as_ref()
                    .map(|r| r.0.clone())
                    .unwrap_or_else(|| "another table".into());
                drop(_w);
                drop(_g);
                return refuse(format!(
                    "FORCE RESYNC TABLE {name} not possible: the resync of {other} is under way; one at a time"
                ))
                .await;
            };
            *lock(&self.resync) = Some((name.to_string(), cancel.clone()));
            (held, Running(self))
        };
        let id = row_id;
        let d = &self.driver;
        let t0 = Instant::now();
        let timeout = Duration::from_millis(self.cfg.upgrade.catchup_timeout_ms.max(1000));
        let copy_timeout = Duration::from_millis(self.cfg.upgrade.timeouts.wait_for_sync_ms);
        let poll = Duration::from_millis(self.cfg.upgrade.poll_interval_ms.max(10));

        let stopped = || DriverError::new("stopped by ROLLBACK UPGRADE");
        // Runs `f` unless the resync is stopped (rollback) first.
        macro_rules! guarded {
            ($f:expr) => {
                tokio::select! {
                    biased;
                    _ = cancel.wait() => Err(stopped()),
                    r = $f => r,
                }
            };
        }

        // What to do (checks only: nothing changes if this fails).
        let prepared = guarded!(async {
            let src = d.connect(Side::Source).await?;
            let tgt = d.connect(Side::Target).await?;
            let plan = d.resync_plan(&src, &tgt, name).await?;
            Ok::<_, DriverError>((src, tgt, plan))
        });
        let (src, tgt, plan) = match prepared {
            Ok(v) => v,
            Err(e) => {
                return refuse(format!("FORCE RESYNC TABLE {name}: {}", e.message)).await;
            }
        };
        // The name shown from here on.
        if let Some(r) = lock(&self.resync).as_mut() {
            r.0 = plan.table.clone();
        }
        let k = key(&plan.table);
        let also = if plan.tables.len() > 1 {
            format!(
                "; also {} (in the publication but not in the subscription: an earlier resync that did not finish, or tables added later)",
                plan.tables[1..].join(", ")
            )
        } else {
            String::new()
        };
        self.journal
            .step(
                id,
                &k,
                StepStatus::Started,
                Some(format!("FORCE RESYNC TABLE {}{also}", plan.table)),
                actor,
            )
            .await?;
        tracing::info!(table = %plan.table, "FORCE RESYNC TABLE started{also}");

        let mut out_of_replication = false;
        let res: Result<Vec<String>, DriverError> = async {
            let mut done = Vec::new();
            done.push(guarded!(d.resync_exclude(&src, &tgt, &plan, timeout))?);
            out_of_replication = true;
            let _ = self
                .journal
                .step_event(
                    id,
                    &k,
                    actor,
                    "info",
                    &format!("{}: {}", plan.table, done[0]),
                )
                .await;
            done.push(guarded!(d.resync_empty(&tgt, &plan, timeout))?);
            done.push(guarded!(d.resync_include(&tgt))?);
            let _ = self
                .journal
                .step_event(
                    id,
                    &k,
                    actor,
                    "info",
                    &format!("{}: {}; {}", plan.table, done[1], done[2]),
                )
                .await;
            done.push(guarded!(d.resync_wait_copied(
                &src,
                &tgt,
                &plan,
                poll,
                copy_timeout,
                timeout
            ))?);
            out_of_replication = false;
            if d.resync_cleanup().await? {
                done.push(format!(
                    "dropped publication {} on source",
                    d.names().resync_publication
                ));
            }
            Ok(done)
        }
        .await;
        match res {
            Ok(done) => {
                let msg = format!(
                    "{} copied again in {:.1} s{}: {}",
                    plan.table,
                    t0.elapsed().as_secs_f64(),
                    if plan.tables.len() > 1 {
                        format!(" (with {})", plan.tables[1..].join(", "))
                    } else {
                        String::new()
                    },
                    done.join("; ")
                );
                self.journal
                    .step(id, &k, StepStatus::Done, Some(msg.clone()), actor)
                    .await?;
                tracing::info!(table = %plan.table, "{msg}");
                Ok(msg)
            }
            Err(e) => {
                let mut msg = format!("FORCE RESYNC TABLE {} failed: {}", plan.table, e.message);
                if out_of_replication && !cancel.is_set() {
                    msg.push_str(&format!(
                        "; {} is not replicated to the target until FORCE RESYNC TABLE succeeds: run it again (a cutover is refused meanwhile)",
                        plan.tables.join(", ")
                    ));
                }
                let _ = self
                    .journal
                    .step(id, &k, StepStatus::Failed, Some(msg.clone()), actor)
                    .await;
                tracing::error!(table = %plan.table, "{msg}");
                Err(ControlError::refused(msg))
            }
        }
    }

    /// Stops the FORCE RESYNC TABLE under way, if any, and waits for it to end (a rollback
    /// before the cutover removes replication anyway).
    pub(super) async fn stop_resync(&self) {
        let running = lock(&self.resync).as_ref().map(|r| r.1.clone());
        if let Some(c) = running {
            c.set();
            let _ = self.resync_lock.lock().await;
        }
    }

    /// After a restart: a resync the journal shows started and not ended runs again, in the
    /// background (it waits for the command lock).
    pub(super) async fn resume_resyncs(self: &Arc<Self>) {
        let id = self.row().id;
        let Ok(steps) = self.journal.steps(id).await else {
            return;
        };
        let unfinished: Vec<String> = steps
            .into_iter()
            .filter(|s| s.status == StepStatus::Started)
            .filter_map(|s| s.key.strip_prefix("resync:").map(str::to_string))
            .collect();
        for table in unfinished {
            let this = self.clone();
            let span = self.span.clone();
            let h = tokio::spawn(tracing::Instrument::instrument(
                async move {
                    tracing::info!(table = %table, "a FORCE RESYNC TABLE was interrupted by a restart; running it again");
                    if let Err(e) = this.resync_as("resume", &table).await {
                        tracing::warn!(table = %table, error = %e, "the interrupted FORCE RESYNC TABLE did not finish");
                        // Ended (failed or refused): not run again at the next restart.
                        let _ = this
                            .journal
                            .step(
                                id,
                                &key(&table),
                                StepStatus::Failed,
                                Some(e.message),
                                "resume",
                            )
                            .await;
                    }
                },
                span,
            ));
            lock(&self.background).push(h);
        }
    }

    // ------------------------------------------------------------------------------------
    // Positions for the mirror's lag-aware re-check
    // ------------------------------------------------------------------------------------

    /// A source connection for the position queries, kept between calls (opened again when
    /// it was lost).
    async fn lsn_client(&self) -> Result<Arc<tokio_postgres::Client>, ControlError> {
        let mut g = self.lsn_client.lock().await;
        if let Some(c) = g.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.driver.connect(Side::Source).await?);
        *g = Some(c.clone());
        Ok(c)
    }

    /// The source's current WAL position, as a 64-bit LSN (`pg_current_wal_insert_lsn()`):
    /// every transaction committed on the source before the call, asynchronously committed
    /// ones included (whose commit record `pg_current_wal_lsn()`, the write position, may not
    /// cover yet), ends at or before it. Pass it to
    /// [`wait_target_applied`](Self::wait_target_applied) to wait until the target has
    /// applied what a query on the source saw. PostgreSQL docs, "System Administration
    /// Functions › Backup Control Functions".
    ///
    /// One query on a source connection the controller keeps between calls (no new
    /// connection per call). Errors: the source cannot be reached or refuses the query.
    pub async fn source_current_lsn(&self) -> Result<u64, ControlError> {
        // The mirror driver's position: the seq of the last recorded transaction.
        if let Some(st) = self.capture_state() {
            return Ok(st.captured);
        }
        let c = self.lsn_client().await?;
        match c
            .query_one("SELECT pg_catalog.pg_current_wal_insert_lsn()", &[])
            .await
        {
            Ok(r) => {
                let lsn: tokio_postgres::types::PgLsn = r.try_get(0).map_err(|e| {
                    ControlError::refused(format!("source: pg_current_wal_insert_lsn(): {e}"))
                })?;
                Ok(u64::from(lsn))
            }
            Err(e) => {
                *self.lsn_client.lock().await = None;
                Err(crate::logical::pg_error(
                    &format!(
                        "{}: pg_current_wal_insert_lsn()",
                        self.driver.label(Side::Source)
                    ),
                    &e,
                )
                .into())
            }
        }
    }

    /// Waits until the target has applied the source's position `lsn` (a 64-bit LSN, e.g.
    /// from [`source_current_lsn`](Self::source_current_lsn)) through the forward
    /// subscription, at most `timeout`. `Ok(true)` once the subscription's slot
    /// `confirmed_flush_lsn` or its walsender's `replay_lsn` (what the target reports applied;
    /// PostgreSQL docs, "pg_replication_slots", "pg_stat_replication") is at or beyond `lsn`;
    /// `Ok(false)` when `timeout` passed first.
    ///
    /// Cheap: a position already seen applied answers at once without a query; otherwise it
    /// polls every 5 ms on the source connection kept between calls. A table being copied
    /// again by [`force_resync`](Self::force_resync) may be behind even when this says true.
    ///
    /// Errors: forward replication does not run with traffic on the source after the initial
    /// copy (phase and side named), the source cannot be reached, the slot is missing.
    pub async fn wait_target_applied(
        &self,
        lsn: u64,
        timeout: Duration,
    ) -> Result<bool, ControlError> {
        if let Some(cap) = self.capture.get() {
            // The mirror driver: wait until that seq is applied.
            let deadline = Instant::now() + timeout;
            loop {
                let st = cap.state();
                if let Some(f) = st.failed {
                    return Err(ControlError::refused(format!(
                        "applying the captured transactions stopped: {f}"
                    )));
                }
                if st.from != Some(Side::Source) {
                    return Err(ControlError::refused(
                        "the target does not apply the source's changes now",
                    ));
                }
                if st.applied >= lsn {
                    return Ok(true);
                }
                if Instant::now() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let row = self.row();
        let phase = Phase::parse(&row.phase);
        if Direction::parse(&row.direction) != Some(Direction::Forward)
            || row.serving_side != Side::Source.as_str()
            || phase.before_sync()
        {
            return Err(ControlError::refused(format!(
                "the target does not apply the source's changes now (phase {}, traffic on the {}, replication {}): forward replication must run after the initial copy",
                row.phase, row.serving_side, row.direction
            )));
        }
        let era = (row.id, row.epoch);
        {
            let seen = lock(&self.applied_seen);
            if (seen.0, seen.1) == era && seen.2 >= lsn {
                return Ok(true);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.lsn_client().await?;
            let applied = match self.driver.applied(&c, Direction::Forward).await {
                Ok(a) => a,
                Err(e) => {
                    if e.transient {
                        *self.lsn_client.lock().await = None;
                    }
                    return Err(e.into());
                }
            };
            if let Some(p) = applied.position() {
                let mut seen = lock(&self.applied_seen);
                if (seen.0, seen.1) != era {
                    *seen = (era.0, era.1, 0);
                }
                seen.2 = seen.2.max(p);
                if p >= lsn {
                    return Ok(true);
                }
            }
            if Instant::now() >= deadline {
                tracing::debug!(
                    lsn = %fmt_lsn(lsn),
                    applied = %applied.position().map(fmt_lsn).unwrap_or_default(),
                    "the target has not applied the position in time"
                );
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(5).min(deadline - Instant::now())).await;
        }
    }
}
