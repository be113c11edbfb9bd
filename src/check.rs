//! `pgbb --check DSN`: a preflight that checks everything a backup will need from the server
//! and the role, and prints what passes and how to fix what does not, without starting one.

use crate::cli::Common;
use crate::compression::{self, Installed};
use crate::error::{exit, Error};
use crate::incremental::{base, IncrementalError};
use crate::pg::caps::Support;
use crate::pg::sql::{self, ServerInfo};
use crate::pg::{Caps, Session};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Info,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug)]
pub struct Item {
    pub status: Status,
    pub what: String,
    pub fix: Option<String>,
}

fn item(status: Status, what: impl Into<String>, fix: Option<String>) -> Item {
    Item { status, what: what.into(), fix }
}

/// Runs every check; a connection failure is the only hard error.
pub fn checks(common: &Common, jobs: usize, incremental: Option<&Path>) -> Result<Vec<Item>, Error> {
    let mut s = common.conn.connect("pgbb check")?;
    let mut v = vec![item(Status::Ok, format!("connected to {}", common.conn.target()), None)];
    let (caps, version) = sql::version(&mut s)?;
    let supported = version_item(caps.support(), &version);
    let too_old = supported.status == Status::Fail;
    v.push(supported);
    if too_old {
        return Ok(v);
    }
    sql::session_setup_for(&mut s, caps)?;
    let info = sql::server_info(&mut s, caps, version.clone())?;
    if info.wal_level == "minimal" {
        v.push(item(Status::Fail, "wal_level = minimal", Some(WAL_LEVEL_FIX.into())));
    } else {
        v.push(item(Status::Ok, format!("wal_level = {}", info.wal_level), None));
    }
    if info.in_recovery && !sql::checkpoint_full_page_writes(&mut s)? {
        v.push(item(
            Status::Fail,
            "full_page_writes = off on the standby's primary",
            Some(sql::FULL_PAGE_WRITES_OFF.into()),
        ));
    }
    v.extend(privilege_items(&mut s, &info)?);
    v.push(slot_item(&mut s, &info)?);
    v.push(tablespace_item(&mut s)?);
    v.extend(connection_items(&mut s, &info, jobs)?);
    v.extend(compression_items(&mut s, common)?);
    if sql::data_checksums(&mut s)? {
        v.push(item(Status::Info, "data checksums on: pages are verified while copying", None));
    } else {
        v.push(item(Status::Info, "data checksums off: pages cannot be verified", None));
    }
    if let Some(path) = incremental {
        v.extend(incremental_items(&mut s, caps, &version, path, info.in_recovery)?);
    }
    Ok(v)
}

/// `--check -i OLD_MANIFEST`: whether the server can take an incremental backup, and whether
/// one can be taken on top of that manifest's backup.
fn incremental_items(
    s: &mut Session,
    caps: Caps,
    version: &str,
    path: &Path,
    standby: bool,
) -> Result<Vec<Item>, Error> {
    let fail = |e: IncrementalError| -> Result<Item, Error> {
        match Error::from(e) {
            Error::Incremental(e) => Ok(item(Status::Fail, e.to_string(), None)),
            other => Err(other),
        }
    };
    let mut v = Vec::new();
    let server = base::server_can(s, caps, version);
    let server_ok = server.is_ok();
    v.push(match server {
        Ok(()) => item(Status::Ok, "summarize_wal = on: incremental backups can be taken", None),
        Err(e) => fail(e)?,
    });
    let shown = path.display();
    v.push(match (server_ok, crate::incremental::old_manifest::read(path)) {
        (_, Err(e)) => fail(e.into())?,
        (false, Ok(_)) => item(Status::Ok, format!("OLD_MANIFEST {shown} reads and its checksum matches"), None),
        (true, Ok(_)) => match base::check(s, path, standby) {
            Ok(_) => item(Status::Ok, format!("OLD_MANIFEST {shown}: an incremental backup can be taken on it"), None),
            Err(e) => fail(e)?,
        },
    });
    Ok(v)
}

/// How chunks would travel over the network with `--compress auto` (a server on this
/// machine gets them plain), and what stands in the way of the installed helper.
fn compression_items(s: &mut Session, common: &Common) -> Result<Vec<Item>, Error> {
    let setup = crate::pg::sql_helper::setup(s)?;
    let installed = compression::look(s, &common.schema, &setup)?;
    let q = crate::pg::sql_helper::quote(&common.schema);
    let mut v: Vec<Item> = compression::warning(&common.schema, &installed)
        .into_iter()
        .map(|(what, fix)| item(Status::Warn, what, fix))
        .collect();
    let what = match (&installed, compression::temp_unavailable(&setup)) {
        (Installed::Ready, _) => {
            format!("compressed chunks through the installed helper {q}.{}", crate::pg::sql_helper::NAME)
        }
        (_, None) => match crate::pg::sql_helper::zstd_usable(s)? {
            Ok(()) => "compressed chunks (zstd, the server's own libzstd) through a temporary helper (plpython3u, \
                       created per session)"
                .into(),
            Err(why) => format!(
                "compressed chunks (zlib; not zstd: {why}) through a temporary helper (plpython3u, created per session)"
            ),
        },
        (_, Some(why)) => format!("chunks will travel uncompressed: {why}"),
    };
    v.push(item(Status::Info, what, None));
    Ok(v)
}

const WAL_LEVEL_FIX: &str = "set wal_level = replica in postgresql.conf and restart the server";

