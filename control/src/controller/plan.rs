//! The plan's steps: their list, percent, the step runner (deadline, retries with backoff and
//! jitter, cancellation) and what each step does. See the module docs of
//! [`crate::controller`].

use super::{lock, ControlError, Controller, Inner, Phase, DONE, ERROR, RUNNING, WAITING};
use crate::health::cumulative;
use crate::journal::StepStatus;
use crate::logical::{Direction, DriverError, Logical, SyncProgress};
use crate::provider::rds::Rds;
use crate::provider::{Local, Target};
use crate::Side;
use config::Config;
use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// One step of the plan (DESIGN.md "Control plane").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// `validate_input`.
    ValidateInput,
    /// `provision_target`.
    ProvisionTarget,
    /// `configure_params`.
    ConfigureParams,
    /// `install_extension`.
    InstallExtension,
    /// `init_replication`.
    InitReplication,
    /// `wait_for_sync`.
    WaitForSync,
    /// `shift_traffic:n` (1-based).
    ShiftTraffic(usize),
    /// `health_check:n` (1-based).
    HealthCheck(usize),
    /// `cutover`.
    Cutover,
    /// `health_check:cutover`: the hold after the cutover, while a failing check still rolls
    /// back to the source.
    WatchCutover,
    /// `detach_old`.
    DetachOld,
    /// `decommission_source`.
    DecommissionSource,
}

impl StepKind {
    /// The journal's key of the step.
    pub fn key(self) -> String {
        match self {
            StepKind::ValidateInput => "validate_input".into(),
            StepKind::ProvisionTarget => "provision_target".into(),
            StepKind::ConfigureParams => "configure_params".into(),
            StepKind::InstallExtension => "install_extension".into(),
            StepKind::InitReplication => "init_replication".into(),
            StepKind::WaitForSync => "wait_for_sync".into(),
            StepKind::ShiftTraffic(n) => format!("shift_traffic:{n}"),
            StepKind::HealthCheck(n) => format!("health_check:{n}"),
            StepKind::Cutover => "cutover".into(),
            StepKind::WatchCutover => "health_check:cutover".into(),
            StepKind::DetachOld => "detach_old".into(),
            StepKind::DecommissionSource => "decommission_source".into(),
        }
    }
}

/// A step with its share of the progress and its deadline.
#[derive(Debug, Clone)]
pub(super) struct PlanStep {
    pub kind: StepKind,
    pub key: String,
    /// Share of the percent.
    pub weight: u32,
    pub timeout: Duration,
}

/// The plan of `cfg`.
pub(super) fn plan_of(cfg: &Config) -> Vec<PlanStep> {
    let t = &cfg.upgrade.timeouts;
    let ms = Duration::from_millis;
    let provision = cfg.target.provision.is_some();
    let mut v = vec![
        (StepKind::ValidateInput, 2, ms(t.validate_input_ms)),
        (
            StepKind::ProvisionTarget,
            if provision { 10 } else { 1 },
            ms(t.provision_target_ms),
        ),
        (StepKind::ConfigureParams, 1, ms(t.configure_params_ms)),
        (StepKind::InstallExtension, 1, ms(t.install_extension_ms)),
        (StepKind::InitReplication, 8, ms(t.init_replication_ms)),
        (StepKind::WaitForSync, 40, ms(t.wait_for_sync_ms)),
    ];
    for n in 1..=cfg.upgrade.shift.len() {
        v.push((StepKind::ShiftTraffic(n), 1, ms(t.shift_traffic_ms)));
        v.push((
            StepKind::HealthCheck(n),
            3,
            ms(t.health_check_ms.saturating_add(cfg.upgrade.shift_hold_ms)),
        ));
    }
    v.extend([
        (StepKind::Cutover, 10, ms(t.cutover_ms)),
        (
            StepKind::WatchCutover,
            5,
            ms(t.health_check_ms.saturating_add(cfg.upgrade.shift_hold_ms)),
        ),
        (StepKind::DetachOld, 4, ms(t.detach_old_ms)),
        (
            StepKind::DecommissionSource,
            4,
            ms(t.decommission_source_ms),
        ),
    ]);
    v.into_iter()
        .map(|(kind, weight, timeout)| PlanStep {
            kind,
            key: kind.key(),
            weight,
            timeout,
        })
        .collect()
}

/// Progress of the plan in percent.
pub(super) fn percent(steps: &[PlanStep], phase: Phase, g: &Inner) -> u8 {
    match phase {
        Phase::Done => return 100,
        Phase::Idle | Phase::RolledBack | Phase::RollingBack => return 0,
        _ => {}
    }
    let total: u32 = steps.iter().map(|s| s.weight).sum();
    let mut got = 0.0;
    for s in steps {
        if g.done.contains(&s.key) {
            got += f64::from(s.weight);
        } else if let Some((k, f)) = &g.current {
            if *k == s.key {
                got += f64::from(s.weight) * f.clamp(0.0, 1.0);
            }
        }
    }
    if total == 0 {
        return 0;
    }
    ((got * 100.0 / f64::from(total)).floor() as u8).min(99)
}

/// A cancellation flag the plan checks at its safe points.
pub(super) struct Cancel {
    tx: watch::Sender<bool>,
}

