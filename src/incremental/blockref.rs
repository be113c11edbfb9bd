//! The blocks changed since the earlier backup: the rows of the WAL summaries that cover the
//! range, merged as the server merges them (limit blocks, then modified blocks, in LSN order).
//!
//! Core's semantics (src/common/blkreftable.c): setting a limit block on a fork keeps the lower
//! of the old and the new limit and forgets every modified block at or above the new one;
//! marking a block adds it (again, if a limit dropped it: the relation was re-extended). A
//! fork first seen through a block has no limit (`InvalidBlockNumber`).

use std::collections::HashMap;

/// `InvalidBlockNumber`: no limit recorded.
const NO_LIMIT: u32 = u32::MAX;

/// Repeats a fork's block list may gather before it is compacted (small under test, so that
/// the property test goes through compactions).
#[cfg(not(test))]
const COMPACT_SLACK: usize = 1024;
#[cfg(test)]
const COMPACT_SLACK: usize = 16;

/// Fork numbers as the summaries give them.
pub const MAIN_FORK: u8 = 0;
pub const FSM_FORK: u8 = 1;
pub const VM_FORK: u8 = 2;
pub const INIT_FORK: u8 = 3;

/// A relation fork as the summaries name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelKey {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    /// 0 main, 1 fsm, 2 vm, 3 init.
    pub fork: u8,
}

impl RelKey {
    /// The database-wide entry of (tablespace, database): relfilenode 0, main fork. The
    /// summarizer sets it when the database is created or dropped there.
    pub fn database(spc: u32, db: u32) -> RelKey {
        RelKey { spc, db, rel: 0, fork: MAIN_FORK }
    }
}

/// One row of `pg_wal_summary_contents()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryRow {
    pub key: RelKey,
    pub block: u32,
    pub is_limit: bool,
}

/// One fork's state while rows arrive.
#[derive(Debug)]
struct Entry {
    limit: u32,
    /// Modified blocks; unsorted and possibly repeated until compacted.
    blocks: Vec<u32>,
    /// The largest block in `blocks` (meaningless when empty): a limit above it drops nothing.
    max: u32,
    /// Length of `blocks` after the last sort + dedup (the prefix is then sorted and unique).
    clean_len: usize,
}

impl Entry {
    fn new() -> Entry {
        Entry { limit: NO_LIMIT, blocks: Vec::new(), max: 0, clean_len: 0 }
    }

    fn set_limit(&mut self, limit: u32) {
        if limit >= self.limit {
            return;
        }
        self.limit = limit;
        if !self.blocks.is_empty() && self.max >= limit {
            self.blocks.retain(|&b| b < limit);
            self.max = self.blocks.iter().copied().max().unwrap_or(0);
            self.clean_len = 0;
        }
    }

    fn mark(&mut self, block: u32) {
        self.max = if self.blocks.is_empty() { block } else { self.max.max(block) };
        self.blocks.push(block);
        // A block modified in many summaries comes once per summary: compact now and then so
        // that memory follows the distinct blocks (amortised O(n log n)).
        if self.blocks.len() >= 2 * self.clean_len + COMPACT_SLACK {
            self.compact();
        }
    }

    fn compact(&mut self) {
        self.blocks.sort_unstable();
        self.blocks.dedup();
        self.clean_len = self.blocks.len();
    }
}

/// The merged table.
#[derive(Debug, Default)]
pub struct BlockTable {
    entries: Vec<(RelKey, Entry)>,
    index: HashMap<RelKey, usize>,
    /// The fork of the previous row: the rows of one fork come together.
    last: Option<(RelKey, usize)>,
    finished: bool,
}

/// What the table says of one fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkChanges<'a> {
    /// The shortest length the fork had in the range, `None` when never truncated/created.
    pub limit: Option<u32>,
    /// Modified blocks (absolute block numbers), sorted ascending, no duplicates.
    pub blocks: &'a [u32],
}

impl BlockTable {
    /// Applies one row; the rows of one summary in the order the function returns them, the
    /// summaries in ascending start LSN.
    pub fn apply(&mut self, row: SummaryRow) {
        self.finished = false;
        let entry = self.entry(row.key);
        if row.is_limit {
            entry.set_limit(row.block);
        } else {
            entry.mark(row.block);
        }
    }

