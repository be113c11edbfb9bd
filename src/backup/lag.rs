//! `--max-lag` in the master: the check before anything starts, and a look at the standbys
//! about once a second while the copy runs (on the master's own session, idle meanwhile).

use std::time::{Duration, Instant};

use crate::error::Error;
use crate::lag::{Change, Gate, MaxLag};
use crate::pg::{sql, PgError, Session};

/// Time between two looks at `pg_stat_replication`.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The standbys' watch during the copy.
pub(super) struct Watch {
    gate: Gate,
    last: Option<Instant>,
}

/// Checks that the role can see how far standbys lag (else exit 4, naming the GRANT), and
/// says which standbys will be watched. A server with none gets a warning; one that connects
/// later is watched from then on.
pub(super) fn prepare(
    ctl: &mut Session,
    info: &sql::ServerInfo,
    limit: Option<MaxLag>,
) -> Result<Option<Watch>, Error> {
    let Some(limit) = limit else { return Ok(None) };
    if !sql::sees_replication_positions(ctl)? {
        return Err(PgError::Privileges {
            role: info.current_user.clone(),
            db: info.database.clone(),
            grants: format!(
                "  GRANT pg_monitor TO \"{}\";\n(--max-lag reads the standbys' replay positions in \
                 pg_stat_replication, which only pg_monitor / pg_read_all_stats and superusers see)",
                info.current_user.replace('"', "\"\"")
            ),
        }
        .into());
    }
    let standbys = sql::standby_lags(ctl)?;
    let whose = if info.in_recovery { "this standby's cascaded standbys" } else { "the standbys" };
    if standbys.is_empty() {
        log::warn!(
            "--max-lag {limit}: no standby replicates from this server now; nothing is held back \
             (one that connects during the backup is watched)"
        );
    } else {
        let names: Vec<&str> = standbys.iter().map(|s| s.name.as_str()).collect();
        log::info!(
            "--max-lag {limit}: watching {whose} ({}): the copy is held while one lags more, and resumes under {}",
            names.join(", "),
            limit.resume_at()
        );
    }
    Ok(Some(Watch { gate: Gate::new(limit), last: None }))
}

impl Watch {
    /// True while the copy must hand out no new work.
    pub fn holds(&self) -> bool {
        self.gate.is_shut()
    }

    /// What the progress display shows while the copy is held.
    pub fn note(&self) -> Option<String> {
        self.gate.note()
    }

    /// Looks at the standbys when it is time (the first call looks at once); logs when the
    /// copy is held, resumes, and every minute while it stays held.
    pub fn look(&mut self, ctl: &mut Session) -> Result<(), Error> {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < LOOK_EVERY) {
            return Ok(());
        }
        self.last = Some(now);
        let standbys = sql::standby_lags(ctl)?;
        let limit = self.gate.limit();
        match self.gate.update(&standbys, now) {
            Some(Change::Held { name, lag }) => log::warn!(
                "standby {name} lags {lag} (--max-lag {limit}): the copy is held until it is under {}",
                limit.resume_at()
            ),
            Some(Change::Still { name, lag, held }) => log::warn!(
                "the copy has been held for {} min: standby {name} still lags {lag} (--max-lag {limit}, resumes \
                 under {}); the backup waits for it (Ctrl-C aborts)",
                held.as_secs() / 60,
                limit.resume_at()
            ),
            Some(Change::Released { name, lag, held }) => {
                let now_lag =
                    if name.is_empty() { "no standby is connected".to_string() } else { format!("{name} lags {lag}") };
                log::warn!("the copy resumes after {:.1} s held: {now_lag} (--max-lag {limit})", held.as_secs_f64())
            }
            None => {}
        }
        Ok(())
    }

    /// Says how long the copy was held in all, if at all.
    pub fn finish(&self) {
        let held = self.gate.held_total;
        if !held.is_zero() {
            log::info!("--max-lag: the copy was held {:.1} s in all for lagging standbys", held.as_secs_f64());
        }
    }
}
