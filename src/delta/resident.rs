//! How much of a file is in the page cache (`mincore`), to choose between comparing a copy
//! and writing it again.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// ZFS keeps its cache (the ARC) outside the page cache: what `mincore` says there means
/// nothing.
const ZFS_SUPER_MAGIC: i64 = 0x2fc1_2fc1;

/// The share (0.0–1.0) of `file`'s first `len` bytes whose pages are in the page cache. A
/// file of no bytes counts as not in memory: there is nothing to compare. An error where it
/// cannot be known (a file system with a cache of its own, a file too large to map). Since
/// Linux 5.0 the answer is only true for a file the caller owns or may write to (else every
/// page looks absent): `file` is one of DEST's, opened for writing.
pub fn share(file: &File, len: u64) -> io::Result<f64> {
    share_of(file, 0, len)
}

/// [`share`] of bytes `start..start + len` (`start` a multiple of the page size).
pub fn share_of(file: &File, start: u64, len: u64) -> io::Result<f64> {
    let unknown = |why: &str| io::Error::new(io::ErrorKind::Unsupported, why.to_string());
    let len = usize::try_from(len).map_err(|_| unknown("too large to map"))?;
    let start = libc::off_t::try_from(start).map_err(|_| unknown("too large to map"))?;
    if len == 0 {
        return Ok(0.0);
    }
    let fs = nix::sys::statfs::fstatfs(file).map_err(io::Error::from)?;
    #[allow(clippy::unnecessary_cast)] // the type differs between targets
    if fs.filesystem_type().0 as i64 == ZFS_SUPER_MAGIC {
        return Err(unknown("ZFS caches outside the page cache"));
    }
    // SAFETY: a plain system call; the kernel reports the page size.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
    // SAFETY: a shared read-only mapping of a file we own, never read through (only its
    // residency is asked), unmapped below; a failure is reported, not a mapping.
    let addr =
        unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), start) };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `addr..addr + len` is the mapping made above; `vec` has one byte per page of it.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = io::Error::last_os_error();
    // SAFETY: unmaps exactly the mapping made above, which nothing else refers to.
    unsafe { libc::munmap(addr, len) };
    if rc != 0 {
        return Err(err);
    }
    let resident = vec.iter().filter(|&&b| b & 1 == 1).count();
    Ok(resident as f64 / vec.len() as f64)
}

/// A file of `bytes` written to disk and evicted from the page cache, opened to read and
/// write (the test's directory beside it, to keep it alive).
#[cfg(test)]
pub(crate) fn evicted(bytes: &[u8]) -> (tempfile::TempDir, File) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    let mut f = File::create(&p).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    // SAFETY: advice on a descriptor we own.
    assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
    (dir, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_file_evicted_is_not_in_memory_and_one_read_back_is() {
        let (_dir, f) = evicted(&vec![7u8; 1 << 20]);
        let cold = share(&f, 1 << 20).unwrap();
        // A file system that keeps everything in memory (tmpfs) cannot evict: it is all in.
        let in_memory = nix::sys::statfs::fstatfs(&f).unwrap().filesystem_type() == nix::sys::statfs::TMPFS_MAGIC;
        if in_memory {
            assert_eq!(cold, 1.0);
        } else {
            assert!(cold < 0.1, "{cold}");
        }
        std::io::copy(&mut (&f).take(1 << 20), &mut std::io::sink()).unwrap();
        assert_eq!(share(&f, 1 << 20).unwrap(), 1.0);
        assert_eq!(share(&f, 0).unwrap(), 0.0);
    }
}
