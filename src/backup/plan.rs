//! Phase 5, list and plan (a full backup): the data directory listed, core's layout rules
//! applied, DEST's directories and tablespace links made, and the work queue built — largest
//! file first, large files in pieces for several workers. pg_control is held back for last.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use crate::cli::MasterOpts;
use crate::delta::Refresh;
use crate::dest::{DestError, SafePath};
use crate::digest::Algorithm;
use crate::error::Error;
use crate::layout::{self, FileJob, Layout};
use crate::pg::sql;
use crate::protocol::BlockList;

use super::connect::Server;
use super::destination::Target;

/// What the copy phase does.
pub(super) struct Plan {
    pub queue: VecDeque<Work>,
    /// `--delta`: what was compared and removed (zero for a full backup).
    pub refresh: Refresh,
    /// `global/pg_control`, copied after everything else.
    pub pg_control: FileJob,
    /// Listed sizes of the files large enough to be split.
    pub sizes: HashMap<Vec<u8>, u64>,
    /// Bytes and files to copy (pg_control not counted in `files`).
    pub total: u64,
    pub files: usize,
    /// `-i`: what goes as `INCREMENTAL.*`, against a full backup.
    pub incremental: Option<crate::incremental::Stats>,
    /// Workers keep to one kind of work where they can (see `batches::next_request`).
    pub affinity: bool,
}

/// Every file of the data directory, copied whole (or in pieces).
pub(super) fn full(server: &mut Server, target: &Target, opts: &MasterOpts) -> Result<Plan, Error> {
    let layout = list(server, target)?;
    make_directories(&layout, target)?;
    queue(layout, opts.jobs, server.common.algorithm, &Compare::default())
}

/// The server's files as a backup copies them: listed, with core's layout rules applied.
pub(super) fn list(server: &mut Server, target: &Target) -> Result<Layout, Error> {
    let listing = Instant::now();
    let raw = crate::listing::list(&mut server.ctl, &target.view)?;
    let listed_in = listing.elapsed();
    let mut entries = sql::entries_from_listing(raw);
    // In a tablespace only this server version's directory belongs to the backup.
    entries.retain(|e| {
        let p: Vec<&str> = e.path.splitn(4, '/').collect();
        !(p.len() >= 3
            && p[0] == "pg_tblspc"
            && target.spcs.iter().any(|t| t.oid.to_string() == p[1])
            && p[2] != target.version_dir)
    });
    let layout = layout::plan(entries, server.info.caps.layout_rules());
    log::info!(
        "{} files, {} MB to copy ({} excluded), listed in {} ms",
        layout.files.len() + 1,
        layout.total_bytes() >> 20,
        layout.excluded,
        listed_in.as_millis()
    );
    Ok(layout)
}

/// DEST's directories (each to its root: DEST or a tablespace target), and the pg_tblspc
/// links to the tablespaces' targets.
pub(super) fn make_directories(layout: &Layout, target: &Target) -> Result<(), Error> {
    for d in &layout.dirs {
        let d = SafePath::parse(d)?;
        if target.roots.is_link(&d) {
            continue;
        }
        let (root, rel) = target.roots.route(&d);
        root.create_dir_all(&rel)?;
    }
    let dest = target.dest.root();
    for t in &target.spcs {
        let link = dest.join("pg_tblspc").join(t.oid.to_string());
        // By path: under the guard, or it could make DEST again after a second signal.
        target
            .guard
            .mutate(|| {
                std::fs::create_dir_all(dest.join("pg_tblspc"))
                    .and_then(|()| std::os::unix::fs::symlink(&t.target, &link))
            })
            .map_err(|source| DestError::Op { action: "create the tablespace link", path: link, source })?;
    }
    Ok(())
}

/// `--delta`: the files DEST holds copies of, refreshed in place; `in_pieces`: a large one is
/// compared in pieces by several workers, as a full backup copies it (by block hashes, from
/// a server across a network; one on this machine streams each file whole).
#[derive(Debug, Default)]
pub(super) struct Compare {
    pub files: HashSet<Vec<u8>>,
    pub in_pieces: bool,
}

