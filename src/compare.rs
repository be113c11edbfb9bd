//! `--delta`, one file: the copy's file brought to the server's bytes in place. The worker
//! hashes the copy's blocks and sends the hashes with the query; the server hashes its own
//! blocks with the built-in `sha256(bytea)` and sends back only those that differ. Its
//! manifest checksum and page checks are composed from the blocks as they passed
//! (`block_sums`), or, where that cannot be, taken by reading the file once more.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use crate::dest::{Dest, DestError, SafePath};
use crate::digest::Digest;
use crate::fingerprint::Fingerprint;
use crate::layout::checksummed_segment;
use crate::pg::sql;
use crate::pg::Session;
use crate::transfer::{pg_err, Copied, Outcome, Pages, Source, Transfer, TransferError};
use postgres::fallible_iterator::FallibleIterator;

/// The unit compared: one PostgreSQL page.
pub const BLOCK: usize = 8192;
/// How much the server reads per call (and the worker per read). Smaller reads stay in the
/// CPU's caches while the server cuts them into blocks and hashes them: with 256 KiB instead
/// of 1 MiB a zlib refresh over 1 Gbit/s cost the server 3.89 CPU-seconds instead of 4.53
/// (docs/benchmarks.md).
pub(crate) const READ: usize = 256 << 10;
/// Bytes of one block's hash (SHA-256).
#[cfg(test)]
const HASH: usize = 32;

/// The fingerprint (see [`Fingerprint`]) of each `BLOCK` of `file` from its start, concatenated.
pub fn block_hashes(file: &mut File, fp: Fingerprint) -> std::io::Result<Vec<u8>> {
    scan(file, (0, u64::MAX), (false, fp), |_| {})
}

/// The fingerprint of each `BLOCK` of bytes `start..end` of `file` (to its end, if sooner;
/// `start` at a block), concatenated, each block also handed to `each` as it passes; `once`:
/// the copy is not read back afterwards (see [`crate::copy_reader::CopyReader::new`]).
pub(crate) fn scan(
    file: &File,
    range: (u64, u64),
    (once, fp): (bool, Fingerprint),
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut index = range.0 / BLOCK as u64;
    let mut reader = crate::copy_reader::CopyReader::new(file, range, READ, once);
    loop {
        let data = reader.next_chunk()?;
        if data.is_empty() {
            return Ok(out);
        }
        for block in data.chunks(BLOCK) {
            fp.push(index, block, &mut out);
            each(block);
            index += 1;
        }
    }
}

/// Reads until `buf` is full or the file ends; the number of bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An older copy of a file rewritten in place from the server's bytes as they stream in:
/// each block is compared with the copy's and written only where it differs (`--delta` from
/// a server on this machine, where reading costs less than hashing: see `Transfer::refresh`).
pub struct InPlace {
    file: File,
    path: std::path::PathBuf,
    pos: u64,
    local: Vec<u8>,
    /// Blocks were written (that differed).
    wrote: bool,
    /// Hand the file to write-back when finished (see `Dest::writeback`).
    pub writeback: bool,
}

impl InPlace {
    pub fn new(file: File, path: std::path::PathBuf) -> InPlace {
        // The whole copy will be read: let the kernel read ahead while the server streams.
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a descriptor we own; only advice, its failure is harmless.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
        InPlace { file, path, pos: 0, local: Vec::new(), wrote: false, writeback: false }
    }

    fn io(&self, e: std::io::Error) -> DestError {
        DestError::Io { path: self.path.clone(), source: e }
    }

