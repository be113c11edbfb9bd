//! A batch of small files (`batch<TAB>N`, see docs/protocol.md), worker side: read — or,
//! with `--delta`, compared — with one query for the whole batch, over `unnest` of their
//! paths (as pg_rewind's `libpq_source.c` fetches), each file then written, checksummed and
//! page-verified as a file on its own is, and answered one line per file in the order asked.
//! Files read through the compression helper go with one query too (`batch_zlib`). What
//! cannot go in the query (a piece, a name that is not UTF-8, a file that grew past
//! [`MAX_READ`] in a plain read, a query that failed) is served on its own, in its place.

use std::fs::File;

use postgres::fallible_iterator::FallibleIterator;

use crate::compare::{block_hashes, Answer, Blocks, Step, READ};
use crate::dest::{Dest, DestError, Roots, SafePath};
use crate::error::Error;
use crate::pg::{sql, Session};
use crate::protocol::{Request, Response};
use crate::transfer::{pg_err, Copied, Method, Outcome, Pages, Transfer, TransferError};

/// Largest file the batch query reads in its row; a file listed small that grew past this
/// since is read on its own, in chunks.
const MAX_READ: i64 = 1 << 20;

/// One request line of a batch, as the worker parsed it: the request and its checked paths,
/// or the line that answers it.
pub type Parsed = Result<(Request, SafePath, SafePath), Response>;

/// What a batch needs of the worker: its session for the batch queries, and a file served
/// on its own (reconnecting after a lost connection where the worker does).
pub trait Worker {
    fn session(&mut self) -> (&mut Session, &Transfer);
    /// One request's file on its own, as a single line would be served.
    fn alone(&mut self, roots: &Roots, req: &Request, src: &SafePath, dst: &SafePath)
        -> Result<Outcome, TransferError>;
    /// Whether a lost connection is retried: the files a batch query did not do are then
    /// served on their own (and retried) instead of ending the worker.
    fn retries(&self) -> bool;
}

/// One file of the batch, from the worker's point of view.
pub(crate) struct Item<'r> {
    pub(crate) req: Request,
    pub(crate) src: SafePath,
    /// DST as asked (below DEST, or a tablespace's `pg_tblspc/OID/…`).
    asked: SafePath,
    /// Where it goes: its root (DEST or a tablespace's target) and the path below it.
    pub(crate) dest: &'r Dest,
    pub(crate) dst: SafePath,
}

/// How far a file of the batch got.
pub(crate) enum Slot {
    /// Served on its own when its turn comes.
    Alone,
    /// Done by the batch query; pages that failed once are read again when it is answered.
    Done(Result<Outcome, TransferError>, Option<Pages>),
    /// Its line could not be parsed: this answer.
    Answer(Response),
}

/// Serves a batch: the batch queries first, then, in the order asked, each file answered
/// (served on its own where the query did not do it). A fatal error ends the worker.
pub fn serve(
    w: &mut impl Worker,
    roots: &Roots,
    batch: Vec<Parsed>,
    say: &mut impl FnMut(Response) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut slots = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    for p in batch {
        match p {
            Ok((req, src, asked)) => {
                let (dest, dst) = roots.route(&asked);
                slots.push(Slot::Alone);
                items.push(Some(Item { req, src, asked, dest, dst }));
            }
            Err(answer) => {
                slots.push(Slot::Answer(answer));
                items.push(None);
            }
        }
    }
    let retries = w.retries();
    let (s, t) = w.session();
    // Whole files, and with `--delta` from a server on this machine files compared as they
    // stream, are read; files compared by block hashes are compared.
    let plain = t.method == Method::Plain;
    let reads = members(&items, |r| {
        plain && r.range.is_none() && r.incremental.is_none() && (!r.compare || t.compare_by_content)
    });
    let compares = members(&items, |r| r.compare && r.range.is_none() && !t.compare_by_content);
    let incrementals = members(&items, |r| r.incremental.is_some() && r.range.is_none());
    // Whole files through the compression helper, read with one query too.
    let zlib = t.method.level().filter(|_| !plain);
    let zreads = members(&items, |r| zlib.is_some() && r.range.is_none() && r.incremental.is_none() && !r.compare);
    let queried = t
        .read_many(s, &items, &reads, &mut slots)
        .and_then(|()| zlib.map_or(Ok(()), |level| t.read_many_zlib(s, &items, &zreads, &mut slots, level)))
        .and_then(|()| t.compare_many(s, &items, &compares, &mut slots))
        .and_then(|()| t.read_incremental_many(s, &items, &incrementals, &mut slots));
    match queried {
        Ok(()) => {}
        Err(e) if retries && lost(&e) => log::info!("the connection was lost in a batch query: {e}"),
        Err(e) => {
            let e = match e {
                TransferError::Pg(p) => TransferError::Pg(s.explain(p)),
                other => other,
            };
            let _ = say(Response::Fatal { message: e.to_string() });
            return Err(e.into());
        }
    }
    for (slot, item) in slots.into_iter().zip(items) {
        let (slot, it) = match (slot, item) {
            (Slot::Answer(a), _) => {
                say(a)?;
                continue;
            }
            (slot, Some(it)) => (slot, it),
            (_, None) => return Err(Error::Internal("a batch member without a request")),
        };
        let done = match slot {
            Slot::Done(done, pages) => {
                let (s, t) = w.session();
                match reread(s, t, &it.src, done, pages) {
                    Err(e) if retries && lost(&e) => w.alone(roots, &it.req, &it.src, &it.asked),
                    other => other,
                }
            }
            _ => w.alone(roots, &it.req, &it.src, &it.asked),
        };
        answer(it.req.src, done, say)?;
    }
    Ok(())
}

