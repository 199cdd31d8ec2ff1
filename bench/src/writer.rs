//! The unique-id writer: inserts ids 1, 2, 3, … into `acked` through pgshift, one at a time,
//! and keeps the ones that were acknowledged (and any error it saw).

use anyhow::{anyhow, Result};
use integration::stack::db_error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

use crate::clock;

/// A writer under way.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<WriterReport>,
}

/// What the writer did.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Ids whose INSERT was acknowledged.
    pub acked: Vec<i64>,
    /// Errors it saw (an id each).
    pub errors: Vec<String>,
    /// (completion time in µs since the epoch, latency in µs) of each acknowledged insert.
    pub writes: Vec<(i64, i64)>,
}

impl Writer {
    /// Start writing on `client` (a connection through pgshift), pausing `gap` between inserts.
    pub async fn start(client: tokio_postgres::Client, gap: Duration) -> Result<Writer> {
        let stmt = client
            .prepare("INSERT INTO acked (id) VALUES ($1)")
            .await
            .map_err(|e| anyhow!("preparing the writer's INSERT: {}", db_error(&e)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let mut r = WriterReport::default();
            let mut id = 0i64;
            while !flag.load(Ordering::Relaxed) {
                id += 1;
                let t0 = clock::now_us();
                match client.execute(&stmt, &[&id]).await {
                    Ok(1) => {
                        let t1 = clock::now_us();
                        r.acked.push(id);
                        r.writes.push((t1, t1 - t0));
                    }
                    Ok(n) => r.errors.push(format!("id {id}: {n} rows")),
                    Err(e) => {
                        r.errors.push(format!("id {id}: {}", db_error(&e)));
                        if e.is_closed() {
                            break;
                        }
                    }
                }
                tokio::time::sleep(gap).await;
            }
            r
        });
        Ok(Writer { stop, handle })
    }

    /// Stop and report.
    pub async fn finish(self) -> Result<WriterReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .await
            .map_err(|e| anyhow!("the writer task failed: {e}"))
    }
}

impl WriterReport {
    /// The longest acknowledged insert in progress within `span`, in milliseconds.
    pub fn longest_overlapping_ms(&self, span: clock::Span) -> Option<f64> {
        self.writes
            .iter()
            .filter(|(end, lat)| span.overlaps(end - lat, *end))
            .map(|(_, lat)| *lat as f64 / 1000.0)
            .fold(None, |m, v| Some(m.map_or(v, |m: f64| m.max(v))))
    }
}
