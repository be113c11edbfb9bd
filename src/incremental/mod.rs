//! `-i OLD_MANIFEST`: an incremental backup in PostgreSQL's own format (17+), planned from the
//! server's WAL summaries read over SQL, which `pg_combinebackup` merges with earlier backups.

pub mod base;
pub mod blockref;
pub mod fetch;
pub mod format;
mod many;
pub mod method;
pub mod old_manifest;
pub mod range;
pub mod timeline;

use crate::lsn::Lsn;
use crate::pg::PgError;

/// Why an incremental backup cannot be taken. [`IncrementalError::is_server`] tells the
/// server's settings (exit 4) from an OLD_MANIFEST that does not fit this server (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum IncrementalError {
    #[error(transparent)]
    OldManifest(#[from] old_manifest::OldManifestError),
    #[error("incremental backups need PostgreSQL 17 or later, this server is {0} (--delta refreshes an earlier copy on any version: only what changed travels)")]
    TooOld(String),
    #[error("incremental backups need WAL summaries, and summarize_wal is off; as a superuser run ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf(); then take a full backup, which later incrementals build on")]
    SummarizeOff,
    #[error("incremental backups are taken in 8192-byte blocks, and this server's block_size is {0}")]
    BlockSize(i64),
    #[error("OLD_MANIFEST has no System-Identifier: it is of a backup pg_combinebackup cannot combine (taken before PostgreSQL 17?); take a full backup")]
    NoSystemIdentifier,
    #[error("OLD_MANIFEST is of another cluster: its system identifier is {old}, this server's is {server}")]
    OtherSystem { old: u64, server: u64 },
    #[error("OLD_MANIFEST is of a backup that ends at {end}, past this server's WAL position {now}: it is not of an earlier backup of this server (a manifest of another copy, or of a later backup)")]
    Newer { end: Lsn, now: Lsn },
    #[error(transparent)]
    Range(#[from] range::RangeError),
    #[error("{0}: the WAL summaries no longer cover the changes since the earlier backup (they expire after wal_summary_keep_time, and none are made while summarize_wal is off): take a full backup")]
    Uncovered(#[source] range::CoverError),
    #[error("WAL summarization is not progressing: it reached {summarized}, and this backup starts at {start}; check the server log for the WAL summarizer's errors")]
    Stuck { summarized: Lsn, start: Lsn },
    #[error("the server's timeline history: {0}")]
    History(String),
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl IncrementalError {
    /// The server is not set up for it (exit 4), rather than OLD_MANIFEST not fitting (2).
    pub fn is_server(&self) -> bool {
        match self {
            IncrementalError::TooOld(_)
            | IncrementalError::BlockSize(_)
            | IncrementalError::SummarizeOff
            | IncrementalError::Uncovered(_)
            | IncrementalError::Stuck { .. }
            | IncrementalError::History(_) => true,
            IncrementalError::Range(r) => matches!(r, range::RangeError::FinalTimeline { .. }),
            _ => false,
        }
    }
}

/// What an incremental backup sent, against what a full one would have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Relation files sent as `INCREMENTAL.*`.
    pub incremental_files: u64,
    /// Blocks those files hold.
    pub blocks: u64,
    /// Bytes a full backup would have copied (the data files as listed).
    pub full_size: u64,
}
