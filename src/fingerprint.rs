//! `--delta`: what a block of the copy is compared by, 32 bytes each in the query. Its SHA-256
//! (the server hashes its block too), or, for a relation page of a copy whose pages all come
//! from the server's own history (`delta::trust`), the page's LSN and checksum: the page is
//! whole (its checksum verifies) and was last changed by the WAL record at that LSN, so a
//! server page with the same LSN and checksum holds the same data, and the server only reads
//! ten bytes of it instead of hashing it.

use sha2::Digest as _;

use crate::checksum::{block_number, page_checksum, BLCKSZ};
use crate::pg::sql::HEADER_TAG;

/// Bytes of one block's fingerprint.
pub const WIDTH: usize = 32;
/// Bytes of the page header compared: `pd_lsn` (8) and `pd_checksum` (2).
const HEAD: usize = 10;

/// How a file's blocks are fingerprinted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fingerprint {
    Sha256,
    /// Relation segment `segno`; pages whose LSN is past `upto` (or 0) are not trusted.
    Header {
        segno: u32,
        blocks_per_segment: u32,
        upto: u64,
    },
}

impl Fingerprint {
    /// Appends the fingerprint of `block`, the file's block number `index`, to `out`.
    pub fn push(&self, index: u64, block: &[u8], out: &mut Vec<u8>) {
        match *self {
            Fingerprint::Sha256 => out.extend_from_slice(&sha2::Sha256::digest(block)),
            Fingerprint::Header { segno, blocks_per_segment, upto } => {
                let blkno = block_number(index * BLCKSZ as u64, segno, blocks_per_segment);
                if trusted(block, blkno, upto) {
                    out.extend_from_slice(&block[..HEAD]);
                } else {
                    // LSN 0: the server never takes it for its block's (see `sql::compare_blocks!`).
                    out.extend_from_slice(&[0; HEAD]);
                }
                out.extend_from_slice(HEADER_TAG);
            }
        }
    }
}

/// A page of the copy that can stand for the server's page with the same header: a full,
/// initialized page whose checksum verifies (not torn, not of another block), with an LSN
/// that is not 0 and not past `upto`.
fn trusted(page: &[u8], blkno: u32, upto: u64) -> bool {
    if page.len() != BLCKSZ {
        return false;
    }
    let u16_at = |o: usize| u16::from_ne_bytes([page[o], page[o + 1]]);
    let u32_at = |o: usize| u32::from_ne_bytes([page[o], page[o + 1], page[o + 2], page[o + 3]]);
    let lsn = (u64::from(u32_at(0)) << 32) | u64::from(u32_at(4));
    // pd_upper 0: an all-new page, which has no checksum.
    u16_at(14) != 0 && lsn != 0 && lsn <= upto && page_checksum(page, blkno) == u16_at(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page as PostgreSQL writes it: LSN, pd_upper, and its checksum as block `blkno`.
    fn page(lsn: u64, blkno: u32, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; BLCKSZ];
        p[..4].copy_from_slice(&((lsn >> 32) as u32).to_ne_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_ne_bytes());
        p[14..16].copy_from_slice(&4000u16.to_ne_bytes());
        let c = page_checksum(&p, blkno);
        p[8..10].copy_from_slice(&c.to_ne_bytes());
        p
    }

    fn of(fp: Fingerprint, index: u64, block: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        fp.push(index, block, &mut out);
        assert_eq!(out.len(), WIDTH);
        out
    }

    const SEG1: Fingerprint = Fingerprint::Header { segno: 1, blocks_per_segment: 131072, upto: 0x5_0000_0000 };

    #[test]
    fn a_whole_page_is_its_header_and_the_tag() {
        // Block 3 of segment 1 is block 131075 of the relation.
        let p = page(0x4_0000_1000, 131075, 7);
        let fp = of(SEG1, 3, &p);
        assert_eq!(&fp[..HEAD], &p[..HEAD]);
        assert_eq!(&fp[HEAD..], HEADER_TAG);
        assert_eq!(of(Fingerprint::Sha256, 3, &p), sha2::Sha256::digest(&p).to_vec());
    }

    /// Whatever cannot stand for the server's page gets LSN 0, which never matches.
    #[test]
    fn untrusted_pages_never_match() {
        let untrusted = |fp: Vec<u8>| fp[..HEAD] == [0; HEAD] && fp[HEAD..] == HEADER_TAG[..];
        let mut torn = page(0x4_0000_1000, 131075, 7);
        torn[5000] ^= 1;
        assert!(untrusted(of(SEG1, 3, &torn)), "a torn page");
        assert!(untrusted(of(SEG1, 4, &page(0x4_0000_1000, 131075, 7))), "a page of another block");
        assert!(untrusted(of(SEG1, 3, &page(0x5_0000_0001, 131075, 7))), "an LSN past the bound");
        assert!(untrusted(of(SEG1, 3, &page(0, 131075, 7))), "LSN 0");
        assert!(untrusted(of(SEG1, 3, &vec![0; BLCKSZ])), "a new page");
        assert!(untrusted(of(SEG1, 3, &page(0x4_0000_1000, 131075, 7)[..4096])), "half a page");
        assert!(!untrusted(of(SEG1, 3, &page(0x5_0000_0000, 131075, 7))), "the bound itself");
    }
}
