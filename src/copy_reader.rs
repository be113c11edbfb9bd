//! Reading DEST's copy for `--delta` by block hashes: past the page cache (`O_DIRECT`) when
//! the copy is not in it, through it otherwise.
//!
//! A copy on disk is read once, hashed and dropped; reading it through the page cache costs a
//! copy of every byte and a page-cache page for it, which this VM makes dear (1.1–2.3 s of
//! system time per GB read cold, against 0.1 s read directly: docs/benchmarks.md). Only
//! the copy's own differing blocks are written afterwards, through the page cache as always;
//! the kernel keeps direct reads coherent with them.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

/// What a direct read's buffer, offset and length are aligned to.
const ALIGN: usize = 4096;
/// A range smaller than this is read through the page cache: asking costs more than it saves.
const DIRECT_FROM: u64 = 1 << 20;
/// One direct read: large enough that the device's latency does not show.
const DIRECT_READ: usize = 1 << 20;
/// A range read through the page cache is asked for at once (see [`will_need`]) up to this
/// size; a longer one is read ahead by the kernel as it goes.
const ASK_UPTO: u64 = 4 << 20;
/// Direct reads done ahead of the caller, by a thread of the reader's own: without them each
/// read waits for the device while nothing is hashed (1.35–1.59 s per GB read and hashed,
/// against 0.74–0.76 s with two ahead, measured on this VM).
const AHEAD: usize = 2;

/// A buffer whose bytes from `at` are aligned to [`ALIGN`].
struct Aligned {
    buf: Vec<u8>,
    at: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let buf = vec![0u8; len + ALIGN];
        let at = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        Aligned { buf, at }
    }

    fn get(&self, len: usize) -> &[u8] {
        &self.buf[self.at..self.at + len]
    }
}

