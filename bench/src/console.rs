//! pgshift's admin console (database `pgshift`) over one tokio-postgres connection that keeps
//! the console's NOTICE replies (`INITIATE CUTOVER` tells its pause there).

use anyhow::{anyhow, bail, Context, Result};
use integration::stack::{db_error, rows, ADMIN_PASSWORD, ADMIN_USER};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::clock::{self, Span};

/// One row of an admin command's result, column → value.
pub type Row = HashMap<String, Option<String>>;

/// A connection to the admin console.
pub struct Console {
    client: tokio_postgres::Client,
    notices: mpsc::UnboundedReceiver<String>,
}

/// What one admin command answered.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Result rows (none for commands such as `INITIATE CUTOVER`).
    pub rows: Vec<Row>,
    /// NOTICE messages, in order.
    pub notices: Vec<String>,
    /// From just before sending the command to just after its reply.
    pub span: Span,
}

impl Reply {
    /// The notices as one line.
    pub fn message(&self) -> String {
        self.notices.join(" | ")
    }
}

/// The `psql` command line that opens the admin console of `p`.
pub fn psql_command(p: &integration::Pgshift) -> String {
    format!(
        "PGPASSWORD={ADMIN_PASSWORD} psql -h {} -p {} -U {ADMIN_USER} pgshift",
        p.host, p.port
    )
}

