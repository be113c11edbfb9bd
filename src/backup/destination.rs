//! Phase 2, prepare DEST: the tablespaces' targets planned, DEST and every target proven safe
//! to use (never the live cluster), then DEST created or emptied and locked, under one guard
//! that undoes all of it if the backup fails.

use crate::cli::MasterOpts;
use crate::delta::origin::{self, Cluster, Found, MARKER};
use crate::delta::trust;
use crate::dest::{Dest, DestError, Roots, SafePath, PG_CONTROL};
use crate::dest_safety::{self, ServerView};
use crate::error::Error;
use crate::guard::DestGuard;
use crate::pg::sql;
use crate::tablespace::{self, Tablespace};

use super::connect::Server;
use super::Signals;

/// DEST, ready to be written.
pub(super) struct Target {
    /// Undoes DEST and the tablespace targets unless disarmed by the finish.
    pub guard: DestGuard,
    /// DEST itself (the master's own files: backup_label, manifest, pg_control).
    pub dest: Dest,
    /// DEST and the tablespace targets, for routing a path to where it is written.
    pub roots: Roots,
    pub spcs: Vec<Tablespace>,
    /// What pgbb can see of the server's data directory from here (for the listing).
    pub view: ServerView,
    /// `PG_<major>_<catversion>`: the one directory of a tablespace that belongs to the backup.
    pub version_dir: String,
    /// `--delta` on an older copy of this cluster: DEST's files are compared, not replaced.
    pub refresh: bool,
}

pub(super) fn prepare(server: &mut Server, opts: &MasterOpts, sig: &Signals) -> Result<Target, Error> {
    let ctl = &mut server.ctl;
    let common = &mut server.common;
    let group = server.info.group_access;
    // Tablespaces: each copied to its location or its -T mapping, pg_tblspc/<oid> a symlink.
    let spcs = tablespace::plan(&sql::tablespaces(ctl)?, &opts.mappings, opts.delta)?;
    // Nothing is created or removed before DEST and the targets are known to be safe.
    let view = dest_safety::vet(ctl, &common.dest, &spcs, opts.force || opts.delta)?;
    let catalog_version = sql::catalog_version(ctl)?;
    let cluster =
        Cluster { system_identifier: sql::system_identifier(ctl)?, major: server.info.caps.major(), catalog_version };
    let refresh = opts.delta && is_a_copy(&common.dest, cluster)?;
    if refresh {
        usable(&common.dest)?;
    }
    let trusted = pages_trusted(ctl, &common.dest, (refresh, opts.delta_hash), server.info.in_recovery)?;
    if refresh {
        common.trust_lsn = trusted.upto;
    }
    for t in &spcs {
        if refresh {
            tablespace::check_refresh_target(t, &common.dest)?;
        } else if opts.delta {
            tablespace::check_empty(t)?;
        }
    }
    let mut guard = if refresh {
        DestGuard::adopt(&common.dest, group)?
    } else {
        DestGuard::prepare(&common.dest, opts.force, opts.keep_on_failure, group)?
    };
    sig.interrupt.set_last_words(guard.emergency_cleanup(sig.pids.clone()));
    let dest = Dest::open(&common.dest, group)?;
    let mut roots = Roots::new(Dest::open(&common.dest, group)?);
    for t in &spcs {
        guard.add_extra(&t.target);
        roots.add_tablespace(t.oid, &t.target, group)?;
        common.tablespaces.push((t.oid, t.target.clone()));
        log::info!("tablespace \"{}\" ({}) goes to {}", t.name, t.location.display(), t.target.display());
    }
    let version_dir = format!("PG_{}_{}", server.info.caps.major(), catalog_version);
    // Before anything else in DEST changes: what proves, if this run is interrupted, whose
    // copy DEST is (a later --delta finishes it).
    let record =
        cluster.record() + &trusted.marker.map(|(tli, upto)| trust::marker_lines(tli, upto)).unwrap_or_default();
    guard.mutate(|| dest.write_file(&SafePath::parse(MARKER)?, record.as_bytes(), common.sync))?;
    if refresh {
        unstartable(&dest, &guard, common.sync)?;
    }
    Ok(Target { guard, dest, roots, spcs, view, version_dir, refresh })
}

