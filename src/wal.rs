//! The WAL loop: as the master's child (`pgbb --slave -x`), it copies every segment of the
//! backup's range into DEST/pg_wal and stops at the position the master names; standalone
//! (`pgbb -x`), it feeds a warm standby until SIGINT/SIGTERM.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, RecvTimeoutError};

use crate::cli::{Common, Compress};
use crate::dest::{Dest, SafePath};
use crate::error::Error;
use crate::lsn::{is_history_file, Lsn, WalGeometry};
use crate::pg::{sql, PgError, Session};
use crate::protocol::{Response, WalCommand, PROTOCOL_VERSION};
use crate::transfer::{Copied, Outcome, Transfer, TransferError};

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

fn transfer_err(e: TransferError) -> Error {
    match e {
        TransferError::Pg(p) => Error::Pg(p),
        TransferError::Dest(d) => Error::Dest(d),
        other => Error::Io(other.to_string()),
    }
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
        self.t.fetch(&mut self.s, &src, &self.dest, &dst, None).map_err(transfer_err)
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
        writeln!(out, "{r}").and_then(|()| out.flush()).map_err(|e| Error::Io(format!("cannot write results: {e}")))
    }
}

/// The master's WAL child: copies segments `start`'s segment onwards on `tli` as they
/// complete; on `stop LSN` finishes through that segment, reports every segment of the range
/// it could not copy as `vanished`, prints `done N` and exits.
pub fn run_child(common: &Common, start: Lsn, tli: u32, delay: Duration, compress: Compress) -> Result<(), Error> {
    let mut say = stdout_say();
    let mut c = match Copier::open(common, compress) {
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
    let start_seg = c.geo.segno(start);
    let mut copied: HashSet<u64> = HashSet::new();
    let mut count = 0u64;
    let mut stop: Option<Lsn> = None;
    let mut res = || -> Result<(), Error> {
        loop {
            let (files, written) = sql::list_wal(&mut c.s)?;
            c.copy_history(&files, &mut say)?;
            let last = stop.map(|s| c.geo.end_segno(s));
            for (name, size) in &files {
                let Some((t, seg)) = c.geo.parse_file_name(name) else {
                    continue;
                };
                if t != tli
                    || seg < start_seg
                    || last.is_some_and(|l| seg > l)
                    || !c.geo.is_complete(seg, written)
                    || copied.contains(&seg)
                {
                    continue;
                }
                match c.copy(name, name)? {
                    Outcome::Copied(got) if got.size == c.geo.seg_size => {
                        copied.insert(seg);
                        count += 1;
                        say(ok_line(&got, name))?;
                    }
                    Outcome::Copied(got) => {
                        say(Response::Error {
                            path: format!("pg_wal/{name}").into_bytes(),
                            message: format!(
                                "segment is {} bytes (listed {size}), expected {}",
                                got.size, c.geo.seg_size
                            ),
                        })?;
                    }
                    Outcome::Vanished => {
                        log::warn!("WAL segment {name} was removed before it could be copied")
                    }
                }
            }
            if let Some(last) = last {
                if c.geo.is_complete(last, written) {
                    for seg in start_seg..=last {
                        if !copied.contains(&seg) {
                            say(Response::Vanished {
                                path: format!("pg_wal/{}", c.geo.file_name(tli, seg)).into_bytes(),
                            })?;
                        }
                    }
                    say(Response::Done { count })?;
                    return Ok(());
                }
            }
            let wait = if stop.is_some() { Duration::from_millis(100) } else { delay };
            match rx.recv_timeout(wait) {
                Ok(Some(Ok(WalCommand::Stop(l)))) => {
                    log::info!(
                        "backup stopped at {l}; copying WAL through segment {}",
                        c.geo.file_name(tli, c.geo.end_segno(l))
                    );
                    stop = Some(l);
                }
                Ok(Some(Err(e))) => return Err(Error::Io(format!("bad command from the master: {e}"))),
                Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Io("the master closed the WAL child's input before the backup stopped".into()))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    };
    let r = res();
    if let Err(e) = &r {
        let _ = stdout_say()(Response::Fatal { message: e.to_string() });
    }
    r
}

/// True when DEST/pg_wal/NAME is really segment `segno`: full size, and its first page
/// header names that position. A standby recycles old segments under future names; such a
/// file has the right name and size but old contents, and must be copied over.
fn genuine_segment(dest: &Dest, name: &str, segno: u64, geo: WalGeometry) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(dest.root().join("pg_wal").join(name)) else { return false };
    if f.metadata().map(|m| m.len()).unwrap_or(0) != geo.seg_size {
        return false;
    }
    let mut h = [0u8; 16];
    if f.read_exact(&mut h).is_err() {
        return false;
    }
    let magic = u16::from_ne_bytes([h[0], h[1]]);
    let addr = u64::from_ne_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    magic != 0 && addr == segno * geo.seg_size
}

/// Where a standalone loop starts: the backup's start segment if DEST holds a backup_label,
/// else after the newest genuine segment already in DEST/pg_wal, else (None) the current one.
fn standalone_floor(dest: &Dest, geo: WalGeometry) -> Option<u64> {
    if let Ok(label) = std::fs::read_to_string(dest.root().join("backup_label")) {
        let start = label
            .lines()
            .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|l| l.parse::<Lsn>().ok());
        if let Some(s) = start {
            return Some(geo.segno(s));
        }
    }
    let dir = std::fs::read_dir(dest.root().join("pg_wal")).ok()?;
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (_, seg) = geo.parse_file_name(&name)?;
            genuine_segment(dest, &name, seg, geo).then_some(seg + 1)
        })
        .max()
}

