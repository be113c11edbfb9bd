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
pub(crate) fn start_feeder(c: &Cluster, dir: &std::path::Path, extra: &[&str]) -> std::process::Child {
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

pub(crate) fn stop_feeder(mut child: std::process::Child, dir: &std::path::Path) {
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

/// (timeline, stop LSN) of a backup, from its manifest's WAL range.
fn manifest_wal_end(dest: &std::path::Path) -> (u32, u64) {
    let m = std::fs::read_to_string(dest.join("backup_manifest")).unwrap();
    let field = |key: &str| -> String {
        let at = m.find(key).unwrap_or_else(|| panic!("{key} not in the manifest")) + key.len();
        m[at..]
            .trim_start_matches([' ', ':', '"'])
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '/')
            .collect()
    };
    let tli: u32 = field("\"Timeline\"").parse().unwrap();
    let (hi, lo) = field("\"End-LSN\"").split_once('/').map(|(h, l)| (h.to_string(), l.to_string())).unwrap();
    (tli, (u64::from_str_radix(&hi, 16).unwrap() << 32) | u64::from_str_radix(&lo, 16).unwrap())
}

/// The segment holding the stop LSN is in DEST at full size, its bytes through the stop LSN
/// copied (the page holding the stop has a WAL page header), and everything after the stop is
/// zeros, written locally (not the server's bytes that follow the backup's end). No `.done`
/// for it: the restored server completes and archives that segment itself, as with
/// pg_basebackup's streamed WAL.
fn assert_stop_segment_cut(dest: &std::path::Path) {
    const SEG: u64 = 16 << 20;
    let (tli, stop) = manifest_wal_end(dest);
    let seg = (stop - 1) / SEG;
    let name = format!("{tli:08X}{:08X}{:08X}", seg / 256, seg % 256);
    let bytes = std::fs::read(dest.join("pg_wal").join(&name)).unwrap();
    assert_eq!(bytes.len() as u64, SEG, "{name} is not full size");
    let off = (stop - seg * SEG) as usize;
    assert!(off < SEG as usize, "the stop {stop:X} is on a segment boundary: nothing to cut");
    let page = off / 8192 * 8192;
    assert_ne!(&bytes[page..page + 2], &[0, 0], "no WAL page header on the stop's page in {name}");
    if let Some(i) = bytes[off..].iter().position(|&b| b != 0) {
        panic!("{name}: byte {} (stop at {off}) is not zero: the segment's tail was copied", off + i);
    }
    assert!(!dest.join(format!("pg_wal/archive_status/{name}.done")).exists(), "{name}.done for a partial segment");
}

/// With the primary idle, the standby's stop segment never completes (the stop is in its
/// middle and a standby cannot switch segments): the WAL child copies it up to the stop and
/// zero-fills the rest, so the backup ends promptly, as pg_basebackup's does. The copy
/// restores, and pg_verifybackup (WAL parsing on) reads the WAL up to the stop.
#[test]
fn standby_backup_with_an_idle_primary_ends_promptly() {
    let c = Cluster::new();
    c.pgbench_init(2);
    let copy = c.path("standby");
    let out = pgbb_run(&["-R", "-c", "fast", &c.dsn(), copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let standby = start_copy(&copy);
    let mut sc = standby.client();
    let rec: bool = sc.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(rec, "the copy should be a standby");
    // Some WAL and a checkpoint in the middle of a segment (the standby's restartpoint, and so
    // the stop, lands there); the standby catches up, then nothing more is written.
    c.client().batch_execute("CREATE TABLE before_backup AS SELECT generate_series(1, 1000) AS x; CHECKPOINT").unwrap();
    let primary_lsn: String = c.client().query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    wait_until("the standby to replay the primary's WAL", Duration::from_secs(60), || {
        sc.query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&primary_lsn])
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    });
    let dest = c.path("from-standby");
    let mut child = spawn_pgbb(&["-c", "fast"], &standby.dsn(), &dest);
    let (status, took) = wait_exit(&mut child, Duration::from_secs(120));
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", stderr(&out));
    eprintln!("the backup from the standby took {took:?}");
    assert!(took < Duration::from_secs(20), "the backup from the standby took {took:?}");
    assert!(std::fs::read_to_string(dest.join("backup_label")).unwrap().contains("BACKUP FROM: standby"));
    assert_stop_segment_cut(&dest);
    verifybackup(&dest, &[]);
    // Restored standalone (the standby's standby.signal was copied with it): recovery has the
    // copied WAL only, no primary to stream the rest from, and must reach the stop.
    std::fs::remove_file(dest.join("standby.signal")).unwrap();
    let restored = start_copy(&dest);
    let (_, stop) = manifest_wal_end(&dest);
    let reached = format!("consistent recovery state reached at {:X}/{:X}", stop >> 32, stop & 0xffff_ffff);
    assert!(restored.log().contains(&reached), "{reached} not in:\n{}", restored.log());
    let mut rc = restored.client();
    assert!(!rc.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get::<_, bool>(0));
    assert_eq!(query_i64(&mut rc, "SELECT count(*) FROM before_backup"), 1000);
    let a = query_i64(&mut rc, "SELECT sum(abalance)::bigint FROM pgbench_accounts");
    let n = query_i64(&mut rc, "SELECT count(*) FROM pgbench_accounts");
    assert_eq!((a, n), (0, 200_000), "pgbench_accounts in the copy");
    rc.batch_execute("CREATE EXTENSION amcheck").unwrap();
    let checked = query_i64(
        &mut rc,
        "SELECT count(*) FROM (SELECT bt_index_check(i.indexrelid, true) FROM pg_index i \
           JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relam = 403 AND c.relpersistence <> 't') s",
    );
    assert!(checked > 10, "amcheck checked only {checked} indexes");
    standby.assert_no_pgbb_left();
}

/// From a primary the stop forces a segment switch, so the stop segment is complete on the
/// server; still only the part up to the stop travels, and the rest is zeros in DEST.
#[test]
fn primary_backup_stop_segment_tail_is_zeros() {
    let c = Cluster::new();
    c.pgbench_init(1);
    let dest = c.path("from-primary");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_stop_segment_cut(&dest);
    verify_restore(&dest, &Expect { pgbench: true, databases: vec![], unlogged: vec![], absent: vec![] });
}
