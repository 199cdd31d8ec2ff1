//! Throw-away PostgreSQL servers on loopback.

use std::collections::HashSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::binaries::{binaries, client_bin, PgBinaries};
use crate::runas::{run_as, RunAs};

/// A TCP port on 127.0.0.1 that is free right now: bound with port 0, then released. Never
/// hands out the same port twice in one process (servers started earlier may be stopped, and
/// a restart wants its port back).
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding 127.0.0.1:0");
        if given.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// How to set a server up. `ServerOptions::default()` gives the harness's standard server
/// (see [`PgServer::start_with`]).
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Extra `postgresql.conf` settings, applied after the harness's own (so they override
    /// them), e.g. `("max_connections", "300")`. Values are quoted by the harness.
    pub settings: Vec<(String, String)>,
    /// Extra `pg_hba.conf` lines, placed before the harness's own (so they win).
    pub hba: Vec<String>,
    /// Extra `initdb` arguments.
    pub initdb_args: Vec<String>,
    /// The port to listen on; a [`free_port`] when `None`.
    pub port: Option<u16>,
    /// How long to wait for the server to accept connections. Default 60 s.
    pub start_timeout: Duration,
    /// TLS: this certificate and key are copied into the data directory (`server.crt`,
    /// `server.key`, mode 0600, owned by the server's user) and `ssl = on` is set. Plain
    /// connections stay allowed unless `hba` says otherwise (`hostnossl ... reject`).
    pub ssl: Option<crate::certs::CertFiles>,
    /// The binaries to run instead of the harness's own of the major (e.g. a build with the
    /// pgactive extension installed: [`crate::binaries::pgactive_binaries`]).
    pub binaries: Option<PgBinaries>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            settings: Vec::new(),
            hba: Vec::new(),
            initdb_args: Vec::new(),
            port: None,
            start_timeout: Duration::from_secs(60),
            ssl: None,
            binaries: None,
        }
    }
}

impl ServerOptions {
    /// Adds one `postgresql.conf` setting (builder style).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// One running PostgreSQL server on 127.0.0.1, with its own data directory, port and socket
/// directory. Dropping it stops the server (`pg_ctl stop -m immediate`) and removes its
/// directory unless `PGSHIFT_KEEP_DATA` is set.
#[derive(Debug)]
pub struct PgServer {
    /// The server's major version.
    pub major: u32,
    /// Always `127.0.0.1`.
    pub host: String,
    /// The TCP port it listens on.
    pub port: u16,
    /// Its data directory (`<cache>/run/<pid>-<n>-pg<major>/data`).
    pub datadir: PathBuf,
    /// The bootstrap superuser: `postgres`.
    pub superuser: String,
    /// The superuser's password (SCRAM-SHA-256 over TCP): `postgres`.
    pub password: String,
    /// The binaries it runs on.
    pub binaries: PgBinaries,
    /// Its directory: data directory, log file and (mostly) the unix socket live here.
    pub dir: PathBuf,
    /// The directory of its unix socket.
    pub socket_dir: PathBuf,
    run_as: Option<RunAs>,
    running: bool,
    start_timeout: Duration,
}

impl PgServer {
    /// Starts a server of `major` with the default [`ServerOptions`].
    pub fn start(major: u32) -> Result<PgServer> {
        Self::start_with(major, ServerOptions::default())
    }

