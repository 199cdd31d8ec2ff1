//! Running `pgbench` against an endpoint and reading what it reports: the summary it prints
//! at the end and its per-transaction logs (`-l --log-prefix`).

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;

use crate::clock;

/// Where a client connects: host, port, login and database.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// A short name for tables and logs (`direct`, `pgshift`, `pgbouncer`).
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl Endpoint {
    /// The application database through a pgshift instance.
    pub fn pgshift(p: &integration::Pgshift) -> Endpoint {
        use integration::stack::{APP_PASSWORD, APP_USER, DB};
        Endpoint {
            name: "pgshift".into(),
            host: p.host.clone(),
            port: p.port,
            user: APP_USER.into(),
            password: APP_PASSWORD.into(),
            dbname: DB.into(),
        }
    }

    /// The application database on a server, directly.
    pub fn direct(s: &integration::PgServer) -> Endpoint {
        use integration::stack::{APP_PASSWORD, APP_USER, DB};
        Endpoint {
            name: "direct".into(),
            host: s.host.clone(),
            port: s.port,
            user: APP_USER.into(),
            password: APP_PASSWORD.into(),
            dbname: DB.into(),
        }
    }
}

/// One pgbench run: `pgbench -n -c C -j J -T S [-M prepared] [-S] [-P N] [-l --log-prefix P]`.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Number of clients (`-c`).
    pub clients: u32,
    /// Number of threads (`-j`).
    pub threads: u32,
    /// Duration in seconds (`-T`).
    pub seconds: u64,
    /// `-M prepared` (otherwise the default simple protocol).
    pub prepared: bool,
    /// `-S`: the built-in select-only script (otherwise TPC-B-like).
    pub select_only: bool,
    /// `-P N`: a progress line on standard error every N seconds.
    pub progress: Option<u32>,
    /// `-l --log-prefix`: per-transaction logs `PREFIX.PID[.THREAD]`.
    pub log_prefix: Option<PathBuf>,
}

impl Spec {
    /// TPC-B-like, `-M prepared`, no progress lines or per-transaction logs: the background
    /// load the upgrade scenarios run while replication synchronises.
    pub fn tpcb(clients: u32, threads: u32, seconds: u64) -> Spec {
        Spec {
            clients,
            threads,
            seconds,
            prepared: true,
            select_only: false,
            progress: None,
            log_prefix: None,
        }
    }

    /// pgbench's options for this run (without the connection's).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-n".into(),
            "-c".into(),
            self.clients.to_string(),
            "-j".into(),
            self.threads.to_string(),
            "-T".into(),
            self.seconds.to_string(),
        ];
        if self.prepared {
            a.extend(["-M".into(), "prepared".into()]);
        }
        if self.select_only {
            a.push("-S".into());
        }
        if let Some(p) = self.progress {
            a.extend(["-P".into(), p.to_string()]);
        }
        if let Some(prefix) = &self.log_prefix {
            a.push("-l".into());
            a.push(format!("--log-prefix={}", prefix.display()));
        }
        a
    }
}

/// A pgbench process under way.
pub struct Running {
    child: Child,
    /// Wall-clock start, microseconds since the epoch.
    pub started_us: i64,
    /// The endpoint it runs against.
    pub endpoint: Endpoint,
    /// Its specification.
    pub spec: Spec,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// What a finished pgbench run reported.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its standard output (the summary).
    pub stdout: String,
    /// Its standard error (progress lines, errors of aborted clients).
    pub stderr: String,
    /// The parsed summary.
    pub summary: Summary,
}

/// Start pgbench. With `echo`, each line it writes to standard error (progress with `-P`,
/// errors) is also copied to ours, prefixed with `[pgbench]`, as it comes.
pub fn spawn(endpoint: &Endpoint, spec: &Spec, echo: bool) -> Result<Running> {
    let mut cmd = integration::pgbench(&[]);
    cmd.args(spec.args())
        .args(["-h", &endpoint.host, "-p", &endpoint.port.to_string()])
        .args(["-U", &endpoint.user, &endpoint.dbname])
        .env("PGPASSWORD", &endpoint.password)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started_us = clock::now_us();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting pgbench against {}", endpoint.name))?;
    let stdout = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        })
    });
    let stderr = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[pgbench] {line}");
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        })
    });
    Ok(Running {
        child,
        started_us,
        endpoint: endpoint.clone(),
        spec: spec.clone(),
        stdout,
        stderr,
    })
}

