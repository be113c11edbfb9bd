//! Which files an incremental backup sends whole and which as `INCREMENTAL.*` with only their
//! changed blocks: core's rules (`GetFileBackupMethod`), in the same order.

use crate::layout::{is_relation_dir, parse_relation_file, LayoutRules};

use super::blockref::{BlockTable, RelKey, FSM_FORK, INIT_FORK, MAIN_FORK, VM_FORK};
use super::format::BLCKSZ;
use super::old_manifest::OldManifest;

/// `DEFAULTTABLESPACE_OID`: the tablespace of `base/<db>`.
pub const DEFAULT_TABLESPACE: u32 = 1663;
/// `GLOBALTABLESPACE_OID`: the tablespace of `global` (database 0).
pub const GLOBAL_TABLESPACE: u32 = 1664;

/// How one file goes into the incremental backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Full,
    Incremental {
        /// Changed blocks, relative to the start of this segment file, ascending.
        blocks: Vec<u32>,
        truncation_block_length: u32,
    },
}

/// What the rules need besides the file itself.
pub struct Context<'a> {
    pub old: &'a OldManifest,
    pub table: &'a BlockTable,
    /// Blocks per relation segment file (`pg_control_init().blocks_per_segment`).
    pub relseg_size: u32,
    pub rules: LayoutRules,
}

/// A non-temporary relation file in a relation directory, as core keys it in the summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelationFile {
    pub key: RelKey,
    /// The `.N` suffix (0 for the first segment).
    pub segno: u32,
}

/// Parses `base/<db>/<file>` (tablespace 1663), `global/<file>` (1664, database 0) and
/// `pg_tblspc/<spc>/<PG_…>/<db>/<file>`; `None` for anything else, including temporary
/// relations, names that are not relation files and paths that are not UTF-8.
pub fn relation_file(path: &[u8], rules: LayoutRules) -> Option<RelationFile> {
    let path = std::str::from_utf8(path).ok()?;
    let (dir, name) = path.rsplit_once('/')?;
    if !is_relation_dir(dir, rules) {
        return None;
    }
    let file = parse_relation_file(name, rules).filter(|f| !f.temp)?;
    let rel: u32 = file.number.parse().ok().filter(|&n| n != 0)?;
    let fork = match file.fork {
        None => MAIN_FORK,
        Some("fsm") => FSM_FORK,
        Some("vm") => VM_FORK,
        Some("init") => INIT_FORK,
        Some(_) => return None,
    };
    let parts: Vec<&str> = dir.split('/').collect();
    let (spc, db) = match parts.as_slice() {
        ["base", db] => (DEFAULT_TABLESPACE, db.parse().ok()?),
        ["global"] => (GLOBAL_TABLESPACE, 0),
        ["pg_tblspc", spc, _, db] => (spc.parse().ok()?, db.parse().ok()?),
        _ => return None,
    };
    Some(RelationFile { key: RelKey { spc, db, rel, fork }, segno: file.segment })
}

/// The method for file `path` (relative to the data directory, as listed) of `size` bytes.
/// Files outside relation directories, and names that are not non-temporary relation files,
/// are `Full`.
pub fn decide(path: &[u8], size: u64, cx: &Context<'_>) -> Method {
    match relation_file(path, cx.rules) {
        Some(file) => decide_relation(path, file, size, cx),
        None => Method::Full,
    }
}

