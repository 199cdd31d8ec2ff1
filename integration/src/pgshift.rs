//! Driving the `pgshift` binary.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::binaries::client_bin;
use crate::server::{cmdline, pid_alive, terminate};

/// The `pgshift` binary: `$PGSHIFT_BIN` when set; otherwise built once per process with
/// `cargo build -p proxy --bin pgshift` (with `--release` when this harness itself was built
/// without debug assertions, i.e. under `cargo test --release`) and found from cargo's
/// artifact messages (so `CARGO_TARGET_DIR` and friends are honoured).
///
/// Calling this from inside a running `cargo test` is fine: cargo holds its build-directory
/// lock only while it compiles, not while the test binaries run, so the nested build does not
/// wait on the outer one. A nested build of the same profile finds everything the outer
/// `cargo test --workspace` built and is a no-op apart from linking the binary if needed.
pub fn pgshift_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("PGSHIFT_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.exists() {
            bail!("PGSHIFT_BIN={} does not exist", bin.display());
        }
        return Ok(bin);
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_pgshift().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_pgshift() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let release = !cfg!(debug_assertions);
    let started = Instant::now();
    eprintln!(
        "[integration] building pgshift ({})",
        if release { "release" } else { "debug" }
    );
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "-p",
        "proxy",
        "--bin",
        "pgshift",
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    }
    // `cargo test` gives the test process the integration crate's own package variables
    // (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...). Build scripts that read them register them
    // with rerun-if-env-changed (ring's does), so a nested build that inherited them would
    // see other values than the outer build did and rebuild ring and everything above it
    // (rustls, tls, proxy: minutes), and the next outer build would rebuild it back.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || CARGO_TEST_VARS.contains(&&*name) {
            cmd.env_remove(&*name);
        }
    }
    cmd.current_dir(crate::workspace_root())
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("running {:?} build", cargo))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "cargo build -p proxy --bin pgshift{} failed ({}):\n{}",
            if release { " --release" } else { "" },
            out.status,
            crate::tail_str(&String::from_utf8_lossy(&out.stderr), 60)
        );
    }
    let mut exe = None;
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "pgshift" {
            if let Some(path) = msg["executable"].as_str() {
                exe = Some(PathBuf::from(path));
            }
        }
    }
    let exe = exe.context("cargo build reported no executable for pgshift")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let compiled = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("Compiling"))
        .count();
    for line in stderr.lines().filter(|l| l.contains("Blocking")) {
        eprintln!("[integration] cargo: {}", line.trim());
    }
    eprintln!(
        "[integration] pgshift ready in {:.1?} ({compiled} crates compiled): {}",
        started.elapsed(),
        exe.display()
    );
    Ok(exe)
}

/// What cargo sets for a test process besides `CARGO_PKG_*` and that no outer build sees
/// (cargo reference, "Environment variables Cargo sets for crates").
const CARGO_TEST_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "OUT_DIR",
];

/// A `Command` for the `pgbench` client ([`client_bin`]) with `args`; the caller sets
/// `PGPASSWORD` (or puts the password in a connection string).
pub fn pgbench(args: &[&str]) -> Command {
    let mut cmd = Command::new(client_bin("pgbench"));
    cmd.args(args);
    cmd
}

/// A running `pgshift serve --config FILE`, in its own directory under `<cache>/run` (which is
/// also its working directory, so a relative journal path such as the default
/// `./data/pgshift.db` lands there and survives [`restart`](Self::restart)). Its standard
/// output and error go to `pgshift.log` there. Dropping it kills the process and removes the
/// directory (unless `PGSHIFT_KEEP_DATA` is set).
#[derive(Debug)]
pub struct Pgshift {
    /// The host clients connect to (from `[proxy] listen`; 127.0.0.1 for a wildcard address).
    pub host: String,
    /// The listen port (from `[proxy] listen`, default 6432). The admin console is the same
    /// port with `dbname=pgshift`.
    pub port: u16,
    /// The configuration file.
    pub config_path: PathBuf,
    /// Its working directory.
    pub dir: PathBuf,
    /// The binary it runs.
    pub bin: PathBuf,
    /// Extra environment of the process (kept for restarts).
    pub env: Vec<(String, String)>,
    /// The subcommand it runs: `serve` (default) or `upgrade` (serve, and start or resume
    /// the upgrade plan at once). Used by every (re)start.
    pub command: &'static str,
    /// `[http] listen` as a host to connect to and a port; `None` when disabled or port 0.
    http: Option<(String, u16)>,
    /// `[http] token`, or the content of `[http] token_file` when it could be read.
    http_token: Option<String>,
    child: Option<Child>,
}

