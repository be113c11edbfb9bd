//! Phase 5 for `--delta`: the server's files against what DEST holds. Whatever a full backup
//! taken now would not have is removed (files gone from the server, excluded ones, stale
//! WAL, symlinks, anything of the wrong kind); files DEST has are compared block by block by
//! the workers; the rest are copied whole. pg_control is held back for last.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use crate::cli::MasterOpts;
use crate::delta::local::{self, Kind};
use crate::delta::origin::MARKER;
use crate::dest::{DestError, TMP_SUFFIX};
use crate::error::Error;
use crate::layout::Layout;
use crate::protocol::show;

use super::connect::Server;
use super::destination::Target;
use super::plan::{self, Plan, Work};
use crate::delta::Refresh;

/// What to do with DEST's entries.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reconciled {
    /// Entries to remove (a directory with what it holds), parents before children.
    remove: Vec<(Vec<u8>, Kind)>,
    /// Files to refresh in place.
    compare: HashSet<Vec<u8>>,
    /// A file an interrupted run left under its temporary name (a large file copied in
    /// pieces, not all of them in), taken as the copy of the server's file of the final name
    /// when DEST has no such file: (temporary name, final name).
    adopt: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(super) fn delta(server: &mut Server, target: &Target, opts: &MasterOpts) -> Result<Plan, Error> {
    let layout = plan::list(server, target)?;
    let found = listing(target)?;
    let links: Vec<Vec<u8>> = target.spcs.iter().map(|t| format!("pg_tblspc/{}", t.oid).into_bytes()).collect();
    let mut r = reconcile(&layout, &links, found);
    remove(target, &r.remove)?;
    adopt(target, &r.adopt)?;
    plan::make_directories(&layout, target)?;
    let local = server.common.conn.is_local();
    if local {
        let (files, bytes) = rewrite_cold(target, &layout, &mut r.compare)?;
        if files > 0 {
            log::info!(
                "--delta: {files} files ({} MB) not in memory are copied whole: from a server on this \
                 machine that costs less than reading them back from disk",
                bytes >> 20
            );
        }
    }
    let compare = plan::Compare { files: r.compare, in_pieces: !local };
    let mut p = plan::queue(layout, opts.jobs, server.common.algorithm, &compare)?;
    if !local {
        mix_pieces(target, &mut p.queue);
        p.affinity = opts.jobs > 1;
        if p.affinity {
            log::info!(
                "--delta: odd-numbered workers take first the work that reads the copy (the disk), \
                 the others what travels (the link)"
            );
        }
    }
    let r = Reconciled { compare: compare.files, ..r };
    p.refresh = Refresh { removed: r.remove.len() as u64, ..p.refresh };
    // (Not those taken out of the comparison since: see `rewrite_cold`.)
    let adopted = r.adopt.iter().filter(|(_, base)| r.compare.contains(base)).count();
    if adopted > 0 {
        log::info!("--delta: {adopted} files an interrupted run left partly written are compared as copies");
    }
    log::info!(
        "--delta: {} files ({} MB) to compare {}, {} to copy whole, {} entries removed",
        r.compare.len(),
        p.refresh.compared >> 20,
        if local {
            "as they stream (the server is on this machine: reading costs less than hashing)"
        } else {
            "by block hashes (only differing blocks travel)"
        },
        p.files - r.compare.len(),
        r.remove.len()
    );
    Ok(p)
}

/// DEST's entries against the layout. A regular file the server has is compared unless it
/// has other hard links (it is replaced); a directory the server has stays; everything else
/// goes, including the tablespace links (made again) and anything below an entry that goes.
/// pg_wal was cleared before the WAL child started writing into it, and is left to it.
fn reconcile(layout: &Layout, links: &[Vec<u8>], found: Vec<(Vec<u8>, Kind)>) -> Reconciled {
    let files: HashMap<&[u8], u64> =
        layout.files.iter().chain(layout.pg_control.iter()).map(|f| (f.path.as_slice(), f.size)).collect();
    let dirs: HashSet<&[u8]> = layout.dirs.iter().map(Vec::as_slice).collect();
    // Files DEST keeps as copies (one with other hard links is removed, not compared).
    let present: HashSet<Vec<u8>> =
        found.iter().filter(|(_, k)| matches!(k, Kind::File { links: 1, .. })).map(|(p, _)| p.clone()).collect();
    let control = layout.pg_control.as_ref().map(|f| f.path.as_slice());
    // The final name of a temporary file to take as a copy: a server file (never pg_control,
    // which goes in last) that DEST does not have.
    let adoptable = |path: &[u8]| {
        let base = path.strip_suffix(TMP_SUFFIX.as_bytes())?;
        (files.contains_key(base) && !present.contains(base) && Some(base) != control).then(|| base.to_vec())
    };
    let mut r = Reconciled::default();
    let mut gone: Vec<Vec<u8>> = Vec::new();
    for (path, kind) in found {
        let below = |d: &Vec<u8>| path.len() > d.len() && path.starts_with(d) && path[d.len()] == b'/';
        if path.starts_with(b"pg_wal/") || gone.iter().any(below) {
            continue;
        }
        let mut adopt_as = matches!(kind, Kind::File { links: 1, .. }).then(|| adoptable(&path)).flatten();
        let keep = match kind {
            _ if links.contains(&path) => false,
            Kind::File { links: 1, .. } if files.contains_key(path.as_slice()) => {
                r.compare.insert(path.clone());
                true
            }
            _ if !files.contains_key(path.as_slice()) && adopt_as.is_some() => {
                let base = adopt_as.take().unwrap_or_default();
                r.compare.insert(base.clone());
                r.adopt.push((path.clone(), base));
                true
            }
            Kind::File { .. } => path == MARKER.as_bytes(),
            Kind::Dir => dirs.contains(path.as_slice()),
            Kind::Link | Kind::Other => false,
        };
        if !keep {
            if kind == Kind::Dir {
                gone.push(path.clone());
            }
            r.remove.push((path, kind));
        }
    }
    r
}

