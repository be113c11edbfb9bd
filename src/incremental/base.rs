//! The earlier backup as this one's base, checked against the server before anything
//! starts (and by `--check -i`): the server can summarize WAL, OLD_MANIFEST is sound, of this
//! cluster, of an earlier point of its history, and the summaries still cover the changes
//! since. Checked again after the start, against the backup's own start.

use std::path::Path;

use crate::lsn::Lsn;
use crate::pg::{sql, sql_incr, Caps, Session};

use super::old_manifest::{self, OldManifest};
use super::range::{self, Needed};
use super::{timeline, IncrementalError};

/// The earlier backup, read and checked.
#[derive(Debug)]
pub struct Base {
    pub old: OldManifest,
}

/// Whether the server can take incremental backups at all.
pub fn server_can(s: &mut Session, caps: Caps, version: &str) -> Result<(), IncrementalError> {
    if !caps.wal_summaries() {
        return Err(IncrementalError::TooOld(version.to_string()));
    }
    if !sql_incr::summarize_wal(s)? {
        return Err(IncrementalError::SummarizeOff);
    }
    match sql::page_geometry(s)? {
        (8192, _) => Ok(()),
        (other, _) => Err(IncrementalError::BlockSize(other)),
    }
}

/// Reads OLD_MANIFEST and checks it against the server as it is now (`standby`: the server is
/// in recovery).
pub fn check(s: &mut Session, path: &Path, standby: bool) -> Result<Base, IncrementalError> {
    let old = old_manifest::read(path)?;
    let server = sql::system_identifier(s)?;
    match old.system_identifier {
        None => return Err(IncrementalError::NoSystemIdentifier),
        Some(id) if id != server => return Err(IncrementalError::OtherSystem { old: id, server }),
        Some(_) => {}
    }
    let now = sql_incr::current_position(s)?;
    // A standby that has not replayed that far yet is told after the start, by the check of
    // the final timeline (exit 4, with what to do).
    if let Some(end) = old.wal_ranges.iter().map(|r| r.end).max().filter(|&e| e > now && !standby) {
        return Err(IncrementalError::Newer { end, now });
    }
    // A standby starts its backup at its latest restartpoint; a primary on the timeline it
    // writes (right after a promotion its last checkpoint may still be of the old one).
    let tli = if standby { sql::checkpoint_timeline(s)? } else { sql_incr::insert_timeline(s)? };
    let needed = needed(s, &old, tli, now.max(old.wal_ranges.iter().map(|r| r.end).max().unwrap_or(now)))?;
    // What is summarized already must be covered from the earlier backup's start on (the
    // rest is checked once the backup has started and the summarizer has caught up).
    let state = sql_incr::summarizer_state(s)?;
    let so_far = Needed {
        ranges: needed.ranges.iter().map(|&(t, from, to)| (t, from, to.min(state.summarized.max(from)))).collect(),
        ..needed
    };
    let all = sql_incr::available_summaries(s)?;
    range::covering(&all, &so_far).map_err(IncrementalError::Uncovered)?;
    Ok(Base { old })
}

/// The ranges to summarize for a backup starting at `start` on timeline `tli`.
pub fn needed(s: &mut Session, old: &OldManifest, tli: u32, start: Lsn) -> Result<Needed, IncrementalError> {
    let text = if tli > 1 { sql_incr::timeline_history(s, tli)? } else { None };
    if tli > 1 && text.is_none() {
        return Err(IncrementalError::History(format!("pg_wal/{tli:08X}.history is missing")));
    }
    let history = timeline::parse(tli, text.as_deref()).map_err(IncrementalError::History)?;
    Ok(range::needed(&old.wal_ranges, &history, start)?)
}
