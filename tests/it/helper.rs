//! The permanent compression helper (`pgbb --install-helper`): zlib chunks for roles that are
//! not superusers and from standbys, versioned, never anything else of its name, and
//! removable without a trace. (PL/Python is installed for the default major only.)

use std::path::Path;

use crate::harness::*;

/// The least-privileged backup role of docs/privileges.md (PostgreSQL 15).
const BACKUP_ROLE: &str = "
CREATE ROLE nsbackup LOGIN REPLICATION;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean),
                          pg_catalog.pg_stat_file(text, boolean),
                          pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean),
                          pg_catalog.pg_backup_start(text, boolean),
                          pg_catalog.pg_backup_stop(boolean) TO nsbackup;";

const CALL: &str = "read_zlib_v1(bytea, bigint, integer, bigint, bigint)";

fn as_role(dsn: &str, role: &str) -> String {
    dsn.replace("user=postgres", &format!("user={role}"))
}

fn install(dsn: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--install-helper"];
    args.extend_from_slice(extra);
    args.push(dsn);
    pgbb_run(&args)
}

/// Runs the GRANTs `--install-helper` printed, for `role`.
fn grant_printed(c: &Cluster, out: &std::process::Output, role: &str) {
    let grants: String = stdout(out)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("GRANT "))
        .map(|l| l.replace("\"backup\"", role))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(grants.matches("GRANT ").count(), 2, "{}", stdout(out));
    c.client().batch_execute(&grants).unwrap();
}

fn backup_ok(args: &[&str], dsn: &str, dest: &Path) -> String {
    let mut a = args.to_vec();
    a.extend(["-c", "fast", "-v", dsn, dest.to_str().unwrap()]);
    let out = pgbb_run(&a);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stderr(&out)
}

