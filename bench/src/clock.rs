//! Wall-clock time as pgbench's per-transaction logs record it: microseconds since the epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// An interval of wall-clock time, microseconds since the epoch (`start <= end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start_us: i64,
    pub end_us: i64,
}

impl Span {
    /// Its length in milliseconds.
    pub fn ms(&self) -> f64 {
        (self.end_us - self.start_us) as f64 / 1000.0
    }

    /// The span widened by `us` microseconds on both sides.
    pub fn widened(&self, us: i64) -> Span {
        Span {
            start_us: self.start_us - us,
            end_us: self.end_us + us,
        }
    }

    /// Whether `[start, end]` has any instant in common with this span.
    pub fn overlaps(&self, start_us: i64, end_us: i64) -> bool {
        start_us <= self.end_us && end_us >= self.start_us
    }
}
