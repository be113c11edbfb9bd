//! The SQL behind DEST's safety checks and the WAL loop's `-C`: where the server's files are,
//! the identity of its postmaster, and a physical slot's state. Every call is
//! schema-qualified.

use super::{PgError, Session, SqlState};

/// What the server says about its own files, to find them (and prove them) on this machine.
#[derive(Debug, Clone, Default)]
pub struct ServerFiles {
    /// `data_directory` (only for superusers and members of pg_read_all_settings).
    pub data_directory: Option<String>,
    /// The bytes of its `postmaster.pid`.
    pub pid_file: Option<Vec<u8>>,
    /// That file's modification and status-change times (Unix seconds).
    pub pid_mtime: Option<i64>,
    pub pid_ctime: Option<i64>,
}

pub fn server_files(s: &mut Session) -> Result<ServerFiles, PgError> {
    // pg_settings hides data_directory from roles that may not read it (no error).
    let r = s.query_one(
        "SELECT (SELECT setting FROM pg_catalog.pg_settings WHERE name = 'data_directory'), \
                pg_catalog.pg_read_binary_file('postmaster.pid', 0::bigint, 8192::bigint, true), \
                EXTRACT(epoch FROM st.modification)::bigint, EXTRACT(epoch FROM st.change)::bigint \
           FROM pg_catalog.pg_stat_file('postmaster.pid', true) AS st",
        &[],
        "could not read where the server's files are",
    )?;
    let get = |e| PgError::query("could not read where the server's files are", e);
    Ok(ServerFiles {
        data_directory: r.try_get(0).map_err(get)?,
        pid_file: r.try_get(1).map_err(get)?,
        pid_mtime: r.try_get(2).map_err(get)?,
        pid_ctime: r.try_get(3).map_err(get)?,
    })
}

/// A replication slot as `-C` needs to judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub physical: bool,
    /// `wal_status` (`lost` once invalidated).
    pub wal_status: Option<String>,
}

pub fn slot_state(s: &mut Session, name: &str) -> Result<Option<SlotState>, PgError> {
    let rows = s.query(
        "SELECT slot_type = 'physical', wal_status FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
        &[&name],
        "could not read the replication slot",
    )?;
    let get = |e| PgError::query("could not read the replication slot", e);
    match rows.first() {
        None => Ok(None),
        Some(r) => Ok(Some(SlotState { physical: r.try_get(0).map_err(get)?, wal_status: r.try_get(1).map_err(get)? })),
    }
}

/// Creates a permanent physical slot that reserves WAL at once; `Ok(false)` if a slot of that
/// name already exists.
pub fn create_physical_slot(s: &mut Session, name: &str) -> Result<bool, PgError> {
    match s.execute(
        "SELECT pg_catalog.pg_create_physical_replication_slot($1, true, false)",
        &[&name],
        &format!("could not create replication slot \"{name}\""),
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(e) => Err(e),
    }
}