    /// The next bytes of the file: written where the copy's differ.
    pub fn write(&mut self, data: &[u8]) -> Result<(), DestError> {
        self.local.resize(data.len(), 0);
        let mut have = 0;
        while have < data.len() {
            match self.file.read_at(&mut self.local[have..], self.pos + have as u64) {
                Ok(0) => break,
                Ok(n) => have += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        let mut off = 0;
        while off < data.len() {
            let end = (off + BLOCK).min(data.len());
            if end > have || data[off..end] != self.local[off..end] {
                self.file.write_all_at(&data[off..end], self.pos + off as u64).map_err(|e| self.io(e))?;
                self.wrote = true;
            }
            off = end;
        }
        self.pos += data.len() as u64;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.pos
    }

    /// Cuts the copy at the server's size (and fsyncs it with `sync`).
    pub fn finish(self, sync: bool) -> Result<u64, DestError> {
        self.file.set_len(self.pos).map_err(|e| self.io(e))?;
        if sync {
            self.file.sync_all().map_err(|e| self.io(e))?;
        } else if self.writeback && self.wrote {
            crate::dest::start_writeback(&self.file, 0, 0);
        }
        Ok(self.pos)
    }
}

/// What the server said of one file.
pub(crate) enum Answer {
    /// Not on the server (any more).
    Vanished,
    /// Its size and mtime, after the differing blocks were written.
    Refreshed { size: u64, mtime: i64, wire: u64 },
}

impl Transfer {
    /// Brings `dst` (below DEST, as the previous copy left it) to the bytes of server file
    /// `src`. From a server on this machine (`compare_by_content`) the file streams whole and
    /// is compared with the copy as it comes (reading costs less than hashing there); from
    /// elsewhere only the blocks whose hashes differ travel. A file that cannot be refreshed
    /// in place (see [`Dest::open_existing`]) is replaced by a whole copy.
    pub fn refresh(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
    ) -> Result<Outcome, TransferError> {
        if self.compare_by_content {
            return self.refresh_streamed(s, src, dest, dst);
        }
        let Some(mut file) = dest.open_existing(dst)? else {
            dest.remove_file(dst)?;
            return self.fetch(s, src, dest, dst, None);
        };
        let io =
            |e: std::io::Error| TransferError::Dest(DestError::Io { path: dest.root().join(dst.to_path()), source: e });
        let mut sums = self.block_sums(src);
        let len = file.metadata().map_err(io)?.len();
        let large = len >= crate::compare_pieces::PIECES_FROM;
        let compared = if large && matches!(Source::of(src), Source::Path(_)) {
            self.changed_in_pieces(s, src, (&file, &dest.root().join(dst.to_path())), sums)
        } else {
            let how = (sums.is_some(), self.fingerprint(src, len));
            let hashes = scan(&file, (0, u64::MAX), how, |b| sums.as_mut().map_or((), |s| s.local(b))).map_err(io)?;
            self.changed_blocks(s, src, &file, &hashes, sums)
        };
        let (answer, sums) = compared.map_err(|e| match e {
            TransferError::Pg(p) => TransferError::Pg(s.explain(p)),
            other => other,
        })?;
        let Answer::Refreshed { size, mtime, wire } = answer else {
            drop(file);
            dest.remove_file(dst)?;
            return Ok(Outcome::Vanished);
        };
        let (checksum, pages) = match sums.and_then(|s| s.finish(size)) {
            // Composed from the blocks as they passed: no second read.
            Some((crc, pages)) => {
                file.set_len(size).map_err(io)?;
                if self.sync {
                    file.sync_all().map_err(io)?;
                }
                ((self.algorithm == crate::digest::Algorithm::Crc32c).then_some(crc), pages)
            }
            None => self.settle(src, &mut file, size).map_err(io)?,
        };
        if !self.sync && wire > 0 {
            // What was written goes to disk now, not all at the end (as for a new file).
            dest.start_writeback(&file, size);
        }
        let verified_pages = pages.as_ref().map_or(0, |p| p.verified);
        let bad_pages = match pages {
            Some(p) if !p.suspects.is_empty() => self.reread(s, src, &p)?,
            _ => Vec::new(),
        };
        Ok(Outcome::Copied(Copied { size, checksum, mtime, bad_pages, wire, verified_pages }))
    }

    /// What the blocks of the copy of `src` (`len` bytes) are compared by (see
    /// [`Fingerprint::choose`]).
    pub(crate) fn fingerprint(&self, src: &SafePath, len: u64) -> Fingerprint {
        Fingerprint::choose(&src.as_bytes(), len, self.header_upto, self.verify)
    }

    /// The per-block sums that spare the second read of a refreshed file: for CRC-32C
    /// manifests (CRCs combine) or none.
    pub(crate) fn block_sums(&self, src: &SafePath) -> Option<crate::block_sums::BlockSums> {
        use crate::digest::Algorithm;
        if !matches!(self.algorithm, Algorithm::Crc32c | Algorithm::None) {
            return None;
        }
        let verify = self.verify.and_then(|v| {
            checksummed_segment(&String::from_utf8_lossy(&src.as_bytes()), v.rules).map(|segno| (segno, v))
        });
        Some(crate::block_sums::BlockSums::new(verify))
    }

    /// Runs the comparison and writes each differing block into `file` at its place (and
    /// into `sums`).
    fn changed_blocks(
        &self,
        s: &mut Session,
        src: &SafePath,
        file: &File,
        hashes: &[u8],
        sums: Option<crate::block_sums::BlockSums>,
    ) -> Result<(Answer, Option<crate::block_sums::BlockSums>), TransferError> {
        let path = src.display();
        let what = format!("could not compare \"{path}\"");
        let read = READ as i64;
        let source = Source::of(src);
        // With zlib, the differing blocks are only located here, and read compressed after.
        let zlib = self.method.level();
        let sql = match (&source, zlib) {
            (Source::Path(_), None) => sql::COMPARE_BLOCKS,
            (Source::Path(_), Some(_)) => sql::COMPARE_OFFSETS,
            (Source::ByName(_), None) => sql::COMPARE_BLOCKS_BY_NAME,
            (Source::ByName(_), Some(_)) => sql::COMPARE_OFFSETS_BY_NAME,
        };
        let mut rows = match &source {
            Source::Path(p) => s.stream(sql, &[p, &read, &hashes], &what)?,
            Source::ByName(parts) => s.stream(sql, &[parts, &read, &hashes], &what)?,
        };
        let mut blocks = Blocks::new(path);
        blocks.sums = sums;
        blocks.deferred = zlib.map(|_| Vec::new());
        while let Some(row) = rows.next().map_err(|e| pg_err(&what, e))? {
            if let Step::Vanished = blocks.row(self, file, &row, 0, &what)? {
                return Ok((Answer::Vanished, None));
            }
        }
        drop(rows);
        if let (Some(level), Some((size, _))) = (zlib, blocks.head) {
            if let Step::Vanished = self.deferred_blocks(s, src, file, &mut blocks, size, level)? {
                return Ok((Answer::Vanished, None));
            }
        }
        match blocks.refreshed() {
            Some(answer) => Ok((answer, blocks.sums)),
            // Looked up by name: not there.
            None if matches!(source, Source::ByName(_)) => Ok((Answer::Vanished, None)),
            None => Err(TransferError::Data { path: blocks.path, message: "the server returned no rows".into() }),
        }
    }

    /// The refreshed file cut (or extended) to the server's `size`, then its manifest
    /// checksum and, for a relation file, its pages checked; synced with `--sync`.
    pub(crate) fn settle(
        &self,
        src: &SafePath,
        file: &mut File,
        size: u64,
    ) -> std::io::Result<(Option<crate::digest::Checksum>, Option<Pages>)> {
        file.set_len(size)?;
        let got = self.read_back(src, file, size)?;
        if self.sync {
            file.sync_all()?;
        }
        Ok(got)
    }

    /// The refreshed file's manifest checksum and, for a relation file, its pages checked.
    fn read_back(
        &self,
        src: &SafePath,
        file: &mut File,
        size: u64,
    ) -> std::io::Result<(Option<crate::digest::Checksum>, Option<Pages>)> {
        self.read_back_span(src, file, 0, size)
    }

    /// [`Transfer::read_back`] of bytes `start..end` (a piece: `start` at a block).
    pub(crate) fn read_back_span(
        &self,
        src: &SafePath,
        file: &mut File,
        start: u64,
        end: u64,
    ) -> std::io::Result<(Option<crate::digest::Checksum>, Option<Pages>)> {
        let mut digest = Digest::new(self.algorithm);
        let mut pages = self.verify.and_then(|v| {
            checksummed_segment(&String::from_utf8_lossy(&src.as_bytes()), v.rules)
                .map(|segno| Pages::new(segno, start, v))
        });
        file.seek(SeekFrom::Start(start))?;
        let mut buf = vec![0u8; READ];
        let mut left = end.saturating_sub(start);
        while left > 0 {
            let n = read_full(file, &mut buf[..READ.min(left as usize)])?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file is shorter than it was made",
                ));
            }
            digest.update(&buf[..n]);
            if let Some(p) = pages.as_mut() {
                p.feed(&buf[..n]);
            }
            left -= n as u64;
        }
        Ok((digest.finish(), pages))
    }
}

