//! `--delta` by block hashes, without reading the refreshed file a second time: each block's
//! CRC-32C and page check are taken when its bytes pass (the copy's blocks while they are
//! hashed, the server's as they are written), and the file's manifest checksum is the
//! blocks' CRCs combined. When that cannot be composed (SHA-2 manifests, or a file the server
//! cut short while it was read) the caller reads the file back instead.

use crate::checksum::{block_number, check_page, PageCheck, BLCKSZ};
use crate::digest::Checksum;
use crate::transfer::{PageVerify, Pages};

/// Appending a full block to a CRC-32C: `crc32c_combine(a, b, BLCKSZ)` is `shift(a) ^ b`, and
/// the shift is linear in `a`, so it is tabulated once (a byte at a time) from the combines of
/// the 32 single bits; combining each block directly costs tens of microseconds (measured:
/// more CPU than hashing the file).
fn shift(a: u32) -> u32 {
    static TABLE: std::sync::OnceLock<[[u32; 256]; 4]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let bit: Vec<u32> = (0..32).map(|k| crc32c::crc32c_combine(1 << k, 0, BLCKSZ)).collect();
        let mut t = [[0u32; 256]; 4];
        for (j, row) in t.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                *out = (0..8).filter(|i| v >> i & 1 == 1).fold(0, |acc, i| acc ^ bit[8 * j + i]);
            }
        }
        t
    });
    let [b0, b1, b2, b3] = a.to_le_bytes();
    t[0][b0 as usize] ^ t[1][b1 as usize] ^ t[2][b2 as usize] ^ t[3][b3 as usize]
}

/// What one block contributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sum {
    len: u32,
    crc: u32,
    /// The page check of a full block of a relation file (`None`: not checked).
    check: Option<Checked>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// Compared, and good.
    Good,
    /// Compared, and failed: re-read from the server.
    Bad,
    /// New or changed since the backup's start: not counted.
    Skipped,
}

/// The sums of one file's blocks: the copy's, then the server's over them.
pub struct BlockSums {
    /// Page verification for a relation file: its segment number and the settings.
    verify: Option<(u32, PageVerify)>,
    /// The index of the first block of `local` (0 but for a piece: see [`BlockSums::piece`]).
    base: u64,
    local: Vec<Sum>,
    changed: Vec<(u64, Sum)>,
}

impl BlockSums {
    /// For a file whose blocks are checked when `verify` is given (its segment number).
    pub fn new(verify: Option<(u32, PageVerify)>) -> BlockSums {
        BlockSums { verify, base: 0, local: Vec::new(), changed: Vec::new() }
    }

    /// The sums of the copy's blocks from block `first` on (a piece of the file, summed
    /// apart; see [`BlockSums::append`]).
    pub fn piece(&self, first: u64) -> BlockSums {
        BlockSums { verify: self.verify, base: first, local: Vec::new(), changed: Vec::new() }
    }

    /// The copy's blocks of `piece`, which starts where these end or after them; `false` (and
    /// nothing appended) if it starts before. Blocks in between (the copy held nothing there:
    /// a hole, or past its end) are the copy's none: each must come from the server, or the
    /// file does not compose.
    pub fn append(&mut self, piece: BlockSums) -> bool {
        if piece.local.is_empty() {
            return true;
        }
        let Some(gap) = piece.base.checked_sub(self.base + self.local.len() as u64) else { return false };
        let none = Sum { len: 0, crc: 0, check: None };
        self.local.extend(std::iter::repeat_n(none, gap as usize));
        self.local.extend(piece.local);
        true
    }

    fn sum(&self, index: u64, block: &[u8]) -> Sum {
        let check = self.verify.filter(|_| block.len() == BLCKSZ).map(|(segno, v)| {
            let blkno = block_number(index * BLCKSZ as u64, segno, v.blocks_per_segment);
            match check_page(block, blkno, v.start_lsn) {
                PageCheck::Good => Checked::Good,
                PageCheck::Bad { .. } => Checked::Bad,
                PageCheck::New | PageCheck::Recent => Checked::Skipped,
            }
        });
        Sum { len: block.len() as u32, crc: crc32c::crc32c(block), check }
    }

