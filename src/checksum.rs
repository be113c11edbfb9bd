//! PostgreSQL's page checksum (`checksum_impl.h`: FNV-1a-like over 32 lanes, reduced
//! `% 65535 + 1`) and the rules core pg_basebackup applies before it calls a page bad.

/// Page size; pgbb verifies pages only on servers with the default 8 kB blocks.
pub const BLCKSZ: usize = 8192;
const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const BASE: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C, 0xF8D4474F,
    0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC,
    0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6,
    0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

#[inline(always)]
fn mix(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// The checksum PostgreSQL stores in `pd_checksum` for `page` as block `blkno`.
pub fn page_checksum(page: &[u8], blkno: u32) -> u16 {
    assert_eq!(page.len(), BLCKSZ);
    let mut sums = BASE;
    for (i, row) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, w) in row.chunks_exact(4).enumerate() {
            let mut word = [w[0], w[1], w[2], w[3]];
            // pd_checksum (bytes 8..10) counts as zero.
            if i == 0 && j == 2 {
                word[0] = 0;
                word[1] = 0;
            }
            sums[j] = mix(sums[j], u32::from_ne_bytes(word));
        }
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            *s = mix(*s, 0);
        }
    }
    let r = sums.iter().fold(0u32, |a, s| a ^ s) ^ blkno;
    ((r % 65535) + 1) as u16
}

/// What became of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    Good,
    /// All-new page (`pd_upper == 0`): not checksummed.
    New,
    /// Changed since the backup started: WAL replay rewrites it, a torn copy is expected.
    Recent,
    Bad {
        calculated: u16,
        expected: u16,
    },
}

/// Verifies one page as core's base backup does.
pub fn check_page(page: &[u8], blkno: u32, start_lsn: u64) -> PageCheck {
    let u16_at = |o: usize| u16::from_ne_bytes([page[o], page[o + 1]]);
    let u32_at = |o: usize| u32::from_ne_bytes([page[o], page[o + 1], page[o + 2], page[o + 3]]);
    if u16_at(14) == 0 {
        return PageCheck::New;
    }
    let lsn = (u64::from(u32_at(0)) << 32) | u64::from(u32_at(4));
    if lsn >= start_lsn {
        return PageCheck::Recent;
    }
    let expected = u16_at(8);
    let calculated = page_checksum(page, blkno);
    if calculated == expected {
        PageCheck::Good
    } else {
        PageCheck::Bad { calculated, expected }
    }
}

/// True when a copy of `global/pg_control` is consistent: its CRC-32C (the last field of the
/// control data, covering every byte before it) matches. The field's offset differs between
/// versions, so every 4-byte-aligned position in the first 1 kB is tried: a torn read (the
/// server rewrote the file while it was read) matches none of them.
pub fn control_file_consistent(data: &[u8]) -> bool {
    (16..data.len().min(1024).saturating_sub(3)).step_by(4).any(|off| {
        let stored = u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
        stored != 0 && crc32c::crc32c(&data[..off]) == stored
    })
}

