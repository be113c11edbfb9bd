//! Hostile database users (the CVE-2018-1058 class): look-alikes of every function, operator,
//! type and catalog view pgbb uses, planted in schema `public` and put ahead of `pg_catalog`
//! through the database's and the backup role's `search_path`. Whatever pgbb runs — a backup
//! (plain and zlib, with its workers, WAL child and slot session), `--check`, `--clean`, the
//! standalone `-x` loop — none of them may ever be called.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

/// Every look-alike records its calls here (as the role that called it). Bodies are not
/// checked: the originals of another major version's look-alikes do not exist.
const LOG: &str = "
SET check_function_bodies = off;
CREATE TABLE public.calls (fn pg_catalog.text, by_role pg_catalog.text DEFAULT CURRENT_USER);
GRANT INSERT, SELECT ON public.calls TO PUBLIC;
CREATE FUNCTION public.hit(pg_catalog.text) RETURNS boolean LANGUAGE sql SET search_path = pg_catalog
    AS $$ INSERT INTO public.calls(fn) VALUES ($1); SELECT true $$;";

/// (name, arguments, result, the real call): one look-alike each, with the signature of the
/// original, that logs and then does what the original does.
const FUNCTIONS: &[(&str, &str, &str, &str)] = &[
    ("current_setting", "a text", "text", "pg_catalog.current_setting(a)"),
    ("current_database", "", "name", "pg_catalog.current_database()"),
    ("pg_is_in_recovery", "", "boolean", "pg_catalog.pg_is_in_recovery()"),
    ("has_function_privilege", "a text, b text", "boolean", "pg_catalog.has_function_privilege(a, b)"),
    ("pg_tablespace_location", "a oid", "text", "pg_catalog.pg_tablespace_location(a)"),
    ("textsend", "a text", "bytea", "pg_catalog.textsend(a)"),
    ("decode", "a text, b text", "bytea", "pg_catalog.decode(a, b)"),
    ("replace", "a text, b text, c text", "text", "pg_catalog.replace(a, b, c)"),
    ("convert_from", "a bytea, b name", "text", "pg_catalog.convert_from(a, b)"),
    ("substring", "a text, b text", "text", "pg_catalog.substring(a, b)"),
    ("set_config", "a text, b text, c boolean", "text", "pg_catalog.set_config(a, b, c)"),
    ("pg_backend_pid", "", "integer", "pg_catalog.pg_backend_pid()"),
    ("pg_try_advisory_lock", "a integer, b integer", "boolean", "pg_catalog.pg_try_advisory_lock(a, b)"),
    ("pg_terminate_backend", "a integer, b bigint DEFAULT 0", "boolean", "pg_catalog.pg_terminate_backend(a, b)"),
    ("pg_current_wal_lsn", "", "pg_lsn", "pg_catalog.pg_current_wal_lsn()"),
    ("pg_last_wal_receive_lsn", "", "pg_lsn", "pg_catalog.pg_last_wal_receive_lsn()"),
    ("pg_last_wal_replay_lsn", "", "pg_lsn", "pg_catalog.pg_last_wal_replay_lsn()"),
    ("pg_backup_start", "a text, b boolean DEFAULT false", "pg_lsn", "pg_catalog.pg_backup_start(a, b)"),
    (
        "pg_start_backup",
        "a text, b boolean DEFAULT false, c boolean DEFAULT true",
        "pg_lsn",
        "pg_catalog.pg_start_backup(a, b, c)",
    ),
    ("pg_drop_replication_slot", "a name", "void", "pg_catalog.pg_drop_replication_slot(a)"),
    (
        "pg_read_binary_file",
        "a text, b bigint, c bigint, d boolean",
        "bytea",
        "pg_catalog.pg_read_binary_file(a, b, c, d)",
    ),
    ("pg_ls_dir", "a text, b boolean, c boolean", "SETOF text", "pg_catalog.pg_ls_dir(a, b, c)"),
    ("generate_series", "a bigint, b bigint, c bigint", "SETOF bigint", "pg_catalog.generate_series(a, b, c)"),
    ("unnest", "a anyarray", "SETOF anyelement", "pg_catalog.unnest(a)"),
];

