//! Phase 7, stop and WAL range: the backup stopped on the master's session (the stop LSN and
//! the label), the WAL child told where to stop and waited for, then the self-check that the
//! slot held and that every segment of the range is in DEST.

use crate::dest::{Dest, SafePath};
use crate::error::Error;
use crate::lsn::{Lsn, WalGeometry};
use crate::pg::sql;

use super::connect::Server;
use super::copy::{Copied, Run};
use super::destination::Target;
use super::slot::WalHold;
use super::start::Started;
use super::Signals;

/// Where the backup stopped.
pub(super) struct Stopped {
    pub lsn: Lsn,
}

pub(super) fn stop_backup(
    server: &mut Server,
    started: &Started,
    copy: &mut Run,
    target: &Target,
    sig: &Signals,
) -> Result<Stopped, Error> {
    // Every data file and pg_control are in place: stop the backup.
    sig.interrupt.set_cancel(Some(server.common.conn.canceller(&server.ctl)));
    let stop = sql::stop_backup(&mut server.ctl, server.info.caps)?;
    log::info!("backup stopped at {}", stop.lsn);
    let label_tli = stop
        .labelfile
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE: "))
        .and_then(|t| t.trim().parse::<u32>().ok());
    if label_tli.is_some_and(|t| t != started.tli) {
        return Err(Error::Inconsistent(format!(
            "backup_label says timeline {label_tli:?}, the checkpoint said {}",
            started.tli
        )));
    }
    target.guard.mutate(|| copy.write_own_file(&target.dest, "backup_label", stop.labelfile.as_bytes()))?;
    // Plain format, as pg_basebackup: the pg_tblspc symlinks (to the mapped locations) are
    // the tablespace map; a tablespace_map file would point recovery at the old locations.
    if !stop.spcmapfile.is_empty() {
        log::debug!("tablespace map (not written, the pg_tblspc links replace it):\n{}", stop.spcmapfile);
    }
    copy.send_wal_stop(stop.lsn)?;
    copy.finish_wal()?;
    Ok(Stopped { lsn: stop.lsn })
}

/// The slot first: when it was invalidated, that is the cause of any WAL gap.
pub(super) fn check_wal(
    server: &mut Server,
    hold: &WalHold,
    target: &Target,
    started: &Started,
    stopped: &Stopped,
    copied: &Copied,
) -> Result<(), Error> {
    hold.check_not_lost(&mut server.ctl)?;
    check_wal_range(&target.dest, server.geo, started.tli, started.lsn, stopped.lsn, &copied.wal_missing)
}

/// Every segment from the start's through the stop's must be in DEST/pg_wal, full size.
pub fn check_wal_range(
    dest: &Dest,
    geo: WalGeometry,
    tli: u32,
    start: Lsn,
    stop: Lsn,
    reported: &[String],
) -> Result<(), Error> {
    let mut missing: Vec<String> = Vec::new();
    for seg in geo.segno(start)..=geo.end_segno(stop) {
        let name = geo.file_name(tli, seg);
        match dest.file_size(&SafePath::parse(format!("pg_wal/{name}"))?)? {
            Some(n) if n == geo.seg_size => {}
            Some(n) => missing.push(format!("{name} ({n} bytes, expected {})", geo.seg_size)),
            None => missing.push(name),
        }
    }
    if tli > 1 && dest.file_size(&SafePath::parse(format!("pg_wal/{tli:08X}.history"))?)?.is_none() {
        missing.push(format!("{tli:08X}.history"));
    }
    if missing.is_empty() && !reported.is_empty() {
        missing.extend(reported.iter().cloned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::WalIncomplete { missing: missing.join(", ") })
    }
}