/// What a row of the comparison said.
pub(crate) enum Step {
    /// A block written, or nothing to write: go on.
    More,
    /// The file is not on the server (any more).
    Vanished,
}

/// One file being brought to the server's bytes from the comparison's rows (see
/// `sql::COMPARE_BLOCKS`), in file order.
pub(crate) struct Blocks {
    pub(crate) path: String,
    /// The size and mtime of the first row.
    pub(crate) head: Option<(u64, i64)>,
    /// Where the next block may start.
    next: u64,
    /// Each block written, summed (see `block_sums`).
    pub(crate) sums: Option<crate::block_sums::BlockSums>,
    /// With zlib: the offsets of the differing blocks, to be read through the helper (see
    /// `compare_zlib`); `None`: the rows carry the blocks.
    pub(crate) deferred: Option<Vec<u64>>,
    /// Bytes that came over the network.
    pub(crate) wire: u64,
    /// Where the request starts in the file (a piece's offset): progress counts from here.
    pub(crate) base: u64,
}

impl Blocks {
    pub(crate) fn new(path: String) -> Blocks {
        Blocks { path, head: None, next: 0, wire: 0, sums: None, deferred: None, base: 0 }
    }

    /// Applies one row whose columns (size, mtime, offset, block) start at `at`: a differing
    /// block is written at its place in `file`.
    pub(crate) fn row(
        &mut self,
        t: &Transfer,
        file: &File,
        row: &postgres::Row,
        at: usize,
        what: &str,
    ) -> Result<Step, TransferError> {
        let Some(size) = row.try_get::<_, Option<i64>>(at).map_err(|e| pg_err(what, e))? else {
            return Ok(Step::Vanished);
        };
        let mtime = row.try_get::<_, Option<i64>>(at + 1).map_err(|e| pg_err(what, e))?.unwrap_or(0);
        let size = size.max(0) as u64;
        self.head.get_or_insert((size, mtime));
        let Some(off) = row.try_get::<_, Option<i64>>(at + 2).map_err(|e| pg_err(what, e))? else {
            return Ok(Step::More);
        };
        // The file vanished while it was read.
        let Some(block) = row.try_get::<_, Option<&[u8]>>(at + 3).map_err(|e| pg_err(what, e))? else {
            return Ok(Step::Vanished);
        };
        let bad = |message: String| TransferError::Data { path: self.path.clone(), message };
        let off = u64::try_from(off).map_err(|_| bad(format!("negative offset {off} from the server")))?;
        let cut = row.try_get::<_, Option<i64>>(at + 4).map_err(|e| pg_err(what, e))?;
        if let (Some(later), true, None) = (self.deferred.as_mut(), block.is_empty(), cut) {
            // Located only: read through the helper once the comparison is done.
            if off < self.next || off % BLOCK as u64 != 0 || off >= size {
                return Err(bad(format!("unexpected block at offset {off} from the server")));
            }
            later.push(off);
            self.next = off + BLOCK as u64;
            if let Some(report) = t.progress {
                report(self.next.saturating_sub(self.base));
            }
            return Ok(Step::More);
        }
        if off < self.next || off % BLOCK as u64 != 0 || block.len() > BLOCK || off + block.len() as u64 > size {
            return Err(bad(format!("unexpected block at offset {off} ({} bytes) from the server", block.len())));
        }
        if let Some(th) = &t.throttle {
            th.pace(block.len() as u64);
        }
        file.write_all_at(block, off)
            .map_err(|e| TransferError::Dest(DestError::Io { path: self.path.clone().into(), source: e }))?;
        if let Some(s) = self.sums.as_mut() {
            s.changed(off, block);
        }
        self.wire += block.len() as u64;
        self.next = off + BLOCK as u64;
        if let Some(cut) = cut {
            self.zero_fill(file, cut.max(0) as u64, size)?;
        }
        if let Some(report) = t.progress {
            report(self.next.saturating_sub(self.base));
        }
        Ok(Step::More)
    }

