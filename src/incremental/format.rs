//! The `INCREMENTAL.<name>` file format core writes and `pg_combinebackup` reads: a header
//! (magic, block count, truncation block length, block numbers; native byte order, padded to
//! a whole block when it lists any block), then the listed blocks in that order.

/// `INCREMENTAL_MAGIC` (src/include/backup/basebackup_incremental.h).
pub const MAGIC: u32 = 0xd3ae_1f0d;
/// PostgreSQL's page size; the header is padded to a multiple of it.
pub const BLCKSZ: u64 = 8192;

/// Bytes of the header of a file listing `nblocks` blocks (12 bytes for none; otherwise
/// padded up to a multiple of BLCKSZ).
pub fn header_size(nblocks: usize) -> u64 {
    let raw = 12 + 4 * nblocks as u64;
    if nblocks == 0 {
        raw
    } else {
        raw.div_ceil(BLCKSZ) * BLCKSZ
    }
}

/// The size of the whole incremental file.
pub fn file_size(nblocks: usize) -> u64 {
    header_size(nblocks) + nblocks as u64 * BLCKSZ
}

/// The header, padding included.
pub fn header(blocks: &[u32], truncation_block_length: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(header_size(blocks.len()) as usize);
    h.extend_from_slice(&MAGIC.to_ne_bytes());
    h.extend_from_slice(&(blocks.len() as u32).to_ne_bytes());
    h.extend_from_slice(&truncation_block_length.to_ne_bytes());
    for b in blocks {
        h.extend_from_slice(&b.to_ne_bytes());
    }
    h.resize(header_size(blocks.len()) as usize, 0);
    h
}

/// `dir/INCREMENTAL.name` for `dir/name`.
pub fn incremental_path(path: &[u8]) -> Vec<u8> {
    let cut = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    let mut p = path[..cut].to_vec();
    p.extend_from_slice(b"INCREMENTAL.");
    p.extend_from_slice(&path[cut..]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_as_core_writes_it() {
        // Seen on PostgreSQL 17 (x86-64): 3 blocks, truncation length 2942, blocks 0, 1470, 2941.
        let h = header(&[0, 1470, 2941], 2942);
        assert_eq!(h.len(), 8192);
        assert_eq!(hex::encode(&h[..24]), "0d1faed3030000007e0b000000000000be0500007d0b0000");
        assert!(h[24..].iter().all(|&b| b == 0));
        assert_eq!(file_size(3), 8192 + 3 * 8192);
        // None listed: 12 bytes, no padding.
        assert_eq!(header(&[], 7).len(), 12);
        assert_eq!(file_size(0), 12);
        // 2045 blocks fill the first header block exactly; one more needs a second.
        assert_eq!(header_size(2045), 8192);
        assert_eq!(header_size(2046), 16384);
    }

    #[test]
    fn names_sit_beside_the_file() {
        assert_eq!(incremental_path(b"base/5/16384.1"), b"base/5/INCREMENTAL.16384.1");
        assert_eq!(incremental_path(b"global/1262"), b"global/INCREMENTAL.1262");
        assert_eq!(incremental_path(b"x"), b"INCREMENTAL.x");
    }
}
