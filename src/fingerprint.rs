//! `--delta`: what a block of the copy is compared by, 32 bytes each in the query. Its SHA-256
//! (the server hashes its block too), or, for a relation page of a copy whose pages all come
//! from the server's own history (`delta::trust`), the page's LSN and checksum: the page is
//! whole (its checksum verifies) and was last changed by the WAL record at that LSN, so a
//! server page with the same LSN and checksum holds the same data, and the server only reads
//! ten bytes of it instead of hashing it.

use sha2::Digest as _;

use crate::checksum::{block_number, page_checksum, BLCKSZ};
use crate::layout::{checksummed_segment, parse_relation_file};
use crate::pg::sql::HEADER_TAG;
use crate::transfer::PageVerify;

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
    /// How the blocks of the copy of server file `path` (`len` bytes) are compared: by page
    /// header where the master found DEST's pages trustworthy (`upto`, see `delta::trust`)
    /// and pages are verified, else SHA-256. Only for the main and init forks of relations,
    /// and not for a copy of one page: the free space map and the visibility map change
    /// without a new LSN (clearing a visibility map bit does not set the page's LSN), and so
    /// does a sequence's one page (`nextval` logs 32 values ahead, then changes the page
    /// without WAL).
    pub fn choose(path: &[u8], len: u64, upto: Option<u64>, verify: Option<PageVerify>) -> Fingerprint {
        let (Some(upto), Some(v)) = (upto, verify) else { return Fingerprint::Sha256 };
        let path = String::from_utf8_lossy(path);
        let name = path.rsplit('/').next().unwrap_or_default();
        let fork = parse_relation_file(name, v.rules).filter(|r| !r.temp).map(|r| r.fork);
        match (fork, checksummed_segment(&path, v.rules)) {
            (Some(None | Some("init")), Some(segno)) if len > BLCKSZ as u64 => {
                Fingerprint::Header { segno, blocks_per_segment: v.blocks_per_segment, upto }
            }
            _ => Fingerprint::Sha256,
        }
    }

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

    /// Main and init forks of relations larger than a page; nothing else.
    #[test]
    fn only_relation_main_and_init_forks_of_more_than_a_page() {
        let rules = crate::pg::Caps::new(150000).layout_rules();
        let v = Some(PageVerify { start_lsn: 1 << 40, blocks_per_segment: 131072, rules });
        let choose = |path: &str, len: u64| Fingerprint::choose(path.as_bytes(), len, Some(7), v);
        let header = |segno| Fingerprint::Header { segno, blocks_per_segment: 131072, upto: 7 };
        assert_eq!(choose("base/5/16384", 16384), header(0));
        assert_eq!(choose("base/5/16384.3", 16384), header(3));
        assert_eq!(choose("base/5/16384_init", 16384), header(0));
        assert_eq!(choose("pg_tblspc/16390/PG_15_202209061/5/16391.1", 16384), header(1));
        assert_eq!(choose("global/1262", 16384), header(0));
        for (path, len) in [
            ("base/5/16384_vm", 16384),
            ("base/5/16384_fsm", 24576),
            ("base/5/16384", 8192),
            ("base/5/16384", 0),
            ("base/5/pg_filenode.map", 16384),
            ("base/5/core", 16384),
            ("global/pg_control", 16384),
            ("pg_xact/0000", 16384),
        ] {
            assert_eq!(choose(path, len), Fingerprint::Sha256, "{path} of {len} bytes");
        }
        assert_eq!(Fingerprint::choose(b"base/5/16384", 16384, None, v), Fingerprint::Sha256);
        assert_eq!(Fingerprint::choose(b"base/5/16384", 16384, Some(7), None), Fingerprint::Sha256);
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
