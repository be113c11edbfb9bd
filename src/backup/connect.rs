//! Phase 1, connect and check: the master's session, the server's facts and suitability,
//! this run's lock (and `--clean`), and how chunks will travel.

use crate::cli::{Common, MasterOpts};
use crate::error::Error;
use crate::lsn::WalGeometry;
use crate::pg::caps::Support;
use crate::pg::{run, sql, PgError, Session};
use crate::transfer::Method;

use super::Signals;

/// The connected, checked server, and the settings every later phase shares.
pub(super) struct Server {
    /// The master's session: it holds the backup, from start to stop.
    pub ctl: Session,
    pub info: sql::ServerInfo,
    pub geo: WalGeometry,
    pub method: Method,
    /// The command line's settings, completed with what the server said (run key, group
    /// access, chunk size for the method).
    pub common: Common,
}

pub(super) fn connect(common: &Common, opts: &MasterOpts, sig: &Signals) -> Result<Server, Error> {
    let mut ctl = common.conn.connect("pgbb")?;
    sig.interrupt.set_cancel(Some(common.conn.canceller(&ctl)));
    let info = check_server(&mut ctl, common)?;
    let run_key = claim_run(&mut ctl, opts.clean)?;
    let geo = WalGeometry::new(info.wal_segment_size)
        .ok_or_else(|| PgError::Unsupported(format!("unexpected wal_segment_size {}", info.wal_segment_size)))?;
    let choice = crate::compression::choose(&mut ctl, opts.compress, common.conn.is_local(), &common.schema)?;
    for (what, fix) in &choice.warnings {
        log::warn!("{what}{}", fix.as_ref().map(|f| format!("; {f}")).unwrap_or_default());
    }
    log::info!("{}", choice.said);
    let method = choice.method;
    let mut common = common.clone();
    // The children use the helper chosen here (see `Common::worker_args`).
    common.zlib_helper = Some(choice.helper);
    common.run_key = Some(run_key);
    common.group_access = info.group_access;
    common.chunk = common.chunk_for(method);
    Ok(Server { ctl, info, geo, method, common })
}

fn check_server(ctl: &mut Session, common: &Common) -> Result<sql::ServerInfo, Error> {
    let (caps, version) = sql::version(ctl)?;
    match caps.support() {
        Support::TooOld => return Err(PgError::TooOld(version).into()),
        Support::BestEffort => {
            log::warn!("PostgreSQL {version} is supported on a best-effort basis; 14 to 18 are tested")
        }
        Support::Untested => {
            log::warn!("PostgreSQL {version} is newer than pgbb knows (18); proceeding")
        }
        Support::Supported => {}
    }
    sql::session_setup_for(ctl, caps)?;
    let info = sql::server_info(ctl, caps, version)?;
    if info.wal_level == "minimal" {
        return Err(PgError::WalLevel(info.wal_level).into());
    }
    if !info.superuser {
        let missing = sql::missing_function_privileges(ctl, &caps.needed_functions())?;
        if !missing.is_empty() {
            let grants = missing
                .iter()
                .map(|f| format!("  GRANT EXECUTE ON FUNCTION {f} TO \"{}\";", info.current_user))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(
                PgError::Privileges { role: info.current_user.clone(), db: info.database.clone(), grants }.into()
            );
        }
    }
    if info.in_recovery && !sql::checkpoint_full_page_writes(ctl)? {
        return Err(PgError::Unsupported(sql::FULL_PAGE_WRITES_OFF.into()).into());
    }
    log::info!("connected to PostgreSQL {} at {}", info.version, common.conn.target());
    Ok(info)
}

/// Takes this run's advisory lock on the master's session, then names the session after the
/// run: from here on a `pgbb --clean` elsewhere leaves every session of this run alone, and
/// a session named after a run whose lock is free is a leftover (see [`sql::clean_leftovers`]).
/// With `--clean` (`clean`), then ends such leftovers.
fn claim_run(ctl: &mut Session, clean: bool) -> Result<i32, Error> {
    for _ in 0..8 {
        let key = run::new_key();
        // Taken by a live run (a chance in 2^31): draw again.
        if sql::lock_run(ctl, key)? {
            sql::set_application_name(ctl, &run::session_name("pgbb", Some(key)))?;
            log::debug!("run key {key}");
            if clean {
                clean_leftovers(ctl)?;
            }
            return Ok(key);
        }
    }
    Err(PgError::Unsupported("could not take a pgbb run lock: every key drawn was held".into()).into())
}

/// `--clean`: ends what runs whose master is gone left behind, and says what it left alone.
fn clean_leftovers(ctl: &mut Session) -> Result<(), Error> {
    let c = sql::clean_leftovers(ctl)?;
    log::warn!("--clean: terminated {} session(s) of pgbb runs whose master is gone", c.terminated);
    if c.live > 0 {
        log::info!("--clean: left alone {} session(s) of pgbb runs in progress (their master holds its lock)", c.live);
    }
    if c.unkeyed > 0 {
        log::info!(
            "--clean: left alone {} pgbb session(s) that belong to no backup run (a worker started by hand, \
             --check, pgbb -x, or an older pgbb); end them with pg_terminate_backend if they are leftovers",
            c.unkeyed
        );
    }
    Ok(())
}

/// `-i OLD_MANIFEST`: the server can take an incremental backup, and OLD_MANIFEST is of an
/// earlier backup of it whose changes since are still summarized. Checked before DEST is
/// touched; checked again against the backup's start once it has started.
pub(super) fn incremental_base(
    server: &mut Server,
    opts: &MasterOpts,
) -> Result<Option<crate::incremental::base::Base>, Error> {
    let Some(path) = &opts.incremental else { return Ok(None) };
    use crate::incremental::base;
    base::server_can(&mut server.ctl, server.info.caps, &server.info.version)?;
    let b = base::check(&mut server.ctl, path, server.info.in_recovery)?;
    log::info!("-i: an incremental backup on top of the backup of {}", path.display());
    Ok(Some(b))
}
