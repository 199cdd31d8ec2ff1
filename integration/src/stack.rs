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
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            source_major: 13,
            target_major: 17,
            pgbench_scale: 1,
            extra_config: String::new(),
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
        let source = PgServer::start(opts.source_major)?;
        let target = PgServer::start(opts.target_major)?;
        for s in [&source, &target] {
            s.psql(
                "postgres",
                &format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"),
            )?;
            s.psql(
                "postgres",
                &format!("CREATE DATABASE {DB} OWNER {APP_USER}"),
            )?;
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
        let config = stack_config(&source, &target, free_port(), &opts.extra_config);
        let pgshift = Pgshift::start(&config)?;
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

/// The pgshift configuration for a source/target pair. The upgrade stops before cutover
/// (`approve_cutover = true`) so that tests and demo drive INITIATE CUTOVER themselves; pass
/// an `[upgrade]` table in `extra` to replace that (it then replaces the whole table).
pub fn stack_config(source: &PgServer, target: &PgServer, port: u16, extra: &str) -> String {
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
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\n\n{upgrade}{}{}[replication]\npg_dump = \"{}\"\npsql = \"{}\"\n\n[[users]]\nname = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n\n[[users]]\nname = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\nadmin = true\n\n{extra}\n",
        server("source", source),
        server("target", target),
        pg_dump.display(),
        psql.display()
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