/// The plan from the layout; the queue holds the file list from here on (a master of 200k
/// files keeps one copy). Files in `compare` are refreshed in place (`--delta`).
pub(super) fn queue(layout: Layout, jobs: usize, algorithm: Algorithm, compare: &Compare) -> Result<Plan, Error> {
    let pg_control = layout
        .pg_control
        .clone()
        .ok_or_else(|| Error::Inconsistent("the server's listing has no global/pg_control".into()))?;
    let total = layout.total_bytes();
    let queue = work_queue(&layout.files, jobs, algorithm, compare);
    let pieces = queue.iter().filter(|w| w.range.is_some()).count();
    let compared = queue.iter().filter(|w| w.range.is_some() && w.compare).count();
    if pieces > compared {
        log::info!("large files go in {} pieces of up to {} MB, copied in parallel", pieces - compared, PIECE >> 20);
    }
    if compared > 0 {
        log::info!("large copies go in {compared} pieces of up to {} MB, compared in parallel", PIECE >> 20);
    }
    let sizes = layout.files.iter().filter(|f| f.size >= SPLIT_FROM).map(|f| (f.path.clone(), f.size)).collect();
    let compared = layout.files.iter().filter(|f| compare.files.contains(&f.path)).map(|f| f.size).sum();
    let refresh = Refresh { compared, removed: 0 };
    Ok(Plan { queue, refresh, pg_control, sizes, total, files: layout.files.len(), incremental: None, affinity: false })
}

/// One request for a worker: a whole file, or one piece of a large one.
#[derive(Debug, Clone)]
pub(super) struct Work {
    pub path: Vec<u8>,
    pub range: Option<(u64, u64)>,
    /// `--delta`: DEST holds an older copy to bring up to date in place.
    pub compare: bool,
    /// The file's size as listed (small files travel in batches).
    pub size: u64,
    /// `-i`: only these blocks travel, into `INCREMENTAL.<name>`.
    pub incremental: Option<BlockList>,
    /// `--delta`: compared against data DEST's copy holds, so the worker's time goes to
    /// reading that copy, not to the link (see `batches::next_request`).
    pub reads_copy: bool,
}

impl Work {
    /// A whole file.
    pub fn whole(f: &FileJob) -> Work {
        Work { path: f.path.clone(), range: None, compare: false, size: f.size, incremental: None, reads_copy: false }
    }

    /// Where it goes in DEST: the same path, or `INCREMENTAL.<name>` beside it.
    pub fn dst(&self) -> Vec<u8> {
        match self.incremental {
            Some(_) => crate::incremental::format::incremental_path(&self.path),
            None => self.path.clone(),
        }
    }
}

/// Files at least this large are split into pieces of [`PIECE`] bytes, copied by several
/// workers at once (one big table otherwise bounds the backup by one worker's speed).
pub(super) const SPLIT_FROM: u64 = 128 << 20;
pub(super) const PIECE: u64 = 64 << 20;

/// The work queue: largest file first, large files as pieces. Pieces need a checksum that
/// combines (CRC-32C or none), and a UTF-8 name. A file to compare goes whole, but with
/// `compare.in_pieces`, where a large one goes in pieces too (each compared in place).
///
/// The pieces of the large files are dealt out evenly, where the first of them would be: each
/// file's pieces spread over the run in proportion to its size (piece k of n at (2k + 1) / 2n),
/// so that workers side by side copy different files, and every large file has pieces left
/// until the end. Tables differ (one compresses and costs the server CPU, the next does not
/// and costs the link), and two writers of one file queue on its inode lock.
pub(super) fn work_queue(files: &[FileJob], jobs: usize, algorithm: Algorithm, compare: &Compare) -> VecDeque<Work> {
    let split = jobs > 1 && matches!(algorithm, Algorithm::Crc32c | Algorithm::None);
    let mut q = VecDeque::new();
    let mut split_files: Vec<VecDeque<Work>> = Vec::new();
    let mut at = None;
    for f in files {
        let compared = compare.files.contains(&f.path);
        if split && f.size >= SPLIT_FROM && std::str::from_utf8(&f.path).is_ok() && (!compared || compare.in_pieces) {
            at.get_or_insert(q.len());
            let starts = (0..f.size).step_by(PIECE as usize);
            split_files.push(
                starts
                    .map(|off| Work {
                        range: Some((off, PIECE.min(f.size - off))),
                        compare: compared,
                        reads_copy: compared,
                        ..Work::whole(f)
                    })
                    .collect(),
            );
        } else {
            q.push_back(Work { compare: compared, reads_copy: compared, ..Work::whole(f) });
        }
    }
    let mut rest = q.split_off(at.unwrap_or(q.len()));
    q.extend(deal(split_files));
    q.append(&mut rest);
    q
}