impl Running {
    /// Whether it has exited already.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Seconds left until its `-T` runs out (negative once overdue).
    pub fn seconds_left(&self) -> f64 {
        let end = self.started_us + (self.spec.seconds as i64) * 1_000_000;
        (end - clock::now_us()) as f64 / 1e6
    }

    /// Wait for it to exit (blocking) and parse its summary. A run that printed no summary at
    /// all (it could not connect, say) is an error carrying its standard error.
    pub fn wait(mut self) -> Result<Outcome> {
        let status = self.child.wait().context("waiting for pgbench")?;
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let summary = Summary::parse(&stdout, &stderr).with_context(|| {
            format!(
                "pgbench against {} ({status}) printed no summary; stderr:\n{}",
                self.endpoint.name,
                tail(&stderr, 20)
            )
        })?;
        Ok(Outcome {
            stdout,
            stderr,
            summary,
        })
    }

    /// [`wait`](Self::wait) on a blocking thread.
    pub async fn finish(self) -> Result<Outcome> {
        tokio::task::spawn_blocking(move || self.wait())
            .await
            .map_err(|e| anyhow!("pgbench waiter: {e}"))?
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only a run that was never waited for is still here: do not leave it behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The figures of pgbench's closing summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// `number of transactions actually processed`.
    pub transactions: u64,
    /// `number of failed transactions` (0 when pgbench does not print the line).
    pub failed: u64,
    /// Clients that pgbench aborted (lines `client N aborted ...` on standard error).
    pub aborted_clients: u64,
    /// `latency average = X ms`.
    pub latency_avg_ms: Option<f64>,
    /// `tps = X (without initial connection time)` (or the only `tps` line of older pgbench).
    pub tps: f64,
}

impl Summary {
    /// Parse pgbench's standard output and standard error. `None` without a
    /// `number of transactions actually processed` line.
    pub fn parse(stdout: &str, stderr: &str) -> Option<Summary> {
        let mut s = Summary::default();
        let mut seen = false;
        for line in stdout.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
                // "1234" or "1234/5000" with -t.
                s.transactions = first_number(rest.split('/').next()?)? as u64;
                seen = true;
            } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
                s.failed = first_number(rest)? as u64;
            } else if let Some(rest) = line.strip_prefix("latency average =") {
                s.latency_avg_ms = first_number(rest);
            } else if let Some(rest) = line.strip_prefix("tps =") {
                // pgbench 14+ prints one tps line; older ones two (including / excluding
                // connections establishing): keep the one without connection time.
                if s.tps == 0.0 || !rest.contains("including") {
                    s.tps = first_number(rest)?;
                }
            }
        }
        s.aborted_clients = stderr
            .lines()
            .filter(|l| l.contains("client ") && l.contains(" aborted"))
            .count() as u64;
        seen.then_some(s)
    }

    /// Failed transactions plus aborted clients: what must be 0.
    pub fn failures(&self) -> u64 {
        self.failed + self.aborted_clients
    }
}

/// The first decimal number in `text`.
fn first_number(text: &str) -> Option<f64> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|w| !w.is_empty() && w.chars().any(|c| c.is_ascii_digit()))
        .and_then(|w| w.parse().ok())
}

/// One transaction from a per-transaction log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Txn {
    /// pgbench's client id.
    pub client: u32,
    /// Completion time, microseconds since the epoch.
    pub end_us: i64,
    /// Latency in microseconds; `None` for a transaction logged as `failed` or `skipped`.
    pub latency_us: Option<i64>,
}

impl Txn {
    /// Start time, microseconds since the epoch (the end for failed transactions).
    pub fn start_us(&self) -> i64 {
        self.end_us - self.latency_us.unwrap_or(0)
    }
}

/// Parse one per-transaction log line:
/// `client_id transaction_no time script_no time_epoch time_us [schedule_lag] [retries]`,
/// where `time` is the latency in microseconds, or `failed` / `skipped`.
pub fn parse_log_line(line: &str) -> Result<Txn> {
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    if f.len() < 6 {
        bail!("short pgbench log line: {line:?}");
    }
    let num = |i: usize| -> Result<i64> {
        f[i].parse::<i64>()
            .with_context(|| format!("field {} of pgbench log line {line:?}", i + 1))
    };
    let latency_us = match f[2] {
        "failed" | "skipped" => None,
        _ => Some(num(2)?),
    };
    Ok(Txn {
        client: num(0)? as u32,
        end_us: num(4)? * 1_000_000 + num(5)?,
        latency_us,
    })
}

