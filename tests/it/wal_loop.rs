//! Standalone `pgbb -x`: a warm-standby feeder over libpq.

use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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

fn start_loop(c: &Cluster, dest: &std::path::Path) -> std::process::Child {
    pgbb()
        .args(["-x", "-D", "0.2", "-v"])
        .arg(c.dsn())
        .arg(dest)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop_loop(mut child: std::process::Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(s.success(), "pgbb -x did not stop cleanly on SIGTERM: {s}\n{err}");
            return;
        }
        assert!(Instant::now() < deadline, "pgbb -x did not stop within 5 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
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
