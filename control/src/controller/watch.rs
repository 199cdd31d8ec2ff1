//! The health task: checks every `health.interval_ms` while traffic is shifted to the target
//! or during the hold after the cutover, and reacts to a failing check (module docs of
//! [`crate::controller`] and [`crate::health`]).

use super::{lock, Controller, HealthReaction, Phase, ALERT, PAUSED, RUNNING, WAITING};
use crate::health::{
    cumulative, evaluate, previous_weight, FailureKind, LagWatch, Probe, Verdict, Window,
};
use crate::journal::{now_rfc3339, Durability};
use crate::logical::{Direction, Logical};
use crate::Side;
use config::OnFailure;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// What the checks guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the cutover: the weighted share on the target.
    Shift,
    /// After the cutover, during `health_check:cutover`: the target serving everything.
    AfterCutover,
}

impl Controller {
    fn health_mode(&self) -> Option<Mode> {
        let g = lock(&self.inner);
        let r = &g.row;
        let phase = Phase::parse(&r.phase);
        if matches!(
            phase,
            Phase::CuttingOver | Phase::RollingBack | Phase::RolledBack
        ) {
            return None;
        }
        // A cutover attempt under way is not interrupted (it is bounded by its deadlines);
        // the checks after it guard the target. Waiting at the cutover for INITIATE CUTOVER
        // (approve_cutover) is not an attempt: shifted traffic stays guarded.
        if r.state != WAITING
            && g.current
                .as_ref()
                .is_some_and(|c| c.0 == super::StepKind::Cutover.key())
        {
            return None;
        }
        let dir = Direction::parse(&r.direction);
        if r.serving_side == Side::Source.as_str()
            && dir == Some(Direction::Forward)
            && (r.weight > 0 || matches!(phase, Phase::Shifting | Phase::HealthCheck))
        {
            return Some(Mode::Shift);
        }
        if r.serving_side == Side::Target.as_str()
            && dir == Some(Direction::Reverse)
            && g.post_watch
        {
            return Some(Mode::AfterCutover);
        }
        None
    }
}

pub(super) async fn health_loop(weak: Weak<Controller>) {
    let mut window: Option<Window> = None;
    let mut lag_watch = LagWatch::default();
    let mut prober = Prober::default();
    // The `bidirectional` driver: the other direction's subscriber, probed the same way.
    let mut other_prober = Prober::default();
    let mut apply_before: Option<i64> = None;
    let mut missing_since: Option<Instant> = None;
    let mut was_active = false;
    loop {
        let Some(this) = weak.upgrade() else { return };
        let hc = this.cfg.health.clone();
        let interval = Duration::from_millis(hc.interval_ms.max(10));
        let tick = Instant::now();
        let Some(traffic) = this.traffic.get().cloned() else {
            drop(this);
            tokio::time::sleep(interval).await;
            continue;
        };
        let w = window.get_or_insert_with(|| Window::new(Duration::from_millis(hc.window_ms)));
        w.push(tick, traffic.stats());
        let mode = this.health_mode();
        let Some(mode) = mode else {
            if was_active {
                lag_watch.reset();
                apply_before = None;
                missing_since = None;
                prober = Prober::default();
                other_prober = Prober::default();
                was_active = false;
            }
            drop(this);
            tokio::time::sleep(interval.saturating_sub(tick.elapsed())).await;
            continue;
        };
        was_active = true;
        // Probe the subscriber of the running direction, in its own task so that a slow
        // answer never holds up the checks on the traffic counters.
        let dir = match mode {
            Mode::Shift => Direction::Forward,
            Mode::AfterCutover => Direction::Reverse,
        };
        let mut probe = prober
            .tick(&this.driver, dir, interval, this.capture_state().is_some())
            .await;
        if this.replication.both_ways() {
            // Both directions run: both apply workers must, and an apply error on either
            // (a conflict) counts.
            let other = other_prober
                .tick(&this.driver, dir.reverse(), interval, false)
                .await;
            probe = Probe {
                reachable: probe.reachable && other.reachable,
                worker_running: match (probe.worker_running, other.worker_running) {
                    (Some(a), Some(b)) => Some(a && b),
                    _ => None,
                },
                apply_errors: match (probe.apply_errors, other.apply_errors) {
                    (Some(a), Some(b)) => Some(a + b),
                    _ => None,
                },
            };
            if !this.cfg.replication.halt_on_conflict {
                // `halt_on_conflict = false`: logged, not a failed check.
                if let (Some(now), Some(before)) = (probe.apply_errors, apply_before) {
                    if now > before {
                        tracing::warn!(
                            errors = now - before,
                            "replication conflict or apply error (pg_stat_subscription_stats.apply_error_count); the plan goes on ([replication] halt_on_conflict = false)"
                        );
                    }
                }
                apply_before = probe.apply_errors;
            }
        }
        if let Some(st) = this.capture_state() {
            // The mirror driver: no subscription; pgshift's own applier is the worker.
            probe.worker_running = Some(st.applying && st.failed.is_none());
            probe.apply_errors = None;
        }
        let now = Instant::now();
        match probe.worker_running {
            Some(false) => {
                missing_since.get_or_insert(now);
            }
            _ => missing_since = None,
        }
        let lag = lock(&this.inner).lag;
        let delta = w.delta();
        let mut verdict = evaluate(
            &hc,
            delta.as_ref(),
            lag,
            &probe,
            apply_before,
            missing_since.map(|s| now.duration_since(s)),
        );
        if verdict
            .failures
            .iter()
            .any(|f| f.kind == crate::health::FailureKind::ApplyErrors)
        {
            // The driver may name the conflict (pgactive's conflict history).
            if let Some(why) = this.replication.explain_apply_errors(&this).await {
                for f in verdict.failures.iter_mut() {
                    if f.kind == crate::health::FailureKind::ApplyErrors {
                        f.reason = format!("{}: {why}", f.reason);
                    }
                }
            }
        }
        if probe.apply_errors.is_some() {
            apply_before = probe.apply_errors;
        }
        {
            let mut g = lock(&this.inner);
            g.health.checks += 1;
            if !verdict.failures.is_empty() {
                g.health.failed += 1;
            }
            g.health.summary = Some(verdict.summary.clone());
        }
        if !verdict.failures.is_empty() {
            match mode {
                Mode::Shift => this.react_shift(&verdict, now).await,
                Mode::AfterCutover => this.react_after_cutover(&verdict, now),
            }
            // Start over: the failures that caused this reaction are not counted again.
            w.clear();
            lag_watch.reset();
            apply_before = None;
            missing_since = None;
        } else if let Some(held) = lag_watch.observe(
            now,
            verdict.lag_over.is_some(),
            Duration::from_millis(hc.lag_grace_ms),
        ) {
            let why = verdict.lag_over.clone().unwrap_or_default();
            this.raise_alert(&why, held);
        }
        drop(this);
        tokio::time::sleep(interval.saturating_sub(tick.elapsed())).await;
    }
}