impl Cancel {
    pub fn new() -> Arc<Cancel> {
        Arc::new(Cancel {
            tx: watch::channel(false).0,
        })
    }
    pub fn set(&self) {
        self.tx.send_replace(true);
    }
    pub fn is_set(&self) -> bool {
        *self.tx.borrow()
    }
    /// Returns once set.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// The running plan task.
pub(super) struct PlanTask {
    pub handle: JoinHandle<()>,
    pub cancel: Arc<Cancel>,
}

/// Why a plan step did not finish.
pub(super) enum PlanError {
    /// Cancelled (rollback, pause, health reaction): nothing to record.
    Stopped,
    /// Failed for good: state `error` with this reason.
    Failed(String),
}

impl From<ControlError> for PlanError {
    fn from(e: ControlError) -> Self {
        PlanError::Failed(e.message)
    }
}

impl From<crate::journal::JournalError> for PlanError {
    fn from(e: crate::journal::JournalError) -> Self {
        PlanError::Failed(e.to_string())
    }
}

/// A failed attempt of a step.
pub(super) struct StepFailure {
    message: String,
    transient: bool,
    stopped: bool,
}

impl From<DriverError> for StepFailure {
    fn from(e: DriverError) -> Self {
        StepFailure {
            message: e.message,
            transient: e.transient,
            stopped: false,
        }
    }
}

impl From<ControlError> for StepFailure {
    fn from(e: ControlError) -> Self {
        StepFailure {
            message: e.message,
            transient: false,
            stopped: false,
        }
    }
}

impl From<crate::journal::JournalError> for StepFailure {
    fn from(e: crate::journal::JournalError) -> Self {
        StepFailure {
            message: e.to_string(),
            transient: true,
            stopped: false,
        }
    }
}

impl StepFailure {
    fn stopped() -> StepFailure {
        StepFailure {
            message: "stopped".into(),
            transient: false,
            stopped: true,
        }
    }
    fn transient(message: String) -> StepFailure {
        StepFailure {
            message,
            transient: true,
            stopped: false,
        }
    }
}

/// What the plan run ended with.
enum Outcome {
    /// Every step done.
    Finished,
    /// Stopped at the cutover gate (approve_cutover).
    Waiting,
}

/// A random factor in [0, 1) (std's randomly keyed hasher; no crate needed).
fn jitter() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The delay before attempt `attempt + 1`: `initial * 2^(attempt-1)` capped at `max`, half of
/// it fixed and half random ("equal jitter").
pub(super) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    exp / 2 + exp.mul_f64(jitter() / 2.0)
}

impl Controller {
    pub(super) fn spawn_plan(self: &Arc<Self>, actor: &str) {
        let mut slot = lock(&self.plan);
        if slot.as_ref().is_some_and(|p| !p.handle.is_finished()) {
            return;
        }
        let this = self.clone();
        let actor = actor.to_string();
        let cancel = Cancel::new();
        let c2 = cancel.clone();
        let span = self.span.clone();
        let handle = tokio::spawn(async move {
            match this.run_plan(&actor, &c2).await {
                Ok(Outcome::Finished) => {
                    tracing::info!("the upgrade plan finished");
                }
                Ok(Outcome::Waiting) => {}
                Err(PlanError::Stopped) => {}
                Err(PlanError::Failed(msg)) => {
                    // Not when stopped meanwhile: whatever stopped the plan has its say.
                    let r = this
                        .plan_save(
                            &c2,
                            &actor,
                            "error",
                            &msg,
                            |r| {
                                r.state = ERROR.into();
                                r.last_error = Some(msg.clone());
                            },
                            |_| {},
                        )
                        .await;
                    if let Err(e) = r {
                        tracing::error!(error = %e, "could not journal the plan's failure: {msg}");
                    }
                }
            }
            lock(&this.inner).post_watch = false;
        }.instrument(span));
        *slot = Some(PlanTask { handle, cancel });
    }

    /// Stops the running plan at its next safe point and waits for it. Returns whether one
    /// was running.
    pub(super) async fn stop_plan(&self) -> bool {
        let task = lock(&self.plan).take();
        match task {
            Some(t) => {
                t.cancel.set();
                let _ = t.handle.await;
                true
            }
            None => false,
        }
    }

    /// Sets the running plan's cancel flag without waiting; returns its task.
    pub(super) fn signal_plan(&self) -> Option<PlanTask> {
        let task = lock(&self.plan).take();
        if let Some(t) = &task {
            t.cancel.set();
        }
        task
    }

    async fn run_plan(
        self: &Arc<Self>,
        actor: &str,
        cancel: &Arc<Cancel>,
    ) -> Result<Outcome, PlanError> {
        let id = self.row().id;
        let done: HashSet<String> = self
            .journal
            .steps(id)
            .await?
            .into_iter()
            .filter(|s| s.status == StepStatus::Done)
            .map(|s| s.key)
            .collect();
        lock(&self.inner).done = done.clone();
        for step in self.plan_steps.clone() {
            if done.contains(&step.key) {
                continue;
            }
            if cancel.is_set() {
                return Err(PlanError::Stopped);
            }
            let waiting = self.run_one(actor, cancel, &step).await?;
            if waiting {
                return Ok(Outcome::Waiting);
            }
        }
        Ok(Outcome::Finished)
    }

    /// Sets phase (and state `running`) unless the plan was stopped.
    async fn enter(
        &self,
        cancel: &Cancel,
        actor: &str,
        phase: Phase,
        message: &str,
    ) -> Result<(), PlanError> {
        let row = self.row();
        if row.phase == phase.as_str() && row.state == RUNNING {
            return Ok(());
        }
        match self
            .plan_save(
                cancel,
                actor,
                "phase",
                message,
                |r| {
                    r.phase = phase.as_str().into();
                    r.state = RUNNING.into();
                },
                |_| {},
            )
            .await?
        {
            Some(_) => Ok(()),
            None => Err(PlanError::Stopped),
        }
    }

