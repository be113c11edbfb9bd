//! A worker whose connection drops mid-backup reconnects and copies its file again (bounded
//! attempts, backoff, each logged), as long as its run's master — whose session holds the
//! backup — is alive; the backup succeeds and restores. Reconnections that keep failing end
//! the backup cleanly after the bounded attempts.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A backup held mid-copy by `--max-rate`, `-v` so that the log says what happened.
fn start_held(dsn: &str, dest: &std::path::Path, extra: &[&str]) -> Child {
    pgbb()
        .args(["-v", "-j", "2", "-c", "fast", "--compress", "none", "--max-rate", "8M"])
        .args(extra)
        .arg(dsn)
        .arg(dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Terminates the server backend of a worker of the run while it runs a statement whose
/// text is like `query` (not one of the backends in `not`); returns its pid. Either worker:
/// one may have finished its share while the other still copies.
fn terminate_a_worker(c: &Cluster, query: &str, not: &[i32]) -> i32 {
    let mut cl = c.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = cl
            .query(
                // One backend only (both workers may run such a statement), terminated in
                // the target list: only for the row kept.
                "SELECT pid, pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity \
                  WHERE application_name LIKE 'pgbb worker % [run %]' AND state = 'active' \
                    AND query LIKE $1 AND pid <> ALL($2) LIMIT 1) AS one",
                &[&query, &not],
            )
            .unwrap();
        if let Some(r) = rows.first() {
            return r.get(0);
        }
        assert!(Instant::now() < deadline, "no worker seen running {query:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The log lines of workers that say they reconnected.
fn reconnections(err: &str) -> usize {
    err.lines().filter(|l| l.contains(" pgbb worker ") && l.contains("reconnected to the server")).count()
}

fn pgbench_and_amcheck() -> Expect {
    Expect { pgbench: true, databases: vec!["postgres".into()], unlogged: vec![], absent: vec![] }
}

/// A worker's backend is terminated twice while it copies, under pgbench load: each time it
/// reconnects and copies its file again; the backup succeeds, passes pg_verifybackup and
/// restores with pgbench's invariant and amcheck.
#[test]
fn a_worker_whose_backend_is_terminated_reconnects_and_the_backup_succeeds() {
    let c = Cluster::new();
    c.pgbench_init(10);
    c.client().batch_execute("CREATE EXTENSION amcheck").unwrap();
    let load = c.pgbench_load(2, 600);
    let dest = c.path("retried");
    let child = start_held(&c.dsn(), &dest, &[]);
    wait_until_copying(&dest);
    let first = terminate_a_worker(&c, "%pg_read_binary_file%", &[]);
    let second = terminate_a_worker(&c, "%pg_read_binary_file%", &[first]);
    let out = child.wait_with_output().unwrap();
    load.finish();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(stdout(&out).contains("backup complete"), "{err}");
    assert_eq!(reconnections(&err), 2, "{err}");
    assert!(err.contains("lost the connection to the server"), "{err}");
    assert!(err.contains("terminated it"), "the reason is logged: {err}");
    assert!(!err.contains("pgbb: error:"), "{err}");
    assert_ne!(first, second);
    verify_restore(&dest, &pgbench_and_amcheck());
    c.assert_no_pgbb_left();
}

/// The same during a `--delta` refresh: a worker's backend is terminated while it compares a
/// file (block hashes sent, differing blocks coming back); the comparison runs again on the
/// half-refreshed file and the result restores.
#[test]
fn a_worker_terminated_mid_compare_reconnects_and_the_refresh_succeeds() {
    // From a server on this machine the file streams and is compared as it comes; from a
    // server over the network the server hashes its blocks.
    mid_compare(None);
    if is_root() {
        mid_compare(Some(92));
    }
}

fn mid_compare(netns: Option<u8>) {
    let (_ns, c, dsn) = match netns {
        Some(n) => {
            let (ns, c, dsn) = remote_cluster(n, None);
            (Some(ns), c, dsn)
        }
        None => {
            let c = Cluster::new();
            let dsn = c.dsn();
            (None, c, dsn)
        }
    };
    c.pgbench_init(5);
    c.client().batch_execute("CREATE EXTENSION amcheck").unwrap();
    let dest = c.path("older");
    let out = pgbb_run(&["-c", "fast", &dsn, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Every block of the big table differs from the older copy: compares that take a while
    // at --max-rate.
    c.client().batch_execute("UPDATE pgbench_accounts SET filler = 'changed'").unwrap();
    let load = c.pgbench_load(2, 600);
    let child = start_held(&dsn, &dest, &["--delta"]);
    // Over the network, the comparison's statement (`sql::compare_blocks!`): its select list
    // names `c.cut` (pg_stat_activity keeps only the first 1024 bytes of a statement).
    let victim = terminate_a_worker(&c, if netns.is_some() { "%c.cut%" } else { "%pg_read_binary_file%" }, &[]);
    let out = child.wait_with_output().unwrap();
    load.finish();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--delta: refreshing the copy of this cluster"), "{err}");
    assert_eq!(reconnections(&err), 1, "backend {victim}: {err}");
    assert!(!err.contains("pgbb: error:"), "{err}");
    verify_restore(&dest, &pgbench_and_amcheck());
    c.assert_no_pgbb_left();
}

/// A held backup as a least-privileged role (superusers ignore connection limits), copying;
/// then the role may open no more connections.
fn start_refused(c: &Cluster, dest: &std::path::Path, extra: &[&str]) -> Child {
    let child = start_held(&least_privileged_role(c), dest, extra);
    wait_until_copying(dest);
    c.client().batch_execute("ALTER ROLE backup CONNECTION LIMIT 0").unwrap();
    child
}

/// A worker's backend is terminated after its role was given `CONNECTION LIMIT 0`: every
/// reconnection is refused (`too many connections`, which could heal), so after the bounded
/// attempts the worker gives up and the backup fails cleanly: exit 1, one error naming the
/// cause and the attempts, no pgbb process or session left, nothing startable in DEST.
#[test]
fn a_worker_that_cannot_reconnect_gives_up_after_bounded_attempts() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let dest = c.path("gives-up");
    let child = start_refused(&c, &dest, &["--no-clean"]);
    let t = Instant::now();
    terminate_a_worker(&c, "%pg_read_binary_file%", &[]);
    let mut child = child;
    let (_, took) = wait_exit(&mut child, Duration::from_secs(120));
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // 0.5 + 1 + 2 + 4 + 8 s of backoff, and the attempts themselves.
    assert!(took < Duration::from_secs(60), "giving up took {took:?}: {err}");
    assert!(t.elapsed() >= Duration::from_secs(15), "gave up before the backoff ran out: {err}");
    assert_eq!(err.matches("pgbb: error:").count(), 1, "{err}");
    assert!(err.contains(" failed: could not connect"), "{err}");
    assert!(err.contains("too many connections for role"), "{err}");
    assert!(err.contains("gave up after 5 attempts to reconnect"), "{err}");
    for n in 1..=5 {
        assert!(err.contains(&format!("(attempt {n} of 5)")), "attempt {n} not logged: {err}");
    }
    assert!(!stdout(&out).contains("backup complete"));
    assert_no_pgbb_process(dest.to_str().unwrap());
    c.assert_no_pgbb_left();
    assert!(!dest.join("global/pg_control").exists(), "an incomplete DEST must never be startable");
}

/// A worker waiting to reconnect does not hold up an abort: SIGINT to the master ends the
/// backup at once (the master's SIGTERM ends the waiting worker), exit 130.
#[test]
fn an_abort_is_not_held_up_by_a_worker_waiting_to_reconnect() {
    let c = Cluster::new();
    c.pgbench_init(10);
    let dest = c.path("aborted");
    let mut child = start_refused(&c, &dest, &[]);
    terminate_a_worker(&c, "%pg_read_binary_file%", &[]);
    // In its backoff: the second attempt (1 s) is being waited for.
    let log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = std::io::BufRead::lines(log);
    let mut seen = String::new();
    while !seen.contains("(attempt 2 of 5)") {
        let line = lines.next().expect("pgbb ended before its worker retried").unwrap();
        seen.push_str(&line);
        seen.push('\n');
    }
    let t = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let (status, _) = wait_exit(&mut child, Duration::from_secs(30));
    let took = t.elapsed();
    let err = format!("{seen}{}", rest.join("\n"));
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(took < Duration::from_secs(4), "the abort took {took:?}: {err}");
    assert!(!err.contains("(attempt 3 of 5)"), "the worker went on retrying: {err}");
    assert_no_pgbb_process(dest.to_str().unwrap());
    c.assert_no_pgbb_left();
    assert!(!dest.exists());
}

/// A worker started by hand (no run, no master to ask whether a backup is alive) does not
/// reconnect: its next request after its backend was terminated is answered `fatal`, as
/// before, and it exits 1.
#[test]
fn a_worker_started_by_hand_does_not_reconnect() {
    let c = Cluster::new();
    let mut w = pgbb()
        .args(["--slave", "--stdin", &c.dsn()])
        .arg(c.path("by-hand"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(w.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(line.starts_with("hello\t"), "{line}");
    let n = query_i64(
        &mut c.client(),
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'pgbb worker'",
    );
    assert_eq!(n, 1);
    std::io::Write::write_all(w.stdin.as_mut().unwrap(), b"PG_VERSION\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(line.starts_with("fatal\t") && line.contains("terminat"), "{line}");
    drop(w.stdin.take());
    let (status, _) = wait_exit(&mut w, Duration::from_secs(10));
    let err = stderr(&w.wait_with_output().unwrap());
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(!err.contains("reconnect"), "{err}");
}
