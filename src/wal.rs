//! The WAL loop: as the master's child (`pgbb --slave -x`), it copies every segment of the
//! backup's range into DEST/pg_wal and stops at the position the master names; standalone
//! (`pgbb -x`), it feeds a warm standby until SIGINT/SIGTERM.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError};

use crate::cli::{Common, Compress};
use crate::dest::{Dest, SafePath};
use crate::error::Error;
use crate::lsn::{is_history_file, Lsn, WalGeometry};
use crate::pg::{sql, PgError, Session};
use crate::protocol::{Response, WalCommand, PROTOCOL_VERSION};
use crate::transfer::{Copied, Outcome, Transfer};

struct Copier {
    s: Session,
    t: Transfer,
    dest: Dest,
    geo: WalGeometry,
    history: HashMap<String, u64>,
}

fn wal_path(name: &str) -> Result<SafePath, Error> {
    Ok(SafePath::parse(format!("pg_wal/{name}"))?)
}

impl Copier {
    fn open(common: &Common, compress: Compress) -> Result<Copier, Error> {
        let dest = Dest::open(&common.dest, common.group_access)?;
        dest.create_dir_all(&SafePath::parse("pg_wal/archive_status")?)?;
        let (mut s, t) = crate::worker::open_session(common, "pgbb wal", compress)?;
        let size = sql::wal_segment_size(&mut s)?;
        let geo = WalGeometry::new(size)
            .ok_or_else(|| PgError::Unsupported(format!("unexpected wal_segment_size {size}")))?;
        Ok(Copier { s, t, dest, geo, history: HashMap::new() })
    }

    /// Copies `pg_wal/NAME` to `pg_wal/AS`.
    fn copy(&mut self, name: &str, as_name: &str) -> Result<Outcome, Error> {
        let src = wal_path(name)?;
        let dst = wal_path(as_name)?;
        self.t.fetch(&mut self.s, &src, &self.dest, &dst, None).map_err(Error::from)
    }

    /// Copies the first `len` bytes of `pg_wal/NAME` and zero-fills it to a full segment.
    fn copy_head(&mut self, name: &str, len: u64) -> Result<Outcome, Error> {
        let path = wal_path(name)?;
        let size = self.geo.seg_size;
        self.t.fetch_head(&mut self.s, &path, &self.dest, &path, len, size).map_err(Error::from)
    }

    /// Copies history files that are new or changed.
    fn copy_history(
        &mut self,
        files: &[(String, u64)],
        say: &mut dyn FnMut(Response) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for (name, size) in files.iter().filter(|(n, _)| is_history_file(n)) {
            if self.history.get(name) == Some(size) {
                continue;
            }
            match self.copy(name, name)? {
                Outcome::Copied(c) => {
                    self.history.insert(name.clone(), *size);
                    say(ok_line(&c, name))?;
                }
                Outcome::Vanished => say(Response::Vanished { path: format!("pg_wal/{name}").into_bytes() })?,
            }
        }
        Ok(())
    }
}

fn ok_line(c: &Copied, name: &str) -> Response {
    Response::Ok {
        size: c.size,
        path: format!("pg_wal/{name}").into_bytes(),
        checksum: c.checksum.clone(),
        mtime: c.mtime,
        wire: c.wire,
        verified: c.verified_pages,
    }
}

fn stdout_say() -> impl FnMut(Response) -> Result<(), Error> {
    let stdout = io::stdout();
    move |r: Response| {
        let mut out = stdout.lock();
        writeln!(out, "{r}")
            .and_then(|()| out.flush())
            .map_err(|source| Error::Pipe { what: "cannot write results", source })
    }
}

/// The master's WAL child: copies segments `start`'s segment onwards on `tli` as they
/// complete; on `stop LSN` finishes through that segment, reports every segment of the range
/// it could not copy as `vanished`, prints `done N` and exits.
pub fn run_child(common: &Common, start: Lsn, tli: u32, delay: Duration, compress: Compress) -> Result<(), Error> {
    let mut say = stdout_say();
    let c = match Copier::open(common, compress) {
        Ok(c) => c,
        Err(e) => {
            let _ = say(Response::Fatal { message: e.to_string() });
            return Err(e);
        }
    };
    say(Response::Hello {
        protocol: PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").into(),
        role: "pgbb wal".into(),
    })?;
    let commands = read_commands();
    let start_seg = c.geo.segno(start);
    let mut child = WalChild { c, tli, start_seg, copied: HashSet::new(), count: 0, stop: None };
    let r = child.run(&commands, delay, &mut say);
    if let Err(e) = &r {
        let _ = stdout_say()(Response::Fatal { message: e.to_string() });
    }
    r
}