impl Pgshift {
    /// Starts [`pgshift_bin`] with `config_toml` and waits (up to 20 s) until its listen port
    /// accepts TCP connections; the error carries the tail of its log.
    pub fn start(config_toml: &str) -> Result<Pgshift> {
        Self::start_binary(&pgshift_bin()?, config_toml)
    }

    /// Like [`start`](Self::start), with extra environment variables (also on restarts, until
    /// [`env`](Self::env) is changed).
    pub fn start_with_env(config_toml: &str, env: &[(String, String)]) -> Result<Pgshift> {
        Self::start_inner(&pgshift_bin()?, config_toml, env)
    }

    /// Like [`start`](Self::start), with another binary that takes `serve --config FILE`.
    pub fn start_binary(bin: &Path, config_toml: &str) -> Result<Pgshift> {
        Self::start_inner(bin, config_toml, &[])
    }

    fn start_inner(bin: &Path, config_toml: &str, env: &[(String, String)]) -> Result<Pgshift> {
        crate::server::cleanup_stale_once();
        let (host, port) = listen_address(config_toml)?;
        let dir = crate::new_run_dir("pgshift").context("creating the pgshift directory")?;
        let config_path = dir.join("pgshift.toml");
        std::fs::write(&config_path, config_toml)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let (http, http_token) = http_settings(config_toml, &dir)?;
        let mut pgshift = Pgshift {
            host,
            port,
            config_path,
            dir,
            bin: bin.to_path_buf(),
            env: env.to_vec(),
            command: "serve",
            http,
            http_token,
            child: None,
        };
        pgshift.spawn()?;
        Ok(pgshift)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening pgshift.log")?;
        writeln!(
            log,
            "=== [integration] starting {} {} --config {}",
            self.bin.display(),
            self.command,
            self.config_path.display()
        )?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg(self.command)
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        for (k, v) in &self.env {
            cmd.envs([(k, v)]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        std::fs::write(self.dir.join("pgshift.pid"), format!("{}\n", child.id()))?;
        self.child = Some(child);
        self.wait_listening(Duration::from_secs(20))
    }

    fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}:{}", self.host, self.port))?
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "pgshift exited before listening ({status}); log tail:\n{}",
                        crate::tail_file(&self.log_path(), 40)
                    );
                }
            }
            if addrs
                .iter()
                .any(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!(
                    "pgshift did not accept connections on {}:{} within {timeout:?}; log tail:\n{}",
                    self.host,
                    self.port,
                    crate::tail_file(&self.log_path(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts pgshift again (after [`stop`](Self::stop), [`kill9`](Self::kill9) or a crash)
    /// with the same configuration in the same directory, running `command`.
    pub fn start_again(&mut self, command: &'static str) -> Result<()> {
        self.stop();
        self.command = command;
        self.spawn()
    }

    /// Stops pgshift (SIGTERM, then SIGKILL after 10 s) and starts it again with the same
    /// configuration in the same directory.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// Asks pgshift to shut down (SIGTERM) and waits up to 10 s, then kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(child.id() as i32, libc::SIGTERM, Duration::from_secs(10));
            let _ = child.wait();
        }
    }

    /// Kills pgshift with SIGKILL (a crash) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is running (it may have exited by itself).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Its log file (standard output and error of every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pgshift.log")
    }

    /// Everything in its log so far.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The HTTP server's host and port (`[http] listen`, default `127.0.0.1:9187`); `None`
    /// when it is disabled or on port 0.
    pub fn http_addr(&self) -> Option<(&str, u16)> {
        self.http.as_ref().map(|(h, p)| (h.as_str(), *p))
    }

    /// The bearer token of the HTTP API (`[http] token`, or the content of `token_file`).
    pub fn http_token(&self) -> Option<&str> {
        self.http_token.as_deref()
    }

    /// One request to the HTTP server with exactly `headers` (no token added).
    pub fn http_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<crate::http::HttpAnswer> {
        let (host, port) = self
            .http_addr()
            .context("pgshift's HTTP server is disabled ([http] listen)")?;
        crate::http::request(host, port, method, path, headers, body)
    }

    /// `GET path`, with the token when one is configured.
    pub fn http_get(&self, path: &str) -> Result<crate::http::HttpAnswer> {
        let auth = self.http_token().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        self.http_raw("GET", path, &headers, "")
    }

    /// `POST path` with an empty JSON object (`Content-Type: application/json`), with the
    /// token when one is configured.
    pub fn http_post(&self, path: &str) -> Result<crate::http::HttpAnswer> {
        let auth = self.http_token().map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend(auth.iter().map(|a| ("Authorization", a.as_str())));
        self.http_raw("POST", path, &headers, "{}")
    }

    /// A key=value connection string to pgshift for `user` / `password` and `dbname`
    /// (`pgshift` for the admin console).
    pub fn conninfo(&self, user: &str, password: &str, dbname: &str) -> String {
        format!(
            "host={} port={} dbname={dbname} user={user} password={password}",
            self.host, self.port
        )
    }
}

