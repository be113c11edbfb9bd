//! One `INCREMENTAL.*` file, written by a worker: core's header, then the listed blocks of the
//! relation segment, read from the server with one query (runs of blocks as ranges) and
//! page-verified as they pass.

use postgres::fallible_iterator::FallibleIterator;

use crate::checksum::BLCKSZ;
use crate::dest::{Dest, FileWriter, SafePath};
use crate::digest::Digest;
use crate::layout::checksummed_segment;
use crate::pg::{sql_incr, Session};
use crate::protocol::BlockList;
use crate::transfer::{pg_err, Copied, Outcome, Pages, Transfer, TransferError};
use crate::zlib_ranges::Ranges;

use super::format;

/// The byte ranges (offsets, lengths) that read `blocks` (ascending): runs of consecutive
/// blocks, each at most `max` bytes (at least one block).
pub fn ranges(blocks: &[u32], max: u64) -> (Vec<i64>, Vec<i64>) {
    let offsets: Vec<u64> = blocks.iter().map(|&b| u64::from(b) * BLCKSZ as u64).collect();
    crate::compare_zlib::ranges(&offsets, max, u64::MAX)
}

/// The part of an `INCREMENTAL.*` file one request writes: all of it, or the bytes
/// `off..off + len` of it (a piece of a large one; pieces start on block boundaries, as the
/// header is padded to a whole block). The header (when the part holds it), and the index and
/// number of the listed blocks it holds.
pub fn part(nblocks: usize, range: Option<(u64, u64)>) -> (bool, usize, usize) {
    let h = format::header_size(nblocks);
    let blk = BLCKSZ as u64;
    match range {
        None => (true, 0, nblocks),
        Some((off, len)) => {
            let (header, data_off, data_len) =
                if off == 0 { (true, 0, len.saturating_sub(h)) } else { (false, off - h.min(off), len) };
            let first = ((data_off / blk) as usize).min(nblocks);
            let count = ((data_len / blk) as usize).min(nblocks - first);
            (header, first, count)
        }
    }
}

/// What one request reads: the file's block list, which part of the file it writes, and the
/// byte ranges of the server file that hold its blocks.
struct Part<'a> {
    list: &'a BlockList,
    range: Option<(u64, u64)>,
    header: bool,
    blocks: &'a [u32],
    offs: &'a [i64],
    lens: &'a [i64],
}

/// The file as it is written: DEST, the manifest checksum, the page verifier.
pub(super) struct Out {
    pub(super) w: FileWriter,
    pub(super) digest: Digest,
    pub(super) pages: Option<Pages>,
}

impl Out {
    fn write(&mut self, data: &[u8]) -> Result<(), TransferError> {
        self.w.write(data)?;
        self.digest.update(data);
        Ok(())
    }

    /// One range's bytes as the server sent them, zero-filled to the `want` bytes asked (a
    /// file truncated while read), written a page at a time, each verified as block
    /// `blocks[*next]` (the next of the listed blocks).
    pub(super) fn range(
        &mut self,
        data: &[u8],
        want: usize,
        blocks: &[u32],
        next: &mut usize,
    ) -> Result<(), TransferError> {
        let mut buf = data[..data.len().min(want)].to_vec();
        buf.resize(want, 0);
        for page in buf.chunks_exact(BLCKSZ) {
            self.write(page)?;
            if let (Some(p), Some(&b)) = (self.pages.as_mut(), blocks.get(*next)) {
                p.block(page, b);
            }
            *next += 1;
        }
        Ok(())
    }
}

impl Transfer {
    /// Writes `dst` (an `INCREMENTAL.*` name below DEST) from the blocks `list` names of server
    /// file `src`. A block the server returns short (the file was truncated while it was read)
    /// is zero-filled, as core does; WAL replay repairs it.
    pub fn fetch_incremental(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
        list: &BlockList,
        range: Option<(u64, u64)>,
    ) -> Result<Outcome, TransferError> {
        let got = self.read_blocks(s, src, dest, dst, list, range).map_err(|e| match e {
            TransferError::Pg(p) => TransferError::Pg(s.explain(p)),
            other => other,
        })?;
        let Some((o, mtime, wire)) = got else { return Ok(Outcome::Vanished) };
        let size = o.w.finish(self.sync)?;
        let verified_pages = o.pages.as_ref().map_or(0, |p| p.verified);
        let bad_pages = match &o.pages {
            Some(p) if !p.suspects.is_empty() => self.reread(s, src, p)?,
            _ => Vec::new(),
        };
        let checksum = o.digest.finish();
        Ok(Outcome::Copied(Copied { size, checksum, mtime, bad_pages, wire, verified_pages }))
    }

