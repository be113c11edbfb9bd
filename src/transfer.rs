//! Streaming one server file into DEST, chunk by chunk over one query (no round trip per
//! chunk), plain with built-in functions or zlib-compressed through the PL/Python helper.
//! The bytes are checksummed for the manifest and, for relation files, page-verified as they
//! pass.

use postgres::fallible_iterator::FallibleIterator;

use crate::checksum::{block_number, check_page, PageCheck, BLCKSZ};
use crate::dest::{Dest, DestError, FileWriter, SafePath};
use crate::digest::{Algorithm, Digest};
use crate::layout::{checksummed_segment, LayoutRules};
use crate::pg::sql;
use crate::pg::{PgError, Session};

/// How chunks travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `pg_read_binary_file`, nothing created on the server.
    Plain,
    /// A PL/Python helper (see [`ZlibHelper`]), zlib at this level (0–9).
    Zlib(u32),
    /// The temporary PL/Python helper calling the server's own libzstd (one already loaded
    /// in the backend, see `sql::CREATE_ZSTD_READER`) at this level (1–19).
    Zstd(u32),
}

impl Method {
    /// The compression level of a method that goes through a helper (`None`: plain).
    pub fn level(self) -> Option<u32> {
        match self {
            Method::Plain => None,
            Method::Zlib(l) | Method::Zstd(l) => Some(l),
        }
    }
}

/// Which PL/Python helper compressed chunks come through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZlibHelper {
    /// `pg_temp.pgbb_read_zlib`, created by each session and gone with it (a superuser, on a
    /// primary).
    Temp,
    /// `SCHEMA.read_zlib_v1`, installed once by `pgbb --install-helper` (any role granted
    /// EXECUTE, on the primary and every standby).
    Installed(String),
}

impl ZlibHelper {
    /// The helper function of `method`, schema-qualified (to call it in a larger statement).
    pub(crate) fn function(&self, method: Method) -> String {
        match self {
            ZlibHelper::Temp if matches!(method, Method::Zstd(_)) => "pg_temp.pgbb_read_zstd".into(),
            ZlibHelper::Temp => "pg_temp.pgbb_read_zlib".into(),
            ZlibHelper::Installed(schema) => {
                format!("{}.{}", crate::pg::sql_helper::quote(schema), crate::pg::sql_helper::NAME)
            }
        }
    }