/// What [`pages_trusted`] found.
struct Trusted {
    /// `--delta`: DEST's relation pages up to this LSN are compared by their header.
    upto: Option<crate::lsn::Lsn>,
    /// The timeline the marker says all of DEST's pages are of, if it may, and up to which
    /// LSN (`None`: all of them).
    marker: Option<(u32, Option<crate::lsn::Lsn>)>,
}

/// Whether DEST's pages may be compared by their header (`delta::trust`), and what the marker
/// of this run says of them: every page of this run comes from the primary's timeline, so the
/// marker says so when DEST held nothing, or held only trusted pages (`--delta-hash`: the user
/// doubts it, the marker does not say it).
fn pages_trusted(
    ctl: &mut crate::pg::Session,
    dest: &std::path::Path,
    (refresh, hash): (bool, bool),
    standby: bool,
) -> Result<Trusted, Error> {
    use crate::pg::sql_incr;
    let tli = if standby { sql::checkpoint_timeline(ctl)? } else { sql_incr::insert_timeline(ctl)? };
    if !refresh {
        return Ok(Trusted { upto: None, marker: (!standby).then_some((tli, None)) });
    }
    if hash {
        log::info!("--delta: pages are compared by their SHA-256 (--delta-hash)");
        return Ok(Trusted { upto: None, marker: None });
    }
    let text = if tli > 1 { sql_incr::timeline_history(ctl, tli)? } else { None };
    let history = crate::incremental::timeline::parse(tli, text.as_deref()).unwrap_or_default();
    let now = sql_incr::current_position(ctl)?;
    let server = trust::Server { checksums: sql::data_checksums(ctl)?, standby, now, history };
    match trust::assess(dest, &server) {
        trust::Trust::Header { upto, open, why } => {
            log::info!("--delta: relation pages are compared by their header (LSN and checksum) up to {upto}: {why}");
            Ok(Trusted { upto: Some(upto), marker: Some((tli, (!open).then_some(upto))) })
        }
        trust::Trust::Hash(why) => {
            log::info!("--delta: pages are compared by their SHA-256: {why}");
            Ok(Trusted { upto: None, marker: None })
        }
    }
}

/// `--delta`: is DEST a copy to refresh (else empty: a full backup)? Refuses anything else.
fn is_a_copy(dest: &std::path::Path, cluster: Cluster) -> Result<bool, Error> {
    match origin::prove(dest, cluster).map_err(DestError::from)? {
        Found::Empty => {
            log::info!("--delta: {} is empty or absent: taking a full backup", dest.display());
            Ok(false)
        }
        Found::Copy(by) => {
            log::info!(
                "--delta: refreshing the copy of this cluster in {} (proven by {})",
                dest.display(),
                by.join(", ")
            );
            Ok(true)
        }
    }
}

/// Every entry of DEST can be refreshed by this user: checked before anything changes.
fn usable(dest: &std::path::Path) -> Result<(), Error> {
    let found = crate::delta::local::list(dest).map_err(|source| DestError::Op {
        action: "list",
        path: dest.into(),
        source,
    })?;
    let files = crate::delta::local::unusable(dest, &found);
    if files.is_empty() {
        return Ok(());
    }
    Err(DestError::from(origin::OriginError::Unusable { dest: dest.into(), files }).into())
}

/// The refresh's first change: DEST can no longer be started (its pg_control goes; the new
/// one comes last), and the WAL a backup always copies anew is cleared, before the WAL child
/// writes into pg_wal. A pg_wal that is a symlink (an older copy's separate WAL directory) is
/// removed, never followed.
fn unstartable(dest: &Dest, guard: &DestGuard, sync: bool) -> Result<(), Error> {
    guard.mutate(|| -> Result<(), Error> {
        dest.remove_file(&SafePath::parse(PG_CONTROL)?)?;
        if sync {
            dest.sync_dir(Some(&SafePath::parse("global")?)).or_else(|e| match e {
                DestError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
                e => Err(e),
            })?;
        }
        let wal = dest.root().join("pg_wal");
        let op = |action, source| DestError::Op { action, path: wal.clone(), source };
        match std::fs::symlink_metadata(&wal) {
            Ok(m) if m.is_dir() => crate::guard::empty_dir(&wal)?,
            Ok(_) => std::fs::remove_file(&wal).map_err(|e| op("remove", e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(op("read", e).into()),
        }
        Ok(())
    })
}
