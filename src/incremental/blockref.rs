//! The blocks changed since the earlier backup: the rows of the WAL summaries that cover the
//! range, merged as the server merges them (limit blocks, then modified blocks, in LSN order).

/// A relation fork as the summaries name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelKey {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    /// 0 main, 1 fsm, 2 vm, 3 init.
    pub fork: u8,
}

/// One row of `pg_wal_summary_contents()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryRow {
    pub key: RelKey,
    pub block: u32,
    pub is_limit: bool,
}

/// The merged table.
#[derive(Debug, Default)]
pub struct BlockTable {}

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
    pub fn apply(&mut self, _row: SummaryRow) {
        unimplemented!("helper fills this in")
    }

    /// Sorts and deduplicates; call once after the last row, before [`BlockTable::get`].
    pub fn finish(&mut self) {
        unimplemented!("helper fills this in")
    }

    /// The fork's entry, if the summaries have one.
    pub fn get(&self, _key: &RelKey) -> Option<ForkChanges<'_>> {
        unimplemented!("helper fills this in")
    }

    /// Total modified blocks in the table (for the log).
    pub fn blocks(&self) -> u64 {
        unimplemented!("helper fills this in")
    }
}
