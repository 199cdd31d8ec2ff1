//! Client load for tests and bench: a writer of unique ids whose acknowledged ids are kept (the
//! "no acknowledged write lost" check), and pgbench run in back-to-back chunks until stopped
//! (so that a scenario of unknown length is covered and every chunk's summary is read).

use crate::stack::db_error;
use anyhow::{Context, Result};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Inserts ids 1, 2, 3, ... into `table (id bigint PRIMARY KEY)` one autocommit statement at a
/// time (every `pace`), keeping each id whose INSERT was acknowledged. On an error it records
/// the error, reconnects (retrying every 50 ms) and goes on with the next id, so it also runs
/// across a crash and restart of pgshift.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    handle: tokio::task::JoinHandle<Vec<String>>,
}

/// What a stopped [`Writer`] saw.
#[derive(Debug, Default)]
pub struct Written {
    /// Ids whose INSERT returned `INSERT 0 1`, in order.
    pub acked: Vec<i64>,
    /// Errors (connect or insert), in order, as "id N: message".
    pub errors: Vec<String>,
}

impl Writer {
    /// Starts the writer on `conninfo` (e.g. [`Stack::app_conninfo`](crate::Stack::app_conninfo)).
    pub fn start(conninfo: String, table: &str, pace: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let sql = format!("INSERT INTO {table} (id) VALUES ($1)");
        let handle = {
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut errors = Vec::new();
                let mut id = 0i64;
                'outer: while !stop.load(Ordering::Relaxed) {
                    let c = match crate::stack::connect(&conninfo).await {
                        Ok(c) => c,
                        Err(e) => {
                            if errors.last() != Some(&format!("connect: {e}")) {
                                errors.push(format!("connect: {e}"));
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let stmt = match c.prepare(&sql).await {
                        Ok(s) => s,
                        Err(e) => {
                            errors.push(format!("prepare: {}", db_error(&e)));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    while !stop.load(Ordering::Relaxed) {
                        id += 1;
                        match c.execute(&stmt, &[&id]).await {
                            Ok(1) => acked.lock().unwrap_or_else(|e| e.into_inner()).push(id),
                            Ok(n) => errors.push(format!("id {id}: {n} rows")),
                            Err(e) => {
                                errors.push(format!("id {id}: {}", db_error(&e)));
                                if c.is_closed() {
                                    continue 'outer;
                                }
                            }
                        }
                        tokio::time::sleep(pace).await;
                    }
                }
                errors
            })
        };
        Writer {
            stop,
            acked,
            handle,
        }
    }

    /// Ids acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Stops the writer and returns what it saw.
    pub async fn stop(self) -> Written {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .handle
            .await
            .unwrap_or_else(|e| vec![format!("writer task: {e}")]);
        let acked = std::mem::take(&mut *self.acked.lock().unwrap_or_else(|e| e.into_inner()));
        Written { acked, errors }
    }
}

/// Ids of `acked` missing from `table` on `server` (empty: nothing lost).
pub fn missing_ids(
    server: &crate::PgServer,
    db: &str,
    table: &str,
    acked: &[i64],
) -> Result<Vec<i64>> {
    let have: std::collections::HashSet<i64> = server
        .psql(db, &format!("SELECT id FROM {table}"))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.trim().parse::<i64>().context("id"))
        .collect::<Result<_>>()?;
    Ok(acked
        .iter()
        .copied()
        .filter(|id| !have.contains(id))
        .collect())
}

/// pgbench's tables as (table or subquery, key order) for [`tables_differ`]: history without
/// `mtime`, which is `CURRENT_TIMESTAMP` and takes another value where a statement is
/// applied again (the `mirror` driver).
pub const PGBENCH_TABLES: [(&str, &str); 4] = [
    ("pgbench_accounts", "aid"),
    ("pgbench_branches", "bid"),
    ("pgbench_tellers", "tid"),
    (
        "(SELECT tid, bid, aid, delta FROM pgbench_history)",
        "tid, bid, aid, delta",
    ),
];

/// Row count and md5 of a table's (or subquery's) rows in `key` order, in database `app`:
/// the same on two servers when their data is equal.
pub fn table_digest(server: &crate::PgServer, table: &str, key: &str) -> Result<String> {
    server.psql(
        "app",
        &format!(
            "SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, ',' ORDER BY {key}), '')) FROM {table} t"
        ),
    )
}

/// The `tables` (as (table or subquery, key order)) whose contents differ between `a` and
/// `b`, in database `app`; one that cannot be read counts as differing.
pub fn tables_differ(
    a: &crate::PgServer,
    b: &crate::PgServer,
    tables: &[(&str, &str)],
) -> Vec<String> {
    tables
        .iter()
        .filter(
            |(t, k)| match (table_digest(a, t, k), table_digest(b, t, k)) {
                (Ok(x), Ok(y)) => x != y,
                _ => true,
            },
        )
        .map(|(t, _)| t.to_string())
        .collect()
}

/// pgbench run again and again (each run `-T chunk_s`) until stopped, on a thread of its own.
pub struct PgbenchLoop {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<PgbenchTotals>,
}

/// The sum of a [`PgbenchLoop`]'s runs.
#[derive(Debug, Default, Clone)]
pub struct PgbenchTotals {
    pub runs: u32,
    /// "number of transactions actually processed".
    pub transactions: u64,
    /// "number of failed transactions" (pgbench 15 and later).
    pub failed: u64,
    /// Runs that exited non-zero, clients aborted, and error lines of standard error.
    pub errors: Vec<String>,
}

impl PgbenchLoop {
    /// Starts the loop; `make` builds the pgbench command of one run (with its `-T`), e.g. from
    /// [`Stack::pgbench`](crate::Stack::pgbench).
    pub fn start(make: impl Fn() -> Command + Send + 'static) -> PgbenchLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut t = PgbenchTotals::default();
                while !stop.load(Ordering::Relaxed) {
                    let out = make()
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .output();
                    let out = match out {
                        Ok(o) => o,
                        Err(e) => {
                            t.errors.push(format!("cannot run pgbench: {e}"));
                            break;
                        }
                    };
                    t.runs += 1;
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    t.transactions += field(&stdout, "number of transactions actually processed:");
                    t.failed += field(&stdout, "number of failed transactions:");
                    if !out.status.success() {
                        t.errors
                            .push(format!("pgbench run {} exited {}", t.runs, out.status));
                    }
                    for l in stderr.lines() {
                        if l.contains("aborted")
                            || l.contains("error")
                            || l.contains("ERROR")
                            || l.contains("FATAL")
                        {
                            t.errors.push(l.to_string());
                        }
                    }
                }
                t
            })
        };
        PgbenchLoop { stop, handle }
    }

    /// Lets the current run finish, stops, and returns the totals.
    pub fn stop(self) -> PgbenchTotals {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_else(|_| PgbenchTotals {
            errors: vec!["the pgbench thread panicked".into()],
            ..Default::default()
        })
    }
}

/// The number after `key` on its line of pgbench's summary (0 when absent).
fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pgbench_summary_fields() {
        let out = "transaction type: <builtin: select only>\nnumber of transactions actually processed: 12345\nnumber of failed transactions: 3 (0.024%)\n";
        assert_eq!(
            super::field(out, "number of transactions actually processed:"),
            12345
        );
        assert_eq!(super::field(out, "number of failed transactions:"), 3);
        assert_eq!(super::field("", "number of failed transactions:"), 0);
    }
}
