//! The `local` provider: makes the target server on this machine with `initdb` / `pg_ctl`
//! (ProvisionTarget), removes it again on a rollback before the cutover, stops the source at
//! the end (DecommissionSource), and writes the final `pg_dump` of the source.
//!
//! # Provisioning (`[target.provision]`)
//!
//! 1. **Cluster.** `initdb -U <target.user> --pwfile=<file holding target.password>
//!    --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E <source db encoding>
//!    --lc-collate/--lc-ctype <source db's>` into `<data_dir>.pgshift-initdb`, then
//!    `pg_hba.conf` gains `host all all all scram-sha-256` (and `replication`) so the source
//!    can reach it for reverse replication, `postgresql.conf` includes `pgshift.conf`
//!    (`listen_addresses` = target host, `port`, `wal_level = logical`,
//!    `password_encryption = scram-sha-256`, `unix_socket_directories` = the data directory
//!    when the path is short enough, then `settings`), the marker file
//!    [`MARKER`] is written, and the directory is renamed to `data_dir`. An interrupted
//!    initdb leaves only the `.pgshift-initdb` directory, which the next attempt removes.
//!    A `data_dir` holding the marker is reused; any other non-empty `data_dir` is refused.
//! 2. **Server.** `pg_ctl start -w` unless `pg_ctl status` says it runs; log in
//!    `<data_dir>/pgshift-server.log`.
//! 3. **Roles and database.** Every role of the source (`pg_roles`, except `pg_*`) missing on
//!    the target is created with the same attributes (superuser, inherit, createrole,
//!    createdb, login, replication, bypassrls, connection limit, valid until) and, when the
//!    source's control user may read `pg_authid` (a superuser), the same password verifier
//!    (SCRAM or MD5: verifiers are portable between majors); role memberships follow.
//!    Roles that exist already are left as they are. Then `[target] dbname` is created if
//!    missing, from `template0`, with the source database's encoding, collation, ctype and
//!    owner.
//!
//! Every part looks before it acts, so a repeated step does no harm.
//!
//! # Users
//!
//! PostgreSQL refuses to run as root. When pgshift runs as root, `run_as` names the system
//! user that runs `initdb` and the server (for the source, the owner of its data directory
//! is used when `run_as` is not given); the directories pgshift creates are handed to it.
//! Not root: the server runs as pgshift's own user, and `run_as` may only name that user.

use super::roles::{source_shape, DbShape};
use crate::files;
use crate::logical::{tail, DriverError};
use config::{Config, ProvisionConfig, ServerConfig};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio_postgres::Client;

type Result<T, E = DriverError> = std::result::Result<T, E>;

/// File pgshift writes into a data directory it created: only such a directory is reused,
/// and only such a directory is ever deleted (on a rollback before the cutover).
pub const MARKER: &str = "pgshift.provisioned";

/// A system user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// The effective user id of this process (the owner of `/proc/self`).
pub fn euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// Looks `name` up with `getent passwd` (all of NSS), else in `/etc/passwd`.
pub fn lookup_user(name: &str) -> Option<OsUser> {
    let parse = |line: &str| -> Option<OsUser> {
        let f: Vec<&str> = line.trim_end().split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(OsUser {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
        })
    };
    if let Ok(out) = std::process::Command::new("getent")
        .args(["passwd", name])
        .stdin(Stdio::null())
        .output()
    {
        if let Some(u) = String::from_utf8_lossy(&out.stdout).lines().find_map(parse) {
            return Some(u);
        }
    }
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(parse)
}

fn user_by_uid(uid: u32) -> Option<OsUser> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse::<u32>().ok() == Some(uid)).then(|| OsUser {
            name: f[0].to_string(),
            uid,
            gid: f[3].parse().unwrap_or(uid),
            home: PathBuf::from(f[5]),
        })
    })
}

/// Runs `<dir>/postgres --version` and returns its major.
async fn bindir_major(dir: &Path) -> Result<u32, String> {
    crate::logical::tool_major(&dir.join("postgres")).await
}

