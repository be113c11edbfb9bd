//! Phase 3, hold WAL: a replication slot that keeps the WAL the backup needs from being
//! removed, made before the backup starts. A named slot is the user's (`--slot`, created with
//! `-C` and then dropped again if the backup fails); otherwise a temporary one, on a session
//! that runs nothing else: a temporary slot is dropped on any error in its session.

use crate::cli::MasterOpts;
use crate::error::Error;
use crate::pg::{sql, PgError, Session, SqlState};

use super::connect::Server;

/// The slot that holds this backup's WAL, if any.
pub(super) struct WalHold {
    name: String,
    /// The session of a temporary slot (the slot lives as long as it does).
    session: Option<Session>,
    created: CreatedSlot,
    held: bool,
}

pub(super) fn hold_wal(server: &mut Server, opts: &MasterOpts) -> Result<WalHold, Error> {
    let common = &server.common;
    let created = CreatedSlot { conn: common.conn.clone(), app: common.session_name("pgbb cleanup"), name: None };
    let mut hold = WalHold { name: format!("pgbb_{}", std::process::id()), session: None, created, held: false };
    if let Some(name) = &opts.named_slot {
        hold.name = name.clone();
        if opts.create_slot {
            sql::create_permanent_slot(&mut server.ctl, name)?;
            hold.created.name = Some(name.clone());
            log::info!("created replication slot {name}");
        } else {
            usable_slot(&mut server.ctl, name)?;
        }
        hold.held = true;
    } else if opts.slot {
        let mut ss = common.conn.connect(&common.session_name("pgbb slot"))?;
        sql::session_setup_for(&mut ss, server.info.caps)?;
        match sql::create_temp_slot(&mut ss, &hold.name) {
            Ok(_) => {
                log::info!("temporary replication slot {} holds the WAL of the backup", hold.name);
                hold.session = Some(ss);
                hold.held = true;
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some(&SqlState::INSUFFICIENT_PRIVILEGE | &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
                ) =>
            {
                log::warn!("no replication slot ({e}); WAL the backup needs is not protected from removal. Give the role REPLICATION (ALTER ROLE ... REPLICATION) and set max_replication_slots > 0, or use --no-slot to silence this");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(hold)
}

/// A `--slot` named without `-C` must exist and still hold WAL.
fn usable_slot(ctl: &mut Session, name: &str) -> Result<(), Error> {
    match sql::slot_wal_status(ctl, name)? {
        None => {
            Err(PgError::Unsupported(format!("replication slot \"{name}\" does not exist (create it with -C)")).into())
        }
        Some(s) if s == "lost" => {
            Err(PgError::Unsupported(format!("replication slot \"{name}\" has been invalidated")).into())
        }
        Some(_) => Ok(()),
    }
}

impl WalHold {
    /// After the backup: the slot must not have been invalidated (`max_slot_wal_keep_size`),
    /// or WAL the backup needs may be gone. Checked before the WAL range, so that this, not a
    /// gap, is named as the cause. An invalidated temporary slot may be gone altogether: the
    /// server terminates the session holding it.
    pub fn check_not_lost(&self, ctl: &mut Session) -> Result<(), Error> {
        if !self.held {
            return Ok(());
        }
        let status = sql::slot_wal_status(ctl, &self.name)?;
        let closed = self.session.as_ref().is_some_and(|s| s.is_closed());
        if closed || status.is_none() || status.as_deref() == Some("lost") {
            return Err(Error::SlotLost(self.name.clone()));
        }
        Ok(())
    }

    /// The backup is complete: a slot made with `-C` stays (for the standby this copy becomes);
    /// a temporary one goes with its session.
    pub fn keep(mut self) {
        self.created.name = None;
    }
}

/// A slot made with `-C`: dropped again when the backup fails (a failed backup has no
/// standby to feed).
pub(super) struct CreatedSlot {
    conn: crate::pg::ConnInfo,
    app: String,
    name: Option<String>,
}

impl Drop for CreatedSlot {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            match self.conn.connect(&self.app).and_then(|mut s| sql::drop_slot(&mut s, &name)) {
                Ok(()) => log::info!("dropped replication slot {name}, created for the failed backup"),
                Err(e) => log::error!(
                    "could not drop replication slot {name}: {e}; drop it with pg_drop_replication_slot('{name}')"
                ),
            }
        }
    }
}
