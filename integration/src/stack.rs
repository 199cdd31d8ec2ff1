//! The standard scene of tests, bench and demo: a source server (old major) holding an
//! application database with pgbench data, an empty target server (new major), and pgshift
//! in front of them with an application user and an admin user.

use crate::{free_port, PgServer, Pgshift};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// Application database name on both servers.
pub const DB: &str = "app";
/// Application login (through pgshift and on both servers).
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-secret";
/// Admin console login.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-secret";

/// How to build a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub source_major: u32,
    pub target_major: u32,
    /// pgbench scale of the source's data (0: no pgbench tables).
    pub pgbench_scale: u32,
    /// Extra TOML appended to the generated pgshift configuration (e.g. an `[upgrade]` table).
    pub extra_config: String,
    /// The target is not started by the harness: pgshift provisions it (`[target.provision]`
    /// provider `local`, in [`Stack::target`]'s reserved directory and port), copying the
    /// source's roles and database; `[source.provision]` names the source's data directory so
    /// that DecommissionSource can stop it.
    pub provision_target: bool,
    /// Environment variables for the pgshift process (e.g. `PGSHIFT_FAILPOINT`).
    pub env: Vec<(String, String)>,
    /// Extra `postgresql.conf` settings of the source (e.g. `wal_level = replica`).
    pub source_settings: Vec<(String, String)>,
    /// Extra `postgresql.conf` settings of the target: of the harness's server, or added to
    /// (and overriding) the `[target.provision] settings` of a provisioned one.
    pub target_settings: Vec<(String, String)>,
    /// Binaries for both servers instead of the harness's own (their major must be
    /// `source_major` and `target_major`), e.g. [`crate::binaries::pgactive_binaries`].
    pub binaries: Option<crate::PgBinaries>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            source_major: 13,
            target_major: 17,
            pgbench_scale: 1,
            extra_config: String::new(),
            provision_target: false,
            env: Vec::new(),
            source_settings: Vec::new(),
            target_settings: Vec::new(),
            binaries: None,
        }
    }
}

/// Source, target and pgshift, all running.
pub struct Stack {
    pub source: PgServer,
    pub target: PgServer,
    pub pgshift: Pgshift,
}