    /// Runs one step; `Ok(true)` when the plan stops to wait for the operator.
    async fn run_one(
        self: &Arc<Self>,
        actor: &str,
        cancel: &Arc<Cancel>,
        step: &PlanStep,
    ) -> Result<bool, PlanError> {
        let d = &self.driver;
        let cfg = self.cfg.clone();
        match step.kind {
            StepKind::ValidateInput => {
                self.enter(cancel, actor, Phase::Preflight, "validating the input")
                    .await?;
                self.run_step(actor, cancel, step, true, || async {
                    let (failures, notes) = self.validate().await;
                    if failures.is_empty() {
                        self.journal_databases(actor)
                            .await
                            .map_err(StepFailure::from)?;
                        Ok(((), format!("passed: {}", notes.join("; "))))
                    } else {
                        let list: Vec<String> = failures
                            .iter()
                            .enumerate()
                            .map(|(i, f)| format!("{}) {f}", i + 1))
                            .collect();
                        Err(StepFailure::from(DriverError::new(format!(
                            "{} problem(s): {}",
                            list.len(),
                            list.join(" ")
                        ))))
                    }
                })
                .await?;
            }
            StepKind::ProvisionTarget => match Target::of(&cfg) {
                None => {
                    self.record(
                        actor,
                        step,
                        "skipped: no [target.provision]; the target server exists",
                    )
                    .await?
                }
                Some(target) => {
                    self.enter(
                        cancel,
                        actor,
                        Phase::Provisioning,
                        &format!("provisioning {}", target.describe()),
                    )
                    .await?;
                    let needs = self.replication.rds_parameters();
                    self.run_step(actor, cancel, step, true, || async {
                        let src = d.connect(Side::Source).await?;
                        Ok((
                            (),
                            match &target {
                                Target::Local(local) => local.provision(&src).await?,
                                Target::Rds(rds) => Box::pin(rds.provision(&src, needs)).await?,
                            },
                        ))
                    })
                    .await?;
                }
            },
            StepKind::ConfigureParams
                if self.replication.has_setup_steps() || Rds::target(&cfg).is_some() =>
            {
                self.enter(
                    cancel,
                    actor,
                    Phase::InitReplication,
                    "configuring the servers",
                )
                .await?;
                self.run_step(actor, cancel, step, true, || async {
                    let mut done = Vec::new();
                    // An RDS source first: the driver's own checks read its settings.
                    if let Some(rds) = Rds::target(&cfg) {
                        done.push(
                            Box::pin(rds.configure_source(self.replication.rds_parameters()))
                                .await?,
                        );
                    }
                    done.push(if self.replication.has_setup_steps() {
                        self.replication.configure_params(self).await?
                    } else {
                        self.replication.configure_params_note().to_string()
                    });
                    Ok(((), done.join("; ")))
                })
                .await?;
            }
            StepKind::ConfigureParams => {
                self.record(actor, step, self.replication.configure_params_note())
                    .await?
            }
            StepKind::InstallExtension if self.replication.has_setup_steps() => {
                self.enter(
                    cancel,
                    actor,
                    Phase::InitReplication,
                    "installing the extension",
                )
                .await?;
                self.run_step(actor, cancel, step, true, || async {
                    Ok(((), self.replication.install_extension(self).await?))
                })
                .await?;
            }
            StepKind::InstallExtension => {
                self.record(actor, step, self.replication.install_extension_note())
                    .await?
            }
            StepKind::InitReplication => {
                self.enter(
                    cancel,
                    actor,
                    Phase::InitReplication,
                    "creating publications and the subscription",
                )
                .await?;
                self.run_step(actor, cancel, step, true, || {
                    self.init_replication(actor, cancel)
                })
                .await?;
            }
            StepKind::WaitForSync => {
                let saved = self
                    .plan_save(
                        cancel,
                        actor,
                        "phase",
                        "initial copy of the tables",
                        |r| {
                            r.phase = Phase::Synchronizing.as_str().into();
                            r.state = RUNNING.into();
                            r.direction = Direction::Forward.as_str().into();
                        },
                        |_| {},
                    )
                    .await?;
                if saved.is_none() {
                    return Err(PlanError::Stopped);
                }
                let total = self
                    .run_step(actor, cancel, step, true, || async {
                        self.replication
                            .wait_sync(self, actor)
                            .await
                            .map_err(StepFailure::from)
                    })
                    .await?;
                lock(&self.inner).progress = None;
                let saved = self
                    .plan_save(
                        cancel,
                        actor,
                        "phase",
                        &format!("synchronised: all {total} tables replicating"),
                        |r| {
                            r.phase = Phase::Replicating.as_str().into();
                            r.state = RUNNING.into();
                            r.last_error = None;
                        },
                        |_| {},
                    )
                    .await?;
                if saved.is_none() {
                    return Err(PlanError::Stopped);
                }
            }
            StepKind::ShiftTraffic(n) | StepKind::HealthCheck(n) => {
                if self.row().serving_side != Side::Source.as_str() {
                    return self
                        .record(actor, step, "skipped: traffic is already on the target")
                        .await
                        .map(|_| false);
                }
                let weight = cumulative(&cfg.upgrade.shift)[n - 1];
                if let StepKind::ShiftTraffic(_) = step.kind {
                    self.enter(
                        cancel,
                        actor,
                        Phase::Shifting,
                        &format!("shift step {n}: {weight} % of eligible traffic to the target"),
                    )
                    .await?;
                    self.run_step(actor, cancel, step, true, || async {
                        self.publish_weight(cancel, actor, weight).await
                    })
                    .await?;
                } else {
                    self.enter(
                        cancel,
                        actor,
                        Phase::HealthCheck,
                        &format!(
                            "health check {n}: holding {weight} % for {} ms",
                            cfg.upgrade.shift_hold_ms
                        ),
                    )
                    .await?;
                    self.run_step(actor, cancel, step, true, || async {
                        // After a health reaction and a resume the weight may be lower.
                        self.publish_weight(cancel, actor, weight).await?;
                        self.hold(step, cancel).await
                    })
                    .await?;
                }
            }
            StepKind::Cutover => {
                let row = self.row();
                if self.switch_incomplete(Direction::Forward) {
                    // Swapped, but a step after the swap failed (the reverse subscription):
                    // finish it before the plan goes on; without it there is no way back.
                    self.run_step(actor, cancel, step, false, || {
                        self.finish_swapped_cutover(actor)
                    })
                    .await?;
                    return Ok(false);
                }
                if row.serving_side == Side::Target.as_str() {
                    return self
                        .record(
                            actor,
                            step,
                            "traffic is on the target (cut over by INITIATE CUTOVER)",
                        )
                        .await
                        .map(|_| false);
                }
                if cfg.upgrade.approve_cutover {
                    let msg = format!(
                        "synchronised{}; waiting for INITIATE CUTOVER (approve_cutover)",
                        if row.weight > 0 {
                            format!(", {} % of eligible traffic on the target", row.weight)
                        } else {
                            String::new()
                        }
                    );
                    lock(&self.inner).current = Some((step.key.clone(), 0.0));
                    let saved = self
                        .plan_save(
                            cancel,
                            actor,
                            "phase",
                            &msg,
                            |r| {
                                r.phase = Phase::Replicating.as_str().into();
                                r.state = WAITING.into();
                            },
                            |_| {},
                        )
                        .await?;
                    return match saved {
                        Some(_) => Ok(true),
                        None => Err(PlanError::Stopped),
                    };
                }
                // The validation gate (and a FORCE RESYNC TABLE under way): wait, state
                // `waiting`, before the step starts.
                self.wait_cutover_allowed(actor, cancel, step).await?;
                // Not cancellable once under way: the protocol is bounded by its own
                // deadlines, and a stop waits for it.
                self.run_step(actor, cancel, step, false, || async {
                    let _g = loop {
                        let g = tokio::select! {
                            biased;
                            _ = cancel.wait() => return Err(StepFailure::stopped()),
                            g = self.op.lock() => g,
                        };
                        if cancel.is_set() {
                            return Err(StepFailure::stopped());
                        }
                        if self.row().serving_side == Side::Target.as_str()
                            || self.cutover_refusal().is_none()
                        {
                            break g;
                        }
                        // Refused again since the wait: wait again, without the lock.
                        drop(g);
                        match self.wait_cutover_allowed(actor, cancel, step).await {
                            Ok(()) => {}
                            Err(PlanError::Stopped) => return Err(StepFailure::stopped()),
                            Err(PlanError::Failed(m)) => {
                                return Err(StepFailure::from(ControlError::refused(m)))
                            }
                        }
                    };
                    if self.row().serving_side == Side::Target.as_str() {
                        // An earlier attempt swapped: only what comes after the swap is left.
                        return self.finish_swapped_cutover(actor).await;
                    }
                    // An abandoned attempt is retried (after the last one the plan ends in
                    // state `error` with the reason).
                    self.retrying_switch
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    let r = self.switch(Direction::Forward, actor).await;
                    self.retrying_switch
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    match r {
                        Ok(m) => Ok(((), m)),
                        // An abandoned cutover left everything as it was: try again.
                        Err(e) => Err(StepFailure::transient(e.message)),
                    }
                })
                .await?;
            }
            StepKind::WatchCutover => {
                let row = self.row();
                if row.serving_side != Side::Target.as_str()
                    || Direction::parse(&row.direction) != Some(Direction::Reverse)
                {
                    return self
                        .record(
                            actor,
                            step,
                            "skipped: no reverse replication to fall back on",
                        )
                        .await
                        .map(|_| false);
                }
                self.enter(
                    cancel,
                    actor,
                    Phase::CutOver,
                    &format!(
                        "cut over; health checks guard the target for {} ms before DetachOld",
                        cfg.upgrade.shift_hold_ms
                    ),
                )
                .await?;
                lock(&self.inner).post_watch = true;
                let r = self
                    .run_step(actor, cancel, step, true, || async {
                        self.hold(step, cancel).await
                    })
                    .await;
                lock(&self.inner).post_watch = false;
                r?;
            }
            StepKind::DetachOld => {
                if self.row().serving_side != Side::Target.as_str() {
                    return Err(PlanError::Failed(
                        "detach_old: traffic is not on the target; the plan cannot go on (ROLLBACK UPGRADE or INITIATE CUTOVER)".into(),
                    ));
                }
                self.enter(
                    cancel,
                    actor,
                    Phase::Detaching,
                    "detaching the source: removing replication in both directions",
                )
                .await?;
                self.run_step(actor, cancel, step, true, || async {
                    Ok(((), self.replication.detach(self).await?))
                })
                .await?;
                let saved = self
                    .plan_save(
                        cancel,
                        actor,
                        "phase",
                        "source detached: no replication runs any more",
                        |r| {
                            r.direction = "none".into();
                        },
                        |_| {},
                    )
                    .await?;
                if saved.is_none() {
                    return Err(PlanError::Stopped);
                }
                lock(&self.inner).lag = None;
            }
            StepKind::DecommissionSource => {
                self.enter(
                    cancel,
                    actor,
                    Phase::Decommissioning,
                    "decommissioning the source",
                )
                .await?;
                self.run_step(actor, cancel, step, true, || async {
                    let mut parts = Vec::new();
                    if let Some(path) = &cfg.upgrade.final_dump {
                        parts.push(
                            crate::provider::final_dump(&cfg.replication.pg_dump, &cfg.source, path).await?,
                        );
                        // The other carried databases: one file each, `<final_dump>.<database>`.
                        for db in self.carried_databases().iter().skip(1) {
                            let mut server = cfg.source.clone();
                            server.dbname = db.clone();
                            let mut p = path.clone().into_os_string();
                            p.push(format!(".{}", db.replace('/', "_")));
                            parts.push(
                                crate::provider::final_dump(&cfg.replication.pg_dump, &server, std::path::Path::new(&p)).await?,
                            );
                        }
                    }
                    match (cfg.upgrade.decommission_source, Local::source(&cfg), Rds::target(&cfg)) {
                        (delete, _, Some(rds)) => {
                            parts.push(Box::pin(rds.decommission(delete)).await?)
                        }
                        (false, _, None) => parts.push(
                            "source left running (decommission_source = false)".to_string(),
                        ),
                        (true, None, None) => parts.push(
                            "source left running: decommission_source is set but no [source.provision] says where its data directory is".to_string(),
                        ),
                        (true, Some(l), None) => parts.push(format!(
                            "{}; its data directory {} is kept",
                            l.stop().await?,
                            l.data_dir().display()
                        )),
                    }
                    Ok(((), parts.join("; ")))
                })
                .await?;
                let saved = self
                    .plan_save(
                        cancel,
                        actor,
                        "phase",
                        "upgrade done: traffic on the target, source detached",
                        |r| {
                            r.phase = Phase::Done.as_str().into();
                            r.state = DONE.into();
                            r.last_error = None;
                        },
                        |_| {},
                    )
                    .await?;
                if saved.is_none() {
                    return Err(PlanError::Stopped);
                }
                lock(&self.inner).current = None;
            }
        }
        Ok(false)
    }

