//! Standalone `pgbb -x`: a warm-standby feeder over libpq.

use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::*;

fn segments(dir: &std::path::Path) -> Vec<(String, u64, u64)> {
    let mut v: Vec<(String, u64, u64)> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_type().unwrap().is_file())
                .map(|e| {
                    let m = e.metadata().unwrap();
                    (e.file_name().to_string_lossy().into_owned(), m.len(), m.ino())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn switch_wal(c: &Cluster, n: usize) -> Vec<String> {
    let mut cl = c.client();
    let mut names = Vec::new();
    for _ in 0..n {
        cl.batch_execute("CREATE TABLE IF NOT EXISTS w(x int); INSERT INTO w SELECT generate_series(1, 1000)").unwrap();
        let name: String = cl.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).unwrap().get(0);
        cl.batch_execute("SELECT pg_switch_wal()").unwrap();
        names.push(name);
    }
    cl.batch_execute("INSERT INTO w SELECT generate_series(1, 10)").unwrap();
    names
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a loop copying into `wal` has made its first pass (the segment being written
/// is there as .partial).
fn wait_running(wal: &std::path::Path) {
    wait_for("the loop's first pass", Duration::from_secs(30), || {
        segments(wal).iter().any(|(n, _, _)| n.ends_with(".partial"))
    });
}

fn start_loop(c: &Cluster, dest: &std::path::Path) -> std::process::Child {
    start_wal_loop(c, dest, &["-v"])
}

fn stop_loop(child: std::process::Child) -> String {
    stop_wal_loop(child)
}

#[test]
fn standalone_wal_loop_copies_keeps_partial_and_resumes() {
    let c = Cluster::new();
    let dest = c.path("standby-wal");
    let seg_size = 16u64 << 20;
    let child = start_loop(&c, &dest);
    // The loop starts from the segment being written at its first round (it keeps it as
    // .partial): segments switched away from before that would not be its to copy.
    let first: String = c.client().query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).unwrap().get(0);
    wait_for("the loop's first round", Duration::from_secs(30), || {
        dest.join("pg_wal").join(format!("{first}.partial")).exists()
    });
    let done = switch_wal(&c, 3);
    let wal = dest.join("pg_wal");
    wait_for("3 complete segments", Duration::from_secs(30), || {
        let s = segments(&wal);
        done.iter().all(|n| s.iter().any(|(name, len, _)| name == n && *len == seg_size))
    });
    let current: String = c.client().query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).unwrap().get(0);
    wait_for("the current segment as .partial", Duration::from_secs(10), || {
        wal.join(format!("{current}.partial")).exists()
    });
    for n in &done {
        assert!(!wal.join(format!("{n}.partial")).exists(), "{n}.partial left next to the complete segment");
    }
    stop_loop(child);
    let first = segments(&wal);

    // More WAL while the loop is down; a restart copies only what is new.
    let more = switch_wal(&c, 2);
    let child = start_loop(&c, &dest);
    wait_for("the new segments", Duration::from_secs(30), || {
        let s = segments(&wal);
        more.iter().all(|n| s.iter().any(|(name, len, _)| name == n && *len == seg_size))
    });
    stop_loop(child);
    let second = segments(&wal);
    for (name, len, ino) in first.iter().filter(|(n, len, _)| *len == seg_size && !n.ends_with(".partial")) {
        let again = second.iter().find(|(n, _, _)| n == name).expect("segment disappeared");
        assert_eq!((again.1, again.2), (*len, *ino), "{name} was copied again");
    }
    assert!(wal.join(&current).exists(), "the former partial segment was completed");
    assert!(!wal.join(format!("{current}.partial")).exists());
    c.assert_no_pgbb_left();
}

/// A routine restart of the server does not end the loop: it reconnects (logged), resumes
/// where it was, and the first segment completed after the restart arrives in DEST.
#[test]
fn standalone_wal_loop_survives_a_server_restart() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::new();
    let dest = c.path("restart-feed").join("wal");
    let child = start_loop(&c, &dest);
    let wal = dest.join("pg_wal");
    wait_running(&wal);
    let before = switch_wal(&c, 1);
    wait_for("a segment before the restart", Duration::from_secs(30), || wal.join(&before[0]).exists());
    c.stop();
    c.start();
    let after = switch_wal(&c, 2);
    wait_for("the segments completed after the restart", Duration::from_secs(60), || {
        after.iter().all(|n| std::fs::metadata(wal.join(n)).is_ok_and(|m| m.len() == 16 << 20))
    });
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "DEST of -x by hand");
    let err = stop_loop(child);
    assert!(err.contains("reconnect"), "the reconnection is logged: {err}");
    c.assert_no_pgbb_left();
}

/// What waiting cannot heal ends the loop at once, with the cause: here its database is
/// dropped (its session terminated), and reconnecting finds it gone.
#[test]
fn standalone_wal_loop_gives_up_when_its_database_is_gone() {
    let c = Cluster::new();
    c.client().batch_execute("CREATE DATABASE feed").unwrap();
    let dest = c.path("gone-feed");
    let mut child = pgbb()
        .args(["-x", "-D", "0.2", "-v"])
        .arg(c.dsn_db("feed"))
        .arg(&dest)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_running(&dest.join("pg_wal"));
    c.client().batch_execute("DROP DATABASE feed WITH (FORCE)").unwrap();
    let (status, _) = wait_exit(&mut child, Duration::from_secs(20));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("database \"feed\" does not exist"), "{err}");
}