/// `GetFileBackupMethod`: the rules in core's order; the first that applies decides.
fn decide_relation(path: &[u8], file: RelationFile, size: u64, cx: &Context<'_>) -> Method {
    let relseg = u64::from(cx.relseg_size);
    // 1. A size that is not whole blocks, or more than a segment: something odd, send it all.
    if !size.is_multiple_of(BLCKSZ) || size / BLCKSZ > relseg {
        return Method::Full;
    }
    let size_blocks = (size / BLCKSZ) as u32; // ≤ relseg_size, a u32
                                              // 2. The free-space map is not fully WAL-logged.
    if file.key.fork == FSM_FORK {
        return Method::Full;
    }
    // 3. Not in the earlier backup (whole or as INCREMENTAL.<name>): made after it began.
    if !cx.old.has(path) {
        return Method::Full;
    }
    // 4. The database was created (or dropped and re-created) in this tablespace since.
    if cx.table.has_database_entry(file.key.spc, file.key.db) {
        return Method::Full;
    }
    // 5. Untouched since: nothing to send but the length; a zero-length file goes whole.
    let Some(changes) = cx.table.get(&file.key) else {
        if size == 0 {
            return Method::Full;
        }
        return Method::Incremental { blocks: Vec::new(), truncation_block_length: size_blocks };
    };
    // 6. Created, dropped or truncated to before this segment's first block. (A segment whose
    // first block is not a block number at all is sent whole too; core gives up with an error.)
    let start = u64::from(file.segno) * relseg;
    let stop = start + u64::from(size_blocks);
    let limit = changes.limit.map_or(u64::from(u32::MAX), u64::from);
    if limit <= start || stop > u64::from(u32::MAX) {
        return Method::Full;
    }
    // 7. The changed blocks inside this segment's current length; more than 90 % of it (in
    // doubles, strictly, as core compares): send it whole.
    let lo = changes.blocks.partition_point(|&b| u64::from(b) < start);
    let hi = changes.blocks.partition_point(|&b| u64::from(b) < stop);
    let nblocks = hi - lo;
    if (nblocks as f64) * (BLCKSZ as f64) > (size as f64) * 0.9 {
        return Method::Full;
    }
    // 8. Incremental. The truncation length is the file's length, raised to at least the limit
    // (relative to this segment) and then capped at a segment: core's code, not the comment
    // beside it, which speaks of the limit as a ceiling.
    let blocks = changes.blocks[lo..hi].iter().map(|&b| (u64::from(b) - start) as u32).collect();
    let mut truncation = u64::from(size_blocks);
    if let Some(limit) = changes.limit {
        truncation = truncation.max(u64::from(limit) - start).min(relseg);
    }
    Method::Incremental { blocks, truncation_block_length: truncation as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incremental::blockref::SummaryRow;
    use std::collections::HashSet;

    const RELSEG: u32 = 131_072;
    const B: u64 = BLCKSZ;

    fn manifest(paths: &[&[u8]]) -> OldManifest {
        OldManifest {
            version: 2,
            system_identifier: Some(1),
            wal_ranges: vec![],
            paths: paths.iter().map(|p| p.to_vec()).collect::<HashSet<_>>(),
        }
    }

    fn key(spc: u32, db: u32, rel: u32, fork: u8) -> RelKey {
        RelKey { spc, db, rel, fork }
    }

    /// A table from (key, limit, blocks) per fork, in one summary.
    fn table(forks: &[(RelKey, Option<u32>, &[u32])]) -> BlockTable {
        let mut t = BlockTable::default();
        for (k, limit, blocks) in forks {
            if let Some(l) = limit {
                t.apply(SummaryRow { key: *k, block: *l, is_limit: true });
            }
            for &b in *blocks {
                t.apply(SummaryRow { key: *k, block: b, is_limit: false });
            }
        }
        t.finish();
        t
    }

    fn decide_with(path: &[u8], size: u64, old: &OldManifest, t: &BlockTable) -> Method {
        decide(path, size, &Context { old, table: t, relseg_size: RELSEG, rules: LayoutRules::V17 })
    }

    fn incr(blocks: &[u32], trunc: u32) -> Method {
        Method::Incremental { blocks: blocks.to_vec(), truncation_block_length: trunc }
    }

    const MAIN: RelKey = RelKey { spc: DEFAULT_TABLESPACE, db: 5, rel: 16384, fork: MAIN_FORK };

    #[test]
    fn keys_of_base_global_and_tablespaces() {
        let r = LayoutRules::V17;
        let f = |p: &[u8]| relation_file(p, r);
        assert_eq!(f(b"base/5/16384"), Some(RelationFile { key: MAIN, segno: 0 }));
        assert_eq!(f(b"base/5/16384_vm.3"), Some(RelationFile { key: key(1663, 5, 16384, VM_FORK), segno: 3 }));
        assert_eq!(f(b"base/5/16384_init"), Some(RelationFile { key: key(1663, 5, 16384, INIT_FORK), segno: 0 }));
        assert_eq!(f(b"base/5/16384_fsm"), Some(RelationFile { key: key(1663, 5, 16384, FSM_FORK), segno: 0 }));
        assert_eq!(f(b"global/1262"), Some(RelationFile { key: key(1664, 0, 1262, MAIN_FORK), segno: 0 }));
        assert_eq!(
            f(b"pg_tblspc/16400/PG_17_202406281/16500/16401.2"),
            Some(RelationFile { key: key(16400, 16500, 16401, MAIN_FORK), segno: 2 })
        );
        for not_relation in [
            &b"PG_VERSION"[..],
            b"global/pg_control",
            b"global/pg_filenode.map",
            b"base/5/pg_filenode.map",
            b"base/5/PG_VERSION",
            b"base/5/t3_16384",
            b"base/5/016384",
            b"base/5/16384.01",
            b"base/5/0",
            b"base/5/16384_main",
            b"base/5/4294967296",
            b"base/5/\xff16384",
            b"base/5/16384\xff",
            b"base/x5/16384",
            b"base/16384",
            b"pg_xact/0000",
            b"pg_tblspc/16400/PG_17_202406281/16384",
            b"16384",
        ] {
            assert_eq!(f(not_relation), None, "{}", String::from_utf8_lossy(not_relation));
        }
    }

    #[test]
    fn non_relation_files_go_whole() {
        let t = table(&[]);
        for p in [&b"PG_VERSION"[..], b"base/5/pg_filenode.map", b"base/5/t3_16384", b"base/5/\xff1", b"pg_xact/0000"] {
            let old = manifest(&[p]);
            assert_eq!(decide_with(p, 8192, &old, &t), Method::Full);
        }
    }

    #[test]
    fn rule1_odd_or_oversized_files_go_whole() {
        let old = manifest(&[b"base/5/16384"]);
        let t = table(&[]);
        assert_eq!(decide_with(b"base/5/16384", 8193, &old, &t), Method::Full);
        assert_eq!(decide_with(b"base/5/16384", (u64::from(RELSEG) + 1) * B, &old, &t), Method::Full);
        assert_eq!(decide_with(b"base/5/16384", u64::from(RELSEG) * B, &old, &t), incr(&[], RELSEG));
    }

    #[test]
    fn rule2_fsm_always_whole() {
        let old = manifest(&[b"base/5/16384_fsm"]);
        assert_eq!(decide_with(b"base/5/16384_fsm", 3 * B, &old, &table(&[])), Method::Full);
    }

    #[test]
    fn rule3_files_missing_from_the_old_manifest_go_whole() {
        let t = table(&[]);
        assert_eq!(decide_with(b"base/5/16384", 2 * B, &manifest(&[b"base/5/16385"]), &t), Method::Full);
        // Listed in the earlier backup as an incremental file: counts.
        let old = manifest(&[b"base/5/INCREMENTAL.16384.1"]);
        assert_eq!(decide_with(b"base/5/16384.1", 2 * B, &old, &t), incr(&[], 2));
        assert_eq!(decide_with(b"base/5/16384", 2 * B, &old, &t), Method::Full);
    }

    #[test]
    fn rule4_new_database_goes_whole() {
        let old = manifest(&[b"base/5/16384", b"base/6/16384", b"pg_tblspc/16400/PG_17_1/5/16384"]);
        let t = table(&[(RelKey::database(1663, 5), Some(0), &[])]);
        assert_eq!(decide_with(b"base/5/16384", 2 * B, &old, &t), Method::Full);
        // Another database, or the same one in another tablespace: not affected.
        assert_eq!(decide_with(b"base/6/16384", 2 * B, &old, &t), incr(&[], 2));
        assert_eq!(decide_with(b"pg_tblspc/16400/PG_17_1/5/16384", 2 * B, &old, &t), incr(&[], 2));
        // Even when it applies, the earlier rules come first: not in the manifest is Full anyway,
        // and the db-wide entry wins over an entry for the relation itself.
        let t = table(&[(RelKey::database(1663, 5), None, &[1]), (MAIN, None, &[1])]);
        assert_eq!(decide_with(b"base/5/16384", 20 * B, &old, &t), Method::Full);
    }

    #[test]
    fn rule5_untouched_files_send_only_their_length() {
        let old = manifest(&[b"base/5/16384", b"base/5/16384_vm", b"base/5/16384_init"]);
        let t = table(&[(key(1663, 5, 99, MAIN_FORK), None, &[1])]);
        assert_eq!(decide_with(b"base/5/16384", 7 * B, &old, &t), incr(&[], 7));
        assert_eq!(decide_with(b"base/5/16384_vm", B, &old, &t), incr(&[], 1));
        // Zero-length: whole (an incremental file would be bigger).
        assert_eq!(decide_with(b"base/5/16384_init", 0, &old, &t), Method::Full);
    }

    #[test]
    fn zero_length_file_with_an_entry_follows_the_later_rules() {
        let old = manifest(&[b"base/5/16384"]);
        // Limit 0 (created or truncated away): rule 6.
        assert_eq!(decide_with(b"base/5/16384", 0, &old, &table(&[(MAIN, Some(0), &[])])), Method::Full);
        // Limit 5, now empty: no block in range, truncation raised to the limit.
        assert_eq!(decide_with(b"base/5/16384", 0, &old, &table(&[(MAIN, Some(5), &[])])), incr(&[], 5));
        // Blocks but no limit, now empty: nothing in range, length 0.
        assert_eq!(decide_with(b"base/5/16384", 0, &old, &table(&[(MAIN, None, &[3])])), incr(&[], 0));
    }

    #[test]
    fn rule6_limit_at_or_before_the_segment_start_goes_whole() {
        let old = manifest(&[b"base/5/16384", b"base/5/16384.1"]);
        let t = table(&[(MAIN, Some(0), &[0])]);
        assert_eq!(decide_with(b"base/5/16384", 10 * B, &old, &t), Method::Full);
        let t = table(&[(MAIN, Some(RELSEG), &[])]);
        assert_eq!(decide_with(b"base/5/16384.1", 10 * B, &old, &t), Method::Full);
        assert_eq!(decide_with(b"base/5/16384", u64::from(RELSEG) * B, &old, &t), incr(&[], RELSEG));
        let t = table(&[(MAIN, Some(RELSEG + 1), &[])]);
        assert_eq!(decide_with(b"base/5/16384.1", 10 * B, &old, &t), incr(&[], 10));
    }

    #[test]
    fn rule7_mostly_changed_goes_whole_exactly_90_percent_stays() {
        let old = manifest(&[b"base/5/16384", b"base/5/16384_vm"]);
        let nine: Vec<u32> = (0..9).collect();
        let t = table(&[(MAIN, None, &nine)]);
        assert_eq!(decide_with(b"base/5/16384", 10 * B, &old, &t), incr(&nine, 10));
        let ninety: Vec<u32> = (0..90).collect();
        let t = table(&[(MAIN, None, &ninety)]);
        assert_eq!(decide_with(b"base/5/16384", 100 * B, &old, &t), incr(&ninety, 100));
        let ninety_one: Vec<u32> = (0..91).collect();
        let t = table(&[(MAIN, None, &ninety_one)]);
        assert_eq!(decide_with(b"base/5/16384", 100 * B, &old, &t), Method::Full);
        // Only the blocks inside the file's current length count: 91 changed, 89 in range.
        assert_eq!(decide_with(b"base/5/16384", 89 * B, &old, &t), Method::Full);
        assert_eq!(
            decide_with(b"base/5/16384", 100 * B, &old, &table(&[(MAIN, None, &[0, 200, 300])])),
            incr(&[0], 100)
        );
        // A 1-block VM whose block changed.
        let vm = key(1663, 5, 16384, VM_FORK);
        assert_eq!(decide_with(b"base/5/16384_vm", B, &old, &table(&[(vm, None, &[0])])), Method::Full);
    }

    #[test]
    fn rule8_truncation_is_raised_to_at_least_the_limit() {
        let old = manifest(&[b"base/5/16384"]);
        // The DELETE + VACUUM case seen on 17: truncated to 736, block 735 rewritten.
        let t = table(&[(MAIN, Some(736), &[735])]);
        assert_eq!(decide_with(b"base/5/16384", 736 * B, &old, &t), incr(&[735], 736));
        // The file is shorter than the limit (truncated again after the backup started): the
        // truncation length is the limit, not the file's length.
        let t = table(&[(MAIN, Some(20), &[1])]);
        assert_eq!(decide_with(b"base/5/16384", 10 * B, &old, &t), incr(&[1], 20));
        // No limit: the file's length.
        let t = table(&[(MAIN, None, &[1])]);
        assert_eq!(decide_with(b"base/5/16384", 10 * B, &old, &t), incr(&[1], 10));
    }

    #[test]
    fn segments_after_the_first() {
        // Seen on 17: INCREMENTAL.16412.1 with blocks 0 and 8928 (absolute 131072 and 140000),
        // truncation 11928 = 143000 - 131072 after a truncation to 143000 blocks.
        let old = manifest(&[b"base/5/16412.1"]);
        let k = key(1663, 5, 16412, MAIN_FORK);
        let t = table(&[(k, Some(143_000), &[5, 131_072, 140_000])]);
        assert_eq!(decide_with(b"base/5/16412.1", 11_928 * B, &old, &t), incr(&[0, 8928], 11_928));
        // Shorter now than the limit: still 11928.
        assert_eq!(decide_with(b"base/5/16412.1", 10_000 * B, &old, &t), incr(&[0, 8928], 11_928));
        // A limit beyond this segment: capped at a segment.
        let t = table(&[(k, Some(300_000), &[131_073, 262_144])]);
        assert_eq!(decide_with(b"base/5/16412.1", 100 * B, &old, &t), incr(&[1], RELSEG));
        // Blocks of other segments never leak in.
        let old = manifest(&[b"base/5/16412.2"]);
        let t = table(&[(k, None, &[0, 131_072, 262_143, 262_144, 262_150])]);
        assert_eq!(decide_with(b"base/5/16412.2", 100 * B, &old, &t), incr(&[0, 6], 100));
    }

    #[test]
    fn global_and_tablespace_keys_reach_their_entries() {
        let g = b"global/1262";
        let s = b"pg_tblspc/16400/PG_17_202406281/16500/16401";
        let old = manifest(&[g, s]);
        let t =
            table(&[(key(1664, 0, 1262, MAIN_FORK), None, &[2]), (key(16400, 16500, 16401, MAIN_FORK), None, &[3])]);
        assert_eq!(decide_with(g, 10 * B, &old, &t), incr(&[2], 10));
        assert_eq!(decide_with(s, 10 * B, &old, &t), incr(&[3], 10));
        // The same numbers under the default tablespace are other forks.
        let t = table(&[(key(1663, 0, 1262, MAIN_FORK), None, &[2]), (key(1663, 16500, 16401, MAIN_FORK), None, &[3])]);
        assert_eq!(decide_with(g, 10 * B, &old, &t), incr(&[], 10));
        assert_eq!(decide_with(s, 10 * B, &old, &t), incr(&[], 10));
        // A database created in the tablespace.
        let t = table(&[(RelKey::database(16400, 16500), Some(0), &[])]);
        assert_eq!(decide_with(s, 10 * B, &old, &t), Method::Full);
    }

    #[test]
    fn vm_and_init_forks_follow_the_main_fork_rules() {
        let old = manifest(&[b"base/5/16384_vm", b"base/5/16384_init"]);
        let vm = key(1663, 5, 16384, VM_FORK);
        let init = key(1663, 5, 16384, INIT_FORK);
        let t = table(&[(vm, Some(1), &[0]), (init, Some(0), &[])]);
        // VM truncated to 1 block and rewritten, 3 blocks now: block 0 of 3.
        assert_eq!(decide_with(b"base/5/16384_vm", 3 * B, &old, &t), incr(&[0], 3));
        assert_eq!(decide_with(b"base/5/16384_init", B, &old, &t), Method::Full);
    }
}