    fn entry(&mut self, key: RelKey) -> &mut Entry {
        let i = match self.last {
            Some((k, i)) if k == key => i,
            _ => {
                let next = self.entries.len();
                let i = *self.index.entry(key).or_insert(next);
                if i == next {
                    self.entries.push((key, Entry::new()));
                }
                self.last = Some((key, i));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// Sorts and deduplicates; call once after the last row, before [`BlockTable::get`].
    pub fn finish(&mut self) {
        for (_, e) in &mut self.entries {
            e.compact();
        }
        self.finished = true;
    }

    /// The fork's entry, if the summaries have one.
    pub fn get(&self, key: &RelKey) -> Option<ForkChanges<'_>> {
        debug_assert!(self.finished, "BlockTable::get before finish");
        let e = &self.entries[*self.index.get(key)?].1;
        Some(ForkChanges { limit: (e.limit != NO_LIMIT).then_some(e.limit), blocks: &e.blocks })
    }

    /// True when the summaries have the database-wide entry of (tablespace, database): the
    /// database was created (or dropped) there within the range.
    pub fn has_database_entry(&self, spc: u32, db: u32) -> bool {
        self.index.contains_key(&RelKey::database(spc, db))
    }

    /// Total modified blocks in the table (for the log); exact after [`BlockTable::finish`].
    pub fn blocks(&self) -> u64 {
        self.entries.iter().map(|(_, e)| e.blocks.len() as u64).sum()
    }

    /// Forks in the table.
    pub fn forks(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const K: RelKey = RelKey { spc: 1663, db: 5, rel: 16384, fork: MAIN_FORK };

    fn limit(key: RelKey, block: u32) -> SummaryRow {
        SummaryRow { key, block, is_limit: true }
    }
    fn mark(key: RelKey, block: u32) -> SummaryRow {
        SummaryRow { key, block, is_limit: false }
    }
    fn table(rows: &[SummaryRow]) -> BlockTable {
        let mut t = BlockTable::default();
        for r in rows {
            t.apply(*r);
        }
        t.finish();
        t
    }

    #[test]
    fn marks_are_sorted_and_deduplicated() {
        let t = table(&[mark(K, 7), mark(K, 3), mark(K, 7), mark(K, 0)]);
        assert_eq!(t.get(&K), Some(ForkChanges { limit: None, blocks: &[0, 3, 7] }));
        assert_eq!(t.blocks(), 3);
        assert_eq!(t.get(&RelKey { fork: VM_FORK, ..K }), None);
    }

    #[test]
    fn limit_drops_blocks_at_or_above_it_and_re_extension_re_adds() {
        let t = table(&[mark(K, 1), mark(K, 5), mark(K, 9), mark(K, 4), limit(K, 5)]);
        assert_eq!(t.get(&K), Some(ForkChanges { limit: Some(5), blocks: &[1, 4] }));
        // Later summary: the relation grew again; its new blocks count, the limit stays.
        let t = table(&[mark(K, 1), mark(K, 9), limit(K, 5), limit(K, 8), mark(K, 9), mark(K, 6)]);
        assert_eq!(t.get(&K), Some(ForkChanges { limit: Some(5), blocks: &[1, 6, 9] }));
    }

    #[test]
    fn a_limit_equal_to_the_highest_block_drops_it() {
        let t = table(&[mark(K, 1), mark(K, 5), limit(K, 5)]);
        assert_eq!(t.get(&K), Some(ForkChanges { limit: Some(5), blocks: &[1] }));
    }

    #[test]
    fn the_lower_limit_wins_and_a_higher_one_drops_nothing() {
        let t = table(&[limit(K, 10), mark(K, 12), limit(K, 20)]);
        assert_eq!(t.get(&K), Some(ForkChanges { limit: Some(10), blocks: &[12] }));
        let t = table(&[limit(K, 20), mark(K, 15), limit(K, 10)]);
        assert_eq!(t.get(&K), Some(ForkChanges { limit: Some(10), blocks: &[] }));
    }

    #[test]
    fn a_limit_alone_makes_an_entry() {
        let t = table(&[limit(K, 0)]);
        assert_eq!(t.get(&K), Some(ForkChanges { limit: Some(0), blocks: &[] }));
    }

    #[test]
    fn summaries_merge_in_the_order_given() {
        // Summary 1 (earlier LSNs): blocks 5..10 changed. Summary 2: truncated to 3, then block 4
        // written (re-extension).
        let s1: Vec<SummaryRow> = (5..10).map(|b| mark(K, b)).collect();
        let s2 = vec![limit(K, 3), mark(K, 4)];
        let forward = table(&[s1.clone(), s2.clone()].concat());
        assert_eq!(forward.get(&K), Some(ForkChanges { limit: Some(3), blocks: &[4] }));
        // The other order gives another answer: the order is the caller's to get right.
        let backward = table(&[s2, s1].concat());
        assert_eq!(backward.get(&K), Some(ForkChanges { limit: Some(3), blocks: &[4, 5, 6, 7, 8, 9] }));
    }

    #[test]
    fn database_wide_entry() {
        let t = table(&[limit(RelKey::database(1663, 16500), 0), mark(K, 1)]);
        assert!(t.has_database_entry(1663, 16500));
        assert!(!t.has_database_entry(1663, 5));
        assert!(!t.has_database_entry(16400, 16500));
        assert_eq!(t.forks(), 2);
    }

    #[test]
    fn many_repeats_stay_small_and_interleaved_forks_keep_apart() {
        let mut t = BlockTable::default();
        let vm = RelKey { fork: VM_FORK, ..K };
        for round in 0..1000u32 {
            for b in 0..50 {
                t.apply(mark(K, b));
            }
            t.apply(mark(vm, round % 3));
        }
        for (_, e) in &t.entries {
            assert!(e.blocks.len() <= 2 * 50 + COMPACT_SLACK, "{}", e.blocks.len());
        }
        t.finish();
        assert_eq!(t.get(&K).unwrap().blocks, (0..50).collect::<Vec<_>>().as_slice());
        assert_eq!(t.get(&vm).unwrap().blocks, &[0, 1, 2]);
        assert_eq!(t.blocks(), 53);
    }

    /// The naive model: core's semantics on ordered sets.
    #[derive(Default)]
    struct Model(BTreeMap<RelKey, (u32, BTreeSet<u32>)>);

    impl Model {
        fn apply(&mut self, r: SummaryRow) {
            let (lim, set) = self.0.entry(r.key).or_insert((NO_LIMIT, BTreeSet::new()));
            if !r.is_limit {
                set.insert(r.block);
            } else if r.block < *lim {
                *lim = r.block;
                set.retain(|&b| b < r.block);
            }
        }
    }

    fn row() -> impl Strategy<Value = SummaryRow> {
        // Few keys and a small block range, so that limits and repeats collide often; now and
        // then a block in a far chunk.
        let block = prop_oneof![8 => 0u32..40, 1 => 65_530u32..65_545, 1 => any::<u32>()];
        (0u32..2, 0u8..3, block, prop::bool::weighted(0.15)).prop_map(|(rel, fork, block, is_limit)| SummaryRow {
            key: RelKey { spc: 1663, db: 5, rel, fork },
            block,
            is_limit,
        })
    }

    proptest! {
        #[test]
        fn matches_the_naive_model(rows in prop::collection::vec(row(), 0..3000)) {
            let mut model = Model::default();
            let mut t = BlockTable::default();
            for r in &rows {
                model.apply(*r);
                t.apply(*r);
            }
            t.finish();
            prop_assert_eq!(t.forks(), model.0.len());
            let mut total = 0u64;
            for (k, (lim, set)) in &model.0 {
                let got = t.get(k).expect("fork in the model");
                let want: Vec<u32> = set.iter().copied().collect();
                prop_assert_eq!(got.limit, (*lim != NO_LIMIT).then_some(*lim));
                prop_assert_eq!(got.blocks, want.as_slice());
                total += set.len() as u64;
            }
            prop_assert_eq!(t.blocks(), total);
        }
    }
}
