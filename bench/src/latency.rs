//! Latency figures of pgbench transactions: an hdrhistogram of per-transaction latencies,
//! throughput over a window, and the longest transaction around a switch.

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::clock::Span;
use crate::pgbench::Txn;

/// A histogram of latencies in microseconds (1 µs to 1 hour, 3 significant digits).
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Result<Latencies> {
        let hist = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .context("creating a latency histogram")?;
        Ok(Latencies { hist })
    }

    /// The latencies of the successful transactions among `txns`.
    pub fn of(txns: &[Txn]) -> Result<Latencies> {
        let mut l = Latencies::new()?;
        for t in txns {
            if let Some(us) = t.latency_us {
                l.record_us(us);
            }
        }
        Ok(l)
    }

    /// Record one latency (clamped into the histogram's range).
    pub fn record_us(&mut self, us: i64) {
        self.hist.saturating_record(us.max(1) as u64);
    }

    /// Number of recorded latencies.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The latency at quantile `q` (0.0 to 1.0), in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// The largest latency, in milliseconds; 0 when empty.
    pub fn max_ms(&self) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.max() as f64 / 1000.0
    }

    /// The mean latency, in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        self.hist.mean() / 1000.0
    }
}

/// Successful transactions completed within `[start, end)`, per second of the span.
pub fn tps_in(txns: &[Txn], span: Span) -> f64 {
    let secs = (span.end_us - span.start_us) as f64 / 1e6;
    if secs <= 0.0 {
        return 0.0;
    }
    count_in(txns, span) as f64 / secs
}

/// Successful transactions completed within `[start, end)`.
pub fn count_in(txns: &[Txn], span: Span) -> usize {
    txns.iter()
        .filter(|t| t.latency_us.is_some() && t.end_us >= span.start_us && t.end_us < span.end_us)
        .count()
}

/// The longest transaction in progress at any time within `span` (start and end included),
/// as client-observed latency in milliseconds, with its own start and end.
pub fn longest_overlapping(txns: &[Txn], span: Span) -> Option<(f64, Span)> {
    txns.iter()
        .filter_map(|t| {
            let lat = t.latency_us?;
            span.overlaps(t.start_us(), t.end_us).then_some((
                lat,
                Span {
                    start_us: t.start_us(),
                    end_us: t.end_us,
                },
            ))
        })
        .max_by_key(|(lat, _)| *lat)
        .map(|(lat, s)| (lat as f64 / 1000.0, s))
}

/// How far (µs) the window of a switch's client-observed pause reaches around the command.
pub const SWITCH_MARGIN_US: i64 = 1_000_000;

/// The client-observed pause of a switch whose command ran over `command`: the longest
/// transaction in progress at any time within `[start - 1 s, end + 1 s]`, in milliseconds
/// (0 without any transaction there).
pub fn switch_pause_ms(txns: &[Txn], command: Span) -> f64 {
    longest_overlapping(txns, command.widened(SWITCH_MARGIN_US)).map_or(0.0, |(ms, _)| ms)
}

/// The transactions in progress during a server-side pause (the ones it held).
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// How many.
    pub count: usize,
    /// The longest of them, in milliseconds.
    pub max_ms: f64,
    /// How long after the pause's end the last of them completed, in milliseconds: the time
    /// the proxy took to move their sessions to the new side and run what it had held.
    pub done_after_ms: f64,
}

/// The transactions that overlap `pause`; `None` without any.
pub fn held_by(txns: &[Txn], pause: Span) -> Option<Held> {
    let held: Vec<&Txn> = txns
        .iter()
        .filter(|t| t.latency_us.is_some() && pause.overlaps(t.start_us(), t.end_us))
        .collect();
    let max_us = held.iter().filter_map(|t| t.latency_us).max()?;
    let last_end = held.iter().map(|t| t.end_us).max()?;
    Some(Held {
        count: held.len(),
        max_ms: max_us as f64 / 1000.0,
        done_after_ms: (last_end - pause.end_us) as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(end_us: i64, lat: i64) -> Txn {
        Txn {
            client: 0,
            end_us,
            latency_us: Some(lat),
        }
    }

    #[test]
    fn quantiles_in_ms() {
        let mut l = Latencies::new().unwrap();
        for us in 1..=1000 {
            l.record_us(us * 10);
        }
        assert_eq!(l.count(), 1000);
        assert!(
            (l.quantile_ms(0.5) - 5.0).abs() < 0.01,
            "{}",
            l.quantile_ms(0.5)
        );
        assert!((l.quantile_ms(0.99) - 9.9).abs() < 0.01);
        assert!((l.max_ms() - 10.0).abs() < 0.01);
        assert_eq!(Latencies::new().unwrap().quantile_ms(0.5), 0.0);
    }

    #[test]
    fn window_figures() {
        let txns = vec![
            txn(1_000_000, 100),
            txn(1_500_000, 100),
            // In progress from 1.2 s to 3.0 s: overlaps a window [2.0, 2.5] without ending in it.
            txn(3_000_000, 1_800_000),
            txn(3_100_000, 900_000),
            Txn {
                client: 1,
                end_us: 2_200_000,
                latency_us: None,
            },
        ];
        let w = Span {
            start_us: 1_000_000,
            end_us: 2_000_000,
        };
        assert_eq!(tps_in(&txns, w), 2.0);
        let (ms, s) = longest_overlapping(
            &txns,
            Span {
                start_us: 2_000_000,
                end_us: 2_500_000,
            },
        )
        .unwrap();
        assert_eq!(ms, 1800.0);
        assert_eq!(s.start_us, 1_200_000);
        assert!(longest_overlapping(
            &txns,
            Span {
                start_us: 5_000_000,
                end_us: 6_000_000
            }
        )
        .is_none());
        let h = held_by(
            &txns,
            Span {
                start_us: 2_150_000,
                end_us: 2_300_000,
            },
        )
        .unwrap();
        assert_eq!(h.count, 2);
        assert_eq!(h.max_ms, 1800.0);
        assert_eq!(h.done_after_ms, 800.0);
    }
}