/// The connection is gone (a worker that retries serves what is left on its own).
fn lost(e: &TransferError) -> bool {
    matches!(e, TransferError::Pg(p) if p.connection_lost())
}

/// The positions of the items the batch query can do: `fits` and a UTF-8 name.
fn members(items: &[Option<Item>], fits: impl Fn(&Request) -> bool) -> Vec<usize> {
    let ok = |i: &Item| fits(&i.req) && i.src.to_str().is_some();
    items.iter().enumerate().filter(|(_, i)| i.as_ref().is_some_and(ok)).map(|(k, _)| k).collect()
}

/// Pages that failed once read again (the session is free now), as a file on its own.
fn reread(
    s: &mut Session,
    t: &Transfer,
    src: &SafePath,
    done: Result<Outcome, TransferError>,
    pages: Option<Pages>,
) -> Result<Outcome, TransferError> {
    match (done?, pages) {
        (Outcome::Copied(c), Some(p)) if !p.suspects.is_empty() => {
            let bad_pages = t.reread(s, src, &p).map_err(|e| match e {
                TransferError::Pg(p) => TransferError::Pg(s.explain(p)),
                other => other,
            })?;
            Ok(Outcome::Copied(Copied { bad_pages, ..c }))
        }
        (outcome, _) => Ok(outcome),
    }
}

/// The answer of one file: its `badpage` lines and `ok`, `vanished` or `error`; a fatal
/// error is told and ends the worker.
fn answer(
    src: Vec<u8>,
    done: Result<Outcome, TransferError>,
    say: &mut impl FnMut(Response) -> Result<(), Error>,
) -> Result<(), Error> {
    match done {
        Ok(Outcome::Copied(c)) => {
            for b in &c.bad_pages {
                let (block, calculated, expected) = (b.block, b.calculated, b.expected);
                say(Response::BadPage { path: src.clone(), block, calculated, expected })?;
            }
            let (size, checksum, mtime, wire, verified) = (c.size, c.checksum, c.mtime, c.wire, c.verified_pages);
            say(Response::Ok { size, path: src, checksum, mtime, wire, verified })
        }
        Ok(Outcome::Vanished) => say(Response::Vanished { path: src }),
        Err(e) if e.is_fatal() => {
            let _ = say(Response::Fatal { message: e.to_string() });
            Err(e.into())
        }
        Err(e) => say(Response::Error { path: src, message: e.to_string() }),
    }
}

/// A failure of the batch query itself: fatal (the connection is gone) is returned; any
/// other leaves the files it did not do to be served on their own.
pub(crate) fn query_failed(e: TransferError, n: usize) -> Result<(), TransferError> {
    if e.is_fatal() {
        return Err(e);
    }
    log::info!("a batch query of {n} files failed, they are read one by one: {e}");
    Ok(())
}

/// Where a row of the batch query belongs: its position (from 1) among `members`, which
/// must follow `prev` (rows come in the order asked).
pub(crate) fn position(row: &postgres::Row, prev: Option<usize>, n: usize, what: &str) -> Result<usize, TransferError> {
    let i: i64 = row.try_get(0).map_err(|e| pg_err(what, e))?;
    let k = usize::try_from(i - 1).ok().filter(|&k| k < n && prev.is_none_or(|p| k >= p));
    k.ok_or_else(|| TransferError::Data { path: what.to_string(), message: format!("row of file {i} out of order") })
}