/// `pgbb -x DSN DEST`: copies complete segments, keeps the one being written as
/// `NAME.partial` (renamed when complete), until SIGINT/SIGTERM. A restart resumes after
/// what DEST already holds.
pub fn run_standalone(common: &Common, delay: Duration, compress: Compress, slot: Option<&str>) -> Result<(), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::Io(format!("cannot install signal handlers: {e}")))?;
    }
    std::fs::create_dir_all(&common.dest)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", common.dest.display())))?;
    let mut c = Copier::open(common, compress)?;
    let mut floor = standalone_floor(&c.dest, c.geo);
    let mut have: HashSet<String> = HashSet::new();
    let mut partial: Option<(String, Lsn)> = None;
    let mut advanced = Lsn(0);
    let mut quiet = |r: Response| -> Result<(), Error> {
        log::info!("{r}");
        Ok(())
    };
    log::info!(
        "copying WAL into {} every {:?}; stop with SIGINT or SIGTERM",
        c.dest.root().join("pg_wal").display(),
        delay
    );
    while !stop.load(Ordering::SeqCst) {
        let (files, written) = sql::list_wal(&mut c.s)?;
        c.copy_history(&files, &mut quiet)?;
        let cur = c.geo.segno(written);
        let floor_seg = *floor.get_or_insert(cur);
        let tli = files.iter().filter_map(|(n, _)| c.geo.parse_file_name(n)).map(|(t, _)| t).max().unwrap_or(1);
        for (name, _) in &files {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Some((t, seg)) = c.geo.parse_file_name(name) else {
                continue;
            };
            if t != tli || seg < floor_seg || !c.geo.is_complete(seg, written) || have.contains(name) {
                continue;
            }
            if genuine_segment(&c.dest, name, seg, c.geo) {
                have.insert(name.clone());
                continue;
            }
            if let Outcome::Copied(got) = c.copy(name, name)? {
                if got.size == c.geo.seg_size {
                    log::info!("copied {name}");
                    have.insert(name.clone());
                    c.dest.remove_file(&wal_path(&format!("{name}.partial"))?)?;
                }
            }
        }
        // The segment being written, as NAME.partial, when it moved on since the last copy.
        if cur >= floor_seg && !stop.load(Ordering::SeqCst) {
            let name = c.geo.file_name(tli, cur);
            if partial.as_ref() != Some(&(name.clone(), written)) && files.iter().any(|(n, _)| *n == name) {
                if let Some((old, _)) = &partial {
                    if *old != name && !have.contains(old) {
                        c.dest.remove_file(&wal_path(&format!("{old}.partial"))?)?;
                    }
                }
                if let Outcome::Copied(_) = c.copy(&name, &format!("{name}.partial"))? {
                    partial = Some((name, written));
                }
            }
        }
        // With --slot, let the server recycle what is safely here: everything before the
        // first segment still missing.
        if let Some(slot) = slot {
            let mut upto = floor_seg;
            while upto < cur && have.contains(&c.geo.file_name(tli, upto)) {
                upto += 1;
            }
            let target = Lsn(upto * c.geo.seg_size);
            if target > advanced {
                match sql::slot_restart_lsn(&mut c.s, slot)? {
                    None => {
                        return Err(PgError::Unsupported(format!("replication slot \"{slot}\" does not exist")).into())
                    }
                    Some(r) if r < target => {
                        sql::advance_slot(&mut c.s, slot, target)?;
                        log::info!("advanced slot {slot} to {target}");
                    }
                    Some(_) => {}
                }
                advanced = target;
            }
        }
        let until = Instant::now() + delay;
        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
    }
    log::info!("stopping on request");
    Ok(())
}
