//! Files and directories pgshift creates: directories 0700, files 0600, the mode given to
//! the `open(2)` / `mkdir(2)` that creates them (never a `chmod` afterwards, so no moment
//! exists in which another user can open them). The process umask can only narrow these.
//!
//! A file or directory that already exists keeps its mode: these helpers create, they do
//! not repair.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of the directories pgshift creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files pgshift creates.
pub const FILE_MODE: u32 = 0o600;

/// `mkdir -p` with every directory it creates made 0700 (existing ones are left as they are).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    create_dir_all_mode(path, DIR_MODE)
}

/// `mkdir -p` with `mode` for the directories it creates.
pub fn create_dir_all_mode(path: &Path, mode: u32) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(mode).create(path)
}

/// `mkdir` of one directory, 0700; fails when it exists.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Opens `path` for writing, truncated; created 0600 when missing.
pub fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates `path` 0600 for writing; fails with `AlreadyExists` when it exists (no file of
/// someone else, nor a symbolic link, is ever followed or reused).
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates `path` 0600 when missing (empty), leaving an existing file as it is.
pub fn touch(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map(drop)
}

/// Opens `path` for reading and writing; created 0600 when missing.
pub fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
}

/// `fs::write` with a new file made 0600.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> io::Result<()> {
    create(path)?.write_all(contents.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn modes_of_what_is_created() {
        // A permissive umask, as on many hosts: the modes must come from pgshift, not from it.
        // SAFETY: umask(2) cannot fail; other tests only see files made more permissive.
        unsafe { libc::umask(0o022) };
        let base = std::env::temp_dir().join(format!("pgshift-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let deep = base.join("a/b");
        create_dir_all(&deep).unwrap();
        for d in [&base, &base.join("a"), &deep] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        create_dir(&base.join("c")).unwrap();
        assert_eq!(mode(&base.join("c")), 0o700);
        assert!(create_dir(&base.join("c")).is_err());

        let f = deep.join("f");
        write(&f, b"x").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read(&f).unwrap(), b"x");
        let n = deep.join("n");
        create_new(&n).unwrap();
        assert_eq!(mode(&n), 0o600);
        let e = create_new(&n).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let t = deep.join("t");
        touch(&t).unwrap();
        write(&t, b"kept").unwrap();
        touch(&t).unwrap();
        assert_eq!(
            std::fs::read(&t).unwrap(),
            b"kept",
            "touch keeps the content"
        );
        assert_eq!(mode(&t), 0o600);
        let r = deep.join("r");
        drop(open_rw(&r).unwrap());
        assert_eq!(mode(&r), 0o600);
        let _ = std::fs::remove_dir_all(&base);
    }
}
