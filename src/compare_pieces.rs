//! `--delta` of a large file over the network, in pieces: the server compares one piece
//! while the worker reads and hashes the next pieces of its copy (one or two ahead), so the two hashings overlap
//! instead of taking turns (one large file otherwise keeps one core idle for its whole
//! comparison: measured, docs/benchmarks.md).

use std::fs::File;

use postgres::fallible_iterator::FallibleIterator;

use crate::block_sums::BlockSums;
use crate::compare::{Answer, Blocks, Step, BLOCK, READ};
use crate::dest::{Dest, DestError, SafePath};
use crate::fingerprint::Fingerprint;
use crate::pg::{sql, Session};
use crate::transfer::{pg_err, Copied, Outcome, Transfer, TransferError};

/// Copies at least this large are compared in pieces.
pub const PIECES_FROM: u64 = 64 << 20;
/// One piece (a multiple of [`READ`]): small, so that little of the copy is read before the
/// server has work, and little is left for the server when the copy's reading ends.
const PIECE: u64 = 8 << 20;
/// Pieces hashed ahead of the one the server compares.
pub(crate) const AHEAD: usize = 3;

/// One piece of the copy, hashed: its bounds, the SHA-256 of each of its blocks (as far as
/// the copy goes) and their sums.
pub(crate) struct Hashed {
    start: u64,
    end: u64,
    hashes: Vec<u8>,
    sums: Option<BlockSums>,
    /// The copy held nothing here (see [`holds_nothing`]).
    empty: bool,
}

/// The pieces of a file of `size` bytes: (start, end).
fn pieces(size: u64) -> impl Iterator<Item = (u64, u64)> {
    pieces_of(0, size)
}

