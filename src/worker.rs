//! The worker role (`pgbb --slave --stdin DSN DEST`): reads paths on stdin, copies each file
//! over its own connection, answers one result line per file on stdout.

use std::io::{self, Write};
use std::sync::Arc;

use crate::cli::{Common, Compress};
use crate::dest::{Dest, Roots, SafePath};
use crate::error::Error;
use crate::inbox::{Entry, Inbox};
use crate::pg::{sql, PgError, Session};
use crate::piece_ahead::{Lookahead, NextPiece};
use crate::protocol::{show, Request, Response, MAX_LINE, PROTOCOL_VERSION};
use crate::retry::{retry, Reopened};
use crate::transfer::{Method, Outcome, PageVerify, Throttle, Transfer, TransferError, ZlibHelper};

/// A request line without its line end (LF or CRLF).
fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Creates DEST (and missing parents) for a worker or `-x` run by hand, private as a
/// backup's: 0700, or 0750 with group access. An existing DEST is left as it is.
pub fn create_dest(dest: &std::path::Path, group_access: bool) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(if group_access { 0o750 } else { 0o700 })
        .create(dest)
        .map_err(|source| crate::dest::DestError::Create { path: dest.into(), source }.into())
}

/// How this session's chunks travel: as the master chose (the installed helper is checked
/// again first), or, for a worker or `-x` run by hand, chosen here as the master would.
fn method_for(s: &mut Session, common: &Common, compress: Compress) -> Result<(Method, ZlibHelper), Error> {
    match (compress, &common.zlib_helper) {
        (Compress::Fixed(Method::Zstd(_)), Some(ZlibHelper::Installed(_))) => {
            Err(crate::pg::PgError::Unsupported("--compress zstd: the installed helper deflates only".into()).into())
        }
        (Compress::Fixed(m @ (Method::Zlib(_) | Method::Zstd(_))), Some(h)) => {
            if let ZlibHelper::Installed(schema) = h {
                crate::compression::confirm_installed(s, schema)?;
            }
            Ok((m, h.clone()))
        }
        (Compress::Fixed(Method::Plain), _) => Ok((Method::Plain, ZlibHelper::Temp)),
        _ => {
            let c = crate::compression::choose(s, compress, common.conn.is_local(), &common.schema)?;
            for (what, _) in &c.warnings {
                log::warn!("{what}");
            }
            log::info!("{}", c.said);
            Ok((c.method, c.helper))
        }
    }
}

/// Opens the session and chooses how chunks travel (see [`method_for`]); with
/// `--verify-lsn`, reads what page verification needs.
pub fn open_session(common: &Common, app: &str, compress: Compress) -> Result<(Session, Transfer), Error> {
    let mut s = common.conn.connect(&common.session_name(app))?;
    let (caps, _) = sql::version(&mut s)?;
    sql::session_setup_for(&mut s, caps)?;
    let verify = match common.verify_lsn {
        Some(lsn) => {
            let (block_size, blocks_per_segment) = sql::page_geometry(&mut s)?;
            if block_size == crate::checksum::BLCKSZ as i64 {
                Some(PageVerify { start_lsn: lsn.0, blocks_per_segment, rules: caps.layout_rules() })
            } else {
                log::warn!("block_size is {block_size}, not 8192: data pages are not verified");
                None
            }
        }
        None => None,
    };
    let (method, helper) = method_for(&mut s, common, compress)?;
    let mut t = Transfer {
        method,
        helper,
        chunk: common.chunk,
        sync: common.sync,
        algorithm: common.algorithm,
        verify,
        progress: common.report_progress.then_some(say_progress as fn(u64)),
        throttle: common.rate.map(Throttle::new),
        // As the master says (plan_delta): reading costs less than hashing on this machine.
        compare_by_content: common.conn.is_local(),
        header_upto: common.trust_lsn.map(|l| l.0),
        holes: None,
        lookahead: None,
    };
    if let Err(e) = t.prepare(&mut s) {
        if !matches!(compress, Compress::Auto(_)) {
            return Err(e.into());
        }
        log::info!("no compression: {e}");
        t.method = Method::Plain;
    }
    t.chunk = common.chunk_for(t.method);
    // Across a network, plain chunks leave out the zeros in the middle of data pages while
    // the link is the limit (page_holes).
    if t.method == Method::Plain && !common.conn.is_local() {
        t.holes = Some(crate::page_holes::Holes::new(caps.layout_rules()));
    }
    log::info!(
        "chunks travel {} in {} KiB chunks{}",
        if t.method == Method::Plain { "plain".to_string() } else { t.method.to_string() },
        t.chunk >> 10,
        if t.holes.is_some() {
            ", data pages without their holes (the zeros between pd_lower and pd_upper)"
        } else {
            ""
        }
    );
    Ok((s, t))
}

