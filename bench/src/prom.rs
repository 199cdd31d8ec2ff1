//! pgshift's Prometheus metrics (`GET /metrics` on its `[http] listen` address), read from
//! outside as a scraper would.

use anyhow::{anyhow, bail, Context, Result};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The per-side counter of completed client units of work (transactions, or statements
/// outside one).
pub const TRANSACTIONS: &str = "pgshift_transactions_total";
/// Shifted read-only units that failed on the other side before answering and ran again on
/// the serving side.
pub const SHIFT_REPLAYS: &str = "pgshift_shift_replays_total";
/// Failed connections (or authentications) to a backend, per side.
pub const CONNECT_ERRORS: &str = "pgshift_backend_connect_errors_total";

/// One scrape: the text exposition format.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

/// `GET /metrics` from pgshift's HTTP server on `127.0.0.1:port` (HTTP/1.0: the whole body
/// up to the end of the connection).
pub async fn scrape(port: u16) -> Result<Metrics> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to pgshift's HTTP port {port}"))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, anyhow::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .map_err(|_| anyhow!("GET /metrics on port {port}: no answer within 10 s"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET /metrics on port {port}: no end of headers"))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        bail!("GET /metrics on port {port}: status {status:?}");
    }
    Ok(Metrics(body.to_string()))
}

impl Metrics {
    /// The value of the sample `name{labels}` (`labels` as in the exposition:
    /// `side="target"`, or empty); 0 when absent (a counter not incremented yet).
    pub fn value(&self, name: &str, labels: &str) -> f64 {
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{labels}}}")
        };
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k.trim() == key).then(|| v.trim().parse::<f64>().ok())?
            })
            .unwrap_or(0.0)
    }

    /// `pgshift_transactions_total` of `side` (`source` / `target`).
    pub fn transactions(&self, side: &str) -> f64 {
        self.value(TRANSACTIONS, &format!("side=\"{side}\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples() {
        let m = Metrics(
            "# HELP pgshift_transactions_total x\n# TYPE pgshift_transactions_total counter\n\
             pgshift_transactions_total{side=\"source\"} 1234\n\
             pgshift_transactions_total{side=\"target\"} 56\n\
             pgshift_shift_replays_total 3\n"
                .into(),
        );
        assert_eq!(m.transactions("source"), 1234.0);
        assert_eq!(m.transactions("target"), 56.0);
        assert_eq!(m.value(SHIFT_REPLAYS, ""), 3.0);
        assert_eq!(m.value(CONNECT_ERRORS, "side=\"target\""), 0.0);
    }
}