/// What DEST holds, and in each tablespace's target the one directory of this server
/// version (listed as `pg_tblspc/<oid>/<version dir>/…`, as the server's listing names it).
fn listing(target: &Target) -> Result<Vec<(Vec<u8>, Kind)>, Error> {
    let op = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DestError::Op { action: "list", path, source }
    };
    let root = target.dest.root();
    let mut found = local::list(root).map_err(op(root))?;
    for t in &target.spcs {
        let dir = t.target.join(&target.version_dir);
        let rel = format!("pg_tblspc/{}/{}", t.oid, target.version_dir).into_bytes();
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(op(&dir)(e).into()),
            Ok(m) if !m.is_dir() => {
                found.push((rel, if m.file_type().is_symlink() { Kind::Link } else { Kind::Other }));
                continue;
            }
            Ok(_) => found.push((rel.clone(), Kind::Dir)),
        }
        for (p, kind) in local::list(&dir).map_err(op(&dir))? {
            let mut full = rel.clone();
            full.push(b'/');
            full.extend_from_slice(&p);
            found.push((full, kind));
        }
    }
    Ok(found)
}

/// The pieces of large files (one run in the queue) reordered so that those compared
/// against data the copy holds alternate with those that travel (see `plan::interleave`):
/// where the copy holds nothing of a piece (a resume: the pieces the interrupted run never
/// wrote), or has no copy, every block travels.
fn mix_pieces(target: &Target, queue: &mut VecDeque<Work>) {
    let Some(first) = queue.iter().position(|w| w.range.is_some()) else { return };
    let len = queue.iter().skip(first).take_while(|w| w.range.is_some()).count();
    let mut tail = queue.split_off(first);
    let rest = tail.split_off(len);
    let mut pieces: Vec<Work> = tail.into();
    // One descriptor at a time (a large cluster has thousands of large files); anything that
    // cannot be asked counts as travelling: the order is only a heuristic.
    let holds_data = |w: &Work| {
        let (true, Some((off, n))) = (w.compare, w.range) else { return false };
        let Some(file) = open_copy(target, &w.path) else { return false };
        !crate::compare_pieces::holds_nothing(&file, off, off + n)
    };
    let local: Vec<bool> = pieces.iter().map(holds_data).collect();
    for (w, &l) in pieces.iter_mut().zip(&local) {
        w.reads_copy = l;
    }
    let holds = local.iter().filter(|&&l| l).count();
    if holds > 0 && holds < local.len() {
        log::info!(
            "--delta: {holds} pieces of large files the copy holds data of are compared side by side with the {} that travel",
            local.len() - holds
        );
    }
    queue.extend(plan::interleave(pieces, &local));
    queue.extend(rest);
}

/// A copy at least this large is copied whole, from a server on this machine, when most of
/// it is not in memory (see [`rewrite_cold`]).
const COLD_FROM: u64 = 1 << 20;

/// From a server on this machine nothing is hashed: a compared file streams whole and its
/// copy is read back to compare with it. A copy that is mostly on disk only costs more that
/// way than being written again (reading it back is the slowest part), so a copy of a server
/// file of [`COLD_FROM`] or more with less than half of its pages in the page cache leaves
/// `compare` and is removed, to be copied whole like a file DEST does not have (rsync copies
/// whole files between local paths for the same reason). A copy whose residency cannot be
/// learnt stays compared. Returns the files and bytes that left.
fn rewrite_cold(target: &Target, layout: &Layout, compare: &mut HashSet<Vec<u8>>) -> Result<(usize, u64), Error> {
    let mut cold = Vec::new();
    for f in layout.files.iter().filter(|f| f.size >= COLD_FROM && compare.contains(&f.path)) {
        let Some(file) = open_copy(target, &f.path) else { continue };
        let len = file.metadata().map_or(0, |m| m.len());
        if crate::delta::resident::share(&file, len).is_ok_and(|s| s < 0.5) {
            cold.push((f.path.clone(), len));
        }
    }
    for (path, _) in &cold {
        log::debug!("--delta: {} is not in memory: copied whole", show(path));
        compare.remove(path);
    }
    let gone: Vec<(Vec<u8>, Kind)> =
        cold.iter().map(|(p, len)| (p.clone(), Kind::File { size: *len, links: 1 })).collect();
    remove(target, &gone)?;
    Ok((cold.len(), cold.iter().map(|(_, len)| len).sum()))
}

