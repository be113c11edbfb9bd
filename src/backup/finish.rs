//! Phase 8, finish: the self-check of every file's size, `-R`'s recovery settings, the WAL
//! segments' archive status, the manifest, one sync, and pg_control put in place last — only a
//! complete, synced backup can be started.

use crate::cli::MasterOpts;
use crate::dest::{Dest, DestError, FileWriter, Roots, SafePath, PG_CONTROL, PG_CONTROL_PENDING};
use crate::error::Error;
use crate::manifest::{self, FileEntry, WalRange};
use crate::pg::sql;
use crate::protocol::show;
use crate::recovery;

use super::connect::Server;
use super::copy::Copied;
use super::destination::Target;
use super::start::Started;
use super::stop::Stopped;
use super::Summary;

pub(super) fn finish(
    server: &mut Server,
    opts: &MasterOpts,
    target: &mut Target,
    mut copied: Copied,
    started: &Started,
    stopped: &Stopped,
) -> Result<Summary, Error> {
    let (dest, sync, algorithm) = (&target.dest, server.common.sync, server.common.algorithm);
    check_files(&target.roots, &copied.entries)?;
    if opts.write_recovery_conf {
        let conn = &server.common.conn;
        let (password, passfile) = (conn.password_given(), conn.passfile_used());
        let conninfo = recovery::primary_conninfo(conn.params(), password.as_deref(), passfile.as_deref());
        let slot = opts.named_slot.as_deref();
        recovery::write_recovery_conf(dest, &mut copied.entries, &conninfo, slot, algorithm, sync)?;
        log::info!(
            "wrote standby.signal and primary_conninfo{}",
            if slot.is_some() { " and primary_slot_name" } else { "" }
        );
    }
    let geo = server.geo;
    // `.done` for complete segments only, as pg_basebackup: the last one is cut at the stop
    // (zeros after it) unless the stop is on a boundary; the restored server completes it.
    let partial = geo.end_offset(stopped.lsn) < geo.seg_size;
    let last = geo.end_segno(stopped.lsn) + 1 - u64::from(partial);
    for seg in geo.segno(started.lsn)..last {
        let done = format!("pg_wal/archive_status/{}.done", geo.file_name(started.tli, seg));
        dest.write_file(&SafePath::parse(&done)?, b"", false)?;
    }
    if opts.manifest {
        write_manifest(server, dest, &mut copied.entries, started, stopped)?;
    }
    if sync {
        log::info!("syncing {}", dest.root().display());
        target.roots.sync_all()?;
    }
    // The very last step: pg_control appears only in a complete, synced backup; from then
    // on DEST is left alone (one step for a second signal, see DestGuard::complete).
    target.guard.complete(|| -> Result<(), Error> {
        // The run's record of DEST's origin goes first: a complete backup holds only what
        // its manifest lists (a crash here leaves DEST with neither; on PostgreSQL 17+ its manifest
        // still proves its origin).
        dest.remove_file(&SafePath::parse(crate::delta::origin::MARKER)?)?;
        if sync {
            dest.sync_dir(None)?;
        }
        dest.rename(&SafePath::parse(PG_CONTROL_PENDING)?, &SafePath::parse(PG_CONTROL)?)?;
        if sync {
            dest.sync_dir(Some(&SafePath::parse("global")?))?;
        }
        Ok(())
    })?;
    copied.pages.print_totals();
    Ok(summary(server, opts, copied, started, stopped))
}

fn write_manifest(
    server: &mut Server,
    dest: &Dest,
    entries: &mut [FileEntry],
    started: &Started,
    stopped: &Stopped,
) -> Result<(), Error> {
    let caps = server.info.caps;
    let system_id =
        if caps.manifest_system_identifier() { Some(sql::system_identifier(&mut server.ctl)?) } else { None };
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let wal = [WalRange { timeline: started.tli, start: started.lsn, end: stopped.lsn }];
    let mut w = dest.create_file(&SafePath::parse("backup_manifest")?)?;
    let written = manifest::write(&mut w.io(), system_id, entries, &wal);
    written.map_err(|e| manifest_error(&w, e))?;
    w.finish(server.common.sync)?;
    Ok(())
}

/// A failure writing the manifest is DEST's (no space: exit 5, with the hint to free some).
fn manifest_error(w: &FileWriter, source: std::io::Error) -> Error {
    Error::Dest(DestError::Io { path: w.path().to_path_buf(), source })
}

fn summary(server: &Server, opts: &MasterOpts, c: Copied, started: &Started, stopped: &Stopped) -> Summary {
    Summary {
        files: c.files,
        bytes: c.bytes,
        vanished: c.vanished,
        wal_files: c.wal_files,
        wal_history: c.wal_history,
        start: started.lsn,
        stop: stopped.lsn,
        timeline: started.tli,
        elapsed: std::time::Duration::ZERO,
        method: server.method,
        bad_pages: c.pages.total,
        verified_pages: c.pages.verified,
        manifest: opts.manifest,
        wire: c.wire,
        refresh: None,
        incremental: None,
    }
}

/// Every file written is in DEST at the size recorded for the manifest (pg_control still
/// under its pending name).
fn check_files(roots: &Roots, entries: &[FileEntry]) -> Result<(), Error> {
    let mut wrong = Vec::new();
    for e in entries {
        let on_disk: &[u8] = if e.path == PG_CONTROL.as_bytes() { PG_CONTROL_PENDING.as_bytes() } else { &e.path };
        let (dest, rel) = roots.route(&SafePath::parse(on_disk)?);
        match dest.file_size(&rel)? {
            Some(n) if n == e.size => {}
            Some(n) => wrong.push(format!("{} is {n} bytes, {} were written", show(&e.path), e.size)),
            None => wrong.push(format!("{} is missing", show(&e.path))),
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(Error::Inconsistent(format!("DEST does not hold what was copied: {}", wrong.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    /// ENOSPC while the manifest is written (the device fills up after the data files) is a
    /// DEST problem: exit 5 and the hint to free space, naming backup_manifest.
    #[test]
    fn no_space_for_the_manifest_is_a_dest_error() {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut w = FileWriter::on(full, "/backups/b1/backup_manifest".into());
        // More than the write buffer, so that a write (not only the final flush) fails.
        let entries: Vec<FileEntry> = (0..5000)
            .map(|i| FileEntry {
                path: format!("base/5/{i}").into_bytes(),
                size: 8192,
                mtime: 0,
                algorithm: Algorithm::None,
                checksum: None,
            })
            .collect();
        let wal = [WalRange { timeline: 1, start: crate::lsn::Lsn(0), end: crate::lsn::Lsn(1) }];
        let written = manifest::write(&mut w.io(), None, &entries, &wal);
        let e = manifest_error(&w, written.unwrap_err());
        assert_eq!(e.exit_code(), crate::error::exit::DEST, "{e}");
        assert!(e.to_string().contains("no space left on device while writing /backups/b1/backup_manifest"), "{e}");
        assert!(e.hint().is_some_and(|h| h.contains("free some space")), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