impl Stack {
    /// Start both servers, create the application role and database on both (data only on the
    /// source), write a configuration and start pgshift.
    pub fn start(opts: StackOptions) -> Result<Stack> {
        let source = PgServer::start_with(
            opts.source_major,
            crate::ServerOptions {
                settings: opts.source_settings.clone(),
                binaries: opts.binaries.clone(),
                ..Default::default()
            },
        )?;
        let target = match (&opts.binaries, opts.provision_target) {
            (Some(b), true) => PgServer::reserve_with(b.clone())?,
            (Some(b), false) => PgServer::start_with(
                opts.target_major,
                crate::ServerOptions {
                    settings: opts.target_settings.clone(),
                    binaries: Some(b.clone()),
                    ..Default::default()
                },
            )?,
            (None, true) => PgServer::reserve(opts.target_major)?,
            (None, false) => PgServer::start_with(
                opts.target_major,
                crate::ServerOptions {
                    settings: opts.target_settings.clone(),
                    ..Default::default()
                },
            )?,
        };
        let servers: &[&PgServer] = if opts.provision_target {
            &[&source]
        } else {
            &[&source, &target]
        };
        for s in servers {
            create_app_database(s)?;
        }
        if opts.pgbench_scale > 0 {
            let out = crate::pgbench(&[
                "-i",
                "-q",
                "-s",
                &opts.pgbench_scale.to_string(),
                "-h",
                &source.host,
                "-p",
                &source.port.to_string(),
                "-U",
                APP_USER,
                DB,
            ])
            .env("PGPASSWORD", APP_PASSWORD)
            .stdin(Stdio::null())
            .output()
            .context("running pgbench -i")?;
            if !out.status.success() {
                bail!(
                    "pgbench -i failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let mut extra = opts.extra_config.clone();
        if opts.provision_target {
            extra.push_str(&provision_config(&source, &target, &opts.target_settings));
        }
        let config = stack_config(&source, &target, free_port(), &extra);
        let pgshift = Pgshift::start_with_env(&config, &opts.env)?;
        Ok(Stack {
            source,
            target,
            pgshift,
        })
    }

    /// libpq conninfo of the application through pgshift.
    pub fn app_conninfo(&self) -> String {
        self.pgshift.conninfo(APP_USER, APP_PASSWORD, DB)
    }

    /// A tokio-postgres client of the application through pgshift.
    pub async fn app_client(&self) -> Result<tokio_postgres::Client> {
        connect(&self.app_conninfo()).await
    }

    /// A tokio-postgres client on the admin console.
    pub async fn admin_client(&self) -> Result<tokio_postgres::Client> {
        connect(&self.pgshift.conninfo(ADMIN_USER, ADMIN_PASSWORD, "pgshift")).await
    }

    /// Run one admin command; rows as column → value maps. The error is the console's message.
    pub async fn admin(&self, command: &str) -> Result<Vec<HashMap<String, Option<String>>>> {
        let c = self.admin_client().await?;
        let msgs = c
            .simple_query(command)
            .await
            .map_err(|e| anyhow!("{command}: {}", db_error(&e)))?;
        Ok(rows(msgs))
    }

    /// `SHOW UPGRADE STATUS` as a map.
    pub async fn status(&self) -> Result<HashMap<String, Option<String>>> {
        self.admin("SHOW UPGRADE STATUS")
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("SHOW UPGRADE STATUS returned no row"))
    }

    /// Wait until `SHOW UPGRADE STATUS` reports `phase`; fail early on state `error`.
    pub async fn wait_phase(
        &self,
        phase: &str,
        timeout: Duration,
    ) -> Result<HashMap<String, Option<String>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status().await?;
            if s.get("phase").cloned().flatten().as_deref() == Some(phase) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("phase {phase} not reached within {timeout:?}; status {s:?}\npgshift log tail:\n{}", crate::tail_file(&self.pgshift.log_path(), 30));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until `SHOW UPGRADE STATUS` reports `state` (e.g. `waiting` at the approval of
    /// the cutover); fail early on state `error`.
    pub async fn wait_state(
        &self,
        state: &str,
        timeout: Duration,
    ) -> Result<HashMap<String, Option<String>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status().await?;
            let now = s.get("state").cloned().flatten();
            if now.as_deref() == Some(state) {
                return Ok(s);
            }
            if now.as_deref() == Some("error") || Instant::now() > deadline {
                bail!("state {state} not reached within {timeout:?}; status {s:?}\npgshift log tail:\n{}", crate::tail_file(&self.pgshift.log_path(), 30));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A pgbench command aimed at pgshift as the application user.
    pub fn pgbench(&self, args: &[&str]) -> Command {
        let mut c = crate::pgbench(args);
        c.args([
            "-h",
            &self.pgshift.host,
            "-p",
            &self.pgshift.port.to_string(),
            "-U",
            APP_USER,
            DB,
        ])
        .env("PGPASSWORD", APP_PASSWORD);
        c
    }
}

/// The table of the unique-id writer ([`crate::load::Writer`]), owned by the application
/// user: every acknowledged id must survive the switches.
pub const ACKED_TABLE_SQL: &str =
    "CREATE TABLE acked (id bigint PRIMARY KEY, at timestamptz DEFAULT now()); ALTER TABLE acked OWNER TO app";

/// pgbench_history has no primary key; logical replication of its rows (and pgshift's
/// preflight) needs a replica identity.
pub const REPLICA_IDENTITY_SQL: &str = "ALTER TABLE pgbench_history REPLICA IDENTITY FULL";

impl Stack {
    /// Makes the source ready for the upgrade tests: pgbench_history gets a replica identity
    /// ([`REPLICA_IDENTITY_SQL`]) and the writer's `acked` table is created
    /// ([`ACKED_TABLE_SQL`]).
    pub fn prepare_source(&self) -> Result<()> {
        self.source
            .psql(DB, &format!("{REPLICA_IDENTITY_SQL}; {ACKED_TABLE_SQL}"))
            .context("preparing the source (replica identity, acked table)")?;
        Ok(())
    }

    /// `SHOW UPGRADE HISTORY` as one `"kind step message"` line per entry, oldest first.
    pub async fn history_lines(&self) -> Result<Vec<String>> {
        Ok(self
            .admin("SHOW UPGRADE HISTORY")
            .await?
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    field(r, "kind"),
                    field(r, "step"),
                    field(r, "message")
                )
            })
            .collect())
    }

    /// The major version of the server an application session through pgshift runs on now.
    pub async fn app_server_major(&self) -> Result<i32> {
        let c = self.app_client().await?;
        let row = c
            .query_one(
                "SELECT current_setting('server_version_num')::int / 10000",
                &[],
            )
            .await
            .map_err(|e| anyhow!("server_version_num: {}", db_error(&e)))?;
        Ok(row.get(0))
    }

    /// pgbench through pgshift (as [`pgbench`](Self::pgbench) with `args`, which should
    /// include a `-T`) run back to back until [`PgbenchLoop::stop`](crate::load::PgbenchLoop::stop).
    pub fn pgbench_loop(&self, args: &[&str]) -> crate::load::PgbenchLoop {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (host, port) = (self.pgshift.host.clone(), self.pgshift.port);
        crate::load::PgbenchLoop::start(move || {
            let mut c = crate::pgbench(&args.iter().map(String::as_str).collect::<Vec<_>>());
            c.args(["-h", &host, "-p", &port.to_string(), "-U", APP_USER, DB])
                .env("PGPASSWORD", APP_PASSWORD);
            c
        })
    }
}

/// A random HTTP token (32 hex digits from `/dev/urandom`).
pub fn random_token() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    let mut t: String = b.iter().map(|x| format!("{x:02x}")).collect();
    if b == [0; 16] {
        // No /dev/urandom: still unique per process and call.
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        t = format!(
            "{now:x}{:x}{:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
    }
    t
}

/// `text` with `token = "<random>"` added to its `[http]` table when it has one that sets
/// neither `token` nor `token_file` (read it back with [`Pgshift::http_token`]).
fn with_http_token(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim() == "[http]") else {
        return text.to_string();
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |n| start + 1 + n);
    let has_token = lines[start + 1..end].iter().any(|l| {
        let k = l.split('=').next().unwrap_or("").trim();
        k == "token" || k == "token_file"
    });
    if has_token {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 48);
    for (i, l) in lines.iter().enumerate() {
        out.push_str(l);
        out.push('\n');
        if i == start {
            out.push_str(&format!("token = \"{}\"\n", random_token()));
        }
    }
    out
}