fn helper_objects(cl: &mut postgres::Client) -> (i64, i64) {
    (
        query_i64(cl, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'read\\_zlib\\_v%' OR proname LIKE 'pgbb%'"),
        query_i64(cl, "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgbb'"),
    )
}

/// The case: a superuser installs the helper once on the primary; a role that is no
/// superuser, granted what the install prints, gets zlib chunks from the primary and from a
/// standby (over the network with `auto`, through the socket with `zlib`), with the master's
/// workers and WAL child using the same helper; the copies restore and pass pg_verifybackup.
/// On the standby --install-helper and --remove-helper are refused (read-only).
#[test]
fn installed_helper_gives_zlib_to_a_non_superuser_on_a_standby() {
    if !is_root() {
        eprintln!("SKIPPED installed_helper_gives_zlib_to_a_non_superuser_on_a_standby: network namespaces need root");
        return;
    }
    let c = Cluster::new();
    c.pgbench_init(2);
    c.client().batch_execute(&format!("CREATE EXTENSION plpython3u; {BACKUP_ROLE}")).unwrap();
    let out = install(&c.dsn(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("installed the compression helper \"pgbb\".read_zlib_v1"), "{}", stdout(&out));
    grant_printed(&c, &out, "nsbackup");
    let public = query_i64(
        &mut c.client(),
        &format!(
            "SELECT (SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = 'pgbb' AND a.grantee = 0) \
                  + (SELECT count(*) FROM aclexplode((SELECT proacl FROM pg_proc WHERE oid = 'pgbb.{CALL}'::regprocedure)) a \
                      WHERE a.grantee = 0)"
        ),
    );
    assert_eq!(public, 0, "PUBLIC has rights on the helper or its schema");
    // From the primary, by the role that is no superuser.
    let nsb = as_role(&c.dsn(), "nsbackup");
    let d = c.path("primary-zlib");
    let err = backup_ok(&["-j", "2", "--compress", "zlib"], &nsb, &d);
    assert!(
        err.contains("chunks travel compressed (zlib:1) through the installed helper \"pgbb\".read_zlib_v1"),
        "{err}"
    );
    drop(verify_restore(
        &d,
        &Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] },
    ));

    // A standby of the primary (the helper came with the catalogs), reached over the network.
    let copy = c.path("standby");
    let out = pgbb_run(&["-R", "-c", "fast", &c.dsn(), copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ns = NetNs::new(87);
    let standby = start_copy_in(&copy, Some((ns.name.clone(), ns.server_addr())));
    let tcp = as_role(&ns.open_to(&standby), "nsbackup");
    assert!(standby.client().query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get::<_, bool>(0));

    let out = pgbb_run(&["--check", &tcp]);
    assert!(
        stdout(&out).contains("compressed chunks through the installed helper \"pgbb\".read_zlib_v1"),
        "{}",
        stdout(&out)
    );
    let auto = c.path("standby-auto");
    let err = backup_ok(&["-j", "2"], &tcp, &auto);
    assert!(err.contains("chunks travel compressed (zlib:1) through the installed helper"), "{err}");
    assert!(err.contains("chunks travel zlib:1 in 512 KiB chunks"), "the workers use it too: {err}");
    // Started as the standby it was copied from, read-only: amcheck ran on the primary's copy.
    drop(verify_restore(&auto, &Expect { pgbench: true, databases: vec![], unlogged: vec![], absent: vec![] }));
    let zlib = c.path("standby-zlib");
    let err = backup_ok(&["-j", "2", "--compress", "zlib:6"], &as_role(&standby.dsn(), "nsbackup"), &zlib);
    assert!(err.contains("chunks travel compressed (zlib:6) through the installed helper"), "{err}");
    assert!(std::fs::read_to_string(zlib.join("backup_label")).unwrap().contains("BACKUP FROM: standby"));
    drop(verify_restore(&zlib, &Expect { pgbench: true, databases: vec![], unlogged: vec![], absent: vec![] }));

    // A standby is read-only: the helper is installed and removed on the primary only.
    for cmd in ["--install-helper", "--remove-helper"] {
        let out = pgbb_run(&[cmd, &standby.dsn()]);
        assert_eq!(out.status.code(), Some(4), "{cmd}: {}", stderr(&out));
        assert!(stderr(&out).contains("run it on the primary"), "{cmd}: {}", stderr(&out));
    }
    standby.assert_no_pgbb_left();
    c.assert_no_pgbb_left();
}

/// The helper body of an older pgbb (version 0), as that pgbb would have installed it.
const OLD_HELPER: &str = "
CREATE SCHEMA pgbb; REVOKE ALL ON SCHEMA pgbb FROM PUBLIC;
CREATE FUNCTION pgbb.read_zlib_v0(path bytea, chunk int8, level int4, off int8, want int8)
    RETURNS SETOF bytea LANGUAGE plpython3u STRICT SET search_path = pg_catalog, pg_temp
    AS $$ plpy.error('the old helper was called') $$;
COMMENT ON FUNCTION pgbb.read_zlib_v0(bytea, int8, int4, int8, int8) IS 'pgbb compression helper v0';
GRANT USAGE ON SCHEMA pgbb TO nsbackup;
GRANT EXECUTE ON FUNCTION pgbb.read_zlib_v0(bytea, int8, int4, int8, int8) TO nsbackup;";

/// A helper of another version is reported and never used: `auto` warns and goes plain (or
/// through the temporary helper), `zlib` fails naming `pgbb --install-helper`, `--check`
/// warns; the install replaces it and the GRANTs it prints make the new one usable.
#[test]
fn an_outdated_helper_is_reported_never_used_and_replaced_by_the_install() {
    let c = Cluster::new();
    c.pgbench_init(1);
    c.client().batch_execute(&format!("CREATE EXTENSION plpython3u; {BACKUP_ROLE} {OLD_HELPER}")).unwrap();
    let nsb = as_role(&c.dsn(), "nsbackup");
    let err = backup_ok(&[], &nsb, &c.path("auto"));
    assert!(err.contains("the pgbb helper in schema \"pgbb\" is another version (read_zlib_v0)"), "{err}");
    assert!(err.contains("chunks travel uncompressed"), "{err}");
    let err = backup_ok(&["--compress", "auto"], &c.dsn(), &c.path("auto-su"));
    assert!(err.contains("another version (read_zlib_v0)") && err.contains("pgbb --install-helper"), "{err}");
    let dest = c.path("zlib");
    for dsn in [&nsb, &c.dsn()] {
        let out = pgbb_run(&["--compress", "zlib", "-c", "fast", dsn, dest.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert!(stderr(&out).contains("another version (read_zlib_v0)"), "{}", stderr(&out));
        assert!(stderr(&out).contains("pgbb --install-helper"), "{}", stderr(&out));
        assert!(!dest.exists(), "DEST created for a refused backup");
    }
    let out = pgbb_run(&["--check", &nsb]);
    assert!(stdout(&out).contains("warn  the pgbb helper in schema \"pgbb\" is another version"), "{}", stdout(&out));

    let out = install(&c.dsn(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("replaced pgbb.read_zlib_v0(bytea,bigint,integer,bigint,bigint)"),
        "{}",
        stdout(&out)
    );
    let mut cl = c.client();
    let names: Vec<String> = cl
        .query("SELECT proname::text FROM pg_proc WHERE pronamespace = 'pgbb'::regnamespace", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["read_zlib_v1"]);
    // Not granted yet: reported, with the GRANTs; zlib stops naming them.
    let out = pgbb_run(&["--compress", "zlib", "-c", "fast", &nsb, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("GRANT EXECUTE ON FUNCTION \"pgbb\".{CALL} TO \"nsbackup\"")),
        "{}",
        stderr(&out)
    );
    // Run again: up to date, nothing changed.
    let again = install(&c.dsn(), &[]);
    assert!(stdout(&again).contains("is installed and up to date: nothing changed"), "{}", stdout(&again));
    grant_printed(&c, &again, "nsbackup");
    let err = backup_ok(&["-j", "2", "--compress", "zlib"], &nsb, &dest);
    assert!(err.contains("through the installed helper \"pgbb\".read_zlib_v1"), "{err}");
    assert!(!err.contains("another version"), "{err}");
    verifybackup(&dest, &[]);
    c.assert_no_pgbb_left();
}

/// Hostile users: a look-alike of the helper's name on the backup role's search_path, and a
/// function of the helper's exact name in a schema a role that is no superuser owns, are
/// never called (each logs its calls); the install refuses that schema. The installed helper
/// reads no file `pg_read_binary_file` would not let the caller read.
#[test]
fn look_alikes_of_the_helper_are_never_called_and_it_widens_no_rights() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let mut cl = c.client();
    cl.batch_execute(&format!(
        "CREATE EXTENSION plpython3u; {BACKUP_ROLE}
         CREATE ROLE mallory LOGIN; CREATE SCHEMA mallory AUTHORIZATION mallory; CREATE SCHEMA alt AUTHORIZATION mallory;
         CREATE TABLE public.calls (fn text); GRANT INSERT ON public.calls TO PUBLIC;
         SET ROLE mallory;
         CREATE FUNCTION mallory.read_zlib_v1(path bytea, chunk int8, level int4, off int8, want int8)
             RETURNS SETOF bytea LANGUAGE sql AS $$ INSERT INTO public.calls VALUES ('mallory') RETURNING NULL::bytea $$;
         CREATE FUNCTION mallory.pgbb_read_zlib(path bytea, chunk int8, level int4, off int8, want int8)
             RETURNS SETOF bytea LANGUAGE sql AS $$ INSERT INTO public.calls VALUES ('temp') RETURNING NULL::bytea $$;
         CREATE FUNCTION alt.read_zlib_v1(path bytea, chunk int8, level int4, off int8, want int8)
             RETURNS SETOF bytea LANGUAGE sql AS $$ INSERT INTO public.calls VALUES ('alt') RETURNING NULL::bytea $$;
         COMMENT ON FUNCTION alt.read_zlib_v1(bytea, int8, int4, int8, int8) IS 'pgbb compression helper v1';
         GRANT USAGE ON SCHEMA mallory, alt TO PUBLIC;
         RESET ROLE;
         ALTER ROLE nsbackup SET search_path = mallory, public;
         ALTER ROLE postgres SET search_path = mallory, public;"
    ))
    .unwrap();
    let calls = |cl: &mut postgres::Client| query_i64(cl, "SELECT count(*) FROM public.calls");
    // The plant works for an ordinary session.
    let mut m = postgres::Client::connect(&as_role(&c.dsn(), "nsbackup"), postgres::NoTls).unwrap();
    m.query("SELECT read_zlib_v1('x', 1, 1, 0, -1)", &[]).unwrap();
    assert_eq!(calls(&mut cl), 1, "the look-alike is not found first");
    cl.batch_execute("TRUNCATE public.calls").unwrap();

    // Into the schema mallory owns: refused.
    let out = install(&c.dsn(), &["--schema", "alt"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("schema \"alt\" exists, and roles that are not superusers control it"),
        "{}",
        stderr(&out)
    );
    // A backup told to look there: not pgbb's, said so, never called.
    let nsb = as_role(&c.dsn(), "nsbackup");
    let out = pgbb_run(&["--schema", "alt", "--compress", "zlib", "-c", "fast", &nsb, c.path("alt").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"alt\".read_zlib_v1 is not the helper pgbb installs"), "{}", stderr(&out));
    let err = backup_ok(&["--schema", "alt", "--compress", "zlib"], &c.dsn(), &c.path("alt-su"));
    assert!(err.contains("is not the helper pgbb installs") && err.contains("through a temporary helper"), "{err}");
    assert_eq!(calls(&mut cl), 0, "a look-alike was called");

    // The real one, installed; the look-alikes on the path stay uncalled.
    let out = install(&c.dsn(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    grant_printed(&c, &out, "nsbackup");
    let d = c.path("installed");
    let err = backup_ok(&["-j", "2", "--compress", "zlib"], &nsb, &d);
    assert!(err.contains("through the installed helper \"pgbb\".read_zlib_v1"), "{err}");
    assert_eq!(calls(&mut cl), 0, "a look-alike was called");
    verifybackup(&d, &[]);

    // No wider than pg_read_binary_file: outside the data directory, or without EXECUTE on
    // pg_read_binary_file, the helper refuses as pg_read_binary_file does.
    cl.batch_execute(
        "CREATE ROLE reader LOGIN; GRANT USAGE ON SCHEMA pgbb TO reader; \
         GRANT EXECUTE ON FUNCTION pgbb.read_zlib_v1(bytea, int8, int4, int8, int8) TO reader",
    )
    .unwrap();
    let mut r = postgres::Client::connect(&as_role(&c.dsn(), "reader"), postgres::NoTls).unwrap();
    let read = |cl: &mut postgres::Client, path: &[u8]| -> Result<usize, String> {
        cl.query("SELECT pgbb.read_zlib_v1($1, 8192, 1, 0, -1)", &[&path]).map(|rows| rows.len()).map_err(|e| {
            e.as_db_error().map(|d| format!("{} ({})", d.message(), d.code().code())).unwrap_or_else(|| e.to_string())
        })
    };
    assert_eq!(
        read(&mut r, b"PG_VERSION"),
        Err("plpy.Error: permission denied for function pg_read_binary_file (42501)".into())
    );
    cl.batch_execute("GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint, boolean) TO reader").unwrap();
    assert_eq!(read(&mut r, b"PG_VERSION"), Ok(2), "header and one chunk");
    for outside in [&b"/etc/passwd"[..], b"../../../../etc/passwd", b"pg_tblspc/../../x", b"base/../../PG_VERSION"] {
        assert_eq!(
            read(&mut r, outside),
            Err("plpy.Error: path must be in or below the data directory (42501)".into()),
            "{}",
            String::from_utf8_lossy(outside)
        );
    }
    cl.batch_execute("GRANT pg_read_server_files TO reader").unwrap();
    assert_eq!(
        read(&mut r, b"/etc/passwd").map(|n| n > 1),
        Ok(true),
        "a member of pg_read_server_files reads any file"
    );
    c.assert_no_pgbb_left();
}

/// Bad input to the helper commands, each with its exit code; `--remove-helper` leaves no
/// trace (pg_proc, pg_namespace), and with nothing installed says so and exits 0.
#[test]
fn install_and_remove_refuse_bad_input_and_remove_leaves_nothing() {
    let c = Cluster::new();
    c.client().batch_execute(BACKUP_ROLE).unwrap();
    let mut cl = c.client();
    // Usage: no DEST, no backup options.
    for bad in [
        &["--install-helper", &c.dsn(), "/tmp/pgbb-helper-dest"][..],
        &["--install-helper", "-j", "4", &c.dsn()],
        &["--remove-helper", "--compress", "zlib", &c.dsn()],
        &["--install-helper", "--schema", "pg_catalog", &c.dsn()],
    ] {
        let out = pgbb_run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
    // Without plpython3u.
    let out = install(&c.dsn(), &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("CREATE EXTENSION plpython3u"), "{}", stderr(&out));
    cl.batch_execute("CREATE EXTENSION plpython3u").unwrap();
    // By a role that is no superuser.
    for cmd in ["--install-helper", "--remove-helper"] {
        let out = pgbb_run(&[cmd, &as_role(&c.dsn(), "nsbackup")]);
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert!(stderr(&out).contains("a superuser must run it"), "{}", stderr(&out));
    }
    assert_eq!(helper_objects(&mut cl), (0, 0), "something was created by a refused command");
    // Nothing installed: nothing to remove, exit 0.
    let out = pgbb_run(&["--remove-helper", &c.dsn()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("no pgbb helper in schema \"pgbb\""), "{}", stdout(&out));

    // Installed in its own schema, then removed: no trace.
    assert!(install(&c.dsn(), &[]).status.success());
    assert_eq!(helper_objects(&mut cl), (1, 1));
    let out = pgbb_run(&["--remove-helper", &c.dsn()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("removed schema \"pgbb\""), "{}", stdout(&out));
    assert_eq!(helper_objects(&mut cl), (0, 0), "--remove-helper left something");
    // Into an existing schema a superuser owns that holds other things: the schema stays.
    cl.batch_execute("CREATE SCHEMA tools; CREATE TABLE tools.keep (x int)").unwrap();
    assert!(install(&c.dsn(), &["--schema", "tools"]).status.success());
    let out = pgbb_run(&["--remove-helper", "--schema", "tools", &c.dsn()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'read\\_zlib\\_v%'"), 0);
    assert_eq!(query_i64(&mut cl, "SELECT count(*) FROM tools.keep"), 0, "the schema and its table stay");
}
