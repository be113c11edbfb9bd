//! What goes into the backup: core pg_basebackup's exclusion rules applied to the server's
//! directory listing, and the order files are handed out in.

use std::collections::{HashMap, HashSet};

/// Names skipped at any depth (files).
pub const EXCLUDED_FILES: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
];
pub const EXCLUDED_FILE_PREFIX: &str = "pg_internal.init";
pub const TEMP_PREFIX: &str = "pgsql_tmp";

/// Directories whose contents are skipped (the directory itself is recreated empty).
pub const EXCLUDED_DIR_CONTENTS: &[&str] =
    &["pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_subtrans"];

/// One entry of the server's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path as the server gave it: raw bytes (names need not be UTF-8).
    pub raw: Vec<u8>,
    /// The same, lossily decoded, for the name rules (which look only at ASCII).
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
}

/// A file to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileJob {
    pub path: Vec<u8>,
    pub size: u64,
}

/// The backup's shape: directories to create and files to copy, largest first.
#[derive(Debug, Default)]
pub struct Layout {
    pub dirs: Vec<Vec<u8>>,
    pub files: Vec<FileJob>,
    /// `global/pg_control`, held back to be copied last.
    pub pg_control: Option<FileJob>,
    pub excluded: usize,
}

/// Rules that differ between PostgreSQL versions, one flag per rule (set by
/// [`crate::pg::Caps::layout_rules`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct LayoutRules {
    /// Relation file names parse strictly: no leading zero, a number of at most 2³²−1.
    pub strict_relation_names: bool,
    /// `global` holds relation files (for the unlogged and temp rules and page checks).
    pub global_is_relation_dir: bool,
    /// Page checksums are verified in relation files only, not in every file under
    /// `global`, `base` and the tablespaces.
    pub checksums_in_relation_files_only: bool,
    /// `.DS_Store` files are skipped.
    pub skip_ds_store: bool,
    /// `pg_wal/summaries` (WAL summaries) is created empty.
    pub wal_summaries_dir: bool,
}

impl LayoutRules {
    /// Every rule of PostgreSQL 17 and later.
    pub const V17: LayoutRules = LayoutRules {
        strict_relation_names: true,
        global_is_relation_dir: true,
        checksums_in_relation_files_only: true,
        skip_ds_store: true,
        wal_summaries_dir: true,
    };
}

impl Layout {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum::<u64>() + self.pg_control.as_ref().map_or(0, |f| f.size)
    }
}

fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// True if `dir` holds relation files: `base/<oid>`, `pg_tblspc/<oid>/<PG_x_y>/<oid>`, and on
/// PG17+ `global`.
pub(crate) fn is_relation_dir(dir: &str, rules: LayoutRules) -> bool {
    let parts: Vec<&str> = dir.split('/').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        ["base", db] => digits(db),
        ["pg_tblspc", spc, ver, db] => digits(spc) && ver.starts_with("PG_") && digits(db),
        ["global"] => rules.global_is_relation_dir,
        _ => false,
    }
}

/// A parsed relation file name: number, fork and segment.
#[derive(Debug, PartialEq, Eq)]
pub struct RelFile<'a> {
    pub temp: bool,
    pub number: &'a str,
    pub fork: Option<&'a str>,
    pub segment: u32,
}

/// Parses a relation file name (`16384`, `16384_fsm`, `16384.2`, `t3_16384_vm.1`).
pub fn parse_relation_file(name: &str, rules: LayoutRules) -> Option<RelFile<'_>> {
    let (temp, rest) = match name.strip_prefix('t') {
        Some(r) => {
            let (backend, rest) = r.split_once('_')?;
            if backend.is_empty() || !backend.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (true, rest)
        }
        None => (false, name),
    };
    let (base, segment) = match rest.split_once('.') {
        Some((b, s)) => {
            if s.is_empty()
                || !s.bytes().all(|c| c.is_ascii_digit())
                || (rules.strict_relation_names && s.starts_with('0'))
            {
                return None;
            }
            (b, s.parse::<u32>().ok()?)
        }
        None => (rest, 0),
    };
    let (number, fork) = match base.split_once('_') {
        Some((n, f)) => {
            if !matches!(f, "fsm" | "vm" | "init") {
                return None;
            }
            (n, Some(f))
        }
        None => (base, None),
    };
    if number.is_empty() || number.len() > 10 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if rules.strict_relation_names && (number.starts_with('0') || number.parse::<u64>().ok()? > u64::from(u32::MAX)) {
        return None;
    }
    Some(RelFile { temp, number, fork, segment })
}