/// Creates the application role ([`APP_USER`], [`APP_PASSWORD`]) and its database [`DB`]
/// (owned by it, empty) on `s`, as [`Stack::start`] does on both servers.
pub fn create_app_database(s: &PgServer) -> Result<()> {
    s.psql(
        "postgres",
        &format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"),
    )?;
    s.psql(
        "postgres",
        &format!("CREATE DATABASE {DB} OWNER {APP_USER}"),
    )?;
    Ok(())
}

/// The pgshift configuration for a source/target pair. The upgrade stops before cutover
/// (`approve_cutover = true`) so that tests and demo drive INITIATE CUTOVER themselves; pass
/// an `[upgrade]` table in `extra` to replace that (it then replaces the whole table). A
/// `[replication]` or `[proxy]` table in `extra` is merged into the generated one. An
/// `[http]` table in `extra` gets a random `token` unless it sets `token` or `token_file`
/// ([`Pgshift::http_token`] reads it back; its `http_get` / `http_post` send it).
pub fn stack_config(source: &PgServer, target: &PgServer, port: u16, extra: &str) -> String {
    // Keys of a `[replication]` or `[proxy]` table in `extra`: moved into the generated
    // table.
    let mut repl = String::new();
    let mut proxy = String::new();
    let mut rest = String::new();
    let mut into = 0;
    for line in extra.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            into = match t {
                "[replication]" => 1,
                "[proxy]" => 2,
                _ => 0,
            };
            if into > 0 {
                continue;
            }
        }
        let out = match into {
            1 => &mut repl,
            2 => &mut proxy,
            _ => &mut rest,
        };
        out.push_str(line);
        out.push('\n');
    }
    let rest = with_http_token(&rest);
    let extra = rest.as_str();
    let upgrade = if extra.lines().any(|l| l.trim() == "[upgrade]") {
        ""
    } else {
        "[upgrade]\napprove_cutover = true\n\n"
    };
    let server = |name: &str, s: &PgServer| {
        format!(
            "[{name}]\nhost = \"{}\"\nport = {}\ndbname = \"{DB}\"\nuser = \"{}\"\npassword = \"{}\"\n\n",
            s.host, s.port, s.superuser, s.password
        )
    };
    let psql = crate::client_bin("psql");
    let pg_dump = crate::client_bin("pg_dump");
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\n{proxy}\n{upgrade}{}{}[replication]\npg_dump = \"{}\"\npsql = \"{}\"\n{repl}\n[[users]]\nname = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n\n[[users]]\nname = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\nadmin = true\n\n{extra}\n",
        server("source", source),
        server("target", target),
        pg_dump.display(),
        psql.display()
    )
}