/// Look-alikes whose result is a row: (name, arguments with OUT columns, the real call).
const ROW_FUNCTIONS: &[(&str, &str, &str)] = &[
    (
        "pg_stat_file",
        "a text, b boolean, OUT size bigint, OUT access timestamptz, OUT modification timestamptz, \
         OUT change timestamptz, OUT creation timestamptz, OUT isdir boolean",
        "pg_catalog.pg_stat_file(a, b)",
    ),
    (
        "pg_backup_stop",
        "a boolean DEFAULT true, OUT lsn pg_lsn, OUT labelfile text, OUT spcmapfile text",
        "pg_catalog.pg_backup_stop(a)",
    ),
    (
        "pg_stop_backup",
        "a boolean, b boolean DEFAULT true, OUT lsn pg_lsn, OUT labelfile text, OUT spcmapfile text",
        "pg_catalog.pg_stop_backup(a, b)",
    ),
    ("pg_control_checkpoint", "OUT timeline_id integer, OUT redo_wal_file text", "pg_catalog.pg_control_checkpoint()"),
    (
        "pg_control_system",
        "OUT catalog_version_no integer, OUT system_identifier bigint",
        "pg_catalog.pg_control_system()",
    ),
    (
        "pg_create_physical_replication_slot",
        "a name, b boolean DEFAULT false, c boolean DEFAULT false, OUT slot_name name, OUT lsn pg_lsn",
        "pg_catalog.pg_create_physical_replication_slot(a, b, c)",
    ),
    (
        "pg_replication_slot_advance",
        "a name, b pg_lsn, OUT slot_name name, OUT end_lsn pg_lsn",
        "pg_catalog.pg_replication_slot_advance(a, b)",
    ),
];

/// Operators on built-in types: (operator, left, right, the real function).
const OPERATORS: &[(&str, &str, &str, &str)] = &[
    ("||", "text", "text", "textcat"),
    ("=", "text", "text", "texteq"),
    ("<>", "text", "text", "textne"),
    ("=", "name", "name", "nameeq"),
    ("=", "bytea", "bytea", "byteaeq"),
    ("-", "bigint", "bigint", "int8mi"),
    ("+", "bigint", "bigint", "int8pl"),
    ("~~", "text", "text", "textlike"),
    ("~~", "name", "text", "namelike"),
];

/// Catalog views and tables pgbb reads.
const RELATIONS: &[&str] = &[
    "pg_settings",
    "pg_roles",
    "pg_stat_activity",
    "pg_replication_slots",
    "pg_tablespace",
    "pg_language",
    "pg_locks",
    "pg_database",
];