impl Transfer {
    /// Reads the `members` of `items` (whole files, plain) with one query; each file's slot
    /// becomes what became of it (or stays `Alone`).
    fn read_many(
        &self,
        s: &mut Session,
        items: &[Option<Item>],
        members: &[usize],
        slots: &mut [Slot],
    ) -> Result<(), TransferError> {
        if members.is_empty() {
            return Ok(());
        }
        let member = |k: usize| items[members[k]].as_ref().ok_or_else(internal);
        let paths = members.iter().map(|&k| member_src(items, k)).collect::<Vec<Vec<u8>>>();
        let what = format!("could not read a batch of {} files", members.len());
        let mut rows = match s.stream(sql::READ_MANY, &[&paths, &MAX_READ], &what) {
            Ok(r) => r,
            Err(e) => return query_failed(TransferError::Pg(e), members.len()),
        };
        let mut prev = None;
        loop {
            let row = match rows.next() {
                Ok(Some(row)) => row,
                Ok(None) => return Ok(()),
                Err(e) => return query_failed(pg_err(&what, e), members.len()),
            };
            let k = match position(&row, prev.map(|p| p + 1), members.len(), &what) {
                Ok(k) => k,
                Err(e) => return query_failed(e, members.len()),
            };
            prev = Some(k);
            let it = member(k)?;
            match self.one_read(&row, it) {
                Ok(None) => {}
                Ok(Some((outcome, pages))) => slots[members[k]] = Slot::Done(Ok(outcome), pages),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => slots[members[k]] = Slot::Done(Err(e), None),
            }
        }
    }

    /// One file from its row of [`sql::READ_MANY`]: written, or `None` to read on its own.
    fn one_read(&self, row: &postgres::Row, it: &Item) -> Result<Option<(Outcome, Option<Pages>)>, TransferError> {
        let what = format!("could not read \"{}\"", it.src.display());
        let get = |e| pg_err(&what, e);
        let Some(size) = row.try_get::<_, Option<i64>>(1).map_err(get)? else {
            return self.vanished(it);
        };
        let mtime = row.try_get::<_, Option<i64>>(2).map_err(get)?.unwrap_or(0);
        if row.try_get::<_, Option<bool>>(3).map_err(get)? != Some(true) {
            return Ok(None);
        }
        // Removed between its stat and its read.
        let Some(data) = row.try_get::<_, Option<&[u8]>>(4).map_err(get)? else {
            return self.vanished(it);
        };
        let size = size.max(0) as u64;
        if data.len() as u64 > size {
            let message = "the server sent more data than the file size".into();
            return Err(TransferError::Data { path: it.src.display(), message });
        }
        let mut sink = self.small_sink(it.dest, &it.src, &it.dst, it.req.compare)?;
        sink.wire += data.len() as u64;
        if let Some(th) = &self.throttle {
            th.pace(data.len() as u64);
        }
        sink.write(data)?;
        // Shrank between its stat and its read: zero-filled, as a file on its own is.
        sink.zeros(size - data.len() as u64)?;
        let (copied, pages) = self.close(sink, mtime)?;
        Ok(Some((Outcome::Copied(copied), pages)))
    }

    /// A file gone from the server; an older copy compared as it streams is removed.
    fn vanished(&self, it: &Item) -> Result<Option<(Outcome, Option<Pages>)>, TransferError> {
        if it.req.compare {
            it.dest.remove_file(&it.dst)?;
        }
        Ok(Some((Outcome::Vanished, None)))
    }

    /// `--delta`: compares the `members` of `items` with one query (the copy's block hashes
    /// sent for each) and brings each file to the server's bytes as `refresh` does.
    fn compare_many(
        &self,
        s: &mut Session,
        items: &[Option<Item>],
        members: &[usize],
        slots: &mut [Slot],
    ) -> Result<(), TransferError> {
        // The copies read from the device all at once (see `will_need`), then each hashed (one
        // file open at a time); what cannot be refreshed in place, or could not be read, stays
        // out of the query.
        for it in members.iter().filter_map(|&k| items[k].as_ref()) {
            if let Ok(Some(f)) = it.dest.open_existing(&it.dst) {
                crate::copy_reader::will_need(&f, 0, f.metadata().map_or(0, |m| m.len()));
            }
        }
        let mut asked = Vec::with_capacity(members.len());
        let mut hashes = Vec::with_capacity(members.len());
        for &k in members {
            let Some(it) = items[k].as_ref() else { continue };
            match local_hashes(self, it) {
                Ok(Some(h)) => {
                    asked.push(k);
                    hashes.push(h);
                }
                Ok(None) => {}
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => slots[k] = Slot::Done(Err(e), None),
            }
        }
        if asked.is_empty() {
            return Ok(());
        }
        let paths = asked.iter().map(|&k| member_src(items, k)).collect::<Vec<Vec<u8>>>();
        let what = format!("could not compare a batch of {} files", asked.len());
        let read = READ as i64;
        let mut rows = match s.stream(sql::COMPARE_MANY, &[&paths, &read, &hashes], &what) {
            Ok(r) => r,
            Err(e) => return query_failed(TransferError::Pg(e), asked.len()),
        };
        let mut cur: Option<Refreshing> = None;
        loop {
            let row = match rows.next() {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => return query_failed(pg_err(&what, e), asked.len()),
            };
            let k = match position(&row, cur.as_ref().map(|c| c.k), asked.len(), &what) {
                Ok(k) => k,
                Err(e) => {
                    // What was taken for the whole of an earlier file may not be: again, alone.
                    if let Some(c) = cur.take() {
                        slots[asked[c.k]] = Slot::Alone;
                    }
                    return query_failed(e, asked.len());
                }
            };
            if cur.as_ref().is_none_or(|c| c.k != k) {
                if let Some(c) = cur.take() {
                    let at = asked[c.k];
                    slots[at] = self.refreshed(c)?;
                }
                let it = items[asked[k]].as_ref().ok_or(internal())?;
                cur = Some(Refreshing::open(k, it)?);
            }
            if let Some(c) = cur.as_mut() {
                c.row(self, &row, &what)?;
            }
        }
        if let Some(c) = cur.take() {
            let at = asked[c.k];
            slots[at] = self.refreshed(c)?;
        }
        Ok(())
    }

