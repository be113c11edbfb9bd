//! Before the standalone WAL loop (`pgbb -x`) starts: DEST created and locked, so that a
//! second loop into it is refused naming the first, and with `--slot NAME -C` the slot
//! created, as `pg_receivewal --create-slot --if-not-exists` would: a physical slot of that
//! name that already exists is used (a restarted feeder finds the slot it made); one that
//! cannot serve (logical, or invalidated) is an error.

use crate::cli::Common;
use crate::dest_lock::DestLock;
use crate::error::Error;
use crate::pg::{sql_dest, PgError};

/// Creates and locks DEST, and makes the slot when asked; the lock lasts as long as the value.
pub fn prepare(common: &Common, slot: Option<&str>, create_slot: bool) -> Result<DestLock, Error> {
    crate::worker::create_dest(&common.dest, common.group_access)?;
    let lock = DestLock::acquire(&common.dest)?;
    if let (Some(name), true) = (slot, create_slot) {
        let mut s = common.conn.connect("pgbb slot")?;
        if sql_dest::create_physical_slot(&mut s, name)? {
            log::info!("created replication slot {name}");
            return Ok(lock);
        }
        match sql_dest::slot_state(&mut s, name)? {
            Some(st) if !st.physical => {
                return Err(PgError::Unsupported(format!(
                    "replication slot \"{name}\" already exists and is a logical slot; choose another name"
                ))
                .into())
            }
            Some(st) if st.wal_status.as_deref() == Some("lost") => {
                return Err(PgError::Unsupported(format!(
                    "replication slot \"{name}\" already exists but has been invalidated; drop it with \
                     SELECT pg_drop_replication_slot('{name}') and run pgbb again"
                ))
                .into())
            }
            _ => log::info!("replication slot {name} already exists; using it"),
        }
    }
    Ok(lock)
}
