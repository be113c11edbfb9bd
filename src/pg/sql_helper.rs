//! The SQL of the permanent compression helper (`pgbb --install-helper`): its body, the
//! statements that install and remove it, and what the catalogs say about it. Every name is
//! schema-qualified; the schema is quoted wherever it appears.

use super::{PgError, Session};

/// The helper's version: in its name (`read_zlib_v1`) and its comment. A body that changes
/// takes the next number, so that a backup never calls a helper it does not know.
pub const VERSION: u32 = 1;
/// The function's name in its schema (unquoted: lower case letters, digits and `_`).
pub const NAME: &str = "read_zlib_v1";
/// Its argument types, as `GRANT … ON FUNCTION` and `DROP FUNCTION` name them.
pub const ARGS: &str = "bytea, bigint, integer, bigint, bigint";
/// The same, as `pg_proc.proargtypes` holds them (bytea, int8, int4, int8, int8).
const ARG_OIDS: &str = "17 20 23 20 20";
/// The start of every comment pgbb puts on a helper of any version: how pgbb knows its own.
pub const MARK: &str = "pgbb compression helper";
/// The comment on a schema `--install-helper` created (and `--remove-helper` may drop).
pub const SCHEMA_MARK: &str = "created by pgbb --install-helper";
/// The setting every version of the helper runs with.
pub const SEARCH_PATH: &str = "search_path=pg_catalog, pg_temp";

/// The helper's body: the temporary helper's reading ([`super::sql::CREATE_ZLIB_READER`]) as it
/// was when v1 was made, without the later switch to stored chunks for data that does not
/// compress (changing the body would make every installed v1 helper outdated), behind a
/// check that keeps `pg_read_binary_file`'s rules. It runs with the caller's rights
/// (SECURITY INVOKER), but Python opens files as the server's operating-system user, so it
/// first asks what the caller may read: EXECUTE on `pg_read_binary_file` always, and without
/// the privileges of `pg_read_server_files` only relative paths with no `..` (core allows
/// such a role the data directory only; absolute paths are refused outright, which is
/// narrower). No role may read through it what it could not read with `pg_read_binary_file`.
/// The checks and the open run when it is called (their errors are the statement's own);
/// the chunks come from a generator it returns.
pub const BODY: &str = r#"
import os, struct, zlib
plan = SD.get('rights')
if plan is None:
    plan = plpy.prepare("SELECT pg_catalog.has_function_privilege("
                        "'pg_catalog.pg_read_binary_file(pg_catalog.text, pg_catalog.int8, pg_catalog.int8, pg_catalog.bool)', "
                        "'EXECUTE') AS may_read, pg_catalog.pg_has_role('pg_read_server_files', 'USAGE') AS any_file")
    SD['rights'] = plan
rights = plpy.execute(plan)[0]
if not rights['may_read']:
    plpy.error('permission denied for function pg_read_binary_file', sqlstate='42501')
if not rights['any_file'] and (path.startswith(b'/') or b'..' in path.split(b'/')):
    plpy.error('path must be in or below the data directory', sqlstate='42501')
try:
    f = open(path, 'rb')
except FileNotFoundError:
    return []
def chunks(f):
    with f:
        st = os.fstat(f.fileno())
        size = st.st_size if want < 0 else max(0, min(want, st.st_size - off))
        yield struct.pack('>qq', size, int(st.st_mtime))
        if off > 0:
            f.seek(off)
        left = size
        while left > 0:
            b = f.read(min(chunk, left))
            if not b:
                break
            left -= len(b)
            yield zlib.compress(b, level)
return chunks(f)
"#;

/// `"schema"`: an identifier quoted for SQL.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `"schema".read_zlib_v1(bytea, …)`: the function as GRANT and DROP name it.
pub fn signature(schema: &str) -> String {
    format!("{}.{NAME}({ARGS})", quote(schema))
}

/// The comment on the installed function: its version and the SHA-256 of its body.
pub fn comment() -> String {
    use sha2::Digest;
    format!("{MARK} v{VERSION} (body sha256 {})", hex::encode(sha2::Sha256::digest(BODY.as_bytes())))
}

/// The call a backup streams a file through (see [`super::sql::READ_ZLIB`]): qualified, every
/// argument cast to its exact type, so that no other function of the name can be chosen.
pub fn read_call(schema: &str) -> String {
    format!(
        "SELECT {}.{NAME}($1::pg_catalog.bytea, $2::pg_catalog.int8, $3::pg_catalog.int4, \
         $4::pg_catalog.int8, $5::pg_catalog.int8)",
        quote(schema)
    )
}

