//! A batch of small files read through the compression helper with one query
//! (`sql::read_many_zlib`): each file's header row, then its compressed chunks, files in the
//! order asked; each file written, checksummed and page-verified as a file on its own is.
//! Without it every small file of a compressed backup was a query of its own.

use postgres::fallible_iterator::FallibleIterator;

use crate::batch::{member_src, position, query_failed, Item, Slot};
use crate::pg::{sql, Session};
use crate::transfer::{pg_err, Outcome, Sink, Transfer, TransferError};

/// The file whose rows are coming: its sink (once its header came), the size the helper
/// saw at open and its mtime.
struct Open {
    sink: Sink,
    size: u64,
    mtime: i64,
}

impl Transfer {
    /// Reads the `members` of `items` (whole files, not compared) compressed at `level`
    /// with one query; each file's slot becomes what became of it. A file the helper gave no
    /// row for is gone from the server; the files a failed query did not finish stay
    /// `Alone` (served on their own, an unfinished one's temporary file removed first).
    pub(crate) fn read_many_zlib(
        &self,
        s: &mut Session,
        items: &[Option<Item>],
        members: &[usize],
        slots: &mut [Slot],
        level: u32,
    ) -> Result<(), TransferError> {
        if members.is_empty() {
            return Ok(());
        }
        let paths = members.iter().map(|&k| member_src(items, k)).collect::<Vec<Vec<u8>>>();
        let what = format!("could not read a batch of {} files", members.len());
        let sql = sql::read_many_zlib(&self.helper.function(self.method));
        let (chunk, level) = (self.chunk as i64, level as i32);
        let mut rows = match s.stream(&sql, &[&paths, &chunk, &level], &what) {
            Ok(r) => r,
            Err(e) => return query_failed(TransferError::Pg(e), members.len()),
        };
        // The member whose rows are coming, open (`None` once it failed: its rows are skipped).
        let mut cur: Option<(usize, Option<Open>)> = None;
        // Members before this one are settled (done, failed, or gone: no rows).
        let mut next = 0;
        let mut buf = Vec::with_capacity(self.chunk as usize);
        loop {
            let row = match rows.next() {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => return query_failed(pg_err(&what, e), members.len()),
            };
            let k = match position(&row, cur.as_ref().map(|c| c.0), members.len(), &what) {
                Ok(k) => k,
                Err(e) => return query_failed(e, members.len()),
            };
            let it = items[members[k]].as_ref().ok_or_else(crate::batch::internal)?;
            let data: &[u8] = row.try_get(1).map_err(|e| pg_err(&what, e))?;
            let step = match cur.as_mut() {
                Some((at, Some(open))) if *at == k => {
                    self.helper_chunk(&mut open.sink, data, open.size, &mut buf, &it.src.display())
                }
                Some((at, None)) if *at == k => continue,
                _ => {
                    // A new file: the one before is complete, those in between are gone.
                    if let Some((at, Some(open))) = cur.take() {
                        slots[members[at]] = self.finished(open)?;
                    }
                    for gone in next..k {
                        slots[members[gone]] = Slot::Done(Ok(Outcome::Vanished), None);
                    }
                    next = k + 1;
                    self.opened(it, data).map(|open| {
                        cur = Some((k, Some(open)));
                    })
                }
            };
            if let Err(e) = step {
                if e.is_fatal() {
                    return Err(e);
                }
                slots[members[k]] = Slot::Done(Err(e), None);
                cur = Some((k, None));
            }
        }
        if let Some((at, Some(open))) = cur.take() {
            slots[members[at]] = self.finished(open)?;
        }
        for gone in next..members.len() {
            slots[members[gone]] = Slot::Done(Ok(Outcome::Vanished), None);
        }
        Ok(())
    }

    /// A file's first row, the helper's header (size at open, mtime): its sink.
    fn opened(&self, it: &Item, header: &[u8]) -> Result<Open, TransferError> {
        let (size, mtime) = crate::transfer::helper_header(header, &it.src.display())?;
        let sink = self.small_sink(it.dest, &it.src, &it.dst, false)?;
        Ok(Open { sink, size, mtime })
    }

    /// A file's rows ended: zero-filled to the size the helper saw at open (it shrank while
    /// read, as a file on its own is), and closed.
    fn finished(&self, mut open: Open) -> Result<Slot, TransferError> {
        let short = open.size - open.sink.written();
        let done = open.sink.zeros(short).and_then(|()| self.close(open.sink, open.mtime));
        Ok(match done {
            Ok((copied, pages)) => Slot::Done(Ok(Outcome::Copied(copied)), pages),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => Slot::Done(Err(e), None),
        })
    }
}
