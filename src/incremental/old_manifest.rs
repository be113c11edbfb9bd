//! The earlier backup's `backup_manifest` (`-i OLD_MANIFEST`): read, its checksum verified,
//! and what an incremental backup needs from it (system identifier, WAL ranges, paths).

use std::collections::HashSet;
use std::path::Path;

use crate::lsn::Lsn;

/// One entry of the manifest's `WAL-Ranges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// What an incremental backup needs from the earlier backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldManifest {
    /// `PostgreSQL-Backup-Manifest-Version` (only 2 is accepted by [`parse`]).
    pub version: u32,
    /// `System-Identifier` (v2; `None` when the field is absent).
    pub system_identifier: Option<u64>,
    /// `WAL-Ranges`, as listed.
    pub wal_ranges: Vec<WalRange>,
    /// Every file's path (`Path`, or `Encoded-Path` decoded), as raw bytes.
    pub paths: HashSet<Vec<u8>>,
}

/// Why an OLD_MANIFEST cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OldManifestError {
    #[error("placeholder")]
    Placeholder,
}

/// Reads and checks the manifest at `path`.
pub fn read(_path: &Path) -> Result<OldManifest, OldManifestError> {
    unimplemented!("helper fills this in")
}

/// Parses and checks manifest bytes.
pub fn parse(_bytes: &[u8]) -> Result<OldManifest, OldManifestError> {
    unimplemented!("helper fills this in")
}

impl OldManifest {
    /// True when the earlier backup has `path`, whole or as `INCREMENTAL.<name>`.
    pub fn has(&self, path: &[u8]) -> bool {
        self.paths.contains(path) || self.paths.contains(&crate::incremental::format::incremental_path(path))
    }
}