type ProbeResult = Result<Option<(bool, bool, Option<i64>)>, String>;
type ProbeDone = (Option<(Side, tokio_postgres::Client)>, ProbeResult);

/// The subscriber probe: one query at a time on a kept connection, in a task of its own.
#[derive(Default)]
struct Prober {
    client: Option<(Side, tokio_postgres::Client)>,
    inflight: Option<(Instant, JoinHandle<ProbeDone>)>,
    last: Option<Probe>,
    /// Probes in a row that failed.
    failures: u32,
}

/// Failed probes in a row before the subscriber counts as unreachable: one failed query on
/// a busy server (or one dropped connection) must not send all traffic back.
const PROBE_FAILURES: u32 = 2;

impl Prober {
    /// Collects a finished probe, starts the next one, and returns what is known: the latest
    /// answer; unreachable after [`PROBE_FAILURES`] errors in a row (connection refused or
    /// lost, a server error; the next probe starts at once on a new connection) or when a
    /// probe has been running for longer than `max(2 s, 5 intervals)`.
    ///
    /// `reach_only` (the `mirror` driver: no subscription, pgshift's applier is the worker)
    /// probes with `SELECT 1` instead of reading `pg_subscription`, which PostgreSQL has only
    /// from 10: after cutover the subscriber is the old source, perhaps a 9.x.
    async fn tick(
        &mut self,
        driver: &Logical,
        dir: Direction,
        interval: Duration,
        reach_only: bool,
    ) -> Probe {
        let side = dir.subscriber();
        let stall = (interval * 5).max(Duration::from_secs(2));
        if let Some((started, h)) = &self.inflight {
            if h.is_finished() {
                let (_, h) = self.inflight.take().expect("inflight");
                let (client, res) = h.await.unwrap_or((None, Err("probe task failed".into())));
                self.client = client;
                if res.is_ok() {
                    self.failures = 0;
                }
                self.last = Some(match res {
                    Ok(Some((enabled, running, errors))) => Probe {
                        reachable: true,
                        worker_running: Some(enabled && running),
                        apply_errors: errors,
                    },
                    Ok(None) => Probe {
                        reachable: true,
                        worker_running: Some(false),
                        apply_errors: None,
                    },
                    Err(e) => {
                        self.failures += 1;
                        tracing::warn!(error = %e, failures = self.failures, "health probe of the subscriber failed");
                        if self.failures >= PROBE_FAILURES {
                            Probe::default()
                        } else {
                            // No verdict yet: the previous answer stands until the next probe.
                            self.last.unwrap_or(Probe {
                                reachable: true,
                                worker_running: None,
                                apply_errors: None,
                            })
                        }
                    }
                });
            } else if started.elapsed() >= stall {
                tracing::warn!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "health probe of the subscriber has not answered"
                );
                return Probe::default();
            }
        }
        if self.inflight.is_none() {
            let client = self
                .client
                .take()
                .filter(|(s, c)| *s == side && !c.is_closed());
            let d = driver.clone();
            let h = tokio::spawn(async move {
                let c = match client {
                    Some(c) => c,
                    None => match d.connect(side).await {
                        Ok(c) => (side, c),
                        Err(e) => return (None, Err(e.message)),
                    },
                };
                let probe = async {
                    if reach_only {
                        c.1.simple_query("SELECT 1")
                            .await
                            .map(|_| None)
                            .map_err(|e| {
                                crate::logical::pg_error(&format!("{}: probe", d.label(side)), &e)
                            })
                    } else {
                        d.subscription_health(&c.1, dir).await
                    }
                };
                match tokio::time::timeout(Duration::from_secs(10), probe).await {
                    Ok(Ok(r)) => (Some(c), Ok(r)),
                    Ok(Err(e)) => (None, Err(e.message)),
                    Err(_) => (None, Err("no answer within 10 s".into())),
                }
            });
            self.inflight = Some((Instant::now(), h));
        }
        // Until the first answer: assume reachable (no verdict on the probe).
        self.last.unwrap_or(Probe {
            reachable: true,
            worker_running: None,
            apply_errors: None,
        })
    }
}