/// The master's commands, read from stdin on a thread of their own (`None`: stdin closed).
fn read_commands() -> Receiver<Option<Result<WalCommand, crate::protocol::ProtocolError>>> {
    let (tx, rx) = unbounded();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(Some(WalCommand::parse(&line))).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// The WAL child's state between two passes over pg_wal.
struct WalChild {
    c: Copier,
    tli: u32,
    start_seg: u64,
    copied: HashSet<u64>,
    count: u64,
    /// Where the backup stopped, once the master has said so.
    stop: Option<Lsn>,
}

impl WalChild {
    fn run(
        &mut self,
        commands: &Receiver<Option<Result<WalCommand, crate::protocol::ProtocolError>>>,
        delay: Duration,
        say: &mut impl FnMut(Response) -> Result<(), Error>,
    ) -> Result<(), Error> {
        loop {
            if self.pass(say)? {
                return Ok(());
            }
            let wait = if self.stop.is_some() { Duration::from_millis(100) } else { delay };
            match commands.recv_timeout(wait) {
                Ok(Some(Ok(WalCommand::Stop(l)))) => {
                    let last = self.c.geo.file_name(self.tli, self.c.geo.end_segno(l));
                    log::info!("backup stopped at {l}; copying WAL through segment {last}");
                    self.stop = Some(l);
                }
                Ok(Some(Err(source))) => return Err(Error::Protocol { role: "the master".into(), source }),
                Ok(None) | Err(RecvTimeoutError::Disconnected) => return Err(Error::MasterGone),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// How much of segment `seg` to copy now that WAL is written up to `written`: all of a
    /// complete one; of the one holding the stop, only the bytes through the stop, as soon as
    /// they are written (the rest is zero-filled locally: a standby never completes that
    /// segment while its primary is idle, and a primary's tail past the stop is not needed).
    fn wanted(&self, seg: u64, written: Lsn) -> Option<u64> {
        let geo = self.c.geo;
        match self.stop {
            Some(stop) if seg == geo.end_segno(stop) && geo.end_offset(stop) < geo.seg_size => {
                (written >= stop).then(|| geo.end_offset(stop))
            }
            Some(stop) if seg > geo.end_segno(stop) => None,
            _ => geo.is_complete(seg, written).then_some(geo.seg_size),
        }
    }

    /// One pass: copies every segment of the range that is ready and not copied yet; true
    /// when the range is complete (after the stop) and `done` was said.
    fn pass(&mut self, say: &mut impl FnMut(Response) -> Result<(), Error>) -> Result<bool, Error> {
        let (files, written) = sql::list_wal(&mut self.c.s)?;
        self.c.copy_history(&files, say)?;
        for (name, size) in &files {
            let Some((t, seg)) = self.c.geo.parse_file_name(name) else {
                continue;
            };
            if t != self.tli || seg < self.start_seg || self.copied.contains(&seg) {
                continue;
            }
            if let Some(len) = self.wanted(seg, written) {
                self.copy_segment(name, *size, seg, len, say)?;
            }
        }
        match self.stop {
            Some(stop) if written >= stop => {
                let last = self.c.geo.end_segno(stop);
                for seg in self.start_seg..=last {
                    if !self.copied.contains(&seg) {
                        let path = format!("pg_wal/{}", self.c.geo.file_name(self.tli, seg)).into_bytes();
                        say(Response::Vanished { path })?;
                    }
                }
                say(Response::Done { count: self.count })?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn copy_segment(
        &mut self,
        name: &str,
        size: u64,
        seg: u64,
        len: u64,
        say: &mut impl FnMut(Response) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let got = if len < self.c.geo.seg_size {
            log::info!("copying {name} through the backup's stop ({len} bytes), the rest as zeros");
            self.c.copy_head(name, len)?
        } else {
            self.c.copy(name, name)?
        };
        match got {
            Outcome::Copied(got) if got.size == self.c.geo.seg_size => {
                self.copied.insert(seg);
                self.count += 1;
                say(ok_line(&got, name))
            }
            Outcome::Copied(got) => say(Response::Error {
                path: format!("pg_wal/{name}").into_bytes(),
                message: format!("segment is {} bytes (listed {size}), expected {}", got.size, self.c.geo.seg_size),
            }),
            Outcome::Vanished => {
                log::warn!("WAL segment {name} was removed before it could be copied");
                Ok(())
            }
        }
    }
}

/// The page header at `offset` of DEST/pg_wal/NAME names WAL position `addr`.
fn page_names(f: &mut std::fs::File, offset: u64, addr: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut h = [0u8; 16];
    if f.seek(SeekFrom::Start(offset)).is_err() || f.read_exact(&mut h).is_err() {
        return false;
    }
    let magic = u16::from_ne_bytes([h[0], h[1]]);
    let at = u64::from_ne_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    magic != 0 && at == addr
}

/// True when DEST/pg_wal/NAME is really segment `segno`: full size, and its first page
/// header names that position. A standby recycles old segments under future names; such a
/// file has the right name and size but old contents, and must be copied over.
pub(crate) fn genuine_segment(dest: &Dest, name: &str, segno: u64, geo: WalGeometry) -> bool {
    let Ok(mut f) = std::fs::File::open(dest.root().join("pg_wal").join(name)) else { return false };
    f.metadata().map(|m| m.len()).unwrap_or(0) == geo.seg_size && page_names(&mut f, 0, segno * geo.seg_size)
}

/// A genuine segment the loop need not copy again. In a data directory (a backup, a warm
/// standby) only one with a `.done`: the backup's last segment has none, as it is cut at the
/// stop and zero-filled (see [`WalChild::wanted`]), and the loop must copy it again once
/// complete (segments the loop copied there have none either: a restart copies the newest
/// again, see [`standalone_floor`]).
fn complete_segment(dest: &Dest, name: &str, segno: u64, geo: WalGeometry) -> bool {
    let root = dest.root();
    genuine_segment(dest, name, segno, geo)
        && (!root.join("global/pg_control").exists()
            || root.join(format!("pg_wal/archive_status/{name}.done")).exists())
}

/// Where a standalone loop starts: the backup's start segment if DEST holds a backup_label,
/// else after the newest genuine segment already in DEST/pg_wal (at it, if it may be
/// incomplete: see [`complete_segment`]), else (None) the current one.
fn standalone_floor(dest: &Dest, geo: WalGeometry) -> Option<u64> {
    if let Ok(label) = std::fs::read_to_string(dest.root().join("backup_label")) {
        if let Some(s) = crate::label::start_lsn(&label) {
            return Some(geo.segno(s));
        }
    }
    let dir = std::fs::read_dir(dest.root().join("pg_wal")).ok()?;
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (_, seg) = geo.parse_file_name(&name)?;
            genuine_segment(dest, &name, seg, geo).then(|| seg + u64::from(complete_segment(dest, &name, seg, geo)))
        })
        .max()
}

/// Where each earlier timeline of `tli` ends (its switch point), from `tli`'s history file
/// in DEST/pg_wal (copied before the segments); empty without one (timeline 1, or not copied).
fn timeline_ends(dest: &Dest, tli: u32) -> HashMap<u32, Lsn> {
    let path = dest.root().join("pg_wal").join(format!("{tli:08X}.history"));
    std::fs::read_to_string(path).map(|text| parse_history(&text)).unwrap_or_default()
}

/// A timeline history file's entries: `parent-TLI <tab> switch-LSN <tab> reason` per line;
/// comments and blank lines skipped, a line that does not parse ignored.
fn parse_history(text: &str) -> HashMap<u32, Lsn> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

/// What a standalone loop knows, kept across reconnections: where it started, the segments
/// DEST holds, the partial segment last copied, how far the slot was advanced.
struct Feed<'a> {
    stop: &'a AtomicBool,
    slot: Option<&'a str>,
    floor: Option<u64>,
    have: HashSet<String>,
    /// The numbers of the segments in `have` (of whichever timeline).
    segs: HashSet<u64>,
    partial: Option<(String, Lsn)>,
    advanced: Lsn,
}

impl Feed<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Copies until a stop is asked for (Ok) or the session fails (Err).
    fn run(&mut self, c: &mut Copier, delay: Duration) -> Result<(), Error> {
        while !self.stopped() {
            self.pass(c)?;
            if !pause(self.stop, delay) {
                break;
            }
        }
        Ok(())
    }

    /// One look at the server's pg_wal: new complete segments, the partial one, the slot.
    fn pass(&mut self, c: &mut Copier) -> Result<(), Error> {
        let (files, written) = sql::list_wal(&mut c.s)?;
        c.copy_history(&files, &mut |r: Response| {
            log::info!("{r}");
            Ok(())
        })?;
        let cur = c.geo.segno(written);
        let floor = *self.floor.get_or_insert(cur);
        let tli = files.iter().filter_map(|(n, _)| c.geo.parse_file_name(n)).map(|(t, _)| t).max().unwrap_or(1);
        // The timelines before this one end at their switch points: their segments wholly
        // before it are needed too (the server may have completed them while the loop was
        // not looking: a delay, a reconnection, a restart of pgbb).
        let ends = timeline_ends(&c.dest, tli);
        for (name, _) in &files {
            if self.stopped() {
                return Ok(());
            }
            let Some((t, seg)) = c.geo.parse_file_name(name) else {
                continue;
            };
            let end = if t == tli { Some(written) } else { ends.get(&t).copied() };
            if seg < floor || !end.is_some_and(|e| c.geo.is_complete(seg, e)) || self.have.contains(name) {
                continue;
            }
            if complete_segment(&c.dest, name, seg, c.geo) {
                self.hold(name, seg);
                continue;
            }
            if let Outcome::Copied(got) = c.copy(name, name)? {
                if got.size == c.geo.seg_size {
                    log::info!("copied {name}");
                    self.hold(name, seg);
                    c.dest.remove_file(&wal_path(&format!("{name}.partial"))?)?;
                }
            }
        }
        // The segment being written, as NAME.partial, when it moved on since the last copy.
        if cur >= floor && !self.stopped() {
            let name = c.geo.file_name(tli, cur);
            if self.partial.as_ref() != Some(&(name.clone(), written)) && files.iter().any(|(n, _)| *n == name) {
                if let Some((old, _)) = &self.partial {
                    if *old != name && !self.have.contains(old) {
                        c.dest.remove_file(&wal_path(&format!("{old}.partial"))?)?;
                    }
                }
                if let Outcome::Copied(_) = c.copy(&name, &format!("{name}.partial"))? {
                    self.partial = Some((name, written));
                }
            }
        }
        self.advance_slot(c, floor, cur)
    }

    /// Segment NAME (number `seg`) is complete in DEST.
    fn hold(&mut self, name: &str, seg: u64) {
        self.have.insert(name.to_string());
        self.segs.insert(seg);
    }

    /// With --slot, lets the server recycle what is safely here: everything before the first
    /// segment still missing.
    fn advance_slot(&mut self, c: &mut Copier, floor: u64, cur: u64) -> Result<(), Error> {
        let Some(slot) = self.slot else { return Ok(()) };
        let mut upto = floor;
        while upto < cur && self.segs.contains(&upto) {
            upto += 1;
        }
        let target = Lsn(upto * c.geo.seg_size);
        if target > self.advanced {
            match sql::slot_restart_lsn(&mut c.s, slot)? {
                None => return Err(PgError::Unsupported(format!("replication slot \"{slot}\" does not exist")).into()),
                Some(r) if r < target => {
                    sql::advance_slot(&mut c.s, slot, target)?;
                    log::info!("advanced slot {slot} to {target}");
                }
                Some(_) => {}
            }
            self.advanced = target;
        }
        Ok(())
    }
}

/// Waits `d`, or less if a stop is asked for; false when it was.
fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(until - now));
    }
    false
}

