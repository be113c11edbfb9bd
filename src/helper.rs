//! `pgbb --install-helper DSN` and `pgbb --remove-helper DSN`: the opt-in, permanent
//! compression helper, installed by a superuser on the primary (it replicates to every
//! standby) so that roles that are not superusers, and backups from standbys, get zlib chunks.

use crate::cli::Common;
use crate::compression::{self, is_pgbb, Installed};
use crate::error::{exit, Error};
use crate::pg::sql_helper::{self, FunctionFacts, Setup};
use crate::pg::{sql, PgError, Session};

fn connect(common: &Common, what: &str) -> Result<(Session, Setup), Error> {
    let mut s = common.conn.connect("pgbb helper")?;
    let (caps, _) = sql::version(&mut s)?;
    sql::session_setup_for(&mut s, caps)?;
    let setup = sql_helper::setup(&mut s)?;
    if setup.in_recovery {
        return Err(PgError::Unsupported(format!(
            "{what}: the server is in recovery (a standby), which is read-only: run it on the primary; \
             the helper replicates from there to every standby"
        ))
        .into());
    }
    if !setup.superuser {
        return Err(PgError::Unsupported(format!(
            "{what}: role \"{}\" is not a superuser: a superuser must run it (only a superuser may create or drop \
             a plpython3u function)",
            setup.user
        ))
        .into());
    }
    Ok((s, setup))
}

/// The version in a helper's name (`read_zlib_v7` → 7).
fn version(name: &str) -> Option<u32> {
    name.strip_prefix("read_zlib_v")?.parse().ok()
}

/// `--install-helper`: creates `SCHEMA.read_zlib_v1` (and the schema if missing), replacing
/// pgbb's helpers of older versions; leaves an up-to-date one as it is. Refuses a schema or a
/// function of that name that a role other than a superuser controls.
pub fn install(common: &Common) -> Result<i32, Error> {
    let (mut s, setup) = connect(common, "--install-helper")?;
    if !setup.plpython {
        return Err(PgError::Unsupported(format!(
            "--install-helper: the language plpython3u is not installed in database \"{}\": as a superuser, run \
             CREATE EXTENSION plpython3u; in it (the server needs the package with PL/Python, e.g. \
             postgresql-plpython3-NN), then run pgbb --install-helper again",
            setup.database
        ))
        .into());
    }
    let schema = common.schema.as_str();
    let q = sql_helper::quote(schema);
    let (facts, functions) = sql_helper::inspect(&mut s, schema)?;
    if let Some(f) = &facts {
        if !f.owner_superuser || f.writable_by_others {
            return Err(PgError::Unsupported(format!(
                "--install-helper: schema {q} exists, and roles that are not superusers control it (owner \"{}\"{}): \
                 they could replace the helper; choose another --schema",
                f.owner,
                if f.writable_by_others { ", CREATE granted to others" } else { "" }
            ))
            .into());
        }
    }
    let current = functions.iter().find(|f| f.name == sql_helper::NAME);
    if let Some(f) = current.filter(|f| !is_pgbb(f)) {
        return Err(PgError::Unsupported(format!(
            "--install-helper: a function {} exists that pgbb did not install (owner \"{}\", language {}): drop it \
             or choose another --schema",
            f.identity, f.owner, f.language
        ))
        .into());
    }
    let state = compression::assess(schema, facts.as_ref(), &functions, &setup.user);
    if state == Installed::Ready {
        crate::outln!("pgbb: the helper {q}.{} is installed and up to date: nothing changed", sql_helper::NAME);
    } else {
        let replaced: Vec<&FunctionFacts> = functions
            .iter()
            .filter(|f| {
                is_pgbb(f) && (f.name == sql_helper::NAME || version(&f.name).is_some_and(|v| v < sql_helper::VERSION))
            })
            .collect();
        let ids: Vec<String> = replaced.iter().map(|f| f.identity.clone()).collect();
        sql_helper::install(&mut s, schema, facts.is_none(), &ids)?;
        // Checked as a backup will check it.
        if compression::look(&mut s, schema, &setup)? != Installed::Ready {
            return Err(PgError::Unsupported(format!(
                "the helper {q}.{} was installed but does not check out",
                sql_helper::NAME
            ))
            .into());
        }
        for f in &ids {
            crate::outln!("pgbb: replaced {f}");
        }
        crate::outln!(
            "pgbb: installed the compression helper {} (v{}) in database \"{}\"{}; it replicates to every standby",
            sql_helper::signature(schema),
            sql_helper::VERSION,
            setup.database,
            if facts.is_none() { format!(", in the new schema {q}") } else { String::new() }
        );
    }
    for f in functions.iter().filter(|f| is_pgbb(f) && version(&f.name).is_some_and(|v| v > sql_helper::VERSION)) {
        crate::outln!("pgbb: left {} (a newer pgbb's)", f.identity);
    }
    crate::outln!(
        "To let a backup role use it (here \"backup\"; as a superuser, in database \"{}\"):\n  {}\n\
         It reads files with the caller's rights: the role also needs what docs/privileges.md lists \
         (EXECUTE on pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) among them).",
        setup.database,
        compression::grants(schema, "backup").replace("; GRANT", ";\n  GRANT")
    );
    Ok(exit::OK)
}

/// `--remove-helper`: drops pgbb's helpers (every version) from the schema, and the schema if
/// `--install-helper` created it and nothing else is in it. Nothing installed: says so, exit 0.
pub fn remove(common: &Common) -> Result<i32, Error> {
    let (mut s, setup) = connect(common, "--remove-helper")?;
    let schema = common.schema.as_str();
    let q = sql_helper::quote(schema);
    let (facts, functions) = sql_helper::inspect(&mut s, schema)?;
    let ours: Vec<String> = functions.iter().filter(|f| is_pgbb(f)).map(|f| f.identity.clone()).collect();
    let schema_ours = facts.as_ref().is_some_and(|f| f.ours);
    for f in functions.iter().filter(|f| !is_pgbb(f)) {
        crate::outln!("pgbb: left {} alone: pgbb did not install it", f.identity);
    }
    if ours.is_empty() && !schema_ours {
        crate::outln!("pgbb: no pgbb helper in schema {q} of database \"{}\": nothing to remove", setup.database);
        return Ok(exit::OK);
    }
    let dropped = sql_helper::remove(&mut s, &ours, schema_ours.then_some(schema))?;
    for f in &ours {
        crate::outln!("pgbb: removed {f}");
    }
    if dropped {
        crate::outln!("pgbb: removed schema {q}");
    } else if schema_ours {
        crate::outln!("pgbb: kept schema {q}: other objects are in it");
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_names() {
        assert_eq!(version("read_zlib_v1"), Some(1));
        assert_eq!(version("read_zlib_v12"), Some(12));
        assert_eq!(version("read_zlib_vx"), None);
        assert_eq!(version("other"), None);
    }
}