/// Block number of the page at `offset` in segment `segno` of a relation. Core computes it
/// in 32-bit unsigned arithmetic (`BlockNumber`), which wraps for a file whose name claims a
/// segment past the largest relation: so does this, as the checksum must match core's.
pub fn block_number(offset: u64, segno: u32, blocks_per_segment: u32) -> u32 {
    ((offset / BLCKSZ as u64) as u32).wrapping_add(segno.wrapping_mul(blocks_per_segment))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages read from a real PostgreSQL 15 cluster with data checksums (initdb
    /// --data-checksums, pgbench -i -s 5, CHECKPOINT), with the block number each had.
    fn fixtures() -> Vec<(&'static str, u32, &'static [u8])> {
        let sets: [(&str, u32, &'static [u8]); 3] = [
            ("pg_class", 0, include_bytes!("../tests/fixtures/pg15-pg_class-blocks-0-3.bin")),
            ("pgbench_accounts", 100, include_bytes!("../tests/fixtures/pg15-pgbench_accounts-blocks-100-102.bin")),
            ("pgbench_accounts_pkey", 0, include_bytes!("../tests/fixtures/pg15-accounts_pkey-blocks-0-1.bin")),
        ];
        let mut v = Vec::new();
        for (name, first, bytes) in sets {
            for (i, page) in bytes.chunks_exact(BLCKSZ).enumerate() {
                v.push((name, first + i as u32, page));
            }
        }
        v
    }

    #[test]
    fn real_pages_verify() {
        let pages = fixtures();
        assert_eq!(pages.len(), 9);
        for (name, blkno, page) in pages {
            let stored = u16::from_ne_bytes([page[8], page[9]]);
            assert_ne!(stored, 0, "{name} block {blkno} has no checksum");
            assert_eq!(page_checksum(page, blkno), stored, "{name} block {blkno}");
            assert_eq!(check_page(page, blkno, u64::MAX), PageCheck::Good);
            // The block number is part of the checksum: the same page elsewhere fails.
            assert_ne!(page_checksum(page, blkno + 1), stored);
        }
    }

    #[test]
    fn corruption_and_skips() {
        let (_, blkno, page) = fixtures()[4];
        let mut bad = page.to_vec();
        bad[4000] ^= 0x55;
        assert!(matches!(check_page(&bad, blkno, u64::MAX), PageCheck::Bad { .. }));
        // Changed after the backup started: skipped, whatever its checksum.
        let lsn = (u64::from(u32::from_ne_bytes(bad[0..4].try_into().unwrap())) << 32)
            | u64::from(u32::from_ne_bytes(bad[4..8].try_into().unwrap()));
        assert_eq!(check_page(&bad, blkno, lsn), PageCheck::Recent);
        // A new page is not checksummed.
        let zero = vec![0u8; BLCKSZ];
        assert_eq!(check_page(&zero, 7, u64::MAX), PageCheck::New);
    }

    #[test]
    fn pg_control_torn_reads_are_caught() {
        // A real PostgreSQL 15 pg_control.
        let real = include_bytes!("../tests/fixtures/pg15-pg_control.bin");
        assert!(control_file_consistent(real));
        let mut torn = real.to_vec();
        torn[100] ^= 1;
        assert!(!control_file_consistent(&torn));
        assert!(!control_file_consistent(&[0u8; 8192]));
    }

    #[test]
    fn block_numbers_count_segments() {
        assert_eq!(block_number(0, 0, 131072), 0);
        assert_eq!(block_number(3 * 8192, 2, 131072), 262147);
        // The last block a relation can have (MaxBlockNumber), in its last 1 GB segment.
        assert_eq!(block_number(131070 * 8192, 32767, 131072), 0xFFFF_FFFE);
    }

    /// A file in a relation directory whose segment number is beyond any real relation's
    /// (`base/5/junk.40000`): core computes the block number in 32-bit unsigned arithmetic,
    /// which wraps; pgbb must do the same and not panic (debug builds check overflow).
    #[test]
    fn block_numbers_past_the_largest_relation_wrap_as_in_core() {
        assert_eq!(block_number(0, 40000, 131072), 40000u32.wrapping_mul(131072));
        assert_eq!(block_number(0, 40000, 131072), 947_912_704);
        assert_eq!(block_number(131071 * 8192, 32767, 131072), 0xFFFF_FFFF);
        assert_eq!(block_number(131072 * 8192, 32767, 131072), 0);
        assert_eq!(block_number(8192, u32::MAX, u32::MAX), 2);
        // The page is still checked under that number: a zero page is new, not bad.
        let zero = vec![0u8; BLCKSZ];
        assert_eq!(check_page(&zero, block_number(0, 99999, 131072), u64::MAX), PageCheck::New);
    }
}
