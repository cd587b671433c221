//! The files a run keeps (setup, secrets, cron entry, report, state): opened without following a link, replaced
//! in one durable step. A leaf module, so that `export` and `connector` share one routine.

use std::fs::{File, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// `O_NOFOLLOW`: files of the config directory are opened without following a symbolic link planted in their
/// place, so whoever can write that directory cannot make a run (often as root) write through to another file.
/// (Temporary files are created with `O_EXCL` and renamed over the link, which follows nothing either.)
pub const NO_FOLLOW: i32 = nix::libc::O_NOFOLLOW;

/// The directory holding `path` (`.` for a bare file name).
pub fn parent(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Replaces `path` with what `fill` writes, durably and in one step: a temporary file (mode `mode` from its
/// creation on) in the same directory, fsync, rename, fsync of the directory. A crash leaves the old or the new
/// content, never half, and once this returns the new content survives a power cut.
pub fn replace(path: &Path, mode: u32, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    prepare(path, mode, fill)?.commit()
}

/// The first half of [`replace`]: the new content of `path`, written and fsynced in a temporary file beside it,
/// waiting for [`Prepared::commit`]. Dropped uncommitted, the temporary file is removed and `path` is untouched.
pub fn prepare(path: &Path, mode: u32, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<Prepared> {
    let mut tmp =
        tempfile::Builder::new().prefix(".tmp-").permissions(Permissions::from_mode(mode)).tempfile_in(parent(path))?;
    fill(tmp.as_file_mut())?;
    // The umask may have narrowed the mode at creation; a 0644 cron file must stay readable by cron.
    tmp.as_file().set_permissions(Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    Ok(Prepared { tmp, path: path.to_owned() })
}

/// New content for a file, durable but not yet in its place ([`prepare`]).
#[derive(Debug)]
pub struct Prepared {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl Prepared {
    /// Puts the content in its place: rename over the file, fsync of the directory.
    pub fn commit(self) -> io::Result<()> {
        self.tmp.persist(&self.path).map_err(|e| e.error)?;
        File::open(parent(&self.path))?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_content_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state");
        replace(&file, 0o600, |f| f.write_all(b"old")).unwrap();
        assert!(replace(&file, 0o600, |f| f.write_all(b"ne").and(Err(io::Error::other("disk full")))).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left behind");
    }

    #[test]
    fn prepared_content_takes_its_place_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state");
        replace(&file, 0o600, |f| f.write_all(b"old")).unwrap();
        let abandoned = prepare(&file, 0o600, |f| f.write_all(b"abandoned")).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"old");
        drop(abandoned);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the abandoned content is removed");
        let next = prepare(&file, 0o600, |f| f.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"old");
        next.commit().unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
