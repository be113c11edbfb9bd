//! Failure semantics: a dead child, WAL missing. The backup must fail, leave nothing running,
//! nothing on the server, and no startable DEST.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::*;

fn kill_worker(no_clean: bool) {
    let c = Cluster::new();
    c.pgbench_init(10);
    let dest = c.path(if no_clean { "killed-kept" } else { "killed" });
    let d = dest.to_str().unwrap().to_string();
    let mut args = vec!["-j", "2", "-c", "fast", "--chunk-size", "8k", "--compress", "none"];
    if no_clean {
        args.push("--no-clean");
    }
    let mut child =
        pgbb().args(&args).arg(c.dsn()).arg(&dest).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let worker = wait_for_proc(&["--stdin", "--worker-id 1", &d], Duration::from_secs(30)).expect("no worker appeared");
    // Killed mid-copy.
    wait_until_copying(&dest);
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    let t = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(15)).0;
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(err.contains("worker 1 died unexpectedly (killed by SIGKILL)"), "{err}");
    assert_eq!(err.matches("pgbb: error:").count(), 1, "one message: {err}");
    assert!(!stdout(&out).contains("backup complete"));
    assert_no_pgbb_process(&d);
    c.assert_no_pgbb_left();
    if no_clean {
        assert!(dest.join("base").exists(), "--no-clean should keep DEST");
        assert!(!dest.join("global/pg_control").exists(), "an incomplete DEST must not be startable");
    } else {
        assert!(!dest.exists(), "DEST should be removed");
    }
    // The server is fine and takes the next backup.
    let again = c.path("again");
    let out = pgbb_run(&["-c", "fast", &c.dsn(), again.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn sigkill_of_a_worker_aborts_and_cleans_up() {
    kill_worker(false);
}

#[test]
fn sigkill_of_a_worker_with_no_clean_leaves_an_unstartable_dest() {
    kill_worker(true);
}

/// WAL removed from the server before the WAL child copied it (what happens when WAL is
/// recycled): the WAL child is frozen, the backup stops, the test deletes the backup's first
/// segment on the server, and the WAL child is let go. The range check must fail the backup.
#[test]
fn missing_wal_segment_fails_the_backup() {
    let c = Cluster::new();
    c.pgbench_init(2);
    let dest = c.path("nowal");
    let d = dest.to_str().unwrap().to_string();
    let mut child = spawn_pgbb(&["-j", "1", "-c", "fast", "-v", "--no-slot"], &c.dsn(), &dest);
    // The master stops the backup and then waits for the frozen WAL child.
    let (wal, seg) = freeze_wal_child_until_stopped(&dest);
    std::fs::remove_file(c.data.join("pg_wal").join(&seg)).unwrap();
    kill(Pid::from_raw(wal), Signal::SIGCONT).unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30)).0;
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("WAL needed to restore the backup is missing") && err.contains(&seg), "{err}");
    assert!(!dest.exists());
    assert_no_pgbb_process(&d);
    c.assert_no_pgbb_left();
}

/// `--clean` ends a backup left behind by another pgbb (here a frozen one): its sessions are
/// terminated, the new backup succeeds, and the old one fails cleanly once it runs again.
#[test]
fn clean_ends_a_leftover_backup() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let old = c.path("old");
    let o = old.to_str().unwrap().to_string();
    let mut a = pgbb()
        .args(["-j", "1", "-c", "fast", "--chunk-size", "8k", "--compress", "none"])
        .arg(c.dsn())
        .arg(&old)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_proc(&["--stdin", &o], Duration::from_secs(30)).expect("no worker");
    c.wait_for_session("pgbb worker 1");
    c.wait_for_session("pgbb wal");
    let frozen = procs_with(&o);
    for p in &frozen {
        kill(Pid::from_raw(*p), Signal::SIGSTOP).unwrap();
    }
    assert!(c.count_pgbb_sessions() >= 3, "the old backup should hold sessions");
    let new = c.path("new");
    let out = pgbb_run(&["--clean", "-v", "-c", "fast", &c.dsn(), new.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("--clean: terminated"), "{}", stderr(&out));
    for p in &frozen {
        kill(Pid::from_raw(*p), Signal::SIGCONT).unwrap();
    }
    let status = wait_exit(&mut a, Duration::from_secs(20)).0;
    assert!(!status.success(), "the terminated backup must not report success");
    assert!(!old.join("global/pg_control").exists());
    assert_no_pgbb_process(&o);
    c.assert_no_pgbb_left();
    assert!(new.join("global/pg_control").exists());
}
