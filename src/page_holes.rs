//! Plain chunks over a network without the empty middle of data pages: putting the holes
//! back (`sql::READ_HOLES`' format), and when a worker asks for them.

use std::cell::Cell;
use std::time::Duration;

use crate::checksum::BLCKSZ;
use crate::layout::{checksummed_segment, LayoutRules};

/// Rebuilds a chunk sent without its pages' holes, appending it to `out`: each page's
/// 4-byte header (hole start, hole length; big endian), then its bytes without the hole. A
/// header that does not fit its page, bytes that end inside one, or more than `limit` bytes
/// in all is an error, never a guess.
pub fn fill(data: &[u8], limit: u64, out: &mut Vec<u8>) -> Result<(), String> {
    let end = out.len() as u64 + limit;
    let mut rest = data;
    while !rest.is_empty() {
        let (head, body) = rest.split_at_checked(4).ok_or("a page header is cut short")?;
        let start = usize::from(u16::from_be_bytes([head[0], head[1]]));
        let hole = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let kept = match hole {
            0 if start == 0 => body.len().min(BLCKSZ),
            _ if hole > 0 && start >= 24 && start + hole <= BLCKSZ => BLCKSZ - hole,
            _ => return Err(format!("a page's hole ({start} + {hole} bytes) is not one the server sends")),
        };
        let (page, next) = body.split_at_checked(kept).ok_or("a page is cut short")?;
        if out.len() as u64 + (kept + hole) as u64 > end {
            return Err("more bytes than asked for".into());
        }
        if hole > 0 {
            out.extend_from_slice(&page[..start]);
            out.resize(out.len() + hole, 0);
            out.extend_from_slice(&page[start..]);
        } else {
            out.extend_from_slice(page);
        }
        rest = next;
    }
    Ok(())
}

/// What the temporary compression helper sends for a stored chunk whose pages have holes
/// (`sql::CREATE_ZLIB_READER`): this byte, then the chunk in [`fill`]'s format. A zlib
/// stream's first byte has 8 (deflate) in its low four bits, so it never starts so.
pub const STORED_WITHOUT_HOLES: u8 = b'P';

/// The first bytes of a zstd frame (its magic number, little endian). A zlib stream starts
/// with a header whose two bytes, read big endian, are a multiple of 31 (0x28B5 is not), and
/// a stored chunk with [`STORED_WITHOUT_HOLES`].
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// One zstd frame (with its content size, as the helper makes them) appended to `out`.
fn unzstd(data: &[u8], limit: u64, out: &mut Vec<u8>) -> Result<(), String> {
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let size = match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) => n,
        _ => return Err("a zstd frame without its content size".into()),
    };
    if size > limit {
        return Err("more bytes than asked for".into());
    }
    let before = out.len();
    out.resize(before + size as usize, 0);
    let got = DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        let d = d.as_mut().ok_or("no zstd context")?;
        d.decompress_to_buffer(data, &mut out[before..]).map_err(|e| format!("corrupt compressed chunk: {e}"))
    });
    let wrong = match got {
        Ok(n) if n as u64 == size => return Ok(()),
        Ok(_) => "a zstd frame shorter than its content size".into(),
        Err(e) => e,
    };
    out.truncate(before);
    Err(wrong)
}

/// One chunk from a compression helper appended to `out`: a zlib stream, a zstd frame, or a
/// stored chunk without its pages' holes (see [`STORED_WITHOUT_HOLES`]). More than `limit`
/// bytes is an error (what comes past it is not decoded).
pub fn unpack(data: &[u8], limit: u64, out: &mut Vec<u8>) -> Result<(), String> {
    use std::io::Read as _;
    if data.starts_with(&ZSTD_MAGIC) {
        return unzstd(data, limit, out);
    }
    match data.split_first() {
        Some((&STORED_WITHOUT_HOLES, pages)) => fill(pages, limit, out),
        _ => {
            let before = out.len() as u64;
            flate2::read::ZlibDecoder::new(data)
                .take(limit.saturating_add(1))
                .read_to_end(out)
                .map_err(|e| format!("corrupt compressed chunk: {e}"))?;
            match out.len() as u64 - before > limit {
                true => Err("more bytes than asked for".into()),
                false => Ok(()),
            }
        }
    }
}

/// Files shorter than this say nothing about the link (a round trip dominates them).
const MEASURED_FROM: u64 = 8 << 20;
/// Leaving the holes out costs the server about 2.3 ms of CPU per MB (440 MB/s per core,
/// docs/benchmarks.md). A worker that reads faster than this has a link that keeps up with
/// that, or nearly: the server's CPU would be the limit, so its pages travel whole.
const FAST: f64 = 200e6;
/// A worker that reads slower than this with whole pages is held back by the link (or the
/// server's disk): leaving the holes out costs the server at most a quarter of a core.
const SLOW: f64 = 100e6;

