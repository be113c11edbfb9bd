//! `--delta` by block hashes: a piece the copy holds nothing of (a hole, or past its end) is
//! not compared but read as a full backup reads it, plain chunks (without page holes where
//! the worker leaves them out), and written at its place in the copy.

use std::fs::File;
use std::os::unix::fs::FileExt;

use postgres::fallible_iterator::FallibleIterator;

use crate::compare::{Blocks, Step, BLOCK};
use crate::dest::{DestError, SafePath};
use crate::pg::{sql, Session};
use crate::transfer::{pg_err, Transfer, TransferError};

impl Transfer {
    /// Bytes `start..end` of server file `src` written into `file` at their place, every
    /// block counted as the server's in `blocks`. Nothing past `end` is read; where the file
    /// now ends before `end` (it shrank) the rest is zeros, as in a full backup.
    pub(crate) fn fetch_span(
        &self,
        s: &mut Session,
        src: &SafePath,
        file: &File,
        blocks: &mut Blocks,
        (start, end): (u64, u64),
        what: &str,
    ) -> Result<Step, TransferError> {
        if start >= end {
            return Ok(Step::More);
        }
        let raw = src.as_bytes();
        let holes = self.holes.as_ref().is_some_and(|h| h.on() && h.is_data(&blocks.path));
        let query = if holes { sql::READ_HOLES_RANGE } else { sql::READ_PLAIN_RANGE };
        let (chunk, off, len) = (self.chunk as i64, start as i64, (end - start) as i64);
        let mut rows = s.stream(query, &[&raw, &chunk, &off, &len], what)?;
        let (mut at, mut filled) = (start, Vec::new());
        while let Some(row) = rows.next().map_err(|e| pg_err(what, e))? {
            let Some(size) = row.try_get::<_, Option<i64>>(0).map_err(|e| pg_err(what, e))? else {
                return Ok(Step::Vanished);
            };
            let Some(mut d) = row.try_get::<_, Option<&[u8]>>(2).map_err(|e| pg_err(what, e))? else {
                // No chunk: the file ends before the piece (one row), or it vanished.
                if (size.max(0) as u64) <= start {
                    break;
                }
                return Ok(Step::Vanished);
            };
            blocks.wire += d.len() as u64;
            if let Some(t) = &self.throttle {
                t.pace(d.len() as u64);
            }
            let want = self.chunk.min(end - at);
            if holes {
                filled.clear();
                crate::page_holes::fill(d, want, &mut filled)
                    .map_err(|message| TransferError::Data { path: blocks.path.clone(), message })?;
                d = &filled;
            }
            let n = (d.len() as u64).min(want);
            self.put(file, blocks, at, &d[..n as usize])?;
            // A short chunk: the file shrank while it was read; zeros to the end of that chunk.
            self.put_zeros(file, blocks, at + n, at + want)?;
            at += want;
        }
        self.put_zeros(file, blocks, at, end)?;
        Ok(Step::More)
    }

    /// `data` written at `at` in `file`, each block summed as the server's.
    fn put(&self, file: &File, blocks: &mut Blocks, at: u64, data: &[u8]) -> Result<(), TransferError> {
        file.write_all_at(data, at)
            .map_err(|e| TransferError::Dest(DestError::Io { path: blocks.path.clone().into(), source: e }))?;
        if let Some(sums) = blocks.sums.as_mut() {
            for (k, block) in data.chunks(BLOCK).enumerate() {
                sums.changed(at + (k * BLOCK) as u64, block);
            }
        }
        Ok(())
    }

    /// Zeros from `from` to `to` (nothing when `from` ≥ `to`).
    fn put_zeros(&self, file: &File, blocks: &mut Blocks, mut from: u64, to: u64) -> Result<(), TransferError> {
        let zeros = [0u8; BLOCK];
        while from < to {
            let n = (to - from).min((BLOCK as u64) - from % BLOCK as u64) as usize;
            self.put(file, blocks, from, &zeros[..n])?;
            from += n as u64;
        }
        Ok(())
    }
}