    /// Streams the blocks into a new file: the file (not yet in place), the server's mtime
    /// and the bytes that came over the network; `None` when the file is gone.
    fn read_blocks(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
        list: &BlockList,
        range: Option<(u64, u64)>,
    ) -> Result<Option<(Out, i64, u64)>, TransferError> {
        let path = src.display();
        let what = format!("could not read the changed blocks of \"{path}\"");
        let (header, first, count) = part(list.blocks.len(), range);
        let blocks = &list.blocks[first..first + count];
        let (offs, lens) = ranges(blocks, self.chunk.max(BLCKSZ as u64));
        if let (Some(level), false) = (self.method.level(), blocks.is_empty()) {
            let part = Part { list, range, header, blocks, offs: &offs, lens: &lens };
            return self.read_blocks_zlib(s, src, dest, dst, &part, level);
        }
        let raw = src.as_bytes();
        let mut rows = s.stream(sql_incr::READ_BLOCKS, &[&raw, &offs, &lens], &what)?;
        let mut out: Option<Out> = None;
        let (mut mtime, mut got, mut wire, mut block) = (0i64, 0usize, 0u64, 0usize);
        while let Some(row) = rows.next().map_err(|e| pg_err(&what, e))? {
            if row.try_get::<_, Option<i64>>(0).map_err(|e| pg_err(&what, e))?.is_none() {
                return Ok(None);
            }
            let o = match out.as_mut() {
                Some(o) => o,
                None => {
                    mtime = row.try_get::<_, Option<i64>>(1).map_err(|e| pg_err(&what, e))?.unwrap_or(0);
                    out.insert(self.incremental_out(src, dest, dst, list, range, header)?)
                }
            };
            let Some(i) = row.try_get::<_, Option<i64>>(2).map_err(|e| pg_err(&what, e))? else { continue };
            if i != got as i64 + 1 || got >= lens.len() {
                let message = format!("the server answered range {i} where {} was due", got + 1);
                return Err(TransferError::Data { path, message });
            }
            // Removed while it was read.
            let Some(data) = row.try_get::<_, Option<&[u8]>>(3).map_err(|e| pg_err(&what, e))? else {
                return Ok(None);
            };
            let want = lens[got] as usize;
            let data = &data[..data.len().min(want)];
            wire += data.len() as u64;
            if let Some(t) = &self.throttle {
                t.pace(data.len() as u64);
            }
            o.range(data, want, blocks, &mut block)?;
            got += 1;
        }
        let Some(o) = out else {
            return Err(TransferError::Data { path, message: "the server returned no rows".into() });
        };
        if got != lens.len() {
            let message = format!("the server returned {got} of {} ranges", lens.len());
            return Err(TransferError::Data { path, message });
        }
        Ok(Some((o, mtime, wire)))
    }

    /// [`Transfer::read_blocks`] through the compression helper: each range compressed on
    /// the server, in order.
    fn read_blocks_zlib(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
        p: &Part<'_>,
        level: u32,
    ) -> Result<Option<(Out, i64, u64)>, TransferError> {
        let what = format!("could not read the changed blocks of \"{}\"", src.display());
        let mut out: Option<Out> = None;
        let mut block = 0usize;
        let got = self.zlib_ranges(s, src, (p.offs, p.lens), level, &what, |i, _, data| {
            let o = match out.as_mut() {
                Some(o) => o,
                None => out.insert(self.incremental_out(src, dest, dst, p.list, p.range, p.header)?),
            };
            o.range(data, p.lens[i] as usize, p.blocks, &mut block)
        })?;
        match (got, out) {
            (Ranges::Read { mtime, wire }, Some(o)) => Ok(Some((o, mtime, wire))),
            _ => Ok(None),
        }
    }

    /// The new file, its header written.
    pub(super) fn incremental_out(
        &self,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
        list: &BlockList,
        range: Option<(u64, u64)>,
        header: bool,
    ) -> Result<Out, TransferError> {
        let pages = self.verify.and_then(|v| {
            checksummed_segment(&String::from_utf8_lossy(&src.as_bytes()), v.rules).map(|segno| Pages::new(segno, 0, v))
        });
        let w = match range {
            Some((off, _)) => dest.create_piece(dst, off)?,
            None => dest.create_file(dst)?,
        };
        let mut o = Out { w, digest: Digest::new(self.algorithm), pages };
        if header {
            o.write(&format::header(&list.blocks, list.truncation))?;
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_become_ranges_cut_at_the_read_size() {
        let b = BLCKSZ as i64;
        let (o, l) = ranges(&[0, 1, 2, 5, 7, 8], 1 << 20);
        assert_eq!(o, vec![0, 5 * b, 7 * b]);
        assert_eq!(l, vec![3 * b, b, 2 * b]);
        let (o, l) = ranges(&[10, 11, 12, 13, 14], 2 * BLCKSZ as u64);
        assert_eq!(o, vec![10 * b, 12 * b, 14 * b]);
        assert_eq!(l, vec![2 * b, 2 * b, b]);
        assert_eq!(ranges(&[], 1 << 20), (vec![], vec![]));
        // A read size under a block still reads whole blocks.
        assert_eq!(ranges(&[3], 100).1, vec![b]);
    }

    #[test]
    fn pieces_hold_the_header_then_whole_blocks() {
        let blk = BLCKSZ as u64;
        // 3000 blocks: a header of 2 blocks (12 + 4 * 3000 bytes, padded).
        assert_eq!(part(3000, None), (true, 0, 3000));
        assert_eq!(part(3000, Some((0, 1000 * blk))), (true, 0, 998));
        assert_eq!(part(3000, Some((1000 * blk, 1000 * blk))), (false, 998, 1000));
        assert_eq!(part(3000, Some((2000 * blk, 1002 * blk))), (false, 1998, 1002));
        // Past the end: nothing.
        assert_eq!(part(3000, Some((4000 * blk, blk))), (false, 3000, 0));
    }
}
