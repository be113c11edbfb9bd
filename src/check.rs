//! `pgbb --check DSN`: a preflight that checks everything a backup will need from the server
//! and the role, and prints what passes and how to fix what does not, without starting one.

use crate::cli::Common;
use crate::error::{exit, Error};
use crate::pg::caps::Support;
use crate::pg::sql;

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
pub fn checks(common: &Common, jobs: usize) -> Result<Vec<Item>, Error> {
    let mut s = common.conn.connect("pgbb check")?;
    let mut v = vec![item(Status::Ok, format!("connected to {}", common.conn.target()), None)];
    let (caps, version) = sql::version(&mut s)?;
    match caps.support() {
        Support::TooOld => {
            v.push(item(Status::Fail, format!("server version {version}: pgbb needs PostgreSQL 13 or later"), None));
            return Ok(v);
        }
        Support::BestEffort => v.push(item(
            Status::Warn,
            format!("server version {version}: supported on a best-effort basis (14 to 18 are tested)"),
            None,
        )),
        Support::Untested => {
            v.push(item(Status::Warn, format!("server version {version}: newer than pgbb knows (18)"), None))
        }
        Support::Supported => v.push(item(Status::Ok, format!("server version {version}"), None)),
    }
    sql::session_setup_for(&mut s, caps)?;
    let info = sql::server_info(&mut s, caps, version)?;
    if info.wal_level == "minimal" {
        v.push(item(
            Status::Fail,
            "wal_level = minimal",
            Some("set wal_level = replica in postgresql.conf and restart the server".into()),
        ));
    } else {
        v.push(item(Status::Ok, format!("wal_level = {}", info.wal_level), None));
    }
    if info.superuser {
        v.push(item(Status::Ok, format!("role \"{}\" is a superuser", info.current_user), None));
    } else {
        let missing = sql::missing_function_privileges(&mut s, &caps.needed_functions())?;
        for f in caps.needed_functions() {
            if missing.iter().any(|m| m == f) {
                v.push(item(
                    Status::Fail,
                    format!("EXECUTE on {f}"),
                    Some(format!(
                        "GRANT EXECUTE ON FUNCTION {f} TO \"{}\"; (in database \"{}\")",
                        info.current_user, info.database
                    )),
                ));
            } else {
                v.push(item(Status::Ok, format!("EXECUTE on {f}"), None));
            }
        }
    }
    let slots = sql::slot_capacity(&mut s)?;
    if !(info.superuser || info.replication) {
        v.push(item(
            Status::Warn,
            "no REPLICATION attribute: no temporary slot will hold the backup's WAL (a long backup may fail if WAL is recycled)",
            Some(format!("ALTER ROLE \"{}\" REPLICATION;", info.current_user)),
        ));
    } else if slots.0 <= slots.1 {
        v.push(item(
            Status::Warn,
            format!("no free replication slot (max_replication_slots = {}, {} in use)", slots.0, slots.1),
            Some("raise max_replication_slots (restart needed)".into()),
        ));
    } else {
        v.push(item(Status::Ok, "a temporary replication slot can hold the backup's WAL", None));
    }
    let external: Vec<String> = sql::tablespaces(&mut s)?
        .into_iter()
        .filter(|(_, _, loc)| loc.is_absolute())
        .map(|(oid, name, loc)| format!("{name} (oid {oid}) at {}", loc.display()))
        .collect();
    if external.is_empty() {
        v.push(item(Status::Ok, "no tablespace outside the data directory", None));
    } else {
        v.push(item(
            Status::Fail,
            format!("tablespaces outside the data directory are not supported yet: {}", external.join(", ")),
            None,
        ));
    }
    let (free, needed) = sql::connection_capacity(&mut s, jobs)?;
    if free < needed {
        v.push(item(
            Status::Fail,
            format!("a backup with -j {jobs} needs {needed} connections, {free} are free"),
            Some("use fewer jobs or raise max_connections".into()),
        ));
    } else {
        v.push(item(Status::Ok, format!("{needed} connections for -j {jobs} ({free} free)"), None));
    }
    match sql::compression_available(&mut s)? {
        Ok(()) => v.push(item(Status::Info, "compressed chunks available (plpython3u)", None)),
        Err(why) => v.push(item(Status::Info, format!("chunks will travel uncompressed: {why}"), None)),
    }
    if sql::data_checksums(&mut s)? {
        v.push(item(Status::Info, "data checksums on: pages are verified while copying", None));
    } else {
        v.push(item(Status::Info, "data checksums off: pages cannot be verified", None));
    }
    Ok(v)
}

/// Prints the report; the exit code is 0 when nothing failed, 4 otherwise.
pub fn run(common: &Common, jobs: usize) -> Result<i32, Error> {
    let items = checks(common, jobs)?;
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