    /// The copy's next block (in file order).
    pub fn local(&mut self, block: &[u8]) {
        let s = self.sum(self.base + self.local.len() as u64, block);
        self.local.push(s);
    }

    /// A block of the server's written at `offset` (in file order).
    pub fn changed(&mut self, offset: u64, block: &[u8]) {
        let index = offset / BLCKSZ as u64;
        let s = self.sum(index, block);
        self.changed.push((index, s));
    }

    /// The file of `size` bytes: its CRC-32C and its pages (checked and failed), or `None` if
    /// the blocks do not make up exactly that size.
    pub(crate) fn finish(&self, size: u64) -> Option<(Checksum, Option<Pages>)> {
        self.finish_span(0, size)
    }

    /// [`BlockSums::finish`] of bytes `start..end` of a file (a piece: `start` at a block),
    /// from a [`BlockSums::piece`] that starts there.
    pub(crate) fn finish_span(&self, start: u64, end: u64) -> Option<(Checksum, Option<Pages>)> {
        if !start.is_multiple_of(BLCKSZ as u64) || start > end {
            return None;
        }
        let mut changed = self.changed.iter().peekable();
        let (mut crc, mut pages) = (None::<u32>, self.verify.map(|(segno, v)| Pages::new(segno, start, v)));
        for i in start / BLCKSZ as u64..end.div_ceil(BLCKSZ as u64) {
            let want = (end - i * BLCKSZ as u64).min(BLCKSZ as u64) as u32;
            let s = match changed.peek() {
                Some((at, s)) if *at == i => {
                    changed.next();
                    *s
                }
                _ => *self.local.get(i.checked_sub(self.base)? as usize)?,
            };
            if s.len != want {
                return None;
            }
            crc = Some(match crc {
                None => s.crc,
                Some(a) if s.len as usize == BLCKSZ => shift(a) ^ s.crc,
                Some(a) => crc32c::crc32c_combine(a, s.crc, s.len as usize),
            });
            if let (Some(p), Some(c)) = (pages.as_mut(), s.check) {
                match c {
                    Checked::Good => p.verified += 1,
                    Checked::Bad => {
                        p.verified += 1;
                        let (segno, v) = self.verify?;
                        p.suspects
                            .push((block_number(i * BLCKSZ as u64, segno, v.blocks_per_segment), i * BLCKSZ as u64));
                    }
                    Checked::Skipped => {}
                }
            }
        }
        // A server block not taken (out of order, twice): the blocks do not make up the file.
        if changed.next().is_some() {
            return None;
        }
        Some((Checksum::Crc32c(crc.unwrap_or(0)), pages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_shift_is_the_combine() {
        let mut x = 0x1234_5678u32;
        for _ in 0..1000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let (a, b) = (x, x.rotate_left(13) ^ 0xdead_beef);
            assert_eq!(shift(a) ^ b, crc32c::crc32c_combine(a, b, BLCKSZ));
        }
    }

    /// The combined CRC is the CRC of the file as it ends up: the copy's blocks where they
    /// stayed, the server's where they changed, cut or extended to the size.
    #[test]
    fn the_blocks_make_up_the_file() {
        let old: Vec<u8> = (0..3 * BLCKSZ + 100).map(|i| (i % 241) as u8).collect();
        let compose = |new: &[u8], changed: &[usize]| {
            let mut b = BlockSums::new(None);
            old.chunks(BLCKSZ).for_each(|c| b.local(c));
            for &i in changed {
                let end = ((i + 1) * BLCKSZ).min(new.len());
                b.changed((i * BLCKSZ) as u64, &new[i * BLCKSZ..end]);
            }
            b.finish(new.len() as u64).map(|(c, _)| c)
        };
        assert_eq!(compose(&old, &[]), Some(Checksum::Crc32c(crc32c::crc32c(&old))));
        let mut new = old.clone();
        new[BLCKSZ + 5] ^= 0xff;
        assert_eq!(compose(&new, &[1]), Some(Checksum::Crc32c(crc32c::crc32c(&new))));
        // Grown: the new blocks came from the server; shrunk to a whole block.
        let grown = [old.clone(), vec![7u8; 2 * BLCKSZ]].concat();
        assert_eq!(compose(&grown, &[3, 4, 5]), Some(Checksum::Crc32c(crc32c::crc32c(&grown))));
        let shrunk = &old[..2 * BLCKSZ];
        assert_eq!(compose(shrunk, &[]), Some(Checksum::Crc32c(crc32c::crc32c(shrunk))));
        // A last block of another length that did not come from the server: not composed.
        assert_eq!(compose(&old[..2 * BLCKSZ + 10], &[]), None);
        assert_eq!(compose(&[], &[]), Some(Checksum::Crc32c(0)));
        // Server blocks out of order: not composed (the file is read back).
        let mut b = BlockSums::new(None);
        old.chunks(BLCKSZ).for_each(|c| b.local(c));
        b.changed(2 * BLCKSZ as u64, &old[2 * BLCKSZ..3 * BLCKSZ]);
        b.changed(0, &old[..BLCKSZ]);
        assert!(b.finish(old.len() as u64).is_none());
    }

    /// A piece's sums compose the CRC of that piece's bytes alone (as the master combines
    /// the pieces'), with the server's blocks over the copy's; a span that does not start at a
    /// block does not compose.
    #[test]
    fn a_piece_composes_its_own_bytes() {
        let data: Vec<u8> = (0..6 * BLCKSZ + 300).map(|i| (i % 233) as u8).collect();
        let whole = BlockSums::new(None);
        let mut p = whole.piece(2);
        data[2 * BLCKSZ..5 * BLCKSZ].chunks(BLCKSZ).for_each(|b| p.local(b));
        let mut new = data.clone();
        new[3 * BLCKSZ + 9] ^= 1;
        p.changed(3 * BLCKSZ as u64, &new[3 * BLCKSZ..4 * BLCKSZ]);
        let (start, end) = (2 * BLCKSZ as u64, 5 * BLCKSZ as u64);
        let want = Checksum::Crc32c(crc32c::crc32c(&new[2 * BLCKSZ..5 * BLCKSZ]));
        assert_eq!(p.finish_span(start, end).map(|(c, _)| c), Some(want));
        // The last piece, past the copy's blocks: the server's bytes, to the file's end.
        let mut last = whole.piece(5);
        last.changed(5 * BLCKSZ as u64, &data[5 * BLCKSZ..6 * BLCKSZ]);
        last.changed(6 * BLCKSZ as u64, &data[6 * BLCKSZ..]);
        let want = Checksum::Crc32c(crc32c::crc32c(&data[5 * BLCKSZ..]));
        assert_eq!(last.finish_span(end, data.len() as u64).map(|(c, _)| c), Some(want));
        assert!(p.finish_span(start + 1, end).is_none());
        assert!(p.finish_span(start, end + BLCKSZ as u64).is_none(), "a block the span lacks");
    }

    /// Pieces summed apart, with a gap where the copy held nothing: composed when the server
    /// sent every block of the gap, not when one is missing; a piece that starts before the
    /// blocks already summed is refused.
    #[test]
    fn pieces_append_across_a_gap_the_server_fills() {
        let data: Vec<u8> = (0..6 * BLCKSZ).map(|i| (i % 239) as u8).collect();
        let blocks: Vec<&[u8]> = data.chunks(BLCKSZ).collect();
        let compose = |sent: &[usize]| {
            let mut all = BlockSums::new(None);
            let mut first = all.piece(0);
            blocks[..2].iter().for_each(|b| first.local(b));
            assert!(all.append(first));
            let mut last = all.piece(4);
            blocks[4..].iter().for_each(|b| last.local(b));
            assert!(all.append(last));
            for &i in sent {
                all.changed((i * BLCKSZ) as u64, blocks[i]);
            }
            all.finish(data.len() as u64).map(|(c, _)| c)
        };
        assert_eq!(compose(&[2, 3]), Some(Checksum::Crc32c(crc32c::crc32c(&data))));
        assert_eq!(compose(&[2]), None, "block 3 came from nowhere");
        let mut all = BlockSums::new(None);
        let mut p = all.piece(0);
        blocks[..3].iter().for_each(|b| p.local(b));
        assert!(all.append(p));
        let mut back = all.piece(1);
        back.local(blocks[1]);
        assert!(!all.append(back), "overlaps what is summed");
    }
}