/// The statements that install the helper in `schema`, as one implicit transaction: the
/// functions it replaces dropped (as [`FunctionFacts::identity`] names them), the schema when
/// it is missing (owned by the installing superuser, closed to PUBLIC), the
/// function closed to PUBLIC, and its comment.
pub fn install_sql(schema: &str, create_schema: bool, replaced: &[String]) -> String {
    let q = quote(schema);
    let mut sql: String = replaced.iter().map(|f| format!("DROP FUNCTION {f};\n")).collect();
    if create_schema {
        sql.push_str(&format!(
            "CREATE SCHEMA {q}; REVOKE ALL ON SCHEMA {q} FROM PUBLIC; COMMENT ON SCHEMA {q} IS '{SCHEMA_MARK}';\n"
        ));
    }
    sql.push_str(&format!(
        "CREATE FUNCTION {q}.{NAME}(path pg_catalog.bytea, chunk pg_catalog.int8, level pg_catalog.int4, \
                                    off pg_catalog.int8, want pg_catalog.int8) \
         RETURNS SETOF pg_catalog.bytea LANGUAGE plpython3u STRICT VOLATILE SECURITY INVOKER \
         SET search_path = pg_catalog, pg_temp AS $pgbb${BODY}$pgbb$;\n\
         REVOKE ALL ON FUNCTION {sig} FROM PUBLIC;\n\
         COMMENT ON FUNCTION {sig} IS '{comment}';",
        sig = signature(schema),
        comment = comment(),
    ));
    sql
}

/// Installs the helper: see [`install_sql`].
pub fn install(s: &mut Session, schema: &str, create_schema: bool, replaced: &[String]) -> Result<(), PgError> {
    s.execute(&install_sql(schema, create_schema, replaced), &[], "could not install the pgbb helper")
}

/// Whether this session may compress with the server's own libzstd (see
/// `sql::ZSTD_PROBE`; only asked where the temporary helper can be created): `Err` with the
/// server's reason when it may not (SQLSTATE 0A000, which only the probe's own checks
/// raise); any other error (a cancel, a timeout, a lost connection) is the call's.
pub fn zstd_usable(s: &mut Session) -> Result<Result<(), String>, PgError> {
    match s.execute(super::sql::ZSTD_PROBE, &[], "could not ask for the server's zstd") {
        Ok(()) => Ok(Ok(())),
        Err(PgError::Query { message, code: Some(c), .. }) if c == super::SqlState::FEATURE_NOT_SUPPORTED => {
            // PL/Python names the exception before the words.
            Ok(Err(message.strip_prefix("plpy.Error: ").unwrap_or(&message).to_string()))
        }
        Err(e) => Err(e),
    }
}

/// Who runs pgbb, and where.
#[derive(Debug, Clone)]
pub struct Setup {
    pub in_recovery: bool,
    pub superuser: bool,
    pub plpython: bool,
    pub user: String,
    pub database: String,
}

pub fn setup(s: &mut Session) -> Result<Setup, PgError> {
    let r = s.query_one(
        "SELECT pg_catalog.pg_is_in_recovery(), \
                (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), \
                EXISTS (SELECT 1 FROM pg_catalog.pg_language WHERE lanname = 'plpython3u'), \
                current_user::pg_catalog.text, pg_catalog.current_database()::pg_catalog.text",
        &[],
        "could not read the role and the server's state",
    )?;
    Ok(Setup { in_recovery: r.get(0), superuser: r.get(1), plpython: r.get(2), user: r.get(3), database: r.get(4) })
}

/// A schema named by `--schema`, as the catalogs see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaFacts {
    pub owner: String,
    pub owner_superuser: bool,
    /// Roles other than superusers (PUBLIC included) that may create objects in it.
    pub writable_by_others: bool,
    /// This session's role may look up objects in it.
    pub usage: bool,
    /// `--install-helper` created it.
    pub ours: bool,
}

/// A function of the helper's family (`read_zlib_v…`) in that schema.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FunctionFacts {
    pub name: String,
    /// As DROP FUNCTION names it (`regprocedure`, schema-qualified on pgbb's search_path).
    pub identity: String,
    pub owner: String,
    pub owner_superuser: bool,
    pub language: String,
    pub security_definer: bool,
    pub strict: bool,
    /// The argument and result types are the helper's (SETOF bytea).
    pub signature_matches: bool,
    /// Its settings are exactly [`SEARCH_PATH`].
    pub config_matches: bool,
    /// Its body is this pgbb's [`BODY`].
    pub body_matches: bool,
    pub comment: Option<String>,
    /// This session's role may call it.
    pub execute: bool,
}