/// For a file whose pages core verifies, the segment number of the file (block numbers count
/// it); `None` for files that are not page-verified. PG17+: relation files in relation
/// directories. PG13–16: any file under `global/`, `base/` or `pg_tblspc/` except
/// `pg_control`, `pg_filenode.map`, `PG_VERSION` and `pg_internal.init*`.
pub fn checksummed_segment(path: &str, rules: LayoutRules) -> Option<u32> {
    let name = name_of(path);
    if rules.checksums_in_relation_files_only {
        if !is_relation_dir(parent_of(path), rules) {
            return None;
        }
        return parse_relation_file(name, rules).filter(|r| !r.temp).map(|r| r.segment);
    }
    if !["global/", "base/", "pg_tblspc/"].iter().any(|p| path.starts_with(p)) {
        return None;
    }
    if matches!(name, "pg_control" | "pg_filenode.map" | "PG_VERSION") || name.starts_with(EXCLUDED_FILE_PREFIX) {
        return None;
    }
    match name.split_once('.') {
        Some((_, seg)) => seg.parse::<u32>().ok().filter(|&s| s > 0),
        None => Some(0),
    }
}

/// Applies core pg_basebackup's exclusion rules to a listing of the data directory.
/// The listing must not descend into `pg_wal` or the excluded-content directories (the SQL
/// does not), but any entry below them is dropped here too.
pub fn plan(entries: Vec<Entry>, rules: LayoutRules) -> Layout {
    // Relation numbers with an init fork, per directory: their other forks are unlogged.
    let mut init_forks: HashMap<&str, HashSet<&str>> = HashMap::new();
    for e in entries.iter().filter(|e| !e.is_dir) {
        let dir = parent_of(&e.path);
        if is_relation_dir(dir, rules) {
            if let Some(r) = parse_relation_file(name_of(&e.path), rules) {
                if !r.temp && r.fork == Some("init") {
                    init_forks.entry(dir).or_default().insert(r.number);
                }
            }
        }
    }

    let mut layout = Layout::default();
    let mut dirs: HashSet<Vec<u8>> = HashSet::new();
    'entries: for e in &entries {
        // Anything below pg_wal or an excluded-content directory, or any temp name.
        let parts: Vec<&str> = e.path.split('/').collect();
        for (i, p) in parts.iter().enumerate() {
            let is_last = i + 1 == parts.len();
            if p.starts_with(TEMP_PREFIX) || (rules.skip_ds_store && *p == ".DS_Store") {
                layout.excluded += 1;
                continue 'entries;
            }
            if !is_last && ((i == 0 && *p == "pg_wal") || EXCLUDED_DIR_CONTENTS.contains(p)) {
                layout.excluded += 1;
                continue 'entries;
            }
        }
        let name = name_of(&e.path);
        if e.is_dir {
            dirs.insert(e.raw.clone());
            continue;
        }
        if EXCLUDED_FILES.contains(&name) || name.starts_with(EXCLUDED_FILE_PREFIX) {
            layout.excluded += 1;
            continue;
        }
        let dir = parent_of(&e.path);
        if is_relation_dir(dir, rules) {
            if let Some(r) = parse_relation_file(name, rules) {
                let unlogged = r.fork != Some("init") && init_forks.get(dir).is_some_and(|s| s.contains(r.number));
                if r.temp || unlogged {
                    layout.excluded += 1;
                    continue;
                }
            }
        }
        let job = FileJob { path: e.raw.clone(), size: e.size };
        if e.raw == crate::dest::PG_CONTROL.as_bytes() {
            layout.pg_control = Some(job);
        } else {
            layout.files.push(job);
        }
    }
    dirs.insert(b"pg_wal".to_vec());
    dirs.insert(b"pg_wal/archive_status".to_vec());
    if rules.wal_summaries_dir {
        dirs.insert(b"pg_wal/summaries".to_vec());
    }
    let mut dirs: Vec<Vec<u8>> = dirs.into_iter().collect();
    dirs.sort();
    layout.dirs = dirs;
    // Largest first, so that the big files start early and the tail is made of small ones.
    layout.files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    layout
}

#[cfg(test)]
mod tests {
    use super::*;

    const R16: LayoutRules = LayoutRules {
        strict_relation_names: false,
        global_is_relation_dir: false,
        checksums_in_relation_files_only: false,
        skip_ds_store: false,
        wal_summaries_dir: false,
    };
    const R17: LayoutRules = LayoutRules::V17;

    fn f(p: &str, size: u64) -> Entry {
        Entry { raw: p.as_bytes().to_vec(), path: p.into(), is_dir: false, size }
    }
    fn d(p: &str) -> Entry {
        Entry { raw: p.as_bytes().to_vec(), path: p.into(), is_dir: true, size: 0 }
    }

