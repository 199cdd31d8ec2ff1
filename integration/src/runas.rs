//! PostgreSQL refuses to run as root. When this process is root, server commands (`initdb`,
//! `pg_ctl`) run as the unprivileged system user [`PG_OS_USER`](crate::PG_OS_USER), created on
//! first use, and the files they touch are handed to it.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::lock::FileLock;
use crate::PG_OS_USER;

/// The user (uid, gid) that server processes run as, when it differs from ours.
#[derive(Clone, Copy, Debug)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Makes `cmd` switch to this user before exec (like `setpriv`; std also drops root's
    /// supplementary groups).
    pub fn apply(&self, cmd: &mut Command) {
        cmd.uid(self.uid).gid(self.gid);
    }

    /// Hands `path` to this user.
    pub fn chown(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("chown {} to {}", path.display(), PG_OS_USER))
    }
}

/// `None` when this process is not root (servers run as ourselves); otherwise the server user,
/// created (once, under a lock shared by all processes) when missing.
pub fn run_as() -> Result<Option<RunAs>> {
    static CELL: OnceLock<Result<Option<RunAs>, String>> = OnceLock::new();
    CELL.get_or_init(|| init().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn init() -> Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let user = match lookup(PG_OS_USER)? {
        Some(user) => user,
        None => {
            let _lock = FileLock::acquire(
                &crate::cache_dir().join("locks").join("os-user.lock"),
                Duration::from_secs(120),
            )?;
            match lookup(PG_OS_USER)? {
                Some(user) => user,
                None => create_user()?,
            }
        }
    };
    // The server user must reach the binaries and the data directories below the cache.
    let cache = crate::cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    ensure_traversable(&cache)?;
    Ok(Some(user))
}

fn create_user() -> Result<RunAs> {
    let out = Command::new("useradd")
        .args(["--system", "--user-group", "--create-home", "--home-dir"])
        .arg(format!("/var/lib/{PG_OS_USER}"))
        .args([
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "pgshift test servers",
            PG_OS_USER,
        ])
        .output()
        .context("running useradd (is the passwd package installed?)")?;
    // Another process (outside our lock, e.g. another checkout) may have won the race.
    if let Some(user) = lookup(PG_OS_USER)? {
        return Ok(user);
    }
    bail!(
        "useradd {PG_OS_USER} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Looks a user up in the password database.
fn lookup(name: &str) -> Result<Option<RunAs>> {
    let cname = CString::new(name)?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: getpwnam_r writes into `pwd` and `buf`, both live and sized as passed.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).context("getpwnam_r");
        }
        if result.is_null() {
            return Ok(None);
        }
        Ok(Some(RunAs {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        }))
    }
}

/// Gives "others" search permission on `dir` and every ancestor that lacks it, so that an
/// unprivileged user can reach files below `dir`.
pub(crate) fn ensure_traversable(dir: &Path) -> Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    for d in dir.ancestors() {
        let meta = std::fs::metadata(d).with_context(|| format!("stat {}", d.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode((mode & 0o7777) | 0o001))
                .with_context(|| format!("chmod o+x {}", d.display()))?;
        }
    }
    Ok(())
}

/// Makes everything below `root` readable by others, and directories and executables
/// searchable / executable by others (an install made under a strict umask stays usable by
/// the server user). Symlinks are left alone.
pub(crate) fn make_world_readable(root: &Path) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(root).with_context(|| format!("stat {}", root.display()))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    let want = if meta.is_dir() || mode & 0o100 != 0 {
        mode | 0o005
    } else {
        mode | 0o004
    };
    if want != mode {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(want))
            .with_context(|| format!("chmod {}", root.display()))?;
    }
    if meta.is_dir() {
        for entry in
            std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?
        {
            make_world_readable(&entry?.path())?;
        }
    }
    Ok(())
}
