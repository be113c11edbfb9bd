//! One run per DEST (issue 10, items 7 and 8b): a second backup or WAL loop into a DEST in use
//! is refused at once (exit 5) naming the pid that holds it, and the first goes on unharmed.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

/// Waits until a data file of the backup into `dest` is in place (the run holds DEST).
fn copying(dest: &std::path::Path) {
    wait_until_copying(dest);
}

#[test]
fn a_second_backup_into_a_dest_in_use_is_refused_naming_the_first() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let dest = c.path("backup");
    let first = spawn_pgbb(&["-j", "2", "-c", "fast", "--chunk-size", "8k", "--compress", "none"], &c.dsn(), &dest);
    let pid = first.id() as i32;
    copying(&dest);
    // Frozen, the first run cannot finish while the others try.
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    for extra in [&[][..], &["-f"][..]] {
        let t = Instant::now();
        let out = pgbb().args(extra).arg(c.dsn()).arg(&dest).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{extra:?}: {err}");
        assert!(err.contains(&format!("pid {pid}")), "{extra:?}: the message should name pid {pid}: {err}");
        assert!(t.elapsed() < Duration::from_secs(10), "refused only after {:?}", t.elapsed());
    }
    kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "the first backup failed: {}", stderr(&out));
    verifybackup(&dest, &[]);
    c.assert_no_pgbb_left();
}

#[test]
fn a_second_wal_loop_into_a_dest_in_use_is_refused_naming_the_first() {
    let c = Cluster::new();
    let dest = c.path("wal");
    let first = start_wal_loop(&c, &dest, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dest.join("pg_wal/archive_status").exists() {
        assert!(Instant::now() < deadline, "the first loop never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut second = start_wal_loop(&c, &dest, &[]);
    let (status, took) = wait_exit(&mut second, Duration::from_secs(20));
    let err = stderr(&second.wait_with_output().unwrap());
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(err.contains(&format!("pid {}", first.id())), "the message should name the first loop: {err}");
    assert!(took < Duration::from_secs(10), "refused only after {took:?}");
    stop_wal_loop(first);
    c.assert_no_pgbb_left();
}

#[test]
fn wal_loop_creates_its_slot_with_c_and_reuses_it() {
    let c = Cluster::new();
    let dest = c.path("wal");
    let slot_lsn = |c: &Cluster| -> Option<String> {
        c.client()
            .query_opt("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'feed'", &[])
            .unwrap()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
    };
    let first = start_wal_loop(&c, &dest, &["--slot", "feed", "-C"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while slot_lsn(&c).is_none() {
        assert!(Instant::now() < deadline, "-C did not create the slot");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The loop advances the slot it made past a segment it copied.
    let mut cl = c.client();
    let seg: String = cl.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).unwrap().get(0);
    // The loop is under way from this segment on once it keeps it as .partial.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dest.join("pg_wal").join(format!("{seg}.partial")).exists() {
        assert!(Instant::now() < deadline, "the loop never copied {seg}.partial");
        std::thread::sleep(Duration::from_millis(20));
    }
    cl.batch_execute("CREATE TABLE w AS SELECT 1; SELECT pg_switch_wal(); INSERT INTO w VALUES (2)").unwrap();
    // The start of the segment being written: the slot may move up to there.
    let current: String = cl
        .query_one(
            "SELECT (pg_current_wal_lsn() - (pg_walfile_name_offset(pg_current_wal_lsn())).file_offset)::text",
            &[],
        )
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let advanced: bool = cl
            .query_one(
                "SELECT coalesce(restart_lsn >= $1::text::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = 'feed'",
                &[&current],
            )
            .unwrap()
            .get(0);
        if dest.join("pg_wal").join(&seg).exists() && advanced {
            break;
        }
        assert!(Instant::now() < deadline, "segment {seg} not copied or the slot not advanced to {current}");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_wal_loop(first);
    assert!(slot_lsn(&c).is_some(), "the slot is the standby's: it stays");
    // Again with -C: the slot exists and is used, not an error.
    let again = start_wal_loop(&c, &dest, &["--slot", "feed", "-C", "-v"]);
    c.wait_for_session("pgbb wal");
    let err = stop_wal_loop(again);
    assert!(err.contains("already exists"), "{err}");
}
