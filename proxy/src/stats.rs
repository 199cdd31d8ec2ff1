//! Client traffic counters per side for health checks: units of work, errors, and a
//! latency histogram. One relaxed atomic add per counter per unit: no lock, no allocation
//! on the relay path.

use control::{Side, SideStats, TrafficStats};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Sub-buckets per power of two of latency (µs): bucket bounds grow by 2^(1/4) ≈ 19 %.
const SUB: usize = 4;
/// 1 µs .. 2^30 µs (~18 min).
const BUCKETS: usize = 31 * SUB;

fn bucket(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    let log = 63 - us.leading_zeros() as usize; // floor(log2)
    let frac = if log >= 2 {
        ((us >> (log - 2)) & 3) as usize
    } else {
        ((us << (2 - log)) & 3) as usize
    };
    (log * SUB + frac).min(BUCKETS - 1)
}

/// Upper bound of a bucket, in µs.
fn bucket_upper_us(b: usize) -> f64 {
    let (log, frac) = (b / SUB, b % SUB);
    (1u64 << log) as f64 * (1.0 + (frac + 1) as f64 / SUB as f64)
}

struct SideCounters {
    units: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl SideCounters {
    fn new() -> Self {
        SideCounters {
            units: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
    fn snapshot(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }
}

/// Counters of both sides, and a ring of per-second histogram snapshots for windowed p99.
pub struct Traffic {
    sides: [SideCounters; 2],
    ring: Mutex<VecDeque<[[u64; BUCKETS]; 2]>>,
    /// Snapshots kept: the p99 window in seconds.
    window_secs: usize,
}

fn idx(side: Side) -> usize {
    match side {
        Side::Source => 0,
        Side::Target => 1,
    }
}

impl Traffic {
    pub fn new(window: Duration) -> Traffic {
        Traffic {
            sides: [SideCounters::new(), SideCounters::new()],
            ring: Mutex::new(VecDeque::new()),
            window_secs: (window.as_secs() as usize).max(1),
        }
    }

    /// A unit of work on `side` ended, with or without an error, after `latency_us` (µs;
    /// `None`: the unit is counted but is no latency sample, e.g. the first unit on a
    /// backend connection just opened, whose catalog caches are cold).
    #[inline]
    pub fn unit_done(&self, side: Side, error: bool, latency_us: Option<u64>) {
        let s = &self.sides[idx(side)];
        s.units.fetch_add(1, Ordering::Relaxed);
        if error {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(us) = latency_us {
            s.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Take the per-second snapshot (called by a 1 s ticker).
    pub fn tick(&self) {
        let snap = [self.sides[0].snapshot(), self.sides[1].snapshot()];
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.push_back(snap);
        while ring.len() > self.window_secs + 1 {
            ring.pop_front();
        }
    }

    /// Cumulative counts, and p99 over the window (latency of units ended in the last
    /// `window` seconds).
    pub fn stats(&self) -> TrafficStats {
        let oldest = self
            .ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .copied();
        let side = |i: usize| {
            let s = &self.sides[i];
            let now = s.snapshot();
            let delta: Vec<u64> = match &oldest {
                Some(o) => now
                    .iter()
                    .zip(o[i].iter())
                    .map(|(a, b)| a.saturating_sub(*b))
                    .collect(),
                None => now.to_vec(),
            };
            SideStats {
                transactions: s.units.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
                p99_ms: quantile_us(&delta, 0.99) / 1000.0,
            }
        };
        TrafficStats {
            source: side(0),
            target: side(1),
        }
    }
}

/// Quantile `q` of a bucketed histogram, as the bucket's upper bound in µs (0 when empty).
fn quantile_us(buckets: &[u64], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let want = ((total as f64) * q).ceil() as u64;
    let mut seen = 0;
    for (b, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= want {
            return bucket_upper_us(b);
        }
    }
    bucket_upper_us(buckets.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_their_values() {
        let mut last = 0;
        for us in [
            1u64,
            2,
            3,
            5,
            8,
            100,
            999,
            1000,
            1001,
            50_000,
            1_000_000,
            1 << 40,
        ] {
            let b = bucket(us);
            assert!(b >= last, "bucket({us}) = {b} < {last}");
            last = b;
            if us < (1 << 30) {
                assert!(bucket_upper_us(b) >= us as f64, "upper({b}) < {us}");
                assert!(
                    bucket_upper_us(b) <= us as f64 * 1.3 + 1.0,
                    "upper({b}) = {} too far above {us}",
                    bucket_upper_us(b)
                );
            }
        }
    }

    #[test]
    fn p99_follows_the_window() {
        let t = Traffic::new(Duration::from_secs(2));
        for _ in 0..99 {
            t.unit_done(Side::Target, false, Some(1000));
        }
        t.unit_done(Side::Target, true, Some(500_000));
        t.unit_done(Side::Source, false, Some(200));
        // Counted, but no latency sample.
        t.unit_done(Side::Source, false, None);
        let s = t.stats();
        assert_eq!(s.target.transactions, 100);
        assert_eq!(s.target.errors, 1);
        assert_eq!(s.source.transactions, 2);
        assert!(
            s.target.p99_ms >= 1.0 && s.target.p99_ms < 1.3,
            "{}",
            s.target.p99_ms
        );
        assert!(
            s.source.p99_ms > 0.19 && s.source.p99_ms < 0.3,
            "{}",
            s.source.p99_ms
        );
        // After the window passes with no traffic, p99 is 0 again.
        t.tick();
        t.tick();
        t.tick();
        assert_eq!(t.stats().target.p99_ms, 0.0);
        assert_eq!(t.stats().target.transactions, 100);
    }
}
