//! Failure semantics: a dead child, WAL missing. The backup must fail, leave nothing running,
//! nothing on the server, and no startable DEST.

use std::io::{BufRead, Write};
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

/// Sessions whose application_name is `name` (exactly, or `LIKE name` when it has a `%`).
fn sessions_named(c: &Cluster, name: &str) -> i64 {
    query_i64(
        &mut c.client(),
        &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '{}'", name.replace('\'', "''")),
    )
}

fn wait_sessions(c: &Cluster, name: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sessions_named(c, name) != n {
        assert!(Instant::now() < deadline, "expected {n} session(s) named {name:?}, have {}", sessions_named(c, name));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `pgbb --slave --stdin` started by hand (`extra` arguments), its session open.
fn by_hand_worker(c: &Cluster, dest: &str, extra: &[&str]) -> (std::process::Child, impl BufRead) {
    let mut w = pgbb()
        .args(["--slave", "--stdin"])
        .args(extra)
        .arg(c.dsn())
        .arg(c.path(dest))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(w.stdout.take().unwrap());
    let mut hello = String::new();
    out.read_line(&mut hello).unwrap();
    assert!(hello.starts_with("hello\t"), "{hello}");
    (w, out)
}

/// Starts a backup into `dest` and freezes it (SIGSTOP) once its children are connected (the
/// `n`th backup running); returns the master and the pids of its children.
fn frozen_backup(c: &Cluster, dest: &std::path::Path, n: i64) -> (std::process::Child, Vec<i32>) {
    let d = dest.to_str().unwrap().to_string();
    let master = spawn_pgbb(&["-j", "1", "-c", "fast", "--chunk-size", "8k", "--compress", "none"], &c.dsn(), dest);
    let w = wait_for_proc(&["--stdin", &d], Duration::from_secs(30)).expect("no worker");
    let x = wait_for_proc(&["-x", &d], Duration::from_secs(30)).expect("no WAL child");
    wait_sessions(c, "pgbb worker 1 [run %]", n);
    wait_sessions(c, "pgbb wal [run %]", n);
    for p in [master.id() as i32, w, x] {
        kill(Pid::from_raw(p), Signal::SIGSTOP).unwrap();
    }
    (master, vec![w, x])
}

/// The pid of the server session of the one master whose pid is not in `not`.
fn master_session(c: &Cluster, not: &[i32]) -> i32 {
    let rows = c
        .client()
        .query("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgbb [run %' ORDER BY pid", &[])
        .unwrap();
    let pids: Vec<i32> = rows.iter().map(|r| r.get(0)).filter(|p| !not.contains(p)).collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    pids[0]
}

/// `--clean` ends only what runs whose master is gone left behind. A backup frozen mid-run
/// (its master still holds its run's lock) is left alone and completes. A frozen backup
/// whose master's session was terminated (its lock is free: the master is gone as far as the
/// server knows) has its other sessions ended, and says what happened once it runs again;
/// so is a session named after a run nobody holds the lock of; a worker started by hand (no
/// run) is left alone.
#[test]
fn clean_spares_live_backups_and_ends_leftovers() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let live = c.path("live");
    let (mut a, a_children) = frozen_backup(&c, &live, 1);
    let a_session = master_session(&c, &[]);
    let dead = c.path("dead");
    let (mut b, b_children) = frozen_backup(&c, &dead, 2);
    let b_session = master_session(&c, &[a_session]);
    c.client().execute("SELECT pg_terminate_backend($1)", &[&b_session]).unwrap();
    wait_sessions(&c, "pgbb [run %]", 1);
    let (mut keyed, mut keyed_out) = by_hand_worker(&c, "keyed", &["--run-key", "12345"]);
    let (mut plain, mut plain_out) = by_hand_worker(&c, "plain", &[]);
    // A name that only looks like a run's (no int4 is that long) is no run's, and does not
    // stop --clean.
    let odd =
        postgres::Client::connect(&format!("{} application_name='pgbb [run 99999999999]'", c.dsn()), postgres::NoTls)
            .unwrap();
    wait_sessions(&c, "pgbb worker [run 12345]", 1);
    wait_sessions(&c, "pgbb worker", 1);

    let new = c.path("new");
    let out = pgbb_run(&["--clean", "-v", "-c", "fast", &c.dsn(), new.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // B's worker, WAL child and slot holder, and the keyed one; A's four sessions stay.
    assert!(err.contains("--clean: terminated 4 session(s) of pgbb runs whose master is gone"), "{err}");
    assert!(err.contains("--clean: left alone 4 session(s) of pgbb runs in progress"), "{err}");
    assert!(err.contains("--clean: left alone 2 pgbb session(s) that belong to no backup run"), "{err}");
    assert_eq!(sessions_named(&c, "pgbb [run 99999999999]"), 1);
    drop(odd);
    verifybackup(&new, &[]);

    // A victim says what happened to it. Whether the server's own words ("terminating
    // connection due to administrator command") arrive first is a race with the closed
    // socket (the write can fail with a broken pipe before the client reads them); pgbb's
    // explanation is there either way.
    writeln!(keyed.stdin.take().unwrap(), "PG_VERSION").unwrap();
    let mut line = String::new();
    keyed_out.read_line(&mut line).unwrap();
    assert!(line.starts_with("fatal\t") && line.contains("another pgbb --clean terminated it"), "{line}");
    assert_eq!(keyed.wait().unwrap().code(), Some(1));
    // The worker of no run still works.
    writeln!(plain.stdin.take().unwrap(), "PG_VERSION").unwrap();
    line.clear();
    plain_out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ok\t"), "{line}");
    assert!(plain.wait().unwrap().success());

    for p in a_children.iter().chain(b_children.iter()).chain([a.id() as i32, b.id() as i32].iter()) {
        kill(Pid::from_raw(*p), Signal::SIGCONT).unwrap();
    }
    // The live backup goes on and completes; the ended one fails and says why.
    let status = wait_exit(&mut a, Duration::from_secs(60)).0;
    let a_err = stderr(&a.wait_with_output().unwrap());
    assert!(status.success(), "the live backup was harmed: {a_err}");
    let status = wait_exit(&mut b, Duration::from_secs(30)).0;
    let b_err = stderr(&b.wait_with_output().unwrap());
    assert_eq!(status.code(), Some(1), "{b_err}");
    assert!(b_err.contains("the server ended this session") && b_err.contains("terminated it"), "{b_err}");
    assert_no_pgbb_process(dead.to_str().unwrap());
    assert_no_pgbb_process(live.to_str().unwrap());
    c.assert_no_pgbb_left();
    assert!(!dead.join("global/pg_control").exists());
    verify_restore(&live, &Expect { pgbench: true, databases: vec![], unlogged: vec![], absent: vec![] });
}
