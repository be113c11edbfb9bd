//! Making the copy useful: `-R` (a streaming standby), `--slot`/`-C`, and the warm-standby
//! feeder `pgbb -x` replayed by a standby.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

#[test]
fn write_recovery_conf_makes_a_streaming_standby() {
    let c = Cluster::new();
    c.pgbench_init(2);
    c.client().batch_execute("CREATE TABLE after (x text)").unwrap();
    let dest = c.path("standby");
    // Routing and security settings go into primary_conninfo, as pg_basebackup writes them.
    let dsn = format!("{} target_session_attrs=read-write channel_binding=disable application_name=standby1", c.dsn());
    let out = pgbb_run(&["-R", "--slot", "standby_1", "-C", "-c", "fast", &dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dest.join("standby.signal").exists());
    let auto = std::fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("primary_conninfo = 'user=postgres channel_binding=disable host="), "{auto}");
    assert!(auto.contains(" application_name=standby1 sslmode=prefer target_session_attrs=read-write'"), "{auto}");
    assert!(auto.contains("primary_slot_name = 'standby_1'"), "{auto}");
    verifybackup(&dest, &[]);
    let copy = start_copy(&dest);
    let mut cc = copy.client();
    let rec: bool = cc.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(rec, "the copy should be a standby");
    c.client().batch_execute("INSERT INTO after VALUES ('inserted after the backup')").unwrap();
    wait_until("the row on the standby", Duration::from_secs(60), || {
        cc.query_one("SELECT count(*) FROM after", &[]).map(|r| r.get::<_, i64>(0) == 1).unwrap_or(false)
    });
    let active: bool = c
        .client()
        .query_one("SELECT active FROM pg_replication_slots WHERE slot_name = 'standby_1'", &[])
        .unwrap()
        .get(0);
    assert!(active, "the standby streams through its slot");
    let name: String = c.client().query_one("SELECT application_name FROM pg_stat_replication", &[]).unwrap().get(0);
    assert_eq!(name, "standby1", "the walreceiver connects with the settings given");
}

