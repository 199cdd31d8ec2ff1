//! The `logical` driver (`[replication] driver = "logical"`, the default): native
//! publications and subscriptions ([`Logical`]), one direction at a time. InitReplication
//! makes `<p>_pub` on the source, `<p>_rpub` on the target and the forward subscription on
//! the target; a switch stops the running subscription, makes the reverse slot in the pause,
//! and after the swap the subscription of the other direction on it (`copy_data = false`).
//! See the controller's module docs, "Cutover" and "The catch-up barrier".

use super::super::switch::{abandon, Abandon};
use super::super::{plan, ControlError, Controller, RUNNING};
use super::{ReplicationDriver, SwitchRun};
use crate::logical::{fmt_lsn, Direction, DriverError, Logical};
use crate::{Side, Traffic};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The `logical` driver (module docs).
pub(in crate::controller) struct LogicalDriver;

#[async_trait::async_trait]
impl ReplicationDriver for LogicalDriver {
    fn configure_params_note(&self) -> &'static str {
        "logical driver: nothing to configure (validate_input checked wal_level, slots, WAL senders and workers; a provisioned target was made with wal_level = logical)"
    }

    async fn init(&self, c: &Controller, actor: &str) -> Result<Vec<String>, ControlError> {
        let mut done = Vec::new();
        for (i, d) in c.carried().iter().enumerate() {
            let names = d.names();
            for (k, side, name) in [
                ("publication", Side::Source, &names.publication),
                (
                    "reverse_publication",
                    Side::Target,
                    &names.reverse_publication,
                ),
            ] {
                c.step(actor, &plan::db_key(k, i, d), || async {
                    let created = d.ensure_publication(side, name).await?;
                    Ok((
                        (),
                        format!(
                            "publication {name} on {} {}",
                            side.as_str(),
                            if created { "created" } else { "exists" }
                        ),
                    ))
                })
                .await?;
            }
            let m = c
                .step(actor, &plan::db_key("subscription", i, d), || async {
                    d.ensure_forward_subscription()
                        .await
                        .map(|m| (m.clone(), m))
                })
                .await?;
            done.push(plan::db_detail(i, d, &m));
        }
        Ok(done)
    }

    async fn wait_sync(&self, c: &Controller, actor: &str) -> Result<(u64, String), DriverError> {
        c.wait_sync(actor).await
    }

    async fn begin_switch(
        &self,
        c: &Controller,
        dir: Direction,
        actor: &str,
    ) -> Result<Box<dyn SwitchRun>, ControlError> {
        Ok(Box::new(
            LogicalRun::begin(c, dir, actor, RunMode::OneWay).await?,
        ))
    }

    async fn abandon_cleanup(&self, c: &Controller, dir: Direction) -> Vec<String> {
        abandon_cleanup(c, dir, true).await
    }

    /// Subscription of the other direction on the new slot, then the old subscription dropped.
    async fn finish_switch(
        &self,
        c: &Controller,
        dir: Direction,
        actor: &str,
    ) -> Result<String, ControlError> {
        let kp = super::super::switch::words(dir).0;
        let new_dir = dir.reverse();
        let res: Result<(String, String), ControlError> = async {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for (i, d) in c.carried().iter().enumerate() {
                let m = c
                    .step(
                        actor,
                        &plan::db_key(&format!("{kp}.new_sub"), i, d),
                        || async {
                            d.ensure_subscription_on_slot(new_dir)
                                .await
                                .map(|m| (m.clone(), m))
                        },
                    )
                    .await?;
                a.push(plan::db_detail(i, d, &m));
                let m = c
                    .step(
                        actor,
                        &plan::db_key(&format!("{kp}.drop_old_sub"), i, d),
                        || async { d.drop_subscription(dir).await.map(|m| (m.clone(), m)) },
                    )
                    .await?;
                b.push(plan::db_detail(i, d, &m));
            }
            Ok((a.join("; "), b.join("; ")))
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
                // After a cutover the plan goes on (health checks, DetachOld...).
                c.switch_done(dir, actor, msg).await
            }
            Err(e) => {
                let side = new_dir.publisher();
                let msg = format!(
                    "traffic is on the {} but a step after the swap failed: {}; {} replication {} → {} is not running yet",
                    side.as_str(),
                    e.message,
                    new_dir.as_str(),
                    new_dir.publisher().as_str(),
                    new_dir.subscriber().as_str()
                );
                if c.retrying_switch.load(Ordering::SeqCst) {
                    // The plan tries again: state `running`, the reason in last_error.
                    let _ = c
                        .save(actor, "retry", &msg, |r| {
                            r.state = RUNNING.into();
                            r.last_error = Some(msg.clone());
                        })
                        .await;
                    return Err(ControlError::failed(msg));
                }
                let msg = format!("{msg}; run the command again to finish");
                c.fail(actor, None, &msg).await;
                Err(ControlError::failed(msg))
            }
        }
    }

    async fn detach(&self, c: &Controller) -> Result<String, DriverError> {
        teardown_all(&c.carried(), false).await
    }

    async fn teardown(
        &self,
        c: &Controller,
        actor: &str,
        target_absent: bool,
        provisioned: bool,
    ) -> Result<(), ControlError> {
        let drivers = c.carried();
        if target_absent {
            return c
                .step(actor, "teardown", || async {
                    teardown_all(&drivers, true).await.map(|v| ((), v))
                })
                .await;
        }
        let full = c
            .step(actor, "teardown", || async {
                teardown_all(&drivers, false).await.map(|v| ((), v))
            })
            .await;
        match full {
            // The provisioned target is going anyway: clean the source alone.
            Err(e) if provisioned => {
                tracing::warn!(error = %e, "teardown on both servers failed; cleaning the source, the provisioned target is deleted next");
                c.step(actor, "teardown.source", || async {
                    teardown_all(&drivers, true).await.map(|v| ((), v))
                })
                .await
            }
            r => r,
        }
    }
}