/// The statements that plant every look-alike (run in the target database as a superuser).
fn plant_sql() -> String {
    let mut sql = String::from(LOG);
    for (name, args, ret, call) in FUNCTIONS {
        sql.push_str(&format!(
            "\nCREATE FUNCTION public.{name}({args}) RETURNS {ret} LANGUAGE sql SET search_path = pg_catalog \
             AS $$ SELECT public.hit('{name}'); SELECT {call} $$;"
        ));
    }
    for (name, args, call) in ROW_FUNCTIONS {
        let outs: Vec<&str> =
            args.split(", ").filter_map(|a| a.strip_prefix("OUT ")).map(|a| a.split(' ').next().unwrap()).collect();
        sql.push_str(&format!(
            "\nCREATE FUNCTION public.{name}({args}) LANGUAGE sql SET search_path = pg_catalog \
             AS $$ SELECT public.hit('{name}'); SELECT {} FROM {call} $$;",
            outs.join(", ")
        ));
    }
    for (i, (op, l, r, f)) in OPERATORS.iter().enumerate() {
        sql.push_str(&format!(
            "\nCREATE FUNCTION public.op{i}(a {l}, b {r}) RETURNS {ret} LANGUAGE sql SET search_path = pg_catalog \
             AS $$ SELECT public.hit('operator {op}({l},{r})'); SELECT pg_catalog.{f}(a, b) $$;\
             \nCREATE OPERATOR public.{op} (leftarg = {l}, rightarg = {r}, function = public.op{i});",
            ret = if ["||", "-", "+"].contains(op) { *l } else { "boolean" },
        ));
    }
    // count(*) is an aggregate.
    sql.push_str(
        "\nCREATE FUNCTION public.count_step(bigint) RETURNS bigint LANGUAGE sql SET search_path = pg_catalog \
         AS $$ SELECT public.hit('count'); SELECT $1 + 1 $$;\
         \nCREATE AGGREGATE public.count(*) (sfunc = public.count_step, stype = bigint, initcond = '0');",
    );
    for rel in RELATIONS {
        sql.push_str(&format!(
            "\nCREATE VIEW public.{rel} AS SELECT * FROM pg_catalog.{rel} WHERE public.hit('{rel}'); \
             GRANT SELECT ON public.{rel} TO PUBLIC;"
        ));
    }
    // Types: a domain is found by an unqualified cast, and its check calls a function.
    for t in ["text", "pg_lsn", "bytea", "name"] {
        sql.push_str(&format!("\nCREATE DOMAIN public.{t} AS pg_catalog.{t} CHECK (public.hit('type {t}'));"));
    }
    sql
}

/// The roles: `sbackup` a superuser, `lbackup` the least-privileged role of docs/privileges.md
/// (with the grants of [`GRANTS`] in the database it backs up).
const ROLES: &str = "CREATE ROLE sbackup LOGIN SUPERUSER; CREATE ROLE lbackup LOGIN REPLICATION";
const GRANTS: &str = "
GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean),
                          pg_catalog.pg_stat_file(text, boolean),
                          pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO lbackup;
DO $$ BEGIN
  IF current_setting('server_version_num')::int >= 150000 THEN
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_backup_start(text, boolean), pg_catalog.pg_backup_stop(boolean)
       TO lbackup;
  ELSE
    GRANT EXECUTE ON FUNCTION pg_catalog.pg_start_backup(text, boolean, boolean),
                              pg_catalog.pg_stop_backup(boolean, boolean) TO lbackup;
  END IF;
END $$;";

/// A session on the hostile database that itself resolves everything in pg_catalog first.
fn safe_client(c: &Cluster) -> postgres::Client {
    let mut cl = c.client_db("hostile");
    cl.batch_execute("SET search_path = pg_catalog, public").unwrap();
    cl
}

/// The look-alikes called so far, with who called them, and the log emptied.
fn take_calls(c: &Cluster) -> Vec<String> {
    let mut cl = safe_client(c);
    let rows = cl
        .query("SELECT fn || ' (by ' || by_role || ')', count(*) FROM public.calls GROUP BY 1 ORDER BY 1", &[])
        .unwrap();
    cl.batch_execute("TRUNCATE public.calls").unwrap();
    rows.iter().map(|r| format!("{} x{}", r.get::<_, String>(0), r.get::<_, i64>(1))).collect()
}

fn hostile_cluster() -> Cluster {
    let c = Cluster::new();
    c.pgbench_init(1);
    let mut cl = c.client();
    cl.batch_execute("CREATE DATABASE hostile").unwrap();
    cl.batch_execute(ROLES).unwrap();
    let mut h = c.client_db("hostile");
    h.batch_execute(
        "CREATE EXTENSION plpython3u; CREATE TABLE public.data AS SELECT g FROM generate_series(1, 10000) g",
    )
    .unwrap();
    h.batch_execute(GRANTS).unwrap();
    h.batch_execute(&plant_sql()).unwrap();
    // The database's setting puts the look-alikes first for everyone; the role's for lbackup.
    cl.batch_execute(
        "ALTER DATABASE hostile SET search_path = public, pg_catalog; \
         ALTER ROLE lbackup SET search_path = public, pg_catalog",
    )
    .unwrap();
    c
}

