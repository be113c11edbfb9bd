//! Large files copied in pieces by several workers: each piece's checksum, combined into the
//! file's (CRC-32C combines; a short piece is completed with zeros, as core completes a file
//! that shrank).

use crate::digest::Checksum;

/// The pieces of one file as they come in.
#[derive(Default)]
pub(super) struct Assembly {
    pub expected: usize,
    pub size: u64,
    pub mtime: i64,
    pub vanished: bool,
    pub got: Vec<Piece>,
}

/// One piece of a large file as a worker wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Piece {
    pub off: u64,
    /// As asked.
    pub len: u64,
    /// As written: fewer than `len` when the file had shrunk by the time the piece was read
    /// (the rest stays zeros: the file is completed to its listed size, as core does).
    pub written: u64,
    pub checksum: Option<Checksum>,
}

/// CRC-32C of `n` zero bytes.
fn crc_of_zeros(mut n: u64) -> u32 {
    static ZEROS: [u8; 65536] = [0; 65536];
    let mut crc = 0;
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        crc = crc32c::crc32c_append(crc, &ZEROS[..k]);
        n -= k as u64;
    }
    crc
}

/// CRC-32C of a whole file from its pieces' (in offset order), each followed by the zeros
/// that complete a short one; `None` without checksums.
pub(super) fn combine_crc(pieces: &mut [Piece]) -> Option<Checksum> {
    pieces.sort_by_key(|p| p.off);
    let mut acc: Option<u32> = None;
    let mut add = |crc: u32, len: u64| {
        acc = Some(match acc {
            None => crc,
            Some(a) => crc32c::crc32c_combine(a, crc, len as usize),
        });
    };
    for p in pieces.iter() {
        add(p.checksum.as_ref()?.crc32c()?, p.written);
        if p.written < p.len {
            add(crc_of_zeros(p.len - p.written), p.len - p.written);
        }
    }
    acc.map(Checksum::Crc32c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_checksums_combine_into_the_files() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let crc = |b: &[u8]| Some(Checksum::Crc32c(crc32c::crc32c(b)));
        let piece = |off: u64, len: u64, written: u64, sum| Piece { off, len, written, checksum: sum };
        let mut pieces = vec![
            piece(100_000, 150_000, 150_000, crc(&data[100_000..250_000])),
            piece(0, 100_000, 100_000, crc(&data[..100_000])),
            piece(250_000, 50_000, 50_000, crc(&data[250_000..])),
        ];
        assert_eq!(combine_crc(&mut pieces), crc(&data));
        assert_eq!(combine_crc(&mut [piece(0, 1, 1, None)]), None);
        // A SHA-2 checksum does not combine (pieces are made only for CRC-32C).
        assert_eq!(combine_crc(&mut [piece(0, 1, 1, Some(Checksum::Sha(vec![0; 32])))]), None);
    }

    #[test]
    fn short_pieces_combine_with_the_zeros_that_complete_the_file() {
        // The file shrank to 120 000 bytes before its pieces were read: the second piece
        // got 20 000 bytes, the third none; the file is completed with zeros to 300 000.
        let data: Vec<u8> = (0..120_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut whole = data.clone();
        whole.resize(300_000, 0);
        let crc = |b: &[u8]| Some(Checksum::Crc32c(crc32c::crc32c(b)));
        let mut pieces = vec![
            Piece { off: 0, len: 100_000, written: 100_000, checksum: crc(&data[..100_000]) },
            Piece { off: 100_000, len: 100_000, written: 20_000, checksum: crc(&data[100_000..]) },
            Piece { off: 200_000, len: 100_000, written: 0, checksum: crc(b"") },
        ];
        assert_eq!(combine_crc(&mut pieces), crc(&whole));
        assert_eq!(crc_of_zeros(200_000), crc32c::crc32c(&[0u8; 200_000]));
    }
}