/// First wait before reconnecting, doubled after each failed attempt up to [`RETRY_MAX`].
/// pg_receivewal waits a fixed 5 s; starting at 1 s catches a routine restart (a few
/// seconds) sooner, and the cap keeps a long outage to one attempt every 30 s — a standby
/// fed every few seconds loses at most that on top of the outage.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// True for a failure a new connection can get past (the server restarting or shutting down,
/// a network cut); false for what waiting cannot heal: authentication, a database or role
/// that is gone, missing privileges, TLS settings, DEST.
fn may_heal(e: &Error) -> bool {
    matches!(e, Error::Pg(p) if p.may_heal())
}

/// Connects again after `why`, waiting longer after each failed attempt. None when a stop is
/// asked for meanwhile; an error that cannot heal ends the loop.
fn reconnect(common: &Common, compress: Compress, stop: &AtomicBool, why: &Error) -> Result<Option<Copier>, Error> {
    let mut wait = RETRY_FIRST;
    log::warn!("lost the connection to the server: {why}; reconnecting in {} s", wait.as_secs());
    loop {
        if !pause(stop, wait) {
            return Ok(None);
        }
        match Copier::open(common, compress) {
            Ok(c) => {
                log::warn!("reconnected to the server; resuming");
                return Ok(Some(c));
            }
            Err(e) if may_heal(&e) => {
                wait = (wait * 2).min(RETRY_MAX);
                log::warn!("could not reconnect: {e}; next attempt in {} s", wait.as_secs());
            }
            Err(e) => return Err(e),
        }
    }
}

