//! The plan's steps with the `mirror` replication driver (`[replication] driver = "mirror"`,
//! for sources without logical decoding). The proxy records committed write transactions
//! and applies them on the other side ([`Capture`]); the controller starts it at the
//! instant of a consistent snapshot, makes the initial copy, and switches its direction at
//! cutover and rollback:
//!
//! * **InitReplication**: the schema copy (as with `logical`), then a pause: traffic held,
//!   open transactions drained (at most `drain_timeout_ms`), a snapshot exported on the
//!   source (`pg_export_snapshot`; PostgreSQL docs 9.27.5 "Snapshot Synchronization
//!   Functions"), sequences set on the target, capture started; traffic resumes. Every
//!   write committed after the snapshot is in the queue, every one before it is in the
//!   snapshot. Then the parallel `COPY` of every table as of the snapshot, then applying
//!   starts. The pause is journaled with its length in ms.
//! * **WaitForSync**: applying catches up with what was recorded when it started.
//! * **Cutover / rollback after cutover**: before the pause, applying catches up; in the
//!   pause (drain), it applies everything recorded; sequences are copied; the swap is
//!   journaled; capture starts on the new serving side, applying on the old one (the way
//!   back); traffic goes over.
//! * **DetachOld / rollback before cutover**: capture stops, its queue files and the
//!   `<prefix>_mirror` schema (the applied positions) are removed.
//!
//! **Source versions.** What the control plane runs on the source (preflight, snapshot
//! export and copy, sequence reads, and on rollback after cutover the sequence writes and
//! the health probe) branches on `server_version_num` down to PostgreSQL 9.2; preflight
//! refuses older sources, and 9.2 for the rollback after cutover (see
//! [`mirror_version_failures`]). Tested against real servers from 10 on (the oldest major
//! the test harness has).

