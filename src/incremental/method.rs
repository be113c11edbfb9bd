//! Which files an incremental backup sends whole and which as `INCREMENTAL.*` with only their
//! changed blocks: core's rules (`GetFileBackupMethod`), in the same order.

use crate::layout::LayoutRules;

use super::blockref::BlockTable;
use super::old_manifest::OldManifest;

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

/// The method for file `path` (relative to the data directory, as listed) of `size` bytes.
/// Files outside relation directories, and names that are not non-temporary relation files,
/// are `Full`.
pub fn decide(_path: &[u8], _size: u64, _cx: &Context<'_>) -> Method {
    unimplemented!("helper fills this in")
}