/// The pieces of bytes `start..end` of a file (`start` where a piece would start).
fn pieces_of(start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> {
    (start..end).step_by(PIECE as usize).map(move |a| (a, (a + PIECE).min(end)))
}

/// True when the copy holds no data in `start..end`: a hole (the pieces an interrupted backup
/// never wrote) or past its end. Such a piece is not read: it reads as zeros, and with no
/// hashes for it the server sends all its blocks without hashing them, as a backup would.
pub(crate) fn holds_nothing(file: &File, start: u64, end: u64) -> bool {
    use std::os::fd::AsFd;
    let Ok(at) = i64::try_from(start) else { return false };
    match nix::unistd::lseek(file.as_fd(), at, nix::unistd::Whence::SeekData) {
        Ok(data) => data as u64 >= end,
        Err(nix::errno::Errno::ENXIO) => true,
        Err(_) => false,
    }
}

/// A piece of `start..end` from `at`, not yet read: its sums taken from `template`.
fn unread(at: u64, end: u64, template: Option<&BlockSums>, empty: bool) -> Hashed {
    let sums = template.map(|t| t.piece(at / BLOCK as u64));
    Hashed { start: at, end: (at + PIECE).min(end), hashes: Vec::new(), sums, empty }
}

/// The pieces of the copy's bytes `start..end`, in order, each handed to `send` (which says
/// whether to go on): a run of pieces the copy holds nothing of (see [`holds_nothing`]) as one
/// piece, not read; a run of pieces with data hashed as one read, so that the copy's reading
/// ahead goes on from piece to piece (a reader started for each piece waits for the device
/// at each start). An error ends it, after it was sent.
pub(crate) fn hash_pieces(
    file: &File,
    (start, end): (u64, u64),
    template: Option<&BlockSums>,
    fp: Fingerprint,
    send: &mut impl FnMut(std::io::Result<Hashed>) -> bool,
) {
    let mut at = start;
    while at < end {
        let next = |a: u64| (a + PIECE).min(end);
        let empty = holds_nothing(file, at, next(at));
        let mut to = next(at);
        while to < end && holds_nothing(file, to, next(to)) == empty {
            to = next(to);
        }
        let going = if empty {
            send(Ok(Hashed { end: to, ..unread(at, end, template, true) }))
        } else {
            hash_run(file, (at, to), template, fp, send)
        };
        if !going {
            return;
        }
        at = to;
    }
}

/// [`hash_pieces`] of a run the copy holds data in: read once, cut into pieces as the blocks
/// pass (each piece's blocks as far as the copy goes). `false`: stop.
fn hash_run(
    file: &File,
    (start, end): (u64, u64),
    template: Option<&BlockSums>,
    fp: Fingerprint,
    send: &mut impl FnMut(std::io::Result<Hashed>) -> bool,
) -> bool {
    // Without sums the piece is read back afterwards (`read_back_span`): through the page cache.
    let mut reader = crate::copy_reader::CopyReader::new(file, (start, end), READ, template.is_some());
    let mut cur = unread(start, end, template, false);
    let mut index = start / BLOCK as u64;
    loop {
        let data = match reader.next_chunk() {
            Ok(d) => d,
            Err(e) => {
                send(Err(e));
                return false;
            }
        };
        if data.is_empty() {
            break;
        }
        for block in data.chunks(BLOCK) {
            while index * BLOCK as u64 >= cur.end {
                let next = unread(cur.end, end, template, false);
                if !send(Ok(std::mem::replace(&mut cur, next))) {
                    return false;
                }
            }
            fp.push(index, block, &mut cur.hashes);
            if let Some(s) = cur.sums.as_mut() {
                s.local(block);
            }
            index += 1;
        }
    }
    // The rest: past the copy's end, each piece with what the copy had of it.
    loop {
        let last = cur.end >= end;
        let next = unread(cur.end, end, template, false);
        if !send(Ok(std::mem::replace(&mut cur, next))) {
            return false;
        }
        if last {
            return true;
        }
    }
}

/// One piece alone: [`hash_pieces`] of `start..end` (at most a piece).
#[cfg(test)]
fn hash_piece(
    file: &File,
    (start, end): (u64, u64),
    template: Option<&BlockSums>,
    fp: Fingerprint,
) -> std::io::Result<Hashed> {
    let mut got = Vec::new();
    hash_pieces(file, (start, end), template, fp, &mut |h| {
        got.push(h);
        true
    });
    assert_eq!(got.len(), 1, "one piece");
    got.pop().unwrap()
}

impl Transfer {
    /// [`Transfer::changed_blocks`] of a large file, piece by piece (see the module): the
    /// size is stat'd first and holds for every piece, as for a whole file.
    pub(crate) fn changed_in_pieces(
        &self,
        s: &mut Session,
        src: &SafePath,
        (file, local): (&File, &std::path::Path),
        sums: Option<BlockSums>,
    ) -> Result<(Answer, Option<BlockSums>), TransferError> {
        let path = src.display();
        let what = format!("could not compare \"{path}\"");
        let raw = src.as_bytes();
        let Some((size, mtime)) = sql::file_stat(s, &raw, &what)? else { return Ok((Answer::Vanished, None)) };
        log::info!("comparing \"{path}\" ({} MB) in {} pieces", size >> 20, pieces(size).count());
        let template = sums.as_ref().map(|t| t.piece(0));
        let mut blocks = Blocks::new(path.clone());
        blocks.head = Some((size, mtime));
        blocks.sums = sums;
        if let Step::Vanished = self.compare_span(s, src, (file, local), &mut blocks, (0, size), template, &what)? {
            return Ok((Answer::Vanished, None));
        }
        let answer = blocks
            .refreshed()
            .ok_or_else(|| TransferError::Data { path: path.clone(), message: "no size for the file".into() })?;
        Ok((answer, blocks.sums.take()))
    }

    /// Bytes `start..end` of the file compared piece by piece, the copy's next pieces hashed
    /// (by a thread of its own) while the server compares one; each piece's sums appended to
    /// `blocks.sums` (from `template`, the file's).
    #[allow(clippy::too_many_arguments)]
    fn compare_span(
        &self,
        s: &mut Session,
        src: &SafePath,
        (file, local): (&File, &std::path::Path),
        blocks: &mut Blocks,
        (start, end): (u64, u64),
        template: Option<BlockSums>,
        what: &str,
    ) -> Result<Step, TransferError> {
        let zlib = self.method.level();
        let sql = if zlib.is_some() { sql::COMPARE_RANGE_OFFSETS } else { sql::COMPARE_RANGE };
        let io = |e: std::io::Error| TransferError::Dest(DestError::Io { path: local.to_path_buf(), source: e });
        // A file compared in pieces is far larger than one page.
        let fp = self.fingerprint(src, u64::MAX);
        if matches!(fp, Fingerprint::Header { .. }) {
            log::debug!("\"{}\" bytes {start}..{end}: compared by page header", src.display());
        }
        let ahead = self.lookahead.as_ref().and_then(|la| Some((la, la.take(&src.as_bytes(), (start, end), file)?)));
        std::thread::scope(|scope| {
            let rx = match ahead {
                Some((la, (rx, read))) => {
                    // Its reading is over already: the copy's reading goes on with the next.
                    if read {
                        self.begin_ahead(la, la.after_serving());
                    }
                    rx
                }
                None => {
                    let (tx, rx) = crossbeam_channel::bounded::<std::io::Result<Hashed>>(AHEAD);
                    // The copy's reading goes on with the next request's (piece_ahead).
                    let then = self.lookahead.clone().map(|la| (self.clone(), la.clone(), la.after_serving()));
                    scope.spawn(move || {
                        crate::piece_ahead::hash_then_ahead(file, (start, end), template.as_ref(), fp, tx, None, then)
                    });
                    rx
                }
            };
            let (mut empty, mut reached) = (0, start);
            for hashed in rx {
                let mut h = hashed.map_err(io)?;
                reached = h.end;
                empty += usize::from(h.empty);
                if let (Some(all), Some(p)) = (blocks.sums.as_mut(), h.sums.take()) {
                    if !all.append(p) {
                        blocks.sums = None;
                    }
                }
                if let Step::Vanished = self.compare_piece(s, src, file, blocks, sql, &h, zlib, what)? {
                    return Ok(Step::Vanished);
                }
                if let Some(report) = self.progress {
                    report(h.end - start);
                }
            }
            if reached < end {
                // The thread that read the copy ended without a word (it panicked).
                let message = format!("the copy's reading ended at byte {reached} of {start}..{end}");
                return Err(TransferError::Data { path: blocks.path.clone(), message });
            }
            if empty > 0 {
                log::info!(
                    "\"{}\": {empty} of its pieces held nothing in the copy (holes, or past its end), fetched without hashing",
                    blocks.path
                );
            }
            Ok(Step::More)
        })
    }

    /// `--delta` by block hashes, bytes `off..off + len` of a large file (one piece of it, as
    /// the master dealt it: other workers compare the others in the same file at once), in
    /// the copy in DEST itself. Nothing of the file outside the piece is touched; the master
    /// cuts it to its listed size once every piece is in. The server's bytes past its size now
    /// (it shrank) are zeros, as in a full backup. The piece's checksum is composed from its
    /// blocks (or the piece read back), for the master to combine.
    pub fn refresh_piece(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
        (off, len): (u64, u64),
    ) -> Result<Outcome, TransferError> {
        let path = src.display();
        let what = format!("could not compare \"{path}\"");
        let local = dest.root().join(dst.to_path());
        if !matches!(self.algorithm, crate::digest::Algorithm::Crc32c | crate::digest::Algorithm::None) {
            // The master never asks (work_queue): the pieces' checksums must combine.
            let message = "a file is compared in pieces only with CRC-32C or no manifest checksums".into();
            return Err(TransferError::Data { path, message });
        }
        // Reconcile kept it as a regular file with one link, and nothing removes it until
        // every piece is in: gone means something outside pgbb changed DEST meanwhile.
        let Some(mut file) = dest.open_existing(dst)? else {
            let message = "its copy in DEST, compared in pieces, is gone or was replaced during the run".into();
            return Err(TransferError::Data { path, message });
        };
        let explain = |s: &mut Session, e: TransferError| match e {
            TransferError::Pg(p) => TransferError::Pg(s.explain(p)),
            other => other,
        };
        let end = off + len;
        let stat = sql::file_stat(s, &src.as_bytes(), &what).map_err(|e| explain(s, e.into()))?;
        let Some((_, mtime)) = stat else { return Ok(Outcome::Vanished) };
        let sums = self.block_sums(src);
        let template = sums.as_ref().map(|t| t.piece(0));
        let mut blocks = Blocks::new(path);
        // The size the rows report, and past which nothing is read or written: the piece's end.
        blocks.head = Some((end, mtime));
        blocks.base = off;
        blocks.sums = sums.map(|t| t.piece(off / BLOCK as u64));
        let step = self.compare_span(s, src, (&file, &local), &mut blocks, (off, end), template, &what);
        if let Step::Vanished = step.map_err(|e| explain(s, e))? {
            return Ok(Outcome::Vanished);
        }
        let io = |e: std::io::Error| TransferError::Dest(DestError::Io { path: local.clone(), source: e });
        let (checksum, pages) = match blocks.sums.as_ref().and_then(|b| b.finish_span(off, end)) {
            Some((crc, pages)) => ((self.algorithm == crate::digest::Algorithm::Crc32c).then_some(crc), pages),
            None => self.read_back_span(src, &mut file, off, end).map_err(io)?,
        };
        if self.sync {
            file.sync_data().map_err(io)?;
        } else if blocks.wire > 0 {
            dest.start_writeback_span(&file, off, len);
        }
        let verified_pages = pages.as_ref().map_or(0, |p| p.verified);
        let bad_pages = match pages {
            Some(p) if !p.suspects.is_empty() => self.reread(s, src, &p)?,
            _ => Vec::new(),
        };
        Ok(Outcome::Copied(Copied { size: len, checksum, mtime, bad_pages, wire: blocks.wire, verified_pages }))
    }

    /// One piece: the server's differing blocks written into `file` (read through the
    /// helper afterwards with zlib).
    #[allow(clippy::too_many_arguments)]
    fn compare_piece(
        &self,
        s: &mut Session,
        src: &SafePath,
        file: &File,
        blocks: &mut Blocks,
        sql: &str,
        h: &Hashed,
        zlib: Option<u32>,
        what: &str,
    ) -> Result<Step, TransferError> {
        let raw = src.as_bytes();
        let (read, size) = (READ as i64, blocks.head.map_or(0, |(z, _)| z) as i64);
        if let (Some(level), true) = (zlib, h.empty) {
            // The copy holds nothing here: every block travels, so there is nothing to compare;
            // they are read through the helper at once (a file gone since reads as vanished).
            let end = h.end.min(size as u64);
            blocks.deferred = Some((h.start..end).step_by(BLOCK).collect());
            return self.deferred_blocks(s, src, file, blocks, size as u64, level);
        }
        if h.empty {
            // The same, plain: read as a full backup reads it, in chunks, not block by block.
            return self.fetch_span(s, src, file, blocks, (h.start, h.end.min(size as u64)), what);
        }
        let (start, end) = (h.start as i64, h.end as i64);
        blocks.deferred = zlib.map(|_| Vec::new());
        let mut rows = s.stream(sql, &[&raw, &read, &h.hashes, &start, &end, &size], what)?;
        while let Some(row) = rows.next().map_err(|e| pg_err(what, e))? {
            if let Step::Vanished = blocks.row(self, file, &row, 0, what)? {
                return Ok(Step::Vanished);
            }
        }
        drop(rows);
        match zlib {
            Some(level) => self.deferred_blocks(s, src, file, blocks, size as u64, level),
            None => Ok(Step::More),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn pieces_cover_the_file_once() {
        assert_eq!(pieces(0).count(), 0);
        let p: Vec<_> = pieces(2 * PIECE + 5).collect();
        assert_eq!(p, [(0, PIECE), (PIECE, 2 * PIECE), (2 * PIECE, 2 * PIECE + 5)]);
        assert_eq!(PIECE % READ as u64, 0, "a piece starts where a read does");
    }

    /// A piece's hashes are the whole-file scan's for the same blocks, and stop where the
    /// copy ends (the blocks past it differ by having no hash).
    #[test]
    fn a_piece_hashes_as_the_whole_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..3 * BLOCK + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let mut f = File::open(&p).unwrap();
        let whole = crate::compare::block_hashes(&mut f, Fingerprint::Sha256).unwrap();
        let h = hash_piece(&f, (BLOCK as u64, PIECE), None, Fingerprint::Sha256).unwrap();
        assert_eq!(h.hashes, whole[32..]);
        let h = hash_piece(&f, (PIECE, 2 * PIECE), None, Fingerprint::Sha256).unwrap();
        assert!(h.hashes.is_empty() && h.empty, "past the copy's end: nothing");
    }

    /// Pieces read in one run are cut where pieces read alone are, with the same hashes and
    /// sums; a run of pieces the copy holds nothing of comes as one piece, unread.
    #[test]
    fn a_run_of_pieces_hashes_as_its_pieces_alone_do() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&p).unwrap();
        let data: Vec<u8> = (0..2 * PIECE as usize + 3 * BLOCK).map(|i| (i % 253) as u8).collect();
        f.write_all_at(&data, 0).unwrap();
        // Then a hole of two pieces, then data again to a piece and a half past it.
        f.write_all_at(&data[..PIECE as usize + BLOCK], 5 * PIECE).unwrap();
        let end = 7 * PIECE;
        let sums = BlockSums::new(None);
        let mut got = Vec::new();
        hash_pieces(&f, (0, end), Some(&sums), Fingerprint::Sha256, &mut |h| {
            got.push(h.unwrap());
            true
        });
        let bounds: Vec<(u64, u64, bool)> = got.iter().map(|h| (h.start, h.end, h.empty)).collect();
        let expected = [
            (0, PIECE, false),
            (PIECE, 2 * PIECE, false),
            (2 * PIECE, 3 * PIECE, false),
            (3 * PIECE, 5 * PIECE, true),
            (5 * PIECE, 6 * PIECE, false),
            (6 * PIECE, 7 * PIECE, false),
        ];
        assert_eq!(bounds, expected);
        for h in got.iter().filter(|h| !h.empty) {
            let alone = hash_piece(&f, (h.start, h.end), Some(&sums), Fingerprint::Sha256).unwrap();
            assert_eq!(h.hashes, alone.hashes, "piece at {}", h.start);
            assert!(!h.hashes.is_empty());
        }
        assert_eq!(got[2].hashes.len(), PIECE as usize / BLOCK * 32, "holes inside a piece read as zeros");
        assert_eq!(got[5].hashes.len(), 32, "to the copy's end");
        // A receiver that stops is not sent more.
        let mut n = 0;
        hash_pieces(&f, (0, end), None, Fingerprint::Sha256, &mut |_| {
            n += 1;
            false
        });
        assert_eq!(n, 1);
    }

    /// The pieces an interrupted backup never wrote are holes: not read, no hashes (the server
    /// sends those blocks unhashed); a piece with data around a hole is hashed, zeros and all.
    #[test]
    fn a_hole_in_the_copy_is_not_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&p).unwrap();
        f.set_len(4 * PIECE).unwrap();
        f.write_all_at(&[7u8; BLOCK], PIECE).unwrap();
        f.write_all_at(&[7u8; BLOCK], 3 * PIECE - BLOCK as u64).unwrap();
        f.sync_all().unwrap();
        let sums = BlockSums::new(None);
        let h = hash_piece(&f, (0, PIECE), Some(&sums), Fingerprint::Sha256).unwrap();
        assert!(h.hashes.is_empty() && h.empty, "a hole");
        let h = hash_piece(&f, (PIECE, 2 * PIECE), Some(&sums), Fingerprint::Sha256).unwrap();
        assert_eq!((h.hashes.len() as u64, h.empty), (PIECE / BLOCK as u64 * 32, false), "data, then zeros");
        let h = hash_piece(&f, (2 * PIECE, 3 * PIECE), None, Fingerprint::Sha256).unwrap();
        assert!(!h.empty, "data at its end");
        let h = hash_piece(&f, (3 * PIECE, 4 * PIECE), None, Fingerprint::Sha256).unwrap();
        assert!(h.hashes.is_empty() && h.empty, "a hole up to the end");
    }
}
