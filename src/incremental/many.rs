//! A batch of small `INCREMENTAL.*` files (a worker's `batch<TAB>N` of `incr` requests), read
//! with one query: each file's changed blocks as ranges of one array, each file then written
//! and page-verified as one on its own is. Most relation files of an incremental backup have
//! no changed block at all: one round trip each would cost more than their bytes.

use postgres::fallible_iterator::FallibleIterator;

use crate::batch::{internal, member_src, position, query_failed, Item, Slot};
use crate::checksum::BLCKSZ;
use crate::pg::{sql_incr, Session};
use crate::transfer::{pg_err, Copied, Outcome, Transfer, TransferError};

use super::fetch::{ranges, Out};

/// The file being written, and how far its ranges got.
struct Current {
    k: usize,
    out: Option<Out>,
    mtime: i64,
    /// Its ranges' positions in the arrays (from 1): next due, and one past its last.
    next: i64,
    end: i64,
    block: usize,
    vanished: bool,
    /// Bytes that came over the network for it.
    wire: u64,
}

impl Transfer {
    /// Reads the `members` of `items` (whole `incr` requests) with one query; each file's slot
    /// becomes what became of it (or stays `Alone`, to be served on its own).
    pub(crate) fn read_incremental_many(
        &self,
        s: &mut Session,
        items: &[Option<Item>],
        members: &[usize],
        slots: &mut [Slot],
    ) -> Result<(), TransferError> {
        if members.is_empty() {
            return Ok(());
        }
        let (mut firsts, mut counts, mut offs, mut lens) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &k in members {
            let list = items[k].as_ref().and_then(|i| i.req.incremental.as_ref()).ok_or_else(internal)?;
            let (o, l) = ranges(&list.blocks, self.chunk.max(BLCKSZ as u64));
            firsts.push(offs.len() as i32 + 1);
            counts.push(o.len() as i32);
            offs.extend(o);
            lens.extend(l);
        }
        let paths = members.iter().map(|&k| member_src(items, k)).collect::<Vec<Vec<u8>>>();
        let what = format!("could not read a batch of {} incremental files", members.len());
        let params: [&(dyn postgres::types::ToSql + Sync); 5] = [&paths, &firsts, &counts, &offs, &lens];
        let mut rows = match s.stream(sql_incr::READ_BLOCKS_MANY, &params, &what) {
            Ok(r) => r,
            Err(e) => return query_failed(TransferError::Pg(e), members.len()),
        };
        let mut cur: Option<Current> = None;
        loop {
            let row = match rows.next() {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => return query_failed(pg_err(&what, e), members.len()),
            };
            let k = match position(&row, cur.as_ref().map(|c| c.k), members.len(), &what) {
                Ok(k) => k,
                Err(e) => return query_failed(e, members.len()),
            };
            if cur.as_ref().is_none_or(|c| c.k != k) {
                if let Some(done) = cur.take() {
                    self.settle_incremental(done, items, members, slots)?;
                }
                let (first, n) = (i64::from(firsts[k]), i64::from(counts[k]));
                cur = Some(Current {
                    k,
                    out: None,
                    mtime: 0,
                    next: first,
                    end: first + n,
                    block: 0,
                    vanished: false,
                    wire: 0,
                });
            }
            let Some(c) = cur.as_mut() else { return Err(internal()) };
            let it = items[members[k]].as_ref().ok_or_else(internal)?;
            match self.one_row(&row, it, c, &lens) {
                Ok(()) => {}
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    slots[members[k]] = Slot::Done(Err(e), None);
                    c.out = None;
                    c.vanished = false;
                    c.next = i64::MIN;
                }
            }
        }
        if let Some(done) = cur {
            self.settle_incremental(done, items, members, slots)?;
        }
        Ok(())
    }

    /// One row of [`sql_incr::READ_BLOCKS_MANY`] for the current file.
    fn one_row(&self, row: &postgres::Row, it: &Item, c: &mut Current, lens: &[i64]) -> Result<(), TransferError> {
        if c.next == i64::MIN || c.vanished {
            return Ok(());
        }
        let what = format!("could not read the changed blocks of \"{}\"", it.src.display());
        let get = |e| pg_err(&what, e);
        if row.try_get::<_, Option<i64>>(1).map_err(get)?.is_none() {
            c.vanished = true;
            return Ok(());
        }
        let list = it.req.incremental.as_ref().ok_or_else(internal)?;
        if c.out.is_none() {
            c.mtime = row.try_get::<_, Option<i64>>(2).map_err(get)?.unwrap_or(0);
            c.out = Some(self.incremental_out(&it.src, it.dest, &it.dst, list, None, true)?);
        }
        let Some(k) = row.try_get::<_, Option<i64>>(3).map_err(get)? else { return Ok(()) };
        if k != c.next || k >= c.end {
            let message = format!("the server answered range {k} where {} was due", c.next);
            return Err(TransferError::Data { path: it.src.display(), message });
        }
        // Removed while it was read.
        let Some(data) = row.try_get::<_, Option<&[u8]>>(4).map_err(get)? else {
            c.vanished = true;
            return Ok(());
        };
        let want = usize::try_from(lens[(k - 1) as usize]).unwrap_or(0);
        c.wire += data.len().min(want) as u64;
        if let Some(t) = &self.throttle {
            t.pace(data.len().min(want) as u64);
        }
        let o = c.out.as_mut().ok_or_else(internal)?;
        o.range(data, want, &list.blocks, &mut c.block)?;
        c.next += 1;
        Ok(())
    }

    /// The current file done: in place, or gone (its slot says which); one whose ranges did
    /// not all come stays to be read on its own.
    fn settle_incremental(
        &self,
        c: Current,
        items: &[Option<Item>],
        members: &[usize],
        slots: &mut [Slot],
    ) -> Result<(), TransferError> {
        let slot = &mut slots[members[c.k]];
        if c.next == i64::MIN {
            return Ok(());
        }
        if c.vanished {
            *slot = Slot::Done(Ok(Outcome::Vanished), None);
            return Ok(());
        }
        let Some(o) = c.out else { return Ok(()) };
        if c.next != c.end {
            let it = items[members[c.k]].as_ref().ok_or_else(internal)?;
            log::debug!("{}: not all its ranges came in the batch: read on its own", it.src.display());
            return Ok(());
        }
        let wire = c.wire;
        let Out { w, digest, pages } = o;
        let size = w.finish(self.sync)?;
        let verified_pages = pages.as_ref().map_or(0, |p| p.verified);
        let copied =
            Copied { size, checksum: digest.finish(), mtime: c.mtime, bad_pages: Vec::new(), wire, verified_pages };
        *slot = Slot::Done(Ok(Outcome::Copied(copied)), pages);
        Ok(())
    }
}
