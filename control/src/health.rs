//! Health checks that guard the weighted shift and the time after the cutover (`[health]`).
//!
//! Every `interval_ms` the controller's health task takes a sample of the proxy's cumulative
//! traffic counters ([`crate::TrafficControl::stats`]), the replication lag the collector read,
//! and a probe of the subscriber (reachable? apply worker running? apply errors?), and
//! [`evaluate`]s them:
//!
//! * **error rate**: errors / transactions of the side under test over the window (deltas of
//!   the cumulative counters between the oldest sample inside `window_ms` and now); no verdict
//!   below `min_transactions`;
//! * **latency**: p99 of the side under test / p99 of the other side, when both had
//!   `min_transactions`, and at least [`MIN_P99_SAMPLES`], in the window (the p99 of fewer
//!   transactions is their maximum: one cold first query on a new connection would decide);
//! * **apply errors**: `pg_stat_subscription_stats.apply_error_count` grew (PostgreSQL 15+);
//! * **apply worker gone** for longer than [`WORKER_GRACE`] while the subscription is enabled;
//! * **unreachable**: the subscriber does not answer the probe.
//!
//! Any of these is a *failure* (traffic moves back at once). Replication lag above
//! `max_lag_bytes` / `max_lag_seconds` is not: held for longer than `lag_grace_ms` it raises an
//! *alert* (shifting stops, nothing rolls back).
//!
//! The side under test is the target before the cutover (eligible traffic shifted to it) and
//! again the target after the cutover (it serves everything; the source is the reference
//! only while it still serves some traffic).

use crate::logical::Lag;
use crate::{SideStats, TrafficStats};
use config::HealthConfig;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long the apply worker of a running subscription may be missing before that fails a
/// check: a subscription created or enabled moments ago gets its worker within
/// `wal_retrieve_retry_interval` (5 s by default), and a worker that exits after an error is
/// restarted after the same delay.
pub const WORKER_GRACE: Duration = Duration::from_secs(12);

/// Fewest transactions per side in the window for a verdict on the p99 ratio.
pub const MIN_P99_SAMPLES: u64 = 100;

/// What a failing check was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Too many target transactions ended in an error.
    ErrorRate,
    /// The target's p99 latency is too far above the source's.
    Latency,
    /// The subscription's apply worker reported errors.
    ApplyErrors,
    /// The subscription's apply worker is not running.
    WorkerGone,
    /// The subscriber (the target before the cutover) does not answer.
    Unreachable,
}

impl FailureKind {
    /// Name used in messages and the history.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::ErrorRate => "error_rate",
            FailureKind::Latency => "latency",
            FailureKind::ApplyErrors => "apply_errors",
            FailureKind::WorkerGone => "apply_worker",
            FailureKind::Unreachable => "unreachable",
        }
    }
}

/// One failing check.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Which check.
    pub kind: FailureKind,
    /// Why, with the figures.
    pub reason: String,
}

/// The subscriber as the probe saw it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Probe {
    /// It answered.
    pub reachable: bool,
    /// Its apply worker for the subscription runs (`None`: not known).
    pub worker_running: Option<bool>,
    /// `apply_error_count` of the subscription (PostgreSQL 15+), cumulative.
    pub apply_errors: Option<i64>,
}

/// Samples of the cumulative traffic counters over the last `window`.
#[derive(Debug, Clone)]
pub struct Window {
    window: Duration,
    samples: VecDeque<(Instant, TrafficStats)>,
}

/// Traffic of one side over the window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SideDelta {
    /// Transactions completed in the window.
    pub transactions: u64,
    /// Of which ended in an error.
    pub errors: u64,
    /// Latest p99 (ms) the proxy reports for the side.
    pub p99_ms: f64,
}

/// [`SideDelta`] of both sides, and the span the window really covers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Delta {
    /// Source side.
    pub source: SideDelta,
    /// Target side.
    pub target: SideDelta,
    /// Time between the oldest sample used and the newest.
    pub span: Duration,
}