    #[test]
    fn relation_names() {
        assert_eq!(
            parse_relation_file("16384_vm.2", R16),
            Some(RelFile { temp: false, number: "16384", fork: Some("vm"), segment: 2 })
        );
        assert!(parse_relation_file("t3_16384", R16).unwrap().temp);
        assert!(parse_relation_file("t99999_99999_vm.1", R16).unwrap().temp);
        assert!(parse_relation_file("pg_filenode.map", R16).is_none());
        assert!(parse_relation_file("16384_foo", R16).is_none());
        assert!(parse_relation_file("016384", R16).is_some());
        assert!(parse_relation_file("016384", R17).is_none());
        assert!(parse_relation_file("16384.01", R17).is_none());
        assert!(parse_relation_file("4294967296", R17).is_none());
    }

    #[test]
    fn core_exclusions() {
        let entries = vec![
            d("base"),
            d("base/5"),
            f("base/5/1259", 8192),
            f("base/5/16400", 81920),
            f("base/5/16400_fsm", 24576),
            f("base/5/16400_init", 0),
            f("base/5/16400.1", 100),
            f("base/5/t3_16500", 8192),
            f("base/5/t999_9999_vm", 8192),
            f("base/5/t99999_99999_vm.1", 8192),
            f("base/5/pg_internal.init", 100),
            f("base/5/pg_filenode.map", 512),
            d("base/pgsql_tmp"),
            f("base/pgsql_tmp/pgsql_tmp1.0", 10),
            d("global"),
            f("global/pg_control", 8192),
            f("global/pg_internal.init.123", 5),
            f("postmaster.pid", 90),
            f("postmaster.opts", 90),
            f("backup_label", 9),
            f("tablespace_map", 9),
            f("backup_manifest", 9),
            f("postgresql.auto.conf", 88),
            f("postgresql.auto.conf.tmp", 88),
            f("current_logfiles.tmp", 8),
            d("pg_stat_tmp"),
            f("pg_stat_tmp/global.stat", 10),
            d("pg_replslot"),
            d("pg_wal"),
            f("pg_wal/000000010000000000000001", 16 << 20),
            d("pg_notify"),
            f("standby.signal", 0),
        ];
        let l = plan(entries, R16);
        let files: Vec<&str> = l.files.iter().map(|f| std::str::from_utf8(&f.path).unwrap()).collect();
        assert_eq!(
            files,
            vec![
                "base/5/1259",
                "base/5/pg_filenode.map",
                "postgresql.auto.conf",
                "base/5/16400_init",
                "standby.signal"
            ]
        );
        assert_eq!(l.pg_control.as_ref().unwrap().path, b"global/pg_control");
        for dir in
            ["base", "base/5", "global", "pg_stat_tmp", "pg_replslot", "pg_wal", "pg_wal/archive_status", "pg_notify"]
        {
            assert!(l.dirs.contains(&dir.as_bytes().to_vec()), "{dir} missing");
        }
        assert!(!l.dirs.iter().any(|d| String::from_utf8_lossy(d).contains("pgsql_tmp")));
        assert_eq!(l.total_bytes(), 8192 + 512 + 88 + 8192);
    }

    #[test]
    fn which_files_are_page_verified() {
        assert_eq!(checksummed_segment("base/5/16384", R16), Some(0));
        assert_eq!(checksummed_segment("base/5/16384_fsm.3", R16), Some(3));
        assert_eq!(checksummed_segment("global/1262", R16), Some(0));
        assert_eq!(checksummed_segment("global/pg_control", R16), None);
        assert_eq!(checksummed_segment("base/5/pg_filenode.map", R16), None);
        assert_eq!(checksummed_segment("base/5/PG_VERSION", R16), None);
        assert_eq!(checksummed_segment("base/5/pg_internal.init", R16), None);
        assert_eq!(checksummed_segment("pg_xact/0000", R16), None);
        assert_eq!(checksummed_segment("base/5/16384.2", R17), Some(2));
        assert_eq!(checksummed_segment("base/5/t3_16384", R17), None);
        assert_eq!(checksummed_segment("base/5/PG_VERSION", R17), None);
        assert_eq!(checksummed_segment("global/1262", R17), Some(0));
    }

    #[test]
    fn pg17_rules() {
        let entries = vec![d("global"), f("global/1262", 8192), f("global/1262_init", 0), f(".DS_Store", 1)];
        let l = plan(entries.clone(), R17);
        assert_eq!(l.files.len(), 1);
        assert!(l.dirs.contains(&b"pg_wal/summaries".to_vec()));
        let l = plan(entries, R16);
        assert_eq!(l.files.len(), 3);
    }
}
