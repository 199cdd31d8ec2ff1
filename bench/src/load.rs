//! Background load while waiting for something (the initial copy of an upgrade): short pgbench
//! runs back to back, so that each ends with a summary whose failures can be counted.

use anyhow::{anyhow, Result};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::pgbench::{self, Endpoint, Spec, Summary};

/// The summed figures of the runs.
#[derive(Debug, Default, Clone)]
pub struct LoadTotals {
    /// pgbench runs completed.
    pub runs: u32,
    /// Transactions processed over all runs.
    pub transactions: u64,
    /// Failed transactions plus aborted clients over all runs.
    pub failures: u64,
    /// Standard error of runs that reported failures, for the record.
    pub failure_output: Vec<String>,
}

impl LoadTotals {
    fn add(&mut self, s: &Summary, stderr: &str) {
        self.runs += 1;
        self.transactions += s.transactions;
        self.failures += s.failures();
        if s.failures() > 0 {
            self.failure_output.push(stderr.to_string());
        }
    }
}

/// Run pgbench `spec` (its `seconds` is the length of one run) against `endpoint` over and
/// over until `until` completes; then let the current run finish and return `until`'s result
/// with the totals. A pgbench run that cannot start or prints no summary ends the load with
/// that error.
pub async fn while_waiting<T>(
    endpoint: &Endpoint,
    spec: &Spec,
    until: impl Future<Output = Result<T>>,
) -> Result<(T, LoadTotals)> {
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (stop, endpoint, spec) = (stop.clone(), endpoint.clone(), spec.clone());
        tokio::spawn(async move {
            let mut totals = LoadTotals::default();
            while !stop.load(Ordering::Relaxed) {
                let out = pgbench::spawn(&endpoint, &spec, false)?.finish().await?;
                totals.add(&out.summary, &out.stderr);
            }
            Ok::<_, anyhow::Error>(totals)
        })
    };
    let result = until.await;
    stop.store(true, Ordering::Relaxed);
    let totals = loader
        .await
        .map_err(|e| anyhow!("the background pgbench task failed: {e}"))??;
    Ok((result?, totals))
}