/// The per-transaction log files written with `--log-prefix=prefix`: `prefix.PID` and
/// `prefix.PID.THREAD`.
pub fn log_files(prefix: &Path) -> Result<Vec<PathBuf>> {
    let dir = prefix.parent().context("a log prefix needs a directory")?;
    let stem = prefix
        .file_name()
        .context("a log prefix needs a file name")?
        .to_string_lossy()
        .to_string();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&stem).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        if rest.split('.').all(|p| p.parse::<u64>().is_ok()) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// All transactions of the per-transaction logs of `prefix` ([`log_files`]), sorted by
/// completion time.
pub fn read_logs(prefix: &Path) -> Result<Vec<Txn>> {
    let files = log_files(prefix)?;
    if files.is_empty() {
        bail!("no pgbench log files {}.*", prefix.display());
    }
    let mut txns = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            txns.push(parse_log_line(line)?);
        }
    }
    txns.sort_by_key(|t| t.end_us);
    Ok(txns)
}

/// Remove the per-transaction logs of `prefix` (a run at tens of thousands of TPS writes tens
/// of MB).
pub fn remove_logs(prefix: &Path) -> Result<()> {
    for path in log_files(prefix)? {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG15_OUT: &str = "\
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 10
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 12345
number of failed transactions: 3 (0.024%)
latency average = 12.961 ms
initial connection time = 20.512 ms
tps = 1234.500000 (without initial connection time)
";

    #[test]
    fn parses_the_summary() {
        let stderr = "pgbench: error: client 3 aborted in command 4 (SQL) of script 0; ...\n";
        let s = Summary::parse(PG15_OUT, stderr).unwrap();
        assert_eq!(s.transactions, 12345);
        assert_eq!(s.failed, 3);
        assert_eq!(s.aborted_clients, 1);
        assert_eq!(s.latency_avg_ms, Some(12.961));
        assert_eq!(s.tps, 1234.5);
        assert_eq!(s.failures(), 4);
        assert!(Summary::parse("", "connection refused").is_none());
    }

    #[test]
    fn parses_older_tps_lines() {
        let out = "number of transactions actually processed: 10/10\n\
                   tps = 99.0 (including connections establishing)\n\
                   tps = 101.5 (excluding connections establishing)\n";
        let s = Summary::parse(out, "").unwrap();
        assert_eq!(s.transactions, 10);
        assert_eq!(s.tps, 101.5);
    }

    #[test]
    fn parses_log_lines() {
        let t = parse_log_line("3 17 2514 0 1700000000 123456").unwrap();
        assert_eq!(t.client, 3);
        assert_eq!(t.end_us, 1_700_000_000_123_456);
        assert_eq!(t.latency_us, Some(2514));
        assert_eq!(t.start_us(), 1_700_000_000_120_942);
        let f = parse_log_line("0 5 failed 0 1700000000 5 0").unwrap();
        assert_eq!(f.latency_us, None);
        assert!(parse_log_line("1 2 3").is_err());
        assert!(parse_log_line("a b c d e f").is_err());
    }

    #[test]
    fn reads_log_files_of_a_prefix() {
        let dir = std::env::temp_dir().join(format!("bench-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("run.42"), "0 0 100 0 10 500\n0 1 100 0 10 900\n").unwrap();
        std::fs::write(dir.join("run.42.1"), "1 0 100 0 10 700\n").unwrap();
        std::fs::write(dir.join("run2.42"), "9 9 9 0 99 0\n").unwrap();
        std::fs::write(dir.join("run.42.tmp"), "garbage\n").unwrap();
        let t = read_logs(&dir.join("run")).unwrap();
        remove_logs(&dir.join("run")).unwrap();
        assert!(read_logs(&dir.join("run")).is_err());
        assert!(dir.join("run2.42").exists());
        std::fs::remove_dir_all(&dir).unwrap();
        let ends: Vec<i64> = t.iter().map(|t| t.end_us).collect();
        assert_eq!(ends, vec![10_000_500, 10_000_700, 10_000_900]);
    }
}