/// `[target.provision]` (local provider, into `target`'s reserved directory) and
/// `[source.provision]` for a [`Stack`] whose target pgshift creates. TOML sub-tables of
/// `[target]` and `[source]`: appended after them, they still belong to them. `settings`
/// are added to the target's (a value given overrides the harness's own).
pub fn provision_config(
    source: &PgServer,
    target: &PgServer,
    settings: &[(String, String)],
) -> String {
    let run_as = |s: &PgServer| {
        s.run_as_user()
            .map(|u| format!("run_as = \"{u}\"\n"))
            .unwrap_or_default()
    };
    let mut all: Vec<(String, String)> = [
        ("fsync", "false"),
        ("synchronous_commit", "\"off\""),
        ("full_page_writes", "false"),
        ("max_connections", "200"),
        ("shared_buffers", "\"128MB\""),
        ("max_replication_slots", "20"),
        ("max_wal_senders", "20"),
        ("max_worker_processes", "20"),
        ("max_logical_replication_workers", "10"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in settings {
        let v = format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
        match all.iter_mut().find(|(n, _)| n == k) {
            Some(e) => e.1 = v,
            None => all.push((k.clone(), v)),
        }
    }
    let settings: Vec<String> = all.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!(
        "\n[target.provision]\nprovider = \"local\"\nmajor = {}\nbindir = \"{}\"\ndata_dir = \"{}\"\n{}\
         settings = {{ {} }}\n\n\
         [source.provision]\nmajor = {}\nbindir = \"{}\"\ndata_dir = \"{}\"\n{}\n",
        target.major,
        target.binaries.bindir.display(),
        target.datadir.display(),
        run_as(target),
        settings.join(", "),
        source.major,
        source.binaries.bindir.display(),
        source.datadir.display(),
        run_as(source),
    )
}

/// Connect with tokio-postgres and spawn the connection task.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(|e| anyhow!("connect: {}", db_error(&e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The server's message of a tokio-postgres error, or the error itself.
pub fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "{}: {} (SQLSTATE {})",
            d.severity(),
            d.message(),
            d.code().code()
        ),
        None => e.to_string(),
    }
}

/// A column of a row of [`rows`] / [`Stack::status`] as text ("" for NULL or absent).
pub fn field(row: &HashMap<String, Option<String>>, column: &str) -> String {
    row.get(column).cloned().flatten().unwrap_or_default()
}

/// Rows of a simple query as maps.
pub fn rows(msgs: Vec<SimpleQueryMessage>) -> Vec<HashMap<String, Option<String>>> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).map(str::to_string)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// pgshift's replication objects on `s` (database `app`): publications, slots and
/// subscriptions as `pub:<name>,slot:<name>,sub:<name>`, sorted; empty when none.
pub fn replication_objects(s: &PgServer) -> String {
    s.psql(
        DB,
        "SELECT coalesce(string_agg(o, ',' ORDER BY o), '') FROM (
             SELECT 'pub:' || pubname AS o FROM pg_publication
             UNION ALL SELECT 'slot:' || slot_name FROM pg_replication_slots
             UNION ALL SELECT 'sub:' || subname FROM pg_subscription) x",
    )
    .unwrap_or_else(|e| format!("unreachable: {e}"))
}

impl Stack {
    /// Polls `SHOW UPGRADE STATUS` every 20 ms until `pred` holds and returns that status.
    /// Panics (with the tail of pgshift's log) after `timeout`, or on state `error` that
    /// `pred` does not accept.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&HashMap<String, Option<String>>) -> bool,
    ) -> HashMap<String, Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status().await {
                if pred(&s) {
                    return s;
                }
                assert_ne!(
                    field(&s, "state"),
                    "error",
                    "{what}: {s:?}\n{}",
                    crate::tail_file(&self.pgshift.log_path(), 40)
                );
                assert!(
                    Instant::now() < deadline,
                    "{what} not reached within {timeout:?}: {s:?}\n{}",
                    crate::tail_file(&self.pgshift.log_path(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most 120 s) until pgshift has killed itself at failpoint `which` (as its log
    /// says: `PGSHIFT_FAILPOINT=<which>`), then clears its environment for the restart.
    pub async fn crashed_at_failpoint(&mut self, which: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.pgshift.is_running() {
            assert!(
                Instant::now() < deadline,
                "pgshift never reached failpoint {which}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(self
            .pgshift
            .log()
            .contains(&format!("PGSHIFT_FAILPOINT={which}")));
        self.pgshift.env.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::with_http_token;

    #[test]
    fn http_token_added_to_an_http_table_only() {
        assert_eq!(with_http_token("[upgrade]\nx = 1\n"), "[upgrade]\nx = 1\n");
        let t = with_http_token("[upgrade]\nx = 1\n[http]\nlisten = \"a:1\"\n[mirror]\ny = 2\n");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[2], "[http]");
        assert!(
            lines[3].starts_with("token = \"") && lines[3].len() == 42,
            "{t}"
        );
        assert_eq!(lines[4..], ["listen = \"a:1\"", "[mirror]", "y = 2"]);
        for kept in ["[http]\ntoken = \"mine\"\n", "[http]\ntoken_file = \"f\"\n"] {
            assert_eq!(with_http_token(kept), kept);
        }
        assert_ne!(
            with_http_token("[http]\n"),
            with_http_token("[http]\n"),
            "each call gets its own token"
        );
    }
}