/// Removes the replication objects of every carried database (`source_only`: on the source
/// alone). What was removed, `; `-separated.
pub(in crate::controller) async fn teardown_all(
    drivers: &[Logical],
    source_only: bool,
) -> Result<String, DriverError> {
    let mut out = Vec::new();
    for (i, d) in drivers.iter().enumerate() {
        let v = if source_only {
            d.teardown_source().await?
        } else {
            d.teardown().await?
        };
        out.extend(v.iter().map(|m| plan::db_detail(i, d, m)));
    }
    Ok(out.join("; "))
}

/// One carried database's part of a switch: its driver and its connections to both sides.
struct Leg {
    /// Index in the carried set (0 = the primary database).
    i: usize,
    d: Logical,
    pub_c: tokio_postgres::Client,
    sub_c: tokio_postgres::Client,
    /// The running direction's subscription.
    sub: String,
    /// The slot of the other direction, made fresh at the switch.
    new_slot: String,
}

impl Leg {
    /// `database <name>: ` for a non-primary database, for messages; empty for the primary.
    fn tag(&self) -> String {
        plan::db_tag(self.i, &self.d)
    }

    fn abandon(&self, e: DriverError) -> Abandon {
        Abandon {
            reason: format!("{}{}", self.tag(), e.message),
            resumed: false,
        }
    }
}

/// Which driver a [`LogicalRun`] switches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunMode {
    /// `logical`: the running subscription stops in the pause and the reverse slot is made.
    OneWay,
    /// `bidirectional`: both subscriptions run on; nothing is stopped or made in the
    /// pause, and sequences only move forward.
    BothWays,
    /// `pgactive`: as `BothWays`, with pgactive's slots and no subscription to check or set.
    Pgactive,
}

/// A switch with the `logical`, `bidirectional` or `pgactive` driver: one [`Leg`] per
/// carried database.
pub(super) struct LogicalRun {
    dir: Direction,
    legs: Vec<Leg>,
    mode: RunMode,
}