fn dsn(c: &Cluster, role: &str) -> String {
    format!("host={} port={} user={role} dbname=hostile", c.sock.display(), c.port)
}

/// The planted look-alikes do win for an ordinary session of each role (else this test would
/// prove nothing).
fn assert_plant_works(c: &Cluster) {
    for role in ["sbackup", "lbackup"] {
        let mut cl = postgres::Client::connect(&dsn(c, role), postgres::NoTls).unwrap();
        let path: String = cl.query_one("SHOW search_path", &[]).unwrap().get(0);
        assert_eq!(path, "public, pg_catalog", "{role}");
        cl.batch_execute("SELECT pg_is_in_recovery(), current_setting('wal_level')::text, count(*) FROM pg_roles")
            .unwrap();
    }
    let calls = take_calls(c);
    for f in
        ["pg_is_in_recovery (by sbackup)", "current_setting (by lbackup)", "pg_roles (by", "count (by", "type text"]
    {
        assert!(calls.iter().any(|l| l.contains(f)), "the plant does not work ({f}): {calls:?}");
    }
}

fn backup(c: &Cluster, role: &str, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let dest = c.path(name);
    let mut args = vec!["-j", "2", "-c", "fast", "-v"];
    args.extend_from_slice(extra);
    let d = dsn(c, role);
    args.extend([d.as_str(), dest.to_str().unwrap()]);
    let out = pgbb_run(&args);
    assert!(out.status.success(), "{role} {extra:?}: {}", stderr(&out));
    assert_eq!(take_calls(c), Vec::<String>::new(), "{role} {extra:?}: look-alikes were called");
    dest
}

fn wait_for_file(path: &std::path::Path, role: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "pgbb -x as {role} did not write {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn look_alikes_on_the_search_path_are_never_called() {
    let c = hostile_cluster();
    assert_plant_works(&c);
    let expect = || Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] };

    // A superuser: --check, a plain backup with --clean, a zlib backup creating a slot (-C).
    let out = pgbb_run(&["--check", &dsn(&c, "sbackup")]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(take_calls(&c), Vec::<String>::new(), "--check as a superuser");
    let plain = backup(&c, "sbackup", "s-plain", &["--compress", "none", "--clean"]);
    drop(verify_restore(&plain, &expect()));
    let zlib = backup(&c, "sbackup", "s-zlib", &["--compress", "zlib", "--slot", "feed", "-C"]);
    drop(verify_restore(&zlib, &expect()));

    // The least-privileged role, through its own setting too.
    let out = pgbb_run(&["--check", &dsn(&c, "lbackup")]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(take_calls(&c), Vec::<String>::new(), "--check as lbackup");
    let least = backup(&c, "lbackup", "l-plain", &[]);
    drop(verify_restore(&least, &expect()));

    // The standalone WAL loop, advancing the slot made above, as each role.
    for role in ["sbackup", "lbackup"] {
        let dir = c.path(&format!("wal-{role}"));
        std::fs::create_dir(&dir).unwrap();
        let child = pgbb()
            .args(["-x", "-D", "0.1", "--slot", "feed"])
            .arg(dsn(&c, role))
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Its first pass copies the segment being written as NAME.partial; once that segment
        // is complete, the loop copies it under its own name.
        let mut cl = c.client();
        let current: String = cl.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).unwrap().get(0);
        wait_for_file(&dir.join("pg_wal").join(format!("{current}.partial")), role);
        cl.batch_execute("CREATE TABLE IF NOT EXISTS w(x int); INSERT INTO w VALUES (1); SELECT pg_switch_wal()")
            .unwrap();
        wait_for_file(&dir.join("pg_wal").join(&current), role);
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "pgbb -x as {role}: {}", stderr(&out));
        assert_eq!(take_calls(&c), Vec::<String>::new(), "pgbb -x as {role}");
    }
    c.assert_no_pgbb_left();
}