/// The pieces of several files in one sequence, each file's spread evenly over it (see
/// [`work_queue`]); ties go to the earlier (larger) file.
fn deal(files: Vec<VecDeque<Work>>) -> Vec<Work> {
    let mut keyed: Vec<(u64, u64, Work)> = files
        .into_iter()
        .flat_map(|p| {
            let n = p.len() as u64;
            p.into_iter().enumerate().map(move |(k, w)| (2 * k as u64 + 1, 2 * n, w))
        })
        .collect();
    keyed.sort_by(|a, b| (u128::from(a.0) * u128::from(b.1)).cmp(&(u128::from(b.0) * u128::from(a.1))));
    keyed.into_iter().map(|(_, _, w)| w).collect()
}

/// `items` in one sequence with the `local` ones (compared against data the copy holds:
/// reading the copy, and CPU on both sides, next to nothing on the link) spread evenly among
/// the others (what travels: the link, and the server's compression), each kind in its own order: item k of a kind sits
/// where the bytes before it and half its own fall in that kind's total. Side by side,
/// workers then load the link and the CPUs at once instead of one after the other (a resume
/// holds the first half of the queue and lacks the second).
pub(super) fn interleave(items: Vec<Work>, local: &[bool]) -> Vec<Work> {
    let bytes = |w: &Work| w.range.map_or(w.size, |(_, len)| len).max(1);
    let totals = items.iter().zip(local).fold([0u64; 2], |mut t, (w, &l)| {
        t[usize::from(l)] += bytes(w);
        t
    });
    let mut before = [0u64; 2];
    let mut keyed: Vec<(u128, u128, bool, Work)> = items
        .into_iter()
        .zip(local)
        .map(|(w, &l)| {
            let k = usize::from(l);
            let mid = 2 * u128::from(before[k]) + u128::from(bytes(&w));
            before[k] += bytes(&w);
            (mid, 2 * u128::from(totals[k]), !l, w)
        })
        .collect();
    keyed.sort_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)).then(a.2.cmp(&b.2)));
    let mut out: Vec<Work> = keyed.into_iter().map(|(_, _, _, w)| w).collect();
    apart(&mut out);
    out
}