impl LogicalRun {
    /// Connections and checks before the pause, for every carried database (`mode`: the
    /// driver; with both ways the run stops nothing and makes no slot). Every
    /// statement inside the pause is bounded by statement_timeout (= catchup_timeout_ms):
    /// e.g. creating the slot waits for every transaction running on that server, including
    /// ones opened outside pgshift.
    pub(super) async fn begin(
        c: &Controller,
        dir: Direction,
        actor: &str,
        mode: RunMode,
    ) -> Result<LogicalRun, ControlError> {
        let from = dir.publisher();
        let to = dir.subscriber();
        let what = super::super::switch::words(dir).1;
        let bound = format!(
            "SET statement_timeout = {}",
            c.cfg.upgrade.catchup_timeout_ms.max(1000)
        );
        let drivers = c.carried();
        let mut legs = Vec::with_capacity(drivers.len());
        for (i, d) in drivers.iter().enumerate() {
            let leg = Leg {
                i,
                d: d.clone(),
                pub_c: d.connect(from).await?,
                sub_c: d.connect(to).await?,
                sub: d.names().subscription(dir).to_string(),
                new_slot: d.names().subscription(dir.reverse()).to_string(),
            };
            for (cl, side) in [(&leg.pub_c, from), (&leg.sub_c, to)] {
                cl.batch_execute(&bound).await.map_err(|e| {
                    crate::logical::pg_error(
                        &format!("{}: SET statement_timeout", d.label(side)),
                        &e,
                    )
                })?;
            }
            if mode == RunMode::Pgactive {
                // No subscription: the driver checked the nodes before.
                legs.push(leg);
                continue;
            }
            let sub = &leg.sub;
            match d.subscription_state(&leg.sub_c, to, sub).await? {
                None => {
                    let msg = format!(
                        "{what} not possible: {}subscription {sub} is missing on the {}; traffic stays on the {}",
                        leg.tag(),
                        to.as_str(),
                        from.as_str()
                    );
                    c.fail(actor, None, &msg).await;
                    return Err(ControlError::refused(msg));
                }
                Some(false) => {
                    d.enable_subscription(&leg.sub_c, to, sub).await?;
                    tracing::warn!(subscription = %sub, "subscription was disabled; enabled it before the {what}");
                }
                Some(true) => {}
            }
            if dir == Direction::Forward {
                // Every table must be replicated and synchronised (an interrupted FORCE RESYNC
                // TABLE leaves one out, or copying).
                if let Some(problem) = d.forward_problem(&leg.sub_c).await? {
                    return Err(ControlError::refused(format!(
                        "cutover refused: {}{problem}; traffic stays on the source",
                        leg.tag()
                    )));
                }
            }
            legs.push(leg);
        }
        Ok(LogicalRun { dir, legs, mode })
    }
}

#[async_trait::async_trait]
impl SwitchRun for LogicalRun {
    fn databases(&self) -> usize {
        self.legs.len()
    }

    fn reverses(&self) -> bool {
        self.mode == RunMode::OneWay
    }

    /// Prepared transactions on the publisher: wait for their COMMIT / ROLLBACK PREPARED
    /// (it cannot come during the pause: the sessions are held). Then the precatchup of
    /// every database, and the running subscriptions apply synchronously from then on, so
    /// the subscribers report their positions at once.
    async fn before_pause(
        &mut self,
        c: &Controller,
        _traffic: &Traffic,
        actor: &str,
    ) -> Result<(), String> {
        let dir = self.dir;
        let (from, to) = (dir.publisher(), dir.subscriber());
        let (kp, what, _) = super::super::switch::words(dir);
        let drain_timeout = Duration::from_millis(c.cfg.upgrade.drain_timeout_ms);
        let catchup_timeout = Duration::from_millis(c.cfg.upgrade.catchup_timeout_ms);
        let ready: Result<(), String> = async {
            let started = Instant::now();
            for leg in &self.legs {
                let left = drain_timeout.saturating_sub(started.elapsed());
                wait_no_prepared(&leg.d, &leg.pub_c, from, left)
                    .await
                    .map_err(|e| format!("{}{}", leg.tag(), e.message))?;
            }
            Ok(())
        }
        .await;
        if let Err(why) = ready {
            return Err(format!(
                "{what} not started: {why}; traffic stays on the {}",
                from.as_str()
            ));
        }
        // Before the pause: let the subscribers apply the publishers' current positions, so
        // the pause covers only what is written meanwhile. This also waits out an apply worker
        // that has not started yet (the launcher starts at most one per
        // wal_retrieve_retry_interval, 5 s by default, e.g. right after the previous switch
        // created the subscription).
        let id = c.row().id;
        let key = format!("{kp}.precatchup");
        c.journal
            .step(id, &key, crate::journal::StepStatus::Started, None, actor)
            .await
            .map_err(|e| format!("journal: {e}"))?;
        let pgactive = self.mode == RunMode::Pgactive;
        let pre = futures_util::future::try_join_all(self.legs.iter().map(|leg| async move {
            if pgactive {
                pgactive_catch_up(leg, dir, what, catchup_timeout)
                    .await
                    .map(|(n, ms)| {
                        format!(
                            "{}{} saw barrier {n} of the {} after {ms:.1} ms",
                            leg.tag(),
                            to.as_str(),
                            from.as_str()
                        )
                    })
                    .map_err(|a| DriverError::new(a.reason))
            } else {
                precatchup(c, leg, dir, what, catchup_timeout).await
            }
        }))
        .await
        .map(|v| v.join("; "));
        match pre {
            Ok(detail) => c
                .journal
                .step(
                    id,
                    &key,
                    crate::journal::StepStatus::Done,
                    Some(detail),
                    actor,
                )
                .await
                .map_err(|e| format!("journal: {e}"))?,
            Err(e) => {
                let _ = c
                    .journal
                    .step(
                        id,
                        &key,
                        crate::journal::StepStatus::Failed,
                        Some(e.message.clone()),
                        actor,
                    )
                    .await;
                return Err(e.message);
            }
        }
        if self.mode != RunMode::Pgactive {
            for leg in &self.legs {
                leg.d
                    .set_subscription_sync_commit(&leg.sub_c, to, &leg.sub, true)
                    .await
                    .map_err(|e| e.message)?;
            }
        }
        Ok(())
    }