/// One worker's choice, from the rate of its last large data file (`Cell`s: a worker is one
/// thread), whether or not its holes were left out. It starts with holes left out (the server
/// is across a network) and changes its mind only past the far threshold, so it does not
/// flip on noise.
#[derive(Debug, Clone)]
pub struct Holes {
    on: Cell<bool>,
    rules: LayoutRules,
}

impl Holes {
    pub fn new(rules: LayoutRules) -> Holes {
        Holes { on: Cell::new(true), rules }
    }

    /// Whether the next data file is read without holes.
    pub fn on(&self) -> bool {
        self.on.get()
    }

    /// Whether `path` (relative to the data directory) is a data file (the files whose pages
    /// are verified): read without holes while [`Holes::on`], and timed either way.
    pub fn is_data(&self, path: &str) -> bool {
        checksummed_segment(path, self.rules).is_some()
    }

    /// A data file of `bytes` (as written to DEST; `wire` of them came over the network) took
    /// `took` to read: decides the next. Leaving holes out stops only when the server made
    /// pages fast *and* the link carried them fast: pages that are mostly hole can come out
    /// fast over a slow link, and that is where leaving them out pays most.
    pub fn saw(&self, bytes: u64, wire: u64, took: Duration) {
        if bytes < MEASURED_FROM || took.is_zero() {
            return;
        }
        let (rate, carried) = (bytes as f64 / took.as_secs_f64(), wire as f64 / took.as_secs_f64());
        let on = self.on.get();
        if on && rate > FAST && carried > SLOW {
            log::info!(
                "read {:.0} MB/s with page holes left out: the server's CPU, not the link, would limit; data pages travel whole",
                rate / 1e6
            );
            self.on.set(false);
        } else if !on && rate < SLOW {
            log::info!("read {:.0} MB/s: the link limits; data pages travel without their holes again", rate / 1e6);
            self.on.set(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGES: &[u8] = include_bytes!("../tests/fixtures/pg15-pgbench_accounts-blocks-100-102.bin");

    /// What the server sends for a chunk (the SQL's rules, in Rust): for tests of [`fill`].
    fn without_holes(chunk: &[u8]) -> Vec<u8> {
        let mut sent = Vec::new();
        for p in chunk.chunks(BLCKSZ) {
            let (lo, up) = if p.len() == BLCKSZ {
                (usize::from(u16::from_le_bytes([p[12], p[13]])), usize::from(u16::from_le_bytes([p[14], p[15]])))
            } else {
                (0, 0)
            };
            let hole = lo >= 24 && lo < up && up <= BLCKSZ && p[lo..up].iter().all(|&b| b == 0);
            if hole {
                sent.extend_from_slice(&(lo as u16).to_be_bytes());
                sent.extend_from_slice(&((up - lo) as u16).to_be_bytes());
                sent.extend_from_slice(&p[..lo]);
                sent.extend_from_slice(&p[up..]);
            } else {
                sent.extend_from_slice(&[0; 4]);
                sent.extend_from_slice(p);
            }
        }
        sent
    }

    #[test]
    fn zstd_frames_come_back_within_their_limit_and_nothing_else_passes() {
        let frame = zstd::bulk::compress(PAGES, 1).unwrap();
        assert!(frame.starts_with(&ZSTD_MAGIC) && frame.len() < PAGES.len());
        let mut out = b"before".to_vec();
        unpack(&frame, PAGES.len() as u64, &mut out).unwrap();
        assert!(out[..6] == *b"before" && out[6..] == *PAGES, "the frame's bytes, appended");
        // More than asked for: an error, and nothing appended.
        let mut out = Vec::new();
        assert!(unpack(&frame, PAGES.len() as u64 - 1, &mut out).unwrap_err().contains("more bytes"));
        assert!(out.is_empty());
        // A frame cut short, and one that does not say its size (the helper's always do).
        assert!(unpack(&frame[..frame.len() - 3], PAGES.len() as u64, &mut out).is_err());
        assert!(out.is_empty());
        let mut streamed = Vec::new();
        let mut e = zstd::stream::write::Encoder::new(&mut streamed, 1).unwrap();
        e.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut e, PAGES).unwrap();
        e.finish().unwrap();
        assert!(unpack(&streamed, PAGES.len() as u64, &mut out).unwrap_err().contains("content size"));
        // zlib streams and stored chunks are not taken for zstd frames.
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(1));
        std::io::Write::write_all(&mut z, PAGES).unwrap();
        let z = z.finish().unwrap();
        assert_ne!(z[..2], ZSTD_MAGIC[..2]);
        unpack(&z, PAGES.len() as u64, &mut out).unwrap();
        assert!(out == *PAGES);
    }

    #[test]
    fn real_pages_come_back_byte_for_byte_and_smaller_on_the_wire() {
        let sent = without_holes(PAGES);
        assert!(sent.len() < PAGES.len(), "{} !< {}", sent.len(), PAGES.len());
        let mut out = Vec::new();
        fill(&sent, u64::MAX, &mut out).unwrap();
        assert_eq!(out, PAGES);
    }

    /// A hole that is not all zeros, a new (all-zero) page, header fields that mean
    /// something else, and a short last page all travel whole and come back as they were.
    #[test]
    fn anything_but_a_zero_hole_travels_whole() {
        let mut garbage = PAGES[..BLCKSZ].to_vec();
        let (lo, up) = (u16::from_le_bytes([garbage[12], garbage[13]]), u16::from_le_bytes([garbage[14], garbage[15]]));
        garbage[usize::from(lo + (up - lo) / 2)] = 7;
        let mut odd = vec![0xA5u8; BLCKSZ];
        odd[12..16].copy_from_slice(&[0xff, 0x1f, 0x00, 0x20]);
        let chunk = [garbage.as_slice(), &[0u8; BLCKSZ], &odd, &PAGES[BLCKSZ..2 * BLCKSZ], &[1, 2, 3]].concat();
        let sent = without_holes(&chunk);
        // Only the fourth page (a real one) lost its hole.
        let second = &PAGES[BLCKSZ..2 * BLCKSZ];
        let hole = u16::from_le_bytes([second[14], second[15]]) - u16::from_le_bytes([second[12], second[13]]);
        assert!(hole > 0);
        assert_eq!(sent.len(), chunk.len() + 5 * 4 - usize::from(hole));
        let mut out = Vec::new();
        fill(&sent, u64::MAX, &mut out).unwrap();
        assert_eq!(out, chunk);
        out.clear();
        fill(&[], 0, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_malformed_chunk_is_an_error() {
        let mut out = Vec::new();
        assert!(fill(&[0, 24], u64::MAX, &mut out).is_err());
        // A hole past the page's end, one in the page header, a start without a hole.
        assert!(fill(&[0x1f, 0xff, 0x00, 0x10, 1, 2], u64::MAX, &mut out).is_err());
        assert!(fill(&[0x00, 0x10, 0x00, 0x10, 1, 2], u64::MAX, &mut out).is_err());
        assert!(fill(&[0x00, 0x30, 0x00, 0x00, 1, 2], u64::MAX, &mut out).is_err());
        // Bytes that end inside a page with a hole.
        let sent = without_holes(&PAGES[..BLCKSZ]);
        assert!(fill(&sent[..sent.len() - 1], u64::MAX, &mut out).is_err());
        // A whole page and the start of the next header.
        let sent = [&[0u8; 4][..], &[9u8; BLCKSZ], &[0, 0]].concat();
        assert!(fill(&sent, u64::MAX, &mut out).is_err());
    }

    /// More than asked for is refused (a page's worth of zeros from four bytes).
    #[test]
    fn a_chunk_larger_than_asked_for_is_an_error() {
        let sent = without_holes(PAGES);
        let mut out = Vec::new();
        assert!(fill(&sent, PAGES.len() as u64 - 1, &mut out).is_err());
        out.clear();
        fill(&sent, PAGES.len() as u64, &mut out).unwrap();
        // Appends.
        fill(&sent, PAGES.len() as u64, &mut out).unwrap();
        assert_eq!(out, [PAGES, PAGES].concat());
    }

    /// A helper chunk is a zlib stream or, led by `P`, pages without holes; either way at
    /// most `limit` bytes.
    #[test]
    fn helper_chunks_unpack_either_way() {
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(0));
        z.write_all(PAGES).unwrap();
        let zlib = z.finish().unwrap();
        assert_ne!(zlib[0], STORED_WITHOUT_HOLES);
        let holes = [&[STORED_WITHOUT_HOLES][..], &without_holes(PAGES)].concat();
        for chunk in [&zlib, &holes] {
            let mut out = vec![1u8];
            unpack(chunk, PAGES.len() as u64, &mut out).unwrap();
            assert_eq!(out[1..], *PAGES);
            assert!(unpack(chunk, PAGES.len() as u64 - 1, &mut Vec::new()).is_err());
        }
        assert!(unpack(b"Px", 100, &mut Vec::new()).is_err());
        assert!(unpack(b"\x78junk", 100, &mut Vec::new()).is_err());
    }

    #[test]
    fn a_worker_turns_holes_off_on_a_fast_link_and_on_again_on_a_slow_one() {
        let h = Holes::new(LayoutRules::default());
        assert!(h.on() && h.is_data("base/5/16396.1") && !h.is_data("pg_xact/0000"));
        let ms = Duration::from_millis;
        // Small files, or a rate between the two thresholds, change nothing.
        h.saw(1 << 20, 1 << 20, ms(1));
        h.saw(150 << 20, 150 << 20, ms(1000));
        assert!(h.on());
        // Mostly holes: fast to make, slow on the wire; the holes stay out.
        h.saw(300 << 20, 60 << 20, ms(1000));
        assert!(h.on());
        h.saw(300 << 20, 290 << 20, ms(1000));
        assert!(!h.on());
        h.saw(150 << 20, 150 << 20, ms(1000));
        assert!(!h.on());
        h.saw(50 << 20, 50 << 20, ms(1000));
        assert!(h.on());
        h.saw(50 << 20, 50 << 20, Duration::ZERO);
        assert!(h.on());
    }
}
