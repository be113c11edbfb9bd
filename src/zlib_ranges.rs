//! Byte ranges of one server file read through the compression helper
//! (`sql_incr::read_blocks_zlib`): each range's bytes, decompressed, handed on in order. Used
//! for the changed blocks of an `INCREMENTAL.*` file and for the differing blocks of a
//! `--delta` refresh.

use postgres::fallible_iterator::FallibleIterator;

use crate::dest::SafePath;
use crate::pg::{sql_incr, Session};
use crate::transfer::{pg_err, Transfer, TransferError};

/// What the helper said of the ranges asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranges {
    /// Each range was handed on; the file's mtime and the compressed bytes that came.
    Read { mtime: i64, wire: u64 },
    /// The file is not there, or was removed while it was read.
    Vanished,
}

impl Transfer {
    /// Reads the ranges (`offs`, `lens`: at least one) of server file `src` compressed at
    /// `level`, and calls `each(i, mtime, bytes)` once per range, in order, with its bytes
    /// (fewer than `lens[i]` when the file was cut short while it was read).
    pub(crate) fn zlib_ranges(
        &self,
        s: &mut Session,
        src: &SafePath,
        (offs, lens): (&[i64], &[i64]),
        level: u32,
        what: &str,
        mut each: impl FnMut(usize, i64, &[u8]) -> Result<(), TransferError>,
    ) -> Result<Ranges, TransferError> {
        let path = src.display();
        let bad = |message: String| TransferError::Data { path: path.clone(), message };
        let raw = src.as_bytes();
        let (chunk, level) = (self.chunk as i64, level as i32);
        let sql = sql_incr::read_blocks_zlib(&self.helper.function(self.method));
        let mut rows = s.stream(&sql, &[&raw, &chunk, &level, &offs, &lens], what)?;
        let (mut mtime, mut wire) = (0i64, 0u64);
        // The range being received (index), and its bytes so far.
        let mut cur: Option<usize> = None;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(row) = rows.next().map_err(|e| pg_err(what, e))? {
            let i: i64 = row.try_get(0).map_err(|e| pg_err(what, e))?;
            let data: &[u8] = row.try_get(1).map_err(|e| pg_err(what, e))?;
            let i = i
                .checked_sub(1)
                .and_then(|k| usize::try_from(k).ok())
                .ok_or_else(|| bad(format!("the server answered range {i}")))?;
            if cur != Some(i) {
                // A new range: the one before is complete; this row is the helper's header.
                let expected = cur.map_or(0, |c| c + 1);
                if i >= lens.len() || i < expected {
                    return Err(bad(format!("the server answered range {} where {} was due", i + 1, expected + 1)));
                }
                // The helper gave nothing for a range: the file was removed while it was read.
                if i > expected {
                    return Ok(Ranges::Vanished);
                }
                let (_, at_open) = crate::transfer::helper_header(data, &path)?;
                match cur {
                    Some(c) => each(c, mtime, &buf)?,
                    None => mtime = at_open,
                }
                (cur, buf) = (Some(i), Vec::new());
                continue;
            }
            wire += data.len() as u64;
            if let Some(t) = &self.throttle {
                t.pace(data.len() as u64);
            }
            let limit = (lens[i] as u64).saturating_sub(buf.len() as u64);
            crate::page_holes::unpack(data, limit, &mut buf).map_err(|m| bad(format!("{m} (range {})", i + 1)))?;
        }
        // No row at all, or nothing for the last ranges: not there (any more).
        match cur {
            Some(c) if c + 1 == lens.len() => {
                each(c, mtime, &buf)?;
                Ok(Ranges::Read { mtime, wire })
            }
            _ => Ok(Ranges::Vanished),
        }
    }
}