/// The directory of `initdb`, `pg_ctl` and `postgres` of `major`: `bindir` when given (and of
/// that major), else the first of `PATH`, `/usr/lib/postgresql/<major>/bin`,
/// `/usr/pgsql-<major>/bin`, `/usr/local/pgsql/bin` whose `postgres --version` is of `major`.
pub async fn find_bindir(p: &ProvisionConfig) -> Result<PathBuf, String> {
    if let Some(dir) = &p.bindir {
        return match bindir_major(dir).await {
            Ok(m) if m == p.major() => Ok(dir.clone()),
            Ok(m) => Err(format!(
                "bindir {} holds PostgreSQL {m}, not {}",
                dir.display(),
                p.major()
            )),
            Err(e) => Err(format!("bindir {}: {e}", dir.display())),
        };
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    candidates.extend([
        PathBuf::from(format!("/usr/lib/postgresql/{}/bin", p.major())),
        PathBuf::from(format!("/usr/pgsql-{}/bin", p.major())),
        PathBuf::from("/usr/local/pgsql/bin"),
    ]);
    let mut seen = Vec::new();
    for dir in candidates {
        if !dir.join("initdb").exists() || !dir.join("pg_ctl").exists() {
            continue;
        }
        match bindir_major(&dir).await {
            Ok(m) if m == p.major() => return Ok(dir),
            Ok(m) => seen.push(format!("{} is {m}", dir.display())),
            Err(_) => {}
        }
    }
    Err(format!(
        "no PostgreSQL {} binaries found in PATH, /usr/lib/postgresql/{}/bin or /usr/pgsql-{}/bin{}; install them or set bindir",
        p.major(),
        p.major(),
        p.major(),
        if seen.is_empty() {
            String::new()
        } else {
            format!(" (found: {})", seen.join(", "))
        }
    ))
}

/// A server on this machine described by a `[*.provision]` section.
#[derive(Debug, Clone)]
pub struct Local {
    /// `source` or `target` (for messages and keys).
    pub side: &'static str,
    /// The section.
    pub spec: ProvisionConfig,
    /// The server's connection settings (`[source]` / `[target]`).
    pub server: ServerConfig,
}

impl Local {
    /// The `[target.provision]` of `cfg`, if any (and of this provider).
    pub fn target(cfg: &Config) -> Option<Local> {
        Self::of("target", &cfg.target)
    }

    /// The `[source.provision]` of `cfg`, if any.
    pub fn source(cfg: &Config) -> Option<Local> {
        Self::of("source", &cfg.source)
    }

    fn of(side: &'static str, server: &ServerConfig) -> Option<Local> {
        server
            .provision
            .clone()
            .filter(|p| p.provider == config::Provider::Local)
            .map(|spec| Local {
                side,
                spec,
                server: server.clone(),
            })
    }

    fn ctx(&self, what: &str) -> String {
        format!(
            "{} provision ({}): {what}",
            self.side,
            self.spec.data_dir().display()
        )
    }

    /// The data directory as an absolute path.
    pub fn data_dir(&self) -> PathBuf {
        super::dump::absolute(&self.spec.data_dir())
    }

    fn staging_dir(&self) -> PathBuf {
        let d = self.data_dir();
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        d.with_file_name(format!("{name}.pgshift-initdb"))
    }

    /// Whether `data_dir` holds pgshift's marker (pgshift made it).
    pub fn made_by_pgshift(&self) -> bool {
        self.data_dir().join(MARKER).exists()
    }

    /// The user the server runs as: `None` = this process's user.
    pub fn server_user(&self) -> Result<Option<OsUser>, String> {
        let me = euid();
        match &self.spec.run_as {
            Some(name) => {
                let u = lookup_user(name).ok_or_else(|| {
                    format!(
                        "run_as: system user `{name}` does not exist; create it or name another"
                    )
                })?;
                if u.uid == me {
                    Ok(None)
                } else if me != 0 {
                    Err(format!(
                        "run_as: pgshift runs as uid {me} and cannot start processes as `{name}` (uid {}); run pgshift as root or as `{name}`, or remove run_as",
                        u.uid
                    ))
                } else if u.uid == 0 {
                    Err(
                        "run_as: PostgreSQL refuses to run as root; name an unprivileged user"
                            .into(),
                    )
                } else {
                    Ok(Some(u))
                }
            }
            None if me != 0 => Ok(None),
            None => {
                // The source: whoever owns its data directory runs it.
                if self.side == "source" {
                    if let Ok(m) = std::fs::metadata(self.data_dir()) {
                        if m.uid() != 0 {
                            return Ok(Some(user_by_uid(m.uid()).unwrap_or(OsUser {
                                name: m.uid().to_string(),
                                uid: m.uid(),
                                gid: m.gid(),
                                home: self.data_dir(),
                            })));
                        }
                    }
                }
                Err(format!(
                    "pgshift runs as root and PostgreSQL refuses to run as root: set [{}.provision] run_as to the system user that should run the server (e.g. \"postgres\")",
                    self.side
                ))
            }
        }
    }

    fn command(&self, bindir: &Path, prog: &str, user: &Option<OsUser>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bindir.join(prog));
        let dir = self.data_dir();
        cmd.current_dir(dir.parent().unwrap_or(Path::new("/")));
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
        if let Some(u) = user {
            cmd.uid(u.uid).gid(u.gid);
            cmd.env("HOME", &u.home)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    fn chown(&self, path: &Path, user: &Option<OsUser>) -> Result<()> {
        if let Some(u) = user {
            std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).map_err(|e| {
                DriverError::new(self.ctx(&format!(
                    "cannot hand {} to {}: {e}",
                    path.display(),
                    u.name
                )))
            })?;
        }
        Ok(())
    }

    /// ValidateInput checks for a server to provision: binaries of the major, the user, the
    /// data directory (absent, empty, or pgshift's), the port. Returns (failures, notes).
    pub async fn check_target(&self, source_major: Option<u32>) -> (Vec<String>, Vec<String>) {
        let mut failures = Vec::new();
        let mut notes = Vec::new();
        let key = "[target.provision]";
        match find_bindir(&self.spec).await {
            Ok(b) => notes.push(format!(
                "{key}: PostgreSQL {} binaries in {}",
                self.spec.major(),
                b.display()
            )),
            Err(e) => failures.push(format!("{key}: {e}")),
        }
        if let Err(e) = self.server_user() {
            failures.push(format!("{key}: {e}"));
        }
        if let Some(s) = source_major {
            if self.spec.major() < s {
                failures.push(format!(
                    "{key}: major {} is older than the source's {s}; the target must run the same or a newer major",
                    self.spec.major()
                ));
            }
        }
        let dir = self.data_dir();
        let ours = self.made_by_pgshift();
        if ours {
            notes.push(format!(
                "{key}: {} was made by pgshift earlier; it is reused",
                dir.display()
            ));
        } else if dir.exists() {
            let empty = std::fs::read_dir(&dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty {
                failures.push(format!(
                    "{key}: data_dir {} exists and was not made by pgshift (no {MARKER} in it); pgshift never touches it: remove it or choose another data_dir",
                    dir.display()
                ));
            }
        }
        if !ours {
            // Nothing may listen on the port the new server will take.
            let addr = format!("{}:{}", self.server.host, self.server.port);
            let busy = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(addr.as_str()),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
            if busy {
                failures.push(format!(
                    "{key}: something already listens on {addr} ([target] host and port), where the new server must listen; stop it or change [target] port"
                ));
            }
        }
        (failures, notes)
    }

    /// ProvisionTarget: cluster, server, roles and database (module docs). `src` is a
    /// connection to the source database. Returns what was done.
    pub async fn provision(&self, src: &Client) -> Result<String> {
        let shape = source_shape(src).await?;
        let bindir = find_bindir(&self.spec)
            .await
            .map_err(|e| DriverError::new(self.ctx(&e)))?;
        let user = self
            .server_user()
            .map_err(|e| DriverError::new(self.ctx(&e)))?;
        let mut done = vec![self.ensure_cluster(&bindir, &user, &shape).await?];
        done.push(self.ensure_running(&bindir, &user).await?);
        done.push(self.ensure_roles_and_database(src, &shape).await?);
        Ok(done.join("; "))
    }

    async fn ensure_cluster(
        &self,
        bindir: &Path,
        user: &Option<OsUser>,
        shape: &DbShape,
    ) -> Result<String> {
        let dir = self.data_dir();
        if self.made_by_pgshift() {
            return Ok(format!(
                "data directory {} (made by pgshift) reused",
                dir.display()
            ));
        }
        if dir.exists() {
            let empty = std::fs::read_dir(&dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty {
                return Err(DriverError::new(self.ctx(&format!(
                    "{} exists and was not made by pgshift (no {MARKER}); remove it or choose another data_dir",
                    dir.display()
                ))));
            }
            std::fs::remove_dir(&dir).map_err(|e| {
                DriverError::new(
                    self.ctx(&format!("cannot remove the empty {}: {e}", dir.display())),
                )
            })?;
        }
        let parent = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        // Parents it creates: 0700, or 0711 when the server runs as another OS user, who
        // must pass through them to its data directory (and may not list them).
        let parent_mode = if user.is_some() {
            0o711
        } else {
            files::DIR_MODE
        };
        files::create_dir_all_mode(&parent, parent_mode).map_err(|e| {
            DriverError::new(self.ctx(&format!("cannot create {}: {e}", parent.display())))
        })?;
        let staging = self.staging_dir();
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| {
                DriverError::new(self.ctx(&format!(
                    "cannot remove the leftover {} of an interrupted initdb: {e}",
                    staging.display()
                )))
            })?;
        }
        let io =
            |what: &str, e: std::io::Error| DriverError::new(self.ctx(&format!("{what}: {e}")));
        files::create_dir(&staging)
            .map_err(|e| io(&format!("creating {}", staging.display()), e))?;
        self.chown(&staging, user)?;
        let pwfile = dir.with_file_name(format!(
            "{}.pgshift-pwfile",
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let password = self.server.password.clone().unwrap_or_default();
        // Created exclusively, 0600: a file left by an interrupted run is removed first, and
        // nothing that appeared meanwhile (a link, another user's file) is written through.
        match std::fs::remove_file(&pwfile) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing the leftover password file", e))
            }
            _ => {}
        }
        files::create_new(&pwfile)
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(format!("{password}\n").as_bytes())
            })
            .map_err(|e| io("writing the password file", e))?;
        self.chown(&pwfile, user)?;

        let mut initdb = self.command(bindir, "initdb", user);
        initdb
            .arg("-D")
            .arg(&staging)
            .args(["-U", &self.server.user])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--auth-host=scram-sha-256", "--auth-local=scram-sha-256"])
            .args(["-E", &shape.encoding])
            .arg(format!("--lc-collate={}", shape.collate))
            .arg(format!("--lc-ctype={}", shape.ctype))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = initdb.output().await;
        let _ = std::fs::remove_file(&pwfile);
        let out = out.map_err(|e| {
            io(
                &format!("cannot run {}", bindir.join("initdb").display()),
                e,
            )
        })?;
        if !out.status.success() {
            return Err(DriverError::new(self.ctx(&format!(
                "initdb failed ({}): {}",
                out.status,
                tail(
                    &format!(
                        "{}\n{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    8
                )
            ))));
        }

        // pg_hba.conf: initdb's lines cover loopback; the source (reverse replication) and
        // pgshift may come from elsewhere.
        let hba = staging.join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).map_err(|e| io("reading pg_hba.conf", e))?;
        text.push_str(
            "\n# pgshift: the source (reverse replication after cutover) and pgshift connect over TCP\n\
             host all all all scram-sha-256\n\
             host replication all all scram-sha-256\n",
        );
        files::write(&hba, text).map_err(|e| io("writing pg_hba.conf", e))?;
        let conf = staging.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf).map_err(|e| io("reading postgresql.conf", e))?;
        text.push_str(
            "\n# pgshift: its settings, then [target.provision] settings\ninclude 'pgshift.conf'\n",
        );
        files::write(&conf, text).map_err(|e| io("writing postgresql.conf", e))?;
        let sock = if dir.as_os_str().len() + "/.s.PGSQL.65535.lock".len() < 100 {
            dir.display().to_string()
        } else {
            String::new()
        };
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"));
        let mut settings = format!(
            "# written by pgshift (ProvisionTarget); later lines win\n\
             listen_addresses = {}\nport = {}\nwal_level = logical\n\
             password_encryption = 'scram-sha-256'\nunix_socket_directories = {}\n",
            q(&self.server.host),
            self.server.port,
            q(&sock)
        );
        for (k, v) in &self.spec.settings {
            settings.push_str(&format!("{k} = {}\n", v.to_conf()));
        }
        let pgshift_conf = staging.join("pgshift.conf");
        files::write(&pgshift_conf, settings).map_err(|e| io("writing pgshift.conf", e))?;
        self.chown(&pgshift_conf, user)?;
        let marker = staging.join(MARKER);
        files::write(
            &marker,
            format!(
                "made by pgshift (ProvisionTarget) at {}: PostgreSQL {} for {}:{}; deleted only by a rollback before the cutover\n",
                crate::journal::now_rfc3339(),
                self.spec.major(),
                self.server.host,
                self.server.port
            ),
        )
        .map_err(|e| io("writing the marker", e))?;
        self.chown(&marker, user)?;
        std::fs::rename(&staging, &dir).map_err(|e| {
            io(
                &format!("renaming {} to {}", staging.display(), dir.display()),
                e,
            )
        })?;
        Ok(format!(
            "initdb of PostgreSQL {} in {} ({}, {}/{})",
            self.spec.major(),
            dir.display(),
            shape.encoding,
            shape.collate,
            shape.ctype
        ))
    }

    /// `pg_ctl status`: Some(true) running, Some(false) stopped, None no data directory.
    async fn status(&self, bindir: &Path, user: &Option<OsUser>) -> Result<Option<bool>> {
        let mut cmd = self.command(bindir, "pg_ctl", user);
        cmd.arg("-D").arg(self.data_dir()).arg("status");
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let st = cmd
            .status()
            .await
            .map_err(|e| DriverError::new(self.ctx(&format!("cannot run pg_ctl status: {e}"))))?;
        Ok(match st.code() {
            Some(0) => Some(true),
            Some(3) => Some(false),
            _ => None,
        })
    }

    async fn ensure_running(&self, bindir: &Path, user: &Option<OsUser>) -> Result<String> {
        let dir = self.data_dir();
        if self.status(bindir, user).await? == Some(true) {
            return Ok(format!("server on port {} running", self.server.port));
        }
        let log = dir.join("pgshift-server.log");
        let out_path = dir.join("pgshift-pg_ctl.out");
        // Output to a file, never a pipe: the postmaster pg_ctl forks would hold it open.
        let out = files::create(&out_path).map_err(|e| {
            DriverError::new(self.ctx(&format!("creating {}: {e}", out_path.display())))
        })?;
        self.chown(&out_path, user)?;
        let err = out
            .try_clone()
            .map_err(|e| DriverError::new(self.ctx(&e.to_string())))?;
        let mut cmd = self.command(bindir, "pg_ctl", user);
        cmd.arg("-D")
            .arg(&dir)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "300", "start"])
            .stdout(out)
            .stderr(err)
            .kill_on_drop(false);
        let st = cmd
            .status()
            .await
            .map_err(|e| DriverError::new(self.ctx(&format!("cannot run pg_ctl start: {e}"))))?;
        if !st.success() {
            let said = std::fs::read_to_string(&out_path).unwrap_or_default();
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(DriverError::new(self.ctx(&format!(
                "pg_ctl start failed ({st}): {} | server log: {}",
                tail(&said, 4),
                tail(&logged, 8)
            ))));
        }
        // pg_ctl -w waited for the postmaster to be ready; wait for the TCP listener too.
        let addr = format!("{}:{}", self.server.host, self.server.port);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(addr.as_str()).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DriverError::temporary(self.ctx(&format!(
                    "the server started but does not accept TCP connections on {addr}: {}",
                    tail(&std::fs::read_to_string(&log).unwrap_or_default(), 8)
                ))));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(format!("server started on {addr} (log {})", log.display()))
    }

    async fn connect(&self, dbname: &str) -> Result<Client> {
        let s = &self.server;
        crate::connect::connect(
            s,
            dbname,
            Duration::from_secs(10),
            &self.ctx(&format!("cannot connect to {dbname} as {}", s.user)),
        )
        .await
    }

    async fn ensure_roles_and_database(&self, src: &Client, shape: &DbShape) -> Result<String> {
        let tgt = self.connect("postgres").await?;
        super::roles::copy_roles_and_database(src, &tgt, &self.server, shape, &|w| self.ctx(w))
            .await
    }

    /// Stops the server (`pg_ctl stop -m fast -w`) if it runs. Returns what was done.
    pub async fn stop(&self) -> Result<String> {
        let bindir = find_bindir(&self.spec)
            .await
            .map_err(|e| DriverError::new(self.ctx(&e)))?;
        let user = self
            .server_user()
            .map_err(|e| DriverError::new(self.ctx(&e)))?;
        match self.status(&bindir, &user).await? {
            None => {
                return Err(DriverError::new(self.ctx(&format!(
                    "pg_ctl status finds no data directory at {}",
                    self.data_dir().display()
                ))))
            }
            Some(false) => return Ok(format!("{} server was not running", self.side)),
            Some(true) => {}
        }
        let mut cmd = self.command(&bindir, "pg_ctl", &user);
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "120", "stop"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd
            .output()
            .await
            .map_err(|e| DriverError::new(self.ctx(&format!("cannot run pg_ctl stop: {e}"))))?;
        if !out.status.success() && self.status(&bindir, &user).await? == Some(true) {
            return Err(DriverError::temporary(self.ctx(&format!(
                "pg_ctl stop failed ({}): {}",
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 4)
            ))));
        }
        Ok(format!(
            "{} server stopped (pg_ctl stop -m fast)",
            self.side
        ))
    }

    /// ConfigureParams for a server pgshift made (marker): writes `settings` (name, value)
    /// to `pgshift-driver.conf` in the data directory (0600, owned by the server's user,
    /// included after `pgshift.conf`, so these win over `[*.provision] settings`), then
    /// restarts the server (`pg_ctl restart -m fast -w`) and waits for its TCP listener.
    /// Writing the same settings again is harmless. Returns what was done.
    pub async fn configure(&self, settings: &[(String, String)]) -> Result<String> {
        if !self.made_by_pgshift() {
            return Err(DriverError::new(self.ctx(&format!(
                "{} was not made by pgshift (no {MARKER}): set the settings yourself",
                self.data_dir().display()
            ))));
        }
        let bindir = find_bindir(&self.spec)
            .await
            .map_err(|e| DriverError::new(self.ctx(&e)))?;
        let user = self
            .server_user()
            .map_err(|e| DriverError::new(self.ctx(&e)))?;
        let dir = self.data_dir();
        let io =
            |what: &str, e: std::io::Error| DriverError::new(self.ctx(&format!("{what}: {e}")));
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"));
        let mut text = String::from(
            "# written by pgshift (ConfigureParams: the replication driver's needs)\n",
        );
        for (k, v) in settings {
            text.push_str(&format!("{k} = {}\n", q(v)));
        }
        let path = dir.join("pgshift-driver.conf");
        files::write(&path, text).map_err(|e| io("writing pgshift-driver.conf", e))?;
        self.chown(&path, &user)?;
        let conf = dir.join("postgresql.conf");
        let mut main =
            std::fs::read_to_string(&conf).map_err(|e| io("reading postgresql.conf", e))?;
        if !main.contains("include 'pgshift-driver.conf'") {
            main.push_str("include 'pgshift-driver.conf'\n");
            files::write(&conf, main).map_err(|e| io("writing postgresql.conf", e))?;
        }
        let mut cmd = self.command(&bindir, "pg_ctl", &user);
        cmd.arg("-D")
            .arg(&dir)
            .arg("-l")
            .arg(dir.join("pgshift-server.log"))
            .args(["-m", "fast", "-w", "-t", "300", "restart"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let out = cmd
            .output()
            .await
            .map_err(|e| DriverError::new(self.ctx(&format!("cannot run pg_ctl restart: {e}"))))?;
        if !out.status.success() {
            let logged =
                std::fs::read_to_string(dir.join("pgshift-server.log")).unwrap_or_default();
            return Err(DriverError::new(self.ctx(&format!(
                "pg_ctl restart failed ({}): {} | server log: {}",
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 4),
                tail(&logged, 8)
            ))));
        }
        let addr = format!("{}:{}", self.server.host, self.server.port);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr.as_str()).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                return Err(DriverError::temporary(self.ctx(&format!(
                    "the server restarted but does not accept TCP connections on {addr}"
                ))));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let names: Vec<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
        Ok(format!(
            "{} server: {} set in pgshift-driver.conf, restarted",
            self.side,
            names.join(", ")
        ))
    }

    /// Rollback before the cutover: stops the server and deletes the data directory, only
    /// if pgshift made it (marker). Also removes a leftover initdb staging directory.
    pub async fn remove(&self) -> Result<String> {
        let mut done = Vec::new();
        let staging = self.staging_dir();
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| {
                DriverError::new(self.ctx(&format!("removing {}: {e}", staging.display())))
            })?;
            done.push(format!("removed {}", staging.display()));
        }
        let dir = self.data_dir();
        if !self.made_by_pgshift() {
            done.push(if dir.exists() {
                format!("{} was not made by pgshift: left alone", dir.display())
            } else {
                format!("no data directory at {}", dir.display())
            });
            return Ok(done.join("; "));
        }
        done.push(self.stop().await?);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| DriverError::new(self.ctx(&format!("deleting {}: {e}", dir.display()))))?;
        done.push(format!("deleted {} (made by pgshift)", dir.display()));
        Ok(done.join("; "))
    }
}
