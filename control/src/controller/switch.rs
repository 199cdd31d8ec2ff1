//! The one switch protocol, for every replication driver: cutover (`Forward`) and rollback
//! after cutover (`Reverse`). See the controller's module docs, "Cutover", for the steps and
//! their journal keys; the driver's part of each step is a [`SwitchRun`] (see
//! [`super::replication`]).

use super::{lock, note_row, ControlError, Controller, Phase, RUNNING};
use crate::journal::{now_rfc3339, Durability, JournalError, StepStatus};
use crate::logical::{Direction, DriverError};
use crate::{Side, Traffic};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Why a switch was abandoned inside its pause, and whether traffic was already resumed.
pub(super) struct Abandon {
    pub(super) reason: String,
    pub(super) resumed: bool,
}

/// An abandon for a driver error (traffic not resumed yet).
pub(super) fn abandon(e: DriverError) -> Abandon {
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

/// Where the pause goes: named laps in ms.
#[derive(Default)]
pub(super) struct Laps {
    last: Option<Instant>,
    laps: Vec<(&'static str, f64)>,
}

impl Laps {
    /// Ends the current lap under `name` and returns its length in ms.
    pub(super) fn lap(&mut self, name: &'static str) -> f64 {
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
    pub(super) fn start(&mut self, at: Instant) {
        self.last = Some(at);
    }
    pub(super) fn summary(&self) -> String {
        let parts: Vec<String> = self
            .laps
            .iter()
            .map(|(n, v)| format!("{n} {v:.1}"))
            .collect();
        format!("{} ms", parts.join(", "))
    }
}

/// Waits (polling every 1 ms) until no session is inside a transaction, while traffic is
/// paused. `Err(busy)`: the sessions still in one when `timeout` after `paused_at` passed.
pub(super) async fn drain(
    traffic: &Traffic,
    paused_at: Instant,
    timeout: Duration,
) -> Result<(), usize> {
    loop {
        let busy = traffic.busy_sessions();
        if busy == 0 {
            return Ok(());
        }
        if paused_at.elapsed() >= timeout {
            return Err(busy);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The key prefix, the word for messages and the busy phase of a switch of `dir`.
pub(super) fn words(dir: Direction) -> (&'static str, &'static str, Phase) {
    match dir {
        Direction::Forward => ("cutover", "cutover", Phase::CuttingOver),
        Direction::Reverse => ("switchback", "rollback", Phase::RollingBack),
    }
}

impl Controller {
    /// Cutover (`Forward`) or rollback after cutover (`Reverse`): moves traffic from `dir`'s
    /// publisher to its subscriber with the configured driver (module docs, "Cutover").
    /// Returns what was done, with the pause in ms and where it went.
    pub(super) async fn switch(&self, dir: Direction, actor: &str) -> Result<String, ControlError> {
        let traffic = self.traffic()?;
        let from = dir.publisher();
        let to = dir.subscriber();
        let (kp, what, busy_phase) = words(dir);
        let prev = self.row();
        let prev_phase = Phase::parse(&prev.phase);
        let id = prev.id;
        let key = |k: &str| format!("{kp}.{k}");

        let mut run = self.replication.begin_switch(self, dir, actor).await?;
        let reverses = run.reverses();
        // The steps inside the pause, in order (each journaled done with the next started).
        let steps: &[&str] = if reverses {
            &[
                "drain",
                "catchup",
                "stop_apply",
                "sequences",
                "slot",
                "swap",
            ]
        } else {
            &["drain", "catchup", "sequences", "swap"]
        };
        let next = |k: &str| {
            let i = steps.iter().position(|s| *s == k).unwrap_or(0);
            key(steps.get(i + 1).copied().unwrap_or("swap"))
        };
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
        // Client sessions that hold what cannot move (whatever the driver): wait, then
        // refuse or let them end.
        if let Err(why) = self.wait_unpinned(&traffic, to, drain_timeout).await {
            let why = format!(
                "{what} not started: {why}; traffic stays on the {}",
                from.as_str()
            );
            let msg = self.abandon_switch(dir, actor, prev_phase, &why).await;
            return Err(ControlError::failed(msg));
        }
        if let Err(why) = run.before_pause(self, &traffic, actor).await {
            let msg = self.abandon_switch(dir, actor, prev_phase, &why).await;
            return Err(ControlError::failed(msg));
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
        let paused_at = Instant::now();
        laps.start(paused_at);
        traffic.pause_for_switch(to);
        let pre_swap: Result<(), Abandon> = async {
            // a. drain
            if let Err(busy) = drain(&traffic, paused_at, drain_timeout).await {
                traffic.resume();
                return Err(Abandon {
                    reason: format!(
                        "drain deadline passed: {busy} sessions still in a transaction; {what} abandoned, traffic stays on the {}",
                        from.as_str()
                    ),
                    resumed: true,
                });
            }
            run.check_paused(self).await?;
            let drained = laps.lap("drain");
            self.transition(id, actor, &key("drain"), format!("drained in {drained:.1} ms"), &next("drain"))
                .await?;
            laps.lap("journal");

            // b. catch-up: the barrier, waited for
            let applied = run.barrier(self).await?;
            let caught = laps.lap("catch-up");
            self.transition(id, actor, &key("catchup"), format!("{applied} in {caught:.1} ms"), &next("catchup"))
                .await?;
            laps.lap("journal");

            // c. stop the running direction's apply
            if reverses {
                let stopped = run.stop_old(self).await?;
                laps.lap("stop apply");
                self.transition(id, actor, &key("stop_apply"), stopped, &next("stop_apply"))
                    .await?;
                laps.lap("journal");
            }

            // d. sequences
            let n = run.sequences(self).await?;
            laps.lap("sequences");
            self.transition(id, actor, &key("sequences"), format!("{n} sequences set"), &next("sequences"))
                .await?;
            laps.lap("journal");

            // e. the reverse slots, fresh
            let mut records = Vec::new();
            if reverses {
                let made = run.reverse_slot(self).await?;
                laps.lap("slot");
                records.push((key("slot"), StepStatus::Done, Some(made)));
            }
            // f. journal the swap (with the slot done, and the new side/epoch, in one
            // transaction) ...
            records.push((key("swap"), StepStatus::Started, Some(format!("to {}, epoch {new_epoch}", to.as_str()))));
            {
                let _w = self.row_write.lock().await;
                let mut row = self.row();
                row.serving_side = to.as_str().into();
                row.epoch = new_epoch;
                row.direction = dir.reverse().as_str().into();
                // The new serving side gets everything: no weighted share to the old one.
                row.weight = 0;
                row.updated_at = now_rfc3339();
                self.journal
                    .transitions(id, records, Some(row.clone()), actor, Durability::Full)
                    .await
                    .map_err(|e| Abandon { reason: format!("journal: {e}"), resumed: false })?;
                note_row(&self.span, &row);
                lock(&self.inner).row = row;
            }
            laps.lap("journal");
            if let Some(name) = run.after_swap_journaled(self).await? {
                laps.lap(name);
            }
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
            return Err(ControlError::failed(msg));
        }

        // ... then switch (this also unpauses). The weighted share goes first, while paused:
        // nothing is routed between the two publications.
        if traffic.weight() != 0 {
            traffic.set_weight(0);
        }
        traffic.switch_to(to, u64::try_from(new_epoch).unwrap_or(1));
        lock(&self.inner).swapped_at = Some(Instant::now());
        let pause_ms = paused_at.elapsed().as_secs_f64() * 1000.0;
        let breakdown = laps.summary();
        let dbs = if run.databases() > 1 {
            format!(", {} databases", run.databases())
        } else {
            String::new()
        };
        let swap_msg = format!(
            "swapped to {}, epoch {new_epoch}{dbs}: pause {pause_ms:.1} ms ({breakdown})",
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
        let _ = self
            .journal
            .event_data(
                actor,
                "swap",
                &swap_msg,
                crate::journal::EventData::Swap {
                    to: to.as_str().to_string(),
                    epoch: new_epoch,
                    pause_ms,
                },
            )
            .await;
        // Its connections close before the post-swap steps.
        drop(run);

        let fin = self.finish_switch(dir, actor).await?;
        Ok(format!(
            "{what} done: traffic on the {} at epoch {new_epoch}{dbs}; pause {pause_ms:.1} ms ({breakdown}); {fin}",
            to.as_str()
        ))
    }

    /// Journals step `done` done with `detail` and `next` started, in one transaction that
    /// survives a crash of the process (inside the pause: no fsync).
    pub(super) async fn transition(
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

    /// Waits (polling every 10 ms, for at most `timeout`) until no client session of a
    /// carried database is pinned ([`TrafficControl::pinned`](crate::TrafficControl::pinned)).
    /// When some still are: `[upgrade] pinned = "refuse"` gives `Err(reason)` naming them;
    /// `"terminate"` asks the proxy to end them when they move (FATAL 57P01) and gives `Ok`.
    pub(super) async fn wait_unpinned(
        &self,
        traffic: &Traffic,
        to: Side,
        timeout: Duration,
    ) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let pinned: Vec<_> = traffic
                .pinned()
                .into_iter()
                .filter(|p| self.carries(&p.database))
                .collect();
            if pinned.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                let names = pinned
                    .iter()
                    .take(10)
                    .map(|p| {
                        format!(
                            "pid {} (user {}, database {}: {})",
                            p.pid, p.user, p.database, p.reason
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let more = if pinned.len() > 10 {
                    format!(" and {} more", pinned.len() - 10)
                } else {
                    String::new()
                };
                return match self.cfg.upgrade.pinned {
                    config::PinnedPolicy::Refuse => Err(format!(
                        "{} client sessions still hold state that cannot move to the {} after {} ms ([upgrade] drain_timeout_ms): {names}{more}; \
                         end them (or what they hold), or set [upgrade] pinned = \"terminate\"",
                        pinned.len(),
                        to.as_str(),
                        timeout.as_millis()
                    )),
                    config::PinnedPolicy::Terminate => {
                        let n = traffic.end_pinned(&format!(
                            "terminating connection: the upgrade moves traffic to the {} server and this session holds state that cannot move with it",
                            to.as_str()
                        ));
                        tracing::warn!(
                            "{n} pinned client sessions end at the switch ([upgrade] pinned = \"terminate\"): {names}{more}"
                        );
                        Ok(())
                    }
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After a failure before the swap (traffic already resumed): the driver undoes what the
    /// switch changed, then the row returns to `prev_phase` with state `error` (or `running`
    /// with the reason in `last_error` when the plan tries again).
    pub(super) async fn abandon_switch(
        &self,
        dir: Direction,
        actor: &str,
        prev_phase: Phase,
        reason: &str,
    ) -> String {
        let mut msg = reason.to_string();
        for problem in self.replication.abandon_cleanup(self, dir).await {
            msg.push_str("; ");
            msg.push_str(&problem);
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
        if self.retrying_switch.load(Ordering::SeqCst) {
            // The plan tries again: no `error` state in between.
            let _ = self
                .save(actor, "retry", &msg, |r| {
                    r.phase = prev_phase.as_str().into();
                    r.state = RUNNING.into();
                    r.last_error = Some(msg.clone());
                })
                .await;
        } else {
            self.fail(actor, Some(prev_phase), &msg).await;
        }
        msg
    }

    /// Whether a switch of direction `dir` swapped traffic but its post-swap steps
    /// ([`finish_switch`](Self::finish_switch)) have not all succeeded: the row is still in
    /// the switch's phase with traffic on `dir`'s subscriber.
    pub(super) fn switch_incomplete(&self, dir: Direction) -> bool {
        let row = self.row();
        Phase::parse(&row.phase) == words(dir).2 && row.serving_side == dir.subscriber().as_str()
    }

    /// The last write of a finished switch of direction `dir`: the done phase (`cut_over`,
    /// state `running`: the plan goes on; or `rolled_back`, state `done`), no error, the
    /// running direction turned, journaled with `msg`. Returns `msg`.
    pub(super) async fn switch_done(
        &self,
        dir: Direction,
        actor: &str,
        msg: String,
    ) -> Result<String, ControlError> {
        let (phase, state) = match dir {
            Direction::Forward => (Phase::CutOver, RUNNING),
            Direction::Reverse => (Phase::RolledBack, super::DONE),
        };
        self.save(actor, "phase", &msg, |r| {
            r.phase = phase.as_str().into();
            r.state = state.into();
            r.last_error = None;
            r.direction = dir.reverse().as_str().into();
        })
        .await?;
        Ok(msg)
    }

    /// Post-swap steps of a switch of direction `dir` (the direction that ran before it),
    /// by the driver ([`ReplicationDriver::finish_switch`](super::replication::ReplicationDriver::finish_switch)).
    pub(super) async fn finish_switch(
        &self,
        dir: Direction,
        actor: &str,
    ) -> Result<String, ControlError> {
        self.replication.finish_switch(self, dir, actor).await
    }
}