/// DEST's copy of server file `path` (in its tablespace's target), for a look that only
/// orders or sorts work: `None` where it cannot be opened (the copy itself reports why).
fn open_copy(target: &Target, path: &[u8]) -> Option<std::fs::File> {
    let safe = crate::dest::SafePath::parse(path).ok()?;
    let (root, rel) = target.roots.route(&safe);
    root.open_existing(&rel).ok().flatten()
}

/// Renames the files taken as copies to their final names, each under the guard.
fn adopt(target: &Target, files: &[(Vec<u8>, Vec<u8>)]) -> Result<(), Error> {
    for (tmp, base) in files {
        let (from, to) = (crate::dest::SafePath::parse(tmp)?, crate::dest::SafePath::parse(base)?);
        let (root, from) = target.roots.route(&from);
        let (to_root, to) = target.roots.route(&to);
        // The two names differ in their last component only: one directory, one root.
        debug_assert!(std::ptr::eq(root, to_root));
        log::debug!("--delta: taking {} as the copy of {}", show(tmp), show(base));
        target.guard.mutate(|| root.rename(&from, &to))?;
    }
    Ok(())
}

/// Removes the entries (a symlink itself, never what it points to; a directory with its
/// contents), each under the guard; a tablespace's entries in its target.
fn remove(target: &Target, entries: &[(Vec<u8>, Kind)]) -> Result<(), Error> {
    for (rel, kind) in entries {
        let safe = crate::dest::SafePath::parse(rel)?;
        let (root, sub) = target.roots.route(&safe);
        let p = root.root().join(sub.to_path());
        log::debug!("--delta: removing {}", show(rel));
        let done = target.guard.mutate(|| match kind {
            Kind::Dir => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        });
        match done {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(DestError::Op { action: "remove", path: p, source: e }.into());
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::FileJob;

    fn job(p: &str, size: u64) -> FileJob {
        FileJob { path: p.as_bytes().to_vec(), size }
    }

    #[test]
    fn compares_what_both_have_and_removes_the_rest() {
        let layout = Layout {
            dirs: ["base", "base/5", "global", "pg_wal", "pg_tblspc"].iter().map(|d| d.as_bytes().to_vec()).collect(),
            files: vec![job("base/5/1259", 8192), job("base/5/new", 8192), job("PG_VERSION", 3)],
            pg_control: Some(job("global/pg_control", 8192)),
            excluded: 0,
        };
        let file = |links| Kind::File { size: 8192, links };
        let found: Vec<(Vec<u8>, Kind)> = vec![
            ("PG_VERSION", file(1)),
            ("backup_label", file(1)),
            ("base", Kind::Dir),
            ("base/5", Kind::Dir),
            ("base/5/1259", file(1)),
            ("base/5/dropped", file(1)),
            ("base/9", Kind::Dir),
            ("base/9/1259", file(1)),
            ("global", Kind::Dir),
            ("global/linked", file(2)),
            ("pg_tblspc", Kind::Dir),
            ("pg_tblspc/16400", Kind::Link),
            ("pg_wal", Kind::Dir),
            ("pg_wal/000000010000000000000003", file(1)),
            ("postmaster.pid", file(1)),
            ("planted", Kind::Link),
            (MARKER, file(1)),
            ("base/5/new.pgbb-tmp", file(1)),
            ("base/5/1259.pgbb-tmp", file(1)),
            ("base/5/dropped.pgbb-tmp", file(1)),
            ("global/pg_control.pgbb-tmp", file(1)),
        ]
        .into_iter()
        .map(|(p, k)| (p.as_bytes().to_vec(), k))
        .collect();
        let r = reconcile(&layout, &[b"pg_tblspc/16400".to_vec()], found);
        let mut compare: Vec<_> = r.compare.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        compare.sort();
        assert_eq!(compare, ["PG_VERSION", "base/5/1259", "base/5/new"]);
        assert_eq!(r.adopt, vec![(b"base/5/new.pgbb-tmp".to_vec(), b"base/5/new".to_vec())]);
        let removed: Vec<_> = r.remove.iter().map(|(p, _)| String::from_utf8_lossy(p).into_owned()).collect();
        assert_eq!(
            removed,
            [
                "backup_label",
                "base/5/dropped",
                "base/9",
                "global/linked",
                "pg_tblspc/16400",
                "postmaster.pid",
                "planted",
                "base/5/1259.pgbb-tmp",
                "base/5/dropped.pgbb-tmp",
                "global/pg_control.pgbb-tmp"
            ]
        );
    }
}