    /// Records a step that does nothing (started and done in one go).
    /// The plan's Cutover step after the swap: the post-swap steps (reverse subscription,
    /// old subscription dropped) if they are not done yet, as a retryable attempt.
    async fn finish_swapped_cutover(&self, actor: &str) -> Result<((), String), StepFailure> {
        if !self.switch_incomplete(Direction::Forward) {
            return Ok(((), "traffic is already on the target".to_string()));
        }
        self.retrying_switch
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let r = self.finish_switch(Direction::Forward, actor).await;
        self.retrying_switch
            .store(false, std::sync::atomic::Ordering::SeqCst);
        r.map(|m| ((), m))
            .map_err(|e| StepFailure::transient(e.message))
    }

    async fn record(&self, actor: &str, step: &PlanStep, detail: &str) -> Result<(), PlanError> {
        let id = self.row().id;
        self.journal
            .step(id, &step.key, StepStatus::Started, None, actor)
            .await?;
        self.journal
            .step(
                id,
                &step.key,
                StepStatus::Done,
                Some(detail.to_string()),
                actor,
            )
            .await?;
        tracing::info!(step = %step.key, "{detail}");
        lock(&self.inner).done.insert(step.key.clone());
        Ok(())
    }

    /// Journals weight `w` with the row, then publishes it; refused once the plan is stopped.
    /// A weight above 0 waits while a FORCE RESYNC TABLE runs (shifted reads would see the
    /// table half copied): checked under the row lock, which the resync takes to start.
    async fn publish_weight(
        &self,
        cancel: &Cancel,
        actor: &str,
        w: u8,
    ) -> Result<((), String), StepFailure> {
        let before = self.row().weight;
        if before == i64::from(w) {
            return Ok(((), format!("weight {w} % in force")));
        }
        let traffic = self.traffic()?;
        let interval = Duration::from_millis(self.cfg.upgrade.poll_interval_ms.max(10));
        let mut noted = false;
        loop {
            let guard = self.row_write.lock().await;
            if cancel.is_set() {
                return Err(StepFailure::stopped());
            }
            let busy = if w > 0 {
                lock(&self.resync).as_ref().map(|r| r.0.clone())
            } else {
                None
            };
            if let Some(t) = busy {
                drop(guard);
                if !noted {
                    noted = true;
                    let msg =
                        format!("traffic weight {w} % waits for FORCE RESYNC TABLE {t} to finish");
                    tracing::info!("{msg}");
                    let _ = self.journal.event(actor, "info", &msg).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = cancel.wait() => return Err(StepFailure::stopped()),
                }
                continue;
            }
            let mut row = self.row();
            let before = row.weight;
            row.weight = i64::from(w);
            self.write_row_locked(
                row,
                actor,
                "phase",
                &format!("traffic weight {before} → {w} % on the target"),
            )
            .await?;
            traffic.set_weight(w);
            return Ok(((), format!("weight {before} → {w} % published")));
        }
    }