impl Console {
    /// Connect to the admin console of `p` as the stack's admin user.
    pub async fn connect(p: &integration::Pgshift) -> Result<Console> {
        let conninfo = p.conninfo(ADMIN_USER, ADMIN_PASSWORD, "pgshift");
        let (client, mut conn) = tokio_postgres::connect(&conninfo, NoTls)
            .await
            .map_err(|e| anyhow!("connecting to the admin console: {}", db_error(&e)))?;
        let (tx, notices) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Drive the connection ourselves so that notices are kept, not dropped.
            while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match m {
                    Ok(AsyncMessage::Notice(n)) => {
                        let _ = tx.send(n.message().to_string());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        Ok(Console { client, notices })
    }

    /// Run one admin command. A console error becomes an error with its message (and any
    /// notices sent before it).
    pub async fn run(&mut self, command: &str) -> Result<Reply> {
        while self.notices.try_recv().is_ok() {}
        let start_us = clock::now_us();
        let result = self.client.simple_query(command).await;
        let end_us = clock::now_us();
        // Notices precede the command's completion on the wire, so they are queued by now;
        // give the connection task a moment anyway.
        tokio::task::yield_now().await;
        let mut notices = Vec::new();
        while let Ok(n) = self.notices.try_recv() {
            notices.push(n);
        }
        match result {
            Ok(msgs) => Ok(Reply {
                rows: rows(msgs),
                notices,
                span: Span { start_us, end_us },
            }),
            Err(e) => {
                let mut m = format!("{command}: {}", db_error(&e));
                if !notices.is_empty() {
                    m.push_str(&format!(" (notices: {})", notices.join(" | ")));
                }
                Err(anyhow!(m))
            }
        }
    }

    /// `SHOW UPGRADE STATUS`.
    pub async fn status(&mut self) -> Result<Status> {
        let r = self.run("SHOW UPGRADE STATUS").await?;
        let row = r
            .rows
            .into_iter()
            .next()
            .context("SHOW UPGRADE STATUS returned no row")?;
        Ok(Status::from_row(&row))
    }

    /// Poll the status (every 200 ms) until `phase` is reached; fails on state `error` or
    /// after `timeout`.
    pub async fn wait_phase(&mut self, phase: &str, timeout: Duration) -> Result<Status> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status().await?;
            if s.phase == phase {
                return Ok(s);
            }
            if s.state == "error" {
                bail!(
                    "the upgrade failed in phase {}: {}",
                    s.phase,
                    s.last_error.as_deref().unwrap_or("(no message)")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "phase {phase} not reached within {timeout:?}; status: {}",
                    s.line()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The side (`source` / `target`) that `SHOW SERVERS` names as serving.
    pub async fn serving_side(&mut self) -> Result<String> {
        let r = self.run("SHOW SERVERS").await?;
        r.rows
            .iter()
            .find(|row| row.get("role").cloned().flatten().as_deref() == Some("serving"))
            .and_then(|row| row.get("side").cloned().flatten())
            .context("SHOW SERVERS names no serving side")
    }
}

/// The figures of `SHOW UPGRADE STATUS` that an operator watches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub phase: String,
    pub state: String,
    pub lag_bytes: Option<String>,
    pub lag_seconds: Option<String>,
    pub epoch: String,
    pub last_error: Option<String>,
    /// Share of new read-only transactions routed to the target, in percent.
    pub target_weight: Option<u32>,
    /// Plan step under way (`shift_traffic:2`, `health_check:1`, `cutover`...).
    pub step: Option<String>,
    /// Latest health verdict.
    pub health: Option<String>,
}

impl Status {
    fn from_row(row: &Row) -> Status {
        let get = |k: &str| row.get(k).cloned().flatten();
        Status {
            phase: get("phase").unwrap_or_default(),
            state: get("state").unwrap_or_default(),
            lag_bytes: get("replication_lag_bytes"),
            lag_seconds: get("lag_seconds"),
            epoch: get("epoch").unwrap_or_default(),
            last_error: get("last_error"),
            target_weight: get("target_weight").and_then(|w| w.parse().ok()),
            step: get("step"),
            health: get("health"),
        }
    }

    /// One line: `phase=… state=… lag=… B / … s epoch=…` (and the last error, if any).
    pub fn line(&self) -> String {
        let mut s = format!(
            "phase={:<14} state={:<8} lag={:>9} B / {:>7} s  epoch={}",
            self.phase,
            self.state,
            self.lag_bytes.as_deref().unwrap_or("-"),
            self.lag_seconds.as_deref().unwrap_or("-"),
            self.epoch
        );
        if let Some(e) = &self.last_error {
            s.push_str(&format!("  last_error={e}"));
        }
        s
    }
}

/// The server pause that a switch's reply reports: `... pause 123.4 ms (...)` → 123.4.
pub fn server_pause_ms(message: &str) -> Option<f64> {
    let at = message.find("pause ")?;
    let rest = &message[at + "pause ".len()..];
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    if !rest[num.len()..].trim_start().starts_with("ms") {
        return None;
    }
    num.parse().ok()
}

/// The breakdown of the pause in a switch's reply: the parenthesised part after `pause N ms`.
pub fn server_pause_split(message: &str) -> Option<String> {
    let at = message.find("pause ")?;
    let rest = &message[at..];
    let open = rest.find('(')?;
    let close = rest[open..].find(')')?;
    Some(rest[open + 1..open + close].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLY: &str = "cutover done: traffic on the target at epoch 2; pause 212.5 ms (drain 0.3, catchup 150.2, sequences 20.0, reverse 40.0 ms); subscription pgshift_rev created";

    #[test]
    fn reads_the_pause_from_a_reply() {
        assert_eq!(server_pause_ms(REPLY), Some(212.5));
        assert_eq!(
            server_pause_split(REPLY).as_deref(),
            Some("drain 0.3, catchup 150.2, sequences 20.0, reverse 40.0 ms")
        );
        assert_eq!(server_pause_ms("no pause here"), None);
        assert_eq!(server_pause_ms("pause for a while"), None);
    }

    #[test]
    fn status_line() {
        let mut row = Row::new();
        row.insert("phase".into(), Some("replicating".into()));
        row.insert("state".into(), Some("running".into()));
        row.insert("replication_lag_bytes".into(), Some("0".into()));
        row.insert("epoch".into(), Some("1".into()));
        let s = Status::from_row(&row);
        assert!(s.line().contains("phase=replicating"));
        assert!(s.line().contains("epoch=1"));
        assert_eq!(s.lag_seconds, None);
    }
}