impl Window {
    /// An empty window of length `window`.
    pub fn new(window: Duration) -> Window {
        Window {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample and drops those older than the window (keeping one at or before its
    /// start, as the baseline).
    pub fn push(&mut self, at: Instant, stats: TrafficStats) {
        // Counters that went backwards (the proxy restarted): start over.
        if let Some((_, last)) = self.samples.back() {
            if stats.source.transactions < last.source.transactions
                || stats.target.transactions < last.target.transactions
                || stats.source.errors < last.source.errors
                || stats.target.errors < last.target.errors
            {
                self.samples.clear();
            }
        }
        self.samples.push_back((at, stats));
        while self.samples.len() > 2 {
            let second = self.samples[1].0;
            if at.duration_since(second) >= self.window {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Forgets every sample: the next verdict on rates needs new traffic (after a reaction,
    /// so that the failures that caused it are not counted twice).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// The counters' change over the window; `None` with fewer than two samples.
    pub fn delta(&self) -> Option<Delta> {
        let (t0, a) = self.samples.front()?;
        let (t1, b) = self.samples.back()?;
        if self.samples.len() < 2 {
            return None;
        }
        let side = |x: &SideStats, y: &SideStats| SideDelta {
            transactions: y.transactions.saturating_sub(x.transactions),
            errors: y.errors.saturating_sub(x.errors),
            p99_ms: y.p99_ms,
        };
        Some(Delta {
            source: side(&a.source, &b.source),
            target: side(&a.target, &b.target),
            span: t1.duration_since(*t0),
        })
    }
}

/// The outcome of one round of checks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// Failing checks (empty = healthy or no verdict).
    pub failures: Vec<Failure>,
    /// Lag above a limit (not a failure; see [`LagWatch`]), with the figures.
    pub lag_over: Option<String>,
    /// One line: the figures that were checked.
    pub summary: String,
}

/// Evaluates one round. `tested` is the side under test ([`Delta::target`] before and after
/// the cutover); `reference` the other. `apply_errors_before` is the previous probe's count.
/// `worker_missing_for`: how long the probe has not seen the apply worker.
pub fn evaluate(
    cfg: &HealthConfig,
    delta: Option<&Delta>,
    lag: Option<Lag>,
    probe: &Probe,
    apply_errors_before: Option<i64>,
    worker_missing_for: Option<Duration>,
) -> Verdict {
    let mut v = Verdict::default();
    let mut parts = Vec::new();
    if !probe.reachable {
        v.failures.push(Failure {
            kind: FailureKind::Unreachable,
            reason: "the target does not answer (connection refused, lost or timed out)".into(),
        });
        parts.push("target unreachable".to_string());
    }
    if let Some(d) = delta {
        let t = &d.target;
        let s = &d.source;
        let secs = d.span.as_secs_f64();
        if t.transactions >= cfg.min_transactions {
            let rate = t.errors as f64 / t.transactions as f64;
            parts.push(format!(
                "target {}/{} errors ({:.2} %) in {secs:.1} s",
                t.errors,
                t.transactions,
                rate * 100.0
            ));
            if rate > cfg.max_error_rate {
                v.failures.push(Failure {
                    kind: FailureKind::ErrorRate,
                    reason: format!(
                        "target error rate {:.2} % ({} of {} transactions in {secs:.1} s) is above max_error_rate {:.2} %",
                        rate * 100.0,
                        t.errors,
                        t.transactions,
                        cfg.max_error_rate * 100.0
                    ),
                });
            }
            let enough = cfg.min_transactions.max(MIN_P99_SAMPLES);
            if s.transactions >= enough
                && t.transactions >= enough
                && s.p99_ms > 0.0
                && t.p99_ms > 0.0
            {
                let ratio = t.p99_ms / s.p99_ms;
                parts.push(format!(
                    "p99 {:.2} / {:.2} ms = {ratio:.2}",
                    t.p99_ms, s.p99_ms
                ));
                if ratio > cfg.max_p99_ratio {
                    v.failures.push(Failure {
                        kind: FailureKind::Latency,
                        reason: format!(
                            "target p99 {:.2} ms is {ratio:.2} times the source's {:.2} ms, above max_p99_ratio {}",
                            t.p99_ms, s.p99_ms, cfg.max_p99_ratio
                        ),
                    });
                }
            }
        } else {
            parts.push(format!(
                "{} target transactions in {secs:.1} s (< min_transactions {}: no verdict on rates)",
                t.transactions, cfg.min_transactions
            ));
        }
    }
    if probe.reachable {
        if let (Some(now), Some(before)) = (probe.apply_errors, apply_errors_before) {
            if now > before {
                v.failures.push(Failure {
                    kind: FailureKind::ApplyErrors,
                    reason: format!(
                        "the apply side reported {} error(s) or conflict(s) (count {before} -> {now}: pg_stat_subscription_stats.apply_error_count, or pgactive's conflict counters): a replication conflict (e.g. one key written on both servers) or a change the subscriber cannot apply; see the subscriber's log",
                        now - before
                    ),
                });
            }
        }
        if let Some(missing) = worker_missing_for {
            if missing >= WORKER_GRACE {
                v.failures.push(Failure {
                    kind: FailureKind::WorkerGone,
                    reason: format!(
                        "the subscription's apply worker has not been running for {:.1} s; see the subscriber's log",
                        missing.as_secs_f64()
                    ),
                });
            }
        }
    }
    if let Some(l) = lag {
        let mut over = Vec::new();
        if let Some(b) = l.bytes {
            parts.push(format!("lag {b} B"));
            if b > 0 && b as u64 > cfg.max_lag_bytes {
                over.push(format!("{b} bytes (max_lag_bytes {})", cfg.max_lag_bytes));
            }
        }
        if let Some(s) = l.seconds {
            parts.push(format!("{s:.1} s"));
            if s > cfg.max_lag_seconds {
                over.push(format!(
                    "{s:.1} s (max_lag_seconds {})",
                    cfg.max_lag_seconds
                ));
            }
        }
        if !over.is_empty() {
            v.lag_over = Some(format!("replication lag {}", over.join(", ")));
        }
    }
    v.summary = if v.failures.is_empty() {
        format!("ok: {}", parts.join("; "))
    } else {
        let kinds: Vec<&str> = v.failures.iter().map(|f| f.kind.as_str()).collect();
        format!("failing ({}): {}", kinds.join(", "), parts.join("; "))
    };
    v
}

/// Tracks how long the lag has been above its limits.
#[derive(Debug, Clone, Default)]
pub struct LagWatch {
    since: Option<Instant>,
    raised: bool,
}

impl LagWatch {
    /// Feeds one verdict's lag state; returns `Some(how long)` once, when the lag has been
    /// over for at least `grace` (the alert), and `None` otherwise.
    pub fn observe(&mut self, now: Instant, over: bool, grace: Duration) -> Option<Duration> {
        if !over {
            self.since = None;
            self.raised = false;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        let held = now.duration_since(since);
        if !self.raised && held >= grace {
            self.raised = true;
            return Some(held);
        }
        None
    }

    /// Forgets the state (health checks stopped).
    pub fn reset(&mut self) {
        *self = LagWatch::default();
    }
}

/// Largest of `steps` (cumulative shift weights, ascending) below `current`, else 0: where
/// `on_failure = "previous"` sends traffic back to.
pub fn previous_weight(steps: &[u8], current: u8) -> u8 {
    steps
        .iter()
        .copied()
        .filter(|w| *w < current)
        .max()
        .unwrap_or(0)
}

/// Cumulative weights of `[upgrade] shift` (`[25, 25, 50]` → `[25, 50, 100]`), capped at 100.
pub fn cumulative(shift: &[u32]) -> Vec<u8> {
    let mut total = 0u32;
    shift
        .iter()
        .map(|p| {
            total = (total + p).min(100);
            total as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(st: u64, se: u64, tt: u64, te: u64) -> TrafficStats {
        TrafficStats {
            source: SideStats {
                transactions: st,
                errors: se,
                p99_ms: 2.0,
            },
            target: SideStats {
                transactions: tt,
                errors: te,
                p99_ms: 3.0,
            },
        }
    }

    #[test]
    fn window_deltas() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10));
        assert!(w.delta().is_none());
        w.push(t0, stats(0, 0, 0, 0));
        assert!(w.delta().is_none());
        for i in 1..=20u64 {
            w.push(t0 + Duration::from_secs(i), stats(i * 100, 0, i * 10, i));
        }
        let d = w.delta().unwrap();
        // The baseline is the sample 10 s before the newest.
        assert_eq!(d.span, Duration::from_secs(10));
        assert_eq!(d.target.transactions, 100);
        assert_eq!(d.target.errors, 10);
        assert_eq!(d.source.transactions, 1000);
        // Counters going backwards start over.
        w.push(t0 + Duration::from_secs(21), stats(1, 0, 1, 0));
        assert!(w.delta().is_none());
        w.clear();
        assert!(w.delta().is_none());
    }

    #[test]
    fn verdicts() {
        let cfg = HealthConfig::default();
        let ok_probe = Probe {
            reachable: true,
            worker_running: Some(true),
            apply_errors: Some(0),
        };
        let d = |tt, te| Delta {
            source: SideDelta {
                transactions: 1000,
                errors: 0,
                p99_ms: 2.0,
            },
            target: SideDelta {
                transactions: tt,
                errors: te,
                p99_ms: 3.0,
            },
            span: Duration::from_secs(10),
        };
        let v = evaluate(&cfg, Some(&d(100, 1)), None, &ok_probe, Some(0), None);
        assert!(v.failures.is_empty(), "{v:?}");
        // A slow p99 over too few transactions: no verdict on latency.
        let mut few = d(50, 0);
        few.target.p99_ms = 100.0;
        let v = evaluate(&cfg, Some(&few), None, &ok_probe, Some(0), None);
        assert!(v.failures.is_empty(), "{v:?}");
        assert!(v.summary.starts_with("ok"), "{}", v.summary);
        let v = evaluate(&cfg, Some(&d(100, 5)), None, &ok_probe, Some(0), None);
        assert_eq!(v.failures[0].kind, FailureKind::ErrorRate);
        assert!(v.failures[0].reason.contains("5 of 100"), "{v:?}");
        // Too little traffic: no verdict on rates.
        let v = evaluate(&cfg, Some(&d(10, 10)), None, &ok_probe, Some(0), None);
        assert!(v.failures.is_empty(), "{v:?}");
        // Latency.
        let mut slow = d(100, 0);
        slow.target.p99_ms = 7.0;
        let v = evaluate(&cfg, Some(&slow), None, &ok_probe, Some(0), None);
        assert_eq!(v.failures[0].kind, FailureKind::Latency);
        // Apply errors, worker, unreachable.
        let p = Probe {
            apply_errors: Some(3),
            ..ok_probe
        };
        let v = evaluate(&cfg, None, None, &p, Some(1), None);
        assert_eq!(v.failures[0].kind, FailureKind::ApplyErrors);
        let v = evaluate(
            &cfg,
            None,
            None,
            &ok_probe,
            Some(0),
            Some(Duration::from_secs(1)),
        );
        assert!(v.failures.is_empty());
        let v = evaluate(&cfg, None, None, &ok_probe, Some(0), Some(WORKER_GRACE));
        assert_eq!(v.failures[0].kind, FailureKind::WorkerGone);
        let v = evaluate(&cfg, None, None, &Probe::default(), None, None);
        assert_eq!(v.failures[0].kind, FailureKind::Unreachable);
        // Lag is not a failure.
        let lag = Lag {
            bytes: Some(100 << 20),
            seconds: Some(1.0),
        };
        let v = evaluate(&cfg, None, Some(lag), &ok_probe, Some(0), None);
        assert!(v.failures.is_empty());
        assert!(v.lag_over.as_deref().unwrap().contains("max_lag_bytes"));
    }

    #[test]
    fn lag_watch_and_weights() {
        let t0 = Instant::now();
        let g = Duration::from_secs(5);
        let mut w = LagWatch::default();
        assert_eq!(w.observe(t0, true, g), None);
        assert_eq!(w.observe(t0 + Duration::from_secs(4), true, g), None);
        assert_eq!(
            w.observe(t0 + Duration::from_secs(5), true, g),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            w.observe(t0 + Duration::from_secs(6), true, g),
            None,
            "once"
        );
        assert_eq!(w.observe(t0 + Duration::from_secs(7), false, g), None);
        assert_eq!(w.observe(t0 + Duration::from_secs(8), true, g), None);

        assert_eq!(cumulative(&[25, 25, 50]), vec![25, 50, 100]);
        assert_eq!(previous_weight(&[25, 50, 100], 50), 25);
        assert_eq!(previous_weight(&[25, 50, 100], 25), 0);
        assert_eq!(previous_weight(&[25, 50, 100], 100), 50);
        assert_eq!(previous_weight(&[25, 50, 100], 40), 25);
    }
}