fn version_item(support: Support, version: &str) -> Item {
    match support {
        Support::TooOld => {
            item(Status::Fail, format!("server version {version}: pgbb needs PostgreSQL 13 or later"), None)
        }
        Support::BestEffort => item(
            Status::Warn,
            format!("server version {version}: supported on a best-effort basis (14 to 18 are tested)"),
            None,
        ),
        Support::Untested => item(Status::Warn, format!("server version {version}: newer than pgbb knows (18)"), None),
        Support::Supported => item(Status::Ok, format!("server version {version}"), None),
    }
}

/// An identifier quoted for SQL, as in the fixes printed.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn privilege_items(s: &mut Session, info: &ServerInfo) -> Result<Vec<Item>, Error> {
    if info.superuser {
        return Ok(vec![item(Status::Ok, format!("role {} is a superuser", ident(&info.current_user)), None)]);
    }
    let wanted = info.caps.needed_functions();
    let missing = sql::missing_function_privileges(s, &wanted)?;
    Ok(wanted
        .into_iter()
        .map(|f| {
            if missing.iter().any(|m| m == f) {
                let fix = format!(
                    "GRANT EXECUTE ON FUNCTION {f} TO {}; (in database {})",
                    ident(&info.current_user),
                    ident(&info.database)
                );
                item(Status::Fail, format!("EXECUTE on {f}"), Some(fix))
            } else {
                item(Status::Ok, format!("EXECUTE on {f}"), None)
            }
        })
        .collect())
}

fn slot_item(s: &mut Session, info: &ServerInfo) -> Result<Item, Error> {
    let (max, used) = sql::slot_capacity(s)?;
    Ok(if info.wal_level == "minimal" {
        item(
            Status::Warn,
            "no replication slot can hold the backup's WAL: a slot needs wal_level = replica or logical",
            Some(WAL_LEVEL_FIX.into()),
        )
    } else if !(info.superuser || info.replication) {
        item(
            Status::Warn,
            "no REPLICATION attribute: no temporary slot will hold the backup's WAL (a long backup may fail if WAL is recycled)",
            Some(format!("ALTER ROLE {} REPLICATION;", ident(&info.current_user))),
        )
    } else if max <= used {
        item(
            Status::Warn,
            format!("no free replication slot (max_replication_slots = {max}, {used} in use)"),
            Some("raise max_replication_slots (restart needed)".into()),
        )
    } else {
        item(Status::Ok, "a temporary replication slot can hold the backup's WAL", None)
    })
}

fn tablespace_item(s: &mut Session) -> Result<Item, Error> {
    let external: Vec<String> = sql::tablespaces(s)?
        .into_iter()
        .filter(|(_, _, loc)| loc.is_absolute())
        .map(|(oid, name, loc)| format!("{name} (oid {oid}) at {}", loc.display()))
        .collect();
    Ok(if external.is_empty() {
        item(Status::Ok, "no tablespace outside the data directory", None)
    } else {
        item(
            Status::Fail,
            format!("tablespaces outside the data directory are not supported yet: {}", external.join(", ")),
            None,
        )
    })
}

/// Connections a backup with `jobs` workers uses: master, slot holder, WAL child, workers.
fn connections_needed(jobs: usize) -> i64 {
    jobs as i64 + 3
}

/// Whether the server, the role's CONNECTION LIMIT and the database's leave room for the
/// backup's connections (counting the sessions already open); one FAIL, with its fix, per
/// limit that does not.
fn connection_items(s: &mut Session, info: &ServerInfo, jobs: usize) -> Result<Vec<Item>, Error> {
    let room = sql::connection_room(s)?;
    let needed = connections_needed(jobs);
    let fewer = |free: i64| match free - 3 {
        n if n >= 1 => format!(", or use -j {n}"),
        _ => String::new(),
    };
    let mut v = Vec::new();
    if room.server < needed {
        v.push(item(
            Status::Fail,
            format!("a backup with -j {jobs} needs {needed} connections, {} are free", room.server),
            Some("use fewer jobs or raise max_connections".into()),
        ));
    }
    for (what, limit, free, alter) in [
        ("role", room.role_limit, room.role_free, format!("ROLE {}", ident(&info.current_user))),
        ("database", room.database_limit, room.database_free, format!("DATABASE {}", ident(&info.database))),
    ] {
        if let Some(limit) = limit.filter(|_| free < needed) {
            v.push(item(
                Status::Fail,
                format!(
                    "{what} CONNECTION LIMIT {limit} leaves {free} connection(s) free (other sessions count), \
                     a backup with -j {jobs} needs {needed}"
                ),
                Some(format!("ALTER {alter} CONNECTION LIMIT {};{}", limit + needed - free, fewer(free))),
            ));
        }
    }
    if v.is_empty() {
        v.push(item(Status::Ok, format!("{needed} connections for -j {jobs} ({} free)", room.free()), None));
    }
    Ok(v)
}

/// Prints the report; the exit code is 0 when nothing failed, 4 otherwise.
pub fn run(common: &Common, jobs: usize, incremental: Option<&Path>) -> Result<i32, Error> {
    let items = checks(common, jobs, incremental)?;
    let mut failed = 0;
    for i in &items {
        let tag = match i.status {
            Status::Ok => "ok  ",
            Status::Info => "info",
            Status::Warn => "warn",
            Status::Fail => {
                failed += 1;
                "FAIL"
            }
        };
        crate::outln!("{tag}  {}", i.what);
        if let Some(f) = &i.fix {
            crate::outln!("      fix: {f}");
        }
    }
    if failed == 0 {
        crate::outln!("pgbb --check: ready for a backup");
        Ok(exit::OK)
    } else {
        crate::outln!("pgbb --check: {failed} check(s) failed");
        Ok(exit::SERVER)
    }
}