    /// Starts a server of `major`.
    ///
    /// `initdb -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C`
    /// (password `postgres`), then settings: listen on 127.0.0.1 only, its own
    /// `unix_socket_directories`, `wal_level=logical` and room for replication (20 slots,
    /// senders, workers; 10 logical replication workers), `max_connections=200`, durability
    /// off (`fsync`, `synchronous_commit`, `full_page_writes`), `shared_buffers=128MB`,
    /// `password_encryption=scram-sha-256`; `pg_hba.conf` allows `host all` and
    /// `host replication` from 127.0.0.1/32 with scram-sha-256 (and trust on the unix socket).
    /// Returns once the server accepts TCP connections; on failure the error carries the tail
    /// of the server log. As root, the server runs as the system user `pgshift-pg`.
    pub fn start_with(major: u32, opts: ServerOptions) -> Result<PgServer> {
        let binaries = match &opts.binaries {
            Some(b) if b.major == major => b.clone(),
            Some(b) => bail!(
                "ServerOptions::binaries are PostgreSQL {} ({}), the server asked for is {major}",
                b.version,
                b.bindir.display()
            ),
            None => binaries(major)?,
        };
        let run_as = run_as()?;
        cleanup_stale_once();

        let dir =
            crate::new_run_dir(&format!("pg{major}")).context("creating the server directory")?;
        let mut server = PgServer {
            major,
            host: "127.0.0.1".into(),
            port: 0,
            datadir: dir.join("data"),
            superuser: "postgres".into(),
            password: "postgres".into(),
            binaries,
            socket_dir: dir.clone(),
            dir,
            run_as,
            // Until initdb has run there is nothing to stop, but Drop must remove the directory.
            running: false,
            start_timeout: opts.start_timeout,
        };
        server.init(&opts)?;

        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = opts.port.unwrap_or_else(free_port);
            server.write_settings(&opts)?;
            match server.start_server() {
                Ok(()) => return Ok(server),
                // Someone took the port between free_port() and the server's bind: try another.
                Err(e)
                    if opts.port.is_none()
                        && attempt < 4
                        && format!("{e:#}").contains("Address already in use") =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A server that pgshift itself will create (the local provider of `[target.provision]`):
    /// its directory (handed to the server user when root) and a free port are reserved,
    /// nothing is initialised. `datadir` (`<dir>/data`, not yet existing) is what the
    /// configuration's `data_dir` should name, [`run_as_user`](Self::run_as_user) its
    /// `run_as`. Superuser `postgres`, password `postgres`, as for harness servers. Dropping
    /// it stops whatever server runs in `datadir` by then and removes the directory.
    pub fn reserve(major: u32) -> Result<PgServer> {
        Self::reserve_with(binaries(major)?)
    }

    /// [`reserve`](Self::reserve) for the given binaries.
    pub fn reserve_with(binaries: PgBinaries) -> Result<PgServer> {
        let major = binaries.major;
        let run_as = run_as()?;
        cleanup_stale_once();
        let dir =
            crate::new_run_dir(&format!("pg{major}")).context("creating the server directory")?;
        if let Some(user) = run_as {
            user.chown(&dir)?;
        }
        Ok(PgServer {
            major,
            host: "127.0.0.1".into(),
            port: free_port(),
            datadir: dir.join("data"),
            superuser: "postgres".into(),
            password: "postgres".into(),
            binaries,
            socket_dir: dir.join("data"),
            dir,
            run_as,
            running: false,
            start_timeout: ServerOptions::default().start_timeout,
        })
    }

    /// The operating-system user server programs run as (`Some` when this process is root).
    pub fn run_as_user(&self) -> Option<&'static str> {
        self.run_as.map(|_| crate::PG_OS_USER)
    }

    fn init(&mut self, opts: &ServerOptions) -> Result<()> {
        if let Some(user) = self.run_as {
            user.chown(&self.dir)?;
        }
        let sock_path_len = self.dir.as_os_str().len() + "/.s.PGSQL.65535.lock".len();
        if sock_path_len > 100 {
            // A unix socket path must stay under 108 bytes: use a short directory instead.
            let short = std::env::temp_dir().join(format!(
                "pgshift-sock-{}",
                self.dir.file_name().unwrap_or_default().to_string_lossy()
            ));
            std::fs::create_dir_all(&short)
                .with_context(|| format!("creating {}", short.display()))?;
            if let Some(user) = self.run_as {
                user.chown(&short)?;
            }
            self.socket_dir = short;
        }

        let pwfile = self.dir.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", self.password))
            .context("writing the password file")?;
        if let Some(user) = self.run_as {
            user.chown(&pwfile)?;
        }
        let mut initdb = self.pg_command("initdb");
        initdb
            .arg("-D")
            .arg(&self.datadir)
            .args([
                "-U",
                &self.superuser,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(&opts.initdb_args);
        let out = initdb.output().context("running initdb")?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            bail!(
                "initdb (PostgreSQL {}) failed ({}):\n{}{}",
                self.binaries.version,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let mut hba = String::from("# written by the pgshift integration harness\n");
        for line in &opts.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(
            "local all all trust\n\
             local replication all trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host replication all 127.0.0.1/32 scram-sha-256\n",
        );
        // Written by us into files the server user owns: ownership stays as it is.
        std::fs::write(self.datadir.join("pg_hba.conf"), hba).context("writing pg_hba.conf")?;
        if let Some(ssl) = &opts.ssl {
            for (from, to) in [(&ssl.cert, "server.crt"), (&ssl.key, "server.key")] {
                let to = self.datadir.join(to);
                let data =
                    std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
                crate::certs::write_private(&to, &data)?;
                if let Some(user) = self.run_as {
                    user.chown(&to)?;
                }
            }
        }
        let conf = self.datadir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).context("reading postgresql.conf")?;
        text.push_str("\n# pgshift integration harness\ninclude 'pgshift.conf'\n");
        std::fs::write(&conf, text).context("writing postgresql.conf")?;
        Ok(())
    }

    /// (Re)writes `pgshift.conf`, included at the end of `postgresql.conf`.
    fn write_settings(&self, opts: &ServerOptions) -> Result<()> {
        let socket_dir = self.socket_dir.display().to_string();
        let port = self.port.to_string();
        let mut settings: Vec<(&str, &str)> = vec![
            ("listen_addresses", "127.0.0.1"),
            ("port", &port),
            ("unix_socket_directories", &socket_dir),
            ("wal_level", "logical"),
            ("max_replication_slots", "20"),
            ("max_wal_senders", "20"),
            ("max_worker_processes", "20"),
            ("max_logical_replication_workers", "10"),
            ("max_connections", "200"),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("shared_buffers", "128MB"),
            ("password_encryption", "scram-sha-256"),
            ("logging_collector", "off"),
            ("log_line_prefix", "%m [%p] %q%u@%d "),
            ("log_min_messages", "warning"),
            ("dynamic_shared_memory_type", "posix"),
        ];
        if opts.ssl.is_some() {
            settings.push(("ssl", "on"));
        }
        for (k, v) in &opts.settings {
            settings.push((k, v));
        }
        let mut text =
            String::from("# written by the pgshift integration harness; later lines win\n");
        for (k, v) in settings {
            text.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        let path = self.datadir.join("pgshift.conf");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// `pg_ctl start -w`, then waits for the TCP port.
    fn start_server(&mut self) -> Result<()> {
        let started = Instant::now();
        let out_path = self.dir.join("pg_ctl.out");
        let out = File::create(&out_path).context("creating pg_ctl.out")?;
        let timeout = self.start_timeout.as_secs().max(1).to_string();
        let mut pg_ctl = self.pg_command("pg_ctl");
        // pg_ctl's output goes to a file, never a pipe: the postmaster it forks must not hold
        // a pipe that we wait on.
        pg_ctl
            .arg("-D")
            .arg(&self.datadir)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", &timeout, "start"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let status = pg_ctl.status().context("running pg_ctl start")?;
        // The postmaster exists from here on, even if pg_ctl gave up waiting for it.
        self.running = true;
        if !status.success() {
            let pg_ctl_out = std::fs::read_to_string(&out_path).unwrap_or_default();
            let log = crate::tail_file(&self.log_path(), 30);
            self.kill();
            bail!(
                "PostgreSQL {} did not start on port {} ({status}):\n{}\n--- {} (tail) ---\n{}",
                self.binaries.version,
                self.port,
                pg_ctl_out.trim(),
                self.log_path().display(),
                log
            );
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = started + self.start_timeout;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
            if Instant::now() > deadline {
                let log = crate::tail_file(&self.log_path(), 30);
                self.kill();
                bail!(
                    "PostgreSQL {} started but does not accept TCP connections on {addr}:\n{log}",
                    self.binaries.version
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// A command for a server program, run as the server user when we are root, with the
    /// libpq environment cleared.
    fn pg_command(&self, prog: &str) -> Command {
        let mut cmd = Command::new(self.binaries.bin(prog));
        cmd.current_dir(&self.dir);
        for var in [
            "PGDATA",
            "PGHOST",
            "PGHOSTADDR",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGOPTIONS",
            "PGSERVICE",
        ] {
            cmd.env_remove(var);
        }
        if let Some(user) = self.run_as {
            user.apply(&mut cmd);
            cmd.env("HOME", &self.dir);
        }
        cmd
    }

    /// A libpq key=value connection string for `dbname`, with host, port, user and password.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} dbname={} user={} password={}",
            self.host,
            self.port,
            conninfo_quote(dbname),
            conninfo_quote(&self.superuser),
            conninfo_quote(&self.password)
        )
    }

    /// A `postgres://postgres:postgres@127.0.0.1:PORT/dbname` URL.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{}",
            self.superuser, self.password, self.host, self.port, dbname
        )
    }

    /// Connects with tokio-postgres (no TLS) and spawns the connection task on the current
    /// tokio runtime.
    pub async fn connect(&self, dbname: &str) -> Result<tokio_postgres::Client> {
        let (client, connection) =
            tokio_postgres::connect(&self.conninfo(dbname), tokio_postgres::NoTls)
                .await
                .with_context(|| {
                    format!(
                        "connecting to PostgreSQL {} on port {} db {dbname}",
                        self.major, self.port
                    )
                })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs `sql` with `psql -X -A -t -q -v ON_ERROR_STOP=1 -c` and returns its standard
    /// output, trimmed (rows one a line, columns separated by `|`). Several statements in
    /// one string run as one implicit transaction. The error carries psql's standard error.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String> {
        let out = Command::new(client_bin("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.conninfo(dbname))
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql on PostgreSQL {} port {} db {dbname} failed ({}): {}\nSQL: {sql}",
                self.major,
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `CREATE DATABASE "name"`.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        )?;
        Ok(())
    }

    /// `pgbench -i -q -s scale` on `dbname`.
    pub fn pgbench_init(&self, dbname: &str, scale: u32) -> Result<()> {
        let out = crate::pgbench(&[
            "-i",
            "-q",
            "-s",
            &scale.to_string(),
            "-h",
            &self.host,
            "-p",
            &self.port.to_string(),
            "-U",
            &self.superuser,
            dbname,
        ])
        .env("PGPASSWORD", &self.password)
        .stdin(Stdio::null())
        .output()
        .context("running pgbench -i")?;
        if !out.status.success() {
            bail!(
                "pgbench -i -s {scale} on PostgreSQL {} port {} failed ({}): {}",
                self.major,
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Stops the server (`pg_ctl stop -m fast`), waiting for it to exit. The data stays until drop.
    pub fn stop(&mut self) -> Result<()> {
        if !self.running && !self.datadir.join("postmaster.pid").exists() {
            return Ok(());
        }
        self.pg_ctl_stop("fast")?;
        self.running = false;
        Ok(())
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): a crash, as far as the server
    /// is concerned. Never fails; the data stays until drop.
    pub fn kill(&mut self) {
        // A reserved server (see `reserve`) may have been started by someone else.
        if !self.running && !self.datadir.join("postmaster.pid").exists() {
            return;
        }
        if self.pg_ctl_stop("immediate").is_err() {
            // pg_ctl could not do it (e.g. the postmaster is wedged): signal it ourselves.
            stop_postmaster(&self.datadir);
        }
        self.running = false;
    }

    /// Stops the server (fast) if running, and starts it again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_server()
    }

    /// Whether the server is (as far as the harness knows) running.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The server's log file (in the data directory's parent).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let timeout = self.start_timeout.as_secs().max(1).to_string();
        let mut pg_ctl = self.pg_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.datadir)
            .args(["-m", mode, "-w", "-t", &timeout, "stop"])
            .stdin(Stdio::null());
        let out = pg_ctl.output().context("running pg_ctl stop")?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop -m {mode} (PostgreSQL {} port {}) failed ({}): {}{}",
                self.major,
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
        if crate::keep_data() {
            eprintln!(
                "[integration] PGSHIFT_KEEP_DATA: kept PostgreSQL {} data in {}",
                self.major,
                self.dir.display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.socket_dir != self.dir {
            let _ = std::fs::remove_dir_all(&self.socket_dir);
        }
    }
}

fn conninfo_quote(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\', '=']) {
        return value.to_string();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Is process `pid` alive (and not a zombie waiting to be reaped)?
pub(crate) fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// Whether `/proc/<pid>/stat` says the process is a zombie (state `Z`) or dead (`X`).
fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')' (comm may hold anything).
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

/// The command line of process `pid`, arguments joined by spaces.
pub(crate) fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Signals `pid` with SIGQUIT-like `sig` and waits up to `grace` for it to go, then SIGKILLs it.
pub(crate) fn terminate(pid: i32, sig: i32, grace: Duration) {
    // SAFETY: plain kill(2) calls on a pid we checked.
    unsafe { libc::kill(pid, sig) };
    let deadline = Instant::now() + grace;
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if pid_alive(pid) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Stops the postmaster of `datadir` by signal (immediate shutdown), if its `postmaster.pid`
/// names a live postgres process of that data directory.
fn stop_postmaster(datadir: &Path) {
    let Ok(text) = std::fs::read_to_string(datadir.join("postmaster.pid")) else {
        return;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return;
    };
    if pid_alive(pid) && cmdline(pid).contains(&*datadir.to_string_lossy()) {
        terminate(pid, libc::SIGQUIT, Duration::from_secs(10));
    }
}

/// Once per process: stops the servers and pgshift instances, and removes the directories,
/// that earlier processes left in `<cache>/run` when they died without dropping them (their
/// directory names start with the pid of a process that is gone).
pub(crate) fn cleanup_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let run = crate::cache_dir().join("run");
        let Ok(entries) = std::fs::read_dir(&run) else {
            return;
        };
        let me = std::process::id() as i32;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(owner) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if owner == me || pid_alive(owner) {
                continue;
            }
            let dir = entry.path();
            if crate::keep_data() {
                // Kept on purpose; stop what runs there but leave the files.
                stop_postmaster(&dir.join("data"));
                crate::pgshift::stop_stale(&dir);
                continue;
            }
            stop_postmaster(&dir.join("data"));
            crate::pgshift::stop_stale(&dir);
            if std::fs::remove_dir_all(&dir).is_ok() {
                eprintln!("[integration] removed stale {}", dir.display());
            }
        }
    });
}
