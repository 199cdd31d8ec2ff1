//! Setting the scene: the source/target/pgshift stack of the upgrade scenarios, a single
//! application server, the bench's working directory, and checks on the servers.

use anyhow::{bail, Context, Result};
use integration::stack::{APP_PASSWORD, APP_USER, DB};
use integration::{PgServer, Stack, StackOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub use integration::stack::{ACKED_TABLE_SQL, REPLICA_IDENTITY_SQL};

/// Start the stack of an upgrade as `opts` says (majors, pgbench data of its scale, a target
/// that pgshift provisions, an `[upgrade]` table...) with the writer's `acked` table on the
/// source. The replica identity of pgbench_history is left as pgbench made it (see
/// [`REPLICA_IDENTITY_SQL`]).
pub fn acked_stack(opts: StackOptions) -> Result<Stack> {
    let (source_major, target_major) = (opts.source_major, opts.target_major);
    let stack = Stack::start(opts)
        .with_context(|| format!("starting the {source_major} -> {target_major} stack"))?;
    stack
        .source
        .psql(DB, ACKED_TABLE_SQL)
        .context("creating the acked table")?;
    Ok(stack)
}

/// Start one server of `major` with the application role and database and pgbench data of
/// `scale`, owned by the application user (as [`Stack::start`] sets up its source), with
/// `opts` (e.g. TLS).
pub fn app_server(major: u32, scale: u32, opts: integration::ServerOptions) -> Result<PgServer> {
    let s = PgServer::start_with(major, opts)?;
    s.psql(
        "postgres",
        &format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"),
    )?;
    s.psql(
        "postgres",
        &format!("CREATE DATABASE {DB} OWNER {APP_USER}"),
    )?;
    let out = integration::pgbench(&["-i", "-q", "-s", &scale.to_string()])
        .args(["-h", &s.host, "-p", &s.port.to_string(), "-U", APP_USER, DB])
        .env("PGPASSWORD", APP_PASSWORD)
        .stdin(Stdio::null())
        .output()
        .context("running pgbench -i")?;
    if !out.status.success() {
        bail!(
            "pgbench -i -s {scale} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(s)
}

/// Acknowledged ids that `server` does not hold in `acked`.
pub fn missing_ids(server: &PgServer, acked: &[i64]) -> Result<Vec<i64>> {
    integration::load::missing_ids(server, DB, "acked", acked).context("reading the acked table")
}

/// The bench's scratch directory `<cache>/run/<pid>-bench-<what>` (so the harness's stale-run
/// cleanup removes it should this process die), removed on drop unless `PGSHIFT_KEEP_DATA`
/// is set.
pub struct WorkDir {
    /// The directory.
    pub path: PathBuf,
}

impl WorkDir {
    /// Create it (empty).
    pub fn create(what: &str) -> Result<WorkDir> {
        let path = integration::cache_dir()
            .join("run")
            .join(format!("{}-bench-{what}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path })
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("PGSHIFT_KEEP_DATA").is_some_and(|v| !v.is_empty() && v != "0") {
            eprintln!("[bench] PGSHIFT_KEEP_DATA: kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Copy `file` to `<cache>/bench/<name>` (which outlives the run) and return the copy's path.
pub fn keep_copy(file: &Path, name: &str) -> Result<PathBuf> {
    let dir = integration::cache_dir().join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = dir.join(name);
    std::fs::copy(file, &dest)
        .with_context(|| format!("copying {} to {}", file.display(), dest.display()))?;
    Ok(dest)
}

/// A file name stamp: seconds since the epoch.
pub fn stamp() -> String {
    (crate::clock::now_us() / 1_000_000).to_string()
}