    /// One prepared between the wait before the pause and the pause: the next attempt waits
    /// for it.
    async fn check_paused(&mut self, _c: &Controller) -> Result<(), Abandon> {
        let (from, what) = (
            self.dir.publisher(),
            super::super::switch::words(self.dir).1,
        );
        let mut open = Vec::new();
        for leg in &self.legs {
            let gids = leg
                .d
                .prepared_xacts(&leg.pub_c, from)
                .await
                .map_err(abandon)?;
            open.extend(gids.into_iter().map(|g| format!("{}{g}", leg.tag())));
        }
        if !open.is_empty() {
            return Err(Abandon {
                reason: format!(
                    "{} prepared transaction(s) open on the {}: {}; {what} abandoned, traffic stays on the {}",
                    open.len(),
                    from.as_str(),
                    open.join(", "),
                    from.as_str()
                ),
                resumed: false,
            });
        }
        Ok(())
    }

    /// A barrier in every database, each waited for at once.
    async fn barrier(&mut self, c: &Controller) -> Result<String, Abandon> {
        let dir = self.dir;
        let what = super::super::switch::words(dir).1;
        let timeout = Duration::from_millis(c.cfg.upgrade.catchup_timeout_ms);
        if self.mode == RunMode::Pgactive {
            let seen = futures_util::future::try_join_all(
                self.legs
                    .iter()
                    .map(|leg| pgactive_catch_up(leg, dir, what, timeout)),
            )
            .await?;
            let applied: Vec<String> = self
                .legs
                .iter()
                .zip(&seen)
                .map(|(leg, (n, ms))| format!("{}barrier {n} in {ms:.1} ms", leg.tag()))
                .collect();
            return Ok(format!(
                "{} applied {}",
                dir.subscriber().as_str(),
                applied.join(", ")
            ));
        }
        let xs = futures_util::future::try_join_all(
            self.legs
                .iter()
                .map(|leg| catch_up(leg, dir, what, timeout)),
        )
        .await?;
        let applied: Vec<String> = self
            .legs
            .iter()
            .zip(&xs)
            .map(|(leg, x)| format!("{}{}", leg.tag(), fmt_lsn(*x)))
            .collect();
        Ok(format!(
            "{} applied {}",
            dir.subscriber().as_str(),
            applied.join(", ")
        ))
    }

    async fn stop_old(&mut self, _c: &Controller) -> Result<String, Abandon> {
        let to = self.dir.subscriber();
        futures_util::future::try_join_all(self.legs.iter().map(|leg| async move {
            leg.d
                .stop_subscription(&leg.sub_c, to, &leg.sub, Duration::from_secs(5))
                .await
                .map_err(|e| leg.abandon(e))
        }))
        .await?;
        let subs: Vec<&str> = self.legs.iter().map(|l| l.sub.as_str()).collect();
        Ok(format!("subscription {} disabled", subs.join(", ")))
    }