impl Drop for Pgshift {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            // A failing test: what pgshift warned about is the first thing to read (CI keeps
            // nothing else).
            let log = std::fs::read(self.log_path()).unwrap_or_default();
            let log = String::from_utf8_lossy(&log);
            let notable: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            let from = notable.len().saturating_sub(40);
            eprintln!(
                "[integration] the test failed; pgshift's last warnings and errors ({} in all):\n{}",
                notable.len(),
                notable[from..].join("\n")
            );
        }
        if crate::keep_data() {
            eprintln!(
                "[integration] PGSHIFT_KEEP_DATA: kept pgshift directory {}",
                self.dir.display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `[proxy] listen` of a configuration (default `127.0.0.1:6432`) as a host to connect to and
/// a port.
fn listen_address(config_toml: &str) -> Result<(String, u16)> {
    let table: toml::Table = substitute_env(config_toml)
        .parse()
        .context("parsing the pgshift configuration")?;
    let listen = table
        .get("proxy")
        .and_then(|p| p.get("listen"))
        .and_then(|l| l.as_str())
        .unwrap_or("127.0.0.1:6432");
    let (host, port) = listen
        .rsplit_once(':')
        .with_context(|| format!("[proxy] listen = {listen:?} has no port"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("[proxy] listen = {listen:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = match host {
        "" | "0.0.0.0" | "*" => "127.0.0.1",
        "::" => "::1",
        h => h,
    };
    Ok((host.to_string(), port))
}

/// `[http] listen` (default `127.0.0.1:9187`) as a host to connect to and a port (`None` when
/// `""` or port 0), and the token: `[http] token`, or `token_file` read (relative to `dir`,
/// pgshift's working directory) when it can be.
#[allow(clippy::type_complexity)]
fn http_settings(config_toml: &str, dir: &Path) -> Result<(Option<(String, u16)>, Option<String>)> {
    let table: toml::Table = substitute_env(config_toml)
        .parse()
        .context("parsing the pgshift configuration")?;
    let http = table.get("http");
    let get = |k: &str| http.and_then(|h| h.get(k)).and_then(|v| v.as_str());
    let listen = get("listen").unwrap_or("127.0.0.1:9187");
    let addr = match listen {
        "" => None,
        l => match listen_address(&format!("[proxy]\nlisten = {l:?}\n"))? {
            (_, 0) => None,
            a => Some(a),
        },
    };
    let token = match (get("token"), get("token_file")) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(f)) => std::fs::read_to_string(dir.join(f))
            .ok()
            .map(|t| t.trim().to_string()),
        (None, None) => None,
    };
    Ok((addr, token))
}

/// Replaces `${VAR}` and `${VAR:-default}` with the variable's value (or the default), as
/// pgshift's configuration loader does.
fn substitute_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &rest[start + 2..start + end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => out.push_str(&v),
            _ => out.push_str(default.unwrap_or("")),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Kills a pgshift left running in `dir` by a process that died (stale-run cleanup).
pub(crate) fn stop_stale(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("pgshift.pid")) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    if pid_alive(pid) && cmdline(pid).contains(&*dir.join("pgshift.toml").to_string_lossy()) {
        terminate(pid, libc::SIGKILL, Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::listen_address;

    #[test]
    fn listen_address_forms() {
        assert_eq!(listen_address("").unwrap(), ("127.0.0.1".into(), 6432));
        assert_eq!(
            listen_address("[proxy]\nlisten = \"0.0.0.0:7000\"\n").unwrap(),
            ("127.0.0.1".into(), 7000)
        );
        assert_eq!(
            listen_address("[proxy]\nlisten = \"[::1]:7001\"\n").unwrap(),
            ("::1".into(), 7001)
        );
        assert!(listen_address("[proxy]\nlisten = \"nope\"\n").is_err());
        assert_eq!(
            listen_address("[proxy]\nlisten = \"${PGSHIFT_TEST_UNSET_VAR:-127.0.0.1:7002}\"\n")
                .unwrap(),
            ("127.0.0.1".into(), 7002)
        );
    }
}