    /// The unattended plan's wait before its Cutover step while a cutover may not start
    /// ([`Controller::cutover_refusal`]: the validation gate, or a FORCE RESYNC TABLE under
    /// way). Returns at once when it may. Otherwise sets state `waiting` with `cutover waits:
    /// <reason>` in `last_error` (journaled once: one history entry per wait), asks again every
    /// `poll_interval_ms` (a new reason only replaces `last_error` in memory), and when the
    /// cutover may start sets state `running` again (journaled) and returns. Stopped
    /// (pause, rollback, health reaction) at any time.
    pub(super) async fn wait_cutover_allowed(
        &self,
        actor: &str,
        cancel: &Cancel,
        step: &PlanStep,
    ) -> Result<(), PlanError> {
        let Some(mut why) = self.cutover_refusal() else {
            return Ok(());
        };
        let interval = Duration::from_millis(self.cfg.upgrade.poll_interval_ms.max(10));
        let text = |why: &str| {
            format!(
                "cutover waits: {why}; checked again every {} ms (PAUSE UPGRADE and ROLLBACK UPGRADE work meanwhile)",
                interval.as_millis()
            )
        };
        let t0 = Instant::now();
        lock(&self.inner).current = Some((step.key.clone(), 0.0));
        let msg = text(&why);
        tracing::info!("{msg}");
        let saved = self
            .plan_save(
                cancel,
                actor,
                "phase",
                &msg,
                |r| {
                    r.phase = Phase::Replicating.as_str().into();
                    r.state = WAITING.into();
                    r.last_error = Some(msg.clone());
                },
                |_| {},
            )
            .await?;
        if saved.is_none() {
            return Err(PlanError::Stopped);
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = cancel.wait() => return Err(PlanError::Stopped),
            }
            match self.cutover_refusal() {
                None => break,
                Some(w) if w != why => {
                    why = w;
                    let _w = self.row_write.lock().await;
                    if cancel.is_set() {
                        return Err(PlanError::Stopped);
                    }
                    lock(&self.inner).row.last_error = Some(text(&why));
                }
                Some(_) => {}
            }
        }
        let msg = format!(
            "cutover allowed after {:.1} s of waiting; cutting over",
            t0.elapsed().as_secs_f64()
        );
        let saved = self
            .plan_save(
                cancel,
                actor,
                "phase",
                &msg,
                |r| {
                    r.state = RUNNING.into();
                    r.last_error = None;
                },
                |_| {},
            )
            .await?;
        match saved {
            Some(_) => Ok(()),
            None => Err(PlanError::Stopped),
        }
    }

    /// Holds `shift_hold_ms` while the health checks run; passes when none failed.
    async fn hold(&self, step: &PlanStep, cancel: &Cancel) -> Result<((), String), StepFailure> {
        let hold = Duration::from_millis(self.cfg.upgrade.shift_hold_ms);
        let (checks0, failed0) = {
            let g = lock(&self.inner);
            (g.health.checks, g.health.failed)
        };
        let t0 = Instant::now();
        loop {
            let f = t0.elapsed().as_secs_f64() / hold.as_secs_f64().max(1e-9);
            lock(&self.inner).current = Some((step.key.clone(), f.min(1.0)));
            if t0.elapsed() >= hold {
                break;
            }
            let left = hold
                .saturating_sub(t0.elapsed())
                .min(Duration::from_millis(250));
            tokio::select! {
                _ = tokio::time::sleep(left) => {}
                _ = cancel.wait() => return Err(StepFailure::stopped()),
            }
        }
        let g = lock(&self.inner);
        let (checks, failed) = (g.health.checks - checks0, g.health.failed - failed0);
        if failed > 0 {
            return Err(StepFailure::from(DriverError::new(format!(
                "{failed} of {checks} health checks failed during the {} ms hold",
                hold.as_millis()
            ))));
        }
        Ok((
            (),
            format!(
                "passed: {checks} health checks during the {} ms hold, none failed; last: {}",
                hold.as_millis(),
                g.health.summary.as_deref().unwrap_or("no verdict")
            ),
        ))
    }

    /// Runs step `step`: journals `started`, runs `f` (cancellable at any await when
    /// `cancellable`; under the step's deadline), journals `done` / `failed`; retries
    /// transient failures with backoff and jitter while attempts and time are left.
    async fn run_step<T, F, Fut>(
        &self,
        actor: &str,
        cancel: &Cancel,
        step: &PlanStep,
        cancellable: bool,
        mut f: F,
    ) -> Result<T, PlanError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(T, String), StepFailure>>,
    {
        let id = self.row().id;
        let key = &step.key;
        let up = &self.cfg.upgrade;
        let max = up.max_attempts.max(1);
        let started = Instant::now();
        let deadline = started + step.timeout;
        let mut attempt = 1u32;
        loop {
            if cancel.is_set() {
                return Err(PlanError::Stopped);
            }
            self.journal
                .step(
                    id,
                    key,
                    StepStatus::Started,
                    (attempt > 1).then(|| format!("attempt {attempt} of {max}")),
                    actor,
                )
                .await?;
            {
                let mut g = lock(&self.inner);
                if g.current.as_ref().is_none_or(|c| c.0 != *key) {
                    g.current = Some((key.clone(), 0.0));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let step_span = tracing::info_span!("step", step = %key, attempt);
            let outcome: Result<(T, String), StepFailure> = if cancellable {
                tokio::select! {
                    r = tokio::time::timeout(left, f().instrument(step_span)) => r.unwrap_or_else(|_| Err(StepFailure::transient(format!(
                        "timed out after {} ms ([upgrade.timeouts] of {key})", step.timeout.as_millis()
                    )))),
                    _ = cancel.wait() => Err(StepFailure::stopped()),
                }
            } else {
                f().instrument(step_span).await
            };
            match outcome {
                Ok((v, detail)) => {
                    tracing::info!(step = %key, "{detail}");
                    self.journal
                        .step(id, key, StepStatus::Done, Some(detail), actor)
                        .await?;
                    lock(&self.inner).done.insert(key.clone());
                    return Ok(v);
                }
                Err(e) if e.stopped => {
                    let _ = self
                        .journal
                        .step(
                            id,
                            key,
                            StepStatus::Failed,
                            Some("interrupted: the plan was stopped (rollback, pause or health check)".into()),
                            actor,
                        )
                        .await;
                    return Err(PlanError::Stopped);
                }
                Err(e) => {
                    self.journal
                        .step(id, key, StepStatus::Failed, Some(e.message.clone()), actor)
                        .await?;
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !(e.transient && attempt < max && !left.is_zero()) {
                        let why = if !e.transient {
                            String::new()
                        } else if attempt >= max {
                            format!(" (after {attempt} attempts)")
                        } else {
                            format!(" (its {} ms deadline passed)", step.timeout.as_millis())
                        };
                        return Err(PlanError::Failed(format!(
                            "step {key} failed{why}: {}",
                            e.message
                        )));
                    }
                    let wait = backoff(
                        Duration::from_millis(up.backoff_initial_ms),
                        Duration::from_millis(up.backoff_max_ms),
                        attempt,
                    )
                    .min(left);
                    let msg = format!(
                        "{key}: attempt {attempt} of {max} failed ({}); retrying in {} ms",
                        e.message,
                        wait.as_millis()
                    );
                    tracing::warn!(step = %key, attempt, "{msg}");
                    let _ = self.journal.step_event(id, key, actor, "retry", &msg).await;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.wait() => return Err(PlanError::Stopped),
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// ValidateInput: the preflight (only the source and the tools when the target is to be
    /// provisioned: it does not exist yet) and the provider's checks. Returns (failures, notes).
    pub(super) async fn validate(&self) -> (Vec<String>, Vec<String>) {
        let cfg = &self.cfg;
        let local = Local::target(cfg);
        let rds = Rds::target(cfg);
        let mut failures = Vec::new();
        match self.resolve_databases().await {
            Ok(dbs) => self.carry(&dbs),
            Err(e) => failures.push(e),
        }
        let pf = self
            .preflight_carried(&self.carried(), local.is_none() && rds.is_none())
            .await;
        let mut notes = pf.notes;
        let needs = self.replication.rds_parameters();
        for f in pf.failures {
            // ConfigureParams sets what the driver needs on an RDS source it may reboot.
            let fixed = rds.as_ref().is_some_and(|r| r.spec.allow_source_reboot)
                && !needs.is_empty()
                && f.starts_with("source")
                && (f.contains("wal_level") || f.contains("pgactive needs"));
            if fixed {
                notes.push(format!(
                    "{f} (ConfigureParams sets it: allow_source_reboot)"
                ));
            } else {
                failures.push(f);
            }
        }
        if let Some(r) = &rds {
            let (f, n) = Box::pin(r.check_target(pf.source_major, needs)).await;
            failures.extend(f);
            notes.extend(n);
            notes.push(
                "the target's settings, roles and replication capacity are checked after provisioning".into(),
            );
        }
        if let Some(l) = &local {
            let (f, n) = l.check_target(pf.source_major).await;
            failures.extend(f);
            notes.extend(n);
            notes.push(
                "the target's settings, roles and replication capacity are checked after provisioning".into(),
            );
        }
        match (cfg.upgrade.decommission_source, Local::source(cfg)) {
            (true, Some(s)) => {
                if let Err(e) = crate::provider::find_bindir(&s.spec).await {
                    failures.push(format!("[source.provision]: {e}"));
                }
                if let Err(e) = s.server_user() {
                    failures.push(format!("[source.provision]: {e}"));
                }
                if !s.data_dir().join("PG_VERSION").exists() {
                    failures.push(format!(
                        "[source.provision]: data_dir {} holds no PostgreSQL data directory (no PG_VERSION); DecommissionSource could not stop the source",
                        s.data_dir().display()
                    ));
                }
            }
            (true, None) => notes.push(
                "decommission_source is set but there is no [source.provision]: DecommissionSource will leave the source running".into(),
            ),
            _ => {}
        }
        (failures, notes)
    }

    /// InitReplication: (after provisioning) the full preflight, the schema copy, the
    /// publications and the forward subscription, each a journaled sub-step.
    async fn init_replication(
        &self,
        actor: &str,
        cancel: &Cancel,
    ) -> Result<((), String), StepFailure> {
        let drivers = self.carried();
        let mut done = Vec::new();
        if Target::of(&self.cfg).is_some() {
            let notes = self
                .step(actor, "preflight", || async {
                    let p = self.preflight_carried(&drivers, true).await;
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
            done.push(format!(
                "preflight of the provisioned target passed ({} notes)",
                notes.len()
            ));
        }
        // The other databases on the target, like the source's.
        for d in drivers.iter().skip(1) {
            let db = d.database(Side::Target).to_string();
            let m = self
                .step(actor, &format!("database@{db}"), || async {
                    drivers[0]
                        .ensure_target_database(&db)
                        .await
                        .map(|m| (m.clone(), m))
                })
                .await?;
            done.push(m);
        }
        if drivers[0].copy_schema_enabled() {
            let r = self
                .plan_save(
                    cancel,
                    actor,
                    "phase",
                    "copying the schema",
                    |r| {
                        r.phase = Phase::SchemaCopy.as_str().into();
                    },
                    |_| {},
                )
                .await?;
            if r.is_none() {
                return Err(StepFailure::stopped());
            }
            for (i, d) in drivers.iter().enumerate() {
                let m = self
                    .step(actor, &db_key("schema_copy", i, d), || async {
                        d.copy_schema().await.map(|m| (m.clone(), m))
                    })
                    .await?;
                done.push(db_detail(i, d, &m));
            }
            let r = self
                .plan_save(
                    cancel,
                    actor,
                    "phase",
                    "creating publications and the subscription",
                    |r| {
                        r.phase = Phase::InitReplication.as_str().into();
                    },
                    |_| {},
                )
                .await?;
            if r.is_none() {
                return Err(StepFailure::stopped());
            }
        }
        done.extend(self.replication.init(self, actor).await?);
        Ok(((), done.join("; ")))
    }

    /// Waits until every table of the forward subscription is synchronised. Transient errors
    /// are logged and the wait goes on (the step's deadline bounds it); a heartbeat with the
    /// progress is journaled every 10 s.
    pub(super) async fn wait_sync(&self, actor: &str) -> Result<(u64, String), DriverError> {
        let drivers = self.carried();
        let id = self.row().id;
        let key = StepKind::WaitForSync.key();
        let interval = Duration::from_millis(self.cfg.upgrade.poll_interval_ms.max(10));
        let mut clients: Vec<Option<tokio_postgres::Client>> =
            drivers.iter().map(|_| None).collect();
        let mut last_ready = None;
        let mut failures = 0u32;
        let mut last_beat = Instant::now();
        loop {
            if last_beat.elapsed() >= Duration::from_secs(10) {
                let detail = lock(&self.inner)
                    .progress
                    .as_ref()
                    .map(|p| format!("heartbeat: {}/{} tables synchronised", p.ready, p.total));
                let _ = self.journal.heartbeat(id, &key, detail).await;
                last_beat = Instant::now();
            }
            // Every database's progress, summed (pending tables named with their database).
            let mut sum = SyncProgress {
                ready: 0,
                total: 0,
                pending: Vec::new(),
            };
            let mut all = true;
            for (i, d) in drivers.iter().enumerate() {
                if clients[i]
                    .as_ref()
                    .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
                {
                    clients[i] = match d.connect(Side::Target).await {
                        Ok(c) => Some(c),
                        Err(e) if e.transient => {
                            failures += 1;
                            if failures % 20 == 1 {
                                tracing::warn!(error = %e.message, "waiting for the initial copy: cannot reach the target; retrying");
                            }
                            all = false;
                            break;
                        }
                        Err(e) => return Err(e),
                    };
                }
                let Some(c) = clients[i].as_ref() else {
                    all = false;
                    break;
                };
                match d.sync_progress(c).await {
                    Ok(p) => {
                        sum.ready += p.ready;
                        sum.total += p.total;
                        for t in &p.pending {
                            if sum.pending.len() < 10 {
                                sum.pending.push(db_detail(i, d, t));
                            }
                        }
                        lock(&self.live)
                            .progress
                            .insert(d.database(Side::Source).to_string(), p);
                    }
                    Err(e) if e.transient => {
                        failures += 1;
                        if failures % 20 == 1 {
                            tracing::warn!(error = %e.message, "waiting for the initial copy; retrying");
                        }
                        clients[i] = None;
                        all = false;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if all {
                failures = 0;
                let p = sum;
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
                {
                    let mut g = lock(&self.inner);
                    g.progress = Some(p);
                    let f = if total == 0 {
                        1.0
                    } else {
                        ready as f64 / total as f64
                    };
                    g.current = Some((key.clone(), f));
                }
                if done {
                    let dbs = if drivers.len() > 1 {
                        format!(" in {} databases", drivers.len())
                    } else {
                        String::new()
                    };
                    return Ok((total, format!("{ready}/{total} tables synchronised{dbs}")));
                }
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// Journal key of sub-step `k` for the `i`-th carried database: `k` for the primary one,
/// `k@<database>` for the others.
pub(super) fn db_key(k: &str, i: usize, d: &Logical) -> String {
    if i == 0 {
        k.to_string()
    } else {
        format!("{k}@{}", d.database(Side::Source))
    }
}

/// `database <name>: ` for a non-primary database, for messages; empty for the primary.
pub(super) fn db_tag(i: usize, d: &Logical) -> String {
    if i == 0 {
        String::new()
    } else {
        format!("database {}: ", d.database(Side::Source))
    }
}

/// `detail`, prefixed with `database <name>: ` for a non-primary database.
pub(super) fn db_detail(i: usize, d: &Logical, detail: &str) -> String {
    format!("{}{detail}", db_tag(i, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let i = Duration::from_millis(1000);
        let m = Duration::from_millis(60000);
        for attempt in 1..=10u32 {
            let exp = (1000u64 << (attempt - 1)).min(60000);
            let d = backoff(i, m, attempt).as_millis() as u64;
            assert!(
                d >= exp / 2 && d <= exp,
                "attempt {attempt}: {d} not in [{}, {exp}]",
                exp / 2
            );
        }
        // Jitter: not always the same.
        let v: HashSet<u128> = (0..20).map(|_| backoff(i, m, 3).as_micros()).collect();
        assert!(v.len() > 1);
    }

    #[test]
    fn plan_keys_and_percent() {
        let text = r#"
[source]
host = "a"
dbname = "d"
user = "u"
[target]
host = "b"
dbname = "d"
user = "u"
[[users]]
name = "x"
password = "y"
[upgrade]
shift = [25, 25, 50]
"#;
        let cfg = config::load_str_with_env(text, "t.toml", |_| None).unwrap();
        let p = plan_of(&cfg);
        let keys: Vec<&str> = p.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "validate_input",
                "provision_target",
                "configure_params",
                "install_extension",
                "init_replication",
                "wait_for_sync",
                "shift_traffic:1",
                "health_check:1",
                "shift_traffic:2",
                "health_check:2",
                "shift_traffic:3",
                "health_check:3",
                "cutover",
                "health_check:cutover",
                "detach_old",
                "decommission_source"
            ]
        );
        assert_eq!(p[0].timeout, Duration::from_secs(30));
        assert_eq!(p[5].timeout, Duration::from_secs(86400));
        let row = crate::journal::UpgradeRow {
            id: 1,
            phase: "synchronizing".into(),
            state: "running".into(),
            serving_side: "source".into(),
            epoch: 1,
            direction: "forward".into(),
            last_error: None,
            weight: 0,
            started_at: String::new(),
            updated_at: String::new(),
        };
        let mut g = Inner {
            row,
            lag: None,
            progress: None,
            done: HashSet::new(),
            current: None,
            post_watch: false,
            swapped_at: None,
            health: Default::default(),
        };
        assert_eq!(percent(&p, Phase::Synchronizing, &g), 0);
        for s in &p[..5] {
            g.done.insert(s.key.clone());
        }
        g.current = Some(("wait_for_sync".into(), 0.5));
        let pc = percent(&p, Phase::Synchronizing, &g);
        // 2+1+1+1+8 = 13 done, +20 of 40; total 13+40+12+10+5+4+4 = 88.
        assert_eq!(pc, (33.0f64 * 100.0 / 88.0).floor() as u8);
        assert_eq!(percent(&p, Phase::Done, &g), 100);
        assert_eq!(percent(&p, Phase::RolledBack, &g), 0);
    }
}
