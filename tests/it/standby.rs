//! Making the copy useful: `-R` (a streaming standby), `--slot`/`-C`, and the warm-standby
//! feeder `pgbb -x` replayed by a standby.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn write_recovery_conf_makes_a_streaming_standby() {
    let c = Cluster::new();
    c.pgbench_init(2);
    c.client().batch_execute("CREATE TABLE after (x text)").unwrap();
    let dest = c.path("standby");
    let out = pgbb_run(&["-R", "--slot", "standby_1", "-C", "-c", "fast", &c.dsn(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dest.join("standby.signal").exists());
    let auto = std::fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("primary_conninfo = 'user=postgres host="), "{auto}");
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
    let active: bool = c.client().query_one("SELECT active FROM pg_replication_slots WHERE slot_name = 'standby_1'", &[]).unwrap().get(0);
    assert!(active, "the standby streams through its slot");
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
    let n: i64 = c.client().query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'doomed'", &[]).unwrap().get(0);
    assert_eq!(n, 0, "the slot made for the failed backup is left");
    // An existing slot is used, not created; a missing one is an error.
    let out = pgbb_run(&["--slot", "nosuch", &c.dsn(), c.path("x").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist (create it with -C)"), "{}", stderr(&out));
    let out = pgbb_run(&["-C", &c.dsn(), c.path("y").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}