fn reasons(v: &Verdict) -> String {
    v.failures
        .iter()
        .map(|f| f.reason.clone())
        .collect::<Vec<_>>()
        .join("; ")
}

impl Controller {
    /// Before the cutover: stop the plan, journal and publish the lower weight at once, then
    /// record the reason and pause.
    async fn react_shift(self: &Arc<Self>, v: &Verdict, detected: Instant) {
        let Some(traffic) = self.traffic.get().cloned() else {
            return;
        };
        let task;
        let hc = &self.cfg.health;
        let steps = cumulative(&self.cfg.upgrade.shift);
        let unreachable = v
            .failures
            .iter()
            .any(|f| f.kind == FailureKind::Unreachable);
        let reason = reasons(v);
        let (from, to, rec) = {
            let _w = self.row_write.lock().await;
            // Under the row lock: no plan write can come between this check and ours.
            if self.health_mode() != Some(Mode::Shift) {
                return;
            }
            let mut row = self.row();
            let from = row.weight.clamp(0, 100) as u8;
            let to = if unreachable || hc.on_failure == OnFailure::Source {
                0
            } else {
                previous_weight(&steps, from)
            };
            // Nothing to move and no plan to stop: done already.
            if from == to && !matches!(row.state.as_str(), RUNNING | WAITING | ALERT) {
                return;
            }
            task = self.signal_plan();
            // Shift steps above the new weight run again on RESUME UPGRADE.
            let reset: Vec<String> = steps
                .iter()
                .enumerate()
                .filter(|(_, w)| **w > to)
                .flat_map(|(i, _)| {
                    [
                        super::StepKind::ShiftTraffic(i + 1).key(),
                        super::StepKind::HealthCheck(i + 1).key(),
                    ]
                })
                .collect();
            let msg = format!(
                "health check failed: {reason}; traffic weight on the target {from} → {to} %{}; plan paused (RESUME UPGRADE goes on)",
                if unreachable { " (target unreachable: all back on the source)" } else { "" }
            );
            row.weight = i64::from(to);
            if matches!(row.state.as_str(), RUNNING | WAITING | ALERT) {
                row.state = PAUSED.into();
            }
            row.last_error = Some(msg.clone());
            row.updated_at = now_rfc3339();
            // Journal first (no fsync: survives a crash of pgshift; the next write makes it
            // durable), then publish.
            let j = self
                .journal
                .save_upgrade_reset(
                    row.clone(),
                    ("health".into(), "health".into(), msg.clone()),
                    reset.clone(),
                    Durability::Process,
                )
                .await;
            traffic.set_weight(to);
            let ms = detected.elapsed().as_secs_f64() * 1000.0;
            if let Err(e) = j {
                tracing::error!(error = %e, "health reaction: could not journal the new weight (published anyway)");
            }
            {
                let mut g = lock(&self.inner);
                super::note_row(&self.span, &row);
                g.row = row.clone();
                for k in &reset {
                    g.done.remove(k);
                }
            }
            tracing::error!(upgrade = row.id, from, to, reaction_ms = ms, "{msg}");
            (
                from,
                to,
                HealthReaction {
                    at: now_rfc3339(),
                    reason: reason.clone(),
                    from_weight: from,
                    to_weight: to,
                    reaction_ms: ms,
                    rolled_back: false,
                },
            )
        };
        let ms = rec.reaction_ms;
        lock(&self.inner).health.reaction = Some(rec);
        let _ = self
            .journal
            .event(
                "health",
                "health",
                &format!(
                    "weight {from} → {to} % published {ms:.2} ms after the failing check ({reason})"
                ),
            )
            .await;
        if let Some(t) = task {
            // The plan stops at its next safe point; nothing waits for it here.
            tokio::spawn(
                async move {
                    let _ = t.handle.await;
                }
                .in_current_span(),
            );
        }
    }

