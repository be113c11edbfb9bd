//! `--delta` with zlib: the differing blocks the comparison located (`sql::COMPARE_OFFSETS`)
//! read through the compression helper, runs of them as ranges in one query, and written at
//! their places.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::compare::{Blocks, Step, BLOCK};
use crate::dest::{DestError, SafePath};
use crate::pg::Session;
use crate::transfer::{Transfer, TransferError};
use crate::zlib_ranges::Ranges;

/// The byte ranges (offsets, lengths) that read the blocks at `offsets` (ascending, block
/// aligned) of a file of `size` bytes: runs of adjacent blocks, each at most `max` bytes, the
/// last cut at `size`.
pub fn ranges(offsets: &[u64], max: u64, size: u64) -> (Vec<i64>, Vec<i64>) {
    let per = (max / BLOCK as u64).max(1);
    let (mut offs, mut lens) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < offsets.len() {
        let start = offsets[i];
        let mut n = 1;
        while i + n < offsets.len() && (n as u64) < per && offsets[i + n] == start + n as u64 * BLOCK as u64 {
            n += 1;
        }
        let len = (n as u64 * BLOCK as u64).min(size.saturating_sub(start));
        offs.push(start as i64);
        lens.push(len as i64);
        i += n;
    }
    (offs, lens)
}

impl Transfer {
    /// Reads the blocks `blocks` located (its `deferred` offsets) compressed and writes them
    /// into `file`; a range that comes back short (the file shrank since it was compared) is
    /// zero-filled to its end, as a full backup zero-fills a file that shrank.
    pub(crate) fn deferred_blocks(
        &self,
        s: &mut Session,
        src: &SafePath,
        file: &File,
        blocks: &mut Blocks,
        size: u64,
        level: u32,
    ) -> Result<Step, TransferError> {
        let offsets = blocks.deferred.take().unwrap_or_default();
        if offsets.is_empty() {
            return Ok(Step::More);
        }
        let (offs, lens) = ranges(&offsets, self.chunk.max(BLOCK as u64), size);
        let what = format!("could not read the differing blocks of \"{}\"", src.display());
        let io = |path: &str, e| TransferError::Dest(DestError::Io { path: path.into(), source: e });
        let got = self.zlib_ranges(s, src, (&offs, &lens), level, &what, |i, _, data| {
            let (at, want) = (offs[i] as u64, lens[i] as usize);
            let mut buf = data[..data.len().min(want)].to_vec();
            if buf.len() < want {
                // Cut short: the blocks' sums no longer make up the file (it is read back).
                buf.resize(want, 0);
                blocks.sums = None;
            }
            file.write_all_at(&buf, at).map_err(|e| io(&blocks.path, e))?;
            if let Some(sums) = blocks.sums.as_mut() {
                for (k, block) in buf.chunks(BLOCK).enumerate() {
                    sums.changed(at + (k * BLOCK) as u64, block);
                }
            }
            Ok(())
        })?;
        match got {
            Ranges::Read { wire, .. } => {
                blocks.wire += wire;
                Ok(Step::More)
            }
            Ranges::Vanished => Ok(Step::Vanished),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_blocks_become_ranges_cut_at_the_read_size_and_the_file_size() {
        let b = BLOCK as u64;
        let offsets = [0, b, 2 * b, 5 * b, 6 * b, 9 * b];
        let (offs, lens) = ranges(&offsets, 2 * b, 9 * b + 100);
        assert_eq!(offs, [0, 2 * b as i64, 5 * b as i64, 9 * b as i64]);
        assert_eq!(lens, [2 * b as i64, b as i64, 2 * b as i64, 100]);
        assert_eq!(ranges(&[], b, 0), (vec![], vec![]));
    }
}
