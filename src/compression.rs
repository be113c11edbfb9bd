//! How chunks travel — plain, through the installed helper (`pgbb --install-helper`), or
//! through a temporary one — the one decision the master, a worker run by hand and `--check`
//! share; the master's children are told it.

use crate::cli::Compress;
use crate::error::Error;
use crate::pg::sql_helper::{self, FunctionFacts, SchemaFacts, Setup};
use crate::pg::{sql, PgError, Session};
use crate::transfer::{Method, ZlibHelper};

/// What is installed in the schema a backup looks in, for this role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// This pgbb's helper, safe, and the role may call it.
    Ready,
    /// This pgbb's helper, safe, but the role may not call it: the GRANTs that fix it.
    NoRights(String),
    /// pgbb's helpers of other versions only (their names).
    Outdated(Vec<String>),
    /// Something of the helper's name that must never be called, and why.
    Untrusted(String),
    Absent,
}

/// Whether a function carries pgbb's mark and could be pgbb's (a superuser's plpython3u
/// function): the only ones `--install-helper` replaces and `--remove-helper` drops.
pub fn is_pgbb(f: &FunctionFacts) -> bool {
    f.comment.as_deref().is_some_and(|c| c.starts_with(sql_helper::MARK))
        && f.owner_superuser
        && f.language == "plpython3u"
}

/// The GRANTs that let `role` call the helper in `schema`.
pub fn grants(schema: &str, role: &str) -> String {
    format!(
        "GRANT USAGE ON SCHEMA {q} TO {r}; GRANT EXECUTE ON FUNCTION {sig} TO {r};",
        q = sql_helper::quote(schema),
        sig = sql_helper::signature(schema),
        r = sql_helper::quote(role)
    )
}

/// Why the current version's function in `schema` is not the helper pgbb installs (empty
/// when it is).
fn doubts(schema: &SchemaFacts, f: &FunctionFacts) -> Vec<String> {
    let mut why = Vec::new();
    if !schema.owner_superuser {
        why.push(format!("its schema belongs to role \"{}\", who is not a superuser", schema.owner));
    }
    if schema.writable_by_others {
        why.push("roles that are not superusers may create objects in its schema".into());
    }
    if !f.owner_superuser {
        why.push(format!("it belongs to role \"{}\", who is not a superuser", f.owner));
    }
    if f.security_definer {
        why.push("it is SECURITY DEFINER".into());
    }
    let shape = f.language == "plpython3u" && f.signature_matches && f.strict && f.config_matches;
    if !shape {
        why.push("its language, arguments or settings differ".into());
    }
    if !f.body_matches {
        why.push("its body is not this pgbb's".into());
    }
    if !f.comment.as_deref().is_some_and(|c| c.starts_with(sql_helper::MARK)) {
        why.push("pgbb's comment is missing".into());
    }
    why
}

/// What the catalogs say about the helper in `schema`, for a session of role `user`.
pub fn assess(schema: &str, facts: Option<&SchemaFacts>, functions: &[FunctionFacts], user: &str) -> Installed {
    let Some(facts) = facts else { return Installed::Absent };
    let qualified = format!("{}.{}", sql_helper::quote(schema), sql_helper::NAME);
    if let Some(f) = functions.iter().find(|f| f.name == sql_helper::NAME) {
        let why = doubts(facts, f);
        if !why.is_empty() {
            return Installed::Untrusted(format!(
                "{qualified} is not the helper pgbb installs ({}): it is never called",
                why.join("; ")
            ));
        }
        if !(facts.usage && f.execute) {
            return Installed::NoRights(grants(schema, user));
        }
        return Installed::Ready;
    }
    let others: Vec<String> = functions.iter().filter(|f| is_pgbb(f)).map(|f| f.name.clone()).collect();
    if others.is_empty() {
        Installed::Absent
    } else {
        Installed::Outdated(others)
    }
}