    async fn sequences(&mut self, _c: &Controller) -> Result<u64, Abandon> {
        let (from, to) = (self.dir.publisher(), self.dir.subscriber());
        let forward_only = self.mode != RunMode::OneWay;
        let ns = futures_util::future::try_join_all(self.legs.iter().map(|leg| async move {
            let r = if forward_only {
                leg.d
                    .sync_sequences_forward(&leg.pub_c, from, &leg.sub_c, to)
                    .await
            } else {
                leg.d.sync_sequences(&leg.pub_c, from, &leg.sub_c, to).await
            };
            r.map_err(|e| leg.abandon(e))
        }))
        .await?;
        Ok(ns.iter().map(|n| *n as u64).sum())
    }

    async fn reverse_slot(&mut self, _c: &Controller) -> Result<String, Abandon> {
        let to = self.dir.subscriber();
        let lsns = futures_util::future::try_join_all(self.legs.iter().map(|leg| async move {
            leg.d
                .recreate_slot(&leg.sub_c, to, &leg.new_slot)
                .await
                .map_err(|e| leg.abandon(e))
        }))
        .await?;
        let slots: Vec<String> = self
            .legs
            .iter()
            .zip(&lsns)
            .map(|(leg, lsn)| format!("slot {} created at {}", leg.new_slot, fmt_lsn(*lsn)))
            .collect();
        Ok(slots.join("; "))
    }
}