#[test]
fn a_slot_created_for_a_failed_backup_is_dropped() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let dest = c.path("failed-slot");
    let d = dest.to_str().unwrap().to_string();
    let child = pgbb()
        .args(["--slot", "doomed", "-C", "-j", "2", "-c", "fast", "--chunk-size", "8k", "--compress", "none"])
        .arg(c.dsn())
        .arg(&dest)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let w = wait_for_proc(&["--stdin", &d], Duration::from_secs(30)).expect("no worker");
    kill(Pid::from_raw(w), Signal::SIGKILL).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let n: i64 = c
        .client()
        .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'doomed'", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the slot made for the failed backup is left");
    // An existing slot is used, not created; a missing one is an error.
    let out = pgbb_run(&["--slot", "nosuch", &c.dsn(), c.path("x").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist (create it with -C)"), "{}", stderr(&out));
    let out = pgbb_run(&["-C", &c.dsn(), c.path("y").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

/// `pgbb -x DSN DIR` as the user that owns DIR (the server's user, as in real life).
fn start_feeder(c: &Cluster, dir: &std::path::Path, extra: &[&str]) -> std::process::Child {
    let mut cmd = if is_root() {
        let mut cmd = std::process::Command::new("runuser");
        cmd.args(["-u", "postgres", "--", pgbb_bin()]);
        cmd
    } else {
        pgbb()
    };
    cmd.args(["-x", "-D", "0.2"])
        .args(extra)
        .arg(c.dsn())
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop_feeder(mut child: std::process::Child, dir: &std::path::Path) {
    // Signal pgbb itself, not runuser around it (which would die of the signal too).
    let pid = wait_for_proc(&["-x", dir.to_str().unwrap()], Duration::from_secs(5)).expect("pgbb -x is gone");
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "pgbb -x: {s}");
            return;
        }
        assert!(Instant::now() < deadline, "pgbb -x did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rows inserted on the source after the backup reach a standby that has no streaming
/// connection, only the segments `pgbb -x` brings: into its pg_wal, or into an archive read
/// by restore_command (with a slot the feeder advances).
#[test]
fn warm_standby_fed_by_the_wal_loop() {
    let c = Cluster::new();
    c.pgbench_init(1);
    c.client().batch_execute("CREATE TABLE fed (x int)").unwrap();
    let insert_and_switch = |n: i32| {
        let mut cl = c.client();
        cl.execute("INSERT INTO fed SELECT generate_series(1, $1)", &[&n]).unwrap();
        cl.batch_execute("SELECT pg_switch_wal()").unwrap();
    };

    // 1. Segments into the standby's own pg_wal.
    let copy = c.path("warm");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(copy.join("standby.signal"), "").unwrap();
    let standby = start_copy(&copy);
    let feeder = start_feeder(&c, &copy, &[]);
    insert_and_switch(100);
    let mut sc = standby.client();
    wait_until("rows replayed from pg_wal", Duration::from_secs(90), || {
        sc.query_one("SELECT count(*) FROM fed", &[]).map(|r| r.get::<_, i64>(0) == 100).unwrap_or(false)
    });
    stop_feeder(feeder, &copy);

    // 2. Segments into an archive directory, read by restore_command; the feeder advances its
    // slot so the server may recycle what was copied.
    c.client().batch_execute("SELECT pg_create_physical_replication_slot('feeder', true)").unwrap();
    let slot_lsn = |c: &Cluster| -> String {
        c.client()
            .query_one("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'feeder'", &[])
            .unwrap()
            .get(0)
    };
    let before = slot_lsn(&c);
    let copy2 = c.path("warm2");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), copy2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let archive = c.path("archive");
    std::fs::create_dir(&archive).unwrap();
    chown_pg(&archive);
    let feeder = start_feeder(&c, &archive, &["--slot", "feeder"]);
    std::fs::write(copy2.join("standby.signal"), "").unwrap();
    let mut auto = std::fs::read_to_string(copy2.join("postgresql.auto.conf")).unwrap();
    auto.push_str(&format!("restore_command = 'cp {}/pg_wal/%f %p'\n", archive.display()));
    std::fs::write(copy2.join("postgresql.auto.conf"), auto).unwrap();
    let standby2 = start_copy(&copy2);
    insert_and_switch(50);
    let mut sc2 = standby2.client();
    wait_until("rows replayed through restore_command", Duration::from_secs(90), || {
        sc2.query_one("SELECT count(*) FROM fed", &[]).map(|r| r.get::<_, i64>(0) == 150).unwrap_or(false)
    });
    wait_until("the slot advanced", Duration::from_secs(30), || slot_lsn(&c) != before);
    stop_feeder(feeder, &archive);
    drop(sc);
    drop(standby);
}

/// A standby is read-only: the temporary compression helper cannot be created there. Over
/// the network `--compress auto` takes plain chunks from it (it would pick zlib for a
/// primary), and the copy restores; an explicit `--compress zlib` is refused before anything
/// is created, with the true reason, by the master and by a worker started by hand.
#[test]
fn compression_from_a_standby_is_plain_for_auto_and_refused_for_zlib() {
    if !is_root() {
        eprintln!("SKIPPED compression_from_a_standby: network namespaces need root");
        return;
    }
    let c = Cluster::new();
    c.pgbench_init(2);
    c.client().batch_execute("CREATE EXTENSION plpython3u").unwrap();
    let copy = c.path("standby");
    let out = pgbb_run(&["-R", "-c", "fast", &c.dsn(), copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ns = NetNs::new(83);
    let standby = start_copy_in(&copy, Some((ns.name.clone(), ns.server_addr())));
    let tcp = ns.open_to(&standby);
    let rec: bool = standby.client().query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(rec, "the copy should be a standby");

    let auto = c.path("auto-from-standby");
    let out = pgbb_run(&["-v", "-c", "fast", &tcp, auto.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("chunks travel uncompressed (the server is in recovery"), "{}", stderr(&out));
    verify_restore(&auto, &Expect { pgbench: true, databases: vec![], unlogged: vec![], absent: vec![] });

    let zlib = c.path("zlib-from-standby");
    for dsn in [tcp.as_str(), standby.dsn().as_str()] {
        let out = pgbb_run(&["--compress", "zlib", "-c", "fast", dsn, zlib.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(
            err.contains("in recovery (a standby), which is read-only") && err.contains("--compress none"),
            "{err}"
        );
        assert!(!err.contains("install plpython3u"), "a hint that cannot help: {err}");
        assert!(!zlib.exists(), "DEST created for a refused backup");
    }
    let out = pgbb()
        .args(["--slave", "--stdin", "--compress", "zlib"])
        .arg(standby.dsn())
        .arg(c.path("by-hand"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("fatal\t") && stdout(&out).contains("in recovery"), "{}", stdout(&out));
    let out = pgbb_run(&["--check", &tcp]);
    assert!(stdout(&out).contains("chunks will travel uncompressed: the server is in recovery"), "{}", stdout(&out));
    standby.assert_no_pgbb_left();
}