/// The schema (`None` if there is none of that name) and its helper family.
pub fn inspect(s: &mut Session, schema: &str) -> Result<(Option<SchemaFacts>, Vec<FunctionFacts>), PgError> {
    const WHAT: &str = "could not look for the pgbb helper";
    let rows = s.query(
        "SELECT pg_catalog.pg_get_userbyid(n.nspowner)::pg_catalog.text, \
                coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = n.nspowner), false), \
                EXISTS (SELECT 1 FROM pg_catalog.aclexplode(n.nspacl) a \
                         WHERE a.privilege_type = 'CREATE' AND a.grantee <> n.nspowner \
                           AND NOT coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = a.grantee), false)), \
                pg_catalog.has_schema_privilege(n.oid, 'USAGE'), \
                coalesce(pg_catalog.obj_description(n.oid, 'pg_namespace') = $2, false) \
           FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
        &[&schema, &SCHEMA_MARK],
        WHAT,
    )?;
    let Some(r) = rows.first() else { return Ok((None, Vec::new())) };
    let facts = SchemaFacts {
        owner: r.get(0),
        owner_superuser: r.get(1),
        writable_by_others: r.get(2),
        usage: r.get(3),
        ours: r.get(4),
    };
    let rows = s.query(
        "SELECT p.proname::pg_catalog.text, p.oid::pg_catalog.regprocedure::pg_catalog.text, \
                pg_catalog.pg_get_userbyid(p.proowner)::pg_catalog.text, \
                coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = p.proowner), false), \
                l.lanname::pg_catalog.text, p.prosecdef, p.proisstrict, \
                p.proargtypes = $2::pg_catalog.text::pg_catalog.oidvector AND p.prorettype = 'pg_catalog.bytea'::pg_catalog.regtype \
                    AND p.proretset AND p.prokind = 'f' AND p.pronargdefaults = 0, \
                coalesce(p.proconfig = ARRAY[$3::pg_catalog.text], false), p.prosrc = $4, \
                pg_catalog.obj_description(p.oid, 'pg_proc'), pg_catalog.has_function_privilege(p.oid, 'EXECUTE') \
           FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
          WHERE n.nspname = $1 AND p.proname::pg_catalog.text LIKE 'read\\_zlib\\_v%' ORDER BY p.proname, p.oid",
        &[&schema, &ARG_OIDS, &SEARCH_PATH, &BODY],
        WHAT,
    )?;
    let functions = rows
        .iter()
        .map(|r| FunctionFacts {
            name: r.get(0),
            identity: r.get(1),
            owner: r.get(2),
            owner_superuser: r.get(3),
            language: r.get(4),
            security_definer: r.get(5),
            strict: r.get(6),
            signature_matches: r.get(7),
            config_matches: r.get(8),
            body_matches: r.get(9),
            comment: r.get(10),
            execute: r.get(11),
        })
        .collect();
    Ok((Some(facts), functions))
}

/// Drops the functions named (as [`FunctionFacts::identity`] gives them), and the schema too
/// when `schema` is given and nothing is left in it, as one implicit transaction. Returns
/// whether the schema was dropped.
pub fn remove(s: &mut Session, identities: &[String], schema: Option<&str>) -> Result<bool, PgError> {
    let mut sql: String = identities.iter().map(|f| format!("DROP FUNCTION {f};\n")).collect();
    if let Some(schema) = schema {
        // Dropped only when empty: DROP SCHEMA … RESTRICT would fail on anything left, so the
        // check is done first, in the same transaction, and the drop skipped.
        sql.push_str(&format!(
            "DO $pgbb$ BEGIN \
               IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_namespace n ON n.oid = d.refobjid \
                               WHERE d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND n.nspname = {lit}) \
               THEN DROP SCHEMA {q} RESTRICT; END IF; END $pgbb$;",
            lit = literal(schema),
            q = quote(schema)
        ));
    }
    s.execute(&sql, &[], "could not remove the pgbb helper")?;
    match schema {
        Some(schema) => {
            let r = s.query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                &[&schema],
                "could not look for the pgbb helper's schema",
            )?;
            Ok(r.get(0))
        }
        None => Ok(false),
    }
}

/// A string literal for SQL (standard_conforming_strings is on in every pgbb session).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_qualified() {
        assert_eq!(quote("pg\"bb"), "\"pg\"\"bb\"");
        assert_eq!(signature("pgbb"), "\"pgbb\".read_zlib_v1(bytea, bigint, integer, bigint, bigint)");
        assert!(read_call("s").starts_with("SELECT \"s\".read_zlib_v1($1::pg_catalog.bytea,"));
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn the_install_is_safe_by_construction() {
        let sql = install_sql("pgbb", true, &[]);
        assert!(sql.contains("SECURITY INVOKER") && sql.contains("SET search_path = pg_catalog, pg_temp"));
        assert!(sql.contains("REVOKE ALL ON SCHEMA \"pgbb\" FROM PUBLIC"));
        assert!(sql.contains("REVOKE ALL ON FUNCTION \"pgbb\".read_zlib_v1(bytea, bigint, integer, bigint, bigint)"));
        assert!(!install_sql("pgbb", false, &[]).contains("CREATE SCHEMA"));
        assert!(install_sql("pgbb", false, &["pgbb.read_zlib_v0(bytea)".into()])
            .starts_with("DROP FUNCTION pgbb.read_zlib_v0(bytea);"));
        assert!(comment().starts_with("pgbb compression helper v1 (body sha256 "));
        assert!(NAME.ends_with(&format!("_v{VERSION}")));
        assert!(!BODY.contains("$pgbb$"));
    }
}
