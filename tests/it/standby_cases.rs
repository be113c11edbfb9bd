//! What pg_basebackup does on a standby, pgbb does too: `-R` makes a cascading standby of
//! the standby copied; a promotion or a timeline switch during the backup fails it and
//! leaves nothing; full_page_writes = off on the primary is refused; the standalone WAL
//! loop against a standby follows its upstream's timeline switch; backups from a standby
//! under load, on timeline 2, and from a cascading standby restore and pass the checks.

use std::fs;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;
use crate::standby::{start_feeder, stop_feeder};

/// What a backup from a standby must hold, restored standalone (without the standby.signal
/// copied with it: a read-only copy could not run amcheck).
fn restores_standalone(dest: &Path) -> Cluster {
    let label = fs::read_to_string(dest.join("backup_label")).unwrap();
    assert!(label.contains("BACKUP FROM: standby"), "{label}");
    let expect = Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] };
    verify_restore_with(dest, &expect, |d| fs::remove_file(d.join("standby.signal")).unwrap())
}

fn count(c: &Cluster, table: &str) -> i64 {
    c.client().query_one(&format!("SELECT count(*) FROM {table}"), &[]).map(|r| r.get(0)).unwrap_or(-1)
}

/// `-R` from a standby makes a standby of the standby copied (cascading), as pg_basebackup
/// does. The copied standby's own primary_conninfo and primary_slot_name (its primary, its
/// slot there) are replaced, not left in postgresql.auto.conf: the copy streams from the
/// standby, not through a slot that does not exist there.
#[test]
fn recovery_conf_from_a_standby_streams_from_that_standby() {
    let p = Cluster::new();
    p.client().batch_execute("CREATE TABLE after (x text)").unwrap();
    let s = standby_of_with(&p, &["-C", "-S", "s_on_p"]);
    let s_auto = fs::read_to_string(s.data.join("postgresql.auto.conf")).unwrap();
    assert!(s_auto.contains("primary_slot_name = 's_on_p'"), "{s_auto}");
    let dest = p.path("cascade");
    let dsn = format!("{} application_name=cascade1", s.dsn());
    let out = pgbb_run(&["-R", "-c", "fast", &dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let auto = fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap();
    assert_eq!(auto.matches("primary_conninfo").count(), 1, "one primary_conninfo, the copy's:\n{auto}");
    assert!(!auto.contains("primary_slot_name"), "the standby's slot on its primary is not the copy's:\n{auto}");
    assert!(auto.contains(&format!(" port={} ", s.port)), "{auto}");
    verifybackup(&dest, &[]);
    let copy = start_copy(&dest);
    let streaming = |c: &Cluster| -> i64 {
        c.client()
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'cascade1' AND state = 'streaming'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    wait_until("the copy to stream from the standby", Duration::from_secs(60), || streaming(&s) == 1);
    assert_eq!(streaming(&p), 0, "the copy streams from the primary, not from the standby copied");
    p.client().batch_execute("INSERT INTO after VALUES ('through the standby')").unwrap();
    wait_until("the row on the copy", Duration::from_secs(60), || count(&copy, "after") == 1);
}

/// Starts a backup from `source` into `dest` with one worker, frozen (SIGSTOP) before it can
/// finish the copy: the backup cannot reach its stop until the returned worker is resumed.
fn backup_held(source: &Cluster, dest: &Path) -> (std::process::Child, i32) {
    let child = spawn_pgbb(&["-j", "1", "-c", "fast"], &source.dsn(), dest);
    let w = wait_for_proc(&["--stdin", dest.to_str().unwrap()], Duration::from_secs(30)).expect("no worker");
    kill(Pid::from_raw(w), Signal::SIGSTOP).unwrap();
    (child, w)
}

/// Resumes the frozen worker; the backup must then fail (exit 1) with `says`, leaving no
/// DEST, no pgbb process and no pgbb session on `source`. Returns stderr.
fn fails_and_leaves_nothing(
    mut child: std::process::Child,
    w: i32,
    dest: &Path,
    source: &Cluster,
    says: &str,
) -> String {
    kill(Pid::from_raw(w), Signal::SIGCONT).unwrap();
    let (status, _) = wait_exit(&mut child, Duration::from_secs(120));
    let err = stderr(&child.wait_with_output().unwrap());
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(says), "{err}");
    assert!(!dest.exists(), "DEST left after a failed backup:\n{err}");
    assert_no_pgbb_process(dest.to_str().unwrap());
    source.assert_no_pgbb_left();
    err
}

/// The standby is promoted while its backup copies: the server's pg_backup_stop refuses
/// (the copy would be corrupt), and pgbb fails with its words and hint, leaving nothing.
#[test]
fn a_standby_promoted_during_the_backup_fails_and_leaves_nothing() {
    let p = Cluster::new();
    p.pgbench_init(2);
    let s = standby_of(&p);
    let dest = p.path("promoted");
    let (child, w) = backup_held(&s, &dest);
    promote(&s);
    let err = fails_and_leaves_nothing(child, w, &dest, &s, "the standby was promoted during online backup");
    assert!(err.contains("Try taking another online backup"), "the server's hint: {err}");
}

/// A cascading standby whose upstream is promoted follows it to timeline 2 while its backup
/// copies: the backup started on timeline 1 and stops on timeline 2. pgbb copies one
/// timeline's WAL, so it fails clearly (the server raises nothing here), leaving nothing.
#[test]
fn a_timeline_switch_during_a_standby_backup_fails_and_leaves_nothing() {
    let mut p = Cluster::new();
    p.pgbench_init(2);
    let m = standby_of(&p);
    let s = standby_of(&m);
    let dest = p.path("switched");
    let (child, w) = backup_held(&s, &dest);
    p.stop();
    promote(&m);
    m.client().batch_execute("CREATE TABLE on_tl2 AS SELECT generate_series(1, 1000) AS x; CHECKPOINT").unwrap();
    wait_replayed(&s, &m);
    // A restartpoint on the standby flushes what it replayed on timeline 2: its minimum
    // recovery point, where a standby's backup stops, is on timeline 2 now.
    s.client().batch_execute("CHECKPOINT").unwrap();
    let tli: i32 =
        s.client().query_one("SELECT min_recovery_end_timeline FROM pg_control_recovery()", &[]).unwrap().get(0);
    assert_eq!(tli, 2, "the standby's minimum recovery point is not on timeline 2");
    let err = fails_and_leaves_nothing(child, w, &dest, &s, "timeline changed during the backup");
    assert!(err.contains("take the backup again"), "{err}");
}

/// A standby of a primary with full_page_writes = off: the server refuses to start the
/// backup (a torn page could not be repaired), and pgbb reports it and leaves nothing. From
/// the primary itself the server forces full-page writes while the backup runs, as for
/// pg_basebackup: that backup is taken and restores.
#[test]
fn full_page_writes_off_on_the_primary_refuses_a_standby_backup() {
    let p = Cluster::with(ClusterOpts { conf: vec!["full_page_writes = off".into()], ..Default::default() });
    p.pgbench_init(2);
    let s = standby_of(&p);
    let dest = p.path("fpw-off");
    let out = pgbb_run(&["-c", "fast", &s.dsn(), dest.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("full_page_writes"), "{err}");
    assert!(err.contains("full_page_writes = on on the primary"), "the fix is named: {err}");
    assert!(!dest.exists(), "DEST left after a refused backup");
    let check = pgbb_run(&["--check", &s.dsn()]);
    assert_eq!(check.status.code(), Some(4), "{}", stdout(&check));
    assert!(stdout(&check).contains("full_page_writes = off on the standby's primary"), "{}", stdout(&check));
    s.assert_no_pgbb_left();

    let from_primary = p.path("fpw-off-primary");
    let load = p.pgbench_load(2, 600);
    let out = pgbb_run(&["-c", "fast", &p.dsn(), from_primary.to_str().unwrap()]);
    load.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    let expect = Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] };
    verify_restore(&from_primary, &expect);
}

/// `pgbb -x` against a cascading standby S (of M, of P) feeds an archive that a warm
/// standby W (a backup of S) replays through restore_command. The loop is down while P
/// writes a last segment on timeline 1 and M is promoted (S follows it to timeline 2);
/// started again, it copies that timeline-1 segment (it ends before the switch, says
/// 00000002.history), the history file and timeline 2's segments: W reaches the rows written
/// on either side of the switch. With --slot (a slot on S), the slot advances past the
/// switch.
#[test]
fn the_wal_loop_against_a_standby_follows_its_upstreams_promotion() {
    let mut p = Cluster::new();
    p.client().batch_execute("CREATE TABLE fed (x int)").unwrap();
    let m = standby_of(&p);
    let s = standby_of(&m);
    s.client().batch_execute("SELECT pg_create_physical_replication_slot('feeder', true)").unwrap();
    let slot_lsn = || -> String {
        s.client()
            .query_one("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'feeder'", &[])
            .unwrap()
            .get(0)
    };
    let warm = p.path("warm");
    let out = pgbb_run(&["-c", "fast", &s.dsn(), warm.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let archive = p.path("archive");
    fs::create_dir(&archive).unwrap();
    chown_pg(&archive);
    // W has S's standby.signal; no streaming, only the archive.
    assert!(warm.join("standby.signal").exists());
    let mut auto = fs::read_to_string(warm.join("postgresql.auto.conf")).unwrap();
    auto.push_str(&format!("primary_conninfo = ''\nrestore_command = 'cp {}/pg_wal/%f %p'\n", archive.display()));
    fs::write(warm.join("postgresql.auto.conf"), auto).unwrap();
    let w = start_copy(&warm);
    let write = |c: &Cluster, n: i32| {
        let mut cl = c.client();
        cl.execute("INSERT INTO fed SELECT generate_series(1, $1)", &[&n]).unwrap();
        cl.batch_execute("SELECT pg_switch_wal()").unwrap();
    };

    let feeder = start_feeder(&s, &archive, &["--slot", "feeder"]);
    write(&p, 100);
    wait_until("timeline 1's rows on W", Duration::from_secs(90), || count(&w, "fed") == 100);
    stop_feeder(feeder, &archive);
    let before = slot_lsn();

    write(&p, 50);
    wait_replayed(&s, &p);
    p.stop();
    promote(&m);
    write(&m, 25); // on timeline 2: W has them only if it followed the switch
    wait_replayed(&s, &m);
    assert_eq!(timeline(&s), 2, "S did not follow M to timeline 2");

    let feeder = start_feeder(&s, &archive, &["--slot", "feeder"]);
    wait_until("the rows of both timelines on W", Duration::from_secs(90), || count(&w, "fed") == 175);
    assert!(archive.join("pg_wal/00000002.history").exists());
    let seg_of = |l: &str| -> u64 {
        let (hi, lo) = l.split_once('/').unwrap();
        ((u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()) >> 24
    };
    wait_until("the slot to advance past the switch", Duration::from_secs(30), || {
        seg_of(&slot_lsn()) > seg_of(&before) + 1
    });
    stop_feeder(feeder, &archive);
}

/// A backup from a standby while the primary runs pgbench: complete, labelled as from a
/// standby, pg_verifybackup passes, and the copy restores with pgbench's invariant and
/// amcheck.
#[test]
fn standby_backup_under_primary_load_restores() {
    let p = Cluster::new();
    p.pgbench_init(4);
    let s = standby_of(&p);
    let dest = p.path("under-load");
    let load = p.pgbench_load(4, 600);
    let out = pgbb_run(&["-j", "3", "-c", "fast", &s.dsn(), dest.to_str().unwrap()]);
    load.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    restores_standalone(&dest);
    s.assert_no_pgbb_left();
}

/// Backups from a cascading standby S (of M, of P): on timeline 1, and on timeline 2 after M
/// was promoted and S followed it. Both are labelled as from a standby, pass
/// pg_verifybackup and restore; the second holds 00000002.history and its manifest's WAL
/// range is on timeline 2.
#[test]
fn cascading_standby_backups_on_timelines_1_and_2_restore() {
    let mut p = Cluster::new();
    p.pgbench_init(2);
    let m = standby_of(&p);
    let s = standby_of(&m);
    assert_eq!(timeline(&s), 1);
    let dest = p.path("cascading");
    let out = pgbb_run(&["-c", "fast", &s.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop(restores_standalone(&dest));

    p.stop();
    promote(&m);
    m.client().batch_execute("CREATE TABLE on_tl2 AS SELECT generate_series(1, 1000) AS x; CHECKPOINT").unwrap();
    wait_replayed(&s, &m);
    assert_eq!(timeline(&s), 2, "S did not follow M to timeline 2");
    let dest2 = p.path("cascading-tl2");
    let out = pgbb_run(&["-c", "fast", &s.dsn(), dest2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("on timeline 2 (") && stdout(&out).contains("1 history file"), "{}", stdout(&out));
    assert!(dest2.join("pg_wal/00000002.history").exists());
    let manifest = fs::read_to_string(dest2.join("backup_manifest")).unwrap();
    assert!(manifest.contains("\"Timeline\": 2"), "{manifest}");
    let restored = restores_standalone(&dest2);
    assert_eq!(count(&restored, "on_tl2"), 1000);
    s.assert_no_pgbb_left();
}