/// A worker's session and how its chunks travel, with what it takes to open them again.
struct Link<'a> {
    common: &'a Common,
    app: &'a str,
    compress: Compress,
    s: Session,
    transfer: Transfer,
}

impl Link<'_> {
    /// A worker of a run (spawned by a master, which holds the run's lock) reconnects after
    /// a lost connection; one started by hand has no master to ask about and fails as before.
    fn retries(&self) -> bool {
        self.common.run_key.is_some()
    }

    /// A new session, set up as the first one (the compression helper created again), if
    /// the run's master still holds its lock; the throttle goes on counting.
    fn reopen(&mut self) -> Result<Reopened, PgError> {
        let (mut s, mut transfer) = open_session(self.common, self.app, self.compress).map_err(|e| match e {
            Error::Pg(p) => p,
            other => PgError::Unsupported(other.to_string()),
        })?;
        if let Some(key) = self.common.run_key {
            if !sql::run_alive(&mut s, key)? {
                return Ok(Reopened::MasterGone);
            }
        }
        transfer.throttle = self.transfer.throttle.take();
        transfer.lookahead = self.transfer.lookahead.take();
        (self.s, self.transfer) = (s, transfer);
        Ok(Reopened::Ready)
    }

    /// Copies (or compares) one request's file; a lost connection is retried (see
    /// [`crate::retry`]).
    fn copy(&mut self, roots: &Roots, req: &Request, src: &SafePath, dst: &SafePath) -> Result<Outcome, TransferError> {
        let (dest, dst) = roots.route(dst);
        let op = |l: &mut Link| {
            if let (true, Some(piece)) = (req.compare, req.range) {
                l.transfer.refresh_piece(&mut l.s, src, dest, &dst, piece)
            } else if req.compare {
                l.transfer.refresh(&mut l.s, src, dest, &dst)
            } else if let Some(list) = &req.incremental {
                l.transfer.fetch_incremental(&mut l.s, src, dest, &dst, list, req.range)
            } else {
                l.transfer.fetch(&mut l.s, src, dest, &dst, req.range)
            }
        };
        if !self.retries() {
            return op(self);
        }
        let what = show(&req.src);
        retry(self, crate::retry::WORKER, &what, op, Link::reopen, std::thread::sleep)
    }
}

impl crate::batch::Worker for Link<'_> {
    fn session(&mut self) -> (&mut Session, &Transfer) {
        (&mut self.s, &self.transfer)
    }

    fn alone(
        &mut self,
        roots: &Roots,
        req: &Request,
        src: &SafePath,
        dst: &SafePath,
    ) -> Result<Outcome, TransferError> {
        self.copy(roots, req, src, dst)
    }

    fn retries(&self) -> bool {
        Link::retries(self)
    }
}

