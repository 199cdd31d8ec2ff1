//! The `bidirectional` driver (`[replication] driver = "bidirectional"`): native logical
//! replication both ways at once, PostgreSQL 16 or later on both servers.
//!
//! * **InitReplication**: publications `<p>_pub` on the source and `<p>_rev_pub` on the
//!   target, the forward subscription `<p>_fwd` on the target with `copy_data = true,
//!   origin = none` (PostgreSQL docs, "CREATE SUBSCRIPTION": with `origin = none` the
//!   publisher sends only changes that did not come to it by replication, so a row written
//!   on one side is applied on the other once and never sent back).
//! * **WaitForSync**: every table copied (as with `logical`); then each target sequence is
//!   moved `[replication] sequence_gap` values ahead of the source's
//!   ([`Logical::move_sequences_ahead`]) after the source's draw rate during the copy was
//!   checked against it; then the reverse subscription `<p>_rev` on the source with
//!   `copy_data = false, origin = none`, and the wait for its apply worker. From then on a
//!   write may go to either server.
//! * **Switch** (cutover and rollback after cutover): the `logical` protocol without its
//!   reverse set-up: precatchup, pause, drain, barrier, sequences (only forward:
//!   [`Logical::sync_sequences_forward`]), swap. Both subscriptions keep running.
//! * **Health**: the apply workers and `pg_stat_subscription_stats.apply_error_count` of
//!   both subscriptions (a conflict, e.g. the same key inserted on both sides, stops the
//!   apply worker with an error and counts here).
//! * **DetachOld / rollback before cutover**: both subscriptions, slots and publications
//!   removed, as with `logical`.

use super::super::{plan, ControlError, Controller};
use super::logical::{abandon_cleanup, teardown_all, LogicalRun, RunMode};
use super::{ReplicationDriver, SwitchRun};
use crate::logical::{Direction, DriverError, Logical, Preflight};
use crate::Side;
use std::time::{Duration, Instant};

/// Oldest `server_version_num` with the subscription option `origin` (PostgreSQL 16).
const ORIGIN_NONE: i32 = 160000;

/// How long the plan must be able to run after the initial copy with the sequence ranges
/// apart: the draw rate seen during the copy times this must stay under `sequence_gap`.
const SEQUENCE_HORIZON: Duration = Duration::from_secs(24 * 3600);

/// The `bidirectional` driver (module docs).
pub(in crate::controller) struct BidirectionalDriver;

#[async_trait::async_trait]
impl ReplicationDriver for BidirectionalDriver {
    /// Both servers must be PostgreSQL 16 or later (`origin = none`).
    async fn preflight(
        &self,
        c: &Controller,
        _d: &Logical,
        _target: bool,
        mut pf: Preflight,
    ) -> Preflight {
        if let Some(v) = pf.source_version.filter(|v| *v < ORIGIN_NONE) {
            pf.failures.push(format!(
                "source: PostgreSQL {} is older than 16; [replication] driver = \"bidirectional\" needs the subscription option origin = none (PostgreSQL 16+) on both servers; use driver = \"logical\"",
                crate::logical::version_label(v)
            ));
        }
        if let Some(m) = pf.target_major.filter(|m| *m < 16) {
            pf.failures.push(format!(
                "target: PostgreSQL {m} is older than 16; [replication] driver = \"bidirectional\" needs origin = none (PostgreSQL 16+) on both servers"
            ));
        }
        pf.notes.push(format!(
            "bidirectional driver: writes may reach both servers once synchronised; target sequences move {} values ahead of the source's",
            c.cfg.replication.sequence_gap
        ));
        pf
    }

    fn both_ways(&self) -> bool {
        true
    }