/// The thread that reads ahead, and the buffers going both ways.
struct Ahead {
    full: Receiver<io::Result<(Aligned, usize)>>,
    empty: Option<Sender<Aligned>>,
    current: Option<(Aligned, usize)>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // The thread ends at its next send or wait for a buffer (a read of at most
        // DIRECT_READ bytes away).
        self.empty.take();
        while self.full.try_recv().is_ok() {}
        drop(std::mem::replace(&mut self.full, crossbeam_channel::never()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sequential reads of one copy's bytes `start..end` (or to its end, if sooner).
pub struct CopyReader<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
    cap: usize,
    buf: Aligned,
    ahead: Option<Ahead>,
}

impl<'f> CopyReader<'f> {
    /// A reader of `file`'s bytes `start..end` in chunks of at most `cap` bytes through the
    /// page cache (a multiple of 8 KiB), or of [`DIRECT_READ`] past it: direct when the
    /// range is [`DIRECT_FROM`] or more, less than half of it is in the page cache, and the
    /// file can be opened so (by its descriptor, never by a path below DEST).
    ///
    /// `once`: the caller reads these bytes only this once. Otherwise (it reads the copy back
    /// afterwards) they are read through the page cache, so that the second read finds them.
    pub fn new(file: &'f File, (start, end): (u64, u64), cap: usize, once: bool) -> CopyReader<'f> {
        let known = end.min(file.metadata().map_or(0, |m| m.len()));
        let cold = once
            && start.is_multiple_of(ALIGN as u64)
            && known.saturating_sub(start) >= DIRECT_FROM
            && crate::delta::resident::share_of(file, start, known - start).is_ok_and(|s| s < 0.5);
        let ahead = if cold {
            match reopen_direct(file).and_then(|d| read_ahead(d, start, end)) {
                Ok(a) => {
                    log::debug!("a copy not in the page cache is read past it, from byte {start} (O_DIRECT)");
                    Some(a)
                }
                Err(e) => {
                    log::debug!("the copy is read through the page cache: {e}");
                    None
                }
            }
        } else {
            None
        };
        if ahead.is_none() && known.saturating_sub(start) <= ASK_UPTO {
            will_need(file, start, known.saturating_sub(start));
        }
        CopyReader { file, pos: start, end, cap, buf: Aligned::new(if ahead.is_some() { 0 } else { cap }), ahead }
    }

    /// Whether reads go past the page cache.
    pub fn is_direct(&self) -> bool {
        self.ahead.is_some()
    }

    /// The next bytes (a multiple of 8 KiB but where the range or the file ends); empty at
    /// the end.
    pub fn next_chunk(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.end {
            return Ok(&[]);
        }
        if self.ahead.is_some() {
            match self.next_direct() {
                Ok(n) => {
                    let cur = self.ahead.as_ref().and_then(|a| a.current.as_ref());
                    return Ok(cur.map_or(&[][..], |(b, _)| b.get(n)));
                }
                // Not for this file system or device after all: through the page cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.ahead = None;
                    self.buf = Aligned::new(self.cap);
                }
                Err(e) => return Err(e),
            }
        }
        let want = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX).min(self.cap);
        let buf = &mut self.buf.buf[self.buf.at..self.buf.at + want];
        let mut n = 0;
        while n < want {
            match self.file.read_at(&mut buf[n..], self.pos + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.advance(n, want);
        Ok(self.buf.get(n))
    }

    /// The next chunk read ahead (kept as `current`): its length.
    fn next_direct(&mut self) -> io::Result<usize> {
        let Some(a) = self.ahead.as_mut() else { return Ok(0) };
        if let (Some((b, _)), Some(tx)) = (a.current.take(), a.empty.as_ref()) {
            let _ = tx.send(b);
        }
        let (b, got) = a.full.recv().map_err(|_| io::Error::other("the copy's reader thread ended"))??;
        let want = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX).min(DIRECT_READ);
        let n = got.min(want);
        a.current = Some((b, n));
        self.advance(n, want);
        Ok(n)
    }

    /// `n` of `want` bytes came: fewer means the file ended.
    fn advance(&mut self, n: usize, want: usize) {
        self.pos += n as u64;
        if n < want {
            self.end = self.pos;
        }
    }
}

/// Asks the kernel to read `len` bytes of `file` from `start` into the page cache now, all
/// at once, for reads through it that follow (a copy's small files otherwise come one read,
/// and one wait for the device, at a time). Only advice: nothing to do where it fails.
pub fn will_need(file: &File, start: u64, len: u64) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    let (Ok(at), Ok(n)) = (i64::try_from(start), i64::try_from(len)) else { return };
    if n > 0 {
        let _ = posix_fadvise(file, at, n, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
    }
}

/// Starts the thread that reads `start..end` of `direct` ahead, [`AHEAD`] chunks at most (an
/// error if no thread can be started).
fn read_ahead(direct: File, start: u64, end: u64) -> io::Result<Ahead> {
    let (full_tx, full) = crossbeam_channel::bounded(AHEAD);
    let (empty, empty_rx) = crossbeam_channel::bounded::<Aligned>(AHEAD + 1);
    for _ in 0..=AHEAD {
        let _ = empty.send(Aligned::new(DIRECT_READ));
    }
    let thread = std::thread::Builder::new().name("pgbb-copy-read".into()).spawn(move || {
        let mut pos = start;
        while pos < end {
            let Ok(mut b) = empty_rx.recv() else { return };
            let len = usize::try_from(end - pos).unwrap_or(usize::MAX).min(DIRECT_READ).div_ceil(ALIGN) * ALIGN;
            let got = read_direct(&direct, &mut b.buf[b.at..b.at + len], pos);
            let last = !matches!(got, Ok(n) if n == len);
            pos += len as u64;
            if full_tx.send(got.map(|n| (b, n))).is_err() || last {
                return;
            }
        }
    })?;
    Ok(Ahead { full, empty: Some(empty), current: None, thread: Some(thread) })
}

/// Reads `buf` (aligned) from `off` with direct reads: fewer bytes only where the file ends.
fn read_direct(direct: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    // A direct read stops short only at the file's end; it goes on from an aligned place.
    while n < buf.len() && n.is_multiple_of(ALIGN) {
        match direct.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A descriptor of `file` of its own (its own offset and flags) that reads past the page
/// cache, opened through `/proc/self/fd` (a link to the open file itself): the same inode, no
/// path below DEST walked again. An error if what opened is not that file (no procfs there).
fn reopen_direct(file: &File) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let (a, b) = (file.metadata()?, direct.metadata()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(io::Error::other("/proc/self/fd does not lead to the open file"));
    }
    Ok(direct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::resident::evicted;

    /// Whether `f` is on a file system known to read past the page cache (ext2–4, XFS): there
    /// the direct path must be taken, and kept.
    fn direct_expected(f: &File) -> bool {
        #[allow(clippy::unnecessary_cast)] // the type differs between targets
        let t = nix::sys::statfs::fstatfs(f).unwrap().filesystem_type().0 as i64;
        t == 0xEF53 || t == 0x5846_5342
    }

    /// Every chunk until the end; only the last may be cut short of whole blocks.
    fn read_all(r: &mut CopyReader) -> Vec<u8> {
        let mut got = Vec::new();
        let mut short = false;
        loop {
            let chunk = r.next_chunk().unwrap();
            if chunk.is_empty() {
                return got;
            }
            assert!(!short, "a chunk not of whole blocks before the end");
            short = !chunk.len().is_multiple_of(8192);
            got.extend_from_slice(chunk);
        }
    }

    fn pattern(len: usize, k: u32) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_mul(k) % 251) as u8).collect()
    }

    /// Reads `start..end` of `bytes` (evicted, then `dirty` written over without a sync) and
    /// checks the bytes, and that the direct path was taken and kept where expected.
    fn check(bytes: &[u8], (start, end): (u64, u64), dirty: Option<(u64, &[u8])>) {
        let (_dir, f) = evicted(bytes);
        let mut want = bytes.to_vec();
        if let Some((off, d)) = dirty {
            f.write_all_at(d, off).unwrap();
            want[off as usize..off as usize + d.len()].copy_from_slice(d);
        }
        let mut r = CopyReader::new(&f, (start, end), 256 << 10, true);
        let expected = direct_expected(&f);
        if expected {
            assert!(r.is_direct(), "not read directly");
        }
        let till = (end as usize).min(want.len());
        assert!(read_all(&mut r) == want[start as usize..till], "{start}..{end}");
        assert_eq!(r.is_direct(), expected, "fell back to the page cache");
        // A reader dropped after its first chunk, its thread reading ahead, returns.
        let mut r = CopyReader::new(&f, (start, end), 256 << 10, true);
        assert!(!r.next_chunk().unwrap().is_empty());
        drop(r);
    }

    #[test]
    fn a_copy_on_disk_is_read_directly_to_its_end() {
        // Ending anywhere, and exactly where a direct read ends.
        check(&pattern((3 << 20) + 1234, 7), (0, u64::MAX), None);
        check(&pattern(2 << 20, 11), (0, u64::MAX), None);
        // A range of it, ending where no read would.
        check(&pattern(4 << 20, 13), (1 << 20, (3 << 20) + 8192 + 100), None);
        // Blocks written and not yet on disk are read as written.
        check(&pattern(3 << 20, 17), (0, u64::MAX), Some(((1 << 20) + 8192, &[9u8; 8192])));
    }

    #[test]
    fn a_copy_in_memory_or_read_back_later_goes_through_the_page_cache() {
        let bytes = pattern(2 << 20, 3);
        let (_dir, f) = evicted(&bytes);
        let mut r = CopyReader::new(&f, (0, u64::MAX), 256 << 10, false);
        assert!(!r.is_direct(), "read back later");
        assert_eq!(read_all(&mut r), bytes);
        // Now in memory.
        let mut r = CopyReader::new(&f, (0, u64::MAX), 256 << 10, true);
        assert!(!r.is_direct());
        assert_eq!(r.next_chunk().unwrap(), &bytes[..256 << 10]);
    }
}