pub fn run(common: &Common, id: Option<usize>, compress: Compress) -> Result<(), Error> {
    let app = match id {
        Some(i) => format!("pgbb worker {i}"),
        None => "pgbb worker".to_string(),
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut say = |r: Response| -> Result<(), Error> {
        writeln!(out, "{r}")
            .and_then(|()| out.flush())
            .map_err(|source| Error::Pipe { what: "cannot write results", source })
    };
    // A DEST that cannot be made or opened is told like any fatal error: the master then
    // knows it from the exit status (5), not as a child that died without a word.
    let opened = open_roots(common).and_then(|roots| Ok((roots, open_session(common, &app, compress)?)));
    let inbox = || {
        Inbox::start(io::BufReader::with_capacity(1 << 16, io::stdin()), |line, too_long| {
            batch_header(line, too_long)?.ok()
        })
        .map_err(|source| Error::Pipe { what: "cannot start reading stdin", source })
    };
    let (roots, (s, transfer), inbox) = match opened.and_then(|(r, st)| Ok((Arc::new(r), st, inbox()?))) {
        Ok(x) => x,
        Err(e) => {
            let _ = say(Response::Fatal { message: e.to_string() });
            return Err(e);
        }
    };
    let mut link = Link { common, app: &app, compress, s, transfer };
    let lookahead = Arc::new(Lookahead::new(next_piece(inbox.clone(), roots.clone())));
    link.transfer.lookahead = Some(lookahead.clone());
    say(Response::Hello { protocol: PROTOCOL_VERSION, version: env!("CARGO_PKG_VERSION").into(), role: app.clone() })?;

    while let Some((seq, entry)) = inbox.next().map_err(|source| Error::Pipe { what: "cannot read stdin", source })? {
        lookahead.serving(seq);
        match entry {
            Entry::Batch(lines) => {
                let batch = lines.iter().map(|(l, too_long)| parse_request(trim_eol(l), *too_long)).collect();
                crate::batch::serve(&mut link, &roots, batch, &mut say)?
            }
            // A valid batch header comes as a batch, never as a line.
            Entry::Line(buf, too_long) => match batch_header(&buf, too_long) {
                Some(Err(answer)) => say(answer)?,
                _ => match parse_request(trim_eol(&buf), too_long) {
                    Ok((req, src, dst)) => serve(&mut link, &roots, req, &src, &dst, &mut say)?,
                    Err(answer) => say(answer)?,
                },
            },
        }
        // A worker that reconnects finds out with its next request.
        if link.s.is_closed() && !link.retries() {
            let e = PgError::Query {
                what: "connection".into(),
                message: "the server closed the connection".into(),
                closed: true,
                code: None,
            };
            let _ = say(Response::Fatal { message: e.to_string() });
            return Err(Error::Pg(e));
        }
    }
    log::debug!("end of input");
    Ok(())
}

/// What [`Lookahead`] asks of the worker's requests: request `seq`, if it has come and is a
/// piece of a large file to compare whose copy in DEST opens.
fn next_piece(inbox: Arc<Inbox>, roots: Arc<Roots>) -> impl Fn(u64) -> Option<NextPiece> + Send + Sync {
    move |seq| {
        let (req, src, dst) = inbox.peek(seq, |e| match e {
            Entry::Line(line, false) => parse_request(trim_eol(line), false).ok(),
            _ => None,
        })?;
        let (true, Some((off, len))) = (req.compare, req.range) else { return None };
        let (dest, dst) = roots.route(&dst);
        let file = dest.open_existing(&dst).ok()??;
        Some(NextPiece { src, file, range: (off, off + len) })
    }
}

/// A `progress` line for the master's display (the transfer calls it while copying).
fn say_progress(bytes: u64) {
    let line = Response::Progress { bytes };
    let _ = writeln!(io::stdout().lock(), "{line}");
}

/// DEST (created private when a worker runs by hand) and the tablespace targets.
fn open_roots(common: &Common) -> Result<Roots, Error> {
    create_dest(&common.dest, common.group_access)?;
    let mut roots = Roots::new(
        Dest::open(&common.dest, common.group_access)?.in_place(common.in_place).writeback(common.writeback),
    );
    for (oid, dir) in &common.tablespaces {
        roots.add_tablespace(*oid, dir, common.group_access)?;
    }
    Ok(roots)
}

/// A `batch<TAB>N` line: `None` if it is a request line, else N or the error line that
/// answers it.
fn batch_header(line: &[u8], too_long: bool) -> Option<Result<usize, Response>> {
    let text = std::str::from_utf8(trim_eol(line)).ok().filter(|_| !too_long)?;
    let shown = text.as_bytes()[..text.len().min(200)].to_vec();
    crate::protocol::batch_header(text).map(|n| n.map_err(|e| Response::Error { path: shown, message: e.to_string() }))
}

/// One request line, checked; or the error line that answers it. An error line echoes the
/// request's own bytes (escaped as \xHH where they are not UTF-8), so that the caller can
/// match it to what it sent.
fn parse_request(line: &[u8], too_long: bool) -> Result<(Request, SafePath, SafePath), Response> {
    let shown = line[..line.len().min(200)].to_vec();
    let req = if too_long {
        Err(format!("line longer than {MAX_LINE} bytes"))
    } else {
        match std::str::from_utf8(line) {
            Ok(text) => Request::parse(text).map_err(|e| e.to_string()),
            Err(_) => Err("line is not valid UTF-8 (write such bytes as \\xHH)".to_string()),
        }
    };
    let req = req.map_err(|message| Response::Error { path: shown, message })?;
    let paths = SafePath::parse(&req.src).and_then(|src| Ok((src, SafePath::parse(&req.dst)?)));
    match paths {
        Ok((src, dst)) => Ok((req, src, dst)),
        Err(e) => Err(Response::Error { path: req.src.clone(), message: e.to_string() }),
    }
}

/// Copies one request's file (or piece) and answers it; a fatal error ends the worker.
fn serve(
    link: &mut Link,
    roots: &Roots,
    req: Request,
    src: &SafePath,
    dst: &SafePath,
    say: &mut impl FnMut(Response) -> Result<(), Error>,
) -> Result<(), Error> {
    match link.copy(roots, &req, src, dst) {
        Ok(Outcome::Copied(c)) => {
            for b in &c.bad_pages {
                let (block, calculated, expected) = (b.block, b.calculated, b.expected);
                say(Response::BadPage { path: req.src.clone(), block, calculated, expected })?;
            }
            say(Response::Ok {
                size: c.size,
                path: req.src,
                checksum: c.checksum,
                mtime: c.mtime,
                wire: c.wire,
                verified: c.verified_pages,
            })
        }
        Ok(Outcome::Vanished) => say(Response::Vanished { path: req.src }),
        Err(e) if e.is_fatal() => {
            let _ = say(Response::Fatal { message: e.to_string() });
            Err(e.into())
        }
        Err(e) => say(Response::Error { path: req.src, message: e.to_string() }),
    }
}