/// Moves a piece that follows a piece of the same file back behind the next piece of
/// another file (within a few places), as [`deal`] keeps them: two writers of one file side
/// by side queue on its inode lock.
fn apart(items: &mut [Work]) {
    const LOOK: usize = 64;
    for i in 1..items.len() {
        if items[i].path != items[i - 1].path {
            continue;
        }
        let end = (i + LOOK).min(items.len());
        if let Some(j) = (i + 1..end).find(|&j| items[j].path != items[i - 1].path) {
            items[i..=j].rotate_right(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compared_and_travelling_work_alternate_by_bytes() {
        let piece = |off: u64, compare: bool| Work {
            range: Some((off, 64 << 20)),
            compare,
            ..Work::whole(&FileJob { path: b"base/5/a".to_vec(), size: 1 << 30 })
        };
        // A resume: the first four pieces are in the copy, the last four are not.
        let items: Vec<Work> = (0..8).map(|k| piece(k << 26, true)).collect();
        let local = [true, true, true, true, false, false, false, false];
        let order: Vec<u64> = interleave(items, &local).iter().map(|w| w.range.unwrap().0 >> 26).collect();
        assert_eq!(order, vec![0, 4, 1, 5, 2, 6, 3, 7]);
        // Two files dealt (a0 b0 a1 b1 …), the first half of each in the copy: no two pieces
        // of one file side by side.
        let two: Vec<Work> = (0..8)
            .map(|k| Work {
                path: if k % 2 == 0 { b"base/5/a".to_vec() } else { b"base/5/b".to_vec() },
                ..piece((k / 2) << 26, true)
            })
            .collect();
        let local = [true, true, true, true, false, false, false, false];
        let mixed = interleave(two, &local);
        assert_eq!(mixed.len(), 8);
        assert!(
            mixed.windows(2).all(|w| w[0].path != w[1].path),
            "{:?}",
            mixed.iter().map(|w| (w.path.clone(), w.range)).collect::<Vec<_>>()
        );
        // One of a kind against three: it sits in the middle; each kind keeps its order.
        let items: Vec<Work> = (0..4).map(|k| piece(k << 26, k == 0)).collect();
        let order: Vec<u64> =
            interleave(items, &[true, false, false, false]).iter().map(|w| w.range.unwrap().0 >> 26).collect();
        assert_eq!(order, vec![1, 0, 2, 3]);
        // All of one kind: unchanged.
        let items: Vec<Work> = (0..3).map(|k| piece(k << 26, false)).collect();
        let order: Vec<u64> = interleave(items, &[false; 3]).iter().map(|w| w.range.unwrap().0 >> 26).collect();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[test]
    fn large_files_are_split_only_when_it_can_pay() {
        let files = vec![
            FileJob { path: b"base/5/big".to_vec(), size: 200 << 20 },
            FileJob { path: b"base/5/small".to_vec(), size: 8192 },
        ];
        let none = Compare::default();
        let q = work_queue(&files, 2, Algorithm::Crc32c, &none);
        let r: Vec<_> = q.iter().map(|w| w.range).collect();
        assert_eq!(
            r,
            vec![
                Some((0, 64 << 20)),
                Some((64 << 20, 64 << 20)),
                Some((128 << 20, 64 << 20)),
                Some((192 << 20, 8 << 20)),
                None
            ]
        );
        assert_eq!(work_queue(&files, 1, Algorithm::Crc32c, &none).len(), 2, "one worker: no pieces");
        assert_eq!(work_queue(&files, 2, Algorithm::Sha256, &none).len(), 2, "SHA-2 does not combine: no pieces");
        let files3 = vec![
            FileJob { path: b"base/5/a".to_vec(), size: 200 << 20 },
            FileJob { path: b"base/5/b".to_vec(), size: 130 << 20 },
            FileJob { path: b"base/5/c".to_vec(), size: 8192 },
        ];
        let q = work_queue(&files3, 2, Algorithm::Crc32c, &none);
        let r: Vec<_> = q.iter().map(|w| (w.path.as_slice(), w.range.map(|r| r.0 >> 20))).collect();
        let (a, b, c): (&[u8], &[u8], &[u8]) = (b"base/5/a", b"base/5/b", b"base/5/c");
        assert_eq!(
            r,
            vec![
                (a, Some(0)),
                (b, Some(0)),
                (a, Some(64)),
                (b, Some(64)),
                (a, Some(128)),
                (b, Some(128)),
                (a, Some(192)),
                (c, None)
            ],
            "the pieces of different files are spread evenly: a at 1/8, 3/8, 5/8, 7/8, b at 1/6, 3/6, 5/6"
        );
        // A 768 MB table and a 320 MB one: the smaller one's pieces spread over the whole run.
        let two = vec![
            FileJob { path: b"base/5/acc".to_vec(), size: 768 << 20 },
            FileJob { path: b"base/5/rnd".to_vec(), size: 320 << 20 },
        ];
        let q = work_queue(&two, 2, Algorithm::Crc32c, &none);
        let at: Vec<usize> = q.iter().enumerate().filter(|(_, w)| w.path == b"base/5/rnd").map(|(i, _)| i).collect();
        assert_eq!(at, vec![1, 5, 8, 11, 15], "{q:?}");
        let mut compare = Compare { files: [b"base/5/big".to_vec()].into(), in_pieces: false };
        let q = work_queue(&files, 2, Algorithm::Crc32c, &compare);
        let r: Vec<_> = q.iter().map(|w| (w.range, w.compare)).collect();
        assert_eq!(r, vec![(None, true), (None, false)], "a file compared as it streams goes whole");
        compare.in_pieces = true;
        let q = work_queue(&files, 2, Algorithm::Crc32c, &compare);
        let r: Vec<_> = q.iter().map(|w| (w.range.map(|r| r.0 >> 20), w.compare)).collect();
        assert_eq!(
            r,
            vec![(Some(0), true), (Some(64), true), (Some(128), true), (Some(192), true), (None, false)],
            "a file compared by hashes goes in pieces"
        );
        let q = work_queue(&files, 2, Algorithm::Sha256, &compare);
        assert_eq!(q.iter().filter(|w| w.range.is_some()).count(), 0, "not without a checksum that combines");
    }
}
