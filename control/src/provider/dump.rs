//! The final `pg_dump` of the source, written by DecommissionSource.

use crate::files;
use crate::logical::{pg_env, tail, DriverError};
use config::ServerConfig;
use std::path::{Path, PathBuf};
use std::process::Stdio;

type Result<T, E = DriverError> = std::result::Result<T, E>;

/// `pg_dump -Fc` of `source` into `path` (through `path.partial`, renamed when complete).
pub async fn final_dump(pg_dump: &Path, source: &ServerConfig, path: &Path) -> Result<String> {
    let path = absolute(path);
    if let Some(dir) = path.parent() {
        files::create_dir_all(dir).map_err(|e| {
            DriverError::new(format!("final dump: cannot create {}: {e}", dir.display()))
        })?;
    }
    let partial = path.with_file_name(format!(
        "{}.partial",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    // pg_dump -f opens with O_TRUNC and keeps the mode of a file that exists: made 0600 here,
    // exclusively (a leftover of an interrupted dump is removed first).
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(DriverError::new(format!(
                "final dump: removing the leftover {}: {e}",
                partial.display()
            )))
        }
        _ => {}
    }
    files::create_new(&partial).map_err(|e| {
        DriverError::new(format!("final dump: creating {}: {e}", partial.display()))
    })?;
    let mut cmd = tokio::process::Command::new(pg_dump);
    cmd.args(["-Fc", "--no-password", "-f"])
        .arg(&partial)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    pg_env(&mut cmd, source);
    cmd.env("PGAPPNAME", "pgshift-final-dump");
    let out = cmd.output().await.map_err(|e| {
        DriverError::new(format!("final dump: cannot run {}: {e}", pg_dump.display()))
    })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(DriverError::temporary(format!(
            "final dump: pg_dump of the source failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 6)
        )));
    }
    std::fs::rename(&partial, &path).map_err(|e| {
        DriverError::new(format!("final dump: renaming to {}: {e}", path.display()))
    })?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(format!(
        "final dump of the source written to {} ({size} bytes, pg_dump -Fc)",
        path.display()
    ))
}

/// `p` made absolute against the current directory.
pub(super) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