/// Reads and assesses the helper in `schema` for this session's role.
pub fn look(s: &mut Session, schema: &str, setup: &Setup) -> Result<Installed, PgError> {
    let (facts, functions) = sql_helper::inspect(s, schema)?;
    Ok(assess(schema, facts.as_ref(), &functions, &setup.user))
}

/// Why the temporary helper cannot be created in this session, if it cannot.
pub fn temp_unavailable(setup: &Setup) -> Option<String> {
    if setup.in_recovery {
        Some(sql::READ_ONLY_NO_COMPRESSION.into())
    } else if !setup.plpython {
        Some("the language plpython3u is not installed in this database".into())
    } else if !setup.superuser {
        Some("only a superuser may create a plpython3u function, and no pgbb helper is installed for this role".into())
    } else {
        None
    }
}

/// The decision, what to log about it (info), and what to warn of.
#[derive(Debug, Clone)]
pub struct Choice {
    pub method: Method,
    pub helper: ZlibHelper,
    pub said: String,
    pub warnings: Vec<(String, Option<String>)>,
}

fn upgrade_hint(schema: &str) -> String {
    format!(
        "as a superuser, on the primary, run `pgbb --install-helper DSN --schema {schema}` of this pgbb \
         (it replaces the old version; then grant EXECUTE on the new function to the backup role)"
    )
}

/// A warning for what is installed but not usable.
pub fn warning(schema: &str, installed: &Installed) -> Option<(String, Option<String>)> {
    let q = sql_helper::quote(schema);
    match installed {
        Installed::Ready | Installed::Absent => None,
        Installed::NoRights(g) => Some((
            format!("the pgbb helper {q}.{} is installed, but this role may not call it", sql_helper::NAME),
            Some(g.clone()),
        )),
        Installed::Outdated(found) => Some((
            format!(
                "the pgbb helper in schema {q} is another version ({}); this pgbb uses {}: it is not used",
                found.join(", "),
                sql_helper::NAME
            ),
            Some(upgrade_hint(schema)),
        )),
        Installed::Untrusted(why) => Some((why.clone(), None)),
    }
}

/// How chunks travel for compression `c` to a server (`local`: on this machine), looking for
/// the installed helper in `schema`. `--compress zlib` fails (exit 4) when no helper can be
/// used, and when the installed one is of another version; `auto` falls back to plain.
pub fn choose(s: &mut Session, c: Compress, local: bool, schema: &str) -> Result<Choice, Error> {
    let (level, forced) = match c {
        Compress::Fixed(Method::Plain) => {
            return Ok(plain("chunks travel uncompressed (--compress=none)".into(), Vec::new()));
        }
        Compress::Fixed(Method::Zstd(l)) => return choose_zstd(s, l),
        Compress::Fixed(Method::Zlib(l)) => (l, true),
        Compress::Auto(l) => (l, false),
    };
    let setup = sql_helper::setup(s)?;
    let installed = look(s, schema, &setup)?;
    let warnings: Vec<_> = warning(schema, &installed).into_iter().collect();
    let zlib = Method::Zlib(level);
    // Measured on loopback (docs/benchmarks.md): zlib costs the server more CPU than it
    // saves, so a server on this machine gets plain chunks unless zlib is asked for.
    if local && !forced {
        return Ok(plain(
            "chunks travel uncompressed (the server is on this machine; --compress zlib forces it)".into(),
            warnings,
        ));
    }
    let q = sql_helper::quote(schema);
    if installed == Installed::Ready {
        let said = format!("chunks travel compressed ({zlib}) through the installed helper {q}.{}", sql_helper::NAME);
        return Ok(Choice { method: zlib, helper: ZlibHelper::Installed(schema.into()), said, warnings });
    }
    if forced {
        match &installed {
            Installed::Outdated(_) => {
                let (what, fix) = warning(schema, &installed).unwrap_or_default();
                return Err(
                    PgError::Unsupported(format!("--compress zlib: {what}; {}", fix.unwrap_or_default())).into()
                );
            }
            Installed::NoRights(g) if temp_unavailable(&setup).is_some() => {
                let grants = format!("  {}", g.replace("; ", ";\n  "));
                return Err(PgError::Privileges { role: setup.user, db: setup.database, grants }.into());
            }
            _ => {}
        }
    }
    match temp_unavailable(&setup) {
        None => temp(s, level, forced, warnings),
        // What made the installed helper unusable belongs to the reason.
        Some(why) if forced => {
            let why = match &installed {
                Installed::Untrusted(u) => format!("{why} ({u})"),
                _ => why,
            };
            Err(if setup.in_recovery {
                PgError::Unsupported(format!("--compress zlib: {why}"))
            } else {
                PgError::Compression(why)
            }
            .into())
        }
        Some(_) if setup.in_recovery => Ok(plain(
            format!(
                "chunks travel uncompressed (the server is in recovery: a standby cannot hold the temporary \
                 compression helper, and no usable pgbb helper is installed in schema {q}; see pgbb --install-helper)"
            ),
            warnings,
        )),
        Some(why) => Ok(plain(format!("chunks travel uncompressed: {why}"), warnings)),
    }
}