    /// The end of one file's rows: the file settled (cut to size, checksummed, its pages
    /// checked), removed if it vanished, or left to be served on its own.
    fn refreshed(&self, c: Refreshing) -> Result<Slot, TransferError> {
        let it = c.item;
        Ok(match c.state {
            State::Open(mut file) => {
                let Some(Answer::Refreshed { size, mtime, wire }) = c.blocks.refreshed() else {
                    return Ok(Slot::Alone);
                };
                let io =
                    |e| TransferError::Dest(DestError::Io { path: it.dest.root().join(it.dst.to_path()), source: e });
                let (checksum, pages) = self.settle(&it.src, &mut file, size).map_err(io)?;
                let verified_pages = pages.as_ref().map_or(0, |p| p.verified);
                let copied = Copied { size, checksum, mtime, bad_pages: Vec::new(), wire, verified_pages };
                Slot::Done(Ok(Outcome::Copied(copied)), pages)
            }
            State::Vanished => match it.dest.remove_file(&it.dst) {
                Ok(()) => Slot::Done(Ok(Outcome::Vanished), None),
                Err(e) => Slot::Done(Err(e.into()), None),
            },
            State::Alone => Slot::Alone,
            State::Failed(e) => Slot::Done(Err(e), None),
        })
    }
}

pub(crate) fn internal() -> TransferError {
    TransferError::Data { path: String::new(), message: "internal: a batch member without a request".into() }
}

/// The source path of item `k` (raw bytes).
pub(crate) fn member_src(items: &[Option<Item>], k: usize) -> Vec<u8> {
    items[k].as_ref().map_or_else(Vec::new, |i| i.src.as_bytes())
}

/// The block hashes of a file's copy in DEST, `None` if it cannot be refreshed in place
/// (`refresh` replaces it, on its own).
fn local_hashes(t: &Transfer, it: &Item) -> Result<Option<Vec<u8>>, TransferError> {
    let Some(mut file) = it.dest.open_existing(&it.dst)? else { return Ok(None) };
    let path = it.dest.root().join(it.dst.to_path());
    let io = |source| DestError::Io { path: path.clone(), source };
    let fp = t.fingerprint(&it.src, file.metadata().map_err(io)?.len());
    let h = block_hashes(&mut file, fp).map_err(io)?;
    Ok(Some(h))
}

/// One file of a compared batch while its rows come.
struct Refreshing<'i, 'r> {
    /// Its position in the query.
    k: usize,
    item: &'i Item<'r>,
    blocks: Blocks,
    state: State,
}

enum State {
    /// Its differing blocks are written into it.
    Open(File),
    /// Gone from the server: removed from DEST when its rows end.
    Vanished,
    /// It cannot be refreshed in place (any more): served on its own.
    Alone,
    /// Answered with this error.
    Failed(TransferError),
}

impl<'i, 'r> Refreshing<'i, 'r> {
    fn open(k: usize, item: &'i Item<'r>) -> Result<Refreshing<'i, 'r>, TransferError> {
        let state = match item.dest.open_existing(&item.dst) {
            Ok(Some(f)) => State::Open(f),
            Ok(None) => State::Alone,
            Err(e) => match TransferError::from(e) {
                e if e.is_fatal() => return Err(e),
                e => State::Failed(e),
            },
        };
        Ok(Refreshing { k, item, blocks: Blocks::new(item.src.display()), state })
    }

    /// One row of the comparison; a fatal error ends the batch, any other only this file.
    fn row(&mut self, t: &Transfer, row: &postgres::Row, what: &str) -> Result<(), TransferError> {
        let State::Open(file) = &self.state else { return Ok(()) };
        match self.blocks.row(t, file, row, 1, what) {
            Ok(Step::More) => {}
            Ok(Step::Vanished) => self.state = State::Vanished,
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => self.state = State::Failed(e),
        }
        Ok(())
    }
}