/// The precatchup of one database (module docs, "Cutover"): waits, at most `timeout`,
/// until the subscriber applied the publisher's current position and is at most
/// `[upgrade] pause_lag_bytes` behind. Returns what it saw.
async fn precatchup(
    c: &Controller,
    leg: &Leg,
    dir: Direction,
    what: &str,
    catchup_timeout: Duration,
) -> Result<String, DriverError> {
    let (d, pub_c) = (&leg.d, &leg.pub_c);
    let (from, to) = (dir.publisher(), dir.subscriber());
    let tag = leg.tag();
    let x0 = d.current_lsn(pub_c, from).await?;
    let started = Instant::now();
    let pause_lag = c.cfg.upgrade.pause_lag_bytes;
    let mut reached = None;
    let mut lag = None;
    loop {
        let a = d.applied(pub_c, dir).await?;
        if reached.is_none() && a.position().is_some_and(|p| p >= x0) {
            reached = Some(started.elapsed());
        }
        if let (Some(t), Some(p)) = (reached, a.position()) {
            // Then the pause starts only while the lag is small: the catch-up inside
            // it is only as long as applying that much.
            let behind = d.current_lsn(pub_c, from).await?.saturating_sub(p);
            if behind <= pause_lag {
                return Ok(format!(
                    "{tag}{} applied {} in {} ms; {behind} bytes behind at the pause (pause_lag_bytes {pause_lag}) after {} ms",
                    to.as_str(),
                    fmt_lsn(x0),
                    t.as_millis(),
                    started.elapsed().as_millis()
                ));
            }
            lag = Some(behind);
        }
        if started.elapsed() >= catchup_timeout {
            if let Some(behind) = lag {
                return Err(DriverError::new(format!(
                    "{tag}the {} stayed more than [upgrade] pause_lag_bytes ({pause_lag}) behind the {} for {} ms (last {behind} bytes); \
                     {what} not started, traffic stays on the {}; lower the write load or raise pause_lag_bytes",
                    to.as_str(),
                    from.as_str(),
                    catchup_timeout.as_millis(),
                    from.as_str()
                )));
            }
            let at = a.position();
            return Err(DriverError::new(format!(
                "{tag}the {} has not applied the {}'s position {} within {} ms (applied up to {}, {} bytes behind); \
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

/// Inside the pause: the barrier on the publisher (module docs, "The catch-up barrier") and
/// the wait, at most `timeout`, until the subscriber applied it. Returns the barrier LSN.
async fn catch_up(
    leg: &Leg,
    dir: Direction,
    what: &str,
    timeout: Duration,
) -> Result<u64, Abandon> {
    let (from, to) = (dir.publisher(), dir.subscriber());
    let x = leg
        .d
        .barrier_lsn(&leg.pub_c, from)
        .await
        .map_err(|e| leg.abandon(e))?;
    let started = Instant::now();
    loop {
        let a = leg
            .d
            .applied(&leg.pub_c, dir)
            .await
            .map_err(|e| leg.abandon(e))?;
        if a.position().is_some_and(|p| p >= x) {
            return Ok(x);
        }
        if started.elapsed() >= timeout {
            let at = a.position();
            return Err(Abandon {
                reason: format!(
                    "{}catch-up deadline passed after {} ms: the {} applied up to {}, the {} is at {} ({} bytes behind); \
                     {what} abandoned, traffic stays on the {}",
                    leg.tag(),
                    started.elapsed().as_millis(),
                    to.as_str(),
                    at.map(fmt_lsn).unwrap_or_else(|| "nothing".into()),
                    from.as_str(),
                    fmt_lsn(x),
                    at.map(|p| x.saturating_sub(p).to_string())
                        .unwrap_or_else(|| "?".into()),
                    from.as_str()
                ),
                resumed: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The `pgactive` driver's barrier in one database: the serving node's barrier row moved on
/// ([`Logical::pgactive_barrier`]), then the wait, at most `timeout`, until the other node
/// shows it (pgactive applies in commit order: everything committed before is applied).
/// Returns (the barrier's number, ms until seen).
async fn pgactive_catch_up(
    leg: &Leg,
    dir: Direction,
    what: &str,
    timeout: Duration,
) -> Result<(i64, f64), Abandon> {
    let (from, to) = (dir.publisher(), dir.subscriber());
    let n = leg
        .d
        .pgactive_barrier(&leg.pub_c, from)
        .await
        .map_err(|e| leg.abandon(e))?;
    let started = Instant::now();
    loop {
        let seen = leg
            .d
            .pgactive_barrier_seen(&leg.sub_c, to, from)
            .await
            .map_err(|e| leg.abandon(e))?;
        if seen >= n {
            return Ok((n, started.elapsed().as_secs_f64() * 1000.0));
        }
        if started.elapsed() >= timeout {
            return Err(Abandon {
                reason: format!(
                    "{}catch-up deadline passed after {} ms: the {} shows barrier {seen} of the {}, which wrote {n}; \
                     {what} abandoned, traffic stays on the {}; check pgactive (pgactive.pgactive_get_workers_info(), the servers' logs)",
                    leg.tag(),
                    started.elapsed().as_millis(),
                    to.as_str(),
                    from.as_str(),
                    from.as_str()
                ),
                resumed: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits (polling every 10 ms, for at most `timeout`) until the publisher `side` (connection
/// `c`) has no prepared transaction open in its database. `Err` names them when the time is up.
async fn wait_no_prepared(
    d: &Logical,
    c: &tokio_postgres::Client,
    side: Side,
    timeout: Duration,
) -> Result<(), DriverError> {
    let started = Instant::now();
    loop {
        let open = d.prepared_xacts(c, side).await?;
        if open.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(DriverError::new(format!(
                "{} prepared transaction(s) still open on the {} after {} ms ([upgrade] drain_timeout_ms): {}; \
                 COMMIT PREPARED or ROLLBACK PREPARED them",
                open.len(),
                side.as_str(),
                timeout.as_millis(),
                open.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After an abandoned switch of `dir`: the running subscriptions back to asynchronous
/// commit and enabled, and (`drop_new_slot`: the `logical` driver) the reverse slot made in
/// the pause dropped. Returns what could not be undone.
pub(super) async fn abandon_cleanup(
    c: &Controller,
    dir: Direction,
    drop_new_slot: bool,
) -> Vec<String> {
    let to = dir.subscriber();
    let mut problems = Vec::new();
    for (i, d) in c.carried().iter().enumerate() {
        let sub = d.names().subscription(dir).to_string();
        let new_slot = d.names().subscription(dir.reverse()).to_string();
        let cleanup: Result<(), DriverError> = async {
            let cl = d.connect(to).await?;
            d.set_subscription_sync_commit(&cl, to, &sub, false).await?;
            d.enable_subscription(&cl, to, &sub).await?;
            // No subscription of the other direction exists before the swap: the slot is unused.
            if drop_new_slot
                && d.subscription_state(
                    &d.connect(dir.publisher()).await?,
                    dir.publisher(),
                    &new_slot,
                )
                .await?
                .is_none()
            {
                d.drop_slot(&cl, to, &new_slot).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = cleanup {
            problems.push(format!(
                "cleanup incomplete ({}): {}subscription {sub} on the {} may still be disabled, retry the command",
                e.message,
                plan::db_tag(i, d),
                to.as_str()
            ));
        }
    }
    problems
}
