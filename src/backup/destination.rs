//! Phase 2, prepare DEST: the tablespaces' targets planned, DEST and every target proven safe
//! to use (never the live cluster), then DEST created or emptied and locked, under one guard
//! that undoes all of it if the backup fails.

use crate::cli::MasterOpts;
use crate::dest::{Dest, Roots};
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
}

pub(super) fn prepare(server: &mut Server, opts: &MasterOpts, sig: &Signals) -> Result<Target, Error> {
    let ctl = &mut server.ctl;
    let common = &mut server.common;
    let group = server.info.group_access;
    // Tablespaces: each copied to its location or its -T mapping, pg_tblspc/<oid> a symlink.
    let spcs = tablespace::plan(&sql::tablespaces(ctl)?, &opts.mappings)?;
    // Nothing is created or removed before DEST and the targets are known to be safe.
    let view = dest_safety::vet(ctl, &common.dest, &spcs, opts.force)?;
    let mut guard = DestGuard::prepare(&common.dest, opts.force, opts.keep_on_failure, group)?;
    sig.interrupt.set_last_words(guard.emergency_cleanup(sig.pids.clone()));
    let dest = Dest::open(&common.dest, group)?;
    let mut roots = Roots::new(Dest::open(&common.dest, group)?);
    for t in &spcs {
        guard.add_extra(&t.target);
        roots.add_tablespace(t.oid, &t.target, group)?;
        common.tablespaces.push((t.oid, t.target.clone()));
        log::info!("tablespace \"{}\" ({}) goes to {}", t.name, t.location.display(), t.target.display());
    }
    let version_dir = format!("PG_{}_{}", server.info.caps.major(), sql::catalog_version(ctl)?);
    Ok(Target { guard, dest, roots, spcs, view, version_dir })
}
