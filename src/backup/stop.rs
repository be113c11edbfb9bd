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
    let label_tli = crate::label::start_timeline(&stop.labelfile);
    if label_tli.is_some_and(|t| t != started.tli) {
        return Err(Error::Inconsistent(format!(
            "backup_label says timeline {label_tli:?}, the checkpoint said {}",
            started.tli
        )));
    }
    if server.info.in_recovery {
        same_timeline(sql::min_recovery_timeline(&mut server.ctl)?, started.tli)?;
    }
    let label = incremental_label(&stop.labelfile, started.incremental_from);
    target.guard.mutate(|| copy.write_own_file(&target.dest, "backup_label", label.as_bytes()))?;
    // Plain format, as pg_basebackup: the pg_tblspc symlinks (to the mapped locations) are
    // the tablespace map; a tablespace_map file would point recovery at the old locations.
    if !stop.spcmapfile.is_empty() {
        log::debug!("tablespace map (not written, the pg_tblspc links replace it):\n{}", stop.spcmapfile);
    }
    copy.send_wal_stop(stop.lsn)?;
    copy.finish_wal()?;
    Ok(Stopped { lsn: stop.lsn })
}

/// The label, with `INCREMENTAL FROM LSN` and `INCREMENTAL FROM TLI` after `START TIMELINE`
/// for an incremental backup, as core writes them (the SQL functions know nothing of
/// incremental backups, and pg_combinebackup chains backups by these lines).
fn incremental_label(label: &str, from: Option<(Lsn, u32)>) -> String {
    let Some((lsn, tli)) = from else { return label.to_string() };
    let lines = format!("INCREMENTAL FROM LSN: {lsn}\nINCREMENTAL FROM TLI: {tli}\n");
    let mut out = String::with_capacity(label.len() + lines.len());
    let mut added = false;
    for l in label.split_inclusive('\n') {
        out.push_str(l);
        if !added && l.starts_with("START TIMELINE: ") {
            if !l.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&lines);
            added = true;
        }
    }
    if !added {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&lines);
    }
    out
}

/// A standby's backup stops at its minimum recovery point; read after the stop, its timeline
/// is the stop's or a later one. When it is not the start's, the standby followed a promotion
/// of its upstream during the backup: the WAL range would span two timelines and pgbb copies
/// one (the server raises no error for this, as it does for a promotion of the standby
/// itself). Read a moment after the stop, a switch just after it fails the backup too.
fn same_timeline(now: u32, start: u32) -> Result<(), Error> {
    if now == 0 || now == start {
        return Ok(());
    }
    Err(Error::Inconsistent(format!(
        "the standby's timeline changed during the backup (it started on timeline {start} and is on timeline \
         {now} now: its upstream was promoted); pgbb copies the WAL of one timeline: take the backup again"
    )))
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

/// Every segment from the start's through the stop's must be in DEST/pg_wal, full size, and
/// really that segment (its first page header names its position: not a zero-filled or stale
/// file). The last one holds the server's bytes through the stop and zeros after them (see
/// the WAL child), which is full size too.
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
            Some(n) if n == geo.seg_size && crate::wal::genuine_segment(dest, &name, seg, geo) => {}
            Some(n) if n == geo.seg_size => missing.push(format!("{name} (not a WAL segment of that position)")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_lines_follow_start_timeline() {
        let label = "START WAL LOCATION: 0/7000028 (file 000000010000000000000007)\nCHECKPOINT LOCATION: 0/7000080\n\
                     BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-27 13:00:00 UTC\n\
                     LABEL: x\nSTART TIMELINE: 1\n";
        let got = incremental_label(label, Some((Lsn(0x500_0028), 1)));
        assert_eq!(got, format!("{label}INCREMENTAL FROM LSN: 0/5000028\nINCREMENTAL FROM TLI: 1\n"));
        assert_eq!(incremental_label(label, None), label);
    }

    const SEG: u64 = 1 << 20;

    /// A segment file as the WAL child leaves it: a long page header naming `segno`, the
    /// first `len` bytes written, zeros after.
    fn segment(dest: &Dest, geo: WalGeometry, segno: u64, len: u64) {
        let mut b = vec![0u8; SEG as usize];
        b[0..2].copy_from_slice(&0xD10Du16.to_ne_bytes());
        b[8..16].copy_from_slice(&(segno * SEG).to_ne_bytes());
        b[40..len as usize].fill(7);
        std::fs::write(dest.root().join("pg_wal").join(geo.file_name(1, segno)), b).unwrap();
    }

    fn check(dest: &Dest, geo: WalGeometry) -> Result<(), String> {
        check_wal_range(dest, geo, 1, Lsn(3 * SEG + 40), Lsn(5 * SEG + 0x128), &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn a_standby_on_another_timeline_at_the_stop_fails_the_backup() {
        assert!(same_timeline(1, 1).is_ok());
        assert!(same_timeline(0, 1).is_ok(), "no minimum recovery point: nothing to compare");
        let e = same_timeline(2, 1).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::FAILED);
        assert!(e.to_string().contains("started on timeline 1 and is on timeline 2"), "{e}");
    }

    #[test]
    fn the_wal_range_check_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pg_wal")).unwrap();
        let dest = Dest::open(dir.path(), false).unwrap();
        let geo = WalGeometry::new(SEG).unwrap();
        // 3 and 4 complete, 5 cut at the stop and zero-filled: complete.
        for seg in 3..=4 {
            segment(&dest, geo, seg, SEG);
        }
        segment(&dest, geo, 5, 0x128);
        assert_eq!(check(&dest, geo), Ok(()));
        // A short last segment.
        let last = dest.root().join("pg_wal").join(geo.file_name(1, 5));
        std::fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(0x128).unwrap();
        let e = check(&dest, geo).unwrap_err();
        assert!(e.contains("000000010000000000000005 (296 bytes"), "{e}");
        // All zeros at full size: not that segment.
        std::fs::write(&last, vec![0u8; SEG as usize]).unwrap();
        let e = check(&dest, geo).unwrap_err();
        assert!(e.contains("000000010000000000000005 (not a WAL segment"), "{e}");
        // Another segment's contents under this name.
        segment(&dest, geo, 5, 0x128);
        std::fs::copy(
            dest.root().join("pg_wal").join(geo.file_name(1, 3)),
            dest.root().join("pg_wal").join(geo.file_name(1, 4)),
        )
        .unwrap();
        let e = check(&dest, geo).unwrap_err();
        assert!(e.contains("000000010000000000000004 (not a WAL segment"), "{e}");
        // A missing one in the middle.
        std::fs::remove_file(dest.root().join("pg_wal").join(geo.file_name(1, 4))).unwrap();
        let e = check(&dest, geo).unwrap_err();
        assert!(e.contains("000000010000000000000004") && !e.contains("0005"), "{e}");
    }
}
