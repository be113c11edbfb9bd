//! `-i OLD_MANIFEST`: an incremental backup in PostgreSQL's own format (17+), planned from the
//! server's WAL summaries read over SQL, which `pg_combinebackup` merges with earlier backups.

pub mod blockref;
pub mod fetch;
pub mod format;
pub mod method;
pub mod old_manifest;