    /// The statement a file is streamed through with `method`.
    fn call(&self, method: Method) -> std::borrow::Cow<'static, str> {
        match self {
            ZlibHelper::Temp if matches!(method, Method::Zstd(_)) => sql::READ_ZSTD.into(),
            ZlibHelper::Temp => sql::READ_ZLIB.into(),
            ZlibHelper::Installed(schema) => crate::pg::sql_helper::read_call(schema).into(),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Plain => write!(f, "none"),
            Method::Zlib(l) => write!(f, "zlib:{l}"),
            Method::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

/// Page verification settings (only on clusters with data checksums).
#[derive(Debug, Clone, Copy)]
pub struct PageVerify {
    /// Pages with an LSN at or past this (the backup's start) are skipped.
    pub start_lsn: u64,
    pub blocks_per_segment: u32,
    pub rules: LayoutRules,
}

/// A page that failed verification twice (as streamed, and re-read once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPage {
    pub block: u32,
    pub calculated: u16,
    pub expected: u16,
}

/// A file written to DEST.
#[derive(Debug, PartialEq, Eq)]
pub struct Copied {
    pub size: u64,
    /// Manifest checksum, `None` with `--manifest-checksums NONE`.
    pub checksum: Option<crate::digest::Checksum>,
    /// The server's modification time, seconds since the epoch.
    pub mtime: i64,
    pub bad_pages: Vec<BadPage>,
    /// Bytes that came over the network for it (less than `size` when compressed).
    pub wire: u64,
    /// Data pages whose checksum was compared (not new, not changed since the start).
    pub verified_pages: u64,
}

/// The result of one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Copied(Copied),
    /// The file does not exist (any more) on the server: normal during a backup.
    Vanished,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Dest(#[from] DestError),
    #[error("{path}: {message}")]
    Data { path: String, message: String },
    /// The connection was lost and could not be made to work again (see [`crate::retry`]).
    #[error("{source} (gave up after {attempts} attempts to reconnect)")]
    GaveUp {
        attempts: u32,
        #[source]
        source: PgError,
    },
}

impl TransferError {
    /// True when the child cannot go on with other files (connection gone, DEST unwritable),
    /// false when only this file failed.
    pub fn is_fatal(&self) -> bool {
        match self {
            TransferError::Pg(e) => e.connection_lost(),
            TransferError::Dest(DestError::Io { .. }) => true,
            TransferError::Dest(_) => false,
            TransferError::Data { .. } => false,
            TransferError::GaveUp { .. } => true,
        }
    }
}

/// How the server is told which file, always as raw bytes (never converted between
/// encodings): by its path, or, for a path that is not valid UTF-8 (which a UTF8 server
/// refuses as text), by the raw bytes of its components, directories included.
pub(crate) enum Source {
    Path(Vec<u8>),
    ByName(Vec<Vec<u8>>),
}

impl Source {
    pub(crate) fn of(src: &SafePath) -> Source {
        if src.to_str().is_some() {
            return Source::Path(src.as_bytes());
        }
        Source::ByName(src.as_bytes().split(|&b| b == b'/').map(<[u8]>::to_vec).collect())
    }
}

/// `--max-rate`: this worker's share of the limit, in bytes per second over the network.
#[derive(Debug, Clone)]
pub struct Throttle {
    rate: u64,
    start: std::cell::Cell<Option<std::time::Instant>>,
    bytes: std::cell::Cell<u64>,
}

impl Throttle {
    pub fn new(rate: u64) -> Throttle {
        Throttle { rate: rate.max(1), start: std::cell::Cell::new(None), bytes: std::cell::Cell::new(0) }
    }