    /// The server's read ended short at `cut` (the file shrank while it was read): the rest of
    /// that read is zeros, as in a full backup, not the copy's old bytes. The blocks' sums no
    /// longer make up the file: it is read back.
    fn zero_fill(&mut self, file: &File, cut: u64, size: u64) -> Result<(), TransferError> {
        let end = ((cut / READ as u64 + 1) * READ as u64).min(size);
        let zeros = [0u8; BLOCK];
        let mut at = cut;
        while at < end {
            let n = (end - at).min(BLOCK as u64) as usize;
            file.write_all_at(&zeros[..n], at)
                .map_err(|e| TransferError::Dest(DestError::Io { path: self.path.clone().into(), source: e }))?;
            at += n as u64;
        }
        self.sums = None;
        self.next = self.next.max(end);
        Ok(())
    }

    /// What the rows said, once they are all in (`None`: there were none).
    pub(crate) fn refreshed(&self) -> Option<Answer> {
        self.head.map(|(size, mtime)| Answer::Refreshed { size, mtime, wire: self.wire })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;
    use std::io::Write;

    /// Only differing blocks are written (the mtime of an unchanged copy stays), the copy is
    /// cut or extended to the server's size, and the result is the server's bytes.
    #[test]
    fn in_place_writes_only_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let old: Vec<u8> = (0..5 * BLOCK + 10).map(|i| (i % 253) as u8).collect();
        let run = |server: &[u8], chunk: usize| {
            std::fs::write(&p, &old).unwrap();
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
            let mut w = InPlace::new(f, p.clone());
            server.chunks(chunk).for_each(|c| w.write(c).unwrap());
            assert_eq!(w.finish(false).unwrap(), server.len() as u64);
            assert_eq!(std::fs::read(&p).unwrap(), server);
        };
        let mut changed = old.clone();
        changed[2 * BLOCK + 7] ^= 1;
        for chunk in [BLOCK, 3 * BLOCK, 1000, 128 << 10] {
            run(&old, chunk);
            run(&changed, chunk);
            run(&old[..BLOCK + 3], chunk);
            run(&[old.clone(), vec![9u8; 3 * BLOCK]].concat(), chunk);
            run(&[], chunk);
        }
        // Nothing written when nothing differs: the file's blocks are not rewritten.
        std::fs::write(&p, &old).unwrap();
        let ro = std::fs::File::open(&p).unwrap();
        let mut w = InPlace::new(ro, p.clone());
        old.chunks(BLOCK).for_each(|c| w.write(c).unwrap());
        let mut w2 = InPlace::new(std::fs::File::open(&p).unwrap(), p.clone());
        assert!(w2.write(&changed[..3 * BLOCK]).is_err(), "a differing block is written (read-only: fails)");
    }

