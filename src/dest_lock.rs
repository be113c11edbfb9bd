//! One run per DEST: an exclusive `flock` on DEST's own directory, held for the whole run.
//! Nothing is written for it (no lock file in DEST, which would be an extra file in the
//! backup, nor next to it); the holder of a lock is found in `/proc/locks` to be named.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::dest::DestError;

/// An exclusive lock on a DEST directory; released when dropped (or when the process ends,
/// however it ends).
#[derive(Debug)]
pub struct DestLock {
    /// `None` where the file system has no flock on a directory (NFS emulates flock with
    /// POSIX locks, which need a descriptor open for writing): the run goes on, unguarded.
    _lock: Option<Flock<fs::File>>,
}

impl DestLock {
    /// Locks the directory `dir` (following a symlink to it, as DEST may be one), or says who
    /// holds it.
    pub fn acquire(dir: &Path) -> Result<DestLock, DestError> {
        let io_err = |e: io::Error| DestError::Io { path: dir.to_path_buf(), source: e };
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(io_err)?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(DestLock { _lock: Some(lock) }),
            Err((_, Errno::EWOULDBLOCK)) => {
                let m = fs::metadata(dir).map_err(io_err)?;
                let holder = holders(&fs::read_to_string("/proc/locks").unwrap_or_default(), m.dev(), m.ino())
                    .into_iter()
                    .find(|&p| p != std::process::id() as i32);
                Err(DestError::InUse { path: dir.to_path_buf(), pid: holder })
            }
            Err((_, e @ (Errno::EBADF | Errno::ENOLCK | Errno::EOPNOTSUPP | Errno::EINVAL))) => {
                log::warn!(
                    "cannot lock {} on its file system ({e}): a second run into it would not be refused",
                    dir.display()
                );
                Ok(DestLock { _lock: None })
            }
            Err((_, e)) => Err(io_err(io::Error::from_raw_os_error(e as i32))),
        }
    }
}

/// Linux's split of a device number (as `major()`/`minor()` in glibc).
fn major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// Pids holding an flock on the file (`dev`, `ino`), from the text of `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 14525 fe:00:10018820 0 EOF`: major and minor in hex, the
/// inode in decimal). When no line names the same device (some file systems report another
/// device number in stat than in /proc/locks), lines with the inode alone are taken.
fn holders(text: &str, dev: u64, ino: u64) -> Vec<i32> {
    let (major, minor) = major_minor(dev);
    let mut exact = Vec::new();
    let mut by_inode = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter's line starts "1: -> FLOCK ...": skip it, it holds nothing.
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let (Ok(pid), Some(id)) = (f[4].parse::<i32>(), f.get(5)) else { continue };
        let parts: Vec<&str> = id.split(':').collect();
        let [maj, min, i] = parts.as_slice() else { continue };
        if i.parse::<u64>().ok() != Some(ino) {
            continue;
        }
        if u64::from_str_radix(maj, 16).ok() == Some(major) && u64::from_str_radix(min, 16).ok() == Some(minor) {
            exact.push(pid);
        } else {
            by_inode.push(pid);
        }
    }
    if exact.is_empty() {
        by_inode
    } else {
        exact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let first = DestLock::acquire(t.path()).unwrap();
        // flock locks belong to the open file description: a second open conflicts even in
        // this process (which then finds only itself in /proc/locks).
        match DestLock::acquire(t.path()) {
            Err(DestError::InUse { pid: None, .. }) => {}
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        DestLock::acquire(t.path()).unwrap();
    }

    #[test]
    fn proc_locks_lines_are_read_by_device_and_inode() {
        let text = "1: FLOCK  ADVISORY  WRITE 14525 fe:00:10018820 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 999 fe:00:10018820 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 77 fe:00:10018820 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 15000 08:01:10018820 0 EOF\n";
        assert_eq!(holders(text, 0xfe00, 10018820), vec![14525]);
        assert_eq!(holders(text, 0x0801, 10018820), vec![15000]);
        assert_eq!(holders(text, 0x0999, 10018820), vec![14525, 15000], "inode alone when no device matches");
        assert_eq!(holders(text, 0xfe00, 1), Vec::<i32>::new());
        assert_eq!(major_minor(0xfe00), (0xfe, 0));
        assert_eq!(major_minor(0x10305), (259, 5));
    }
}