    /// Counts `n` bytes received and sleeps as long as the worker is ahead of its rate.
    pub(crate) fn pace(&self, n: u64) {
        let start = *self.start.get().get_or_insert_with(std::time::Instant::now);
        self.start.set(Some(start));
        let total = self.bytes.get() + n;
        self.bytes.set(total);
        let due = std::time::Duration::from_secs_f64(total as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// What one request copies, and into what.
#[derive(Debug, Clone, Copy)]
enum Request {
    /// The whole file, into a file of its own.
    Whole,
    /// Bytes `offset..offset + len`, into their place in a file assembled from pieces.
    Piece(u64, u64),
    /// The first `len` bytes, into a file of its own zero-filled to `size` bytes.
    Head(u64, u64),
    /// The whole file, over an older copy of it: only the blocks that differ are written
    /// (`--delta` from a server on this machine, see [`crate::compare::InPlace`]).
    Refresh,
}

impl Request {
    /// The byte range read from the server, `None` for the whole file.
    fn range(self) -> Option<(u64, u64)> {
        match self {
            Request::Whole | Request::Refresh => None,
            Request::Piece(off, len) => Some((off, len)),
            Request::Head(len, _) => Some((0, len)),
        }
    }
}

/// Copies files from one session into DEST.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub method: Method,
    /// The helper zlib chunks come through.
    pub helper: ZlibHelper,
    pub chunk: u64,
    pub sync: bool,
    pub algorithm: Algorithm,
    pub verify: Option<PageVerify>,
    /// Where to report how far a file got while it is copied (the worker's `progress` lines,
    /// when the master asks for them with -P); the transfer itself prints nothing.
    pub progress: Option<fn(u64)>,
    pub throttle: Option<Throttle>,
    /// `--delta`: compare a file by streaming it whole (a server on this machine), not by
    /// block hashes computed on the server.
    pub compare_by_content: bool,
    /// `--delta`: DEST's relation pages with an LSN up to this are compared by their header
    /// (see [`crate::fingerprint`]; the master's `--trust-lsn`), with page verification on.
    pub header_upto: Option<u64>,
    /// Plain chunks from a server across a network: data pages travel without their holes
    /// while the link is the limit (see [`crate::page_holes`]).
    pub holes: Option<crate::page_holes::Holes>,
    /// A worker's next requests, for `--delta` pieces begun ahead (see [`crate::piece_ahead`]).
    pub lookahead: Option<std::sync::Arc<crate::piece_ahead::Lookahead>>,
}

/// How many bytes one request writes: the whole file at the size stat'd when its read
/// starts, or, for a range, what the file holds of that range then (nothing past its end).
/// Only a file that shrinks during the read is zero-filled, up to this size.
pub fn extent(stat_size: u64, range: Option<(u64, u64)>) -> u64 {
    match range {
        None => stat_size,
        Some((off, len)) => len.min(stat_size.saturating_sub(off)),
    }
}

pub(crate) fn pg_err(what: &str, e: postgres::Error) -> TransferError {
    TransferError::Pg(PgError::query(what, e))
}

/// Page verification of one file as its bytes pass.
pub(crate) struct Pages {
    buf: Vec<u8>,
    offset: u64,
    segno: u32,
    v: PageVerify,
    /// (block, offset) of pages that failed once.
    pub(crate) suspects: Vec<(u32, u64)>,
    /// Pages whose checksum was compared, good or bad.
    pub(crate) verified: u64,
}

impl Pages {
    pub(crate) fn new(segno: u32, offset: u64, v: PageVerify) -> Pages {
        Pages { buf: Vec::new(), offset, segno, v, suspects: Vec::new(), verified: 0 }
    }

    fn page(&mut self, page: &[u8]) {
        let blkno = block_number(self.offset, self.segno, self.v.blocks_per_segment);
        match check_page(page, blkno, self.v.start_lsn) {
            PageCheck::Good => self.verified += 1,
            PageCheck::Bad { .. } => {
                self.verified += 1;
                self.suspects.push((blkno, self.offset));
            }
            PageCheck::New | PageCheck::Recent => {}
        }
        self.offset += BLCKSZ as u64;
    }

    /// One page out of order (an incremental file's blocks): block `block` of this segment.
    pub(crate) fn block(&mut self, page: &[u8], block: u32) {
        self.offset = u64::from(block) * BLCKSZ as u64;
        self.page(page);
    }

    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        if !self.buf.is_empty() {
            let take = (BLCKSZ - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == BLCKSZ {
                let page = std::mem::take(&mut self.buf);
                self.page(&page);
                self.buf = page;
                self.buf.clear();
            }
        }
        let mut pages = data.chunks_exact(BLCKSZ);
        for p in pages.by_ref() {
            self.page(p);
        }
        self.buf.extend_from_slice(pages.remainder());
    }
}

/// Where a file's bytes are written: a new file, or an older copy refreshed in place.
enum Out {
    New(FileWriter),
    InPlace(crate::compare::InPlace),
}

impl Out {
    fn write(&mut self, data: &[u8]) -> Result<(), DestError> {
        match self {
            Out::New(w) => w.write(data),
            Out::InPlace(w) => w.write(data),
        }
    }

    fn written(&self) -> u64 {
        match self {
            Out::New(w) => w.written(),
            Out::InPlace(w) => w.written(),
        }
    }

    fn finish(self, sync: bool) -> Result<u64, DestError> {
        match self {
            Out::New(w) => w.finish(sync),
            Out::InPlace(w) => w.finish(sync),
        }
    }
}

/// Where the bytes of one file go: DEST, the manifest checksum, the page verifier; and how
/// far it got, for progress lines.
pub(crate) struct Sink {
    w: Out,
    digest: Digest,
    pages: Option<Pages>,
    /// Bytes received from the server (compressed or not).
    pub(crate) wire: u64,
    /// Reports how far the file got (every 250 ms), and when it last did.
    progress: Option<(fn(u64), std::time::Instant)>,
}

impl Sink {
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), TransferError> {
        self.w.write(data)?;
        self.digest.update(data);
        if let Some(p) = self.pages.as_mut() {
            p.feed(data);
        }
        if let Some((report, last)) = self.progress {
            if last.elapsed() >= std::time::Duration::from_millis(250) {
                self.progress = Some((report, std::time::Instant::now()));
                report(self.w.written());
            }
        }
        Ok(())
    }

    pub(crate) fn zeros(&mut self, mut n: u64) -> Result<(), TransferError> {
        let zeros = [0u8; BLCKSZ];
        while n > 0 {
            let k = n.min(BLCKSZ as u64) as usize;
            self.write(&zeros[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    pub(crate) fn written(&self) -> u64 {
        self.w.written()
    }
}

impl Transfer {
    /// Creates what the method needs in this session (the pg_temp helper of zlib or zstd).
    pub fn prepare(&self, s: &mut Session) -> Result<(), PgError> {
        let create = match self.method {
            Method::Zlib(_) => sql::CREATE_ZLIB_READER,
            Method::Zstd(_) => sql::CREATE_ZSTD_READER,
            Method::Plain => return Ok(()),
        };
        if let ZlibHelper::Temp = &self.helper {
            s.execute(create, &[], "could not create the compression helper").map_err(|e| {
                // A server in recovery.
                if e.code() == Some(&crate::pg::SqlState::READ_ONLY_SQL_TRANSACTION) {
                    PgError::Unsupported(format!("--compress {}: {}", self.method, sql::READ_ONLY_NO_COMPRESSION))
                } else {
                    PgError::Compression(e.to_string())
                }
            })?;
        }
        Ok(())
    }

    fn sink(&self, dest: &Dest, src: &SafePath, dst: &SafePath, req: Request) -> Result<Sink, TransferError> {
        let range = req.range();
        let pages = self.verify.and_then(|v| {
            checksummed_segment(&String::from_utf8_lossy(&src.as_bytes()), v.rules)
                .map(|segno| Pages::new(segno, range.map_or(0, |(o, _)| o), v))
        });
        let progress = self.progress.map(|report| (report, std::time::Instant::now()));
        let w = match req {
            Request::Piece(off, _) => Out::New(dest.create_piece(dst, off)?),
            Request::Whole | Request::Head(..) => Out::New(dest.create_file(dst)?),
            Request::Refresh => match dest.open_existing(dst)? {
                Some(file) => {
                    let size = file.metadata().map_or(0, |m| m.len());
                    let mut w = crate::compare::InPlace::new(file, dest.root().join(dst.to_path()));
                    w.writeback = dest.writes_back(size);
                    Out::InPlace(w)
                }
                None => {
                    dest.remove_file(dst)?;
                    Out::New(dest.create_file(dst)?)
                }
            },
        };
        Ok(Sink { w, digest: Digest::new(self.algorithm), pages, wire: 0, progress })
    }

    /// Copies server file `src` (relative to the data directory) to `dst` below DEST.
    pub fn fetch(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
        range: Option<(u64, u64)>,
    ) -> Result<Outcome, TransferError> {
        let req = range.map_or(Request::Whole, |(off, len)| Request::Piece(off, len));
        self.fetch_as(s, src, dest, dst, req)
    }

    /// `--delta` by content: the whole file streams over the copy in DEST, written where it
    /// differs.
    pub(crate) fn refresh_streamed(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
    ) -> Result<Outcome, TransferError> {
        let out = self.fetch_as(s, src, dest, dst, Request::Refresh)?;
        if out == Outcome::Vanished {
            dest.remove_file(dst)?;
        }
        Ok(out)
    }

    /// Copies the first `len` bytes of server file `src` to `dst` and zero-fills it to `size`
    /// bytes: the WAL segment holding a backup's stop, whose bytes past the stop are not
    /// needed (recovery ends at the zeros). A file shorter than `len` on the server is not
    /// padded: the result is short, for the caller to report.
    pub fn fetch_head(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
        len: u64,
        size: u64,
    ) -> Result<Outcome, TransferError> {
        self.fetch_as(s, src, dest, dst, Request::Head(len, size))
    }

    fn fetch_as(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
        req: Request,
    ) -> Result<Outcome, TransferError> {
        let got = match self.method {
            Method::Plain => self.fetch_plain(s, src, dest, dst, req),
            Method::Zlib(level) | Method::Zstd(level) => self.fetch_zlib(s, src, dest, dst, level, req),
        };
        let got = got.map_err(|e| match e {
            TransferError::Pg(p) => TransferError::Pg(s.explain(p)),
            other => other,
        })?;
        let Some((mut sink, mtime)) = got else { return Ok(Outcome::Vanished) };
        if let Request::Head(len, size) = req {
            if sink.written() == len {
                sink.zeros(size.saturating_sub(len))?;
            }
        }
        let (copied, pages) = self.close(sink, mtime)?;
        let bad_pages = match pages {
            Some(p) if !p.suspects.is_empty() => self.reread(s, src, &p)?,
            _ => Vec::new(),
        };
        Ok(Outcome::Copied(Copied { bad_pages, ..copied }))
    }

    /// A whole small file's sink, without progress lines (a batch of them is answered at
    /// once); with `refresh`, over the copy in DEST, written where it differs.
    pub(crate) fn small_sink(
        &self,
        dest: &Dest,
        src: &SafePath,
        dst: &SafePath,
        refresh: bool,
    ) -> Result<Sink, TransferError> {
        let req = if refresh { Request::Refresh } else { Request::Whole };
        Ok(Sink { progress: None, ..self.sink(dest, src, dst, req)? })
    }

    /// One compressed chunk from the helper written through `sink`: paced, unpacked (see
    /// `page_holes::unpack`), and refused where it would take the file past `size`.
    pub(crate) fn helper_chunk(
        &self,
        sink: &mut Sink,
        data: &[u8],
        size: u64,
        buf: &mut Vec<u8>,
        path: &str,
    ) -> Result<(), TransferError> {
        sink.wire += data.len() as u64;
        if let Some(t) = &self.throttle {
            t.pace(data.len() as u64);
        }
        buf.clear();
        crate::page_holes::unpack(data, self.chunk, buf)
            .map_err(|message| TransferError::Data { path: path.to_string(), message })?;
        if sink.written() + buf.len() as u64 > size {
            let message = "the server sent more data than the file size".into();
            return Err(TransferError::Data { path: path.to_string(), message });
        }
        sink.write(buf)
    }

    /// Finishes a file written through `sink`: what it became, and its pages' verification
    /// (suspect pages not yet read again).
    pub(crate) fn close(&self, sink: Sink, mtime: i64) -> Result<(Copied, Option<Pages>), TransferError> {
        let Sink { w, digest, pages, wire, .. } = sink;
        let size = w.finish(self.sync)?;
        let verified_pages = pages.as_ref().map_or(0, |p| p.verified);
        let checksum = digest.finish();
        Ok((Copied { size, checksum, mtime, bad_pages: Vec::new(), wire, verified_pages }, pages))
    }

    /// Reads each suspect page again: a page being written while we read it can look torn
    /// once; only a page that fails twice counts.
    pub(crate) fn reread(&self, s: &mut Session, src: &SafePath, p: &Pages) -> Result<Vec<BadPage>, TransferError> {
        let what = format!("could not re-read a page of \"{}\"", src.display());
        let source = Source::of(src);
        let mut bad = Vec::new();
        for &(block, offset) in &p.suspects {
            let (offset, len) = (offset as i64, BLCKSZ as i64);
            let rows = match &source {
                Source::Path(path) => s.query(sql::READ_PAGE, &[path, &offset, &len], &what)?,
                Source::ByName(parts) => s.query(sql::READ_PAGE_BY_NAME, &[parts, &offset, &len], &what)?,
            };
            let Some(page) = rows.first().and_then(|r| r.get::<_, Option<Vec<u8>>>(0)) else { continue };
            if page.len() != BLCKSZ {
                continue;
            }
            if let PageCheck::Bad { calculated, expected } = check_page(&page, block, p.v.start_lsn) {
                bad.push(BadPage { block, calculated, expected });
            }
        }
        Ok(bad)
    }

    fn fetch_plain(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
        req: Request,
    ) -> Result<Option<(Sink, i64)>, TransferError> {
        let range = req.range();
        let path = src.display();
        let what = format!("could not read \"{path}\"");
        let source = Source::of(src);
        // A data file from across a network: timed (page_holes), and without holes while on.
        let timed = match (&self.holes, &source) {
            (Some(h), Source::Path(_)) => h.is_data(&path).then_some(h),
            _ => None,
        };
        let holes = timed.filter(|h| h.on());
        let started = std::time::Instant::now();
        let mut rows = self.plain_rows(s, &source, range, holes.is_some(), &what, &path)?;
        let mut out: Option<Sink> = None;
        let (mut size, mut mtime) = (0u64, 0i64);
        let mut filled = Vec::new();
        while let Some(row) = rows.next().map_err(|e| pg_err(&what, e))? {
            let Some(sz) = row.try_get::<_, Option<i64>>(0).map_err(|e| pg_err(&what, e))? else {
                return Ok(None);
            };
            let sink = match out.as_mut() {
                Some(w) => w,
                None => {
                    size = extent(sz.max(0) as u64, range);
                    mtime = row.try_get::<_, Option<i64>>(1).map_err(|e| pg_err(&what, e))?.unwrap_or(0);
                    out.insert(self.sink(dest, src, dst, req)?)
                }
            };
            match row.try_get::<_, Option<&[u8]>>(2).map_err(|e| pg_err(&what, e))? {
                None if size == 0 => {}
                // Removed while we were reading it.
                None => return Ok(None),
                Some(mut d) => {
                    sink.wire += d.len() as u64;
                    if let Some(t) = &self.throttle {
                        t.pace(d.len() as u64);
                    }
                    if holes.is_some() {
                        filled.clear();
                        crate::page_holes::fill(d, self.chunk, &mut filled)
                            .map_err(|message| TransferError::Data { path: path.clone(), message })?;
                        d = &filled;
                    }
                    // A file that shrank gives short chunks: zero-fill up to the size listed,
                    // as core does; WAL replay repairs the contents.
                    let want = self.chunk.min(size - sink.written()) as usize;
                    sink.write(&d[..d.len().min(want)])?;
                    if d.len() < want {
                        sink.zeros((want - d.len()) as u64)?;
                    }
                }
            }
        }
        if let (Some(h), Some(sink)) = (timed, &out) {
            h.saw(sink.written(), sink.wire, started.elapsed());
        }
        match (out, source) {
            (Some(sink), _) => Ok(Some((sink, mtime))),
            // Looked up by name in its directory: not there.
            (None, Source::ByName(..)) => Ok(None),
            (None, Source::Path(_)) => Err(TransferError::Data { path, message: "the server returned no rows".into() }),
        }
    }

    /// The rows of a plain read of `source` (see [`sql::READ_PLAIN`]), with `holes` in the
    /// format of [`sql::READ_HOLES`] (only by path).
    fn plain_rows<'s>(
        &self,
        s: &'s mut Session,
        source: &Source,
        range: Option<(u64, u64)>,
        holes: bool,
        what: &str,
        path: &str,
    ) -> Result<postgres::RowIter<'s>, TransferError> {
        let chunk = self.chunk as i64;
        let (whole, piece) =
            if holes { (sql::READ_HOLES, sql::READ_HOLES_RANGE) } else { (sql::READ_PLAIN, sql::READ_PLAIN_RANGE) };
        Ok(match (source, range) {
            (Source::Path(p), None) => s.stream(whole, &[p, &chunk], what)?,
            (Source::Path(p), Some((off, len))) => s.stream(piece, &[p, &chunk, &(off as i64), &(len as i64)], what)?,
            (Source::ByName(parts), None) => s.stream(sql::READ_PLAIN_BY_NAME, &[parts, &chunk], what)?,
            (Source::ByName(..), Some(_)) => {
                return Err(TransferError::Data {
                    path: path.into(),
                    message: "pieces of a file whose name is not UTF-8 are not supported".into(),
                })
            }
        })
    }

    fn fetch_zlib(
        &self,
        s: &mut Session,
        src: &SafePath,
        dest: &Dest,
        dst: &SafePath,
        level: u32,
        req: Request,
    ) -> Result<Option<(Sink, i64)>, TransferError> {
        let range = req.range();
        // The PL/Python helper takes the path as raw bytes: any name.
        let path = src.display();
        let raw = src.as_bytes();
        let what = format!("could not read \"{path}\"");
        let chunk = self.chunk as i64;
        let level = level as i32;
        let (off, len) = range.map_or((0i64, -1i64), |(o, l)| (o as i64, l as i64));
        let call = self.helper.call(self.method);
        let mut rows = s.stream(&call, &[&raw, &chunk, &level, &off, &len], &what)?;
        let mut out: Option<Sink> = None;
        let (mut size, mut mtime) = (0u64, 0i64);
        let mut buf = Vec::with_capacity(self.chunk as usize);
        while let Some(row) = rows.next().map_err(|e| pg_err(&what, e))? {
            let data: &[u8] = row.try_get(0).map_err(|e| pg_err(&what, e))?;
            let sink = match out.as_mut() {
                Some(w) => w,
                None => {
                    let listed;
                    (listed, mtime) = helper_header(data, &path)?;
                    size = range.map_or(listed, |(_, len)| listed.min(len));
                    out = Some(self.sink(dest, src, dst, req)?);
                    continue;
                }
            };
            self.helper_chunk(sink, data, size, &mut buf, &path)?;
        }
        match out {
            None => Ok(None),
            Some(mut sink) => {
                // Shrank while being read: zero-fill to the size the helper saw at open.
                let short = size - sink.written();
                sink.zeros(short)?;
                Ok(Some((sink, mtime)))
            }
        }
    }
}

/// The compression helper's first row of a file: its size when opened (8 bytes, big-endian;
/// negative read as 0) and its mtime (Unix seconds).
pub(crate) fn helper_header(data: &[u8], path: &str) -> Result<(u64, i64), TransferError> {
    let bad =
        || TransferError::Data { path: path.to_string(), message: "bad header from the compression helper".into() };
    let header: [u8; 16] = data.try_into().map_err(|_| bad())?;
    let (size, mtime) = header.split_at(8);
    let size = i64::from_be_bytes(size.try_into().map_err(|_| bad())?).max(0) as u64;
    Ok((size, i64::from_be_bytes(mtime.try_into().map_err(|_| bad())?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three pgbench_accounts pages (blocks 100–102) of a real PostgreSQL 15 cluster.
    const PAGES: &[u8] = include_bytes!("../tests/fixtures/pg15-pgbench_accounts-blocks-100-102.bin");

    fn verifier(start_lsn: u64) -> Pages {
        let v = PageVerify { start_lsn, blocks_per_segment: 131072, rules: LayoutRules::default() };
        Pages::new(0, 100 * BLCKSZ as u64, v)
    }

    /// Pages are counted as verified when their checksum was compared, whatever the chunks'
    /// sizes; new pages and pages changed since the start are not.
    #[test]
    fn verified_pages_are_counted() {
        for chunk in [BLCKSZ, 1000, 3 * BLCKSZ, 5000] {
            let mut p = verifier(u64::MAX);
            PAGES.chunks(chunk).for_each(|c| p.feed(c));
            p.feed(&[0u8; BLCKSZ]);
            assert_eq!((p.verified, p.suspects.len()), (3, 0), "chunks of {chunk}");
        }
        // One corrupt: still verified (and a suspect).
        let mut bad = PAGES.to_vec();
        bad[BLCKSZ + 4000] ^= 0x55;
        let mut p = verifier(u64::MAX);
        p.feed(&bad);
        assert_eq!((p.verified, p.suspects.clone()), (3, vec![(101, 101 * BLCKSZ as u64)]));
        // Every page newer than the backup's start: none verified.
        let mut p = verifier(0);
        p.feed(PAGES);
        assert_eq!(p.verified, 0);
    }

    #[test]
    fn a_request_never_extends_past_the_end_of_the_file() {
        assert_eq!(extent(3, None), 3);
        assert_eq!(extent(3, Some((0, 100 << 20))), 3);
        assert_eq!(extent(3, Some((1, 13))), 2);
        assert_eq!(extent(3, Some((3, 5))), 0);
        assert_eq!(extent(3, Some((1000, 1))), 0);
        assert_eq!(extent(1 << 30, Some((64 << 20, 64 << 20))), 64 << 20);
        assert_eq!(extent(0, Some((u64::MAX - 1, 1))), 0);
    }
}