    /// A read cut short at `cut`: the rest of that read (to the next read boundary, or the
    /// size) becomes zeros, nothing after it changes, and the sums are dropped.
    #[test]
    fn a_short_read_is_zero_filled_to_the_end_of_that_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; READ + 3 * BLOCK]).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut b = Blocks::new("f".into());
        b.sums = Some(crate::block_sums::BlockSums::new(None));
        b.zero_fill(&f, 5000, (READ + 3 * BLOCK) as u64).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert!(got[..5000].iter().all(|&x| x == 7));
        assert!(got[5000..READ].iter().all(|&x| x == 0));
        assert!(got[READ..].iter().all(|&x| x == 7), "the next read is not touched");
        assert!(b.sums.is_none());
        // In the last read: to the size.
        b.zero_fill(&f, (READ + BLOCK) as u64, (READ + 2 * BLOCK) as u64).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert!(got[READ..READ + BLOCK].iter().all(|&x| x == 7));
        assert!(got[READ + BLOCK..READ + 2 * BLOCK].iter().all(|&x| x == 0));
        assert!(got[READ + 2 * BLOCK..].iter().all(|&x| x == 7));
    }

    #[test]
    fn one_hash_per_block_the_last_one_short() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(READ + 3 * BLOCK + 100)).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&p).unwrap().write_all(&data).unwrap();
        let mut f = File::open(&p).unwrap();
        let h = block_hashes(&mut f, Fingerprint::Sha256).unwrap();
        assert_eq!(h.len(), (READ / BLOCK + 4) * HASH);
        assert_eq!(&h[..HASH], sha2::Sha256::digest(&data[..BLOCK]).as_slice());
        let last = &data[READ + 3 * BLOCK..];
        assert_eq!(&h[h.len() - HASH..], sha2::Sha256::digest(last).as_slice());
        // An empty file has no blocks.
        std::fs::File::create(&p).unwrap();
        assert!(block_hashes(&mut File::open(&p).unwrap(), Fingerprint::Sha256).unwrap().is_empty());
    }
}