/// `pgbb -x DSN DEST`: copies complete segments, keeps the one being written as
/// `NAME.partial` (renamed when complete), until SIGINT/SIGTERM (or SIGHUP). A lost
/// connection (a server restart) is retried with backoff and the loop resumes where it was;
/// only a failure that cannot heal ends it. A restart of pgbb resumes after what DEST holds.
pub fn run_standalone(common: &Common, delay: Duration, compress: Compress, slot: Option<&str>) -> Result<(), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in crate::signals::handled() {
        signal_hook::flag::register(sig.number(), stop.clone())
            .map_err(|source| Error::System { what: "install signal handlers", source })?;
    }
    crate::worker::create_dest(&common.dest, common.group_access)?;
    // The first connection must work: a loop that never ran is a mistake to report.
    let mut c = Copier::open(common, compress)?;
    let mut floor = standalone_floor(&c.dest, c.geo);
    // Nothing in DEST yet: with a slot, from its restart point, as pg_receivewal (a backup
    // taken since ends in a segment cut at its stop: the archive must hold that segment).
    if let (None, Some(slot)) = (floor, slot) {
        floor = sql::slot_restart_lsn(&mut c.s, slot)?.map(|l| c.geo.segno(l));
    }
    let mut feed =
        Feed { stop: &stop, slot, floor, have: HashSet::new(), segs: HashSet::new(), partial: None, advanced: Lsn(0) };
    log::info!(
        "copying WAL into {} every {:?}; stop with SIGINT or SIGTERM",
        c.dest.root().join("pg_wal").display(),
        delay
    );
    loop {
        match feed.run(&mut c, delay) {
            Ok(()) => break,
            Err(e) if may_heal(&e) && !feed.stopped() => match reconnect(common, compress, &stop, &e)? {
                Some(again) => c = again,
                None => break,
            },
            Err(e) => return Err(e),
        }
    }
    log::info!("stopping on request");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_give_each_earlier_timelines_end() {
        let text =
            "1\t0/5000000\tno recovery target specified\n\n# a comment\n2\t1/A00000C8\tat restore point\nbad line\n";
        let ends = parse_history(text);
        assert_eq!(ends.len(), 2, "{ends:?}");
        assert_eq!(ends[&1], Lsn(0x500_0000));
        assert_eq!(ends[&2], Lsn((1 << 32) | 0xA000_00C8));
        // A segment of timeline 1 is wanted when it ends at or before the switch.
        let geo = WalGeometry::new(16 << 20).unwrap();
        assert!(geo.is_complete(4, ends[&1]));
        assert!(!geo.is_complete(5, ends[&1]), "the switch segment is timeline 2's");
    }
}