/// Through a temporary helper: zlib if forced; for auto the server's own zstd where it has
/// one (about twice zlib's speed at a better ratio, docs/benchmarks.md), else zlib.
fn temp(s: &mut Session, level: u32, forced: bool, warnings: Vec<(String, Option<String>)>) -> Result<Choice, Error> {
    let zlib = Method::Zlib(level);
    let (method, why) = match forced {
        true => (zlib, String::new()),
        false => match sql_helper::zstd_usable(s)? {
            Ok(()) => (Method::Zstd(level.max(1)), String::new()),
            Err(e) => (zlib, format!("; not zstd: {e}")),
        },
    };
    let said = format!(
        "chunks travel compressed ({method}) through a temporary helper (pg_temp, gone with each session){why}"
    );
    Ok(Choice { method, helper: ZlibHelper::Temp, said, warnings })
}

/// `--compress zstd`: the temporary helper with the server's own libzstd, or an error that
/// says why not (the installed helper deflates only).
fn choose_zstd(s: &mut Session, level: u32) -> Result<Choice, Error> {
    let setup = sql_helper::setup(s)?;
    if setup.in_recovery {
        let what = "--compress zstd: the server is in recovery (a standby), which is read-only: the temporary \
                    helper zstd needs cannot be created there (the installed helper deflates only); use --compress \
                    zlib with an installed helper (pgbb --install-helper), or auto";
        return Err(PgError::Unsupported(what.into()).into());
    }
    if let Some(why) = temp_unavailable(&setup) {
        let what = format!("--compress zstd needs the temporary helper, and {why}; use --compress zlib or auto");
        return Err(PgError::Unsupported(what).into());
    }
    if let Err(why) = sql_helper::zstd_usable(s)? {
        let what = format!("--compress zstd: {why}; use --compress zlib or auto");
        return Err(PgError::Unsupported(what).into());
    }
    let method = Method::Zstd(level);
    let said =
        format!("chunks travel compressed ({method}) through a temporary helper (pg_temp, gone with each session)");
    Ok(Choice { method, helper: ZlibHelper::Temp, said, warnings: Vec::new() })
}

fn plain(said: String, warnings: Vec<(String, Option<String>)>) -> Choice {
    Choice { method: Method::Plain, helper: ZlibHelper::Temp, said, warnings }
}

