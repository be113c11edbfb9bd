//! Checks before a backup starts: bad input, connection failures, privileges, settings,
//! tablespaces, and secrets kept off command lines.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::*;

#[test]
fn bad_dsn_and_unreachable_server() {
    let c = Cluster::new();
    let dest = c.path("x");
    let out = pgbb_run(&["host='unterminated", dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid connection string"), "{}", stderr(&out));
    // Nobody listens on this socket.
    let out = pgbb_run(&[&format!("host={} port=1 user=postgres", c.sock.display()), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("could not connect"), "{}", stderr(&out));
    // TCP: nothing listens on this port of the loopback.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = pgbb_run(&[&format!("host=127.0.0.1 port={free} user=postgres"), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("could not connect") && stderr(&out).to_lowercase().contains("refused"),
        "{}",
        stderr(&out)
    );
    let out = pgbb_run(&[&format!("{} dbname=nosuchdb", c.dsn()), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("nosuchdb"), "{}", stderr(&out));
    assert!(!dest.exists());
    for bad in [&["-j", "0"][..], &["--chunk-size", "garbage"], &["--compress", "zlib:12"], &["-D", "-1"]] {
        let mut args: Vec<&str> = bad.to_vec();
        let dsn = c.dsn();
        args.extend([dsn.as_str(), dest.to_str().unwrap()]);
        let out = pgbb_run(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
}

#[test]
fn missing_privileges_are_named_with_their_grants() {
    let c = Cluster::new();
    c.client().batch_execute("CREATE ROLE plain LOGIN").unwrap();
    let dest = c.path("noperm");
    let out = pgbb_run(&[&format!("{} user=plain", c.dsn()), dest.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    for f in [
        "pg_catalog.pg_ls_dir(text,boolean,boolean)",
        "pg_catalog.pg_stat_file(text,boolean)",
        "pg_catalog.pg_read_binary_file(text,bigint,bigint,boolean)",
        "pg_catalog.pg_backup_start(text,boolean)",
        "pg_catalog.pg_backup_stop(boolean)",
    ] {
        assert!(err.contains(&format!("GRANT EXECUTE ON FUNCTION {f} TO \"plain\";")), "{f} missing from: {err}");
    }
    assert!(!dest.exists());
}

#[test]
fn least_privileged_role_backs_up_and_warns_without_replication() {
    let c = Cluster::new();
    c.pgbench_init(2);
    let dsn = least_privileged_role(&c);
    let dest = c.path("lp");
    let out = pgbb_run(&["-c", "fast", &dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("no replication slot"), "expected a warning: {}", stderr(&out));
    verify_restore(&dest, &Expect { pgbench: true, databases: vec![], unlogged: vec![], absent: vec![] });
    c.client().batch_execute("ALTER ROLE backup REPLICATION").unwrap();
    let dest2 = c.path("lp2");
    let out = pgbb_run(&["-c", "fast", &dsn, dest2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("WARNING"), "{}", stderr(&out));
    c.assert_no_pgbb_left();
}

#[test]
fn wal_level_minimal_is_refused() {
    let c = Cluster::with(ClusterOpts {
        checksums: true,
        conf: vec!["wal_level = minimal".into(), "max_wal_senders = 0".into()],
        ..Default::default()
    });
    let dest = c.path("min");
    let out = pgbb_run(&[&c.dsn(), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("wal_level = replica"), "{}", stderr(&out));
    assert!(!dest.exists());
}

/// Under wal_level = minimal no replication slot can be created: `--check` must not call the
/// slot ok.
#[test]
fn check_calls_the_slot_unusable_under_wal_level_minimal() {
    let c = Cluster::with(ClusterOpts {
        conf: vec!["wal_level = minimal".into(), "max_wal_senders = 0".into()],
        ..Default::default()
    });
    let out = pgbb_run(&["--check", &c.dsn()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("FAIL  wal_level = minimal"), "{text}");
    assert!(!text.contains("ok    a temporary replication slot"), "{text}");
    assert!(
        text.contains("warn  no replication slot can hold the backup's WAL: a slot needs wal_level = replica"),
        "{text}"
    );
}

#[test]
fn a_tablespace_location_in_use_is_refused_with_the_mapping_hint() {
    let c = Cluster::new();
    let loc = c.path("spc");
    std::fs::create_dir(&loc).unwrap();
    chown_pg(&loc);
    c.client().batch_execute(&format!("CREATE TABLESPACE elsewhere LOCATION '{}'", loc.display())).unwrap();
    let dest = c.path("tbs");
    let out = pgbb_run(&[&c.dsn(), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("tablespace \"elsewhere\"")
            && stderr(&out).contains(&format!("-T {}=NEWDIR", loc.display())),
        "{}",
        stderr(&out)
    );
    assert!(!dest.exists());
    c.assert_no_pgbb_left();
}

#[test]
fn password_never_appears_on_a_command_line() {
    let c = Cluster::with(ClusterOpts {
        checksums: true,
        conf: vec!["password_encryption = 'scram-sha-256'".into()],
        ..Default::default()
    });
    // Password authentication for one role, ahead of the trust lines.
    let hba = c.data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all pwuser scram-sha-256\n{old}")).unwrap();
    let mut cl = c.client();
    cl.batch_execute("CREATE ROLE pwuser LOGIN SUPERUSER PASSWORD 'Sekr1t-pw'; SELECT pg_reload_conf()").unwrap();
    c.pgbench_init(5);
    let dest = c.path("pw");
    let d = dest.to_str().unwrap().to_string();
    // Wrong password: a connection error, exit 3.
    let out = pgbb_run(&[&format!("{} user=pwuser password=wrong", c.dsn()), &d]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("password authentication failed"), "{}", stderr(&out));
    let child = pgbb()
        .args(["-j", "2", "-c", "fast", "--chunk-size", "8k", "--compress", "none"])
        .arg(format!("{} user=pwuser password=Sekr1t-pw", c.dsn()))
        .arg(&dest)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let w = wait_for_proc(&["--stdin", &d], Duration::from_secs(30)).expect("no worker");
    let x = wait_for_proc(&["-x", &d], Duration::from_secs(30)).expect("no WAL child");
    for pid in [w, x] {
        let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).into_owned();
        assert!(!cmd.contains("Sekr1t"), "password on a child's command line: {cmd}");
        assert!(cmd.contains("user=pwuser"), "{cmd}");
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    c.assert_no_pgbb_left();
    // Even -d (every SQL statement, connection details) never prints it.
    let dest2 = c.path("pw-debug");
    let out = pgbb()
        .args(["-d", "-c", "fast"])
        .arg(format!("{} user=pwuser password=Sekr1t-pw", c.dsn()))
        .arg(&dest2)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("SQL: "), "-d shows the SQL");
    assert!(!stderr(&out).contains("Sekr1t") && !stdout(&out).contains("Sekr1t"), "password in the output");
    // From a password file (PGPASSFILE, mode 0600) too.
    let pass = c.path("pgpass");
    std::fs::write(&pass, "localhost:*:*:pwuser:Sekr1t-pw\n").unwrap();
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let dest3 = c.path("pw-file");
    let mut child = pgbb()
        .env("PGPASSFILE", &pass)
        .args(["-j", "2", "-c", "fast", "--chunk-size", "8k", "--compress", "none"])
        .arg(format!("{} user=pwuser", c.dsn()))
        .arg(&dest3)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let d3 = dest3.to_str().unwrap();
    let w = wait_for_proc(&["--stdin", d3], Duration::from_secs(30)).expect("no worker");
    let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{w}/cmdline")).unwrap()).into_owned();
    assert!(!cmd.contains("Sekr1t"), "{cmd}");
    assert!(child.wait().unwrap().success());
    // From PGPASSWORD alone it works as well, and stays out of argv.
    let out = pgbb()
        .env("PGPASSWORD", "Sekr1t-pw")
        .args(["-c", "fast"])
        .arg(format!("{} user=pwuser", c.dsn()))
        .arg(c.path("pw-env"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn server_version_too_old_is_refused() {
    let c = Cluster::with(ClusterOpts { bin: Some(other_major(12)), ..Default::default() });
    let dest = c.path("old");
    let out = pgbb_run(&[&c.dsn(), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("server version 12.") && stderr(&out).contains("pgbb needs PostgreSQL 13 or later"),
        "{}",
        stderr(&out)
    );
    assert!(!dest.exists());
    let out = pgbb_run(&["--check", &c.dsn()]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stdout(&out).contains("FAIL  server version 12."), "{}", stdout(&out));
}

#[test]
fn check_reports_what_passes_and_how_to_fix_what_fails() {
    let c = Cluster::new();
    let out = pgbb_run(&["--check", &c.dsn()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("ready for a backup"), "{}", stdout(&out));
    c.client().batch_execute("CREATE ROLE weak LOGIN").unwrap();
    let out = pgbb_run(&["--check", &format!("{} user=weak", c.dsn())]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("FAIL  EXECUTE on pg_catalog.pg_backup_start(text,boolean)"), "{text}");
    assert!(
        text.contains("fix: GRANT EXECUTE ON FUNCTION pg_catalog.pg_backup_start(text,boolean) TO \"weak\";"),
        "{text}"
    );
    assert!(
        text.contains("warn  no REPLICATION attribute") && text.contains("fix: ALTER ROLE \"weak\" REPLICATION;"),
        "{text}"
    );
    // It started no backup and left nothing behind.
    c.assert_no_pgbb_left();
    let out = pgbb_run(&["--check", &c.dsn(), "/some/dest"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `--check` counts the role's and the database's CONNECTION LIMIT, and the sessions already
/// open under each, against the connections a backup with `-j` uses (master, slot holder,
/// WAL child, one per worker) — exactly: at the limit a backup succeeds.
#[test]
fn check_counts_role_and_database_connection_limits() {
    let c = Cluster::new();
    c.pgbench_init(1);
    c.client()
        .batch_execute(
            "CREATE ROLE lim LOGIN REPLICATION CONNECTION LIMIT 4; \
             GRANT EXECUTE ON FUNCTION pg_ls_dir(text,boolean,boolean), pg_stat_file(text,boolean), \
                   pg_read_binary_file(text,bigint,bigint,boolean), pg_backup_start(text,boolean), \
                   pg_backup_stop(boolean) TO lim;",
        )
        .unwrap();
    let dsn = format!("{} user=lim", c.dsn());
    // Waits until the sessions that ended (ours, earlier checks') are gone from the server, so
    // that exactly `others` client sessions are open when pgbb counts; it watches from another
    // database, whose sessions do not count.
    let monitor = std::cell::RefCell::new(c.client_db("template1"));
    let settle = |others: i64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while query_i64(
            &mut monitor.borrow_mut(),
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = 'postgres'",
        ) != others
        {
            assert!(std::time::Instant::now() < deadline, "sessions linger");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let check = |jobs: &str| {
        settle(0);
        let out = pgbb_run(&["--check", "-j", jobs, &dsn]);
        (out.status.code(), stdout(&out))
    };
    // The role: 4 allowed, -j 2 needs 5.
    let (code, text) = check("2");
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("FAIL  role CONNECTION LIMIT 4 leaves 4 connection(s) free"), "{text}");
    assert!(text.contains("fix: ALTER ROLE \"lim\" CONNECTION LIMIT 5;, or use -j 1"), "{text}");
    assert!(!text.contains("ready for a backup"), "{text}");
    let (code, text) = check("1");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok    4 connections for -j 1 (4 free)"), "{text}");
    // Its sessions already open count.
    let other = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    settle(1);
    let out = pgbb_run(&["--check", "-j", "1", &dsn]);
    let (code, text) = (out.status.code(), stdout(&out));
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("FAIL  role CONNECTION LIMIT 4 leaves 3 connection(s) free"), "{text}");
    assert!(text.contains("fix: ALTER ROLE \"lim\" CONNECTION LIMIT 5;"), "{text}");
    drop(other);
    // The database's limit, for a role without one; at the limit a backup succeeds.
    c.client().batch_execute("ALTER ROLE lim CONNECTION LIMIT -1; ALTER DATABASE postgres CONNECTION LIMIT 5").unwrap();
    let (code, text) = check("3");
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("FAIL  database CONNECTION LIMIT 5 leaves 5 connection(s) free"), "{text}");
    assert!(text.contains("fix: ALTER DATABASE \"postgres\" CONNECTION LIMIT 6;, or use -j 2"), "{text}");
    let (code, text) = check("2");
    assert_eq!(code, Some(0), "{text}");
    let dest = c.path("at-the-limit");
    let out = pgbb_run(&["-j", "2", "-c", "fast", &dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = pgbb_run(&["-j", "3", "-c", "fast", &dsn, c.path("over").to_str().unwrap()]);
    assert!(!out.status.success(), "over the limit the backup fails, as --check said");
}

#[test]
fn more_bad_input() {
    let c = Cluster::new();
    let dest = c.path("bad");
    let long = "x".repeat(1025);
    let out = pgbb_run(&["-l", &long, &c.dsn(), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--label"), "{}", stderr(&out));
    for bad in [&["--chunk-size", "0"][..], &["--chunk-size", "1G"], &["-j", "100000"], &["-l", "a\nb"]] {
        let mut args: Vec<&str> = bad.to_vec();
        let dsn = c.dsn();
        args.extend([dsn.as_str(), dest.to_str().unwrap()]);
        let out = pgbb_run(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).lines().filter(|l| l.contains("error")).count(),
            1,
            "{bad:?}: one line: {}",
            stderr(&out)
        );
    }
    assert!(!dest.exists());
}

#[test]
fn dest_parent_not_writable() {
    let c = Cluster::new();
    let parent = c.path("locked");
    std::fs::create_dir(&parent).unwrap();
    let dest = parent.join("dest");
    let out = if is_root() {
        // Root writes anywhere: run pgbb as the postgres user against a root-owned parent.
        std::fs::set_permissions(&parent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", pgbb_bin()])
            .arg(c.dsn())
            .arg(&dest)
            .output()
            .unwrap()
    } else {
        std::fs::set_permissions(&parent, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
        pgbb_run(&[&c.dsn(), dest.to_str().unwrap()])
    };
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot create destination") && stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    c.assert_no_pgbb_left();
}

#[test]
fn group_access_is_kept() {
    let c = Cluster::with(ClusterOpts { conf: vec![], ..Default::default() });
    // initdb --allow-group-access equivalent: data_directory_mode follows the directory.
    c.client().batch_execute("SELECT 1").unwrap();
    let mut c = c;
    c.stop();
    std::process::Command::new("chmod").args(["-R", "g+rX"]).arg(&c.data).status().unwrap();
    c.start();
    let mode: String = c.client().query_one("SHOW data_directory_mode", &[]).unwrap().get(0);
    assert_eq!(mode, "0750");
    let dest = c.path("grp");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o750);
    assert_eq!(std::fs::metadata(dest.join("base")).unwrap().permissions().mode() & 0o777, 0o750);
    assert_eq!(std::fs::metadata(dest.join("PG_VERSION")).unwrap().permissions().mode() & 0o777, 0o640);
    assert_eq!(std::fs::metadata(dest.join("global/pg_control")).unwrap().permissions().mode() & 0o777, 0o640);
}

#[test]
fn every_session_is_named_in_pg_stat_activity() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let dest = c.path("named");
    let mut child = pgbb()
        .args(["-j", "2", "-c", "fast", "--chunk-size", "8k", "--compress", "none"])
        .arg(c.dsn())
        .arg(&dest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for app in ["pgbb", "pgbb slot", "pgbb wal", "pgbb worker 1", "pgbb worker 2"] {
        c.wait_for_session(app);
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn progress_without_a_terminal_prints_plain_lines() {
    let c = Cluster::new();
    c.pgbench_init(2);
    let dest = c.path("progress");
    let out = pgbb_run(&["-P", "-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("pgbb: progress: ")).collect();
    assert!(lines.len() >= 2, "a first and a last line at least: {err}");
    assert!(lines[0].contains("(0%)") && lines[0].contains("files 0/"), "{err}");
    let last = lines.last().unwrap();
    assert!(last.contains("(100%)") && last.contains("ETA 0 s"), "{err}");
    assert!(!err.contains('\r') && !err.contains("\x1b["), "no terminal control codes in a pipe: {err:?}");
    // The summary.
    let summary = stdout(&out);
    assert!(
        summary.contains("backup complete:")
            && summary.contains(" files, ")
            && summary.contains("MB/s")
            && summary.contains("WAL 0/"),
        "{summary}"
    );
}

#[test]
fn max_rate_limits_all_workers_together() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let size: i64 = c
        .client()
        .query_one("SELECT sum(pg_relation_size(oid))::bigint FROM pg_class WHERE relkind IN ('r','i','t','m')", &[])
        .unwrap()
        .get(0);
    let dest = c.path("slow");
    let t = std::time::Instant::now();
    let out = pgbb_run(&[
        "-j",
        "2",
        "--max-rate",
        "4M",
        "--compress",
        "none",
        "-c",
        "fast",
        &c.dsn(),
        dest.to_str().unwrap(),
    ]);
    let took = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", stderr(&out));
    let floor = size as f64 / (4u64 << 20) as f64;
    assert!(took >= 0.8 * floor, "{size} bytes at 4 MB/s should take at least {floor:.1} s, took {took:.1} s");
    let out = pgbb_run(&["--max-rate", "1k", &c.dsn(), c.path("x").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn empty_dsn_takes_everything_from_the_environment_and_logs_say_who_and_when() {
    let c = Cluster::new();
    let dest = c.path("env");
    let out = pgbb()
        .env("PGHOST", &c.sock)
        .env("PGPORT", c.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "postgres")
        .args(["-v", "-N", "-c", "fast", "", dest.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Every log line: a timestamp, the role and the pid.
    let err = stderr(&out);
    let re_ok = |l: &str| {
        let mut parts = l.splitn(4, ' ');
        let ts = parts.next().unwrap_or("");
        ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T') && parts.next() == Some("pgbb") && {
            let role_pid = parts.collect::<Vec<_>>().join(" ");
            role_pid.contains('[') && role_pid.contains("] INFO:") || role_pid.contains("] WARNING:")
        }
    };
    let logs: Vec<&str> = err.lines().filter(|l| !l.starts_with("pgbb: ")).collect();
    assert!(!logs.is_empty());
    for l in &logs {
        assert!(re_ok(l), "log line without timestamp/role/pid: {l}");
    }
    assert!(
        logs.iter().any(|l| l.contains(" pgbb master[")) && logs.iter().any(|l| l.contains(" pgbb worker 1[")),
        "{err}"
    );
}