use super::super::switch::{drain, words, Abandon};
use super::super::{ControlError, Controller};
use super::{LagProbe, ReplicationDriver, SwitchRun};
use crate::logical::{quote_ident, Direction, DriverError, Lag, Preflight};
use crate::{Capture, CaptureState, Side, Traffic};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Preflight failures that only native logical replication has (`wal_level`, slots, WAL
/// senders, apply workers, replica identity): the `mirror` driver needs none of them.
fn logical_only(failure: &str) -> bool {
    [
        "wal_level",
        "max_replication_slots",
        "max_wal_senders",
        "max_logical_replication_workers",
        "max_sync_workers",
        "REPLICA IDENTITY",
        "no native logical replication",
        // The preflight's long transactions (logical/checks.rs): the mirror driver makes
        // no slot.
        "creating the logical replication slot",
    ]
    .iter()
    .any(|k| failure.contains(k))
}

/// What the `mirror` driver cannot do on a source of `server_version_num` `v` (empty from
/// 9.3 on). The SQL the control plane sends to the source branches on the version down to
/// 9.2; what is left:
///
/// * before 9.2 there is no `pg_export_snapshot()` (docs 9.27.5, "Snapshot Synchronization
///   Functions", new in 9.2): the initial copy cannot be consistent with the start of the
///   capture;
/// * before 9.3 there is no `CREATE SCHEMA IF NOT EXISTS` (docs "CREATE SCHEMA"; release
///   notes of 9.3), which the proxy's applier sends first on the server it applies to
///   (`proxy/src/capture/apply.rs`, retried every second): after cutover that is the source,
///   so the target's writes would never be applied back, and ROLLBACK UPGRADE after cutover
///   would be refused for the lag (the applier, not the control plane, would have to branch
///   there, e.g. a `DO` block that creates the schema when `pg_namespace` lacks it).
pub(crate) fn mirror_version_failures(v: i32) -> Vec<String> {
    let label = crate::logical::version_label(v);
    if v < 90200 {
        vec![format!(
            "source: PostgreSQL {label} (server_version_num {v}) is older than 9.2; the mirror driver's initial copy needs \
             pg_export_snapshot() (PostgreSQL 9.2+) to start the capture at the instant of the copied snapshot; upgrade the source to 9.2 or later first"
        )]
    } else if v < 90300 {
        vec![format!(
            "source: PostgreSQL {label} (server_version_num {v}): after cutover the mirror driver applies the target's writes back to the source, \
             and its applier starts with CREATE SCHEMA IF NOT EXISTS (PostgreSQL 9.3+): they would never reach the source and \
             ROLLBACK UPGRADE after cutover would be refused; upgrade the source to 9.3 or later first"
        )]
    } else {
        Vec::new()
    }
}

/// A new capture generation: milliseconds since the epoch (unique and increasing).
fn new_gen() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

impl Controller {
    /// Hands the controller the proxy's capture for the `mirror` driver (see [`Capture`]).
    /// Called once, before the plan runs.
    pub fn set_capture(&self, capture: Arc<dyn Capture>) {
        if self.capture.set(capture).is_err() {
            tracing::warn!("Controller::set_capture called twice; the first stays");
        }
    }

    /// Whether `[replication] driver = "mirror"`.
    pub fn mirror_driver(&self) -> bool {
        self.cfg.replication.driver == config::Driver::Mirror
    }

    /// Where the mirror driver's capture stands (`None` with another driver).
    pub fn capture_state(&self) -> Option<CaptureState> {
        self.capture.get().map(|c| c.state())
    }

    fn capture_handle(&self) -> Result<Arc<dyn Capture>, DriverError> {
        self.capture.get().cloned().ok_or_else(|| {
            DriverError::new(
                "[replication] driver = \"mirror\" needs the proxy's capture, which is not running",
            )
        })
    }

    /// InitReplication with the `mirror` driver, after the schema copy (see the module docs).
    async fn init_capture(&self, actor: &str) -> Result<String, DriverError> {
        let cap = self.capture_handle()?;
        let traffic = self.traffic().map_err(|e| DriverError::new(e.message))?;
        let d = &self.driver;
        let src = d.connect(Side::Source).await?;
        let tgt = d.connect(Side::Target).await?;
        let gen = new_gen();
        let drain_timeout = Duration::from_millis(self.cfg.upgrade.drain_timeout_ms);
        let paused_at = Instant::now();
        traffic.pause();
        let held: Result<_, DriverError> = async {
            drain(&traffic, paused_at, drain_timeout).await.map_err(|busy| {
                DriverError::temporary(format!(
                    "drain deadline passed: {busy} sessions still in a transaction; the capture did not start (tried again)"
                ))
            })?;
            let snap = d.export_snapshot().await?;
            let seqs = d
                .sync_sequences(&src, Side::Source, &tgt, Side::Target)
                .await?;
            cap.start(gen, Side::Source).map_err(DriverError::new)?;
            Ok((snap, seqs))
        }
        .await;
        traffic.resume();
        let pause_ms = paused_at.elapsed().as_secs_f64() * 1000.0;
        let (snap, seqs) = held?;
        let msg = format!(
            "capture of committed writes started (generation {gen}) at snapshot {}: pause {pause_ms:.1} ms; {seqs} sequences set on the target",
            snap.id
        );
        tracing::info!("{msg}");
        let _ = self.journal.event(actor, "info", &msg).await;
        let jobs = self.cfg.replication.copy_jobs.max(1) as usize;
        let exclude = vec![format!("{}_mirror", self.cfg.replication.object_prefix)];
        let copied = match d.copy_snapshot(&snap.id, jobs, &exclude).await {
            Ok(r) => r,
            Err(e) => {
                cap.stop(true);
                return Err(e);
            }
        };
        let _ = snap.release().await;
        cap.apply(gen).map_err(DriverError::new)?;
        Ok(format!(
            "{msg}; initial copy: {} tables, {} rows, {} bytes in {} ms with {jobs} jobs; applying the recorded transactions",
            copied.tables, copied.rows, copied.bytes, copied.ms
        ))
    }

    /// WaitForSync with the `mirror` driver: applying reaches what was recorded when the
    /// step started. Returns (applied seq, message).
    async fn wait_capture_sync(&self) -> Result<(u64, String), DriverError> {
        let cap = self.capture_handle()?;
        let goal = cap.state().captured;
        let started = Instant::now();
        loop {
            let st = cap.state();
            if let Some(f) = st.failed {
                return Err(DriverError::new(format!(
                    "applying the captured transactions stopped: {f}"
                )));
            }
            if st.from.is_none() {
                return Err(DriverError::new(
                    "the capture of committed writes does not run (restart the upgrade: ROLLBACK UPGRADE, START UPGRADE)",
                ));
            }
            if st.applied >= goal {
                return Ok((
                    st.applied,
                    format!(
                        "applied the {goal} transactions recorded since the snapshot in {} ms",
                        started.elapsed().as_millis()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until applying reaches seq `x`, at most `timeout`. Errors: applying stopped, or
    /// the deadline (with where it stands).
    async fn capture_reach(
        &self,
        cap: &Arc<dyn Capture>,
        x: u64,
        timeout: Duration,
    ) -> Result<u128, String> {
        let started = Instant::now();
        loop {
            let st = cap.state();
            if let Some(f) = st.failed {
                return Err(format!("applying the captured transactions stopped: {f}"));
            }
            if st.applied >= x {
                return Ok(started.elapsed().as_millis());
            }
            if started.elapsed() >= timeout {
                return Err(format!(
                    "the captured transactions were not applied within {} ms (applied up to seq {}, recorded {x}, {} bytes behind)",
                    timeout.as_millis(),
                    st.applied,
                    st.lag_bytes
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// DetachOld and rollback before cutover with the `mirror` driver: capture stops, its
    /// queue and the `<prefix>_mirror` schema on both servers go. Returns what was done.
    async fn teardown_capture(&self) -> Result<Vec<String>, DriverError> {
        let mut done = Vec::new();
        if let Ok(cap) = self.capture_handle() {
            cap.stop(true);
            done.push("capture stopped, its queue removed".to_string());
        }
        let schema = format!("{}_mirror", self.cfg.replication.object_prefix);
        for side in [Side::Source, Side::Target] {
            let c = self.driver.connect(side).await?;
            c.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(&schema)
            ))
            .await
            .map_err(|e| {
                crate::logical::pg_error(
                    &format!("{}: dropping schema {schema}", self.driver.label(side)),
                    &e,
                )
            })?;
        }
        done.push(format!("schema {schema} dropped on both servers"));
        Ok(done)
    }
}

/// The `mirror` driver (module docs).
pub(in crate::controller) struct MirrorDriver;

#[async_trait::async_trait]
impl ReplicationDriver for MirrorDriver {
    /// Drops the preflight failures that only the `logical` driver has, and adds what the
    /// `mirror` driver needs of the source's version ([`mirror_version_failures`]).
    async fn preflight(
        &self,
        _c: &Controller,
        _d: &crate::logical::Logical,
        _target: bool,
        mut pf: Preflight,
    ) -> Preflight {
        let n = pf.failures.len();
        pf.failures.retain(|f| !logical_only(f));
        pf.notes.push(format!(
            "mirror driver: no logical decoding needed ({} logical-replication requirement(s) not applied)",
            n - pf.failures.len()
        ));
        if let Some(v) = pf.source_version {
            pf.failures.extend(mirror_version_failures(v));
        }
        pf
    }

    /// The capture records DDL with the rest and applies it on the other side in commit
    /// order: nothing to gate.
    fn ddl_gate(&self, _policy: config::DdlPolicy, _ready: bool) -> crate::DdlGate {
        crate::DdlGate::default()
    }

    fn primary_only(&self) -> bool {
        true
    }

    /// Mirror needs no logical decoding on the source; the target applies what pgshift
    /// sends.
    fn rds_parameters(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    fn configure_params_note(&self) -> &'static str {
        "mirror driver: nothing to configure (no logical decoding; pgshift records and applies the writes itself)"
    }

    async fn init(&self, c: &Controller, actor: &str) -> Result<Vec<String>, ControlError> {
        let m = c
            .step(actor, "capture", || async {
                c.init_capture(actor).await.map(|m| (m.clone(), m))
            })
            .await?;
        Ok(vec![m])
    }

    async fn wait_sync(&self, c: &Controller, _actor: &str) -> Result<(u64, String), DriverError> {
        c.wait_capture_sync().await
    }

    /// Bytes recorded and not applied yet.
    fn lag_probe(&self, c: &Controller) -> LagProbe {
        match c.capture_state() {
            None => LagProbe::Slots,
            Some(st) => LagProbe::Known(Some(Lag {
                bytes: Some(i64::try_from(st.lag_bytes).unwrap_or(i64::MAX)),
                seconds: None,
            })),
        }
    }

    fn resync_refusal(&self, name: &str) -> Option<String> {
        // Its method is a publication and the subscription's table list (PostgreSQL 10+
        // on the source), which the mirror driver has none of.
        Some(format!(
            "FORCE RESYNC TABLE {name} not possible: it is for [replication] driver = \"logical\" only; \
             with the mirror driver every table was copied from one snapshot and every write since is applied"
        ))
    }

    async fn begin_switch(
        &self,
        c: &Controller,
        dir: Direction,
        _actor: &str,
    ) -> Result<Box<dyn SwitchRun>, ControlError> {
        let cap = c.capture_handle()?;
        let (from, to) = (dir.publisher(), dir.subscriber());
        let what = words(dir).1;
        let st = cap.state();
        if let Some(f) = &st.failed {
            return Err(ControlError::refused(format!(
                "{what} refused: applying the captured transactions stopped: {f}; traffic stays on the {}",
                from.as_str()
            )));
        }
        if st.from != Some(from) || !st.applying {
            return Err(ControlError::refused(format!(
                "{what} refused: the capture of committed writes does not run on the {} with applying on the {}; traffic stays on the {}",
                from.as_str(),
                to.as_str(),
                from.as_str()
            )));
        }
        let pub_c = c.driver.connect(from).await?;
        let sub_c = c.driver.connect(to).await?;
        Ok(Box::new(MirrorRun {
            dir,
            cap,
            pub_c,
            sub_c,
        }))
    }

    /// Nothing changed before the swap: the capture of the running direction goes on.
    async fn abandon_cleanup(&self, _c: &Controller, _dir: Direction) -> Vec<String> {
        Vec::new()
    }

    /// The capture of the new direction started inside the switch: only the row's phase.
    async fn finish_switch(
        &self,
        c: &Controller,
        dir: Direction,
        actor: &str,
    ) -> Result<String, ControlError> {
        let msg = format!(
            "committed writes on the {} are recorded and applied on the {}",
            dir.subscriber().as_str(),
            dir.publisher().as_str()
        );
        c.switch_done(dir, actor, msg).await
    }

    async fn detach(&self, c: &Controller) -> Result<String, DriverError> {
        Ok(c.teardown_capture().await?.join("; "))
    }

    async fn teardown(
        &self,
        c: &Controller,
        actor: &str,
        target_absent: bool,
        _provisioned: bool,
    ) -> Result<(), ControlError> {
        if target_absent {
            // Nothing was captured yet (InitReplication needs the target): the source's
            // objects only, as with the logical driver.
            let drivers = c.carried();
            return c
                .step(actor, "teardown", || async {
                    super::logical::teardown_all(&drivers, true)
                        .await
                        .map(|v| ((), v))
                })
                .await;
        }
        c.step(actor, "teardown", || async {
            c.teardown_capture().await.map(|v| ((), v.join("; ")))
        })
        .await
    }
}

/// A switch with the `mirror` driver: the capture and connections to both sides.
struct MirrorRun {
    dir: Direction,
    cap: Arc<dyn Capture>,
    pub_c: tokio_postgres::Client,
    sub_c: tokio_postgres::Client,
}

impl MirrorRun {
    /// `reason` with what happens to the switch.
    fn abandoned(&self, reason: String) -> Abandon {
        Abandon {
            reason: format!(
                "{reason}; {} abandoned, traffic stays on the {}",
                words(self.dir).1,
                self.dir.publisher().as_str()
            ),
            resumed: false,
        }
    }
}

#[async_trait::async_trait]
impl SwitchRun for MirrorRun {
    fn databases(&self) -> usize {
        1
    }

    fn reverses(&self) -> bool {
        false
    }

    /// Applying catches up with what is recorded now.
    async fn before_pause(
        &mut self,
        c: &Controller,
        _traffic: &Traffic,
        _actor: &str,
    ) -> Result<(), String> {
        let timeout = Duration::from_millis(c.cfg.upgrade.catchup_timeout_ms);
        c.capture_reach(&self.cap, self.cap.state().captured, timeout)
            .await
            .map(|_| ())
            .map_err(|m| self.abandoned(m).reason)
    }

    /// Everything recorded until the pause is applied.
    async fn barrier(&mut self, c: &Controller) -> Result<String, Abandon> {
        let timeout = Duration::from_millis(c.cfg.upgrade.catchup_timeout_ms);
        let x = self.cap.state().captured;
        c.capture_reach(&self.cap, x, timeout)
            .await
            .map_err(|m| self.abandoned(m))?;
        Ok(format!(
            "{} applied seq {x}",
            self.dir.subscriber().as_str()
        ))
    }

    async fn sequences(&mut self, c: &Controller) -> Result<u64, Abandon> {
        let (from, to) = (self.dir.publisher(), self.dir.subscriber());
        match c
            .driver
            .sync_sequences(&self.pub_c, from, &self.sub_c, to)
            .await
        {
            Ok(n) => Ok(n as u64),
            Err(e) => Err(self.abandoned(e.message)),
        }
    }

    /// The way back: record the new serving side, apply on the old one.
    async fn after_swap_journaled(
        &mut self,
        _c: &Controller,
    ) -> Result<Option<&'static str>, Abandon> {
        let gen = new_gen();
        let to = self.dir.subscriber();
        self.cap
            .start(gen, to)
            .and_then(|()| self.cap.apply(gen))
            .map_err(|m| self.abandoned(m))?;
        Ok(Some("capture"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_limits_of_the_mirror_driver() {
        assert!(mirror_version_failures(130022).is_empty());
        assert!(mirror_version_failures(100023).is_empty());
        assert!(mirror_version_failures(90300).is_empty());
        let f = mirror_version_failures(90224);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].contains("PostgreSQL 9.2") && f[0].contains("9.3"),
            "{f:?}"
        );
        let f = mirror_version_failures(90124);
        assert!(f[0].contains("pg_export_snapshot"), "{f:?}");
        // The logical driver's refusal of a 9.x source is not the mirror driver's business.
        assert!(logical_only(
            "source: PostgreSQL 9.6 has no native logical replication (publications and subscriptions are PostgreSQL 10+)"
        ));
        assert!(!logical_only(&mirror_version_failures(90224)[0]));
    }
}