/// A child told to use the installed helper checks that it is still the one the master
/// found: never anything else of its name.
pub fn confirm_installed(s: &mut Session, schema: &str) -> Result<(), Error> {
    let setup = sql_helper::setup(s)?;
    match look(s, schema, &setup)? {
        Installed::Ready => Ok(()),
        other => {
            let what = warning(schema, &other).map_or_else(
                || format!("no pgbb helper is installed in schema {}", sql_helper::quote(schema)),
                |(w, _)| w,
            );
            Err(PgError::Unsupported(format!("the installed compression helper cannot be used: {what}")).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> SchemaFacts {
        SchemaFacts {
            owner: "postgres".into(),
            owner_superuser: true,
            writable_by_others: false,
            usage: true,
            ours: true,
        }
    }

    fn helper() -> FunctionFacts {
        FunctionFacts {
            name: sql_helper::NAME.into(),
            identity: "pgbb.read_zlib_v1(bytea,bigint,integer,bigint,bigint)".into(),
            owner: "postgres".into(),
            owner_superuser: true,
            language: "plpython3u".into(),
            security_definer: false,
            strict: true,
            signature_matches: true,
            config_matches: true,
            body_matches: true,
            comment: Some(sql_helper::comment()),
            execute: true,
        }
    }

    #[test]
    fn only_pgbbs_own_helper_is_ready() {
        let s = schema();
        assert_eq!(assess("pgbb", None, &[], "b"), Installed::Absent);
        assert_eq!(assess("pgbb", Some(&s), &[], "b"), Installed::Absent);
        assert_eq!(assess("pgbb", Some(&s), &[helper()], "b"), Installed::Ready);
        let no_exec = FunctionFacts { execute: false, ..helper() };
        let Installed::NoRights(g) = assess("pgbb", Some(&s), &[no_exec], "backup") else { panic!() };
        assert!(g.contains("GRANT USAGE ON SCHEMA \"pgbb\" TO \"backup\""), "{g}");
        let unsafe_variants = [
            FunctionFacts { security_definer: true, ..helper() },
            FunctionFacts { owner_superuser: false, owner: "mallory".into(), ..helper() },
            FunctionFacts { body_matches: false, ..helper() },
            FunctionFacts { config_matches: false, ..helper() },
            FunctionFacts { language: "plpgsql".into(), ..helper() },
            FunctionFacts { comment: None, ..helper() },
        ];
        for f in unsafe_variants {
            assert!(
                matches!(assess("pgbb", Some(&s), std::slice::from_ref(&f), "b"), Installed::Untrusted(_)),
                "{f:?}"
            );
        }
        for s in
            [SchemaFacts { owner_superuser: false, ..schema() }, SchemaFacts { writable_by_others: true, ..schema() }]
        {
            assert!(matches!(assess("pgbb", Some(&s), &[helper()], "b"), Installed::Untrusted(_)), "{s:?}");
        }
    }

    #[test]
    fn other_versions_are_outdated_and_foreign_ones_ignored() {
        let s = schema();
        let v0 = FunctionFacts { name: "read_zlib_v0".into(), body_matches: false, ..helper() };
        assert_eq!(
            assess("pgbb", Some(&s), std::slice::from_ref(&v0), "b"),
            Installed::Outdated(vec!["read_zlib_v0".into()])
        );
        let foreign = FunctionFacts { comment: None, ..v0.clone() };
        assert_eq!(assess("pgbb", Some(&s), &[foreign], "b"), Installed::Absent);
        assert_eq!(assess("pgbb", Some(&s), &[v0, helper()], "b"), Installed::Ready);
    }

    #[test]
    fn the_temporary_helper_needs_a_writable_server_plpython_and_a_superuser() {
        let ok = Setup { in_recovery: false, superuser: true, plpython: true, user: "u".into(), database: "d".into() };
        assert_eq!(temp_unavailable(&ok), None);
        assert!(temp_unavailable(&Setup { in_recovery: true, ..ok.clone() }).unwrap().contains("--install-helper"));
        assert!(temp_unavailable(&Setup { plpython: false, ..ok.clone() }).unwrap().contains("plpython3u"));
        assert!(temp_unavailable(&Setup { superuser: false, ..ok }).unwrap().contains("superuser"));
    }
}