    fn configure_params_note(&self) -> &'static str {
        "bidirectional driver: nothing to configure (validate_input checked wal_level, slots, WAL senders and workers on both servers)"
    }

    fn install_extension_note(&self) -> &'static str {
        "bidirectional driver: no extension to install (native publications and subscriptions with origin = none)"
    }

    async fn init(&self, c: &Controller, actor: &str) -> Result<Vec<String>, ControlError> {
        super::logical::LogicalDriver.init(c, actor).await
    }

    async fn wait_sync(&self, c: &Controller, actor: &str) -> Result<(u64, String), DriverError> {
        let src = c.driver.connect(Side::Source).await?;
        let before = draws(c, &src).await?;
        let t0 = Instant::now();
        let (n, msg) = c.wait_sync(actor).await?;
        let mut parts = vec![msg];
        parts.extend(sequence_ranges(c, &before, t0).await?);
        for (i, d) in c.carried().iter().enumerate() {
            let m = d.ensure_subscription_fresh(Direction::Reverse).await?;
            parts.push(plan::db_detail(i, d, &m));
        }
        // The reverse apply workers run before any write may reach the target.
        let deadline = Instant::now() + Duration::from_secs(30);
        for d in c.carried().iter() {
            let s = d.connect(Side::Source).await?;
            loop {
                if let Some((true, true, _)) = d.subscription_health(&s, Direction::Reverse).await?
                {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(DriverError::temporary(format!(
                        "{}: the apply worker of subscription {} did not start within 30 s; see the source's log",
                        d.label(Side::Source),
                        d.names().reverse
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        parts.push("replicating both ways".into());
        Ok((n, parts.join("; ")))
    }

    fn resync_refusal(&self, name: &str) -> Option<String> {
        Some(format!(
            "FORCE RESYNC TABLE {name} not possible with [replication] driver = \"bidirectional\": \
             the table takes writes on both servers, and a re-copy would undo the target's"
        ))
    }

    async fn begin_switch(
        &self,
        c: &Controller,
        dir: Direction,
        actor: &str,
    ) -> Result<Box<dyn SwitchRun>, ControlError> {
        // The other direction must run too: it carries the old side's writes after the swap
        // (and the new side's writes made while shifted).
        for (i, d) in c.carried().iter().enumerate() {
            let other = dir.reverse();
            let cl = d.connect(other.subscriber()).await?;
            match d.subscription_health(&cl, other).await? {
                Some((true, _, _)) => {}
                _ => {
                    return Err(ControlError::refused(format!(
                        "{} refused: {}subscription {} on the {} is missing or disabled, so the {} would not receive the {}'s writes; traffic stays on the {}",
                        super::super::switch::words(dir).1,
                        plan::db_tag(i, d),
                        d.names().subscription(other),
                        other.subscriber().as_str(),
                        dir.publisher().as_str(),
                        dir.subscriber().as_str(),
                        dir.publisher().as_str()
                    )))
                }
            }
        }
        Ok(Box::new(
            LogicalRun::begin(c, dir, actor, RunMode::BothWays).await?,
        ))
    }

    async fn abandon_cleanup(&self, c: &Controller, dir: Direction) -> Vec<String> {
        abandon_cleanup(c, dir, false).await
    }

    /// Both directions run already: the subscription that carried the old serving side's
    /// writes goes back to asynchronous commit, then the row's phase.
    async fn finish_switch(
        &self,
        c: &Controller,
        dir: Direction,
        actor: &str,
    ) -> Result<String, ControlError> {
        for d in c.carried().iter() {
            let cl = d.connect(dir.subscriber()).await?;
            d.set_subscription_sync_commit(
                &cl,
                dir.subscriber(),
                d.names().subscription(dir),
                false,
            )
            .await?;
        }
        let msg = format!(
            "replication runs both ways; writes now go to the {} and reach the {} by subscription {}",
            dir.subscriber().as_str(),
            dir.publisher().as_str(),
            c.driver.names().subscription(dir.reverse())
        );
        c.switch_done(dir, actor, msg).await
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
        super::logical::LogicalDriver
            .teardown(c, actor, target_absent, provisioned)
            .await
    }
}

/// After the initial copy, before any write may reach the target: checks the source's draw
/// rate since `t0` (positions `before`, from [`draws`]) against `[replication]
/// sequence_gap` over [`SEQUENCE_HORIZON`], then moves every target sequence of every carried
/// database `sequence_gap` values ahead of the source's
/// ([`Logical::move_sequences_ahead`](crate::logical::Logical::move_sequences_ahead)), so
/// that no value is drawn on both servers. Returns what was done, one entry per database.
/// `Err` when the gap would not last, naming the gap needed.
pub(super) async fn sequence_ranges(
    c: &Controller,
    before: &std::collections::HashMap<String, i64>,
    t0: Instant,
) -> Result<Vec<String>, DriverError> {
    let src = c.driver.connect(Side::Source).await?;
    let after = draws(c, &src).await?;
    let rate = rate_per_s(before, &after, t0.elapsed());
    let gap = c.cfg.replication.sequence_gap;
    let need = (rate * SEQUENCE_HORIZON.as_secs_f64()).ceil();
    if need > gap as f64 {
        return Err(DriverError::new(format!(
            "the source draws about {rate:.0} sequence values per second; [replication] sequence_gap {gap} would last less than {} h of the upgrade; \
             raise sequence_gap to at least {need:.0}",
            SEQUENCE_HORIZON.as_secs() / 3600
        )));
    }
    let mut parts = Vec::new();
    for (i, d) in c.carried().iter().enumerate() {
        let s = d.connect(Side::Source).await?;
        let t = d.connect(Side::Target).await?;
        let moved = d
            .move_sequences_ahead(&s, Side::Source, &t, Side::Target, gap)
            .await?;
        parts.push(plan::db_detail(
            i,
            d,
            &format!("{moved} target sequences moved {gap} ahead of the source's (source draws {rate:.1}/s)"),
        ));
    }
    Ok(parts)
}

/// Every sequence's position on the source (`schema.name` → last value), for the draw rate.
pub(super) async fn draws(
    c: &Controller,
    src: &tokio_postgres::Client,
) -> Result<std::collections::HashMap<String, i64>, DriverError> {
    Ok(c.driver
        .sequence_values(src, Side::Source)
        .await?
        .into_iter()
        .map(|v| (format!("{}.{}", v.schema, v.name), v.last_value))
        .collect())
}

/// The fastest draw rate of any one sequence between two readings, per second.
fn rate_per_s(
    before: &std::collections::HashMap<String, i64>,
    after: &std::collections::HashMap<String, i64>,
    elapsed: Duration,
) -> f64 {
    let secs = elapsed.as_secs_f64().max(1.0);
    after
        .iter()
        .map(|(k, v)| {
            let b = before.get(k).copied().unwrap_or(*v);
            (*v - b).unsigned_abs() as f64 / secs
        })
        .fold(0.0, f64::max)
}