    /// After the cutover: stop the plan and roll back to the source (in the background: the
    /// rollback drains and catches up like a cutover).
    fn react_after_cutover(self: &Arc<Self>, v: &Verdict, detected: Instant) {
        lock(&self.inner).post_watch = false;
        let reason = reasons(v);
        let this = self.clone();
        let span = self.span.clone();
        tokio::spawn(async move {
            this.stop_plan().await;
            let _g = this.op.lock().await;
            let row = this.row();
            if !(row.serving_side == Side::Target.as_str()
                && Phase::parse(&row.phase) == Phase::CutOver)
            {
                return;
            }
            let _ = this
                .journal
                .event(
                    "health",
                    "health",
                    &format!("health check failed after the cutover: {reason}; rolling back to the source"),
                )
                .await;
            tracing::error!(
                "health check failed after the cutover: {reason}; rolling back to the source"
            );
            let r = this.switch(Direction::Reverse, "health").await;
            // To the moment traffic went back (the swap), not to the end of the post-swap steps.
            let swapped = lock(&this.inner).swapped_at.filter(|t| *t > detected);
            let ms = swapped
                .map(|t| t.duration_since(detected))
                .unwrap_or_else(|| detected.elapsed())
                .as_secs_f64()
                * 1000.0;
            match r {
                Ok(done) => {
                    this.forget_cutover().await;
                    let msg = format!(
                        "health check failed after the cutover: {reason}; rolled back to the source in {ms:.0} ms ({done})"
                    );
                    let _ = this
                        .save("health", "health", &msg, |r| {
                            r.last_error = Some(msg.clone())
                        })
                        .await;
                    lock(&this.inner).health.reaction = Some(HealthReaction {
                        at: now_rfc3339(),
                        reason,
                        from_weight: 100,
                        to_weight: 0,
                        reaction_ms: ms,
                        rolled_back: true,
                    });
                }
                Err(e) => {
                    let msg = format!(
                        "health check failed after the cutover ({reason}) and the rollback to the source failed: {e}; traffic stays on the target"
                    );
                    this.fail("health", None, &msg).await;
                }
            }
        }.instrument(span));
    }

    /// Lag above its limits for longer than the grace: stop shifting (state `alert`), no
    /// rollback.
    fn raise_alert(self: &Arc<Self>, why: &str, held: Duration) {
        let this = self.clone();
        let msg = format!(
            "{why} for {:.1} s (lag_grace_ms {}): shifting stopped, state alert; traffic weights unchanged; RESUME UPGRADE goes on",
            held.as_secs_f64(),
            self.cfg.health.lag_grace_ms
        );
        tokio::spawn(
            async move {
                let row = this.row();
                if !matches!(row.state.as_str(), RUNNING | WAITING) || this.health_mode().is_none()
                {
                    let _ = this.journal.event("health", "alert", &msg).await;
                    return;
                }
                if let Some(t) = this.signal_plan() {
                    let _ = t.handle.await;
                }
                tracing::warn!("{msg}");
                let _ = this
                    .save("health", "alert", &msg, |r| {
                        r.state = ALERT.into();
                        r.last_error = Some(msg.clone());
                    })
                    .await;
            }
            .in_current_span(),
        );
    }
}
